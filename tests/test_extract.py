"""xenstream extract: the blob an image carries, as the test gave it to the
writer, from the last complete checkpoint; text and JSON xenstore output;
0600 atomic files, stdout, errors."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from envelope_helpers import exe, feeder, run
from extract_helpers import PAGE, Built, legacy_image, v2_image
from xenstream.consumers.blobs import extract_blob, xenstore_text
from xenstream.formats import libxl
from xenstream.writers.v2 import LibxcWriter, LibxlWriter, xl_header


def put(tmp_path: Path, built: Built) -> Path:
    img = tmp_path / "image.bin"
    img.write_bytes(built.data)
    return img


def blob(tmp_path: Path, img: Path, what: str, name: str = "out.bin") -> bytes:
    out = tmp_path / name
    p = run([exe("xenstream"), "extract", str(img), "--what", what, "-o", str(out)], expect=0)
    assert what in p.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return out.read_bytes()


# -- v2 images ------------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", ["xl", "libxl", "libvirt"])
def test_v2_hvm_blobs(tmp_path: Path, envelope: str) -> None:
    built = v2_image(envelope, "hvm")
    img = put(tmp_path, built)
    assert blob(tmp_path, img, "emulator-context") == built.emulator_context
    assert blob(tmp_path, img, "hvm-context") == built.hvm_context
    p = run([exe("xenstream"), "extract", str(img), "--what", "xenstore"], expect=0)
    assert p.stdout == "".join(f"{k.decode()}={v.decode()}\n" for k, v in built.xenstore)
    p = run([exe("xenstream"), "extract", str(img), "--what", "shared-info", "-o",
             str(tmp_path / "s")], expect=1)
    assert "found none" in p.stderr and not (tmp_path / "s").exists()


def test_v2_xenopsd_qemu_trad_frame(tmp_path: Path) -> None:
    built = v2_image("xenopsd", "hvm")
    img = put(tmp_path, built)
    emu = b"QEVM\0\0\0\3" + struct.pack("<I", 0) + bytes(range(200))
    assert blob(tmp_path, img, "emulator-context") == emu
    r, w = os.pipe()  # the same from a pipe: the frame's payload read through the parser
    t = feeder(w, built.data, chunk=999)
    try:
        res = extract_blob(r, "emulator-context", str(tmp_path / "pipe.bin"))
    finally:
        os.close(r)
        t.join()
    assert (tmp_path / "pipe.bin").read_bytes() == emu and res.source == "Qemu_trad frame"


@pytest.mark.parametrize("width", [8, 4])
def test_v2_pv_shared_info(tmp_path: Path, width: int) -> None:
    built = v2_image("libxc", "pv", width=width)
    img = put(tmp_path, built)
    assert blob(tmp_path, img, "shared-info") == built.shared_info
    p = run([exe("xenstream"), "extract", str(img), "--what", "emulator-context", "-o",
             str(tmp_path / "e")], expect=1)
    assert "PV and PVH guests have no device model" in p.stderr


@pytest.mark.parametrize("cut", [None, "inside", "boundary", "end"])
@pytest.mark.parametrize("colo", [False, True], ids=["remus", "colo"])
def test_v2_checkpoints_last_complete_copy(tmp_path: Path, cut: Optional[str],
                                           colo: bool) -> None:
    built = v2_image("xl", "hvm", checkpoints=3, colo=colo, cut=cut)
    img = put(tmp_path, built)
    assert built.emulator_context is not None and built.emulator_context[8:12] == b"\2\0\0\0"
    assert blob(tmp_path, img, "emulator-context") == built.emulator_context
    assert blob(tmp_path, img, "hvm-context") == built.hvm_context
    res = extract_blob(str(img), "xenstore", None)
    assert res.pairs == built.xenstore and res.checkpoints == 3


def test_v2_pv_checkpoint_shared_info(tmp_path: Path) -> None:
    built = v2_image("libxl", "pv", checkpoints=2, cut="inside")
    assert built.shared_info == bytes([1]) * PAGE
    assert blob(tmp_path, put(tmp_path, built), "shared-info") == built.shared_info


# -- legacy images ----------------------------------------------------------------------------


@pytest.mark.parametrize("envelope,qemu", [("bare", "libxl"), ("xl", "libxl"),
                                           ("xend", "xend"), ("xenopsd", "xenserver"),
                                           ("libvirt", "remus")])
def test_legacy_qemu_record(tmp_path: Path, envelope: str, qemu: str) -> None:
    data = b"QEVM\0\0\0\3" + bytes(range(256)) * 40
    built = legacy_image(guest="hvm", envelope=envelope, qemu=qemu, qemu_data=data)
    assert built.emulator_context == data
    img = put(tmp_path, built)
    assert blob(tmp_path, img, "emulator-context") == data
    assert blob(tmp_path, img, "hvm-context") == built.hvm_context


def test_legacy_remus_qemu_record_of_the_last_complete_checkpoint(tmp_path: Path) -> None:
    built = legacy_image(guest="hvm", checkpoints=4, truncate_in_checkpoint=4, qemu="remus")
    assert built.checkpoints == 3
    img = put(tmp_path, built)
    assert blob(tmp_path, img, "emulator-context") == built.emulator_context
    res = extract_blob(str(img), "emulator-context", None)
    assert res.checkpoints == 3 and "checkpoint 4" in res.warnings[0]


def test_legacy_physmap_as_xenstore(tmp_path: Path) -> None:
    physmap = ((0xF0000000, 0xF0000000, 0x800000, b"vga.vram"),
               (0xF1000000, 0xF1000000, 0x10000, b"rom"))
    built = legacy_image(guest="hvm", envelope="xl", physmap=physmap)
    img = put(tmp_path, built)
    p = run([exe("xenstream"), "extract", str(img), "--what", "xenstore"], expect=0)
    want = "".join(f"physmap/{o:x}/start_addr={s:x}\nphysmap/{o:x}/size={n:x}\n"
                   f"physmap/{o:x}/name={name.decode()}\n" for o, s, n, name in physmap)
    assert p.stdout == want


def test_legacy_pv_shared_info(tmp_path: Path) -> None:
    built = legacy_image(guest="pv", width=4, guest_width=4, checkpoints=3,
                         truncate_in_checkpoint=3)
    assert blob(tmp_path, put(tmp_path, built), "shared-info") == built.shared_info


# -- xenstore text and JSON ---------------------------------------------------------------


def _xenstore_image(pairs: list) -> bytes:  # type: ignore[type-arg]
    buf = io.BytesIO()
    xl_header(buf, {"c_info": {"type": "hvm"}})
    lw = LibxlWriter(buf)
    lw.header()
    lw.libxc_context()
    w = LibxcWriter(buf)
    w.headers("hvm")
    w.page_data([0], 0, [bytes(PAGE)])
    w.hvm_context(b"")
    w.end()
    lw.xenstore_data(pairs, emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL)
    lw.end()
    return buf.getvalue()


def test_xenstore_lines_stay_lines(tmp_path: Path) -> None:
    pairs = [(b"a/b", b"plain"), (b"n", b"two\nlines"), (b"bs", b"back\\slash"),
             (b"bin", b"\x01\xff\xc3\xa9")]
    img = tmp_path / "img"
    img.write_bytes(_xenstore_image(pairs))
    p = run([exe("xenstream"), "extract", str(img), "--what", "xenstore"], expect=0)
    assert p.stdout.splitlines() == ["a/b=plain", "n=two\\nlines", "bs=back\\\\slash",
                                     "bin=\\x01\\xff\u00e9"]
    assert "\0" not in p.stdout
    assert xenstore_text(pairs) == p.stdout
    p = run([exe("xenstream"), "extract", str(img), "--what", "xenstore", "--json"], expect=0)
    doc = json.loads(p.stdout)
    assert doc["xenstore"] == {"a/b": "plain", "n": "two\\nlines", "bs": "back\\\\slash",
                               "bin": "\\x01\\xff\u00e9"}
    assert doc["emulator"] == "qemu-traditional" and doc["checkpoints"] == 1
    out = tmp_path / "ks.txt"
    run([exe("xenstream"), "extract", str(img), "--what", "xenstore", "-o", str(out)], expect=0)
    assert out.read_text() == xenstore_text(pairs)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- outputs and errors -------------------------------------------------------------------


def test_to_stdout(tmp_path: Path) -> None:
    built = v2_image("xl", "hvm")
    img = put(tmp_path, built)
    p = subprocess.run([exe("xenstream"), "extract", str(img), "--what", "emulator-context"],
                       capture_output=True)
    assert p.returncode == 0 and p.stdout == built.emulator_context


def test_a_missing_blob_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    img = put(tmp_path, v2_image("xl", "hvm"))
    out = tmp_path / "keep"
    out.write_bytes(b"mine")
    p = run([exe("xenstream"), "extract", str(img), "--what", "shared-info", "-o", str(out)],
            expect=1)
    assert p.stderr.count("\n") == 1 and out.read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == ["image.bin", "keep"]


def test_bad_input_and_usage(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.write_bytes(v2_image("xl", "hvm").data[:300])
    p = run([exe("xenstream"), "extract", str(img), "--what", "hvm-context", "-o",
             str(tmp_path / "o")], expect=1)
    assert "offset 0x" in p.stderr and not (tmp_path / "o").exists()
    run([exe("xenstream"), "extract", str(img), "--what", "nothing"], expect=2)
    p = run([exe("xenstream"), "extract", str(img), "--what", "hvm-context", "--json"],
            expect=2)
    assert "--json applies to --what xenstore only" in p.stderr
