"""Stream structure across layers: libxl records, the xl header, checkpointed
(Remus/COLO) streams, big-endian streams, truncation, format detection, the
JSON document and trailing data.

References: xen-formats.md sections 1.10, 2 and 3;
docs/specs/libxl-migration-stream.pandoc; libxl_stream_read.c.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import jsonschema  # type: ignore[import-untyped]
import pytest

import xenstream
from stream_helpers import (
    Item,
    check,
    hvm_tail,
    image,
    items_of,
    legacy_stream,
    libxc_custom,
    libxl_custom,
    libxl_stream,
    load_json,
    minimal_hvm_libxc,
    minus_device_state_warning,
    one_of,
    only,
    rules,
    sig,
    sigs,
    write_file,
    xl_image,
    xl_raw_optional,
)
from xenstream.cli.main import main
from xenstream.findings import CONVENTION, ERROR, RESTORE, SPEC, TOOLSTACK, WARNING
from xenstream.formats import libxl, xl
from xenstream.writers.v2 import ImageSpec, LibxcWriter, LibxlWriter, default_config

SCHEMA_PATH = Path(xenstream.__file__).parent / "schema" / "verify.schema.json"
LIBXL_IDENT = struct.pack(">Q", libxl.HDR_IDENT)


# ==========================================================================
# 1. libxl layer
# ==========================================================================


class TestLibxlHeader:
    def test_valid_plain_stream(self, tmp_path: Path) -> None:
        res = check(tmp_path, libxl_stream())
        assert res.valid and res.findings == []
        assert res.layers == ["libxl", "libxc"]
        assert res.summary["libxl"]["converted_from_legacy"] is False

    def test_legacy_bit_is_fine_and_reported(self, tmp_path: Path) -> None:
        res = check(tmp_path, libxl_stream(header={"options": libxl.HDR_OPT_LEGACY}))
        assert res.valid and res.findings == []
        assert res.summary["libxl"]["converted_from_legacy"] is True

    @pytest.mark.parametrize("bit", [2, 17, 31])
    def test_reserved_option_bits(self, tmp_path: Path, bit: int) -> None:
        res = check(tmp_path, libxl_stream(header={"options": 1 << bit}))
        f = only(res, "libxl-options-reserved")
        # libxl ignores bits 2-31: a spec violation the restore tolerates
        assert sig(f) == ("libxl-options-reserved", ERROR, SPEC, True)
        assert f.offset == 0 and f.layer == "libxl"
        lenient = check(tmp_path, libxl_stream(header={"options": 1 << bit}), lenient=True)
        assert lenient.valid and sigs(lenient) == [("libxl-options-reserved", WARNING, SPEC, True)]

    @pytest.mark.parametrize("version", [1, 3, 0xFFFFFFFF])
    def test_version_must_be_2(self, tmp_path: Path, version: int) -> None:
        f = only(check(tmp_path, libxl_stream(header={"version": version})), "libxl-version")
        assert sig(f) == ("libxl-version", ERROR, TOOLSTACK, False)
        assert str(version) in f.message

    def test_wrong_ident_is_not_a_libxl_stream(self, tmp_path: Path) -> None:
        data = libxl_stream(header={"ident": libxl.HDR_IDENT + 1})
        assert sig(only(check(tmp_path, data), "unrecognised")) == \
            ("unrecognised", ERROR, SPEC, False)
        # inside an xl file with STREAMv2 the payload must be a libxl stream
        f = only(check(tmp_path, xl_image(payload=data)), "xl-payload")
        assert f.offset == 48 + len(_default_optional())


def _default_optional() -> bytes:
    cfg = json.dumps(default_config(ImageSpec(envelope="xl", pages=4)), indent=4).encode() + b"\0"
    return struct.pack("<I", len(cfg)) + cfg


class TestLibxlRecords:
    def test_end_with_body(self, tmp_path: Path) -> None:
        data = libxl_stream(end=False)
        data += struct.pack("<II", libxl.REC_TYPE_END, 4) + b"abcd" + b"\0" * 4
        res = check(tmp_path, data)
        f = only(res, "libxl-record-length-zero")
        assert sig(f) == ("libxl-record-length-zero", ERROR, SPEC, True)
        assert f.layer == "libxl" and f.record_type == "END"
        assert f.offset == len(data) - 16

    def test_libxc_context_with_body(self, tmp_path: Path) -> None:
        # libxl reads and discards the body; libxc starts after its padding
        data = libxl_stream(ctx=False, before=lambda lw: lw.record(libxl.REC_TYPE_LIBXC_CONTEXT,
                                                                   b"abcde"))
        res = check(tmp_path, data)
        f = only(res, "libxl-record-length-zero")
        assert sig(f) == ("libxl-record-length-zero", ERROR, SPEC, True)
        assert f.offset == 16 and f.record_type == "LIBXC_CONTEXT"
        assert res.summary["pages"] == 4  # the libxc stream was found after the body

    def test_checkpoint_end_with_body(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.record(libxl.REC_TYPE_CHECKPOINT_END, b"abcd")
        res = check(tmp_path, libxl_custom(fn))
        assert sigs(res) == [("libxl-record-length-zero", ERROR, SPEC, True),
                             ("checkpoint-eof", WARNING, RESTORE, True)]
        assert res.findings[0].record_type == "CHECKPOINT_END"

    def test_libxc_context_missing(self, tmp_path: Path) -> None:
        data = libxl_custom(lambda lw, w: None)[:16]  # header only
        data += struct.pack("<II", libxl.REC_TYPE_END, 0)
        f = only(check(tmp_path, data), "libxl-no-libxc-context")
        assert sig(f) == ("libxl-no-libxc-context", WARNING, CONVENTION, True)
        assert f.offset == 16

    def test_libxc_context_twice(self, tmp_path: Path) -> None:
        res = check(tmp_path, libxl_stream(after=lambda lw: lw.libxc_context()))
        f = one_of(res, "libxl-libxc-context-once")
        assert sig(f) == ("libxl-libxc-context-once", WARNING, CONVENTION, True)
        assert not res.valid

    @pytest.mark.parametrize("rtype", [libxl.REC_TYPE_EMULATOR_XENSTORE_DATA,
                                       libxl.REC_TYPE_EMULATOR_CONTEXT])
    def test_emulator_record_in_pv_stream(self, tmp_path: Path, rtype: int) -> None:
        spec = ImageSpec(envelope="libxl", guest="pv", pages=8)

        def after(lw: LibxlWriter) -> None:
            if rtype == libxl.REC_TYPE_EMULATOR_CONTEXT:
                lw.emulator_context(b"QEVM0000")
            else:
                lw.xenstore_data({"a": "b"})
        f = only(check(tmp_path, libxl_stream(spec, after=after)), "libxl-emulator-not-hvm")
        assert sig(f) == ("libxl-emulator-not-hvm", ERROR, TOOLSTACK, False)
        assert f.record_type == libxl.RECORD_NAMES[rtype]

    def test_emulator_record_before_libxc(self, tmp_path: Path) -> None:
        data = libxl_stream(before=lambda lw: lw.emulator_context(b"QEVM0000"))
        f = only(check(tmp_path, data), "libxl-emulator-order")
        assert sig(f) == ("libxl-emulator-order", WARNING, CONVENTION, True)
        assert f.offset == 16

    @pytest.mark.parametrize("rtype", [libxl.REC_TYPE_EMULATOR_XENSTORE_DATA,
                                       libxl.REC_TYPE_EMULATOR_CONTEXT])
    @pytest.mark.parametrize("length", [0, 4, 7])
    def test_emulator_record_shorter_than_8(self, tmp_path: Path, rtype: int,
                                            length: int) -> None:
        data = libxl_stream(emu=False, after=lambda lw: lw.record(rtype, b"\2" * length))
        res = check(tmp_path, data)
        if rtype != libxl.REC_TYPE_EMULATOR_CONTEXT:  # no EMULATOR_CONTEXT at all
            minus_device_state_warning(res)
        f = only(res, "libxl-emulator-length")
        assert sig(f) == ("libxl-emulator-length", ERROR, TOOLSTACK, False)
        assert f"found {length}" in f.message

    @pytest.mark.parametrize("emu_id", [3, 7, 0xFFFFFFFF])
    def test_unknown_emulator_id(self, tmp_path: Path, emu_id: int) -> None:
        data = libxl_stream(emu=False,
                            after=lambda lw: lw.emulator_context(b"QEVM0000", emulator_id=emu_id))
        f = only(check(tmp_path, data), "libxl-emulator-id")
        # libxl ignores the id: spec violation, tolerated
        assert sig(f) == ("libxl-emulator-id", ERROR, SPEC, True)

    @pytest.mark.parametrize("emu_id", [0, 1, 2])
    def test_known_emulator_ids(self, tmp_path: Path, emu_id: int) -> None:
        data = libxl_stream(emu=False, after=lambda lw: (
            lw.xenstore_data({"a": "b"}, emulator_id=emu_id),
            lw.emulator_context(b"QEVM0000", emulator_id=emu_id)))
        res = check(tmp_path, data)
        # qemu-traditional's state (id 1) restores only where that device model is built
        assert res.valid and [f.rule for f in res.findings] == (
            ["qemu-traditional-state"] if emu_id == 1 else [])
        assert res.summary["libxl"]["emulators"] == [emu_id]

    @pytest.mark.parametrize("rtype", [6, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFF])
    def test_unknown_record_types_are_errors(self, tmp_path: Path, rtype: int) -> None:
        data = libxl_stream(after=lambda lw: lw.record(rtype, b"xyz"))
        res = check(tmp_path, data)
        f = only(res, "libxl-unknown-record")
        assert sig(f) == ("libxl-unknown-record", ERROR, TOOLSTACK, False)
        if rtype & 0x80000000:
            assert "optional bit" in f.message
        # the stream goes on past the unknown record to END
        assert res.summary["record_counts"]["libxl:END"] == 1

    def test_nonzero_padding_libxl_record(self, tmp_path: Path) -> None:
        data = libxl_stream(emu=False, after=lambda lw: lw.xenstore_data(
            {"a": "b"}, padding=b"\0\0\1\0"))  # body 8 + 4 = 12, pad 4
        res = minus_device_state_warning(check(tmp_path, data))
        f = only(res, "libxl-padding-zero")
        assert sig(f) == ("libxl-padding-zero", ERROR, SPEC, True)
        assert f.layer == "libxl" and f.record_type == "EMULATOR_XENSTORE_DATA"
        assert f.offset == data.index(b"a\0b\0") + 4

    def test_nonzero_padding_libxc_record_in_libxl(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            w.headers("hvm")
            w.cpuid_policy()
            w.msr_policy()
            w.static_data_end()
            w.page_data([0, 1])
            w.tsc_info()
            w.hvm_context()
            w.hvm_params({1: 7})
            w.record(0x80000123, b"abc", padding=b"\0\0\0\0\x09")
            w.end()
            lw.end()
        res = minus_device_state_warning(check(tmp_path, libxl_custom(fn)))
        assert sorted(rules(res)) == ["optional-record", "padding-zero"]
        f = one_of(res, "padding-zero")
        assert f.layer == "libxc" and "09" in f.message


class TestXenstoreData:
    def _run(self, tmp_path: Path, raw: bytes) -> Any:
        data = libxl_stream(emu=False, after=lambda lw: (
            lw.xenstore_data({}, raw=raw), lw.emulator_context(b"QEVM0000")))
        return check(tmp_path, data)

    @pytest.mark.parametrize("raw,rule,tolerated,body_off", [
        (b"abc", "libxl-xenstore-nul", False, 8),  # key without NUL
        (b"a\0b\0c\0", "libxl-xenstore-nul", False, 12),  # trailing key, no value
        (b"a\0v", "libxl-xenstore-nul", False, 8),  # value without NUL
        (b"\0v\0", "libxl-xenstore-key-empty", False, 8),
        (b"a\0b\0/abs\0v\0", "libxl-xenstore-key-absolute", False, 12),
    ])
    def test_bad_pairs(self, tmp_path: Path, raw: bytes, rule: str, tolerated: bool,
                       body_off: int) -> None:
        f = only(self._run(tmp_path, raw), rule)
        assert sig(f) == (rule, ERROR, TOOLSTACK, tolerated)
        assert f"body offset {body_off:#x}" in f.message

    @pytest.mark.parametrize("key", [b"a b", b"k\xff", b"x*y", b"a.b", b"a:b"])
    def test_bad_key_characters(self, tmp_path: Path, key: bytes) -> None:
        # spec: "keys strictly as alphanumeric ASCII and -/_@" (xenstored's
        # valid_chars() agrees: no '.')
        f = only(self._run(tmp_path, key + b"\0v\0"), "libxl-xenstore-key-chars")
        assert sig(f) == ("libxl-xenstore-key-chars", ERROR, SPEC, True)

    @pytest.mark.parametrize("raw,keys", [
        (b"a\0\0", 1),  # empty value is allowed
        (b"", 0),
        (b"physmap/f0000000/start_addr\0f0000000\0A-Z_@9/x\0\0", 2),
    ])
    def test_good_pairs(self, tmp_path: Path, raw: bytes, keys: int) -> None:
        res = self._run(tmp_path, raw)
        assert res.valid and res.findings == []
        assert res.summary["libxl"]["xenstore_keys"] == keys


# ==========================================================================
# 2. xl header
# ==========================================================================


class TestXlHeader:
    def test_valid(self, tmp_path: Path) -> None:
        res = check(tmp_path, xl_image())
        assert res.valid and res.findings == []
        assert res.layers == ["xl", "libxl", "libxc"]
        assert res.summary["xl"] == {"streamv2": True, "mandatory_flags": 3, "config": "json",
                                     "endian": "little"}

    def test_bad_magic(self, tmp_path: Path) -> None:
        magic = xl.MAGIC[:31] + b"\n"  # first 8 bytes right: detected as xl
        f = only(check(tmp_path, xl_image(magic=magic)), "xl-magic")
        assert sig(f) == ("xl-magic", ERROR, TOOLSTACK, False)
        assert f.offset == 0

    def test_bad_byteorder(self, tmp_path: Path) -> None:
        f = only(check(tmp_path, xl_image(byteorder=0x11223344)), "xl-byteorder")
        assert sig(f) == ("xl-byteorder", ERROR, TOOLSTACK, False)
        assert "0x11223344" in f.message

    def test_big_endian_file_is_parsed_but_not_restorable(self, tmp_path: Path) -> None:
        data = xl_image(ImageSpec(envelope="xl", pages=4, endian=">"), endian=">")
        res = check(tmp_path, data)
        assert rules(res) == ["xl-big-endian", "libxl-big-endian", "ihdr-big-endian"]
        assert sig(res.findings[0]) == ("xl-big-endian", ERROR, TOOLSTACK, False)
        assert res.summary["xl"]["endian"] == "big"
        assert res.summary["xl"]["config"] == "json"  # config_len read big-endian
        assert res.summary["pages"] == 4

    @pytest.mark.parametrize("flags", [0x3 | 0x4, 0x3 | 0x80000000])
    def test_unknown_mandatory_flags(self, tmp_path: Path, flags: int) -> None:
        f = only(check(tmp_path, xl_image(mandatory_flags=flags)), "xl-mandatory-flags")
        assert sig(f) == ("xl-mandatory-flags", ERROR, TOOLSTACK, False)

    def test_optional_flags_warn(self, tmp_path: Path) -> None:
        res = check(tmp_path, xl_image(optional_flags=5))
        assert res.valid
        assert sig(only(res, "xl-optional-flags")) == ("xl-optional-flags", WARNING, CONVENTION, True)

    def test_optional_data_len_beyond_file(self, tmp_path: Path) -> None:
        data = xl_image(optional_data_len=1 << 20)
        f = only(check(tmp_path, data), "truncated")
        assert f.offset == 48 and f.layer == "xl"
        assert f.severity == ERROR

    def test_config_len_beyond_optional_data(self, tmp_path: Path) -> None:
        data = xl_raw_optional(struct.pack("<I", 100) + b"x" * 8, json_flag=True)
        f = only(check(tmp_path, data), "xl-config-length")
        assert sig(f) == ("xl-config-length", ERROR, TOOLSTACK, False)
        assert f.offset == 48

    def test_optional_data_shorter_than_config_len_field(self, tmp_path: Path) -> None:
        f = only(check(tmp_path, xl_raw_optional(b"xx")), "xl-config-length")
        assert sig(f) == ("xl-config-length", ERROR, TOOLSTACK, False)

    def test_optional_tail_after_config_is_skipped(self, tmp_path: Path) -> None:
        res = check(tmp_path, xl_image(optional_tail=b"tail" * 5))
        assert res.valid and res.findings == []

    def test_json_flag_with_non_json_config(self, tmp_path: Path) -> None:
        data = xl_image(config=b'name = "x"\nmemory = 16\n\0', json_flag=True)
        f = only(check(tmp_path, data), "xl-config-json")
        assert sig(f) == ("xl-config-json", ERROR, TOOLSTACK, False)

    def test_json_config_without_nul(self, tmp_path: Path) -> None:
        cfg = json.dumps(default_config(ImageSpec(pages=4))).encode()
        f = only(check(tmp_path, xl_image(config=cfg, json_flag=True)), "xl-config-nul")
        assert sig(f) == ("xl-config-nul", ERROR, TOOLSTACK, False)

    def test_xl_cfg_text_config_without_json_flag(self, tmp_path: Path) -> None:
        res = check(tmp_path, xl_image(config=b'name = "x"\nmemory = 16\n', json_flag=False))
        assert res.valid and res.findings == []
        assert res.summary["xl"]["config"] == "xl-cfg"
        assert res.summary["xl"]["mandatory_flags"] == xl.MANDATORY_FLAG_STREAMV2

    @pytest.mark.parametrize("cfg_type,guest", [("pv", "hvm"), ("hvm", "pv"), ("pvh", "pv")])
    def test_guest_type_mismatch(self, tmp_path: Path, cfg_type: str, guest: str) -> None:
        spec = ImageSpec(envelope="xl", guest=guest, pages=8)
        cfg = default_config(spec)
        cfg["c_info"]["type"] = cfg_type
        res = check(tmp_path, xl_image(spec, config=cfg))
        f = only(res, "guest-type-mismatch")
        assert sig(f) == ("guest-type-mismatch", ERROR, RESTORE, False)
        assert f.layer == "libxc" and f.what == "header (libxc domain header)"
        assert f.offset == 48 + len(_optional(cfg)) + 16 + 8 + 24

    def test_pvh_config_with_hvm_stream_is_fine(self, tmp_path: Path) -> None:
        spec = ImageSpec(envelope="xl", pages=4)
        cfg = default_config(spec)
        cfg["c_info"]["type"] = "pvh"
        res = check(tmp_path, xl_image(spec, config=cfg))
        assert res.valid and res.findings == []

    def test_max_vcpus_bounds_pv_vcpu_ids(self, tmp_path: Path) -> None:
        spec = ImageSpec(envelope="xl", guest="pv", pages=8, vcpus=3)
        cfg = default_config(spec)
        cfg["b_info"]["max_vcpus"] = 2
        res = check(tmp_path, xl_image(spec, config=cfg))
        assert {sig(f) for f in res.findings} == {("vcpu-id", ERROR, RESTORE, False)}
        # vcpu 2's BASIC, EXTENDED and XSAVE records
        assert len(res.findings) == 3
        assert all("found 2" in f.message for f in res.findings)
        ok = default_config(spec)  # max_vcpus 3
        assert check(tmp_path, xl_image(spec, config=ok)).findings == []

    def test_max_vcpus_bounds_hvm_context_instances(self, tmp_path: Path) -> None:
        spec = ImageSpec(envelope="xl", pages=4, vcpus=2)
        cfg = default_config(spec)
        cfg["b_info"]["max_vcpus"] = 1
        res = check(tmp_path, xl_image(spec, config=cfg))
        assert not res.valid
        assert set(rules(res)) == {"hvm-instance"}

    def test_no_config_means_no_vcpu_bound(self, tmp_path: Path) -> None:
        res = check(tmp_path, image(envelope="libxl", guest="pv", pages=8, vcpus=3))
        assert res.valid and res.findings == []
        assert any("vcpu ids not checked" in n for n in res.notes)
        assert res.summary["vcpus"] == [0, 1, 2]

    def test_no_streamv2_in_front_of_libxl_stream(self, tmp_path: Path) -> None:
        """The flag lies (reported at the xl mandatory_flags field); the libxl
        stream found there is parsed by its content."""
        data = xl_image(streamv2=False, payload=image(envelope="libxl"))
        res = check(tmp_path, data)
        f = only(res, "xl-streamv2-lie")
        assert sig(f) == ("xl-streamv2-lie", ERROR, TOOLSTACK, False)
        assert (f.offset, f.layer, f.what) == (36, "xl", "header (xl header)")
        assert "libxl v2 stream" in f.message
        assert res.layers == ["xl", "libxl", "libxc"]
        assert res.end_offset == len(data)

    def test_no_streamv2_in_front_of_libxl_stream_inner_errors_reported(
            self, tmp_path: Path) -> None:
        bad = libxl_stream(emu=False, after=lambda lw: lw.xenstore_data({}, raw=b"/abs\0v\0"))
        res = check(tmp_path, xl_image(streamv2=False, payload=bad))
        # the config says HVM: its device state (EMULATOR_CONTEXT) is missing too
        assert sorted(rules(res)) == ["libxl-emulator-missing", "libxl-xenstore-key-absolute",
                                      "xl-streamv2-lie"]

    def test_no_streamv2_in_front_of_legacy_payload(self, tmp_path: Path) -> None:
        # 64-bit toolstack, HVM (the default config's type): a whole legacy stream
        payload = legacy_stream("hvm", 8)
        assert struct.unpack_from("<Qi", payload) == (8, -7)  # p2m_size, TSC_INFO first
        data = xl_image(streamv2=False, payload=payload)
        res = check(tmp_path, data)
        f = only(res, "legacy-stream")
        assert sig(f) == ("legacy-stream", WARNING, TOOLSTACK, True)
        assert f.message.startswith("legacy image (") and "STREAMv2 flag clear" in f.message
        assert f.offset == 48 + len(_default_optional()) and f.layer == "legacy"
        assert res.valid and res.end_offset == len(data)
        assert res.layers == ["xl", "legacy"]
        lg = res.summary["legacy"]
        assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
            "container": "xl", "width": 64, "guest_type": "hvm"}
        assert (lg["p2m_size"], lg["checkpoints"], lg["qemu_record"]) == (8, 1, "libxl")
        # the drop-in (verify-stream-v2) rejects it at the same place
        drop = only(check(tmp_path, data, reject_legacy=True), "legacy-stream-rejected")
        assert sig(drop) == ("legacy-stream-rejected", ERROR, SPEC, False)
        assert drop.message.startswith("legacy stream: convert it")
        assert drop.offset == f.offset

    def test_legacy_payload_contradicting_config_type(self, tmp_path: Path) -> None:
        # the default config says HVM; a 64-bit PV legacy stream follows
        res = check(tmp_path, xl_image(streamv2=False, payload=legacy_stream("pv", 8)))
        # libxl runs the converter with --guest from the config: it misreads the stream
        assert sigs(res) == [("legacy-guest-type", ERROR, TOOLSTACK, False),
                             ("legacy-stream", WARNING, TOOLSTACK, True)]
        lg = res.summary["legacy"]
        assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
            "container": "xl", "width": 64, "guest_type": "pv"}
        assert res.summary["guest_type"] == "pv"  # from the legacy header

    def test_streamv2_in_front_of_legacy_payload(self, tmp_path: Path) -> None:
        # a 64-bit legacy PV stream (the common x86_64 case) behind a STREAMv2 flag:
        # the header's lie is reported and the legacy stream is read by its content
        payload = struct.pack("<QQ", 0x1000, 0xFFFFFFFFFFFFFFFF) + b"\0" * 64
        res = check(tmp_path, xl_image(payload=payload))
        f = one_of(res, "xl-streamv2-legacy")
        assert (f.severity, f.offset) == (ERROR, 36)
        assert "legacy" in f.message, f.message
        assert "legacy" in res.layers

    def test_streamv2_in_front_of_bare_libxc(self, tmp_path: Path) -> None:
        f = only(check(tmp_path, xl_image(payload=image(envelope="libxc"))), "xl-payload")
        assert "bare libxc" in f.message


def _optional(cfg: Dict[str, Any]) -> bytes:
    raw = json.dumps(cfg, indent=4).encode() + b"\0"
    return struct.pack("<I", len(raw)) + raw


# ==========================================================================
# 3. Checkpointed streams
# ==========================================================================


class TestCheckpointed:
    @pytest.mark.parametrize("envelope,colo", [("libxc", False), ("libxl", False),
                                               ("libxl", True), ("xl", False), ("xl", True)])
    @pytest.mark.parametrize("n", [1, 3])
    def test_valid_with_checkpoint_eof_warning(self, tmp_path: Path, envelope: str, colo: bool,
                                               n: int) -> None:
        data = image(envelope=envelope, pages=8, checkpoints=n, colo=colo)
        res = check(tmp_path, data)
        assert res.valid
        f = only(res, "checkpoint-eof")
        assert sig(f) == ("checkpoint-eof", WARNING, RESTORE, True)
        assert f.offset == len(data)
        assert f"fails over to checkpoint {n}" in f.message
        assert ("COLO" if colo else "Remus") in f.message
        cp = res.summary["checkpoints"]
        assert cp == {"kind": "colo" if colo else "remus", "checkpoint_records": n,
                      "complete": n}
        counts = res.summary["record_counts"]
        assert counts["libxc:CHECKPOINT"] == n
        assert "libxc:END" not in counts and "libxl:END" not in counts
        if envelope != "libxc":
            assert counts["libxl:CHECKPOINT_END"] == n
            assert counts.get("libxl:CHECKPOINT_STATE", 0) == (n if colo else 0)

    @pytest.mark.parametrize("envelope,colo", [("libxl", False), ("libxl", True),
                                               ("xl", True), ("libxc", False)])
    def test_eof_at_every_sampled_offset(self, tmp_path: Path, envelope: str,
                                         colo: bool) -> None:
        data = image(envelope=envelope, pages=8, checkpoints=3, colo=colo)
        its = items_of(tmp_path, data)
        closers = [it.end for it in its if it.kind == "Record" and it.name ==
                   ("CHECKPOINT" if envelope == "libxc" else "CHECKPOINT_END")]
        assert len(closers) == 3
        first = closers[0]
        cuts = set()
        for it in its:
            if it.kind == "Record":
                cuts.update({it.offset, it.offset + 3, it.offset + 8})
                if it.length:
                    cuts.update({it.offset + 9, it.offset + 8 + it.length - 1})
            else:
                cuts.update({it.offset, it.offset + 3})
        cuts = {c for c in cuts if first <= c < len(data)}
        assert len(cuts) > 40
        for cut in sorted(cuts):
            res = check(tmp_path, data[:cut])
            complete = sum(1 for c in closers if c <= cut)
            assert res.valid, (cut, [(f.rule, f.message) for f in res.findings])
            f = only(res, "checkpoint-eof")
            assert sig(f) == ("checkpoint-eof", WARNING, RESTORE, True), cut
            assert f"fails over to checkpoint {complete}" in f.message, (cut, f.message)
            assert res.summary["checkpoints"]["complete"] == complete, cut
            assert f.offset <= cut

    def test_eof_exit_status_via_cli(self, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        data = image(envelope="libxl", pages=8, checkpoints=2)
        its = items_of(tmp_path, data)
        second_page = [it for it in its if it.name == "PAGE_DATA"][1]
        p = write_file(tmp_path, data[:second_page.offset + 100])
        assert main(["verify", str(p)]) == 0
        out = capsys.readouterr()
        assert "fails over to checkpoint 1" in out.out

    @pytest.mark.parametrize("envelope,colo", [("libxl", False), ("xl", True), ("libxc", False)])
    def test_eof_before_first_complete_checkpoint_is_error(self, tmp_path: Path, envelope: str,
                                                           colo: bool) -> None:
        data = image(envelope=envelope, pages=8, checkpoints=2, colo=colo)
        its = items_of(tmp_path, data)
        ckpt = next(it for it in its if it.name == "CHECKPOINT")
        closer = next(it for it in its if it.name ==
                      ("CHECKPOINT" if envelope == "libxc" else "CHECKPOINT_END"))
        samples = [ckpt.offset, ckpt.offset + 5, closer.offset, closer.end - 1]
        for cut in samples:
            res = check(tmp_path, data[:cut])
            f = only(res, "truncated")
            assert sig(f) == ("truncated", ERROR, RESTORE, False)
            assert not res.valid
            assert res.summary["checkpoints"]["complete"] == 0
            if cut >= ckpt.end:
                assert "before the first complete checkpoint" in f.message

    def test_checkpoint_end_without_checkpoint(self, tmp_path: Path) -> None:
        res = check(tmp_path, libxl_stream(after=lambda lw: lw.checkpoint_end()))
        f = only(res, "libxl-checkpoint-end-unexpected")
        assert sig(f) == ("libxl-checkpoint-end-unexpected", ERROR, TOOLSTACK, False)

    def test_libxl_end_inside_checkpoint_reported_once(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.xenstore_data({"a": "b"})
            lw.end()
        res = minus_device_state_warning(check(tmp_path, libxl_custom(fn)))
        f = only(res, "libxl-end-in-checkpoint")
        assert sig(f) == ("libxl-end-in-checkpoint", ERROR, TOOLSTACK, False)
        assert f.record_type == "END"

    def test_libxl_end_inside_later_checkpoint_fails_over(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.checkpoint_end()  # checkpoint 1 complete
            w.page_data([0, 1])
            hvm_tail(w)
            w.checkpoint()
            lw.end()  # inside checkpoint 2: restored from checkpoint 1
        res = minus_device_state_warning(check(tmp_path, libxl_custom(fn)))
        f = only(res, "libxl-end-in-checkpoint-failover")
        assert sig(f) == ("libxl-end-in-checkpoint-failover", WARNING, TOOLSTACK, True)
        assert f.record_type == "END" and res.valid

    def test_checkpoint_state_before_checkpoint_end(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.checkpoint_state()
            lw.checkpoint_end()
        res = check(tmp_path, libxl_custom(fn))
        assert sigs(res) == [("libxl-checkpoint-state-unexpected", ERROR, TOOLSTACK, False),
                             ("checkpoint-eof", WARNING, RESTORE, True)]

    def test_checkpoint_state_in_plain_stream(self, tmp_path: Path) -> None:
        res = check(tmp_path, libxl_stream(after=lambda lw: lw.checkpoint_state()))
        f = only(res, "libxl-checkpoint-state-unexpected")
        assert sig(f) == ("libxl-checkpoint-state-unexpected", ERROR, TOOLSTACK, False)

    def test_checkpoint_state_length_zero(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.checkpoint_end()
            lw.record(libxl.REC_TYPE_CHECKPOINT_STATE, b"")
        res = check(tmp_path, libxl_custom(fn))
        assert sigs(res) == [("libxl-checkpoint-state-empty", ERROR, TOOLSTACK, False),
                             ("checkpoint-eof", WARNING, RESTORE, True)]
        assert "NULL" in res.findings[0].message

    @pytest.mark.parametrize("cid", [1, 2, 3, 99])
    def test_checkpoint_state_control_id_not_new(self, tmp_path: Path, cid: int) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.checkpoint_end()
            lw.checkpoint_state(cid)
        res = check(tmp_path, libxl_custom(fn))
        assert sigs(res) == [("libxl-checkpoint-state-id", ERROR, TOOLSTACK, False),
                             ("checkpoint-eof", WARNING, RESTORE, True)]
        assert f"found {cid}" in res.findings[0].message

    def test_colo_with_pv_guest(self, tmp_path: Path) -> None:
        res = check(tmp_path, image(envelope="libxl", guest="pv", pages=8, checkpoints=1,
                                    colo=True))
        f = one_of(res, "colo-pv")
        assert sig(f) == ("colo-pv", ERROR, TOOLSTACK, False)
        assert not res.valid
        assert res.summary["checkpoints"]["kind"] == "colo"

    def test_colo_missing_checkpoint_state_later(self, tmp_path: Path) -> None:
        def fn(lw: LibxlWriter, w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
            lw.checkpoint_end()
            lw.checkpoint_state()
            w.page_data([1])
            hvm_tail(w)
            w.checkpoint()
            lw.checkpoint_end()  # no CHECKPOINT_STATE after this one
            w.page_data([2])
            hvm_tail(w)
            w.checkpoint()
            lw.checkpoint_end()
            lw.checkpoint_state()
        data = libxl_custom(fn)
        res = check(tmp_path, data)
        f = one_of(res, "colo-checkpoint-state-missing")
        assert sig(f) == ("colo-checkpoint-state-missing", ERROR, TOOLSTACK, False)
        assert f.layer == "libxc" and f.record_type == "PAGE_DATA"
        its = items_of(tmp_path, data)
        ends = [it for it in its if it.name == "CHECKPOINT_END"]
        assert f.offset == ends[1].end

    def test_bare_libxc_eof_after_checkpoint(self, tmp_path: Path) -> None:
        def fn(w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()
        data = libxc_custom(fn)
        res = check(tmp_path, data)
        assert res.valid
        f = only(res, "checkpoint-eof")
        assert f.offset == len(data) and "fails over to checkpoint 1" in f.message
        # one byte short of the CHECKPOINT: no complete checkpoint
        bad = check(tmp_path, data[:-1])
        assert sig(only(bad, "truncated"))[1] == ERROR

    @pytest.mark.parametrize("bare", [True, False])
    def test_end_after_unfinished_checkpoint(self, tmp_path: Path, bare: bool) -> None:
        def body(w: LibxcWriter) -> None:
            minimal_hvm_libxc(w)
            w.checkpoint()

        def tail(w: LibxcWriter) -> None:
            w.page_data([1, 2])
            w.tsc_info()
            w.end()
        if bare:
            data = libxc_custom(lambda w: (body(w), tail(w)))
        else:
            data = libxl_custom(lambda lw, w: (body(w), lw.checkpoint_end(), tail(w)))
        res = check(tmp_path, data)
        assert res.valid
        f = only(res, "end-discards-checkpoint")
        assert sig(f) == ("end-discards-checkpoint", WARNING, RESTORE, True)
        assert "2 records" in f.message
        assert f.offset == len(data) - 8

    def test_end_right_after_complete_checkpoint_is_clean(self, tmp_path: Path) -> None:
        data = libxc_custom(lambda w: (minimal_hvm_libxc(w), w.checkpoint(), w.end()))
        res = check(tmp_path, data)
        assert res.valid and res.findings == []


# ==========================================================================
# 4. Big-endian streams
# ==========================================================================


class TestBigEndian:
    @pytest.mark.parametrize("guest", ["hvm", "pv"])
    def test_libxc_be(self, tmp_path: Path, guest: str) -> None:
        data = image(envelope="libxc", guest=guest, pages=20, batch=7, vcpus=2, endian=">")
        assert data[12:16] == b"\0\0\0\3" and data[16:18] == b"\0\1"  # hand check: version, BE
        res = check(tmp_path, data)
        f = only(res, "ihdr-big-endian")
        assert sig(f) == ("ihdr-big-endian", ERROR, RESTORE, False)
        s = res.summary
        assert s["pages"] == 20 and s["page_records"] == 3 and s["highest_pfn"] == 19
        assert s["libxc"]["endian"] == "big" and s["guest_type"] == guest
        assert s["vcpus"] == [0, 1]
        assert s["record_counts"]["libxc:END"] == 1

    def test_libxl_be(self, tmp_path: Path) -> None:
        data = image(envelope="libxl", pages=20, batch=7, endian=">")
        assert data[12:16] == b"\0\0\0\1"
        res = check(tmp_path, data)
        assert sigs(res) == [("libxl-big-endian", ERROR, TOOLSTACK, False),
                             ("ihdr-big-endian", ERROR, RESTORE, False)]
        s = res.summary
        assert s["pages"] == 20 and s["page_records"] == 3
        assert s["libxl"]["endian"] == "big" and s["libxl"]["xenstore_keys"] == 3
        assert s["libxl"]["emulator_context_bytes"] == 64
        assert s["record_counts"]["libxl:END"] == 1

    def test_libxl_be_colo(self, tmp_path: Path) -> None:
        res = check(tmp_path, image(envelope="libxl", pages=20, endian=">", checkpoints=2,
                                    colo=True))
        assert rules(res) == ["libxl-big-endian", "ihdr-big-endian", "checkpoint-eof"]
        assert res.summary["checkpoints"] == {"kind": "colo", "checkpoint_records": 2,
                                              "complete": 2}


# ==========================================================================
# 5. Truncation of plain images
# ==========================================================================


def _structures(its: List[Item]) -> List[Item]:
    return [it for it in its if it.kind in ("Header", "XlConfig", "Record")]


class TestTruncation:
    @pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl"])
    def test_every_boundary(self, tmp_path: Path, envelope: str) -> None:
        data = image(envelope=envelope)
        structs = _structures(items_of(tmp_path, data))
        assert structs[-1].end == len(data)
        wrong_layer = []
        for it in structs:
            cut = it.offset
            res = check(tmp_path, data[:cut])
            f = only(res, "truncated")
            assert sig(f) == ("truncated", ERROR, RESTORE, False), cut
            assert f.offset == cut, (cut, it, f)
            if it.kind == "Record":
                assert f.what.startswith(f"record #{it.index}"), (cut, f.what)
            else:
                assert "header" in f.what, (cut, f.what)
            if cut and f.layer != it.layer:
                wrong_layer.append((cut, it.name, it.layer, f.layer))
        # the finding names the layer of the structure that is missing
        assert wrong_layer == []

    @pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl"])
    def test_inside_every_structure(self, tmp_path: Path, envelope: str) -> None:
        data = image(envelope=envelope)
        for it in _structures(items_of(tmp_path, data)):
            cuts = [it.offset + 3]
            if it.kind == "Record" and it.length:
                cuts += [it.offset + 8 + 1, it.offset + 8 + it.length - 1]
            elif it.end - it.offset > 8:
                cuts += [it.offset + 8, it.end - 1]
            for cut in cuts:
                res = check(tmp_path, data[:cut])
                f = only(res, "truncated")
                assert f.severity == ERROR
                assert it.offset <= f.offset <= cut, (cut, it, f)
                if it.kind == "Record":
                    assert f.what.startswith(f"record #{it.index}"), (cut, f.what)
                    if cut >= it.offset + 8:  # inside the body
                        assert f.offset == it.offset + 8
                        assert f.what == f"record #{it.index} ({it.name})"
                        assert f"found end of stream after {cut - it.offset - 8} bytes" \
                            in f.message
                    else:
                        assert f.offset == it.offset
                else:
                    assert "header" in f.what

    def test_libxl_record_after_libxc_end_is_libxl_layer(self, tmp_path: Path) -> None:
        data = image(envelope="libxl")
        its = items_of(tmp_path, data)
        xs = next(it for it in its if it.name == "EMULATOR_XENSTORE_DATA")
        got = []
        for cut in (xs.offset, xs.offset + 5):
            f = only(check(tmp_path, data[:cut]), "truncated")
            assert f.offset == xs.offset
            got.append(f.layer)
        # and the same inside the first checkpoint's libxl section
        data = image(envelope="libxl", pages=8, checkpoints=1)
        its = items_of(tmp_path, data)
        xs = next(it for it in its if it.name == "EMULATOR_XENSTORE_DATA")
        for cut in (xs.offset, xs.offset + 5):
            f = only(check(tmp_path, data[:cut]), "truncated")
            assert f.offset == xs.offset
            got.append(f.layer)
        assert got == ["libxl"] * 4

    def test_record_length_beyond_file(self, tmp_path: Path) -> None:
        data = image(envelope="libxc")
        # cut off the END record and add a record claiming a long body
        data = data[:-8] + struct.pack("<II", 0x0D, 0x1000) + b"\0" * 16
        f = only(check(tmp_path, data), "truncated")
        assert f.offset == len(data) - 16
        assert "found end of stream after 16 bytes" in f.message

    @pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl"])
    def test_cli_exit_status(self, tmp_path: Path, envelope: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
        data = image(envelope=envelope)
        its = _structures(items_of(tmp_path, data))
        for it in (its[1], its[len(its) // 2], its[-1]):
            p = write_file(tmp_path, data[:it.offset + 1])
            assert main(["verify", str(p)]) == 1
            out = capsys.readouterr()
            assert "INVALID (1 error)" in out.out
            assert "found end of stream" in out.err

    def test_cli_exit_status_subprocess(self, tmp_path: Path) -> None:
        data = image(envelope="xl")
        p = write_file(tmp_path, data[: len(data) // 2])
        r = subprocess.run([sys.executable, "-m", "xenstream", "verify", "-q", str(p)],
                           capture_output=True, text=True)
        assert r.returncode == 1 and r.stdout == "" and r.stderr == ""
        p2 = write_file(tmp_path, data)
        assert subprocess.run([sys.executable, "-m", "xenstream", "verify", "-q", str(p2)],
                              capture_output=True).returncode == 0


# ==========================================================================
# 6. Detection
# ==========================================================================


def _legacy_head(width: int, guest: str) -> bytes:
    """First 16 bytes of a legacy image, by hand (xen-formats.md section 4.1)."""
    if width == 4 and guest == "pv":
        head = struct.pack("<II", 0x8000, 0xFFFFFFFF) + struct.pack("<II", 0x78656E76, 0)
    elif width == 8 and guest == "pv":
        head = struct.pack("<QQ", 0x8000, 0xFFFFFFFFFFFFFFFF)
    elif width == 4:
        head = struct.pack("<Ii", 0x8000, 1024) + b"\0" * 8  # a 1024-page batch
    else:
        head = struct.pack("<Qi", 0x8000, -3) + b"\0" * 4  # chunk id -3
    assert len(head) == 16
    return head + b"\x5a" * 48


class TestDetection:
    @pytest.mark.parametrize("envelope,layers", [("libxc", ["libxc"]),
                                                 ("libxl", ["libxl", "libxc"]),
                                                 ("xl", ["xl", "libxl", "libxc"])])
    def test_detected(self, tmp_path: Path, envelope: str, layers: List[str]) -> None:
        res = check(tmp_path, image(envelope=envelope))
        assert res.valid and res.layers == layers
        forced = check(tmp_path, image(envelope=envelope), format=envelope)
        assert forced.valid and forced.layers == layers

    @pytest.mark.parametrize("actual,forced", [(a, f) for a in ("libxc", "libxl", "xl")
                                               for f in ("libxc", "libxl", "xl") if a != f])
    def test_wrong_format_forced(self, tmp_path: Path, actual: str, forced: str) -> None:
        res = check(tmp_path, image(envelope=actual), format=forced)
        f = only(res, "format-mismatch")
        assert sig(f) == ("format-mismatch", ERROR, SPEC, False)
        assert f"expected a {forced} stream" in f.message
        assert f"{actual} stream" in f.message
        assert f.offset == 0

    def test_wrong_format_forced_cli(self, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        p = write_file(tmp_path, image(envelope="libxl"))
        assert main(["verify", "--format", "xl", str(p)]) == 1
        err = capsys.readouterr().err
        assert "xl" in err and "libxl stream" in err

    @pytest.mark.parametrize("data", [b"hello world, this is not a Xen image" * 3,
                                      b"\0" * 64, b"\x01" * 9])
    def test_garbage(self, tmp_path: Path, data: bytes) -> None:
        res = check(tmp_path, data)
        f = only(res, "unrecognised")
        assert sig(f) == ("unrecognised", ERROR, SPEC, False)
        assert res.layers == []

    def test_forced_format_on_garbage(self, tmp_path: Path) -> None:
        f = only(check(tmp_path, b"garbage!" * 4, format="libxl"), "format-mismatch")
        assert "no known format" in f.message

    def test_empty_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        res = check(tmp_path, b"")
        f = only(res, "truncated")
        assert f.offset == 0 and f.severity == ERROR and "empty" in f.message
        p = write_file(tmp_path, b"")
        assert main(["verify", str(p)]) == 1

    @pytest.mark.parametrize("width,guest", [(4, "pv"), (8, "pv"), (4, "hvm"), (8, "hvm")])
    def test_bare_legacy(self, tmp_path: Path, width: int, guest: str) -> None:
        # the hand-made first 16 bytes (and filler): the drop-in's detection
        res = check(tmp_path, _legacy_head(width, guest), reject_legacy=True)
        f = only(res, "legacy-stream-rejected")
        assert sig(f) == ("legacy-stream-rejected", ERROR, SPEC, False)
        assert f.offset == 0 and f.layer == "legacy"
        assert "legacy stream: convert it" in f.message
        assert f"{guest.upper()} stream from a {width * 8}-bit toolstack" in f.message
        assert res.layers == ["legacy"]
        assert res.summary["legacy"] == {"container": "bare", "width": width * 8,
                                         "guest_type": guest}

    @pytest.mark.parametrize("width,guest", [(4, "pv"), (8, "pv"), (4, "hvm"), (8, "hvm")])
    def test_bare_legacy_real_stream(self, tmp_path: Path, width: int, guest: str) -> None:
        data = legacy_stream(guest, width)
        # the detection octets of xen-formats.md section 4.1, as _legacy_head has them
        ul = "<I" if width == 4 else "<Q"
        assert struct.unpack_from(ul, data)[0] == 8  # p2m_size
        if guest == "pv":
            assert struct.unpack_from(ul, data, width)[0] == (1 << (8 * width)) - 1
        else:
            assert struct.unpack_from("<i", data, width)[0] == -7  # TSC_INFO chunk first
        res = check(tmp_path, data)
        # bare: nothing at HEAD converts it (the spec's "shall be handled by translating")
        f = only(res, "legacy-stream-unconverted")
        assert sig(f) == ("legacy-stream-unconverted", WARNING, SPEC, False)
        assert f.offset == 0 and f.layer == "legacy"
        assert f"{guest.upper()} stream from a {width * 8}-bit toolstack" in f.message
        assert res.valid and res.layers == ["legacy"]
        lg = res.summary["legacy"]
        assert {k: lg[k] for k in ("container", "width", "guest_type")} == {
            "container": "bare", "width": width * 8, "guest_type": guest}
        assert lg["guest_width"] == (None if guest == "hvm" else width * 8)

    def test_legacy_hvm_without_device_model_record(self, tmp_path: Path) -> None:
        # the 4.5 restorer reads a 21-byte signature after the HVM context:
        # "Error reading QEMU signature" at end of input
        data = legacy_stream("hvm", 8, qemu="none")
        res = check(tmp_path, xl_image(streamv2=False, payload=data))
        assert rules(res) == ["legacy-stream", "legacy-qemu-missing"]
        f = one_of(res, "legacy-qemu-missing")
        assert sig(f) == ("legacy-qemu-missing", ERROR, RESTORE, False)
        assert f.layer == "legacy" and not res.valid

    def test_legacy_filler_after_detected_head_is_an_error(self, tmp_path: Path) -> None:
        """Detected from its first bytes, then followed: filler is no legacy stream."""
        res = check(tmp_path, _legacy_head(8, "pv"))
        assert one_of(res, "legacy-stream-unconverted").severity == WARNING
        assert not res.valid and [f.layer for f in res.errors] == ["legacy"]


# ==========================================================================
# 7. The JSON document
# ==========================================================================


def _json_cases() -> List[Tuple[str, bytes]]:
    return [
        ("valid-xl", image(envelope="xl")),
        ("valid-pv-libxc", image(envelope="libxc", guest="pv", pages=8, vcpus=2)),
        ("invalid-xenstore", libxl_stream(emu=False, after=lambda lw: lw.xenstore_data(
            {}, raw=b"/abs\0v\0"))),
        ("checkpointed-colo", image(envelope="xl", pages=8, checkpoints=2, colo=True)),
        ("legacy", _legacy_head(8, "pv")),
        ("legacy-in-xl", xl_image(streamv2=False, payload=_legacy_head(4, "hvm"))),
        ("legacy-real", legacy_stream("pv", 4)),
        ("legacy-real-in-xl", xl_image(streamv2=False, payload=legacy_stream("hvm", 4))),
        ("truncated", image(envelope="libxl")[:100]),
        ("garbage", b"not a xen image at all!!"),
        ("big-endian", image(envelope="libxl", endian=">")),
    ]


@pytest.fixture(scope="module")
def schema() -> Dict[str, Any]:
    doc = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc  # type: ignore[no-any-return]


class TestJson:
    @pytest.mark.parametrize("name,data", _json_cases(), ids=[c[0] for c in _json_cases()])
    def test_document_validates_and_matches(self, tmp_path: Path, schema: Dict[str, Any],
                                            capsys: pytest.CaptureFixture[str], name: str,
                                            data: bytes) -> None:
        p = write_file(tmp_path, data)
        rc = main(["verify", "--json", str(p)])
        doc = load_json(capsys.readouterr().out)
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
        res = check(tmp_path, data)
        assert rc == (0 if res.valid else 1)
        assert doc["valid"] is res.valid
        assert doc["file"] == str(p)
        assert doc["layers"] == res.layers
        assert doc["findings"] == [f.to_json() for f in res.findings]
        assert doc["summary"]["records"] == sum(doc["summary"]["record_counts"].values())

    def test_key_fields(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        schema: Dict[str, Any]) -> None:
        data = libxl_stream(emu=False, after=lambda lw: (
            lw.xenstore_data({}, raw=b"/abs\0v\0"), lw.emulator_context(b"QEVM0000")))
        xl_data = xl_image(payload=data)
        p = write_file(tmp_path, xl_data)
        assert main(["verify", "--json", str(p)]) == 1
        doc = load_json(capsys.readouterr().out)
        jsonschema.validate(doc, schema)
        assert doc["schema_version"] == 2
        assert doc["valid"] is False
        assert doc["layers"] == ["xl", "libxl", "libxc"]
        (f,) = doc["findings"]
        assert f["rule"] == "libxl-xenstore-key-absolute"
        assert f["severity"] == "error" and f["authority"] == "toolstack"
        assert f["restore_tolerates"] is False
        assert f["source"] == ("tools/libs/light/libxl_dom_save.c: "
                               "libxl__restore_emulator_xenstore_data()")
        assert f["layer"] == "libxl" and f["record_type"] == "EMULATOR_XENSTORE_DATA"
        xs_off = xl_data.index(b"/abs\0") - 16
        assert f["offset"] == xs_off
        assert f["record_index"] == 9
        counts = doc["summary"]["record_counts"]
        assert counts == {
            "libxc:END": 1, "libxc:HVM_CONTEXT": 1, "libxc:HVM_PARAMS": 1,
            "libxc:PAGE_DATA": 1, "libxc:STATIC_DATA_END": 1, "libxc:X86_CPUID_POLICY": 1,
            "libxc:X86_MSR_POLICY": 1, "libxc:X86_TSC_INFO": 1,
            "libxl:EMULATOR_CONTEXT": 1, "libxl:EMULATOR_XENSTORE_DATA": 1,
            "libxl:END": 1, "libxl:LIBXC_CONTEXT": 1}
        assert doc["summary"]["bytes"] == len(xl_data)
        assert doc["summary"]["checkpoints"] == {"kind": None, "checkpoint_records": 0,
                                                 "complete": 0}

    def test_checkpointed_summary(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  schema: Dict[str, Any]) -> None:
        p = write_file(tmp_path, image(envelope="libxl", pages=8, checkpoints=3))
        assert main(["verify", "--json", str(p)]) == 0
        doc = load_json(capsys.readouterr().out)
        jsonschema.validate(doc, schema)
        assert doc["valid"] is True
        assert [f["rule"] for f in doc["findings"]] == ["checkpoint-eof"]
        assert doc["findings"][0]["severity"] == "warning"
        assert doc["summary"]["checkpoints"] == {"kind": "remus", "checkpoint_records": 3,
                                                 "complete": 3}
        assert doc["summary"]["record_counts"]["libxl:CHECKPOINT_END"] == 3

    def test_legacy_summary(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            schema: Dict[str, Any]) -> None:
        p = write_file(tmp_path, legacy_stream("pv", 4))
        assert main(["verify", "--json", str(p)]) == 0
        doc = load_json(capsys.readouterr().out)
        jsonschema.validate(doc, schema)
        assert doc["layers"] == ["legacy"] and doc["valid"] is True
        assert doc["summary"]["legacy"] == {
            "container": "bare", "width": 32, "guest_type": "pv", "p2m_size": 8, "pages": 8,
            "batches": 1, "checkpoints": 1, "verify_mode": False, "qemu_record": None,
            "guest_width": 32}
        assert doc["summary"]["guest_type"] == "pv"
        assert [(f["rule"], f["severity"]) for f in doc["findings"]] == [
            ("legacy-stream-unconverted", "warning")]


# ==========================================================================
# 8. Trailing data
# ==========================================================================


class TestTrailingData:
    @pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl"])
    @pytest.mark.parametrize("extra", [b"\0", b"junk" * 100])
    def test_trailing_data_warns(self, tmp_path: Path, envelope: str, extra: bytes,
                                 capsys: pytest.CaptureFixture[str]) -> None:
        base = image(envelope=envelope)
        res = check(tmp_path, base + extra)
        assert res.valid
        f = only(res, "trailing-data")
        assert sig(f) == ("trailing-data", WARNING, SPEC, True)
        assert f.offset == len(base)
        assert f"{len(extra)} bytes after the final END" in f.message
        p = write_file(tmp_path, base + extra)
        assert main(["verify", str(p)]) == 0
        assert "warning" in capsys.readouterr().out

    def test_no_trailing_check_when_disabled(self, tmp_path: Path) -> None:
        res = check(tmp_path, image(envelope="libxl") + b"xx", check_trailing=False)
        assert res.valid and res.findings == []
