"""The v2 stream readers: a libxl stream (with the libxc stream its
LIBXC_CONTEXT hands over to, and the libxl records of every checkpoint), a
bare or nested libxc stream, and the bulk check of PAGE_DATA runs.


Each reader is a generator function over the parser it reads for (a
:class:`~xenstream.reading.context.Context`): it yields the items of
:mod:`xenstream.reading.items` and keeps the parser's
:class:`~xenstream.reading.context.ParseState` and record numbering.
"""


from __future__ import annotations

import os
import struct
from typing import Callable, Generator, Iterator, Optional, Tuple

from xenstream.errors import FormatError, LimitError, TruncatedError
from xenstream.formats import libxc, libxl
from xenstream.layout import pad8
from xenstream.reading.context import Context
from xenstream.reading.items import (
    LAYER_LIBXC,
    LAYER_LIBXL,
    EndOfInput,
    Header,
    Item,
    PageFilter,
    PageRun,
    Record,
    StopStream,
)

_RH = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}
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


def read_libxl(ctx: Context, head: bytes, start: int) -> Iterator[Item]:
    src = ctx.src
    st = ctx.state
    st.layers.append(LAYER_LIBXL)
    rest = src.read(libxl.HDR.size - 8, what="header (libxl header)", layer=LAYER_LIBXL)
    fields = libxl.HDR.unpack(head + rest, ">")
    endian = ">" if fields["options"] & libxl.HDR_OPT_BE else "<"
    st.libxl_endian = endian
    yield Header(LAYER_LIBXL, "libxl header", start, libxl.HDR.size, fields, ">")
    while True:
        rec = yield from _libxl_record(ctx, endian)
        if rec.rtype == libxl.REC_TYPE_END:
            st.finished = True
            return
        if rec.rtype == libxl.REC_TYPE_LIBXC_CONTEXT:
            libxc_end = yield from _libxc_nested(ctx)
            if libxc_end == "eof" or (libxc_end == "end" and st.checkpoints):
                # a checkpointed stream: libxl reads no more after libxc returns
                st.finished = libxc_end == "end"
                return


def libxc_marker(ctx: Context, eof_message: str, found: Callable[[bytes], str]) -> bytes:
    """The 8 bytes of a nested libxc stream's marker, read exactly; end of
    input (``eof_message``, given the bytes found) or another marker
    (``found(head)``) is an error about the libxc image header."""
    src = ctx.src
    at = src.pos
    head = src.read_upto(8)
    if len(head) < 8:
        raise TruncatedError(at, 8, len(head), what="header (libxc image header)",
                             layer=LAYER_LIBXC, message=eof_message.format(len(head)))
    if head != b"\xff" * 8:
        raise FormatError(at, found(head), what="header (libxc image header)",
                          layer=LAYER_LIBXC, rule="libxc-marker")
    return head


def _libxc_nested(ctx: Context) -> Generator[Item, None, str]:
    at = ctx.src.pos
    head = libxc_marker(ctx, "expected the libxc stream after LIBXC_CONTEXT, found end of stream",
                        lambda h: "expected the libxc image header marker ff ff ff ff ff ff ff "
                        f"ff after LIBXC_CONTEXT, found {h.hex(' ')}")
    return (yield from read_libxc(ctx, head, at, bare=False))


# -- libxc ------------------------------------------------------------------------


def read_libxc(ctx: Context, head: bytes, start: int, *, bare: bool,
               final: bool = True) -> Generator[Item, None, str]:
    """Yield the libxc stream; returns "end" (END read) or "eof" (clean EOF
    after a checkpoint)."""
    src = ctx.src
    st = ctx.state
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
        if ctx.page_filter is not None and src.seekable:
            run = _page_run(ctx, endian, ctx.page_filter)
            if run is not None:
                yield run
        at = src.pos
        rh = _rh(ctx, endian)
        if rh is None:
            if st.checkpoints and not st.in_checkpoint:
                yield EndOfInput(at, LAYER_LIBXC)
                return "eof"
            raise TruncatedError(at, 8, 0, what=f"record #{ctx.index}", layer=LAYER_LIBXC,
                                 message="expected a record header, found end of stream "
                                 "(no END record)")
        rec = _record(ctx, LAYER_LIBXC, rh, at, endian)
        yield rec
        rec.finish()
        if rec.rtype == libxc.REC_TYPE_END:
            if bare and final:
                st.finished = True
            return "end"
        if rec.rtype == libxc.REC_TYPE_CHECKPOINT:
            st.checkpoints += 1
            if not bare:
                eof = yield from _checkpoint_section(ctx)
                if eof:
                    return "eof"


