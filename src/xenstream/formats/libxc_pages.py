"""libxc PAGE_DATA records: their layout, the page types of their pfn array,
and the bulk scan of that array.

:class:`PfnScan` computes what the rules need about a whole pfn array with
C-level bulk operations; the ``T_*`` translation tables let the pull parser
(:mod:`xenstream.reading.parser`) do the same for runs of PAGE_DATA records.
"""

from __future__ import annotations

import array
import struct
import sys
from typing import Tuple

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
