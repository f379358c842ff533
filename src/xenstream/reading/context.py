"""What the readers of one parse share.

:class:`ParseState` is where the parse is (which layers it has entered, their
byte orders, the checkpoints seen), read by consumers for context.
:class:`Context` is the parser as its readers (:mod:`xenstream.reading.streams`,
:mod:`xenstream.reading.envelopes`) see it: the source, the state, the record
numbering and the settings a consumer may change while it pulls items.
:class:`~xenstream.reading.parser.Parser` is the one implementation.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Protocol

from xenstream.io import Source
from xenstream.reading.items import PageFilter
from xenstream.reading.legacy import LegacyOptions, LegacyParser

PfnSink = Callable[[bytes, str], None]
"""``sink(entries, endian)``: the raw pfn array (u64 words) of one PAGE_DATA
record that a :class:`~xenstream.reading.items.PageRun` holds, in the stream's
byte order, as the bulk check read it."""


class ParseState:
    """Where the parser is; read by consumers for context."""

    def __init__(self) -> None:
        self.layers: List[str] = []
        self.libxc_endian = "<"
        self.libxl_endian = "<"
        self.libxc_version = 0
        self.checkpoints = 0  # libxc CHECKPOINT records seen
        self.checkpoint_ends = 0
        self.colo = False
        self.in_checkpoint = False  # between CHECKPOINT and CHECKPOINT_END
        self.finished = False  # the stream's final END was read


class Context(Protocol):
    """The parser a reader reads for."""

    src: Source
    state: ParseState
    #: the number of the next record or frame, counted across layers
    index: int
    #: set by a consumer to receive PAGE_DATA runs in bulk (seekable input)
    page_filter: Optional[PageFilter]
    #: set by a consumer to see the pfn array of every record of a bulk run
    pfn_sink: Optional[PfnSink]
    #: read legacy payloads item by item (False: stop at the Legacy marker)
    follow_legacy: bool
    legacy_options: LegacyOptions
    legacy_parser: Optional[LegacyParser]
