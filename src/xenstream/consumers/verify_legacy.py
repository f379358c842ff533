"""The verifier's part for legacy (Xen <= 4.5) images.

The keys under which the verifier counts legacy items, and their names in the
summary's record counts.
"""

from __future__ import annotations

from typing import Any

from xenstream.formats.legacy import CHUNK_NAMES, LBatch, LChunk, LQemu


def record_key(item: Any) -> int:
    """The record-count key of a legacy item: a chunk's id (negative), or its
    kind shifted left by 16."""
    if isinstance(item, LChunk):
        return int(item.cid)
    return (1 if isinstance(item, LBatch) else 2 if isinstance(item, LQemu) else 3) << 16


def record_name(key: int) -> str:
    """The name of a :func:`record_key` in the summary's record counts."""
    if key < 0:
        return f"CHUNK_{CHUNK_NAMES.get(key, str(key))}"
    return {1: "PAGE_BATCH", 2: "QEMU_RECORD", 3: "HEADER"}.get(key >> 16, str(key))
