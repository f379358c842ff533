"""Reading a legacy stream's fields: :class:`LegacyInput` reads from the
source with the bytes detection already consumed (the prefix) in front, in
the saving toolstack's word size; :func:`legacy_error` makes the format error
every legacy reader raises.  Used by :mod:`xenstream.reading.legacy` and its
chunk and tail readers."""

from __future__ import annotations

import struct
from typing import Optional, Tuple

from xenstream.errors import FormatError
from xenstream.formats.legacy import LAYER
from xenstream.io import Source


def legacy_error(offset: int, message: str, what: str, rule: str) -> FormatError:
    return FormatError(offset, message, what=what, layer=LAYER, rule=rule)


class LegacyInput:
    """The source of a legacy stream starting at ``src.pos - len(prefix)``;
    ``prefix`` holds bytes already consumed by detection.  ``width``: the
    saving toolstack's unsigned long in bytes (set from the header)."""

    __slots__ = ("src", "pre", "width")

    def __init__(self, src: Source, prefix: bytes = b"") -> None:
        self.src = src
        self.pre = prefix
        self.width = 8

    @property
    def pos(self) -> int:
        return self.src.pos - len(self.pre)

    def read(self, n: int, what: str) -> bytes:
        if self.pre:
            return self._with_prefix(n, what)
        return self.src.read(n, what=what, layer=LAYER)

    def read_upto(self, n: int) -> bytes:
        if self.pre:
            return self._with_prefix(n, None)
        return self.src.read_upto(n)

    def _with_prefix(self, n: int, what: Optional[str]) -> bytes:
        """``n`` bytes, the prefix's first; with ``what`` None, fewer at the
        end of the input (``read_upto``)."""
        take = self.pre[:n]
        self.pre = self.pre[n:]
        if len(take) == n:
            return take
        n -= len(take)
        return take + (self.src.read_upto(n) if what is None
                       else self.src.read(n, what=what, layer=LAYER))

    def skip(self, n: int, what: str) -> None:
        if self.pre:
            take = min(n, len(self.pre))
            self.pre = self.pre[take:]
            n -= take
        if n:
            self.src.skip(n, what=what, layer=LAYER)

    def ulong(self, what: str) -> int:
        return int.from_bytes(self.read(self.width, what), "little")

    def ulongs(self, n: int, what: str) -> Tuple[int, ...]:
        w = self.width
        return struct.unpack(f"<{n}{'Q' if w == 8 else 'I'}", self.read(n * w, what))

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def i32(self, what: str) -> int:
        return int(struct.unpack("<i", self.read(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.read(8, what))[0])
