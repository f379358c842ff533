"""Per-release restorability (xenstream.releases, verify/convert --target-xen).

One writer-built image per row of the release table, judged on both sides of
the row's boundary: the release before the change and the release of the
change (for a backported row, also the stable point releases around the
backport).  The expected verdicts are written by hand in ``CASES``, each
next to a comment citing the Xen code that decides it (file, function, tag);
none is computed from the table.  A row with no case fails
``test_every_row_has_a_case``.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest

from xenstream import releases, rules
from xenstream.cli.main import main
from xenstream.consumers import restorability as rb
from xenstream.consumers.verify import Result, verify
from xenstream.formats import hvm, libxc, libxl
from xenstream.io import Source
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_config,
    write_libxc,
    xl_header,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "restorability.md"
SCHEMA = ROOT / "src" / "xenstream" / "schema" / "verify.schema.json"

R, N, H = releases.RESTORES, releases.REFUSED, releases.HOST

# -- images ----------------------------------------------------------------------------------

#: the HVM save-record lengths Xen 4.6 writes: CPU 1024 (no flags/pad0), LAPIC 24 (no
#: pending_esr), RTC 16 (no rtc_offset), VMCE_VCPU 24 (no mcg_ext_ctl)
OLD_LENGTHS = {hvm.CPU: 1024, hvm.LAPIC: 24, hvm.RTC: 16, hvm.VMCE_VCPU: 24}


def old_context(bodies: Optional[Dict[int, bytes]] = None,
                extra: Sequence[Tuple[int, int, bytes]] = ()) -> bytes:
    """One vcpu's HVM context with 4.6's record lengths; ``bodies`` replaces
    the body of a typecode, ``extra`` adds entries before END."""
    blob = hvm.sample_context(1)
    entries: List[Tuple[int, int, bytes]] = []
    for e in hvm.iter_entries(blob):
        body = e.body(blob)
        if e.typecode in OLD_LENGTHS:
            body = body[: OLD_LENGTHS[e.typecode]]
        if bodies and e.typecode in bodies:
            body = bodies[e.typecode]
        entries.append((e.typecode, e.instance, body))
    entries += list(extra)
    entries.append((hvm.END, 0, b""))
    return hvm.build_context(entries)


def patched(typecode: int, offset: int, fmt: str, value: int) -> Dict[int, bytes]:
    """``bodies`` for old_context(): the 4.6-length body of ``typecode`` with
    ``value`` packed at ``offset``."""
    blob = hvm.sample_context(1)
    (e,) = [e for e in hvm.iter_entries(blob) if e.typecode == typecode and e.instance == 0]
    body = bytearray(e.body(blob)[: OLD_LENGTHS.get(typecode, e.length)])
    struct.pack_into(fmt, body, offset, value)
    return {typecode: bytes(body)}


def hvm_image(*, version: int = 2, policies: bool = False, ctx: Optional[bytes] = None,
              params: Optional[Dict[int, int]] = None, tsc_mode: int = 0,
              emulator_id: int = libxl.EMULATOR_QEMU_UPSTREAM, colo: bool = False,
              extra: Optional[Callable[[Any], None]] = None, v2_sde: bool = False,
              before_ctx: Optional[Callable[[Any], None]] = None) -> bytes:
    """An xl file (STREAMv2) around libxl v2 and a libxc HVM stream of
    ``version``, as a 4.6-era saver writes it unless told otherwise."""
    spec = ImageSpec(guest="hvm", pages=4, vcpus=1)
    out = io.BytesIO()
    xl_header(out, default_config(spec))
    lw = LibxlWriter(out)
    lw.header()
    lw.libxc_context()
    w = lw.libxc(version=version)
    w.headers("hvm")
    if policies:
        w.cpuid_policy()
        w.msr_policy()
    if version >= 3 or v2_sde:
        w.static_data_end()
    w.page_data(range(4))
    w.tsc_info(mode=tsc_mode)
    if before_ctx is not None:
        before_ctx(w)
    w.hvm_context(old_context() if ctx is None else ctx)
    w.hvm_params(params if params is not None else {1: 3, 5: 2, 6: 1})
    if extra is not None:
        extra(w)
    if colo:
        w.checkpoint()
        lw.xenstore_data(spec.xenstore)
        lw.emulator_context(spec.emulator_context, emulator_id=emulator_id)
        lw.checkpoint_end()
        lw.checkpoint_state(libxl.CHECKPOINT_NEW)
        return out.getvalue()
    w.end()
    lw.xenstore_data(spec.xenstore)
    lw.emulator_context(spec.emulator_context, emulator_id=emulator_id)
    lw.end()
    return out.getvalue()


class _PvWriter(LibxcWriter):
    """The writer's own PV stream (write_libxc), with a TSC mode and extra
    records before END."""

    def __init__(self, out: Any, *, tsc_mode: int, extra: Optional[Callable[[Any], None]]) -> None:
        super().__init__(out, version=2)
        self._tsc_mode = tsc_mode
        self._extra = extra

    def tsc_info(self, mode: int = 0, **kw: Any) -> None:
        super().tsc_info(mode=self._tsc_mode, **kw)

    def end(self, **kw: Any) -> None:
        if self._extra is not None:
            self._extra(self)
        super().end(**kw)


def pv_image(*, width: int = 8, tsc_mode: int = 0,
             extra: Optional[Callable[[Any], None]] = None) -> bytes:
    """An xl file around a libxc v2 PV stream (4.6-era: no policies)."""
    spec = ImageSpec(guest="pv", width=width, version=2, policies=False, pages=16)
    out = io.BytesIO()
    xl_header(out, default_config(spec))
    lw = LibxlWriter(out)
    lw.header()
    lw.libxc_context()
    write_libxc(_PvWriter(out, tsc_mode=tsc_mode, extra=extra), spec, lw)
    lw.end()
    return out.getvalue()


def legacy_image(**kw: Any) -> bytes:
    out = io.BytesIO()
    write_legacy(out, LegacySpec(**kw))
    return out.getvalue()


def judge_all(tmp_path: Path, data: bytes) -> Tuple[Result, Dict[str, str]]:
    p = tmp_path / "img"
    p.write_bytes(data)
    with Source.open(str(p)) as src:
        res = verify(src, releases=True)
    return res, {rel: rb.judge(res, rel).outcome for rel in releases.RELEASES}


# -- the cases: one per row --------------------------------------------------------------------


class Case(NamedTuple):
    change: str
    build: Callable[[], bytes]
    #: release -> the verdict, written by hand from the Xen code cited in the comment
    expect: Dict[str, str]
    rule: str  # the rule that decides it


def _msr(index: int) -> bytes:
    return struct.pack("<II", 1, 0) + struct.pack("<IIQ", index, 0, 0)


def _params(extra: Dict[int, int]) -> Dict[int, int]:
    return {1: 3, 5: 2, 6: 1, **extra}


def xsave(accum: int, xcomp: int = 0) -> bytes:
    """A CPU_XSAVE body: xfeature_mask, xcr0, xcr0_accum, then the standard area."""
    area = {0x3: 576, 0x7: 832}[accum]
    b = bytearray(24 + area)
    struct.pack_into("<QQQ", b, 0, accum, accum, accum)
    struct.pack_into("<QQ", b, 24 + 512, accum, xcomp)  # xstate_bv, xcomp_bv
    struct.pack_into("<I", b, 24 + 24, 0x1F80)  # MXCSR
    return bytes(b)


def pv_xsave(accum: int) -> bytes:
    """An X86_PV_VCPU_XSAVE payload: xcr0, xcr0_accum, then the standard
    XSAVE area of ``accum`` (XEN_DOMCTL_setvcpuextstate's layout)."""
    area = hvm.xstate_uncompressed_size(accum)
    b = bytearray(16 + area)
    struct.pack_into("<QQ", b, 0, accum, accum)
    struct.pack_into("<I", b, 16 + 24, 0x1F80)  # MXCSR
    struct.pack_into("<Q", b, 16 + 512, accum & 0x3)  # xstate_bv: x87, SSE in use
    return bytes(b)


def old_rtc() -> bytes:
    blob = hvm.sample_context(1)
    (e,) = [e for e in hvm.iter_entries(blob) if e.typecode == hvm.RTC]
    return e.body(blob)[:16]


def lapic32() -> bytes:
    blob = hvm.sample_context(1)
    (e,) = [e for e in hvm.iter_entries(blob) if e.typecode == hvm.LAPIC]
    assert e.length == 32
    return e.body(blob)


def _pv_with_emulator() -> bytes:
    """A PV stream followed by an EMULATOR_XENSTORE_DATA record (libxl_stream_read.c)."""
    spec = ImageSpec(guest="pv", version=2, policies=False, pages=16)
    out = io.BytesIO()
    xl_header(out, default_config(spec))
    lw = LibxlWriter(out)
    lw.header()
    lw.libxc_context()
    write_libxc(lw.libxc(version=2), spec, lw)
    lw.xenstore_data({"physmap/1/name": "x"})
    lw.end()
    return out.getvalue()


def _record_length_image() -> bytes:
    # an optional record of 9 MiB: read_record() reads every record's body before
    # process_record() can skip it
    return hvm_image(extra=lambda w: w.record(0x80000100, bytes(9 << 20)))


_CPU = {"efer": 992, "dr6": 720, "tsc_aux": 1000, "cr3": 672}

CASES: List[Case] = [
    # tools/libxc/xc_sr_restore.c@RELEASE-4.6.0 read_headers() accepts IHDR_VERSION 2: a v2
    # image restores from the first v2 release on, and at HEAD (xg_sr_restore.c read_headers()).
    Case("stream-v2", lambda: hvm_image(), {"4.6.0": R, "HEAD": R}, ""),
    # RELEASE-4.6.0 has no tools/libxc/xc_domain_restore.c (b15bc4345e): a bare legacy
    # stream given to xc_domain_restore() fails read_headers() (marker) at 4.6.0 and HEAD.
    Case("legacy-restore-removed", lambda: legacy_image(guest="pv", pages=16),
         {"4.6.0": N, "HEAD": N}, "legacy-stream-unconverted"),
    # tools/libxl/libxl_stream_read.c@RELEASE-4.6.0 libxl__stream_read_start(): stream->legacy
    # runs libxl__convert_legacy_stream() (libxl_convert_callout.c: LIBXL_CONVERT_HELPER):
    # an xl file without STREAMv2 restores where the helper runs.
    Case("legacy-converter", lambda: legacy_image(guest="pv", pages=16, envelope="xl"),
         {"4.6.0": H, "HEAD": H}, "legacy-stream"),
    # tools/libxc/xc_sr_common.h@RELEASE-4.9.0 REC_LENGTH_MAX (8U << 20), read_record()
    # refuses a longer body; @RELEASE-4.10.0 128U << 20.
    Case("record-length-128m", _record_length_image, {"4.9.0": N, "4.10.0": R},
         "release-record-length"),
    # tools/libxc/xc_sr_restore_x86_hvm.c@RELEASE-4.8.0 handle_hvm_params() accepts a longer
    # body; @RELEASE-4.8.2 (834ea870c5) and 4.9.0 refuse length != 8 + 16 * count.
    Case("hvm-params-exact",
         lambda: hvm_image(extra=lambda w: w.record(libxc.REC_TYPE_HVM_PARAMS,
                                                    struct.pack("<II", 1, 0)
                                                    + struct.pack("<QQ", 17, 1) + bytes(8))),
         {"4.8.0": R, "4.8.2": N, "4.8.5": N, "4.9.0": N}, "hvm-params-length-extra"),
    # tools/libxc/xc_sr_restore_x86_pv.c@RELEASE-4.10.0 handle_x86_pv_vcpu_blob(): an empty
    # blob jumps to out with rc -1; @RELEASE-4.11.0 sets rc = 0 first (f593747666).
    Case("empty-pv-vcpu",
         lambda: pv_image(extra=lambda w: w.vcpu(libxc.REC_TYPE_X86_PV_VCPU_MSRS, 0, b"")),
         {"4.10.0": N, "4.11.0": R}, "release-empty-pv-vcpu"),
    # tools/libxc/xc_sr_restore.c@RELEASE-4.13.0 read_headers(): version != IHDR_VERSION (2)
    # fails; @RELEASE-4.14.0: 2 <= version <= 3.
    Case("stream-v3", lambda: hvm_image(version=3), {"4.13.0": N, "4.14.0": R},
         "release-stream-v3"),
    # tools/libxc/xc_sr_restore.c@RELEASE-4.13.0 restore(): a STATIC_DATA_END (0x10) in a v2
    # stream is "Mandatory record ... not handled"; @RELEASE-4.14.0 handle_static_data_end().
    Case("stream-v3", lambda: hvm_image(extra=lambda w: None, version=2, v2_sde=True),
         {"4.13.0": N, "4.14.0": R}, "release-static-data-end"),
    # tools/libxc/xc_sr_restore.c@RELEASE-4.13.0 restore(): record 0x11 is "Mandatory record
    # ... not handled"; @RELEASE-4.14.0 xc_sr_common_x86.c handle_x86_cpuid_policy() keeps it
    # and the policy is set on the domain (the host must offer it).
    Case("policy-records", lambda: hvm_image(version=3, policies=True),
         {"4.13.0": N, "4.14.0": H}, "release-policy-records"),
    # tools/libxl/libxl_stream_read.c@RELEASE-4.6.0 process_record(): no CHECKPOINT_STATE
    # case, "Unrecognised record"; @RELEASE-4.7.0 handles it (f5d947bf1b).
    Case("colo", lambda: hvm_image(colo=True), {"4.6.0": N, "4.7.0": R}, "release-colo"),
    # tools/libxl/libxl_stream_read.c@RELEASE-4.9.0 process_record() refuses emulator records
    # only for device_model_version NONE; @RELEASE-4.10.0 for any non-HVM domain.
    Case("emulator-hvm-only", _pv_with_emulator, {"4.9.0": R, "4.10.0": N},
         "libxl-emulator-not-hvm"),
    # xen/arch/x86/xstate.c@RELEASE-4.6.0 validate_xstate() checks xstate_bv only;
    # @RELEASE-4.7.0 also xcomp_bv and the reserved header bytes (d570d82291).
    Case("xsave-header",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_XSAVE, 0, xsave(0x7, xcomp=0x4))])),
         {"4.6.0": R, "4.7.0": N}, "hvm-cpu-xsave-header"),
    # xen/arch/x86/hvm/hvm.c@RELEASE-4.7.0 hvm_load_cpu_xsave_states() takes a short area;
    # @RELEASE-4.7.1 (1983d58d18) and 4.8.0: desc_length != size is -EINVAL.
    Case("xsave-size-exact",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_XSAVE, 0, xsave(0x7)[:-8])])),
         {"4.7.0": R, "4.7.1": N, "4.8.0": N}, "hvm-cpu-xsave-short"),
    # xen/arch/x86/time.c@RELEASE-4.11.0 tsc_set_info() (void) sets TSC_MODE_PVRDTSCP;
    # @RELEASE-4.12.0 returns -EINVAL for it.
    Case("tsc-pvrdtscp-removed", lambda: hvm_image(tsc_mode=3), {"4.11.0": R, "4.12.0": N},
         "tsc-mode-pvrdtscp"),
    # xen/arch/x86/hvm/hvm.c hvm_efer_valid(): EFER_KNOWN_MASK first in RELEASE-4.12.0
    # (ef0269c621), by backport in RELEASE-4.8.5, 4.9.3, 4.10.2, 4.11.1; not in 4.11.0.
    Case("efer-known-mask",
         lambda: hvm_image(ctx=old_context(patched(hvm.CPU, _CPU["efer"], "<Q", 1 << 3))),
         {"4.8.4": R, "4.8.5": N, "4.11.0": R, "4.11.1": N, "4.12.0": N},
         "hvm-cpu-efer"),
    # xen/arch/x86/hvm/hvm.c@RELEASE-4.12.0 hvm_load_cpu_ctxt(): "bad MSR_TSC_AUX"; absent at
    # RELEASE-4.11.0.
    Case("tsc-aux-32",
         lambda: hvm_image(ctx=old_context(patched(hvm.CPU, _CPU["tsc_aux"], "<Q", 1 << 32))),
         {"4.11.0": R, "4.12.0": N}, "hvm-cpu-tsc-aux"),
    # xen/arch/x86/hvm/mtrr.c@RELEASE-4.12.0 hvm_load_mtrr_msr(): VCNT > MTRR_VCNT is -EINVAL
    # ("too many ... variable range MTRRs"); RELEASE-4.11.0 has no such check.
    Case("mtrr-vcnt",
         lambda: hvm_image(ctx=old_context(patched(hvm.MTRR, 224, "<Q", 9))),
         {"4.11.0": R, "4.12.0": N}, "hvm-mtrr-state"),
    # xen/arch/x86/hvm/hvm.c@RELEASE-4.14.0 hvm_load_cpu_ctxt(): "bad CR3"; not at 4.13.0.
    Case("cr3-maxphysaddr",
         lambda: hvm_image(ctx=old_context(patched(hvm.CPU, _CPU["cr3"], "<Q", 1 << 60))),
         {"4.13.0": R, "4.14.0": N}, "hvm-cpu-cr3"),
    # tools/libxc/xc_sr_restore_x86_pv.c handle_x86_pv_vcpu_blob(): the MSRS modulo check is
    # in RELEASE-4.13.1 (0e2bbcf8b4) and 4.14.0, not in RELEASE-4.13.0 (where it sat on XSAVE).
    Case("pv-vcpu-blob-audit",
         lambda: pv_image(extra=lambda w: w.vcpu(libxc.REC_TYPE_X86_PV_VCPU_MSRS, 0,
                                                 bytes(24))),
         {"4.12.0": R, "4.12.3": N, "4.13.0": R, "4.13.1": N, "4.14.0": N}, "vcpu-msrs-size"),
    # the same commits: xc_sr_restore_x86_pv.c@RELEASE-4.13.0 handle_x86_pv_vcpu_blob()
    # refuses an XSAVE payload (16 + 2696 bytes for x87|SSE|AVX|PKRU) that is not a multiple of
    # 16; RELEASE-4.13.1 (5932ee1e06 / 0e2bbcf8b4) and 4.14.0 take it.
    Case("pv-vcpu-blob-audit",
         lambda: pv_image(extra=lambda w: w.vcpu(libxc.REC_TYPE_X86_PV_VCPU_XSAVE, 0,
                                                 pv_xsave(0x207))),
         {"4.12.2": N, "4.12.3": R, "4.13.0": N, "4.13.1": R, "4.14.0": R},
         "release-pv-xsave-size16"),
    # tools/libxc/xc_sr_restore_x86_hvm.c@RELEASE-4.14.0 handle_hvm_context(): update_blob()
    # refuses size 0 (59e1f6d897); @RELEASE-4.13.0 it keeps a copy of any length, and the
    # complete HVM_CONTEXT that follows replaces the empty one.
    Case("hvm-context-blob",
         lambda: hvm_image(before_ctx=lambda w: w.record(libxc.REC_TYPE_HVM_CONTEXT, b"")),
         {"4.13.0": R, "4.14.0": N}, "hvm-context-empty"),
    # xen/arch/x86/hvm/hvm.c@RELEASE-4.18.0 hvm_load_cpu_ctxt(): "bad DR6 ... or DR7"; not at
    # 4.17.0.
    Case("dr67-32",
         lambda: hvm_image(ctx=old_context(patched(hvm.CPU, _CPU["dr6"], "<Q", 1 << 32))),
         {"4.17.0": R, "4.18.0": N}, "hvm-cpu-dr67"),
    # xen/arch/x86/hvm/irq.c@RELEASE-4.19.0 irq_check_link(): pad0 must be zero; at
    # RELEASE-4.18.0 irq_load_link() ignores it.
    Case("vpic-vpit-pci-link",
         lambda: hvm_image(ctx=old_context({hvm.PCI_LINK: bytes([5, 10, 11, 5, 1, 0, 0, 0])})),
         {"4.18.0": R, "4.19.0": N}, "hvm-pci-link-pad"),
    # xen/arch/x86/hvm/save.c@RELEASE-4.6.0 _hvm_check_entry(): CPU is loaded by
    # hvm_load_entry() with the compat fixup, 1024 bytes at most; @RELEASE-4.7.0 1032.
    Case("hvm-cpu-1032",
         lambda: hvm_image(ctx=old_context({hvm.CPU: hvm.sample_cpu(0)})),
         {"4.6.0": N, "4.7.0": R}, "release-hvm-cpu-1032"),
    # xen/arch/x86/hvm/viridian.c@RELEASE-4.6.0 viridian_load_vcpu_ctxt(): hvm_load_entry()
    # (strict, 8 bytes); @RELEASE-4.7.0 hvm_load_entry_zeroextend() of 16.
    Case("hvm-viridian-vcpu-16",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.VIRIDIAN_VCPU, 0, bytes(16))])),
         {"4.6.0": N, "4.7.0": R}, "release-hvm-viridian-vcpu-16"),
    # xen/arch/x86/cpu/mcheck/vmce.c@RELEASE-4.9.0 vmce_load_vcpu_ctxt(): zero-extends up to
    # 24 bytes; @RELEASE-4.10.0 struct hvm_vmce_vcpu has mcg_ext_ctl (32).
    Case("hvm-vmce-32",
         lambda: hvm_image(ctx=old_context({hvm.VMCE_VCPU: struct.pack("<4Q", 2, 0, 0, 0)})),
         {"4.9.0": N, "4.10.0": R}, "release-hvm-vmce-32"),
    # xen/arch/x86/hvm/viridian/viridian.c@RELEASE-4.12.0 viridian_load_vcpu_ctxt(): 16 bytes
    # at most; @RELEASE-4.13.0 216 (simp_msr, sint_msr, stimer_*).
    Case("hvm-viridian-vcpu-216",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.VIRIDIAN_VCPU, 0, bytes(216))])),
         {"4.12.0": N, "4.13.0": R}, "release-hvm-viridian-vcpu-216"),
    # xen/arch/x86/hvm/rtc.c@RELEASE-4.13.0 rtc_load(): hvm_load_entry() of 16 bytes;
    # @RELEASE-4.14.0 hvm_load_entry_zeroextend() of 24 (rtc_offset).
    Case("hvm-rtc-24",
         lambda: hvm_image(ctx=old_context({hvm.RTC: old_rtc() + bytes(8)})),
         {"4.13.0": N, "4.14.0": R}, "release-hvm-rtc-24"),
    # xen/arch/x86/hvm/vlapic.c lapic_load_hidden(): zero-extends to sizeof(struct
    # hvm_hw_lapic), 24 at RELEASE-4.17.7, 4.18.4, 4.19.1, 4.20.0; 32 (pending_esr) at
    # RELEASE-4.18.5, 4.19.2, 4.20.1, 4.21.0. Xen 4.17 was seen refusing it (real-xen.md).
    Case("hvm-lapic-32",
         lambda: hvm_image(ctx=old_context({hvm.LAPIC: lapic32()})),
         {"4.17.0": N, "4.18.0": N, "4.18.5": R, "4.19.0": N, "4.19.2": R,
          "4.20.0": N, "4.20.1": R, "4.21.0": R}, "release-hvm-lapic-32"),
    # xen/arch/x86/hvm/vmx/vmx.c@RELEASE-4.6.0 vmx_load_msr(): no MSR_IA32_XSS case (-ENXIO
    # from hvm_load_cpu_msrs()); @RELEASE-4.7.0 it has one.
    Case("msr-xss", lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_MSR, 0, _msr(0xDA0))])),
         {"4.6.0": N, "4.7.0": R}, "release-msr-xss"),
    # xen/arch/x86/hvm/vmx/vmx.c@RELEASE-4.8.4 vmx_load_msr() has
    # MSR_INTEL_MISC_FEATURES_ENABLES (2aff8d5e73); RELEASE-4.8.2 does not.
    Case("msr-misc-features",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_MSR, 0, _msr(0x140))])),
         {"4.8.2": N, "4.8.4": R, "4.9.0": N, "4.9.2": R, "4.10.0": R},
         "release-msr-misc-features"),
    # xen/arch/x86/hvm/hvm.c@RELEASE-4.10.1 hvm_load_cpu_msrs() has case MSR_SPEC_CTRL
    # (8baba874d6); RELEASE-4.10.0 does not; vmx.c@RELEASE-4.7.5 (b7dae55c0e) does.
    Case("msr-spec-ctrl", lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_MSR, 0, _msr(0x48))])),
         {"4.7.3": N, "4.7.5": R, "4.10.0": N, "4.10.1": R, "4.11.0": R},
         "release-msr-spec-ctrl"),
    # xen/arch/x86/hvm/hvm.c hvm_load_cpu_msrs(): case MSR_VIRT_SPEC_CTRL at RELEASE-4.17.0,
    # not at RELEASE-4.16.0.
    Case("msr-virt-spec-ctrl",
         lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_MSR, 0, _msr(0xC001011F))])),
         {"4.16.0": N, "4.17.0": R}, "release-msr-virt-spec-ctrl"),
    # xen/arch/x86/hvm/hvm.c hvm_load_cpu_msrs(): case MSR_PKRS at RELEASE-4.18.0, not 4.17.0.
    Case("msr-pkrs", lambda: hvm_image(ctx=old_context(extra=[(hvm.CPU_MSR, 0, _msr(0x6E1))])),
         {"4.17.0": N, "4.18.0": R}, "release-msr-pkrs"),
    # xen/include/public/hvm/params.h: HVM_NR_PARAMS 36 at RELEASE-4.6.2, 37 at 4.6.3 and
    # 4.7.0; xen/arch/x86/hvm/hvm.c hvmop_set_param() refuses index >= HVM_NR_PARAMS.
    Case("param-x87-fip-width", lambda: hvm_image(params=_params({36: 8})),
         {"4.6.0": N, "4.6.3": R, "4.7.0": R}, "release-param-x87-fip-width"),
    # params.h: HVM_NR_PARAMS 37 at RELEASE-4.8.0, 38 at 4.9.0.
    Case("param-vm86-tss-sized", lambda: hvm_image(params=_params({37: 0x1000})),
         {"4.8.0": N, "4.9.0": R}, "release-param-vm86-tss-sized"),
    # params.h: HVM_NR_PARAMS 38 at RELEASE-4.9.0, 39 at 4.10.0.
    Case("param-mca-cap", lambda: hvm_image(params=_params({38: 1})),
         {"4.9.0": N, "4.10.0": R}, "release-param-mca-cap"),
    # xen/arch/x86/pv/domain.c@RELEASE-4.14.0 switch_compat(): -EOPNOTSUPP unless opt_pv32
    # (CONFIG_PV32, 68d757df8d); RELEASE-4.13.0 always switches.
    Case("pv32-option", lambda: pv_image(width=4), {"4.13.0": R, "4.14.0": H},
         "release-pv32"),
    # tools/libs/guest/xg_sr_common_x86_pv.c@RELEASE-4.15.0 x86_pv_map_m2p() maps the compat
    # M2P for every PV guest, which Xen 4.15.0 keeps only with PV32 (1379576729).
    Case("pv-needs-pv32", lambda: pv_image(), {"4.14.0": R, "4.15.0": H}, "release-pv-compat-m2p"),
    # xg_sr_common_x86_pv.c@RELEASE-4.15.1 x86_pv_map_m2p(): the compat M2P only for a 32-bit
    # guest (77069ea825, master d21121685f in 4.16.0).
    Case("pv-restore-fixed", lambda: pv_image(), {"4.15.0": H, "4.15.1": R, "4.16.0": R},
         "release-pv-compat-m2p"),
    # tools/configure.ac@RELEASE-4.15.0: qemu-traditional built by default; @RELEASE-4.16.0
    # only with --enable-qemu-traditional (faddd16e36).
    Case("qemu-trad-not-default",
         lambda: hvm_image(emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL),
         {"4.15.0": R, "4.16.0": H}, "qemu-traditional-state"),
    # tools/libs/light/libxl_create.c@RELEASE-4.21.0 libxl__domain_build_info_setdefault():
    # qemu-traditional is gone (19ab8356ab); RELEASE-4.20.0 still runs it where built.
    Case("qemu-trad-removed",
         lambda: hvm_image(emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL),
         {"4.20.0": H, "4.21.0": N}, "qemu-traditional-state"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.change for c in CASES])
