"""libxc records of x86 PV domains, X86_PV_INFO, X86_PV_P2M_FRAMES, the
X86_PV_VCPU_* records and SHARED_INFO: their layouts and their rules
(:class:`PvRecords`).

The sizes of the vcpu contexts they carry are in :mod:`xenstream.formats.pv`.
"""

from __future__ import annotations

import struct
from typing import Callable, List, Optional

from xenstream.formats import hvm, pv
from xenstream.formats.libxc_pages import PAGE_SIZE, PAGE_TYPE_NAMES, PT_NOTAB
from xenstream.formats.libxc_state import LibxcState, RecordFamily, Report
from xenstream.layout import Layout

X86_PV_INFO = Layout(
    "X86_PV_INFO",
    [("guest_width", "B"), ("pt_levels", "B"), ("_res0", "H"), ("_res1", "I")],
)
X86_PV_P2M_FRAMES_HDR = Layout("X86_PV_P2M_FRAMES", [("start_pfn", "I"), ("end_pfn", "I")])
X86_PV_VCPU_HDR = Layout("X86_PV_VCPU header", [("vcpu_id", "I"), ("_res1", "I")])
VCPU_MSR_ENTRY = Layout("xen_domctl_vcpu_msr", [("index", "I"), ("_res1", "I"), ("value", "Q")])


