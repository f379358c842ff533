"""Envelopes around save images: libvirt, XenServer/xenopsd (v2 frames and
legacy), xend and bare legacy streams -- detection from content, each
envelope's own checks, the inner stream checked by the core verifier, the
layer chain, and ``xenstream config``.

Images are built with the writer API; a few headers are also assembled byte
by byte from the format facts (struct.pack), so that a mistake shared by the
writer and the parser cannot hide.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from envelope_helpers import (
    LEGACY_DETAIL_KEYS,
    LEGACY_MARKER_RULES,
    QEMU,
    build,
    check,
    described,
    envelope_findings,
    exe,
    extents,
    feeder,
    find,
    image,
    legacy_body,
    legacy_hvm32,
    legacy_hvm64,
    legacy_image,
    legacy_pv32,
    legacy_pv64,
    libvirt_image,
    libxc_stream,
    libxc_with_errors,
    libxl_stream,
    libxl_with_errors,
    parse_items,
    put,
    read_all,
    rules,
    run,
    spec,
    xend_image,
    xenops_frames,
    xenopsd_image,
)
from xenstream.consumers.report import chain, verdict
from xenstream.consumers.verify import Result, verify
from xenstream.findings import CONVENTION, ERROR, RESTORE, SPEC, TOOLSTACK, WARNING
from xenstream.formats import libvirt, xend, xenopsd
from xenstream.io import Source
from xenstream.reading.parser import FORMAT_NAMES, EnvelopeData, Frame, Header, Legacy
from xenstream.writers.v2 import (
    default_libvirt_xml,
    default_xend_sxp,
    libvirt_header,
    xend_header,
    xenops_metadata,
    xenopsd_frame,
    xl_header,
)

XENSTREAM = exe("xenstream")
SCHEMA = Path(__file__).resolve().parents[1] / "src/xenstream/schema/verify.schema.json"
TSC = ("tsc-mode-pvrdtscp", ERROR)  # the one inner libxc error of *_with_errors()


def only(res: Result, rule: str, severity: str = ERROR) -> Any:
    """The one (envelope-level) finding, asserting it is the only one."""
    fs = envelope_findings(res)
    assert [(f.rule, f.severity) for f in fs] == [(rule, severity)], described(res)
    return fs[0]


# ======================================================================================
# 1. hand-assembled headers (the format facts, not the writer)
# ======================================================================================

LIBVIRT_MAGIC = bytes.fromhex("6c 69 62 76 69 72 74 2d 78 6d 6c 0a 20 00 20 0d")
XENOPSD_V2 = bytes.fromhex("58 65 6e 53 61 76 65 64 44 6f 6d 76 32 2d 0a")
XENOPSD_LEGACY = b"XenSavedDomain\n"
META = (b'((time 20260821T02:00:23Z)(word_size 64)'
        b'(vm_str"((id 5f0e)(name \\"vm one\\"))")(xs_subtree()))')


def test_module_constants_match_the_facts() -> None:
    assert libvirt.MAGIC == LIBVIRT_MAGIC and libvirt.HEADER_SIZE == 64
    assert xend.MAGIC == b"LinuxGuestRecord" and xend.HEADER_SIZE == 20
    assert xenopsd.MAGIC_V2 == XENOPSD_V2 and xenopsd.MAGIC_LEGACY == XENOPSD_LEGACY
    assert (xenopsd.XENOPS, xenopsd.LIBXC, xenopsd.LIBXL, xenopsd.LIBXC_LEGACY) == (
        0x000F, 0x00F0, 0x00F1, 0x00F2)
    assert (xenopsd.QEMU_TRAD, xenopsd.QEMU_XEN, xenopsd.DEMU, xenopsd.VARSTORED,
            xenopsd.SWTPM0, xenopsd.SWTPM, xenopsd.END_OF_IMAGE) == (
        0x0F00, 0x0F01, 0x0F10, 0x0F11, 0x0F12, 0x0F13, 0xFFFF)
    assert xenopsd.QEMU_RECORD_MAX == 1048576


def test_hand_libvirt_header_decoded(tmp_path: Path) -> None:
    xml = b"<domain type='xen'><name>hand</name><vcpu>1</vcpu><os><type>hvm</type></os></domain>\0"
    payload = libxl_stream("hvm")
    raw = LIBVIRT_MAGIC + struct.pack("<II", 2, len(xml)) + bytes(40) + xml
    assert len(raw) == 64 + len(xml)
    # the writer produces exactly these bytes
    assert build(lambda o: libvirt_header(o, xml[:-1])) == raw
    items = parse_items(tmp_path, raw + payload)
    h = items[0]
    assert isinstance(h, Header) and h.kind == "libvirt header" and h.layer == "libvirt"
    assert (h.offset, h.size) == (0, 64)
    assert h.fields["version"] == 2 and h.fields["xml_len"] == len(xml)
    assert all(h.fields[f"unused{i}"] == 0 for i in range(10))
    d = items[1]
    assert isinstance(d, EnvelopeData) and d.layer == "libvirt"
    assert (d.offset, d.declared_len, d.data) == (64, len(xml), xml)
    nxt = items[2]
    assert isinstance(nxt, Header) and nxt.kind == "libxl header" and nxt.offset == 64 + len(xml)
    res = check(tmp_path, raw + payload)
    assert res.valid, described(res)
    assert res.summary["libvirt"] == {"version": 2, "xml_len": len(xml), "name": "hand",
                                      "domain_type": "hvm"}


def test_hand_libvirt_header_fields_are_little_endian(tmp_path: Path) -> None:
    """version and xmlLen are native (x86: little-endian) u32s; a big-endian
    writer's header reads as a huge version and length."""
    xml = default_libvirt_xml(spec()).encode() + b"\0"
    raw = LIBVIRT_MAGIC + struct.pack(">II", 2, len(xml)) + bytes(40) + xml + libxl_stream()
    res = check(tmp_path, raw)
    assert not res.valid
    assert ("libvirt-version", ERROR) in rules(res)
    assert ("truncated", ERROR) in rules(res)  # xmlLen 0x????0100 runs past the file
    t = find(res, "truncated")
    assert t.layer == "libvirt" and t.offset == 64


def test_hand_xend_header_decoded(tmp_path: Path) -> None:
    sxp = b"(domain (domid 3) (name 'hand made') (image (linux (kernel /k))))"
    body = legacy_pv32()
    raw = b"LinuxGuestRecord" + struct.pack(">i", len(sxp)) + sxp
    assert build(lambda o: xend_header(o, sxp)) == raw
    items = parse_items(tmp_path, raw + body)
    h, d, lg = items
    assert isinstance(h, Header) and h.kind == "xend header" and h.fields == {
        "config_len": len(sxp)}
    assert isinstance(d, EnvelopeData) and (d.offset, d.data) == (20, sxp)
    assert isinstance(lg, Legacy) and lg.offset == 20 + len(sxp) and lg.container == "xend"
    assert lg.guess is not None and (lg.guess.width, lg.guess.guest) == (4, "pv")
    # the body is a 16-byte stub: the drop-in's view (detect, do not read on)
    res = check(tmp_path, raw + body, reject_legacy=True)
    assert [(f.rule, f.severity) for f in res.findings] == [("legacy-stream-rejected", ERROR)]
    assert res.summary["xend"] == {"config_len": len(sxp), "name": "hand made",
                                   "guest_type": "pv"}
    assert res.summary["legacy"] == {"container": "xend", "width": 32, "guest_type": "pv"}
    # the same hand-made header before a real 32-bit PV legacy stream
    real = check(tmp_path, raw + legacy_body("pv", 4, producer="xend"))
    assert [(f.rule, f.severity) for f in real.findings] == [
        ("legacy-stream-unconverted", WARNING)]
    assert real.valid and real.summary["legacy"]["p2m_size"] == 8


def test_hand_xend_length_written_little_endian(tmp_path: Path) -> None:
    """The length is a big-endian *signed* int: 0xdf written LE reads as negative."""
    sxp = default_xend_sxp(spec("pv")).encode()
    assert len(sxp) < 256
    raw = b"LinuxGuestRecord" + struct.pack("<i", len(sxp)) + sxp + legacy_pv64()
    res = check(tmp_path, raw)
    f = find(res, "xend-config-length")
    assert (f.severity, f.layer, f.offset, f.authority) == (ERROR, "xend", 0, TOOLSTACK)
    as_read = struct.unpack(">i", struct.pack("<i", len(sxp)))[0]
    assert as_read < 0 and str(as_read) in f.message