def test_row_boundary(tmp_path: Path, case: Case) -> None:
    res, _ = judge_all(tmp_path, case.build())
    for rel, want in case.expect.items():
        got = rb.judge(res, rel).outcome
        assert got == want, (rel, got, want, [f.rule for f in res.findings])
    if case.rule:
        decisive = {f.rule for f, _ in rb.all_findings(res)}
        assert case.rule in decisive, decisive
        r = rules.rule(case.rule)
        assert case.change in {cid for cid, _ in r.changes}, (case.rule, r.changes)


def test_every_row_has_a_case() -> None:
    assert {c.change for c in CASES} == set(releases.CHANGES)


def test_every_judged_rule_has_a_case() -> None:
    judged = {r.id for r in rules.RULES.values() if r.uses}
    assert judged <= {c.rule for c in CASES}


def test_every_row_is_named_by_a_rule() -> None:
    named = {cid for r in rules.RULES.values() for cid, _ in r.changes}
    assert named == set(releases.CHANGES)


def test_baseline_images_restore_everywhere(tmp_path: Path) -> None:
    """The 4.6-era HVM image every case starts from: every release restores it."""
    _res, got = judge_all(tmp_path, hvm_image())
    assert set(got.values()) == {R}, got


def test_head_verdicts_agree_with_the_rules_table() -> None:
    """A rule's verdict at HEAD is its HEAD meaning: an error HEAD does not
    tolerate is refused there; a judged-per-release rule is not."""
    for r in rules.RULES.values():
        if r.before is None:
            continue
        v = rules.verdict(r, "HEAD")
        if r.uses:
            assert r.tolerated and v != N, r.id
        elif r.severity == "error":
            assert (v == N) == (not r.tolerated), r.id


