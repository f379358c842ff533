"""Judging every image as Xen judges it (issue 8): the legacy device-model
record as the restorers read it, envelope lies on convert, the converter's
output judged against the release it is for, the drop-in's stream v2, and a
v2 stream without its device state.

Every image is built with the writers, then the bytes that matter are cut or
patched by hand at offsets found in the bytes themselves.  Every conversion
these tests make is also verified by the suite's selfcheck (conftest.py).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from xenstream.cli import convert_legacy_stream as dropin
from xenstream.cli.main import main
from xenstream.consumers.verify import Result, verify
from xenstream.formats import hvm, xl
from xenstream.io import Source
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import ImageSpec, default_config, write_image, xl_header

sys.path.insert(0, str(Path(__file__).parent))
from stream_helpers import libxl_stream  # noqa: E402

SIG_LIBXL = b"DeviceModelRecord0002"
SIG_XEND = b"QemuDeviceModelRecord"


def legacy(**kw: Any) -> bytes:
    out = io.BytesIO()
    write_legacy(out, LegacySpec(**kw))
    return out.getvalue()


def put(tmp_path: Path, data: bytes, name: str = "in.img") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def check(path: Path, **kw: Any) -> Result:
    with Source.open(str(path)) as src:
        return verify(src, **kw)


def errors(res: Result) -> List[Tuple[str, int]]:
    return [(f.rule, f.offset) for f in res.findings if f.severity == "error"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def run_dropin(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str]:
    rc = dropin.main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


# -- 1. the legacy device-model record ---------------------------------------------------------

#: envelope -> (the signature its qemu record starts with, the drop-in's extra options)
QEMU_ENVELOPES = {
    "bare": (SIG_LIBXL, ()),
    "xl": (SIG_LIBXL, ("-x", "-f", "libxl")),
    "libvirt": (SIG_LIBXL, None),
    "xend": (SIG_XEND, None),
    "xenopsd": (SIG_XEND + b"\n", None),
}


def cut_before_qemu(envelope: str) -> Tuple[bytes, int]:
    """A legacy HVM image in ``envelope`` cut exactly where its qemu record starts."""
    data = legacy(guest="hvm", pages=16, envelope=envelope)
    at = data.rfind(QEMU_ENVELOPES[envelope][0])
    assert at > 0
    return data[:at], at


@pytest.mark.parametrize("envelope", list(QEMU_ENVELOPES))
def test_missing_qemu_record(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             envelope: str) -> None:
    """xc_domain_restore.c (4.5) buffer_tail_hvm() reads the signature right
    after the HVM context: "Error reading QEMU signature"; xenopsd reads its
    own 22 bytes there."""
    data, at = cut_before_qemu(envelope)
    inp = put(tmp_path, data)
    res = check(inp)
    assert errors(res) == [("legacy-qemu-missing", at)], res.findings
    out = tmp_path / "out.img"
    rc, text = cli(capsys, "convert", str(inp), str(out))
    assert rc == 1 and "legacy-qemu-missing" not in text and "device-model record" in text, text
    assert not out.exists()
    # the caller reads the record itself: nothing is missing
    assert check(inp, skip_qemu=True).valid
    rc, text = cli(capsys, "verify", "--skip-qemu", str(inp))
    assert rc == 0, text
    rc, text = cli(capsys, "convert", "--skip-qemu", str(inp), str(out))
    if envelope in ("xl", "libvirt", "xend"):
        # the output would be an HVM libxl stream without its device state,
        # which the config says a device model needs: written only if forced
        assert rc == 1 and "libxl-emulator-missing" in text and not out.exists(), text
        rc, text = cli(capsys, "convert", "--skip-qemu", "--force", str(inp), str(out))
    assert rc == 0, text
    opts = QEMU_ENVELOPES[envelope][1]
    if opts is not None:  # the drop-in reads bare streams and (-x) xl files
        out2 = tmp_path / "dropin.img"
        rc, text = run_dropin(capsys, *opts, "-i", str(inp), "-o", str(out2))
        assert rc == 1 and "device-model record" in text and not out2.exists(), text
        rc, text = run_dropin(capsys, *opts, "--skip-qemu", "-i", str(inp), "-o", str(out2))
        # -x -f libxl: an xl HVM file without its device state restores nowhere
        assert rc == (1 if envelope == "xl" else 0), text


def test_xend_qemu_data_without_qevm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """compat_buffer_qemu(): the data (to the end of the input) must start
    with "QEVM" ("Invalid QEMU magic")."""
    data = bytearray(legacy(guest="hvm", pages=16, envelope="xend"))
    at = data.rfind(SIG_XEND)
    assert data[at + 21 : at + 25] == b"QEVM"
    data[at + 21 : at + 25] = b"QEVX"
    inp = put(tmp_path, bytes(data))
    assert errors(check(inp)) == [("legacy-qemu-qevm", at + 21)]
    rc, text = cli(capsys, "convert", str(inp), str(tmp_path / "out.img"))
    assert rc == 1 and "Invalid QEMU magic" in text, text
    assert check(inp, skip_qemu=True).valid
    # an HVM guest (the SXP says) without its device state: only when forced
    rc, text = cli(capsys, "convert", "--skip-qemu", str(inp), str(tmp_path / "out.img"))
    assert rc == 1 and "libxl-emulator-missing" in text, text
    rc, text = cli(capsys, "convert", "--skip-qemu", "--force", str(inp),
                   str(tmp_path / "out.img"))
    assert rc == 0, text


def test_xenserver_signature_without_newline(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """xenopsd reads exactly "QemuDeviceModelRecord\\n" after a XenSavedDomain
    image's stream."""
    data = legacy(guest="hvm", pages=16, envelope="xenopsd")
    at = data.rfind(SIG_XEND + b"\n")
    bad = data[: at + 21] + data[at + 22 :]
    inp = put(tmp_path, bad)
    assert errors(check(inp)) == [("xenopsd-qemu-signature", at)]
    rc, text = cli(capsys, "convert", str(inp), str(tmp_path / "out.img"))
    assert rc == 1 and "QemuDeviceModelRecord\\n" in text, text
    assert check(inp, skip_qemu=True).valid
    rc, text = cli(capsys, "convert", "--skip-qemu", str(inp), str(tmp_path / "out.img"))
    assert rc == 0, text


