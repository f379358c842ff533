"""The x86 PV vcpu context layer: sizes of the hypervisor structures that a
PV domain's vcpu and shared state is saved as.

Both stream formats carry them: the libxc v2/v3 records X86_PV_VCPU_BASIC,
X86_PV_VCPU_EXTENDED, X86_PV_VCPU_XSAVE and SHARED_INFO
(:mod:`xenstream.formats.libxc`) and the legacy format's PV tail
(:mod:`xenstream.formats.legacy`).  Guest widths are in bytes (8 for a 64-bit
guest, 4 for a 32-bit one), as in X86_PV_INFO.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from xenstream.layout import Layout

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

# -- vcpu_guest_context, field by field ---------------------------------------------
#
# xen/include/public/arch-x86/xen.h (struct vcpu_guest_context) with the
# cpu_user_regs of xen-x86_64.h and xen-x86_32.h; a 32-bit guest's context is
# the i386 layout (unsigned long = 4 bytes), as a 64-bit Xen's compat ABI has
# it.  The layout has not changed since Xen 3.x.  Three pieces, by guest
# width: the flags and user registers after the 512-byte FPU image, the trap
# table, and everything after it.

VGCF_FLAGS = {0: "i387_valid", 2: "in_kernel", 3: "failsafe_disables_events",
              4: "syscall_disables_events", 5: "online"}
VGCF_IN_KERNEL = 1 << 2
VGCF_ONLINE = 1 << 5
FPU_CTXT_SIZE = 512


def _seg16(name: str, pad: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    return [(name, "H")] + [(f"_{name}_{n}", code) for n, code in pad]


_REGS64: List[Tuple[str, str]] = (
    [(r, "Q") for r in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                        "rax", "rcx", "rdx", "rsi", "rdi")]
    + [("error_code", "I"), ("entry_vector", "I"), ("rip", "Q"), ("cs", "H"), ("_pad0", "H"),
       ("saved_upcall_mask", "B"), ("_pad1a", "B"), ("_pad1b", "H"), ("rflags", "Q"),
       ("rsp", "Q")]
    + [f for s in ("ss", "es", "ds", "fs", "gs") for f in _seg16(s, [("a", "H"), ("b", "I")])]
)
_REGS32: List[Tuple[str, str]] = (
    [(r, "I") for r in ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax")]
    + [("error_code", "H"), ("entry_vector", "H"), ("eip", "I"), ("cs", "H"),
       ("saved_upcall_mask", "B"), ("_pad0", "B"), ("eflags", "I"), ("esp", "I")]
    + [f for s in ("ss", "es", "ds", "fs", "gs") for f in _seg16(s, [("a", "H")])]
)
#: guest width -> offset of ``flags`` (user_regs follows it)
VGC_REGS_OFFSET = {8: FPU_CTXT_SIZE, 4: FPU_CTXT_SIZE}
#: guest width -> ``flags`` and ``user_regs``
VGC_REGS: Dict[int, Layout] = {
    8: Layout("vcpu_guest_context flags, user_regs (x86_64)", [("flags", "Q")] + _REGS64),
    4: Layout("vcpu_guest_context flags, user_regs (x86_32)", [("flags", "I")] + _REGS32),
}
#: guest width -> one trap_info entry
TRAP_INFO: Dict[int, Layout] = {
    8: Layout("trap_info (x86_64)", [("vector", "B"), ("flags", "B"), ("cs", "H"),
                                    ("_pad", "I"), ("address", "Q")]),
    4: Layout("trap_info (x86_32)", [("vector", "B"), ("flags", "B"), ("cs", "H"),
                                    ("address", "I")]),
}
TRAP_ENTRIES = 256
VGC_TRAPS_OFFSET = {w: VGC_REGS_OFFSET[w] + VGC_REGS[w].size for w in (8, 4)}


def _tail(word: str, callbacks: List[str], bases: List[str]) -> List[Tuple[str, str]]:
    return ([("ldt_base", word), ("ldt_ents", word)]
            + [(f"gdt_frame{i}", word) for i in range(16)]
            + [("gdt_ents", word), ("kernel_ss", word), ("kernel_sp", word)]
            + [(f"cr{i}", word) for i in range(8)]
            + [(f"dr{i}", word) for i in range(8)]
            + [(c, word) for c in callbacks] + [("vm_assist", word)]
            + [(b, "Q") for b in bases])


#: guest width -> everything after the trap table
VGC_TAIL: Dict[int, Layout] = {
    8: Layout("vcpu_guest_context tail (x86_64)", _tail(
        "Q", ["event_callback_eip", "failsafe_callback_eip", "syscall_callback_eip"],
        ["fs_base", "gs_base_kernel", "gs_base_user"])),
    4: Layout("vcpu_guest_context tail (x86_32)", _tail(
        "I", ["event_callback_cs", "event_callback_eip", "failsafe_callback_cs",
              "failsafe_callback_eip"], [])),
}
VGC_TAIL_OFFSET = {w: VGC_TRAPS_OFFSET[w] + TRAP_ENTRIES * TRAP_INFO[w].size for w in (8, 4)}
GDT_ENTRIES_PER_FRAME = 512
for _w in (8, 4):
    assert VGC_TAIL_OFFSET[_w] + VGC_TAIL[_w].size == VCPU_CONTEXT_SIZE[_w]
assert (VGC_TRAPS_OFFSET[8], VGC_TAIL_OFFSET[8], VGC_TRAPS_OFFSET[4], VGC_TAIL_OFFSET[4]) == (
    720, 4816, 584, 2632)

# -- xen_domctl_ext_vcpucontext (xen/include/public/domctl.h) -------------------------

EXT_VCPUCONTEXT = Layout(
    "xen_domctl_ext_vcpucontext",
    [("vcpu", "I"), ("size", "I"), ("syscall32_callback_eip", "Q"),
     ("sysenter_callback_eip", "Q"), ("syscall32_callback_cs", "H"),
     ("sysenter_callback_cs", "H"), ("syscall32_disables_events", "B"),
     ("sysenter_disables_events", "B"), ("_pad", "H"),
     # the union: mcg_cap (Xen 4.2) or struct hvm_vmce_vcpu (caps first)
     ("mcg_cap", "Q"), ("mci_ctl2_bank0", "Q"), ("mci_ctl2_bank1", "Q"), ("mcg_ext_ctl", "Q")],
)
#: fields that only a context of at least this ``size`` carries (its history:
#: 32 bytes at first, 40 from Xen 4.2, 56 from 4.3, 64 from 4.10)
EXT_VCPUCONTEXT_SINCE = {"mcg_cap": 40, "mci_ctl2_bank0": 56, "mci_ctl2_bank1": 56,
                         "mcg_ext_ctl": 64}
assert EXT_VCPUCONTEXT.size == 64
