"""libxc PAGE_DATA records: their layout, the page types of their pfn array,
the bulk scan of that array, and their rules (:class:`PageDataRecords`).

:class:`PfnScan` computes what the rules need about a whole pfn array with
C-level bulk operations; the ``T_*`` translation tables let the pull parser
(:mod:`xenstream.reading.parser`) do the same for runs of PAGE_DATA records,
which it then hands to the verifier without calling the rules here.
"""

from __future__ import annotations

import array
import struct
import sys
from typing import Callable, Optional, Tuple

from xenstream.formats.libxc_state import GUEST_PV, RecordFamily
from xenstream.layout import Layout

PAGE_DATA_HDR = Layout("PAGE_DATA header", [("count", "I"), ("_res1", "I")])
PAGE_DATA_PFN_MASK = 0x000FFFFFFFFFFFFF
PAGE_DATA_PFN_RESZ_MASK = 0x0FF0000000000000
PAGE_DATA_TYPE_SHIFT = 60
PAGE_SIZE = 4096
PAGE_SHIFT = 12
MAX_BATCH_SIZE = 1024  # what the saver sends at most (xg_save_restore.h)

# XEN_DOMCTL_PFINFO_* >> 28
PT_NOTAB = 0x0
PT_L1TAB = 0x1
PT_L2TAB = 0x2
PT_L3TAB = 0x3
PT_L4TAB = 0x4
PT_LPINTAB = 0x8
PT_BROKEN = 0xD
PT_XALLOC = 0xE
PT_XTAB = 0xF
PAGE_TYPE_NAMES = {
    0x0: "NOTAB",
    0x1: "L1TAB",
    0x2: "L2TAB",
    0x3: "L3TAB",
    0x4: "L4TAB",
    0x9: "L1TAB|PIN",
    0xA: "L2TAB|PIN",
    0xB: "L3TAB|PIN",
    0xC: "L4TAB|PIN",
    0xD: "BROKEN",
    0xE: "XALLOC",
    0xF: "XTAB",
}
KNOWN_PAGE_TYPES = frozenset(PAGE_TYPE_NAMES)
NO_DATA_PAGE_TYPES = frozenset({PT_BROKEN, PT_XALLOC, PT_XTAB})

# bytes.translate() tables over the top bytes of pfn entries, for the bulk scans
T_BAD = _T_BAD = bytes(0 if (b >> 4) in KNOWN_PAGE_TYPES else 1 for b in range(256))
T_DATA = _T_DATA = bytes(1 if (b >> 4) in KNOWN_PAGE_TYPES and (b >> 4) not in NO_DATA_PAGE_TYPES
                else 0 for b in range(256))
T_LOW = _T_LOW = bytes(b & 0x0F for b in range(256))
T_HIGH = _T_HIGH = bytes(b & 0xF0 for b in range(256))
NATIVE = _NATIVE = "<" if sys.byteorder == "little" else ">"
_U32X2 = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}


class PfnScan:
    """Facts about one PAGE_DATA pfn array, computed with C-level bulk operations."""

    __slots__ = ("raw", "endian", "count", "n_data", "bad_types", "reserved", "pfns", "max_pfn")

    def __init__(self, raw: bytes, endian: str) -> None:
        self.raw = raw
        self.endian = endian
        count = self.count = len(raw) >> 3
        hi, nx = (7, 6) if endian == "<" else (0, 1)
        top = raw[hi::8]  # bits 56-63: type nibble and reserved bits 56-59
        nxt = raw[nx::8]  # bits 48-55: pfn bits 48-51 and reserved bits 52-55
        zeros = bytes(count)
        high_nxt = nxt.translate(_T_HIGH) != zeros
        pfns = array.array("Q")
        if top == zeros:  # all NOTAB, no reserved bits in the top byte: the common case
            self.n_data = count
            self.bad_types = 0
            if not high_nxt:
                pfns.frombytes(raw)
        else:
            self.n_data = top.translate(_T_DATA).count(1)
            self.bad_types = top.translate(_T_BAD).count(1)
            high_nxt = high_nxt or top.translate(_T_LOW) != zeros
        self.reserved = 0
        if high_nxt:
            self.reserved = sum(1 for e in self.entries() if e & PAGE_DATA_PFN_RESZ_MASK)
        if not pfns:
            masked = bytearray(raw)
            masked[hi::8] = zeros
            masked[nx::8] = nxt.translate(_T_LOW)
            pfns.frombytes(masked)
        if endian != _NATIVE:
            pfns.byteswap()
        self.pfns = pfns
        self.max_pfn = max(pfns) if count else 0

    def entries(self) -> Tuple[int, ...]:
        """The raw 64-bit entries (slow path, for error messages)."""
        return struct.unpack(f"{self.endian}{self.count}Q", self.raw)