def test_hand_xenopsd_frames_decoded(tmp_path: Path) -> None:
    lx = libxc_stream("hvm")
    q = QEMU
    raw = (XENOPSD_V2 + struct.pack("<QQ", 0x000F, len(META)) + META
           + struct.pack("<QQ", 0x00F0, 0) + lx
           + struct.pack("<QQ", 0x0F00, len(q)) + q
           + struct.pack("<QQ", 0xFFFF, 0))
    # the writer agrees byte for byte
    assert build(lambda o: (o.write(xenopsd.MAGIC_V2), xenopsd_frame(o, 0x000F, META),
                            xenopsd_frame(o, 0x00F0), o.write(lx), xenopsd_frame(o, 0x0F00, q),
                            xenopsd_frame(o, 0xFFFF))) == raw
    frames = [it for it in parse_items(tmp_path, raw) if isinstance(it, Frame)]
    x_off = 15
    l_off = x_off + 16 + len(META)
    q_off = l_off + 16 + len(lx)  # found by parsing the libxc stream to its END
    e_off = q_off + 16 + len(q)
    assert [(f.ftype, f.offset, f.length) for f in frames] == [
        (0x000F, x_off, len(META)), (0x00F0, l_off, 0), (0x0F00, q_off, len(q)),
        (0xFFFF, e_off, 0)]
    assert frames[0].head == META
    hdr = [it for it in parse_items(tmp_path, raw) if isinstance(it, Header)]
    assert [(h.kind, h.offset) for h in hdr] == [
        ("xenopsd signature", 0), ("libxc image header", l_off + 16),
        ("libxc domain header", l_off + 16 + 24)]
    res = check(tmp_path, raw)
    assert res.valid, described(res)
    assert res.end_offset == len(raw)
    assert res.summary["xenopsd"] == {"format": "v2", "frames": [
        "Xenops", "Libxc", "Qemu_trad", "End_of_image"], "word_size": 64,
        "time": "20260821T02:00:23Z"}
    assert res.layers == ["xenopsd", "libxc"]


def test_hand_xenopsd_legacy_signature(tmp_path: Path) -> None:
    raw = XENOPSD_LEGACY + legacy_hvm32()
    items = parse_items(tmp_path, raw)
    assert isinstance(items[0], Header) and items[0].kind == "xenopsd legacy signature"
    lg = items[1]
    assert isinstance(lg, Legacy) and lg.offset == 15 and lg.container == "xenopsd"
    assert lg.guess is not None and (lg.guess.width, lg.guess.guest) == (4, "hvm")
    # a stub body: the drop-in rejects it at the marker without reading on
    res = check(tmp_path, raw, reject_legacy=True)
    f = only(res, "legacy-stream-rejected")
    assert (f.authority, f.restore_tolerates, f.offset, f.layer) == (SPEC, False, 15, "legacy")
    assert f.message.startswith("legacy stream: convert it")
    assert res.summary["legacy"] == {"container": "xenopsd", "width": 32, "guest_type": "hvm"}
    assert res.summary["xenopsd"]["format"] == "legacy"
    # the hand-made signature before a real XenServer legacy stream: followed, valid
    real = check(tmp_path, XENOPSD_LEGACY + legacy_body("hvm", 4, 8, producer="xenopsd"))
    f = only(real, "legacy-stream", WARNING)
    assert (f.authority, f.restore_tolerates, f.offset, f.layer) == (TOOLSTACK, True, 15, "legacy")
    assert f.message.startswith("legacy image (")
    assert real.valid and real.summary["legacy"]["qemu_record"] == "xenserver"


# ======================================================================================
# 2. libvirt
# ======================================================================================


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_libvirt_valid(tmp_path: Path, guest: str) -> None:
    res = check(tmp_path, libvirt_image(guest))
    assert res.valid and res.findings == [], described(res)
    assert res.layers == ["libvirt", "libxl", "libxc"]
    assert res.summary["libvirt"]["domain_type"] == guest
    assert res.summary["libvirt"]["name"] == f"xenstream-sample-{guest}"
    assert res.summary["guest_type"] == guest
    assert chain(res) == "libvirt (v2, XML) -> libxl v2 -> libxc v3"


def test_libvirt_version1_before_libxl_stream_inner_still_checked(tmp_path: Path) -> None:
    """The 2016 mix-up: version 1 (legacy) in front of a v2 stream; the stream
    after it is still checked by its content."""
    res = check(tmp_path, libvirt_image(payload=libxl_with_errors(), version=1))
    assert rules(res) == sorted([("libvirt-version-lie", ERROR), TSC])
    f = find(res, "libvirt-version-lie")
    assert (f.authority, f.restore_tolerates) == (TOOLSTACK, False)
    assert f.layer == "libvirt", "a finding about the libvirt header's version field"
    assert res.layers == ["libvirt", "libxl", "libxc"]
    assert chain(res) == "libvirt (v1, XML) -> libxl v2 -> libxc v3"


@pytest.mark.parametrize("guest,width", [("pv", 8), ("hvm", 4)], ids=["pv64", "hvm32"])
def test_libvirt_version2_before_legacy_stream(tmp_path: Path, guest: str, width: int) -> None:
    body = legacy_body(guest, width, 8, producer="libvirt")
    res = check(tmp_path, libvirt_image(guest, payload=body, version=2))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-stream", WARNING), ("libvirt-version-lie", ERROR)], described(res)
    assert not res.valid
    f = find(res, "libvirt-version-lie")
    assert (f.layer, f.offset, f.what, f.authority) == (
        "libvirt", 16, "header (libvirt header)", TOOLSTACK)
    assert res.layers == ["libvirt", "legacy"]
    lg = res.summary["legacy"]
    assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
        "container": "libvirt", "width": width * 8, "guest_type": guest}
    assert set(lg) >= LEGACY_DETAIL_KEYS and lg["checkpoints"] == 1
    assert chain(res) == f"libvirt (v2, XML) -> legacy ({width * 8}-bit toolstack, {guest.upper()})"
    # the drop-in: the same version lie, and the legacy stream is an error
    drop = check(tmp_path, libvirt_image(guest, payload=body, version=2), reject_legacy=True)
    assert sorted((f.rule, f.severity) for f in drop.findings) == [
        ("legacy-stream-rejected", ERROR), ("libvirt-version-lie", ERROR)]


def test_libvirt_version1_before_legacy_stream_is_only_legacy(tmp_path: Path) -> None:
    data = legacy_image("libvirt", "pv", 4)
    res = check(tmp_path, data)
    f = only(res, "legacy-stream", WARNING)
    assert "after the libvirt header" in f.message and f.message.startswith("legacy image (")
    assert res.valid
    assert chain(res) == "libvirt (v1, XML) -> legacy (32-bit toolstack, PV)"
    assert res.summary["legacy"]["container"] == "libvirt"
    assert res.summary["legacy"]["guest_width"] == 32
    # the drop-in rejects it, at the same place
    drop = check(tmp_path, data, reject_legacy=True)
    d = only(drop, "legacy-stream-rejected")
    assert d.offset == f.offset and "after the libvirt header" in d.message
    assert d.message.startswith("legacy stream: convert it") and not drop.valid


@pytest.mark.parametrize("version,rule,severity,authority,tolerated", [
    (0, "libvirt-version-zero", WARNING, CONVENTION, True),
    (3, "libvirt-version", ERROR, TOOLSTACK, False),
    (0xFFFFFFFF, "libvirt-version", ERROR, TOOLSTACK, False)])
def test_libvirt_bad_version(tmp_path: Path, version: int, rule: str, severity: str,
                             authority: str, tolerated: bool) -> None:
    res = check(tmp_path, libvirt_image(version=version))
    f = only(res, rule, severity)
    assert (f.authority, f.restore_tolerates, f.layer, f.offset) == (
        authority, tolerated, "libvirt", 0)
    assert str(version) in f.message
    assert res.layers == ["libvirt", "libxl", "libxc"]  # the stream is still checked


def test_libvirt_version0_lenient_is_warning(tmp_path: Path) -> None:
    res = check(tmp_path, libvirt_image(version=0), lenient=True)
    assert res.valid and rules(res) == [("libvirt-version-zero", WARNING)]


def test_libvirt_xml_len_zero(tmp_path: Path) -> None:
    res = check(tmp_path, libvirt_image(xml_len=0))
    f = find(res, "libvirt-xml-length")
    assert (f.severity, f.authority, f.restore_tolerates, f.offset) == (ERROR, TOOLSTACK, False, 0)
    # the XML is then where the stream should be
    p = find(res, "libvirt-payload")
    assert p.severity == ERROR and p.offset == 64
    assert {r for r, _ in rules(res)} <= {"libvirt-xml-length", "libvirt-payload",
                                         "libvirt-xml", "libvirt-xml-nul"}


def test_libvirt_xml_len_beyond_file(tmp_path: Path) -> None:
    data = libvirt_image(xml_len=10_000_000)
    res = check(tmp_path, data)
    f = only(res, "truncated")
    assert (f.layer, f.offset, f.authority) == ("libvirt", 64, RESTORE)
    assert "10000000" in f.message and str(len(data) - 64) in f.message


