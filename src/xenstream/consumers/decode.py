"""Decoded fields of records and chunks, shared by ``info`` and ``dump``.

Each function takes the bytes the parser handed out (a record body, a legacy
chunk's payload, the first bytes of a device-model blob) and returns plain
values; the layouts and names are the formats' (:mod:`xenstream.formats`).
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xenstream.formats import hvm, legacy, libxc, libxl

_NATIVE = "<" if sys.byteorder == "little" else ">"
#: top byte of a v2 pfn entry -> its page type (bits 60-63)
_TYPE_OF_TOP = bytes(b >> 4 for b in range(256))
_LOW = bytes(b & 0x0F for b in range(256))
_NO_DATA = frozenset(libxc.NO_DATA_PAGE_TYPES)


def page_type_name(t: int) -> str:
    return libxc.PAGE_TYPE_NAMES.get(t, f"UNKNOWN({t:#x})")


class PageEntries:
    """One PAGE_DATA record's or legacy batch's pfn array, decoded in bulk:
    ``by_type`` (page type -> entries), ``pfns`` (every entry's pfn),
    ``data`` (the pfns that carry page data, in order), ``count``."""

    __slots__ = ("count", "by_type", "pfns", "data", "pfnless")

    def __init__(self, count: int, by_type: Dict[int, int], pfns: Sequence[int],
                 data: Sequence[int], pfnless: int = 0) -> None:
        self.count = count
        self.by_type = by_type
        self.pfns = pfns
        self.data = data
        #: legacy XTAB entries written without a pfn (0xF0000000)
        self.pfnless = pfnless

    @property
    def min_pfn(self) -> Optional[int]:
        return min(self.pfns) if self.pfns else None

    @property
    def max_pfn(self) -> Optional[int]:
        return max(self.pfns) if self.pfns else None


def v2_entries(raw: bytes, endian: str) -> PageEntries:
    """The u64 entries of a v2 PAGE_DATA record (type in bits 60-63, pfn in 0-51)."""
    n = len(raw) >> 3
    raw = raw[: n * 8]
    hi, nx = (7, 6) if endian == "<" else (0, 1)
    top = raw[hi::8]
    nxt = raw[nx::8]
    zeros = bytes(n)
    pfns = array("Q")
    if top == zeros:
        by_type = {libxc.PT_NOTAB: n} if n else {}
        types = b""
    else:
        types = top.translate(_TYPE_OF_TOP)
        by_type = {t: types.count(t) for t in sorted(set(types))}
    if top == zeros and nxt.translate(libxc.T_HIGH) == zeros:
        pfns.frombytes(raw)
    else:
        masked = bytearray(raw)
        masked[hi::8] = zeros
        masked[nx::8] = nxt.translate(_LOW)
        pfns.frombytes(bytes(masked))
    if endian != _NATIVE:
        pfns.byteswap()
    if not any(t in _NO_DATA for t in by_type):
        data: Sequence[int] = pfns
    else:
        data = array("Q", (p for p, t in zip(pfns, types) if t not in _NO_DATA))
    return PageEntries(n, by_type, pfns, data)


def legacy_entries(entries: Sequence[int]) -> PageEntries:
    """The pfn_type words of a legacy batch (type in bits 28-31, pfn in 0-27).
    XTAB entries written without a pfn count in ``pfnless``, not in ``pfns``.
    (In a compressed Remus checkpoint the same pfns carry data: it comes in
    COMPRESSED_DATA chunks.)"""
    n = len(entries)
    if not n or max(entries) <= legacy.PFINFO_PFN_MASK:
        return PageEntries(n, {0: n} if n else {}, entries, entries)
    by_type: Dict[int, int] = {}
    pfns: List[int] = []
    data: List[int] = []
    pfnless = 0
    for e in entries:
        t = (e & legacy.PFINFO_TYPE_MASK) >> legacy.PFINFO_TYPE_SHIFT
        by_type[t] = by_type.get(t, 0) + 1
        if e == legacy.XTAB_NO_PFN:
            pfnless += 1
            continue
        p = e & legacy.PFINFO_PFN_MASK
        pfns.append(p)
        if t not in legacy.NO_DATA_TYPES:
            data.append(p)
    return PageEntries(n, dict(sorted(by_type.items())), pfns, data, pfnless)


def pfn_ranges(pfns: Sequence[int], limit: int = 8) -> str:
    """``0x0-0x3ff,0x500`` (runs of consecutive pfns), at most ``limit`` runs."""
    runs: List[str] = []
    i, n = 0, len(pfns)
    while i < n and len(runs) < limit:
        j = i
        while j + 1 < n and pfns[j + 1] == pfns[j] + 1:
            j += 1
        runs.append(f"{pfns[i]:#x}" if i == j else f"{pfns[i]:#x}-{pfns[j]:#x}")
        i = j + 1
    return ",".join(runs) + (",..." if i < n else "")


# -- x86 platform records ------------------------------------------------------------


def tsc(body: bytes, endian: str = "<") -> Optional[Dict[str, Any]]:
    """X86_TSC_INFO: mode (and its name), khz, nsec, incarnation."""
    if len(body) < libxc.X86_TSC_INFO.size:
        return None
    f = libxc.X86_TSC_INFO.unpack(body, endian)
    return {"mode": f["mode"], "mode_name": libxc.TSC_MODE_NAMES.get(f["mode"], "unknown"),
            "khz": f["khz"], "nsec": f["nsec"], "incarnation": f["incarnation"]}


def legacy_tsc(data: Optional[bytes]) -> Optional[Dict[str, Any]]:
    """The legacy TSC_INFO chunk's 20 bytes, as :func:`tsc` returns them."""
    if data is None or len(data) < legacy.TSC_INFO.size:
        return None
    f = legacy.TSC_INFO.unpack(data)
    return {"mode": f["mode"], "mode_name": libxc.TSC_MODE_NAMES.get(f["mode"], "unknown"),
            "khz": f["khz"], "nsec": f["nsec"], "incarnation": f["incarnation"]}


def hvm_params(body: bytes, endian: str = "<") -> List[Tuple[int, int]]:
    """HVM_PARAMS: (index, value) of each entry the body holds."""
    if len(body) < 8:
        return []
    count = libxc.HVM_PARAMS_HDR.unpack(body, endian)["count"]
    n = min(count, (len(body) - 8) // 16)
    out = []
    for i in range(n):
        e = libxc.HVM_PARAMS_ENTRY.unpack(body, endian, 8 + 16 * i)
        out.append((e["index"], e["value"]))
    return out


def policy_count(rtype: int, length: int) -> int:
    """CPUID leaves or MSR entries in an X86_CPUID_POLICY / X86_MSR_POLICY body."""
    unit = libxc.CPUID_LEAF.size if rtype == libxc.REC_TYPE_X86_CPUID_POLICY else \
        libxc.MSR_ENTRY.size
    return length // unit


def vcpu_id(body: bytes, endian: str = "<") -> Optional[int]:
    """The vcpu_id of an X86_PV_VCPU_* record."""
    if len(body) < 8:
        return None
    return int(libxc.X86_PV_VCPU_HDR.unpack(body, endian)["vcpu_id"])


def pv_info(body: bytes, endian: str = "<") -> Optional[Tuple[int, int]]:
    """X86_PV_INFO: (guest width in bytes, page-table levels)."""
    if len(body) < 8:
        return None
    f = libxc.X86_PV_INFO.unpack(body, endian)
    return f["guest_width"], f["pt_levels"]


def p2m_frames(body: bytes, endian: str = "<") -> Optional[Tuple[int, int, int]]:
    """X86_PV_P2M_FRAMES: (start_pfn, end_pfn, number of frames)."""
    if len(body) < 8:
        return None
    f = libxc.X86_PV_P2M_FRAMES_HDR.unpack(body, endian)
    return f["start_pfn"], f["end_pfn"], (len(body) - 8) // 8


# -- HVM context -------------------------------------------------------------------


def hvm_entries(blob: bytes) -> List[Tuple[int, str, int, int]]:
    """(typecode, name, instance, length) of every entry before END."""
    return [(e.typecode, e.name, e.instance, e.length) for e in hvm.iter_entries(blob)]


def hvm_header(blob: bytes) -> Optional[Dict[str, int]]:
    """The HEADER entry's fields (magic, version, changeset, cpuid, gtsc_khz)."""
    for e in hvm.iter_entries(blob):
        if e.typecode == hvm.HEADER_CODE and e.length >= hvm.HEADER.size:
            return hvm.HEADER.unpack(blob, offset=e.body_offset)
        break
    return None


def cpu_mode(blob: bytes, vcpu: int = 0) -> Optional[Tuple[int, int, str]]:
    """(width in bits, page-table levels, description) of a vcpu, from its
    CPU record's cr0, cr4 and EFER as the guest left them; None without one."""
    for e in hvm.iter_entries(blob):
        if e.typecode == hvm.CPU and e.instance == vcpu:
            regs = hvm.decode_cpu(e.body(blob))
            break
    else:
        return None
    cr0, cr4, efer = regs["cr0"], regs["cr4"], regs["msr_efer"]
    if not cr0 & hvm.X86_CR0_PE:
        return 16, 0, "real mode"
    if efer & hvm.EFER_LMA:
        levels = 5 if cr4 & (1 << 12) else 4  # CR4.LA57
        return 64, levels, f"long mode, {levels}-level paging"
    if not cr0 & hvm.X86_CR0_PG:
        return 32, 0, "protected mode, paging off"
    if cr4 & (1 << 5):  # CR4.PAE
        return 32, 3, "protected mode, PAE paging"
    return 32, 2, "protected mode, 2-level paging"


# -- device model and xenstore -------------------------------------------------------


def qemu_blob(head: bytes) -> Dict[str, Any]:
    """The first bytes of a device-model blob: ``signature`` (its first 4
    bytes, as text), ``qevm_version`` (the QEMU file format version after
    ``QEVM``, big-endian; None when the blob is not a QEMU save file)."""
    sig = head[:4]
    version: Optional[int] = None
    if sig == libxl.QEVM_MAGIC and len(head) >= 8:
        version = struct.unpack_from(">I", head, 4)[0]
    return {"signature": sig.decode("latin-1"), "qevm_version": version}


def emulator_name(emulator_id: int) -> str:
    return {libxl.EMULATOR_QEMU_TRADITIONAL: "qemu-traditional",
            libxl.EMULATOR_QEMU_UPSTREAM: "qemu-upstream"}.get(emulator_id, "unknown")


def xenstore_pairs(data: bytes) -> List[Tuple[str, Optional[str]]]:
    """``key\\0value\\0`` pairs (a key without value: value None)."""
    out: List[Tuple[str, Optional[str]]] = []
    for _off, key, value, _err in libxl.iter_xenstore_data([data]):
        out.append((key.decode("utf-8", "replace"),
                    value.decode("utf-8", "replace") if value is not None else None))
    return out


# -- embedded configurations ---------------------------------------------------------

_XL_CFG_NAME = re.compile(rb"""^\s*name\s*=\s*["']([^"']*)["']""", re.M)
_XL_CFG_MEMORY = re.compile(rb"^\s*memory\s*=\s*(\d+)", re.M)
_XL_CFG_MAXMEM = re.compile(rb"^\s*maxmem\s*=\s*(\d+)", re.M)
_XL_CFG_VCPUS = re.compile(rb"^\s*(?:maxvcpus|vcpus)\s*=\s*(\d+)", re.M)
_XL_CFG_DM = re.compile(rb"""^\s*device_model_version\s*=\s*["']([^"']*)["']""", re.M)
_UNITS_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
              "m": 1024, "mib": 1024, "mb": 1000 * 1000 / 1024, "g": 1 << 20, "gib": 1 << 20,
              "gb": 10 ** 9 / 1024, "t": 1 << 30, "tib": 1 << 30}


def config_facts(kind: str, data: bytes) -> Dict[str, Any]:
    """What an embedded configuration says about the guest: ``name``,
    ``memory_kib`` (the target), ``max_memory_kib``, ``vcpus`` (the
    maximum) and ``device_model`` (qemu-upstream / qemu-traditional), each
    None when it does not say."""
    out: Dict[str, Any] = {"name": None, "memory_kib": None, "max_memory_kib": None,
                           "vcpus": None, "device_model": None}
    try:
        if kind == "xl-json":
            _xl_json(out, data)
        elif kind == "xl-cfg":
            _xl_cfg(out, data)
        elif kind == "libvirt-xml":
            _libvirt(out, data)
        elif kind in {"xend-sxp", "xenopsd-sexp"}:
            _sxp(out, kind, data)
    except Exception:  # noqa: BLE001 - an unreadable config says nothing more
        pass
    return out


def _int(v: Any) -> Optional[int]:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def _xl_json(out: Dict[str, Any], data: bytes) -> None:
    import json

    doc = json.loads(data.rstrip(b"\0").decode("utf-8"))
    if not isinstance(doc, dict):
        return
    c = doc.get("c_info")
    b = doc.get("b_info")
    c_info: Dict[str, Any] = c if isinstance(c, dict) else {}
    b_info: Dict[str, Any] = b if isinstance(b, dict) else {}
    name = c_info.get("name")
    out["name"] = name if isinstance(name, str) else None
    out["memory_kib"] = _int(b_info.get("target_memkb"))
    out["max_memory_kib"] = _int(b_info.get("max_memkb"))
    out["vcpus"] = _int(b_info.get("max_vcpus"))
    dm = b_info.get("device_model_version")
    if isinstance(dm, str):
        out["device_model"] = {"qemu_xen": "qemu-upstream",
                               "qemu_xen_traditional": "qemu-traditional"}.get(dm.lower(), dm)


def _xl_cfg(out: Dict[str, Any], data: bytes) -> None:
    m = _XL_CFG_NAME.search(data)
    out["name"] = m.group(1).decode("utf-8", "replace") if m else None
    m = _XL_CFG_MEMORY.search(data)
    out["memory_kib"] = int(m.group(1)) * 1024 if m else None  # xl's memory= is MiB
    m = _XL_CFG_MAXMEM.search(data)
    out["max_memory_kib"] = int(m.group(1)) * 1024 if m else out["memory_kib"]
    m = _XL_CFG_VCPUS.search(data)
    out["vcpus"] = int(m.group(1)) if m else None
    m = _XL_CFG_DM.search(data)
    if m:
        dm = m.group(1).decode("latin-1").lower()
        out["device_model"] = {"qemu-xen": "qemu-upstream",
                               "qemu-xen-traditional": "qemu-traditional"}.get(dm, dm)


def _libvirt(out: Dict[str, Any], data: bytes) -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(data.split(b"\0", 1)[0])
    name = root.find("name")
    out["name"] = (name.text or "").strip() if name is not None else None

    def kib(tag: str) -> Optional[int]:
        node = root.find(tag)
        if node is None or not (node.text or "").strip().isdigit():
            return None
        unit = (node.get("unit") or "KiB").lower()
        return int(int(node.text.strip()) * _UNITS_KIB.get(unit, 1))  # type: ignore[union-attr]

    cur = kib("currentMemory")
    mem = kib("memory")
    out["memory_kib"] = cur if cur is not None else mem
    out["max_memory_kib"] = mem
    vcpu = root.find("vcpu")
    if vcpu is not None and (vcpu.text or "").strip().isdigit():
        out["vcpus"] = int((vcpu.text or "").strip())
    emu = root.find("devices/emulator")
    if emu is not None and emu.text:
        out["device_model"] = ("qemu-traditional" if "qemu-dm" in emu.text
                               else "qemu-upstream" if "qemu" in emu.text else None)


def _sxp(out: Dict[str, Any], kind: str, data: bytes) -> None:
    from xenstream.formats.sexp import parse_sxp
    from xenstream.formats.xend import child

    sx = parse_sxp(data.decode("utf-8", "replace").rstrip("\0"))
    if kind == "xenopsd-sexp":
        # (... (vm_str "<an S-expression of the VM>") ...)
        vm = child(["x", *sx], "vm_str") if isinstance(sx, list) else None
        if vm is None or len(vm) < 2 or not isinstance(vm[1], str):
            return
        sx = parse_sxp(vm[1])
        if isinstance(sx, list):
            sx = ["vm", *sx]
    for key, field, scale in (("name", "name", 0), ("memory_kib", "memory", 1024),
                              ("max_memory_kib", "maxmem", 1024), ("vcpus", "vcpus", 1)):
        c = child(sx, field)
        if c is None or len(c) < 2 or not isinstance(c[1], str):
            continue
        n = _int(c[1])
        out[key] = c[1] if not scale else (n * scale if n is not None else None)
    if out["max_memory_kib"] is None:
        out["max_memory_kib"] = out["memory_kib"]
    img = child(sx, "image")
    if img is not None and len(img) > 1 and isinstance(img[1], list):
        dm = child(img[1], "device_model")
        if dm is not None and len(dm) > 1 and isinstance(dm[1], str):
            out["device_model"] = "qemu-traditional" if "qemu-dm" in dm[1] else "qemu-upstream"


__all__ = ["PageEntries", "config_facts", "cpu_mode", "emulator_name", "hvm_entries",
           "hvm_header", "hvm_params", "legacy_entries", "legacy_tsc", "p2m_frames",
           "page_type_name", "pfn_ranges", "policy_count", "pv_info", "qemu_blob", "tsc",
           "v2_entries", "vcpu_id", "xenstore_pairs"]
