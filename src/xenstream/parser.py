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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Generator, Iterator, List, Optional, Tuple, Union

from xenstream import legacy, libxc, libxl, xl
from xenstream.errors import FormatError, LimitError, TruncatedError
from xenstream.io import Source
from xenstream.layout import pad8

LAYER_XL = "xl"
LAYER_LIBXL = "libxl"
LAYER_LIBXC = "libxc"
LAYER_LEGACY = "legacy"

FORMAT_NAMES = ("libxc", "libxl", "xl")
#: libxl records other than EMULATOR_CONTEXT: how much body anyone may hold.
LIBXL_SMALL_BODY_MAX = 64 << 20
#: xl configuration bigger than this is skipped (not held) when checking.
XL_CONFIG_MAX = 64 << 20


@dataclass
class Header:
    layer: str
    kind: str  # "xl header", "libxl header", "libxc image header", "libxc domain header"
    offset: int
    size: int
    fields: Dict[str, int]
    endian: str = "<"

    @property
    def what(self) -> str:
        return f"header ({self.kind})"


@dataclass
class XlConfig:
    offset: int
    optional_data_len: int
    config_len: Optional[int]  # None: optional data shorter than 4 bytes
    config: Optional[bytes]  # None when absent or too large to hold
    layer: str = LAYER_XL

    @property
    def what(self) -> str:
        return "header (xl optional data)"


@dataclass
class Legacy:
    offset: int
    guess: Optional[legacy.LegacyGuess]
    container: str  # "xl" (xl header without STREAMv2) or "bare"
    layer: str = LAYER_LEGACY

    @property
    def what(self) -> str:
        return "legacy stream"


@dataclass
class EndOfInput:
    offset: int
    layer: str

    @property
    def what(self) -> str:
        return "end of input"


class Record:
    """One record of any layer, with a lazy body."""

    __slots__ = ("index", "offset", "layer", "rtype", "length", "endian", "_src", "_done",
                 "_padding", "name", "checkpoint")

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
        self.name = (libxc.record_name if layer == LAYER_LIBXC else libxl.record_name)(rtype)

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
        data = self._src.read(n, what=self.what, layer=self.layer)
        self._done += n
        return data

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
            left = self.length - self._done
            if left:
                self._src.skip(left, what=self.what, layer=self.layer)
                self._done = self.length
            self._padding = self._src.read(pad8(self.length), what=self.what, layer=self.layer)
        return self._padding

    def __repr__(self) -> str:
        return (f"Record(#{self.index} {self.layer} {self.name} at {self.offset:#x}, "
                f"length {self.length})")


Item = Union[Header, XlConfig, Record, Legacy, EndOfInput]


@dataclass
class ParseState:
    """Where the parser is; read by consumers for context."""

    layers: List[str] = field(default_factory=list)
    libxc_endian: str = "<"
    libxl_endian: str = "<"
    libxc_version: int = 0
    checkpoints: int = 0  # libxc CHECKPOINT records seen
    checkpoint_ends: int = 0
    colo: bool = False
    in_checkpoint: bool = False  # between CHECKPOINT and CHECKPOINT_END
    finished: bool = False  # the stream's final END was read


