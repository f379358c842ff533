"""xenstream info: the one-pass summary (consumers/info.py) and its command.

Every image is built here with the writers from explicit values, and every
expectation comes from those values (or from the legacy writer's
``Expected``, what the stream carries); every JSON document is validated
against schema/info.schema.json.
"""

from __future__ import annotations

import array
import json
import random
import struct
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest

from inspect_helpers import (
    INFO_SCHEMA,
    LIVE_CPUID,
    LIVE_MSRS,
    LIVE_PARAMS,
    LIVE_TSC,
    LIVE_VCPUS,
    REMUS,
    XENSTREAM,
    build,
    image,
    info_of,
    info_of_pipe,
    legacy,
    live_expected,
    live_stream,
    put,
    remus_stream,
    run,
)
from xenstream.cli.main import main
from xenstream.consumers.convert import CONVERTER_VERSION
from xenstream.consumers.info import summary
from xenstream.consumers.pfnmap import CHUNK_PFNS, PfnBitmap
from xenstream.errors import FormatError
from xenstream.formats import hvm, libxc, libxl
from xenstream.io import Source
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_config,
    write_image,
    xl_header,
)

# -- what the records say -----------------------------------------------------------------


def test_live_stream_every_field_from_the_writer(tmp_path: Path) -> None:
    info = info_of(put(tmp_path, live_stream()))
    e = live_expected()
    m = info.memory
    assert m.page_records == 4 and m.entries == e["entries"] and m.data_pages == e["data"]
    assert m.resident_pages == e["resident"] and m.resident_bytes == e["resident"] * 4096
    assert m.resent_pages == e["copies"] and m.pfns_sent_more_than_once == e["twice"]
    assert m.highest_pfn == e["highest"]
    assert (m.xtab, m.broken, m.xalloc) == (1, 1, 1)
    assert m.pages_by_type == {libxc.PAGE_TYPE_NAMES[t]: n
                               for t, n in sorted(e["by_type"].items())}
    assert m.verify_pages == 0 and m.untracked_pfns == 0
    assert info.tsc is not None and (info.tsc.mode, info.tsc.khz, info.tsc.nsec,
                                     info.tsc.incarnation) == tuple(LIVE_TSC.values())
    assert info.tsc.mode_name == "NEVER_EMULATE"
    assert {p.index: p.value for p in info.hvm_params} == LIVE_PARAMS
    assert {p.index: p.name for p in info.hvm_params} == {
        1: "STORE_PFN", 9: "VIRIDIAN", 17: "CONSOLE_PFN", 26: "BUFIOREQ_EVTCHN"}
    assert info.vcpus.online == list(range(LIVE_VCPUS))
    assert info.policies is not None
    assert (info.policies.cpuid_leaves, info.policies.cpuid_bytes) == (len(LIVE_CPUID),
                                                                       24 * len(LIVE_CPUID))
    assert (info.policies.msr_entries, info.policies.msr_bytes) == (len(LIVE_MSRS),
                                                                    16 * len(LIVE_MSRS))
    ctx = hvm.sample_context(LIVE_VCPUS)
    assert info.hvm_context is not None and info.hvm_context.bytes == len(ctx)
    assert info.hvm_context.entries == len(list(hvm.iter_entries(ctx)))
    assert info.saved_by.xen_version == "4.21" and info.saved_by.libxc_version == 3
    assert not info.saved_by.converted
    assert info.guest.type == "hvm" and "cannot tell HVM from PVH" in info.guest.basis
    assert info.guest.width == 16 and info.guest.mode == "vcpu 0: real mode"
    assert info.checkpoints.kind is None and info.config is None
    assert info.verdict.valid and info.verdict.line.startswith(f"{info.file}: valid: libxc v3")
    # the writer's LAPIC record is HEAD's 32 bytes (pending_esr, b28b590d4a):
    # only the releases with that change restore it (test_releases checks the table)
    assert info.restores_on == ["4.18.5 \u2013 4.18.x", "4.19.2 \u2013 4.19.x",
                                "4.20.1 \u2013 HEAD"]


