"""xenstream regs and xenstream.consumers.regs: every vcpu's registers.

The images are built with the writers (xenstream.writers.v2 record by record,
xenstream.writers.legacy) around vcpu state assembled here byte by byte with
struct.pack at the offsets of the reference (xen-formats.md sections 5.3, 6.1
and 6.3, checked against Xen's public headers), never with xenstream's own
Layouts, so that a writer or decoder mistake cannot hide: each test checks
that what it put in comes back out.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jsonschema
import pytest

from xenstream.cli.main import main
from xenstream.consumers.regs import GuestState, VcpuState, elf_gregs, read_state, vcpus
from xenstream.consumers.regs_report import text_lines, to_json
from xenstream.errors import FormatError
from xenstream.io import Source
from xenstream.writers.legacy import LegacySpec, LegacyWriter, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_config,
    write_image,
    xl_header,
)

SCHEMA = json.loads((Path(__file__).parent.parent / "src" / "xenstream" / "schema" /
                     "regs.schema.json").read_text())
U64 = 0xFFFFFFFFFFFFFFFF

# -- HVM context, by hand (reference section 5) -------------------------------------------

# struct hvm_hw_cpu: u64 fields and their offsets in the record body
CPU_Q = {"rax": 512, "rbx": 520, "rcx": 528, "rdx": 536, "rbp": 544, "rsi": 552, "rdi": 560,
         "rsp": 568, "r8": 576, "r9": 584, "r10": 592, "r11": 600, "r12": 608, "r13": 616,
         "r14": 624, "r15": 632, "rip": 640, "rflags": 648, "cr0": 656, "cr2": 664, "cr3": 672,
         "cr4": 680, "dr0": 688, "dr1": 696, "dr2": 704, "dr3": 712, "dr6": 720, "dr7": 728,
         "cs_base": 808, "ds_base": 816, "es_base": 824, "fs_base": 832, "gs_base": 840,
         "ss_base": 848, "tr_base": 856, "ldtr_base": 864, "idtr_base": 872, "gdtr_base": 880,
         "sysenter_cs": 920, "sysenter_esp": 928, "sysenter_eip": 936, "shadow_gs": 944,
         "msr_lstar": 960, "msr_star": 968, "msr_cstar": 976, "msr_syscall_mask": 984,
         "msr_efer": 992, "msr_tsc_aux": 1000, "tsc": 1008}
SEGS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")
CPU_I = {**{f"{s}_sel": 736 + 4 * i for i, s in enumerate(SEGS)},
         **{f"{s}_limit": 768 + 4 * i for i, s in enumerate(SEGS)},
         **{f"{s}_arbytes": 888 + 4 * i for i, s in enumerate(SEGS)},
         "idtr_limit": 800, "gdtr_limit": 804, "pending_event": 1016, "error_code": 1020,
         "flags": 1024}

# a 64-bit Linux vcpu, every register distinct
LONG_MODE = {
    "rax": 0x1111, "rbx": 0x2222, "rcx": 0x3333, "rdx": 0x4444, "rbp": 0xFFFFC90000013E00,
    "rsi": 0x5555, "rdi": 0x6666, "rsp": 0xFFFFC90000013DF8, "r8": 0x8888, "r9": 0x9999,
    "r10": 0xA0A0, "r11": 0xB1B1, "r12": 0xC2C2, "r13": 0xD3D3, "r14": 0xE4E4, "r15": 0xF5F5,
    "rip": 0xFFFFFFFF81C0F1A2, "rflags": 0x246, "cr0": 0x80050033, "cr2": 0x7F00DEAD0000,
    "cr3": 0x10B4E000, "cr4": 0x3706F0, "dr6": 0xFFFF0FF0, "dr7": 0x400,
    "cs_sel": 0x10, "cs_base": 0, "cs_limit": 0xFFFFFFFF, "cs_arbytes": 0xA9B,
    "ss_sel": 0x18, "ss_limit": 0xFFFFFFFF, "ss_arbytes": 0xC93,
    "ds_limit": 0xFFFFFFFF, "ds_arbytes": 0xC93, "es_limit": 0xFFFFFFFF, "es_arbytes": 0xC93,
    "fs_base": 0x7F1234560740, "fs_limit": 0xFFFFFFFF, "fs_arbytes": 0xC93,
    "gs_base": 0xFFFF88807FC00000, "gs_limit": 0xFFFFFFFF, "gs_arbytes": 0xC93,
    "tr_sel": 0x40, "tr_base": 0xFFFFFE0000003000, "tr_limit": 0x4087, "tr_arbytes": 0x8B,
    "idtr_base": 0xFFFFFE0000000000, "idtr_limit": 0xFFF,
    "gdtr_base": 0xFFFFFE0000001000, "gdtr_limit": 0x7F,
    "sysenter_cs": 0x10, "sysenter_esp": 0xFFFFFE0000003000 + 0x1000,
    "sysenter_eip": 0xFFFFFFFF81A01C80, "shadow_gs": 0x7F0000001000,
    "msr_lstar": 0xFFFFFFFF81A00080, "msr_star": 0x0023001000000000,
    "msr_cstar": 0xFFFFFFFF81A01BF0, "msr_syscall_mask": 0x47700, "msr_efer": 0xD01,
    "msr_tsc_aux": 3, "tsc": 0x123456789A, "pending_event": (1 << 31) | (1 << 11) | (3 << 8) | 14,
    "error_code": 0x2, "flags": 1,
}


def cpu_record(values: Dict[str, int], size: int = 1032) -> bytes:
    """A CPU record body at the reference's offsets (FCW/MXCSR set in the FPU image)."""
    body = bytearray(1032)
    struct.pack_into("<H", body, 0, 0x037F)
    struct.pack_into("<I", body, 24, 0x1F80)
    for k, v in values.items():
        if k in CPU_Q:
            struct.pack_into("<Q", body, CPU_Q[k], v)
        else:
            struct.pack_into("<I", body, CPU_I[k], v)
    return bytes(body[:size])


def entry(typecode: int, instance: int, body: bytes) -> bytes:
    return struct.pack("<HHI", typecode, instance, len(body)) + body


def header_entry(cpuid: int = 0x000806EC, khz: int = 2_400_000) -> bytes:
    return entry(1, 0, struct.pack("<IIQII", 0x54381286, 1, 0xFFFFFFFFFFFFFFFF, cpuid, khz))


END = entry(0, 0, b"")


