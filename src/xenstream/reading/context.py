"""What the readers of one parse share: :class:`ParseState`, where the parse
is (which layers it has entered, their byte orders, the checkpoints seen),
read by consumers for context."""

from __future__ import annotations

from typing import List


class ParseState:
    """Where the parser is; read by consumers for context."""

    def __init__(self) -> None:
        self.layers: List[str] = []
        self.libxc_endian = "<"
        self.libxl_endian = "<"
        self.libxc_version = 0
        self.checkpoints = 0  # libxc CHECKPOINT records seen
        self.checkpoint_ends = 0
        self.colo = False
        self.in_checkpoint = False  # between CHECKPOINT and CHECKPOINT_END
        self.finished = False  # the stream's final END was read
