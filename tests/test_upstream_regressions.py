"""Regression tests for the defects of Xen's own Python verifier
(``tools/python/scripts/verify-stream-v2`` and ``tools/python/xen/migration``).

One test per defect: the issue's "Why" list, xen-formats.md section 7 and
envelopes-and-peers.md section 3.2.  Each docstring names the upstream defect
it guards against.  Streams come from the writer API; the few records where a
writer/parser mistake could hide the defect are packed here with ``struct``.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from xenstream.consumers.verify import Result, verify
from xenstream.findings import CONVENTION, ERROR, INFO, RESTORE, SPEC, TOOLSTACK, WARNING
from xenstream.formats import libxc, libxl
from xenstream.io import Source
from xenstream.reading.parser import Parser, Record
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    p2m_frame_pfns,
    write_image,
    write_libxc,
    xl_header,
)

MIB = 1 << 20


def _exe(name: str) -> str:
    cand = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(cand):
        return cand
    found = shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


V2 = _exe("verify-stream-v2")


# -- helpers -------------------------------------------------------------------------


@pytest.fixture
def check(tmp_path: Path) -> Callable[..., Result]:
    """check(data, **verify_kw) -> Result, via a file in tmp_path."""
    n = [0]

    def go(data: bytes, **kw: Any) -> Result:
        n[0] += 1
        p = tmp_path / f"img{n[0]}"
        p.write_bytes(data)
        with Source.open(str(p)) as src:
            return verify(src, **kw)

    return go


def image(**kw: Any) -> bytes:
    kw.setdefault("pages", 16)
    b = io.BytesIO()
    write_image(b, ImageSpec(**kw))
    return b.getvalue()


def found(res: Result) -> List[Tuple[str, str]]:
    return [(f.rule, f.severity) for f in res.findings]


def one(res: Result, rule: str) -> Any:
    hits = [f for f in res.findings if f.rule == rule]
    assert len(hits) == 1, found(res)
    return hits[0]


def v2(argv: List[str], *, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    p = subprocess.run([V2, *argv], stdin=stdin, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    return p


Step = Callable[[LibxcWriter], None]


def libxc_stream(guest: str, *, width: int = 8, version: int = 3, endian: str = "<",
                 replace: Optional[Dict[str, Optional[Step]]] = None,
                 after: Optional[Dict[str, Step]] = None,
                 order: Optional[List[str]] = None) -> bytes:
    """A small libxc stream built step by step; ``replace`` swaps or (None)
    drops a step, ``after`` adds records after a step, ``order`` reorders."""
    b = io.BytesIO()
    w = LibxcWriter(b, endian=endian, version=version)
    spec = ImageSpec(envelope="libxc", guest="pv", width=width, pages=16)
    max_pfn, frames = p2m_frame_pfns(spec)
    steps: Dict[str, Step]
    if guest == "pv":
        steps = {
            "headers": lambda w: w.headers("pv"),
            "pv_info": lambda w: w.pv_info(width),
            "sde": lambda w: w.static_data_end(),
            "p2m": lambda w: w.p2m_frames(0, max_pfn, frames),
            "pages": lambda w: w.page_data(list(range(16))),
            "tsc": lambda w: w.tsc_info(),
            "shinfo": lambda w: w.shared_info(),
            "basic": lambda w: w.vcpu_basic(0, width),
            "ext": lambda w: w.vcpu_extended(0),
            "xsave": lambda w: w.vcpu_xsave(0),
            "msrs": lambda w: w.vcpu_msrs(0),
            "end": lambda w: w.end(),
        }
    else:
        steps = {
            "headers": lambda w: w.headers("hvm"),
            "sde": lambda w: w.static_data_end(),
            "pages": lambda w: w.page_data(list(range(16))),
            "tsc": lambda w: w.tsc_info(),
            "hvmctx": lambda w: w.hvm_context(),
            "params": lambda w: w.hvm_params({1: 15, 5: 14}),
            "end": lambda w: w.end(),
        }
    if version == 2:
        steps.pop("sde")
    replace = replace or {}
    after = after or {}
    for name in order or list(steps):
        fn = replace.get(name, steps[name]) if name in replace else steps[name]
        if fn is not None:
            fn(w)
        if name in after:
            after[name](w)
    return b.getvalue()


def libxl_around(inner: bytes, *, hvm: bool = True, endian: str = "<",
                 emulator: Optional[Callable[[LibxlWriter], None]] = None) -> bytes:
    b = io.BytesIO()
    lw = LibxlWriter(b, endian)
    lw.header()
    lw.libxc_context()
    b.write(inner)
    if emulator is not None:
        emulator(lw)
    elif hvm:
        lw.xenstore_data({"physmap/f0000000/name": "vga.vram"})
        lw.emulator_context(b"QEVM\0\0\0\3" + b"\0" * 8)
    lw.end()
    return b.getvalue()


def feeder(fd: int, data: bytes, chunk: int) -> threading.Thread:
    def run() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:chunk]):]
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def verify_pipe(data: bytes, chunk: int = 4096, **kw: Any) -> Result:
    r, w = os.pipe()
    t = feeder(w, data, chunk)
    try:
        with Source.open(r) as src:
            return verify(src, **kw)
    finally:
        t.join(30)
        os.close(r)


# -- the "Why" list ------------------------------------------------------------


@pytest.mark.parametrize("envelope,layers", [
    ("libxc", ["libxc"]), ("libxl", ["libxl", "libxc"]), ("xl", ["xl", "libxl", "libxc"])])
def test_format_is_detected_not_named_by_hand(tmp_path: Path, check: Callable[..., Result],
                                              envelope: str, layers: List[str]) -> None:
    """Upstream verify-stream-v2 needs the format named by hand (-f, default libxc):
    an xl or libxl image verified without -f fails on the first header."""
    data = image(envelope=envelope)
    res = check(data)
    assert res.valid and res.findings == [], found(res)
    assert res.layers == layers
    f = tmp_path / "x"
    f.write_bytes(data)
    p = v2(["-i", str(f)])  # no -f
    assert p.returncode == 0 and p.stderr == ""


def _xenstore_record(pairs: bytes, endian: str = "<") -> bytes:
    body = struct.pack(endian + "II", 2, 0) + pairs
    return struct.pack(endian + "II", 2, len(body)) + body + b"\0" * (-len(body) % 8)


def test_hvm_xenstore_data_accepted(tmp_path: Path, check: Callable[..., Result]) -> None:
    """Upstream libxl.py compares EMULATOR_XENSTORE_DATA's last byte (an int on
    Python 3) with the str '\\x00', so every HVM libxl/xl save file with physmap
    keys is rejected as "Data not NUL terminated"."""
    res = check(image(envelope="xl", guest="hvm"))
    assert res.valid and res.findings == [], found(res)
    assert res.summary["libxl"]["xenstore_keys"] == 3
    # the record packed by hand, so a writer/parser mistake cannot hide it
    inner = libxc_stream("hvm")
    pairs = b"physmap/f0000000/start_addr\0f0000000\0physmap/f0000000/name\0vga.vram\0"
    b = io.BytesIO()
    b.write(struct.pack(">QII", libxl.HDR_IDENT, 2, 0))
    b.write(struct.pack("<II", 1, 0))  # LIBXC_CONTEXT
    b.write(inner)
    b.write(_xenstore_record(pairs))
    b.write(struct.pack("<II", 0, 0))  # END
    res = check(b.getvalue())
    # no EMULATOR_CONTEXT and no config: the device-state warning, nothing else
    assert res.valid and [f.rule for f in res.findings] == ["libxl-emulator-unknown"], found(res)
    assert res.summary["libxl"]["xenstore_keys"] == 2
    f = tmp_path / "hvm.libxl"
    f.write_bytes(b.getvalue())
    p = v2(["-f", "libxl", "-i", str(f)])
    assert p.returncode == 0 and p.stderr == ""


@pytest.mark.parametrize("pairs,rule", [
    (b"physmap/a\0b", "libxl-xenstore-nul"),  # not NUL terminated
    (b"\0value\0", "libxl-xenstore-key-empty"),
    (b"/local/domain/0\0x\0", "libxl-xenstore-key-absolute"),
])
def test_xenstore_data_rules_c_enforces(check: Callable[..., Result], pairs: bytes,
                                        rule: str) -> None:
    """Upstream (even fixed for Python 3) would not reject empty keys or keys
    starting with '/', which libxl's C restore rejects (xen-formats §7 #10)."""
    b = io.BytesIO()
    b.write(struct.pack(">QII", libxl.HDR_IDENT, 2, 0))
    b.write(struct.pack("<II", 1, 0))
    b.write(libxc_stream("hvm"))
    b.write(_xenstore_record(pairs))
    b.write(struct.pack("<II", 0, 0))
    res = check(b.getvalue())
    f = one(res, rule)
    assert (f.severity, f.authority, f.restore_tolerates) == (ERROR, TOOLSTACK, False)
    assert f.record_type == "EMULATOR_XENSTORE_DATA"