def p2m_frames_length(start_pfn: int, end_pfn: int, width: int) -> int:
    """The exact X86_PV_P2M_FRAMES body length the restorer demands."""
    fpp = PAGE_SIZE // width
    return 8 + 8 * ((end_pfn // fpp + 1) - start_pfn // fpp)


class PvRecords(RecordFamily):
    """The rules of the PV records, and the PV rules at the end of the stream."""

    def __init__(self, s: LibxcState, report: Report, *, nr_vcpus: Optional[int],
                 notes: List[str]) -> None:
        super().__init__(s, report)
        self.nr_vcpus = nr_vcpus  # from the image's own config, when it has one
        self.notes = notes
        self._noted_vcpu = False
        self._last_vcpu = 0
        self._noted_xsave = False

    def rec_x86_pv_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        if s.seen_pv_info:
            r("pv-info-once",
              "expected X86_PV_INFO once, found a second one")
        s.seen_pv_info = True
        assert body is not None
        if length < 8:
            r("pv-info-length", f"expected 8 bytes, found {length}")
            return
        if length != 8:
            r("pv-info-length-extra", f"expected 8 bytes, found {length}")
        f = X86_PV_INFO.unpack(body, s.endian)
        if (f["guest_width"], f["pt_levels"]) not in ((4, 3), (8, 4)):
            r("pv-info-width",
              "expected guest_width/pt_levels 8/4 or 4/3, found "
              f"{f['guest_width']}/{f['pt_levels']}")
        else:
            s.width = f["guest_width"]
            s.pt_levels = f["pt_levels"]
        if f["_res0"] or f["_res1"]:
            r("pv-info-reserved", "expected reserved fields zero, found non-zero")

    def _need_pv_info(self, name: str, *, enforced: bool = True) -> None:
        """X86_PV_INFO must come first.  Xen checks it for P2M_FRAMES and
        SHARED_INFO; for vcpu records it does not (a 64-bit domain has the
        native width already; a 32-bit context then fails on its size)."""
        if not self.s.seen_pv_info:
            self.report("pv-info-first" if enforced else "pv-info-before-vcpu",
                        f"expected X86_PV_INFO before {name}, found none")

    def rec_x86_pv_p2m_frames(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        s = self.s
        r = self.report
        self._need_pv_info("X86_PV_P2M_FRAMES")
        if s.version == 2 or not s.static_data_end:
            self._infer_static_data_end()
        s.seen_p2m = True
        assert body is not None
        if length < 8:
            r("p2m-frames-length",
              f"expected at least 8 bytes, found {length}")
            return
        f = X86_PV_P2M_FRAMES_HDR.unpack(body, s.endian)
        start, end = f["start_pfn"], f["end_pfn"]
        if start > end:
            r("p2m-frames-range",
              f"expected start_pfn <= end_pfn, found {start:#x} > {end:#x}")
            return
        want = p2m_frames_length(start, end, s.width)
        if length != want:
            r("p2m-frames-length",
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
            r("vcpu-length", f"expected at least 8 bytes, found {length}")
            return None
        h = X86_PV_VCPU_HDR.unpack(body, s.endian)
        if h["_res1"]:
            r("vcpu-reserved",
              f"expected reserved field zero, found {h['_res1']:#x}")
        blob = length - 8
        if blob == 0:
            r("errata-zero-content",
              f"{name} for vcpu {h['vcpu_id']} has no content (tolerated: errata for Xen 4.6-4.8 "
              "senders)")
            return None
        vid = h["vcpu_id"]
        if self.nr_vcpus is not None:
            if vid >= self.nr_vcpus:
                r("vcpu-id",
                  f"expected vcpu_id < {self.nr_vcpus} (max_vcpus in the image's config), "
                  f"found {vid}")
        elif not self._noted_vcpu:
            self._noted_vcpu = True
            self.notes.append("vcpu ids not checked against the restoring domain's vcpu count: "
                              "the image carries no configuration")
        self._last_vcpu = vid
        return blob

    def rec_x86_pv_vcpu_basic(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_BASIC", length, body)
        if blob is None:
            return
        want = pv.VCPU_CONTEXT_SIZE[self.s.width]
        if blob != want:
            self.report("vcpu-basic-size",
                        f"expected a {want}-byte context for a {self.s.width * 8}-bit guest, "
                        f"found {blob}")
            return
        self.s.vcpu_basic.add(self._last_vcpu)

    def rec_x86_pv_vcpu_extended(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_EXTENDED", length, body)
        if blob is None:
            return
        assert body is not None
        if blob > pv.VCPU_EXTENDED_MAX:
            self.report("vcpu-extended-size",
                        f"expected at most {pv.VCPU_EXTENDED_MAX} bytes of context, found {blob}")
            return
        if blob >= 8:
            vcpu, size = struct.unpack_from(f"{self.s.endian}II", body, 8)
            if size < 32:
                self.report("vcpu-extended-embedded-size",
                            f"expected the context's own size field >= 32, found {size}")
            if vcpu != self._last_vcpu:
                self.report("vcpu-extended-embedded-vcpu",
                            f"expected the context's own vcpu field to be {self._last_vcpu} (the "
                            f"record's vcpu_id; Xen uses the embedded one), found {vcpu}")
        else:
            self.report("vcpu-extended-embedded-size",
                        f"expected at least 8 bytes of context (vcpu, size), found {blob}")

    def rec_x86_pv_vcpu_xsave(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_XSAVE", length, body)
        if blob is None:
            return
        r = self.report
        if blob < pv.VCPU_XSAVE_MIN:
            r("vcpu-xsave-size",
              f"expected at least 16 bytes (xcr0, xcr0_accum), found {blob}")
            return
        assert body is not None
        # XEN_DOMCTL_setvcpuextstate (xen/arch/x86/domctl.c)
        xcr0, accum = struct.unpack_from(self.s.endian + "QQ", body, 8)
        if not accum:
            if xcr0:
                r("vcpu-xsave-state",
                  f"expected xcr0 0 when xcr0_accum is 0, found {xcr0:#x}")
            if blob != 16:
                r("vcpu-xsave-size",
                  f"expected 16 bytes when xcr0_accum is 0, found {blob}")
            return
        if blob == 16:
            # XEN_DOMCTL_setvcpuextstate leaves -EINVAL: validate_xstate only runs
            # for an area of at least the legacy area and the xsave header
            r("vcpu-xsave-size",
              f"expected 16 bytes only when xcr0_accum is 0, found 16 with xcr0_accum "
              f"{accum:#x}")
            return
        if blob < 16 + hvm.XSTATE_AREA_MIN_SIZE:
            r("vcpu-xsave-size",
              f"expected 16 bytes or at least {16 + hvm.XSTATE_AREA_MIN_SIZE} (legacy area and "
              f"xsave header), found {blob}")
            return
        if not hvm.valid_xcr0(xcr0) or not hvm.valid_xcr0(accum) or xcr0 & ~accum:
            r("vcpu-xsave-state",
              f"expected valid xcr0/xcr0_accum with xcr0 within xcr0_accum, found "
              f"{xcr0:#x}/{accum:#x}")
            return
        xstate_bv, xcomp_bv = struct.unpack_from(self.s.endian + "QQ", body, 8 + 16 + 512)
        if xstate_bv & ~accum:
            r("vcpu-xsave-state",
              f"expected xstate_bv within xcr0_accum {accum:#x}, found {xstate_bv:#x}")
        if xcomp_bv:
            r("vcpu-xsave-compacted",
              f"expected an uncompacted XSAVE area (xcomp_bv 0), found xcomp_bv {xcomp_bv:#x}")
        want = 16 + hvm.xstate_uncompressed_size(accum)
        if blob != want:
            r("vcpu-xsave-size" if blob > want else "vcpu-xsave-size-short",
              f"expected {want} bytes for xcr0_accum {accum:#x}, found {blob}")
        if not self._noted_xsave:
            self._noted_xsave = True
            self.notes.append("PV xsave sizes not checked against the restoring host's "
                              "xfeature_mask (a property of the host, not of the image)")

    def rec_x86_pv_vcpu_msrs(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        blob = self._vcpu("X86_PV_VCPU_MSRS", length, body)
        if blob is None:
            return
        assert body is not None
        if blob % 16:
            self.report("vcpu-msrs-size",
                        f"expected a multiple of 16 bytes, found {blob}")
            return
        for i in range(blob // 16):
            e = VCPU_MSR_ENTRY.unpack(body, self.s.endian, 8 + 16 * i)
            if e["_res1"]:
                self.report("vcpu-msrs-reserved",
                            f"expected reserved field of MSR entry {i} zero, found {e['_res1']:#x}")
                break

    def rec_shared_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._need_pv_info("SHARED_INFO")
        if length != pv.SHARED_INFO_SIZE:
            self.report("shared-info-length",
                        f"expected 4096 bytes, found {length}")

    def finish(self) -> None:
        """The PV rules checked when the stream ends."""
        s = self.s
        r = self.report
        if not s.seen_pv_info:
            r("pv-info-missing",
              "expected an X86_PV_INFO record in a PV stream, found none")
        if not s.seen_p2m:
            r("p2m-frames-missing",
              "expected an X86_PV_P2M_FRAMES record in a PV stream, found none")
        if 0 not in s.vcpu_basic:
            r("vcpu0-missing",
              "expected X86_PV_VCPU_BASIC for vcpu 0, found none (\"Sender didn't send "
              "vcpu0's basic state\")")
        if s.max_pfn is not None:
            bad = sorted(p for p in s.p2m_frame_pfns if p > s.max_pfn)
            if bad:
                r("p2m-frame-range",
                  f"expected p2m frame pfns <= max_pfn {s.max_pfn:#x}, found "
                  f"{', '.join(hex(p) for p in bad[:4])}")
            wrong = sorted(p for p, t in s.p2m_frame_types.items() if t != PT_NOTAB)
            if wrong:
                r("p2m-frame-type",
                  f"expected p2m frame pages of type NOTAB, found pfn {wrong[0]:#x} of type "
                  f"{PAGE_TYPE_NAMES.get(s.p2m_frame_types[wrong[0]], '?')}")
