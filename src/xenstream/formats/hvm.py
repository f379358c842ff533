"""x86 HVM context blob: the body of libxc's HVM_CONTEXT record, and the
context in the legacy format's HVM tail.

The blob is a run of ``{u16 typecode, u16 instance, u32 length}`` descriptors,
each followed by ``length`` body bytes with no padding, HEADER first and END
(typecode 0) last.  Rules come from the reference (``xen-formats.md`` section
5) and, where they say more, from Xen's own loader: ``hvm_load()`` and
``_hvm_check_entry()`` in ``xen/arch/x86/hvm/save.c`` plus the per-type check
and load handlers (``hvm.c``, ``vpic.c``, ``vlapic.c``, ``irq.c``,
``emul-i8254.c``, ``mtrr.c``, ``viridian.c``).

Where the reference and Xen's source (HEAD) differ or the reference is
silent, this module follows the source:

* CPU (2) is loaded zero-extended: *any* length <= 1032 is accepted (1016 is
  re-laid out as the pre-3.4 compat layout, every length other than 1032 gets
  ``flags`` forced to FPU_INITIALISED).  Lengths other than 1016/1024/1032
  were never written by any Xen, so they are a spec error that restore
  tolerates.
* CPU_XSAVE (16): ``validate_xstate()`` demands ``xcomp_bv == 0`` as a whole
  (EOPNOTSUPP), not merely "not compacted" (bit 63), and also rejects non-zero
  ``reserved[6]`` (EIO), xstate_bv or xcr0 outside xcr0_accum, and an invalid
  xcr0 / xcr0_accum (x87 missing, YMM without SSE, ...).  Hence the empty
  records Xen < 4.12 wrote (xcr0_accum 0) no longer load at HEAD.
* CPU_MSR (20): a wrong ``length`` vs ``count`` and a non-zero ``_rsvd`` are
  EOPNOTSUPP, an index outside the list is ENXIO; length < 24 is EINVAL
  (so count 0 is refused even though 8 == 8 + 16*0).
* HEADER: ``hvm_get_entry(HEADER)`` checks typecode and length only; a
  non-zero instance is accepted.
* A second HEADER (typecode 1) later in the blob is EINVAL: the loader has no
  handler registered for typecode 1.  Typecodes 15 and 17 (VIRIDIAN_*) are
  likewise EINVAL on a hypervisor built without CONFIG_VIRIDIAN; this module
  treats them as known.
* A blob that ends with 1..7 bytes (not a whole descriptor) fails like a blob
  without END: "save did not end with a null entry", ENODATA.
* END is recognised by typecode alone; instance and length are not checked.
* Per-domain types ignore the instance, except PIC: instance >= 2 is ENOENT
  and ``is_master`` must equal ``instance == 0``.
* Duplicate (typecode, instance) entries are loaded one after the other, so
  the last one wins; restore does not object.

The CPU_XSAVE size check uses the standard (non-compacted) XSAVE offsets from
a fixed table.  Xen takes them from the restoring host's CPUID leaf 0xD, but
they are architectural constants on every shipping CPU, and the table covers
every bit of Xen's X86_XCR0_STATES, so the check is exact in practice.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from xenstream.layout import Layout
from xenstream.rules import rule

# -- descriptor and header ---------------------------------------------------

DESCRIPTOR = Layout("hvm_save_descriptor", [("typecode", "H"), ("instance", "H"), ("length", "I")])
HEADER = Layout(
    "hvm_save_header",
    [("magic", "I"), ("version", "I"), ("changeset", "Q"), ("cpuid", "I"), ("gtsc_khz", "I")],
)
HVM_SAVE_MAGIC = 0x54381286
HVM_SAVE_VERSION = 1
HVM_SAVE_CODE_MAX = 20

# -- typecodes ----------------------------------------------------------------

PER_VCPU = "vcpu"
PER_DOM = "dom"
KIND_STRICT = "strict"  # length == size
KIND_ZERO_EXTEND = "zero-extend"  # length <= size, tail zero-filled
KIND_CUSTOM = "custom"  # CPU (compat), CPU_XSAVE, CPU_MSR


class TypeInfo(NamedTuple):
    code: int
    name: str
    per: str  # PER_VCPU | PER_DOM
    size: int  # HEAD sizeof on x86_64; the minimum for CPU_XSAVE / CPU_MSR
    kind: str  # KIND_*
    older: Tuple[int, ...] = ()  # sizes earlier Xen versions wrote


END = 0
HEADER_CODE = 1
CPU = 2
PIC = 3
IOAPIC = 4
LAPIC = 5
LAPIC_REGS = 6
PCI_IRQ = 7
ISA_IRQ = 8
PCI_LINK = 9
PIT = 10
RTC = 11
HPET = 12
PMTIMER = 13
MTRR = 14
VIRIDIAN_DOMAIN = 15
CPU_XSAVE = 16
VIRIDIAN_VCPU = 17
VMCE_VCPU = 18
TSC_ADJUST = 19
CPU_MSR = 20

CPU_SIZE = 1032
CPU_SIZE_NO_FLAGS = 1024  # Xen 3.4 - 4.6
CPU_SIZE_COMPAT = 1016  # before 3.4: no msr_tsc_aux
XSAVE_HDR_SIZE = 24  # xfeature_mask, xcr0, xcr0_accum
XSTATE_AREA_MIN_SIZE = 512 + 64  # FXSAVE area + XSAVE header
MSR_HDR_SIZE = 8  # u32 count + 4 bytes of alignment padding
MSR_ENTRY_SIZE = 16

TYPECODES: Dict[int, TypeInfo] = {
    t.code: t
    for t in (
        TypeInfo(END, "END", PER_DOM, 0, KIND_STRICT),
        TypeInfo(HEADER_CODE, "HEADER", PER_DOM, 24, KIND_STRICT),
        TypeInfo(CPU, "CPU", PER_VCPU, CPU_SIZE, KIND_CUSTOM, (CPU_SIZE_COMPAT, CPU_SIZE_NO_FLAGS)),
        TypeInfo(PIC, "PIC", PER_DOM, 8, KIND_STRICT),
        TypeInfo(IOAPIC, "IOAPIC", PER_DOM, 400, KIND_STRICT),
        TypeInfo(LAPIC, "LAPIC", PER_VCPU, 32, KIND_ZERO_EXTEND, (24,)),
        TypeInfo(LAPIC_REGS, "LAPIC_REGS", PER_VCPU, 1024, KIND_STRICT),
        TypeInfo(PCI_IRQ, "PCI_IRQ", PER_DOM, 16, KIND_STRICT),
        TypeInfo(ISA_IRQ, "ISA_IRQ", PER_DOM, 8, KIND_STRICT),
        TypeInfo(PCI_LINK, "PCI_LINK", PER_DOM, 8, KIND_STRICT),
        TypeInfo(PIT, "PIT", PER_DOM, 56, KIND_STRICT),
        TypeInfo(RTC, "RTC", PER_DOM, 24, KIND_ZERO_EXTEND, (16,)),
        TypeInfo(HPET, "HPET", PER_DOM, 1048, KIND_STRICT),
        TypeInfo(PMTIMER, "PMTIMER", PER_DOM, 8, KIND_STRICT),
        TypeInfo(MTRR, "MTRR", PER_VCPU, 240, KIND_STRICT),
        TypeInfo(VIRIDIAN_DOMAIN, "VIRIDIAN_DOMAIN", PER_DOM, 32, KIND_ZERO_EXTEND, (16, 24)),
        TypeInfo(CPU_XSAVE, "CPU_XSAVE", PER_VCPU, XSAVE_HDR_SIZE + XSTATE_AREA_MIN_SIZE, KIND_CUSTOM),
        TypeInfo(VIRIDIAN_VCPU, "VIRIDIAN_VCPU", PER_VCPU, 216, KIND_ZERO_EXTEND, (8, 16)),
        TypeInfo(VMCE_VCPU, "VMCE_VCPU", PER_VCPU, 32, KIND_ZERO_EXTEND, (8, 24)),
        TypeInfo(TSC_ADJUST, "TSC_ADJUST", PER_VCPU, 8, KIND_STRICT),
        TypeInfo(CPU_MSR, "CPU_MSR", PER_VCPU, MSR_HDR_SIZE + MSR_ENTRY_SIZE, KIND_CUSTOM),
    )
}

# -- CPU record (struct hvm_hw_cpu) -------------------------------------------

CPU_FPU_SIZE = 512  # fpu_regs: an FXSAVE image; the registers below start here
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")

_CPU_COMMON: List[Tuple[str, str]] = (
    [(r, "Q") for r in ("rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi", "rsp")]
    + [(f"r{i}", "Q") for i in range(8, 16)]
    + [("rip", "Q"), ("rflags", "Q")]
    + [(f"cr{i}", "Q") for i in (0, 2, 3, 4)]
    + [(f"dr{i}", "Q") for i in (0, 1, 2, 3, 6, 7)]
    + [(f"{s}_sel", "I") for s in SEGMENTS]
    + [(f"{s}_limit", "I") for s in SEGMENTS]
    + [("idtr_limit", "I"), ("gdtr_limit", "I")]
    + [(f"{s}_base", "Q") for s in SEGMENTS]
    + [("idtr_base", "Q"), ("gdtr_base", "Q")]
    + [(f"{s}_arbytes", "I") for s in SEGMENTS]
    + [("sysenter_cs", "Q"), ("sysenter_esp", "Q"), ("sysenter_eip", "Q"), ("shadow_gs", "Q")]
    + [(m, "Q") for m in ("msr_flags", "msr_lstar", "msr_star", "msr_cstar", "msr_syscall_mask")]
    + [("msr_efer", "Q")]
)
# Registers of the HEAD layout (1032 bytes), unpacked from offset 512.
CPU_REGS = Layout(
    "hvm_hw_cpu",
    _CPU_COMMON
    + [("msr_tsc_aux", "Q"), ("tsc", "Q"), ("pending_event", "I"), ("error_code", "I")]
    + [("flags", "I"), ("pad0", "I")],
)
# Registers of the pre-3.4 compat layout (1016 bytes): no msr_tsc_aux.
CPU_REGS_COMPAT = Layout(
    "hvm_hw_cpu_compat",
    _CPU_COMMON + [("tsc", "Q"), ("pending_event", "I"), ("error_code", "I")],
)
assert CPU_FPU_SIZE + CPU_REGS.size == CPU_SIZE
assert CPU_FPU_SIZE + CPU_REGS_COMPAT.size == CPU_SIZE_COMPAT

XEN_X86_FPU_INITIALISED = 1

X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_PG = 1 << 31
# PE MP EM TS ET NE WP AM NW CD PG: everything else is reserved (hvm.c).
CR0_VALID = 0x0000003F | (1 << 16) | (1 << 18) | (1 << 29) | (1 << 30) | (1 << 31)
# hvm_cr4_guest_valid_bits() with every feature on: VME PVI TSD DE PSE PAE MCE
# PGE PCE OSFXSR OSXMMEXCPT UMIP VMXE FSGSBASE PCIDE OSXSAVE SMEP SMAP PKE CET
# PKS LASS.  A bit outside this set is refused whatever the CPUID policy.
CR4_VALID_MAX = 0x00000FFF | (1 << 13) | (0x3 << 16) | (1 << 18) | (0x1F << 20) | (1 << 27)
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_KNOWN = (1 << 0) | EFER_LME | EFER_LMA | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 21)
MAXPHYSADDR_MAX = 52

# -- CPU_XSAVE (struct hvm_hw_cpu_xsave) --------------------------------------

XSAVE = Layout("hvm_hw_cpu_xsave", [("xfeature_mask", "Q"), ("xcr0", "Q"), ("xcr0_accum", "Q")])
XSAVE_HDR = Layout(
    "xsave_hdr",
    [("xstate_bv", "Q"), ("xcomp_bv", "Q")] + [(f"reserved{i}", "Q") for i in range(6)],
)
XSAVE_HDR_OFFSET = XSAVE_HDR_SIZE + 512  # 536, within the record body
XSTATE_COMPACTION_ENABLED = 1 << 63
XCR0_X87, XCR0_SSE, XCR0_YMM = 1 << 0, 1 << 1, 1 << 2
XCR0_BNDREGS, XCR0_BNDCSR = 1 << 3, 1 << 4
XCR0_OPMASK, XCR0_ZMM, XCR0_HI_ZMM = 1 << 5, 1 << 6, 1 << 7
XCR0_TILE_CFG, XCR0_TILE_DATA = 1 << 17, 1 << 18
# Standard-format (offset, size) of each XCR0 component beyond x87/SSE, as
# CPUID.(EAX=0xD, ECX=i) reports them.
XSTATE_COMPONENTS: Dict[int, Tuple[int, int]] = {
    2: (576, 256),  # YMM_Hi128
    3: (960, 64),  # BNDREGS
    4: (1024, 64),  # BNDCSR
    5: (1088, 64),  # opmask
    6: (1152, 512),  # ZMM_Hi256
    7: (1664, 1024),  # Hi16_ZMM
    9: (2688, 8),  # PKRU
    17: (2752, 64),  # XTILECFG
    18: (2816, 8192),  # XTILEDATA
    62: (832, 128),  # AMD LWP
}
XCR0_STATES = XCR0_X87 | XCR0_SSE | sum(1 << b for b in XSTATE_COMPONENTS)


def xstate_uncompressed_size(xcr0: int) -> int:
    """Bytes of a standard-format XSAVE area holding the components of ``xcr0``."""
    if xcr0 == 0:
        return 0
    size = XSTATE_AREA_MIN_SIZE
    for bit, (off, length) in XSTATE_COMPONENTS.items():
        if xcr0 & (1 << bit):
            size = max(size, off + length)
    return size


def valid_xcr0(xcr0: int) -> bool:
    avx512 = XCR0_OPMASK | XCR0_ZMM | XCR0_HI_ZMM
    if not xcr0 & XCR0_X87:
        return False
    if xcr0 & XCR0_YMM and not xcr0 & XCR0_SSE:
        return False
    if xcr0 & avx512 and (not xcr0 & XCR0_YMM or xcr0 & avx512 != avx512):
        return False
    if bool(xcr0 & XCR0_BNDREGS) != bool(xcr0 & XCR0_BNDCSR):
        return False
    return bool(xcr0 & XCR0_TILE_CFG) == bool(xcr0 & XCR0_TILE_DATA)


# -- CPU_MSR (struct hvm_msr) -------------------------------------------------

MSR_HDR = Layout("hvm_msr", [("count", "I"), ("_pad", "I")])
MSR_ENTRY = Layout("hvm_one_msr", [("index", "I"), ("_rsvd", "I"), ("val", "Q")])
# The MSRs hvm_load_cpu_msrs() accepts (msrs_to_send[] in hvm.c).
MSR_ALLOWED: Dict[int, str] = {
    0x00000048: "SPEC_CTRL",
    0x00000140: "INTEL_MISC_FEATURES_ENABLES",
    0x000006E1: "PKRS",
    0x00000D90: "IA32_BNDCFGS",
    0x00000DA0: "IA32_XSS",
    0xC001011F: "VIRT_SPEC_CTRL",
    0xC0011027: "AMD64_DR0_ADDRESS_MASK",
    0xC0011019: "AMD64_DR1_ADDRESS_MASK",
    0xC001101A: "AMD64_DR2_ADDRESS_MASK",
    0xC001101B: "AMD64_DR3_ADDRESS_MASK",
}

# -- small device records ------------------------------------------------------

PIC_LAYOUT = Layout(
    "hvm_hw_vpic",
    [("irr", "B"), ("imr", "B"), ("isr", "B"), ("irq_base", "B"), ("state", "B"), ("mode", "B"),
     ("elcr", "B"), ("int_output", "B")],
)
PIC_IS_MASTER = 1 << 6  # bit of the ``mode`` byte
PIT_CHANNEL = Layout(
    "hvm_hw_pit_channel",
    [("count", "I"), ("latched_count", "H"), ("count_latched", "B"), ("status_latched", "B"),
     ("status", "B"), ("read_state", "B"), ("write_state", "B"), ("write_latch", "B"),
     ("rw_mode", "B"), ("mode", "B"), ("bcd", "B"), ("gate", "B")],
)
PIT_RW_STATE_WORD0 = 3
PIT_RW_STATE_NUM = 5
LAPIC_LAYOUT = Layout(
    "hvm_hw_lapic",
    [("apic_base_msr", "Q"), ("disabled", "I"), ("timer_divisor", "I"), ("tdt_msr", "Q"),
     ("pending_esr", "I"), ("_pad", "I")],
)
APIC_BASE_EXTD = 1 << 10
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8
MTRR_VCNT = 8

# -- every record's fields, for the register decoder (xenstream.consumers.regs) -------
#
# struct layouts of xen/include/public/arch-x86/hvm/save.h (HEAD; x86_64
# hypervisor).  A bit field is (name, shift, width), as in formats.x86.

#: hvm_hw_cpu.pending_event (the union's bit fields)
CPU_PENDING_EVENT = (("vector", 0, 8), ("type", 8, 3), ("error_valid", 11, 1), ("valid", 31, 1))
#: the two bytes of hvm_hw_vpic's bit fields
PIC_STATE_BITS = (("init_state", 0, 4), ("priority_add", 4, 4))
PIC_MODE_BITS = (("readsel_isr", 0, 1), ("poll", 1, 1), ("auto_eoi", 2, 1),
                 ("rotate_on_auto_eoi", 3, 1), ("special_fully_nested_mode", 4, 1),
                 ("special_mask_mode", 5, 1), ("is_master", 6, 1))
VIOAPIC_NUM_PINS = 48
IOAPIC_LAYOUT = Layout(
    "hvm_hw_vioapic",
    [("base_address", "Q"), ("ioregsel", "I"), ("id", "I")]
    + [(f"redirtbl{i}", "Q") for i in range(VIOAPIC_NUM_PINS)],
)
#: union vioapic_redir_entry
IOAPIC_REDIR_BITS = (("vector", 0, 8), ("delivery_mode", 8, 3), ("dest_mode", 11, 1),
                     ("delivery_status", 12, 1), ("polarity", 13, 1), ("remote_irr", 14, 1),
                     ("trig_mode", 15, 1), ("mask", 16, 1), ("dest_id", 56, 8))
#: hvm_hw_lapic: VLAPIC_SW_DISABLED, VLAPIC_HW_DISABLED
LAPIC_DISABLED = {1: "software", 2: "hardware"}
APIC_BASE_ADDR_MASK = 0x000FFFFFFFFFF000
#: LAPIC_REGS (hvm_hw_lapic_regs): the xAPIC MMIO page, 32-bit registers
LAPIC_REGS_SIZE = 1024
LAPIC_REG = {
    "id": 0x20, "version": 0x30, "tpr": 0x80, "apr": 0x90, "ppr": 0xA0, "ldr": 0xD0,
    "dfr": 0xE0, "svr": 0xF0, "esr": 0x280, "lvt_cmci": 0x2F0, "icr_low": 0x300,
    "icr_high": 0x310, "lvt_timer": 0x320, "lvt_thermal": 0x330, "lvt_pmc": 0x340,
    "lvt_lint0": 0x350, "lvt_lint1": 0x360, "lvt_error": 0x370, "timer_initial": 0x380,
    "timer_current": 0x390, "timer_divide": 0x3E0,
}
#: 256-bit vector bitmaps: 8 registers of 32 bits, 16 bytes apart
LAPIC_VECTOR_BANKS = {"isr": 0x100, "tmr": 0x180, "irr": 0x200}
LAPIC_BANK_STRIDE = 0x10
LVT_BITS = (("vector", 0, 8), ("delivery_mode", 8, 3), ("delivery_status", 12, 1),
            ("polarity", 13, 1), ("remote_irr", 14, 1), ("trigger", 15, 1), ("mask", 16, 1),
            ("timer_mode", 17, 2))
LVT_TIMER_MODES = {0: "one-shot", 1: "periodic", 2: "TSC-deadline", 3: "reserved"}
PCI_IRQ_LAYOUT = Layout("hvm_hw_pci_irqs", [("i0", "Q"), ("i1", "Q")])
ISA_IRQ_LAYOUT = Layout("hvm_hw_isa_irqs", [("i", "Q")])
PCI_LINK_LAYOUT = Layout(
    "hvm_hw_pci_link",
    [(f"route{i}", "B") for i in range(4)] + [(f"pad{i}", "B") for i in range(4)],
)
PIT_CHANNELS = 3
PIT_TAIL = Layout("hvm_hw_pit tail", [("speaker_data_on", "I"), ("pad0", "I")])
PIT_TAIL_OFFSET = PIT_CHANNELS * PIT_CHANNEL.size
#: hvm_hw_rtc: the CMOS clock registers 0-13, by their MC146818 names
RTC_CMOS = ("seconds", "seconds_alarm", "minutes", "minutes_alarm", "hours", "hours_alarm",
            "day_of_week", "day_of_month", "month", "year", "reg_a", "reg_b", "reg_c", "reg_d")
RTC_LAYOUT = Layout(
    "hvm_hw_rtc",
    [(n, "B") for n in RTC_CMOS] + [("cmos_index", "B"), ("pad0", "B"), ("rtc_offset", "q")],
)
HPET_TIMER_NUM = 3
HPET_LAYOUT = Layout(
    "hvm_hw_hpet",
    [("capability", "Q"), ("_res0", "Q"), ("config", "Q"), ("_res1", "Q"), ("isr", "Q")]
    + [(f"_res2_{i}", "Q") for i in range(25)]
    + [("mc64", "Q"), ("_res3", "Q")]
    + [(f"timer{t}_{f}", "Q") for t in range(HPET_TIMER_NUM)
       for f in ("config", "cmp", "fsb", "_res4")]
    + [(f"_res5_{i}", "Q") for i in range(4 * (24 - HPET_TIMER_NUM))]
    + [(f"period{t}", "Q") for t in range(HPET_TIMER_NUM)],
)
PMTIMER_LAYOUT = Layout("hvm_hw_pmtimer", [("tmr_val", "I"), ("pm1a_sts", "H"), ("pm1a_en", "H")])
MTRR_FIXED = ("fix64K_00000", "fix16K_80000", "fix16K_A0000", "fix4K_C0000", "fix4K_C8000",
              "fix4K_D0000", "fix4K_D8000", "fix4K_E0000", "fix4K_E8000", "fix4K_F0000",
              "fix4K_F8000")
# Xen >= 4.12's saver (hvm_save_mtrr_msr(), since 343eb57023) writes
# var_ranges[0] into every variable pair (``m->var_ranges->base`` for each i):
# the pairs are decoded as stored.
MTRR_LAYOUT = Layout(
    "hvm_hw_mtrr",
    [("msr_pat_cr", "Q")]
    + [(f"var{i}_{half}", "Q") for i in range(MTRR_VCNT) for half in ("base", "mask")]
    + [(n, "Q") for n in MTRR_FIXED]
    + [("msr_mtrr_cap", "Q"), ("msr_mtrr_def_type", "Q")],
)
MTRR_CAP_VCNT = (0, 8)  # (shift, width)
MTRR_DEF_TYPE_BITS = (("type", 0, 8), ("fixed_enabled", 10, 1), ("enabled", 11, 1))
MTRR_VAR_VALID = 1 << 11  # in a variable range's mask
MTRR_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}
VIRIDIAN_DOMAIN_LAYOUT = Layout(
    "hvm_viridian_domain_context",
    [("hypercall_gpa", "Q"), ("guest_os_id", "Q"), ("time_ref_count", "Q"),
     ("reference_tsc", "Q")],
)
VIRIDIAN_VCPU_LAYOUT = Layout(
    "hvm_viridian_vcpu_context",
    [("vp_assist_msr", "Q"), ("apic_assist_pending", "B"), ("_pad0", "B"), ("_pad1", "H"),
     ("_pad2", "I"), ("simp_msr", "Q")]
    + [(f"sint{i}_msr", "Q") for i in range(16)]
    + [(f"stimer{i}_config_msr", "Q") for i in range(4)]
    + [(f"stimer{i}_count_msr", "Q") for i in range(4)],
)
VMCE_VCPU_LAYOUT = Layout(
    "hvm_vmce_vcpu",
    [("caps", "Q"), ("mci_ctl2_bank0", "Q"), ("mci_ctl2_bank1", "Q"), ("mcg_ext_ctl", "Q")],
)
TSC_ADJUST_LAYOUT = Layout("hvm_tsc_adjust", [("tsc_adjust", "Q")])
#: typecode -> the layout of its whole body (strict and zero-extend types)
RECORD_LAYOUTS: Dict[int, Layout] = {
    HEADER_CODE: HEADER, PIC: PIC_LAYOUT, IOAPIC: IOAPIC_LAYOUT, LAPIC: LAPIC_LAYOUT,
    PCI_IRQ: PCI_IRQ_LAYOUT, ISA_IRQ: ISA_IRQ_LAYOUT, PCI_LINK: PCI_LINK_LAYOUT,
    RTC: RTC_LAYOUT, HPET: HPET_LAYOUT, PMTIMER: PMTIMER_LAYOUT, MTRR: MTRR_LAYOUT,
    VIRIDIAN_DOMAIN: VIRIDIAN_DOMAIN_LAYOUT, VIRIDIAN_VCPU: VIRIDIAN_VCPU_LAYOUT,
    VMCE_VCPU: VMCE_VCPU_LAYOUT, TSC_ADJUST: TSC_ADJUST_LAYOUT,
}
assert all(lay.size == TYPECODES[code].size for code, lay in RECORD_LAYOUTS.items())
assert PIT_TAIL_OFFSET + PIT_TAIL.size == TYPECODES[PIT].size


# -- public types ---------------------------------------------------------------


class Problem:
    """One problem in an HVM context blob (a plain class: cheap to import):
    its rule id (severity, authority and tolerance are the rule's, in
    :mod:`xenstream.rules`), where and what."""

    __slots__ = ("rule", "offset", "message")

    def __init__(self, rule: str, offset: int, message: str) -> None:
        self.rule = rule
        self.offset = offset  # of the offending descriptor within the blob
        self.message = message

    @property
    def severity(self) -> str:
        return rule(self.rule).severity

    @property
    def tolerated(self) -> bool:
        return rule(self.rule).tolerated

    @property
    def authority(self) -> str:
        return rule(self.rule).authority

    def __repr__(self) -> str:
        return f"Problem({self.rule}, offset={self.offset:#x}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


_Add = Callable[[str, int, str], None]


class Entry:
    """One descriptor of the blob."""

    __slots__ = ("offset", "typecode", "instance", "length")

    def __init__(self, offset: int, typecode: int, instance: int, length: int) -> None:
        self.offset = offset  # of the descriptor; the body follows at offset + 8
        self.typecode = typecode
        self.instance = instance
        self.length = length

    def __repr__(self) -> str:
        return (f"Entry(offset={self.offset}, typecode={self.typecode}, "
                f"instance={self.instance}, length={self.length})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.offset, self.typecode, self.instance,
                                             self.length) == (other.offset, other.typecode,
                                                              other.instance, other.length)

    __hash__ = None  # type: ignore[assignment]

    @property
    def name(self) -> str:
        info = TYPECODES.get(self.typecode)
        return info.name if info is not None else f"UNKNOWN({self.typecode})"

    @property
    def body_offset(self) -> int:
        return self.offset + DESCRIPTOR.size

    def body(self, blob: bytes) -> bytes:
        return blob[self.body_offset : self.body_offset + self.length]


def type_name(typecode: int) -> str:
    info = TYPECODES.get(typecode)
    return info.name if info is not None else f"UNKNOWN({typecode})"


def iter_entries(blob: bytes) -> Iterator[Entry]:
    """The entries before END, in blob order (END itself is not yielded).

    Stops silently at END, at the end of the blob, or at a descriptor or body
    that would overrun the blob; :func:`check_context` reports those.
    """
    pos, n = 0, len(blob)
    while n - pos >= DESCRIPTOR.size:
        d = DESCRIPTOR.unpack(blob, offset=pos)
        if d["typecode"] == END or d["length"] > n - pos - DESCRIPTOR.size:
            return
        yield Entry(pos, d["typecode"], d["instance"], d["length"])
        pos += DESCRIPTOR.size + d["length"]


def cpu_instances(blob: bytes) -> Set[int]:
    """The vcpu ids with a CPU record; Xen leaves every other vcpu down."""
    return {e.instance for e in iter_entries(blob) if e.typecode == CPU}


def build_context(entries: Sequence[Tuple[int, int, bytes]]) -> bytes:
    """Descriptor + body for each ``(typecode, instance, body)``; adds no HEADER or END."""
    out = bytearray()
    for typecode, instance, body in entries:
        out += DESCRIPTOR.pack(typecode=typecode, instance=instance, length=len(body))
        out += body
    return bytes(out)


def decode_cpu(body: bytes) -> Dict[str, int]:
    """The registers of a CPU record body, as Xen's loader would see them.

    1016 bytes is the pre-3.4 compat layout (``msr_tsc_aux`` reads as 0);
    anything shorter than 1032 is zero-extended and, as in Xen, any length
    other than 1032 reads ``flags`` as FPU_INITIALISED.  Keys are the
    ``struct hvm_hw_cpu`` field names (``rax`` .. ``r15``, ``rip``,
    ``rflags``, ``cr0`` .., ``dr0`` .., ``cs_sel``/``cs_base``/``cs_limit``/
    ``cs_arbytes`` for each segment, ``msr_efer``, ...).
    """
    if len(body) == CPU_SIZE_COMPAT:
        regs = CPU_REGS_COMPAT.unpack(body, offset=CPU_FPU_SIZE)
        regs["msr_tsc_aux"] = 0
        regs["flags"] = XEN_X86_FPU_INITIALISED
        regs["pad0"] = 0
        return regs
    data = body[:CPU_SIZE].ljust(CPU_SIZE, b"\0")
    regs = CPU_REGS.unpack(data, offset=CPU_FPU_SIZE)
    if len(body) != CPU_SIZE:
        regs["flags"] = XEN_X86_FPU_INITIALISED
    return regs


# -- checking ---------------------------------------------------------------------


def _cpu_state(body: bytes) -> List[Tuple[str, str]]:
    """The policy-independent checks of hvm_load_cpu_ctxt() that fail, as
    (rule, message): one rule per check that arrived in a release of its own."""
    r = decode_cpu(body)
    bad: List[Tuple[str, str]] = []
    cr0 = r["cr0"]
    if r["pad0"]:
        bad.append(("hvm-cpu-flags", f"expected pad0 0, found {r['pad0']:#x}"))
    if cr0 & ~CR0_VALID:
        bad.append(("hvm-cpu-state", f"expected no reserved CR0 bits, found cr0 {cr0:#x}"))
    if not cr0 & X86_CR0_ET:
        bad.append(("hvm-cpu-state", f"expected CR0.ET set, found cr0 {cr0:#x}"))
    if cr0 & (X86_CR0_PE | X86_CR0_PG) == X86_CR0_PG:
        bad.append(("hvm-cpu-state", f"expected CR0.PG only with CR0.PE, found cr0 {cr0:#x}"))
    if r["cr4"] & ~CR4_VALID_MAX:
        bad.append(("hvm-cpu-state", f"expected CR4 bits Xen can allow, found cr4 {r['cr4']:#x}"))
    if r["cr3"] >> MAXPHYSADDR_MAX:
        bad.append(("hvm-cpu-cr3", f"expected CR3 below 2^{MAXPHYSADDR_MAX}, found {r['cr3']:#x}"))
    efer = r["msr_efer"]
    if efer & ~EFER_KNOWN:
        bad.append(("hvm-cpu-efer", f"expected only known EFER bits, found efer {efer:#x}"))
    if efer & EFER_LMA and (not efer & EFER_LME or not cr0 & X86_CR0_PG):
        bad.append(("hvm-cpu-state", f"expected EFER.LMA only with EFER.LME and CR0.PG, found "
                    f"efer {efer:#x} cr0 {cr0:#x}"))
    for dr in ("dr6", "dr7"):
        if r[dr] >> 32:
            bad.append(("hvm-cpu-dr67", f"expected a 32-bit {dr.upper()}, found {r[dr]:#x}"))
    if r["flags"] & ~XEN_X86_FPU_INITIALISED:
        bad.append(("hvm-cpu-flags", f"expected flags 0 or 1 (FPU_INITIALISED), found "
                    f"{r['flags']:#x}"))
    if r["msr_tsc_aux"] >> 32:
        bad.append(("hvm-cpu-tsc-aux", f"expected a 32-bit MSR_TSC_AUX, found "
                    f"{r['msr_tsc_aux']:#x}"))
    return bad


def _xsave_problems(body: bytes) -> List[Tuple[str, str]]:
    """hvm_load_cpu_xsave_states() and validate_xstate(): every failing check
    as (rule, message), each rule one that arrived in a release of its own."""
    length = len(body)
    minimum = XSAVE_HDR_SIZE + XSTATE_AREA_MIN_SIZE
    if length < minimum:
        return [("hvm-cpu-xsave", f"expected length >= {minimum}, found {length}")]
    out: List[Tuple[str, str]] = []
    x = XSAVE.unpack(body)
    h = XSAVE_HDR.unpack(body, offset=XSAVE_HDR_OFFSET)
    accum, xcr0, bv = x["xcr0_accum"], x["xcr0"], h["xstate_bv"]
    if bv & ~accum:
        out.append(("hvm-cpu-xsave", f"expected xstate_bv within xcr0_accum {accum:#x}, "
                    f"found {bv:#x}"))
    if xcr0 & ~accum:
        out.append(("hvm-cpu-xsave", f"expected xcr0 within xcr0_accum {accum:#x}, "
                    f"found {xcr0:#x}"))
    if accum & ~XCR0_STATES:
        out.append(("hvm-cpu-xsave", f"expected xcr0_accum within XCR0 states "
                    f"{XCR0_STATES:#x}, found {accum:#x}"))
    for name, val in (("xcr0", xcr0), ("xcr0_accum", accum)):
        if not valid_xcr0(val):
            out.append(("hvm-cpu-xsave", f"expected a valid {name} (x87 set, dependent "
                        f"states paired), found {val:#x}"))
    if h["xcomp_bv"]:
        what = "compacted XSAVE area" if h["xcomp_bv"] & XSTATE_COMPACTION_ENABLED else "xcomp_bv"
        out.append(("hvm-cpu-xsave-header", f"expected xcomp_bv 0 (standard format), found "
                    f"{h['xcomp_bv']:#x} ({what})"))
    for i in range(6):
        if h[f"reserved{i}"]:
            out.append(("hvm-cpu-xsave-header", f"expected XSAVE header reserved[{i}] 0, "
                        f"found {h[f'reserved{i}']:#x}"))
            break
    size = XSAVE_HDR_SIZE + xstate_uncompressed_size(accum)
    if length > size:
        if any(body[size:]):
            out.append(("hvm-cpu-xsave", f"expected length {size} for xcr0_accum {accum:#x}, "
                        f"found {length} with non-zero excess"))
        else:
            out.append(("hvm-cpu-xsave-oversize", f"expected length {size} for xcr0_accum "
                        f"{accum:#x}, found {length} (zero excess, as Xen <= 4.3 wrote; "
                        "accepted)"))
    elif length < size:
        out.append(("hvm-cpu-xsave-short", f"expected length {size} for xcr0_accum "
                    f"{accum:#x}, found {length}"))
    return out


def _msr_problem(body: bytes) -> Optional[str]:
    """hvm_load_cpu_msrs(): the message of the first failing check, or None."""
    length = len(body)
    minimum = MSR_HDR_SIZE + MSR_ENTRY_SIZE
    if length < minimum:
        return f"expected length >= {minimum}, found {length}"
    count = MSR_HDR.unpack(body)["count"]
    if length != MSR_HDR_SIZE + MSR_ENTRY_SIZE * count:
        return f"expected length {MSR_HDR_SIZE} + 16 * count ({count}), found {length}"
    entries = [MSR_ENTRY.unpack(body, offset=MSR_HDR_SIZE + MSR_ENTRY_SIZE * i) for i in range(count)]
    for i, m in enumerate(entries):
        if m["_rsvd"]:
            return f"expected msr[{i}]._rsvd 0, found {m['_rsvd']:#x}"
    for i, m in enumerate(entries):
        if m["index"] not in MSR_ALLOWED:
            return f"expected msr[{i}].index one Xen loads, found {m['index']:#x}"
    return None


def _device_state(typecode: int, instance: int, body: bytes) -> Optional[Tuple[str, str]]:
    """Range checks of the device check/load handlers: (rule, message) or None."""
    if typecode == PIC:
        p = PIC_LAYOUT.unpack(body)
        master = bool(p["mode"] & PIC_IS_MASTER)
        elcr_mask = 0xFC if master else 0xDE
        if p["int_output"] > 1:
            return "hvm-pic-state", f"expected int_output 0 or 1, found {p['int_output']}"
        if master != (instance == 0):
            return "hvm-pic-state", f"expected is_master {int(instance == 0)} for instance {instance}, found {int(master)}"
        if p["int_output"] and p["state"] & 0xF:
            return "hvm-pic-state", f"expected no init in progress with int_output set, found init_state {p['state'] & 0xF}"
        if p["elcr"] & ~elcr_mask:
            return "hvm-pic-state", f"expected elcr within {elcr_mask:#x}, found {p['elcr']:#x}"
    elif typecode == PCI_LINK:
        if any(body[4:8]):
            return "hvm-pci-link-pad", f"expected zero padding, found {body[4:8].hex()}"
        for i, route in enumerate(body[:4]):
            if route >= 16:
                return "hvm-pci-link", f"expected link {i} routed to an ISA IRQ < 16, found {route}"
    elif typecode == PIT:
        speaker, pad = struct.unpack_from("<II", body, 48)
        if speaker > 1 or pad:
            return "hvm-pit-state", f"expected speaker_data_on <= 1 and pad 0, found {speaker}, {pad:#x}"
        for i in range(3):
            c = PIT_CHANNEL.unpack(body, offset=16 * i)
            if (c["count"] > 0x10000 or c["count_latched"] >= PIT_RW_STATE_NUM
                    or c["read_state"] >= PIT_RW_STATE_NUM or c["write_state"] >= PIT_RW_STATE_NUM
                    or c["rw_mode"] > PIT_RW_STATE_WORD0 or c["gate"] > 1 or c["bcd"] > 1):
                found = ", ".join(f"{k} {v}" for k, v in c.items() if k != "latched_count")
                return "hvm-pit-state", f"expected channel {i} fields in range, found {found}"
            if i != 2 and not c["gate"]:
                return "hvm-pit-state", f"expected channel {i} gate 1, found 0"
    elif typecode == LAPIC:
        base = struct.unpack_from("<Q", body.ljust(8, b"\0"))[0]
        if base & (APIC_BASE_ENABLE | APIC_BASE_EXTD) == APIC_BASE_EXTD:
            return "hvm-lapic-state", f"expected x2APIC (EXTD) only with the APIC enabled, found apic_base_msr {base:#x}"
    elif typecode == MTRR:
        cap = struct.unpack_from("<Q", body, 8 + 16 * 8 + 11 * 8)[0]
        if cap & 0xFF > MTRR_VCNT:
            return "hvm-mtrr-state", f"expected at most {MTRR_VCNT} variable MTRRs, found {cap & 0xFF}"
    elif typecode == VIRIDIAN_VCPU:
        pad = body[9:16]
        if any(pad):
            return "hvm-viridian-state", f"expected zero _pad, found {pad.hex()}"
    return None


def _check_length(info: TypeInfo, length: int) -> Optional[Tuple[str, str]]:
    """(rule, message) for a bad length of a strict/zero-extend/CPU entry:
    ``hvm-entry-length`` where the loader refuses it, ``hvm-entry-length-unusual``
    for a shorter length it zero-extends but no release wrote."""
    known = (info.size,) + info.older
    if info.kind == KIND_STRICT:
        if length != info.size:
            return "hvm-entry-length", f"expected length {info.size} (strict), found {length}"
    elif length > info.size:
        return "hvm-entry-length", f"expected length <= {info.size}, found {length}"
    elif length not in known:
        sizes = "/".join(str(s) for s in sorted(known))
        return "hvm-entry-length-unusual", (f"expected length {sizes}, found {length} "
                                            "(zero-extended on load, but no Xen version "
                                            "writes it)")
    return None


def check_context(blob: bytes, *, nr_vcpus: Optional[int] = None) -> List[Problem]:
    """Every problem of an HVM context blob; ``[]`` when Xen would load it cleanly.

    ``nr_vcpus`` is the domain's max_vcpus, when known: per-vcpu records must
    name a vcpu below it.
    """
    out: List[Problem] = []

    def add(rule_id: str, offset: int, msg: str) -> None:
        out.append(Problem(rule_id, offset, msg))

    n = len(blob)
    dsz = DESCRIPTOR.size
    hsz = HEADER.size
    if n < dsz:
        add("hvm-header-first", 0,
            f"expected a HEADER descriptor (typecode 1, length {hsz}) first, found only {n} bytes")
        return out

    first = DESCRIPTOR.unpack(blob)
    header_ok = False
    if first["typecode"] == HEADER_CODE and first["length"] == hsz and n - dsz >= hsz:
        header_ok = True
        hdr = HEADER.unpack(blob, offset=dsz)
        if hdr["magic"] != HVM_SAVE_MAGIC:
            add("hvm-header-magic", 0,
                f"expected magic {HVM_SAVE_MAGIC:#010x}, found {hdr['magic']:#010x}")
        if hdr["version"] != HVM_SAVE_VERSION:
            add("hvm-header-version", 0,
                f"expected version {HVM_SAVE_VERSION}, found {hdr['version']}")
        if first["instance"]:
            add("hvm-instance-nonzero", 0,
                f"expected HEADER instance 0, found {first['instance']} (not checked on load)")
    elif first["typecode"] == HEADER_CODE:
        add("hvm-header-first", 0,
            f"expected HEADER length {hsz} within the blob, found length {first['length']} "
            f"with {n - dsz} bytes left")
    else:
        add("hvm-header-first", 0,
            f"expected HEADER (typecode 1) first, found {type_name(first['typecode'])} "
            f"(typecode {first['typecode']})")

    seen: Set[Tuple[int, int]] = set()
    prev: Optional[Tuple[int, int]] = None
    pos = 0
    index = 0
    while True:
        if pos == n:
            add("hvm-end-missing", pos,
                "expected an END descriptor (typecode 0) after the last entry, found the end of the blob")
            break
        if n - pos < dsz:
            add("hvm-end-missing", pos,
                f"expected a {dsz}-byte descriptor, found {n - pos} trailing bytes (and no END)")
            break
        d = DESCRIPTOR.unpack(blob, offset=pos)
        tc, inst, length = d["typecode"], d["instance"], d["length"]
        if tc == END:
            if inst or length:
                add("hvm-end-nonzero", pos,
                    f"expected END instance 0 length 0, found instance {inst} length {length}")
            rest = n - pos - dsz
            if rest:
                add("hvm-end-not-last", pos,
                    f"expected END to end the blob, found {rest} bytes after it (ignored on load)")
            break
        if length > n - pos - dsz:
            if pos == 0 and not header_ok and tc == HEADER_CODE:
                break  # reported as hvm-header-first
            add("hvm-entry-overrun", pos,
                f"expected {type_name(tc)} length <= {n - pos - dsz} (bytes left), found {length}")
            break
        body = blob[pos + dsz : pos + dsz + length]
        if index == 0 and tc == HEADER_CODE:
            pass  # checked above
        elif tc == HEADER_CODE:
            add("hvm-header-repeated", pos,
                "expected HEADER only as the first entry, found another (no load handler: EINVAL)")
        elif tc not in TYPECODES:
            reserved = " (reserved range 22-34)" if 22 <= tc <= 34 else ""
            add("hvm-typecode-unknown", pos,
                f"expected a typecode 2..{HVM_SAVE_CODE_MAX}, found {tc}{reserved}")
        else:
            _check_entry(add, TYPECODES[tc], pos, inst, body, nr_vcpus)
            key = (tc, inst)
            if key in seen:
                add("hvm-duplicate", pos,
                    f"expected one {type_name(tc)} instance {inst}, found another (the last one wins on load)")
            elif prev is not None and key < prev:
                add("hvm-order", pos,
                    f"expected entries in hvm_save() order, found {type_name(tc)} instance {inst} "
                    f"after {type_name(prev[0])} instance {prev[1]}")
            seen.add(key)
            prev = key
        pos += dsz + length
        index += 1
    return out


def _check_entry(add: _Add, info: TypeInfo, pos: int, inst: int, body: bytes,
                 nr_vcpus: Optional[int]) -> None:
    name = info.name
    if info.per == PER_VCPU:
        if nr_vcpus is not None and inst >= nr_vcpus:
            add("hvm-instance", pos,
                f"expected {name} instance (vcpu) < {nr_vcpus}, found {inst}")
    elif info.code == PIC:
        if inst > 1:
            add("hvm-pic-instance", pos,
                f"expected PIC instance 0 (master) or 1 (slave), found {inst}")
    elif inst:
        add("hvm-instance-nonzero", pos,
            f"expected {name} instance 0, found {inst} (ignored on load)")

    length = len(body)
    if info.code == CPU_XSAVE:
        for rule_id, msg in _xsave_problems(body):
            add(rule_id, pos, msg)
        return
    if info.code == CPU_MSR:
        mp = _msr_problem(body)
        if mp is not None:
            add("hvm-cpu-msr", pos, mp)
        return
    bad = _check_length(info, length)
    if bad is not None:
        add(bad[0], pos, f"{name}: {bad[1]}")
        if bad[0] == "hvm-entry-length":
            return  # not loaded
    if info.code == CPU:
        if nr_vcpus is not None and inst >= nr_vcpus:
            return  # the loader stops at the missing vcpu
        for rule_id, msg in _cpu_state(body):
            add(rule_id, pos, f"vcpu {inst}: {msg}")
        return
    dev = _device_state(info.code, inst, body.ljust(info.size, b"\0"))
    if dev is not None:
        add(dev[0], pos, f"{name} instance {inst}: {dev[1]}")


# -- a valid sample blob ---------------------------------------------------------------

# Segment attributes in Xen's 12-bit segment_register format.
_AR_CODE16 = 0x09B  # present, DPL 0, code, read, accessed
_AR_DATA16 = 0x093
_AR_CODE64 = 0xA9B  # + L, G
_AR_DATA32 = 0xC93  # + D/B, G
_AR_TSS = 0x08B
_AR_LDT = 0x082


def sample_cpu(vcpu: int = 0, *, rip: int = 0xFFF0, cr3: int = 0) -> bytes:
    """A 1032-byte CPU record: real mode (reset state) when ``cr3`` is 0, else a
    64-bit guest with paging on."""
    fpu = bytearray(CPU_FPU_SIZE)
    struct.pack_into("<H", fpu, 0, 0x037F)  # FCW
    struct.pack_into("<II", fpu, 24, 0x1F80, 0xFFFF)  # MXCSR, MXCSR_MASK
    regs: Dict[str, int] = {name: 0 for name in CPU_REGS.names}
    regs.update(rip=rip, rflags=0x2, cr3=cr3, dr6=0xFFFF0FF0, dr7=0x400,
                tsc=0x1_0000_0000 + vcpu, flags=XEN_X86_FPU_INITIALISED,
                idtr_limit=0xFFFF, gdtr_limit=0xFFFF)
    if cr3 == 0:
        regs.update(cr0=0x60000010)  # CD NW ET
        for s in SEGMENTS:
            regs[f"{s}_limit"] = 0xFFFF
            regs[f"{s}_arbytes"] = _AR_DATA16
        regs.update(cs_sel=0xF000, cs_base=0xFFFF0000, cs_arbytes=_AR_CODE16,
                    tr_arbytes=_AR_TSS, ldtr_arbytes=_AR_LDT)
    else:
        regs.update(cr0=0x80050033, cr4=0x003106F0, msr_efer=0xD01, rsp=0xFFFFC90000003F00,
                    rflags=0x246, msr_star=0x0023001000000000, msr_lstar=0xFFFFFFFF81A00080,
                    msr_syscall_mask=0x47700, gdtr_base=0xFFFFFE0000001000, gdtr_limit=0x7F,
                    idtr_base=0xFFFFFE0000000000, idtr_limit=0xFFF, tr_sel=0x40,
                    tr_base=0xFFFFFE0000003000, tr_limit=0x4087, tr_arbytes=_AR_TSS,
                    msr_tsc_aux=vcpu)
        for s in ("ds", "es", "fs", "gs", "ss"):
            regs[f"{s}_sel"] = 0x18 if s == "ss" else 0
            regs[f"{s}_limit"] = 0xFFFFFFFF
            regs[f"{s}_arbytes"] = _AR_DATA32
        regs.update(cs_sel=0x10, cs_limit=0xFFFFFFFF, cs_arbytes=_AR_CODE64, ldtr_arbytes=0)
    return bytes(fpu) + CPU_REGS.pack("<", **regs)


def _sample_lapic_regs(vcpu: int) -> bytes:
    regs = bytearray(1024)

    def put(off: int, val: int) -> None:
        struct.pack_into("<I", regs, off, val)

    put(0x20, vcpu << 24)  # APIC ID
    put(0x30, 0x00050014)  # version: 6 LVTs, integrated
    put(0xE0, 0xFFFFFFFF)  # DFR: flat
    put(0xF0, 0x1FF)  # SVR: software-enabled, spurious vector 0xff
    for lvt in (0x320, 0x330, 0x340, 0x370):
        put(lvt, 0x10000)  # masked
    put(0x350, 0x700 if vcpu == 0 else 0x10700)  # LINT0: ExtINT on the BSP
    put(0x360, 0x400 if vcpu == 0 else 0x10400)  # LINT1: NMI on the BSP
    return bytes(regs)


def _sample_pit() -> bytes:
    chans = b"".join(
        PIT_CHANNEL.pack(count=0x10000, latched_count=0, count_latched=0, status_latched=0,
                         status=0, read_state=PIT_RW_STATE_WORD0, write_state=PIT_RW_STATE_WORD0,
                         write_latch=0, rw_mode=PIT_RW_STATE_WORD0, mode=mode, bcd=0, gate=gate)
        for mode, gate in ((2, 1), (3, 1), (3, 0))
    )
    return chans + struct.pack("<II", 0, 0)


def _sample_hpet() -> bytes:
    regs = [0] * (1048 // 8)
    regs[0] = 0x8086A201 | (10_000_000 << 32)  # vendor 8086, 3 timers, 64-bit, 100 MHz period in fs
    for t in range(3):
        caps = 0x30 if t == 0 else 0x20  # 64-bit capable; timer 0 periodic capable
        regs[32 + 4 * t] = caps | (0xF00000 << 32)  # may route to GSIs 20-23
        regs[33 + 4 * t] = 0xFFFFFFFFFFFFFFFF
    return struct.pack("<131Q", *regs)


def sample_context(nr_vcpus: int = 1, *, cpuid: int = 0x000806EC, gtsc_khz: int = 2_000_000,
                   rip: int = 0xFFF0, cr3: int = 0) -> bytes:
    """A fully valid blob in hvm_save() order for ``nr_vcpus`` running vcpus."""
    if not 1 <= nr_vcpus <= 0xFFFF:
        raise ValueError(f"nr_vcpus must be 1..65535, found {nr_vcpus}")
    vcpus = range(nr_vcpus)
    hdr = HEADER.pack(magic=HVM_SAVE_MAGIC, version=HVM_SAVE_VERSION,
                      changeset=0xFFFFFFFFFFFFFFFF, cpuid=cpuid, gtsc_khz=gtsc_khz)
    e: List[Tuple[int, int, bytes]] = [(HEADER_CODE, 0, hdr)]
    e += [(CPU, v, sample_cpu(v, rip=rip, cr3=cr3)) for v in vcpus]
    for inst, base, mode, elcr in ((0, 0x08, PIC_IS_MASTER, 0x04), (1, 0x70, 0, 0x00)):
        e.append((PIC, inst, PIC_LAYOUT.pack(irr=0, imr=0xFB if inst == 0 else 0xFF, isr=0,
                                             irq_base=base, state=0, mode=mode, elcr=elcr,
                                             int_output=0)))
    redir = struct.pack("<48Q", *([0x10000] * 48))  # every pin masked
    e.append((IOAPIC, 0, struct.pack("<QII", 0xFEC00000, 0, 0) + redir))
    for v in vcpus:
        base = 0xFEE00000 | APIC_BASE_ENABLE | (APIC_BASE_BSP if v == 0 else 0)
        e.append((LAPIC, v, LAPIC_LAYOUT.pack(apic_base_msr=base, disabled=0, timer_divisor=2,
                                              tdt_msr=0, pending_esr=0)))
    e += [(LAPIC_REGS, v, _sample_lapic_regs(v)) for v in vcpus]
    e.append((PCI_IRQ, 0, bytes(16)))
    e.append((ISA_IRQ, 0, bytes(8)))
    e.append((PCI_LINK, 0, bytes([5, 10, 11, 5, 0, 0, 0, 0])))
    e.append((PIT, 0, _sample_pit()))
    cmos = bytes([0x00, 0, 0x30, 0, 0x12, 0, 0x03, 0x15, 0x06, 0x24, 0x26, 0x02, 0x00, 0x80])
    e.append((RTC, 0, cmos + bytes([0x0A, 0]) + struct.pack("<q", 0)))
    e.append((HPET, 0, _sample_hpet()))
    e.append((PMTIMER, 0, struct.pack("<IHH", 0x00123456, 0, 0x0100)))
    fixed = [0x0606060606060606] * 11
    mtrr = struct.pack("<Q16Q11QQQ", 0x0007040600070406, *([0] * 16), *fixed, 0x508, 0xC06)
    e += [(MTRR, v, mtrr) for v in vcpus]
    e += [(VMCE_VCPU, v, struct.pack("<4Q", 2, 0, 0, 0)) for v in vcpus]
    e += [(TSC_ADJUST, v, struct.pack("<Q", 0)) for v in vcpus]
    e.append((END, 0, b""))
    return build_context(e)
