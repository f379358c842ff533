"""libxc records of x86 HVM domains, HVM_CONTEXT and HVM_PARAMS, and the x86
platform records beside them that PV streams carry too: X86_TSC_INFO,
X86_CPUID_POLICY and X86_MSR_POLICY.

The HVM context blob itself is :mod:`xenstream.formats.hvm`'s.
"""

from __future__ import annotations

from xenstream.layout import Layout

X86_TSC_INFO = Layout(
    "X86_TSC_INFO",
    [("mode", "I"), ("khz", "I"), ("nsec", "Q"), ("incarnation", "I"), ("_res1", "I")],
)
TSC_MODE_NAMES = {0: "DEFAULT", 1: "ALWAYS_EMULATE", 2: "NEVER_EMULATE", 3: "PVRDTSCP"}

HVM_PARAMS_HDR = Layout("HVM_PARAMS header", [("count", "I"), ("_res1", "I")])
HVM_PARAMS_ENTRY = Layout("HVM_PARAMS entry", [("index", "Q"), ("value", "Q")])
HVM_NR_PARAMS = 39
HVM_PARAM_NAMES = {
    0: "CALLBACK_IRQ", 1: "STORE_PFN", 2: "STORE_EVTCHN", 4: "PAE_ENABLED",
    5: "IOREQ_PFN", 6: "BUFIOREQ_PFN", 8: "BUFIOREQ_EVTCHN", 9: "VIRIDIAN",
    10: "TIMER_MODE", 11: "HPET_ENABLED", 12: "IDENT_PT", 14: "ACPI_S_STATE",
    15: "VM86_TSS", 16: "VPT_ALIGN", 17: "CONSOLE_PFN", 18: "CONSOLE_EVTCHN",
    19: "ACPI_IOPORTS_LOCATION", 20: "MEMORY_EVENT_CR0", 21: "MEMORY_EVENT_CR3",
    22: "MEMORY_EVENT_CR4", 23: "MEMORY_EVENT_INT3", 24: "NESTEDHVM",
    25: "MEMORY_EVENT_SINGLE_STEP", 26: "PAGING_RING_PFN", 27: "PAGING_RING_PFN",
    28: "MONITOR_RING_PFN", 29: "SHARING_RING_PFN", 30: "MEMORY_EVENT_MSR",
    31: "TRIPLE_FAULT_REASON", 32: "IOREQ_SERVER_PFN", 33: "NR_IOREQ_SERVER_PAGES",
    34: "VM_GENERATION_ID_ADDR", 35: "ALTP2M", 36: "X87_FIP_WIDTH",
    37: "VM86_TSS_SIZED", 38: "MCA_CAP",
}
HVM_PARAM_PAE_ENABLED = 4

CPUID_LEAF = Layout(
    "xen_cpuid_leaf_t",
    [("leaf", "I"), ("subleaf", "I"), ("a", "I"), ("b", "I"), ("c", "I"), ("d", "I")],
)
MSR_ENTRY = Layout("xen_msr_entry_t", [("idx", "I"), ("flags", "I"), ("val", "Q")])