@pytest.mark.parametrize("envelope", ["libxl", "xl"])
@pytest.mark.parametrize("colo", [False, True], ids=["remus", "colo"])
def test_checkpointed_streams_followed(check: Callable[..., Result], envelope: str,
                                       colo: bool) -> None:
    """Upstream VerifyLibxc keeps reading libxc records after CHECKPOINT, so the
    libxl EMULATOR_*/CHECKPOINT_END records that follow are misparsed: Remus and
    COLO streams cannot be verified at all."""
    data = image(envelope=envelope, checkpoints=3, colo=colo)
    res = check(data)
    assert res.valid, found(res)
    assert found(res) == [("checkpoint-eof", WARNING)]
    f = res.findings[0]
    assert f.authority == RESTORE and f.restore_tolerates
    assert "checkpoint 3" in f.message and ("COLO" if colo else "Remus") in f.message
    cp = res.summary["checkpoints"]
    assert cp == {"kind": "colo" if colo else "remus", "checkpoint_records": 3, "complete": 3}
    counts = res.summary["record_counts"]
    assert counts["libxl:CHECKPOINT_END"] == 3
    assert counts.get("libxl:CHECKPOINT_STATE", 0) == (3 if colo else 0)
    assert counts["libxl:EMULATOR_XENSTORE_DATA"] == 3


