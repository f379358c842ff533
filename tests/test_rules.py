"""The rules table (xenstream.rules): every rule id a checker raises is in the
table, every row is raised somewhere, each row is well formed, and
docs/rules.md is the table as generated now.

The ids a checker raises are found in the source, not at run time, so that a
rule no test happens to trigger is still checked: the string given as the rule
of a ``report(...)``-style call, of ``FormatError(..., rule=...)``,
``legacy_error``/``_qemu_error``, a ``Mismatch``, an assignment to ``.rule``,
or the first element of a ``("rule-id", message)`` tuple.
"""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from xenstream import rules
from xenstream.findings import CONVENTION, ERROR, INFO, RESTORE, SPEC, TOOLSTACK, WARNING

ROOT = Path(__file__).resolve().parent.parent  # the checkout (the package may be installed)
SRC = ROOT / "src" / "xenstream"
DOCS = ROOT / "docs" / "rules.md"
RULE_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
REPORTERS = {"report", "_report", "r", "add"}
#: calls whose rule id is a positional argument: name -> index
POSITIONAL = {"legacy_error": 3, "_qemu_error": 2, "Mismatch": 3, "_error": 3, "_enter": 6}


def _str(node: ast.AST) -> List[str]:
    """The rule ids a node can be: a string constant, or either branch of a
    conditional expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if RULE_ID.match(node.value) else []
    if isinstance(node, ast.IfExp):
        return _str(node.body) + _str(node.orelse)
    return []


def raised_ids() -> Dict[str, List[str]]:
    """rule id -> where the source raises it (path:line)."""
    found: Dict[str, List[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "rules.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            cands: List[str] = []
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in REPORTERS and node.args:
                    cands += _str(node.args[0])
                if name in POSITIONAL and len(node.args) > POSITIONAL[name]:
                    cands += _str(node.args[POSITIONAL[name]])
                for kw in node.keywords:
                    if kw.arg == "rule":
                        cands += _str(kw.value)
            elif isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Attribute) and t.attr == "rule" for t in node.targets):
                    cands += _str(node.value)
            elif (isinstance(node, ast.Tuple) and len(node.elts) == 2
                  and isinstance(node.elts[1], (ast.JoinedStr, ast.Constant))):
                cands += [c for c in _str(node.elts[0]) if "-" in c]
            for c in cands:
                found.setdefault(c, []).append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_every_raised_rule_is_in_the_table() -> None:
    missing = {r: w for r, w in raised_ids().items() if r not in rules.RULES}
    assert missing == {}


def test_every_rule_in_the_table_is_raised() -> None:
    raised = set(raised_ids())
    # rules with ``uses`` are raised by the per-release judging, from the table
    # (tests/test_releases.py builds an image for each)
    judged = {r.id for r in rules.RULES.values() if r.uses}
    unused = sorted(set(rules.RULES) - raised - judged)
    assert unused == []
    assert not judged & raised, "a judged-per-release rule is raised by a checker"


@pytest.mark.parametrize("r", list(rules.RULES.values()), ids=list(rules.RULES))
def test_row_is_well_formed(r: rules.Rule) -> None:
    assert RULE_ID.match(r.id)
    assert r.severity in (ERROR, WARNING, INFO)
    assert r.authority in (SPEC, RESTORE, TOOLSTACK, CONVENTION)
    assert r.description and r.source, r
    # nothing enforces a convention: never an error
    assert not (r.authority == CONVENTION and r.severity == ERROR), r
    if r.authority == SPEC:
        assert r.source.startswith("docs/"), r.source
    if r.authority == RESTORE:
        assert re.search(r"(xen/|tools/)\S+\.c\S*: \w+\(\)", r.source), r.source
    if r.since is not None:
        assert r.authority in (RESTORE, TOOLSTACK) and re.match(r"^4\.\d+$", r.since), r


def test_one_meaning_per_id_at_every_call_site() -> None:
    """The call sites pass only the id: severity, authority and tolerance
    cannot differ between two sites of one id."""
    offenders: List[Tuple[str, int]] = []
    sev = {"ERROR", "WARNING", "INFO"}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and node.args
                    and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
                    in REPORTERS
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in sev):
                offenders.append((str(path.relative_to(SRC)), node.lineno))
    assert offenders == []


def test_judging_helpers() -> None:
    tsc = rules.rule("tsc-mode-pvrdtscp")
    assert tsc.since == "4.12" and rules.last_restoring(tsc) == "4.11"
    assert rules.refused(tsc, rules.HEAD) and not rules.refused(tsc, rules.ANY_RELEASE)
    always = rules.rule("ihdr-version")
    assert always.since is None and rules.refused(always, rules.ANY_RELEASE)
    assert rules.last_restoring(always) is None


def test_docs_rules_md_is_current() -> None:
    out = io.StringIO()
    rules.markdown(out)
    assert DOCS.exists(), "docs/rules.md is missing: python -m xenstream.rules > docs/rules.md"
    assert DOCS.read_text() == out.getvalue(), (
        "docs/rules.md is stale: python -m xenstream.rules > docs/rules.md")


def test_renamed_ids_are_gone() -> None:
    """The ids that meant two things were split; none comes back."""
    gone: Set[str] = {"legacy-format", "framing"}
    assert gone & set(raised_ids()) == set()