def test_libvirt_xml_without_nul(tmp_path: Path) -> None:
    f = only(check(tmp_path, libvirt_image(nul=False)), "libvirt-xml-nul")
    assert (f.layer, f.offset, f.authority, f.restore_tolerates) == (
        "libvirt", 64, TOOLSTACK, False)


def test_libvirt_xml_with_inner_nul(tmp_path: Path) -> None:
    xml = default_libvirt_xml(spec()) + "\0junk"
    f = only(check(tmp_path, libvirt_image(xml=xml)), "libvirt-xml-nul-inner", WARNING)
    assert f.authority == CONVENTION and f.restore_tolerates


@pytest.mark.parametrize("xml,word", [
    ("<domain><name>x</domain>", "unparsable"),
    ("<domain type='xen'><name>x</name>", "unparsable"),
    ("not xml at all", "unparsable"),
    ("<domainsnapshot><name>x</name></domainsnapshot>", "<domainsnapshot>"),
])
def test_libvirt_xml_malformed_or_wrong_root(tmp_path: Path, xml: str, word: str) -> None:
    res = check(tmp_path, libvirt_image(xml=xml))
    f = only(res, "libvirt-xml")
    assert (f.layer, f.offset, f.authority, f.restore_tolerates) == (
        "libvirt", 64, TOOLSTACK, False)
    assert word in f.message
    assert res.layers == ["libvirt", "libxl", "libxc"]


@pytest.mark.parametrize("word", range(10))
def test_libvirt_unused_word_nonzero(tmp_path: Path, word: int) -> None:
    unused = [0] * 10
    unused[word] = 0x80000000 >> word
    f = only(check(tmp_path, libvirt_image(unused=unused)), "libvirt-reserved", WARNING)
    assert f"unused{word}" in f.message and f.authority == CONVENTION and f.restore_tolerates
    assert f.layer == "libvirt" and f.offset == 0


@pytest.mark.parametrize("pos", range(16))
def test_libvirt_magic_byte_flipped(tmp_path: Path, pos: int) -> None:
    data = bytearray(libvirt_image())
    data[pos] ^= 0x80
    res = check(tmp_path, bytes(data))
    if pos < 8:  # the first 8 bytes decide the format
        f = only(res, "unrecognised")
        assert f.authority == SPEC and f.offset == 0
    else:
        f = only(res, "libvirt-magic")
        assert (f.layer, f.offset, f.authority) == ("libvirt", 0, TOOLSTACK)


@pytest.mark.parametrize("xml_guest,stream_guest", [("hvm", "pv"), ("pv", "hvm")])
def test_libvirt_os_type_contradicts_stream(tmp_path: Path, xml_guest: str,
                                            stream_guest: str) -> None:
    xml = default_libvirt_xml(spec(xml_guest))
    res = check(tmp_path, libvirt_image(stream_guest, xml=xml))
    f = only(res, "guest-type-mismatch")
    assert (f.authority, f.restore_tolerates, f.layer) == (RESTORE, False, "libxc")
    assert "libvirt XML" in f.message


def test_libvirt_os_type_contradicts_legacy_stream(tmp_path: Path) -> None:
    xml = default_libvirt_xml(spec("hvm"))
    res = check(tmp_path, libvirt_image("hvm", xml=xml, payload=legacy_body("pv"), version=1))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-guest-type", ERROR), ("legacy-stream", WARNING)], described(res)
    f = find(res, "legacy-guest-type")
    assert (f.authority, f.restore_tolerates, f.layer) == (TOOLSTACK, False, "legacy")
    assert "libvirt XML" in f.message
    assert res.summary["guest_type"] == "pv"  # from the legacy header


def test_libvirt_vcpu_count_bounds_inner_vcpu_ids(tmp_path: Path) -> None:
    """<vcpu>1</vcpu> but the HVM context has entries for vcpu 1: the inner
    stream's vcpu-id checks use the XML's count."""
    xml1 = default_libvirt_xml(spec("hvm", vcpus=1))
    stream = libxl_stream("hvm", vcpus=2)
    bad = check(tmp_path, libvirt_image(xml=xml1, payload=stream))
    assert bad.errors and {f.rule for f in bad.findings} == {"hvm-instance"}
    assert all("< 1" in f.message for f in bad.findings)
    good = check(tmp_path, libvirt_image(xml=default_libvirt_xml(spec("hvm", vcpus=2)),
                                         payload=stream))
    assert good.valid, described(good)


def test_libvirt_bare_libxc_payload(tmp_path: Path) -> None:
    """libvirt never writes a bare libxc stream after the XML."""
    res = check(tmp_path, libvirt_image(payload=libxc_stream()))
    f = only(res, "libvirt-payload")
    assert f.offset == 64 + len(default_libvirt_xml(spec())) + 1
    assert "bare libxc" in f.message


# ======================================================================================
# 3. xenopsd v2 frames
# ======================================================================================


def frame_offsets(tmp_path: Path, data: bytes) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for it in parse_items(tmp_path, data):
        if isinstance(it, Frame):
            out.setdefault(it.name, []).append(it.offset)
    return out


def raw_frame(ftype: int, payload: bytes, length: Optional[int] = None) -> bytes:
    return struct.pack("<QQ", ftype, len(payload) if length is None else length) + payload


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_xenopsd_valid_writer(tmp_path: Path, guest: str) -> None:
    res = check(tmp_path, image("xenopsd", guest))
    assert res.valid and res.findings == [], described(res)
    assert res.layers == ["xenopsd", "libxc"]
    qemu = " Qemu_trad record," if guest == "hvm" else ""
    assert chain(res) == f"xenopsd v2 frames (Xenops metadata, libxc v3,{qemu} end)"
    assert res.summary["guest_type"] == guest
    assert res.summary["xenopsd"]["word_size"] == 64


def test_xenopsd_libxc_v2_stream(tmp_path: Path) -> None:
    data = xenopsd_image(xenops_frames("pv", libxc=libxc_stream("pv", version=2)))
    res = check(tmp_path, data)
    assert res.valid, described(res)
    assert chain(res) == "xenopsd v2 frames (Xenops metadata, libxc v2, end)"


def test_xenopsd_uefi_varstored_swtpm(tmp_path: Path) -> None:
    between = [(xenopsd.VARSTORED, b"VARS" * 100), (xenopsd.SWTPM, b"AAAA BBBB CCCC")]
    res = check(tmp_path, xenopsd_image(xenops_frames("hvm", between=between)))
    assert res.valid and res.findings == [], described(res)
    assert res.summary["xenopsd"]["frames"] == [
        "Xenops", "Libxc", "Varstored", "Swtpm", "Qemu_trad", "End_of_image"]
    assert chain(res) == ("xenopsd v2 frames (Xenops metadata, libxc v3, Varstored record, "
                          "Swtpm record, Qemu_trad record, end)")
    assert res.summary["record_counts"]["xenopsd:Varstored"] == 1


def test_xenopsd_swtpm0_binary_frame_accepted(tmp_path: Path) -> None:
    between = [(xenopsd.VARSTORED, b"V"), (xenopsd.SWTPM0, bytes(range(256)))]
    res = check(tmp_path, xenopsd_image(xenops_frames("hvm", between=between)))
    assert res.valid and res.findings == [], described(res)


def test_xenopsd_qemu_trad_over_1mib(tmp_path: Path) -> None:
    big = b"QEVM" + bytes((1 << 20) - 3)
    data = xenopsd_image(xenops_frames("hvm", qemu=big))
    res = check(tmp_path, data)
    f = only(res, "xenopsd-qemu-size")
    assert (f.authority, f.restore_tolerates, f.layer) == (TOOLSTACK, False, "xenopsd")
    assert f.offset == frame_offsets(tmp_path, data)["Qemu_trad"][0]
    assert "1048577" in f.message
    # the frame that holds the error is named in the finding's record fields
    assert (f.record_index, f.record_type) == (10, "Qemu_trad")
    exact = check(tmp_path, xenopsd_image(xenops_frames("hvm", qemu=big[:-1])))
    assert exact.valid, described(exact)


def test_xenopsd_qemu_trad_without_qevm(tmp_path: Path) -> None:
    res = check(tmp_path, xenopsd_image(xenops_frames("hvm", qemu=b"XXXX" + bytes(60))))
    f = only(res, "xenopsd-qemu-magic", WARNING)
    assert f.authority == CONVENTION and f.restore_tolerates and "XXXX" in f.message
    assert res.valid


