"""Findings: what the verifier says about a stream.

Every finding names where (offset, record index, layer, record type), which
rule, the authority the rule comes from (``spec`` for the specifications,
``restore`` for the rules of Xen's own C restore code), and whether Xen's
restore would tolerate the problem anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

ERROR = "error"
WARNING = "warning"
INFO = "info"

SPEC = "spec"
RESTORE = "restore"


@dataclass
class Finding:
    severity: str  # error | warning | info
    offset: int
    layer: str
    what: str  # "header (libxc image header)" or "record #N (TYPE)"
    rule: str  # short stable identifier, e.g. "page-data-count"
    authority: str  # spec | restore
    restore_tolerates: bool
    message: str  # "expected ..., found ..."
    record_index: Optional[int] = None
    record_type: Optional[str] = None

    def line(self, name: str) -> str:
        return f"{name}: offset {self.offset:#x}, {self.what}: {self.message}"

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        return d
