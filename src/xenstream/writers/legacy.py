"""Writer for legacy (Xen <= 4.5) libxc save streams, for tests.

Builds the streams the legacy ``xc_domain_save`` and its callers (libxl 4.1-4.5,
xl, libvirt, xend, xenopsd) wrote, byte for byte, in every dialect: 32- or
64-bit saving toolstack, PV (64-bit or 32-bit PAE guest) or HVM, with or
without extended info, xsave, TMEM, verify mode, Remus checkpoints and Remus
compression, and the three device-model record tails.

Two levels, like :mod:`xenstream.writers.v2`:

* :class:`LegacyWriter` writes one header, page batch, chunk or tail at a
  time; every size and count can be overridden for broken variants;
* :func:`write_legacy` writes a whole stream from a :class:`LegacySpec` and
  returns :class:`Expected`, what a correct converter must carry into a v2
  stream.

Notation (see xen-formats.md section 4): *ulong* is the saving toolstack's
``unsigned long`` (4 or 8 bytes); ints and u32 are 4 bytes; everything is
little-endian.
"""

from __future__ import annotations

import io
import itertools
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Sequence, Set, Tuple, Union

from xenstream.formats import hvm, libxc, xenopsd
from xenstream.layout import Layout
from xenstream.writers.v2 import (
    ImageSpec,
    default_config,
    default_libvirt_xml,
    default_xend_sxp,
    libvirt_header,
    page_content,
    pv_vcpu_context,
    xend_header,
    xl_header,
)

PAGE = 4096

# -- chunk ids: the format's own constants live in xenstream.legacy -------------------

from xenstream.formats.legacy import (  # noqa: E402
    CHUNK_COMPRESSED_DATA,
    CHUNK_ENABLE_COMPRESSION,
    CHUNK_ENABLE_VERIFY_MODE,
    CHUNK_HVM_ACPI_IOPORTS_LOCATION,
    CHUNK_HVM_CONSOLE_PFN,
    CHUNK_HVM_GENERATION_ID_ADDR,
    CHUNK_HVM_IDENT_PT,
    CHUNK_HVM_IOREQ_SERVER_PFN,
    CHUNK_HVM_MONITOR_RING_PFN,
    CHUNK_HVM_NR_IOREQ_SERVER_PAGES,
    CHUNK_HVM_PAGING_RING_PFN,
    CHUNK_HVM_SHARING_RING_PFN,
    CHUNK_HVM_VIRIDIAN,
    CHUNK_HVM_VM86_TSS,
    CHUNK_LAST_CHECKPOINT,
    CHUNK_TMEM,
    CHUNK_TMEM_EXTRA,
    CHUNK_TOOLSTACK,
    CHUNK_TSC_INFO,
    CHUNK_VCPU_INFO,
    HVM_PARAM_CHUNKS,
)

#: the order in which the saver writes the HVM param chunks (each only if non-zero)
HVM_PARAM_CHUNK_ORDER: Tuple[int, ...] = (
    CHUNK_HVM_GENERATION_ID_ADDR, CHUNK_HVM_IDENT_PT, CHUNK_HVM_PAGING_RING_PFN,
    CHUNK_HVM_MONITOR_RING_PFN, CHUNK_HVM_SHARING_RING_PFN, CHUNK_HVM_VM86_TSS,
    CHUNK_HVM_CONSOLE_PFN, CHUNK_HVM_ACPI_IOPORTS_LOCATION, CHUNK_HVM_VIRIDIAN,
    CHUNK_HVM_IOREQ_SERVER_PFN, CHUNK_HVM_NR_IOREQ_SERVER_PAGES,
)

# HVM_PARAM indexes of the tail's magic pfns (ioreq, bufioreq, store)
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_STORE_PFN = 1

MAX_BATCH_SIZE = 1024
PFN_TYPE_SHIFT = 28
PFN_MASK = (1 << PFN_TYPE_SHIFT) - 1
XTAB_ENTRY = libxc.PT_XTAB << PFN_TYPE_SHIFT  # the saver's pfn-less XTAB entry: 0xF0000000
NO_DATA_TYPES = frozenset({libxc.PT_XTAB, libxc.PT_BROKEN, libxc.PT_XALLOC})

VCPU_CONTEXT_SIZE = {8: 5168, 4: 2800}  # sizeof(vcpu_guest_context) per guest width
EXT_VCPU_CONTEXT_SIZE = 128  # the tail always carries 128 bytes of domctl.u
EXT_VCPUCONTEXT_STRUCT_SIZE = 56  # xen_domctl_ext_vcpucontext in Xen 4.3-4.5
DEFAULT_XFEATURE_MASK = 0x7  # x87 | SSE | AVX, as the host's mask the domctl reports

# device-model record signatures (21 or 22 bytes, no NUL)
QEMU_SIG_LIBXL = b"DeviceModelRecord0002"
QEMU_SIG_REMUS = b"RemusDeviceModelState"
QEMU_SIG_XEND = b"QemuDeviceModelRecord"
QEMU_SIG_XENSERVER = b"QemuDeviceModelRecord\n"
QEMU_KINDS = ("libxl", "remus", "xend", "xenserver")

TSC_CHUNK = Layout("legacy TSC_INFO chunk", [
    ("id", "i"), ("mode", "I"), ("nsec", "Q"), ("khz", "I"), ("incarnation", "I")])
HVM_PARAM_CHUNK = Layout("legacy HVM param chunk", [("id", "i"), ("_pad", "I"), ("value", "Q")])
PHYSMAP_HDR = Layout("libxl physmap record header", [("version", "I"), ("count", "I")])
PHYSMAP_ENTRY = Layout("libxl__physmap_info", [
    ("phys_offset", "Q"), ("start_addr", "Q"), ("size", "Q"), ("namelen", "I")])
