"""The rules: one table of every rule a checker applies.

Each :class:`Rule` names its severity in the strict verifier, its authority
and the source it comes from (``spec``: a section of a specification;
``restore``: the Xen function that refuses it; ``toolstack``: the libxl, xl,
xenopsd or libvirt code that does; ``convention``: nothing enforces it, so it
is never an error), whether Xen HEAD's restore tolerates it anyway, the first
release that refuses it where that is later than 4.6 (``since``), and a
one-line description.  Checkers name rules by id only; the consumers look the
rest up here.  ``docs/rules.md`` is generated from this table
(``python -m xenstream.rules > docs/rules.md``).

The judging targets: ``HEAD`` (what ``xenstream convert`` and ``verify``
judge against: the newest Xen) and ``ANY_RELEASE`` (the drop-in converter
runs on the restoring host, whose release it cannot know: it refuses only
what no release from 4.6 on restores).
"""

from __future__ import annotations

import sys
from typing import Dict, Iterable, NamedTuple, Optional, TextIO, Tuple

from xenstream.findings import ERROR, INFO, WARNING

SPEC = "spec"
RESTORE = "restore"
TOOLSTACK = "toolstack"
CONVENTION = "convention"
AUTHORITIES = (SPEC, RESTORE, TOOLSTACK, CONVENTION)

#: the first release with the v2 stream format
FIRST_V2_RELEASE = "4.6"
HEAD = "head"
ANY_RELEASE = "any"


class Rule(NamedTuple):
    id: str
    severity: str
    authority: str
    source: str
    tolerated: bool
    description: str
    since: Optional[str] = None


def _release(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _table(rows: Iterable[Rule]) -> Dict[str, Rule]:
    table: Dict[str, Rule] = {}
    for r in rows:
        if r.id in table:
            raise ValueError(f"rule {r.id} is in the table twice")
        table[r.id] = r
    return table


def rule(rule_id: str) -> Rule:
    """The rule with ``rule_id`` (KeyError for an id that is not in the table:
    a bug of the checker that used it)."""
    return RULES[rule_id]


def refused(r: Rule, target: str = HEAD) -> bool:
    """Whether a restore on ``target`` fails on an image that breaks ``r``:
    HEAD refuses what it does not tolerate; for ANY_RELEASE it must be
    refused by every release from 4.6 on (a rule enforced only since a later
    release is something an older host still restores)."""
    if r.severity != ERROR or r.tolerated:
        return False
    if target == ANY_RELEASE:
        return r.since is None or _release(r.since) <= _release(FIRST_V2_RELEASE)
    return True


def last_restoring(r: Rule) -> Optional[str]:
    """The newest release that still restores an image breaking ``r`` (None:
    no v2 release does)."""
    if r.since is None or _release(r.since) <= _release(FIRST_V2_RELEASE):
        return None
    major, minor = _release(r.since)[:2]
    return f"{major}.{minor - 1}"


def markdown(out: TextIO) -> None:
    """``docs/rules.md``: the table, by authority then id."""
    out.write("# Rules\n\nGenerated from `src/xenstream/rules.py` (`python -m xenstream.rules "
              "> docs/rules.md`); do not edit.\n\n")
    counts = ", ".join(f"{sum(1 for r in RULES.values() if r.authority == a)} {a}"
                       for a in AUTHORITIES)
    out.write(f"{len(RULES)} rules: {counts}. *Tolerated*: Xen HEAD's restore accepts the "
              "image anyway. *Since*: the first release that refuses it, where later than "
              f"{FIRST_V2_RELEASE}.\n\n")
    out.write("| rule | severity | authority | source | tolerated | since | what it requires |\n")
    out.write("| --- | --- | --- | --- | --- | --- | --- |\n")
    for r in sorted(RULES.values(), key=lambda r: (AUTHORITIES.index(r.authority), r.id)):
        out.write(f"| `{r.id}` | {r.severity} | {r.authority} | {r.source} | "
                  f"{'yes' if r.tolerated else 'no'} | {r.since or ''} | {r.description} |\n")


# -- the table -------------------------------------------------------------------------

RULES: Dict[str, Rule] = _table([
    Rule("tsc-mode-pvrdtscp", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common_x86.c: handle_x86_tsc_info()", False,
         "TSC mode 3 (PVRDTSCP) is refused since its removal", since="4.12"),
])


__all__ = ["ANY_RELEASE", "AUTHORITIES", "CONVENTION", "ERROR", "FIRST_V2_RELEASE", "HEAD",
           "INFO", "RESTORE", "RULES", "Rule", "SPEC", "TOOLSTACK", "WARNING", "last_restoring",
           "markdown", "refused", "rule"]

if __name__ == "__main__":
    markdown(sys.stdout)
