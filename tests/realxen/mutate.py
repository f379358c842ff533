"""Broken variants of real v2 images, for the negative restores.

Each function copies ``src`` to ``dst`` with one defect, located with
xenstream's pull parser, and returns a one-line description.  Runs in dom0
(imported by the job from the share) as well as on the host.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from xenstream.formats import libxc
from xenstream.io import Source
from xenstream.reading.parser import Header, Parser, Record

HVM_DESC = struct.Struct("<HHI")  # typecode, instance, length
HVM_LAPIC = 5
HVM_CPU = 2
#: vcpu_guest_context (64-bit): fpu_ctxt[512], flags u64, user_regs: 15 GPRs,
#: error_code/entry_vector, then rip
VCPU64_RIP = 512 + 8 + 15 * 8 + 8


@dataclass
class Rec:
    layer: str
    rtype: int
    offset: int
    length: int

    @property
    def body(self) -> int:
        return self.offset + 8


def records(path: str) -> Tuple[List[Rec], Dict[str, Header]]:
    recs: List[Rec] = []
    headers: Dict[str, Header] = {}
    with Source.open(path) as src:
        for item in Parser(src).items():
            if isinstance(item, Record):
                recs.append(Rec(item.layer, item.rtype, item.offset, item.length))
            elif isinstance(item, Header):
                headers[item.kind] = item
    return recs, headers


def _first(recs: List[Rec], rtype: int, layer: str = "libxc") -> Rec:
    for r in recs:
        if r.layer == layer and r.rtype == rtype:
            return r
    raise LookupError(f"no record {libxc.record_name(rtype)}")


def _patch(dst: str, offset: int, data: bytes) -> None:
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def truncated_page(src: str, dst: str) -> str:
    recs, _ = records(src)
    pages = [r for r in recs if r.layer == "libxc" and r.rtype == libxc.REC_TYPE_PAGE_DATA]
    r = pages[len(pages) // 2]
    cut = r.body + r.length // 2
    with open(src, "rb") as f, open(dst, "wb") as g:
        left = cut
        while left:
            buf = f.read(min(left, 1 << 20))
            if not buf:
                break
            g.write(buf)
            left -= len(buf)
    return f"cut at {cut:#x}, inside PAGE_DATA #{pages.index(r)} ({r.length} bytes at {r.offset:#x})"


def bad_tsc_length(src: str, dst: str) -> str:
    """X86_TSC_INFO length 24 -> 20: the padded size, so the framing, stays 24."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_X86_TSC_INFO)
    shutil.copyfile(src, dst)
    _patch(dst, r.offset + 4, struct.pack("<I", 20))
    return f"X86_TSC_INFO at {r.offset:#x}: length {r.length} -> 20"


def bad_page_type(src: str, dst: str) -> str:
    """The first pfn of the first PAGE_DATA gets type 0x5 (no such XEN_DOMCTL_PFINFO)."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_PAGE_DATA)
    shutil.copyfile(src, dst)
    entry = struct.unpack("<Q", _read(src, r.body + 8, 8))[0]
    new = (entry & ((1 << 60) - 1)) | (0x5 << 60)
    _patch(dst, r.body + 8, struct.pack("<Q", new))
    return f"PAGE_DATA at {r.offset:#x}: pfn entry {entry:#x} -> {new:#x}"


def vcpu_id_out_of_range(src: str, dst: str, vcpu: int = 5) -> str:
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_X86_PV_VCPU_BASIC)
    shutil.copyfile(src, dst)
    _patch(dst, r.body, struct.pack("<I", vcpu))
    return f"X86_PV_VCPU_BASIC at {r.offset:#x}: vcpu_id 0 -> {vcpu}"


def ext_vcpu_size(src: str, dst: str, size: int = 16) -> str:
    """The extended context's own size field below Xen's minimum of 32."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_X86_PV_VCPU_EXTENDED)
    shutil.copyfile(src, dst)
    old = struct.unpack("<I", _read(src, r.body + 12, 4))[0]
    _patch(dst, r.body + 12, struct.pack("<I", size))
    return f"X86_PV_VCPU_EXTENDED at {r.offset:#x}: embedded size {old} -> {size}"


