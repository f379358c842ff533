"""The envelope readers, each with the format it reads: the xl header and
optional data, the libvirt header and XML, the xend header and SXP
configuration, the XenServer (xenopsd) signature and frames; and the hand-over
to a legacy payload (:func:`read_legacy`), which every envelope and a bare
legacy stream share.

Each reader is a generator function over the parser it reads for (a
:class:`~xenstream.reading.context.Context`); where an envelope carries a v2
stream it goes on with :mod:`xenstream.reading.streams`.
"""

from __future__ import annotations

from typing import Generator, Iterator, Optional

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import legacy, libvirt, libxl, xend, xenopsd, xl
from xenstream.reading import items
from xenstream.reading.context import Context
from xenstream.reading.items import (
    LAYER_LEGACY,
    LAYER_LIBVIRT,
    LAYER_LIBXL,
    LAYER_XEND,
    LAYER_XENOPSD,
    LAYER_XL,
)
from xenstream.reading.legacy import LegacyOptions, LegacyParser
from xenstream.reading.streams import libxc_marker, read_libxc, read_libxl

#: xl configuration bigger than this is skipped (not held) when checking.
XL_CONFIG_MAX = 64 << 20


def _enter(ctx: Context, layer: str, head: bytes, start: int, size: int, magic: bytes,
           rule: str, noun: str = "magic") -> bytes:
    """Enter the envelope ``layer``: read the rest of its ``size``-byte header
    after ``head`` (its first 8 bytes) and check that it starts with ``magic``
    (``noun``: what the format calls it).  Returns the whole header."""
    ctx.state.layers.append(layer)
    what = f"header ({layer} header)"
    raw = head + ctx.src.read(size - 8, what=what, layer=layer)
    if raw[:len(magic)] != magic:
        raise FormatError(start, f"expected the {layer} {noun} {magic!r}, found "
                          f"{raw[:len(magic)]!r}", what=what, layer=layer, rule=rule)
    return raw


def _blob(ctx: Context, declared: int, limit: int, what: str, layer: str) -> Optional[bytes]:
    """Read a configuration blob of ``declared`` bytes, or skip it when it
    is larger than ``limit``; truncation is checked before anything is read."""
    src = ctx.src
    rem = src.remaining()
    if rem is not None and declared > rem:
        raise TruncatedError(src.pos, declared, rem, what=what, layer=layer,
                             message=f"expected {declared} bytes, found end of stream "
                             f"after {rem}")
    if declared > limit:
        src.skip(declared, what=what, layer=layer)
        return None
    return src.read(declared, what=what, layer=layer)


def read_legacy(ctx: Context, item: items.Legacy) -> Iterator[items.Item]:
    """Yield ``item``, then (when following legacy streams) the legacy
    stream's own items."""
    ctx.state.layers.append(LAYER_LEGACY)
    yield item
    if not ctx.follow_legacy:
        return
    opts = ctx.legacy_options
    if item.container == "xenopsd-frame" and opts.qemu == "auto":
        opts = LegacyOptions(opts.width, opts.guest, "optional")
    lp = LegacyParser(ctx.src, prefix=item.head, options=opts, container=item.container)
    ctx.legacy_parser = lp
    truncated = False
    for it in lp.items():
        if isinstance(it, legacy.LTruncated):
            truncated = True
        yield it
    ctx.state.finished = not truncated and item.container != "xenopsd-frame"


def _legacy_payload(ctx: Context, container: str) -> Iterator[items.Item]:
    at = ctx.src.pos
    peek = ctx.src.read_upto(16)
    if not peek:
        raise TruncatedError(at, 16, 0, what="legacy stream", layer=LAYER_LEGACY,
                             message="expected a legacy stream, found end of stream")
    yield from read_legacy(ctx, items.Legacy(at, legacy.sniff(peek), container, peek))


