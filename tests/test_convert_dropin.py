"""The ``convert-legacy-stream`` drop-in, driven the way its callers drive it.

* libxl (``libxl_convert_callout.c``, xen-formats.md section 3.2): xl reads the
  xl header itself, then libxl execs ``$LIBXL_CONVERT_HELPER`` (or
  LIBEXEC/convert-legacy-stream) with ``--in FD --out PIPE_W --width <libxl's
  own width> --guest pv|hvm --format libxl``, both fds inherited, and reads
  the v2 stream from the pipe.
* XenServer's xenopsd (envelopes-facts.md A.8): after the 15-byte
  ``XenSavedDomain\\n`` it runs ``--in FD --out PIPE --width 32 --skip-qemu
  --guest-type hvm|pv --syslog --verbose`` on its main fd, then reads
  ``QemuDeviceModelRecord\\n`` + BE u32 length + qemu data from the SAME fd.
* The options of upstream's script (tools/python/scripts/convert-legacy-stream),
  the exit statuses (0 converted, 1 bad input, 2 usage/internal), and one
  regression test per upstream defect.

Streams come from :mod:`xenstream.writers.legacy` (whole streams, with the
``Expected`` content a correct converter must carry) and, for broken ones,
from its record-level ``LegacyWriter``.  The output is read back with
tests/v2read.py, which decodes record bodies by hand.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from v2read import V2Image, read_v2
from xenstream.cli import convert_legacy_stream as dropin
from xenstream.consumers.verify import verify
from xenstream.formats import hvm
from xenstream.io import Source
from xenstream.writers.legacy import (
    DEFAULT_PHYSMAP,
    Expected,
    LegacySpec,
    LegacyWriter,
    physmap_toolstack,
    write_legacy,
)
from xenstream.writers.v2 import ImageSpec, pv_vcpu_context, write_image

BIN = os.path.dirname(sys.executable)
_SEARCH = BIN + os.pathsep + os.environ.get("PATH", "")


def _exe(name: str) -> str:
    found = shutil.which(name, path=_SEARCH)
    assert found, f"console script {name} is not installed"
    return found


CLS = _exe("convert-legacy-stream")
XENSTREAM = _exe("xenstream")
PROG = "convert-legacy-stream"
TIMEOUT = 60

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"  # 32 bytes
XL_HDR_LEN = 48  # magic + byteorder, mandatory_flags, optional_flags, optional_data_len
XL_STREAMV2 = 1 << 1
XENOPSD_SIG = b"XenSavedDomain\n"
QEMU_XENSERVER = b"QemuDeviceModelRecord\n"
LIBXL_OPT_LEGACY = 1 << 1  # libxl header options bit 1: converted from a legacy stream
PT_XTAB = 0xF


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def legacy(spec: LegacySpec) -> Tuple[bytes, Expected]:
    f = io.BytesIO()
    exp = write_legacy(f, spec)
    return f.getvalue(), exp


def write_file(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_exact(fd: int, n: int) -> bytes:
    parts: List[bytes] = []
    got = 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_all(fd: int) -> bytes:
    parts = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(parts)
        parts.append(b)


class Drain(threading.Thread):
    """Reads a pipe's read end to EOF concurrently (no pipe-buffer deadlock)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = b""

    def run(self) -> None:
        self.data = read_all(self.fd)


class Feed(threading.Thread):
    """Writes ``data`` into a pipe's write end, then closes it."""

    def __init__(self, fd: int, data: bytes) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = data

    def run(self) -> None:
        view = memoryview(self.data)
        try:
            while view:
                view = view[os.write(self.fd, view[: 1 << 16]):]
        except BrokenPipeError:
            pass
        finally:
            os.close(self.fd)


class Run:
    def __init__(self, rc: int, out: bytes, err: str, stdout: bytes) -> None:
        self.rc = rc
        self.out = out  # what came through the output pipe
        self.err = err
        self.stdout = stdout


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line message, found {err!r}"
    assert lines[0].startswith(f"{PROG}: "), lines[0]
    return lines[0]


