"""Will it restore on Xen X.Y?  The verifier's result judged for one release.

:func:`judge` takes a :class:`~xenstream.consumers.verify.Result` of
``verify(src, releases=True)`` and a release (``X.Y.Z`` or ``HEAD``): each
finding is judged by its rule's verdict at that release
(:func:`xenstream.rules.verdict`, from the release table), and the rules with
``uses`` add the findings only the release raises (a v3 stream for 4.13, a
32-byte LAPIC record for 4.17).  The :class:`Verdict` is ``restores``,
``refused`` or ``host`` (it restores if the host has what ``conditions``
say), with advice where it is refused.

:func:`restoring_ranges` gives the releases that restore the image, as
ranges (``[("4.14", "4.20")]``), for ``info``; :func:`ranges_text` the text
(``4.14 – 4.20``).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from xenstream import releases
from xenstream.consumers.verify import Result
from xenstream.consumers.verify_releases import ReleaseFacts
from xenstream.findings import ERROR, INFO, WARNING, Finding
from xenstream.releases import HOST, REFUSED, RESTORES
from xenstream.rules import Rule, rule, verdict

#: the toolstack that restores an image, by its outermost layer
TOOLSTACKS = {"xl": "xl/libxl", "libvirt": "libvirt/libxl", "xenopsd": "xenopsd",
              "xend": "xl/libxl", "libxl": "libxl", "libxc": "libxc", "legacy": "libxc"}


class Verdict(NamedTuple):
    release: str
    outcome: str  # restores | refused | host
    refusing: List[Finding]  # the findings the release refuses
    conditions: List[str]  # for host: what the host must have
    advice: List[str]  # for refused: what to do

    def to_json(self) -> Dict[str, Any]:
        return {"release": self.release, "verdict": self.outcome,
                "refused_by": sorted({f.rule for f in self.refusing}),
                "conditions": self.conditions, "advice": self.advice}


def toolstack(res: Result) -> str:
    """Who restores the image: xl/libxl, libvirt/libxl, xenopsd, or a bare
    libxl/libxc restore."""
    return TOOLSTACKS.get(res.layers[0], res.layers[0]) if res.layers else "libxc"


def _facts(res: Result) -> ReleaseFacts:
    if res.facts is None:
        raise ValueError("the result was not gathered with verify(..., releases=True)")
    return res.facts


def all_findings(res: Result) -> List[Tuple[Finding, Rule]]:
    """The verifier's findings and those only a release raises (the rules
    with ``uses`` whose facts the image has), each with its rule; cached on
    the result."""
    facts = _facts(res)
    if facts.judged is not None:
        return list(facts.judged)
    s = res.summary
    facts.guest(s.get("guest_type"), s.get("guest_width"), 0, res.layers[0] if res.layers else "",
                "image")
    out = [(f, rule(f.rule)) for f in res.findings]
    for r, fact in facts.matches():
        out.append((Finding(
            severity=r.severity, offset=fact.offset, layer=fact.layer, what=fact.what,
            rule=r.id, authority=r.authority, restore_tolerates=r.tolerated,
            message=f"found {fact.message}: {r.description}", record_index=fact.record_index,
            record_type=fact.rtype, source=r.source), r))
    facts.judged = out
    return list(out)


def severity_at(f: Finding, r: Rule, release: str) -> str:
    """A finding's severity for ``release``: an error where the release
    refuses it, a warning where it restores it (tolerated) or it depends on
    the host; info stays info."""
    v = verdict(r, release)
    if v == REFUSED:
        return ERROR
    if f.severity == INFO and v == RESTORES:
        return INFO
    return WARNING


def findings_at(res: Result, release: str) -> List[Finding]:
    """The findings as ``release`` judges them (new objects; the result is unchanged)."""
    out = []
    for f, r in all_findings(res):
        if r.uses and verdict(r, release) == RESTORES:
            continue  # only other releases raise it
        g = Finding(**f.to_json())
        g.severity = severity_at(f, r, release)
        out.append(g)
    return sorted(out, key=lambda f: f.offset)


def _outcome(res: Result, release: str) -> str:
    cache = _facts(res).outcomes
    if release not in cache:
        cache[release] = judge(res, release, advise=False).outcome
    return cache[release]


def _restoring(res: Result) -> List[str]:
    return [rel for rel in releases.RELEASES if _outcome(res, rel) != REFUSED]


def restoring_ranges(res: Result) -> List[Tuple[str, str]]:
    """The releases that restore the image (on some host at least), as
    ranges of :data:`xenstream.releases.RELEASES`: ``[("4.14", "4.20")]``."""
    return releases.ranges(_restoring(res))


def ranges_text(res: Result) -> str:
    """:func:`restoring_ranges` as text: ``4.14 – 4.20`` (``none``)."""
    return releases.ranges_text(restoring_ranges(res))


def _advice(res: Result, release: str, refusing: Sequence[Tuple[Finding, Rule]]) -> List[str]:
    out: List[str] = []
    for _f, r in refusing:
        if r.advice and r.advice not in out:
            out.append(r.advice)
    ok = _restoring(res)
    runs = releases.ranges(ok)
    if not runs:
        out.append("no release from 4.6 restores it")
    elif len(runs) == 1 and runs[0][1] == releases.HEAD:
        out.append(f"needs Xen >= {runs[0][0]}")
    elif len(runs) == 1 and ok[0] == releases.RELEASES[0]:
        out.append(f"needs Xen <= {runs[0][1]}")
    else:
        out.append(f"restores on Xen {releases.ranges_text(runs)}")
    return out


def judge(res: Result, release: str, *, advise: bool = True) -> Verdict:
    """The verdict of ``release`` (``X.Y.Z`` or ``HEAD``) on the image."""
    refusing: List[Tuple[Finding, Rule]] = []
    conditions: List[str] = []
    for f, r in all_findings(res):
        v = verdict(r, release)
        if v == REFUSED:
            refusing.append((f, r))
        elif v == HOST:
            text = r.condition or r.description
            if text not in conditions:
                conditions.append(text)
    if refusing:
        return Verdict(release, REFUSED, [f for f, _ in refusing], conditions,
                       _advice(res, release, refusing) if advise else [])
    advice = [r.advice for f, r in all_findings(res)
              if verdict(r, release) == HOST and r.advice] if advise else []
    return Verdict(release, HOST if conditions else RESTORES, [], conditions,
                   list(dict.fromkeys(advice)))


def later_points(res: Result, release: str) -> List[Verdict]:
    """The verdicts of the later X.Y.Z of ``release``'s series that judge
    differently (4.18.0 refuses a 32-byte LAPIC, 4.18.5 restores it)."""
    first = judge(res, release, advise=False).outcome
    return [v for v in (judge(res, p, advise=False) for p in releases.points(release)[1:])
            if v.outcome != first]


def verdict_line(res: Result, name: str, v: Verdict, *, later: Sequence[Verdict] = ()) -> str:
    head = f"{name}: Xen {v.release} via {toolstack(res)}: "
    if v.outcome == RESTORES:
        text = "restores"
    elif v.outcome == HOST:
        text = "restores if " + "; and if ".join(v.conditions)
    else:
        rules_ = ", ".join(dict.fromkeys(f.rule for f in v.refusing))
        text = f"does not restore ({rules_})"
        if v.advice:
            text += ": " + "; ".join(v.advice)
    if later:
        text += " (" + "; ".join(f"{p.release} and later {releases.series(p.release)}.x: "
                                 f"{_short(p)}" for p in later) + ")"
    return head + text


def _short(v: Verdict) -> str:
    if v.outcome == HOST:
        return "restores if " + "; and if ".join(v.conditions)
    return "restores" if v.outcome == RESTORES else "does not restore"


def affected_json(r: Rule) -> Dict[str, Any]:
    """A finding's releases: the first and last release that does not
    simply restore it, and the ranges."""
    hit = [rel for rel in releases.RELEASES if verdict(r, rel) != RESTORES]
    return {"first": hit[0] if hit else None, "last": hit[-1] if hit else None,
            "ranges": [list(p) for p in releases.ranges(hit)]}


def to_json(res: Result, requested: str, release: str) -> Dict[str, Any]:
    """The ``--json`` document of ``verify --target-xen``: the verifier's,
    with the findings as ``release`` judges them (each with the releases it
    affects), ``valid`` the release's verdict, ``target`` that verdict and
    ``releases`` every release's."""
    doc = res.to_json()
    v = judge(res, release)
    found = []
    for f, r in sorted(all_findings(res), key=lambda fr: fr[0].offset):
        if r.uses and verdict(r, release) == RESTORES:
            continue  # only other releases raise it
        j = f.to_json()
        j["severity"] = severity_at(f, r, release)
        j["releases"] = affected_json(r)
        found.append(j)
    doc["findings"] = found
    doc["valid"] = v.outcome != REFUSED
    target = v.to_json()
    target.update(requested=requested, toolstack=toolstack(res),
                  later=[p.to_json() for p in later_points(res, release)])
    doc["target"] = target
    doc["releases"] = [judge(res, rel).to_json() for rel in releases.RELEASES]
    doc["restores_on"] = ranges_text(res)
    return doc


def text_lines(res: Result, name: str, release: str) -> Tuple[List[str], Verdict]:
    """The finding lines (as ``release`` judges them) and the verdict line."""
    v = judge(res, release)
    lines = []
    for f in findings_at(res, release):
        if f.severity == ERROR:
            lines.append(f.line(name))
        elif f.severity == WARNING:
            lines.append(f"{name}: offset {f.offset:#x}, {f.what}: warning: {f.message}")
    lines.append(verdict_line(res, name, v, later=later_points(res, release)))
    return lines, v


def all_lines(res: Result, name: str) -> List[str]:
    """``--target-xen all``: one line per release."""
    return [verdict_line(res, name, judge(res, rel)) for rel in releases.RELEASES]


def exit_code(v: Optional[Verdict]) -> int:
    return 1 if v is not None and v.outcome == REFUSED else 0


__all__ = ["TOOLSTACKS", "Verdict", "all_findings", "all_lines", "exit_code", "findings_at",
           "judge", "later_points", "ranges_text", "restoring_ranges", "text_lines", "to_json",
           "toolstack", "verdict_line"]
