"""What the libxc layer's rules share: the stream's state and the base of the
record families.

:class:`xenstream.formats.libxc.LibxcChecker` dispatches each record to the
family of its type (:class:`~xenstream.formats.libxc_pages.PageDataRecords`,
:class:`~xenstream.formats.libxc_pv.PvRecords`,
:class:`~xenstream.formats.libxc_hvm.HvmRecords`); all of them update one
:class:`LibxcState`, which the verifier reads for its summary and its
PAGE_DATA filter, and report through one callable.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Set

GUEST_PV = "pv"
GUEST_HVM = "hvm"

Report = Callable[..., None]
"""``report(severity, rule, authority, tolerated, message, *, offset=None)``"""

Handler = Callable[[int, Optional[bytes], Callable[[int], bytes]], None]
"""The rules of one record type: ``handler(length, body, read_prefix)``, with
``body`` None for PAGE_DATA (see :meth:`~xenstream.formats.libxc.LibxcChecker.record`)."""


class LibxcState:
    """What the libxc layer has seen so far, for ordering rules and summaries."""

    def __init__(self) -> None:
        self.version = 0
        self.endian = "<"
        self.guest: Optional[str] = None  # "pv" | "hvm" | None (unknown type)
        self.dhdr_type = 0
        self.converted_from_legacy = False
        self.xen_version = ""
        self.seen_pv_info = False
        self.width = 8  # PV domain width; native until X86_PV_INFO
        self.pt_levels = 4
        self.seen_p2m = False
        self.max_pfn: Optional[int] = None  # PV: highest end_pfn in P2M_FRAMES
        self.p2m_frame_pfns: Set[int] = set()
        self.p2m_frame_types: Dict[int, int] = {}
        self.static_data_end = False
        self.static_data_end_inferred = False
        self.static_data_end_missing = False  # v3: reported missing before memory
        self.vcpu_basic: Set[int] = set()
        self.hvm_context = False
        self.verify_mode = False
        self.checkpoints = 0
        self.pages = 0
        self.page_records = 0
        self.pfns_max: Optional[int] = None
        self.hvm_vcpus: Set[int] = set()
        self.ended = False


class RecordFamily:
    """The rules of a family of record types, one ``rec_<name>`` method per
    type, over the state the whole stream shares."""

    def __init__(self, s: LibxcState, report: Report) -> None:
        self.s = s
        self.report = report

    def _infer_static_data_end(self) -> None:
        """STATIC_DATA_END is due at the first PAGE_DATA or X86_PV_P2M_FRAMES:
        version 2 has none, so it is inferred there; in version 3 it is missing."""
        s = self.s
        if s.static_data_end:
            return
        if s.version >= 3:
            # the restore stops here ("No STATIC_DATA_END seen"): say it once,
            # and leave the later records' rules to judge them on their own
            if not s.static_data_end_missing:
                s.static_data_end_missing = True
                self.report("static-data-end-missing",
                            "expected STATIC_DATA_END before the first PAGE_DATA and "
                            "X86_PV_P2M_FRAMES in a version 3 stream, found none")
            return
        s.static_data_end = True
        s.static_data_end_inferred = True
