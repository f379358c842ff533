"""The x86 PV vcpu context layer: sizes of the hypervisor structures that a
PV domain's vcpu and shared state is saved as.

Both stream formats carry them: the libxc v2/v3 records X86_PV_VCPU_BASIC,
X86_PV_VCPU_EXTENDED, X86_PV_VCPU_XSAVE and SHARED_INFO
(:mod:`xenstream.formats.libxc`) and the legacy format's PV tail
(:mod:`xenstream.formats.legacy`).  Guest widths are in bytes (8 for a 64-bit
guest, 4 for a 32-bit one), as in X86_PV_INFO.
"""

from __future__ import annotations

from typing import Dict

#: guest width -> sizeof(vcpu_guest_context) for that width
VCPU_CONTEXT_SIZE: Dict[int, int] = {8: 5168, 4: 2800}
#: sizeof(vcpu_guest_context) -> guest width: a context's size tells the width
GUEST_WIDTH_OF_CONTEXT: Dict[int, int] = {size: w for w, size in VCPU_CONTEXT_SIZE.items()}
#: the extended vcpu context (xen_domctl_ext_vcpucontext): at most this many
#: bytes in a v2 record, exactly this many in a legacy image
VCPU_EXTENDED_MAX = 128
#: an XSAVE blob starts with xcr0 and xcr0_accum (8 bytes each)
VCPU_XSAVE_MIN = 16
#: the shared info page
SHARED_INFO_SIZE = 4096