# -- the release list, parsing, ranges ------------------------------------------------------


def test_releases_list_and_parse() -> None:
    rel = releases.RELEASES
    assert rel[0] == "4.6.0" and rel[-2] == "4.22.0" and rel[-1] == "HEAD"
    for p in ("4.18.5", "4.19.2", "4.20.1", "4.6.6", "4.8.5"):
        assert p in rel
    assert [releases.key(r) for r in rel] == sorted(releases.key(r) for r in rel)
    assert releases.parse("4.17") == ["4.17.0"]
    assert releases.parse("4.17.7") == ["4.17.7"]
    assert releases.parse("head") == ["HEAD"] and releases.parse("all") == list(rel)
    for bad in ("4.5", "4.23", "5.0", "4.x", "", "4.06"):
        with pytest.raises(ValueError):
            releases.parse(bad)


def test_backport_in_effect() -> None:
    lapic = releases.CHANGES["hvm-lapic-32"]
    assert not releases.in_effect(lapic, "4.17.7")
    assert not releases.in_effect(lapic, "4.18.4") and releases.in_effect(lapic, "4.18.6")
    assert not releases.in_effect(lapic, "4.20.0") and releases.in_effect(lapic, "4.20.4")
    assert releases.in_effect(lapic, "4.21.0") and releases.in_effect(lapic, "HEAD")


