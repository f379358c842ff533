"""The chunks of a legacy stream's bodies (negative ids: vcpu info, HVM
parameters, TSC info, toolstack, compression, tmem, last checkpoint), decoded
as the legacy restorer read them.  :func:`read_chunk` returns the
:class:`~xenstream.formats.legacy.LChunk` and records, in the parser's
:class:`ChunkFacts`, what a chunk sets for the rest of the stream."""

from __future__ import annotations

import struct
from typing import List, Protocol

from xenstream.errors import TruncatedError
from xenstream.formats import legacy
from xenstream.formats.legacy import LAYER, LChunk
from xenstream.reading.legacy_input import LegacyInput, legacy_error


class ChunkFacts(Protocol):
    """What chunks set for the rest of the stream (the
    :class:`~xenstream.reading.legacy.LegacyParser` keeps them)."""

    vcpumap: List[int]  # the vcpus the tail carries (CHUNK_VCPU_INFO)
    last_checkpoint: bool  # CHUNK_LAST_CHECKPOINT seen
    compression_enabled: bool  # CHUNK_ENABLE_COMPRESSION seen


def read_chunk(inp: LegacyInput, facts: ChunkFacts, at: int, cid: int, number: int) -> LChunk:
    """The chunk at ``at``, whose id ``cid`` (negative) is read."""
    c = LChunk(at, cid, number)
    c._init_payload(inp.src, 0)
    what = c.what
    if cid == legacy.CHUNK_ENABLE_VERIFY_MODE:
        pass
    elif cid == legacy.CHUNK_VCPU_INFO:
        max_id = inp.i32(what)
        if not 0 <= max_id <= legacy.MAX_VCPU_ID:
            raise legacy_error(at, f"expected max_vcpu_id 0..{legacy.MAX_VCPU_ID}, found {max_id}",
                               what, "legacy-vcpu-info")
        words = struct.unpack(f"<{max_id // 64 + 1}Q",
                              inp.read(8 * (max_id // 64 + 1), what))
        c.value = max_id
        c.data = b"".join(struct.pack("<Q", w) for w in words)
        facts.vcpumap = [i for i in range(max_id + 1) if words[i // 64] >> (i % 64) & 1]
    elif cid in legacy.HVM_PARAM_CHUNKS:
        inp.read(4, what)
        c.value = inp.u64(what)
    elif cid == legacy.CHUNK_TSC_INFO:
        c.data = inp.read(20, what)
    elif cid == legacy.CHUNK_LAST_CHECKPOINT:
        facts.last_checkpoint = True
    elif cid == legacy.CHUNK_ENABLE_COMPRESSION:
        facts.compression_enabled = True
    elif cid == legacy.CHUNK_COMPRESSED_DATA:
        c.length = inp.ulong(what)
        rem = inp.src.remaining()
        if rem is not None and c.length > rem:
            raise TruncatedError(inp.pos, c.length, rem, what=what, layer=LAYER)
        c._init_payload(inp.src, c.length)
    elif cid == legacy.CHUNK_TOOLSTACK:
        length = inp.u32(what)
        c.length = length
        if length > legacy.TOOLSTACK_MAX:
            # more than anyone holds: the data stays in the input (data None)
            rem = inp.src.remaining()
            if rem is not None and length > rem:
                raise TruncatedError(inp.pos, length, rem, what=what, layer=LAYER)
            c._init_payload(inp.src, length)
        else:
            c.data = inp.read(length, what)
    elif cid == legacy.CHUNK_TMEM:
        c.value = _tmem(inp, what)
    elif cid == legacy.CHUNK_TMEM_EXTRA:
        c.value = _tmem_extra(inp, what)
    else:
        raise legacy_error(at, f"expected a page count 1..1024 or a chunk id -1..-20, found "
                           f"{cid} (\"Max batch size exceeded\")", "legacy chunk",
                           "legacy-chunk-id")
    return c


def _tmem(inp: LegacyInput, what: str) -> int:
    """Walk a TMEM chunk (xc_tmem.c); returns the number of pages it carries."""
    inp.read(12, what)  # version, max_pools, -1
    inp.read(16, what)  # client flags, weight, cap, -1
    pages = 0
    while True:
        pool_id = inp.u32(what)
        if pool_id == 0xFFFFFFFF:
            return pages
        flags = inp.u32(what)
        n_pages = inp.u32(what)
        inp.read(16, what)  # uuid
        psize = 1 << (((flags >> 4) & 0xF) + 12)
        if psize > legacy.TMEM_PAGE_MAX:
            raise legacy_error(inp.pos, f"expected a tmem page size of at most "
                               f"{legacy.TMEM_PAGE_MAX}, found {psize}", what, "legacy-tmem-page-size")
        for _ in range(n_pages):
            oid = inp.read(24, what)
            if oid == b"\xff" * 24:
                break
            inp.read(4, what)
            inp.skip(psize, what)
            pages += 1


def _tmem_extra(inp: LegacyInput, what: str) -> int:
    n = 0
    while inp.u32(what) != 0xFFFFFFFF:
        inp.read(28, what)  # oid[3], index
        n += 1
    return n