def _page_run(ctx: Context, endian: str, filt: PageFilter) -> Optional[PageRun]:
    """Check consecutive PAGE_DATA records in bulk, reading only their
    headers and pfn lists (one exact ``pread`` each, payloads untouched);
    stop before the first record that is not plainly valid."""
    src = ctx.src
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
    sink = ctx.pfn_sink
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
        if sink is not None:
            sink(buf[16:end], endian)
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
    run = PageRun(start, pos, ctx.index, n, pages, maxp, entries)
    ctx.index += n
    return run


def _checkpoint_section(ctx: Context) -> Generator[Item, None, bool]:
    """libxl records from a libxc CHECKPOINT to CHECKPOINT_END (and COLO's
    CHECKPOINT_STATE).  Returns True at a clean EOF after a complete one."""
    src = ctx.src
    st = ctx.state
    endian = st.libxl_endian
    st.in_checkpoint = True
    while True:
        rec = yield from _libxl_record(ctx, endian)
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
    rh_xl = _rh(ctx, endian, LAYER_LIBXL)
    if rh_xl is None:
        yield EndOfInput(at, LAYER_LIBXL)
        return True
    if rh_xl[0] == libxl.REC_TYPE_CHECKPOINT_STATE and rh_xl[1] < 8:
        st.colo = True
        rec = _record(ctx, LAYER_LIBXL, rh_xl, at, endian)
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


# -- record headers and records ---------------------------------------------------


def _libxl_record(ctx: Context, endian: str) -> Generator[Item, None, Record]:
    """Yield the libxl record that must come next, then skip what the consumer
    left of it; returns it."""
    at = ctx.src.pos
    rh = _eof_expected(ctx, _rh(ctx, endian, LAYER_LIBXL), f"record #{ctx.index}")
    rec = _record(ctx, LAYER_LIBXL, rh, at, endian)
    yield rec
    rec.finish()
    return rec


def _rh(ctx: Context, endian: str, layer: str = LAYER_LIBXC) -> Optional[Tuple[int, int]]:
    """Read a record header as (type, length); None at a clean EOF."""
    at = ctx.src.pos
    raw = ctx.src.read_upto(8)
    if len(raw) != 8:
        if not raw:
            return None
        raise TruncatedError(at, 8, len(raw), what=f"record #{ctx.index} header",
                             layer=layer)
    return _RH[endian].unpack(raw)  # type: ignore[return-value]


def _record(ctx: Context, layer: str, rh: Tuple[int, int], offset: int, endian: str) -> Record:
    rtype, length = rh
    rec = Record(ctx.src, ctx.index, offset, layer, rtype, length, endian,
                 ctx.state.checkpoints)
    ctx.index += 1
    if length > libxc.REC_LENGTH_MAX and layer == LAYER_LIBXC:
        e: FormatError = LimitError(
            offset, f"expected a body length of at most {libxc.REC_LENGTH_MAX:#x} "
            f"(128 MiB, the restorer's REC_LENGTH_MAX), found {length:#x}",
            what=rec.what, layer=layer)
        e.index, e.record_type = rec.index, rec.name
        raise e
    size = ctx.src.size
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


def _eof_expected(ctx: Context, rh: Optional[Tuple[int, int]], what: str,
                  layer: str = LAYER_LIBXL) -> Tuple[int, int]:
    if rh is None:
        raise TruncatedError(ctx.src.pos, 8, 0, what=what, layer=layer,
                             message="expected a record header, found end of stream")
    return rh
