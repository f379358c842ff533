"""The legacy reading state of one conversion, checkpoint by checkpoint.  A
Remus stream repeats checkpoints; it converts to the state of its last
complete one.  :class:`CheckpointState` collects what the current checkpoint
says (HVM params, the PV or HVM tail, the toolstack's physmap, the
device-model record) and commits it only when the checkpoint ends, and stages
the pages of every checkpoint after the first in a temporary file that is
appended to the output once the checkpoint is complete (and dropped if the
stream ends inside it).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from xenstream.consumers.convert.options import Context
from xenstream.consumers.convert.sink import Sink, Staging
from xenstream.formats.legacy import LCheckpointEnd, LQemu


class CheckpointState:
    """The committed state (``params``, ``tail``, ``physmap``, the staged
    device-model record ``qemu_stage``) and the current checkpoint's
    (``c_params``, ``c_tail``, ``c_physmap``, ``qemu_pending``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.out = ctx.out
        self.checkpoint = 1  # the number of the checkpoint being read
        # committed at checkpoint end
        self.params: Dict[int, int] = {}
        self.tail: Optional[Any] = None
        self.physmap: Optional[List[Tuple[bytes, bytes]]] = None
        self.qemu_header = b""
        self.qemu_staged = False
        # the current checkpoint's
        self.c_params: Dict[int, int] = {}
        self.c_tail: Optional[Any] = None
        self.c_physmap: Optional[List[Tuple[bytes, bytes]]] = None
        self.staging: Optional[Staging] = None
        # device-model record: this checkpoint's (pending) and the last complete one's
        self.qemu_pending: Optional[Staging] = None
        self.qemu_stage: Optional[Staging] = None
        self.qemu_pending_header = b""
        self.qemu_has_pending = False

    def pages_sink(self) -> Sink:
        """Where this checkpoint's pages go: the output for the first, the
        staging file for later ones (appended once the checkpoint completes)."""
        if self.checkpoint == 1:
            return self.out
        if self.staging is None:
            self.staging = Staging(self.ctx.opts.tmpdir)
        return self.staging.sink

    def qemu(self, q: LQemu) -> None:
        """The device-model record is staged until its checkpoint completes."""
        st = self.qemu_pending
        if st is None:
            st = self.qemu_pending = Staging(self.ctx.opts.tmpdir)
        st.reset()
        if q.length is None:
            for chunk in q.chunks():
                st.sink.write(chunk)
        else:
            st.sink.copy_from(self.ctx.src, q.length, q.what)
            q._left = 0
        self.qemu_pending_header = q.header
        self.qemu_has_pending = True

    def end(self, e: LCheckpointEnd) -> None:
        """Checkpoint ``e.number`` is complete: append its staged pages, commit
        its state."""
        if e.number > 1 and self.staging is not None:
            self.staging.flush_to(self.out)
        self.params.update(self.c_params)
        self.tail = self.c_tail
        if self.c_physmap is not None:
            self.physmap = self.c_physmap
        if self.qemu_has_pending:
            self.qemu_pending, self.qemu_stage = self.qemu_stage, self.qemu_pending
            self.qemu_header = self.qemu_pending_header
            self.qemu_staged = True
            self.qemu_has_pending = False
        self.ctx.res.checkpoints = e.number
        self.checkpoint = e.number + 1

    def discard(self) -> None:
        """The stream ends inside the current checkpoint: drop what it staged."""
        if self.staging is not None:
            self.staging.reset()
        self.qemu_has_pending = False

    def close(self) -> None:
        for t in (self.staging, self.qemu_stage, self.qemu_pending):
            if t is not None:
                t.close()
