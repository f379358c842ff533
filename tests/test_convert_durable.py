"""Durable output: a converted file is on the disk before it stands under its
name (``fdatasync`` of the data, rename, ``fsync`` of the directory), unless
``--no-fsync``; outputs we do not create (pipes, descriptors) are the caller's."""

from __future__ import annotations

import io as pyio
import os
from typing import List, Tuple

import pytest

from xenstream.cli import convert_legacy_stream as dropin
from xenstream.cli.main import main
from xenstream.writers.legacy import LegacySpec, write_legacy


def _legacy(tmp_path) -> str:
    buf = pyio.BytesIO()
    write_legacy(buf, LegacySpec(guest="hvm", pages=64))
    path = tmp_path / "old.img"
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture
def calls(monkeypatch) -> List[Tuple[str, object]]:
    """Every fdatasync, fsync and rename, in order: (name, what)."""
    log: List[Tuple[str, object]] = []
    real_fdatasync, real_fsync, real_replace = os.fdatasync, os.fsync, os.replace

    def fdatasync(fd: int) -> None:
        log.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:  # type: ignore[no-untyped-def]
        log.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_convert_flushes_data_then_renames_then_flushes_directory(tmp_path, calls) -> None:
    src = _legacy(tmp_path)
    out = tmp_path / "sub" / "new.img"
    out.parent.mkdir()
    assert main(["convert", "-q", src, str(out)]) == 0
    names = [c[0] for c in calls]
    assert names == ["fdatasync", "replace", "fsync"], calls
    # the data flushed is the temporary file's, the directory flushed is OUT's
    assert str(calls[0][1]).startswith(str(out.parent) + "/.new.img.")
    assert calls[1][1] == str(out)
    assert calls[2][1] == str(out.parent)
    assert out.stat().st_size > 0


def test_no_fsync_skips_both(tmp_path, calls) -> None:
    src = _legacy(tmp_path)
    out = tmp_path / "new.img"
    assert main(["convert", "-q", "--no-fsync", src, str(out)]) == 0
    assert [c[0] for c in calls] == ["replace"]


def test_dropin_file_output_is_durable_and_no_fsync_works(tmp_path, calls) -> None:
    src = _legacy(tmp_path)
    assert dropin.main(["-i", src, "-o", str(tmp_path / "a")]) == 0
    assert [c[0] for c in calls] == ["fdatasync", "replace", "fsync"]
    calls.clear()
    assert dropin.main(["-i", src, "-o", str(tmp_path / "b"), "--no-fsync"]) == 0
    assert [c[0] for c in calls] == ["replace"]
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_descriptor_outputs_are_not_synced(tmp_path, calls) -> None:
    """libxl's convention (a pipe as --out): nothing to sync or rename."""
    src = _legacy(tmp_path)
    r, w = os.pipe()
    got = bytearray()
    import threading

    def drain() -> None:
        while True:
            b = os.read(r, 65536)
            if not b:
                return
            got.extend(b)

    t = threading.Thread(target=drain)
    t.start()
    try:
        assert dropin.main(["-i", src, "-o", str(w)]) == 0
    finally:
        os.close(w)
        t.join(10)
        os.close(r)
    assert calls == []
    assert len(got) > 0


def test_failed_conversion_syncs_nothing_and_leaves_nothing(tmp_path, calls) -> None:
    bad = tmp_path / "bad.img"
    from pathlib import Path

    bad.write_bytes(Path(_legacy(tmp_path)).read_bytes()[:5000])
    out = tmp_path / "new.img"
    assert main(["convert", "-q", str(bad), str(out)]) == 1
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.img", "old.img"]