def test_ranges() -> None:
    assert releases.ranges([]) == []
    every = [r for r in releases.RELEASES if releases.key(r) >= releases.key("4.14.0")
             and releases.key(r) < releases.key("4.21.0")]
    assert releases.ranges(every) == [("4.14", "4.20")]
    assert releases.ranges_text(releases.ranges(every)) == "4.14 \u2013 4.20"
    assert releases.ranges(["4.18.5", "HEAD"]) == [("4.18.5", "4.18.x"), ("HEAD", "HEAD")]
    assert releases.ranges(["4.11.0"]) == [("4.11.0", "4.11.0")]


def test_restoring_ranges_of_a_v3_image_with_qemu_traditional_state(tmp_path: Path) -> None:
    """The issue's example: a v3 image with qemu-traditional state restores
    on 4.14 - 4.20 (stream v3 from 4.14, 6501e46ca7; qemu-traditional gone in
    4.21, 19ab8356ab)."""
    res, _ = judge_all(tmp_path, hvm_image(version=3,
                                           emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL))
    assert rb.restoring_ranges(res) == [("4.14", "4.20")]
    assert rb.ranges_text(res) == "4.14 \u2013 4.20"


def test_info_shows_the_releases_that_restore_it(tmp_path: Path, capsys) -> None:
    """``xenstream info`` (issue 12 item 3): the same image, the same ranges,
    from the release table (4.14 for stream v3, 6501e46ca7; qemu-traditional
    removed in 4.21.0, 19ab8356ab); a stream v2 image from a 4.6-era saver
    restores on every release from 4.6 to HEAD."""
    from xenstream.consumers.info import summary

    p = tmp_path / "v3-trad.xl"
    p.write_bytes(hvm_image(version=3, emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL))
    info = summary(str(p))
    assert info.restores_on == ["4.14 \u2013 4.20"]
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "restores on:  Xen 4.14 \u2013 4.20" in out
    p2 = tmp_path / "v2.xl"
    p2.write_bytes(hvm_image(version=2))
    assert summary(str(p2)).restores_on == ["4.6 \u2013 HEAD"]


