"""libxc v2/v3 stream rules: every record type 0x00-0x12, the optional bit,
headers, framing and ordering, against reference section 1 and Xen's
tools/libs/guest/xg_sr_restore*.c.

Streams are made with the writer (see tests/streams.py); the fixtures at the
end are assembled byte by byte with ``struct`` from the reference tables, so a
mistake shared by the writer and the parser cannot hide.  HVM context blob
internals are tested in tests/test_hvm.py, not here.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import pytest

from streams import (
    HEADERS_SIZE,
    IHDR_SIZE,
    PV_MAX_PFN,
    Built,
    Expect,
    Step,
    build,
    check,
    describe,
    drop,
    hvm_steps,
    insert_after,
    insert_before,
    move_after,
    move_before,
    pv_frames,
    pv_steps,
    replace,
    rules,
    run,
    steps_for,
    with_rule,
)
from xenstream.consumers.verify import verify
from xenstream.findings import CONVENTION, ERROR, INFO, RESTORE, SPEC, WARNING
from xenstream.formats import hvm
from xenstream.io import Source
from xenstream.reading.parser import Header, Parser, Record
from xenstream.writers.v2 import ImageSpec, LibxcWriter, LibxlWriter, write_image

W = LibxcWriter
Mut = Callable[[List[Step]], List[Step]]


def E(rule: str, sev: str, auth: str, tol: bool, at: object) -> Expect:
    return Expect(rule, sev, auth, tol, at)  # type: ignore[arg-type]


def rec(rtype: int, body: bytes = b"", **kw: object) -> Callable[[W], None]:
    return lambda w: w.record(rtype, body, **kw)  # type: ignore[arg-type]


def verify_steps(tmp_path: Path, steps: Sequence[Step], *, guest: str = "hvm",
                 version: int = 3, **kw: object) -> Tuple[Built, object]:
    b = build(steps, guest=guest, version=version, **kw)  # type: ignore[arg-type]
    return b, run(tmp_path, b)


# =====================================================================================
# Valid streams
# =====================================================================================

GUESTS = [("hvm", 8), ("pv", 8), ("pv", 4)]


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("guest,width", GUESTS)
def test_valid_step_streams_have_no_findings(tmp_path: Path, guest: str, width: int,
                                              version: int) -> None:
    b = build(steps_for(guest, version, width), guest=guest, version=version)
    res = run(tmp_path, b)
    assert res.findings == [], describe(res)
    assert res.valid
    assert res.layers == ["libxc"]
    s = res.summary
    assert s["libxc"]["version"] == version
    assert s["guest_type"] == guest
    if guest == "pv":
        assert s["guest_width"] == width * 8
        assert s["max_pfn"] == PV_MAX_PFN
        assert s["vcpus"] == [0]
    assert s["pages"] == (8 if guest == "pv" else 4)


@pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl"])
@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("guest,width", GUESTS)
def test_valid_images_of_every_kind(tmp_path: Path, envelope: str, guest: str, width: int,
                                    version: int) -> None:
    buf = io.BytesIO()
    write_image(buf, ImageSpec(envelope=envelope, guest=guest, version=version, width=width,
                               pages=64, batch=20, vcpus=2))
    res = run(tmp_path, buf.getvalue())
    assert res.findings == [], describe(res)
    assert res.summary["libxc"]["version"] == version
    assert res.summary["pages"] == 64


@pytest.mark.parametrize("guest,width", GUESTS)
def test_valid_verify_resend_stream(tmp_path: Path, guest: str, width: int) -> None:
    buf = io.BytesIO()
    write_image(buf, ImageSpec(envelope="libxc", guest=guest, width=width, pages=32,
                               verify_resend=True))
    res = run(tmp_path, buf.getvalue())
    assert res.findings == [], describe(res)
    assert res.summary["verify_mode"] is True
    assert res.summary["pages"] == 64


def test_valid_xen_major_zero_is_converted_legacy(tmp_path: Path) -> None:
    b = build(hvm_steps(2), version=2, dhdr={"xen_major": 0, "xen_minor": 1})
    res = run(tmp_path, b)
    assert res.findings == [], describe(res)
    assert res.summary["libxc"]["converted_from_legacy"] is True


# =====================================================================================
# Image header (1.1) and domain header (1.2)
# =====================================================================================

@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_ihdr_version_rejected(tmp_path: Path, version: int) -> None:
    b = build(hvm_steps(3 if version > 3 else 2), ihdr={"version": version})
    check(run(tmp_path, b), b, E("ihdr-version", ERROR, RESTORE, False, "ihdr"))


@pytest.mark.parametrize("options", [0x0002, 0x0100, 0x8000, 0xFFFE])
def test_ihdr_reserved_option_bits(tmp_path: Path, options: int) -> None:
    b = build(hvm_steps(), ihdr={"options": options})
    check(run(tmp_path, b), b, E("ihdr-options-reserved", ERROR, SPEC, True, "ihdr"))


@pytest.mark.parametrize("res1,res2", [(1, 0), (0, 1), (0xFFFF, 0xFFFFFFFF)])
def test_ihdr_reserved_fields(tmp_path: Path, res1: int, res2: int) -> None:
    b = build(hvm_steps(), ihdr={"res1": res1, "res2": res2})
    check(run(tmp_path, b), b, E("ihdr-reserved", ERROR, SPEC, True, "ihdr"))


@pytest.mark.parametrize("guest,width", GUESTS)
def test_ihdr_big_endian_parsed_but_refused(tmp_path: Path, guest: str, width: int) -> None:
    b = build(steps_for(guest, 3, width), guest=guest, endian=">")
    res = run(tmp_path, b)
    check(res, b, E("ihdr-big-endian", ERROR, RESTORE, False, "ihdr"))
    assert res.summary["libxc"]["endian"] == "big"
    assert res.summary["pages"] == (8 if guest == "pv" else 4)


def test_ihdr_bad_id_stops(tmp_path: Path) -> None:
    # a body full of broken records: nothing after the header may be reported
    steps = replace(hvm_steps(), "pages", ("pages", rec(1, struct.pack("<II", 0, 0))))
    b = build(steps, ihdr={"ident": 0x58454E47})
    res = run(tmp_path, b)
    check(res, b, E("ihdr-id", ERROR, RESTORE, False, 8))
    assert res.findings[0].record_index is None


def test_ihdr_bad_marker_forced_libxc_stops(tmp_path: Path) -> None:
    b = build(hvm_steps(), ihdr={"marker": 0xFFFFFFFFFFFFFFFE})
    res = run(tmp_path, b, format="libxc")
    assert [(f.rule, f.severity, f.offset) for f in res.findings] == [
        ("format-mismatch", ERROR, 0)]
    assert not res.valid


def _libxl_wrapped(libxc_bytes: bytes) -> Tuple[bytes, int]:
    buf = io.BytesIO()
    lw = LibxlWriter(buf)
    lw.header()
    lw.libxc_context()
    at = buf.tell()
    buf.write(libxc_bytes)
    lw.end()
    return buf.getvalue(), at


def test_ihdr_bad_marker_after_libxc_context_stops(tmp_path: Path) -> None:
    inner = build(hvm_steps(), ihdr={"marker": 0x00000000FFFFFFFF}).data
    data, at = _libxl_wrapped(inner)
    res = run(tmp_path, data)
    assert [(f.rule, f.severity, f.authority, f.restore_tolerates, f.offset, f.layer)
            for f in res.findings] == [("libxc-marker", ERROR, RESTORE, False, at, "libxc")]


def test_ihdr_bad_id_after_libxc_context_stops(tmp_path: Path) -> None:
    inner = build(hvm_steps(), ihdr={"ident": 0}).data
    data, at = _libxl_wrapped(inner)
    res = run(tmp_path, data)
    assert [(f.rule, f.severity, f.authority, f.offset, f.layer) for f in res.findings] == [
        ("ihdr-id", ERROR, RESTORE, at + 8, "libxc")]


@pytest.mark.parametrize("dtype", [0, 3, 4, 5, 0xFFFFFFFF])
def test_dhdr_type_rejected(tmp_path: Path, dtype: int) -> None:
    b = build(hvm_steps(), guest=dtype)
    check(run(tmp_path, b), b, E("dhdr-type", ERROR, RESTORE, False, "dhdr"))


@pytest.mark.parametrize("shift", [0, 11, 13, 16, 21])
def test_dhdr_page_shift(tmp_path: Path, shift: int) -> None:
    b = build(hvm_steps(), dhdr={"page_shift": shift})
    check(run(tmp_path, b), b, E("dhdr-page-shift", ERROR, RESTORE, False, "dhdr"))


def test_dhdr_reserved(tmp_path: Path) -> None:
    b = build(pv_steps(), guest="pv", dhdr={"res1": 0x8000})
    check(run(tmp_path, b), b, E("dhdr-reserved", ERROR, SPEC, True, "dhdr"))


# =====================================================================================
# Framing (1.3), unknown types and the optional bit (1.4)
# =====================================================================================

def test_rec_length_max_exceeded_is_framing_error(tmp_path: Path) -> None:
    steps = insert_before(hvm_steps(), "tsc",
                          ("huge", lambda w: w.raw(struct.pack("<II", 0x80001234, 0x08000001))))
    b = build(steps)
    res = run(tmp_path, b)
    check(res, b, E("length-limit", ERROR, RESTORE, False, "huge"))
    assert "0x8000001" in res.findings[0].message


def test_rec_length_max_itself_is_not_over_the_limit(tmp_path: Path) -> None:
    # exactly 128 MiB is allowed by read_record(); the body is missing, so truncated
    steps = insert_before(hvm_steps(), "tsc",
                          ("big", lambda w: w.raw(struct.pack("<II", 0x80001234, 0x08000000))))
    b = build(steps)
    res = run(tmp_path, b)
    assert rules(res) == {"truncated"}, describe(res)
    assert res.findings[0].authority == RESTORE and not res.findings[0].restore_tolerates


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_nonzero_padding(tmp_path: Path, guest: str) -> None:
    steps = insert_before(steps_for(guest), "tsc",
                          ("opt", rec(0x80001234, b"abc", padding=b"\0\0\0\0\x01")))
    b = build(steps, guest=guest)
    index, off = b.marks["opt"]
    res = run(tmp_path, b)
    check(res, b, E("optional-record", INFO, SPEC, True, "opt"), exact=False)
    assert rules(res) == {"padding-zero", "optional-record"}, describe(res)
    pad = with_rule(res, "padding-zero")[0]
    assert (pad.severity, pad.authority, pad.restore_tolerates) == (ERROR, SPEC, True)
    assert (pad.record_index, pad.offset) == (index, off + 8 + 3)
    assert not res.valid


def test_missing_end_is_truncation(tmp_path: Path) -> None:
    b = build(drop(hvm_steps(), "end"))
    res = run(tmp_path, b)
    assert "truncated" in rules(res)
    f = with_rule(res, "truncated")[0]
    assert (f.severity, f.authority, f.offset) == (ERROR, RESTORE, len(b.data))


def test_body_past_end_of_stream_is_truncation(tmp_path: Path) -> None:
    steps = insert_before(drop(hvm_steps(), "end"), "tsc", ("cut", rec(8, b"\0" * 24)))
    b = build(steps)
    data = b.data[: b.marks["cut"][1] + 8 + 10]
    res = run(tmp_path, data)
    assert [f.rule for f in res.findings] == ["truncated"]


@pytest.mark.parametrize("rtype", [0x13, 0x14, 0x7FFFFFFF])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_unknown_mandatory_type(tmp_path: Path, guest: str, rtype: int) -> None:
    steps = insert_before(steps_for(guest), "tsc", ("x", rec(rtype, b"\0" * 8)))
    b = build(steps, guest=guest)
    check(run(tmp_path, b), b, E("unknown-mandatory", ERROR, RESTORE, False, "x"))


@pytest.mark.parametrize("rtype", [0x80001234, 0x80000013, 0xFFFFFFFF])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_unknown_optional_type_skipped(tmp_path: Path, guest: str, rtype: int) -> None:
    steps = insert_before(steps_for(guest), "tsc", ("x", rec(rtype, b"\x55" * 13)))
    b = build(steps, guest=guest)
    check(run(tmp_path, b), b, E("optional-record", INFO, SPEC, True, "x"))


@pytest.mark.parametrize("base", range(0x00, 0x13))
def test_optional_bit_on_known_type(tmp_path: Path, base: int) -> None:
    # the C matches the full 32-bit type: 0x80000000|known is "not processed",
    # then ignored as optional; even OPTIONAL|END does not end the stream and
    # OPTIONAL|PAGE_DATA carries no checked content
    steps = insert_before(hvm_steps(), "tsc", ("x", rec(0x80000000 | base, b"\xAA" * 5)))
    b = build(steps)
    res = run(tmp_path, b)
    check(res, b, E("optional-known-type", WARNING, CONVENTION, True, "x"))
    assert res.summary["record_counts"]["libxc:END"] == 1


# =====================================================================================
# Records without a body: END, VERIFY, CHECKPOINT, STATIC_DATA_END (1.4, 1.8)
# =====================================================================================

@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("name,maker", [
    ("end", lambda w: w.end(body=b"\0" * 8) if False else w.record(0x00, b"\0" * 8)),
    ("sde", lambda w: w.record(0x10, b"\x01")),
])
def test_no_body_records_with_a_body(tmp_path: Path, guest: str, name: str,
                                     maker: Callable[[W], None]) -> None:
    b = build(replace(steps_for(guest), name, (name, maker)), guest=guest)
    check(run(tmp_path, b), b, E("record-length-zero", ERROR, SPEC, True, name))


def test_verify_with_a_body(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages", ("verify", rec(0x0D, b"\0" * 16)),
                         ("resend", lambda w: w.page_data([0, 1, 2, 3])))
    b = build(steps)
    res = run(tmp_path, b)
    check(res, b, E("record-length-zero", ERROR, SPEC, True, "verify"))
    assert res.summary["verify_mode"] is True


def test_verify_plain_is_valid(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages", ("verify", lambda w: w.verify()),
                         ("resend", lambda w: w.page_data([0, 1, 2, 3])))
    res = run(tmp_path, build(steps))
    assert res.findings == [], describe(res)
    assert res.summary["verify_mode"] is True


def test_checkpoint_with_a_body(tmp_path: Path) -> None:
    steps = insert_before(hvm_steps(), "end", ("cp", rec(0x0E, b"\0" * 4)))
    b = build(steps)
    res = run(tmp_path, b)
    f = with_rule(res, "record-length-zero")
    assert len(f) == 1, describe(res)
    assert (f[0].severity, f[0].authority, f[0].restore_tolerates) == (ERROR, SPEC, True)
    assert (f[0].record_index, f[0].offset) == b.marks["cp"]


# =====================================================================================
# PAGE_DATA (1.7)
# =====================================================================================

def _pd_raw(count: int, pfns: Sequence[int], n_pages: int, res1: int = 0) -> bytes:
    return (struct.pack("<II", count, res1) + struct.pack(f"<{len(pfns)}Q", *pfns)
            + b"\x11" * (4096 * n_pages))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("body,rule,auth,tol", [
    (b"", "page-data-length", RESTORE, False),
    (b"\x01\0\0\0", "page-data-length", RESTORE, False),
    (_pd_raw(0, [], 0), "page-data-count", RESTORE, False),
    (_pd_raw(0, [], 1), "page-data-count", RESTORE, False),
    (_pd_raw(4, [0, 1], 0), "page-data-length", RESTORE, False),  # short for 4 pfns
    (_pd_raw(2, [0, 1], 1), "page-data-length", RESTORE, False),  # 1 page for 2
    (_pd_raw(2, [0, 1], 3), "page-data-length", RESTORE, False),  # 3 pages for 2
    (_pd_raw(1, [0], 1) + b"\0" * 8, "page-data-length", RESTORE, False),
    (_pd_raw(1, [0xF << 60], 1), "page-data-length", RESTORE, False),  # XTAB + data
    (_pd_raw(1, [0xD << 60], 1), "page-data-length", RESTORE, False),  # BROKEN + data
    (_pd_raw(1, [(0xE << 60) | 2], 1), "page-data-length", RESTORE, False),  # XALLOC + data
    (_pd_raw(1, [0x0010000000000000], 1), "page-data-pfn-reserved", SPEC, True),
    (_pd_raw(1, [0x0FF0000000000002], 1), "page-data-pfn-reserved", SPEC, True),
    (_pd_raw(1, [0], 1, res1=1), "page-data-reserved", SPEC, True),
])
def test_page_data_broken(tmp_path: Path, guest: str, body: bytes, rule: str, auth: str,
                          tol: bool) -> None:
    steps = insert_after(steps_for(guest), "pages", ("bad", rec(0x01, body)))
    b = build(steps, guest=guest)
    check(run(tmp_path, b), b, E(rule, ERROR, auth, tol, "bad"))


@pytest.mark.parametrize("ptype", [5, 6, 7, 8])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_page_data_unknown_page_types(tmp_path: Path, guest: str, ptype: int) -> None:
    steps = insert_after(steps_for(guest), "pages",
                         ("bad", lambda w: w.page_data([0, 2], [0, ptype])))
    b = build(steps, guest=guest)
    res = run(tmp_path, b)
    check(res, b, E("page-data-type", ERROR, RESTORE, False, "bad"))
    assert f"{ptype:#x}" in res.findings[0].message


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_page_data_no_data_types_valid(tmp_path: Path, guest: str) -> None:
    # NOTAB with data; XTAB, XALLOC, BROKEN without
    steps = insert_after(steps_for(guest), "pages",
                         ("ok", lambda w: w.page_data([0, 5, 6, 2], [0, 0xF, 0xE, 0xD])))
    b = build(steps, guest=guest)
    res = run(tmp_path, b)
    assert res.findings == [], describe(res)


@pytest.mark.parametrize("ptype", [0, 1, 2, 3, 4, 9, 0xA, 0xB, 0xC])
def test_page_data_data_bearing_types_valid(tmp_path: Path, ptype: int) -> None:
    steps = insert_after(hvm_steps(), "pages", ("ok", lambda w: w.page_data([2], [ptype])))
    res = run(tmp_path, build(steps))
    assert res.findings == [], describe(res)


def test_page_data_all_xtab_no_data(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages",
                         ("ok", lambda w: w.page_data(list(range(100, 200)), 0xF)))
    b = build(steps)
    assert len(b.data) < 4096 * 10
    res = run(tmp_path, b)
    assert res.findings == [], describe(res)


def test_page_data_batch_over_saver_maximum_is_warning(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages",
                         ("big", lambda w: w.page_data(list(range(1025)), 0xF)))
    b = build(steps)
    check(run(tmp_path, b), b, E("page-data-batch", WARNING, CONVENTION, True, "big"))


def test_page_data_hvm_has_no_pfn_range_check(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages",
                         ("hi", lambda w: w.page_data([0x000FFFFFFFFFFFFF, 0x123456789])))
    res = run(tmp_path, build(steps))
    assert res.findings == [], describe(res)
    assert res.summary["highest_pfn"] == 0x000FFFFFFFFFFFFF


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("version", [2, 3])
def test_page_data_pv_pfn_beyond_max_pfn(tmp_path: Path, width: int, version: int) -> None:
    steps = insert_after(pv_steps(version, width), "pages",
                         ("bad", lambda w: w.page_data([PV_MAX_PFN, PV_MAX_PFN + 1])))
    b = build(steps, guest="pv", version=version)
    res = run(tmp_path, b)
    check(res, b, E("page-data-pfn-range", ERROR, RESTORE, False, "bad"))
    assert hex(PV_MAX_PFN + 1) in res.findings[0].message


@pytest.mark.parametrize("width", [4, 8])
def test_page_data_pv_max_pfn_grows_with_p2m_frames(tmp_path: Path, width: int) -> None:
    # a later P2M_FRAMES with a larger end_pfn makes higher pfns valid
    steps = insert_after(pv_steps(3, width), "pages",
                         ("p2m2", lambda w: w.p2m_frames(0, 15, pv_frames(width, 15))),
                         ("more", lambda w: w.page_data([8, 15])))
    res = run(tmp_path, build(steps, guest="pv"))
    assert res.findings == [], describe(res)
    assert res.summary["max_pfn"] == 15


@pytest.mark.parametrize("width", [4, 8])
def test_page_data_before_p2m_frames_pv(tmp_path: Path, width: int) -> None:
    steps = move_before(pv_steps(2, width), "pages", "p2m")
    b = build(steps, guest="pv", version=2)
    check(run(tmp_path, b), b, E("page-data-before-p2m", ERROR, RESTORE, False, "pages"))


def test_page_data_before_static_data_end_v3(tmp_path: Path) -> None:
    b = build(drop(hvm_steps(), "sde"))
    check(run(tmp_path, b), b, E("static-data-end-missing", ERROR, RESTORE, False, "pages"))


# =====================================================================================
# X86_PV_INFO (0x02)
# =====================================================================================

@pytest.mark.parametrize("width", [4, 8])
def test_pv_info_twice(tmp_path: Path, width: int) -> None:
    steps = insert_after(pv_steps(3, width), "pv_info", ("again", lambda w: w.pv_info(width)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-once", ERROR, RESTORE, False, "again"))


def test_pv_info_after_p2m_frames(tmp_path: Path) -> None:
    steps = move_after(pv_steps(3, 8), "pv_info", "p2m")
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-first", ERROR, RESTORE, False, "p2m"))


@pytest.mark.parametrize("gw,lv", [(8, 3), (4, 4), (8, 2), (2, 2), (0, 0), (16, 4), (4, 2)])
def test_pv_info_bad_width_levels(tmp_path: Path, gw: int, lv: int) -> None:
    steps = replace(pv_steps(3, 8), "pv_info", ("pv_info", lambda w: w.pv_info(gw, lv)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-width", ERROR, RESTORE, False, "pv_info"))


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("extra", [b"\0" * 8, b"\0"])
def test_pv_info_longer_than_8(tmp_path: Path, width: int, extra: bytes) -> None:
    steps = replace(pv_steps(3, width), "pv_info",
                    ("pv_info", lambda w: w.pv_info(width, extra=extra)))
    b = build(steps, guest="pv")
    res = run(tmp_path, b)
    # the restorer accepts a longer body: a spec matter, tolerated
    check(res, b, E("pv-info-length-extra", ERROR, SPEC, True, "pv_info"))
    assert res.summary["guest_width"] == width * 8


@pytest.mark.parametrize("body", [b"", b"\x08\x04\0\0"])
def test_pv_info_shorter_than_8(tmp_path: Path, body: bytes) -> None:
    steps = replace(pv_steps(3, 8), "pv_info", ("pv_info", rec(0x02, body)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-length", ERROR, RESTORE, False, "pv_info"))


def test_pv_info_reserved(tmp_path: Path) -> None:
    steps = replace(pv_steps(3, 8), "pv_info", ("pv_info", lambda w: w.pv_info(8, res=1)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-reserved", ERROR, SPEC, True, "pv_info"))


def test_pv_info_missing(tmp_path: Path) -> None:
    b = build(drop(pv_steps(3, 8), "pv_info"), guest="pv")
    res = run(tmp_path, b)
    check(res, b, E("pv-info-missing", ERROR, RESTORE, False, "eos"), exact=False)
    first = with_rule(res, "pv-info-first")  # at X86_PV_P2M_FRAMES and SHARED_INFO
    assert [(f.record_index, f.offset) for f in first] == [b.marks["p2m"], b.marks["shinfo"]]
    assert all((f.severity, f.authority, f.restore_tolerates) == (ERROR, RESTORE, False)
               for f in first), describe(res)
    before_vcpu = with_rule(res, "pv-info-before-vcpu")  # at each X86_PV_VCPU_* record
    assert [(f.record_index, f.offset) for f in before_vcpu] == [
        b.marks[m] for m in ("basic0", "ext0", "xsave0", "msrs0")], describe(res)
    assert all((f.severity, f.authority, f.restore_tolerates) == (ERROR, SPEC, True)
               for f in before_vcpu), describe(res)
    assert rules(res) == {"pv-info-missing", "pv-info-first", "pv-info-before-vcpu"}, \
        describe(res)


# =====================================================================================
# X86_PV_P2M_FRAMES (0x03)
# =====================================================================================

def test_p2m_frames_start_after_end(tmp_path: Path) -> None:
    steps = replace(pv_steps(3, 8), "p2m", ("p2m", lambda w: w.p2m_frames(8, 7, [7])))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("p2m-frames-range", ERROR, RESTORE, False, "p2m"))


# (start, end) -> frames: 64-bit fpp 512, 32-bit fpp 1024
P2M_CASES = [(0, 7, 1, 1), (0, 2047, 4, 2), (1024, 2047, 2, 1), (511, 512, 2, 1),
             (1023, 1024, 2, 2), (600, 600, 1, 1)]


@pytest.mark.parametrize("start,end,n64,n32", P2M_CASES)
@pytest.mark.parametrize("width", [4, 8])
def test_p2m_frames_length_formula(tmp_path: Path, width: int, start: int, end: int,
                                   n64: int, n32: int) -> None:
    n = n64 if width == 8 else n32
    good = insert_after(pv_steps(3, width), "p2m",
                        ("p2m2", lambda w: w.p2m_frames(start, end, [7] * n)))
    res = run(tmp_path, build(good, guest="pv"))
    assert res.findings == [], describe(res)
    for wrong in {n - 1, n + 1, (n32 if width == 8 else n64)} - {n}:
        steps = insert_after(pv_steps(3, width), "p2m",
                             ("p2m2", lambda w, k=wrong: w.p2m_frames(start, end, [7] * k)))
        b = build(steps, guest="pv")
        check(run(tmp_path, b), b, E("p2m-frames-length", ERROR, RESTORE, False, "p2m2"))


@pytest.mark.parametrize("body", [b"", b"\0" * 4])
def test_p2m_frames_too_short(tmp_path: Path, body: bytes) -> None:
    steps = replace(pv_steps(3, 8), "p2m", ("p2m", rec(0x03, body)))
    b = build(steps, guest="pv")
    res = run(tmp_path, b)
    check(res, b, E("p2m-frames-length", ERROR, RESTORE, False, "p2m"), exact=False)
    assert "p2m-frames-range" not in rules(res)


@pytest.mark.parametrize("width", [4, 8])
def test_p2m_frame_beyond_max_pfn(tmp_path: Path, width: int) -> None:
    steps = replace(pv_steps(3, width), "p2m",
                    ("p2m", lambda w: w.p2m_frames(0, PV_MAX_PFN, [PV_MAX_PFN + 1])))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("p2m-frame-range", ERROR, RESTORE, False, "eos"))


@pytest.mark.parametrize("width", [4, 8])
def test_p2m_frame_not_notab(tmp_path: Path, width: int) -> None:
    steps = replace(pv_steps(3, width), "p2m",
                    ("p2m", lambda w: w.p2m_frames(0, PV_MAX_PFN, [2])))  # an L3/L2 table
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("p2m-frame-type", ERROR, RESTORE, False, "eos"))


def test_p2m_frames_missing(tmp_path: Path) -> None:
    b = build(drop(pv_steps(3, 8), "p2m", "pages"), guest="pv")
    check(run(tmp_path, b), b, E("p2m-frames-missing", ERROR, RESTORE, False, "eos"))


def test_p2m_frames_before_static_data_end_v3(tmp_path: Path) -> None:
    b = build(drop(pv_steps(3, 8), "sde"), guest="pv")
    check(run(tmp_path, b), b, E("static-data-end-missing", ERROR, RESTORE, False, "p2m"))


# =====================================================================================
# X86_PV_VCPU_* (0x04, 0x05, 0x06, 0x0c) and the zero-content errata
# =====================================================================================

def _vcpu_case(tmp_path: Path, width: int, name: str, maker: Callable[[W], None],
               *expected: Expect) -> None:
    steps = replace(pv_steps(3, width), name, (name, maker))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, *expected)


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("delta", [-1, 1, "other"])
def test_vcpu_basic_wrong_size(tmp_path: Path, width: int, delta: object) -> None:
    size = {8: 5168, 4: 2800}[width]
    n = {8: 2800, 4: 5168}[width] if delta == "other" else size + int(delta)  # type: ignore
    _vcpu_case(tmp_path, width, "basic0", lambda w: w.vcpu_basic(0, width, b"\0" * n),
               E("vcpu-basic-size", ERROR, RESTORE, False, "basic0"),
               E("vcpu0-missing", ERROR, RESTORE, False, "eos"))


@pytest.mark.parametrize("width", [4, 8])
def test_vcpu_basic_size_follows_pv_info_width(tmp_path: Path, width: int) -> None:
    # record lengths 5176 (64-bit) and 2808 (32-bit)
    b = build(pv_steps(3, width), guest="pv")
    idx, off = b.marks["basic0"]
    assert struct.unpack_from("<II", b.data, off) == (0x04, {8: 5176, 4: 2808}[width])
    assert run(tmp_path, b).findings == []


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("rtype,name", [(0x04, "basic0"), (0x05, "ext0"), (0x06, "xsave0"),
                                        (0x0C, "msrs0")])
def test_vcpu_zero_content_errata(tmp_path: Path, width: int, rtype: int, name: str) -> None:
    # a second, empty record for vcpu 0: tolerated (errata for 4.6-4.8 senders)
    steps = insert_after(pv_steps(3, width), "msrs0",
                         ("empty", lambda w: w.vcpu(rtype, 0, b"")))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("errata-zero-content", WARNING, SPEC, True, "empty"))


def test_vcpu_basic_only_empty_means_vcpu0_missing(tmp_path: Path) -> None:
    _vcpu_case(tmp_path, 8, "basic0", lambda w: w.vcpu(0x04, 0, b""),
               E("errata-zero-content", WARNING, SPEC, True, "basic0"),
               E("vcpu0-missing", ERROR, RESTORE, False, "eos"))


def test_vcpu_empty_blob_skipped_before_other_checks(tmp_path: Path) -> None:
    # blob size 0 is skipped before the vcpu id and size checks (C order)
    steps = insert_after(pv_steps(3, 8), "msrs0",
                         ("empty", lambda w: w.vcpu(0x06, 0xFFFF, b"", res1=0)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("errata-zero-content", WARNING, SPEC, True, "empty"))


@pytest.mark.parametrize("rtype", [0x04, 0x05, 0x06, 0x0C])
@pytest.mark.parametrize("body", [b"", b"\0" * 4, b"\0" * 7])
def test_vcpu_header_truncated(tmp_path: Path, rtype: int, body: bytes) -> None:
    steps = insert_after(pv_steps(3, 8), "msrs0", ("bad", rec(rtype, body)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("vcpu-length", ERROR, RESTORE, False, "bad"))


def test_vcpu_reserved(tmp_path: Path) -> None:
    _vcpu_case(tmp_path, 8, "ext0", lambda w: w.vcpu_extended(0, res1=1),
               E("vcpu-reserved", ERROR, SPEC, True, "ext0"))


def test_vcpu0_missing(tmp_path: Path) -> None:
    steps = replace(pv_steps(3, 8), "basic0", ("basic1", lambda w: w.vcpu_basic(1, 8)))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("vcpu0-missing", ERROR, RESTORE, False, "eos"))


@pytest.mark.parametrize("blob_len", [129, 136, 256])
def test_vcpu_extended_too_long(tmp_path: Path, blob_len: int) -> None:
    blob = struct.pack("<II", 0, 64) + b"\0" * (blob_len - 8)
    _vcpu_case(tmp_path, 8, "ext0", lambda w: w.vcpu_extended(0, blob),
               E("vcpu-extended-size", ERROR, RESTORE, False, "ext0"))


@pytest.mark.parametrize("size,blob_len", [(64, 128), (56, 56), (32, 128), (40, 128)])
def test_vcpu_extended_valid_sizes(tmp_path: Path, size: int, blob_len: int) -> None:
    blob = struct.pack("<II", 0, size) + b"\0" * (blob_len - 8)
    b = build(replace(pv_steps(3, 8), "ext0", ("ext0", lambda w: w.vcpu_extended(0, blob))),
              guest="pv")
    assert run(tmp_path, b).findings == []


@pytest.mark.parametrize("size", [0, 8, 24, 31])
def test_vcpu_extended_embedded_size_below_32(tmp_path: Path, size: int) -> None:
    blob = struct.pack("<II", 0, size) + b"\0" * 56
    _vcpu_case(tmp_path, 8, "ext0", lambda w: w.vcpu_extended(0, blob),
               E("vcpu-extended-embedded-size", ERROR, RESTORE, False, "ext0"))


def test_vcpu_extended_embedded_vcpu_differs(tmp_path: Path) -> None:
    blob = struct.pack("<II", 1, 64) + b"\0" * 56
    steps = replace(pv_steps(3, 8), "ext0", ("ext0", lambda w: w.vcpu_extended(0, blob)))
    b = build(steps, guest="pv")
    res = run(tmp_path, b)
    f = with_rule(res, "vcpu-extended-embedded-vcpu")
    assert rules(res) == {"vcpu-extended-embedded-vcpu"}, describe(res)
    assert (f[0].severity, f[0].record_index, f[0].offset) == (ERROR, *b.marks["ext0"])


@pytest.mark.parametrize(("n", "accum", "rule"), [
    (848, 3, "vcpu-xsave-size"),  # 832-byte area but only x87|SSE accumulated
    (592, 1 | 4, "vcpu-xsave-state"),  # YMM without SSE is not a valid xcr0
    (16, 0, None),  # nothing to restore
    (16, 3, "vcpu-xsave-size"),  # xcr0_accum set but no area: domctl.c's -EINVAL stands
    (592, 7, "vcpu-xsave-size-short"),  # YMM accumulated, 832-byte area needed (since 4.8)
])
def test_vcpu_xsave_accum_rules(tmp_path: Path, n: int, accum: int, rule: str) -> None:
    xcr0 = accum & 3 if accum else 0
    blob = struct.pack("<QQ", xcr0, accum) + b"\0" * (n - 16)
    b = build(replace(pv_steps(3, 8), "xsave0", ("xsave0", lambda w: w.vcpu_xsave(0, blob))),
              guest="pv")
    res = run(tmp_path, b)
    if rule is None:
        assert res.findings == []
    else:
        assert [(f.rule, f.severity, f.authority) for f in res.findings] == [
            (rule, ERROR, RESTORE)]


def test_vcpu_xsave_compacted(tmp_path: Path) -> None:
    # xcomp_bv (XSAVE header word 1, area offset 520) set: validate_xstate() refuses it
    area = bytearray(576)
    struct.pack_into("<QQ", area, 512, 3, (1 << 63) | 3)
    blob = struct.pack("<QQ", 3, 3) + bytes(area)
    _vcpu_case(tmp_path, 8, "xsave0", lambda w: w.vcpu_xsave(0, blob),
               E("vcpu-xsave-compacted", ERROR, RESTORE, False, "xsave0"))


@pytest.mark.parametrize("n", [1, 8, 15])
def test_vcpu_xsave_below_16(tmp_path: Path, n: int) -> None:
    _vcpu_case(tmp_path, 8, "xsave0", lambda w: w.vcpu_xsave(0, b"\0" * n),
               E("vcpu-xsave-size", ERROR, RESTORE, False, "xsave0"))


@pytest.mark.parametrize("n", [17, 24, 100, 591])
def test_vcpu_xsave_between_16_and_592(tmp_path: Path, n: int) -> None:
    _vcpu_case(tmp_path, 4, "xsave0", lambda w: w.vcpu_xsave(0, b"\0" * n),
               E("vcpu-xsave-size", ERROR, RESTORE, False, "xsave0"))


@pytest.mark.parametrize(("n", "accum"), [(592, 3), (848, 7)])
def test_vcpu_xsave_valid_sizes(tmp_path: Path, n: int, accum: int) -> None:
    # size must be exactly 16 + the uncompacted size for xcr0_accum (domctl.c):
    # x87|SSE -> 576 bytes, +YMM -> 832
    blob = struct.pack("<QQ", 3, accum) + b"\0" * (n - 16)
    b = build(replace(pv_steps(3, 8), "xsave0", ("xsave0", lambda w: w.vcpu_xsave(0, blob))),
              guest="pv")
    assert run(tmp_path, b).findings == []


@pytest.mark.parametrize("n", [8, 24, 40])
def test_vcpu_msrs_not_multiple_of_16(tmp_path: Path, n: int) -> None:
    _vcpu_case(tmp_path, 8, "msrs0", lambda w: w.vcpu(0x0C, 0, b"\0" * n),
               E("vcpu-msrs-size", ERROR, RESTORE, False, "msrs0"))


def test_vcpu_msrs_entry_reserved(tmp_path: Path) -> None:
    blob = struct.pack("<IIQ", 0xC0000103, 0, 0) + struct.pack("<IIQ", 0xC0000080, 7, 0)
    _vcpu_case(tmp_path, 8, "msrs0", lambda w: w.vcpu(0x0C, 0, blob),
               E("vcpu-msrs-reserved", ERROR, RESTORE, False, "msrs0"))


# =====================================================================================
# SHARED_INFO (0x07), X86_TSC_INFO (0x08)
# =====================================================================================

@pytest.mark.parametrize("n", [0, 8, 4095, 4097, 8192])
def test_shared_info_length(tmp_path: Path, n: int) -> None:
    _vcpu_case(tmp_path, 8, "shinfo", lambda w: w.shared_info(b"\0" * n),
               E("shared-info-length", ERROR, RESTORE, False, "shinfo"))


def test_shared_info_before_pv_info(tmp_path: Path) -> None:
    steps = insert_before(pv_steps(3, 8), "pv_info", ("early", lambda w: w.shared_info()))
    b = build(steps, guest="pv")
    check(run(tmp_path, b), b, E("pv-info-first", ERROR, RESTORE, False, "early"))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("n", [0, 16, 23, 25, 32])
def test_tsc_info_length(tmp_path: Path, guest: str, n: int) -> None:
    b = build(replace(steps_for(guest), "tsc", ("tsc", rec(0x08, b"\0" * n))), guest=guest)
    check(run(tmp_path, b), b, E("tsc-info-length", ERROR, RESTORE, False, "tsc"))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("mode,rule", [(3, "tsc-mode-pvrdtscp"), (4, "tsc-mode"),
                                       (7, "tsc-mode"), (0xFFFFFFFF, "tsc-mode")])
def test_tsc_info_bad_mode(tmp_path: Path, guest: str, mode: int, rule: str) -> None:
    b = build(replace(steps_for(guest), "tsc", ("tsc", lambda w: w.tsc_info(mode))),
              guest=guest)
    check(run(tmp_path, b), b, E(rule, ERROR, RESTORE, False, "tsc"))


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_tsc_info_valid_modes_and_repeat(tmp_path: Path, mode: int) -> None:
    steps = insert_after(hvm_steps(), "tsc", ("tsc2", lambda w: w.tsc_info(mode)))
    assert run(tmp_path, build(steps)).findings == []


def test_tsc_info_reserved(tmp_path: Path) -> None:
    b = build(replace(hvm_steps(), "tsc", ("tsc", lambda w: w.tsc_info(res=1))))
    check(run(tmp_path, b), b, E("tsc-info-reserved", ERROR, SPEC, True, "tsc"))


# =====================================================================================
# HVM_CONTEXT (0x09), HVM_PARAMS (0x0a)
# =====================================================================================

@pytest.mark.parametrize("version", [2, 3])
def test_hvm_context_empty(tmp_path: Path, version: int) -> None:
    b = build(replace(hvm_steps(version), "ctx", ("ctx", rec(0x09))), version=version)
    res = run(tmp_path, b)
    check(res, b, E("hvm-context-empty", ERROR, RESTORE, False, "ctx"), exact=False)
    # an empty context is not a context: the stream has none to apply
    assert rules(res) <= {"hvm-context-empty", "hvm-context-missing"}


@pytest.mark.parametrize("version", [2, 3])
def test_hvm_context_missing(tmp_path: Path, version: int) -> None:
    b = build(drop(hvm_steps(version), "ctx"), version=version)
    check(run(tmp_path, b), b, E("hvm-context-missing", ERROR, RESTORE, False, "eos"))


def test_hvm_context_repeated_is_valid(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "ctx", ("ctx2", lambda w: w.hvm_context()))
    assert run(tmp_path, build(steps)).findings == []


def _params(count: int, entries: Sequence[Tuple[int, int]], res: int = 0) -> bytes:
    return struct.pack("<II", count, res) + b"".join(struct.pack("<QQ", i, v)
                                                     for i, v in entries)


@pytest.mark.parametrize("body", [
    b"", b"\0" * 4, _params(2, [(1, 5)]), _params(0xFFFFFFFF, [(1, 5)]),
])
def test_hvm_params_length(tmp_path: Path, body: bytes) -> None:
    # shorter than 8 + 16*count: refused by every release
    b = build(replace(hvm_steps(), "params", ("params", rec(0x0A, body))))
    check(run(tmp_path, b), b, E("hvm-params-length", ERROR, RESTORE, False, "params"))


@pytest.mark.parametrize("body", [
    _params(1, [(1, 5), (17, 4)]), _params(0, [(1, 5)]), _params(1, [(1, 5)]) + b"\0" * 8,
])
def test_hvm_params_length_extra(tmp_path: Path, body: bytes) -> None:
    # longer than 8 + 16*count: refused since 4.9 (4.6 checked only the minimum)
    b = build(replace(hvm_steps(), "params", ("params", rec(0x0A, body))))
    check(run(tmp_path, b), b, E("hvm-params-length-extra", ERROR, RESTORE, False, "params"))


def test_hvm_params_count_zero_errata(tmp_path: Path) -> None:
    b = build(replace(hvm_steps(), "params", ("params", lambda w: w.hvm_params({}))))
    check(run(tmp_path, b), b, E("errata-zero-content", WARNING, SPEC, True, "params"))


@pytest.mark.parametrize("index", [39, 40, 0xFFFFFFFF, 1 << 63])
def test_hvm_params_index_out_of_range(tmp_path: Path, index: int) -> None:
    b = build(replace(hvm_steps(), "params",
                      ("params", lambda w: w.hvm_params([(1, 3), (index, 1)]))))
    check(run(tmp_path, b), b, E("hvm-params-index", ERROR, RESTORE, False, "params"))


def test_hvm_params_highest_index_valid(tmp_path: Path) -> None:
    b = build(replace(hvm_steps(), "params",
                      ("params", lambda w: w.hvm_params([(38, 0), (0, 0), (4, 1)]))))
    assert run(tmp_path, b).findings == []


def test_hvm_params_reserved(tmp_path: Path) -> None:
    b = build(replace(hvm_steps(), "params", ("params", lambda w: w.hvm_params({1: 3}, res=1))))
    check(run(tmp_path, b), b, E("hvm-params-reserved", ERROR, SPEC, True, "params"))


# =====================================================================================
# TOOLSTACK (0x0b), CHECKPOINT_DIRTY_PFN_LIST (0x0f)
# =====================================================================================

@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("body", [b"", b"toolstack data"])
def test_toolstack_always_error(tmp_path: Path, guest: str, version: int, body: bytes) -> None:
    steps = insert_before(steps_for(guest, version), "tsc", ("ts", rec(0x0B, body)))
    b = build(steps, guest=guest, version=version)
    check(run(tmp_path, b), b, E("toolstack-record", ERROR, RESTORE, False, "ts"))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_dirty_pfn_list_in_forward_stream(tmp_path: Path, guest: str) -> None:
    steps = insert_before(steps_for(guest), "tsc",
                          ("dirty", rec(0x0F, struct.pack("<3Q", 1, 2, 3))))
    b = build(steps, guest=guest)
    check(run(tmp_path, b), b, E("dirty-pfn-list-forward", ERROR, RESTORE, False, "dirty"))


# =====================================================================================
# STATIC_DATA_END (0x10) and the v2 inference (1.5)
# =====================================================================================

@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_static_data_end_twice(tmp_path: Path, guest: str) -> None:
    steps = insert_after(steps_for(guest), "sde", ("sde2", lambda w: w.static_data_end()))
    b = build(steps, guest=guest)
    check(run(tmp_path, b), b, E("static-data-end-once", ERROR, RESTORE, False, "sde2"))


def test_static_data_end_missing_v3_without_pages(tmp_path: Path) -> None:
    b = build(drop(hvm_steps(), "sde", "pages"))
    # no memory record to refuse it at: the spec's rule, which the restorer does not check
    check(run(tmp_path, b), b, E("static-data-end-absent", ERROR, SPEC, True, "eos"))


def test_static_data_end_missing_v3_reported_once(tmp_path: Path) -> None:
    steps = insert_after(drop(hvm_steps(), "sde"), "pages",
                         ("pages2", lambda w: w.page_data([5])))
    b = build(steps)
    check(run(tmp_path, b), b, E("static-data-end-missing", ERROR, RESTORE, False, "pages"))


@pytest.mark.parametrize("guest,after", [("hvm", "pages"), ("pv", "pages"), ("pv", "p2m")])
def test_v2_explicit_static_data_end_after_inference(tmp_path: Path, guest: str,
                                                     after: str) -> None:
    # v2: the first PAGE_DATA (or PV P2M_FRAMES) infers STATIC_DATA_END; an
    # explicit one afterwards is "Multiple STATIC_DATA_END records found"
    steps = insert_after(steps_for(guest, 2), after, ("sde", lambda w: w.static_data_end()))
    b = build(steps, guest=guest, version=2)
    check(run(tmp_path, b), b,
          E("v3-record-in-v2", WARNING, CONVENTION, True, "sde"),
          E("static-data-end-once", ERROR, RESTORE, False, "sde"))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_v2_explicit_static_data_end_before_pages(tmp_path: Path, guest: str) -> None:
    first = "p2m" if guest == "pv" else "pages"
    steps = insert_before(steps_for(guest, 2), first, ("sde", lambda w: w.static_data_end()))
    b = build(steps, guest=guest, version=2)
    check(run(tmp_path, b), b, E("v3-record-in-v2", WARNING, CONVENTION, True, "sde"))


# =====================================================================================
# X86_CPUID_POLICY (0x11), X86_MSR_POLICY (0x12)
# =====================================================================================

@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("name,rtype,n", [
    ("cpuid", 0x11, 0), ("cpuid", 0x11, 16), ("cpuid", 0x11, 23), ("cpuid", 0x11, 25),
    ("cpuid", 0x11, 40), ("msr", 0x12, 0), ("msr", 0x12, 8), ("msr", 0x12, 24),
    ("msr", 0x12, 15),
])
def test_policy_length(tmp_path: Path, guest: str, name: str, rtype: int, n: int) -> None:
    b = build(replace(steps_for(guest), name, (name, rec(rtype, b"\0" * n))), guest=guest)
    check(run(tmp_path, b), b, E("policy-length", ERROR, RESTORE, False, name))


@pytest.mark.parametrize("name,maker", [
    ("cpuid", lambda w: w.cpuid_policy([(0, 0xFFFFFFFF, 0xD, 1, 2, 3), (1, 0xFFFFFFFF, 0, 0, 0, 0)])),
    ("msr", lambda w: w.msr_policy([(0xCE, 0), (0x10A, 0)])),
])
def test_policy_multiple_entries_valid(tmp_path: Path, name: str,
                                       maker: Callable[[W], None]) -> None:
    assert run(tmp_path, build(replace(hvm_steps(), name, (name, maker)))).findings == []


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("name", ["cpuid", "msr"])
def test_policy_after_static_data_end(tmp_path: Path, guest: str, name: str) -> None:
    b = build(move_after(steps_for(guest), name, "sde"), guest=guest)
    check(run(tmp_path, b), b, E("policy-after-static-data-end", ERROR, SPEC, True, name))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
@pytest.mark.parametrize("name,maker", [("cpuid", lambda w: w.cpuid_policy()),
                                        ("msr", lambda w: w.msr_policy())])
def test_policy_in_v2_before_pages(tmp_path: Path, guest: str, name: str,
                                   maker: Callable[[W], None]) -> None:
    first = "p2m" if guest == "pv" else "pages"
    b = build(insert_before(steps_for(guest, 2), first, (name, maker)), guest=guest, version=2)
    check(run(tmp_path, b), b, E("v3-record-in-v2", WARNING, CONVENTION, True, name))


@pytest.mark.parametrize("name,maker", [("cpuid", lambda w: w.cpuid_policy()),
                                        ("msr", lambda w: w.msr_policy())])
def test_policy_in_v2_after_inferred_static_data_end(tmp_path: Path, name: str,
                                                     maker: Callable[[W], None]) -> None:
    b = build(insert_after(hvm_steps(2), "pages", (name, maker)), version=2)
    check(run(tmp_path, b), b, E("v3-record-in-v2", WARNING, CONVENTION, True, name),
          E("policy-after-static-data-end", ERROR, SPEC, True, name))


def test_msr_policy_flags(tmp_path: Path) -> None:
    body = struct.pack("<IIQ", 0xCE, 0, 0) + struct.pack("<IIQ", 0x10A, 1, 0)
    b = build(replace(hvm_steps(), "msr", ("msr", rec(0x12, body))))
    check(run(tmp_path, b), b, E("msr-policy-flags", ERROR, RESTORE, False, "msr"))


# =====================================================================================
# PV-only records in HVM streams and vice versa
# =====================================================================================

PV_ONLY_MAKERS = {
    0x02: lambda w: w.pv_info(8),
    0x03: lambda w: w.p2m_frames(0, 3, [3]),
    0x04: lambda w: w.vcpu_basic(0, 8),
    0x05: lambda w: w.vcpu_extended(0),
    0x06: lambda w: w.vcpu_xsave(0),
    0x07: lambda w: w.shared_info(),
    0x0C: lambda w: w.vcpu_msrs(0),
}


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("rtype", sorted(PV_ONLY_MAKERS))
def test_pv_record_in_hvm_stream(tmp_path: Path, rtype: int, version: int) -> None:
    steps = insert_before(hvm_steps(version), "tsc", ("pv", PV_ONLY_MAKERS[rtype]))
    b = build(steps, version=version)
    check(run(tmp_path, b), b, E("pv-record-in-hvm", ERROR, RESTORE, False, "pv"))


@pytest.mark.parametrize("width", [4, 8])
@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("rtype,maker", [(0x09, lambda w: w.hvm_context()),
                                         (0x0A, lambda w: w.hvm_params({1: 2}))])
def test_hvm_record_in_pv_stream(tmp_path: Path, width: int, version: int, rtype: int,
                                 maker: Callable[[W], None]) -> None:
    steps = insert_before(pv_steps(version, width), "tsc", ("hvm", maker))
    b = build(steps, guest="pv", version=version)
    check(run(tmp_path, b), b, E("hvm-record-in-pv", ERROR, RESTORE, False, "hvm"))


# =====================================================================================
# Coverage of every record type in both versions
# =====================================================================================

def test_every_record_type_has_a_test() -> None:
    from xenstream.formats import libxc
    assert sorted(libxc.RECORD_NAMES) == list(range(0x13))


def test_lenient_downgrades_only_tolerated_errors(tmp_path: Path) -> None:
    steps = insert_after(hvm_steps(), "pages",
                         ("pd", rec(0x01, _pd_raw(1, [0], 1, res1=1))),
                         ("ts", rec(0x0B, b"")))
    b = build(steps)
    res = run(tmp_path, b, lenient=True)
    got = {f.rule: (f.severity, f.restore_tolerates) for f in res.findings}
    assert got == {"page-data-reserved": (WARNING, True), "toolstack-record": (ERROR, False)}


# =====================================================================================
# Byte-by-byte fixtures from the reference tables (struct.pack only)
# =====================================================================================

def _ihdr(version: int, options: int = 0) -> bytes:
    # marker u64 | id u32 | version u32 | options u16 | _res1 u16 | _res2 u32, big-endian
    return struct.pack(">QIIHHI", 0xFFFFFFFFFFFFFFFF, 0x58454E46, version, options, 0, 0)


def _dhdr(dtype: int, xen: Tuple[int, int] = (4, 21)) -> bytes:
    # type u32 | page_shift u16 | _res1 u16 | xen_major u32 | xen_minor u32, little-endian
    return struct.pack("<IHHII", dtype, 12, 0, xen[0], xen[1])


def _rec(rtype: int, body: bytes) -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def _items(tmp_path: Path, data: bytes) -> List[object]:
    p = tmp_path / "raw.bin"
    p.write_bytes(data)
    out: List[object] = []
    with Source.open(str(p)) as src:
        for it in Parser(src).items():
            if isinstance(it, Record):
                out.append((it.index, it.offset, it.rtype, it.length, it.name, it.body()))
            else:
                out.append(it)
    return out


def test_bytes_minimal_v3_hvm_stream(tmp_path: Path) -> None:
    ctx = hvm.sample_context(1)
    page = bytes(range(256)) * 16
    pd = struct.pack("<II", 2, 0) + struct.pack("<QQ", 0x10, (0xF << 60) | 0x11) + page
    tsc = struct.pack("<IIQII", 2, 1_000_000, 42, 7, 0)
    params = struct.pack("<II", 1, 0) + struct.pack("<QQ", 17, 0xFEFFF)
    recs = [(0x10, b""), (0x01, pd), (0x08, tsc), (0x09, ctx), (0x0A, params), (0x00, b"")]
    data = _ihdr(3) + _dhdr(2) + b"".join(_rec(t, b) for t, b in recs)
    assert len(pd) == 8 + 16 + 4096  # one data page, XTAB carries none

    items = _items(tmp_path, data)
    ih, dh = items[0], items[1]
    assert isinstance(ih, Header) and isinstance(dh, Header)
    assert (ih.kind, ih.offset, ih.size) == ("libxc image header", 0, 24)
    assert ih.fields == {"marker": 0xFFFFFFFFFFFFFFFF, "id": 0x58454E46, "version": 3,
                         "options": 0, "_res1": 0, "_res2": 0}
    assert (dh.kind, dh.offset, dh.size) == ("libxc domain header", 24, 16)
    assert dh.fields == {"type": 2, "page_shift": 12, "_res1": 0, "xen_major": 4,
                         "xen_minor": 21}
    off = 40
    want = []
    for i, (t, body) in enumerate(recs):
        want.append((i, off, t, len(body), body))
        off += 8 + len(body) + (-len(body) % 8)
    got = [(i, o, t, n, body) for (i, o, t, n, _name, body) in items[2:]]  # type: ignore
    assert got == want
    assert [x[4] for x in items[2:]] == [  # type: ignore[index]
        "STATIC_DATA_END", "PAGE_DATA", "X86_TSC_INFO", "HVM_CONTEXT", "HVM_PARAMS", "END"]
    assert off == len(data)

    res = run(tmp_path, data)
    assert res.findings == [], describe(res)
    assert res.summary["pages"] == 1
    assert res.summary["highest_pfn"] == 0x11
    assert res.summary["guest_type"] == "hvm"


def test_bytes_v2_pv32_stream_with_page_tables(tmp_path: Path) -> None:
    # 32-bit PV: X86_PV_INFO (4, 3); P2M_FRAMES fpp = 1024: pfns 0..1500 need 2 frames
    info = struct.pack("<BBHI", 4, 3, 0, 0)
    p2m = struct.pack("<II", 0, 1500) + struct.pack("<QQ", 9, 8)
    types = [0xB, 0x2, 0x1, 0x0, 0xF, 0x0, 0x0]  # L3|PIN, L2, L1, NOTAB, XTAB, frames
    pfns = [1, 2, 3, 4, 1500, 8, 9]
    n_data = 6
    pd = (struct.pack("<II", len(pfns), 0)
          + b"".join(struct.pack("<Q", (t << 60) | p) for t, p in zip(types, pfns))
          + b"\0" * (4096 * n_data))
    basic = struct.pack("<II", 0, 0) + b"\0" * 2800
    recs = [(0x02, info), (0x03, p2m), (0x01, pd), (0x07, b"\0" * 4096), (0x04, basic),
            (0x00, b"")]
    data = _ihdr(2) + _dhdr(1) + b"".join(_rec(t, b) for t, b in recs)

    items = _items(tmp_path, data)
    got = [(t, n) for (_i, _o, t, n, _name, _b) in items[2:]]  # type: ignore[misc]
    assert got == [(2, 8), (3, 24), (1, 8 + 56 + 6 * 4096), (7, 4096), (4, 2808), (0, 0)]

    res = run(tmp_path, data)
    assert res.findings == [], describe(res)
    s = res.summary
    assert (s["guest_width"], s["max_pfn"], s["pages"], s["vcpus"]) == (32, 1500, 6, [0])
    assert s["libxc"]["version"] == 2

    # the same stream read as 64-bit (no X86_PV_INFO switch) must fail the
    # P2M_FRAMES length (fpp 512: 3 frames) and the BASIC size (5168)
    bad = _ihdr(2) + _dhdr(1) + b"".join(
        _rec(t, struct.pack("<BBHI", 8, 4, 0, 0) if t == 2 else b) for t, b in recs)
    res = run(tmp_path, bad)
    assert {"p2m-frames-length", "vcpu-basic-size"} <= rules(res), describe(res)


def test_bytes_broken_pv_page_data_offsets(tmp_path: Path) -> None:
    # 64-bit PV v3; a PAGE_DATA whose second entry has type 6 (rejected) and a
    # PAGE_DATA whose XTAB entry carries a page; offsets computed by hand
    head = _ihdr(3) + _dhdr(1)
    info = _rec(0x02, struct.pack("<BBHI", 8, 4, 0, 0))
    sde = _rec(0x10, b"")
    p2m = _rec(0x03, struct.pack("<IIQ", 0, 7, 7))
    good = _rec(0x01, struct.pack("<IIQ", 1, 0, 0x0) + b"\0" * 4096)
    bad_type = _rec(0x01, struct.pack("<IIQQ", 2, 0, 1, (6 << 60) | 2) + b"\0" * 8192)
    xtab_data = _rec(0x01, struct.pack("<IIQ", 1, 0, (0xF << 60) | 3) + b"\0" * 4096)
    basic = _rec(0x04, struct.pack("<II", 0, 0) + b"\0" * 5168)
    end = _rec(0x00, b"")
    parts = [info, sde, p2m, good, bad_type, xtab_data, basic, end]
    data = head + b"".join(parts)
    offs = [40]
    for p in parts[:-1]:
        offs.append(offs[-1] + len(p))
    assert offs[4] == 40 + 16 + 8 + 24 + (8 + 16 + 4096)

    res = run(tmp_path, data)
    got = {f.rule: (f.record_index, f.offset, f.severity, f.authority, f.restore_tolerates)
           for f in res.findings}
    assert got == {
        "page-data-type": (4, offs[4], ERROR, RESTORE, False),
        "page-data-length": (5, offs[5], ERROR, RESTORE, False),
    }, describe(res)


def test_bytes_optional_end_does_not_end_stream(tmp_path: Path) -> None:
    # 0x80000000 (OPTIONAL|END) is skipped; the stream goes on to a real END
    recs = [(0x10, b""), (0x80000000, b""), (0x09, hvm.sample_context(1)), (0x00, b"")]
    data = _ihdr(3) + _dhdr(2) + b"".join(_rec(t, b) for t, b in recs)
    res = run(tmp_path, data)
    assert [(f.rule, f.record_index, f.offset) for f in res.findings] == [
        ("optional-known-type", 1, 48)], describe(res)
    assert res.summary["records"] == 4
    assert IHDR_SIZE == 24 and HEADERS_SIZE == 40


# =====================================================================================
# VCPU records before X86_PV_INFO (1.5 "not checked but required in practice")
# =====================================================================================

@pytest.mark.parametrize("name", ["basic0", "ext0", "xsave0", "msrs0"])
def test_vcpu_record_before_pv_info_64bit_restore_accepts(tmp_path: Path, name: str) -> None:
    # handle_x86_pv_vcpu_blob() never looks at seen_pv_info, and a 64-bit
    # domain already has the native width, so Xen restores this stream: a
    # finding may point it out, but must not claim the restore fails
    steps = move_before(pv_steps(3, 8), name, "pv_info")
    b = build(steps, guest="pv")
    res = run(tmp_path, b)
    fatal = [f for f in res.findings if f.severity == ERROR and not f.restore_tolerates]
    assert fatal == [], describe(res)
    assert res.summary["vcpus"] == [0]


def test_vcpu_basic_before_pv_info_32bit_fails_on_size(tmp_path: Path) -> None:
    # the size is checked against the domain's current (native 64-bit) width
    steps = move_before(pv_steps(3, 4), "basic0", "pv_info")
    b = build(steps, guest="pv")
    res = run(tmp_path, b)
    f = with_rule(res, "vcpu-basic-size")
    assert len(f) == 1, describe(res)
    assert (f[0].severity, f[0].authority, f[0].restore_tolerates) == (ERROR, RESTORE, False)
    assert (f[0].record_index, f[0].offset) == b.marks["basic0"]
    assert "vcpu0-missing" in rules(res)


def test_v3_static_data_end_after_memory_is_one_error(tmp_path: Path) -> None:
    """v3: PAGE_DATA before STATIC_DATA_END stops the restore ("No STATIC_DATA_END
    seen"); the late STATIC_DATA_END and policies must not add follow-on errors."""
    buf = io.BytesIO()
    w = LibxcWriter(buf)
    w.headers("hvm")
    w.page_data([0, 1])
    w.page_data([2])
    w.cpuid_policy()
    w.static_data_end()
    w.tsc_info()
    w.hvm_context()
    w.end()
    p = tmp_path / "s"
    p.write_bytes(buf.getvalue())
    with Source.open(str(p)) as src:
        res = verify(src)
    assert [(f.rule, f.severity, f.record_index) for f in res.findings] == [
        ("static-data-end-missing", ERROR, 0)]
