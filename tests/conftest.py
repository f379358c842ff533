"""Suite-wide: every conversion a test makes, in this process or in a
subprocess, is verified (tests/selfcheck/xenstream_selfcheck.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

SELFCHECK = Path(__file__).parent / "selfcheck"
sys.path.insert(0, str(SELFCHECK))

import xenstream_selfcheck  # noqa: E402

xenstream_selfcheck.install()


@pytest.fixture(autouse=True)
def every_conversion_verifies(tmp_path_factory: pytest.TempPathFactory,
                              monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    log = tmp_path_factory.mktemp("selfcheck") / "violations"
    monkeypatch.setenv("XENSTREAM_SELFCHECK", str(log))
    paths = [str(SELFCHECK)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    yield
    if log.exists():
        pytest.fail(log.read_text())
