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

import os
import struct
from typing import Generator, Iterator, Optional, Tuple

from xenstream.errors import FormatError, LimitError, TruncatedError
from xenstream.formats import legacy, libvirt, libxc, libxl, xend, xenopsd, xl
from xenstream.io import Source
from xenstream.layout import pad8
from xenstream.reading.context import ParseState
from xenstream.reading.items import (
    LAYER_LEGACY,
    LAYER_LIBVIRT,
    LAYER_LIBXC,
    LAYER_LIBXL,
    LAYER_XEND,
    LAYER_XENOPSD,
    LAYER_XL,
    EndOfInput,
    EnvelopeData,
    Frame,
    Header,
    Item,
    Legacy,
    Mismatch,
    PageFilter,
    PageRun,
    Record,
    StopStream,
    XlConfig,
)
from xenstream.reading.legacy import LegacyOptions, LegacyParser

__all__ = [
    "FORMAT_NAMES", "LAYER_LEGACY", "LAYER_LIBVIRT", "LAYER_LIBXC", "LAYER_LIBXL", "LAYER_XEND",
    "LAYER_XENOPSD", "LAYER_XL", "LIBXL_SMALL_BODY_MAX", "XL_CONFIG_MAX", "EndOfInput",
    "EnvelopeData", "Frame", "Header", "Item", "Legacy", "LegacyOptions", "LegacyParser",
    "Mismatch", "PageFilter", "PageRun", "ParseState", "Parser", "Record", "StopStream",
    "XlConfig",
]

FORMAT_NAMES = ("libxc", "libxl", "xl", "libvirt", "xenopsd", "xend", "legacy")
#: libxl records other than EMULATOR_CONTEXT: how much body anyone may hold.
LIBXL_SMALL_BODY_MAX = 64 << 20
#: xl configuration bigger than this is skipped (not held) when checking.
XL_CONFIG_MAX = 64 << 20


_RH = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}
#: the first 8 bytes of every envelope and stream header
_MAGIC8 = {
    b"\xff" * 8: "libxc",
    libxl.HDR_IDENT.to_bytes(8, "big"): "libxl",
    xl.MAGIC[:8]: "xl",
    libvirt.MAGIC[:8]: "libvirt",
    xenopsd.MAGIC_V2[:8]: "xenopsd",
    xend.MAGIC[:8]: "xend",
}
_RH4 = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}
_ZEROS = [bytes(i) for i in range(1025)]
_PFN_LIMIT = 1 << 52  # entries below this have type NOTAB and no reserved bits


class _PfnStructs(dict):  # type: ignore[type-arg]
    """count -> struct.Struct of ``count`` u64s, made on first use."""

    def __init__(self, endian: str) -> None:
        super().__init__()
        self.endian = endian

    def __missing__(self, count: int) -> struct.Struct:
        st = self[count] = struct.Struct(f"{self.endian}{count}Q")
        return st


_PFN_STRUCTS = {"<": _PfnStructs("<"), ">": _PfnStructs(">")}


