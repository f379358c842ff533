"""Findings: what the verifier says about a stream.

Every finding names where (offset, record index, layer, record type), which
rule, the authority the rule comes from (``spec`` for the specifications,
``restore`` for the rules of Xen's own C restore code), and whether Xen's
restore would tolerate the problem anyway.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

ERROR = "error"
WARNING = "warning"
INFO = "info"

SPEC = "spec"  # a section of a specification
RESTORE = "restore"  # the Xen code that refuses it on restore
TOOLSTACK = "toolstack"  # libxl, xl, xenopsd or libvirt code
CONVENTION = "convention"  # nothing enforces it: never an error


_FIELDS = ("severity", "offset", "layer", "what", "rule", "authority", "restore_tolerates",
           "message", "record_index", "record_type", "source")


class Finding:
    """One thing the verifier has to say (a plain class: cheap to import)."""

    __slots__ = _FIELDS

    def __init__(self, severity: str, offset: int, layer: str, what: str, rule: str,
                 authority: str, restore_tolerates: bool, message: str,
                 record_index: Optional[int] = None, record_type: Optional[str] = None,
                 source: str = "") -> None:
        self.severity = severity  # error | warning | info
        self.offset = offset
        self.layer = layer
        self.what = what  # "header (libxc image header)" or "record #N (TYPE)"
        self.rule = rule  # short stable identifier, e.g. "page-data-count"
        self.authority = authority  # spec | restore | toolstack | convention
        self.restore_tolerates = restore_tolerates
        self.message = message  # "expected ..., found ..."
        self.record_index = record_index
        self.record_type = record_type
        self.source = source  # the rule's source: a spec section or a Xen function

    def line(self, name: str) -> str:
        return f"{name}: offset {self.offset:#x}, {self.what}: {self.message}"

    def to_json(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in _FIELDS}

    def __repr__(self) -> str:
        return f"Finding({', '.join(f'{k}={getattr(self, k)!r}' for k in _FIELDS)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Finding) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]