def test_xenopsd_unknown_frame_type_rest_still_checked(tmp_path: Path) -> None:
    """An unknown type with its length known: reported, skipped, and the rest
    (here a Qemu_trad over the limit and a good End_of_image) still checked."""
    sig_meta = xenopsd.MAGIC_V2 + raw_frame(xenopsd.XENOPS, xenops_metadata())
    data = (sig_meta + raw_frame(xenopsd.LIBXC, b"", 0) + libxc_with_errors("hvm")
            + raw_frame(0x1234, b"hello, unknown")
            + raw_frame(xenopsd.QEMU_TRAD, b"XXXX" + bytes(12))
            + raw_frame(xenopsd.END_OF_IMAGE, b""))
    res = check(tmp_path, data)
    assert rules(res) == sorted([TSC, ("xenopsd-frame-type", ERROR),
                                 ("xenopsd-qemu-magic", WARNING)])
    f = find(res, "xenopsd-frame-type")
    assert f.authority == TOOLSTACK and "0x1234" in f.message
    assert res.end_offset == len(data)
    assert res.summary["xenopsd"]["frames"][-1] == "End_of_image"


@pytest.mark.parametrize("ftype,name", [(xenopsd.LIBXL, "Libxl"),
                                        (xenopsd.QEMU_XEN, "Qemu_xen")])
def test_xenopsd_refused_frame_types(tmp_path: Path, ftype: int, name: str) -> None:
    res = check(tmp_path, xenopsd_image(xenops_frames("hvm", between=[(ftype, b"QEVM1234")])))
    f = only(res, "xenopsd-frame-unsupported")
    assert f.authority == TOOLSTACK and not f.restore_tolerates and name in f.message
    assert name in res.summary["xenopsd"]["frames"]


def test_xenopsd_libxc_frame_nonzero_length(tmp_path: Path) -> None:
    data = xenopsd.MAGIC_V2 + raw_frame(xenopsd.XENOPS, xenops_metadata()) + \
        raw_frame(xenopsd.LIBXC, b"", 99) + libxc_stream("pv") + raw_frame(0xFFFF, b"")
    res = check(tmp_path, data)
    f = only(res, "xenopsd-frame-length", WARNING)
    assert f.authority == CONVENTION and "99" in f.message
    assert res.end_offset == len(data)


def test_xenopsd_end_of_image_nonzero_length(tmp_path: Path) -> None:
    data = xenopsd_image(xenops_frames("pv", end=False)) + raw_frame(0xFFFF, b"", 5)
    f = only(check(tmp_path, data), "xenopsd-frame-length", WARNING)
    assert "End_of_image" in f.message


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_xenopsd_missing_end_of_image(tmp_path: Path, guest: str) -> None:
    data = xenopsd_image(xenops_frames(guest, end=False))
    res = check(tmp_path, data)
    f = only(res, "truncated")
    assert (f.layer, f.offset, f.authority) == ("xenopsd", len(data), RESTORE)


def test_xenopsd_no_libxc_frame(tmp_path: Path) -> None:
    data = xenopsd_image([(xenopsd.XENOPS, xenops_metadata()), (xenopsd.QEMU_TRAD, QEMU),
                          (xenopsd.END_OF_IMAGE, b"")])
    f = only(check(tmp_path, data), "xenopsd-no-memory")
    assert f.authority == TOOLSTACK and f.layer == "xenopsd"


@pytest.mark.parametrize("meta,rule,severity,word", [
    (b"((time x)(word_size 64)", "xenopsd-metadata", ERROR, "unparsable"),
    (b"(time x)(word_size 64)", "xenopsd-metadata", ERROR, ""),
    (b"((word_size 64)(xs_subtree()))", "xenopsd-metadata", ERROR, "time"),
    (b"((time 20260821T02:00:23Z)(xs_subtree()))", "xenopsd-metadata", ERROR, "word_size"),
    (xenops_metadata(word_size=16), "xenopsd-word-size", WARNING, "16"),
    (xenops_metadata(extra="(shiny_new_field 1)"), "xenopsd-metadata-fields", ERROR,
     "shiny_new_field"),
])
def test_xenopsd_metadata_problems(tmp_path: Path, meta: bytes, rule: str, severity: str,
                                   word: str) -> None:
    data = xenopsd_image(xenops_frames("pv", metadata=meta))
    res = check(tmp_path, data)
    f = only(res, rule, severity)
    assert f.layer == "xenopsd" and f.offset == 15 and word in f.message
    assert res.layers == ["xenopsd", "libxc"]  # the memory image is still checked


def test_xenopsd_metadata_word_size_32(tmp_path: Path) -> None:
    res = check(tmp_path, xenopsd_image(xenops_frames("pv", metadata=xenops_metadata(
        word_size=32, time="19700101T00:00:00Z"))))
    assert res.valid and res.summary["xenopsd"]["word_size"] == 32
    assert res.summary["xenopsd"]["time"] == "19700101T00:00:00Z"


def test_xenopsd_xenops_not_first(tmp_path: Path) -> None:
    fr = xenops_frames("pv")
    data = xenopsd_image([fr[1], fr[0], fr[2]])
    res = check(tmp_path, data)
    f = only(res, "xenopsd-frame-order", WARNING)
    assert f.offset == frame_offsets(tmp_path, data)["Xenops"][0]


def test_xenopsd_repeated_frame(tmp_path: Path) -> None:
    between = [(xenopsd.VARSTORED, b"A"), (xenopsd.VARSTORED, b"BB")]
    data = xenopsd_image(xenops_frames("hvm", between=between))
    res = check(tmp_path, data)
    f = only(res, "xenopsd-frame-repeated", WARNING)
    assert f.offset == frame_offsets(tmp_path, data)["Varstored"][1]
    assert res.valid


def test_xenopsd_demu_frame_stops_checking(tmp_path: Path) -> None:
    data = xenopsd_image(xenops_frames("hvm", between=[(xenopsd.DEMU, b"private vgpu state")]))
    res = check(tmp_path, data)
    f = only(res, "xenopsd-demu", WARNING)
    assert f.layer == "xenopsd" and f.authority == CONVENTION and "Demu" in f.message
    assert f.offset == frame_offsets(tmp_path, data)["Demu"][0]


def test_xenopsd_trailing_data_in_file(tmp_path: Path) -> None:
    base = xenopsd_image(xenops_frames("hvm"))
    res = check(tmp_path, base + b"EXTRA")
    f = only(res, "trailing-data", WARNING)
    assert (f.offset, f.layer) == (len(base), "xenopsd") and "5 bytes" in f.message
    assert res.valid


def test_xenopsd_libxc_legacy_frame(tmp_path: Path) -> None:
    """A legacy stream in a Libxc_legacy frame (PV: no device-model record),
    then End_of_image: followed, a warning; the drop-in stops at it."""
    data = xenopsd_image([(xenopsd.XENOPS, xenops_metadata()),
                          (xenopsd.LIBXC_LEGACY, legacy_body("pv", 4, producer="xenopsd")),
                          (xenopsd.END_OF_IMAGE, b"")])
    at = 15 + 16 + len(xenops_metadata()) + 16
    res = check(tmp_path, data)
    f = only(res, "legacy-stream", WARNING)
    assert f.offset == at and res.valid
    assert res.layers == ["xenopsd", "legacy"]
    assert res.summary["legacy"]["container"] == "xenopsd-frame"
    assert res.summary["legacy"]["checkpoints"] == 1
    assert res.end_offset == len(data)
    assert chain(res) == ("xenopsd v2 frames (Xenops metadata, Libxc_legacy record, end) -> "
                          "legacy (32-bit toolstack, PV)")
    drop = check(tmp_path, data, reject_legacy=True)
    d = only(drop, "legacy-stream-rejected")
    assert d.offset == at and d.message.startswith("legacy stream: convert it")
    assert chain(drop) == ("xenopsd v2 frames (Xenops metadata, Libxc_legacy record) -> "
                           "legacy (32-bit toolstack, PV)")


def test_xenopsd_libxc_legacy_frame_hvm_then_qemu_trad(tmp_path: Path) -> None:
    """xenopsd keeps all qemu state in Qemu_trad frames: an HVM legacy stream
    in a Libxc_legacy frame has no device-model record of its own, and the
    Qemu_trad frame after it is a frame, not a legacy qemu record."""
    data = xenopsd_image([(xenopsd.XENOPS, xenops_metadata()),
                          (xenopsd.LIBXC_LEGACY, legacy_body("hvm", 8, qemu="none",
                                                             toolstack=False)),
                          (xenopsd.QEMU_TRAD, QEMU), (xenopsd.END_OF_IMAGE, b"")])
    res = check(tmp_path, data)
    assert [(f.rule, f.severity) for f in res.findings] == [("legacy-stream", WARNING)], \
        described(res)
    assert res.valid and res.end_offset == len(data)
    assert res.summary["xenopsd"]["frames"] == ["Xenops", "Libxc_legacy", "Qemu_trad",
                                                "End_of_image"]


@pytest.mark.parametrize("guest,width,live", [
    ("hvm", 4, False), ("pv", 8, False), ("pv", 4, False), ("hvm", 8, True)],
    ids=["hvm32", "pv64", "pv32", "hvm64-live"])
