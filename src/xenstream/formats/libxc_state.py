"""The state of one libxc stream that the layer's rules share.

:class:`LibxcState` is what the libxc layer has seen so far; the rules
(:class:`xenstream.formats.libxc.LibxcChecker`) update it and the verifier
reads it for its summary and its PAGE_DATA filter.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Set

GUEST_PV = "pv"
GUEST_HVM = "hvm"

Report = Callable[..., None]
"""``report(severity, rule, authority, tolerated, message, *, offset=None)``"""


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
