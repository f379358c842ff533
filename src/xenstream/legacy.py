"""The legacy (Xen <= 4.5) libxc save format: recognition only, for now.

A legacy image has no header and no version: it starts with ``p2m_size`` as
the saving toolstack's ``unsigned long``; a PV image follows it with the
extended-info signature ``~0UL``, an HVM image with its first chunk (an
``int``: a page count 1..1024 or a chunk id -1..-20).  This module tells a
legacy image from garbage using the first 16 bytes (the v2 spec's "zero bits
in the first 8 octets" rule plus these shapes).
"""

from __future__ import annotations

import struct
from typing import Optional

P2M_SIZE_MAX = 0x10000000  # the legacy saver refuses p2m_size > 0x0FFFFFFF
MAX_BATCH_SIZE = 1024
CHUNK_MIN = -20


class LegacyGuess:
    __slots__ = ("width", "guest", "p2m_size", "extended_info")

    def __init__(self, width: int, guest: str, p2m_size: int, extended_info: bool) -> None:
        self.width = width  # saving toolstack's word size in bytes: 4 or 8
        self.guest = guest  # "pv" or "hvm"
        self.p2m_size = p2m_size
        self.extended_info = extended_info  # PV: ~0 signature present (False: pre-3.1)

    def __repr__(self) -> str:
        return (f"LegacyGuess(width={self.width}, guest={self.guest!r}, "
                f"p2m_size={self.p2m_size:#x}, extended_info={self.extended_info})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LegacyGuess) and (
            self.width, self.guest, self.p2m_size, self.extended_info) == (
            other.width, other.guest, other.p2m_size, other.extended_info)

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        g = self.guest.upper()
        return (f"legacy (Xen <= 4.5) {g} stream from a {self.width * 8}-bit toolstack, "
                f"p2m_size {self.p2m_size:#x}")


def _plausible_chunk(v: int) -> bool:
    return 1 <= v <= MAX_BATCH_SIZE or CHUNK_MIN <= v <= -1


def sniff(head: bytes) -> Optional[LegacyGuess]:
    """Guess the legacy dialect from the first 16 bytes (or fewer), or None."""
    if len(head) < 8:
        return None
    p32 = struct.unpack_from("<I", head, 0)[0]
    w1 = struct.unpack_from("<I", head, 4)[0]
    # 32-bit toolstack, PV: p2m_size u32, then 0xFFFFFFFF.
    if 0 < p32 <= P2M_SIZE_MAX and w1 == 0xFFFFFFFF:
        return LegacyGuess(4, "pv", p32, True)
    if len(head) >= 16:
        p64 = struct.unpack_from("<Q", head, 0)[0]
        n64 = struct.unpack_from("<Q", head, 8)[0]
        c64 = struct.unpack_from("<i", head, 8)[0]
        if 0 < p64 <= P2M_SIZE_MAX:
            if n64 == 0xFFFFFFFFFFFFFFFF:
                return LegacyGuess(8, "pv", p64, True)
            if _plausible_chunk(c64):
                return LegacyGuess(8, "hvm", p64, False)
    c32 = struct.unpack_from("<i", head, 4)[0]
    if 0 < p32 <= P2M_SIZE_MAX and _plausible_chunk(c32):
        return LegacyGuess(4, "hvm", p32, False)
    return None