# -- the CLI --------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_verify_target_lapic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Xen 4.17 refuses a 32-byte LAPIC record (real-xen.md); 4.18 is refused
    at 4.18.0 and restored from 4.18.5, which the verdict says."""
    p = tmp_path / "img"
    p.write_bytes(hvm_image(ctx=old_context({hvm.LAPIC: lapic32()})))
    rc, out, err = cli(capsys, "verify", "--target-xen", "4.17", str(p))
    assert rc == 1 and "Xen 4.17.0 via xl/libxl: does not restore (release-hvm-lapic-32)" in out
    assert "LAPIC" in err
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.18", str(p))
    assert rc == 1 and "4.18.5 and later 4.18.x: restores" in out, out
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.20.1", str(p))
    assert rc == 0 and "Xen 4.20.1 via xl/libxl: restores" in out, out
    # plain verify: HEAD's strict meaning, unchanged
    rc, out, _ = cli(capsys, "verify", str(p))
    assert rc == 0 and ": valid:" in out


def test_verify_target_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "img"
    p.write_bytes(hvm_image(version=3))
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.13", str(p))
    assert rc == 1 and "needs Xen >= 4.14" in out, out
    p.write_bytes(hvm_image(tsc_mode=3))
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.12", str(p))
    assert rc == 1 and "needs Xen <= 4.11" in out, out
    p.write_bytes(legacy_image(guest="pv", pages=16))
    rc, out, _ = cli(capsys, "verify", "--target-xen", "HEAD", str(p))
    assert rc == 1 and "convert it first" in out, out
    p.write_bytes(hvm_image(emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL))
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.21", str(p))
    assert rc == 1 and "restore on a host that still builds qemu-traditional" in out, out
    rc, out, _ = cli(capsys, "verify", "--target-xen", "4.17", str(p))
    assert rc == 0 and "restores if the host builds qemu-traditional" in out, out


def test_verify_target_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "img"
    p.write_bytes(hvm_image(emulator_id=libxl.EMULATOR_QEMU_TRADITIONAL))
    rc, out, _ = cli(capsys, "verify", "--target-xen", "all", str(p))
    lines = out.splitlines()
    assert len(lines) == len(releases.RELEASES)
    assert rc == 1  # as for HEAD: qemu-traditional is gone
    assert lines[0].startswith(f"{p}: Xen 4.6.0 via xl/libxl: restores")
    assert "Xen HEAD via xl/libxl: does not restore" in lines[-1]


def test_verify_target_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "img"
    p.write_bytes(hvm_image())
    with pytest.raises(SystemExit) as e:
        main(["verify", "--target-xen", "4.5", str(p)])
    assert e.value.code == 2
    assert "4.5" in capsys.readouterr().err


def test_verify_target_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    p = tmp_path / "img"
    p.write_bytes(hvm_image(version=3, ctx=old_context({hvm.LAPIC: lapic32()})))
    rc, out, _ = cli(capsys, "verify", "--json", "--target-xen", "4.19", str(p))
    doc = json.loads(out)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert rc == 1 and doc["valid"] is False
    assert doc["target"]["release"] == "4.19.0" and doc["target"]["verdict"] == N
    assert doc["target"]["later"][0]["release"] == "4.19.2"
    lapic = [f for f in doc["findings"] if f["rule"] == "release-hvm-lapic-32"]
    assert lapic and lapic[0]["severity"] == "error"
    assert lapic[0]["releases"]["first"] == "4.6.0" and lapic[0]["releases"]["last"] == "4.20.0"
    by_rel = {r["release"]: r["verdict"] for r in doc["releases"]}
    assert by_rel["4.13.0"] == N and by_rel["4.19.2"] == R and by_rel["HEAD"] == R
    # the plain document still validates and has no release fields
    rc, out, _ = cli(capsys, "verify", "--json", str(p))
    plain = json.loads(out)
    jsonschema.validate(plain, json.loads(SCHEMA.read_text()))
    assert "target" not in plain and all("releases" not in f for f in plain["findings"])


# -- convert --target-xen ---------------------------------------------------------------------


def _libxc_version(path: Path) -> Tuple[int, List[str]]:
    with Source.open(str(path)) as src:
        res = verify(src)
    return res.summary["libxc"]["version"], list(res.summary["record_counts"])


def test_convert_target_stream_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in.img"
    inp.write_bytes(legacy_image(guest="pv", pages=16, envelope="xl"))
    for target, version in (("4.6", 2), ("4.13", 2), ("4.14", 3), ("HEAD", 3)):
        out = tmp_path / f"out-{target}.xl"
        rc, _, err = cli(capsys, "convert", "--target-xen", target, str(inp), str(out))
        assert rc == 0, err
        v, counts = _libxc_version(out)
        assert v == version, (target, v)
        assert ("libxc:STATIC_DATA_END" in counts) == (version == 3)
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.13", "--stream-version", "3",
                     str(inp), str(tmp_path / "x.xl"))
    assert rc == 2 and "4.13" in err
    rc, _, err = cli(capsys, "convert", "--target-xen", "all", str(inp), str(tmp_path / "y.xl"))
    assert rc == 2


def test_convert_target_tsc_mode_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """xen/arch/x86/time.c tsc_set_info(): 4.11.0 sets mode 3, 4.12.0 returns
    -EINVAL: a TSC mode 3 guest converts cleanly for 4.11 and is refused for
    4.12 unless --force."""
    inp = tmp_path / "in.img"
    inp.write_bytes(legacy_image(guest="pv", pages=16, tsc_mode=3, envelope="xl"))
    out = tmp_path / "411.xl"
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.11", str(inp), str(out))
    assert rc == 0 and out.exists() and "Xen 4.11.0 restores it" in err, err
    assert _libxc_version(out)[0] == 2
    p = tmp_path / "412.xl"
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.12", str(inp), str(p))
    assert rc == 1 and not p.exists() and "tsc-mode-pvrdtscp" in err, err
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.12", "--force", str(inp), str(p))
    assert rc == 0 and p.exists() and "forced" in err, err
    # and what was written for 4.11 is judged restorable there, refused at 4.12
    with Source.open(str(out)) as src:
        res = verify(src, releases=True)
    assert rb.judge(res, "4.11.0").outcome != N and rb.judge(res, "4.12.0").outcome == N


# -- the generated document -------------------------------------------------------------------


def test_docs_restorability_md_is_current() -> None:
    out = io.StringIO()
    releases.markdown(out)
    assert DOCS.exists(), "docs/restorability.md is missing: python -m xenstream.releases > docs/restorability.md"
    assert DOCS.read_text() == out.getvalue(), (
        "docs/restorability.md is stale: python -m xenstream.releases > docs/restorability.md")


def test_docs_cite_every_commit() -> None:
    text = DOCS.read_text()
    assert releases.HEAD_COMMIT[:10] in text
    for c in releases.CHANGES.values():
        for h in (c.commit,) + c.also + tuple(h for _, h in c.backports):
            assert f"`{h}`" in text, (c.id, h)


def test_module_runs(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "xenstream.releases"], capture_output=True,
                          text=True, check=True)
    assert proc.stdout == DOCS.read_text()


def test_convert_target_judges_hvm_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The legacy writer's HVM context has HEAD's record sizes (CPU 1032):
    xen/arch/x86/hvm/hvm.c@RELEASE-4.6.0 hvm_load_cpu_ctxt() loads at most
    1024 bytes, so a conversion for 4.6 is refused (--force writes it), and
    one for 4.21 (every size known there) is not."""
    inp = tmp_path / "in.xl"
    inp.write_bytes(legacy_image(guest="hvm", pages=32, envelope="xl"))
    out = tmp_path / "46.xl"
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.6", str(inp), str(out))
    assert rc == 1 and "release-hvm-cpu-1032" in err and not out.exists(), err
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.6", "--force", str(inp), str(out))
    assert rc == 0 and "release-hvm-cpu-1032" in err and "forced" in err, err
    assert _libxc_version(out)[0] == 2
    rc, _, err = cli(capsys, "convert", "--target-xen", "4.21", str(inp), str(tmp_path / "421.xl"))
    assert rc == 0 and "release-" not in err, err
