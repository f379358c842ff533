"""Where a restore commits what it has read: the checkpoint boundaries the
extractions (memory, blobs) keep the last complete state at.

* A plain stream is one checkpoint, complete at its end (v2: END read;
  legacy: the checkpoint's end, :class:`~xenstream.formats.legacy.LCheckpointEnd`).
* A v2 Remus/COLO stream: Xen's restore (``xg_sr_restore.c``:
  ``handle_checkpoint()``) applies a checkpoint's records only once libxl's
  checkpoint callback succeeded, i.e. at the libxl CHECKPOINT_END after the
  libxc CHECKPOINT (a bare libxc stream: at CHECKPOINT); the records buffered
  after the last one are dropped when the stream ends, by end of input or by
  END (``restore()``: END is processed, the buffer never is).
* A legacy Remus stream: at the end of each checkpoint's tail; the parser's
  :class:`~xenstream.formats.legacy.LTruncated` is a checkpoint the restorer
  drops.

:func:`restore_point` says which of these an item is.
"""

from __future__ import annotations

from typing import Any, Optional

from xenstream.formats import libxc, libxl
from xenstream.formats.legacy import LCheckpointEnd, LTruncated
from xenstream.reading.parser import LAYER_LIBXC, LAYER_LIBXL, ParseState, Record

COMMIT = "commit"  # the checkpoint read so far is complete
DROP = "drop"  # the checkpoint read so far is never applied


def restore_point(item: Any, state: ParseState) -> Optional[str]:
    """:data:`COMMIT`, :data:`DROP` or None for ``item`` (``state``: the parser's)."""
    t = type(item)
    if t is Record:
        if item.layer == LAYER_LIBXL and item.rtype == libxl.REC_TYPE_CHECKPOINT_END:
            return COMMIT
        if item.layer == LAYER_LIBXC:
            if item.rtype == libxc.REC_TYPE_CHECKPOINT and LAYER_LIBXL not in state.layers:
                return COMMIT
            if item.rtype == libxc.REC_TYPE_END and state.checkpoints:
                return DROP
        return None
    if t is LCheckpointEnd:
        return COMMIT
    if t is LTruncated:
        return DROP
    return None


def at_end(state: ParseState, legacy: bool) -> str:
    """What the end of the items means for what is not committed yet: a
    plain v2 stream ends complete, anything else left over is dropped."""
    return COMMIT if not legacy and not state.checkpoints else DROP
