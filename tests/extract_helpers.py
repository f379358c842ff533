"""Images for the extract tests, built with the writers record by record so
that the test knows, from what it gave the writer, which copy of every page
the restored guest holds, and readers of the outputs that use pyelftools and
``os.pread`` only (never xenstream's own parser).

:func:`v2_image` writes a libxc v2/v3 stream in any envelope, HVM or PV,
plain, live (pages sent twice with different contents), with a VERIFY resend
of garbage (which must not count), with XTAB/BROKEN/XALLOC entries, Remus or
COLO checkpoints (later ones resending pages and sending new ones), and a last
checkpoint cut short; :func:`legacy_image` wraps ``write_legacy``, whose
:class:`~xenstream.writers.legacy.Expected` is the writer's record of what it
sent.  Every image can carry a Linux banner at a chosen guest-physical
address, and vcpu 0 a chosen rip/rsp (in hand-packed CPU records and PV
contexts).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from elftools.elf.elffile import ELFFile

from xenstream.formats import hvm, libxc, libxl, xenopsd
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_config,
    default_libvirt_xml,
    libvirt_header,
    xenops_metadata,
    xenopsd_frame,
    xl_header,
)

PAGE = 4096
BANNER = (b"Linux version 5.10.0-21-xenstream (debian-kernel@lists.debian.org) "
          b"(gcc-10 (Debian 10.2.1-6) 10.2.1 20210110, GNU ld 2.35.2) #1 SMP Debian "
          b"5.10.162-1 (2023-01-21)\n\x00")
BANNER_PFN = 0x15
BANNER_OFF = 0x2C0
RIP = 0xFFFFFFFF81A3C5D0
RSP = 0xFFFFC90000A7BE48
#: offsets in struct hvm_hw_cpu (public/arch-x86/hvm/save.h): after fpu_regs[512],
#: rax rbx rcx rdx rbp rsi rdi rsp r8..r15 rip rflags
CPU_RSP, CPU_RIP = 512 + 7 * 8, 512 + 16 * 8
#: offsets in vcpu_guest_context (public/arch-x86/xen-x86_64.h and -x86_32.h):
#: user_regs after fpu_ctxt[512] and flags
PV64_RIP, PV64_RSP = 520 + 128, 520 + 152
PV32_EIP, PV32_ESP = 516 + 32, 516 + 44


def page(pfn: int, version: int) -> bytes:
    """The content of ``pfn`` after its ``version``-th copy: unique per pair."""
    head = struct.pack("<QQ", pfn, 0xA110C000_00000000 | version)
    body = bytes(((pfn * 7 + version * 13 + i) & 0xFF) for i in range(256)) * 16
    return head + body[16:]


def with_banner(data: bytes, pfn: int) -> bytes:
    if pfn != BANNER_PFN:
        return data
    return data[:BANNER_OFF] + BANNER + data[BANNER_OFF + len(BANNER):]


def hvm_cpu(vcpu: int, rip: int, rsp: int) -> bytes:
    body = bytearray(hvm.sample_cpu(vcpu, rip=rip, cr3=0x1000))
    struct.pack_into("<Q", body, CPU_RIP, rip)
    struct.pack_into("<Q", body, CPU_RSP, rsp)
    return bytes(body)


def hvm_context(regs: Dict[int, Tuple[int, int]]) -> bytes:
    hdr = hvm.HEADER.pack(magic=hvm.HVM_SAVE_MAGIC, version=1, changeset=0, cpuid=0x806EC,
                          gtsc_khz=2_000_000)
    entries = [(hvm.HEADER_CODE, 0, hdr)]
    entries += [(hvm.CPU, v, hvm_cpu(v, rip, rsp)) for v, (rip, rsp) in sorted(regs.items())]
    entries.append((hvm.END, 0, b""))
    return hvm.build_context(entries)


def pv_context(width: int, rip: int, rsp: int) -> bytes:
    ctx = bytearray(5168 if width == 8 else 2800)
    if width == 8:
        struct.pack_into("<Q", ctx, 512, 1 | 4 | 32)
        struct.pack_into("<QQ", ctx, PV64_RIP, rip, 0)
        struct.pack_into("<Q", ctx, PV64_RSP, rsp)
    else:
        struct.pack_into("<I", ctx, 512, 1 | 4 | 32)
        struct.pack_into("<I", ctx, PV32_EIP, rip & 0xFFFFFFFF)
        struct.pack_into("<I", ctx, PV32_ESP, rsp & 0xFFFFFFFF)
    return bytes(ctx)


@dataclass
class Built:
    data: bytes
    pages: Dict[int, bytes]  # the restored guest's memory
    guest: str
    width: int = 8
    regs: Dict[int, Tuple[int, int]] = field(default_factory=dict)  # vcpu -> (rip, rsp)
    shared_info: Optional[bytes] = None
    hvm_context: Optional[bytes] = None
    emulator_context: Optional[bytes] = None
    xenstore: List[Tuple[bytes, bytes]] = field(default_factory=list)
    checkpoints: int = 1  # complete ones


# -- v2 images ----------------------------------------------------------------------------

HOLE = range(32, 40)  # never sent with data
PFNS = [p for p in range(96) if p not in HOLE]


class _V2:
    def __init__(self, guest: str, width: int, vcpus: int, banner: bool) -> None:
        self.guest = guest
        self.width = width
        self.vcpus = vcpus
        self.banner = banner
        self.mem: Dict[int, bytes] = {}
        self.version: Dict[int, int] = {}

    def content(self, pfn: int, version: int) -> bytes:
        data = page(pfn, version)
        return with_banner(data, pfn) if self.banner else data

    def pages(self, w: LibxcWriter, pfns: Sequence[int], version: int, *, typed: bool = False,
              record: bool = True, batch: int = 16) -> None:
        """PAGE_DATA for ``pfns`` (``record``: what the restore keeps)."""
        for i in range(0, len(pfns), batch):
            chunk = list(pfns[i:i + batch])
            types = [0] * len(chunk)
            if typed and self.guest == "pv":
                types = [(1 + (p % 4)) if p < 8 else 0 for p in chunk]  # L1-L4 tables
            datas = [self.content(p, version) for p in chunk]
            if typed:  # entries without data: XTAB, BROKEN, XALLOC, for pfns of the hole
                chunk += [33, 34, 35]
                types += [libxc.PT_XTAB, libxc.PT_BROKEN, libxc.PT_XALLOC]
            w.page_data(chunk, types, datas)
            if record:
                for p, d in zip(chunk, datas):
                    self.mem[p] = d

    def state(self, w: LibxcWriter, k: int) -> Dict[int, Tuple[int, int]]:
        regs = {v: (RIP + 0x100 * k + v, RSP - 0x1000 * k - v) for v in range(self.vcpus)}
        if self.guest == "pv" and self.width == 4:  # a 32-bit context holds eip, esp
            regs = {v: (a & 0xFFFFFFFF, b & 0xFFFFFFFF) for v, (a, b) in regs.items()}
        w.tsc_info()
        if self.guest == "hvm":
            w.hvm_context(hvm_context(regs))
            w.hvm_params({1: 90, 5: 91, 6: 92})
        else:
            w.shared_info(bytes([k]) * PAGE)
            for v, (rip, rsp) in regs.items():
                w.vcpu_basic(v, self.width, pv_context(self.width, rip, rsp))
        return regs


def v2_image(envelope: str = "xl", guest: str = "hvm", *, version: int = 3, width: int = 8,
             vcpus: int = 2, checkpoints: int = 0, colo: bool = False, cut: Optional[str] = None,
             verify: bool = False, live: bool = True, banner: bool = True,
             end: bool = False) -> Built:
    """A v2 image.  ``checkpoints``: complete Remus (``colo``: COLO)
    checkpoints; ``cut``: a further checkpoint "inside" a record, at a record
    "boundary", or ended by "end" (END after its records)."""
    out = io.BytesIO()
    g = _V2(guest, width, vcpus, banner)
    emu = [b"QEVM\0\0\0\3" + struct.pack("<I", k) + bytes(range(200)) for k in range(8)]
    xs = [(b"physmap/f0000000/start_addr", b"f0000000"), (b"physmap/f0000000/size", b"800000"),
          (b"device-model/0/state", b"running")]
    lw: Optional[LibxlWriter] = None
    if envelope == "xl":
        xl_header(out, default_config(ImageSpec(guest=guest, vcpus=vcpus)))
    elif envelope == "libvirt":
        libvirt_header(out, default_libvirt_xml(ImageSpec(guest=guest, vcpus=vcpus)))
    elif envelope == "xenopsd":
        out.write(xenopsd.MAGIC_V2)
        xenopsd_frame(out, xenopsd.XENOPS, xenops_metadata(vm_str="((name x))"))
        xenopsd_frame(out, xenopsd.LIBXC)
    if envelope in ("xl", "libvirt", "libxl"):
        lw = LibxlWriter(out)
        lw.header()
        lw.libxc_context()
    w = LibxcWriter(out, version=version)
    w.headers(guest)
    if guest == "pv":
        w.pv_info(width)
    if version >= 3:
        w.cpuid_policy()
        w.msr_policy()
        w.static_data_end()
    if guest == "pv":
        fpp = PAGE // width
        w.p2m_frames(0, 95, [95 - i for i in range(95 // fpp + 1)])
    g.pages(w, PFNS, 0, typed=True)
    if live:  # a second iteration: dirty pages, new contents
        g.pages(w, [5, 6, 7, 8, 50, BANNER_PFN], 1, batch=3)
    if verify:  # xl migrate --debug: everything again, compared, not copied
        w.verify()
        g.pages(w, PFNS, 99, record=False, batch=64)
    regs = g.state(w, 0)
    built = Built(b"", {}, guest, width)

    def emulator(k: int) -> None:
        if lw is not None and guest == "hvm":
            lw.xenstore_data(xs + [(b"checkpoint", str(k).encode())])
            lw.emulator_context(emu[k])

    def commit(k: int) -> None:
        built.pages = dict(g.mem)
        built.regs = regs
        built.checkpoints = k + 1
        built.emulator_context = emu[k] if guest == "hvm" and lw is not None else None
        built.xenstore = xs + [(b"checkpoint", str(k).encode())]
        built.shared_info = bytes([k]) * PAGE if guest == "pv" else None
        built.hvm_context = hvm_context(regs) if guest == "hvm" else None

    if not checkpoints:
        w.end()
        if envelope == "xenopsd":
            if guest == "hvm":
                xenopsd_frame(out, xenopsd.QEMU_TRAD, emu[0])
            xenopsd_frame(out, xenopsd.END_OF_IMAGE)
        if lw is not None:
            emulator(0)
            lw.end()
        commit(0)
        built.data = out.getvalue()
        return built
    for k in range(checkpoints):
        if k:
            g.pages(w, [3, 4, 60 + k, BANNER_PFN, 36 + (k % 2)], k + 1, batch=2)
            regs = g.state(w, k)
        w.checkpoint()
        if lw is not None:
            emulator(k)
            lw.checkpoint_end()
            if colo:
                lw.checkpoint_state(libxl.CHECKPOINT_NEW)
        commit(k)
    if cut is not None:
        saved = dict(g.mem)
        g.pages(w, [1, 2, 70, BANNER_PFN, 38], 77, batch=5)
        g.state(w, 77)
        g.mem = saved
        if cut == "end":
            w.end()
        data = out.getvalue()
        if cut == "inside":
            data = data[:len(data) - 5000]  # inside the HVM context or a vcpu record
        built.data = data
    else:
        built.data = out.getvalue()
    if end:
        built.data += struct.pack("<II", 0, 0)  # libxc END after the last checkpoint
    return built


# -- legacy images ------------------------------------------------------------------------


def legacy_image(**kw: object) -> Built:
    """``write_legacy`` with its Expected as the expected memory."""
    spec = LegacySpec(**kw)  # type: ignore[arg-type]
    out = io.BytesIO()
    exp = write_legacy(out, spec)
    regs: Dict[int, Tuple[int, int]] = {}
    for v, d in exp.vcpus.items():
        ctx = d["basic"]
        if exp.guest_width == 8:
            regs[v] = (struct.unpack_from("<Q", ctx, PV64_RIP)[0],
                       struct.unpack_from("<Q", ctx, PV64_RSP)[0])
        else:
            regs[v] = (struct.unpack_from("<I", ctx, PV32_EIP)[0],
                       struct.unpack_from("<I", ctx, PV32_ESP)[0])
    if exp.guest == "hvm":  # write_legacy's HVM context: hvm.sample_context(vcpus), reset state
        regs = {v: (0xFFF0, 0) for v in range(spec.vcpus)}
    return Built(out.getvalue(), dict(exp.pages), exp.guest, exp.guest_width, regs,
                 exp.shared_info, exp.hvm_context, exp.qemu,
                 checkpoints=exp.complete_checkpoints)


# -- reading the outputs back (pyelftools and os.pread only) --------------------------------


def runs(pfns: Sequence[int]) -> List[Tuple[int, int]]:
    out: List[Tuple[int, int]] = []
    for p in sorted(pfns):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def check_raw(path: Path, pages: Dict[int, bytes], *, sparse: bool = True) -> None:
    """Every expected page at pfn * 4096, zeros everywhere else, the size
    ending at the highest page; big holes left as holes."""
    size = (max(pages) + 1) * PAGE if pages else 0
    assert path.stat().st_size == size
    fd = os.open(path, os.O_RDONLY)
    try:
        for pfn in range(size // PAGE):
            got = os.pread(fd, PAGE, pfn * PAGE)
            assert got == pages.get(pfn, bytes(PAGE)), f"pfn {pfn:#x}"
        if sparse and hasattr(os, "SEEK_DATA"):
            for a, b in runs([p for p in range(size // PAGE) if p not in pages]):
                if b - a >= 8:  # a hole of a few pages: the filesystem keeps it a hole
                    try:
                        data = os.lseek(fd, a * PAGE, os.SEEK_DATA)
                    except OSError:
                        continue
                    assert data >= b * PAGE, f"data at {data:#x} inside the hole {a:#x}-{b:#x}"
    finally:
        os.close(fd)


def notes(e: ELFFile) -> List[Tuple[str, int, bytes]]:
    out = []
    for seg in e.iter_segments():
        if seg["p_type"] == "PT_NOTE":
            for n in seg.iter_notes():
                out.append((n["n_name"], n["n_type"], n["n_descdata"]))
    return out


def prstatus_regs(desc: bytes) -> Tuple[int, int, int]:
    """(pid, rip, rsp) of an x86-64 elf_prstatus (Linux's layout: pr_pid at
    32, pr_reg at 112; rip is register 16, rsp 19)."""
    assert len(desc) == 336
    pid = struct.unpack_from("<i", desc, 32)[0]
    regs = struct.unpack_from("<27Q", desc, 112)
    return pid, regs[16], regs[19]


def check_elf(path: Path, built: Built) -> None:
    pages = built.pages
    with open(path, "rb") as f:
        e = ELFFile(f)
        assert e["e_type"] == "ET_CORE" and e["e_machine"] == "EM_X86_64"
        assert e.elfclass == 64 and e.little_endian
        loads = [s for s in e.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert [(s["p_paddr"] // PAGE, (s["p_paddr"] + s["p_memsz"]) // PAGE)
                for s in loads] == runs(list(pages))
        fd = f.fileno()
        for s in loads:
            assert s["p_vaddr"] == s["p_paddr"] and s["p_filesz"] == s["p_memsz"]
            for i in range(s["p_filesz"] // PAGE):
                pfn = s["p_paddr"] // PAGE + i
                assert os.pread(fd, PAGE, s["p_offset"] + i * PAGE) == pages[pfn], hex(pfn)
        ns = notes(e)
        assert [n[:2] for n in ns] == [("CORE", "NT_PRSTATUS")] * len(built.regs)
        got = {}
        for _, _, desc in ns:
            pid, rip, rsp = prstatus_regs(desc)
            got[pid - 1] = (rip, rsp)
        assert got == built.regs


def check_xen_core(path: Path, built: Built) -> None:
    pages = built.pages
    pv = built.guest == "pv"
    order = sorted(pages)
    with open(path, "rb") as f:
        e = ELFFile(f)
        assert e["e_type"] == "ET_CORE" and e.num_segments() == 0
        assert e["e_machine"] == ("EM_386" if pv and built.width == 4 else "EM_X86_64")
        names = [s.name for s in e.iter_sections()]
        want = ["", ".shstrtab", ".note.Xen", ".xen_prstatus"]
        want += [".xen_shared_info"] if pv else []
        want += [".xen_pages", ".xen_p2m" if pv else ".xen_pfn"]
        assert names == want
        table = e.get_section_by_name(".xen_p2m" if pv else ".xen_pfn").data()
        if pv:
            assert list(struct.unpack(f"<{2 * len(order)}Q", table)) == [
                x for p in order for x in (p, p)]
        else:
            assert list(struct.unpack(f"<{len(order)}Q", table)) == order
        sec = e.get_section_by_name(".xen_pages")
        assert sec["sh_size"] == PAGE * len(order)
        fd = f.fileno()
        for j, pfn in enumerate(order):
            assert os.pread(fd, PAGE, sec["sh_offset"] + j * PAGE) == pages[pfn], hex(pfn)
        nts = list(e.get_section_by_name(".note.Xen").iter_notes())
        assert [(n["n_name"], n["n_type"]) for n in nts] == [
            ("Xen", 0x2000000), ("Xen", 0x2000001), ("Xen", 0x2000002), ("Xen", 0x2000003)]
        magic, nv, npages, psize = struct.unpack("<4Q", nts[1]["n_descdata"])
        assert (magic, nv, npages, psize) == (0xF00FEBED if pv else 0xF00FEBEE,
                                               len(built.regs), len(order), PAGE)
        assert len(nts[2]["n_descdata"]) == 1280
        assert struct.unpack("<Q", nts[3]["n_descdata"]) == (1,)
        prs = e.get_section_by_name(".xen_prstatus").data()
        assert len(prs) == 5168 * len(built.regs)
        for i, (_v, (rip, rsp)) in enumerate(sorted(built.regs.items())):
            ctx = prs[5168 * i:5168 * (i + 1)]
            if pv and built.width == 4:
                assert struct.unpack_from("<I", ctx, PV32_EIP)[0] == rip
                assert struct.unpack_from("<I", ctx, PV32_ESP)[0] == rsp
            else:
                assert struct.unpack_from("<Q", ctx, PV64_RIP)[0] == rip
                assert struct.unpack_from("<Q", ctx, PV64_RSP)[0] == rsp
        if pv:
            assert e.get_section_by_name(".xen_shared_info").data() == built.shared_info


# -- real tools --------------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of a real tool; skip when it is absent, unless CI is set (then fail)."""
    here = Path(sys.executable).parent / name
    scripts = Path(sysconfig.get_path("scripts")) / name
    for cand in (here, scripts):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed, and CI is set (.ci/run installs it)")
    pytest.skip(f"{name} is not installed")


def run_tool(argv: Sequence[str], timeout: int = 120) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=os.environ.get(
                           "HOME", "/tmp")))
    assert p.returncode == 0, (argv, p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout
