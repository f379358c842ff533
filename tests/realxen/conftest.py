"""The real-Xen tests: marker, opt-in selection, and the one boot they share.

``pytest -m realxen`` runs them; a plain ``pytest`` (no ``-m``, or an
expression that does not select ``realxen``) deselects them, so the unit
suite stays fast.  Nothing here imports more than the standard library and
pytest at collection time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

MARK = "realxen"
HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}: boots Debian's Xen 4.17 under QEMU/TCG (slow; run with -m {MARK})")


def selected(config: pytest.Config) -> bool:
    """Does the -m expression select the realxen marker?"""
    expr = config.getoption("markexpr", "") or ""
    if not expr.strip():
        return False
    try:
        from _pytest.mark.expression import Expression

        return bool(Expression.compile(expr).evaluate(lambda name, **_kw: name == MARK))
    except Exception:  # noqa: BLE001 - private API moved: fall back to a plain look
        return MARK in expr.split() and f"not {MARK}" not in expr


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if selected(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker(MARK) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _say(msg: str) -> None:
    # progress on the real stderr: a cold run takes many minutes
    stream = sys.__stderr__
    if stream is not None:
        stream.write(f"[realxen {time.strftime('%H:%M:%S')}] {msg}\n")
        stream.flush()


@pytest.fixture(scope="session")
def xen() -> Any:
    """One boot of Xen running dom0/job.py; skips every test if the machinery fails."""
    sys.path.insert(0, str(HERE))
    import harness

    reuse = os.environ.get("XENSTREAM_REALXEN_REUSE")
    if reuse:  # judge an earlier run's results again (development aid; no boot)
        try:
            return harness.load_run(Path(reuse))
        except harness.InfraError as e:
            pytest.skip(str(e))
    # outside pytest's basetemp, which later sessions (even the unit suite) prune
    workdir = harness.new_workdir()
    logfile = workdir / "harness.log"

    def log(msg: str) -> None:
        with open(logfile, "a") as f:
            f.write(msg + "\n")
        if msg.startswith("$ qemu") or "cached" in msg or "built" in msg or "took" in msg:
            _say(msg[:200])

    _say(f"work directory {workdir} (logs, share/out/results.json, images)")
    try:
        run = harness.run_job(workdir, log)
    except harness.InfraError as e:
        _say(f"infrastructure failure: {e}")
        pytest.skip(f"real Xen infrastructure unavailable: {e}")
    _say(f"boot {run.boot.seconds:.0f} s, whole run {run.seconds:.0f} s; results in {run.out}")
    return run