def lapic_regs(*, apic_id: int, tpr: int = 0, isr: Sequence[int] = (), irr: Sequence[int] = (),
               tmr: Sequence[int] = (), lvtt: int = 0x10000, initial: int = 0, current: int = 0,
               divide: int = 0) -> bytes:
    """A LAPIC_REGS page: the xAPIC register offsets (SDM vol. 3, table 11-1)."""
    page = bytearray(1024)
    struct.pack_into("<I", page, 0x20, apic_id)
    struct.pack_into("<I", page, 0x80, tpr)
    for base, vecs in ((0x100, isr), (0x180, tmr), (0x200, irr)):
        for vec in vecs:
            off = base + 0x10 * (vec // 32)
            struct.pack_into("<I", page, off, struct.unpack_from("<I", page, off)[0] | 1 << vec % 32)
    struct.pack_into("<I", page, 0x320, lvtt)
    struct.pack_into("<I", page, 0x380, initial)
    struct.pack_into("<I", page, 0x390, current)
    struct.pack_into("<I", page, 0x3E0, divide)
    return bytes(page)


def lapic(base_msr: int, *, divisor: int = 16, size: int = 32) -> bytes:
    body = struct.pack("<QIIQI", base_msr, 0, divisor, 0xABC0, 0) + b"\0" * 4
    return body[:size]


def hpet_record(timers: Sequence[Tuple[int, int, int]]) -> bytes:
    body = bytearray(1048)
    struct.pack_into("<Q", body, 0, 0x8086A201 | 10_000_000 << 32)  # capability
    struct.pack_into("<Q", body, 16, 0x3)  # config: enabled, legacy routing
    struct.pack_into("<Q", body, 240, 0x1234_5678)  # main counter
    for t, (cfg, cmp, period) in enumerate(timers):
        struct.pack_into("<QQ", body, 256 + 32 * t, cfg, cmp)
        struct.pack_into("<Q", body, 1024 + 8 * t, period)
    return bytes(body)


def ioapic_record(pins: Dict[int, int]) -> bytes:
    redir = [pins.get(i, 1 << 16) for i in range(48)]
    return struct.pack("<QII48Q", 0xFEC00000, 0x10, 1 << 24, *redir)


def mtrr_record(variable: Sequence[Tuple[int, int]], def_type: int = 0xC06) -> bytes:
    var = [0] * 16
    for i, (base, mask) in enumerate(variable):
        var[2 * i], var[2 * i + 1] = base, mask
    return struct.pack("<Q16Q11QQQ", 0x0007040600070406, *var, *([0x0606060606060606] * 11),
                       0x508, def_type)


def xsave_record(xcr0: int, accum: int) -> bytes:
    body = bytearray(24 + 512 + 64 + 256)
    struct.pack_into("<QQQ", body, 0, 0x2FF, xcr0, accum)
    struct.pack_into("<Q", body, 536, 0x7)  # xstate_bv
    return bytes(body)


def cpu_msr_record(msrs: Sequence[Tuple[int, int]]) -> bytes:
    return struct.pack("<II", len(msrs), 0) + b"".join(struct.pack("<IIQ", i, 0, v) for i, v in msrs)


def hvm_blob(cpus: Dict[int, bytes], *, extra: Sequence[bytes] = (), platform: bool = True) -> bytes:
    """HEADER, the CPU records, per-vcpu LAPIC/LAPIC_REGS, the platform devices, END."""
    out = header_entry()
    out += b"".join(entry(2, v, body) for v, body in sorted(cpus.items()))
    if platform:
        out += entry(3, 0, bytes([0x01, 0xFB, 0x02, 0x08, 0x00, 0x40, 0x04, 0x01]))
        out += entry(3, 1, bytes([0x00, 0xFF, 0x00, 0x70, 0x00, 0x00, 0x00, 0x00]))
        out += entry(4, 0, ioapic_record({2: 0x30, 9: 0x39 | 1 << 15 | 1 << 13 | 0x03 << 56}))
    for v in sorted(cpus):
        out += entry(5, v, lapic(0xFEE00000 | 1 << 11 | (1 << 8 if v == 0 else 0)))
        out += entry(6, v, lapic_regs(apic_id=v << 24, tpr=0x10 * (v + 1)))
    if platform:
        chan = struct.pack("<IHBBBBBBBBBB", 0x10000, 0, 0, 0, 0, 3, 3, 0, 3, 2, 0, 1)
        out += entry(10, 0, chan * 3 + struct.pack("<II", 1, 0))
        cmos = bytes([0x45, 0, 0x30, 0, 0x12, 0, 0x03, 0x15, 0x06, 0x24, 0x26, 0x02, 0, 0x80])
        out += entry(11, 0, cmos + bytes([0x0A, 0]) + struct.pack("<q", -3600))
        out += entry(12, 0, hpet_record([(0x4C, 0x1000, 0x100), (0x20, 0x2000, 0), (0x0, 0, 0)]))
        out += entry(13, 0, struct.pack("<IHH", 0x00ABCDEF, 0x0001, 0x0100))
    out += b"".join(extra)
    return out + END


# -- PV contexts, by hand (reference section 6.1) ------------------------------------------

PV64_REGS = {"r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48,
             "r10": 56, "r9": 64, "r8": 72, "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104,
             "rdi": 112, "rip": 128, "rflags": 144, "rsp": 152}
PV64_SEGS = {"cs": 136, "ss": 160, "es": 168, "ds": 176, "fs": 184, "gs": 192}
PV32_REGS = {"ebx": 0, "ecx": 4, "edx": 8, "esi": 12, "edi": 16, "ebp": 20, "eax": 24,
             "eip": 32, "eflags": 40, "esp": 44}
PV32_SEGS = {"cs": 36, "ss": 48, "es": 52, "ds": 56, "fs": 60, "gs": 64}


def pv64_context(vcpu: int, *, rip: int, rsp: int, cr3_pfn: int, rdx: int = 0,
                 user_pt_pfn: Optional[int] = None) -> bytes:
    ctx = bytearray(5168)
    struct.pack_into("<H", ctx, 0, 0x037F)
    struct.pack_into("<Q", ctx, 512, 1 | 4 | 32)  # i387_valid, in_kernel, online
    regs = {k: 0x1000 * (i + 1) + vcpu for i, k in enumerate(PV64_REGS)}
    regs.update(rip=rip, rsp=rsp, rflags=0x282, rdx=rdx)
    for k, off in PV64_REGS.items():
        struct.pack_into("<Q", ctx, 520 + off, regs[k])
    for k, sel in (("cs", 0xE033), ("ss", 0xE02B), ("es", 0), ("ds", 0), ("fs", 0), ("gs", 0)):
        struct.pack_into("<H", ctx, 520 + PV64_SEGS[k], sel)
    struct.pack_into("<B", ctx, 520 + 140, 1)  # saved_upcall_mask
    struct.pack_into("<BBHIQ", ctx, 720 + 16 * 14, 14, 0, 0xE033, 0, 0xFFFFFFFF81A01230)
    struct.pack_into("<QQ", ctx, 4816, 0xFFFF880000100000, 3)  # ldt_base, ldt_ents
    struct.pack_into("<QQ", ctx, 4832, 0x1F0 + vcpu, 0x1F8 + vcpu)  # gdt_frames[0..1]
    struct.pack_into("<QQQ", ctx, 4960, 600, 0xE02B, 0xFFFFC90000004000 + vcpu)  # ents, ss, sp
    struct.pack_into("<Q", ctx, 4984, 0x80050033)  # cr0
    if user_pt_pfn is not None:
        struct.pack_into("<Q", ctx, 4992, user_pt_pfn << 12 | 1)  # cr1
    struct.pack_into("<Q", ctx, 5008, cr3_pfn << 12)  # cr3, as the saver stores it
    struct.pack_into("<Q", ctx, 5016, 0x2660)  # cr4
    struct.pack_into("<Q", ctx, 5048 + 7 * 8, 0x400)  # dr7
    struct.pack_into("<QQQQ", ctx, 5112, 0xFFFFFFFF81001000, 0xFFFFFFFF81002000,
                     0xFFFFFFFF81003000, 0x2D)  # callbacks, vm_assist
    struct.pack_into("<QQQ", ctx, 5144, 0x7F00AA000000, 0xFFFF88803FC00000 + vcpu, 0x7F00BB000000)
    return bytes(ctx)


def pv32_context(vcpu: int, *, eip: int, esp: int, cr3_pfn: int, edx: int = 0) -> bytes:
    ctx = bytearray(2800)
    struct.pack_into("<I", ctx, 512, 1 | 32)  # i387_valid, online (user mode)
    regs = {k: 0x100 * (i + 1) + vcpu for i, k in enumerate(PV32_REGS)}
    regs.update(eip=eip, esp=esp, eflags=0x202, edx=edx)
    for k, off in PV32_REGS.items():
        struct.pack_into("<I", ctx, 516 + off, regs[k])
    for k, sel in (("cs", 0x73), ("ss", 0x7B), ("es", 0x7B), ("ds", 0x7B), ("fs", 0xD8),
                   ("gs", 0xE0)):
        struct.pack_into("<H", ctx, 516 + PV32_SEGS[k], sel)
    struct.pack_into("<BBHI", ctx, 584 + 8 * 0x80, 0x80, 3, 0xE019, 0xC1234567)
    struct.pack_into("<II", ctx, 2632, 0xC2000000, 5)  # ldt
    struct.pack_into("<I", ctx, 2640, 0x3000 + vcpu)  # gdt_frames[0]
    struct.pack_into("<III", ctx, 2704, 32, 0xE021, 0xC1500000 + vcpu)  # ents, ss, sp
    folded = ((cr3_pfn << 12) | (cr3_pfn >> 20)) & 0xFFFFFFFF  # xen_pfn_to_cr3 (x86_32)
    struct.pack_into("<I", ctx, 2728, folded)
    struct.pack_into("<I", ctx, 2732, 0x6F0)  # cr4
    struct.pack_into("<IIIII", ctx, 2780, 0xE019, 0xC1001000, 0xE019, 0xC1002000, 0x1)
    return bytes(ctx)


def ext_context(vcpu: int, size: int = 64) -> bytes:
    """xen_domctl_ext_vcpucontext (reference section 6.3)."""
    body = struct.pack("<IIQQHHBBxx", vcpu, size, 0xFFFFFFFF81A02000 + vcpu, 0xFFFFFFFF81A03000,
                       0x23, 0x10, 1, 0)
    body += struct.pack("<QQQQ", 0x1000A06, 0x1111, 0x2222, 0x3333)
    return body[:max(size, 32)]


# -- stream builders ----------------------------------------------------------------------


def hvm_stream(blob: bytes, *, envelope: str = "xl", version: int = 3,
               config: Optional[Dict[str, Any]] = None) -> bytes:
    """A minimal v2 HVM image around ``blob`` (the parser needs no more)."""
    buf = io.BytesIO()
    if envelope == "xl":
        xl_header(buf, config if config is not None else default_config(ImageSpec(vcpus=2)))
    if envelope in ("xl", "libxl"):
        lw = LibxlWriter(buf)
        lw.header()
        lw.libxc_context()
        w = lw.libxc(version=version)
    else:
        w = LibxcWriter(buf, version=version)
    w.headers("hvm")
    if version >= 3:
        w.static_data_end()
    w.page_data([0, 1, 2])
    w.tsc_info()
    w.hvm_context(blob)
    w.hvm_params({1: 0xFEFFF})
    w.end()
    if envelope in ("xl", "libxl"):
        lw.end()
    return buf.getvalue()


def pv_stream(width: int, vcpu_blobs: Dict[int, bytes], *, ext: bool = True,
              msrs: Optional[Sequence[Tuple[int, int]]] = None,
              xsave: Optional[bytes] = None, version: int = 3) -> bytes:
    buf = io.BytesIO()
    w = LibxcWriter(buf, version=version)
    w.headers("pv")
    w.pv_info(width)
    if version >= 3:
        w.static_data_end()
    w.p2m_frames(0, 15, [15])
    w.page_data(list(range(8)))
    w.tsc_info()
    w.shared_info()
    for v, ctx in sorted(vcpu_blobs.items()):
        w.vcpu_basic(v, width, ctx)
        if ext:
            w.vcpu_extended(v, ext_context(v))
        if xsave is not None:
            w.vcpu_xsave(v, xsave)
        if msrs is not None:
            w.vcpu_msrs(v, msrs)
    w.end()
    return buf.getvalue()


def put(tmp_path: Path, data: bytes, name: str = "img") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def state_of(tmp_path: Path, data: bytes, **kw: Any) -> GuestState:
    st = read_state(put(tmp_path, data), **kw)
    jsonschema.validate(to_json(st), SCHEMA)  # every document a test makes is valid
    assert list(text_lines(st))  # and renders
    return st


def one(st: GuestState, n: int) -> VcpuState:
    v = st.vcpu(n)
    assert v is not None, f"vcpu {n} missing: {[x.vcpu for x in st.vcpus]}"
    return v


# -- HVM ----------------------------------------------------------------------------------


def check_long_mode(v: VcpuState, values: Dict[str, int]) -> None:
    for k in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rflags"):
        assert v.regs[k] == values[k], k
    for k in ("cr0", "cr2", "cr3", "cr4"):
        assert v.control[k] == values[k], k
    assert v.debug["dr6"] == values["dr6"] and v.debug["dr7"] == values["dr7"]
    for s in SEGS:
        seg = v.segments[s]
        assert (seg.sel, seg.base, seg.limit, seg.arbytes) == (
            values.get(f"{s}_sel", 0), values.get(f"{s}_base", 0), values.get(f"{s}_limit", 0),
            values.get(f"{s}_arbytes", 0)), s
    assert v.segments["cs"].attr == {"type": 0xB, "s": 1, "dpl": 0, "p": 1, "avl": 0, "l": 1,
                                     "db": 0, "g": 1}
    assert v.tables == {"gdtr": {"base": values["gdtr_base"], "limit": values["gdtr_limit"]},
                        "idtr": {"base": values["idtr_base"], "limit": values["idtr_limit"]}}
    assert v.msrs["efer"] == values["msr_efer"]
    assert v.msrs["lstar"] == values["msr_lstar"] and v.msrs["star"] == values["msr_star"]
    assert v.msrs["cstar"] == values["msr_cstar"]
    assert v.msrs["syscall_mask"] == values["msr_syscall_mask"]
    assert v.msrs["sysenter_eip"] == values["sysenter_eip"]
    assert v.msrs["shadow_gs"] == values["shadow_gs"]
    assert v.msrs["tsc"] == values["tsc"] and v.msrs["tsc_aux"] == values["msr_tsc_aux"]
    assert v.pending_event is not None
    assert (v.pending_event["valid"], v.pending_event["vector"], v.pending_event["type"],
            v.pending_event["error_valid"], v.pending_event["error_code"]) == (1, 14, 3, 1, 2)
    assert v.fpu["fcw"] == 0x037F and v.fpu["mxcsr"] == 0x1F80 and v.fpu["initialised"] == 1
    assert v.mode == "long mode (64-bit)"


@pytest.mark.parametrize("envelope,version", [("xl", 3), ("libxl", 2), ("libxc", 3),
                                              ("libxc", 2)])
def test_hvm_cpu_record_hand_assembled(tmp_path: Path, envelope: str, version: int) -> None:
    second = {**LONG_MODE, "rip": 0xFFFFFFFF81000ABC, "rsp": 0xFFFFC90000023DF8, "cr3": 0x2000}
    blob = hvm_blob({0: cpu_record(LONG_MODE), 1: cpu_record(second)})
    st = state_of(tmp_path, hvm_stream(blob, envelope=envelope, version=version))
    assert st.guest_type == "hvm" and [v.vcpu for v in st.vcpus] == [0, 1]
    check_long_mode(one(st, 0), LONG_MODE)
    check_long_mode(one(st, 1), second)
    assert st.hvm_context is not None
    assert st.hvm_context.header == {"magic": 0x54381286, "version": 1,
                                     "changeset": 0xFFFFFFFFFFFFFFFF, "cpuid": 0x000806EC,
                                     "gtsc_khz": 2_400_000}
    # the whole context: every entry by name, instance and length, in blob order
    names = [(e.name, e.instance, e.length) for e in st.hvm_context.entries]
    assert names == [("HEADER", 0, 24), ("CPU", 0, 1032), ("CPU", 1, 1032), ("PIC", 0, 8),
                     ("PIC", 1, 8), ("IOAPIC", 0, 400), ("LAPIC", 0, 32), ("LAPIC_REGS", 0, 1024),
                     ("LAPIC", 1, 32), ("LAPIC_REGS", 1, 1024), ("PIT", 0, 56), ("RTC", 0, 24),
                     ("HPET", 0, 1048), ("PMTIMER", 0, 8)]
    # offsets are the file's: the blob starts where HVM_CONTEXT's body does
    data = hvm_stream(blob, envelope=envelope, version=version)
    at = st.hvm_context.offset
    assert data[at:at + len(blob)] == blob
    assert all(data[e.offset:e.offset + 2] == struct.pack("<H", e.typecode)
               for e in st.hvm_context.entries)
    assert one(st, 1).offset == st.hvm_context.entries[2].offset + 8


def test_hvm_devices_decoded(tmp_path: Path) -> None:
    extra = [entry(14, 0, mtrr_record([(0x00000006, 0xFFF80000800), (0x80000000, 0xFFFC0000000)])),
             entry(16, 0, xsave_record(0x7, 0x207)),
             entry(18, 0, struct.pack("<4Q", 0x1000A06, 0, 0, 0)),
             entry(19, 0, struct.pack("<q", -4096) ),
             entry(20, 0, cpu_msr_record([(0x48, 0x1), (0xC0011027, 0xFF0)]))]
    regs = lapic_regs(apic_id=0, tpr=0x20, isr=[0x31, 0xEF], irr=[0x20, 0xFE], tmr=[0x39],
                      lvtt=0x200EC, initial=0x7A120, current=0x3D090, divide=0x3)
    blob = hvm_blob({0: cpu_record(LONG_MODE)}, extra=extra)
    blob = blob.replace(lapic_regs(apic_id=0, tpr=0x10), regs)
    st = state_of(tmp_path, hvm_stream(blob))
    v = one(st, 0)
    lr = v.devices["LAPIC_REGS"]
    assert (lr["apic_id"], lr["tpr"], lr["isr"], lr["irr"], lr["tmr"]) == (
        0, 0x20, [0x31, 0xEF], [0x20, 0xFE], [0x39])
    assert lr["timer"] == {"lvt": 0x200EC, "vector": 0xEC, "masked": 0, "mode": "periodic",
                           "initial_count": 0x7A120, "current_count": 0x3D090,
                           "divide_config": 3, "divisor": 16}
    la = v.devices["LAPIC"]
    assert (la["base_address"], la["enabled"], la["bsp"], la["x2apic"], la["timer_divisor"],
            la["tdt_msr"]) == (0xFEE00000, 1, 1, 0, 16, 0xABC0)
    m = v.devices["MTRR"]
    assert (m["default_type"], m["enabled"], m["fixed_enabled"], m["vcnt"]) == ("WB", 1, 1, 8)
    assert m["variable"][0] == {"base": 6, "mask": 0xFFF80000800, "valid": 1, "type": "WB"}
    assert m["variable"][1] == {"base": 0x80000000, "mask": 0xFFFC0000000, "valid": 0,
                                "type": "UC"}
    assert v.xsave == {"xfeature_mask": 0x2FF, "xcr0": 0x7, "xcr0_accum": 0x207,
                       "size": 832, "xstate_bv": 0x7, "xcomp_bv": 0}
    assert v.msrs["SPEC_CTRL"] == 1 and v.msrs["AMD64_DR0_ADDRESS_MASK"] == 0xFF0
    assert v.devices["VMCE_VCPU"]["caps"] == 0x1000A06
    assert v.devices["TSC_ADJUST"]["tsc_adjust"] == (-4096) & U64
    assert st.hvm_context is not None
    p = st.hvm_context.platform
    master, slave = p["PIC"]
    assert (master["instance"], master["irr"], master["imr"], master["isr"], master["irq_base"],
            master["is_master"], master["elcr"], master["int_output"]) == (0, 1, 0xFB, 2, 8, 1, 4, 1)
    assert (slave["irq_base"], slave["is_master"], slave["imr"]) == (0x70, 0, 0xFF)
    io_ = p["IOAPIC"]
    assert (io_["base_address"], io_["id"], io_["ioregsel"]) == (0xFEC00000, 1 << 24, 0x10)
    pins = {q["pin"]: q for q in io_["redirtbl"] if not q["mask"]}
    assert sorted(pins) == [2, 9]
    assert (pins[9]["vector"], pins[9]["trig_mode"], pins[9]["polarity"], pins[9]["dest_id"]) == (
        0x39, 1, 1, 3)
    assert (pins[2]["vector"], pins[2]["trig_mode"]) == (0x30, 0)
    assert [t["period"] for t in p["HPET"]["timers"]] == [0x100, 0, 0]
    assert [(t["config"], t["cmp"]) for t in p["HPET"]["timers"]] == [
        (0x4C, 0x1000), (0x20, 0x2000), (0, 0)]
    assert (p["HPET"]["config"], p["HPET"]["mc64"]) == (3, 0x12345678)
    assert p["PMTIMER"] == {"tmr_val": 0xABCDEF, "pm1a_sts": 1, "pm1a_en": 0x100}
    assert [c["mode"] for c in p["PIT"]["channels"]] == [2, 2, 2]
    assert p["PIT"]["speaker_data_on"] == 1
    assert (p["RTC"]["seconds"], p["RTC"]["hours"], p["RTC"]["year"], p["RTC"]["rtc_offset"]) == (
        0x45, 0x12, 0x24, -3600)


def test_x2apic_id(tmp_path: Path) -> None:
    blob = hvm_blob({0: cpu_record(LONG_MODE)})
    # LAPIC in x2APIC mode (EXTD | ENABLE): the whole ID register is the id
    blob = blob.replace(lapic(0xFEE00000 | 1 << 11 | 1 << 8), lapic(0xFEE00000 | 3 << 10 | 1 << 8))
    blob = blob.replace(lapic_regs(apic_id=0, tpr=0x10), lapic_regs(apic_id=0x102, tpr=0x10))
    v = one(state_of(tmp_path, hvm_stream(blob)), 0)
    assert v.devices["LAPIC"]["x2apic"] == 1
    assert v.devices["LAPIC_REGS"]["apic_id"] == 0x102


def test_short_records_zero_extended(tmp_path: Path) -> None:
    """Older layouts are zero-extended as hvm_load_entry_zeroextend() does; the
    CPU record's 1016- and 1024-byte layouts as _hvm_hw_fix_cpu() does."""
    compat = bytearray(cpu_record({**LONG_MODE, "flags": 0}, size=1016))
    # the pre-3.4 layout: tsc at 1000, pending_event at 1008, error_code at 1012
    struct.pack_into("<QII", compat, 1000, 0xAAAA5555, (1 << 31) | 0x20, 0)
    no_flags = cpu_record({**LONG_MODE, "flags": 0}, size=1024)
    blob = header_entry()
    blob += entry(2, 0, bytes(compat)) + entry(2, 1, no_flags)
    blob += entry(5, 0, lapic(0xFEE00900, size=24)) + entry(5, 1, lapic(0xFEE00800))
    blob += entry(6, 0, lapic_regs(apic_id=0, tpr=0x30)[:512])  # strict: Xen refuses it
    blob += entry(11, 0, bytes(range(1, 15)) + bytes([0x0B, 0]))  # 16 bytes: Xen < 4.14
    blob += entry(18, 0, struct.pack("<Q", 0x109))  # 8 bytes: Xen 4.2
    blob += END
    st = state_of(tmp_path, hvm_stream(blob))
    v0, v1 = one(st, 0), one(st, 1)
    assert v0.msrs["tsc"] == 0xAAAA5555 and v0.msrs["tsc_aux"] == 0
    assert v0.pending_event is not None and v0.pending_event["vector"] == 0x20
    assert v0.pending_event["valid"] == 1
    assert v0.fpu["initialised"] == 1 and v1.fpu["initialised"] == 1  # forced, as Xen does
    assert v1.msrs["tsc"] == LONG_MODE["tsc"] and v1.msrs["tsc_aux"] == LONG_MODE["msr_tsc_aux"]
    assert v0.regs["rip"] == v1.regs["rip"] == LONG_MODE["rip"]
    la = v0.devices["LAPIC"]
    assert (la["pending_esr"], la["timer_divisor"], la["tdt_msr"]) == (0, 16, 0xABC0)
    assert any("zero-extended from 24 to 32" in n for n in v0.notes)
    lr = v0.devices["LAPIC_REGS"]
    assert lr["tpr"] == 0x30 and lr["timer"]["lvt"] == 0  # beyond 512 bytes: zeros
    assert any("Xen refuses it" in n for n in v0.notes)
    assert v0.devices["VMCE_VCPU"] == {"caps": 0x109, "mci_ctl2_bank0": 0, "mci_ctl2_bank1": 0,
                                       "mcg_ext_ctl": 0}
    assert st.hvm_context is not None
    rtc = st.hvm_context.platform["RTC"]
    assert (rtc["seconds"], rtc["reg_d"], rtc["cmos_index"], rtc["rtc_offset"]) == (1, 14, 0xB, 0)
    notes = {(e.name, e.instance): e.notes for e in st.hvm_context.entries}
    assert "pre-3.4" in notes[("CPU", 0)][0] and "3.4-4.6" in notes[("CPU", 1)][0]
    assert "older Xen" in notes[("RTC", 0)][0]


def test_pvh_from_content_and_config(tmp_path: Path) -> None:
    blob = hvm_blob({0: cpu_record(LONG_MODE)}, platform=False)  # no PIC, IOAPIC, PIT
    st = state_of(tmp_path, hvm_stream(blob, envelope="libxc"))
    assert st.guest_type == "pvh" and one(st, 0).guest_type == "pvh"
    assert one(st, 0).regs["rip"] == LONG_MODE["rip"]
    cfg = default_config(ImageSpec())
    cfg["c_info"]["type"] = "pvh"
    full = hvm_blob({0: cpu_record(LONG_MODE)})  # the config says PVH: it wins
    assert state_of(tmp_path, hvm_stream(full, config=cfg)).guest_type == "pvh"
    assert state_of(tmp_path, hvm_stream(blob, config=default_config(ImageSpec()))
                    ).guest_type == "hvm"


def test_real_mode_and_vcpu_without_cpu_record(tmp_path: Path) -> None:
    real = {"rip": 0xFFF0, "cs_sel": 0xF000, "cs_base": 0xFFFF0000, "cs_limit": 0xFFFF,
            "cs_arbytes": 0x9B, "cr0": 0x60000010, "rflags": 2}
    blob = header_entry() + entry(2, 0, cpu_record(real)) + entry(5, 3, lapic(0xFEE00800)) + END
    st = state_of(tmp_path, hvm_stream(blob))
    v0, v3 = one(st, 0), one(st, 3)
    assert v0.mode == "real mode" and v0.regs["rip"] == 0xFFF0 and v0.segments["cs"].sel == 0xF000
    assert not v3.online and v3.regs == {} and "LAPIC" in v3.devices


def test_writer_images_every_envelope(tmp_path: Path) -> None:
    """write_image's HVM and PV images (its sample context: rip 0xfff0; PV:
    rip 0xffffffff81000000 + vcpu, cr3 pfn 1)."""
    for env in ("xl", "libxl", "libxc", "libvirt", "xenopsd"):
        buf = io.BytesIO()
        write_image(buf, ImageSpec(envelope=env, vcpus=3, pages=8))
        st = state_of(tmp_path, buf.getvalue())
        assert [v.vcpu for v in st.vcpus] == [0, 1, 2], env
        assert all(v.regs["rip"] == 0xFFF0 for v in st.vcpus)
        assert st.layers[0] == env
        buf = io.BytesIO()
        write_image(buf, ImageSpec(envelope=env, guest="pv", vcpus=2, pages=8))
        st = state_of(tmp_path, buf.getvalue())
        assert [v.regs["rip"] for v in st.vcpus] == [0xFFFFFFFF81000000, 0xFFFFFFFF81000001]
        assert all(v.pv is not None and v.pv.cr3_pfn == 1 for v in st.vcpus)


# -- PV -----------------------------------------------------------------------------------


def test_pv64_context_hand_assembled(tmp_path: Path) -> None:
    blobs = {v: pv64_context(v, rip=0xFFFFFFFF81000100 + v, rsp=0xFFFFC90000003E00 - 0x100 * v,
                             cr3_pfn=0x1A2B3 + v, rdx=0x4321 if v == 0 else 0xDEAD,
                             user_pt_pfn=0x5A5A if v == 1 else None)
             for v in range(2)}
    xs = struct.pack("<QQ", 0x7, 0x207) + bytes(512) + struct.pack("<QQ", 0x3, 0) + bytes(48 + 256)
    st = state_of(tmp_path, pv_stream(8, blobs, msrs=[(0xC0000103, 0x55), (0x48, 1)], xsave=xs))
    assert st.guest_type == "pv" and st.guest_width == 64
    for vid in range(2):
        v = one(st, vid)
        p = v.pv
        assert p is not None
        assert v.width == 64 and v.online and v.mode == "64-bit PV, kernel mode"
        assert v.regs["rip"] == 0xFFFFFFFF81000100 + vid
        assert v.regs["rsp"] == 0xFFFFC90000003E00 - 0x100 * vid
        assert v.regs["rflags"] == 0x282
        for i, k in enumerate(PV64_REGS):
            if k not in ("rip", "rsp", "rflags", "rdx"):
                assert v.regs[k] == 0x1000 * (i + 1) + vid, k
        assert (v.segments["cs"].sel, v.segments["ss"].sel) == (0xE033, 0xE02B)
        assert v.control["cr3"] == (0x1A2B3 + vid) << 12 and p.cr3 == (0x1A2B3 + vid) << 12
        assert p.cr3_pfn == 0x1A2B3 + vid
        assert (v.control["cr0"], v.control["cr4"], v.debug["dr7"]) == (0x80050033, 0x2660, 0x400)
        assert p.user_pt_pfn == (0x5A5A if vid == 1 else None)
        assert p.start_info_pfn == (0x4321 if vid == 0 else None)
        assert (p.kernel_ss, p.kernel_sp) == (0xE02B, 0xFFFFC90000004000 + vid)
        assert p.gdt_ents == 600 and p.gdt_frames == [0x1F0 + vid, 0x1F8 + vid]
        assert (p.ldt_base, p.ldt_ents) == (0xFFFF880000100000, 3)
        assert p.callbacks == {"event_callback_eip": 0xFFFFFFFF81001000,
                               "failsafe_callback_eip": 0xFFFFFFFF81002000,
                               "syscall_callback_eip": 0xFFFFFFFF81003000}
        assert p.vm_assist == 0x2D and p.saved_upcall_mask == 1
        assert p.segment_bases == {"fs_base": 0x7F00AA000000,
                                   "gs_base_kernel": 0xFFFF88803FC00000 + vid,
                                   "gs_base_user": 0x7F00BB000000}
        assert p.flag_names == ["i387_valid", "in_kernel", "online"]
        assert p.traps == [{"index": 14, "vector": 14, "flags": 0, "cs": 0xE033,
                            "address": 0xFFFFFFFF81A01230}]
        assert v.extended == {"vcpu": vid, "size": 64,
                              "syscall32_callback_eip": 0xFFFFFFFF81A02000 + vid,
                              "sysenter_callback_eip": 0xFFFFFFFF81A03000,
                              "syscall32_callback_cs": 0x23, "sysenter_callback_cs": 0x10,
                              "syscall32_disables_events": 1, "sysenter_disables_events": 0,
                              "mcg_cap": 0x1000A06, "mci_ctl2_bank0": 0x1111,
                              "mci_ctl2_bank1": 0x2222, "mcg_ext_ctl": 0x3333}
        assert v.msrs == {"TSC_AUX": 0x55, "SPEC_CTRL": 1}
        assert v.xsave == {"xcr0": 7, "xcr0_accum": 0x207, "size": len(xs) - 16,
                           "xstate_bv": 3, "xcomp_bv": 0}
        # in kernel mode the active GS base is the kernel's
        g = dict(zip(("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
                      "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
                      "fs_base", "gs_base", "ds", "es", "fs", "gs"), elf_gregs(v)))
        assert g["gs_base"] == 0xFFFF88803FC00000 + vid and g["fs_base"] == 0x7F00AA000000
        assert g["cs"] == 0xE033 and g["rip"] == v.regs["rip"]


def test_pv32_context_hand_assembled(tmp_path: Path) -> None:
    # a pfn above 2^20: the 32-bit cr3 folding rotates its top bits into the low ones
    blobs = {v: pv32_context(v, eip=0xC1000100 + v, esp=0xC1400000 - 0x10 * v,
                             cr3_pfn=0x123456 + v, edx=0x777 if v == 0 else 0)
             for v in range(2)}
    st = state_of(tmp_path, pv_stream(4, blobs, ext=False, version=2))
    assert st.guest_width == 32
    for vid in range(2):
        v = one(st, vid)
        p = v.pv
        assert p is not None
        assert v.width == 32 and v.mode == "32-bit PV, user mode"
        assert v.regs["rip"] == 0xC1000100 + vid and v.regs["rsp"] == 0xC1400000 - 0x10 * vid
        assert v.regs["rflags"] == 0x202 and "r8" not in v.regs
        assert v.regs["rax"] == 0x100 * 7 + vid and v.regs["rbx"] == 0x100 + vid
        assert p.cr3_pfn == 0x123456 + vid
        assert p.cr3 == (((0x123456 + vid) << 12) | ((0x123456 + vid) >> 20)) & 0xFFFFFFFF
        assert p.start_info_pfn == (0x777 if vid == 0 else None)
        assert p.user_pt_pfn is None and p.gdt_frames == [0x3000 + vid] and p.gdt_ents == 32
        assert (p.kernel_ss, p.kernel_sp, p.ldt_base, p.ldt_ents) == (
            0xE021, 0xC1500000 + vid, 0xC2000000, 5)
        assert p.callbacks == {"event_callback_cs": 0xE019, "event_callback_eip": 0xC1001000,
                               "failsafe_callback_cs": 0xE019, "failsafe_callback_eip": 0xC1002000}
        assert p.vm_assist == 1 and v.control["cr4"] == 0x6F0
        assert {k: s.sel for k, s in v.segments.items()} == {
            "cs": 0x73, "ds": 0x7B, "es": 0x7B, "fs": 0xD8, "gs": 0xE0, "ss": 0x7B}
        assert p.traps == [{"index": 0x80, "vector": 0x80, "flags": 3, "cs": 0xE019,
                            "address": 0xC1234567}]
        g = elf_gregs(v)
        assert g[16] == 0xC1000100 + vid and g[19] == 0xC1400000 - 0x10 * vid
        assert g[0:4] == (0, 0, 0, 0) and g[21:23] == (0, 0)  # no r15..r12, no bases


def test_ext_context_older_sizes(tmp_path: Path) -> None:
    """A 40-byte (Xen 4.2) extended context has mcg_cap only; a 32-byte one neither."""
    for size, want in ((40, {"mcg_cap"}), (56, {"mcg_cap", "mci_ctl2_bank0", "mci_ctl2_bank1"}),
                       (32, set())):
        buf = io.BytesIO()
        w = LibxcWriter(buf)
        w.headers("pv")
        w.pv_info(8)
        w.vcpu_basic(0, 8, pv64_context(0, rip=1, rsp=2, cr3_pfn=3))
        w.vcpu_extended(0, ext_context(0, size))
        w.end()
        v = one(state_of(tmp_path, buf.getvalue()), 0)
        assert v.extended is not None
        got = set(v.extended) & {"mcg_cap", "mci_ctl2_bank0", "mci_ctl2_bank1", "mcg_ext_ctl"}
        assert got == want, size
        assert v.extended["syscall32_callback_cs"] == 0x23


# -- legacy -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [8, 4])
def test_legacy_hvm_hand_assembled(tmp_path: Path, width: int) -> None:
    """A legacy HVM image from a 64- or 32-bit toolstack, its tail holding our context."""
    blob = hvm_blob({0: cpu_record(LONG_MODE), 1: cpu_record({**LONG_MODE, "rip": 0x1234})})
    buf = io.BytesIO()
    w = LegacyWriter(buf, width=width, guest="hvm")
    w.header(16)
    w.tsc_info()
    w.batch([0, 1, 2])
    w.last_checkpoint()
    w.end_of_body()
    w.hvm_tail((13, 14, 15), blob)
    w.qemu_record(b"QEVM\0\0\0\3" + bytes(32))
    data = buf.getvalue()
    st = state_of(tmp_path, data)
    assert st.legacy and st.guest_type == "hvm" and st.layers == ["legacy"]
    check_long_mode(one(st, 0), LONG_MODE)
    assert one(st, 1).regs["rip"] == 0x1234
    assert st.hvm_context is not None
    at = st.hvm_context.offset
    assert data[at:at + len(blob)] == blob


@pytest.mark.parametrize("width,guest_width", [(8, 8), (8, 4), (4, 4)])
def test_legacy_pv_writer(tmp_path: Path, width: int, guest_width: int) -> None:
    """write_legacy's PV images (64- and 32-bit toolstacks and guests): the
    contexts it wrote come back, read at the reference's offsets."""
    buf = io.BytesIO()
    exp = write_legacy(buf, LegacySpec(guest="pv", width=width, guest_width=guest_width,
                                       vcpus=3, offline_vcpus=[1], xsave=True))
    data = buf.getvalue()
    st = state_of(tmp_path, data)
    assert st.guest_width == guest_width * 8 and [v.vcpu for v in st.vcpus] == [0, 2]
    for v in st.vcpus:
        ctx = exp.vcpus[v.vcpu]["basic"]
        assert v.offset is not None and data[v.offset:v.offset + len(ctx)] == ctx
        if guest_width == 8:
            rip, rsp, cr3 = (struct.unpack_from("<Q", ctx, o)[0] for o in (648, 672, 5008))
            pfn = cr3 >> 12
        else:
            rip, rsp, cr3 = (struct.unpack_from("<I", ctx, o)[0] for o in (548, 560, 2728))
            pfn = ((cr3 >> 12) | (cr3 << 20)) & 0xFFFFFFFF
        assert (v.regs["rip"], v.regs["rsp"]) == (rip, rsp)
        assert v.pv is not None and v.pv.cr3 == cr3 and v.pv.cr3_pfn == pfn == 1
        ext = exp.vcpus[v.vcpu]["extended"]
        assert v.extended is not None
        assert v.extended["vcpu"] == struct.unpack_from("<I", ext)[0] == v.vcpu
        assert v.extended["syscall32_callback_eip"] == struct.unpack_from("<Q", ext, 8)[0]
        xs = exp.vcpus[v.vcpu]["xsave"]
        assert v.xsave is not None
        assert (v.xsave["xcr0"], v.xsave["xcr0_accum"]) == struct.unpack_from("<QQ", xs)


def test_legacy_pv_hand_assembled_tail(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = LegacyWriter(buf, width=8, guest="pv", guest_width=8)
    w.header(16, extv=True)
    w.batch([0, 1, 2, 3])
    w.vcpu_info(1, [0, 1])
    w.last_checkpoint()
    w.end_of_body()
    ctxs = [pv64_context(v, rip=0xFFFFFFFF8100AA00 + v, rsp=0x5000 + v, cr3_pfn=7 + v)
            for v in range(2)]
    exts = [ext_context(v).ljust(128, b"\0") for v in range(2)]
    w.pv_tail([9], [(ctxs[0], exts[0], None), (ctxs[1], exts[1], None)], bytes(4096))
    st = state_of(tmp_path, buf.getvalue())
    assert [(v.regs["rip"], v.regs["rsp"]) for v in st.vcpus] == [
        (0xFFFFFFFF8100AA00, 0x5000), (0xFFFFFFFF8100AA01, 0x5001)]
    assert [v.pv.cr3_pfn for v in st.vcpus if v.pv] == [7, 8]
    assert [v.extended["mcg_ext_ctl"] for v in st.vcpus if v.extended] == [0x3333, 0x3333]


# -- checkpoints ---------------------------------------------------------------------------


def _remus(ctxs: Sequence[bytes], *, libxl: bool, cut: Optional[str] = None) -> bytes:
    """A Remus HVM stream with one checkpoint per context; ``cut``: "record"
    truncates the last checkpoint inside its HVM_CONTEXT, "section" after its
    libxc CHECKPOINT (before the libxl CHECKPOINT_END), "end" closes it with
    END instead of a CHECKPOINT."""
    buf = io.BytesIO()
    lw = LibxlWriter(buf)
    if libxl:
        lw.header()
        lw.libxc_context()
        w = lw.libxc(version=3)
    else:
        w = LibxcWriter(buf, version=3)
    w.headers("hvm")
    w.static_data_end()
    cut_at = None
    for k, ctx in enumerate(ctxs):
        last = k == len(ctxs) - 1
        w.page_data([k % 4])
        if last and cut == "record":
            cut_at = buf.tell() + 8 + len(ctx) // 2
        w.hvm_context(ctx)
        if last and cut == "end":
            w.end()
            break
        w.checkpoint()
        if last and cut == "section":
            cut_at = buf.tell()
            lw.xenstore_data({"a": "b"})
            break
        if libxl:
            lw.checkpoint_end()
    data = buf.getvalue()
    return data[:cut_at] if cut_at is not None else data


def _rip_ctx(rip: int) -> bytes:
    return hvm_blob({0: cpu_record({**LONG_MODE, "rip": rip})})


@pytest.mark.parametrize("libxl", [True, False])
def test_remus_truncated_last_checkpoint(tmp_path: Path, libxl: bool) -> None:
    ctxs = [_rip_ctx(0xA000), _rip_ctx(0xB000), _rip_ctx(0xC000)]
    st = state_of(tmp_path, _remus(ctxs, libxl=libxl))  # complete: the last one wins
    assert st.checkpointed and st.complete_checkpoints == 3 and st.vcpus[0].regs["rip"] == 0xC000
    st = state_of(tmp_path, _remus(ctxs, libxl=libxl, cut="record"))
    assert st.complete_checkpoints == 2 and st.vcpus[0].regs["rip"] == 0xB000
    assert any("checkpoint 2" in n for n in st.notes)
    st = state_of(tmp_path, _remus(ctxs, libxl=libxl, cut="end"))
    assert st.vcpus[0].regs["rip"] == 0xB000  # END drops the unfinished checkpoint
    assert any("dropped" in n for n in st.notes)


def test_remus_checkpoint_needs_libxl_checkpoint_end(tmp_path: Path) -> None:
    """In a libxl stream a checkpoint is complete at CHECKPOINT_END, not at
    libxc's CHECKPOINT (libxc applies it only once libxl's callback returns)."""
    ctxs = [_rip_ctx(0xA000), _rip_ctx(0xB000)]
    st = state_of(tmp_path, _remus(ctxs, libxl=True, cut="section"))
    assert st.complete_checkpoints == 1 and st.vcpus[0].regs["rip"] == 0xA000
    st = state_of(tmp_path, _remus(ctxs, libxl=False, cut="section"))
    assert st.vcpus[0].regs["rip"] == 0xB000


def test_remus_first_checkpoint_truncated_is_an_error(tmp_path: Path) -> None:
    data = _remus([_rip_ctx(0xA000)], libxl=True, cut="record")
    with pytest.raises(FormatError) as e:
        read_state(put(tmp_path, data))
    assert e.value.offset > 0


def test_writer_checkpointed_images(tmp_path: Path) -> None:
    for colo in (False, True):
        buf = io.BytesIO()
        write_image(buf, ImageSpec(checkpoints=3, colo=colo, vcpus=2, pages=8))
        st = state_of(tmp_path, buf.getvalue())
        assert st.checkpointed and st.complete_checkpoints == 3 and len(st.vcpus) == 2


def test_legacy_remus_truncated(tmp_path: Path) -> None:
    """write_legacy's PV Remus stream: rsp = 0xffff880000010000 + 0x1000 *
    checkpoint + vcpu; the third checkpoint is cut, the second's state wins."""
    for compression in (False, True):
        buf = io.BytesIO()
        exp = write_legacy(buf, LegacySpec(guest="pv", vcpus=2, checkpoints=3,
                                           truncate_in_checkpoint=3, compression=compression))
        st = state_of(tmp_path, buf.getvalue())
        assert st.checkpointed and st.complete_checkpoints == 2 == exp.complete_checkpoints
        assert [v.regs["rsp"] for v in st.vcpus] == [0xFFFF880000012000, 0xFFFF880000012001]
        assert [v.regs["rsp"] for v in st.vcpus] == [
            struct.unpack_from("<Q", exp.vcpus[v]["basic"], 672)[0] for v in (0, 1)]
        assert any("checkpoint 2" in n for n in st.notes)


# -- elf_gregs, the library ------------------------------------------------------------------


def test_elf_gregs_order(tmp_path: Path) -> None:
    v = one(state_of(tmp_path, hvm_stream(hvm_blob({0: cpu_record(LONG_MODE)}))), 0)
    L = LONG_MODE
    assert elf_gregs(v) == (
        L["r15"], L["r14"], L["r13"], L["r12"], L["rbp"], L["rbx"], L["r11"], L["r10"], L["r9"],
        L["r8"], L["rax"], L["rcx"], L["rdx"], L["rsi"], L["rdi"], U64, L["rip"], L["cs_sel"],
        L["rflags"], L["rsp"], L["ss_sel"], L["fs_base"], L["gs_base"], 0, 0, 0, 0)


def test_vcpus_accepts_path_fd_and_source(tmp_path: Path) -> None:
    p = put(tmp_path, hvm_stream(hvm_blob({0: cpu_record(LONG_MODE)})))
    assert vcpus(str(p))[0].regs["rip"] == LONG_MODE["rip"]
    assert vcpus(p)[0].regs["rip"] == LONG_MODE["rip"]
    with Source.open(str(p)) as src:
        assert vcpus(src)[0].regs["rip"] == LONG_MODE["rip"]
    fd = os.open(p, os.O_RDONLY)
    try:
        assert vcpus(fd)[0].regs["rip"] == LONG_MODE["rip"]
    finally:
        os.close(fd)
    with pytest.raises(FormatError):
        vcpus(p, format="legacy")


def test_page_data_is_not_read(tmp_path: Path) -> None:
    """Seekable input: page data is skipped, not read (HVM v3 and legacy PV)."""
    buf = io.BytesIO()
    write_image(buf, ImageSpec(pages=4096, vcpus=2))
    buf2 = io.BytesIO()
    write_legacy(buf2, LegacySpec(guest="pv", pages=4096))
    for data in (buf.getvalue(), buf2.getvalue()):
        p = put(tmp_path, data)
        with Source.open(str(p)) as src:
            st = read_state(src)
            assert st.vcpus
            assert src.bytes_read < len(data) // 20, (src.bytes_read, len(data))


# -- the command ------------------------------------------------------------------------------


def run(argv: List[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = hvm_blob({0: cpu_record(LONG_MODE), 1: cpu_record({**LONG_MODE, "rip": 0x4242})})
    p = put(tmp_path, hvm_stream(blob))
    rc, out, err = run(["regs", str(p)], capsys)
    assert rc == 0 and err == ""
    assert out.startswith(f"{p}: HVM guest, 2 vcpus, xl -> libxl -> libxc\n")
    assert f"rip {LONG_MODE['rip']:#018x}" in out and "rip 0x0000000000004242" in out
    assert f"cr3 {LONG_MODE['cr3']:#018x}" in out and "efer 0xd01 [SCE LME LMA NXE]" in out
    assert "vcpu 0: online, long mode (64-bit)" in out
    assert "LAPIC_REGS: id 0x1" in out and "platform:" in out and "HPET" in out
    assert "IOAPIC: base 0xfec00000" in out and "pin 9: vector 0x39" in out
    rc, out, err = run(["regs", "--vcpu", "1", str(p)], capsys)
    assert rc == 0 and "vcpu 1:" in out and "vcpu 0:" not in out and "platform:" not in out


def test_cli_pv_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = put(tmp_path, pv_stream(4, {0: pv32_context(0, eip=0xC0101010, esp=0xC0202020,
                                                    cr3_pfn=0x123456, edx=0x99)}))
    rc, out, _ = run(["regs", str(p)], capsys)
    assert rc == 0 and "32-bit PV guest, 1 vcpu" in out
    assert "eip 0xc0101010" in out and "esp 0xc0202020" in out
    assert "cr3 pfn 0x123456" in out and "start_info pfn 0x99" in out


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = put(tmp_path, hvm_stream(hvm_blob({0: cpu_record(LONG_MODE)})))
    rc, out, _ = run(["regs", "--json", str(p)], capsys)
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert rc == 0 and doc["vcpus"][0]["registers"]["rip"] == LONG_MODE["rip"]
    assert doc["vcpus"][0]["segments"]["cs"]["attr"]["l"] == 1
    assert doc["hvm_context"]["entries"][0]["name"] == "HEADER"
    assert len(doc["vcpus"][0]["elf_gregs"]) == 27
    rc, out, _ = run(["regs", "--json", "--vcpu", "0", str(p)], capsys)
    assert rc == 0 and [v["vcpu"] for v in json.loads(out)["vcpus"]] == [0]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = put(tmp_path, hvm_stream(hvm_blob({0: cpu_record(LONG_MODE)})))
    rc, out, err = run(["regs", "--vcpu", "5", str(p)], capsys)
    assert rc == 1 and out == ""
    assert err == f"{p}: vcpu 5 is not in the image (its vcpus: 0)\n"
    data = p.read_bytes()
    bad = put(tmp_path, data[:len(data) - 3000], "cut")
    rc, out, err = run(["regs", str(bad)], capsys)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"{bad}: offset 0x") and "HVM_CONTEXT" in err
    garbage = put(tmp_path, b"\x07" * 64, "garbage")
    rc, _, err = run(["regs", str(garbage)], capsys)
    assert rc == 1 and err.startswith(f"{garbage}: offset 0x0") and len(err.splitlines()) == 1
    rc, _, err = run(["regs", "--format", "libxc", str(p)], capsys)
    assert rc == 1 and "forced by --format" in err
    rc, _, err = run(["regs", str(tmp_path / "missing")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["regs", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "xenstream regs --vcpu 1" in out


def _bash(script: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)


def test_cli_pipes(tmp_path: Path) -> None:
    """Read from a pipe; piped into head the command exits 0 and says nothing."""
    buf = io.BytesIO()
    write_image(buf, ImageSpec(vcpus=64, pages=64))  # ~200 KB of text: more than a pipe holds
    p = put(tmp_path, buf.getvalue())
    py = sys.executable
    r = _bash(f"cat {p} | {py} -m xenstream regs -")
    assert r.returncode == 0 and "vcpu 63:" in r.stdout and r.stdout.startswith("<stdin>: HVM")
    assert r.stderr == ""
    r = _bash(f"{py} -m xenstream regs {p} | head -1; echo rc=${{PIPESTATUS[0]}}")
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{p}: HVM guest, 64 vcpus") and lines[-1] == "rc=0"
    assert len(lines) == 2 and r.stderr == ""
    r = _bash(f"{py} -m xenstream regs --json {p} | head -c 10; echo; echo rc=${{PIPESTATUS[0]}}")
    assert r.stdout.splitlines()[-1] == "rc=0" and r.stderr == ""
