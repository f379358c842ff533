"""The typed items the pull parser (:class:`~xenstream.reading.parser.Parser`)
yields, with the layer names they carry.

:class:`Header`, :class:`XlConfig` and :class:`EnvelopeData` for headers and
the configuration envelopes carry; :class:`Frame` for a XenServer frame;
:class:`Record` (lazy body) and :class:`PageRun` (a bulk run of PAGE_DATA,
asked for with a :class:`PageFilter`) for v2 records; :class:`Legacy` where a
legacy payload starts; :class:`Mismatch` where a header contradicts the
content; :class:`EndOfInput` at a clean end of a checkpointed stream.
:data:`Item` is their union, with the legacy stream's items.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Set, Union

from xenstream.errors import LimitError, TruncatedError
from xenstream.formats import legacy, libxc, libxl, xenopsd
from xenstream.io import Source

LAYER_XL = "xl"
LAYER_LIBXL = "libxl"
LAYER_LIBXC = "libxc"
LAYER_LEGACY = "legacy"
LAYER_LIBVIRT = "libvirt"
LAYER_XENOPSD = "xenopsd"
LAYER_XEND = "xend"


class Header:
    __slots__ = ("layer", "kind", "offset", "size", "fields", "endian")

    def __init__(self, layer: str, kind: str, offset: int, size: int, fields: Dict[str, int],
                 endian: str = "<") -> None:
        self.layer = layer
        self.kind = kind  # "xl header", "libxl header", "libxc image header", ...
        self.offset = offset
        self.size = size
        self.fields = fields
        self.endian = endian

    def __repr__(self) -> str:
        return f"Header({self.kind} at {self.offset:#x}: {self.fields})"

    @property
    def what(self) -> str:
        return f"header ({self.kind})"


class XlConfig:
    __slots__ = ("offset", "optional_data_len", "config_len", "config", "raw")
    layer = LAYER_XL

    def __init__(self, offset: int, optional_data_len: int, config_len: Optional[int],
                 config: Optional[bytes]) -> None:
        self.offset = offset
        self.optional_data_len = optional_data_len
        self.config_len = config_len  # None: optional data shorter than 4 bytes
        self.config = config  # None when absent or too large to hold
        self.raw: Optional[bytes] = None  # the whole optional data, when held

    @property
    def what(self) -> str:
        return "header (xl optional data)"


class EnvelopeData:
    """The configuration or metadata an envelope carries (libvirt XML, xend
    SXP); ``data`` is None when it is too large to hold."""

    __slots__ = ("offset", "layer", "kind", "declared_len", "data")

    def __init__(self, offset: int, layer: str, kind: str, declared_len: int,
                 data: Optional[bytes]) -> None:
        self.offset = offset
        self.layer = layer
        self.kind = kind  # "libvirt XML", "xend SXP config"
        self.declared_len = declared_len
        self.data = data

    @property
    def what(self) -> str:
        return f"header ({self.kind})"


class Frame:
    """One frame of a XenServer/xenopsd structured image.  ``head`` holds the
    first bytes of a sized payload (all of a Xenops metadata frame, None when
    too large); a consumer may :meth:`read` on into the payload, and the
    parser skips whatever is left."""

    __slots__ = ("index", "offset", "ftype", "length", "head", "_src", "consumed")
    layer = LAYER_XENOPSD

    def __init__(self, index: int, offset: int, ftype: int, length: int,
                 head: Optional[bytes], src: Optional[Source] = None) -> None:
        self.index = index
        self.offset = offset
        self.ftype = ftype
        self.length = length
        self.head = head
        self._src = src
        #: payload bytes taken from the input so far (``head`` and :meth:`read`)
        self.consumed = 0

    @property
    def name(self) -> str:
        return xenopsd.frame_name(self.ftype)

    @property
    def what(self) -> str:
        return f"record #{self.index} ({self.name} frame)"

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of a sized payload, after ``head`` (never past its end)."""
        if self._src is None or n < 0 or self.consumed + n > self.length:
            raise ValueError(f"read of {n} bytes past the payload of {self.what}")
        at = self._src.pos
        data = self._src.read_upto(n)
        if len(data) != n:
            raise TruncatedError(at, n, len(data), what=self.what, layer=self.layer)
        self.consumed += n
        return data


class Mismatch:
    """A header field that contradicts the content (xl's STREAMv2 flag, the
    XenServer signature): Xen's toolstack trusts the field and would misread
    the image.  The parser goes on by the content."""

    __slots__ = ("offset", "layer", "what", "rule", "message")

    def __init__(self, offset: int, layer: str, what: str, rule: str, message: str) -> None:
        self.offset = offset
        self.layer = layer
        self.what = what
        self.rule = rule
        self.message = message


class Legacy:
    """A legacy payload starts here.  ``head`` holds its first bytes, already
    consumed for detection; the legacy items follow when the parser follows
    legacy streams (:attr:`Parser.follow_legacy`)."""

    __slots__ = ("offset", "guess", "container", "head")
    layer = LAYER_LEGACY

    def __init__(self, offset: int, guess: Optional[legacy.LegacyGuess], container: str,
                 head: bytes = b"") -> None:
        self.offset = offset
        self.guess = guess
        self.container = container  # bare, xl, libvirt, xend, xenopsd
        self.head = head

    @property
    def what(self) -> str:
        return "legacy payload"


