"""Input handling (xenstream.io.Source), the shared-descriptor contract and the
command-line front ends (``xenstream``, ``verify-stream-v2``).

Streams are built with the writer API; pipes are fed by a thread that writes
with plain ``os.write`` calls (down to one byte per call), so correctness
never depends on timing: whatever way the kernel splits the data, the reader
must see exactly the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

import pipe_helpers
from xenstream.consumers.verify import Result, verify
from xenstream.errors import TruncatedError
from xenstream.findings import ERROR, RESTORE, WARNING
from xenstream.formats import libxc
from xenstream.io import Source
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    write_image,
    write_libxc,
    xl_header,
)

BIN = os.path.dirname(sys.executable)


def _exe(name: str) -> str:
    cand = os.path.join(BIN, name)
    if os.path.exists(cand):
        return cand
    found = shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


XENSTREAM = _exe("xenstream")
V2 = _exe("verify-stream-v2")

#: how -v tells that the PAGE_DATA line stands for 4 records (64 pages)
SQUASHED = (r"(\.\.\. 3 more PAGE_DATA records \(\d+ bytes in all\))"
            r"|(#\d+\s+PAGE_DATA\s+4 records, 64 pages)")
ERROR_LINE = r"offset 0x[0-9a-f]+, record #\d+ \([A-Z0-9_|x]+\): \S.*"
KIB = 1024
MIB = 1024 * 1024


# -- helpers -----------------------------------------------------------------


def image(**kw: Any) -> bytes:
    kw.setdefault("pages", 16)
    b = io.BytesIO()
    write_image(b, ImageSpec(**kw))
    return b.getvalue()


def put(tmp_path: Path, data: bytes, name: str = "img") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def verify_path(path: Path, **kw: Any) -> Result:
    with Source.open(str(path)) as src:
        return verify(src, **kw)


def rules(res: Result) -> List[Tuple[str, str]]:
    return [(f.rule, f.severity) for f in res.findings]


def feeder(fd: int, data: bytes, chunk: int = 1) -> threading.Thread:
    """Write ``data`` to the pipe ``fd`` one byte per os.write by default."""
    return pipe_helpers.feeder(fd, data, chunk)


read_all = pipe_helpers.read_all


def rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def measured(fn: Callable[[], Any]) -> Tuple[Any, int, int]:
    """Run ``fn``; return (its result, tracemalloc peak, /proc/self/io rchar delta)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = rchar()
        out = fn()
        delta = rchar() - before
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak, delta