def test_xenopsd_legacy_image(tmp_path: Path, guest: str, width: int, live: bool) -> None:
    data = legacy_image("xenopsd", guest, width, guest_width=8 if guest == "hvm" else width,
                        live=live)
    res = check(tmp_path, data)
    f = only(res, "legacy-stream", WARNING)
    assert "XenServer" in f.message and f.message.startswith("legacy image (")
    assert (f.offset, f.layer, f.authority) == (15, "legacy", TOOLSTACK)
    assert res.valid
    lg = res.summary["legacy"]
    assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
        "container": "xenopsd", "width": width * 8, "guest_type": guest}
    assert lg["qemu_record"] == ("xenserver" if guest == "hvm" else None)
    assert lg["batches"] == (2 if live else 1)
    assert res.summary["guest_type"] == guest
    assert res.layers == ["xenopsd", "legacy"]
    w = width * 8
    assert chain(res) == f"xenopsd legacy image -> legacy ({w}-bit toolstack, {guest.upper()})"
    drop = only(check(tmp_path, data, reject_legacy=True), "legacy-stream-rejected")
    assert "XenServer" in drop.message and drop.message.startswith("legacy stream: convert it")


def test_xenopsd_legacy_signature_before_v2_stream(tmp_path: Path) -> None:
    """``XenSavedDomain\\n`` says "legacy, run the converter" but a libxc v2
    stream (8 x 0xFF: not legacy, by the spec's marker rule) follows: an
    error, and the stream is still checked by its content."""
    res = check(tmp_path, xenopsd.MAGIC_LEGACY + libxc_with_errors("hvm"))
    assert not LEGACY_MARKER_RULES & {f.rule for f in res.findings}, described(res)
    assert "libxc" in res.layers
    assert TSC in rules(res)
    assert any(f.layer == "xenopsd" and f.severity == ERROR for f in res.findings), \
        described(res)


@pytest.mark.parametrize("pos", range(15))
def test_xenopsd_signature_byte_flipped(tmp_path: Path, pos: int) -> None:
    data = bytearray(image("xenopsd", "pv"))
    data[pos] ^= 0x80
    res = check(tmp_path, bytes(data))
    if pos < 8:
        only(res, "unrecognised")
    else:
        f = only(res, "xenopsd-signature")
        assert (f.layer, f.offset) == ("xenopsd", 0)


@pytest.mark.parametrize("which", ["Xenops", "Qemu_trad", "End_of_image"])
def test_xenopsd_frame_type_corrupted(tmp_path: Path, which: str) -> None:
    """A sized frame's type made unknown: reported at that frame; its length
    still lets the frames after it be read."""
    data = bytearray(image("xenopsd", "hvm"))
    off = frame_offsets(tmp_path, bytes(data))[which][0]
    struct.pack_into("<Q", data, off, 0x0ABC)
    res = check(tmp_path, bytes(data))
    f = res.findings[0]
    assert (f.rule, f.severity, f.offset) == ("xenopsd-frame-type", ERROR, off), described(res)
    if which == "Qemu_trad":
        assert len(res.findings) == 1, described(res)
    if which == "End_of_image":  # then nothing ends the frames
        assert rules(res) == [("truncated", ERROR), ("xenopsd-frame-type", ERROR)]


# -- the pipe: nothing read past End_of_image -----------------------------------------

EXTRA = raw_frame(0x0F00, b"QEVM" + b"not-ours" * 8)  # looks like one more frame


def _hvm_xenopsd() -> bytes:
    return xenopsd_image(xenops_frames("hvm", between=[(xenopsd.VARSTORED, b"vars" * 300)]))


@pytest.mark.parametrize("how", ["/dev/fd", "stdin"])
def test_xenopsd_pipe_cli_reads_nothing_past_end_of_image(how: str) -> None:
    data = _hvm_xenopsd()
    r, w = os.pipe()
    t = feeder(w, data + EXTRA, 7)
    try:
        if how == "/dev/fd":
            p = run([XENSTREAM, "verify", f"/dev/fd/{r}"], pass_fds=[r], expect=0)
        else:
            cp = subprocess.run([XENSTREAM, "verify", "-"], stdin=r, capture_output=True,
                                timeout=60)
            assert cp.returncode == 0, cp.stderr
            p = subprocess.CompletedProcess(cp.args, 0, cp.stdout.decode(), cp.stderr.decode())
        assert "valid: xenopsd v2 frames (Xenops metadata, libxc v3, Varstored record, " \
               "Qemu_trad record, end)" in p.stdout
        assert read_all(r) == EXTRA
    finally:
        t.join(30)
        os.close(r)


def test_xenopsd_pipe_api_reads_nothing_past_end_of_image() -> None:
    data = _hvm_xenopsd()
    r, w = os.pipe()
    t = feeder(w, data + EXTRA, 1000)
    try:
        with Source.open(r) as src:
            res = verify(src)
            assert src.pos == len(data)
        assert res.valid and res.findings == [], described(res)
        assert read_all(r) == EXTRA
    finally:
        t.join(30)
        os.close(r)


def test_xenopsd_regular_file_fd_offset_after_end_of_image(tmp_path: Path) -> None:
    data = _hvm_xenopsd()
    p = put(tmp_path, data + EXTRA)
    fd = os.open(p, os.O_RDONLY)
    try:
        out = run([XENSTREAM, "verify", f"/dev/fd/{fd}"], pass_fds=[fd], expect=0)
        assert "warning" in out.stdout and str(len(EXTRA)) in out.stdout
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(data)
        assert os.read(fd, 100000) == EXTRA
        os.lseek(fd, 0, os.SEEK_SET)
        with Source.open(f"/dev/fd/{fd}") as src:
            res = verify(src, check_trailing=False)
        assert res.valid and res.findings == []
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(data)
    finally:
        os.close(fd)


# ======================================================================================
# 4. xend
# ======================================================================================


@pytest.mark.parametrize("guest,width", [("pv", 8), ("pv", 4), ("hvm", 4), ("hvm", 8)],
                         ids=["pv64", "pv32", "hvm32", "hvm64"])
def test_xend_image(tmp_path: Path, guest: str, width: int) -> None:
    gw = 8 if guest == "hvm" else width
    data = xend_image(guest, payload=legacy_body(guest, width, gw, producer="xend"))
    assert data == legacy_image("xend", guest, width, guest_width=gw)  # the writer agrees
    res = check(tmp_path, data)
    f = only(res, "legacy-stream-unconverted", WARNING)
    assert "after the xend header" in f.message and f.message.startswith("legacy image (")
    assert res.valid
    assert res.layers == ["xend", "legacy"]
    assert res.summary["xend"]["guest_type"] == guest
    assert res.summary["xend"]["name"] == f"xenstream-sample-{guest}"
    lg = res.summary["legacy"]
    assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
        "container": "xend", "width": width * 8, "guest_type": guest}
    assert lg["qemu_record"] == ("xend" if guest == "hvm" else None)
    assert chain(res) == f"xend (SXP config) -> legacy ({width * 8}-bit toolstack, {guest.upper()})"
    drop = only(check(tmp_path, data, reject_legacy=True), "legacy-stream-rejected")
    assert drop.offset == f.offset and drop.message.startswith("legacy stream: convert it")


def test_xend_hvm_by_boot_child(tmp_path: Path) -> None:
    sxp = "(domain (name odd) (image (ioemu (boot c) (kernel ''))))"
    res = check(tmp_path, xend_image("hvm", sxp=sxp))
    assert res.summary["xend"]["guest_type"] == "hvm"
    only(res, "legacy-stream-unconverted", WARNING)  # no legacy-guest-type with the HVM stream
    assert res.valid


@pytest.mark.parametrize("sxp_guest,stream_guest", [("hvm", "pv"), ("pv", "hvm")],
                         ids=["hvm-sxp-pv-stream", "pv-sxp-hvm-stream"])
def test_xend_guest_type_mismatch(tmp_path: Path, sxp_guest: str, stream_guest: str) -> None:
    sxp = default_xend_sxp(spec(sxp_guest))
    res = check(tmp_path, xend_image(stream_guest, sxp=sxp))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-guest-type", ERROR), ("legacy-stream-unconverted", WARNING)], described(res)
    assert "xend config" in find(res, "legacy-guest-type").message
    assert res.summary["guest_type"] == stream_guest


@pytest.mark.parametrize("sxp", ["(domain (name x)", "(domain (name 'x))", "domain) (", "",
                                 "(domain) trailing", "(vm (name x))"])
def test_xend_sxp_malformed(tmp_path: Path, sxp: str) -> None:
    body = legacy_body("pv", producer="xend")
    res = check(tmp_path, xend_image("pv", sxp=sxp, payload=body) if sxp else
                b"LinuxGuestRecord" + struct.pack(">i", 1) + b" " + body)
    f = find(res, "xend-config-sxp")
    assert (f.severity, f.layer, f.offset, f.authority) == (ERROR, "xend", 20, TOOLSTACK)
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-stream-unconverted", WARNING), ("xend-config-sxp", ERROR)], described(res)