def test_pipe_and_file_agree(tmp_path: Path) -> None:
    """On a file the pfn arrays come from the parser's bulk check (pfn_sink),
    on a pipe from the records the verifier reads (Record.tap)."""
    data = live_stream()
    a = info_of(put(tmp_path, data)).to_json()
    b = info_of_pipe(data).to_json()
    for d in (a, b):
        d.pop("file"), d.pop("bytes"), d["verdict"].pop("line")
    assert a == b


def test_verify_resend_is_not_a_resend(tmp_path: Path) -> None:
    info = info_of(put(tmp_path, live_stream(verify_resend=True)))
    e = live_expected()
    assert info.memory.verify_pages == 32
    assert info.memory.resent_pages == e["copies"] and info.memory.data_pages == e["data"]


def test_hand_assembled_stream(tmp_path: Path) -> None:
    """struct.pack from the reference tables (§1.1, §1.2, §6): a writer
    mistake cannot hide behind the parser's."""
    ihdr = struct.pack(">QIIHHI", 0xFFFFFFFFFFFFFFFF, 0x58454E46, 2, 0, 0, 0)
    dhdr = struct.pack("<IHHII", 1, 12, 0, 4, 9)  # x86 PV, Xen 4.9
    pv_info = struct.pack("<II", 0x02, 8) + struct.pack("<BBHI", 4, 3, 0, 0)
    p2m = struct.pack("<II", 0x03, 16) + struct.pack("<IIQ", 0, 1023, 7)
    pages = struct.pack("<II", 0x01, 8 + 16 + 4096) + struct.pack("<II", 2, 0) + struct.pack(
        "<QQ", 3, (0xF << 60) | 9) + bytes(4096)
    tsc = struct.pack("<II", 0x08, 24) + struct.pack("<IIQII", 1, 3_000_000, 77, 9, 0)
    vcpu = struct.pack("<II", 0x04, 8 + 2800) + struct.pack("<II", 0, 0) + bytes(2800)
    end = struct.pack("<II", 0, 0)
    info = info_of(put(tmp_path, ihdr + dhdr + pv_info + p2m + pages + tsc + vcpu + end))
    assert info.saved_by.xen_version == "4.9" and info.saved_by.libxc_version == 2
    assert (info.guest.type, info.guest.width, info.guest.pt_levels) == ("pv", 32, 3)
    assert info.memory.max_pfn == 1023 and info.memory.highest_pfn == 9
    assert info.memory.pages_by_type == {"NOTAB": 1, "XTAB": 1}
    assert info.memory.resident_pages == 1
    assert info.tsc is not None and (info.tsc.mode_name, info.tsc.khz, info.tsc.nsec,
                                     info.tsc.incarnation) == ("ALWAYS_EMULATE", 3_000_000, 77, 9)
    assert info.vcpus.online == [0]


# -- envelopes and guest types ----------------------------------------------------------------