@pytest.mark.parametrize("envelope,rule_id", [("bare", "legacy-qemu-length"),
                                              ("xenopsd", "xenopsd-qemu-length")])
def test_qemu_length_beyond_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      envelope: str, rule_id: str) -> None:
    data = bytearray(legacy(guest="hvm", pages=16, envelope=envelope))
    sig = QEMU_ENVELOPES[envelope][0]
    at = data.rfind(sig) + len(sig)
    fmt = "<I" if envelope == "bare" else ">I"
    (n,) = struct.unpack_from(fmt, data, at)
    assert at + 4 + n == len(data)  # the record is the image's last
    struct.pack_into(fmt, data, at, n + 100)
    inp = put(tmp_path, bytes(data))
    assert [r for r, _ in errors(check(inp))] == [rule_id]
    rc, text = cli(capsys, "convert", str(inp), str(tmp_path / "out.img"))
    assert rc == 1 and "device-model state" in text, text
    assert check(inp, skip_qemu=True).valid
    rc, text = cli(capsys, "convert", "--skip-qemu", str(inp), str(tmp_path / "out.img"))
    assert rc == 0, text


def test_bad_qemu_record_in_a_later_remus_checkpoint(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """In a later checkpoint the legacy restorer discards what it cannot
    buffer and restores the last complete checkpoint ("error buffering image
    tail, finishing"): a warning, and the conversion keeps checkpoint 1."""
    data = bytearray(legacy(guest="hvm", pages=16, checkpoints=3, qemu="remus"))
    sigs = [i for i in range(len(data)) if data.startswith(b"RemusDeviceModelState", i)]
    assert len(sigs) == 3
    data[sigs[1] : sigs[1] + 5] = b"Xemus"
    inp = put(tmp_path, bytes(data))
    res = check(inp)
    assert res.valid and [f.rule for f in res.findings if f.severity == "warning"] == [
        "legacy-stream-unconverted", "legacy-checkpoint-bad"], res.findings
    bad = [f for f in res.findings if f.rule == "legacy-checkpoint-bad"][0]
    assert bad.offset == sigs[1] and "checkpoint 1" in bad.message
    out = tmp_path / "out.img"
    rc, text = cli(capsys, "convert", str(inp), str(out))
    assert rc == 0 and "malformed checkpoint 2" in text, text
    rc, text = cli(capsys, "convert", "--skip-qemu", str(inp), str(out))
    assert rc == 0, text


def test_good_qemu_records_still_accepted(tmp_path: Path) -> None:
    for envelope in QEMU_ENVELOPES:
        assert check(put(tmp_path, legacy(guest="hvm", pages=16, envelope=envelope))).valid


# -- 2. envelope lies on convert ------------------------------------------------------------


def libvirt_v2_before_legacy() -> bytes:
    data = bytearray(legacy(guest="hvm", pages=16, envelope="libvirt"))
    assert data[:16] == b"LibvirtXenSave\0\0"[:16] or data[:11] == b"libvirt-xml"
    assert struct.unpack_from("<I", data, 16) == (1,)
    struct.pack_into("<I", data, 16, 2)  # the header says: a libxl v2 stream follows
    return bytes(data)


def xl_streamv2_before_legacy() -> bytes:
    data = bytearray(legacy(guest="pv", pages=16, envelope="xl"))
    flags = struct.unpack_from("<I", data, 36)[0]
    assert not flags & xl.MANDATORY_FLAG_STREAMV2
    struct.pack_into("<I", data, 36, flags | xl.MANDATORY_FLAG_STREAMV2)
    return bytes(data)


@pytest.mark.parametrize("build,rule_id,at", [
    (libvirt_v2_before_legacy, "libvirt-version-lie", 16),
    (xl_streamv2_before_legacy, "xl-streamv2-legacy", 36),
])
def test_envelope_lie_stops_convert_unless_forced(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  build: Any, rule_id: str, at: int) -> None:
    inp = put(tmp_path, build())
    assert (rule_id, at) in errors(check(inp))
    out = tmp_path / "out.img"
    rc, text = cli(capsys, "convert", str(inp), str(out))
    assert rc == 1 and rule_id in text and f"offset {at:#x}" in text, text
    assert not out.exists()
    rc, text = cli(capsys, "convert", "--force", str(inp), str(out))
    assert rc == 0 and "warning" in text and rule_id in text, text
    res = check(out)
    assert res.valid and res.findings == [], res.findings  # the envelope the content calls for


def test_envelope_lie_stops_the_dropin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = put(tmp_path, xl_streamv2_before_legacy())
    out = tmp_path / "out.img"
    rc, text = run_dropin(capsys, "-x", "-f", "libxl", "-i", str(inp), "-o", str(out))
    assert rc == 1 and "xl-streamv2-legacy" in text and not out.exists(), text


# -- 3. the converter's output is judged against its target release -----------------------------


#: the CPU record's cr3 within its body (xen/include/public/arch-x86/hvm/save.h:
#: 512 bytes of FPU state, then rax .. r15, rip, rflags, cr0, cr2, cr3)
CPU_CR3 = 672


def with_bad_cpu_record(cr3: int) -> bytes:
    """A legacy HVM image whose vcpu 0 CPU record has CR3 = ``cr3``."""
    out = io.BytesIO()
    exp = write_legacy(out, LegacySpec(guest="hvm", pages=16))
    data = bytearray(out.getvalue())
    ctx = exp.hvm_context
    assert ctx is not None
    at = data.find(ctx)
    assert at > 0 and data.count(ctx) == 1
    (entry,) = [e for e in hvm.iter_entries(ctx) if e.typecode == hvm.CPU]
    struct.pack_into("<Q", data, at + entry.body_offset + CPU_CR3, cr3)
    return bytes(data)


def test_bad_cpu_record_refused_and_forced(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """hvm_load_cpu_ctxt() refuses CR3 bits above MAXPHYSADDR since 4.14
    (80872597e6, xen/arch/x86/hvm/hvm.c): 4.13 is the last release that
    restores it."""
    inp = put(tmp_path, with_bad_cpu_record(cr3=1 << 60))
    out = tmp_path / "out.img"
    rc, text = cli(capsys, "convert", str(inp), str(out))
    assert rc == 1 and "hvm-cpu-cr3" in text and "4.13 is the last release" in text, text
    assert not out.exists()
    rc, text = cli(capsys, "convert", "--force", str(inp), str(out))
    assert rc == 0, text
    warned = [ln for ln in text.splitlines() if ": warning:" in ln]
    assert len(warned) == 1 and "hvm-cpu-cr3" in warned[0] and "forced" in warned[0], text
    # the output fails verify exactly on what was forced
    assert {r for r, _ in errors(check(out))} == {"hvm-cpu-cr3"}
    # the drop-in runs on a host of unknown release: 4.6-4.13 restore it
    out2 = tmp_path / "dropin.img"
    rc, text = run_dropin(capsys, "-i", str(inp), "-o", str(out2))
    assert rc == 0 and "hvm-cpu-cr3" in text and "4.13" in text, text


def test_tsc_mode_3_warns_in_the_dropin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Xen 4.6-4.11 restore TSC mode 3 (refused from 4.12, a4ac3d40ec)."""
    inp = put(tmp_path, legacy(guest="pv", pages=16, tsc_mode=3))
    out = tmp_path / "out.img"
    rc, text = run_dropin(capsys, "-i", str(inp), "-o", str(out))
    assert rc == 0 and "tsc-mode-pvrdtscp" in text and "4.11 is the last release" in text, text
    with Source.open(str(out)) as src:
        assert {f.rule for f in verify(src).errors} == {"tsc-mode-pvrdtscp"}
    # verify judges the legacy image as HEAD would restore its conversion
    assert "legacy-tsc-pvrdtscp" in {r for r, _ in errors(check(inp))}


# -- 4. the drop-in writes stream v2 ---------------------------------------------------------

#: marker, "XENF", version 2, options 0, reserved (big-endian) and the domain
#: header (little-endian): x86 PV, page_shift 12, xen_major 0 (converted),
#: xen_minor 1 (the converter's version)
V2_HEADERS_PV = bytes.fromhex("ffffffffffffffff" "58454e46" "00000002" "0000" "0000" "00000000"
                              "01000000" "0c00" "0000" "00000000" "01000000")


def test_dropin_writes_stream_v2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Xen 4.6-4.13 refuse any version but 2 (xc_sr_restore.c read_headers()
    at RELEASE-4.13.0); every release from 4.6 restores 2."""
    inp = put(tmp_path, legacy(guest="pv", pages=16))
    out = tmp_path / "out.img"
    rc, text = run_dropin(capsys, "-i", str(inp), "-o", str(out))
    assert rc == 0, text
    assert out.read_bytes()[:40] == V2_HEADERS_PV
    rc, text = run_dropin(capsys, "--stream-version", "3", "-i", str(inp), "-o", str(out))
    assert rc == 0, text
    assert out.read_bytes()[:40] == V2_HEADERS_PV[:12] + b"\0\0\0\3" + V2_HEADERS_PV[16:]


def test_dropin_xl_libxc_keeps_upstreams_output(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """-x -f libxc: the xl header without STREAMv2 before a libxc stream, as
    upstream wrote it, with a warning; the one output that fails verify."""
    inp = put(tmp_path, legacy(guest="pv", pages=16, envelope="xl"))
    out = tmp_path / "out.img"
    rc, text = run_dropin(capsys, "-x", "-f", "libxc", "-i", str(inp), "-o", str(out))
    assert rc == 0 and "no xl restores" in text, text
    raw = out.read_bytes()
    assert raw[:32] == xl.MAGIC
    assert not struct.unpack_from("<I", raw, 36)[0] & xl.MANDATORY_FLAG_STREAMV2
    assert {r for r, _ in errors(check(out))} == {"xl-streamv2-lie"}


# -- 6. a v2 stream without its device state ----------------------------------------------------


def xl_hvm_without_emulator(ctype: Optional[str]) -> bytes:
    spec = ImageSpec(envelope="xl", guest="hvm", pages=16)
    cfg = default_config(spec)
    if ctype is not None:
        cfg["c_info"]["type"] = ctype
    out = io.BytesIO()
    xl_header(out, cfg)
    out.write(libxl_stream(spec, emu=False))
    return out.getvalue()


def test_v2_hvm_without_emulator_context(tmp_path: Path) -> None:
    """libxl starts an HVM guest's device model with -incoming from the
    EMULATOR_CONTEXT record's data (libxl_create.c, libxl_dm.c); a PVH guest
    has none."""
    res = check(put(tmp_path, xl_hvm_without_emulator("hvm")))
    assert [r for r, _ in errors(res)] == ["libxl-emulator-missing"]
    assert res.findings[-1].authority == "toolstack"
    res = check(put(tmp_path, xl_hvm_without_emulator("pvh")))
    assert res.valid and res.findings == [], res.findings
    # a bare libxl stream: no config to tell
    res = check(put(tmp_path, libxl_stream(ImageSpec(envelope="libxl", pages=16), emu=False)))
    assert res.valid and [(f.rule, f.severity) for f in res.findings] == [
        ("libxl-emulator-unknown", "warning")]
    # with the record, nothing to say
    whole = io.BytesIO()
    write_image(whole, ImageSpec(envelope="xl", guest="hvm", pages=16))
    res = check(put(tmp_path, whole.getvalue()))
    assert res.valid and res.findings == []


# -- the selfcheck itself ------------------------------------------------------------------------


def test_selfcheck_catches_a_rejected_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xenstream_selfcheck

    log = tmp_path / "violations"
    monkeypatch.setenv("XENSTREAM_SELFCHECK", str(log))  # not this test's own log

    bad = put(tmp_path, xl_streamv2_before_legacy(), "bad.img")

    class Opts:
        upstream_xl = False
        out_format = None

    class Res:
        envelope = "xl"
        forced: List[str] = []

    with pytest.raises(AssertionError, match="xl-streamv2-legacy"):
        xenstream_selfcheck.check(str(bad), Opts(), Res())
    Res.forced = ["xl-streamv2-legacy", "legacy-stream"]  # exactly what was forced: accepted
    with pytest.raises(AssertionError):  # the legacy-stream warning is no error
        xenstream_selfcheck.check(str(bad), Opts(), Res())
    Res.forced = ["xl-streamv2-legacy"]
    xenstream_selfcheck.check(str(bad), Opts(), Res())
    assert log.read_text().count("selfcheck:") == 2


def test_selfcheck_runs_in_subprocesses() -> None:
    p = subprocess.run([sys.executable, "-c", "import xenstream_selfcheck as s; print(s._installed)"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "True", p.stderr


def test_json_findings_carry_their_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = cut_before_qemu("bare")
    rc, text = cli(capsys, "verify", "--json", str(put(tmp_path, data)))
    doc = json.loads(text)
    assert rc == 1 and doc["schema_version"] == 2
    (f,) = [f for f in doc["findings"] if f["severity"] == "error"]
    assert (f["rule"], f["authority"]) == ("legacy-qemu-missing", "restore")
    assert f["source"] == "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: buffer_tail_hvm()"


def test_qemu_traditional_state_is_a_host_condition(tmp_path: Path) -> None:
    """The device model that restores the state is the host's business
    (qemu-traditional left Xen in 4.21, 19ab8356ab): a warning, not an error."""
    out = io.BytesIO()
    xl_header(out, default_config(ImageSpec(envelope="xl", guest="hvm", pages=16)))
    out.write(libxl_stream(ImageSpec(envelope="libxl", guest="hvm", pages=16), emu=False,
                           after=lambda lw: lw.emulator_context(b"QEVM\0\0\0\3" + bytes(56),
                                                                emulator_id=1)))
    res = check(put(tmp_path, out.getvalue()))
    assert res.valid and [(f.rule, f.severity, f.authority) for f in res.findings] == [
        ("qemu-traditional-state", "warning", "toolstack")], res.findings


def test_oversized_toolstack_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The legacy restorer takes any u32 length; xenstream holds 64 MiB: verify
    skips the data with a warning, convert refuses with one line (not a crash)."""
    from xenstream.formats import legacy as fl
    from xenstream.writers.legacy import LegacyWriter

    out = io.BytesIO()
    w = LegacyWriter(out, width=8, guest="hvm")
    w.header(16)
    w.batch(list(range(16)), 0)
    w.toolstack(b"", length=fl.TOOLSTACK_MAX + 1)
    out.write(bytes(fl.TOOLSTACK_MAX + 1))
    inp = put(tmp_path, out.getvalue())
    res = check(inp)
    assert "legacy-toolstack-size" in {f.rule for f in res.findings if f.severity == "warning"}
    rc, text = cli(capsys, "convert", str(inp), str(tmp_path / "out.img"))
    assert rc == 1 and "toolstack record of" in text and "Traceback" not in text, text