@pytest.mark.parametrize("clen", [0, -1, -0x80000000])
def test_xend_config_length_not_positive(tmp_path: Path, clen: int) -> None:
    res = check(tmp_path, xend_image(config_len=clen))
    f = find(res, "xend-config-length")
    assert (f.severity, f.layer, f.offset, f.authority) == (ERROR, "xend", 0, TOOLSTACK)
    assert str(clen) in f.message


def test_xend_config_length_beyond_file(tmp_path: Path) -> None:
    data = xend_image(config_len=0x7FFFFFFF)
    f = only(check(tmp_path, data), "truncated")
    assert (f.layer, f.offset) == ("xend", 20)
    assert str(len(data) - 20) in f.message


def test_xend_config_with_nul_warns(tmp_path: Path) -> None:
    sxp = default_xend_sxp(spec("pv")) + "\0"
    res = check(tmp_path, xend_image("pv", sxp=sxp))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-stream-unconverted", WARNING), ("xend-config-nul", WARNING)], described(res)
    assert res.valid


@pytest.mark.parametrize("pos", range(16))
def test_xend_magic_byte_flipped(tmp_path: Path, pos: int) -> None:
    data = bytearray(xend_image())
    data[pos] ^= 0x80
    res = check(tmp_path, bytes(data))
    if pos < 8:
        only(res, "unrecognised")
    else:
        f = only(res, "xend-magic")
        assert (f.layer, f.offset) == ("xend", 0)


# ======================================================================================
# 5. bare legacy
# ======================================================================================


@pytest.mark.parametrize("body,width,guest,p2m", [
    (legacy_pv32(0x2000), 32, "pv", 0x2000),
    (legacy_pv64(0x40000), 64, "pv", 0x40000),
    (legacy_hvm32(0x100000, -7), 32, "hvm", 0x100000),
    (legacy_hvm32(0x100000, 1024), 32, "hvm", 0x100000),
    (legacy_hvm32(0x8000, -2), 32, "hvm", 0x8000),
    (legacy_hvm64(0x100000, -7), 64, "hvm", 0x100000),
    (legacy_hvm64(0x0FFFFFFF, 1), 64, "hvm", 0x0FFFFFFF),
], ids=["pv32", "pv64", "hvm32-chunk", "hvm32-batch", "hvm32-chunk2", "hvm64-chunk",
        "hvm64-batch"])
def test_bare_legacy_detected(tmp_path: Path, body: bytes, width: int, guest: str,
                              p2m: int) -> None:
    """Detection from the first 16 bytes (hand-made, the spec's table), as
    the drop-in sees them: rejected at the marker, nothing after it read."""
    res = check(tmp_path, body, reject_legacy=True)
    f = only(res, "legacy-stream-rejected")
    assert (f.authority, f.restore_tolerates, f.offset, f.layer) == (SPEC, False, 0, "legacy")
    assert f.message.startswith("legacy stream: convert it")
    assert f"{width}-bit toolstack" in f.message and guest.upper() in f.message
    assert f"{p2m:#x}" in f.message
    assert res.summary["legacy"] == {"container": "bare", "width": width, "guest_type": guest}
    assert res.layers == ["legacy"]
    assert chain(res) == f"legacy ({width}-bit toolstack, {guest.upper()})"


@pytest.mark.parametrize("guest,width,gw,live", [
    ("pv", 4, 4, False), ("pv", 8, 8, False), ("pv", 8, 4, False), ("hvm", 4, 8, False),
    ("hvm", 4, 8, True), ("hvm", 8, 8, False), ("hvm", 8, 8, True)],
    ids=["pv32", "pv64", "pv64-guest32", "hvm32-chunk", "hvm32-batch", "hvm64-chunk",
         "hvm64-batch"])
def test_bare_legacy_real_stream(tmp_path: Path, guest: str, width: int, gw: int,
                                 live: bool) -> None:
    """A whole legacy stream (live: a page batch first, else TSC_INFO):
    detected, followed to its end, a warning only."""
    data = legacy_body(guest, width, gw, live=live)
    res = check(tmp_path, data)
    f = only(res, "legacy-stream-unconverted", WARNING)
    assert (f.authority, f.restore_tolerates, f.offset, f.layer) == (SPEC, False, 0, "legacy")
    assert f.message.startswith("legacy image (")
    assert "Xen >= 4.6 restores it only after conversion" in f.message
    assert f"{width * 8}-bit toolstack" in f.message and guest.upper() in f.message
    assert "p2m_size 0x8" in f.message
    assert res.valid and res.end_offset == len(data)
    hvm = guest == "hvm"
    assert res.summary["legacy"] == {
        "container": "bare", "width": width * 8, "guest_type": guest, "p2m_size": 8,
        # HVM: pfn 5 is a hole; live HVM sends the later-dirty pages as XALLOC first
        "pages": 7 if hvm else 8, "batches": 2 if live else 1,
        "checkpoints": 1, "verify_mode": False, "qemu_record": "libxl" if hvm else None,
        "guest_width": None if hvm else gw * 8}
    assert res.summary["guest_type"] == guest
    assert res.layers == ["legacy"]
    assert chain(res) == f"legacy ({width * 8}-bit toolstack, {guest.upper()})"


def _sound_legacy() -> bytes:
    return legacy_body("hvm", 4)


def test_cli_verify_sound_legacy_image_warns(tmp_path: Path) -> None:
    p = put(tmp_path, _sound_legacy())
    out = run([XENSTREAM, "verify", str(p)], expect=0)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    assert lines[0].startswith(f"{p}: offset 0x0, legacy payload: warning: legacy image (")
    assert "only after conversion" in lines[0]
    assert lines[1].startswith(f"{p}: valid, 1 warning: legacy (32-bit toolstack, HVM)")
    assert "error" not in out.stdout.lower()
    doc = json.loads(run([XENSTREAM, "verify", "--json", str(p)], expect=0).stdout)
    assert doc["valid"] is True and doc["schema_version"] == 2
    assert [(f["rule"], f["severity"]) for f in doc["findings"]] == [
        ("legacy-stream-unconverted", "warning")]
    (jf,) = doc["findings"]
    assert (jf["authority"], jf["restore_tolerates"]) == ("spec", False)
    assert jf["source"].startswith("docs/specs/libxc-migration-stream.pandoc")
    import jsonschema

    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def test_verify_stream_v2_rejects_sound_legacy_image(tmp_path: Path) -> None:
    p = put(tmp_path, _sound_legacy())
    out = run([exe("verify-stream-v2"), "-i", str(p)], expect=1)
    assert "legacy stream: convert it" in out.stderr
    assert "legacy image (" not in out.stderr + out.stdout


def test_legacy_bad_page_type(tmp_path: Path) -> None:
    """Page type 5 (between L4TAB and the XALLOC/BROKEN/XTAB codes): Xen's v2
    restore rejects it; the stream around it is still read to its end."""
    data = bytearray(legacy_body("hvm", 8))
    # 64-bit HVM, not live: u64 p2m_size, TSC_INFO (24 bytes), then the first batch
    assert struct.unpack_from("<Q", data, 0)[0] == 8
    assert struct.unpack_from("<i", data, 8)[0] == -7
    assert struct.unpack_from("<iQ", data, 32) == (8, 0)  # 8 entries, pfn 0 type 0 first
    struct.pack_into("<Q", data, 36, (5 << 28) | 0)
    res = check(tmp_path, bytes(data))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-page-type", ERROR), ("legacy-stream-unconverted", WARNING)], described(res)
    f = next(f for f in res.findings if f.rule == "legacy-page-type")
    assert (f.layer, f.offset, f.authority, f.restore_tolerates) == ("legacy", 32, RESTORE, False)
    assert "0x5" in f.message
    assert not res.valid and res.end_offset == len(data)


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_tmem(tmp_path: Path, guest: str) -> None:
    res = check(tmp_path, legacy_body(guest, tmem=True))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-stream-unconverted", WARNING), ("legacy-tmem", ERROR)], described(res)
    f = next(f for f in res.findings if f.rule == "legacy-tmem")
    assert (f.layer, f.authority, f.restore_tolerates) == ("legacy", TOOLSTACK, False)
    assert "tmem" in f.message and not res.valid


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_remus_truncated_in_last_checkpoint(tmp_path: Path, guest: str) -> None:
    """Cut inside checkpoint 3 of 3: a restore fails over to checkpoint 2."""
    res = check(tmp_path, legacy_body(guest, checkpoints=3, truncate_in_checkpoint=3))
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-checkpoint-eof", WARNING), ("legacy-stream-unconverted", WARNING)], described(res)
    f = next(f for f in res.findings if f.rule == "legacy-checkpoint-eof")
    assert (f.layer, f.authority, f.restore_tolerates) == ("legacy", RESTORE, True)
    assert "checkpoint 3" in f.message and "checkpoint 2" in f.message
    assert res.valid
    assert res.summary["legacy"]["checkpoints"] == 2
    whole = check(tmp_path, legacy_body(guest, checkpoints=3))
    assert [(f.rule, f.severity) for f in whole.findings] == [("legacy-stream-unconverted", WARNING)]
    assert whole.summary["legacy"]["checkpoints"] == 3


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_remus_truncated_in_first_checkpoint(tmp_path: Path, guest: str) -> None:
    """Cut inside checkpoint 1: nothing to fail over to."""
    data = legacy_body(guest, checkpoints=3, truncate_in_checkpoint=1)
    res = check(tmp_path, data)
    assert sorted((f.rule, f.severity) for f in res.findings) == [
        ("legacy-stream-unconverted", WARNING), ("truncated", ERROR)], described(res)
    f = next(f for f in res.findings if f.rule == "truncated")
    assert (f.layer, f.authority, f.restore_tolerates) == ("legacy", RESTORE, False)
    assert f.offset < len(data)
    assert not res.valid and res.summary["legacy"]["checkpoints"] == 0


