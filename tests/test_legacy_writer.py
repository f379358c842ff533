"""The legacy (Xen <= 4.5) stream writer used by the converter tests.

Byte-exact fixtures are struct.pack'ed by hand from xen-formats.md section 4
and the legacy C code (xc_domain_save.c / xc_domain_restore.c / xc_tmem.c /
xc_compression.c at b9041b4eeb, libxl_dom.c at RELEASE-4.5.0).  Whole streams
are replayed by an independent reader written here (as xc_domain_restore
reads them) and compared with what write_legacy() says they carry.
"""

from __future__ import annotations

import io
import random
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import pytest

from xenstream.formats import hvm, legacy, libvirt, xend, xl
from xenstream.writers import legacy as lw
from xenstream.writers.legacy import (
    Expected,
    LegacySpec,
    LegacyWriter,
    compress_page,
    decode_page,
    physmap_toolstack,
    write_legacy,
)
from xenstream.writers.v2 import page_content, pv_vcpu_context

PAGE = 4096
U64_ALL = 0xFFFFFFFFFFFFFFFF


def out_of(fn: str, *args: object, width: int = 8, guest: str = "pv",
           guest_width: int = 8, **kw: object) -> bytes:
    f = io.BytesIO()
    w = LegacyWriter(f, width=width, guest=guest, guest_width=guest_width)
    getattr(w, fn)(*args, **kw)
    return f.getvalue()


def stream(spec: LegacySpec) -> Tuple[bytes, Expected]:
    f = io.BytesIO()
    exp = write_legacy(f, spec)
    return f.getvalue(), exp


# ==========================================================================
# constants
# ==========================================================================


def test_chunk_ids_and_param_map() -> None:
    ids = [lw.CHUNK_ENABLE_VERIFY_MODE, lw.CHUNK_VCPU_INFO, lw.CHUNK_HVM_IDENT_PT,
           lw.CHUNK_HVM_VM86_TSS, lw.CHUNK_TMEM, lw.CHUNK_TMEM_EXTRA, lw.CHUNK_TSC_INFO,
           lw.CHUNK_HVM_CONSOLE_PFN, lw.CHUNK_LAST_CHECKPOINT,
           lw.CHUNK_HVM_ACPI_IOPORTS_LOCATION, lw.CHUNK_HVM_VIRIDIAN, lw.CHUNK_COMPRESSED_DATA,
           lw.CHUNK_ENABLE_COMPRESSION, lw.CHUNK_HVM_GENERATION_ID_ADDR,
           lw.CHUNK_HVM_PAGING_RING_PFN, lw.CHUNK_HVM_MONITOR_RING_PFN,
           lw.CHUNK_HVM_SHARING_RING_PFN, lw.CHUNK_TOOLSTACK, lw.CHUNK_HVM_IOREQ_SERVER_PFN,
           lw.CHUNK_HVM_NR_IOREQ_SERVER_PAGES]
    assert ids == list(range(-1, -21, -1))
    assert lw.HVM_PARAM_CHUNKS == {-3: 12, -4: 15, -8: 17, -10: 19, -11: 9, -14: 34, -15: 27,
                                   -16: 28, -17: 29, -19: 32, -20: 33}
    assert sorted(lw.HVM_PARAM_CHUNK_ORDER) == sorted(lw.HVM_PARAM_CHUNKS)
    assert lw.HVM_PARAM_CHUNK_ORDER[:3] == (-14, -3, -15)


# ==========================================================================
# header
# ==========================================================================


class TestHeader:
    def test_pv_64bit_toolstack_64bit_guest(self) -> None:
        ctx = pv_vcpu_context(8, 0)
        got = out_of("header", 64, vcpu0=ctx)
        want = (struct.pack("<Q", 64) + struct.pack("<Q", U64_ALL)
                + struct.pack("<I", (5168 + 8) + (0 + 8))
                + b"vcpu" + struct.pack("<I", 5168) + ctx
                + b"extv" + struct.pack("<I", 0)
                + struct.pack("<Q", 63))  # one p2m frame (512 pfns per frame)
        assert got == want
        assert got[8:16] == b"\xff" * 8 and got[20:24] == b"vcpu" and got[24:28] == b"\x30\x14\0\0"

    def test_pv_32bit_toolstack_32bit_guest_with_xcnt(self) -> None:
        ctx = pv_vcpu_context(4, 0)
        got = out_of("header", 2000, width=4, guest_width=4, vcpu0=ctx, xcnt=848)
        want = (struct.pack("<I", 2000) + b"\xff\xff\xff\xff"
                + struct.pack("<I", (2800 + 8) + 8 + (4 + 8))
                + b"vcpu" + b"\xf0\x0a\0\0" + ctx
                + b"extv" + b"\0\0\0\0"
                + b"xcnt" + struct.pack("<II", 4, 848)
                + struct.pack("<II", 1999, 1998))  # ceil(2000 / 1024) = 2 frames, u32 each
        assert got == want

    def test_pv_64bit_toolstack_32bit_guest_frames_are_ulongs(self) -> None:
        got = out_of("header", 1025, guest_width=4, p2m_frames=[7, 8])
        assert struct.unpack_from("<I", got, 20 + 4)[0] == 2800
        assert got[-16:] == struct.pack("<QQ", 7, 8)
        assert len(got) == 8 + 8 + 4 + 8 + 2800 + 8 + 16

    def test_pv_32bit_toolstack_64bit_guest(self) -> None:
        got = out_of("header", 513, width=4, guest_width=8, p2m_frames=[3, 4])
        assert got[:8] == struct.pack("<I", 513) + b"\xff" * 4
        assert struct.unpack_from("<I", got, 8)[0] == 5168 + 8 + 8
        assert got[-8:] == struct.pack("<II", 3, 4)

    def test_pre_31_layout_without_extended_info(self) -> None:
        got = out_of("header", 1024, ext_info=False, p2m_frames=[1023, 1022])
        assert got == struct.pack("<QQQ", 1024, 1023, 1022)

    def test_no_extv_and_extra_blocks_and_overrides(self) -> None:
        got = out_of("header", 16, extv=False, vcpu_block_size=100,
                     extra_blocks=[(b"abcd", b"xyz")], tot_bytes=5, p2m_frames=[15])
        want = (struct.pack("<QQI", 16, U64_ALL, 5) + b"vcpu" + struct.pack("<I", 100)
                + pv_vcpu_context(8, 0, cr3_pfn=0x41001, start_info_pfn=0x41000)[:100]
                + b"abcd" + struct.pack("<I", 3) + b"xyz" + struct.pack("<Q", 15))
        assert got == want

    @pytest.mark.parametrize("width", [4, 8])
    def test_hvm_header_is_just_p2m_size(self, width: int) -> None:
        got = out_of("header", 0x100000, width=width, guest="hvm")
        assert got == struct.pack("<I" if width == 4 else "<Q", 0x100000)