@pytest.mark.parametrize("envelope,chain", [
    ("libxc", "libxc v3"), ("libxl", "libxl v2 -> libxc v3"),
    ("xl", "xl (STREAMv2) -> libxl v2 -> libxc v3"),
    ("libvirt", "libvirt (v2, XML) -> libxl v2 -> libxc v3"),
    ("xenopsd", "xenopsd v2 frames (Xenops metadata, libxc v3, Qemu_trad record, end)"),
])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_v2_envelopes(tmp_path: Path, envelope: str, chain: str, guest: str) -> None:
    pages, vcpus = 40, 2
    qemu = b"QEVM\0\0\0\3" + bytes(100)
    spec = ImageSpec(envelope=envelope, guest=guest, pages=pages, vcpus=vcpus, batch=16,
                     emulator_context=qemu)
    info = info_of(put(tmp_path, build(lambda o: write_image(o, spec))))
    if guest == "pv":
        chain = chain.replace(", Qemu_trad record", "")
    assert info.chain == chain and info.verdict.valid
    assert [lay.layer for lay in info.layers] == info.result.layers  # type: ignore[union-attr]
    assert info.guest.type == guest
    assert info.memory.data_pages == pages and info.memory.resident_pages == pages
    assert info.memory.page_records == -(-pages // 16)
    assert info.memory.highest_pfn == pages - 1
    assert info.vcpus.online == list(range(vcpus))
    if guest == "pv":
        assert (info.guest.width, info.guest.pt_levels, info.memory.max_pfn) == (64, 4, pages - 1)
        assert info.shared_info and not info.emulators and info.hvm_params == []
    elif envelope == "libxc":
        assert not info.emulators and info.guest.device_model is None  # libxc carries none
    else:
        (em,) = info.emulators
        assert em.bytes == len(qemu) and em.qevm_version == 3 and em.signature == "QEVM"
        if envelope == "xenopsd":
            assert em.emulator == "qemu-traditional" and "Qemu_trad" in em.source
        else:
            assert (em.emulator, em.emulator_id) == ("qemu-upstream", 2)
            assert info.xenstore_keys == len(spec.xenstore)
    cfg = info.config
    if envelope in ("libxc", "libxl"):
        assert cfg is None
    elif envelope == "xenopsd":
        assert cfg is not None and cfg.kind == "xenopsd-sexp" and cfg.name == f"xenstream-{guest}"
    else:
        assert cfg is not None and cfg.name == f"xenstream-sample-{guest}"
        assert cfg.memory_kib == pages * 4 and cfg.vcpus == vcpus and cfg.domain_type == guest
        assert cfg.kind == {"xl": "xl-json", "libvirt": "libvirt-xml"}[envelope]
        assert info.vcpus.max == vcpus


def test_libxc_v2(tmp_path: Path) -> None:
    info = info_of(put(tmp_path, image(envelope="libxc", version=2, pages=8)))
    assert info.saved_by.libxc_version == 2 and info.chain == "libxc v2"
    assert info.policies is None and info.memory.resident_pages == 8


def test_pvh_from_config_and_from_missing_device_model(tmp_path: Path) -> None:
    cfg = {"c_info": {"type": "pvh", "name": "pvh-guest"}, "b_info": {"max_vcpus": 1}}
    spec = ImageSpec(envelope="xl", pages=8, config=cfg, xenstore={}, emulator_context=b"")
    a = info_of(put(tmp_path, build(lambda o: write_image(o, spec))))
    assert (a.guest.type, a.guest.config_type, a.guest.device_model) == ("pvh", "pvh", False)
    assert "type pvh" in a.guest.basis and a.verdict.valid
    assert a.guest.domain_header == "x86 HVM" and a.config is not None
    assert a.config.name == "pvh-guest"
    spec2 = ImageSpec(envelope="libxl", pages=8, xenstore={}, emulator_context=b"")
    b = info_of(put(tmp_path, build(lambda o: write_image(o, spec2))))
    assert (b.guest.type, b.guest.device_model) == ("pvh", False)
    assert "without device-model state" in b.guest.basis
    assert b.verdict.valid and b.verdict.warnings == 1  # libxl-emulator-unknown


@pytest.mark.parametrize("envelope", ["bare", "xl", "libvirt", "xend", "xenopsd"])
@pytest.mark.parametrize("guest,width,gw", [("pv", 8, 8), ("pv", 4, 4), ("pv", 8, 4),
                                            ("hvm", 8, 8), ("hvm", 4, 8)])
def test_legacy(tmp_path: Path, envelope: str, guest: str, width: int, gw: int) -> None:
    data, exp = legacy(guest=guest, width=width, guest_width=gw, vcpus=3, offline_vcpus=[1],
                       envelope=envelope, tsc_mode=1)
    info = info_of(put(tmp_path, data))
    assert info.chain.endswith(f"legacy ({width * 8}-bit toolstack, {guest.upper()})")
    lg = info.saved_by.legacy
    assert lg is not None and lg.toolstack_width == width * 8
    assert lg.container == ("bare" if envelope == "bare" else envelope)
    assert info.guest.type == guest
    assert info.memory.resident_pages == len(exp.pages)
    assert info.memory.max_pfn == exp.p2m_size - 1
    assert info.vcpus.online == [0, 2] and info.vcpus.max == 3
    assert info.tsc is not None and (info.tsc.mode, info.tsc.khz, info.tsc.nsec,
                                     info.tsc.incarnation) == exp.tsc
    assert info.checkpoints.kind is None
    if guest == "pv":
        assert (info.guest.width, info.guest.pt_levels) == (gw * 8, 4 if gw == 8 else 3)
        assert lg.extended_info == ["vcpu", "extv"] and not lg.pre_3_1
        assert info.shared_info and info.memory.xtab == 0
    else:
        assert {p.index: p.value for p in info.hvm_params} == exp.hvm_params
        assert info.memory.xtab == 1  # the writer's one pfn-less hole
        assert exp.qemu is not None
        (em,) = info.emulators
        assert em.qevm_version == 3
        want = {"libxl": len(exp.qemu), "xend": len(exp.qemu), "xenserver": len(exp.qemu)}
        assert em.bytes == want[exp.qemu_kind or ""] and lg.qemu_record == exp.qemu_kind
    if envelope in ("xl", "libvirt", "xend"):
        assert info.config is not None and info.config.name == f"xenstream-sample-{guest}"


def test_legacy_pre_3_1_pv_told_by_config(tmp_path: Path) -> None:
    data, exp = legacy(guest="pv", ext_info=False, envelope="xl")
    info = info_of(put(tmp_path, data))
    lg = info.saved_by.legacy
    assert info.guest.type == "pv" and lg is not None and lg.pre_3_1
    assert lg.extended_info is None and info.memory.resident_pages == len(exp.pages)
    assert "no extended info" in info.saved_by.summary


def test_legacy_live_unmapped_and_broken(tmp_path: Path) -> None:
    data, exp = legacy(guest="pv", live=True, unmapped=[9, 10], broken=[12], pages=32)
    info = info_of(put(tmp_path, data))
    assert info.memory.resident_pages == len(exp.pages)
    assert info.memory.unmapped_pfns == 2 and info.memory.broken == 1
    assert info.memory.resent_pages and info.memory.pfns_sent_more_than_once


# -- checkpoints --------------------------------------------------------------------------


def _remus_expect() -> Dict[str, Any]:
    sent = [p for pfns, *_ in REMUS[:2] for p in pfns]
    return {"data": len(sent), "resident": len(set(sent)),
            "twice": len({p for p in set(sent) if sent.count(p) > 1})}


def test_remus_cut_in_checkpoint_3_shows_checkpoint_2(tmp_path: Path) -> None:
    info = info_of(put(tmp_path, remus_stream()))
    _pfns, vcpus, inc, params, qemu = REMUS[1]
    e = _remus_expect()
    cp = info.checkpoints
    assert (cp.kind, cp.complete, cp.discarded_tail) == ("remus", 2, True)
    assert info.tsc is not None and info.tsc.incarnation == inc
    assert {p.index: p.value for p in info.hvm_params} == params
    assert info.vcpus.online == list(range(vcpus))
    (em,) = info.emulators
    assert em.bytes == len(qemu)
    assert info.xenstore_keys == 1
    assert info.memory.data_pages == e["data"] and info.memory.resident_pages == e["resident"]
    assert info.memory.pfns_sent_more_than_once == e["twice"]
    assert info.verdict.valid and info.verdict.warnings == 1  # checkpoint-eof


def test_remus_complete_and_colo(tmp_path: Path) -> None:
    info = info_of(put(tmp_path, remus_stream(cut=False)))
    assert (info.checkpoints.kind, info.checkpoints.complete) == ("remus", 3)
    assert not info.checkpoints.discarded_tail
    assert info.tsc is not None and info.tsc.incarnation == REMUS[2][2]
    sent = [p for pfns, *_ in REMUS for p in pfns]
    assert info.memory.resident_pages == len(set(sent))
    colo = info_of(put(tmp_path, remus_stream(cut=False, colo=True)))
    assert (colo.checkpoints.kind, colo.checkpoints.complete) == ("colo", 3)


def test_legacy_remus_compressed_truncated(tmp_path: Path) -> None:
    data, exp = legacy(guest="hvm", pages=32, checkpoints=4, compression=True,
                       truncate_in_checkpoint=4)
    info = info_of(put(tmp_path, data))
    cp = info.checkpoints
    assert (cp.kind, cp.complete, cp.discarded_tail) == ("remus", exp.complete_checkpoints, True)
    assert info.memory.resident_pages == len(exp.pages)
    assert info.memory.compressed_pages > 0 and info.memory.pfns_sent_more_than_once
    assert info.verdict.valid


def test_truncated_plain_stream_is_bad_input(tmp_path: Path) -> None:
    data = image(envelope="xl", pages=8)
    p = put(tmp_path, data[:-40])
    with pytest.raises(FormatError) as e:
        summary(str(p))
    assert e.value.offset > 0
    r = run([XENSTREAM, "info", str(p)], expect=1)
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"{p}: offset 0x")