def run(argv: Sequence[str], *, input: Optional[bytes] = None, stdin: Any = None,
        pass_fds: Sequence[int] = (), expect: Optional[int] = None) -> subprocess.CompletedProcess:
    """Run a command; never a traceback, on either stream."""
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    p = subprocess.run(list(argv), input=input, stdin=stdin, capture_output=True,
                       pass_fds=tuple(pass_fds), timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    res = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if expect is not None:
        assert p.returncode == expect, (argv, p.returncode, out, err)
    return res


def run_many(jobs: Sequence[Tuple[Sequence[str], int]]) -> List[subprocess.CompletedProcess]:
    """Run independent commands concurrently (each checked as by run())."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        futs = [ex.submit(run, argv, expect=rc) for argv, rc in jobs]
        return [f.result() for f in futs]


def run_piped(argv: Sequence[str], data: bytes, chunk: int = 1, **kw: Any) -> subprocess.CompletedProcess:
    """Run with stdin a pipe fed ``chunk`` bytes per write by a thread."""
    r, w = os.pipe()
    t = feeder(w, data, chunk)
    try:
        return run(argv, stdin=r, **kw)
    finally:
        os.close(r)
        t.join(30)


# -- 1. Source: exact reads ------------------------------------------------------


def test_source_exact_reads_across_short_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.read capped at 3 bytes per call: Source.read still returns exactly n
    bytes, and never takes a byte beyond them from the pipe."""
    data = bytes(range(256)) * 2
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    real_read = os.read
    calls: List[int] = []

    def short_read(fd: int, n: int) -> bytes:
        calls.append(n)
        return real_read(fd, min(n, 3))

    monkeypatch.setattr(os, "read", short_read)
    src = Source(r)
    assert not src.seekable
    assert src.read(37) == data[:37]
    assert src.read(1) == data[37:38]
    assert src.pos == 38
    assert len(calls) >= 13  # 37 bytes, 3 at a time: the loop really ran
    monkeypatch.setattr(os, "read", real_read)
    # no read-ahead: the next byte in the pipe is byte 38
    assert real_read(r, 5) == data[38:43]
    monkeypatch.setattr(os, "read", short_read)
    src.skip(7)
    assert src.read(4) == data[50:54]
    with pytest.raises(TruncatedError) as ei:
        src.read(1000, what="thing")
    assert ei.value.got == len(data) - 54
    assert ei.value.wanted == 1000
    src.close()
    os.close(r)


def test_source_one_byte_writer_thread_exact_and_no_overread() -> None:
    data = bytes(range(251)) * 40  # 10040 bytes, not a multiple of anything
    r, w = os.pipe()
    t = feeder(w, data, 1)
    src = Source(r)
    got = [src.read(n) for n in (1, 7, 8, 1000, 4096)]
    assert b"".join(got) == data[: 1 + 7 + 8 + 1000 + 4096]
    assert src.pos == 5112 and src.bytes_read == 5112
    src.close()
    assert read_all(r) == data[5112:]
    t.join(30)
    os.close(r)


def test_source_seekable_offset_left_at_pos(tmp_path: Path) -> None:
    p = put(tmp_path, bytes(range(256)) * 256)  # 64 KiB
    fd = os.open(p, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        with Source.open(fd) as src:
            assert src.seekable and src.start == 100 and src.size == 65536
            assert src.read(5) == bytes(range(100, 105))
            src.skip(30000)
            assert src.read(2) == bytes([(30105) % 256, (30106) % 256])
            assert src.remaining() == 65536 - 30107
        assert os.lseek(fd, 0, os.SEEK_CUR) == 30107
    finally:
        os.close(fd)


def test_api_verifies_stream_through_pipe_one_byte_writes() -> None:
    data = image(envelope="xl")
    assert len(data) > 64 * KIB  # more than a pipe buffer
    r, w = os.pipe()
    t = feeder(w, data, 1)
    with Source.open(r) as src:
        res = verify(src)
        assert src.pos == len(data)
    t.join(30)
    os.close(r)
    assert res.valid, rules(res)
    assert res.findings == []
    assert res.layers == ["xl", "libxl", "libxc"]
    assert res.summary["bytes"] == len(data)


@pytest.mark.parametrize("argv", [[XENSTREAM, "verify", "-"], [V2]], ids=["xenstream", "v2"])
def test_cli_verifies_stdin_pipe_one_byte_writes(argv: List[str]) -> None:
    data = image(envelope="xl")
    p = run_piped(argv, data, 1, expect=0)
    assert p.stderr == ""


def test_cli_stdin_pipe_detects_truncation_not_short_read() -> None:
    """A truncated stream through a 1-byte pipe is 'truncated' at the right
    place, and a full one is not (short reads are not truncation)."""
    data = image(envelope="libxc")
    p = run_piped([V2], data[:-4], 1, expect=1)
    lines = p.stderr.splitlines()
    assert len(lines) == 1
    # the drop-in names stdin as upstream's fd 0
    assert re.fullmatch(r"fd 0: offset 0x[0-9a-f]+, record #7 header: .*end of stream.*",
                        lines[0]), lines


# -- 2. shared file descriptor contract ------------------------------------------------

TAIL = b"NEXT\x00\xff\x01" + bytes(range(256))
XS_TAIL = b"QemuDeviceModelRecord\n" + struct.pack(">I", 300) + bytes(range(200)) * 2


def _stream(kind: str) -> bytes:
    if kind == "libxc":
        return image(envelope="libxc", guest="pv")
    if kind == "libxl":
        return image(envelope="libxl", guest="hvm")
    return image(envelope="xl", guest="hvm")


def _fd_args(how: str, fd: int) -> List[str]:
    return ["--in", str(fd)] if how == "--in" else ["-i", f"/dev/fd/{fd}"]


@pytest.mark.parametrize("how", ["--in", "-i/dev/fd"])
@pytest.mark.parametrize("kind", ["libxc", "libxl", "xl"])
def test_shared_fd_regular_file(tmp_path: Path, kind: str, how: str) -> None:
    stream = _stream(kind)
    p = put(tmp_path, stream + TAIL)
    fd = os.open(p, os.O_RDONLY)
    try:
        out = run([V2, *_fd_args(how, fd)], pass_fds=[fd], expect=0)
        assert out.stderr == ""
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(stream)
        assert os.read(fd, 4096) == TAIL
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["--in", "-i/dev/fd"])
@pytest.mark.parametrize("kind", ["libxc", "libxl", "xl"])
def test_shared_fd_pipe(kind: str, how: str) -> None:
    stream = _stream(kind)
    r, w = os.pipe()
    t = feeder(w, stream + TAIL, 4096)
    try:
        out = run([V2, *_fd_args(how, r)], pass_fds=[r], expect=0)
        assert out.stderr == ""
        assert read_all(r) == TAIL
    finally:
        t.join(30)
        os.close(r)


def test_shared_fd_xenserver_tail_file_at_offset(tmp_path: Path) -> None:
    """XenServer-like: the caller's fd is positioned after its own header; a bare
    libxc stream is followed by the qemu record, which the caller reads next."""
    prefix = b"XenServer-suspend-image-header\n" + b"\0" * 17
    stream = image(envelope="libxc", guest="hvm")
    p = put(tmp_path, prefix + stream + XS_TAIL)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.lseek(fd, len(prefix), os.SEEK_SET)
        run([V2, "--in", str(fd)], pass_fds=[fd], expect=0)
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(prefix) + len(stream)
        assert os.read(fd, 100000) == XS_TAIL
    finally:
        os.close(fd)


def test_shared_fd_xenserver_tail_pipe_one_byte_writes() -> None:
    stream = image(envelope="libxc", guest="hvm")
    r, w = os.pipe()
    t = feeder(w, stream + XS_TAIL, 1)
    try:
        run([V2, "-i", f"/dev/fd/{r}"], pass_fds=[r], expect=0)
        assert read_all(r) == XS_TAIL
    finally:
        t.join(30)
        os.close(r)


def test_shared_fd_api_pipe_and_file(tmp_path: Path) -> None:
    stream = _stream("xl")
    r, w = os.pipe()
    t = feeder(w, stream + XS_TAIL, 1000)
    with Source.open(r) as src:
        res = verify(src, check_trailing=False)
    assert res.valid, rules(res)
    assert read_all(r) == XS_TAIL
    t.join(30)
    os.close(r)
    p = put(tmp_path, stream + XS_TAIL)
    fd = os.open(p, os.O_RDONLY)
    try:
        with Source.open(f"/dev/fd/{fd}") as src:
            res = verify(src)
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(stream)
        assert os.read(fd, 100000) == XS_TAIL
    finally:
        os.close(fd)
    # on a file, the API reports the extra bytes as a warning (not an error)
    assert res.valid
    assert rules(res) == [("trailing-data", WARNING)]
    assert str(len(XS_TAIL)) in res.findings[0].message


# -- 3. hostile lengths: no reading or allocating anywhere near them -------------------


def _libxc_huge(tail: int) -> bytes:
    b = io.BytesIO()
    w = LibxcWriter(b)
    w.headers("hvm")
    b.write(struct.pack("<II", libxc.REC_TYPE_PAGE_DATA, 0xFFFFFFF0))
    b.write(b"\xab" * tail)
    return b.getvalue()


def _libxl_huge_emulator_context(tail: int) -> bytes:
    b = io.BytesIO()
    lw = LibxlWriter(b)
    lw.header()
    lw.libxc_context()
    write_libxc(lw.libxc(), ImageSpec(envelope="libxl", pages=8), lw)
    lw.xenstore_data({"physmap/x/name": "vga"})
    lw.emulator_context(b"QEVM\0\0\0\3", length=0xFFFFFFF0)  # body 16 bytes, claims ~4 GiB
    b.write(b"\xcd" * tail)
    return b.getvalue()


def test_libxc_huge_length_short_file_is_length_limit(tmp_path: Path) -> None:
    data = _libxc_huge(256 * KIB)
    p = put(tmp_path, data)
    holder: Dict[str, int] = {}

    def go() -> Result:
        with Source.open(str(p)) as src:
            res = verify(src)
            holder["bytes_read"] = src.bytes_read
        return res

    res, peak, rc = measured(go)
    assert [(f.rule, f.severity, f.authority) for f in res.findings] == [
        ("length-limit", ERROR, RESTORE)]
    f = res.findings[0]
    assert f.offset == 40 and "PAGE_DATA" in f.what and f.layer == "libxc"
    assert "0xfffffff0" in f.message
    assert peak < MIB, peak
    assert holder["bytes_read"] < 64 * KIB, holder
    assert rc < 64 * KIB, rc


def test_libxl_huge_emulator_context_short_file_is_truncated(tmp_path: Path) -> None:
    data = _libxl_huge_emulator_context(256 * KIB)
    p = put(tmp_path, data)
    holder: Dict[str, int] = {}

    def go() -> Result:
        with Source.open(str(p)) as src:
            res = verify(src)
            holder["bytes_read"] = src.bytes_read
        return res

    res, peak, rc = measured(go)
    assert [(f.rule, f.severity) for f in res.findings] == [("truncated", ERROR)]
    f = res.findings[0]
    assert "EMULATOR_CONTEXT" in f.what and f.layer == "libxl"
    assert not res.valid
    assert peak < MIB, peak
    assert holder["bytes_read"] < 64 * KIB, holder
    assert rc < 64 * KIB, rc


def test_libxl_huge_emulator_context_pipe_is_truncated_bounded_memory() -> None:
    data = _libxl_huge_emulator_context(5)
    r, w = os.pipe()
    t = feeder(w, data, 8192)

    def go() -> Result:
        with Source.open(r) as src:
            return verify(src)

    try:
        res, peak, _ = measured(go)
    finally:
        t.join(30)
        os.close(r)
    assert [(f.rule, f.severity) for f in res.findings] == [("truncated", ERROR)]
    assert "EMULATOR_CONTEXT" in res.findings[0].what
    assert peak < MIB, peak


def test_cli_huge_length_pipe_exit_1() -> None:
    p = run_piped([V2], _libxc_huge(3), 4096, expect=1)
    assert len(p.stderr.splitlines()) == 1
    assert "PAGE_DATA" in p.stderr and "0xfffffff0" in p.stderr


# -- 4. seekable input: page data is skipped, not read ---------------------------------


@pytest.mark.parametrize("envelope", ["libxc", "xl"])
def test_seekable_skips_page_data(tmp_path: Path, envelope: str) -> None:
    p = put(tmp_path, image(envelope=envelope, pages=4096, batch=1024, fast_pages=True))
    size = p.stat().st_size
    assert size > 16 * MIB
    holder: Dict[str, int] = {}

    def go() -> Result:
        with Source.open(str(p)) as src:
            res = verify(src)
            holder["bytes_read"] = src.bytes_read
        return res

    res, _, rc = measured(go)
    assert res.valid and res.findings == [], rules(res)
    assert res.summary["pages"] == 4096 and res.summary["page_records"] == 4
    assert holder["bytes_read"] / size < 0.05, holder
    assert rc / size < 0.05, rc


# -- 5. the xenstream command -------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    [XENSTREAM, "--help"],
    [XENSTREAM, "verify", "--help"],
    [XENSTREAM, "sample", "--help"],
    [V2, "--help"],
    [sys.executable, "-m", "xenstream", "--help"],
], ids=["xenstream", "verify", "sample", "v2", "python-m"])
def test_help(argv: List[str]) -> None:
    p = run(argv, expect=0)
    assert "example" in p.stdout.lower()
    assert "usage" in p.stdout.lower()
    assert p.stderr == ""


