"""What a finding of the verifier (:mod:`xenstream.consumers.verify`) is about.

The verifier points its :class:`FindingContext` at each item the parser
yields, or at explicit values (the end of the stream, a format error); its
``report`` turns a checker's finding into a :class:`xenstream.findings.Finding`
with that offset, layer and record.
"""

from __future__ import annotations

from typing import Any, Optional


class FindingContext:
    """What a finding is about right now: an item of the parser, or explicit
    values (``item`` None).  Kept cheap: nothing is formatted until a finding
    is reported."""

    def __init__(self) -> None:
        self.item: Any = None
        self.offset = 0
        self.layer = ""
        self.what = "header"
        self.index: Optional[int] = None
        self.rtype: Optional[str] = None

    def set(self, offset: int, what: str, layer: Optional[str] = None) -> None:
        self.item = None
        self.index = None
        self.rtype = None
        self.offset = offset
        self.what = what
        if layer is not None:
            self.layer = layer
