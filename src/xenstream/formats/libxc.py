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

import struct
from typing import Callable, Dict, List, Optional

from xenstream.findings import ERROR, RESTORE, SPEC, WARNING
from xenstream.formats import hvm, pv
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
)
from xenstream.formats.libxc_pages import (
    _U32X2,
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
    PfnScan,
    scan_pfns,
)
from xenstream.formats.libxc_pv import (
    VCPU_MSR_ENTRY,
    X86_PV_INFO,
    X86_PV_P2M_FRAMES_HDR,
    X86_PV_VCPU_HDR,
    p2m_frames_length,
)
from xenstream.formats.libxc_state import GUEST_HVM, GUEST_PV, LibxcState, Report
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
    "DHDR_TYPE_X86_PV", "DHDR_TYPE_X86_PVH", "GUEST_HVM", "GUEST_PV", "HVM_NR_PARAMS",
    "HVM_ONLY", "HVM_PARAMS_ENTRY", "HVM_PARAMS_HDR", "HVM_PARAM_NAMES",
    "HVM_PARAM_PAE_ENABLED", "IHDR", "IHDR_ID", "IHDR_MARKER", "IHDR_OPT_BE",
    "IHDR_OPT_BIT_ENDIAN", "IHDR_OPT_RESERVED", "IHDR_VERSIONS", "KNOWN_PAGE_TYPES",
    "LibxcChecker", "LibxcState", "MAX_BATCH_SIZE", "MSR_ENTRY", "NATIVE", "NO_BODY",
    "NO_DATA_PAGE_TYPES", "PAGE_DATA_HDR", "PAGE_DATA_PFN_MASK", "PAGE_DATA_PFN_RESZ_MASK",
    "PAGE_DATA_TYPE_SHIFT", "PAGE_SHIFT", "PAGE_SIZE", "PAGE_TYPE_NAMES", "PT_BROKEN",
    "PT_L1TAB", "PT_L2TAB", "PT_L3TAB", "PT_L4TAB", "PT_LPINTAB", "PT_NOTAB", "PT_XALLOC",
    "PT_XTAB", "PV_ONLY", "PfnScan", "REC_ALIGN", "REC_LENGTH_MAX", "REC_TYPE_CHECKPOINT",
    "REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST", "REC_TYPE_END", "REC_TYPE_HVM_CONTEXT",
    "REC_TYPE_HVM_PARAMS", "REC_TYPE_OPTIONAL", "REC_TYPE_PAGE_DATA", "REC_TYPE_SHARED_INFO",
    "REC_TYPE_STATIC_DATA_END", "REC_TYPE_TOOLSTACK", "REC_TYPE_VERIFY",
    "REC_TYPE_X86_CPUID_POLICY", "REC_TYPE_X86_MSR_POLICY", "REC_TYPE_X86_PV_INFO",
    "REC_TYPE_X86_PV_P2M_FRAMES", "REC_TYPE_X86_PV_VCPU_BASIC", "REC_TYPE_X86_PV_VCPU_EXTENDED",
    "REC_TYPE_X86_PV_VCPU_MSRS", "REC_TYPE_X86_PV_VCPU_XSAVE", "REC_TYPE_X86_TSC_INFO", "RH",
    "Report", "SHARED_INFO_SIZE", "TSC_MODE_NAMES", "T_BAD", "T_DATA", "T_HIGH", "T_LOW",
    "V3_ONLY", "VCPU_BASIC_SIZE", "VCPU_EXTENDED_MAX", "VCPU_MSR_ENTRY", "VCPU_RECORDS",
    "VCPU_XSAVE_MIN", "X86_PV_INFO", "X86_PV_P2M_FRAMES_HDR", "X86_PV_VCPU_HDR", "X86_TSC_INFO",
    "p2m_frames_length", "record_name", "scan_pfns",
]