def _offsets(data: bytes, tmp: Path) -> List[Record]:
    p = tmp / "scan"
    p.write_bytes(data)
    recs: List[Record] = []
    with Source.open(str(p)) as src:
        for item in Parser(src).items():
            if isinstance(item, Record):
                recs.append(item)
    return recs


def test_checkpointed_stream_cut_mid_checkpoint(tmp_path: Path,
                                                check: Callable[..., Result]) -> None:
    """Same defect (no notion of a checkpointed stream ending): a primary dying
    inside checkpoint 3 leaves a stream a restore fails over from (warning); one
    dying before the first complete checkpoint is an error."""
    data = image(envelope="libxl", checkpoints=3)
    recs = _offsets(data, tmp_path)
    cps = [r for r in recs if r.layer == "libxc" and r.name == "CHECKPOINT"]
    assert len(cps) == 3
    res = check(data[: cps[2].offset - 3])  # inside the record before the third CHECKPOINT
    assert found(res) == [("checkpoint-eof", WARNING)]
    assert "fails over to checkpoint 2" in res.findings[0].message
    # after the first CHECKPOINT, inside its libxl section (no CHECKPOINT_END yet)
    res = check(data[: cps[0].offset + 8 + 11])
    assert found(res) == [("truncated", ERROR)]
    assert "before the first complete checkpoint" in res.findings[0].message


def test_optional_records_are_warnings(check: Callable[..., Result]) -> None:
    """Upstream rejects every record type with bit 31 set ("Unrecognised record
    type"), though the spec says a restorer ignores optional records."""
    data = libxc_stream("hvm", after={
        "pages": lambda w: w.record(0x80000123, b"future data"),
        "tsc": lambda w: w.record(libxc.REC_TYPE_OPTIONAL | libxc.REC_TYPE_X86_TSC_INFO,
                                  b"\0" * 24),
    })
    res = check(data)
    assert res.valid, found(res)
    assert found(res) == [("optional-record", INFO), ("optional-known-type", WARNING)]
    assert all(f.restore_tolerates for f in res.findings)
    assert res.findings[0].record_type == "OPTIONAL_0x80000123"
    assert res.findings[1].record_type == "OPTIONAL|X86_TSC_INFO"
    # a mandatory unknown type is still an error
    res = check(libxc_stream("hvm", after={"pages": lambda w: w.record(0x7F, b"x")}))
    f = one(res, "unknown-mandatory")
    assert (f.severity, f.restore_tolerates) == (ERROR, False)


@pytest.mark.parametrize("envelope", ["libxc", "libxl"])
def test_big_endian_noticed_and_labelled(check: Callable[..., Result], envelope: str) -> None:
    """Upstream never notices a big-endian stream, and its endianness label is
    computed from IHDR_OPT_LE (0), so it always says "little" (§7 #18)."""
    res = check(image(envelope=envelope, endian=">"))
    want = [("ihdr-big-endian", ERROR, RESTORE)]
    if envelope == "libxl":
        want = [("libxl-big-endian", ERROR, TOOLSTACK)] + want
    assert [(f.rule, f.severity, f.authority) for f in res.findings] == want
    # parsed in its own byte order: every record made sense
    assert res.summary["pages"] == 16 and res.summary["libxc"]["endian"] == "big"
    if envelope == "libxl":
        assert res.summary["libxl"]["endian"] == "big"
    little = check(image(envelope=envelope))
    assert little.summary["libxc"]["endian"] == "little"