TOOLSTACK_SAVE_VERSION = 1
#: stands in for the 4 uninitialised bytes at the end of a 64-bit physmap entry
PHYSMAP_JUNK = b"\xde\xad\xbe\xef"

# TMEM (xc_tmem.c)
TMEM_POOL_PERSIST = 1
TMEM_POOL_PAGESIZE_SHIFT = 4
TMEM_TERMINATOR = 0xFFFFFFFF
TMEM_OID_END = (0xFFFFFFFFFFFFFFFF,) * 3

# compression (xc_compression.c)
EMPTY_PAGE = 0x00
FULL_PAGE = 0x80
SKIP_FLAG = 0x80
LEN_MASK = 0x7F
WORST_COMPRESSED_PAGE = PAGE + 9  # 8 runs of 127 words + 1 run of 8 words + 9 run bytes

TmemPage = Tuple[Tuple[int, int, int], int, bytes]  # (oid, index, data)
TmemPool = Tuple[int, int, Tuple[int, int], Sequence[TmemPage], bool]
PhysmapEntry = Tuple[int, int, int, Optional[bytes]]
VcpuTail = Tuple[bytes, Optional[bytes], Optional[bytes]]


def _ulong_fmt(width: int) -> str:
    if width not in (4, 8):
        raise ValueError(f"toolstack width must be 4 or 8, found {width}")
    return "I" if width == 4 else "Q"


def p2m_fl_entries(p2m_size: int, guest_width: int) -> int:
    """P2M_FL_ENTRIES: how many p2m frames the guest's p2m array needs."""
    fpp = PAGE // guest_width
    return (p2m_size + fpp - 1) // fpp


def default_p2m_frames(p2m_size: int, guest_width: int) -> List[int]:
    """The top pfns of the guest, one per p2m frame (like writer.p2m_frame_pfns)."""
    return [p2m_size - 1 - i for i in range(p2m_fl_entries(p2m_size, guest_width))]


def ext_vcpu_context(vcpu_id: int, *, size: int = EXT_VCPUCONTEXT_STRUCT_SIZE) -> bytes:
    """128 bytes of domctl.u after XEN_DOMCTL_get_ext_vcpucontext (struct + zeros)."""
    blob = bytearray(EXT_VCPU_CONTEXT_SIZE)
    struct.pack_into("<II", blob, 0, vcpu_id, size)
    struct.pack_into("<QQHH", blob, 8, 0xFFFFFFFF81001000 + vcpu_id, 0xFFFFFFFF81002000, 0x23, 0x10)
    return bytes(blob)


def xsave_buffer(xcr0: int = 0x7, *, fill: int = 0) -> bytes:
    """A XEN_DOMCTL_getvcpuextstate buffer: xcr0, xcr0_accum, then the XSAVE area."""
    area = bytearray(hvm.xstate_uncompressed_size(xcr0))
    struct.pack_into("<HH", area, 0, 0x37F, 0)  # FCW, FSW
    struct.pack_into("<I", area, 24, 0x1F80)  # MXCSR
    struct.pack_into("<Q", area, 512, xcr0 & 0x3)  # XSTATE_BV
    if fill:
        struct.pack_into("<Q", area, 160, fill)  # XMM0 low half
    return struct.pack("<QQ", xcr0, xcr0) + bytes(area)


def tmem_payload(pools: Optional[Sequence[TmemPool]] = None, *, version: int = 1,
                 max_pools: Optional[int] = None, client_flags: int = 0, weight: int = 0,
                 cap: int = 0) -> bytes:
    """The bytes after the -5 id, as xc_tmem_save() writes them.

    ``pools``: (pool_id, flags, (uuid0, uuid1), pages, early_end) with pages
    (oid, index, data); n_pages is written as len(pages) (+1 if early_end) for a
    persistent pool and 0 otherwise; ``early_end`` ends the page list with the
    all-ones oid before n_pages pages were written.
    """
    if pools is None:
        pg = bytes(range(256)) * 16
        pools = [
            (0, TMEM_POOL_PERSIST, (0x1111, 0x2222), [((1, 2, 3), 7, pg)], True),
            (1, 0, (0, 0), [], False),
            (2, TMEM_POOL_PERSIST, (0x3333, 0x4444), [((4, 5, 6), 0, pg[::-1])], False),
        ]
    out = [struct.pack("<III", version, len(pools) if max_pools is None else max_pools,
                       TMEM_TERMINATOR),
           struct.pack("<IIII", client_flags, weight, cap, TMEM_TERMINATOR)]
    for pool_id, flags, uuid, pages, early_end in pools:
        persist = bool(flags & TMEM_POOL_PERSIST)
        n_pages = (len(pages) + (1 if early_end else 0)) if persist else 0
        out.append(struct.pack("<IIIQQ", pool_id, flags, n_pages, uuid[0], uuid[1]))
        if not n_pages:
            continue
        pagesize = 1 << (((flags >> TMEM_POOL_PAGESIZE_SHIFT) & 0xF) + 12)
        for oid, index, data in pages:
            if len(data) != pagesize:
                raise ValueError(f"tmem page of {len(data)} bytes in a pool of {pagesize}")
            out.append(struct.pack("<QQQI", *oid, index) + data)
        if early_end:
            out.append(struct.pack("<QQQ", *TMEM_OID_END))
    out.append(struct.pack("<I", TMEM_TERMINATOR))
    return b"".join(out)


