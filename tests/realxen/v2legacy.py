"""Rewrite a real v2 xl save of a PV guest as the legacy image a Xen 4.5 xl
(64-bit toolstack) would have written for the same guest state.

Test code: it reads with xenstream's pull parser and writes with
:class:`xenstream.writers.legacy.LegacyWriter`.  It also runs inside dom0
(the job imports it from the share), so it needs only the standard library
and xenstream.

What a Xen 4.5 ``xl save`` wrote (xen-formats.md sections 3.1, 4.1-4.3, 4.8,
4.10): the xl header with the JSON flag only (no STREAMv2) and the same
config; then the legacy libxc stream: p2m_size; extended info ("vcpu" with
vcpu0's context, "extv", and "xcnt" if the vcpus carry xsave state); the P2M
frame list; TSC_INFO before the first batch (non-live save); one page batch
per PAGE_DATA record (XTAB entries pfn-less, their pfns in the tail's
unmapped list); VCPU_INFO; libxl's toolstack record (version 1, no physmap
entries for PV); LAST_CHECKPOINT; 0; the PV tail (unmapped pfns, per online
vcpu the context and the 128-byte extended context whose own size is 4.5's
56 bytes, then the shared info page).  Records a 4.5 saver had no way to
write (CPUID/MSR policies) are dropped and named in the result; a v2 stream
with PV MSRs is refused, as the 4.5 saver refused such guests.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, List, Optional, Tuple

from xenstream.formats import legacy as legacy_formats
from xenstream.formats import libxc
from xenstream.io import Source
from xenstream.reading.parser import Header, Parser, Record, XlConfig
from xenstream.writers.legacy import (
    EXT_VCPU_CONTEXT_SIZE,
    EXT_VCPUCONTEXT_STRUCT_SIZE,
    LegacyWriter,
    physmap_toolstack,
)
from xenstream.writers.v2 import xl_header

PAGE = 4096
PFN_MASK_V2 = (1 << 52) - 1


class CannotExpress(ValueError):
    """The v2 image holds state a legacy stream cannot carry."""


@dataclass
class V2Image:
    config: Optional[bytes] = None
    json_flag: bool = False
    dhdr: Dict[str, int] = field(default_factory=dict)
    guest_width: int = 0
    p2m: Optional[Tuple[int, int, List[int]]] = None
    tsc: Optional[Tuple[int, int, int, int]] = None  # mode, khz, nsec, incarnation
    shared_info: Optional[bytes] = None
    vcpus: Dict[int, Dict[str, bytes]] = field(default_factory=dict)
    pages: List[Tuple[int, int]] = field(default_factory=list)  # (body offset, length)
    dropped: List[str] = field(default_factory=list)
    libxc_end: bool = False
    hvm_context: Optional[bytes] = None
    hvm_params: Dict[int, int] = field(default_factory=dict)
    max_pfn: int = -1


def read_v2(path: str) -> V2Image:
    img = V2Image()
    with Source.open(path) as src:
        for item in Parser(src).items():
            if isinstance(item, XlConfig):
                img.config = item.config
            elif isinstance(item, Header):
                if item.kind == "xl header":
                    img.json_flag = bool(item.fields.get("mandatory_flags", 0) & 1)
                elif item.kind == "libxc domain header":
                    img.dhdr = dict(item.fields)
            elif isinstance(item, Record) and item.layer == "libxc":
                _record(img, item)
    if img.dhdr.get("type") not in (1, 2):
        raise CannotExpress(f"not an x86 PV or HVM image (domain header {img.dhdr})")
    return img


def _record(img: V2Image, rec: Record) -> None:
    t = rec.rtype
    if t == libxc.REC_TYPE_PAGE_DATA:
        img.pages.append((rec.body_offset, rec.length))
        count = struct.unpack("<I", rec.read(8)[:4])[0]
        pfns = struct.unpack(f"<{count}Q", rec.read(8 * count))
        img.max_pfn = max(img.max_pfn, max(e & PFN_MASK_V2 for e in pfns))
        return
    body = rec.body(limit=64 << 20)
    if t == libxc.REC_TYPE_X86_PV_INFO:
        img.guest_width = body[0]
    elif t == libxc.REC_TYPE_X86_PV_P2M_FRAMES:
        start, end = struct.unpack_from("<II", body)
        n = (len(body) - 8) // 8
        img.p2m = (start, end, list(struct.unpack_from(f"<{n}Q", body, 8)))
    elif t == libxc.REC_TYPE_X86_TSC_INFO:
        mode, khz, nsec, inc = struct.unpack_from("<IIQI", body)
        img.tsc = (mode, khz, nsec, inc)
    elif t == libxc.REC_TYPE_SHARED_INFO:
        img.shared_info = body
    elif t in (libxc.REC_TYPE_X86_PV_VCPU_BASIC, libxc.REC_TYPE_X86_PV_VCPU_EXTENDED,
               libxc.REC_TYPE_X86_PV_VCPU_XSAVE, libxc.REC_TYPE_X86_PV_VCPU_MSRS):
        vid = struct.unpack_from("<I", body)[0]
        kind = {libxc.REC_TYPE_X86_PV_VCPU_BASIC: "basic",
                libxc.REC_TYPE_X86_PV_VCPU_EXTENDED: "extended",
                libxc.REC_TYPE_X86_PV_VCPU_XSAVE: "xsave",
                libxc.REC_TYPE_X86_PV_VCPU_MSRS: "msrs"}[t]
        if len(body) > 8:
            img.vcpus.setdefault(vid, {})[kind] = body[8:]
    elif t == libxc.REC_TYPE_HVM_CONTEXT:
        img.hvm_context = body
    elif t == libxc.REC_TYPE_HVM_PARAMS:
        count = struct.unpack_from("<I", body)[0]
        for i in range(count):
            idx, val = struct.unpack_from("<QQ", body, 8 + 16 * i)
            img.hvm_params[idx] = val
    elif t == libxc.REC_TYPE_END:
        img.libxc_end = True
    elif t in (libxc.REC_TYPE_STATIC_DATA_END,):
        pass
    else:
        img.dropped.append(rec.name)


def max_vcpus(config: Optional[bytes], online: List[int]) -> int:
    """b_info.max_vcpus from the libxl JSON config, else the highest online vcpu + 1."""
    if config:
        try:
            cfg = json.loads(config.rstrip(b"\0"))
            n = int(cfg["b_info"]["max_vcpus"])
            if n > 0:
                return n
        except (ValueError, KeyError, TypeError):
            pass
    return max(online) + 1


@dataclass
class Translation:
    online: List[int]
    max_vcpu_id: int
    p2m_size: int
    batches: int
    pages: int
    unmapped: List[int]
    dropped: List[str]
    legacy_offset: int  # where the legacy stream starts (after the xl header)


def write_legacy_xl(img: V2Image, src_path: str, out: BinaryIO, *, xl: bool = True) -> Translation:
    """Write the legacy xl file (or, ``xl=False``, the bare legacy stream)."""
    if img.guest_width not in (4, 8) or img.p2m is None or img.shared_info is None:
        raise CannotExpress("missing X86_PV_INFO, P2M_FRAMES or SHARED_INFO")
    if any("msrs" in v for v in img.vcpus.values()):
        raise CannotExpress("PV MSRs: the 4.5 saver refused such guests")
    online = sorted(v for v, recs in img.vcpus.items() if "basic" in recs)
    if 0 not in online:
        raise CannotExpress("no vcpu0 context")
    xsave = {len(img.vcpus[v].get("xsave", b"")) for v in online}
    if len(xsave) > 1:
        raise CannotExpress("vcpus with differing xsave sizes (not restorable by 4.5 either)")
    xlen = xsave.pop()
    start, end, frames = img.p2m
    if start != 0:
        raise CannotExpress(f"P2M_FRAMES from pfn {start:#x}")
    p2m_size = end + 1
    if p2m_size > 0x0FFFFFFF:
        raise CannotExpress("p2m_size beyond the legacy 28-bit pfn field")
    nvcpus = max_vcpus(img.config, online)

    if xl:
        xl_header(out, img.config, streamv2=False, json_flag=img.json_flag)
    legacy_offset = out.tell()
    w = LegacyWriter(out, width=8, guest="pv", guest_width=img.guest_width)
    w.header(p2m_size, extv=True, xcnt=(xlen + 16) if xlen else None,
             vcpu0=img.vcpus[0]["basic"], p2m_frames=frames)
    if img.tsc is not None:
        mode, khz, nsec, inc = img.tsc
        w.tsc_info(mode, nsec, khz, inc)
    unmapped: List[int] = []
    pages = batches = 0
    fd = os.open(src_path, os.O_RDONLY)
    try:
        for off, length in img.pages:
            body = os.pread(fd, length, off)
            if len(body) != length:
                raise CannotExpress(f"short PAGE_DATA at {off:#x}")
            count = struct.unpack_from("<I", body)[0]
            entries = struct.unpack_from(f"<{count}Q", body, 8)
            pfns: List[int] = []
            types: List[int] = []
            for e in entries:
                pfn, typ = e & PFN_MASK_V2, e >> 60
                if pfn > 0x0FFFFFFF:
                    raise CannotExpress(f"pfn {pfn:#x} beyond 28 bits")
                pfns.append(pfn)
                types.append(typ)
                if typ == libxc.PT_XTAB:
                    unmapped.append(pfn)
            data_off = 8 + 8 * count
            ndata = (length - data_off) // PAGE
            data = [body[data_off + i * PAGE:data_off + (i + 1) * PAGE] for i in range(ndata)]
            if all(t == libxc.PT_XTAB for t in types):
                continue  # the legacy saver never wrote a batch without a valid page
            w.batch(pfns, types, data)
            pages += ndata
            batches += 1
    finally:
        os.close(fd)
    w.vcpu_info(nvcpus - 1, online)
    w.toolstack(physmap_toolstack([], width=8))
    w.last_checkpoint()
    w.end_of_body()
    tail = []
    for v in online:
        recs = img.vcpus[v]
        ext = None
        if "extended" in recs:
            blob = bytearray(recs["extended"][:EXT_VCPU_CONTEXT_SIZE])
            blob += bytes(EXT_VCPU_CONTEXT_SIZE - len(blob))
            # a 4.5 hypervisor's struct: 56 bytes (vMCE without mcg_ext_ctl)
            struct.pack_into("<I", blob, 4, min(EXT_VCPUCONTEXT_STRUCT_SIZE,
                                                struct.unpack_from("<I", blob, 4)[0]))
            blob[EXT_VCPUCONTEXT_STRUCT_SIZE:] = bytes(EXT_VCPU_CONTEXT_SIZE
                                                       - EXT_VCPUCONTEXT_STRUCT_SIZE)
            ext = bytes(blob)
        tail.append((recs["basic"], ext, recs.get("xsave")))
    shinfo = bytearray(img.shared_info)
    w.pv_tail(sorted(set(unmapped)), tail, bytes(shinfo))
    return Translation(online, nvcpus - 1, p2m_size, batches, pages, sorted(set(unmapped)),
                       list(img.dropped), legacy_offset)


#: HVM_PARAM index -> the legacy chunk carrying it (xen-formats.md 4.2)
PARAM_CHUNKS = {param: chunk for chunk, param in legacy_formats.HVM_PARAM_CHUNKS.items()}
PARAM_CHUNKS[37] = -4  # VM86_TSS_SIZED: 4.5 sent the address as VM86_TSS
TAIL_PARAMS = (5, 6, 1)  # ioreq, bufioreq, store pfn: the HVM tail's magic pfns
#: set by libxl on every restore, never by the stream of a 4.5 saver
LIBXL_PARAMS = {2, 18}  # STORE_EVTCHN, CONSOLE_EVTCHN


def write_legacy_hvm(img: V2Image, src_path: str, out: BinaryIO, *, xl: bool = True
                     ) -> Translation:
    """The legacy HVM stream of a PVH guest, without a device-model record
    (a PVH guest has none; a 4.5 libxl never saved PVH as HVM, so this is the
    nearest legacy image, not one a 4.5 xl wrote)."""
    if img.hvm_context is None or img.max_pfn < 0:
        raise CannotExpress("missing HVM_CONTEXT or pages")
    dropped = list(img.dropped)
    chunks: Dict[int, int] = {}
    for idx, val in sorted(img.hvm_params.items()):
        if idx in TAIL_PARAMS or idx in LIBXL_PARAMS:
            continue
        if idx in PARAM_CHUNKS and val:
            chunks[PARAM_CHUNKS[idx]] = val & 0xFFFFFFFF if idx == 37 else val
        elif val:
            dropped.append(f"HVM_PARAM {idx}={val:#x}")
    nvcpus = max_vcpus(img.config, [0])
    p2m_size = img.max_pfn + 1
    if xl:
        xl_header(out, img.config, streamv2=False, json_flag=img.json_flag)
    legacy_offset = out.tell()
    w = LegacyWriter(out, width=8, guest="hvm")
    w.header(p2m_size)
    if img.tsc is not None:
        mode, khz, nsec, inc = img.tsc
        w.tsc_info(mode, nsec, khz, inc)
    pages = batches = 0
    fd = os.open(src_path, os.O_RDONLY)
    try:
        for off, length in img.pages:
            body = os.pread(fd, length, off)
            count = struct.unpack_from("<I", body)[0]
            entries = struct.unpack_from(f"<{count}Q", body, 8)
            pfns = [e & PFN_MASK_V2 for e in entries]
            types = [e >> 60 for e in entries]
            data_off = 8 + 8 * count
            ndata = (length - data_off) // PAGE
            if all(t == libxc.PT_XTAB for t in types):
                continue
            w.batch(pfns, types, [body[data_off + i * PAGE:data_off + (i + 1) * PAGE]
                                  for i in range(ndata)])
            pages += ndata
            batches += 1
    finally:
        os.close(fd)
    w.vcpu_info(nvcpus - 1, list(range(nvcpus)))
    from xenstream.writers.legacy import HVM_PARAM_CHUNK_ORDER

    for cid in HVM_PARAM_CHUNK_ORDER:
        if cid in chunks:
            w.hvm_param(cid, chunks[cid])
    w.toolstack(physmap_toolstack([], width=8))
    w.last_checkpoint()
    w.end_of_body()
    w.hvm_tail(tuple(img.hvm_params.get(i, 0) for i in TAIL_PARAMS),  # type: ignore[arg-type]
               img.hvm_context)
    return Translation(list(range(nvcpus)), nvcpus - 1, p2m_size, batches, pages, [],
                       dropped, legacy_offset)


def translate(src_path: str, dst_path: str, *, xl: bool = True) -> Translation:
    img = read_v2(src_path)
    with open(dst_path, "wb") as out:
        if img.dhdr.get("type") == 2:
            return write_legacy_hvm(img, src_path, out, xl=xl)
        return write_legacy_xl(img, src_path, out, xl=xl)


if __name__ == "__main__":  # pragma: no cover - a manual aid
    import sys

    print(translate(sys.argv[1], sys.argv[2]))