@pytest.mark.parametrize("guest,kw,rule", [
    ("hvm", {"order": ["headers", "pages", "sde", "tsc", "hvmctx", "params", "end"]},
     "static-data-end-missing"),
    ("hvm", {"after": {"sde": lambda w: w.static_data_end()}}, "static-data-end-once"),
    ("hvm", {"version": 2, "after": {"pages": lambda w: w.static_data_end()}},
     "static-data-end-once"),
    ("pv", {"order": ["headers", "sde", "p2m", "pv_info", "pages", "tsc", "shinfo", "basic",
                      "ext", "xsave", "msrs", "end"]}, "pv-info-first"),
    ("pv", {"after": {"pv_info": lambda w: w.pv_info(8)}}, "pv-info-once"),
    ("pv", {"order": ["headers", "pv_info", "sde", "pages", "p2m", "tsc", "shinfo", "basic",
                      "ext", "xsave", "msrs", "end"]}, "page-data-before-p2m"),
    ("pv", {"replace": {"basic": lambda w: w.vcpu_basic(1, 8)}}, "vcpu0-missing"),
    ("pv", {"after": {"tsc": lambda w: w.hvm_params({1: 1})}}, "hvm-record-in-pv"),
    ("hvm", {"after": {"tsc": lambda w: w.shared_info()}}, "pv-record-in-hvm"),
], ids=["pagedata-before-sde", "two-sde", "v2-inferred-sde", "p2m-before-pvinfo",
        "pvinfo-twice", "pagedata-before-p2m", "no-vcpu0", "hvm-in-pv", "pv-in-hvm"])
def test_record_ordering_checked(check: Callable[..., Result], guest: str, kw: Dict[str, Any],
                                 rule: str) -> None:
    """Upstream checks no record ordering or stream state at all (§7 #4): e.g.
    PAGE_DATA before STATIC_DATA_END in v3, which C's restore refuses."""
    res = check(libxc_stream(guest, **kw))
    f = one(res, rule)
    assert (f.severity, f.authority, f.restore_tolerates) == (ERROR, RESTORE, False)
    assert not res.valid


@pytest.mark.parametrize("case,rule,severity", [
    # libxl restarts xc_domain_restore() at each LIBXC_CONTEXT: a convention, a warning
    ("second-libxc-context", "libxl-libxc-context-once", WARNING),
    ("emulator-in-pv", "libxl-emulator-not-hvm", ERROR),
])
def test_libxl_ordering_checked(check: Callable[..., Result], case: str, rule: str,
                                severity: str) -> None:
    """Upstream: no LIBXC_CONTEXT count check, emulator records not HVM-only (§7 #4)."""
    if case == "second-libxc-context":
        def emu(lw: LibxlWriter) -> None:
            lw.libxc_context()
            lw.out.write(libxc_stream("hvm"))
        data = libxl_around(libxc_stream("hvm"), emulator=emu)
    else:
        data = libxl_around(libxc_stream("pv"), hvm=True)
    res = check(data)
    hits = [f for f in res.findings if f.rule == rule]
    assert hits and all(f.severity == severity and f.layer == "libxl" for f in hits), found(res)
    if case == "emulator-in-pv":  # one per emulator record
        assert [f.record_type for f in hits] == ["EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT"]