def physmap_toolstack(entries: Sequence[PhysmapEntry], *, width: int,
                      junk: bytes = PHYSMAP_JUNK, version: int = TOOLSTACK_SAVE_VERSION) -> bytes:
    """libxl 4.5's toolstack record (the -18 chunk payload).

    ``entries`` are (phys_offset, start_addr, size, name) with ``name`` the
    xenstore value without its NUL (written with a NUL, namelen = len + 1), or
    None for a missing name node (namelen 0).  Each entry takes
    sizeof(struct libxl__physmap_info) + namelen bytes: 28 on a 32-bit
    toolstack; 32 on a 64-bit one, where the last 4 bytes were never
    initialised (written as ``junk``).
    """
    _ulong_fmt(width)
    if len(junk) != 4:
        raise ValueError("junk must be 4 bytes")
    out = [PHYSMAP_HDR.pack(version=version, count=len(entries))]
    for phys_offset, start_addr, size, name in entries:
        raw = b"" if name is None else name + b"\0"
        out.append(PHYSMAP_ENTRY.pack(phys_offset=phys_offset, start_addr=start_addr, size=size,
                                      namelen=len(raw)))
        out.append(raw)
        if width == 8:
            out.append(junk)
    return b"".join(out)


def compress_page(prev: bytes, new: bytes, *, mode: str = "auto") -> bytes:
    """Encode ``new`` against the receiver's copy ``prev`` as xc_compression.c does.

    ``auto``: 0x00 if unchanged, else runs of u32 words (at most 127 words per
    run; copy runs carry the new bytes, skip runs none), covering all 4096
    bytes including a trailing skip run.  ``full``: 0x80 + the page.
    ``runs``: the run encoding even for an unchanged page (all skip runs).
    """
    if len(prev) != PAGE or len(new) != PAGE:
        raise ValueError("pages must be 4096 bytes")
    if mode == "full":
        return bytes([FULL_PAGE]) + new
    if mode not in ("auto", "runs"):
        raise ValueError(f"unknown compression mode {mode!r}")
    if mode == "auto" and prev == new:
        return bytes([EMPTY_PAGE])
    out = bytearray()
    words = PAGE // 4
    start = 0
    while start < words:
        copying = prev[start * 4:start * 4 + 4] != new[start * 4:start * 4 + 4]
        end = start + 1
        while (end < words and end - start < LEN_MASK
               and (prev[end * 4:end * 4 + 4] != new[end * 4:end * 4 + 4]) == copying):
            end += 1
        n = end - start
        if copying:
            out.append(n)
            out += new[start * 4:end * 4]
        else:
            out.append(SKIP_FLAG | n)
        start = end
    return bytes(out)


def decode_page(prev: bytes, enc: bytes, offset: int = 0) -> Tuple[bytes, int]:
    """Apply one encoded page at ``enc[offset:]`` onto ``prev``; (page, next offset)."""
    if offset >= len(enc):
        raise ValueError("compressed data exhausted")
    b = enc[offset]
    if b == EMPTY_PAGE:
        return bytes(prev), offset + 1
    if b == FULL_PAGE:
        if offset + 1 + PAGE > len(enc):
            raise ValueError("truncated FULL_PAGE")
        return bytes(enc[offset + 1:offset + 1 + PAGE]), offset + 1 + PAGE
    page = bytearray(prev)
    pos = offset
    pagepos = 0
    while pagepos < PAGE:
        if pos >= len(enc):
            raise ValueError("truncated run-encoded page")
        b = enc[pos]
        n = (b & LEN_MASK) * 4
        if not n:
            raise ValueError(f"zero-length run at offset {pos}")
        pos += 1
        if not b & SKIP_FLAG:
            if pos + n > len(enc) or pagepos + n > PAGE:
                raise ValueError(f"copy run out of bounds at offset {pos - 1}")
            page[pagepos:pagepos + n] = enc[pos:pos + n]
            pos += n
        pagepos += n
    return bytes(page), pos