@pytest.mark.parametrize("argv", [
    [XENSTREAM],
    [XENSTREAM, "frobnicate"],
    [XENSTREAM, "verify", "--format", "elf", "x"],
    [XENSTREAM, "verify", "a", "b"],
    [XENSTREAM, "sample", "--pages", "3", "-o", "/nonexistent/x"],
    [V2, "--bogus"],
    [V2, "-f", "qcow2"],
], ids=["none", "command", "format", "two-files", "pages", "v2-option", "v2-format"])
def test_usage_errors_exit_2(argv: List[str]) -> None:
    p = run(argv, expect=2)
    assert p.stderr.strip()
    assert p.stdout == ""


@pytest.mark.parametrize("argv_of", [
    lambda f: [XENSTREAM, "verify", f],
    lambda f: [V2, "-i", f],
], ids=["xenstream", "v2"])
def test_missing_file_one_line_exit_2(tmp_path: Path, argv_of: Callable[[str], List[str]]) -> None:
    missing = str(tmp_path / "nope.img")
    p = run(argv_of(missing), expect=2)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert "nope.img" in lines[0]
    assert p.stdout == ""


def test_v2_unopened_fd_exit_2() -> None:
    fd = 987
    p = run([V2, "-i", str(fd)], expect=2)
    assert len(p.stderr.splitlines()) == 1 and str(fd) in p.stderr


