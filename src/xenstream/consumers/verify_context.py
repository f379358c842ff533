"""The findings of the verifier (:mod:`xenstream.consumers.verify`) and what
they are about.

The verifier points the :class:`FindingContext` at each item the parser
yields, or at explicit values (the end of the stream, a format error); the
layers' checkers report through :meth:`Reporter.report`, which turns each
finding into a :class:`xenstream.findings.Finding` with that offset, layer and
record.
"""

from __future__ import annotations

from typing import Any, List, Optional

from xenstream.findings import ERROR, SPEC, WARNING, Finding
from xenstream.reading.parser import Frame, PageRun, Record
from xenstream.rules import rule


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


class Reporter:
    """Collects the findings of one verification into ``findings``."""

    def __init__(self, findings: List[Finding], *, lenient: bool) -> None:
        self.findings = findings
        self.lenient = lenient
        self.ctx = FindingContext()

    def report(self, rule_id: str, message: str, *, offset: Optional[int] = None) -> None:
        """A checker's finding of rule ``rule_id`` (the signature of
        :data:`xenstream.formats.libxc.Report`); its severity, authority,
        source and tolerance are the rule's (:mod:`xenstream.rules`).
        ``offset`` overrides the context's.  With ``lenient``, a spec error
        the restorer tolerates is reported as a warning."""
        r = rule(rule_id)
        severity = r.severity
        if self.lenient and severity == ERROR and r.tolerated and r.authority == SPEC:
            severity = WARNING
        c = self.ctx
        it = c.item
        index: Optional[int] = None
        rtype: Optional[str] = None
        if it is not None:
            at, layer, what = it.offset, it.layer, it.what
            if isinstance(it, (Record, Frame)):
                index, rtype = it.index, it.name
            elif isinstance(it, PageRun):
                # about the first record of the run
                index, rtype = it.first_index, it.name
                what = f"record #{it.first_index} ({it.name})"
        else:
            at, layer, what = c.offset, c.layer, c.what
            index, rtype = c.index, c.rtype
        self.findings.append(Finding(
            severity=severity, offset=at if offset is None else offset, layer=layer,
            what=what, rule=rule_id, authority=r.authority, restore_tolerates=r.tolerated,
            message=message, record_index=index, record_type=rtype, source=r.source))