class LegacyWriter:
    """One legacy libxc stream, written piece by piece.

    ``width`` is the saving toolstack's ``unsigned long`` size (4 or 8);
    ``guest_width`` the PV guest's (8: 64-bit, 4: 32-bit PAE).
    """

    def __init__(self, out: BinaryIO, *, width: int = 8, guest: str = "pv",
                 guest_width: int = 8) -> None:
        if guest not in ("pv", "hvm"):
            raise ValueError(f"guest must be 'pv' or 'hvm', found {guest!r}")
        if guest_width not in (4, 8):
            raise ValueError(f"guest_width must be 4 or 8, found {guest_width}")
        self.out = out
        self.width = width
        self.guest = guest
        self.guest_width = guest_width
        self.ul = _ulong_fmt(width)
        self.extv = False  # set by header(): the tail carries 128-byte ext contexts
        self.xcnt = 0  # set by header(): per-vcpu xsave record size (0: none)
        self.p2m_frames: List[int] = []

    # -- primitives

    def raw(self, data: bytes) -> None:
        self.out.write(data)

    def ulongs(self, values: Sequence[int]) -> bytes:
        return struct.pack(f"<{len(values)}{self.ul}", *values)

    def chunk_id(self, cid: int) -> None:
        self.raw(struct.pack("<i", cid))

    # -- header

    def header(self, p2m_size: int, *, ext_info: bool = True, extv: bool = True,
               xcnt: Optional[int] = None, vcpu_block_size: Optional[int] = None,
               extra_blocks: Sequence[Tuple[bytes, bytes]] = (),
               tot_bytes: Optional[int] = None, p2m_frames: Optional[Sequence[int]] = None,
               vcpu0: Optional[bytes] = None) -> None:
        """p2m_size; for PV the extended info and the P2M frame list.

        ``xcnt`` is the "xcnt" block's value (None/0: no block); ``vcpu0`` the
        "vcpu" block data (default: vcpu0's raw context, with MFNs);
        ``vcpu_block_size`` overrides the block's size (the data is cut or
        zero-padded to it); ``extra_blocks`` are (4-byte id, data) appended;
        ``tot_bytes`` overrides the total.
        """
        self.raw(self.ulongs([p2m_size]))
        if self.guest == "hvm":
            return
        if ext_info:
            ctx = vcpu0 if vcpu0 is not None else pv_vcpu_context(
                self.guest_width, 0, cr3_pfn=0x41001, start_info_pfn=0x41000)
            size = len(ctx) if vcpu_block_size is None else vcpu_block_size
            ctx = (ctx + b"\0" * size)[:size]
            blocks: List[Tuple[bytes, bytes]] = [(b"vcpu", ctx)]
            if extv:
                blocks.append((b"extv", b""))
            if xcnt:
                blocks.append((b"xcnt", struct.pack("<I", xcnt)))
            blocks.extend(extra_blocks)
            total = sum(8 + len(d) for _, d in blocks) if tot_bytes is None else tot_bytes
            self.raw(self.ulongs([(1 << (8 * self.width)) - 1]))
            self.raw(struct.pack("<I", total))
            for bid, data in blocks:
                if len(bid) != 4:
                    raise ValueError(f"extended-info block id must be 4 bytes: {bid!r}")
                self.raw(bid + struct.pack("<I", len(data)) + data)
            self.extv = extv
            self.xcnt = xcnt or 0
        frames = list(p2m_frames) if p2m_frames is not None else \
            default_p2m_frames(p2m_size, self.guest_width)
        self.p2m_frames = frames
        self.raw(self.ulongs(frames))

    # -- body

    def batch(self, pfns: Sequence[int], types: Union[int, Sequence[int]] = 0,
              pages: Optional[Sequence[bytes]] = None, *,
              entries: Optional[Sequence[int]] = None, count: Optional[int] = None,
              with_data: bool = True) -> None:
        """A page batch: int n, n ulong pfn_type entries, then the data pages.

        Entries are ``type << 28 | pfn``, except XTAB, which the saver always
        wrote as exactly 0xF0000000 (no pfn).  ``pages`` holds the data of the
        data-bearing entries (not XTAB/BROKEN/XALLOC) in order (default:
        ``page_content(pfn)``); ``entries`` and ``count`` override the raw
        words and the count; ``with_data=False`` writes the pfn array only
        (compressed checkpoints).
        """
        tl = [types] * len(pfns) if isinstance(types, int) else list(types)
        if entries is None:
            entries = [XTAB_ENTRY if t == libxc.PT_XTAB else (t << PFN_TYPE_SHIFT) | p
                       for p, t in zip(pfns, tl)]
        self.raw(struct.pack("<i", len(entries) if count is None else count))
        self.raw(self.ulongs(entries))
        if not with_data:
            return
        if pages is None:
            data = [page_content(e & PFN_MASK) for e in entries
                    if (e >> PFN_TYPE_SHIFT) & 0xF not in NO_DATA_TYPES]
        else:
            data = list(pages)
        for d in data:
            self.raw(d)

    def verify_mode(self) -> None:
        self.chunk_id(CHUNK_ENABLE_VERIFY_MODE)

    def vcpu_info(self, max_vcpu_id: int, online: Sequence[int] = (0,)) -> None:
        """int -2, int max_vcpu_id, (max_vcpu_id/64 + 1) u64 bitmap words."""
        words = [0] * (max_vcpu_id // 64 + 1)
        for v in online:
            words[v // 64] |= 1 << (v % 64)
        self.raw(struct.pack(f"<ii{len(words)}Q", CHUNK_VCPU_INFO, max_vcpu_id, *words))

    def hvm_param(self, chunk_id: int, value: int, *, pad: int = 0) -> None:
        """``{int id; u32 pad; u64 value}``."""
        self.raw(HVM_PARAM_CHUNK.pack(id=chunk_id, _pad=pad, value=value))

    def tmem(self, raw: Optional[bytes] = None) -> None:
        self.chunk_id(CHUNK_TMEM)
        self.raw(tmem_payload() if raw is None else raw)

    def tmem_extra(self, entries: Sequence[Tuple[int, Tuple[int, int, int], int]] = ()) -> None:
        """int -6, {u32 pool_id, u64 oid[3], u32 index}*, u32 0xFFFFFFFF."""
        self.chunk_id(CHUNK_TMEM_EXTRA)
        for pool_id, oid, index in entries:
            self.raw(struct.pack("<IQQQI", pool_id, *oid, index))
        self.raw(struct.pack("<I", TMEM_TERMINATOR))

    def tsc_info(self, mode: int = 0, nsec: int = 0, khz: int = 0, incarnation: int = 0) -> None:
        """int -7, u32 mode, u64 nsec, u32 khz, u32 incarnation (packed, 24 bytes)."""
        self.raw(TSC_CHUNK.pack(id=CHUNK_TSC_INFO, mode=mode, nsec=nsec, khz=khz,
                                incarnation=incarnation))

    def last_checkpoint(self) -> None:
        self.chunk_id(CHUNK_LAST_CHECKPOINT)

    def compressed_data(self, data: bytes, *, length: Optional[int] = None) -> None:
        """int -12, ulong length, data."""
        self.chunk_id(CHUNK_COMPRESSED_DATA)
        self.raw(self.ulongs([len(data) if length is None else length]))
        self.raw(data)

    def enable_compression(self) -> None:
        self.chunk_id(CHUNK_ENABLE_COMPRESSION)

    def toolstack(self, data: bytes, *, length: Optional[int] = None) -> None:
        """int -18, u32 len, data."""
        self.raw(struct.pack("<iI", CHUNK_TOOLSTACK, len(data) if length is None else length))
        self.raw(data)

    def end_of_body(self) -> None:
        self.chunk_id(0)

    # -- tails

    def hvm_tail(self, magic_pfns: Tuple[int, int, int], hvm_context: bytes, *,
                 rec_size: Optional[int] = None) -> None:
        """3 x u64 (ioreq, bufioreq, store pfn), u32 size, HVM context."""
        self.raw(struct.pack("<QQQI", *magic_pfns,
                             len(hvm_context) if rec_size is None else rec_size))
        self.raw(hvm_context)

    def pv_tail(self, unmapped: Sequence[int], vcpus: Sequence[VcpuTail], shared_info: bytes,
                *, count: Optional[int] = None, xfeature_mask: int = DEFAULT_XFEATURE_MASK) -> None:
        """u32 count + count ulongs; per online vcpu (ctx, ext, xsave); shared info.

        ``ext`` is the 128-byte extended context (None: a default one if the
        header said "extv", else nothing); ``xsave`` the getvcpuextstate
        buffer (xcr0, xcr0_accum, area), written as u64 xfeature_mask, u64
        size, buffer (None: a default one if the header had "xcnt", else
        nothing).
        """
        self.raw(struct.pack("<I", len(unmapped) if count is None else count))
        self.raw(self.ulongs(list(unmapped)))
        for v, (ctx, ext, xsave) in enumerate(vcpus):
            self.raw(ctx)
            if ext is None and self.extv:
                ext = ext_vcpu_context(v)
            if ext is not None:
                self.raw(ext)
            if xsave is None and self.xcnt:
                xsave = xsave_buffer()
            if xsave is not None:
                self.raw(struct.pack("<QQ", xfeature_mask, len(xsave)) + xsave)
        self.raw(shared_info)

    def qemu_record(self, data: bytes, *, kind: str = "libxl", length: Optional[int] = None) -> None:
        """The device-model record after an HVM tail.

        ``libxl``: DeviceModelRecord0002 + u32 LE length; ``remus``:
        RemusDeviceModelState + u32 LE length; ``xend``: QemuDeviceModelRecord
        and the data to EOF; ``xenserver``: QemuDeviceModelRecord\\n + u32 BE
        length.
        """
        n = len(data) if length is None else length
        if kind == "libxl":
            self.raw(QEMU_SIG_LIBXL + struct.pack("<I", n))
        elif kind == "remus":
            self.raw(QEMU_SIG_REMUS + struct.pack("<I", n))
        elif kind == "xend":
            self.raw(QEMU_SIG_XEND)
        elif kind == "xenserver":
            self.raw(QEMU_SIG_XENSERVER + struct.pack(">I", n))
        else:
            raise ValueError(f"unknown qemu record kind {kind!r}")
        self.raw(data)


# -- whole streams ---------------------------------------------------------------------


def _default_hvm_params() -> Dict[int, int]:
    return {
        CHUNK_HVM_GENERATION_ID_ADDR: 0xFC00B000,
        CHUNK_HVM_IDENT_PT: 0xFEFFC000,
        CHUNK_HVM_VM86_TSS: 0xFEFFD000,
        CHUNK_HVM_CONSOLE_PFN: 0xFEFFF,
        CHUNK_HVM_ACPI_IOPORTS_LOCATION: 1,
        CHUNK_HVM_VIRIDIAN: 1,
        CHUNK_HVM_IOREQ_SERVER_PFN: 0xFEFF0,
        CHUNK_HVM_NR_IOREQ_SERVER_PAGES: 2,
    }


DEFAULT_PHYSMAP: Tuple[Tuple[int, int, int, bytes], ...] = (
    (0xF0000000, 0xF0000000, 0x800000, b"vga.vram"),
    (0xF1000000, 0xF1000000, 0x10000, b"cirrus_vga.rom"),
)


@dataclass
class LegacySpec:
    """What :func:`write_legacy` builds.  The defaults give a small valid PV stream."""

    guest: str = "pv"
    width: int = 8  # saving toolstack's unsigned long size
    guest_width: int = 8  # PV guest width (4: 32-bit PAE)
    pages: int = 64  # p2m_size; pfns 0 .. pages-1
    vcpus: int = 1
    offline_vcpus: Sequence[int] = ()  # vcpu ids (< vcpus, not 0) left out of the map and tail
    batch: int = 1024
    batch_sizes: Sequence[int] = ()  # batches of these sizes in turn, instead of ``batch``
    live: bool = False  # live: 2 iterations, TSC chunk between them; else TSC first
    checkpoints: int = 0  # 0 = plain stream; n = Remus with n checkpoints
    compression: bool = False  # Remus compression from checkpoint 2 on
    compressed_chunk_size: int = 16384  # split COMPRESSED_DATA chunks at page boundaries
    truncate_in_checkpoint: Optional[int] = None  # cut inside checkpoint k (1-based)
    verify_mode: bool = False
    tmem: bool = False
    tsc_mode: int = 0
    ext_info: bool = True  # PV: False = pre-3.1 layout (no extended info, no extv)
    xsave: bool = False  # PV: "xcnt" block and per-vcpu xsave records
    toolstack: Optional[bool] = None  # -18 chunk; None: for libxl producers (bare/xl/libvirt)
    physmap: Sequence[Tuple[int, int, int, bytes]] = DEFAULT_PHYSMAP  # HVM toolstack entries
    physmap_names: bool = True  # False: namelen 0 (no name node)
    unmapped: Sequence[int] = ()  # PV unmapped pfns (tail list); live: sent in iteration 1
    holes: Optional[Sequence[int]] = None  # pfns sent as pfn-less XTAB entries (None: HVM 1)
    broken: Sequence[int] = ()  # pfns sent as BROKEN entries
    qemu: Optional[str] = None  # "libxl"|"remus"|"xend"|"xenserver"|"none"; None: by envelope
    qemu_data: Optional[bytes] = None  # first checkpoint's qemu blob (default "QEVM"...)
    envelope: str = "bare"  # "bare" | "xl" | "libvirt" | "xend" | "xenopsd"
    hvm_params: Dict[int, int] = field(default_factory=_default_hvm_params)
    dirty_pages: int = 12  # pages resent per later iteration/checkpoint


@dataclass
class Expected:
    """What a correct converter must carry into the v2 stream."""

    pages: Dict[int, bytes] = field(default_factory=dict)
    page_types: Dict[int, int] = field(default_factory=dict)
    xtab: Set[int] = field(default_factory=set)
    vcpus: Dict[int, Dict[str, bytes]] = field(default_factory=dict)
    hvm_context: Optional[bytes] = None
    hvm_params: Dict[int, int] = field(default_factory=dict)
    tsc: Tuple[int, int, int, int] = (0, 0, 0, 0)  # (mode, khz, nsec, incarnation)
    shared_info: Optional[bytes] = None
    qemu: Optional[bytes] = None
    physmap: List[PhysmapEntry] = field(default_factory=list)
    p2m_size: int = 0
    p2m_frames: List[int] = field(default_factory=list)
    guest_width: int = 8
    width: int = 8
    complete_checkpoints: int = 0  # plain stream: 1; truncated first checkpoint: 0
    verify_mode: bool = False
    guest: str = "pv"
    qemu_kind: Optional[str] = None
    toolstack: Optional[bytes] = None  # the -18 payload, if written
    unmapped: List[int] = field(default_factory=list)


def page_version(pfn: int, version: int, prev: Optional[bytes] = None) -> bytes:
    """Content of ``pfn`` after its ``version``-th change (0: ``page_content``).

    Later versions change the previous content in one of four ways, chosen by
    (pfn + version) % 4, to cover every compression run kind: a few scattered
    words, one long changed stretch (> 127 words), the whole page, or the
    first words only.  Except for the whole-page change (every byte inverted),
    the first 16 bytes encode (pfn, version).
    """
    if version == 0 or prev is None:
        return page_content(pfn)
    page = bytearray(prev)
    kind = (pfn + version) % 4
    if kind == 0:
        for off in range(64, PAGE, 512):
            struct.pack_into("<I", page, off, (pfn * 31 + version * 7 + off) & 0xFFFFFFFF)
    elif kind == 1:
        start = 1024 + (version % 4) * 64
        for off in range(start, start + 600 * 4, 4):
            struct.pack_into("<I", page, off, (off ^ (version << 20) ^ pfn) | 1)
    elif kind == 2:
        return bytes(b ^ 0xFF for b in page)  # every word changes: the worst case
    struct.pack_into("<QQ", page, 0, pfn, 0xC0DE000000000000 | version)
    return bytes(page)


def _pv_pagetables(guest_width: int) -> Dict[int, int]:
    """A tiny page-table tree: pinned top level at pfn 1, then the lower levels."""
    if guest_width == 8:
        return {1: 0xC, 2: libxc.PT_L3TAB, 3: libxc.PT_L2TAB, 4: libxc.PT_L1TAB}
    return {1: 0xB, 2: libxc.PT_L2TAB, 3: libxc.PT_L1TAB}


def _vcpu_context(gw: int, vcpu: int, ckpt: int) -> bytes:
    ctx = bytearray(pv_vcpu_context(gw, vcpu, cr3_pfn=1, start_info_pfn=0))
    if gw == 8:
        struct.pack_into("<Q", ctx, 672, 0xFFFF880000010000 + 0x1000 * ckpt + vcpu)  # rsp
    else:
        struct.pack_into("<I", ctx, 560, 0xC0010000 + 0x1000 * ckpt + vcpu)  # esp
    return bytes(ctx)


def _shared_info(gw: int, pages: int, ckpt: int) -> bytes:
    page = bytearray(PAGE)
    if gw == 8:
        struct.pack_into("<IIIIQQ", page, 3072, 2 * ckpt, 1_700_000_000 + ckpt, 1000 * ckpt, 0,
                         pages - 1, 0)
    else:
        struct.pack_into("<IIIII", page, 2304, 2 * ckpt, 1_700_000_000 + ckpt, 1000 * ckpt,
                         pages - 1, 0)
    return bytes(page)


def _qemu_blob(base: Optional[bytes], ckpt: int) -> bytes:
    if base is not None and ckpt == 1:
        return base
    head = base if base is not None else b"QEVM\0\0\0\3"
    return head + struct.pack("<I", ckpt) + bytes((i * 7 + ckpt) & 0xFF for i in range(200))


class _State:
    """The receiver's view while write_legacy builds the stream."""

    def __init__(self) -> None:
        self.pages: Dict[int, bytes] = {}
        self.types: Dict[int, int] = {}
        self.versions: Dict[int, int] = {}
        self.cache: Dict[int, bytes] = {}  # sender's compression cache


def _resolve(spec: LegacySpec) -> Tuple[bool, str]:
    toolstack = spec.toolstack
    if toolstack is None:
        toolstack = spec.envelope in ("bare", "xl", "libvirt")
    qemu = spec.qemu
    if qemu is None:
        if spec.envelope == "xend":
            qemu = "remus" if spec.checkpoints else "xend"
        elif spec.envelope == "xenopsd":
            qemu = "xenserver"
        else:
            qemu = "libxl"
    if qemu not in (*QEMU_KINDS, "none"):
        raise ValueError(f"unknown qemu kind {qemu!r}")
    if qemu == "xend" and spec.checkpoints > 1 and spec.guest == "hvm":
        raise ValueError("a xend QemuDeviceModelRecord runs to EOF: only one checkpoint possible")
    return toolstack, qemu


def _envelope(out: BinaryIO, spec: LegacySpec) -> None:
    ispec = ImageSpec(guest=spec.guest, pages=spec.pages, vcpus=spec.vcpus)
    if spec.envelope == "bare":
        return
    if spec.envelope == "xl":
        xl_header(out, default_config(ispec), streamv2=False)
    elif spec.envelope == "libvirt":
        libvirt_header(out, default_libvirt_xml(ispec), version=1)
    elif spec.envelope == "xend":
        xend_header(out, default_xend_sxp(ispec))
    elif spec.envelope == "xenopsd":
        out.write(xenopsd.MAGIC_LEGACY)
    else:
        raise ValueError(f"unknown envelope {spec.envelope!r}")


def write_legacy(out: BinaryIO, spec: LegacySpec) -> Expected:
    """Write a whole legacy stream (with its envelope) and return what it carries."""
    if spec.guest not in ("pv", "hvm"):
        raise ValueError(f"guest must be 'pv' or 'hvm', found {spec.guest!r}")
    _ulong_fmt(spec.width)
    if spec.guest == "pv" and not spec.ext_info and spec.guest_width != spec.width:
        raise ValueError("without extended info the guest width is the toolstack's")
    if spec.compression and not spec.checkpoints:
        raise ValueError("compression needs a checkpointed (Remus) stream")
    if not all(1 <= b <= MAX_BATCH_SIZE for b in (spec.batch, *spec.batch_sizes)):
        raise ValueError("batch sizes must be 1..1024")
    toolstack_on, qemu_kind = _resolve(spec)
    pv = spec.guest == "pv"
    gw = spec.guest_width if pv else 8
    holes: Set[int] = set(spec.holes if spec.holes is not None else
                          ([] if pv else [spec.pages // 2 + 1]))
    broken = set(spec.broken)
    unmapped = sorted(set(spec.unmapped)) if pv else []
    pagetables = _pv_pagetables(gw) if pv else {}
    online = [v for v in range(spec.vcpus) if v == 0 or v not in set(spec.offline_vcpus)]
    extv = pv and spec.ext_info
    xcnt_on = pv and spec.ext_info and spec.xsave
    xsave_len = len(xsave_buffer())

    physmap: List[PhysmapEntry] = []
    if not pv:
        physmap = [(o, s, n, name if spec.physmap_names else None)
                   for o, s, n, name in spec.physmap]
    toolstack = physmap_toolstack(physmap, width=spec.width) if toolstack_on else None
    hvm_params = {} if pv else {k: v for k, v in spec.hvm_params.items() if v}
    for k in hvm_params:
        if k not in HVM_PARAM_CHUNKS:
            raise ValueError(f"chunk {k} is not an HVM param chunk")
    magic = (spec.pages - 2, spec.pages - 3, spec.pages - 1)
    tsc = (spec.tsc_mode, 123_456_789_000, 2_400_000, 3)  # mode, nsec, khz, incarnation

    exp = Expected(p2m_size=spec.pages, guest_width=gw, width=spec.width,
                   verify_mode=spec.verify_mode, guest=spec.guest,
                   qemu_kind=None if pv or qemu_kind == "none" else qemu_kind,
                   unmapped=list(unmapped))

    st = _State()
    _envelope(out, spec)
    w = LegacyWriter(out, width=spec.width, guest=spec.guest, guest_width=gw)

    sendable = [p for p in range(spec.pages) if p not in unmapped]

    def dirty_set(k: int) -> List[int]:
        n = min(spec.dirty_pages, len(sendable))
        picked = {sendable[(k * 37 + i * 5) % len(sendable)] for i in range(n)}
        # always dirty, so later compressed checkpoints hit the cache with every change kind
        picked |= {p for p in (1, 4, 5, 6, 8, 9) if p in sendable}
        return sorted(picked - holes - broken)

    def send(ww: LegacyWriter, pfns: Sequence[int], *, xalloc: Optional[Set[int]] = None,
             new_version: bool, compressed: bool = False) -> List[bytes]:
        """Batches for ``pfns``; returns the compressed encodings if ``compressed``.

        In compressed checkpoints pfn 9 is resent unchanged (an EMPTY page)."""
        xalloc = xalloc or set()
        encodings: List[bytes] = []
        sizes = itertools.cycle(spec.batch_sizes or (spec.batch,))
        i = 0
        while i < len(pfns):
            step = next(sizes)
            chunk = pfns[i:i + step]
            i += step
            types: List[int] = []
            data: List[bytes] = []
            for p in chunk:
                if p in holes:
                    types.append(libxc.PT_XTAB)
                    continue
                if p in broken:
                    types.append(libxc.PT_BROKEN)
                    st.types[p] = libxc.PT_BROKEN
                    continue
                if p in xalloc:
                    types.append(libxc.PT_XALLOC)
                    st.types[p] = libxc.PT_XALLOC
                    continue
                t = pagetables.get(p, 0)
                types.append(t)
                prev = st.pages.get(p)
                if prev is None or (new_version and not (compressed and p == 9)):
                    ver = st.versions.get(p, -1) + 1 if prev is not None else 0
                    content = page_version(p, ver, prev)
                    st.versions[p] = ver
                else:
                    content = prev
                if compressed:
                    if t != 0 or p not in st.cache:
                        enc = compress_page(prev or bytes(PAGE), content, mode="full")
                    else:
                        enc = compress_page(st.cache[p], content)
                    encodings.append(enc)
                    if t == 0:
                        st.cache[p] = content
                else:
                    data.append(content)
                st.pages[p] = content
                st.types[p] = t
            if all(t == libxc.PT_XTAB for t in types):
                continue  # the saver never writes a batch without a valid page
            ww.batch(chunk, types, data, with_data=not compressed)
        return encodings

    def body_end(ww: LegacyWriter, first: bool) -> None:
        ww.vcpu_info(spec.vcpus - 1, online)
        for cid in HVM_PARAM_CHUNK_ORDER:
            if cid in hvm_params:
                ww.hvm_param(cid, hvm_params[cid])
        if toolstack is not None:
            ww.toolstack(toolstack)
        if not spec.checkpoints:
            ww.last_checkpoint()
        if first and spec.compression:
            ww.enable_compression()
        ww.end_of_body()

    def tail(ww: LegacyWriter, k: int) -> Dict[str, object]:
        if pv:
            vcpus: List[VcpuTail] = []
            for v in online:
                vcpus.append((_vcpu_context(gw, v, k), ext_vcpu_context(v) if extv else None,
                              xsave_buffer(fill=k * 0x100 + v) if xcnt_on else None))
            shinfo = _shared_info(gw, spec.pages, k)
            ww.pv_tail(unmapped, vcpus, shinfo)
            return {"vcpus": dict(zip(online, vcpus)), "shared_info": shinfo}
        ctx = hvm.sample_context(spec.vcpus)
        ww.hvm_tail(magic, ctx)
        qemu: Optional[bytes] = None
        if qemu_kind != "none":
            qemu = _qemu_blob(spec.qemu_data, k)
            ww.qemu_record(qemu, kind=qemu_kind)
        return {"hvm_context": ctx, "qemu": qemu}

    def checkpoint(ww: LegacyWriter, k: int) -> Dict[str, object]:
        if k == 1:
            ww.header(spec.pages, ext_info=spec.ext_info, extv=extv,
                      xcnt=xsave_len + 16 if xcnt_on else None)
            exp.p2m_frames = list(ww.p2m_frames)
            if spec.tmem:
                ww.tmem()
            if not spec.live:
                ww.tsc_info(tsc[0], tsc[1], tsc[2], tsc[3])
            if spec.live:
                later = set(dirty_set(0))
                send(ww, list(range(spec.pages)), xalloc=None if pv else later, new_version=True)
                if spec.tmem:
                    ww.tmem_extra([(0, (1, 2, 3), 7)])
                ww.tsc_info(tsc[0], tsc[1], tsc[2], tsc[3])
                # last iteration: the dirty pages; unmapped pfns were ballooned out
                for p in unmapped:
                    st.pages.pop(p, None)
                    st.types.pop(p, None)
                send(ww, sorted(later), new_version=True)
            else:
                send(ww, sendable, new_version=True)
            if spec.verify_mode:
                ww.verify_mode()
                send(ww, sendable, new_version=False)
            body_end(ww, True)
        else:
            pfns = dirty_set(k)
            compressed = spec.compression
            encs = send(ww, pfns, new_version=True, compressed=compressed)
            if compressed:
                buf = b""
                for enc in encs:
                    if buf and len(buf) + len(enc) > spec.compressed_chunk_size:
                        ww.compressed_data(buf)
                        buf = b""
                    buf += enc
                if buf:
                    ww.compressed_data(buf)
            body_end(ww, False)
        return tail(ww, k)

    n_ckpt = max(1, spec.checkpoints)
    cut = spec.truncate_in_checkpoint
    result: Dict[str, object] = {}
    complete = 0
    for k in range(1, n_ckpt + 1):
        if cut is not None and k == cut:
            saved = (dict(st.pages), dict(st.types))
            buf = io.BytesIO()
            checkpoint(LegacyWriter(buf, width=spec.width, guest=spec.guest, guest_width=gw), k)
            data = buf.getvalue()
            out.write(data[:len(data) // 2])
            st.pages, st.types = saved
            break
        result = checkpoint(w, k)
        complete = k

    exp.complete_checkpoints = complete
    exp.pages = {p: c for p, c in st.pages.items() if p not in unmapped}
    exp.page_types = {p: t for p, t in st.types.items() if p not in unmapped}
    exp.xtab = set(unmapped)
    exp.tsc = (tsc[0], tsc[2], tsc[1], tsc[3])
    exp.toolstack = toolstack
    exp.physmap = physmap if toolstack is not None else []
    if not pv:
        exp.hvm_params = {HVM_PARAM_CHUNKS[k]: v for k, v in hvm_params.items()}
        exp.hvm_params.update({HVM_PARAM_IOREQ_PFN: magic[0], HVM_PARAM_BUFIOREQ_PFN: magic[1],
                               HVM_PARAM_STORE_PFN: magic[2]})
    if result:
        if pv:
            vc = result["vcpus"]
            assert isinstance(vc, dict)
            for v, (ctx, ext, xs) in vc.items():
                d = {"basic": ctx}
                if ext is not None:
                    d["extended"] = ext
                if xs is not None:
                    d["xsave"] = xs
                exp.vcpus[v] = d
            si = result["shared_info"]
            assert isinstance(si, bytes)
            exp.shared_info = si
        else:
            hc = result["hvm_context"]
            assert isinstance(hc, bytes)
            exp.hvm_context = hc
            q = result["qemu"]
            assert q is None or isinstance(q, bytes)
            exp.qemu = q
    return exp