def _invalid_libxc() -> Tuple[bytes, int]:
    """A libxc HVM stream with exactly two record errors."""
    b = io.BytesIO()
    w = LibxcWriter(b)
    w.headers("hvm")
    w.static_data_end()
    w.page_data([0, 1, 2], [0, 5, 0])  # type 5 does not exist
    w.tsc_info(mode=3)  # PVRDTSCP, refused since 4.12
    w.hvm_context()
    w.hvm_params({1: 10})
    w.end()
    return b.getvalue(), 2


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    good = put(tmp_path, image(envelope="xl"), "good")
    bad = put(tmp_path, _invalid_libxc()[0], "bad")
    for p in run_many([([XENSTREAM, "verify", "-q", str(good)], 0),
                       ([XENSTREAM, "verify", "-q", str(bad)], 1),
                       ([V2, "-q", "-i", str(good)], 0),
                       ([V2, "-q", "-v", "-i", str(bad)], 1)]):
        assert p.stdout == "" and p.stderr == "", p.args


def test_verbose_lists_records_page_data_squashed(tmp_path: Path) -> None:
    f = put(tmp_path, image(envelope="xl", pages=64, batch=16))
    p = run([XENSTREAM, "verify", "-v", str(f)], expect=0)
    out = p.stdout
    rec_lines = re.findall(r"^0x[0-9a-f]+\s+(\w+)\s+#(\d+)\s+(\S+)\s+(\S.*)$", out, re.M)
    names = [n for _, _, n, _ in rec_lines]
    assert names.count("PAGE_DATA") == 1  # four records, one line (+ a "more" line)
    assert re.search(SQUASHED, out), out
    for want in ("LIBXC_CONTEXT", "X86_CPUID_POLICY", "STATIC_DATA_END", "HVM_CONTEXT",
                 "HVM_PARAMS", "EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT"):
        assert want in names, (want, names)
    assert names.count("END") == 2  # libxc END and libxl END
    for header in ("xl header", "libxl header", "libxc image header", "libxc domain header"):
        assert header in out
    assert out.rstrip().splitlines()[-1].startswith(f"{f}: valid: xl (STREAMv2) -> libxl v2 -> libxc v3")
    # the record numbers are consecutive across layers (squashed ones skipped)
    idx = [int(i) for _, i, _, _ in rec_lines]
    assert idx == sorted(idx) and idx[0] == 0
    assert p.stderr == ""


