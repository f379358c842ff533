"""x86 architectural names shared by the HVM and PV register layouts: flag
bits of the control registers, EFER and RFLAGS, the segment attribute format
Xen saves, the FXSAVE image's header, MSR names, and the register order of
the x86-64 ``elf_gregset_t``.

Data only; :mod:`xenstream.consumers.regs` decodes with it.  A bit field is
``(name, shift, width)``.
"""

from __future__ import annotations

from typing import Dict, Tuple

from xenstream.layout import Layout

BitFields = Tuple[Tuple[str, int, int], ...]

#: bit -> name (the architectural flag names)
CR0_FLAGS: Dict[int, str] = {0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP",
                             18: "AM", 29: "NW", 30: "CD", 31: "PG"}
CR4_FLAGS: Dict[int, str] = {
    0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE", 8: "PCE",
    9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE", 14: "SMXE",
    16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP", 21: "SMAP", 22: "PKE",
    23: "CET", 24: "PKS", 27: "LASS",
}
EFER_FLAGS: Dict[int, str] = {0: "SCE", 8: "LME", 10: "LMA", 11: "NXE", 12: "SVME",
                              13: "LMSLE", 14: "FFXSR", 15: "TCE", 21: "AUTOIBRS"}
RFLAGS_FLAGS: Dict[int, str] = {0: "CF", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF",
                                10: "DF", 11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC",
                                19: "VIF", 20: "VIP", 21: "ID"}
CR0_PE = 1 << 0
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LMA = 1 << 10
RFLAGS_VM = 1 << 17

#: ``struct segment_register``'s ``attr`` (Xen's 12-bit packed format, as the
#: VMCB has it), which the HVM CPU record stores as ``*_arbytes``
SEGMENT_ATTR: BitFields = (("type", 0, 4), ("s", 4, 1), ("dpl", 5, 2), ("p", 7, 1),
                           ("avl", 8, 1), ("l", 9, 1), ("db", 10, 1), ("g", 11, 1))

#: the start of an FXSAVE image (``fpu_regs`` / ``fpu_ctxt``, 512 bytes)
FXSAVE_SIZE = 512
FXSAVE_HEAD = Layout(
    "fxsave header",
    [("fcw", "H"), ("fsw", "H"), ("ftw", "B"), ("_res", "B"), ("fop", "H"), ("fip", "Q"),
     ("fdp", "Q"), ("mxcsr", "I"), ("mxcsr_mask", "I")],
)

#: MSR index -> name, for the MSRs the HVM CPU_MSR and PV X86_PV_VCPU_MSRS
#: records carry (``msrs_to_send[]`` in Xen's hvm.c and domctl.c)
MSR_NAMES: Dict[int, str] = {
    0x00000048: "SPEC_CTRL",
    0x00000140: "INTEL_MISC_FEATURES_ENABLES",
    0x000006E1: "PKRS",
    0x00000D90: "IA32_BNDCFGS",
    0x00000DA0: "IA32_XSS",
    0xC0000080: "EFER",
    0xC0000081: "STAR",
    0xC0000082: "LSTAR",
    0xC0000083: "CSTAR",
    0xC0000084: "SYSCALL_MASK",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
    0xC0000102: "SHADOW_GS_BASE",
    0xC0000103: "TSC_AUX",
    0xC001011F: "VIRT_SPEC_CTRL",
    0xC0011027: "AMD64_DR0_ADDRESS_MASK",
    0xC0011019: "AMD64_DR1_ADDRESS_MASK",
    0xC001101A: "AMD64_DR2_ADDRESS_MASK",
    0xC001101B: "AMD64_DR3_ADDRESS_MASK",
}

#: the x86-64 ``elf_gregset_t`` (``struct user_regs_struct``): the register
#: order of an NT_PRSTATUS note's ``pr_reg``, 27 u64s, as gdb reads it
ELF_GREGSET = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
               "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
               "gs_base", "ds", "es", "fs", "gs")