# ==========================================================================
# body: batches and chunks
# ==========================================================================


class TestBatch:
    def test_batch_64bit(self) -> None:
        a, b = b"A" * PAGE, b"B" * PAGE
        got = out_of("batch", [5, 6, 7, 8, 9], [0, 0xF, 0xD, 0xE, 1], [a, b])
        want = (struct.pack("<i", 5)
                + struct.pack("<5Q", 5, 0xF0000000, 0xD0000007, 0xE0000008, 0x10000009)
                + a + b)
        assert got == want

    def test_batch_32bit_default_pages(self) -> None:
        got = out_of("batch", [1, 2], [0xC, 0], width=4)
        assert got == struct.pack("<iII", 2, 0xC0000001, 2) + page_content(1) + page_content(2)

    def test_batch_without_data_and_overrides(self) -> None:
        got = out_of("batch", [1, 2], with_data=False, entries=[0x12345678, 3], count=1025)
        assert got == struct.pack("<iQQ", 1025, 0x12345678, 3)


class TestChunks:
    def test_simple_markers(self) -> None:
        assert out_of("verify_mode") == b"\xff\xff\xff\xff"
        assert out_of("last_checkpoint") == struct.pack("<i", -9) == b"\xf7\xff\xff\xff"
        assert out_of("enable_compression") == b"\xf3\xff\xff\xff"
        assert out_of("end_of_body") == b"\0\0\0\0"

    def test_vcpu_info(self) -> None:
        assert out_of("vcpu_info", 0) == struct.pack("<iiQ", -2, 0, 1)
        assert out_of("vcpu_info", 3, [0, 2, 3]) == struct.pack("<iiQ", -2, 3, 0b1101)
        assert out_of("vcpu_info", 64, [0, 64]) == struct.pack("<iiQQ", -2, 64, 1, 1)
        assert out_of("vcpu_info", 127, [0, 127]) == struct.pack("<iiQQ", -2, 127, 1, 1 << 63)

    @pytest.mark.parametrize("cid", sorted(lw.HVM_PARAM_CHUNKS))
    def test_hvm_param_chunks(self, cid: int) -> None:
        got = out_of("hvm_param", cid, 0x1122334455667788)
        assert got == struct.pack("<i", cid) + b"\0\0\0\0" + bytes.fromhex("8877665544332211")
        assert len(got) == 16

    def test_tsc_chunk_field_order(self) -> None:
        got = out_of("tsc_info", mode=2, nsec=0x0102030405060708, khz=0x0A0B0C0D,
                     incarnation=0x11223344)
        assert got == (b"\xf9\xff\xff\xff" + b"\x02\0\0\0" + bytes.fromhex("0807060504030201")
                       + bytes.fromhex("0d0c0b0a") + bytes.fromhex("44332211"))
        assert len(got) == 4 + 20

    @pytest.mark.parametrize("width", [4, 8])
    def test_compressed_data_length_is_ulong(self, width: int) -> None:
        got = out_of("compressed_data", b"\x00\x00\x80", width=width)
        assert got == struct.pack("<i", -12) + struct.pack("<I" if width == 4 else "<Q", 3) + \
            b"\x00\x00\x80"

    @pytest.mark.parametrize("width", [4, 8])
    def test_toolstack_length_is_u32(self, width: int) -> None:
        got = out_of("toolstack", b"hello", width=width)
        assert got == b"\xee\xff\xff\xff" + b"\x05\0\0\0" + b"hello"

    def test_tmem_extra(self) -> None:
        got = out_of("tmem_extra", [(3, (1, 2, 3), 9)])
        assert got == (struct.pack("<i", -6) + struct.pack("<I", 3) + struct.pack("<3Q", 1, 2, 3)
                       + struct.pack("<I", 9) + b"\xff\xff\xff\xff")
        assert out_of("tmem_extra") == struct.pack("<iI", -6, 0xFFFFFFFF)

    def test_tmem_default_is_structurally_valid(self) -> None:
        got = out_of("tmem")
        assert got[:4] == struct.pack("<i", -5)
        # parse as xc_tmem_restore() does
        pos = 4
        version, max_pools, m1 = struct.unpack_from("<III", got, pos)
        pos += 12
        assert (version, m1) == (1, 0xFFFFFFFF) and max_pools >= 1
        _flags, _weight, _cap, m1 = struct.unpack_from("<IIII", got, pos)
        pos += 16
        assert m1 == 0xFFFFFFFF
        pools = []
        early_ends = 0
        while True:
            (pool_id,) = struct.unpack_from("<I", got, pos)
            pos += 4
            if pool_id == 0xFFFFFFFF:
                break
            flags, n_pages = struct.unpack_from("<II", got, pos)
            pos += 8 + 16
            if not flags & 1:
                assert n_pages == 0
            pagesize = 1 << (((flags >> 4) & 0xF) + 12)
            got_pages = 0
            for _ in range(n_pages):
                oid = struct.unpack_from("<3Q", got, pos)
                pos += 24
                if oid == (U64_ALL,) * 3:
                    early_ends += 1
                    break
                pos += 4 + pagesize
                got_pages += 1
            pools.append((pool_id, got_pages))
        assert pos == len(got)
        assert pools == [(0, 1), (1, 0), (2, 1)]
        assert early_ends == 1

    def test_tmem_raw(self) -> None:
        assert out_of("tmem", b"xyz") == struct.pack("<i", -5) + b"xyz"


