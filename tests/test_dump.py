"""xenstream dump: one decoded row per header and record (consumers/dump.py).

Expectations come from what each test gave the writer, or from hand-packed
bytes; every row's JSON validates against schema/dump.schema.json.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any, List

import jsonschema
import pytest

from inspect_helpers import (
    DUMP_SCHEMA,
    LIVE_PARAMS,
    LIVE_RECORDS,
    LIVE_TSC,
    LIVE_VCPUS,
    REMUS,
    XENSTREAM,
    build,
    image,
    legacy,
    live_stream,
    put,
    remus_stream,
    rows_of,
    run,
)
from xenstream.consumers.decode import pfn_ranges
from xenstream.consumers.dump import DumpRow
from xenstream.formats import hvm, libxc, libxl
from xenstream.writers.v2 import LibxlWriter


def _types(rows: List[DumpRow]) -> List[str]:
    return [r.type for r in rows]


def _one(rows: List[DumpRow], t: str) -> DumpRow:
    found = [r for r in rows if r.type == t]
    assert len(found) == 1, (t, _types(rows))
    return found[0]


# -- hand-assembled bytes ---------------------------------------------------------------------

IHDR = struct.pack(">QIIHHI", 0xFFFFFFFFFFFFFFFF, 0x58454E46, 3, 0, 0, 0)
DHDR = struct.pack("<IHHII", 2, 12, 0, 4, 17)  # x86 HVM, Xen 4.17
TSC = struct.pack("<II", 0x08, 24) + struct.pack("<IIQII", 1, 1_500_000, 99, 4, 0)
PARAMS = struct.pack("<II", 0x0A, 8 + 32) + struct.pack("<II", 2, 0) + struct.pack(
    "<QQQQ", 1, 0xFEFFC, 34, 0xFC00B000)
END = struct.pack("<II", 0, 0)


def test_hand_packed_lines(tmp_path: Path) -> None:
    p = put(tmp_path, IHDR + DHDR + TSC + PARAMS + END)
    rows = rows_of(p)
    assert _types(rows) == ["libxc image header", "libxc domain header", "X86_TSC_INFO",
                            "HVM_PARAMS", "END"]
    tsc, params = rows[2], rows[3]
    assert tsc.text() == ("0x0000000028  libxc  #0     X86_TSC_INFO             length 24  "
                          "mode=1 mode_name=ALWAYS_EMULATE khz=1500000 nsec=99 incarnation=4")
    assert params.offset == 0x28 + len(TSC) and params.index == 1 and params.length == 40
    assert params.fields["params"] == {"STORE_PFN": 0xFEFFC, "VM_GENERATION_ID_ADDR": 0xFC00B000}
    assert params.text().endswith("count=2 params=STORE_PFN=0xfeffc,VM_GENERATION_ID_ADDR=0xfc00b000")
    assert rows[1].fields["xen_major"] == 4 and rows[1].fields["xen_minor"] == 17
    assert rows[1].fields["type"] == "x86 HVM"


def test_hand_packed_emulator_context(tmp_path: Path) -> None:
    """libxl header, LIBXC_CONTEXT, a libxc stream, EMULATOR_CONTEXT of
    qemu-traditional (id 1) with a QEVM blob of version 3 (big-endian)."""
    blob = b"QEVM" + struct.pack(">I", 3) + b"\x07" * 20
    emu = struct.pack("<II", 3, 8 + len(blob)) + struct.pack("<II", 1, 0) + blob
    emu += bytes(-len(emu) & 7)
    libxl_hdr = struct.pack(">QII", 0x4C6962786C466D74, 2, 0)
    ctx = struct.pack("<II", 1, 0)
    libxc = IHDR + DHDR + TSC + PARAMS + END
    p = put(tmp_path, libxl_hdr + ctx + libxc + emu + struct.pack("<II", 0, 0))
    row = _one(rows_of(p), "EMULATOR_CONTEXT")
    assert row.offset == 16 + 8 + len(libxc) and row.layer == "libxl"
    assert row.fields == {"emulator_id": 1, "emulator": "qemu-traditional", "index": 0,
                          "bytes": len(blob), "signature": "QEVM", "qevm_version": 3}


# -- v2 images ------------------------------------------------------------------------------


def test_live_stream_decoded(tmp_path: Path) -> None:
    rows = rows_of(put(tmp_path, live_stream()), pages=True)
    pages = [r for r in rows if r.type == "PAGE_DATA"]
    assert len(pages) == len(LIVE_RECORDS)
    for r, (pfns, types) in zip(pages, LIVE_RECORDS):
        assert r.fields["count"] == len(pfns)
        assert r.fields["pages"] == sum(1 for t in types if t not in (0xD, 0xE, 0xF))
        assert r.fields["pfns"] == pfn_ranges(pfns)
        assert (r.fields["lowest_pfn"], r.fields["highest_pfn"]) == (min(pfns), max(pfns))
    assert pages[1].fields["types"] == {"BROKEN": 1, "XALLOC": 1, "XTAB": 1}
    tsc = _one(rows, "X86_TSC_INFO").fields
    assert {k: tsc[k] for k in LIVE_TSC} == LIVE_TSC
    assert _one(rows, "HVM_PARAMS").fields["params"] == {
        libxc.hvm_param_name(i): v for i, v in LIVE_PARAMS.items()}
    ctx = hvm.sample_context(LIVE_VCPUS)
    entries = _one(rows, "HVM_CONTEXT").fields["entries"]
    assert [(e["typecode"], e["instance"], e["length"]) for e in entries] == [
        (e.typecode, e.instance, e.length) for e in hvm.iter_entries(ctx)]
    assert "CPU.2:1032" in _one(rows, "HVM_CONTEXT").text()
    assert _one(rows, "X86_CPUID_POLICY").fields["leaves"] == 3
    assert _one(rows, "X86_MSR_POLICY").fields["entries"] == 2


def test_page_data_runs_folded(tmp_path: Path) -> None:
    p = put(tmp_path, image(envelope="xl", pages=64, batch=16))
    rows = rows_of(p)
    (run_row,) = [r for r in rows if r.type == "PAGE_DATA"]
    assert run_row.records == 4 and run_row.last_index == run_row.index + 3
    assert run_row.fields["pages"] == 64 and run_row.fields["count"] == 64
    assert (run_row.fields["lowest_pfn"], run_row.fields["highest_pfn"]) == (0, 63)
    assert run_row.length == 4 * (8 + 16 * 8 + 16 * 4096)
    assert "4 records (#" in run_row.text()
    unfolded = [r for r in rows_of(p, pages=True) if r.type == "PAGE_DATA"]
    assert [r.fields["pfns"] for r in unfolded] == [f"{a:#x}-{a + 15:#x}" for a in range(0, 64, 16)]


def test_records_are_contiguous(tmp_path: Path) -> None:
    """Each v2 record ends (padded) where the next item starts."""
    data = image(envelope="libvirt", pages=24, batch=8, guest="pv", vcpus=2)
    rows = rows_of(put(tmp_path, data), pages=True)
    for a, b in zip(rows, rows[1:]):
        assert a.length is not None
        end = a.offset + (8 + a.length + (-a.length & 7) if a.index is not None else a.length)
        assert end == b.offset, (a.text(), b.text())
    assert rows[-1].offset + 8 == len(data)
    assert [r.fields["vcpu_id"] for r in rows if r.type == "X86_PV_VCPU_BASIC"] == [0, 1]
    pv_info = _one(rows, "X86_PV_INFO").fields
    assert (pv_info["guest_width"], pv_info["pt_levels"]) == (8, 4)
    assert _one(rows, "libvirt XML").fields["name"] == "xenstream-sample-pv"


def test_xenstore_pairs_and_type_filter(tmp_path: Path) -> None:
    store = {"physmap/f0000000/start_addr": "f0000000", "physmap/f0000000/name": "vga.vram"}
    p = put(tmp_path, image(envelope="xl", pages=8, xenstore=store))
    (row,) = rows_of(p, types=["emulator_xenstore_data"])
    assert row.fields["xenstore"] == store and row.fields["keys"] == 2
    got = rows_of(p, types=["X86_TSC_INFO", "xl HEADER"])
    assert _types(got) == ["xl header", "X86_TSC_INFO"]


def test_xenopsd_frames(tmp_path: Path) -> None:
    qemu = b"QEVM\0\0\0\3" + bytes(40)
    p = put(tmp_path, image(envelope="xenopsd", pages=8, emulator_context=qemu))
    rows = rows_of(p)
    frames = [r for r in rows if r.kind == "frame"]
    assert [r.type for r in frames] == ["Xenops", "Libxc", "Qemu_trad", "End_of_image"]
    q = frames[2]
    assert q.length == len(qemu) and q.fields["qevm_version"] == 3
    assert frames[0].fields["name"] == "xenstream-hvm"


def test_remus_cut_ends_with_a_truncated_checkpoint_row(tmp_path: Path) -> None:
    rows = rows_of(put(tmp_path, remus_stream()))
    assert rows[-1].type == "truncated checkpoint"
    assert rows[-1].fields["complete_checkpoints"] == 2
    ctx = [r for r in rows if r.type == "HVM_CONTEXT"]
    assert [len(r.fields["entries"]) for r in ctx] == [
        len(list(hvm.iter_entries(hvm.sample_context(v)))) for _, v, *_ in REMUS[:2]]
    assert len([r for r in rows if r.type == "CHECKPOINT_END"]) == 2


def test_truncated_plain_stream_raises_after_rows(tmp_path: Path) -> None:
    data = image(envelope="libxl", pages=8)
    p = put(tmp_path, data[:-20])
    r = run([XENSTREAM, "dump", str(p)], expect=1)
    assert r.stdout.splitlines()[0].startswith("0x0000000000  libxl  libxl header")
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"{p}: offset 0x")


# -- legacy images ------------------------------------------------------------------------------


@pytest.mark.parametrize("guest,width", [("pv", 8), ("pv", 4), ("hvm", 8), ("hvm", 4)])
def test_legacy_chunks_and_batches(tmp_path: Path, guest: str, width: int) -> None:
    data, exp = legacy(guest=guest, width=width, guest_width=width, vcpus=2, batch=4,
                       tsc_mode=2)
    rows = rows_of(put(tmp_path, data), pages=True)
    for a, b in zip(rows, rows[1:]):  # every row's extent ends where the next starts
        if a.kind != "marker":
            assert a.length is not None and a.offset + a.length == b.offset, a.text()
    assert rows[-1].type == "checkpoint end" and rows[-1].offset == len(data)
    hdr = _one(rows, "legacy header").fields
    assert (hdr["p2m_size"], hdr["toolstack_width"], hdr["guest"]) == (exp.p2m_size, width * 8,
                                                                       guest)
    tsc = _one(rows, "CHUNK_TSC_INFO").fields
    assert (tsc["mode"], tsc["khz"], tsc["nsec"], tsc["incarnation"]) == exp.tsc
    assert _one(rows, "CHUNK_VCPU_INFO").fields["online"] == [0, 1]
    batches = [r for r in rows if r.type == "PAGE_BATCH"]
    assert sum(r.fields["pages"] for r in batches) == len(exp.pages)
    assert all(r.fields["count"] <= 4 for r in batches)
    if guest == "pv":
        tail = _one(rows, "PV_TAIL").fields
        assert tail["vcpus"] == sorted(exp.vcpus) and tail["shared_info_bytes"] == 4096
        assert hdr["blocks"] == [{"id": "vcpu", "size": {8: 5168, 4: 2800}[width]},
                                 {"id": "extv", "size": 0}]
    else:
        params = {r.fields["index"]: r.fields["value"] for r in rows
                  if r.type.startswith("CHUNK_HVM_")}
        magic = _one(rows, "HVM_TAIL").fields
        params.update({5: magic["ioreq_pfn"], 6: magic["bufioreq_pfn"], 1: magic["store_pfn"]})
        assert params == exp.hvm_params
        q = _one(rows, "QEMU_RECORD").fields
        assert exp.qemu is not None
        assert q["signature"] == "DeviceModelRecord0002" and q["bytes"] == len(exp.qemu)
        assert q["qevm_version"] == 3
        folded = [r for r in rows_of(put(tmp_path, data)) if r.type == "PAGE_BATCH"]
        assert len(folded) == 1 and folded[0].records == len(batches)


def test_legacy_xend_qemu_to_the_end(tmp_path: Path) -> None:
    data, exp = legacy(guest="hvm", envelope="xend")
    rows = rows_of(put(tmp_path, data))
    q = _one(rows, "QEMU_RECORD")
    assert exp.qemu is not None
    assert q.fields["writer"] == "xend" and q.fields["bytes"] == len(exp.qemu)
    assert q.offset + (q.length or 0) == len(data)
    assert _one(rows, "xend SXP config").fields["name"] == "xenstream-sample-hvm"


def test_legacy_remus_truncated(tmp_path: Path) -> None:
    data, exp = legacy(guest="pv", checkpoints=3, truncate_in_checkpoint=3)
    rows = rows_of(put(tmp_path, data))
    ends = [r for r in rows if r.type == "checkpoint end"]
    assert [r.fields["checkpoint"] for r in ends] == list(range(1, exp.complete_checkpoints + 1))
    assert rows[-1].type == "truncated checkpoint" and rows[-1].fields["checkpoint"] == 3


# -- the command ----------------------------------------------------------------------------


def test_cli_json_lines_validate(tmp_path: Path) -> None:
    for data in (image(envelope="xl", pages=8), legacy(guest="hvm", envelope="libvirt")[0]):
        p = put(tmp_path, data)
        out = run([XENSTREAM, "dump", "--json", str(p)], expect=0).stdout.splitlines()
        assert out
        for line in out:
            jsonschema.validate(json.loads(line), DUMP_SCHEMA)
        text = run([XENSTREAM, "dump", str(p)], expect=0).stdout.splitlines()
        assert len(text) == len(out)


def test_cli_into_head_exits_quietly(tmp_path: Path) -> None:
    p = put(tmp_path, image(envelope="xl", pages=40000, batch=1))  # ~40k lines with --pages
    proc = subprocess.Popen([XENSTREAM, "dump", "--pages", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == b""
    assert first.startswith(b"0x0000000000  xl")


def test_cli_bad_input_and_help(tmp_path: Path) -> None:
    junk = put(tmp_path, bytes(range(1, 33)))
    r = run([XENSTREAM, "dump", str(junk)], expect=1)
    assert r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"{junk}: offset 0x0, header: expected a Xen save image")
    h = run([XENSTREAM, "dump", "--help"], expect=0).stdout
    assert "examples:" in h and "--type" in h and "--pages" in h


def test_library_rows_from_an_open_source(tmp_path: Path) -> None:
    from xenstream.consumers.dump import records
    from xenstream.io import Source

    def go(o: Any) -> None:
        lw = LibxlWriter(o)
        lw.header()
        lw.libxc_context()
        w = lw.libxc()
        w.headers("hvm")
        w.static_data_end()
        w.page_data([0, 1])
        w.tsc_info()
        w.hvm_context()
        w.hvm_params({1: 1})
        w.end()
        lw.checkpoint_state(libxl.CHECKPOINT_SVM_READY)  # (invalid here: dump lists it anyway)
        lw.end()
    p = put(tmp_path, build(go))
    with Source.open(str(p)) as src:
        rows = list(records(src, types=["checkpoint_state"]))
    assert rows[0].fields == {"control_id": 2, "state": "SVM_READY"}