@pytest.mark.parametrize("data", [
    b"\x12\x34" * 40,
    struct.pack("<II", 0x2000, 0x7FFFFFFF) + bytes(24),  # implausible octets 4-7
    struct.pack("<QQ", 0x20000000, 2**64 - 1) + bytes(16),  # p2m_size too large
    struct.pack("<QiI", 0x1000, 5000, 0) + bytes(16),  # batch over 1024
    struct.pack("<QiI", 0x1000, -21, 0) + bytes(16),  # chunk id below -20
    bytes(32),
], ids=["pattern", "pv32-bad-sig", "p2m-too-big", "batch-too-big", "chunk-too-low", "zeros"])
def test_bare_garbage_unrecognised(tmp_path: Path, data: bytes) -> None:
    res = check(tmp_path, data)
    f = only(res, "unrecognised")
    assert (f.authority, f.offset) == (SPEC, 0)
    assert res.layers == [] and chain(res) == "unrecognised"


# ======================================================================================
# 6. lying fields in other containers: xl without STREAMv2 before a libxl stream
# ======================================================================================


def test_xl_streamv2_clear_before_libxl_stream_inner_still_checked(tmp_path: Path) -> None:
    cfg = {"c_info": {"type": "hvm", "name": "x"}, "b_info": {"max_vcpus": 1}}
    data = build(lambda o: (xl_header(o, cfg, streamv2=False), o.write(libxl_with_errors())))
    res = check(tmp_path, data)
    assert ("xl-streamv2-lie", ERROR) in rules(res)
    assert TSC in rules(res), described(res)
    assert res.layers == ["xl", "libxl", "libxc"]


# ======================================================================================
# 7. truncation at every boundary: exactly one error, "truncated"
# ======================================================================================


