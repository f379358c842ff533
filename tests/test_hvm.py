"""Tests for xenstream.hvm: the x86 HVM context blob.

Broken blobs are assembled here with ``struct`` straight from the reference
tables (xen-formats.md section 5), not with hvm.build_context, so a mistake
shared by the builder and the checker cannot hide.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Set, Tuple

import pytest

from xenstream.findings import CONVENTION, ERROR, RESTORE, WARNING
from xenstream.formats import hvm

MAGIC = 0x54381286
END_BYTES = b"\x00" * 8


def desc(typecode: int, instance: int, length: int) -> bytes:
    return struct.pack("<HHI", typecode, instance, length)


def header(magic: int = MAGIC, version: int = 1, instance: int = 0) -> bytes:
    body = struct.pack("<IIQII", magic, version, 0xFFFFFFFFFFFFFFFF, 0x000806EC, 2_000_000)
    return desc(1, instance, 24) + body


def entry(typecode: int, instance: int, body: bytes) -> bytes:
    return desc(typecode, instance, len(body)) + body


def blob(*entries: bytes, end: bytes = END_BYTES) -> bytes:
    return header() + b"".join(entries) + end


def cpu_body(length: int = 1032, **at: int) -> bytes:
    """A CPU record that loads: CR0.ET set, flags FPU_INITIALISED (1032 only)."""
    b = bytearray(length)
    struct.pack_into("<Q", b, 656, 0x10)  # cr0 = ET
    if length >= 1028:
        struct.pack_into("<I", b, 1024, 1)
    for off, val in at.items():
        struct.pack_into("<Q", b, int(off[1:]), val)
    return bytes(b)


def problems(data: bytes, nr_vcpus: Optional[int] = None) -> List[hvm.Problem]:
    return hvm.check_context(data, nr_vcpus=nr_vcpus)


def rules(data: bytes, nr_vcpus: Optional[int] = None) -> Set[Tuple[str, str, str, bool]]:
    return {(p.rule, p.severity, p.authority, p.tolerated) for p in problems(data, nr_vcpus)}


def only(data: bytes, nr_vcpus: Optional[int] = None) -> hvm.Problem:
    found = problems(data, nr_vcpus)
    assert len(found) == 1, found
    return found[0]


# -- layouts and literal bytes ----------------------------------------------------


def test_layout_sizes() -> None:
    assert hvm.DESCRIPTOR.size == 8
    assert hvm.HEADER.size == 24
    assert hvm.HVM_SAVE_MAGIC == MAGIC and hvm.HVM_SAVE_VERSION == 1


def test_header_and_end_literal_bytes() -> None:
    literal = bytes.fromhex(
        "01000000" "18000000"  # descriptor: typecode 1, instance 0, length 24
        "86123854" "01000000"  # magic, version
        "ffffffffffffffff"  # changeset (unknown)
        "ec060800" "80841e00"  # cpuid 0x000806ec, gtsc_khz 2000000
        "0000000000000000"  # END
    )
    assert header() + END_BYTES == literal
    built = hvm.build_context([
        (1, 0, hvm.HEADER.pack(magic=MAGIC, version=1, changeset=2**64 - 1,
                               cpuid=0x000806EC, gtsc_khz=2_000_000)),
        (0, 0, b""),
    ])
    assert built == literal
    assert problems(literal) == []
    assert list(hvm.iter_entries(literal)) == [hvm.Entry(0, 1, 0, 24)]


def test_typecode_table() -> None:
    assert set(hvm.TYPECODES) == set(range(21))
    sizes = {0: 0, 1: 24, 2: 1032, 3: 8, 4: 400, 5: 32, 6: 1024, 7: 16, 8: 8, 9: 8, 10: 56,
             11: 24, 12: 1048, 13: 8, 14: 240, 15: 32, 17: 216, 18: 32, 19: 8}
    for code, size in sizes.items():
        assert hvm.TYPECODES[code].size == size, hvm.TYPECODES[code]
    per_vcpu = {c for c, t in hvm.TYPECODES.items() if t.per == hvm.PER_VCPU}
    assert per_vcpu == {2, 5, 6, 14, 16, 17, 18, 19, 20}
    zero_extend = {c for c, t in hvm.TYPECODES.items() if t.kind == hvm.KIND_ZERO_EXTEND}
    assert zero_extend == {5, 11, 15, 17, 18}
    assert {c for c, t in hvm.TYPECODES.items() if t.kind == hvm.KIND_CUSTOM} == {2, 16, 20}
    assert set(hvm.TYPECODES[2].older) == {1016, 1024}


# -- sample_context -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("cr3", [0, 0x1234000])
def test_sample_context_valid(n: int, cr3: int) -> None:
    data = hvm.sample_context(n, cr3=cr3)
    assert hvm.check_context(data, nr_vcpus=n) == []
    assert hvm.cpu_instances(data) == set(range(n))
    assert data[-8:] == END_BYTES
    names = [e.name for e in hvm.iter_entries(data)]
    expected = (["HEADER"] + ["CPU"] * n + ["PIC", "PIC", "IOAPIC"] + ["LAPIC"] * n
                + ["LAPIC_REGS"] * n + ["PCI_IRQ", "ISA_IRQ", "PCI_LINK", "PIT", "RTC", "HPET",
                                        "PMTIMER"]
                + ["MTRR"] * n + ["VMCE_VCPU"] * n + ["TSC_ADJUST"] * n)
    assert names == expected
    codes = [e.typecode for e in hvm.iter_entries(data)]
    assert codes == sorted(codes)


def test_sample_context_header_fields() -> None:
    data = hvm.sample_context(1, cpuid=0x00A20F12, gtsc_khz=3_000_000)
    assert struct.unpack_from("<HHI", data, 0) == (1, 0, 24)
    magic, version, _cs, cpuid, khz = struct.unpack_from("<IIQII", data, 8)
    assert (magic, version, cpuid, khz) == (MAGIC, 1, 0x00A20F12, 3_000_000)


def test_sample_too_many_vcpus_for_instance_check() -> None:
    data = hvm.sample_context(4)
    got = rules(data, nr_vcpus=2)
    assert got == {("hvm-instance", ERROR, RESTORE, False)}
    # CPU, LAPIC, LAPIC_REGS, MTRR, VMCE_VCPU, TSC_ADJUST for vcpus 2 and 3
    assert len(problems(data, nr_vcpus=2)) == 12


# -- decode_cpu -------------------------------------------------------------------------


def test_decode_cpu_reads_sample_values() -> None:
    data = hvm.sample_context(2, rip=0xFFFFFFFF81000000, cr3=0x1234000)
    cpus = [e for e in hvm.iter_entries(data) if e.typecode == 2]
    assert [c.length for c in cpus] == [1032, 1032]
    for c in cpus:
        r = hvm.decode_cpu(c.body(data))
        assert r["rip"] == 0xFFFFFFFF81000000
        assert r["cr3"] == 0x1234000
        assert r["cr0"] == 0x80050033
        assert r["msr_efer"] & 0x500 == 0x500  # LME, LMA
        assert r["cs_sel"] == 0x10 and r["cs_arbytes"] & 0x200  # 64-bit code segment
        assert r["flags"] == 1 and r["pad0"] == 0
        assert r["msr_tsc_aux"] == c.instance
        for key in ("rax", "r15", "rflags", "cr2", "cr4", "dr0", "dr7", "ldtr_base", "gdtr_limit"):
            assert key in r


def test_decode_cpu_real_mode_sample() -> None:
    data = hvm.sample_context(1)
    cpu = next(e for e in hvm.iter_entries(data) if e.typecode == 2)
    body = cpu.body(data)
    r = hvm.decode_cpu(body)
    assert (r["rip"], r["cr3"], r["cs_sel"], r["cs_base"]) == (0xFFF0, 0, 0xF000, 0xFFFF0000)
    assert r["cr0"] & 0x80000001 == 0 and r["cr0"] & 0x10
    # the same values straight from the reference's offsets
    assert struct.unpack_from("<Q", body, 640)[0] == 0xFFF0
    assert struct.unpack_from("<I", body, 736)[0] == 0xF000
    assert struct.unpack_from("<Q", body, 808)[0] == 0xFFFF0000
    assert struct.unpack_from("<I", body, 1024)[0] == 1


def test_decode_cpu_reference_offsets() -> None:
    b = bytearray(1032)
    fields = {"rsp": (568, "Q"), "rip": (640, "Q"), "rflags": (648, "Q"), "cr0": (656, "Q"),
              "cr3": (672, "Q"), "cr4": (680, "Q"), "dr7": (728, "Q"), "cs_sel": (736, "I"),
              "ldtr_sel": (764, "I"), "cs_limit": (768, "I"), "idtr_limit": (800, "I"),
              "gdtr_limit": (804, "I"), "cs_base": (808, "Q"), "gdtr_base": (880, "Q"),
              "cs_arbytes": (888, "I"), "ldtr_arbytes": (916, "I"), "sysenter_cs": (920, "Q"),
              "msr_efer": (992, "Q"), "msr_tsc_aux": (1000, "Q"), "tsc": (1008, "Q"),
              "pending_event": (1016, "I"), "error_code": (1020, "I"), "flags": (1024, "I")}
    for i, (off, code) in enumerate(fields.values()):
        struct.pack_into("<" + code, b, off, 0x100 + i)
    r = hvm.decode_cpu(bytes(b))
    for i, name in enumerate(fields):
        assert r[name] == 0x100 + i, name


def test_decode_cpu_compat_layouts() -> None:
    b = bytearray(1016)
    struct.pack_into("<QQII", b, 992, 0xD01, 0x123456789, 0x80000E0D, 7)  # efer tsc pending error
    r = hvm.decode_cpu(bytes(b))
    assert (r["msr_efer"], r["tsc"], r["pending_event"], r["error_code"]) == (
        0xD01, 0x123456789, 0x80000E0D, 7)
    assert r["msr_tsc_aux"] == 0 and r["flags"] == 1
    b = bytearray(1024)
    struct.pack_into("<QQII", b, 1000, 3, 0x55, 0, 0)  # tsc_aux, tsc
    r = hvm.decode_cpu(bytes(b))
    assert (r["msr_tsc_aux"], r["tsc"], r["flags"]) == (3, 0x55, 1)


# -- iter_entries -----------------------------------------------------------------------


def test_iter_entries_offsets() -> None:
    data = blob(entry(3, 0, b"\x00" * 8), entry(19, 0, b"\x00" * 8), entry(2, 0, cpu_body()))
    got = [(e.offset, e.typecode, e.instance, e.length) for e in hvm.iter_entries(data)]
    assert got == [(0, 1, 0, 24), (32, 3, 0, 8), (48, 19, 0, 8), (64, 2, 0, 1032)]
    assert hvm.Entry(64, 2, 0, 1032).body_offset == 72
    assert [e.name for e in hvm.iter_entries(data)] == ["HEADER", "PIC", "TSC_ADJUST", "CPU"]
    assert hvm.Entry(0, 99, 0, 0).name == "UNKNOWN(99)"


def test_iter_entries_sample_offsets() -> None:
    data = hvm.sample_context(1)
    off = 0
    for e in hvm.iter_entries(data):
        assert e.offset == off
        assert struct.unpack_from("<HHI", data, off) == (e.typecode, e.instance, e.length)
        off += 8 + e.length
    assert off == len(data) - 8


def test_iter_entries_stops_silently() -> None:
    data = header() + desc(19, 0, 100) + b"\x00" * 8
    assert [e.typecode for e in hvm.iter_entries(data)] == [1]
    assert [e.typecode for e in hvm.iter_entries(header() + b"\x01\x00")] == [1]
    assert [e.typecode for e in hvm.iter_entries(blob() + entry(19, 0, bytes(8)))] == [1]
    assert list(hvm.iter_entries(b"")) == []


def test_cpu_instances() -> None:
    data = blob(entry(2, 0, cpu_body()), entry(2, 3, cpu_body()), entry(19, 1, bytes(8)))
    assert hvm.cpu_instances(data) == {0, 3}


# -- header rules ------------------------------------------------------------------------


def test_header_not_first() -> None:
    p = problems(entry(19, 0, bytes(8)) + header() + END_BYTES)
    got = {(x.rule, x.offset) for x in p}
    assert ("hvm-header-first", 0) in got
    assert ("hvm-header-repeated", 16) in got
    assert all(x.authority == RESTORE and not x.tolerated for x in p)


def test_header_empty_and_short() -> None:
    assert rules(b"") == {("hvm-header-first", ERROR, RESTORE, False)}
    assert rules(b"\x01\x00") == {("hvm-header-first", ERROR, RESTORE, False)}
    assert rules(END_BYTES) == {("hvm-header-first", ERROR, RESTORE, False)}


def test_header_wrong_length() -> None:
    data = desc(1, 0, 16) + bytes(16) + END_BYTES
    p = only(data)
    assert (p.rule, p.offset) == ("hvm-header-first", 0)
    assert "found length 16" in p.message
    # a header that runs off the end of the blob
    assert only(header()[:20]).rule == "hvm-header-first"


def test_header_magic_and_version() -> None:
    p = only(header(magic=0x12345678) + END_BYTES)
    assert (p.rule, p.severity, p.authority, p.tolerated) == ("hvm-header-magic", ERROR, RESTORE, False)
    assert "0x54381286" in p.message and "0x12345678" in p.message
    p = only(header(version=2) + END_BYTES)
    assert (p.rule, p.authority) == ("hvm-header-version", RESTORE)


def test_header_instance_tolerated() -> None:
    p = only(header(instance=1) + END_BYTES)
    assert (p.rule, p.authority, p.tolerated) == ("hvm-instance-nonzero", CONVENTION, True)


# -- typecodes, lengths, overruns -------------------------------------------------------


@pytest.mark.parametrize("typecode", [21, 22, 34, 35, 0xFFFF])
def test_typecode_unknown(typecode: int) -> None:
    p = only(blob(entry(typecode, 0, bytes(8))))
    assert (p.rule, p.severity, p.authority, p.tolerated, p.offset) == (
        "hvm-typecode-unknown", ERROR, RESTORE, False, 32)


def test_strict_length() -> None:
    p = only(blob(entry(3, 0, bytes(7))))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-entry-length", RESTORE, False)
    assert "expected length 8" in p.message and "found 7" in p.message
    assert only(blob(entry(19, 0, bytes(16)))).rule == "hvm-entry-length"


def test_zero_extend_lengths() -> None:
    lapic = struct.pack("<QIIQ", 0xFEE00800, 0, 2, 0)  # 24 bytes, the pre-4.21 size
    assert problems(blob(entry(5, 0, lapic))) == []
    assert problems(blob(entry(5, 0, lapic + bytes(8)))) == []
    assert problems(blob(entry(11, 0, bytes(16)))) == []  # RTC before 4.14
    p = only(blob(entry(5, 0, lapic + bytes(16))))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-entry-length", RESTORE, False)
    p = only(blob(entry(5, 0, lapic[:16])))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-entry-length-unusual", CONVENTION, True)


def test_cpu_lengths() -> None:
    for n in (1016, 1024, 1032):
        assert problems(blob(entry(2, 0, cpu_body(n)))) == [], n
    p = only(blob(entry(2, 0, cpu_body(1020))))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-entry-length-unusual", CONVENTION, True)
    p = only(blob(entry(2, 0, cpu_body(1040))))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-entry-length", RESTORE, False)


def test_entry_overrun() -> None:
    data = header() + desc(19, 0, 64) + bytes(8)
    p = only(data)
    assert (p.rule, p.severity, p.authority, p.offset) == ("hvm-entry-overrun", ERROR, RESTORE, 32)
    # a partial descriptor where END should be
    p = only(blob(end=b"\x00\x00\x00"))
    assert (p.rule, p.offset) == ("hvm-end-missing", 32)


# -- END ----------------------------------------------------------------------------------


def test_end_missing() -> None:
    p = only(blob(entry(19, 0, bytes(8)), end=b""))
    assert (p.rule, p.severity, p.authority, p.tolerated, p.offset) == (
        "hvm-end-missing", ERROR, RESTORE, False, 48)


def test_end_not_last() -> None:
    p = only(blob() + entry(19, 0, bytes(8)))
    assert (p.rule, p.severity, p.authority, p.tolerated, p.offset) == (
        "hvm-end-not-last", WARNING, CONVENTION, True, 32)


def test_end_nonzero_fields() -> None:
    p = only(blob(end=desc(0, 1, 0)))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-end-nonzero", CONVENTION, True)
    got = rules(blob(end=desc(0, 0, 4) + bytes(4)))
    assert got == {("hvm-end-nonzero", WARNING, CONVENTION, True), ("hvm-end-not-last", WARNING, CONVENTION, True)}


# -- instances, order, duplicates ----------------------------------------------------------


def test_instance_per_vcpu() -> None:
    data = blob(entry(2, 4, cpu_body()))
    assert problems(data) == []
    p = only(data, nr_vcpus=4)
    assert (p.rule, p.authority, p.tolerated, p.offset) == ("hvm-instance", RESTORE, False, 32)
    assert problems(data, nr_vcpus=5) == []


def test_instance_per_domain() -> None:
    master = bytes([0, 0xFB, 0, 0x08, 0, 0x40, 0x04, 0])
    slave = bytes([0, 0xFF, 0, 0x70, 0, 0x00, 0x00, 0])
    assert problems(blob(entry(3, 0, master), entry(3, 1, slave))) == []
    p = only(blob(entry(3, 0, master), entry(3, 2, slave)))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-pic-instance", RESTORE, False)
    p = only(blob(entry(7, 1, bytes(16))))
    assert (p.rule, p.authority, p.tolerated) == ("hvm-instance-nonzero", CONVENTION, True)


def test_order() -> None:
    p = only(blob(entry(19, 0, bytes(8)), entry(3, 0, bytes([0, 0, 0, 8, 0, 0x40, 0, 0]))))
    assert (p.rule, p.severity, p.authority, p.tolerated, p.offset) == (
        "hvm-order", WARNING, CONVENTION, True, 48)
    p = only(blob(entry(19, 1, bytes(8)), entry(19, 0, bytes(8))))
    assert p.rule == "hvm-order"


def test_duplicate() -> None:
    p = only(blob(entry(19, 0, bytes(8)), entry(19, 0, bytes(8))))
    assert (p.rule, p.authority, p.tolerated, p.offset) == ("hvm-duplicate", CONVENTION, True, 48)


# -- CPU_XSAVE --------------------------------------------------------------------------------


def xsave_body(accum: int, xcr0: Optional[int] = None, bv: Optional[int] = None,
               xcomp: int = 0, reserved: int = 0) -> bytes:
    area = {0x3: 576, 0x7: 832}[accum]  # standard-format XSAVE size for xcr0_accum
    b = bytearray(24 + area)
    struct.pack_into("<QQQ", b, 0, accum, accum if xcr0 is None else xcr0, accum)
    struct.pack_into("<QQQ", b, 536, accum if bv is None else bv, xcomp, reserved)
    struct.pack_into("<I", b, 24 + 24, 0x1F80)  # MXCSR in the FXSAVE area
    return bytes(b)


def test_xstate_sizes() -> None:
    assert hvm.xstate_uncompressed_size(0x3) == 576
    assert hvm.xstate_uncompressed_size(0x7) == 832
    assert hvm.xstate_uncompressed_size(0x1F) == 1088
    assert hvm.xstate_uncompressed_size(0xE7) == 2688
    assert hvm.xstate_uncompressed_size(0x2E7) == 2696
    assert hvm.xstate_uncompressed_size(0x60207) == 11008


def test_xsave_valid() -> None:
    assert problems(blob(entry(16, 0, xsave_body(0x3)))) == []
    assert problems(blob(entry(16, 0, xsave_body(0x7)))) == []


def xsave_problem(body: bytes, rule_id: str = "hvm-cpu-xsave") -> hvm.Problem:
    p = only(blob(entry(16, 0, body)))
    assert (p.rule, p.offset) == (rule_id, 32)
    return p


def test_xsave_too_short() -> None:
    p = xsave_problem(bytes(599))
    assert (p.severity, p.authority, p.tolerated) == (ERROR, RESTORE, False)
    assert ">= 600" in p.message
    # shorter than xcr0_accum needs: refused since 4.8 (681aea049c), 4.6 and 4.7 copied it
    p = xsave_problem(xsave_body(0x7)[:-8], "hvm-cpu-xsave-short")
    assert (p.severity, p.authority, p.tolerated) == (ERROR, RESTORE, False)
    assert "expected length 856" in p.message


def test_xsave_oversize() -> None:
    # a zero excess is logged and cut off (hvm.c: hvm_load_cpu_xsave_states): a convention
    p = xsave_problem(xsave_body(0x7) + bytes(64), "hvm-cpu-xsave-oversize")
    assert (p.severity, p.authority, p.tolerated) == (WARNING, CONVENTION, True)
    p = xsave_problem(xsave_body(0x7) + b"\x01" + bytes(63))
    assert (p.severity, p.tolerated) == (ERROR, False)


def test_xsave_header_rules() -> None:
    # xcomp_bv and reserved words: validate_xstate() since 4.7 (d570d82291)
    p = xsave_problem(xsave_body(0x7, xcomp=(1 << 63) | 0x7), "hvm-cpu-xsave-header")
    assert "compacted" in p.message and not p.tolerated
    assert "xcomp_bv" in xsave_problem(xsave_body(0x7, xcomp=0x4), "hvm-cpu-xsave-header").message
    assert "reserved" in xsave_problem(xsave_body(0x7, reserved=1), "hvm-cpu-xsave-header").message
    assert "xstate_bv" in xsave_problem(xsave_body(0x3, bv=0x7)).message
    assert "xcr0 within" in xsave_problem(xsave_body(0x3, xcr0=0x7)).message
    assert "valid xcr0" in xsave_problem(xsave_body(0x3, xcr0=0x2)).message


def test_xsave_every_failing_check_is_reported() -> None:
    """Checks that arrived in different releases each report: the first
    failure alone would name the wrong last release that restores it."""
    ps = problems(blob(entry(16, 0, xsave_body(0x7, xcomp=0x4) + b"\x01" + bytes(63))))
    assert [p.rule for p in ps] == ["hvm-cpu-xsave-header", "hvm-cpu-xsave"], ps


def test_xsave_inactive_record_refused() -> None:
    # Xen < 4.12 wrote such records; HEAD's validate_xstate() refuses xcr0_accum 0:
    # an invalid xcr0 (x87 clear), and a 600-byte area is too long for it (zero excess)
    ps = problems(blob(entry(16, 0, bytes(600))))
    assert {p.rule for p in ps} == {"hvm-cpu-xsave", "hvm-cpu-xsave-oversize"}, ps
    assert any(p.severity == ERROR for p in ps)


# -- CPU_MSR ----------------------------------------------------------------------------------


def msr_body(*msrs: Tuple[int, int, int], count: Optional[int] = None) -> bytes:
    n = len(msrs) if count is None else count
    return struct.pack("<II", n, 0) + b"".join(struct.pack("<IIQ", *m) for m in msrs)


def test_msr_valid() -> None:
    body = msr_body((0x48, 0, 1), (0xC0011019, 0, 0xFF))
    assert len(body) == 40
    assert problems(blob(entry(20, 0, body))) == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (msr_body(), ">= 24"),
        (msr_body((0x48, 0, 1), count=2), "16 * count"),
        (msr_body((0x48, 0, 1)) + bytes(8), "16 * count"),
        (msr_body((0x48, 1, 1)), "_rsvd"),
        (msr_body((0x10, 0, 1)), "index"),  # IA32_TSC is not loaded this way
        (msr_body((0x48, 0, 1), (0xC0000080, 0, 0xD01)), "msr[1].index"),
    ],
)
def test_msr_rules(body: bytes, words: str) -> None:
    p = only(blob(entry(20, 0, body)))
    assert (p.rule, p.severity, p.authority, p.tolerated) == ("hvm-cpu-msr", ERROR, RESTORE, False)
    assert words in p.message


# -- record contents ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "words", "rule_id"),
    [
        ({"o656": 0x0}, "CR0.ET", "hvm-cpu-state"),
        ({"o656": 0x80000010}, "CR0.PG only with CR0.PE", "hvm-cpu-state"),
        ({"o656": 0x10 | (1 << 40)}, "reserved CR0", "hvm-cpu-state"),
        ({"o680": 1 << 12}, "CR4", "hvm-cpu-state"),  # LA57 is never allowed
        ({"o992": 0x400}, "EFER.LMA", "hvm-cpu-state"),
        ({"o992": 1 << 3}, "known EFER", "hvm-cpu-efer"),  # since 4.12 (ef0269c621)
        ({"o720": 1 << 32}, "DR6", "hvm-cpu-dr67"),  # since 4.18 (15987cb03f)
        ({"o1024": 3}, "flags", "hvm-cpu-flags"),
        ({"o1000": 1 << 32}, "MSR_TSC_AUX", "hvm-cpu-tsc-aux"),  # since 4.12 (5f5a7a6d36)
        ({"o672": 1 << 52}, "CR3", "hvm-cpu-cr3"),  # since 4.14 (80872597e6)
    ],
)
def test_cpu_state(at: Dict[str, int], words: str, rule_id: str) -> None:
    p = only(blob(entry(2, 0, cpu_body(**at))))
    assert (p.rule, p.authority, p.tolerated) == (rule_id, RESTORE, False)
    assert words in p.message


def test_cpu_pad0() -> None:
    b = bytearray(cpu_body())
    struct.pack_into("<I", b, 1028, 1)
    assert only(blob(entry(2, 0, bytes(b)))).rule == "hvm-cpu-flags"


def test_device_state() -> None:
    slave_as_master = bytes([0, 0xFF, 0, 0x70, 0, 0x40, 0, 0])
    assert only(blob(entry(3, 1, slave_as_master))).rule == "hvm-pic-state"
    assert only(blob(entry(9, 0, bytes([16, 0, 0, 0, 0, 0, 0, 0])))).rule == "hvm-pci-link"
    assert only(blob(entry(9, 0, bytes([5, 0, 0, 0, 1, 0, 0, 0])))).rule == "hvm-pci-link-pad"
    chan = struct.pack("<IHBBBBBBBBBB", 0x10000, 0, 0, 0, 0, 3, 3, 0, 3, 2, 0, 1)
    pit_ok = chan * 3 + struct.pack("<II", 0, 0)
    assert problems(blob(entry(10, 0, pit_ok))) == []
    gate_off = chan[:-1] + b"\x00"
    assert only(blob(entry(10, 0, gate_off + chan * 2 + bytes(8)))).rule == "hvm-pit-state"
    assert only(blob(entry(10, 0, chan * 3 + struct.pack("<II", 2, 0)))).rule == "hvm-pit-state"
    x2apic_disabled = struct.pack("<QIIQII", 0xFEE00400, 0, 2, 0, 0, 0)
    assert only(blob(entry(5, 0, x2apic_disabled))).rule == "hvm-lapic-state"
    mtrr = bytearray(240)
    struct.pack_into("<Q", mtrr, 224, 9)  # msr_mtrr_cap VCNT 9
    assert only(blob(entry(14, 0, bytes(mtrr)))).rule == "hvm-mtrr-state"
    viridian = bytearray(216)
    viridian[12] = 1
    assert only(blob(entry(17, 0, bytes(viridian)))).rule == "hvm-viridian-state"


def test_problem_messages_are_one_line() -> None:
    bad = blob(entry(2, 9, cpu_body(o656=0)), entry(22, 0, b""), entry(19, 0, bytes(3)), end=b"")
    found = problems(bad, nr_vcpus=1)
    assert {p.rule for p in found} >= {"hvm-instance", "hvm-typecode-unknown", "hvm-entry-length",
                                      "hvm-end-missing"}
    for p in found:
        assert "\n" not in p.message and p.message.startswith(("expected", "vcpu", "TSC", "CPU"))