def read_libvirt(ctx: Context, head: bytes, start: int) -> Iterator[items.Item]:
    src = ctx.src
    raw = _enter(ctx, LAYER_LIBVIRT, head, start, libvirt.HEADER_SIZE, libvirt.MAGIC,
                 "libvirt-magic")
    f = libvirt.HDR.unpack(raw, "<", 16)
    yield items.Header(LAYER_LIBVIRT, "libvirt header", start, libvirt.HEADER_SIZE, f)
    at = src.pos
    data = _blob(ctx, f["xml_len"], libvirt.XML_MAX, "header (libvirt XML)", LAYER_LIBVIRT)
    yield items.EnvelopeData(at, LAYER_LIBVIRT, "libvirt XML", f["xml_len"], data)
    at = src.pos
    h2 = src.read_upto(8)
    if h2 == libxl.HDR_IDENT.to_bytes(8, "big"):
        yield from read_libxl(ctx, h2, at)
        return
    if len(h2) < 8:
        raise TruncatedError(at, 8, len(h2), what="header (libxl header)", layer=LAYER_LIBXL,
                             message="expected the saved stream after the XML, found end "
                             "of stream")
    more = src.read_upto(8)
    if legacy.sniff(h2 + more) is None:
        raise FormatError(at, "expected a libxl stream or a legacy stream after the XML, "
                          f"found {(h2 + more).hex(' ')}" + _hint(h2 + more),
                          what="header (libxl header)", layer=LAYER_LIBXL,
                          rule="libvirt-payload")
    yield from read_legacy(ctx, items.Legacy(at, legacy.sniff(h2 + more), "libvirt", h2 + more))


def read_xend(ctx: Context, head: bytes, start: int) -> Iterator[items.Item]:
    src = ctx.src
    raw = _enter(ctx, LAYER_XEND, head, start, xend.HEADER_SIZE, xend.MAGIC, "xend-magic",
                 "signature")
    clen = int.from_bytes(raw[16:20], "big", signed=True)
    yield items.Header(LAYER_XEND, "xend header", start, xend.HEADER_SIZE, {"config_len": clen}, ">")
    at = src.pos
    if clen > 0:
        data = _blob(ctx, clen, xend.CONFIG_MAX, "header (xend SXP config)", LAYER_XEND)
        yield items.EnvelopeData(at, LAYER_XEND, "xend SXP config", clen, data)
    yield from _legacy_payload(ctx, "xend")


def read_xenopsd(ctx: Context, head: bytes, start: int) -> Iterator[items.Item]:
    src = ctx.src
    st = ctx.state
    st.layers.append(LAYER_XENOPSD)
    what = "header (xenopsd signature)"
    sig = head + src.read(xenopsd.SIGNATURE_SIZE - 8, what=what, layer=LAYER_XENOPSD)
    if sig == xenopsd.MAGIC_LEGACY:
        yield items.Header(LAYER_XENOPSD, "xenopsd legacy signature", start, len(sig), {})
        at = src.pos
        peek = src.read_upto(16)
        if (yield from _by_content(ctx, peek, at, items.Mismatch(
                start, LAYER_XENOPSD, "header (xenopsd signature)", "xenopsd-signature-lie",
                "expected a legacy stream (the XenSavedDomain signature), found a {kind}: "
                "xenopsd would run the legacy converter on it and fail"))):
            return
        src.unread(peek)
        yield from _legacy_payload(ctx, "xenopsd")
        return
    if sig != xenopsd.MAGIC_V2:
        raise FormatError(start, f"expected {xenopsd.MAGIC_V2!r} or "
                          f"{xenopsd.MAGIC_LEGACY!r}, found {sig!r}", what=what,
                          layer=LAYER_XENOPSD, rule="xenopsd-signature")
    yield items.Header(LAYER_XENOPSD, "xenopsd signature", start, len(sig), {})
    while True:
        at = src.pos
        raw = src.read_upto(16)
        if len(raw) < 16:
            raise TruncatedError(at, 16, len(raw), what=f"record #{ctx.index}",
                                 layer=LAYER_XENOPSD,
                                 message="expected a frame header (or End_of_image), found "
                                 f"end of stream{f' after {len(raw)} bytes' if raw else ''}"
                                 ": xenopsd fails the restore")
        ftype, length = xenopsd.FRAME.unpack(raw).values()
        frame = items.Frame(ctx.index, at, ftype, length, None, src)
        ctx.index += 1
        sized = ftype in xenopsd.SIZED or ftype not in xenopsd.FRAME_NAMES
        if sized:
            rem = src.remaining()
            if rem is not None and length > rem:
                raise TruncatedError(at + 16, length, rem, what=frame.what,
                                     layer=LAYER_XENOPSD,
                                     message=f"expected a {length}-byte payload, found "
                                     f"end of stream after {rem} bytes")
            if ftype == xenopsd.XENOPS:
                frame.head = _blob(ctx, length, xenopsd.METADATA_MAX, frame.what, LAYER_XENOPSD)
                frame.consumed = length  # read, or skipped when too large to hold
            else:
                frame.head = src.read(min(length, 16), what=frame.what, layer=LAYER_XENOPSD)
                frame.consumed = len(frame.head)
        yield frame
        if sized:
            src.skip(length - frame.consumed, what=frame.what, layer=LAYER_XENOPSD)
        elif ftype == xenopsd.LIBXC:
            at2 = src.pos
            h = libxc_marker(ctx, "expected the libxc stream of the Libxc frame, found end of "
                             "stream after {} bytes",
                             lambda h: "expected a libxc stream in the Libxc frame, found "
                             f"{h.hex(' ')}" + _hint(h + src.read_upto(8)))
            yield from read_libxc(ctx, h, at2, bare=True, final=False)
        elif ftype == xenopsd.LIBXC_LEGACY:
            yield from _legacy_payload(ctx, "xenopsd-frame")
            if not ctx.follow_legacy or ctx.legacy_parser is None:
                return
        elif ftype == xenopsd.DEMU:
            return  # private format: nothing after it can be found
        elif ftype == xenopsd.END_OF_IMAGE:
            st.finished = True
            return