def test_json_is_valid_and_matches_schema(tmp_path: Path) -> None:
    good = put(tmp_path, image(envelope="xl"), "good")
    bad = put(tmp_path, _invalid_libxc()[0], "bad")
    p = run([XENSTREAM, "verify", "--json", str(good)], expect=0)
    doc = json.loads(p.stdout)
    assert doc["valid"] is True and doc["file"] == str(good)
    assert doc["layers"] == ["xl", "libxl", "libxc"] and doc["findings"] == []
    p2 = run([XENSTREAM, "verify", "--json", "-v", str(bad)], expect=1)
    doc2 = json.loads(p2.stdout)  # -v does not break the JSON
    assert doc2["valid"] is False
    assert sorted(f["rule"] for f in doc2["findings"]) == ["page-data-type", "tsc-mode-pvrdtscp"]
    assert {f["severity"] for f in doc2["findings"]} == {"error"}
    import jsonschema

    schema_path = Path(__file__).resolve().parents[1] / "src/xenstream/schema/verify.schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(doc, schema)
    jsonschema.validate(doc2, schema)


def test_invalid_stream_one_line_per_error(tmp_path: Path) -> None:
    data, nerr = _invalid_libxc()
    f = put(tmp_path, data, "bad.img")
    res = verify_path(f)
    assert len(res.errors) == nerr
    for argv in ([XENSTREAM, "verify", str(f)], [V2, "-i", str(f)]):
        p = run(argv, expect=1)
        lines = p.stderr.splitlines()
        assert len(lines) == nerr, (argv, p.stderr)
        for line, finding in zip(lines, res.errors):
            assert re.fullmatch(re.escape(str(f)) + ": " + ERROR_LINE, line), line
            assert f"offset {finding.offset:#x}, record #{finding.record_index} " \
                   f"({finding.record_type}): " in line
        assert "PAGE_DATA" in lines[0] and "X86_TSC_INFO" in lines[1]
    p = run([XENSTREAM, "verify", str(f)], expect=1)
    assert re.fullmatch(re.escape(str(f)) + r": INVALID \(2 errors\): libxc v3, HVM.*\n", p.stdout)