# -- who saved it: converted streams -------------------------------------------------------


@pytest.mark.parametrize("envelope,libxl_flag", [("xl", True), ("bare", False)])
def test_converted_by_us(tmp_path: Path, capsys: pytest.CaptureFixture[str], envelope: str,
                         libxl_flag: bool) -> None:
    data, exp = legacy(guest="hvm", envelope=envelope)
    src = put(tmp_path, data, "legacy")
    out = tmp_path / "converted"
    assert main(["convert", "-q", str(src), str(out)]) == 0
    capsys.readouterr()
    info = info_of(out)
    sb = info.saved_by
    assert sb.converted and sb.converter_version == CONVERTER_VERSION and sb.xen_version is None
    assert sb.libxl_legacy_flag is libxl_flag and sb.legacy is None
    assert "converted from a legacy image" in sb.summary
    assert info.memory.resident_pages == len(exp.pages) and info.guest.type == "hvm"
    if libxl_flag:
        (em,) = info.emulators
        assert em.emulator_id == 0 and em.bytes == len(exp.qemu or b"")


def test_converted_as_upstream_writes_it(tmp_path: Path) -> None:
    """convert-legacy-stream: libxl options LEGACY, domain header Xen 0.1."""
    def go(o: Any) -> None:
        lw = LibxlWriter(o)
        lw.header(options=libxl.HDR_OPT_LEGACY)
        lw.libxc_context()
        w = lw.libxc()
        w.image_header()
        w.domain_header("pv", xen_major=0, xen_minor=1)
        w.pv_info(8)
        w.static_data_end()
        w.p2m_frames(0, 7, [7])
        w.page_data(list(range(8)), [0, 0xC, 3, 2, 1, 0, 0, 0])
        w.tsc_info()
        w.shared_info()
        w.vcpu_basic(0)
        w.end()
        lw.end()
    info = info_of(put(tmp_path, build(go)))
    assert info.saved_by.converted and info.saved_by.converter_version == 1
    assert info.saved_by.libxl_legacy_flag
    assert info.memory.pages_by_type == {"NOTAB": 4, "L1TAB": 1, "L2TAB": 1, "L3TAB": 1,
                                         "L4TAB|PIN": 1}