# -- xl ---------------------------------------------------------------------------


def read_xl(ctx: Context, head: bytes, start: int) -> Iterator[items.Item]:
    src = ctx.src
    raw = _enter(ctx, LAYER_XL, head, start, xl.HEADER_SIZE, xl.MAGIC, "xl-magic")
    endian = xl.byte_order(raw[32:36]) or "<"
    fields = xl.HDR.unpack(raw, endian, 32)
    yield items.Header(LAYER_XL, "xl header", start, xl.HEADER_SIZE, fields, endian)
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
    item = items.XlConfig(at, odl, clen, cfg)
    item.raw = opt
    yield item
    if fields["mandatory_flags"] & xl.MANDATORY_FLAG_STREAMV2:
        h2 = src.read_upto(8)
        if len(h2) < 8:
            raise TruncatedError(src.pos - len(h2), 8, len(h2), what="header (libxl header)",
                                 layer=LAYER_LIBXL)
        if h2 != libxl.HDR_IDENT.to_bytes(8, "big"):
            at = src.pos - 8
            peek = h2 + src.read_upto(8)
            guess = legacy.sniff(peek)
            if guess is not None:
                # the flag says libxl v2, the content is a legacy stream:
                # report it and read the stream by its content
                yield items.Mismatch(start + 36, LAYER_XL, "header (xl header)", "xl-streamv2-legacy",
                               "expected a libxl v2 stream (mandatory flags with STREAMv2), "
                               "found a legacy stream: libxl would read it as v2 and fail "
                               "(\"Invalid ident\")")
                yield from read_legacy(ctx, items.Legacy(at, guess, "xl-streamv2", peek))
                return
            src.unread(peek[8:])
            raise FormatError(src.pos - 8, "expected a libxl stream (xl STREAMv2 flag set), "
                              f"found {h2.hex(' ')}" + _hint(h2 + src.read_upto(8)),
                              what="header (libxl header)", layer=LAYER_LIBXL,
                              rule="xl-payload")
        yield from read_libxl(ctx, h2, src.pos - 8)
    else:
        at = src.pos
        peek = src.read_upto(16)
        if (yield from _by_content(ctx, peek, at, items.Mismatch(
                start + 36, LAYER_XL, "header (xl header)", "xl-streamv2-lie",
                "expected a legacy stream (mandatory flags without STREAMv2), found a {kind}: "
                "xl would run the legacy converter on it and fail"))):
            return
        yield from read_legacy(ctx, items.Legacy(at, legacy.sniff(peek), "xl", peek))


def _by_content(ctx: Context, peek: bytes, at: int,
                mismatch: items.Mismatch) -> Generator[items.Item, None, bool]:
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
    ctx.src.unread(peek[8:])
    if kind.startswith("libxl"):
        yield from read_libxl(ctx, peek[:8], at)
    else:
        yield from read_libxc(ctx, peek[:8], at, bare=True)
    return True


def _hint(raw: bytes) -> str:
    if raw[:8] == b"\xff" * 8:
        return " (a bare libxc stream)"
    if legacy.sniff(raw):
        return " (looks like a legacy stream: the STREAMv2 flag is wrong)"
    return ""