def test_header_error_says_header(tmp_path: Path) -> None:
    b = io.BytesIO()
    w = LibxcWriter(b)
    w.image_header(version=4)
    w.domain_header("hvm", page_shift=13)
    f = put(tmp_path, b.getvalue(), "hdr.img")
    p = run([XENSTREAM, "verify", str(f)], expect=1)
    lines = p.stderr.splitlines()
    assert lines[0] == (f"{f}: offset 0x0, header (libxc image header): expected version 2 or 3, "
                        "found 4")
    assert lines[1] == (f"{f}: offset 0x18, header (libxc domain header): expected page_shift "
                        "12, found 13")
    assert lines[2] == (f"{f}: offset 0x28, record #0: expected a record header, found end of "
                        "stream (no END record)")
    assert len(lines) == 3


@pytest.mark.parametrize("pv", [False, True], ids=["hvm", "pv"])
def test_sample_writes_valid_image(tmp_path: Path, pv: bool) -> None:
    out = tmp_path / "s.xl"
    p = run([XENSTREAM, "sample", "-o", str(out), "--pages", "64", *(["--pv"] if pv else [])],
            expect=0)
    assert p.stdout.startswith(f"wrote {out}")
    res = verify_path(out)
    assert res.valid and res.findings == [], rules(res)
    assert res.layers == ["xl", "libxl", "libxc"]
    assert res.summary["guest_type"] == ("pv" if pv else "hvm")
    assert res.summary["pages"] == 64 and len(res.summary["vcpus"]) == 2
    if not pv:
        assert res.summary["libxl"]["xenstore_keys"] > 0
    q = run([XENSTREAM, "verify", str(out)], expect=0)
    assert q.stdout.startswith(f"{out}: valid: xl (STREAMv2) -> libxl v2 -> libxc v3")