# ==========================================================================
# tails and device-model records
# ==========================================================================


class TestTails:
    def test_hvm_tail(self) -> None:
        ctx = hvm.sample_context(1)
        got = out_of("hvm_tail", (0xFEFFE, 0xFEFFD, 0xFEFFC), ctx, guest="hvm", width=4)
        assert got == struct.pack("<QQQI", 0xFEFFE, 0xFEFFD, 0xFEFFC, len(ctx)) + ctx

    def test_pv_tail_64bit_with_extv_and_xsave(self) -> None:
        f = io.BytesIO()
        w = LegacyWriter(f)
        w.header(64, xcnt=lw.DEFAULT_XFEATURE_MASK and 848)
        f.seek(0)
        f.truncate()
        ctx0, ctx1 = pv_vcpu_context(8, 0), pv_vcpu_context(8, 1)
        ext = b"E" * 128
        xs = struct.pack("<QQ", 7, 7) + b"\0" * 832
        w.pv_tail([40, 41], [(ctx0, ext, xs), (ctx1, ext, xs)], b"S" * PAGE)
        want = (struct.pack("<IQQ", 2, 40, 41)
                + ctx0 + ext + struct.pack("<QQ", 7, 848) + xs
                + ctx1 + ext + struct.pack("<QQ", 7, 848) + xs
                + b"S" * PAGE)
        assert f.getvalue() == want
        assert len(xs) + 16 == 864  # == xcnt when the header says xcnt 864

    def test_pv_tail_32bit_toolstack_no_extv(self) -> None:
        f = io.BytesIO()
        w = LegacyWriter(f, width=4, guest_width=4)
        w.header(64, ext_info=False)
        f.seek(0)
        f.truncate()
        ctx = pv_vcpu_context(4, 0)
        w.pv_tail([7], [(ctx, None, None)], b"\0" * PAGE)
        assert f.getvalue() == struct.pack("<II", 1, 7) + ctx + b"\0" * PAGE

    def test_pv_tail_defaults_follow_header(self) -> None:
        f = io.BytesIO()
        w = LegacyWriter(f)
        w.header(64, xcnt=16 + len(lw.xsave_buffer()))
        f.seek(0)
        f.truncate()
        ctx = pv_vcpu_context(8, 0)
        w.pv_tail([], [(ctx, None, None)], b"\0" * PAGE)
        xs = lw.xsave_buffer()
        assert f.getvalue() == (struct.pack("<I", 0) + ctx + lw.ext_vcpu_context(0)
                                + struct.pack("<QQ", 7, len(xs)) + xs + b"\0" * PAGE)
        ext = lw.ext_vcpu_context(3)
        assert len(ext) == 128 and struct.unpack_from("<II", ext) == (3, 56)
        assert ext[56:] == b"\0" * 72

    @pytest.mark.parametrize("kind,want", [
        ("libxl", b"DeviceModelRecord0002" + b"\x08\0\0\0" + b"QEVMdata"),
        ("remus", b"RemusDeviceModelState" + b"\x08\0\0\0" + b"QEVMdata"),
        ("xend", b"QemuDeviceModelRecord" + b"QEVMdata"),
        ("xenserver", b"QemuDeviceModelRecord\n" + b"\0\0\0\x08" + b"QEVMdata"),
    ])
    def test_qemu_records(self, kind: str, want: bytes) -> None:
        assert out_of("qemu_record", b"QEVMdata", kind=kind, guest="hvm") == want

    def test_qemu_record_unknown_kind(self) -> None:
        with pytest.raises(ValueError):
            out_of("qemu_record", b"x", kind="qemu-xen", guest="hvm")


# ==========================================================================
# libxl physmap toolstack record
# ==========================================================================


