"""Exceptions shared by every layer.

A :class:`FormatError` carries the absolute byte offset it refers to and a
sentence saying what was expected and what was found, so that every consumer
(verify, convert, info, the drop-ins) can print the same one-line error.
"""

from __future__ import annotations

from typing import Optional


class XenstreamError(Exception):
    """Base class of every error this package raises on purpose."""


class UsageError(XenstreamError):
    """The caller asked for something impossible (bad option, bad path)."""


class FormatError(XenstreamError):
    """The input does not follow the format; parsing cannot go on.

    ``offset`` is the absolute byte offset of the structure at fault,
    ``what`` names that structure ("libxc image header", "record #12 (PAGE_DATA)").
    """

    def __init__(
        self,
        offset: int,
        message: str,
        *,
        what: str = "",
        layer: str = "",
        rule: str,
        index: Optional[int] = None,
        record_type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message
        self.what = what
        self.layer = layer
        self.rule = rule
        #: the record this error is about, when it is about one
        self.index = index
        self.record_type = record_type

    def __str__(self) -> str:
        where = f"offset {self.offset:#x}"
        if self.what:
            where += f", {self.what}"
        return f"{where}: {self.message}"


class TruncatedError(FormatError):
    """End of input inside a structure.

    ``wanted`` bytes were needed at ``offset`` and only ``got`` were there.
    """

    def __init__(
        self,
        offset: int,
        wanted: int,
        got: int,
        *,
        what: str = "",
        layer: str = "",
        message: Optional[str] = None,
    ) -> None:
        msg = message or (
            f"expected {wanted} more byte{'s' if wanted != 1 else ''}, "
            f"found end of stream after {got}"
        )
        super().__init__(offset, msg, what=what, layer=layer, rule="truncated")
        self.wanted = wanted
        self.got = got


class LimitError(FormatError):
    """A length field exceeds the limit of its format; nothing was allocated."""

    def __init__(self, offset: int, message: str, *, what: str = "", layer: str = "") -> None:
        super().__init__(offset, message, what=what, layer=layer, rule="length-limit")
