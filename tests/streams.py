"""Shared helpers for the libxc stream tests.

A stream is a list of named *steps*; each step writes one (or, rarely, more)
records with a :class:`~xenstream.writers.v2.LibxcWriter`.  :func:`build` runs the
steps after the two headers and remembers, for every step, the index and the
byte offset of the record it starts with, so a test can say exactly where a
finding must point.  :func:`hvm_steps` and :func:`pv_steps` give valid streams
laid out the way Xen's saver writes them (reference section 1.6); tests break
them with :func:`replace`, :func:`insert_before`, :func:`insert_after` and
:func:`drop`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from xenstream.consumers.verify import Result, verify
from xenstream.findings import Finding
from xenstream.io import Source
from xenstream.writers.v2 import LibxcWriter

IHDR_SIZE = 24
DHDR_SIZE = 16
HEADERS_SIZE = IHDR_SIZE + DHDR_SIZE

Step = Tuple[str, Callable[[LibxcWriter], None]]
#: where a finding must point: a step name, "ihdr", "dhdr", "eos" (end of
#: stream, for rules checked when the stream ends) or an absolute offset
At = Union[str, int]


@dataclass
class Built:
    data: bytes
    marks: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # step -> (index, offset)

    def where(self, at: At) -> Tuple[Optional[int], int]:
        """(record_index, offset) a finding located ``at`` must carry."""
        if isinstance(at, int):
            return None, at
        if at == "ihdr":
            return None, 0
        if at == "dhdr":
            return None, IHDR_SIZE
        if at == "eos":
            return None, len(self.data)
        return self.marks[at]


def build(steps: Sequence[Step], *, version: int = 3, guest: Union[str, int] = "hvm",
          endian: str = "<", ihdr: Optional[Dict[str, int]] = None,
          dhdr: Optional[Dict[str, int]] = None) -> Built:
    buf = io.BytesIO()
    w = LibxcWriter(buf, endian=endian, version=version)
    w.image_header(**(ihdr or {}))
    w.domain_header(guest, **(dhdr or {}))
    out = Built(b"")
    for name, fn in steps:
        assert name not in out.marks, f"duplicate step name {name}"
        out.marks[name] = (w.records, buf.tell())
        fn(w)
    out.data = buf.getvalue()
    return out


def run(tmp_path: Path, data: Union[bytes, Built], **kw: object) -> Result:
    raw = data.data if isinstance(data, Built) else data
    p = tmp_path / "stream.bin"
    p.write_bytes(raw)
    with Source.open(str(p)) as src:
        return verify(src, **kw)  # type: ignore[arg-type]


# -- valid streams ---------------------------------------------------------------

def hvm_steps(version: int = 3, pages: int = 4) -> List[Step]:
    s: List[Step] = []
    if version >= 3:
        s += [("cpuid", lambda w: w.cpuid_policy()),
              ("msr", lambda w: w.msr_policy()),
              ("sde", lambda w: w.static_data_end())]
    s += [("pages", lambda w: w.page_data(list(range(pages)))),
          ("tsc", lambda w: w.tsc_info()),
          ("ctx", lambda w: w.hvm_context()),
          ("params", lambda w: w.hvm_params({1: pages - 1, 17: pages - 2})),
          ("end", lambda w: w.end())]
    return s


PV_PAGES = 8
PV_MAX_PFN = PV_PAGES - 1


def pv_types(width: int) -> List[int]:
    """Page types of pfns 0..7: a pinned top-level table at pfn 1, then a
    table of each lower level; the p2m frame (pfn 7) is NOTAB."""
    t = [0] * PV_PAGES
    if width == 8:
        t[1:5] = [0xC, 0x3, 0x2, 0x1]
    else:
        t[1:4] = [0xB, 0x2, 0x1]
    return t


def pv_frames(width: int, max_pfn: int = PV_MAX_PFN, start: int = 0) -> List[int]:
    fpp = 4096 // width
    n = max_pfn // fpp + 1 - start // fpp
    return [PV_MAX_PFN - i for i in range(n)]


def pv_steps(version: int = 3, width: int = 8) -> List[Step]:
    s: List[Step] = [("pv_info", lambda w: w.pv_info(width))]
    if version >= 3:
        s += [("cpuid", lambda w: w.cpuid_policy()),
              ("msr", lambda w: w.msr_policy()),
              ("sde", lambda w: w.static_data_end())]
    s += [("p2m", lambda w: w.p2m_frames(0, PV_MAX_PFN, pv_frames(width))),
          ("pages", lambda w: w.page_data(list(range(PV_PAGES)), pv_types(width))),
          ("tsc", lambda w: w.tsc_info()),
          ("shinfo", lambda w: w.shared_info()),
          ("basic0", lambda w: w.vcpu_basic(0, width)),
          ("ext0", lambda w: w.vcpu_extended(0)),
          ("xsave0", lambda w: w.vcpu_xsave(0)),
          ("msrs0", lambda w: w.vcpu_msrs(0)),
          ("end", lambda w: w.end())]
    return s


def steps_for(guest: str, version: int = 3, width: int = 8) -> List[Step]:
    return pv_steps(version, width) if guest == "pv" else hvm_steps(version)


# -- editing ----------------------------------------------------------------------------

def _pos(steps: Sequence[Step], name: str) -> int:
    for i, (n, _) in enumerate(steps):
        if n == name:
            return i
    raise KeyError(name)


def replace(steps: Sequence[Step], name: str, *new: Step) -> List[Step]:
    i = _pos(steps, name)
    return [*steps[:i], *new, *steps[i + 1:]]


def insert_before(steps: Sequence[Step], name: str, *new: Step) -> List[Step]:
    i = _pos(steps, name)
    return [*steps[:i], *new, *steps[i:]]


def insert_after(steps: Sequence[Step], name: str, *new: Step) -> List[Step]:
    i = _pos(steps, name)
    return [*steps[:i + 1], *new, *steps[i + 1:]]


def drop(steps: Sequence[Step], *names: str) -> List[Step]:
    for n in names:
        _pos(steps, n)
    return [s for s in steps if s[0] not in names]


def move_before(steps: Sequence[Step], name: str, before: str) -> List[Step]:
    step = steps[_pos(steps, name)]
    return insert_before(drop(steps, name), before, step)


def move_after(steps: Sequence[Step], name: str, after: str) -> List[Step]:
    step = steps[_pos(steps, name)]
    return insert_after(drop(steps, name), after, step)


# -- findings ------------------------------------------------------------------------------

def rules(res: Result) -> Set[str]:
    return {f.rule for f in res.findings}


def with_rule(res: Result, rule: str) -> List[Finding]:
    return [f for f in res.findings if f.rule == rule]


def describe(res: Result) -> str:
    return "; ".join(f"{f.rule}/{f.severity}@{f.offset:#x}#{f.record_index}: {f.message}"
                     for f in res.findings)


@dataclass(frozen=True)
class Expect:
    """One expected finding."""

    rule: str
    severity: str
    authority: str
    tolerates: bool
    at: At


def check(res: Result, built: Built, *expected: Expect, exact: bool = True) -> None:
    """Every expected finding is there exactly once, with its severity,
    authority, tolerance, record index and offset; with ``exact``, nothing
    else is."""
    for e in expected:
        got = with_rule(res, e.rule)
        assert len(got) == 1, f"expected one {e.rule} finding, found: {describe(res)}"
        f = got[0]
        index, offset = built.where(e.at)
        assert (f.severity, f.authority, f.restore_tolerates) == (
            e.severity, e.authority, e.tolerates), f"{e.rule}: {describe(res)}"
        assert f.offset == offset, f"{e.rule}: offset {f.offset:#x}, expected {offset:#x}"
        assert f.record_index == index, f"{e.rule}: index {f.record_index}, expected {index}"
        assert f.layer == "libxc", f"{e.rule}: layer {f.layer}"
    if exact:
        assert rules(res) == {e.rule for e in expected}, describe(res)
        assert res.valid == (not any(e.severity == "error" for e in expected)), describe(res)
