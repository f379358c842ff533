"""The pull parser: bytes in, typed items with their offsets out.

``Parser(source).items()`` yields, in stream order:

* :class:`Header` for every header (xl, libxl, libxc image and domain headers);
* :class:`XlConfig` for the xl optional data;
* :class:`Record` for every record of every layer, numbered across layers;
* :class:`Legacy` when the payload is a legacy (pre-4.6) stream, then stops;
* :class:`EndOfInput` when a checkpointed stream ends cleanly at a record
  boundary (the only place EOF is not a truncation).

It follows the layers as Xen's restore does: a libxl LIBXC_CONTEXT hands the
fd to the libxc stream, libxc's END hands it back; libxc's CHECKPOINT hands
it to libxl until CHECKPOINT_END (and CHECKPOINT_STATE for COLO), then back
to libxc.  The parser enforces only what it needs to find the next item
(magic numbers, lengths, the libxc length limit); every other rule belongs to
the checkers.  Truncation raises :class:`~xenstream.errors.TruncatedError`.

A :class:`Record`'s body is lazy.  A consumer may read some of it
(:meth:`Record.read`), all of it (:meth:`Record.body`), or none; whatever it
leaves is skipped (a seek on seekable input) when the next item is pulled.

This module detects the format and dispatches to the readers:
:mod:`~xenstream.reading.envelopes` (xl, libvirt, xend, xenopsd, and the
hand-over to a legacy payload), :mod:`~xenstream.reading.streams` (libxl and
libxc v2 streams) and :mod:`~xenstream.reading.legacy` (legacy streams).  The
items are defined in :mod:`~xenstream.reading.items` and re-exported here with
the parser's constants: import them from this module.
"""

from __future__ import annotations

from typing import Iterator, Optional

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import legacy, libvirt, libxl, xend, xenopsd, xl
from xenstream.io import Source
from xenstream.reading.context import ParseState, PfnSink
from xenstream.reading.envelopes import (
    XL_CONFIG_MAX,
    read_legacy,
    read_libvirt,
    read_xend,
    read_xenopsd,
    read_xl,
)
from xenstream.reading.items import *  # noqa: F403 - the items, re-exported (__all__)
from xenstream.reading.legacy import LegacyOptions, LegacyParser
from xenstream.reading.streams import read_libxc, read_libxl

__all__ = [
    "FORMAT_NAMES", "LAYER_LEGACY", "LAYER_LIBVIRT", "LAYER_LIBXC", "LAYER_LIBXL", "LAYER_XEND",
    "LAYER_XENOPSD", "LAYER_XL", "LIBXL_SMALL_BODY_MAX", "XL_CONFIG_MAX", "EndOfInput",
    "EnvelopeData", "Frame", "Header", "Item", "Legacy", "LegacyOptions", "LegacyParser",
    "Mismatch", "PageFilter", "PageRun", "ParseState", "Parser", "PfnSink", "Record", "StopStream",
    "XlConfig",
]

FORMAT_NAMES = ("libxc", "libxl", "xl", "libvirt", "xenopsd", "xend", "legacy")
#: libxl records other than EMULATOR_CONTEXT: how much body anyone may hold.
LIBXL_SMALL_BODY_MAX = 64 << 20
#: the first 8 bytes of every envelope and stream header
_MAGIC8 = {
    b"\xff" * 8: "libxc",
    libxl.HDR_IDENT.to_bytes(8, "big"): "libxl",
    xl.MAGIC[:8]: "xl",
    libvirt.MAGIC[:8]: "libvirt",
    xenopsd.MAGIC_V2[:8]: "xenopsd",
    xend.MAGIC[:8]: "xend",
}


class Parser:
    """The pull parser over ``src``; ``format`` forces the format detected
    (one of :data:`FORMAT_NAMES`).  It is the readers'
    :class:`~xenstream.reading.context.Context`."""

    def __init__(self, src: Source, *, format: Optional[str] = None) -> None:
        self.src = src
        self.format = format
        self.state = ParseState()
        #: the number of the next record or frame, counted across layers
        self.index = 0
        self.detected: Optional[str] = None
        #: set by a consumer to receive PAGE_DATA runs in bulk (seekable input)
        self.page_filter: Optional[PageFilter] = None
        #: set by a consumer to see the pfn array of every record of those runs
        #: (:data:`~xenstream.reading.context.PfnSink`), read once by the bulk check
        self.pfn_sink: Optional[PfnSink] = None
        #: read legacy payloads item by item (False: stop at the Legacy marker)
        self.follow_legacy = True
        self.legacy_options = LegacyOptions()
        self.legacy_parser: Optional[LegacyParser] = None

    # -- detection ---------------------------------------------------------------

    def items(self) -> Iterator[Item]:
        src = self.src
        start = src.pos
        head = src.read_upto(8)
        if len(head) < 8:
            raise TruncatedError(start, 8, len(head), what="header",
                                 message=f"expected a Xen save image header, found "
                                 f"{'an empty input' if not head else f'only {len(head)} bytes'}")
        kind = _MAGIC8.get(head)
        more = b""
        if kind is None:
            more = src.read_upto(8)
            lo = self.legacy_options
            if legacy.sniff(head + more) is not None or (lo.width and lo.guest):
                kind = "legacy"
        forced = self.format
        if forced and kind != forced:
            found = f"an {kind} stream" if kind == "xl" else (f"a {kind} stream" if kind else
                                                               "no known format")
            raise FormatError(start, f"expected a {forced} stream (forced by --format), found "
                              f"{found}",
                              what="header", layer=forced, rule="format-mismatch")
        self.detected = kind
        if kind == "libxc":
            yield from read_libxc(self, head, start, bare=True)
        elif kind == "libxl":
            yield from read_libxl(self, head, start)
        elif kind == "xl":
            yield from read_xl(self, head, start)
        elif kind == "libvirt":
            yield from read_libvirt(self, head, start)
        elif kind == "xenopsd":
            yield from read_xenopsd(self, head, start)
        elif kind == "xend":
            yield from read_xend(self, head, start)
        elif kind == "legacy":
            yield from read_legacy(self, Legacy(start, legacy.sniff(head + more), "bare",
                                                head + more))
        else:
            raise FormatError(start, "expected a Xen save image (xl, libvirt, xenopsd or xend "
                              "envelope, libxl or libxc v2/v3 header, or a legacy stream), "
                              f"found {(head + more)[:16].hex(' ')}", what="header",
                              rule="unrecognised")
