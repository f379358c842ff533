"""A set of guest pfns as a bitmap: one bit per pfn, never a Python object per pfn.

:class:`PfnMap` splits the pfn space into chunks of :data:`CHUNK` pfns, each a
4 KiB ``bytearray`` made on first use; a chunk whose every pfn is in the set
is replaced by one shared read-only object, so a fully populated guest costs a
dictionary entry per 128 MiB of its memory (a 1 TiB guest: 8192 entries), and
the worst case (every other pfn) one bit per pfn (32 MiB per TiB).  Ranges are
set and cleared with slice operations, runs are found with integer bit
operations: the Python work is per chunk and per run, not per pfn.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple, Union

CHUNK_SHIFT = 15
CHUNK = 1 << CHUNK_SHIFT  # pfns per chunk
CHUNK_BYTES = CHUNK // 8
_FULL = b"\xff" * CHUNK_BYTES
_EMPTY = bytes(CHUNK_BYTES)

Chunk = Union[bytes, bytearray]  # _FULL, or a partly filled bytearray


def _popcount(data: Chunk) -> int:
    return bin(int.from_bytes(data, "little")).count("1")


def _bit_runs(data: Chunk, base: int) -> Iterator[Tuple[int, int]]:
    """The runs ``(start, end)`` of set bits in one chunk, as pfns."""
    x = int.from_bytes(data, "little")
    while x:
        low = x & -x
        start = low.bit_length() - 1
        # the run ends at the first clear bit above start
        y = ~(x >> start)
        length = (y & -y).bit_length() - 1
        yield base + start, base + start + length
        x &= ~(((1 << length) - 1) << start)


def _set_bits(ba: bytearray, lo: int, hi: int, on: bool) -> None:
    """Set (or clear) bits ``lo <= i < hi`` of ``ba``."""
    if lo >= hi:
        return
    first, last = lo >> 3, (hi - 1) >> 3
    if first == last:
        mask = ((1 << (hi - lo)) - 1) << (lo & 7)
        ba[first] = ba[first] | mask if on else ba[first] & ~mask & 0xFF
        return
    head = (0xFF << (lo & 7)) & 0xFF
    tail = (1 << (((hi - 1) & 7) + 1)) - 1
    if on:
        ba[first] |= head
        ba[last] |= tail
        ba[first + 1:last] = b"\xff" * (last - first - 1)
    else:
        ba[first] &= ~head & 0xFF
        ba[last] &= ~tail & 0xFF
        ba[first + 1:last] = bytes(last - first - 1)


class PfnMap:
    """A set of pfns (0 <= pfn < 2**52)."""

    def __init__(self) -> None:
        self._chunks: Dict[int, Chunk] = {}

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def clear(self) -> None:
        self._chunks.clear()

    def _update(self, start: int, end: int, on: bool) -> None:
        chunks = self._chunks
        c = start >> CHUNK_SHIFT
        while start < end:
            base = c << CHUNK_SHIFT
            lo, hi = start - base, min(end - base, CHUNK)
            cur = chunks.get(c)
            if lo == 0 and hi == CHUNK:
                if on:
                    chunks[c] = _FULL
                else:
                    chunks.pop(c, None)
            elif not ((cur is _FULL and on) or (cur is None and not on)):
                ba = cur if isinstance(cur, bytearray) else bytearray(
                    cur if cur is not None else _EMPTY)
                _set_bits(ba, lo, hi, on)
                if ba == _FULL:
                    chunks[c] = _FULL
                elif ba == _EMPTY:
                    chunks.pop(c, None)
                else:
                    chunks[c] = ba
            start = base + hi
            c += 1

    def add(self, start: int, end: int) -> None:
        """Put pfns ``start <= pfn < end`` in the set."""
        self._update(start, end, True)

    def discard(self, start: int, end: int) -> None:
        """Take pfns ``start <= pfn < end`` out of the set."""
        self._update(start, end, False)

    def __contains__(self, pfn: int) -> bool:
        cur = self._chunks.get(pfn >> CHUNK_SHIFT)
        if cur is None:
            return False
        i = pfn & (CHUNK - 1)
        return bool(cur[i >> 3] >> (i & 7) & 1)

    def below_in_chunk(self, pfn: int) -> int:
        """How many pfns of ``pfn``'s chunk below ``pfn`` are in the set."""
        cur = self._chunks.get(pfn >> CHUNK_SHIFT)
        i = pfn & (CHUNK - 1)
        if cur is None:
            return 0
        if cur is _FULL:
            return i
        n = _popcount(cur[:i >> 3])
        return n + bin(cur[i >> 3] & ((1 << (i & 7)) - 1)).count("1") if i & 7 else n

    def segments(self, start: int, end: int) -> List[Tuple[int, int, bool]]:
        """``[start, end)`` cut into ``(start, end, in the set)`` pieces, in order."""
        out: List[Tuple[int, int, bool]] = []
        pos = start
        for s, e in self.runs_within(start, end):
            if s > pos:
                out.append((pos, s, False))
            out.append((s, e, True))
            pos = e
        if pos < end:
            out.append((pos, end, False))
        return out

    def runs_within(self, start: int, end: int) -> Iterator[Tuple[int, int]]:
        """The runs of the set clipped to ``[start, end)``, ascending."""
        pending: Optional[List[int]] = None
        for c in range(start >> CHUNK_SHIFT, ((end - 1) >> CHUNK_SHIFT) + 1):
            cur = self._chunks.get(c)
            if cur is None:
                continue
            base = c << CHUNK_SHIFT
            pieces = [(base, base + CHUNK)] if cur is _FULL else _bit_runs(cur, base)
            for s, e in pieces:
                s, e = max(s, start), min(e, end)
                if s >= e:
                    continue
                if pending is not None and pending[1] == s:
                    pending[1] = e
                    continue
                if pending is not None:
                    yield pending[0], pending[1]
                pending = [s, e]
        if pending is not None:
            yield pending[0], pending[1]

    def count(self) -> int:
        return sum(CHUNK if cur is _FULL else _popcount(cur) for cur in self._chunks.values())

    def highest(self) -> Optional[int]:
        """The highest pfn in the set, or None when it is empty."""
        if not self._chunks:
            return None
        c = max(self._chunks)
        x = int.from_bytes(self._chunks[c], "little")
        return (c << CHUNK_SHIFT) + x.bit_length() - 1

    def runs(self) -> Iterator[Tuple[int, int]]:
        """The maximal runs ``(start, end)`` of consecutive pfns, ascending."""
        pending: Optional[List[int]] = None
        for c in sorted(self._chunks):
            cur = self._chunks[c]
            base = c << CHUNK_SHIFT
            pieces = ([(base, base + CHUNK)] if cur is _FULL else _bit_runs(cur, base))
            for s, e in pieces:
                if pending is not None and pending[1] == s:
                    pending[1] = e
                    continue
                if pending is not None:
                    yield pending[0], pending[1]
                pending = [s, e]
        if pending is not None:
            yield pending[0], pending[1]
