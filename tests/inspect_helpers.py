"""Helpers for test_info.py and test_dump.py: images built with the writers
from explicit values (so the expectations come from what the test gave the
writer), the schemas, and small runners."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jsonschema

from xenstream.consumers.dump import DumpRow, records
from xenstream.consumers.info import ImageInfo, summary
from xenstream.formats import hvm, libxc
from xenstream.io import Source
from xenstream.writers.legacy import Expected, LegacySpec, write_legacy
from xenstream.writers.v2 import ImageSpec, LibxcWriter, LibxlWriter, write_image

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "src/xenstream/schema"
INFO_SCHEMA = json.loads((SCHEMA_DIR / "info.schema.json").read_text())
DUMP_SCHEMA = json.loads((SCHEMA_DIR / "dump.schema.json").read_text())
XENSTREAM = os.path.join(os.path.dirname(sys.executable), "xenstream")

XTAB, BROKEN, XALLOC = libxc.PT_XTAB, libxc.PT_BROKEN, libxc.PT_XALLOC


def put(tmp_path: Path, data: bytes, name: str = "img") -> Path:
    n = 0
    p = tmp_path / name
    while p.exists():
        n += 1
        p = tmp_path / f"{name}{n}"
    p.write_bytes(data)
    return p


def build(fn: Any) -> bytes:
    out = io.BytesIO()
    fn(out)
    return out.getvalue()


def image(**kw: Any) -> bytes:
    kw.setdefault("pages", 16)
    return build(lambda o: write_image(o, ImageSpec(**kw)))


def legacy(**kw: Any) -> Tuple[bytes, Expected]:
    kw.setdefault("pages", 16)
    f = io.BytesIO()
    exp = write_legacy(f, LegacySpec(**kw))
    return f.getvalue(), exp


def info_of(path: Path, **kw: Any) -> ImageInfo:
    """summary() of a file; its JSON document must validate."""
    info = summary(str(path), **kw)
    jsonschema.validate(info.to_json(), INFO_SCHEMA)
    return info


def info_of_pipe(data: bytes, **kw: Any) -> ImageInfo:
    """summary() of the same bytes read from a pipe (no seeking, every byte read)."""
    from pipe_helpers import feeder

    r, w = os.pipe()
    t = feeder(w, data)
    try:
        with Source(r, name="pipe") as src:
            assert not src.seekable
            info = summary(src, **kw)
    finally:
        os.close(r)
        t.join()
    jsonschema.validate(info.to_json(), INFO_SCHEMA)
    return info


def rows_of(path: Path, **kw: Any) -> List[DumpRow]:
    """records() of a file; every row's JSON must validate."""
    out = list(records(str(path), **kw))
    for r in out:
        jsonschema.validate(json.loads(json.dumps(r.to_json())), DUMP_SCHEMA)
    return out


def run(argv: Sequence[str], *, expect: Optional[int] = None,
        stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    p = subprocess.run(list(argv), stdin=stdin, capture_output=True, timeout=120)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out + err, err
    if expect is not None:
        assert p.returncode == expect, (argv, p.returncode, out, err)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# -- a live-migration-like libxc stream with explicit values ----------------------------

#: pfn lists of its PAGE_DATA records and the type of each entry
LIVE_RECORDS: List[Tuple[List[int], List[int]]] = [
    (list(range(32)), [0] * 32),  # the first iteration
    ([40, 41, 42], [XTAB, BROKEN, XALLOC]),  # no data: a hole, a broken page, allocate only
    ([0, 1, 2, 3, 50], [0] * 5),  # dirty pages resent, one new
    ([5, 7, 5], [0, 0, 0]),  # resent, twice for pfn 5
]
LIVE_TSC = {"mode": 2, "khz": 1_500_000, "nsec": 987_654, "incarnation": 5}
LIVE_PARAMS = {1: 0x3F, 9: 1, 17: 0x3C, 26: 7}
LIVE_VCPUS = 3
LIVE_CPUID = [(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
              (1, 0xFFFFFFFF, 0x806EC, 0, 0, 0),
              (7, 0, 0, 0, 0, 0)]
LIVE_MSRS = [(0xCE, 0), (0x10A, 0)]


def live_libxc(w: LibxcWriter, *, end: bool = True, verify_resend: bool = False) -> None:
    w.headers("hvm")
    w.cpuid_policy(LIVE_CPUID)
    w.msr_policy(LIVE_MSRS)
    w.static_data_end()
    for pfns, types in LIVE_RECORDS:
        w.page_data(pfns, types)
    if verify_resend:
        w.verify()
        w.page_data(list(range(32)))
    w.tsc_info(**LIVE_TSC)
    w.hvm_context(hvm.sample_context(LIVE_VCPUS))
    w.hvm_params(LIVE_PARAMS)
    if end:
        w.end()


def live_expected() -> Dict[str, Any]:
    """What LIVE_RECORDS mean, counted here from the lists given to the writer."""
    seen: Dict[int, int] = {}
    by_type: Dict[int, int] = {}
    data = 0
    for pfns, types in LIVE_RECORDS:
        for p, t in zip(pfns, types):
            by_type[t] = by_type.get(t, 0) + 1
            if t in (XTAB, BROKEN, XALLOC):
                continue
            data += 1
            seen[p] = seen.get(p, 0) + 1
    return {"entries": sum(len(p) for p, _ in LIVE_RECORDS), "data": data,
            "by_type": by_type, "resident": len(seen),
            "copies": sum(n - 1 for n in seen.values()),
            "twice": sum(1 for n in seen.values() if n > 1),
            "highest": max(p for pfns, _ in LIVE_RECORDS for p in pfns)}


def live_stream(**kw: Any) -> bytes:
    return build(lambda o: live_libxc(LibxcWriter(o), **kw))


# -- a checkpointed (Remus) libxl stream, cut inside its third checkpoint -------------------

#: per checkpoint: pfns sent, vcpus in the HVM context, TSC incarnation, params, qemu blob
REMUS = [
    (list(range(24)), 2, 11, {1: 0x17, 17: 0x16}, b"QEVM\0\0\0\3" + b"\1" * 24),
    ([3, 4, 5, 30], 3, 12, {1: 0x17, 17: 0x15, 9: 1}, b"QEVM\0\0\0\3" + b"\2" * 40),
    ([6, 7, 31], 1, 13, {1: 0x99}, b"QEVM\0\0\0\3" + b"\3" * 8),
]


def remus_stream(*, cut: bool = True, colo: bool = False) -> bytes:
    """Checkpoints 1 and 2 complete; with ``cut``, the stream ends inside the
    HVM context of checkpoint 3 (what a dying primary leaves)."""
    out = io.BytesIO()
    lw = LibxlWriter(out)
    lw.header()
    lw.libxc_context()
    w = lw.libxc()
    w.headers("hvm")
    w.cpuid_policy()
    w.msr_policy()
    w.static_data_end()
    cut_at = 0
    for k, (pfns, vcpus, inc, params, qemu) in enumerate(REMUS):
        w.page_data(pfns)
        w.tsc_info(incarnation=inc)
        if k == 2:
            cut_at = out.tell() + 100  # inside the HVM_CONTEXT record
        w.hvm_context(hvm.sample_context(vcpus))
        w.hvm_params(params)
        w.checkpoint()
        lw.xenstore_data({f"physmap/{k}/size": "10"})
        lw.emulator_context(qemu)
        lw.checkpoint_end()
        if colo:
            lw.checkpoint_state(0)
    data = out.getvalue()
    return data[:cut_at] if cut else data