class Parser:
    def __init__(self, src: Source, *, format: Optional[str] = None) -> None:
        self.src = src
        self.format = format
        self.state = ParseState()
        self._index = 0
        self.detected: Optional[str] = None
        self._pushed: Optional[Tuple[int, bytes]] = None

    # -- helpers ---------------------------------------------------------------

    def _rh(self, endian: str) -> Optional[Dict[str, int]]:
        """Read a record header; None at a clean EOF (no byte at all)."""
        if self._pushed is not None:
            raw = self._pushed[1]
            self._pushed = None
            return libxc.RH.unpack(raw, endian)
        at = self.src.pos
        raw = self.src.read_upto(8)
        if not raw:
            return None
        if len(raw) != 8:
            raise TruncatedError(at, 8, len(raw), what=f"record #{self._index} header")
        return libxc.RH.unpack(raw, endian)

    def _record(self, layer: str, rh: Dict[str, int], offset: int, endian: str) -> Record:
        rec = Record(self.src, self._index, offset, layer, rh["type"], rh["length"], endian,
                     self.state.checkpoints)
        self._index += 1
        if layer == LAYER_LIBXC and rh["length"] > libxc.REC_LENGTH_MAX:
            raise LimitError(offset, f"expected a body length of at most {libxc.REC_LENGTH_MAX:#x} "
                             f"(128 MiB, the restorer's REC_LENGTH_MAX), found {rh['length']:#x}",
                             what=rec.what, layer=layer)
        rem = self.src.remaining()
        if rem is not None and rh["length"] + pad8(rh["length"]) > rem:
            raise TruncatedError(offset + 8, rh["length"] + pad8(rh["length"]), rem,
                                 what=rec.what, layer=layer,
                                 message=f"expected a {rh['length']}-byte body (padded to "
                                 f"{rh['length'] + pad8(rh['length'])}), found end of stream "
                                 f"after {rem} bytes")
        return rec

    def _eof_expected(self, rh: Optional[Dict[str, int]], what: str) -> Dict[str, int]:
        if rh is None:
            raise TruncatedError(self.src.pos, 8, 0, what=what,
                                 message="expected a record header, found end of stream")
        return rh

    # -- detection ---------------------------------------------------------------

    def items(self) -> Iterator[Item]:
        src = self.src
        start = src.pos
        head = src.read_upto(8)
        if len(head) < 8:
            raise TruncatedError(start, 8, len(head), what="header",
                                 message=f"expected a Xen save image header, found "
                                 f"{'an empty input' if not head else f'only {len(head)} bytes'}")
        kind: Optional[str] = None
        if head == b"\xff" * 8:
            kind = "libxc"
        elif head == libxl.HDR_IDENT.to_bytes(8, "big"):
            kind = "libxl"
        elif head == xl.MAGIC[:8]:
            kind = "xl"
        forced = self.format
        if forced and kind != forced:
            found = f"an {kind} stream" if kind == "xl" else (f"a {kind} stream" if kind else
                                                               "no known format")
            raise FormatError(start, f"expected a {forced} stream (forced by --format), found "
                              f"{found}",
                              what="header", layer=forced, rule="format-mismatch")
        self.detected = kind
        if kind == "libxc":
            yield from self._libxc(head, start, bare=True)
        elif kind == "libxl":
            yield from self._libxl(head, start)
        elif kind == "xl":
            yield from self._xl(head, start)
        else:
            more = src.read_upto(8)
            guess = legacy.sniff(head + more)
            if guess is None:
                raise FormatError(start, "expected a Xen save image (xl, libxl or libxc v2/v3 "
                                  "header, or a legacy stream), found "
                                  f"{(head + more)[:16].hex(' ')}", what="header",
                                  rule="unrecognised")
            self.state.layers.append(LAYER_LEGACY)
            yield Legacy(start, guess, "bare")

    # -- xl ---------------------------------------------------------------------------

    def _xl(self, head: bytes, start: int) -> Iterator[Item]:
        src = self.src
        st = self.state
        st.layers.append(LAYER_XL)
        rest = src.read(xl.HEADER_SIZE - 8, what="header (xl header)", layer=LAYER_XL)
        raw = head + rest
        if raw[:32] != xl.MAGIC:
            raise FormatError(start, f"expected the xl magic {xl.MAGIC!r}, found {raw[:32]!r}",
                              what="header (xl header)", layer=LAYER_XL, rule="xl-magic")
        endian = xl.byte_order(raw[32:36]) or "<"
        fields = xl.HDR.unpack(raw, endian, 32)
        yield Header(LAYER_XL, "xl header", start, xl.HEADER_SIZE, fields, endian)
        odl = fields["optional_data_len"]
        at = src.pos
        clen: Optional[int] = None
        cfg: Optional[bytes] = None
        rem = src.remaining()
        if rem is not None and odl > rem:
            raise TruncatedError(at, odl, rem, what="header (xl optional data)", layer=LAYER_XL,
                                 message=f"expected {odl} bytes of optional data "
                                 f"(optional_data_len), found end of stream after {rem}")
        left = odl
        if odl >= 4:
            clen = int.from_bytes(src.read(4, what="header (xl optional data)", layer=LAYER_XL),
                                  "little" if endian == "<" else "big")
            left -= 4
            if clen <= left and clen <= XL_CONFIG_MAX:
                cfg = src.read(clen, what="header (xl optional data)", layer=LAYER_XL)
                left -= clen
        if left:
            src.skip(left, what="header (xl optional data)", layer=LAYER_XL)
        yield XlConfig(at, odl, clen, cfg)
        if fields["mandatory_flags"] & xl.MANDATORY_FLAG_STREAMV2:
            h2 = src.read_upto(8)
            if len(h2) < 8:
                raise TruncatedError(src.pos - len(h2), 8, len(h2), what="header (libxl header)",
                                     layer=LAYER_LIBXL)
            if h2 != libxl.HDR_IDENT.to_bytes(8, "big"):
                raise FormatError(src.pos - 8, "expected a libxl stream (xl STREAMv2 flag set), "
                                  f"found {h2.hex(' ')}" + self._hint(h2),
                                  what="header (libxl header)", layer=LAYER_LIBXL,
                                  rule="xl-payload")
            yield from self._libxl(h2, src.pos - 8)
        else:
            at = src.pos
            peek = src.read_upto(16)
            if peek[:8] == libxl.HDR_IDENT.to_bytes(8, "big") or peek[:8] == b"\xff" * 8:
                raise FormatError(at, "expected a legacy stream (xl STREAMv2 flag clear), found "
                                  f"a {'libxl' if peek[:1] == b'L' else 'libxc v2'} stream: xl "
                                  "would run the legacy converter on it and fail",
                                  what="header (xl header)", layer=LAYER_XL, rule="xl-streamv2-lie")
            st.layers.append(LAYER_LEGACY)
            yield Legacy(at, legacy.sniff(peek), "xl")

    @staticmethod
    def _hint(raw: bytes) -> str:
        if raw == b"\xff" * 8:
            return " (a bare libxc stream)"
        if legacy.sniff(raw):
            return " (looks like a legacy stream: the STREAMv2 flag is wrong)"
        return ""

    # -- libxl ---------------------------------------------------------------------

    def _libxl(self, head: bytes, start: int) -> Iterator[Item]:
        src = self.src
        st = self.state
        st.layers.append(LAYER_LIBXL)
        rest = src.read(libxl.HDR.size - 8, what="header (libxl header)", layer=LAYER_LIBXL)
        fields = libxl.HDR.unpack(head + rest, ">")
        endian = ">" if fields["options"] & libxl.HDR_OPT_BE else "<"
        st.libxl_endian = endian
        yield Header(LAYER_LIBXL, "libxl header", start, libxl.HDR.size, fields, ">")
        while True:
            at = src.pos
            rh = self._eof_expected(self._rh(endian), f"record #{self._index}")
            rec = self._record(LAYER_LIBXL, rh, at, endian)
            yield rec
            rec.finish()
            if rec.rtype == libxl.REC_TYPE_END:
                st.finished = True
                return
            if rec.rtype == libxl.REC_TYPE_LIBXC_CONTEXT:
                libxc_end = yield from self._libxc_nested()
                if libxc_end == "eof" or (libxc_end == "end" and st.checkpoints):
                    # a checkpointed stream: libxl reads no more after libxc returns
                    st.finished = libxc_end == "end"
                    return

    def _libxc_nested(self) -> Generator[Item, None, str]:
        src = self.src
        at = src.pos
        head = src.read_upto(8)
        if len(head) < 8:
            raise TruncatedError(at, 8, len(head), what="header (libxc image header)",
                                 layer=LAYER_LIBXC,
                                 message="expected the libxc stream after LIBXC_CONTEXT, found "
                                 "end of stream")
        if head != b"\xff" * 8:
            raise FormatError(at, "expected the libxc image header marker ff ff ff ff ff ff ff "
                              f"ff after LIBXC_CONTEXT, found {head.hex(' ')}",
                              what="header (libxc image header)", layer=LAYER_LIBXC,
                              rule="libxc-marker")
        return (yield from self._libxc(head, at, bare=False))

    # -- libxc ------------------------------------------------------------------------

    def _libxc(self, head: bytes, start: int, *, bare: bool) -> Generator[Item, None, str]:
        """Yield the libxc stream; returns "end" (END read) or "eof" (clean EOF
        after a checkpoint)."""
        src = self.src
        st = self.state
        st.layers.append(LAYER_LIBXC)
        rest = src.read(libxc.IHDR.size - 8, what="header (libxc image header)", layer=LAYER_LIBXC)
        ih = libxc.IHDR.unpack(head + rest, ">")
        if ih["id"] != libxc.IHDR_ID:
            raise FormatError(start + 8, f"expected image id {libxc.IHDR_ID:#x} ('XENF'), found "
                              f"{ih['id']:#x}", what="header (libxc image header)",
                              layer=LAYER_LIBXC, rule="ihdr-id")
        endian = ">" if ih["options"] & libxc.IHDR_OPT_BE else "<"
        st.libxc_endian = endian
        st.libxc_version = ih["version"]
        yield Header(LAYER_LIBXC, "libxc image header", start, libxc.IHDR.size, ih, ">")
        at = src.pos
        dh = libxc.DHDR.unpack(src.read(libxc.DHDR.size, what="header (libxc domain header)",
                                        layer=LAYER_LIBXC), endian)
        yield Header(LAYER_LIBXC, "libxc domain header", at, libxc.DHDR.size, dh, endian)
        while True:
            at = self._pushed[0] if self._pushed else src.pos
            rh = self._rh(endian)
            if rh is None:
                if st.checkpoints and not st.in_checkpoint:
                    yield EndOfInput(at, LAYER_LIBXC)
                    return "eof"
                raise TruncatedError(at, 8, 0, what=f"record #{self._index}", layer=LAYER_LIBXC,
                                     message="expected a record header, found end of stream "
                                     "(no END record)")
            rec = self._record(LAYER_LIBXC, rh, at, endian)
            yield rec
            rec.finish()
            if rec.rtype == libxc.REC_TYPE_END:
                if bare:
                    st.finished = True
                return "end"
            if rec.rtype == libxc.REC_TYPE_CHECKPOINT:
                st.checkpoints += 1
                if not bare:
                    eof = yield from self._checkpoint_section()
                    if eof:
                        return "eof"

    def _checkpoint_section(self) -> Generator[Item, None, bool]:
        """libxl records from a libxc CHECKPOINT to CHECKPOINT_END (and COLO's
        CHECKPOINT_STATE).  Returns True at a clean EOF after a complete one."""
        src = self.src
        st = self.state
        endian = st.libxl_endian
        st.in_checkpoint = True
        while True:
            at = src.pos
            rh = self._eof_expected(self._rh(endian), f"record #{self._index}")
            rec = self._record(LAYER_LIBXL, rh, at, endian)
            yield rec
            rec.finish()
            if rec.rtype == libxl.REC_TYPE_CHECKPOINT_END:
                break
            if rec.rtype == libxl.REC_TYPE_END:
                raise FormatError(at, "expected CHECKPOINT_END to close the checkpoint, found "
                                  "END", what=rec.what, layer=LAYER_LIBXL,
                                  rule="libxl-end-in-checkpoint")
        st.in_checkpoint = False
        st.checkpoint_ends += 1
        # COLO: CHECKPOINT_STATE follows CHECKPOINT_END.  A libxc record of
        # type 5 (X86_PV_VCPU_EXTENDED) is at least 8 bytes long, a
        # CHECKPOINT_STATE 4 (0 in a broken one), so the length tells them apart.
        at = src.pos
        raw = src.read_upto(8)
        if not raw:
            yield EndOfInput(at, LAYER_LIBXL)
            return True
        if len(raw) != 8:
            raise TruncatedError(at, 8, len(raw), what=f"record #{self._index} header")
        rh_xl = libxl.RH.unpack(raw, endian)
        if rh_xl["type"] == libxl.REC_TYPE_CHECKPOINT_STATE and rh_xl["length"] < 8:
            st.colo = True
            rec = self._record(LAYER_LIBXL, rh_xl, at, endian)
            yield rec
            rec.finish()
            at = src.pos
            raw = src.read_upto(8)
            if not raw:
                yield EndOfInput(at, LAYER_LIBXL)
                return True
            if len(raw) != 8:
                raise TruncatedError(at, 8, len(raw), what=f"record #{self._index} header")
        # the header belongs to the next libxc record: hand it back
        self._pushed = (at, raw)
        return False


def describe_item(item: Any) -> str:
    return str(getattr(item, "what", repr(item)))
