"""Fast, bounded-memory generator of legacy (Xen <= 4.5) benchmark images.

``write_legacy`` (xenstream.legacy_writer) builds per-pfn content and keeps the
receiver's view of every page in memory, which is right for tests and wrong
for 4 GiB.  This module drives the record-level :class:`LegacyWriter` itself:
every data page carries one shared 4 KiB pattern, a batch's data is written
with one ``write`` of a prebuilt buffer, and nothing but the current batch's
entry list is held in memory.  The images are otherwise what a 64-bit
toolstack's ``xc_domain_save`` (Xen 4.4/4.5) wrote:

* PV: p2m_size, extended info ("vcpu" + "extv"), the P2M frame list; TSC_INFO;
  the batches (pfns 1-4 as a pinned page-table tree, the rest normal pages);
  VCPU_INFO, LAST_CHECKPOINT, end of body; the PV tail (no unmapped pfns, per
  vcpu context + 128-byte extended context, shared info).
* HVM: p2m_size; TSC_INFO; the batches (one pfn-less XTAB entry where the
  saver found a hole); VCPU_INFO, the HVM param chunks, libxl's toolstack
  (physmap) chunk, LAST_CHECKPOINT, end of body; the HVM tail (magic pfns,
  HVM context); a ``DeviceModelRecord0002`` qemu record of ~1 MiB.

Batches are 1024 pages (MAX_BATCH_SIZE) or cycle through ``batch_sizes``.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

from xenstream.formats import hvm, libxc
from xenstream.writers.legacy import (
    DEFAULT_PHYSMAP,
    HVM_PARAM_CHUNK_ORDER,
    PFN_TYPE_SHIFT,
    XTAB_ENTRY,
    LegacyWriter,
    _default_hvm_params,
    default_p2m_frames,
    ext_vcpu_context,
    physmap_toolstack,
)
from xenstream.writers.v2 import page_content, pv_vcpu_context

PAGE = 4096
QEMU_SIZE = 1 << 20  # the qemu (DeviceModelRecord0002) blob


@dataclass(frozen=True)
class LegacyImageSpec:
    """One legacy benchmark image."""

    guest: str  # "pv" | "hvm"
    pages: int  # p2m_size; every pfn 0..pages-1 is sent once (HVM: one hole)
    batch: int = 1024
    batch_sizes: Optional[Tuple[int, ...]] = None  # cycle through these instead of ``batch``
    vcpus: int = 2
    qemu_size: int = QEMU_SIZE  # HVM only


#: the one page every data-bearing entry carries
PATTERN = page_content(0x12345)


def _batches(spec: LegacyImageSpec) -> Iterator[Tuple[int, int]]:
    """(first pfn, count) of each batch."""
    sizes: Sequence[int] = spec.batch_sizes or (spec.batch,)
    pfn = 0
    for n in itertools.cycle(sizes):
        if pfn >= spec.pages:
            return
        n = min(n, spec.pages - pfn)
        yield pfn, n
        pfn += n


def _pv_types(gw: int) -> dict:  # type: ignore[type-arg]
    # a pinned top-level table at pfn 1 and the levels below it (as write_legacy)
    if gw == 8:
        return {1: 0xC, 2: libxc.PT_L3TAB, 3: libxc.PT_L2TAB, 4: libxc.PT_L1TAB}
    return {1: 0xB, 2: libxc.PT_L2TAB, 3: libxc.PT_L1TAB}


def qemu_blob(size: int) -> bytes:
    """A qemu-xen save blob stand-in: the QEVM magic, then ``size`` bytes."""
    body = bytes((i * 7) & 0xFF for i in range(4096))
    return b"QEVM\0\0\0\3" + (body * (size // 4096 + 1))[:size]


def write_legacy_image(out: BinaryIO, spec: LegacyImageSpec) -> int:
    """Write the image; returns the number of data pages."""
    pv = spec.guest == "pv"
    w = LegacyWriter(out, width=8, guest=spec.guest, guest_width=8)
    if pv:
        w.header(spec.pages, ext_info=True, extv=True,
                 p2m_frames=default_p2m_frames(spec.pages, 8))
    else:
        w.header(spec.pages)
    w.tsc_info(0, 123_456_789_000, 2_400_000, 3)  # non-live save: TSC before the pages

    types = _pv_types(8) if pv else {}
    hole = None if pv else spec.pages // 2 + 1
    big = PATTERN * max(spec.batch_sizes or (spec.batch,))
    ul = struct.Struct("<i")
    n_data = 0
    for first, n in _batches(spec):
        pfns = range(first, first + n)
        if first <= 4 or (hole is not None and first <= hole < first + n):
            entries = [XTAB_ENTRY if p == hole else (types.get(p, 0) << PFN_TYPE_SHIFT) | p
                       for p in pfns]
            data_n = sum(1 for p in pfns if p != hole)
        else:
            entries = list(pfns)  # type 0 (NOTAB): the entry is the pfn
            data_n = n
        out.write(ul.pack(n))
        out.write(struct.pack(f"<{n}Q", *entries))
        out.write(big if data_n * PAGE == len(big) else PATTERN * data_n)
        n_data += data_n

    online = list(range(spec.vcpus))
    w.vcpu_info(spec.vcpus - 1, online)
    if not pv:
        params = _default_hvm_params()
        for cid in HVM_PARAM_CHUNK_ORDER:
            if params.get(cid):
                w.hvm_param(cid, params[cid])
        w.toolstack(physmap_toolstack(list(DEFAULT_PHYSMAP), width=8))
    w.last_checkpoint()
    w.end_of_body()
    if pv:
        vcpus: List[Tuple[bytes, Optional[bytes], Optional[bytes]]] = [
            (pv_vcpu_context(8, v, cr3_pfn=1, start_info_pfn=0), ext_vcpu_context(v), None)
            for v in online]
        shinfo = bytearray(PAGE)
        struct.pack_into("<IIIIQQ", shinfo, 3072, 0, 1_700_000_000, 0, 0, spec.pages - 1, 0)
        w.pv_tail([], vcpus, bytes(shinfo))
    else:
        magic = (spec.pages - 2, spec.pages - 3, spec.pages - 1)
        w.hvm_tail(magic, hvm.sample_context(spec.vcpus))
        w.qemu_record(qemu_blob(spec.qemu_size), kind="libxl")
    return n_data


def estimate_size(spec: LegacyImageSpec) -> int:
    sizes = spec.batch_sizes or (spec.batch,)
    records = spec.pages * len(sizes) // sum(sizes) + 1
    extra = spec.qemu_size if spec.guest == "hvm" else 0
    return spec.pages * (PAGE + 8) + records * 4 + extra + 256 * 1024
