"""libxc records of x86 PV domains: X86_PV_INFO, X86_PV_P2M_FRAMES, the
X86_PV_VCPU_* records and SHARED_INFO.

The sizes of the vcpu contexts they carry are in :mod:`xenstream.formats.pv`.
"""

from __future__ import annotations

from xenstream.formats.libxc_pages import PAGE_SIZE
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
