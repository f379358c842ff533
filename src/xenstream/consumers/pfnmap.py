"""Which pfns a stream has sent, one bit per pfn.

:class:`PfnBitmap` keeps two bits per pfn (sent with data; sent more than
once) in fixed chunks of bytes, made when a pfn of theirs first arrives, so a
guest whose memory sits in a few places of a large address space costs only
those places.  A run of consecutive pfns (what savers send nearly always) is
marked with a few whole-chunk integer operations, not pfn by pfn.  No Python
object per pfn is ever made: a 1 TiB guest (268 M pfns) costs 64 MiB.

Memory is bounded by ``limit_bytes``: pfns in chunks beyond it are counted in
:attr:`PfnBitmap.untracked` and their repeats cannot be told.
"""

from __future__ import annotations

from array import array
from typing import Dict, Iterable, Optional, Sequence, Tuple

#: pfns per chunk: 4 GiB of guest memory, 128 KiB per bit plane
CHUNK_SHIFT = 20
CHUNK_PFNS = 1 << CHUNK_SHIFT
CHUNK_BYTES = CHUNK_PFNS // 8
#: both bit planes of every chunk together, at most (a 2 TiB guest's)
LIMIT_BYTES = 128 << 20


def _popcount(x: int) -> int:
    return bin(x).count("1")


class PfnBitmap:
    """The pfns sent with data so far; see the module's description."""

    def __init__(self, limit_bytes: int = LIMIT_BYTES) -> None:
        #: chunk number -> (sent, sent more than once), one bit per pfn each
        self._chunks: Dict[int, Tuple[bytearray, bytearray]] = {}
        self._max_chunks = max(1, limit_bytes // (2 * CHUNK_BYTES))
        #: distinct pfns sent with data
        self.distinct = 0
        #: copies of a pfn already sent (every copy after the first)
        self.repeats = 0
        #: distinct pfns sent more than once
        self.repeated = 0
        #: pfns not tracked (the memory limit was reached): their repeats are unknown
        self.untracked = 0

    def _chunk(self, n: int) -> Optional[Tuple[bytearray, bytearray]]:
        c = self._chunks.get(n)
        if c is None:
            if len(self._chunks) >= self._max_chunks:
                return None
            c = self._chunks[n] = (bytearray(CHUNK_BYTES), bytearray(CHUNK_BYTES))
        return c

    def add_range(self, first: int, count: int) -> None:
        """Mark pfns ``first`` .. ``first + count - 1``."""
        while count > 0:
            n, off = divmod(first, CHUNK_PFNS)
            k = min(count, CHUNK_PFNS - off)
            c = self._chunk(n)
            if c is None:
                self.untracked += k
            else:
                self._mark(c, off, k)
            first += k
            count -= k

    def _mark(self, c: Tuple[bytearray, bytearray], off: int, k: int) -> None:
        sent, twice = c
        lo, hi = off >> 3, (off + k - 1 >> 3) + 1
        shift = off & 7
        mask = ((1 << k) - 1) << shift
        old = int.from_bytes(sent[lo:hi], "little")
        dup = old & mask
        if dup:
            old2 = int.from_bytes(twice[lo:hi], "little")
            n_dup = _popcount(dup)
            self.repeats += n_dup
            self.repeated += _popcount(dup & ~old2)
            twice[lo:hi] = (old2 | dup).to_bytes(hi - lo, "little")
            self.distinct += k - n_dup
        else:
            self.distinct += k
        sent[lo:hi] = (old | mask).to_bytes(hi - lo, "little")

    def add(self, pfns: Sequence[int]) -> None:
        """Mark every pfn of ``pfns`` (a list of any order, repeats allowed)."""
        n = len(pfns)
        if not n:
            return
        first = pfns[0]
        if pfns[-1] - first == n - 1 and _consecutive(pfns, first):
            self.add_range(first, n)
            return
        self._add_each(pfns)

    def _add_each(self, pfns: Iterable[int]) -> None:
        chunks = self._chunks
        for p in pfns:
            cn = p >> CHUNK_SHIFT
            c = chunks.get(cn)
            if c is None:
                c = self._chunk(cn)
                if c is None:
                    self.untracked += 1
                    continue
            off = p & (CHUNK_PFNS - 1)
            i = off >> 3
            b = 1 << (off & 7)
            sent = c[0]
            v = sent[i]
            if v & b:
                self.repeats += 1
                twice = c[1]
                if not twice[i] & b:
                    twice[i] |= b
                    self.repeated += 1
            else:
                sent[i] = v | b
                self.distinct += 1

    def remove(self, pfns: Iterable[int]) -> None:
        """Forget ``pfns`` (the guest gave them back): no longer resident."""
        chunks = self._chunks
        for p in pfns:
            c = chunks.get(p >> CHUNK_SHIFT)
            if c is None:
                continue
            off = p & (CHUNK_PFNS - 1)
            i = off >> 3
            b = 1 << (off & 7)
            if c[0][i] & b:
                c[0][i] &= ~b & 0xFF
                self.distinct -= 1

    @property
    def nbytes(self) -> int:
        """Memory held by the bit planes."""
        return 2 * CHUNK_BYTES * len(self._chunks)


def _consecutive(pfns: Sequence[int], first: int) -> bool:
    """``pfns`` is exactly ``first, first + 1, ...`` (its ends are checked by the caller)."""
    n = len(pfns)
    if n <= 2:
        return True
    if isinstance(pfns, array):
        return pfns == array(pfns.typecode, range(first, first + n))
    if isinstance(pfns, tuple):
        return pfns == tuple(range(first, first + n))
    return list(pfns) == list(range(first, first + n))


__all__ = ["CHUNK_PFNS", "LIMIT_BYTES", "PfnBitmap"]