class EndOfInput:
    __slots__ = ("offset", "layer")

    def __init__(self, offset: int, layer: str) -> None:
        self.offset = offset
        self.layer = layer

    @property
    def what(self) -> str:
        return "end of input"


class StopStream(Exception):
    """Internal: the stream cannot go on, and a checker has said why."""


class PageRun:
    """A run of consecutive libxc PAGE_DATA records that a consumer's
    :class:`PageFilter` let the parser check in bulk (see :meth:`Parser.items`).

    Every record in it passed the per-record PAGE_DATA rules: count 1..1024,
    reserved field and pfn bits 52-59 zero, known types, exact length, pfns
    within ``PageFilter.pfn_limit`` and none in ``PageFilter.watch``.
    """

    __slots__ = ("offset", "end", "first_index", "records", "pages", "max_pfn", "entries")
    layer = LAYER_LIBXC
    name = "PAGE_DATA"

    def __init__(self, offset: int, end: int, first_index: int, records: int, pages: int,
                 max_pfn: int, entries: int) -> None:
        self.offset = offset
        self.end = end
        self.first_index = first_index
        self.records = records
        self.pages = pages  # data-bearing entries
        self.max_pfn = max_pfn
        self.entries = entries  # all pfn entries

    @property
    def what(self) -> str:
        last = self.first_index + self.records - 1
        return f"records #{self.first_index}-#{last} (PAGE_DATA)"


class PageFilter:
    """Set by a consumer on :attr:`Parser.page_filter` to receive PAGE_DATA
    records that break no per-record rule as :class:`PageRun` items (seekable
    input only).  Any record that might break one is yielded as a
    :class:`Record` as usual."""

    __slots__ = ("pfn_limit", "watch")

    def __init__(self, pfn_limit: Optional[int] = None, watch: Optional[Set[int]] = None) -> None:
        self.pfn_limit = pfn_limit  # highest acceptable pfn, None for no limit
        self.watch: Set[int] = watch if watch is not None else set()  # pfns to see one by one


class Record:
    """One record of any layer, with a lazy body."""

    __slots__ = ("index", "offset", "layer", "rtype", "length", "endian", "_src", "_done",
                 "_padding", "checkpoint", "tap")

    def __init__(self, src: Source, index: int, offset: int, layer: str, rtype: int,
                 length: int, endian: str, checkpoint: int) -> None:
        self._src = src
        self.index = index
        self.offset = offset
        self.layer = layer
        self.rtype = rtype
        self.length = length
        self.endian = endian
        self._done = 0
        self._padding: Optional[bytes] = None
        #: number of libxc CHECKPOINT records seen before this record
        self.checkpoint = checkpoint
        #: set by a consumer riding along another's pass (the verifier's
        #: ``on_item``): called with every piece of the body that is read
        self.tap: Optional[Callable[[bytes], None]] = None

    @property
    def name(self) -> str:
        return (libxc.record_name if self.layer == LAYER_LIBXC else libxl.record_name)(self.rtype)

    @property
    def what(self) -> str:
        return f"record #{self.index} ({self.name})"

    @property
    def body_offset(self) -> int:
        return self.offset + 8

    @property
    def consumed(self) -> int:
        return self._done

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the body (never past its end)."""
        if n < 0 or self._done + n > self.length:
            raise ValueError(f"read of {n} bytes past the body of {self.what}")
        at = self._src.pos
        data = self._src.read_upto(n)
        if len(data) != n:
            raise self._truncated(at, n, len(data))
        self._done += n
        if self.tap is not None:
            self.tap(data)
        return data

    def _truncated(self, at: int, wanted: int, got: int) -> TruncatedError:
        e = TruncatedError(at, wanted, got, what=self.what, layer=self.layer)
        e.index, e.record_type = self.index, self.name
        return e

    def body(self, limit: Optional[int] = None) -> bytes:
        """The rest of the body.  ``limit`` guards against allocating more."""
        n = self.length - self._done
        if limit is not None and n > limit:
            raise LimitError(self.offset, f"expected a body of at most {limit} bytes, found "
                             f"{self.length}", what=self.what, layer=self.layer)
        rem = self._src.remaining()
        if rem is not None and n > rem:
            raise TruncatedError(self._src.pos, n, rem, what=self.what, layer=self.layer)
        return self.read(n)

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The rest of the body in chunks of at most ``size`` bytes."""
        while self._done < self.length:
            yield self.read(min(size, self.length - self._done))

    def finish(self) -> bytes:
        """Skip what is left of the body; read and return the padding."""
        if self._padding is None:
            src = self._src
            left = self.length - self._done
            if left:
                try:
                    src.skip(left)
                except TruncatedError as e:
                    e.what, e.layer = self.what, self.layer
                    e.index, e.record_type = self.index, self.name
                    raise
                self._done = self.length
            npad = -self.length & 7
            if npad:
                at = src.pos
                pad = src.read_upto(npad)
                if len(pad) != npad:
                    raise self._truncated(at, npad, len(pad))
                self._padding = pad
            else:
                self._padding = b""
        return self._padding

    def __repr__(self) -> str:
        return (f"Record(#{self.index} {self.layer} {self.name} at {self.offset:#x}, "
                f"length {self.length})")


Item = Union[Header, XlConfig, EnvelopeData, Frame, Record, PageRun, Legacy, Mismatch, EndOfInput,
             legacy.LItem]