def _cut_points(tmp_path: Path, data: bytes, legacy_at: Optional[int]) -> List[Tuple[int, str]]:
    """(cut, expected layer of the truncated structure) at every item boundary,
    one byte either side, and inside each field of the envelope headers."""
    ext = extents(tmp_path, data)
    layer_at: Dict[int, str] = {}
    pts = set()
    for s, e, _layer in ext:
        pts.update({s, s + 1, s + 4, s + 8, s + 12, (s + e) // 2, e - 1, e})
    env_end = next(s for s, _e, layer in ext if layer not in ("libvirt", "xend", "xenopsd")) \
        if any(layer in ("libxl", "libxc", "legacy") for _s, _e, layer in ext) else len(data)
    pts.update(range(0, min(env_end, 96) + 1))
    stop = legacy_at if legacy_at is not None else len(data)
    out = []
    for c in sorted(p for p in pts if 0 <= p < stop or p == legacy_at):
        if c >= len(data):
            continue
        # the structure being read when input ends: the item containing c, or
        # at a boundary the item starting there
        inside = [layer for s, e, layer in ext if s < c < e]
        starting = [layer for s, _e, layer in ext if s == c]
        layer_at[c] = inside[-1] if inside else (starting[0] if starting else "")
        out.append((c, layer_at[c]))
    return out


ENVELOPES = {
    "libvirt-hvm": lambda: libvirt_image("hvm"),
    "libvirt-pv": lambda: libvirt_image("pv"),
    "xenopsd-hvm": lambda: xenopsd_image(xenops_frames(
        "hvm", between=[(xenopsd.VARSTORED, b"vars"), (xenopsd.SWTPM, b"tpm")])),
    "xenopsd-pv": lambda: image("xenopsd", "pv"),
    "xenopsd-legacy": lambda: legacy_image("xenopsd", "pv", 4),
    "xend": lambda: xend_image("pv"),
    "libvirt-legacy": lambda: legacy_image("libvirt", "pv", 8),
}


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_truncated_at_every_boundary(tmp_path: Path, name: str) -> None:
    data = ENVELOPES[name]()
    legacy_at = next((it.offset for it in parse_items(tmp_path, data)
                      if isinstance(it, Legacy)), None)
    cuts = _cut_points(tmp_path, data, legacy_at)
    assert len(cuts) > 10
    p = tmp_path / "cut.bin"
    for c, layer in cuts:
        p.write_bytes(data[:c])
        with Source.open(str(p)) as src:
            res = verify(src)
        errs = [(f.rule, f.severity) for f in res.findings]
        assert errs == [("truncated", ERROR)], (name, c, described(res))
        f = res.findings[0]
        assert f.authority == RESTORE and not f.restore_tolerates
        assert f.offset <= c, (name, c, f.offset, f.message)
        if c >= 8:  # the envelope is known once 8 bytes are in
            ok = {layer}
            if name == "libvirt-legacy" and c == legacy_at:
                ok |= {"libxl"}  # "the saved stream after the XML": libxl or legacy
            assert f.layer in ok, (name, c, f.layer, layer, f.message)
        else:
            assert f.layer in ("", name.split("-")[0]), (name, c, f.layer)


def test_truncated_empty_input(tmp_path: Path) -> None:
    f = only(check(tmp_path, b""), "truncated")
    assert f.offset == 0


# ======================================================================================
# 8. --format forcing each envelope name
# ======================================================================================

DETECTED = {
    "libvirt": lambda: libvirt_image("hvm"),
    "xenopsd": lambda: image("xenopsd", "hvm"),
    "xend": lambda: xend_image("pv"),
    "legacy": lambda: legacy_body("hvm", 8),
    "libxc": lambda: libxc_stream("pv"),
    "libxl": lambda: libxl_stream("hvm"),
    "xl": lambda: image("xl", "hvm"),
}


@pytest.mark.parametrize("kind", sorted(DETECTED))
@pytest.mark.parametrize("forced", FORMAT_NAMES)
def test_forced_format(tmp_path: Path, kind: str, forced: str) -> None:
    data = DETECTED[kind]()
    plain = check(tmp_path, data)
    res = check(tmp_path, data, format=forced)
    if forced == kind:
        assert rules(res) == rules(plain) and res.layers == plain.layers
    else:
        f = only(res, "format-mismatch")
        assert f.authority == SPEC and f.offset == 0
        assert forced in f.message and kind in f.message, f.message


def test_forced_xenopsd_accepts_legacy_signature(tmp_path: Path) -> None:
    data = legacy_image("xenopsd", "pv", 4)
    res = check(tmp_path, data, format="xenopsd")
    only(res, "legacy-stream", WARNING)
    assert res.valid and res.layers == ["xenopsd", "legacy"]
    drop = check(tmp_path, data, format="xenopsd", reject_legacy=True)
    only(drop, "legacy-stream-rejected", ERROR)


def test_forced_legacy_on_enveloped_legacy_is_mismatch(tmp_path: Path) -> None:
    f = only(check(tmp_path, xend_image("pv"), format="legacy"), "format-mismatch")
    assert "legacy" in f.message and "xend" in f.message


@pytest.mark.parametrize("forced,kind,rc", [
    ("libvirt", "libvirt", 0), ("xenopsd", "xenopsd", 0), ("xend", "libvirt", 1),
    ("legacy", "xenopsd", 1), ("libvirt", "xend", 1)])
def test_cli_format_accepts_envelope_names(tmp_path: Path, forced: str, kind: str,
                                           rc: int) -> None:
    p = put(tmp_path, DETECTED[kind]())
    out = run([XENSTREAM, "verify", "--format", forced, str(p)], expect=rc)
    if forced != kind:
        assert forced in out.stderr and kind in out.stderr


# ======================================================================================
# 9. the chain: report.chain, the verdict line, -v, JSON layers
# ======================================================================================

CHAINS = [
    ("libvirt", lambda: libvirt_image("hvm"), "libvirt (v2, XML) -> libxl v2 -> libxc v3",
     ["libvirt", "libxl", "libxc"], 0),
    ("libvirt-legacy", lambda: legacy_image("libvirt", "pv", 8),
     "libvirt (v1, XML) -> legacy (64-bit toolstack, PV)", ["libvirt", "legacy"], 0),
    ("libvirt-legacy-stub", lambda: libvirt_image("pv", payload=legacy_pv64(), version=1),
     "libvirt (v1, XML) -> legacy (64-bit toolstack, PV)", ["libvirt", "legacy"], 1),
    ("xenopsd", lambda: image("xenopsd", "hvm"),
     "xenopsd v2 frames (Xenops metadata, libxc v3, Qemu_trad record, end)",
     ["xenopsd", "libxc"], 0),
    ("xenopsd-legacy", lambda: legacy_image("xenopsd", "hvm", 4),
     "xenopsd legacy image -> legacy (32-bit toolstack, HVM)", ["xenopsd", "legacy"], 0),
    ("xend", lambda: xend_image("pv"), "xend (SXP config) -> legacy (64-bit toolstack, PV)",
     ["xend", "legacy"], 0),
    ("legacy", lambda: legacy_body("pv", 4), "legacy (32-bit toolstack, PV)", ["legacy"], 0),
    # a 16-byte stub and filler: detected, then the filler is no legacy stream
    ("legacy-stub", lambda: legacy_pv32(), "legacy (32-bit toolstack, PV)", ["legacy"], 1),
]


@pytest.mark.parametrize("name,make,want,layers,rc", CHAINS, ids=[c[0] for c in CHAINS])
def test_chain_api_verdict_cli_json(tmp_path: Path, name: str, make: Any, want: str,
                                    layers: List[str], rc: int) -> None:
    import jsonschema

    data = make()
    res = check(tmp_path, data)
    assert chain(res) == want and res.layers == layers
    assert verdict(res, "img").startswith(f"img: {'valid' if rc == 0 else 'INVALID'}")
    assert want in verdict(res, "img")
    p = put(tmp_path, data)
    out = run([XENSTREAM, "verify", str(p)], expect=rc)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{p}: ") and want in last
    outv = run([XENSTREAM, "verify", "-v", str(p)], expect=rc)
    assert want in outv.stdout.strip().splitlines()[-1]
    assert outv.stdout.splitlines()[0].startswith("0x0000000000  ")
    js = run([XENSTREAM, "verify", "--json", str(p)], expect=rc)
    doc = json.loads(js.stdout)
    assert doc["layers"] == layers and doc["valid"] is (rc == 0)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def test_verbose_lists_frames_and_envelope_data(tmp_path: Path) -> None:
    """``-v`` lists every header and record: the xenopsd frames (records #0..)
    and the envelope's configuration blob are among them."""
    p = put(tmp_path, image("xenopsd", "hvm"))
    lines = run([XENSTREAM, "verify", "-v", str(p)], expect=0).stdout.splitlines()
    frames = [(0, "Xenops"), (1, "Libxc"), (10, "Qemu_trad"), (11, "End_of_image")]
    for i, name in frames:
        assert any(re.search(rf"xenopsd\s.*#{i}\b.*\b{name}\b", ln) for ln in lines), (
            i, name, lines)
    p2 = put(tmp_path, libvirt_image("hvm"))
    lines2 = run([XENSTREAM, "verify", "-v", str(p2)], expect=0).stdout.splitlines()
    assert any("XML" in ln for ln in lines2[:-1]), lines2


def test_xenopsd_json_findings_record_fields(tmp_path: Path) -> None:
    data = xenopsd_image(xenops_frames("hvm", qemu=b"XXXX" + bytes(12)))
    p = put(tmp_path, data)
    doc = json.loads(run([XENSTREAM, "verify", "--json", str(p)], expect=0).stdout)
    (f,) = doc["findings"]
    assert f["rule"] == "xenopsd-qemu-magic" and f["severity"] == "warning"
    assert f["layer"] == "xenopsd" and f["what"].endswith("(Qemu_trad frame)")
    assert doc["summary"]["xenopsd"]["frames"][-1] == "End_of_image"


# ======================================================================================
# 10. xenstream config
# ======================================================================================


def _xl_cfg_image() -> bytes:
    cfg = b'name = "vm"\nbuilder = "hvm"\nmemory = 32\n\0'
    return build(lambda o: (xl_header(o, cfg, json_flag=False), o.write(libxl_stream())))


CONFIGS = [
    ("xl-json", lambda: image("xl", "hvm"), "xl", 48 + 4, '"c_info"'),
    ("xl-cfg", _xl_cfg_image, "xl", 48 + 4, 'builder = "hvm"'),
    ("libvirt-xml", lambda: libvirt_image("pv"), "libvirt", 64,
     "<name>xenstream-sample-pv</name>"),
    ("xend-sxp", lambda: xend_image("hvm"), "xend", 20, "(image (hvm"),
    ("xenopsd-sexp", lambda: image("xenopsd", "pv"), "xenopsd", 15 + 16, "(word_size 64)"),
]


@pytest.mark.parametrize("kind,make,envelope,offset,snippet", CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_config_each_kind(tmp_path: Path, kind: str, make: Any, envelope: str, offset: int,
                          snippet: str) -> None:
    data = make()
    p = put(tmp_path, data)
    txt = run([XENSTREAM, "config", str(p)], expect=0)
    assert snippet in txt.stdout and txt.stderr == ""
    assert "\0" not in txt.stdout
    doc = json.loads(run([XENSTREAM, "config", "--json", str(p)], expect=0).stdout)
    assert doc["kind"] == kind and doc["envelope"] == envelope
    assert doc["offset"] == offset and doc["file"] == str(p)
    assert isinstance(doc["description"], str) and doc["description"]
    # the bytes at offset..offset+length in the file are the configuration
    blob = data[doc["offset"]:doc["offset"] + doc["length"]]
    if kind == "xl-json":
        assert isinstance(doc["config"], dict)
        assert doc["config"]["c_info"]["name"] == "xenstream-sample-hvm"
        assert json.loads(blob.rstrip(b"\0")) == doc["config"]
    else:
        assert isinstance(doc["config"], str) and snippet in doc["config"]
        assert blob.rstrip(b"\0").decode() == doc["config"]
        assert doc["config"].rstrip("\n") == txt.stdout.rstrip("\n")


@pytest.mark.parametrize("name,make", [
    ("libxc", lambda: libxc_stream("pv")), ("libxl", lambda: libxl_stream("hvm")),
    ("legacy", lambda: legacy_pv64()), ("xenopsd-legacy", lambda: xenopsd.MAGIC_LEGACY
                                        + legacy_pv32()),
    ("garbage", lambda: b"\x12\x34" * 40), ("empty", lambda: b"")])
@pytest.mark.parametrize("as_json", [False, True])
def test_config_none_or_unreadable(tmp_path: Path, name: str, make: Any, as_json: bool) -> None:
    p = put(tmp_path, make())
    out = run([XENSTREAM, "config", *(["--json"] if as_json else []), str(p)], expect=1)
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and str(p) in out.stderr


def test_config_forced_format(tmp_path: Path) -> None:
    p = put(tmp_path, libvirt_image())
    run([XENSTREAM, "config", "--format", "libvirt", str(p)], expect=0)
    out = run([XENSTREAM, "config", "--format", "xend", str(p)], expect=1)
    assert "xend" in out.stderr and "libvirt" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_config_reads_only_the_headers_from_a_pipe() -> None:
    data = libvirt_image("hvm")
    r, w = os.pipe()
    t = feeder(w, data, 4096)
    try:
        out = run([XENSTREAM, "config", "--json", f"/dev/fd/{r}"], pass_fds=[r], expect=0)
        doc = json.loads(out.stdout)
        assert doc["kind"] == "libvirt-xml" and doc["offset"] == 64
        # the header and the XML were read, nothing after them
        assert read_all(r) == data[64 + doc["length"]:]
    finally:
        t.join(30)
        os.close(r)


# ======================================================================================
# 11. length fields off by one
# ======================================================================================


@pytest.mark.parametrize("delta", [-1, 1])
def test_libvirt_xml_len_off_by_one(tmp_path: Path, delta: int) -> None:
    n = len(default_libvirt_xml(spec())) + 1
    res = check(tmp_path, libvirt_image(xml_len=n + delta))
    got = {f.rule for f in res.errors}
    assert {"libvirt-xml-nul", "libvirt-payload"} <= got, described(res)
    assert find(res, "libvirt-payload").offset == 64 + n + delta


@pytest.mark.parametrize("delta", [-1, 1])
def test_xenops_length_off_by_one(tmp_path: Path, delta: int) -> None:
    data = bytearray(image("xenopsd", "pv"))
    struct.pack_into("<Q", data, 15 + 8, len(xenops_metadata()) + delta)
    res = check(tmp_path, bytes(data))
    f = res.findings[0]
    assert (f.rule, f.severity, f.offset) == ("xenopsd-metadata", ERROR, 15), described(res)
    assert not res.valid