def test_sample_to_stdout_pipe() -> None:
    p = subprocess.run([XENSTREAM, "sample", "--pages", "16"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0 and b"Traceback" not in p.stderr
    q = run([XENSTREAM, "verify", "-"], input=p.stdout, expect=0)
    assert q.stdout.startswith("<stdin>: valid")


GARBAGE = bytes((i * 73 + 41) % 256 for i in range(4096))


@pytest.mark.parametrize("prog", ["xenstream", "v2"])
@pytest.mark.parametrize("case", ["garbage", "empty", "empty-stdin", "directory", "dev-null"])
def test_bad_inputs_no_traceback(tmp_path: Path, prog: str, case: str) -> None:
    want = 1
    stdin_data: Optional[bytes] = None
    if case == "garbage":
        target = str(put(tmp_path, GARBAGE))
    elif case == "empty":
        target = str(put(tmp_path, b""))
    elif case == "empty-stdin":
        target, stdin_data = "-", b""
    elif case == "directory":
        target, want = str(tmp_path), 2
    else:
        target = "/dev/null"
    if prog == "xenstream":
        argv = [XENSTREAM, "verify", target]
    else:
        argv = [V2] if target == "-" else [V2, "-i", target]
    p = run(argv, input=stdin_data, expect=want)
    err = p.stderr.splitlines()
    assert len(err) == 1, p.stderr
    if want == 1:
        name = target
        if target == "-":
            name = "<stdin>" if prog == "xenstream" else "fd 0"
        assert err[0].startswith(f"{name}: offset 0x0, header: ")
        if case == "garbage":
            assert "expected a Xen save image" in err[0]
        else:
            assert "end of stream" in err[0] or "empty input" in err[0]
    else:
        assert "directory" in err[0]


# -- 6. verify-stream-v2 as a drop-in ---------------------------------------------------------


def test_v2_input_forms(tmp_path: Path) -> None:
    f = put(tmp_path, image(envelope="libxl"))
    run_many([([V2, "-i", str(f)], 0), ([V2, "--in", str(f)], 0)])
    with open(f, "rb") as fh:
        out = run([V2], stdin=fh, expect=0)  # default: stdin
        assert out.stdout == "" and out.stderr == ""
    fd = os.open(f, os.O_RDONLY)
    try:
        run([V2, "-i", str(fd)], pass_fds=[fd], expect=0)
    finally:
        os.close(fd)
    # a bare number that is a file name is taken as an fd, as upstream does
    bad = put(tmp_path, _invalid_libxc()[0])
    with open(bad, "rb") as fh:
        run([V2, "-i", "0"], stdin=fh, expect=1)


@pytest.mark.parametrize("forced,kind", [("libxc", "xl"), ("libxl", "libxc"), ("xl", "libxl")])
def test_v2_forced_format_contradiction(tmp_path: Path, forced: str, kind: str) -> None:
    f = put(tmp_path, image(envelope=kind))
    p = run([V2, "-f", forced, "-i", str(f)], expect=1)
    lines = p.stderr.splitlines()
    assert len(lines) == 1
    assert f"expected a {forced} stream" in lines[0] and f"{kind} stream" in lines[0]
    assert lines[0].startswith(f"{f}: offset 0x0, header: ")
    if forced == "libxc":
        q = run([XENSTREAM, "verify", "--format", forced, str(f)], expect=1)
        assert f"expected a {forced} stream" in q.stderr and f"{kind} stream" in q.stderr


def test_v2_forced_format_agreeing(tmp_path: Path) -> None:
    jobs = []
    for fmt in ("libxc", "libxl", "xl"):
        f = put(tmp_path, image(envelope=fmt), fmt)
        jobs.append(([V2, "--format" if fmt == "xl" else "-f", fmt, "-i", str(f)], 0))
    run_many(jobs)


def test_v2_verbose_and_quiet(tmp_path: Path) -> None:
    f = put(tmp_path, image(envelope="xl", pages=64, batch=16))
    p = run([V2, "-v", "-i", str(f)], expect=0)
    assert "EMULATOR_XENSTORE_DATA" in p.stdout and "HVM_CONTEXT" in p.stdout
    assert p.stdout.count("PAGE_DATA") in (1, 2)  # squashed: not one line per record
    assert re.search(SQUASHED, p.stdout), p.stdout
    assert p.stdout.rstrip().splitlines()[-1].startswith(f"{f}: valid: xl (STREAMv2)")
    q = run([V2, "-q", "-i", str(f)], expect=0)
    assert q.stdout == "" and q.stderr == ""


def test_v2_syslog(tmp_path: Path) -> None:
    good = put(tmp_path, image(envelope="libxc"), "good")
    bad = put(tmp_path, _invalid_libxc()[0], "bad")
    run_many([([V2, "--syslog", "-v", "-i", str(good)], 0),
              ([V2, "--syslog", "-i", str(bad)], 1),
              ([V2, "--syslog", "-q", "-i", str(bad)], 1)])


def test_v2_rejects_legacy_images(tmp_path: Path) -> None:
    legacy = struct.pack("<QQ", 0x20000, 2**64 - 1) + GARBAGE
    bare = put(tmp_path, legacy, "bare")
    b = io.BytesIO()
    xl_header(b, {"c_info": {"type": "pv"}}, streamv2=False)
    b.write(legacy)
    inxl = put(tmp_path, b.getvalue(), "xl")
    for f, fmt in ((bare, None), (inxl, "xl")):
        argv = [V2, "-i", str(f)] + (["-f", fmt] if fmt else [])
        p = run(argv, expect=1)
        assert "legacy stream: convert it" in p.stderr
        assert "64-bit" in p.stderr and "PV" in p.stderr
    p = run([V2, "-f", "libxc", "-i", str(bare)], expect=1)
    assert "expected a libxc stream" in p.stderr


def test_v2_data_after_end_is_fine_but_xenstream_warns(tmp_path: Path) -> None:
    f = put(tmp_path, image(envelope="libxc") + XS_TAIL)
    p = run([V2, "-i", str(f)], expect=0)
    assert p.stderr == ""
    q = run([XENSTREAM, "verify", str(f)], expect=0)
    assert "warning" in q.stdout and f"{len(XS_TAIL)} bytes after the final END" in q.stdout