def vcpu_rip(src: str, dst: str, rip: int = 0xDEAD0000) -> str:
    """vcpu0's saved RIP pointed at unmapped memory: well formed, wrong state."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_X86_PV_VCPU_BASIC)
    shutil.copyfile(src, dst)
    old = struct.unpack("<Q", _read(src, r.body + 8 + VCPU64_RIP, 8))[0]
    _patch(dst, r.body + 8 + VCPU64_RIP, struct.pack("<Q", rip))
    return f"X86_PV_VCPU_BASIC at {r.offset:#x}: rip {old:#x} -> {rip:#x}"


def _hvm_entries(path: str, r: Rec) -> List[Tuple[int, int, int, int]]:
    """(offset in file, typecode, instance, length) of every HVM save entry."""
    blob = _read(path, r.body, r.length)
    out = []
    pos = 0
    while pos + HVM_DESC.size <= len(blob):
        tc, inst, ln = HVM_DESC.unpack_from(blob, pos)
        out.append((r.body + pos, tc, inst, ln))
        if tc == 0:
            break
        pos += HVM_DESC.size + ln
    return out


def hvm_magic(src: str, dst: str) -> str:
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_HVM_CONTEXT)
    shutil.copyfile(src, dst)
    at = r.body + HVM_DESC.size
    magic = struct.unpack("<I", _read(src, at, 4))[0]
    _patch(dst, at, struct.pack("<I", magic ^ 0x1))
    return f"HVM_CONTEXT at {r.offset:#x}: save header magic {magic:#x} -> {magic ^ 1:#x}"


def hvm_cpu_instance(src: str, dst: str, vcpu: int = 3) -> str:
    """The CPU entry's instance (its vcpu id) beyond the domain's vcpus."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_HVM_CONTEXT)
    cpu = [e for e in _hvm_entries(src, r) if e[1] == HVM_CPU]
    shutil.copyfile(src, dst)
    _patch(dst, cpu[0][0] + 2, struct.pack("<H", vcpu))
    return f"HVM_CONTEXT at {r.offset:#x}: CPU entry instance {cpu[0][2]} -> {vcpu}"


def hvm_lapic_grown(src: str, dst: str, grow: int = 8) -> str:
    """The LAPIC entry lengthened by ``grow`` zero bytes (the layout Xen 4.21 and
    the 4.18.x/4.19.2/4.20.1 backports write, with ``pending_esr``)."""
    recs, _ = records(src)
    r = _first(recs, libxc.REC_TYPE_HVM_CONTEXT)
    ent = [e for e in _hvm_entries(src, r) if e[1] == HVM_LAPIC]
    if not ent:
        raise LookupError("no LAPIC entry")
    at, _tc, _inst, ln = ent[0]
    blob = bytearray(_read(src, r.body, r.length))
    rel = at - r.body
    struct.pack_into("<I", blob, rel + 4, ln + grow)
    blob[rel + HVM_DESC.size + ln:rel + HVM_DESC.size + ln] = bytes(grow)
    newlen = len(blob)
    pad_old = -r.length & 7
    pad_new = -newlen & 7
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(r.offset))
        g.write(struct.pack("<II", r.rtype, newlen))
        g.write(bytes(blob) + bytes(pad_new))
        f.seek(r.body + r.length + pad_old)
        shutil.copyfileobj(f, g, 1 << 20)
    return (f"HVM_CONTEXT at {r.offset:#x}: LAPIC entry {ln} -> {ln + grow} bytes "
            f"(record {r.length} -> {newlen})")


def xl_mandatory_flag(src: str, dst: str, bit: int = 2) -> str:
    """An xl header mandatory flag no xl knows (bit 2)."""
    _, headers = records(src)
    h = headers["xl header"]
    shutil.copyfile(src, dst)
    flags = h.fields["mandatory_flags"]
    _patch(dst, h.offset + 36, struct.pack("<I", flags | (1 << bit)))
    return f"xl header: mandatory_flags {flags:#x} -> {flags | (1 << bit):#x}"


def libxl_version(src: str, dst: str, version: int = 3) -> str:
    _, headers = records(src)
    h = headers["libxl header"]
    shutil.copyfile(src, dst)
    _patch(dst, h.offset + 8, struct.pack(">I", version))
    return f"libxl header at {h.offset:#x}: version {h.fields.get('version')} -> {version}"


#: name -> (source image kind, function, xenstream should call it invalid)
Mutation = Callable[[str, str], str]
NEGATIVES: Dict[str, Tuple[str, Mutation, bool]] = {
    "truncated-page-data": ("pv", truncated_page, True),
    "tsc-info-length": ("pv", bad_tsc_length, True),
    "page-type-5": ("pv", bad_page_type, True),
    "vcpu-basic-id": ("pv", vcpu_id_out_of_range, True),
    "vcpu-extended-size": ("pv", ext_vcpu_size, True),
    "hvm-header-magic": ("pvh", hvm_magic, True),
    "hvm-cpu-instance": ("pvh", hvm_cpu_instance, True),
    "xl-mandatory-flag": ("pv", xl_mandatory_flag, True),
    "libxl-version": ("pv", libxl_version, True),
    # probes: well-formed to xenstream's rules, expected to go wrong in Xen
    "vcpu-rip": ("pv", vcpu_rip, False),
    "hvm-lapic-grown": ("pvh", hvm_lapic_grown, False),
}


def make(name: str, src: str, dst: str) -> str:
    return NEGATIVES[name][1](src, dst)


def size(path: str) -> Optional[int]:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