class TestPhysmap:
    ENTRIES = [(0xF0000000, 0xF0000000, 0x800000, b"vga.vram")]

    def test_64bit_has_4_trailing_uninitialised_bytes(self) -> None:
        got = physmap_toolstack(self.ENTRIES, width=8)
        want = (struct.pack("<II", 1, 1)
                + struct.pack("<QQQI", 0xF0000000, 0xF0000000, 0x800000, 9) + b"vga.vram\0"
                + b"\xde\xad\xbe\xef")
        assert got == want
        assert len(got) == 8 + 32 + 9
        assert got[-4:] != b"\0\0\0\0"

    def test_32bit_is_packed(self) -> None:
        got = physmap_toolstack(self.ENTRIES, width=4)
        assert got == (struct.pack("<II", 1, 1)
                       + struct.pack("<QQQI", 0xF0000000, 0xF0000000, 0x800000, 9)
                       + b"vga.vram\0")
        assert len(got) == 8 + 28 + 9

    @pytest.mark.parametrize("width,entry_size", [(4, 28), (8, 32)])
    def test_namelen_zero(self, width: int, entry_size: int) -> None:
        got = physmap_toolstack([(1, 2, 3, None), (4, 5, 6, b"x")], width=width)
        assert struct.unpack_from("<II", got) == (1, 2)
        assert struct.unpack_from("<QQQI", got, 8) == (1, 2, 3, 0)
        second = 8 + entry_size
        assert struct.unpack_from("<QQQI", got, second) == (4, 5, 6, 2)
        assert got[second + 28:second + 30] == b"x\0"
        assert len(got) == 8 + 2 * entry_size + 2

    def test_empty_record_for_pv(self) -> None:
        assert physmap_toolstack([], width=8) == b"\x01\0\0\0\0\0\0\0"


# ==========================================================================
# Remus compression
# ==========================================================================


def _ref_decode(prev: bytes, enc: bytes) -> Tuple[bytes, int]:
    """A second, minimal decoder (xc_compression_uncompress_page's rules)."""
    if enc[0] == 0:
        return prev, 1
    if enc[0] == 0x80:
        return enc[1:1 + PAGE], 1 + PAGE
    page = bytearray(prev)
    pos = pagepos = 0
    while pagepos < PAGE:
        n = (enc[pos] & 0x7F) * 4
        assert n
        skip = enc[pos] & 0x80
        pos += 1
        if not skip:
            page[pagepos:pagepos + n] = enc[pos:pos + n]
            pos += n
        pagepos += n
    assert pagepos == PAGE
    return bytes(page), pos


class TestCompression:
    PREV = bytes(range(256)) * 16

    def test_empty(self) -> None:
        assert compress_page(self.PREV, self.PREV) == b"\x00"
        assert decode_page(self.PREV, b"\x00") == (self.PREV, 1)

    def test_full(self) -> None:
        new = b"\x11" * PAGE
        enc = compress_page(self.PREV, new, mode="full")
        assert enc == b"\x80" + new
        assert decode_page(self.PREV, enc) == (new, 4097)

    def test_one_word_changed(self) -> None:
        new = bytearray(self.PREV)
        new[8:12] = b"WXYZ"
        enc = compress_page(self.PREV, bytes(new))
        # skip 2 words, copy 1 word, then skip 1021 = 127*8 + 5 words
        assert enc == bytes([0x82, 0x01]) + b"WXYZ" + bytes([0xFF] * 8) + bytes([0x85])
        assert decode_page(self.PREV, enc) == (bytes(new), len(enc))

    def test_copy_run_at_start(self) -> None:
        new = b"abcd" + self.PREV[4:]
        enc = compress_page(self.PREV, new)
        assert enc[:5] == b"\x01abcd"
        assert enc[0] not in (0x00, 0x80)

    def test_worst_case_is_4105_bytes(self) -> None:
        new = bytes(b ^ 0xFF for b in self.PREV)
        enc = compress_page(self.PREV, new)
        assert len(enc) == 4105 == lw.WORST_COMPRESSED_PAGE
        heads = [enc[i * 509] for i in range(8)]
        assert heads == [0x7F] * 8 and enc[8 * 509] == 0x08
        assert decode_page(self.PREV, enc) == (new, 4105)

    def test_forced_runs_on_unchanged_page(self) -> None:
        enc = compress_page(self.PREV, self.PREV, mode="runs")
        assert enc == bytes([0xFF] * 8 + [0x88])
        assert decode_page(self.PREV, enc) == (self.PREV, 9)

    def test_random_round_trips_and_concatenation(self) -> None:
        rng = random.Random(4)
        prevs, news, blob = [], [], b""
        for i in range(40):
            prev = bytes(rng.getrandbits(8) for _ in range(PAGE)) if i % 5 == 0 else self.PREV
            new = bytearray(prev)
            for _ in range(rng.randrange(0, 300)):
                off = rng.randrange(0, PAGE)
                new[off] = rng.getrandbits(8)
            if i % 7 == 3:
                new = bytearray(rng.getrandbits(8) for _ in range(PAGE))
            mode = "full" if i % 11 == 5 else "auto"
            enc = compress_page(prev, bytes(new), mode=mode)
            assert len(enc) <= 4105
            if mode == "auto" and bytes(new) != prev:
                assert enc[0] not in (0x00, 0x80)
            assert _ref_decode(prev, enc) == (bytes(new), len(enc))
            prevs.append(prev)
            news.append(bytes(new))
            blob += enc
        off = 0
        for before, after in zip(prevs, news):
            page, off = decode_page(before, blob, off)
            assert page == after
        assert off == len(blob)

    def test_decoder_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError):
            decode_page(self.PREV, b"\x81\x00\x01abcd")  # zero-length copy run
        with pytest.raises(ValueError):
            decode_page(self.PREV, b"\x80" + b"\0" * 100)  # truncated FULL page
        with pytest.raises(ValueError):
            decode_page(self.PREV, b"\x85")  # runs do not cover the page
        with pytest.raises(ValueError):
            decode_page(self.PREV, b"\xff" * 8 + b"\x09" + b"x" * 36)  # past the page end


# ==========================================================================
# an independent reader for whole streams
# ==========================================================================


@dataclass
class Replayed:
    p2m_size: int = 0
    guest_width: int = 0
    ext_blocks: List[Tuple[bytes, int]] = field(default_factory=list)
    p2m_frames: List[int] = field(default_factory=list)
    pages: Dict[int, bytes] = field(default_factory=dict)
    types: Dict[int, int] = field(default_factory=dict)
    unmapped: List[int] = field(default_factory=list)
    vcpus: Dict[int, Dict[str, bytes]] = field(default_factory=dict)
    shared_info: Optional[bytes] = None
    hvm_context: Optional[bytes] = None
    magic: Tuple[int, ...] = ()
    params: Dict[int, int] = field(default_factory=dict)
    tsc: List[Tuple[int, int, int, int]] = field(default_factory=list)
    toolstack: Optional[bytes] = None
    qemu: Optional[bytes] = None
    qemu_kinds: List[str] = field(default_factory=list)
    complete: int = 0
    chunk_ids: List[List[int]] = field(default_factory=list)  # per checkpoint body
    verify: bool = False
    max_vcpu_id: int = -1
    vcpumap: int = 0


class Truncated(Exception):
    pass


class Reader:
    def __init__(self, data: bytes, width: int, guest: str) -> None:
        self.d = data
        self.pos = 0
        self.ul = "<I" if width == 4 else "<Q"
        self.width = width
        self.guest = guest

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.d):
            raise Truncated
        b = self.d[self.pos:self.pos + n]
        self.pos += n
        return b

    def u(self, fmt: str) -> int:
        v: int = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return v