class LibxcChecker:
    """Rules of the libxc layer; one instance per libxc stream."""

    def __init__(self, report: Report, *, nr_vcpus: Optional[int] = None) -> None:
        self.report = report
        self.s = LibxcState()
        self.nr_vcpus = nr_vcpus  # from the image's own config, when it has one
        self.notes: List[str] = []
        self._noted_vcpu = False
        self._last_vcpu = 0
        self._noted_xsave = False
        self._handlers: Dict[int, Callable[[int, Optional[bytes], Callable[[int], bytes]], None]] = {
            t: getattr(self, "_rec_" + n.lower()) for t, n in RECORD_NAMES.items()}

    # -- headers -------------------------------------------------------------

    def image_header(self, f: Dict[str, int]) -> None:
        r = self.report
        s = self.s
        s.version = f["version"]
        if f["version"] not in IHDR_VERSIONS:
            r(ERROR, "ihdr-version", RESTORE, False,
              f"expected version 2 or 3, found {f['version']}")
        if f["options"] & IHDR_OPT_BE:
            s.endian = ">"
            r(ERROR, "ihdr-big-endian", RESTORE, False,
              "expected a little-endian stream (options bit 0 clear), found a big-endian "
              "stream: parsed in its byte order, but Xen on x86 refuses to restore it")
        if f["options"] & IHDR_OPT_RESERVED:
            r(ERROR, "ihdr-options-reserved", SPEC, True,
              f"expected reserved option bits 1-15 zero, found options {f['options']:#06x}")
        if f["_res1"] or f["_res2"]:
            r(ERROR, "ihdr-reserved", SPEC, True,
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
            r(ERROR, "dhdr-type", RESTORE, False,
              f"expected domain type 1 (x86 PV) or 2 (x86 HVM), found {f['type']} ({name})")
        if f["page_shift"] != PAGE_SHIFT:
            r(ERROR, "dhdr-page-shift", RESTORE, False,
              f"expected page_shift 12, found {f['page_shift']}")
        if f["_res1"]:
            r(ERROR, "dhdr-reserved", SPEC, True,
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
            self._rec_page_data(length, body, read_prefix)  # the hot path
            return
        r = self.report
        base = rtype & ~REC_TYPE_OPTIONAL

        if rtype & REC_TYPE_OPTIONAL:
            if base in RECORD_NAMES:
                r(WARNING, "optional-known-type", RESTORE, True,
                  f"{record_name(rtype)} has the optional bit set: Xen's restore ignores it "
                  "rather than applying it")
            else:
                r(WARNING, "optional-record", SPEC, True,
                  "optional record of unknown type: skipped, as the restorer does")
            return
        if rtype not in RECORD_NAMES:
            r(ERROR, "unknown-mandatory", RESTORE, False,
              f"expected a known record type (0x00-0x12) or the optional bit, found {rtype:#010x}")
            return

        if rtype in V3_ONLY and s.version == 2:
            r(ERROR, "v3-record-in-v2", SPEC, True,
              f"{RECORD_NAMES[rtype]} exists only in version 3 streams, found in version 2")
        if s.guest == GUEST_HVM and rtype in PV_ONLY:
            r(ERROR, "pv-record-in-hvm", RESTORE, False,
              f"{RECORD_NAMES[rtype]} is a PV record; an HVM restore fails on it "
              "(mandatory record not handled)")
            return
        if s.guest == GUEST_PV and rtype in HVM_ONLY:
            r(ERROR, "hvm-record-in-pv", RESTORE, False,
              f"{RECORD_NAMES[rtype]} is an HVM record; a PV restore fails on it "
              "(mandatory record not handled)")
            return

        if rtype in NO_BODY and length != 0:
            r(ERROR, "record-length-zero", SPEC, True,
              f"expected body length 0, found {length}")

        self._handlers[rtype](length, body, read_prefix)

    # individual records

    def _rec_end(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.ended = True

    def _infer_static_data_end(self) -> None:
        s = self.s
        if s.static_data_end:
            return
        if s.version >= 3:
            # the restore stops here ("No STATIC_DATA_END seen"): say it once,
            # and leave the later records' rules to judge them on their own
            if not s.static_data_end_missing:
                s.static_data_end_missing = True
                self.report(ERROR, "static-data-end-missing", RESTORE, False,
                            "expected STATIC_DATA_END before the first PAGE_DATA and "
                            "X86_PV_P2M_FRAMES in a version 3 stream, found none")
            return
        s.static_data_end = True
        s.static_data_end_inferred = True

    def _rec_page_data(self, length: int, body: Optional[bytes],
                       read_prefix: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        if s.version == 2 or not s.static_data_end:
            self._infer_static_data_end()
        if s.guest == GUEST_PV and not s.seen_p2m:
            r(ERROR, "page-data-before-p2m", RESTORE, False,
              "expected X86_PV_P2M_FRAMES before the first PAGE_DATA of a PV stream, found none")
            s.seen_p2m = True  # report once
        if length < 8:
            r(ERROR, "page-data-length", RESTORE, False,
              f"expected a body of at least 8 bytes, found {length}")
            return
        count, res1 = _U32X2[s.endian].unpack(read_prefix(8))
        if res1:
            r(ERROR, "page-data-reserved", SPEC, True,
              f"expected reserved field zero, found {res1:#x}")
        if count == 0:
            r(ERROR, "page-data-count", RESTORE, False, "expected at least 1 pfn, found count 0")
            return
        if length < 8 + 8 * count:
            r(ERROR, "page-data-length", RESTORE, False,
              f"expected at least {8 + 8 * count} bytes for {count} pfns, found {length}")
            return
        if count > MAX_BATCH_SIZE:
            r(WARNING, "page-data-batch", SPEC, True,
              f"{count} pfns in one record; Xen's saver sends at most {MAX_BATCH_SIZE}")
        raw = read_prefix(8 * count)
        scan = scan_pfns(raw, s.endian)
        n_data = scan.n_data
        if scan.reserved:
            r(ERROR, "page-data-pfn-reserved", SPEC, True,
              f"expected pfn bits 52-59 zero, found them set in {scan.reserved} "
              f"entr{'y' if scan.reserved == 1 else 'ies'}")
        if scan.bad_types:
            bad = [f"{e >> PAGE_DATA_TYPE_SHIFT:#x} (pfn {e & PAGE_DATA_PFN_MASK:#x})"
                   for e in scan.entries() if (e >> PAGE_DATA_TYPE_SHIFT) not in KNOWN_PAGE_TYPES]
            r(ERROR, "page-data-type", RESTORE, False,
              f"expected page types 0-4, 9-15, found {', '.join(bad[:4])}"
              + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""))
        if s.pfns_max is None or scan.max_pfn > s.pfns_max:
            s.pfns_max = scan.max_pfn
        if s.guest == GUEST_PV and s.max_pfn is not None and scan.max_pfn > s.max_pfn:
            beyond = [p for p in scan.pfns if p > s.max_pfn]
            r(ERROR, "page-data-pfn-range", RESTORE, False,
              f"expected pfns <= max_pfn {s.max_pfn:#x} (from X86_PV_P2M_FRAMES), found "
              f"{', '.join(hex(p) for p in beyond[:4])}"
              + (f" and {len(beyond) - 4} more" if len(beyond) > 4 else ""))
        if s.p2m_frame_pfns and not s.p2m_frame_pfns.isdisjoint(scan.pfns):
            for e in scan.entries():
                pfn = e & PAGE_DATA_PFN_MASK
                if pfn in s.p2m_frame_pfns:
                    s.p2m_frame_types[pfn] = e >> PAGE_DATA_TYPE_SHIFT
        if not scan.bad_types:
            want = 8 + 8 * count + PAGE_SIZE * n_data
            if length != want:
                r(ERROR, "page-data-length", RESTORE, False,
                  f"expected {want} bytes ({count} pfns, {n_data} with page data), found {length}")
        s.pages += n_data
        s.page_records += 1

    def _rec_x86_pv_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        if s.seen_pv_info:
            r(ERROR, "pv-info-once", RESTORE, False,
              "expected X86_PV_INFO once, found a second one")
        s.seen_pv_info = True
        assert body is not None
        if length < 8:
            r(ERROR, "pv-info-length", RESTORE, False, f"expected 8 bytes, found {length}")
            return
        if length != 8:
            r(ERROR, "pv-info-length", SPEC, True, f"expected 8 bytes, found {length}")
        f = X86_PV_INFO.unpack(body, s.endian)
        if (f["guest_width"], f["pt_levels"]) not in ((4, 3), (8, 4)):
            r(ERROR, "pv-info-width", RESTORE, False,
              "expected guest_width/pt_levels 8/4 or 4/3, found "
              f"{f['guest_width']}/{f['pt_levels']}")
        else:
            s.width = f["guest_width"]
            s.pt_levels = f["pt_levels"]
        if f["_res0"] or f["_res1"]:
            r(ERROR, "pv-info-reserved", SPEC, True, "expected reserved fields zero, found non-zero")

    def _need_pv_info(self, name: str, *, enforced: bool = True) -> None:
        """X86_PV_INFO must come first.  Xen checks it for P2M_FRAMES and
        SHARED_INFO; for vcpu records it does not (a 64-bit domain has the
        native width already; a 32-bit context then fails on its size)."""
        if not self.s.seen_pv_info:
            self.report(ERROR, "pv-info-first", RESTORE if enforced else SPEC, not enforced,
                        f"expected X86_PV_INFO before {name}, found none")

    def _rec_x86_pv_p2m_frames(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        self._need_pv_info("X86_PV_P2M_FRAMES")
        if s.version == 2 or not s.static_data_end:
            self._infer_static_data_end()
        s.seen_p2m = True
        assert body is not None
        if length < 8:
            r(ERROR, "p2m-frames-length", RESTORE, False,
              f"expected at least 8 bytes, found {length}")
            return
        f = X86_PV_P2M_FRAMES_HDR.unpack(body, s.endian)
        start, end = f["start_pfn"], f["end_pfn"]
        if start > end:
            r(ERROR, "p2m-frames-range", RESTORE, False,
              f"expected start_pfn <= end_pfn, found {start:#x} > {end:#x}")
            return
        want = p2m_frames_length(start, end, s.width)
        if length != want:
            r(ERROR, "p2m-frames-length", RESTORE, False,
              f"expected {want} bytes for pfns {start:#x}-{end:#x} at guest width {s.width}, "
              f"found {length}")
            return
        if s.max_pfn is None or end > s.max_pfn:
            s.max_pfn = end
        n = (length - 8) // 8
        frames = struct.unpack_from(f"{s.endian}{n}Q", body, 8)
        s.p2m_frame_pfns.update(frames)

    def _vcpu(self, name: str, length: int, body: Optional[bytes]) -> Optional[int]:
        """Common VCPU record rules; returns the blob size or None if done."""
        s = self.s
        r = self.report
        self._need_pv_info(name, enforced=False)
        assert body is not None
        if length < 8:
            r(ERROR, "vcpu-length", RESTORE, False, f"expected at least 8 bytes, found {length}")
            return None
        h = X86_PV_VCPU_HDR.unpack(body, s.endian)
        if h["_res1"]:
            r(ERROR, "vcpu-reserved", SPEC, True,
              f"expected reserved field zero, found {h['_res1']:#x}")
        blob = length - 8
        if blob == 0:
            r(WARNING, "errata-zero-content", SPEC, True,
              f"{name} for vcpu {h['vcpu_id']} has no content (tolerated: errata for Xen 4.6-4.8 "
              "senders)")
            return None
        vid = h["vcpu_id"]
        if self.nr_vcpus is not None:
            if vid >= self.nr_vcpus:
                r(ERROR, "vcpu-id", RESTORE, False,
                  f"expected vcpu_id < {self.nr_vcpus} (max_vcpus in the image's config), "
                  f"found {vid}")
        elif not self._noted_vcpu:
            self._noted_vcpu = True
            self.notes.append("vcpu ids not checked against the restoring domain's vcpu count: "
                              "the image carries no configuration")
        self._last_vcpu = vid
        return blob

    def _rec_x86_pv_vcpu_basic(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_BASIC", length, body)
        if blob is None:
            return
        want = VCPU_BASIC_SIZE[self.s.width]
        if blob != want:
            self.report(ERROR, "vcpu-basic-size", RESTORE, False,
                        f"expected a {want}-byte context for a {self.s.width * 8}-bit guest, "
                        f"found {blob}")
            return
        self.s.vcpu_basic.add(self._last_vcpu)

    def _rec_x86_pv_vcpu_extended(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_EXTENDED", length, body)
        if blob is None:
            return
        assert body is not None
        if blob > VCPU_EXTENDED_MAX:
            self.report(ERROR, "vcpu-extended-size", RESTORE, False,
                        f"expected at most {VCPU_EXTENDED_MAX} bytes of context, found {blob}")
            return
        if blob >= 8:
            vcpu, size = struct.unpack_from(f"{self.s.endian}II", body, 8)
            if size < 32:
                self.report(ERROR, "vcpu-extended-embedded-size", RESTORE, False,
                            f"expected the context's own size field >= 32, found {size}")
            if vcpu != self._last_vcpu:
                self.report(ERROR, "vcpu-extended-embedded-vcpu", SPEC, True,
                            f"expected the context's own vcpu field to be {self._last_vcpu} (the "
                            f"record's vcpu_id; Xen uses the embedded one), found {vcpu}")
        else:
            self.report(ERROR, "vcpu-extended-embedded-size", RESTORE, False,
                        f"expected at least 8 bytes of context (vcpu, size), found {blob}")

    def _rec_x86_pv_vcpu_xsave(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_XSAVE", length, body)
        if blob is None:
            return
        r = self.report
        if blob < VCPU_XSAVE_MIN:
            r(ERROR, "vcpu-xsave-size", RESTORE, False,
              f"expected at least 16 bytes (xcr0, xcr0_accum), found {blob}")
            return
        assert body is not None
        # XEN_DOMCTL_setvcpuextstate (xen/arch/x86/domctl.c)
        xcr0, accum = struct.unpack_from(self.s.endian + "QQ", body, 8)
        if not accum:
            if xcr0:
                r(ERROR, "vcpu-xsave-state", RESTORE, False,
                  f"expected xcr0 0 when xcr0_accum is 0, found {xcr0:#x}")
            if blob != 16:
                r(ERROR, "vcpu-xsave-size", RESTORE, False,
                  f"expected 16 bytes when xcr0_accum is 0, found {blob}")
            return
        if blob == 16:
            return  # "nothing to restore"
        if blob < 16 + hvm.XSTATE_AREA_MIN_SIZE:
            r(ERROR, "vcpu-xsave-size", RESTORE, False,
              f"expected 16 bytes or at least {16 + hvm.XSTATE_AREA_MIN_SIZE} (legacy area and "
              f"xsave header), found {blob}")
            return
        if not hvm.valid_xcr0(xcr0) or not hvm.valid_xcr0(accum) or xcr0 & ~accum:
            r(ERROR, "vcpu-xsave-state", RESTORE, False,
              f"expected valid xcr0/xcr0_accum with xcr0 within xcr0_accum, found "
              f"{xcr0:#x}/{accum:#x}")
            return
        xstate_bv, xcomp_bv = struct.unpack_from(self.s.endian + "QQ", body, 8 + 16 + 512)
        if xstate_bv & ~accum:
            r(ERROR, "vcpu-xsave-state", RESTORE, False,
              f"expected xstate_bv within xcr0_accum {accum:#x}, found {xstate_bv:#x}")
        if xcomp_bv:
            r(ERROR, "vcpu-xsave-state", RESTORE, False,
              f"expected an uncompacted XSAVE area (xcomp_bv 0), found xcomp_bv {xcomp_bv:#x}")
        want = 16 + hvm.xstate_uncompressed_size(accum)
        if blob != want:
            r(ERROR, "vcpu-xsave-size", RESTORE, False,
              f"expected {want} bytes for xcr0_accum {accum:#x}, found {blob}")
        if not self._noted_xsave:
            self._noted_xsave = True
            self.notes.append("PV xsave sizes not checked against the restoring host's "
                              "xfeature_mask (a property of the host, not of the image)")

    def _rec_x86_pv_vcpu_msrs(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_MSRS", length, body)
        if blob is None:
            return
        assert body is not None
        if blob % 16:
            self.report(ERROR, "vcpu-msrs-size", RESTORE, False,
                        f"expected a multiple of 16 bytes, found {blob}")
            return
        for i in range(blob // 16):
            e = VCPU_MSR_ENTRY.unpack(body, self.s.endian, 8 + 16 * i)
            if e["_res1"]:
                self.report(ERROR, "vcpu-msrs-reserved", SPEC, True,
                            f"expected reserved field of MSR entry {i} zero, found {e['_res1']:#x}")
                break

    def _rec_shared_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._need_pv_info("SHARED_INFO")
        if length != SHARED_INFO_SIZE:
            self.report(ERROR, "shared-info-length", RESTORE, False,
                        f"expected 4096 bytes, found {length}")

    def _rec_x86_tsc_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        if length != X86_TSC_INFO.size:
            r(ERROR, "tsc-info-length", RESTORE, False, f"expected 24 bytes, found {length}")
            return
        assert body is not None
        f = X86_TSC_INFO.unpack(body, self.s.endian)
        if f["mode"] == 3:
            r(ERROR, "tsc-mode-pvrdtscp", RESTORE, False,
              "expected TSC mode 0-2, found 3 (PVRDTSCP): Xen >= 4.12 refuses it")
        elif f["mode"] > 3:
            r(ERROR, "tsc-mode", RESTORE, False, f"expected TSC mode 0-2, found {f['mode']}")
        if f["_res1"]:
            r(ERROR, "tsc-info-reserved", SPEC, True,
              f"expected reserved field zero, found {f['_res1']:#x}")

    def _rec_hvm_context(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        if length == 0:
            r(ERROR, "hvm-context-empty", RESTORE, False, "expected an HVM context, found 0 bytes")
            return
        assert body is not None
        self.s.hvm_context = True
        for p in hvm.check_context(body, nr_vcpus=self.nr_vcpus):
            r(p.severity, p.rule, p.authority, p.tolerated,
              f"HVM context entry at blob offset {p.offset:#x}: {p.message}")
        self.s.hvm_vcpus = hvm.cpu_instances(body)

    def _rec_hvm_params(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        assert body is not None
        if length < 8:
            r(ERROR, "hvm-params-length", RESTORE, False, f"expected at least 8 bytes, found {length}")
            return
        h = HVM_PARAMS_HDR.unpack(body, self.s.endian)
        if h["_res1"]:
            r(ERROR, "hvm-params-reserved", SPEC, True,
              f"expected reserved field zero, found {h['_res1']:#x}")
        if length != 8 + 16 * h["count"]:
            r(ERROR, "hvm-params-length", RESTORE, False,
              f"expected {8 + 16 * h['count']} bytes for {h['count']} params, found {length}")
            return
        if h["count"] == 0:
            r(WARNING, "errata-zero-content", SPEC, True,
              "HVM_PARAMS with no params (tolerated: errata for Xen 4.6-4.8 senders)")
            return
        for i in range(h["count"]):
            e = HVM_PARAMS_ENTRY.unpack(body, self.s.endian, 8 + 16 * i)
            if e["index"] >= HVM_NR_PARAMS:
                r(ERROR, "hvm-params-index", RESTORE, False,
                  f"expected param index < {HVM_NR_PARAMS}, found {e['index']}")

    def _rec_toolstack(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.report(ERROR, "toolstack-record", RESTORE, False,
                    "TOOLSTACK records are obsolete: Xen's restore rejects them as an unhandled "
                    "mandatory record")

    def _rec_verify(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.verify_mode = True

    def _rec_checkpoint(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.s.checkpoints += 1

    def _rec_checkpoint_dirty_pfn_list(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self.report(ERROR, "dirty-pfn-list-forward", RESTORE, False,
                    "CHECKPOINT_DIRTY_PFN_LIST belongs to the COLO back channel, found in the "
                    "forward stream")

    def _rec_static_data_end(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        if s.static_data_end:
            how = " (inferred at the first PAGE_DATA/X86_PV_P2M_FRAMES of a v2 stream)" if s.static_data_end_inferred else ""
            self.report(ERROR, "static-data-end-once", RESTORE, False,
                        f"expected one STATIC_DATA_END, found a second{how}")
        s.static_data_end = True

    def _policy(self, name: str, length: int, unit: int) -> None:
        s = self.s
        r = self.report
        if length == 0 or length % unit:
            r(ERROR, "policy-length", RESTORE, False,
              f"expected a non-zero multiple of {unit} bytes, found {length}")
        if s.static_data_end:
            r(ERROR, "policy-after-static-data-end", SPEC, True,
              f"expected {name} before STATIC_DATA_END, found after it: Xen's restore accepts "
              "it but never applies it")

    def _rec_x86_cpuid_policy(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._policy("X86_CPUID_POLICY", length, CPUID_LEAF.size)

    def _rec_x86_msr_policy(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._policy("X86_MSR_POLICY", length, MSR_ENTRY.size)
        if body and length % 16 == 0:
            for i in range(length // 16):
                e = MSR_ENTRY.unpack(body, self.s.endian, 16 * i)
                if e["flags"]:
                    self.report(ERROR, "msr-policy-flags", SPEC, True,
                                f"expected flags of MSR entry {i} zero, found {e['flags']:#x}")
                    break

    # -- end of stream -----------------------------------------------------------

    def finish(self) -> None:
        """Rules checked when the stream (or the last complete checkpoint) ends."""
        s = self.s
        r = self.report
        if s.guest == GUEST_PV:
            if not s.seen_pv_info:
                r(ERROR, "pv-info-missing", RESTORE, False,
                  "expected an X86_PV_INFO record in a PV stream, found none")
            if not s.seen_p2m:
                r(ERROR, "p2m-frames-missing", RESTORE, False,
                  "expected an X86_PV_P2M_FRAMES record in a PV stream, found none")
            if 0 not in s.vcpu_basic:
                r(ERROR, "vcpu0-missing", RESTORE, False,
                  "expected X86_PV_VCPU_BASIC for vcpu 0, found none (\"Sender didn't send "
                  "vcpu0's basic state\")")
            if s.max_pfn is not None:
                bad = sorted(p for p in s.p2m_frame_pfns if p > s.max_pfn)
                if bad:
                    r(ERROR, "p2m-frame-range", RESTORE, False,
                      f"expected p2m frame pfns <= max_pfn {s.max_pfn:#x}, found "
                      f"{', '.join(hex(p) for p in bad[:4])}")
                wrong = sorted(p for p, t in s.p2m_frame_types.items() if t != PT_NOTAB)
                if wrong:
                    r(ERROR, "p2m-frame-type", RESTORE, False,
                      f"expected p2m frame pages of type NOTAB, found pfn {wrong[0]:#x} of type "
                      f"{PAGE_TYPE_NAMES.get(s.p2m_frame_types[wrong[0]], '?')}")
        elif s.guest == GUEST_HVM and not s.hvm_context:
            r(ERROR, "hvm-context-missing", RESTORE, False,
              "expected an HVM_CONTEXT record in an HVM stream, found none")
        if s.version >= 3 and not s.static_data_end and not s.static_data_end_missing:
            r(ERROR, "static-data-end-missing", RESTORE, False,
              "expected a STATIC_DATA_END record in a version 3 stream, found none")
