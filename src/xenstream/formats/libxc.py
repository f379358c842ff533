"""libxc migration stream, versions 2 and 3 (``docs/specs/libxc-migration-stream.pandoc``).

The image and domain headers and the record types first, then
:class:`LibxcChecker`, which holds the rules of the specification and of
Xen's C restorer (``tools/libs/guest/xg_sr_*``) for this layer.  The layouts
and constants of the record families live beside it (PAGE_DATA in
:mod:`~xenstream.formats.libxc_pages`, the PV records in
:mod:`~xenstream.formats.libxc_pv`, the HVM and x86 platform records in
:mod:`~xenstream.formats.libxc_hvm`, the shared state in
:mod:`~xenstream.formats.libxc_state`); this module re-exports them, so that
``libxc.NAME`` names everything of the layer.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from xenstream.formats import pv
from xenstream.formats.libxc_hvm import (
    CPUID_LEAF,
    HVM_NR_PARAMS,
    HVM_PARAM_NAMES,
    HVM_PARAM_PAE_ENABLED,
    HVM_PARAMS_ENTRY,
    HVM_PARAMS_HDR,
    MSR_ENTRY,
    TSC_MODE_NAMES,
    X86_TSC_INFO,
    HvmRecords,
    hvm_param_name,
)
from xenstream.formats.libxc_pages import (
    KNOWN_PAGE_TYPES,
    MAX_BATCH_SIZE,
    NATIVE,
    NO_DATA_PAGE_TYPES,
    PAGE_DATA_HDR,
    PAGE_DATA_PFN_MASK,
    PAGE_DATA_PFN_RESZ_MASK,
    PAGE_DATA_TYPE_SHIFT,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGE_TYPE_NAMES,
    PT_BROKEN,
    PT_L1TAB,
    PT_L2TAB,
    PT_L3TAB,
    PT_L4TAB,
    PT_LPINTAB,
    PT_NOTAB,
    PT_XALLOC,
    PT_XTAB,
    T_BAD,
    T_DATA,
    T_HIGH,
    T_LOW,
    PageDataRecords,
    PfnScan,
    scan_pfns,
)
from xenstream.formats.libxc_pv import (
    VCPU_MSR_ENTRY,
    X86_PV_INFO,
    X86_PV_P2M_FRAMES_HDR,
    X86_PV_VCPU_HDR,
    PvRecords,
    p2m_frames_length,
)
from xenstream.formats.libxc_state import (
    GUEST_HVM,
    GUEST_PV,
    Handler,
    LibxcState,
    RecordFamily,
    Report,
)
from xenstream.layout import Layout

# -- image and domain header ------------------------------------------------

IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSIONS = (2, 3)
IHDR_OPT_BIT_ENDIAN = 0  # bit 0: big-endian
IHDR_OPT_BE = 1 << IHDR_OPT_BIT_ENDIAN
IHDR_OPT_RESERVED = 0xFFFE

# Image header fields are always big-endian.
IHDR = Layout(
    "libxc image header",
    [("marker", "Q"), ("id", "I"), ("version", "I"), ("options", "H"), ("_res1", "H"), ("_res2", "I")],
)
DHDR = Layout(
    "libxc domain header",
    [("type", "I"), ("page_shift", "H"), ("_res1", "H"), ("xen_major", "I"), ("xen_minor", "I")],
)

DHDR_TYPE_X86_PV = 0x00000001
DHDR_TYPE_X86_HVM = 0x00000002
DHDR_TYPE_X86_PVH = 0x00000003  # reserved since Xen 4.x (279521aed9)
DHDR_TYPE_ARM = 0x00000004  # reserved
DHDR_TYPE_NAMES = {1: "x86 PV", 2: "x86 HVM", 3: "x86 PVH (reserved)", 4: "ARM (reserved)"}

# -- records -------------------------------------------------------------------

RH = Layout("record header", [("type", "I"), ("length", "I")])
REC_ALIGN = 8
REC_LENGTH_MAX = 128 << 20  # xg_sr_common.c since Xen 4.10
REC_TYPE_OPTIONAL = 0x80000000

REC_TYPE_END = 0x00
REC_TYPE_PAGE_DATA = 0x01
REC_TYPE_X86_PV_INFO = 0x02
REC_TYPE_X86_PV_P2M_FRAMES = 0x03
REC_TYPE_X86_PV_VCPU_BASIC = 0x04
REC_TYPE_X86_PV_VCPU_EXTENDED = 0x05
REC_TYPE_X86_PV_VCPU_XSAVE = 0x06
REC_TYPE_SHARED_INFO = 0x07
REC_TYPE_X86_TSC_INFO = 0x08
REC_TYPE_HVM_CONTEXT = 0x09
REC_TYPE_HVM_PARAMS = 0x0A
REC_TYPE_TOOLSTACK = 0x0B
REC_TYPE_X86_PV_VCPU_MSRS = 0x0C
REC_TYPE_VERIFY = 0x0D
REC_TYPE_CHECKPOINT = 0x0E
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0x0F
REC_TYPE_STATIC_DATA_END = 0x10
REC_TYPE_X86_CPUID_POLICY = 0x11
REC_TYPE_X86_MSR_POLICY = 0x12

RECORD_NAMES: Dict[int, str] = {
    0x00: "END",
    0x01: "PAGE_DATA",
    0x02: "X86_PV_INFO",
    0x03: "X86_PV_P2M_FRAMES",
    0x04: "X86_PV_VCPU_BASIC",
    0x05: "X86_PV_VCPU_EXTENDED",
    0x06: "X86_PV_VCPU_XSAVE",
    0x07: "SHARED_INFO",
    0x08: "X86_TSC_INFO",
    0x09: "HVM_CONTEXT",
    0x0A: "HVM_PARAMS",
    0x0B: "TOOLSTACK",
    0x0C: "X86_PV_VCPU_MSRS",
    0x0D: "VERIFY",
    0x0E: "CHECKPOINT",
    0x0F: "CHECKPOINT_DIRTY_PFN_LIST",
    0x10: "STATIC_DATA_END",
    0x11: "X86_CPUID_POLICY",
    0x12: "X86_MSR_POLICY",
}
V3_ONLY = {REC_TYPE_STATIC_DATA_END, REC_TYPE_X86_CPUID_POLICY, REC_TYPE_X86_MSR_POLICY}
PV_ONLY = {0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C}
HVM_ONLY = {0x09, 0x0A}
VCPU_RECORDS = {0x04, 0x05, 0x06, 0x0C}
NO_BODY = {REC_TYPE_END, REC_TYPE_VERIFY, REC_TYPE_CHECKPOINT, REC_TYPE_STATIC_DATA_END}


def record_name(rtype: int) -> str:
    if rtype in RECORD_NAMES:
        return RECORD_NAMES[rtype]
    if rtype & REC_TYPE_OPTIONAL:
        base = rtype & ~REC_TYPE_OPTIONAL
        if base in RECORD_NAMES:
            return f"OPTIONAL|{RECORD_NAMES[base]}"
        return f"OPTIONAL_{rtype:#010x}"
    return f"UNKNOWN_{rtype:#010x}"


# PV vcpu context sizes under their old names
VCPU_BASIC_SIZE = pv.VCPU_CONTEXT_SIZE
VCPU_EXTENDED_MAX = pv.VCPU_EXTENDED_MAX
VCPU_XSAVE_MIN = pv.VCPU_XSAVE_MIN
SHARED_INFO_SIZE = pv.SHARED_INFO_SIZE

__all__ = [  # the whole layer, whichever module defines a name
    "CPUID_LEAF", "DHDR", "DHDR_TYPE_ARM", "DHDR_TYPE_NAMES", "DHDR_TYPE_X86_HVM",
    "DHDR_TYPE_X86_PV", "DHDR_TYPE_X86_PVH", "GUEST_HVM", "GUEST_PV", "HVM_NR_PARAMS", "HVM_ONLY",
    "HVM_PARAMS_ENTRY", "HVM_PARAMS_HDR", "HVM_PARAM_NAMES", "HVM_PARAM_PAE_ENABLED", "HvmRecords",
    "IHDR", "IHDR_ID", "IHDR_MARKER", "IHDR_OPT_BE", "IHDR_OPT_BIT_ENDIAN", "IHDR_OPT_RESERVED",
    "IHDR_VERSIONS", "KNOWN_PAGE_TYPES", "LibxcChecker", "LibxcState", "MAX_BATCH_SIZE",
    "MSR_ENTRY", "NATIVE", "NO_BODY", "NO_DATA_PAGE_TYPES", "PAGE_DATA_HDR", "PAGE_DATA_PFN_MASK",
    "PAGE_DATA_PFN_RESZ_MASK", "PAGE_DATA_TYPE_SHIFT", "PAGE_SHIFT", "PAGE_SIZE",
    "PAGE_TYPE_NAMES", "PT_BROKEN", "PT_L1TAB", "PT_L2TAB", "PT_L3TAB", "PT_L4TAB", "PT_LPINTAB",
    "PT_NOTAB", "PT_XALLOC", "PT_XTAB", "PV_ONLY", "PageDataRecords", "PfnScan", "PvRecords",
    "REC_ALIGN", "REC_LENGTH_MAX", "REC_TYPE_CHECKPOINT", "REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST",
    "REC_TYPE_END", "REC_TYPE_HVM_CONTEXT", "REC_TYPE_HVM_PARAMS", "REC_TYPE_OPTIONAL",
    "REC_TYPE_PAGE_DATA", "REC_TYPE_SHARED_INFO", "REC_TYPE_STATIC_DATA_END", "REC_TYPE_TOOLSTACK",
    "REC_TYPE_VERIFY", "REC_TYPE_X86_CPUID_POLICY", "REC_TYPE_X86_MSR_POLICY",
    "REC_TYPE_X86_PV_INFO", "REC_TYPE_X86_PV_P2M_FRAMES", "REC_TYPE_X86_PV_VCPU_BASIC",
    "REC_TYPE_X86_PV_VCPU_EXTENDED", "REC_TYPE_X86_PV_VCPU_MSRS", "REC_TYPE_X86_PV_VCPU_XSAVE",
    "REC_TYPE_X86_TSC_INFO", "RH", "RecordFamily", "Report", "SHARED_INFO_SIZE", "TSC_MODE_NAMES",
    "T_BAD", "T_DATA", "T_HIGH", "T_LOW", "V3_ONLY", "VCPU_BASIC_SIZE", "VCPU_EXTENDED_MAX",
    "VCPU_MSR_ENTRY", "VCPU_RECORDS", "VCPU_XSAVE_MIN", "X86_PV_INFO", "X86_PV_P2M_FRAMES_HDR",
    "X86_PV_VCPU_HDR", "X86_TSC_INFO", "hvm_param_name", "p2m_frames_length", "record_name",
    "scan_pfns",
]


class LibxcChecker:
    """Rules of the libxc layer; one instance per libxc stream: the framing,
    the headers, the order of records and the stream-control records (END,
    VERIFY, CHECKPOINT, STATIC_DATA_END, and those Xen rejects); the other
    records go to their family's rules."""

    def __init__(self, report: Report, *, nr_vcpus: Optional[int] = None) -> None:
        self.report = report
        self.s = s = LibxcState()
        self.notes: List[str] = []
        #: the record families, sharing the state and the report callable
        self.pages = PageDataRecords(s, report)
        self.pv = PvRecords(s, report, nr_vcpus=nr_vcpus, notes=self.notes)
        self.hvm = HvmRecords(s, report, nr_vcpus=nr_vcpus)
        self._page_data = self.pages.rec_page_data  # the hot path, one lookup
        p, h = self.pv, self.hvm
        #: record type -> its rules
        self._handlers: Dict[int, Handler] = {
            REC_TYPE_END: self._rec_end,
            REC_TYPE_PAGE_DATA: self._page_data,
            REC_TYPE_X86_PV_INFO: p.rec_x86_pv_info,
            REC_TYPE_X86_PV_P2M_FRAMES: p.rec_x86_pv_p2m_frames,
            REC_TYPE_X86_PV_VCPU_BASIC: p.rec_x86_pv_vcpu_basic,
            REC_TYPE_X86_PV_VCPU_EXTENDED: p.rec_x86_pv_vcpu_extended,
            REC_TYPE_X86_PV_VCPU_XSAVE: p.rec_x86_pv_vcpu_xsave,
            REC_TYPE_SHARED_INFO: p.rec_shared_info,
            REC_TYPE_X86_TSC_INFO: h.rec_x86_tsc_info,
            REC_TYPE_HVM_CONTEXT: h.rec_hvm_context,
            REC_TYPE_HVM_PARAMS: h.rec_hvm_params,
            REC_TYPE_TOOLSTACK: self._rec_toolstack,
            REC_TYPE_X86_PV_VCPU_MSRS: p.rec_x86_pv_vcpu_msrs,
            REC_TYPE_VERIFY: self._rec_verify,
            REC_TYPE_CHECKPOINT: self._rec_checkpoint,
            REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: self._rec_checkpoint_dirty_pfn_list,
            REC_TYPE_STATIC_DATA_END: self._rec_static_data_end,
            REC_TYPE_X86_CPUID_POLICY: h.rec_x86_cpuid_policy,
            REC_TYPE_X86_MSR_POLICY: h.rec_x86_msr_policy,
        }

    # -- headers -------------------------------------------------------------

    def image_header(self, f: Dict[str, int]) -> None:
        r = self.report
        s = self.s
        s.version = f["version"]
        if f["version"] not in IHDR_VERSIONS:
            r("ihdr-version",
              f"expected version 2 or 3, found {f['version']}")
        if f["options"] & IHDR_OPT_BE:
            s.endian = ">"
            r("ihdr-big-endian",
              "expected a little-endian stream (options bit 0 clear), found a big-endian "
              "stream: parsed in its byte order, but Xen on x86 refuses to restore it")
        if f["options"] & IHDR_OPT_RESERVED:
            r("ihdr-options-reserved",
              f"expected reserved option bits 1-15 zero, found options {f['options']:#06x}")
        if f["_res1"] or f["_res2"]:
            r("ihdr-reserved",
              f"expected reserved fields zero, found {f['_res1']:#x}/{f['_res2']:#x}")

    def domain_header(self, f: Dict[str, int]) -> None:
        r = self.report
        s = self.s
        s.dhdr_type = f["type"]
        if f["type"] == DHDR_TYPE_X86_PV:
            s.guest = GUEST_PV
        elif f["type"] == DHDR_TYPE_X86_HVM:
            s.guest = GUEST_HVM
        else:
            name = DHDR_TYPE_NAMES.get(f["type"], "unknown")
            r("dhdr-type",
              f"expected domain type 1 (x86 PV) or 2 (x86 HVM), found {f['type']} ({name})")
        if f["page_shift"] != PAGE_SHIFT:
            r("dhdr-page-shift",
              f"expected page_shift 12, found {f['page_shift']}")
        if f["_res1"]:
            r("dhdr-reserved",
              f"expected reserved field zero, found {f['_res1']:#x}")
        if f["xen_major"] == 0:
            s.converted_from_legacy = True
            s.xen_version = f"converted from legacy (converter version {f['xen_minor']})"
        else:
            s.xen_version = f"{f['xen_major']}.{f['xen_minor']}"

    # -- records -------------------------------------------------------------

    def want_body(self, rtype: int, length: int) -> Optional[int]:
        """How many body bytes the rules need: the whole body (``length``),
        a prefix (PAGE_DATA header and pfns) or ``None`` for nothing."""
        if rtype == REC_TYPE_PAGE_DATA:
            if length < 8:
                return length
            return None  # PAGE_DATA is read in two steps by record()
        return length

    def record(self, rtype: int, length: int, body: Optional[bytes],
               read_prefix: Callable[[int], bytes]) -> None:
        """Check one record.  ``body`` is the whole body, except for PAGE_DATA
        where ``read_prefix(n)`` reads its first ``n`` bytes on demand."""
        s = self.s
        if rtype == REC_TYPE_PAGE_DATA and s.guest == GUEST_HVM:
            self._page_data(length, body, read_prefix)  # the hot path
            return
        r = self.report
        base = rtype & ~REC_TYPE_OPTIONAL

        if rtype & REC_TYPE_OPTIONAL:
            if base in RECORD_NAMES:
                r("optional-known-type",
                  f"{record_name(rtype)} has the optional bit set: Xen's restore ignores it "
                  "rather than applying it")
            else:
                r("optional-record",
                  "optional record of unknown type: skipped, as the restorer does")
            return
        if rtype not in RECORD_NAMES:
            r("unknown-mandatory",
              f"expected a known record type (0x00-0x12) or the optional bit, found {rtype:#010x}")
            return

        if rtype in V3_ONLY and s.version == 2:
            r("v3-record-in-v2",
              f"{RECORD_NAMES[rtype]} exists only in version 3 streams, found in version 2")
        if s.guest == GUEST_HVM and rtype in PV_ONLY:
            r("pv-record-in-hvm",
              f"{RECORD_NAMES[rtype]} is a PV record; an HVM restore fails on it "
              "(mandatory record not handled)")
            return
        if s.guest == GUEST_PV and rtype in HVM_ONLY:
            r("hvm-record-in-pv",
              f"{RECORD_NAMES[rtype]} is an HVM record; a PV restore fails on it "
              "(mandatory record not handled)")
            return

        if rtype in NO_BODY and length != 0:
            r("record-length-zero",
              f"expected body length 0, found {length}")

        self._handlers[rtype](length, body, read_prefix)

    # stream-control records

    def _rec_end(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.ended = True

    def _rec_toolstack(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.report("toolstack-record",
                    "TOOLSTACK records are obsolete: Xen's restore rejects them as an unhandled "
                    "mandatory record")

    def _rec_verify(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.verify_mode = True

    def _rec_checkpoint(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.checkpoints += 1

    def _rec_checkpoint_dirty_pfn_list(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.report("dirty-pfn-list-forward",
                    "CHECKPOINT_DIRTY_PFN_LIST belongs to the COLO back channel, found in the "
                    "forward stream")

    def _rec_static_data_end(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        if s.static_data_end:
            how = " (inferred at the first PAGE_DATA/X86_PV_P2M_FRAMES of a v2 stream)" if s.static_data_end_inferred else ""
            self.report("static-data-end-once",
                        f"expected one STATIC_DATA_END, found a second{how}")
        s.static_data_end = True

    # -- end of stream -----------------------------------------------------------

    def finish(self) -> None:
        """Rules checked when the stream (or the last complete checkpoint) ends."""
        s = self.s
        r = self.report
        if s.guest == GUEST_PV:
            self.pv.finish()
        elif s.guest == GUEST_HVM:
            self.hvm.finish()
        if s.version >= 3 and not s.static_data_end and not s.static_data_end_missing:
            r("static-data-end-absent",
              "expected a STATIC_DATA_END record in a version 3 stream, found none")