class Parser:
    def __init__(self, src: Source, *, format: Optional[str] = None) -> None:
        self.src = src
        self.format = format
        self.state = ParseState()
        self._index = 0
        self.detected: Optional[str] = None
        #: set by a consumer to receive PAGE_DATA runs in bulk (seekable input)
        self.page_filter: Optional[PageFilter] = None
        #: read legacy payloads item by item (False: stop at the Legacy marker)
        self.follow_legacy = True
        self.legacy_options = LegacyOptions()
        self.legacy_parser: Optional[LegacyParser] = None

    # -- helpers ---------------------------------------------------------------

    def _rh(self, endian: str, layer: str = LAYER_LIBXC) -> Optional[Tuple[int, int]]:
        """Read a record header as (type, length); None at a clean EOF."""
        at = self.src.pos
        raw = self.src.read_upto(8)
        if len(raw) != 8:
            if not raw:
                return None
            raise TruncatedError(at, 8, len(raw), what=f"record #{self._index} header",
                                 layer=layer)
        return _RH[endian].unpack(raw)  # type: ignore[return-value]

    def _record(self, layer: str, rh: Tuple[int, int], offset: int, endian: str) -> Record:
        rtype, length = rh
        rec = Record(self.src, self._index, offset, layer, rtype, length, endian,
                     self.state.checkpoints)
        self._index += 1
        if length > libxc.REC_LENGTH_MAX and layer == LAYER_LIBXC:
            e: FormatError = LimitError(
                offset, f"expected a body length of at most {libxc.REC_LENGTH_MAX:#x} "
                f"(128 MiB, the restorer's REC_LENGTH_MAX), found {length:#x}",
                what=rec.what, layer=layer)
            e.index, e.record_type = rec.index, rec.name
            raise e
        size = self.src.size
        if size is not None and offset + 8 + length + (-length & 7) > size:
            rem = max(0, size - offset - 8)
            e = TruncatedError(offset + 8, length + pad8(length), rem,
                               what=rec.what, layer=layer,
                               message=f"expected a {length}-byte body (padded to "
                               f"{length + pad8(length)}), found end of stream "
                               f"after {rem} bytes")
            e.index, e.record_type = rec.index, rec.name
            raise e
        return rec

    def _eof_expected(self, rh: Optional[Tuple[int, int]], what: str,
                      layer: str = LAYER_LIBXL) -> Tuple[int, int]:
        if rh is None:
            raise TruncatedError(self.src.pos, 8, 0, what=what, layer=layer,
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
            yield from self._libxc(head, start, bare=True)
        elif kind == "libxl":
            yield from self._libxl(head, start)
        elif kind == "xl":
            yield from self._xl(head, start)
        elif kind == "libvirt":
            yield from self._libvirt(head, start)
        elif kind == "xenopsd":
            yield from self._xenopsd(head, start)
        elif kind == "xend":
            yield from self._xend(head, start)
        elif kind == "legacy":
            yield from self._legacy(Legacy(start, legacy.sniff(head + more), "bare", head + more))
        else:
            raise FormatError(start, "expected a Xen save image (xl, libvirt, xenopsd or xend "
                              "envelope, libxl or libxc v2/v3 header, or a legacy stream), "
                              f"found {(head + more)[:16].hex(' ')}", what="header",
                              rule="unrecognised")

    # -- envelopes ---------------------------------------------------------------------

    def _blob(self, declared: int, limit: int, what: str, layer: str) -> Optional[bytes]:
        """Read a configuration blob of ``declared`` bytes, or skip it when it
        is larger than ``limit``; truncation is checked before anything is read."""
        src = self.src
        rem = src.remaining()
        if rem is not None and declared > rem:
            raise TruncatedError(src.pos, declared, rem, what=what, layer=layer,
                                 message=f"expected {declared} bytes, found end of stream "
                                 f"after {rem}")
        if declared > limit:
            src.skip(declared, what=what, layer=layer)
            return None
        return src.read(declared, what=what, layer=layer)

    def _legacy(self, item: Legacy) -> Iterator[Item]:
        """Yield ``item``, then (when following legacy streams) the legacy
        stream's own items."""
        self.state.layers.append(LAYER_LEGACY)
        yield item
        if not self.follow_legacy:
            return
        opts = self.legacy_options
        if item.container == "xenopsd-frame" and opts.qemu == "auto":
            opts = LegacyOptions(opts.width, opts.guest, "optional")
        lp = LegacyParser(self.src, prefix=item.head, options=opts)
        self.legacy_parser = lp
        truncated = False
        for it in lp.items():
            if isinstance(it, legacy.LTruncated):
                truncated = True
            yield it
        self.state.finished = not truncated and item.container != "xenopsd-frame"

    def _legacy_payload(self, container: str) -> Iterator[Item]:
        at = self.src.pos
        peek = self.src.read_upto(16)
        if not peek:
            raise TruncatedError(at, 16, 0, what="legacy stream", layer=LAYER_LEGACY,
                                 message="expected a legacy stream, found end of stream")
        yield from self._legacy(Legacy(at, legacy.sniff(peek), container, peek))

    def _libvirt(self, head: bytes, start: int) -> Iterator[Item]:
        src = self.src
        self.state.layers.append(LAYER_LIBVIRT)
        what = "header (libvirt header)"
        raw = head + src.read(libvirt.HEADER_SIZE - 8, what=what, layer=LAYER_LIBVIRT)
        if raw[:16] != libvirt.MAGIC:
            raise FormatError(start, f"expected the libvirt magic {libvirt.MAGIC!r}, found "
                              f"{raw[:16]!r}", what=what, layer=LAYER_LIBVIRT,
                              rule="libvirt-magic")
        f = libvirt.HDR.unpack(raw, "<", 16)
        yield Header(LAYER_LIBVIRT, "libvirt header", start, libvirt.HEADER_SIZE, f)
        at = src.pos
        data = self._blob(f["xml_len"], libvirt.XML_MAX, "header (libvirt XML)", LAYER_LIBVIRT)
        yield EnvelopeData(at, LAYER_LIBVIRT, "libvirt XML", f["xml_len"], data)
        at = src.pos
        h2 = src.read_upto(8)
        if h2 == libxl.HDR_IDENT.to_bytes(8, "big"):
            yield from self._libxl(h2, at)
            return
        if len(h2) < 8:
            raise TruncatedError(at, 8, len(h2), what="header (libxl header)", layer=LAYER_LIBXL,
                                 message="expected the saved stream after the XML, found end "
                                 "of stream")
        more = src.read_upto(8)
        if legacy.sniff(h2 + more) is None:
            raise FormatError(at, "expected a libxl stream or a legacy stream after the XML, "
                              f"found {(h2 + more).hex(' ')}" + self._hint(h2 + more),
                              what="header (libxl header)", layer=LAYER_LIBXL,
                              rule="libvirt-payload")
        yield from self._legacy(Legacy(at, legacy.sniff(h2 + more), "libvirt", h2 + more))

    def _xend(self, head: bytes, start: int) -> Iterator[Item]:
        src = self.src
        self.state.layers.append(LAYER_XEND)
        what = "header (xend header)"
        raw = head + src.read(xend.HEADER_SIZE - 8, what=what, layer=LAYER_XEND)
        if raw[:16] != xend.MAGIC:
            raise FormatError(start, f"expected the xend signature {xend.MAGIC!r}, found "
                              f"{raw[:16]!r}", what=what, layer=LAYER_XEND, rule="xend-magic")
        clen = int.from_bytes(raw[16:20], "big", signed=True)
        yield Header(LAYER_XEND, "xend header", start, xend.HEADER_SIZE, {"config_len": clen}, ">")
        at = src.pos
        if clen > 0:
            data = self._blob(clen, xend.CONFIG_MAX, "header (xend SXP config)", LAYER_XEND)
            yield EnvelopeData(at, LAYER_XEND, "xend SXP config", clen, data)
        yield from self._legacy_payload("xend")

    def _xenopsd(self, head: bytes, start: int) -> Iterator[Item]:
        src = self.src
        st = self.state
        st.layers.append(LAYER_XENOPSD)
        what = "header (xenopsd signature)"
        sig = head + src.read(xenopsd.SIGNATURE_SIZE - 8, what=what, layer=LAYER_XENOPSD)
        if sig == xenopsd.MAGIC_LEGACY:
            yield Header(LAYER_XENOPSD, "xenopsd legacy signature", start, len(sig), {})
            at = src.pos
            peek = src.read_upto(16)
            if (yield from self._by_content(peek, at, Mismatch(
                    start, LAYER_XENOPSD, "header (xenopsd signature)", "xenopsd-signature-lie",
                    "expected a legacy stream (the XenSavedDomain signature), found a {kind}: "
                    "xenopsd would run the legacy converter on it and fail"))):
                return
            src.unread(peek)
            yield from self._legacy_payload("xenopsd")
            return
        if sig != xenopsd.MAGIC_V2:
            raise FormatError(start, f"expected {xenopsd.MAGIC_V2!r} or "
                              f"{xenopsd.MAGIC_LEGACY!r}, found {sig!r}", what=what,
                              layer=LAYER_XENOPSD, rule="xenopsd-signature")
        yield Header(LAYER_XENOPSD, "xenopsd signature", start, len(sig), {})
        while True:
            at = src.pos
            raw = src.read_upto(16)
            if len(raw) < 16:
                raise TruncatedError(at, 16, len(raw), what=f"record #{self._index}",
                                     layer=LAYER_XENOPSD,
                                     message="expected a frame header (or End_of_image), found "
                                     f"end of stream{f' after {len(raw)} bytes' if raw else ''}"
                                     ": xenopsd fails the restore")
            ftype, length = xenopsd.FRAME.unpack(raw).values()
            frame = Frame(self._index, at, ftype, length, None)
            self._index += 1
            sized = ftype in xenopsd.SIZED or ftype not in xenopsd.FRAME_NAMES
            if sized:
                rem = src.remaining()
                if rem is not None and length > rem:
                    raise TruncatedError(at + 16, length, rem, what=frame.what,
                                         layer=LAYER_XENOPSD,
                                         message=f"expected a {length}-byte payload, found "
                                         f"end of stream after {rem} bytes")
                if ftype == xenopsd.XENOPS:
                    frame.head = self._blob(length, xenopsd.METADATA_MAX, frame.what,
                                            LAYER_XENOPSD)
                else:
                    frame.head = src.read(min(length, 16), what=frame.what, layer=LAYER_XENOPSD)
            yield frame
            if sized:
                done = len(frame.head) if frame.head is not None else length
                src.skip(length - done if ftype != xenopsd.XENOPS else 0,
                         what=frame.what, layer=LAYER_XENOPSD)
            elif ftype == xenopsd.LIBXC:
                at2 = src.pos
                h = src.read_upto(8)
                if len(h) < 8:
                    raise TruncatedError(at2, 8, len(h), what="header (libxc image header)",
                                         layer=LAYER_LIBXC,
                                         message="expected the libxc stream of the Libxc frame, "
                                         f"found end of stream after {len(h)} bytes")
                if h != b"\xff" * 8:
                    raise FormatError(at2, "expected a libxc stream in the Libxc frame, found "
                                      f"{h.hex(' ')}" + self._hint(h + src.read_upto(8)),
                                      what="header (libxc image header)", layer=LAYER_LIBXC,
                                      rule="libxc-marker")
                yield from self._libxc(h, at2, bare=True, final=False)
            elif ftype == xenopsd.LIBXC_LEGACY:
                yield from self._legacy_payload("xenopsd-frame")
                if not self.follow_legacy or self.legacy_parser is None:
                    return
            elif ftype == xenopsd.DEMU:
                return  # private format: nothing after it can be found
            elif ftype == xenopsd.END_OF_IMAGE:
                st.finished = True
                return

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
        opt: Optional[bytes] = None
        if odl <= XL_CONFIG_MAX:
            opt = src.read(odl, what="header (xl optional data)", layer=LAYER_XL)
            if odl >= 4:
                clen = int.from_bytes(opt[:4], "little" if endian == "<" else "big")
                if clen <= odl - 4:
                    cfg = opt[4:4 + clen]
        else:
            left = odl
            clen = int.from_bytes(src.read(4, what="header (xl optional data)", layer=LAYER_XL),
                                  "little" if endian == "<" else "big")
            left -= 4
            if clen <= left and clen <= XL_CONFIG_MAX:
                cfg = src.read(clen, what="header (xl optional data)", layer=LAYER_XL)
                left -= clen
            src.skip(left, what="header (xl optional data)", layer=LAYER_XL)
        item = XlConfig(at, odl, clen, cfg)
        item.raw = opt
        yield item
        if fields["mandatory_flags"] & xl.MANDATORY_FLAG_STREAMV2:
            h2 = src.read_upto(8)
            if len(h2) < 8:
                raise TruncatedError(src.pos - len(h2), 8, len(h2), what="header (libxl header)",
                                     layer=LAYER_LIBXL)
            if h2 != libxl.HDR_IDENT.to_bytes(8, "big"):
                raise FormatError(src.pos - 8, "expected a libxl stream (xl STREAMv2 flag set), "
                                  f"found {h2.hex(' ')}" + self._hint(h2 + src.read_upto(8)),
                                  what="header (libxl header)", layer=LAYER_LIBXL,
                                  rule="xl-payload")
            yield from self._libxl(h2, src.pos - 8)
        else:
            at = src.pos
            peek = src.read_upto(16)
            if (yield from self._by_content(peek, at, Mismatch(
                    start + 36, LAYER_XL, "header (xl header)", "xl-streamv2-lie",
                    "expected a legacy stream (mandatory flags without STREAMv2), found a {kind}: "
                    "xl would run the legacy converter on it and fail"))):
                return
            yield from self._legacy(Legacy(at, legacy.sniff(peek), "xl", peek))

    def _by_content(self, peek: bytes, at: int, mismatch: Mismatch) -> Generator[Item, None, bool]:
        """Where a header promised a legacy stream but ``peek`` starts a v2 one:
        report ``mismatch`` and parse the v2 stream.  Returns True if it did."""
        if peek[:8] == libxl.HDR_IDENT.to_bytes(8, "big"):
            kind = "libxl v2 stream"
        elif peek[:8] == b"\xff" * 8:
            kind = "libxc v2 stream"
        else:
            return False
        mismatch.message = mismatch.message.format(kind=kind)
        yield mismatch
        self.src.unread(peek[8:])
        if kind.startswith("libxl"):
            yield from self._libxl(peek[:8], at)
        else:
            yield from self._libxc(peek[:8], at, bare=True)
        return True

    @staticmethod
    def _hint(raw: bytes) -> str:
        if raw[:8] == b"\xff" * 8:
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
            rh = self._eof_expected(self._rh(endian, LAYER_LIBXL), f"record #{self._index}")
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

    def _libxc(self, head: bytes, start: int, *, bare: bool,
               final: bool = True) -> Generator[Item, None, str]:
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
            if self.page_filter is not None and src.seekable:
                run = self._page_run(endian, self.page_filter)
                if run is not None:
                    yield run
            at = src.pos
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
                if bare and final:
                    st.finished = True
                return "end"
            if rec.rtype == libxc.REC_TYPE_CHECKPOINT:
                st.checkpoints += 1
                if not bare:
                    eof = yield from self._checkpoint_section()
                    if eof:
                        return "eof"

    def _page_run(self, endian: str, filt: PageFilter) -> Optional[PageRun]:
        """Check consecutive PAGE_DATA records in bulk, reading only their
        headers and pfn lists (one exact ``pread`` each, payloads untouched);
        stop before the first record that is not plainly valid."""
        src = self.src
        size = src.size
        assert size is not None
        fd = src.fd
        pread = os.pread
        unpack = _RH4[endian].unpack_from
        pfn_structs = _PFN_STRUCTS[endian]
        hi, nx = (7, 6) if endian == "<" else (0, 1)
        t_bad, t_low, t_high, t_data = libxc.T_BAD, libxc.T_LOW, libxc.T_HIGH, libxc.T_DATA
        # pfns at or above ``bound`` send a record to the one-by-one path
        bound = _PFN_LIMIT if filt.pfn_limit is None else min(_PFN_LIMIT, filt.pfn_limit + 1)
        watch = filt.watch
        pos = start = src.pos
        n = pages = entries = nread = 0
        maxp = -1
        want = 16 + 8 * 8  # header and pfns fetched at once: sized by the last record
        buf = b""
        while True:
            buf = pread(fd, want, pos)
            nread += len(buf)
            if len(buf) < 16:
                break
            rtype, length, count, res = unpack(buf)
            if rtype != 1 or res or not 0 < count <= 1024:
                break
            end = 16 + 8 * count
            if end > len(buf):
                more = pread(fd, end - len(buf), pos + len(buf))
                nread += len(more)
                buf += more
                if end > len(buf):
                    break
            want = end
            step = 8 + length
            if pos + step > size:
                break
            pfns = pfn_structs[count].unpack_from(buf, 16)
            m = max(pfns)
            if m < bound:
                # every entry below 2^52 (and the PV limit): NOTAB, no reserved bits
                if length != 8 + 4104 * count:
                    break
                n_data = count
            else:
                raw = buf[16:end]
                top = raw[hi::8]
                zeros = _ZEROS[count]
                if (top.translate(t_bad) != zeros or top.translate(t_low) != zeros
                        or raw[nx::8].translate(t_high) != zeros):
                    break
                n_data = top.translate(t_data).count(1)
                if length != 8 + 8 * count + 4096 * n_data:
                    break
                m = max(p & libxc.PAGE_DATA_PFN_MASK for p in pfns)
                if m >= bound:
                    break
                pfns = tuple(p & libxc.PAGE_DATA_PFN_MASK for p in pfns)
            if watch and not watch.isdisjoint(pfns):
                break
            if m > maxp:
                maxp = m
            n += 1
            pages += n_data
            entries += count
            pos += step
        src.bytes_read += nread
        # what was fetched for the record that stopped the run is handed to
        # the ordinary path, so no byte is read twice
        src.advance_to(pos, buf)
        if not n:
            return None
        run = PageRun(start, pos, self._index, n, pages, maxp, entries)
        self._index += n
        return run

    def _checkpoint_section(self) -> Generator[Item, None, bool]:
        """libxl records from a libxc CHECKPOINT to CHECKPOINT_END (and COLO's
        CHECKPOINT_STATE).  Returns True at a clean EOF after a complete one."""
        src = self.src
        st = self.state
        endian = st.libxl_endian
        st.in_checkpoint = True
        while True:
            at = src.pos
            rh = self._eof_expected(self._rh(endian, LAYER_LIBXL), f"record #{self._index}")
            rec = self._record(LAYER_LIBXL, rh, at, endian)
            yield rec
            rec.finish()
            if rec.rtype == libxl.REC_TYPE_CHECKPOINT_END:
                break
            if rec.rtype == libxl.REC_TYPE_END:
                # reported by the libxl rules; the restore stops here
                raise StopStream()
        st.in_checkpoint = False
        st.checkpoint_ends += 1
        # COLO: CHECKPOINT_STATE follows CHECKPOINT_END.  A libxc record of
        # type 5 (X86_PV_VCPU_EXTENDED) is at least 8 bytes long, a
        # CHECKPOINT_STATE 4 (0 in a broken one), so the length tells them apart.
        at = src.pos
        rh_xl = self._rh(endian, LAYER_LIBXL)
        if rh_xl is None:
            yield EndOfInput(at, LAYER_LIBXL)
            return True
        if rh_xl[0] == libxl.REC_TYPE_CHECKPOINT_STATE and rh_xl[1] < 8:
            st.colo = True
            rec = self._record(LAYER_LIBXL, rh_xl, at, endian)
            yield rec
            rec.finish()
            at = src.pos
            nxt = src.read_upto(1)
            if not nxt:
                yield EndOfInput(at, LAYER_LIBXL)
                return True
            src.unread(nxt)
        else:
            # the header belongs to the next libxc record: hand it back
            src.unread(_RH[endian].pack(*rh_xl))
        return False