def test_pipe_short_reads_are_not_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream reads with one raw read() per field, so a pipe that returns fewer
    bytes than asked ("cat img | verify-stream-v2", ssh, nc) fails with a
    spurious "Stream truncated"."""
    real = os.read

    def short(fd: int, n: int) -> bytes:
        return real(fd, min(n, 5))

    monkeypatch.setattr(os, "read", short)
    data = image(envelope="xl", checkpoints=2, colo=True)
    res = verify_pipe(data, chunk=7)
    assert found(res) == [("checkpoint-eof", WARNING)]
    res = verify_pipe(image(envelope="libxl", guest="pv"), chunk=3)
    assert res.valid and res.findings == [], found(res)
    assert res.summary["bytes"] > 64 * 1024


def _measured(fn: Callable[[], Result]) -> Tuple[Result, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        res = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return res, peak


def test_hostile_lengths_no_traceback_no_huge_allocation(check: Callable[..., Result]) -> None:
    """Upstream dies with a traceback or tries an 8 GiB allocation on hostile
    input (it reads whatever length a header claims)."""
    # libxc record claiming 4 GiB
    b = io.BytesIO()
    w = LibxcWriter(b)
    w.headers("hvm")
    b.write(struct.pack("<II", libxc.REC_TYPE_HVM_CONTEXT, 0xFFFFFFFF) + b"\0" * 64)
    res, peak = _measured(lambda: check(b.getvalue()))
    assert found(res) == [("length-limit", ERROR)] and peak < MIB
    # xl optional data and config claiming 4 GiB, on a pipe (nothing to seek)
    b = io.BytesIO()
    xl_header(b, b"\xff" * 16, optional_data_len=0xFFFFFFFF)
    raw = bytearray(b.getvalue())
    struct.pack_into("<I", raw, 48, 0xFFFFFFF0)  # config_len
    res, peak = _measured(lambda: verify_pipe(bytes(raw)))
    assert found(res) == [("truncated", ERROR)] and peak < 2 * MIB
    assert res.findings[0].what == "header (xl optional data)"


def test_hostile_bytes_never_raise(tmp_path: Path) -> None:
    """Same defect, broader: any byte of a valid image replaced by 0x00 or 0xff
    gives findings, never an exception, in bounded memory."""
    data = image(envelope="xl", guest="pv", pages=8, vcpus=2)
    p = tmp_path / "fuzz"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    offsets = sorted(set(range(0, 0x400, 3)) | set(range(0x400, len(data), 997)))
    tracemalloc.start()
    invalid = 0
    try:
        for off in offsets:
            orig = data[off:off + 1]
            for v in (b"\x00", b"\xff"):
                if v == orig:
                    continue
                os.pwrite(fd, v, off)
                with Source.open(str(p)) as src:
                    res = verify(src)
                assert isinstance(res, Result)
                invalid += not res.valid
            os.pwrite(fd, orig, off)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert invalid > len(offsets) // 2
    assert peak < 8 * MIB


def test_xl_without_streamv2_is_legacy(tmp_path: Path, check: Callable[..., Result]) -> None:
    """Upstream `verify-stream-v2 --format xl` switches to libxc when STREAMv2 is
    clear, i.e. treats a legacy stream as libxc v2 ("Bad image marker") instead
    of saying it is a legacy stream to convert (§7 #17).  Here: the drop-in
    names it a legacy stream to convert; ``xenstream verify`` follows a real
    legacy payload and finds it sound (a warning: convert before restoring)."""
    legacy = io.BytesIO()
    write_legacy(legacy, LegacySpec(guest="pv", width=8, guest_width=8, pages=8))
    assert legacy.getvalue()[8:16] == b"\xff" * 8  # 64-bit PV: ~0UL after p2m_size
    b = io.BytesIO()
    xl_header(b, {"c_info": {"type": "pv"}}, streamv2=False)
    b.write(legacy.getvalue())
    # the drop-in's verdict (reject_legacy), API and CLI
    res = check(b.getvalue(), reject_legacy=True)
    assert found(res) == [("legacy-stream-rejected", ERROR)]
    f = one(res, "legacy-stream-rejected")
    assert (f.authority, f.restore_tolerates) == (SPEC, False)
    assert f.message.startswith("legacy stream: convert it")
    assert "64-bit" in f.message and "STREAMv2 flag clear" in f.message
    assert res.layers == ["xl", "legacy"]
    p = tmp_path / "legacy.xl"
    p.write_bytes(b.getvalue())
    out = v2(["-f", "xl", "-i", str(p)])
    assert out.returncode == 1 and "legacy stream: convert it" in out.stderr
    assert "marker" not in out.stderr
    # xenstream verify: the same legacy stream, followed to its end
    res = check(b.getvalue())
    assert found(res) == [("legacy-stream", WARNING)]
    f = one(res, "legacy-stream")
    assert (f.authority, f.restore_tolerates) == (TOOLSTACK, True)  # xl runs the converter
    assert f.message.startswith("legacy image (") and "STREAMv2 flag clear" in f.message
    assert res.valid and res.layers == ["xl", "legacy"]
    assert res.summary["legacy"]["container"] == "xl"
    assert res.summary["legacy"]["checkpoints"] == 1
    assert "marker" not in " ".join(x.message for x in res.findings)
    # a 16-byte legacy head and filler: detected as legacy, then the filler is
    # no legacy stream (never "Bad image marker")
    b2 = io.BytesIO()
    xl_header(b2, {"c_info": {"type": "pv"}}, streamv2=False)
    b2.write(struct.pack("<QQ", 0x40000, 2**64 - 1) + bytes(range(256)) * 4)
    stub = check(b2.getvalue())
    assert one(stub, "legacy-stream").severity == WARNING
    assert not stub.valid and all(e.layer == "legacy" for e in stub.errors)
    assert "marker" not in " ".join(x.message for x in stub.findings)
    # the flag clear but a v2 stream after it: named as the lie it is, at the
    # xl mandatory_flags field, and the stream is checked by its content
    b = io.BytesIO()
    xl_header(b, {"c_info": {"type": "hvm"}}, streamv2=False)
    b.write(image(envelope="libxl"))
    res = check(b.getvalue())
    assert found(res) == [("xl-streamv2-lie", ERROR)]
    lie = res.findings[0]
    assert (lie.layer, lie.offset, lie.authority) == ("xl", 36, TOOLSTACK)
    assert res.layers == ["xl", "libxl", "libxc"]


def test_xl_byteorder_checked(check: Callable[..., Result]) -> None:
    """Upstream's xl mode never checks the byteorder word (§7 #17)."""
    b = io.BytesIO()
    xl_header(b, {"c_info": {"type": "hvm"}}, byteorder=0x11223344)
    b.write(image(envelope="libxl"))
    f = one(check(b.getvalue()), "xl-byteorder")
    assert f.severity == ERROR and "0x11223344" in f.message


def test_toolstack_record_is_a_stream_error(tmp_path: Path, check: Callable[..., Result]) -> None:
    """Upstream's TOOLSTACK handler raises DeprecationWarning, which escapes the
    stream-error handler: "Script Error ... Please fix me", exit 2."""
    data = libxc_stream("hvm", after={"tsc": lambda w: w.record(libxc.REC_TYPE_TOOLSTACK,
                                                                b"toolstack\0")})
    res = check(data)
    f = one(res, "toolstack-record")
    assert (f.severity, f.authority, f.record_type) == (ERROR, RESTORE, "TOOLSTACK")
    p = tmp_path / "ts"
    p.write_bytes(data)
    out = v2(["-i", str(p)])
    assert out.returncode == 1
    assert "Please fix me" not in out.stderr and "internal error" not in out.stderr
    assert len(out.stderr.splitlines()) == 1 and "(TOOLSTACK)" in out.stderr


def _colo_with_state(state: bytes) -> bytes:
    b = io.BytesIO()
    lw = LibxlWriter(b)
    lw.header()
    lw.libxc_context()
    write_libxc(lw.libxc(), ImageSpec(envelope="libxl", pages=8, checkpoints=1), lw)
    b.write(state)
    return b.getvalue()


@pytest.mark.parametrize("length,rule,authority,tolerated", [
    # 0: libxl reads control_id through a NULL body; any other length is read
    # (with its padding) and only the spec's exact 4 bytes is broken
    (0, "libxl-checkpoint-state-empty", TOOLSTACK, False),
    (2, "libxl-checkpoint-state-length", SPEC, True),
    (6, "libxl-checkpoint-state-length", SPEC, True)])
def test_checkpoint_state_length(check: Callable[..., Result], length: int, rule: str,
                                 authority: str, tolerated: bool) -> None:
    """Upstream only checks CHECKPOINT_STATE's length != 0; C needs 4 bytes
    (and dereferences NULL on 0) (§7 #11, #24)."""
    body = b"\0" * length
    res = check(_colo_with_state(struct.pack("<II", 5, length) + body + b"\0" * (-length % 8)))
    f = one(res, rule)
    assert (f.severity, f.authority, f.restore_tolerates) == (ERROR, authority, tolerated)
    assert res.summary["checkpoints"]["kind"] == "colo"
    ok = check(_colo_with_state(struct.pack("<III", 5, 4, 0) + b"\0" * 4))
    assert found(ok) == [("checkpoint-eof", WARNING)]


@pytest.mark.parametrize("width,levels,ok", [(8, 4, True), (4, 3, True), (8, 3, False),
                                             (4, 4, False), (2, 2, False)])
def test_pv_info_width_levels(check: Callable[..., Result], width: int, levels: int,
                              ok: bool) -> None:
    """Upstream does not check X86_PV_INFO's guest_width/pt_levels combination (§7 #6)."""
    w_ = width if width in (4, 8) else 8
    res = check(libxc_stream("pv", width=w_,
                             replace={"pv_info": lambda w: w.pv_info(width, levels)}))
    if ok:
        assert res.valid and res.findings == [], found(res)
        assert res.summary["guest_width"] == width * 8
    else:
        f = one(res, "pv-info-width")
        assert (f.severity, f.authority) == (ERROR, RESTORE)


def test_p2m_frames_formula(check: Callable[..., Result]) -> None:
    """Upstream checks neither start <= end nor the exact X86_PV_P2M_FRAMES length
    formula (§7 #7)."""
    spec = ImageSpec(guest="pv", pages=16)
    max_pfn, frames = p2m_frame_pfns(spec)
    assert libxc.p2m_frames_length(0, max_pfn, 8) == 8 + 8 * len(frames)
    # fpp = 4096 / width: 512 pfns per frame at width 8, 1024 at width 4
    assert libxc.p2m_frames_length(0, 0x1FF, 8) == 16
    assert libxc.p2m_frames_length(0, 0x200, 8) == 24
    assert libxc.p2m_frames_length(0, 0x3FF, 4) == 16
    assert libxc.p2m_frames_length(0, 0x400, 4) == 24
    assert libxc.p2m_frames_length(0x200, 0x5FF, 8) == 24
    res = check(libxc_stream("pv", replace={
        "p2m": lambda w: w.p2m_frames(0, max_pfn, frames + [3])}))
    f = one(res, "p2m-frames-length")
    assert f.severity == ERROR and "found 24" in f.message
    res = check(libxc_stream("pv", replace={"p2m": lambda w: w.p2m_frames(9, 3, frames)}))
    assert one(res, "p2m-frames-range").severity == ERROR


@pytest.mark.parametrize("step,fn,rule", [
    ("basic", lambda w: w.vcpu_basic(0, 8, blob=b"\0" * 5160), "vcpu-basic-size"),
    ("ext", lambda w: w.vcpu_extended(0, blob=struct.pack("<II", 0, 64) + b"\0" * 128),
     "vcpu-extended-size"),
    ("xsave", lambda w: w.vcpu_xsave(0, blob=b"\0" * 8), "vcpu-xsave-size"),
    ("msrs", lambda w: w.vcpu(libxc.REC_TYPE_X86_PV_VCPU_MSRS, 0, b"\0" * 24), "vcpu-msrs-size"),
], ids=["basic", "extended", "xsave", "msrs"])
def test_vcpu_record_sizes(check: Callable[..., Result], step: str, fn: Step,
                           rule: str) -> None:
    """Upstream has no size rules for X86_PV_VCPU_* (§7 #8): C wants BASIC ==
    5168/2800, EXTENDED <= 128, XSAVE >= 16, MSRS a multiple of 16."""
    res = check(libxc_stream("pv", replace={step: fn}))
    f = one(res, rule)
    assert (f.severity, f.authority, f.restore_tolerates) == (ERROR, RESTORE, False)


def test_vcpu_basic_size_follows_guest_width(check: Callable[..., Result]) -> None:
    """Same defect (§7 #8): the BASIC size depends on the width X86_PV_INFO set."""
    assert check(libxc_stream("pv", width=4)).findings == []
    res = check(libxc_stream("pv", width=4, replace={"basic": lambda w: w.vcpu_basic(0, 8)}))
    f = one(res, "vcpu-basic-size")
    assert "2800" in f.message and "5168" in f.message


def test_vcpu_id_beyond_config(check: Callable[..., Result]) -> None:
    """Same defect (§7 #8): vcpu_id must be below the domain's vcpu count."""
    b = io.BytesIO()
    xl_header(b, {"c_info": {"type": "pv"}, "b_info": {"max_vcpus": 1}})
    b.write(libxl_around(libxc_stream("pv", after={"basic": lambda w: w.vcpu_basic(1, 8)}),
                         hvm=False))
    f = one(check(b.getvalue()), "vcpu-id")
    assert f.severity == ERROR and "found 1" in f.message


def test_pfn_beyond_max_pfn(check: Callable[..., Result]) -> None:
    """Upstream has no PV pfn <= max_pfn check (§7 #5); C fails "pfn ... outside
    domain maximum"."""
    res = check(libxc_stream("pv", after={"pages": lambda w: w.page_data([16, 40])}))
    f = one(res, "page-data-pfn-range")
    assert (f.severity, f.authority) == (ERROR, RESTORE)
    assert "0x10" in f.message and "0x28" in f.message and "max_pfn 0xf" in f.message


def test_page_data_count_zero(check: Callable[..., Result]) -> None:
    """Upstream does not require PAGE_DATA count >= 1 (§7 #5)."""
    res = check(libxc_stream("hvm", after={"pages": lambda w: w.page_data([])}))
    assert one(res, "page-data-count").severity == ERROR


def test_rec_length_max(check: Callable[..., Result]) -> None:
    """Upstream has no REC_LENGTH_MAX (128 MiB) check (§7 #9)."""
    def huge(length: int) -> bytes:
        b = io.BytesIO()
        w = LibxcWriter(b)
        w.headers("hvm")
        w.static_data_end()
        b.write(struct.pack("<II", libxc.REC_TYPE_PAGE_DATA, length) + b"\0" * 4096)
        return b.getvalue()

    res = check(huge(libxc.REC_LENGTH_MAX + 8))
    f = one(res, "length-limit")
    assert f.severity == ERROR and "PAGE_DATA" in f.what and f.offset == 0x30  # after STATIC_DATA_END
    # exactly the limit is allowed: in a short file it is a truncation instead
    res = check(huge(libxc.REC_LENGTH_MAX))
    assert found(res) == [("truncated", ERROR)]


def test_data_after_end_is_a_warning(tmp_path: Path, check: Callable[..., Result]) -> None:
    """Upstream never checks that nothing follows END (§7 #9); in a file that is
    worth a warning (not an error: the restorer never reads it)."""
    for env in ("libxc", "xl"):
        res = check(image(envelope=env) + b"\0junk")
        assert res.valid
        f = one(res, "trailing-data")
        assert (f.severity, f.authority, f.restore_tolerates) == (WARNING, SPEC, True)
        assert "5 bytes" in f.message


def test_v2_only_records_in_v2_stream_tolerated_by_restore(check: Callable[..., Result]) -> None:
    """Upstream rejects STATIC_DATA_END/CPUID/MSR policy in a v2 stream although C
    accepts them (§7 #13): ours says it is a convention the restore tolerates,
    a warning (also with --lenient), so the stream is valid."""
    data = libxc_stream("hvm", version=2, after={"headers": lambda w: w.static_data_end()})
    res = check(data)
    f = one(res, "v3-record-in-v2")
    assert (f.severity, f.authority, f.restore_tolerates) == (WARNING, CONVENTION, True)
    assert res.valid and found(res) == [("v3-record-in-v2", WARNING)]
    res = check(data, lenient=True)
    assert res.valid and found(res) == [("v3-record-in-v2", WARNING)]


def test_reserved_fields_are_spec_not_restore(check: Callable[..., Result]) -> None:
    """Upstream rejects non-zero reserved fields and padding C never checks (§7 #14):
    ours flags them as spec violations the restore tolerates."""
    data = libxc_stream("hvm", replace={
        "pages": lambda w: w.page_data(list(range(16)), res1=7),
        "tsc": lambda w: w.tsc_info(res=1),
    }, after={"params": lambda w: w.record(libxc.REC_TYPE_VERIFY, b"\1\2\3", padding=b"\1" * 5)})
    res = check(data)
    rules = {f.rule for f in res.findings}
    assert rules == {"page-data-reserved", "tsc-info-reserved", "record-length-zero",
                     "padding-zero"}, found(res)
    assert all(f.authority == SPEC and f.restore_tolerates for f in res.findings)
    res = check(data, lenient=True)
    assert res.valid and {f.severity for f in res.findings} == {WARNING}


def test_libxl_option_bits_16_31(check: Callable[..., Result]) -> None:
    """Upstream's libxl HDR_OPT_RESZ_MASK (0xfffc) covers only 16 of the 32 option
    bits (§7 #19)."""
    b = io.BytesIO()
    lw = LibxlWriter(b)
    lw.header(options=0x00010000)
    lw.libxc_context()
    b.write(libxc_stream("hvm"))
    lw.end()
    f = one(check(b.getvalue()), "libxl-options-reserved")
    assert f.severity == ERROR and "0x00010000" in f.message


def test_shared_info_message_says_4096(check: Callable[..., Result]) -> None:
    """Upstream's SHARED_INFO error text says "4906" (§7 #20)."""
    res = check(libxc_stream("pv", replace={"shinfo": lambda w: w.shared_info(b"\0" * 4104)}))
    f = one(res, "shared-info-length")
    assert "4096" in f.message and "4906" not in f.message


def test_dirty_pfn_list_in_forward_stream(check: Callable[..., Result]) -> None:
    """Upstream's CHECKPOINT_DIRTY_PFN_LIST handler always raises; ours reports that
    the record belongs to the COLO back channel, as a normal finding."""
    res = check(libxc_stream("hvm", after={
        "pages": lambda w: w.record(libxc.REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST,
                                    struct.pack("<Q", 3))}))
    f = one(res, "dirty-pfn-list-forward")
    assert f.severity == ERROR and f.record_type == "CHECKPOINT_DIRTY_PFN_LIST"