# -- reading little ---------------------------------------------------------------------------


def test_reads_little_of_a_seekable_file(tmp_path: Path) -> None:
    pages = 16384  # 64 MiB of page data in 1024-page records
    data = image(envelope="xl", pages=pages, batch=1024, fast_pages=True)
    p = put(tmp_path, data)
    with Source.open(str(p)) as src:
        info = summary(src)
        read = src.bytes_read
    assert info.memory.resident_pages == pages and info.verdict.valid
    assert read <= len(data) // 100, (read, len(data))


# -- the bitmap -------------------------------------------------------------------------------


def test_pfn_bitmap_against_a_count() -> None:
    rng = random.Random(11)
    b = PfnBitmap()
    counts: Dict[int, int] = {}
    for _ in range(400):
        if rng.random() < 0.5:
            first = rng.randrange(0, 3 * CHUNK_PFNS)
            n = rng.randrange(1, 1025)
            pfns: Any = array.array("Q", range(first, first + n))
        else:
            pfns = [rng.randrange(0, 2 * CHUNK_PFNS) for _ in range(rng.randrange(1, 40))]
        b.add(pfns)
        for p in pfns:
            counts[p] = counts.get(p, 0) + 1
    assert b.distinct == len(counts)
    assert b.repeats == sum(n - 1 for n in counts.values())
    assert b.repeated == sum(1 for n in counts.values() if n > 1)


