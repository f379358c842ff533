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

from typing import Generator, Iterator, Optional

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import legacy, libvirt, libxl, xend, xenopsd, xl
from xenstream.io import Source
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
from xenstream.reading.streams import read_libxc, read_libxl

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
    def __init__(self, src: Source, *, format: Optional[str] = None) -> None:
        self.src = src
        self.format = format
        self.state = ParseState()
        #: the number of the next record or frame, counted across layers
        self.index = 0
        self.detected: Optional[str] = None
        #: set by a consumer to receive PAGE_DATA runs in bulk (seekable input)
        self.page_filter: Optional[PageFilter] = None
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
            yield from read_libxl(self, h2, at)
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
                raise TruncatedError(at, 16, len(raw), what=f"record #{self.index}",
                                     layer=LAYER_XENOPSD,
                                     message="expected a frame header (or End_of_image), found "
                                     f"end of stream{f' after {len(raw)} bytes' if raw else ''}"
                                     ": xenopsd fails the restore")
            ftype, length = xenopsd.FRAME.unpack(raw).values()
            frame = Frame(self.index, at, ftype, length, None)
            self.index += 1
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
                yield from read_libxc(self, h, at2, bare=True, final=False)
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
            yield from read_libxl(self, h2, src.pos - 8)
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
            yield from read_libxl(self, peek[:8], at)
        else:
            yield from read_libxc(self, peek[:8], at, bare=True)
        return True

    @staticmethod
    def _hint(raw: bytes) -> str:
        if raw[:8] == b"\xff" * 8:
            return " (a bare libxc stream)"
        if legacy.sniff(raw):
            return " (looks like a legacy stream: the STREAMv2 flag is wrong)"
        return ""