def spawn_to_pipe(args: Sequence[str], in_fd: int, *, argv0: str = CLS,
                  env: Optional[Dict[str, str]] = None, libxl_style: bool = False) -> Run:
    """Run the drop-in with ``--out <pipe write end>``; read the pipe while it runs.

    ``args`` may contain "{IN}" and "{OUT}" placeholders for the fd numbers.
    ``libxl_style``: clear CLOEXEC on both fds and let every inheritable fd
    through (libxl__exec), instead of subprocess's pass_fds.
    """
    r, w = os.pipe()
    argv = [argv0] + [a.replace("{IN}", str(in_fd)).replace("{OUT}", str(w)) for a in args]
    try:
        if libxl_style:
            os.set_inheritable(in_fd, True)
            os.set_inheritable(w, True)
            p = subprocess.Popen(argv, env=env, close_fds=False, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            p = subprocess.Popen(argv, env=env, pass_fds=(in_fd, w), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    drain = Drain(r)
    drain.start()
    try:
        stdout, stderr = p.communicate(timeout=TIMEOUT)
    finally:
        drain.join(TIMEOUT)
        os.close(r)
    err = stderr.decode(errors="replace")
    no_traceback(err)
    return Run(p.returncode, drain.data, err, stdout)


def run_cls(*args: str, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess:
    p = subprocess.run([CLS, *args], capture_output=True, stdin=subprocess.DEVNULL,
                       pass_fds=tuple(pass_fds), timeout=TIMEOUT)
    p.stderr = p.stderr.decode(errors="replace")
    no_traceback(p.stderr)
    return p


def run_inproc(*args: str) -> subprocess.CompletedProcess:
    """The drop-in's main() in this process (same code as the script, without
    the interpreter start-up): returncode, stdout (bytes), stderr (str)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = dropin.main(list(args))
        except SystemExit as e:  # argparse: usage errors and --version
            rc = e.code if isinstance(e.code, int) else 2
    p = subprocess.CompletedProcess([PROG, *args], rc, out.getvalue().encode(), err.getvalue())
    no_traceback(p.stderr)
    return p


def run_many(jobs: Sequence[Sequence[str]]) -> List[subprocess.CompletedProcess]:
    return [run_inproc(*a) for a in jobs]


def run_many_spawned(jobs: Sequence[Sequence[str]]) -> List[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        return list(ex.map(lambda a: run_cls(*a), jobs))


def verified(path: str, layers: List[str], *, trailing: int = 0,
             no_device_state: bool = False) -> None:
    """``path`` is a valid stream with exactly these layers and no error or
    warning (except, when ``trailing``, the trailing-data warning for that many
    bytes, and with ``no_device_state`` the warning that an HVM libxl stream
    has no EMULATOR_CONTEXT and no config to say it needs none)."""
    with Source.open(path) as s:
        res = verify(s)
    assert res.valid, res.summary
    bad = [(f.rule, f.severity, f.message) for f in res.findings if f.severity != "info"]
    if no_device_state:
        assert [b[:2] for b in bad][-1:] == [("libxl-emulator-unknown", "warning")], bad
        bad = bad[:-1]
    if trailing:
        assert [(r, s) for r, s, _ in bad] == [("trailing-data", "warning")], bad
        assert f"{trailing} bytes" in bad[0][2], bad
    else:
        assert bad == [], bad
    assert res.layers == layers


def physmap_pairs(exp: Expected) -> Dict[bytes, bytes]:
    """The xenstore keys libxl 4.5 restored the physmap toolstack record as."""
    d: Dict[bytes, bytes] = {}
    for phys, start, size, name in exp.physmap:
        base = b"physmap/%x" % phys
        d[base + b"/start_addr"] = b"%x" % start
        d[base + b"/size"] = b"%x" % size
        if name:
            d[base + b"/name"] = name
    return d


def assert_content(img: V2Image, exp: Expected, *, libxl: bool, version: int = 2) -> None:
    """The converted image carries exactly what the legacy stream did."""
    assert sorted(img.pages) == sorted(exp.pages)
    assert [p for p in exp.pages if img.pages[p] != exp.pages[p]] == []
    assert img.page_types == exp.page_types
    assert img.xtab == exp.xtab
    assert img.tsc == exp.tsc
    assert img.shared_info == exp.shared_info
    if exp.guest == "pv":
        assert img.headers["libxc domain header"]["type"] == 1
        assert img.pv_info == (exp.guest_width, 4 if exp.guest_width == 8 else 3)
        assert img.p2m == (0, exp.p2m_size - 1, exp.p2m_frames)
        assert sorted(img.vcpus) == sorted(exp.vcpus)
        for v, parts in exp.vcpus.items():
            assert sorted(img.vcpus[v]) == sorted(parts), v
            for k, blob in parts.items():
                assert img.vcpus[v][k] == blob, (v, k)
        assert img.hvm_context is None
        assert img.emulator_context is None
    else:
        assert img.headers["libxc domain header"]["type"] == 2
        assert img.vcpus == {}
        assert img.hvm_params == exp.hvm_params
        assert img.hvm_context == exp.hvm_context
        if libxl:
            assert dict(img.xenstore) == physmap_pairs(exp)
            if exp.qemu is None:
                assert img.emulator_context is None
            else:
                assert img.emulator_context is not None
                assert img.emulator_context[1] == exp.qemu
    if libxl:
        assert img.headers["libxl header"]["options"] & LIBXL_OPT_LEGACY
    else:
        assert "libxl header" not in img.headers
    # stream v2 by default: every release from 4.6 restores it (4.6-4.13 refuse v3)
    assert img.headers["libxc image header"]["version"] == version


def check_libxl_output(tmp: str, data: bytes, exp: Expected) -> None:
    path = write_file(os.path.join(tmp, "converted.libxl"), data)
    verified(path, ["libxl", "libxc"])
    assert_content(read_v2(path), exp, libxl=True)


def xl_skip_header(fd: int) -> bytes:
    """What xl does before handing the fd to libxl: read the 48-byte header and
    the optional data (the config).  Returns the bytes read."""
    hdr = read_exact(fd, XL_HDR_LEN)
    assert hdr[:32] == XL_MAGIC
    _byteorder, mandatory, _optional, optlen = struct.unpack_from("<IIII", hdr, 32)
    assert not mandatory & XL_STREAMV2  # a legacy xl file: libxl will convert it
    return hdr + read_exact(fd, optlen)


def hint_options(msg: str) -> List[str]:
    """Long options a message tells the user to give that the drop-in lacks."""
    known = set(dropin.build_parser()._option_string_actions)
    return [o for o in re.findall(r"--[a-z][a-z-]*", msg) if o not in known]


# ---------------------------------------------------------------------------
# 1. libxl's invocation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize("saved_width,libxl_width", [(8, "64"), (4, "64"), (4, "32"), (8, "32")])
def test_libxl_invocation(tmp_path, guest: str, saved_width: int, libxl_width: str) -> None:
    """xl skips the header, libxl passes its OWN width; the content decides."""
    data, exp = legacy(LegacySpec(envelope="xl", guest=guest, width=saved_width))
    path = write_file(str(tmp_path / "old.xl"), data)
    fd = os.open(path, os.O_RDONLY)
    try:
        xl_skip_header(fd)
        r = spawn_to_pipe(["--in", "{IN}", "--out", "{OUT}", "--width", libxl_width,
                           "--guest", guest, "--format", "libxl"], fd)
    finally:
        os.close(fd)
    assert r.rc == 0, r.err
    assert not r.out.startswith(XL_MAGIC)  # libxl wants the bare libxl stream
    assert r.out.startswith(b"LibxlFmt")  # the libxl v2 stream header
    check_libxl_output(str(tmp_path), r.out, exp)
    mismatch = int(libxl_width) != saved_width * 8
    warnings = [ln for ln in r.err.splitlines() if ln.startswith(f"{PROG}: warning:")]
    if mismatch:
        assert len(warnings) == 1, r.err
        assert f"--width {libxl_width}" in warnings[0]
        assert f"{saved_width * 8}-bit" in warnings[0]
    else:
        assert r.err == ""
    assert r.stdout == b""  # libxl never passes -v


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_libxl_convert_helper_argv0(tmp_path, guest: str) -> None:
    """argv[0] comes from $LIBXL_CONVERT_HELPER (the installed script, by path),
    both fds inherited with CLOEXEC cleared, as libxl__exec does."""
    data, exp = legacy(LegacySpec(envelope="xl", guest=guest, width=4))
    path = write_file(str(tmp_path / "old.xl"), data)
    env = dict(os.environ, LIBXL_CONVERT_HELPER=CLS)
    argv0 = env.get("LIBXL_CONVERT_HELPER") or "/usr/libexec/xen/bin/convert-legacy-stream"
    assert os.path.isabs(argv0) and os.access(argv0, os.X_OK)
    fd = os.open(path, os.O_RDONLY)
    try:
        xl_skip_header(fd)
        r = spawn_to_pipe(["--in", "{IN}", "--out", "{OUT}", "--width", "64", "--guest", guest,
                           "--format", "libxl"], fd, argv0=argv0, env=env, libxl_style=True)
    finally:
        os.close(fd)
    assert r.rc == 0, r.err
    assert "overridden" in r.err  # saved by a 32-bit toolstack, libxl said 64
    check_libxl_output(str(tmp_path), r.out, exp)


# ---------------------------------------------------------------------------
# 2. XenServer's invocation (also: the "reads ahead on the shared fd" defect)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_xenserver_invocation_shared_fd(tmp_path, guest: str, kind: str) -> None:
    """Regression: upstream read ahead on the fd XenServer shares with it.

    The converter must stop exactly after the legacy stream so that xenopsd
    reads ``QemuDeviceModelRecord\\n`` + BE length + qemu data from the same
    fd (and, for a file, finds the fd offset there)."""
    data, exp = legacy(LegacySpec(envelope="xenopsd", qemu="xenserver", guest=guest, width=4))
    assert data.startswith(XENOPSD_SIG)
    qemu_tail = b""
    if guest == "hvm":
        assert exp.qemu is not None
        qemu_tail = QEMU_XENSERVER + struct.pack(">I", len(exp.qemu)) + exp.qemu
        assert data.endswith(qemu_tail)
    legacy_end = len(data) - len(qemu_tail)
    feed: Optional[Feed] = None
    if kind == "file":
        fd = os.open(write_file(str(tmp_path / "vm.save"), data), os.O_RDONLY)
    else:
        fd, wfd = os.pipe()
        feed = Feed(wfd, data)
        feed.start()
    try:
        assert read_exact(fd, len(XENOPSD_SIG)) == XENOPSD_SIG
        r = spawn_to_pipe(["--in", "{IN}", "--out", "{OUT}", "--width", "32", "--skip-qemu",
                           "--guest-type", guest, "--syslog", "--verbose"], fd)
        if kind == "file":
            assert os.lseek(fd, 0, os.SEEK_CUR) == legacy_end
        # xenopsd now reads the qemu record itself, from the same fd
        rest = b""
        if guest == "hvm":
            assert read_exact(fd, len(QEMU_XENSERVER)) == QEMU_XENSERVER
            (n,) = struct.unpack(">I", read_exact(fd, 4))
            assert n == len(exp.qemu or b"")
            assert read_exact(fd, n) == exp.qemu
        rest = read_all(fd)
        assert rest == b""  # then EOF
    finally:
        os.close(fd)
        if feed is not None:
            feed.join(TIMEOUT)
    assert r.rc == 0, r.err
    assert r.stdout == b""  # --syslog: -v's messages go to syslog, not stdout
    out = write_file(str(tmp_path / "converted.libxc"), r.out)
    verified(out, ["libxc"])  # no --format: a libxc v2 stream, nothing after END
    img = read_v2(out)
    assert img.end_offset == len(r.out)
    assert_content(img, exp, libxl=False)


# ---------------------------------------------------------------------------
# 3. options
# ---------------------------------------------------------------------------


def test_in_as_fd_number_and_as_file(tmp_path) -> None:
    data, exp = legacy(LegacySpec(guest="pv"))
    src = write_file(str(tmp_path / "old.libxc"), data)
    by_file = str(tmp_path / "by_file")
    by_fd = str(tmp_path / "by_fd")
    fd = os.open(src, os.O_RDONLY)
    try:
        p1 = run_cls("-i", src, "-o", by_file)
        p2 = run_cls("--in", str(fd), "--out", by_fd, pass_fds=[fd])
        # like xl and xenopsd, the fd is left where the stream ends
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(data)
    finally:
        os.close(fd)
    assert (p1.returncode, p2.returncode) == (0, 0), (p1.stderr, p2.stderr)
    with open(by_file, "rb") as a, open(by_fd, "rb") as b:
        assert a.read() == b.read()
    verified(by_file, ["libxc"])
    assert_content(read_v2(by_file), exp, libxl=False)


def test_out_as_fd_and_as_file(tmp_path) -> None:
    data, exp = legacy(LegacySpec(guest="hvm"))
    src = write_file(str(tmp_path / "old"), data)
    as_file = str(tmp_path / "as_file")
    as_fd = str(tmp_path / "as_fd")
    ofd = os.open(as_fd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        p1 = run_cls("-i", src, "-o", as_file, "-f", "libxl")
        p2 = run_cls("-i", src, "-o", str(ofd), "-f", "libxl", pass_fds=[ofd])
    finally:
        os.close(ofd)
    assert (p1.returncode, p2.returncode) == (0, 0), (p1.stderr, p2.stderr)
    with open(as_file, "rb") as a, open(as_fd, "rb") as b:
        assert a.read() == b.read()
    verified(as_file, ["libxl", "libxc"])
    assert_content(read_v2(as_file), exp, libxl=True)


def _broken_late_stream() -> bytes:
    """A legacy stream that fails only near its end (a truncated PV tail), so
    that a converter writing as it goes has written nearly everything."""
    data, _ = legacy(LegacySpec(guest="pv", pages=256))
    return data[:-100]


def test_file_output_is_atomic(tmp_path) -> None:
    """Regression: upstream leaves half-written output behind."""
    src = write_file(str(tmp_path / "broken"), _broken_late_stream())
    fresh = str(tmp_path / "fresh.out")
    kept = write_file(str(tmp_path / "kept.out"), b"previous content\n")
    before = sorted(os.listdir(tmp_path))
    p1 = run_inproc("-i", src, "-o", fresh)
    p2 = run_inproc("-i", src, "-o", kept, "-f", "libxl")
    for p in (p1, p2):
        assert p.returncode == 1, p.stderr
        assert "offset 0x" in one_line(p.stderr)
    assert not os.path.exists(fresh)
    with open(kept, "rb") as f:
        assert f.read() == b"previous content\n"
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


def test_width_option(tmp_path) -> None:
    data, exp = legacy(LegacySpec(guest="pv", width=4, guest_width=4))
    src = write_file(str(tmp_path / "old"), data)
    outs = {w: str(tmp_path / f"w{w}") for w in ("32", "64", "none")}
    p32, p64, pnone = run_many([("-i", src, "-o", outs["32"], "-w", "32"),
                                ("-i", src, "-o", outs["64"], "--width", "64"),
                                ("-i", src, "-o", outs["none"])])
    assert (p32.returncode, p64.returncode, pnone.returncode) == (0, 0, 0)
    assert p32.stderr == "" and pnone.stderr == ""
    assert one_line(p64.stderr) == (f"{PROG}: warning: --width 64 overridden: the stream was "
                                    "saved by a 32-bit toolstack")
    contents = set()
    for path in outs.values():
        with open(path, "rb") as f:
            contents.add(f.read())
    assert len(contents) == 1
    assert_content(read_v2(outs["32"]), exp, libxl=False)


def test_guest_type_option_and_abbreviation(tmp_path) -> None:
    pv = write_file(str(tmp_path / "pv"), legacy(LegacySpec(guest="pv"))[0])
    hv = write_file(str(tmp_path / "hvm"), legacy(LegacySpec(guest="hvm"))[0])
    res = run_many([("-i", pv, "-o", str(tmp_path / "o1"), "-g", "pv"),
                    ("-i", hv, "-o", str(tmp_path / "o2"), "--guest-type", "hvm"),
                    ("-i", hv, "-o", str(tmp_path / "o3"), "--guest", "hvm"),
                    ("-i", pv, "-o", str(tmp_path / "o4"), "--guest", "pv")])
    assert [p.returncode for p in res] == [0, 0, 0, 0], [p.stderr for p in res]
    assert [p.stderr for p in res] == ["", "", "", ""]
    assert read_v2(str(tmp_path / "o3")).headers["libxc domain header"]["type"] == 2
    assert read_v2(str(tmp_path / "o4")).headers["libxc domain header"]["type"] == 1


@pytest.mark.parametrize("saved,given", [("pv", "hvm"), ("hvm", "pv")])
def test_guest_type_contradicting_content_is_an_error(tmp_path, saved: str, given: str) -> None:
    src = write_file(str(tmp_path / "old"), legacy(LegacySpec(guest=saved))[0])
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-g", given)
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert f"({given})" in line and saved.upper() in line
    assert not os.path.exists(out)
    # the hint must be one this program accepts (it has no --force)
    assert hint_options(line) == [], line


def test_format_libxc_default_vs_libxl(tmp_path) -> None:
    data, exp = legacy(LegacySpec(guest="hvm"))
    assert exp.qemu is not None
    src = write_file(str(tmp_path / "old"), data)
    dflt, lxc, lxl = (str(tmp_path / n) for n in ("default", "libxc", "libxl"))
    res = run_many([("-i", src, "-o", dflt), ("-i", src, "-o", lxc, "-f", "libxc"),
                    ("-i", src, "-o", lxl, "--format", "libxl")])
    assert [p.returncode for p in res] == [0, 0, 0], [p.stderr for p in res]
    with open(dflt, "rb") as a, open(lxc, "rb") as b:
        raw = a.read()
        assert raw == b.read()
    # libxc: the qemu record stays after the stream, as upstream wrote it
    rec = b"DeviceModelRecord0002" + struct.pack("<I", len(exp.qemu)) + exp.qemu
    verified(dflt, ["libxc"], trailing=len(rec))
    img = read_v2(dflt)
    assert raw[img.end_offset:] == rec
    assert_content(img, exp, libxl=False)
    verified(lxl, ["libxl", "libxc"])
    assert_content(read_v2(lxl), exp, libxl=True)


@pytest.mark.parametrize("fmt", ["libxl", "libxc"])
def test_xl_flag_on_an_xl_file(tmp_path, fmt: str) -> None:
    """Regression: upstream's ``-x`` crashes under Python 3 (bytes != str magic).

    What it meant to do (skip_xl_header(), Python 2): copy the xl header and
    its optional data to the output, setting STREAMv2 for ``--format libxl``,
    so that ``-x -f libxl`` turns an old xl save file into one today's
    ``xl restore`` takes."""
    data, exp = legacy(LegacySpec(envelope="xl", guest="hvm"))
    src = write_file(str(tmp_path / "old.xl"), data)
    hdr = data[:XL_HDR_LEN]
    byteorder, mandatory, optional, optlen = struct.unpack_from("<IIII", hdr, 32)
    optdata = data[XL_HDR_LEN:XL_HDR_LEN + optlen]
    out = str(tmp_path / "new.xl")
    p = run_inproc("-x", "-f", fmt, "-i", src, "-o", out)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        raw = f.read()
    flags = mandatory | (XL_STREAMV2 if fmt == "libxl" else 0)
    assert raw[:XL_HDR_LEN + optlen] == (
        XL_MAGIC + struct.pack("<IIII", byteorder, flags, optional, optlen) + optdata)
    if fmt == "libxl":
        verified(out, ["xl", "libxl", "libxc"])
        assert_content(read_v2(out), exp, libxl=True)
    else:
        inner = write_file(str(tmp_path / "inner"), raw[XL_HDR_LEN + optlen:])
        img = read_v2(inner)
        assert_content(img, exp, libxl=False)


def test_xl_flag_on_a_bare_stream_is_an_error(tmp_path) -> None:
    src = write_file(str(tmp_path / "bare"), legacy(LegacySpec())[0])
    out = str(tmp_path / "out")
    p = run_inproc("-x", "-i", src, "-o", out)
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert "-x" in line and "xl header" in line
    assert not os.path.exists(out)


def test_xl_file_without_xl_flag_is_an_error(tmp_path) -> None:
    src = write_file(str(tmp_path / "old.xl"), legacy(LegacySpec(envelope="xl"))[0])
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert "-x" in line and "offset 0x0" in line
    assert not os.path.exists(out)


@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
def test_skip_qemu(tmp_path, fmt: str) -> None:
    data, exp = legacy(LegacySpec(guest="hvm"))
    src = write_file(str(tmp_path / "old"), data)
    out = str(tmp_path / "out")
    p = run_inproc("--skip-qemu", "-f", fmt, "-i", src, "-o", out)
    assert p.returncode == 0, p.stderr
    # nothing trails; a libxl stream lacks the device state (the caller keeps it)
    verified(out, ["libxc"] if fmt == "libxc" else ["libxl", "libxc"],
             no_device_state=fmt == "libxl")
    img = read_v2(out)
    assert img.emulator_context is None
    exp.qemu = None
    assert_content(img, exp, libxl=fmt == "libxl")


def test_verbose_syslog_version(tmp_path) -> None:
    src = write_file(str(tmp_path / "old"), legacy(LegacySpec(guest="pv", width=4))[0])
    v, quiet, sl, ver = run_many([("-v", "-i", src, "-o", str(tmp_path / "v")),
                                  ("-i", src, "-o", str(tmp_path / "q")),
                                  ("--syslog", "-v", "-i", src, "-o", str(tmp_path / "s")),
                                  ("--version",)])
    assert (v.returncode, quiet.returncode, sl.returncode, ver.returncode) == (0, 0, 0, 0)
    lines = v.stdout.decode().splitlines()
    assert any("PV" in ln and "32-bit toolstack" in ln for ln in lines), lines
    assert any(ln.startswith("converted ") for ln in lines), lines
    assert quiet.stdout == b"" and quiet.stderr == ""
    assert sl.stdout == b"" and sl.stderr == ""
    assert os.path.getsize(tmp_path / "s") == os.path.getsize(tmp_path / "v") > 0
    assert ver.stdout.split()[0] == b"1"  # upstream's __version__
    assert ver.stderr == ""


def test_usage_errors(tmp_path) -> None:
    src = write_file(str(tmp_path / "old"), legacy(LegacySpec())[0])
    out = str(tmp_path / "out")
    jobs = [("-i", src), ("-o", out), (),
            ("-i", src, "-o", out, "-w", "48"), ("-i", src, "-o", out, "-g", "pvh"),
            ("-i", src, "-o", out, "-f", "xl"), ("-i", src, "-o", out, "--frobnicate")]
    for job, p in zip(jobs, run_many(jobs)):
        assert p.returncode == 2, (job, p.stderr)
        assert p.stderr.startswith("usage: convert-legacy-stream"), (job, p.stderr)
        assert p.stdout == b""
    assert not os.path.exists(out)


def test_unusable_input_or_output(tmp_path) -> None:
    """A path or fd that cannot be used is a usage error: exit 2, one line."""
    src = write_file(str(tmp_path / "old"), legacy(LegacySpec())[0])
    out = str(tmp_path / "out")
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    jobs = [("-i", str(tmp_path / "missing"), "-o", out),
            ("-i", str(tmp_path), "-o", out),
            ("-i", str(closed), "-o", out),
            ("-i", src, "-o", str(closed)),
            ("-i", src, "-o", str(tmp_path / "no" / "such" / "dir")),
            ("-i", src, "-o", src)]
    for job, p in zip(jobs, run_many(jobs)):
        assert p.returncode == 2, (job, p.stderr)
        one_line(p.stderr)
    assert not os.path.exists(out)
    with open(src, "rb") as f:
        assert f.read() == legacy(LegacySpec())[0]  # -o = -i did not clobber it


# ---------------------------------------------------------------------------
# 4. regressions, one per upstream defect
# ---------------------------------------------------------------------------


def test_regression_width_and_guest_detected(tmp_path) -> None:
    """Regression: upstream needs the saving toolstack's width and the guest
    type by hand; libxl passes its own width, so images saved on a 32-bit dom0
    misparse on a 64-bit one.  Without -w/-g, and with the wrong -w, the drop-in
    converts by the content."""
    jobs = []
    cases = []
    for guest in ("pv", "hvm"):
        for width in (4, 8):
            data, exp = legacy(LegacySpec(guest=guest, width=width))
            src = write_file(str(tmp_path / f"{guest}{width}"), data)
            wrong = "64" if width == 4 else "32"
            jobs += [("-i", src, "-o", src + ".a", "-f", "libxl"),
                     ("-i", src, "-o", src + ".b", "-f", "libxl", "-w", wrong)]
            cases.append((src, exp))
    res = run_many(jobs)
    assert [p.returncode for p in res] == [0] * len(jobs), [p.stderr for p in res]
    for (src, exp), (pa, pb) in zip(cases, zip(res[::2], res[1::2])):
        assert pa.stderr == ""
        assert "overridden" in one_line(pb.stderr)
        with open(src + ".a", "rb") as a, open(src + ".b", "rb") as b:
            assert a.read() == b.read()
        assert_content(read_v2(src + ".a"), exp, libxl=True)


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_regression_compressed_remus(tmp_path, guest: str) -> None:
    """Regression: upstream raises "todo" on compressed Remus chunks.  The
    stream converts, to the state of its last checkpoint."""
    data, exp = legacy(LegacySpec(guest=guest, checkpoints=3, compression=True))
    assert exp.complete_checkpoints == 3
    src = write_file(str(tmp_path / "remus"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    assert "todo" not in p.stderr
    verified(out, ["libxl", "libxc"])
    assert_content(read_v2(out), exp, libxl=True)


def test_regression_tmem_is_a_clean_error(tmp_path) -> None:
    """Regression: upstream raises "todo" on tmem chunks.  No current Xen can
    restore tmem pages: a one-line error naming tmem and its offset, exit 1,
    no output, and a hint this program accepts."""
    data, _ = legacy(LegacySpec(tmem=True))
    src = write_file(str(tmp_path / "tmem"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out)
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert "tmem" in line and "todo" not in line
    m = re.search(r"offset (0x[0-9a-f]+)", line)
    assert m is not None
    off = int(m.group(1), 16)
    assert struct.unpack_from("<i", data, off)[0] == -5  # the TMEM chunk id is there
    assert not os.path.exists(out)
    assert hint_options(line) == [], line


@pytest.mark.parametrize("kind", ["libxl", "remus", "xend", "xenserver"])
def test_regression_every_qemu_signature(tmp_path, kind: str) -> None:
    """Regression: upstream knows one of the three qemu record signatures
    (DeviceModelRecord0002); RemusDeviceModelState, xend's
    QemuDeviceModelRecord (data to EOF) and XenServer's
    QemuDeviceModelRecord\\n (BE length) convert too, data intact."""
    data, exp = legacy(LegacySpec(guest="hvm", qemu=kind))
    assert exp.qemu is not None and exp.qemu[:4] == b"QEVM"
    src = write_file(str(tmp_path / kind), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    verified(out, ["libxl", "libxc"])
    assert_content(read_v2(out), exp, libxl=True)


def test_regression_last_remus_checkpoint_wins(tmp_path) -> None:
    """Regression: upstream reads only the first checkpoint of a Remus stream."""
    data, exp = legacy(LegacySpec(guest="pv", checkpoints=3))
    _, first = legacy(LegacySpec(guest="pv", checkpoints=1))
    assert exp.complete_checkpoints == 3
    assert exp.vcpus[0]["basic"] != first.vcpus[0]["basic"]
    assert exp.shared_info != first.shared_info
    assert [p for p in exp.pages if exp.pages[p] != first.pages.get(p)] != []
    src = write_file(str(tmp_path / "remus"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    verified(out, ["libxl", "libxc"])
    assert_content(read_v2(out), exp, libxl=True)


@pytest.mark.parametrize("guest,compression", [("pv", False), ("hvm", False), ("pv", True),
                                               ("hvm", True)])
def test_regression_truncated_last_remus_checkpoint(tmp_path, guest: str,
                                                    compression: bool) -> None:
    """Regression (first-checkpoint-only): a Remus stream cut inside its last
    checkpoint (the primary died) converts to the last complete checkpoint,
    as a failover restore would, with a warning."""
    data, exp = legacy(LegacySpec(guest=guest, checkpoints=3, truncate_in_checkpoint=3,
                                  compression=compression))
    assert exp.complete_checkpoints == 2
    src = write_file(str(tmp_path / "remus"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    assert "checkpoint 3" in one_line(p.stderr)
    verified(out, ["libxl", "libxc"])
    assert_content(read_v2(out), exp, libxl=True)


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_truncated_remus_on_pipes_libxl_style(tmp_path, guest: str) -> None:
    """The same failover rule when the stream arrives on a pipe and leaves on
    one (libxl's invocation): nothing of the cut checkpoint is emitted."""
    data, exp = legacy(LegacySpec(guest=guest, checkpoints=3, truncate_in_checkpoint=3))
    assert exp.complete_checkpoints == 2
    rfd, wfd = os.pipe()
    feed = Feed(wfd, data)
    feed.start()
    try:
        r = spawn_to_pipe(["--in", "{IN}", "--out", "{OUT}", "--width", "64", "--guest", guest,
                           "--format", "libxl"], rfd)
    finally:
        os.close(rfd)
        feed.join(TIMEOUT)
    assert r.rc == 0, r.err
    assert "checkpoint 3" in one_line(r.err)
    check_libxl_output(str(tmp_path), r.out, exp)


@pytest.mark.parametrize("live", [False, True])
def test_regression_unmapped_pfns_become_xtab(tmp_path, live: bool) -> None:
    """Regression: upstream drops the PV tail's unmapped-pfn list; they must
    reach the v2 stream as XTAB entries after any data sent for them."""
    unmapped = [10, 11, 40]
    data, exp = legacy(LegacySpec(guest="pv", unmapped=unmapped, live=live))
    assert exp.xtab == set(unmapped)
    src = write_file(str(tmp_path / "old"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    verified(out, ["libxl", "libxc"])
    img = read_v2(out)
    assert img.xtab == set(unmapped)
    # v2read keeps pages sent before the XTAB entries (a live stream sent
    # them in its first iteration); the final state is "not present"
    for pfn in unmapped:
        img.pages.pop(pfn, None)
        img.page_types.pop(pfn, None)
    assert_content(img, exp, libxl=True)


def _reserved_type_stream(t: int) -> Tuple[bytes, int]:
    f = io.BytesIO()
    w = LegacyWriter(f, width=8, guest="pv")
    w.header(16)
    w.tsc_info(0, 1, 2, 3)
    at = len(f.getvalue())
    w.batch(list(range(8)), [0, 0xC, 3, 2, 1, t, 0, 0])
    w.vcpu_info(0, [0])
    w.last_checkpoint()
    w.end_of_body()
    ctx = pv_vcpu_context(8, 0, cr3_pfn=1, start_info_pfn=0)
    w.pv_tail([], [(ctx, None, None)], bytes(4096))
    return f.getvalue(), at


@pytest.mark.parametrize("ptype", [5, 6, 7, 8])
def test_regression_reserved_page_types_rejected(tmp_path, ptype: int) -> None:
    """Regression: upstream lets reserved page types (5-8) through; Xen's v2
    restore rejects them, so the converter must say so, naming the offset."""
    data, at = _reserved_type_stream(ptype)
    src = write_file(str(tmp_path / "old"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out)
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert f"offset {at:#x}" in line and f"type {ptype:#x}" in line and "pfn 0x5" in line
    assert not os.path.exists(out)


# hand-made streams with one huge count; each: (bytes, start of the bad structure,
# end of the bad field)


def _hand_stream(guest: str = "pv", width: int = 8, **bad: int) -> Tuple[bytes, int, int]:
    f = io.BytesIO()
    w = LegacyWriter(f, width=width, guest=guest)
    pages = 16

    def here() -> int:
        return len(f.getvalue())

    w.header(pages)
    w.tsc_info(0, 1, 2, 3)
    if "batch" in bad:
        at = here()
        w.raw(struct.pack("<i", bad["batch"]) + bytes(256))
        return f.getvalue(), at, at + 4
    pt = {1: 0xC, 2: 3, 3: 2, 4: 1} if guest == "pv" else {}
    w.batch(list(range(pages)), [pt.get(p, 0) for p in range(pages)])
    if "max_vcpu" in bad:
        at = here()
        w.raw(struct.pack("<ii", -2, bad["max_vcpu"]) + b"\1" + bytes(63))
        return f.getvalue(), at, at + 8
    w.vcpu_info(0, [0])
    if guest == "hvm":
        at = here()
        ts = physmap_toolstack(list(DEFAULT_PHYSMAP), width=width)
        w.toolstack(ts, length=bad.get("toolstack"))
        if "toolstack" in bad:
            return f.getvalue(), at, at + 8
    w.last_checkpoint()
    w.end_of_body()
    at = here()
    if guest == "pv":
        ctx = pv_vcpu_context(8, 0, cr3_pfn=1, start_info_pfn=0)
        w.pv_tail([], [(ctx, None, None)], bytes(4096), count=bad.get("unmapped"))
        return f.getvalue(), at, at + 4
    w.hvm_tail((13, 14, 15), hvm.sample_context(1), rec_size=bad.get("context"))
    if "context" in bad:
        return f.getvalue(), at, at + 28
    at = here()
    w.qemu_record(b"QEVM\0\0\0\3" + bytes(100), kind="libxl", length=bad.get("qemu"))
    return f.getvalue(), at, at + 25


HUGE = {
    "batch count": dict(batch=0x7FFFFFFF),
    "VCPU_INFO max id": dict(max_vcpu=0x7FFFFFFF),
    "unmapped count": dict(unmapped=0xFFFFFFFF),
    "unmapped count, 32-bit": dict(width=4, unmapped=0x7FFFFFFF),
    "HVM context size": dict(guest="hvm", context=0xFFFFFFFF),
    "toolstack length": dict(guest="hvm", toolstack=0xFFFFFFFF),
    "qemu record length": dict(guest="hvm", qemu=0xFFFFFFFF),
}


def test_hand_made_streams_are_valid_when_not_broken(tmp_path) -> None:
    """The fixture the bounded-memory test breaks converts when left whole."""
    for guest in ("pv", "hvm"):
        data, _, _ = _hand_stream(guest)
        src = write_file(str(tmp_path / guest), data)
        p = run_inproc("-i", src, "-o", src + ".out", "-f", "libxl")
        assert p.returncode == 0, p.stderr
        verified(src + ".out", ["libxl", "libxc"])


@pytest.mark.parametrize("case", list(HUGE))
def test_regression_huge_count_bounded_memory(tmp_path, capsys, case: str) -> None:
    """Regression: upstream needs 8 GiB to reject one bad count.  In-process,
    the drop-in rejects it with < 1 MiB of Python allocations, exit 1, an
    error naming the offset, and no output file."""
    kw = dict(HUGE[case])
    data, start, end = _hand_stream(**kw)  # type: ignore[arg-type]
    src = write_file(str(tmp_path / "bad"), data)
    out = str(tmp_path / "out")
    # warm up: lazy imports and caches are not the conversion's memory
    good = write_file(str(tmp_path / "good"), _hand_stream(kw.get("guest", "pv"))[0])
    assert dropin.main(["-i", good, "-o", str(tmp_path / "good.out"), "-f", "libxl"]) == 0
    capsys.readouterr()
    tracemalloc.start()
    try:
        rc = dropin.main(["-i", src, "-o", out, "-f", "libxl"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert rc == 1, err
    assert peak < 1 << 20, peak
    line = one_line(err)
    m = re.search(r"offset (0x[0-9a-f]+)", line)
    assert m is not None, line
    assert start <= int(m.group(1), 16) <= end, (line, hex(start), hex(end))
    assert not os.path.exists(out)


def test_regression_huge_batch_count_on_a_pipe(tmp_path) -> None:
    """The same bad count arriving on a pipe (libxl's and xenopsd's case)."""
    data, start, _ = _hand_stream(batch=0x7FFFFFFF)
    rfd, wfd = os.pipe()
    feed = Feed(wfd, data)
    feed.start()
    try:
        r = spawn_to_pipe(["--in", "{IN}", "--out", "{OUT}", "--width", "64", "--guest", "pv",
                           "--format", "libxl"], rfd)
        read_all(rfd)
    finally:
        os.close(rfd)
        feed.join(TIMEOUT)
    assert r.rc == 1
    assert f"offset {start:#x}" in one_line(r.err)


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_regression_xend_image_via_xenstream_convert(tmp_path, guest: str) -> None:
    """Regression: xend (``xm save``) images cannot be restored on any current
    Xen.  ``xenstream convert`` turns one into an xl file (STREAMv2, no
    config) and writes the SXP config beside it."""
    data, exp = legacy(LegacySpec(envelope="xend", guest=guest))
    src = write_file(str(tmp_path / "vm.xm"), data)
    out = str(tmp_path / "vm.xl")
    p = subprocess.run([XENSTREAM, "convert", src, out], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    err = p.stderr.decode()
    no_traceback(err)
    assert p.returncode == 0, err
    verified(out, ["xl", "libxl", "libxc"])
    img = read_v2(out)
    assert img.headers["xl header"]["mandatory_flags"] & XL_STREAMV2
    assert_content(img, exp, libxl=True, version=3)  # xenstream convert: v3 (HEAD)
    with open(out + ".sxp", "rb") as f:
        sxp = f.read()
    assert sxp.startswith(b"(") and b"domain" in sxp


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_xend_image_through_the_drop_in(tmp_path, guest: str) -> None:
    """The drop-in has no xend notion: it recognises the xend header, leaves
    it (and the SXP config) behind and writes the bare stream asked for."""
    data, exp = legacy(LegacySpec(envelope="xend", guest=guest))
    src = write_file(str(tmp_path / "vm.xm"), data)
    out = str(tmp_path / "out")
    p = run_inproc("-i", src, "-o", out, "-f", "libxl")
    assert p.returncode == 0, p.stderr
    verified(out, ["libxl", "libxc"])
    assert_content(read_v2(out), exp, libxl=True)


# ---------------------------------------------------------------------------
# 5. exit statuses
# ---------------------------------------------------------------------------


def test_exit_statuses(tmp_path) -> None:
    """0 converted, 1 bad input (one line, no output), 2 usage."""
    good = write_file(str(tmp_path / "good"), legacy(LegacySpec())[0])
    v2 = str(tmp_path / "v2")
    with open(v2, "wb") as f:
        write_image(f, ImageSpec(envelope="libxc", pages=4))
    bad_inputs = {
        "empty": b"",
        "garbage": b"\x01\x02\x03\x04" * 64,
        "truncated": legacy(LegacySpec())[0][:5000],
        "reserved type": _reserved_type_stream(5)[0],
    }
    paths = {k: write_file(str(tmp_path / k.replace(" ", "_")), d) for k, d in bad_inputs.items()}
    paths["already v2"] = v2
    jobs: List[Tuple[Sequence[str], int]] = [(("-i", good, "-o", str(tmp_path / "ok")), 0)]
    jobs += [(("-i", p, "-o", str(tmp_path / (k.replace(" ", "_") + ".out"))), 1)
             for k, p in paths.items()]
    jobs += [(("-i", good), 2), (("-i", good, "-o", str(tmp_path / "x"), "-w", "16"), 2),
             (("-i", str(tmp_path / "missing"), "-o", str(tmp_path / "x")), 2)]
    res = run_many([a for a, _ in jobs])
    assert [p.returncode for p in res] == [rc for _, rc in jobs], [p.stderr for p in res]
    for (args, rc), p in zip(jobs, res):
        if rc == 1:
            assert "offset 0x" in one_line(p.stderr), args
            assert not os.path.exists(args[3])
    assert "already in the v2 format" in res[5].stderr
    # and as process exit statuses of the installed script
    spawned = run_many_spawned([jobs[0][0], jobs[1][0], jobs[-1][0]])
    assert [p.returncode for p in spawned] == [0, 1, 2], [p.stderr for p in spawned]


def test_internal_error_is_exit_2_one_line(tmp_path, capsys, monkeypatch) -> None:
    """An unexpected exception: exit 2, one line, no traceback, no output."""
    from xenstream.cli import convert_cmd

    class Boom:
        def __init__(self, *a: object, **k: object) -> None:
            pass

        def run(self) -> None:
            raise RuntimeError("boom")

    monkeypatch.setattr(convert_cmd, "Converter", Boom)
    good = write_file(str(tmp_path / "good"), legacy(LegacySpec())[0])
    out = str(tmp_path / "out")
    rc = dropin.main(["-i", good, "-o", out])
    err = capsys.readouterr().err
    assert rc == 2
    line = one_line(err)
    assert "internal error" in line and "boom" in line
    no_traceback(err)
    assert not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["good"]