def replay(data: bytes, width: int, guest: str) -> Replayed:
    r = Reader(data, width, guest)
    out = Replayed()
    out.p2m_size = r.u(r.ul)
    xcnt = 0
    extv = False
    if guest == "pv":
        out.guest_width = width
        first = r.u(r.ul)
        if first == (1 << (8 * width)) - 1:
            tot = r.u("<I")
            while tot:
                bid, size = r.take(4), r.u("<I")
                assert tot >= size + 8
                blob = r.take(size)
                out.ext_blocks.append((bid, size))
                if bid == b"vcpu":
                    out.guest_width = {5168: 8, 2800: 4}[size]
                elif bid == b"extv":
                    extv = True
                elif bid == b"xcnt":
                    xcnt = struct.unpack("<I", blob)[0]
                tot -= 8 + size
            first = r.u(r.ul)
        fpp = PAGE // out.guest_width
        n = (out.p2m_size + fpp - 1) // fpp
        out.p2m_frames = [first] + [r.u(r.ul) for _ in range(n - 1)]
    committed_pages: Dict[int, bytes] = {}
    committed_types: Dict[int, int] = {}
    compressing_next = False
    compressing = False
    try:
        while r.pos < len(r.d):
            pages = dict(committed_pages)
            types = dict(committed_types)
            ids: List[int] = []
            entries: List[int] = []
            compbuf = b""
            while True:
                cid = r.u("<i")
                ids.append(cid)
                if cid == 0:
                    break
                if cid > 0:
                    assert cid <= 1024
                    ents = [r.u(r.ul) for _ in range(cid)]
                    assert any((e >> 28) != 0xF for e in ents), "all-XTAB batch"
                    for e in ents:
                        t, pfn = e >> 28, e & 0x0FFFFFFF
                        assert e >> 32 == 0
                        if t == 0xF:
                            assert e == 0xF0000000
                            continue
                        types[pfn] = t
                        if t in (0xD, 0xE):
                            continue
                        if compressing:
                            entries.append(pfn)
                        else:
                            pages[pfn] = r.take(PAGE)
                elif cid == -1:
                    out.verify = True
                elif cid == -2:
                    out.max_vcpu_id = r.u("<i")
                    words = [r.u("<Q") for _ in range(out.max_vcpu_id // 64 + 1)]
                    out.vcpumap = sum(wd << (64 * i) for i, wd in enumerate(words))
                elif cid in lw.HVM_PARAM_CHUNKS:
                    assert r.u("<I") == 0
                    out.params[lw.HVM_PARAM_CHUNKS[cid]] = r.u("<Q")
                elif cid == -5:
                    r.take(12 + 16)
                    while r.u("<I") != 0xFFFFFFFF:
                        flags, npages = r.u("<I"), r.u("<I")
                        r.take(16)
                        for _ in range(npages):
                            if struct.unpack("<3Q", r.take(24)) == (U64_ALL,) * 3:
                                break
                            r.take(4 + (1 << (((flags >> 4) & 0xF) + 12)))
                elif cid == -6:
                    while r.u("<I") != 0xFFFFFFFF:
                        r.take(28)
                elif cid == -7:
                    mode, nsec, khz, inc = struct.unpack("<IQII", r.take(20))
                    out.tsc.append((mode, khz, nsec, inc))
                elif cid == -9:
                    pass
                elif cid == -12:
                    compbuf += r.take(r.u(r.ul))
                elif cid == -13:
                    compressing_next = True
                elif cid == -18:
                    out.toolstack = r.take(r.u("<I"))
                else:
                    raise AssertionError(f"unknown chunk {cid}")
            if compressing:
                off = 0
                for pfn in entries:
                    pages[pfn], off = decode_page(pages.get(pfn, bytes(PAGE)), compbuf, off)
                assert off == len(compbuf)
            # tail
            if guest == "hvm":
                out.magic = struct.unpack("<QQQ", r.take(24))
                ctx = r.take(r.u("<I"))
                if r.d[r.pos:r.pos + 22] == lw.QEMU_SIG_XENSERVER:
                    r.take(22)
                    qemu, kind = r.take(r.u(">I")), "xenserver"
                else:
                    sig = r.take(21)
                    if sig == lw.QEMU_SIG_XEND:
                        qemu, kind = r.take(len(r.d) - r.pos), "xend"
                        assert qemu[:4] == b"QEVM"
                    else:
                        kind = {lw.QEMU_SIG_LIBXL: "libxl", lw.QEMU_SIG_REMUS: "remus"}[sig]
                        qemu = r.take(r.u("<I"))
                out.hvm_context, out.qemu = ctx, qemu
                out.qemu_kinds.append(kind)
            else:
                unmapped = [r.u(r.ul) for _ in range(r.u("<I"))]
                gw = out.guest_width
                vcpus: Dict[int, Dict[str, bytes]] = {}
                for v in range(out.max_vcpu_id + 1):
                    if not out.vcpumap >> v & 1:
                        continue
                    d = {"basic": r.take(5168 if gw == 8 else 2800)}
                    if extv:
                        d["extended"] = r.take(128)
                    if xcnt:
                        _mask, size = struct.unpack("<QQ", r.take(16))
                        assert size + 16 == xcnt
                        d["xsave"] = r.take(size)
                    vcpus[v] = d
                shinfo = r.take(PAGE)
                for p in unmapped:
                    pages.pop(p, None)
                    types.pop(p, None)
                out.unmapped, out.vcpus, out.shared_info = unmapped, vcpus, shinfo
            committed_pages, committed_types = pages, types
            out.chunk_ids.append(ids)
            out.complete += 1
            compressing = compressing_next
    except Truncated:
        pass
    out.pages, out.types = committed_pages, committed_types
    return out


def check_replay(data: bytes, exp: Expected, spec: LegacySpec) -> Replayed:
    rep = replay(data, spec.width, spec.guest)
    assert rep.complete == exp.complete_checkpoints
    assert rep.p2m_size == exp.p2m_size == spec.pages
    if rep.complete == 0:
        return rep
    assert rep.pages == exp.pages
    assert rep.types == exp.page_types
    assert set(rep.unmapped) == exp.xtab
    assert rep.verify == exp.verify_mode
    assert rep.tsc == [exp.tsc]
    assert rep.toolstack == exp.toolstack
    if spec.guest == "pv":
        assert rep.guest_width == exp.guest_width == spec.guest_width
        assert rep.p2m_frames == exp.p2m_frames
        assert rep.vcpus == exp.vcpus
        assert rep.shared_info == exp.shared_info
    else:
        assert rep.hvm_context == exp.hvm_context
        params = dict(rep.params)
        params.update({5: rep.magic[0], 6: rep.magic[1], 1: rep.magic[2]})
        assert params == exp.hvm_params
        assert rep.qemu == exp.qemu
        assert set(rep.qemu_kinds) == {exp.qemu_kind}
    assert rep.vcpumap & 1
    # saver rules on chunk placement
    for k, ids in enumerate(rep.chunk_ids):
        assert (-9 in ids) == (not spec.checkpoints)
        assert (-13 in ids) == (spec.compression and k == 0)
        assert (-12 in ids) == (spec.compression and k > 0)
        assert (-7 in ids) == (k == 0)
        assert ids[-1] == 0 and ids.count(-2) == 1
        tail_ids = ids[ids.index(-2):]
        assert all(c < 0 or c == 0 for c in tail_ids)
        params_order = [c for c in tail_ids if c in lw.HVM_PARAM_CHUNKS]
        assert params_order == [c for c in lw.HVM_PARAM_CHUNK_ORDER if c in params_order]
        if spec.toolstack is not False and spec.envelope in ("bare", "xl", "libvirt"):
            assert -18 in tail_ids
    return rep


# ==========================================================================
# whole streams
# ==========================================================================


COMBOS = [("pv", 4, 4), ("pv", 4, 8), ("pv", 8, 4), ("pv", 8, 8), ("hvm", 4, 8), ("hvm", 8, 8)]


class TestSniff:
    @pytest.mark.parametrize("guest,width", [("pv", 4), ("pv", 8), ("hvm", 4), ("hvm", 8)])
    @pytest.mark.parametrize("live", [False, True])
    def test_sniff_recognises_every_dialect(self, guest: str, width: int, live: bool) -> None:
        data, _ = stream(LegacySpec(guest=guest, width=width, live=live, pages=100))
        g = legacy.sniff(data[:16])
        assert g is not None
        assert (g.width, g.guest, g.p2m_size) == (width, guest, 100)
        assert g.extended_info == (guest == "pv")

    def test_first_chunk_of_hvm_streams(self) -> None:
        data, _ = stream(LegacySpec(guest="hvm", width=8))
        assert struct.unpack_from("<i", data, 8)[0] == lw.CHUNK_TSC_INFO  # non-live
        data, _ = stream(LegacySpec(guest="hvm", width=4, live=True))
        assert 1 <= struct.unpack_from("<i", data, 4)[0] <= 1024  # live: a batch
        data, _ = stream(LegacySpec(guest="hvm", width=4, tmem=True))
        assert struct.unpack_from("<i", data, 4)[0] == lw.CHUNK_TMEM


class TestWholeStreams:
    @pytest.mark.parametrize("guest,width,gw", COMBOS)
    @pytest.mark.parametrize("live", [False, True])
    def test_plain(self, guest: str, width: int, gw: int, live: bool) -> None:
        spec = LegacySpec(guest=guest, width=width, guest_width=gw, live=live, vcpus=2,
                          batch=20, unmapped=[30, 31] if guest == "pv" else ())
        data, exp = stream(spec)
        rep = check_replay(data, exp, spec)
        assert exp.complete_checkpoints == 1
        if guest == "pv":
            assert sorted(exp.vcpus) == [0, 1]
            assert {30, 31} == exp.xtab and 30 not in exp.pages
            assert exp.page_types[1] == (0xC if gw == 8 else 0xB)
            assert set(exp.vcpus[0]) == {"basic", "extended"}
            assert exp.physmap == [] and exp.toolstack == b"\x01\0\0\0\0\0\0\0"
        else:
            hole = spec.pages // 2 + 1
            assert hole not in exp.pages and hole not in exp.page_types
            assert exp.physmap and exp.qemu is not None and exp.qemu[:4] == b"QEVM"
            assert exp.hvm_params[12] == 0xFEFFC000
            assert rep.qemu_kinds == ["libxl"]
        if live and guest == "pv":  # HVM: the dirty pages were XALLOC in iteration 1
            assert any(v != page_content(p) for p, v in exp.pages.items())

    def test_live_hvm_uses_xalloc_in_first_iteration(self) -> None:
        spec = LegacySpec(guest="hvm", live=True)
        data, exp = stream(spec)
        rep = replay(data, 8, "hvm")
        assert rep.complete == 1
        assert data.count(struct.pack("<Q", 0xE0000001)) == 1  # pfn 1 XALLOC, then resent
        assert exp.page_types[1] == 0

    @pytest.mark.parametrize("guest,width,gw", COMBOS)
    def test_remus_last_checkpoint_wins(self, guest: str, width: int, gw: int) -> None:
        spec = LegacySpec(guest=guest, width=width, guest_width=gw, checkpoints=3, live=True)
        data, exp = stream(spec)
        check_replay(data, exp, spec)
        assert exp.complete_checkpoints == 3
        # pages dirtied in later checkpoints differ from their first version
        assert exp.pages[5] != page_content(5)
        if guest == "hvm":
            assert data.count(lw.QEMU_SIG_LIBXL) == 3
        else:
            shinfo_first = lw._shared_info(gw, spec.pages, 1)
            assert exp.shared_info != shinfo_first

    @pytest.mark.parametrize("guest,width,gw", COMBOS)
    def test_remus_compression(self, guest: str, width: int, gw: int) -> None:
        spec = LegacySpec(guest=guest, width=width, guest_width=gw, checkpoints=4,
                          compression=True, compressed_chunk_size=6000)
        data, exp = stream(spec)
        check_replay(data, exp, spec)
        assert exp.complete_checkpoints == 4

    def test_compressed_stream_mixes_all_page_encodings(self) -> None:
        spec = LegacySpec(guest="hvm", checkpoints=4, compression=True,
                          compressed_chunk_size=1 << 30)
        data, _ = stream(spec)
        # find the COMPRESSED_DATA chunks of checkpoints 3 and 4 and classify the pages
        marker = struct.pack("<i", -12)
        firsts: Set[int] = set()
        sizes: List[int] = []
        pos = data.find(marker)
        while pos >= 0:
            (n,) = struct.unpack_from("<Q", data, pos + 4)
            blob = data[pos + 12:pos + 12 + n]
            off = 0
            while off < len(blob):
                _, nxt = decode_page(bytes(PAGE), blob, off)
                firsts.add(0x00 if blob[off] == 0 else 0x80 if blob[off] == 0x80 else 0x01)
                sizes.append(nxt - off)
                off = nxt
            pos = data.find(marker, pos + 12 + n)
        assert firsts == {0x00, 0x80, 0x01}
        assert max(sizes) == 4105 and min(sizes) == 1

    def test_pv_compression_sends_pagetables_full(self) -> None:
        spec = LegacySpec(guest="pv", checkpoints=3, compression=True)
        data, exp = stream(spec)
        check_replay(data, exp, spec)
        assert exp.page_types[1] == 0xC and 1 in exp.pages

    @pytest.mark.parametrize("k", [1, 2, 3])
    def test_truncated_in_checkpoint(self, k: int) -> None:
        spec = LegacySpec(guest="hvm", checkpoints=3, truncate_in_checkpoint=k)
        data, exp = stream(spec)
        full, full_exp = stream(LegacySpec(guest="hvm", checkpoints=3))
        assert len(data) < len(full)
        assert exp.complete_checkpoints == k - 1
        check_replay(data, exp, spec)
        if k == 3:
            prev, _ = stream(LegacySpec(guest="hvm", checkpoints=2))
            assert full.startswith(data) and data.startswith(prev)
            assert exp.pages != full_exp.pages

    def test_truncated_plain_stream(self) -> None:
        spec = LegacySpec(guest="pv", truncate_in_checkpoint=1)
        data, exp = stream(spec)
        assert exp.complete_checkpoints == 0 and exp.vcpus == {}
        assert replay(data, 8, "pv").complete == 0

    @pytest.mark.parametrize("guest", ["pv", "hvm"])
    def test_verify_tmem_xsave(self, guest: str) -> None:
        spec = LegacySpec(guest=guest, verify_mode=True, tmem=True, xsave=True, live=True,
                          tsc_mode=1, vcpus=3, offline_vcpus=[1])
        data, exp = stream(spec)
        rep = check_replay(data, exp, spec)
        assert exp.verify_mode and rep.verify
        assert exp.tsc[0] == 1
        assert rep.max_vcpu_id == 2 and rep.vcpumap == 0b101
        ids = rep.chunk_ids[0]
        assert ids.index(-6) < ids.index(-7) < ids.index(-1) < ids.index(-2)
        if guest == "pv":
            assert sorted(exp.vcpus) == [0, 2]
            assert set(exp.vcpus[2]) == {"basic", "extended", "xsave"}
            assert (b"xcnt", 4) in rep.ext_blocks
            assert exp.vcpus[0]["xsave"] != exp.vcpus[2]["xsave"]

    def test_pre_31_pv(self) -> None:
        spec = LegacySpec(guest="pv", width=4, guest_width=4, ext_info=False)
        data, exp = stream(spec)
        rep = check_replay(data, exp, spec)
        assert rep.ext_blocks == [] and set(exp.vcpus[0]) == {"basic"}
        assert struct.unpack_from("<I", data, 4)[0] == exp.p2m_frames[0]
        with pytest.raises(ValueError):
            write_legacy(io.BytesIO(), LegacySpec(guest="pv", width=4, guest_width=8,
                                                  ext_info=False))

    def test_broken_pages_and_physmap_without_names(self) -> None:
        spec = LegacySpec(guest="hvm", width=4, broken=[7], physmap_names=False)
        data, exp = stream(spec)
        check_replay(data, exp, spec)
        assert exp.page_types[7] == 0xD and 7 not in exp.pages
        assert all(name is None for *_, name in exp.physmap)
        assert struct.pack("<I", 0xD0000007) in data

    def test_hvm_params_only_non_zero(self) -> None:
        spec = LegacySpec(guest="hvm", hvm_params={-3: 0, -11: 3})
        data, exp = stream(spec)
        check_replay(data, exp, spec)
        assert exp.hvm_params == {9: 3, 5: 62, 6: 61, 1: 63}

    @pytest.mark.parametrize("qemu", ["libxl", "remus", "xend", "xenserver"])
    def test_qemu_kinds(self, qemu: str) -> None:
        spec = LegacySpec(guest="hvm", qemu=qemu, qemu_data=b"QEVM" + b"q" * 50)
        data, exp = stream(spec)
        rep = check_replay(data, exp, spec)
        assert rep.qemu_kinds == [qemu] and exp.qemu == b"QEVM" + b"q" * 50

    def test_no_qemu_record(self) -> None:
        data, exp = stream(LegacySpec(guest="hvm", qemu="none"))
        assert exp.qemu is None and lw.QEMU_SIG_LIBXL not in data
        assert data.endswith(exp.hvm_context or b"-")


class TestEnvelopes:
    def test_xl(self) -> None:
        spec = LegacySpec(guest="hvm", envelope="xl")
        data, exp = stream(spec)
        assert data.startswith(xl.MAGIC)
        flags, _opt, optlen = struct.unpack_from("<III", data, len(xl.MAGIC) + 4)
        assert flags == xl.MANDATORY_FLAG_JSON  # legacy: no STREAMv2 flag
        body = data[xl.HEADER_SIZE + optlen:]
        check_replay(body, exp, spec)
        assert exp.qemu_kind == "libxl"

    def test_libvirt_version_1(self) -> None:
        spec = LegacySpec(guest="pv", envelope="libvirt", width=4)
        data, exp = stream(spec)
        assert data.startswith(libvirt.MAGIC)
        version, xml_len = struct.unpack_from("<II", data, 16)
        assert version == 1
        check_replay(data[64 + xml_len:], exp, spec)

    def test_xend_plain_and_remus(self) -> None:
        spec = LegacySpec(guest="hvm", envelope="xend", width=4)
        data, exp = stream(spec)
        assert data.startswith(xend.MAGIC)
        (n,) = struct.unpack_from(">i", data, 16)
        body = data[20 + n:]
        rep = check_replay(body, exp, spec)
        assert rep.qemu_kinds == ["xend"] and exp.toolstack is None
        assert b"(image (hvm" in data[20:20 + n]
        spec = LegacySpec(guest="hvm", envelope="xend", checkpoints=2)
        data, exp = stream(spec)
        (n,) = struct.unpack_from(">i", data, 16)
        assert check_replay(data[20 + n:], exp, spec).qemu_kinds == ["remus", "remus"]
        with pytest.raises(ValueError):
            write_legacy(io.BytesIO(), LegacySpec(guest="hvm", qemu="xend", checkpoints=2))

    def test_xenopsd_legacy(self) -> None:
        spec = LegacySpec(guest="hvm", envelope="xenopsd", width=4)
        data, exp = stream(spec)
        assert data.startswith(b"XenSavedDomain\n")
        rep = check_replay(data[15:], exp, spec)
        assert rep.qemu_kinds == ["xenserver"] and exp.toolstack is None
        g = legacy.sniff(data[15:31])
        assert g is not None and (g.width, g.guest) == (4, "hvm")