def scan_pfns(raw: bytes, endian: str = "<") -> PfnScan:
    return PfnScan(raw, endian)


class PageDataRecords(RecordFamily):
    """The rules of PAGE_DATA, checked one record at a time: the hot path, up
    to some 60,000 records per GiB of guest memory in small records."""

    def rec_page_data(self, length: int, body: Optional[bytes],
                      read_prefix: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        if s.version == 2 or not s.static_data_end:
            self._infer_static_data_end()
        if s.guest == GUEST_PV and not s.seen_p2m:
            r("page-data-before-p2m",
              "expected X86_PV_P2M_FRAMES before the first PAGE_DATA of a PV stream, found none")
            s.seen_p2m = True  # report once
        if length < 8:
            r("page-data-length",
              f"expected a body of at least 8 bytes, found {length}")
            return
        count, res1 = _U32X2[s.endian].unpack(read_prefix(8))
        if res1:
            r("page-data-reserved",
              f"expected reserved field zero, found {res1:#x}")
        if count == 0:
            r("page-data-count", "expected at least 1 pfn, found count 0")
            return
        if length < 8 + 8 * count:
            r("page-data-length",
              f"expected at least {8 + 8 * count} bytes for {count} pfns, found {length}")
            return
        if count > MAX_BATCH_SIZE:
            r("page-data-batch",
              f"{count} pfns in one record; Xen's saver sends at most {MAX_BATCH_SIZE}")
        raw = read_prefix(8 * count)
        scan = scan_pfns(raw, s.endian)
        n_data = scan.n_data
        if scan.reserved:
            r("page-data-pfn-reserved",
              f"expected pfn bits 52-59 zero, found them set in {scan.reserved} "
              f"entr{'y' if scan.reserved == 1 else 'ies'}")
        if scan.bad_types:
            bad = [f"{e >> PAGE_DATA_TYPE_SHIFT:#x} (pfn {e & PAGE_DATA_PFN_MASK:#x})"
                   for e in scan.entries() if (e >> PAGE_DATA_TYPE_SHIFT) not in KNOWN_PAGE_TYPES]
            r("page-data-type",
              f"expected page types 0-4, 9-15, found {', '.join(bad[:4])}"
              + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""))
        if s.pfns_max is None or scan.max_pfn > s.pfns_max:
            s.pfns_max = scan.max_pfn
        if s.guest == GUEST_PV and s.max_pfn is not None and scan.max_pfn > s.max_pfn:
            beyond = [p for p in scan.pfns if p > s.max_pfn]
            r("page-data-pfn-range",
              f"expected pfns <= max_pfn {s.max_pfn:#x} (from X86_PV_P2M_FRAMES), found "
              f"{', '.join(hex(p) for p in beyond[:4])}"
              + (f" and {len(beyond) - 4} more" if len(beyond) > 4 else ""))
        if s.p2m_frame_pfns and not s.p2m_frame_pfns.isdisjoint(scan.pfns):
            for e in scan.entries():
                pfn = e & PAGE_DATA_PFN_MASK
                if pfn in s.p2m_frame_pfns:
                    s.p2m_frame_types[pfn] = e >> PAGE_DATA_TYPE_SHIFT
        if not scan.bad_types:
            want = 8 + 8 * count + PAGE_SIZE * n_data
            if length != want:
                r("page-data-length",
                  f"expected {want} bytes ({count} pfns, {n_data} with page data), found {length}")
        s.pages += n_data
        s.page_records += 1
