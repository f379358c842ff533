"""Declarative fixed-size structures.

A :class:`Layout` names the fields of a C structure and their ``struct``
codes once; the same object unpacks and packs it in either byte order.  The
format modules declare their structures with it, apart from any logic.
"""

from __future__ import annotations

import struct
from typing import Dict, Sequence, Tuple, Union

Fields = Dict[str, int]


class Layout:
    """A packed structure: ``Layout("rh", [("type", "I"), ("length", "I")])``."""

    def __init__(self, name: str, fields: Sequence[Tuple[str, str]]) -> None:
        self.name = name
        self.names = tuple(n for n, _ in fields)
        fmt = "".join(f for _, f in fields)
        self._s = {"<": struct.Struct("<" + fmt), ">": struct.Struct(">" + fmt)}
        self.size = self._s["<"].size

    def unpack(self, data: bytes, endian: str = "<", offset: int = 0) -> Fields:
        return dict(zip(self.names, self._s[endian].unpack_from(data, offset)))

    def pack(self, endian: str = "<", **values: Union[int, bytes]) -> bytes:
        """``values`` by field name: ints, and bytes for ``s`` fields (NUL-padded)."""
        missing = [n for n in self.names if n not in values and not n.startswith("_")]
        if missing:
            raise TypeError(f"{self.name}: missing fields {', '.join(missing)}")
        extra = set(values) - set(self.names)
        if extra:
            raise TypeError(f"{self.name}: unknown fields {', '.join(sorted(extra))}")
        return self._s[endian].pack(*(values.get(n, 0) for n in self.names))

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, size={self.size})"


def pad8(n: int) -> int:
    """Bytes of padding that follow an ``n``-byte record body."""
    return (-n) & 7