def test_pfn_bitmap_memory_is_bounded() -> None:
    b = PfnBitmap(limit_bytes=4 * CHUNK_PFNS // 8)  # two chunks of two planes
    b.add([0, CHUNK_PFNS * 7, CHUNK_PFNS * 1000, 5])
    assert b.nbytes <= 4 * CHUNK_PFNS // 8 and b.untracked == 1 and b.distinct == 3


# -- the command --------------------------------------------------------------------------------


def test_cli_text_and_json(tmp_path: Path) -> None:
    p = put(tmp_path, image(envelope="xl", pages=24, vcpus=2))
    out = run([XENSTREAM, "info", str(p)], expect=0).stdout.splitlines()
    assert out[0] == f"{p}:"
    text = "\n".join(out)
    for want in ("envelope:     xl (STREAMv2) -> libxl v2 -> libxc v3",
                 "saved by:     Xen 4.21 (libxc v3 stream)",
                 "24 resident (96 KiB)", "highest pfn 0x17", "2 online (0-1) of 2",
                 "name xenstream-sample-hvm", "QEVM version 3"):
        assert want in text, (want, text)
    assert out[-2] == f"  verdict:      {p}: valid: xl (STREAMv2) -> libxl v2 -> libxc v3, HVM, " \
                      "24 pages, 2 vcpus"
    assert out[-1] == ("  restores on:  Xen 4.18.5 \u2013 4.18.x, Xen 4.19.2 \u2013 4.19.x, "
                       "Xen 4.20.1 \u2013 HEAD")
    doc = json.loads(run([XENSTREAM, "info", "--json", str(p)], expect=0).stdout)
    jsonschema.validate(doc, INFO_SCHEMA)
    assert doc["memory"]["resident_pages"] == 24 and doc["restores_on"]
    with open(p, "rb") as f:
        piped = json.loads(run([XENSTREAM, "info", "--json", "-"], stdin=f, expect=0).stdout)
    assert piped["file"] == "<stdin>" and piped["memory"] == doc["memory"]


def test_cli_bad_input_and_usage(tmp_path: Path) -> None:
    junk = put(tmp_path, b"\x01\x02\x03\x04" * 8)
    r = run([XENSTREAM, "info", str(junk)], expect=1)
    assert r.stdout == "" and r.stderr.splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"{junk}: offset 0x0") and "expected" in r.stderr
    run([XENSTREAM, "info", str(tmp_path / "missing")], expect=2)
    h = run([XENSTREAM, "info", "--help"], expect=0).stdout
    assert "examples:" in h and "xenstream info --json" in h


def test_stdin_json_of_every_legacy_kind_validates(tmp_path: Path) -> None:
    docs: List[Dict[str, Any]] = []
    for guest in ("pv", "hvm"):
        data, _ = legacy(guest=guest, checkpoints=2, truncate_in_checkpoint=2)
        p = put(tmp_path, data)
        docs.append(json.loads(run([XENSTREAM, "info", "--json", str(p)], expect=0).stdout))
    for d in docs:
        jsonschema.validate(d, INFO_SCHEMA)
        assert d["checkpoints"]["complete"] == 1 and d["checkpoints"]["discarded_tail"]


def test_xl_cfg_text_config(tmp_path: Path) -> None:
    cfg = b'name = "old-guest"\nmemory = 512\nvcpus = 2\nbuilder = "hvm"\n'
    spec = ImageSpec(envelope="libxl", pages=8)

    def go(o: Any) -> None:
        xl_header(o, cfg, json_flag=False)
        write_image(o, spec)
    info = info_of(put(tmp_path, build(go)))
    c = info.config
    assert c is not None and c.kind == "xl-cfg"
    assert (c.name, c.memory_kib, c.vcpus, c.domain_type) == ("old-guest", 512 * 1024, 2, "hvm")
    assert default_config(spec)["c_info"]["type"] == "hvm"


def test_hvm_long_mode_width(tmp_path: Path) -> None:
    def go(o: Any) -> None:
        w = LibxcWriter(o)
        w.headers("hvm")
        w.static_data_end()
        w.page_data(list(range(4)))
        w.tsc_info()
        w.hvm_context(hvm.sample_context(1, cr3=0x1000))
        w.hvm_params({1: 3})
        w.end()
    info = info_of(put(tmp_path, build(go)))
    assert (info.guest.width, info.guest.pt_levels) == (64, 4)
    assert info.guest.mode == "vcpu 0: long mode, 4-level paging"
