"""libxc records of x86 HVM domains, HVM_CONTEXT and HVM_PARAMS, and the x86
platform records beside them that PV streams carry too: X86_TSC_INFO,
X86_CPUID_POLICY and X86_MSR_POLICY.

Their layouts and their rules (:class:`HvmRecords`); the HVM context blob
itself is :mod:`xenstream.formats.hvm`'s.
"""

from __future__ import annotations

from typing import Callable, Optional

from xenstream.formats import hvm
from xenstream.formats.libxc_state import LibxcState, RecordFamily, Report
from xenstream.layout import Layout

X86_TSC_INFO = Layout(
    "X86_TSC_INFO",
    [("mode", "I"), ("khz", "I"), ("nsec", "Q"), ("incarnation", "I"), ("_res1", "I")],
)
TSC_MODE_NAMES = {0: "DEFAULT", 1: "ALWAYS_EMULATE", 2: "NEVER_EMULATE", 3: "PVRDTSCP"}

HVM_PARAMS_HDR = Layout("HVM_PARAMS header", [("count", "I"), ("_res1", "I")])
HVM_PARAMS_ENTRY = Layout("HVM_PARAMS entry", [("index", "Q"), ("value", "Q")])
HVM_NR_PARAMS = 39
#: xen/include/public/hvm/params.h (HEAD; 7 and 8 are ia64's, gone since 4.2)
HVM_PARAM_NAMES = {
    0: "CALLBACK_IRQ", 1: "STORE_PFN", 2: "STORE_EVTCHN", 4: "PAE_ENABLED",
    5: "IOREQ_PFN", 6: "BUFIOREQ_PFN", 7: "NVRAM_FD", 8: "VHPT_SIZE", 9: "VIRIDIAN",
    10: "TIMER_MODE", 11: "HPET_ENABLED", 12: "IDENT_PT", 13: "DM_DOMAIN",
    14: "ACPI_S_STATE", 15: "VM86_TSS", 16: "VPT_ALIGN", 17: "CONSOLE_PFN",
    18: "CONSOLE_EVTCHN", 19: "ACPI_IOPORTS_LOCATION", 20: "MEMORY_EVENT_CR0",
    21: "MEMORY_EVENT_CR3", 22: "MEMORY_EVENT_CR4", 23: "MEMORY_EVENT_INT3", 24: "NESTEDHVM",
    25: "MEMORY_EVENT_SINGLE_STEP", 26: "BUFIOREQ_EVTCHN", 27: "PAGING_RING_PFN",
    28: "MONITOR_RING_PFN", 29: "SHARING_RING_PFN", 30: "MEMORY_EVENT_MSR",
    31: "TRIPLE_FAULT_REASON", 32: "IOREQ_SERVER_PFN", 33: "NR_IOREQ_SERVER_PAGES",
    34: "VM_GENERATION_ID_ADDR", 35: "ALTP2M", 36: "X87_FIP_WIDTH",
    37: "VM86_TSS_SIZED", 38: "MCA_CAP",
}


def hvm_param_name(index: int) -> str:
    return HVM_PARAM_NAMES.get(index, f"UNKNOWN_{index}")
HVM_PARAM_PAE_ENABLED = 4

CPUID_LEAF = Layout(
    "xen_cpuid_leaf_t",
    [("leaf", "I"), ("subleaf", "I"), ("a", "I"), ("b", "I"), ("c", "I"), ("d", "I")],
)
MSR_ENTRY = Layout("xen_msr_entry_t", [("idx", "I"), ("flags", "I"), ("val", "Q")])


class HvmRecords(RecordFamily):
    """The rules of the HVM and x86 platform records, and the HVM rules at the
    end of the stream."""

    def __init__(self, s: LibxcState, report: Report, *, nr_vcpus: Optional[int]) -> None:
        super().__init__(s, report)
        self.nr_vcpus = nr_vcpus  # from the image's own config, when it has one

    def rec_x86_tsc_info(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        if length != X86_TSC_INFO.size:
            r("tsc-info-length", f"expected 24 bytes, found {length}")
            return
        assert body is not None
        f = X86_TSC_INFO.unpack(body, self.s.endian)
        if f["mode"] == 3:
            r("tsc-mode-pvrdtscp",
              "expected TSC mode 0-2, found 3 (PVRDTSCP): Xen >= 4.12 refuses it")
        elif f["mode"] > 3:
            r("tsc-mode", f"expected TSC mode 0-2, found {f['mode']}")
        if f["_res1"]:
            r("tsc-info-reserved",
              f"expected reserved field zero, found {f['_res1']:#x}")

    def rec_hvm_context(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        if length == 0:
            r("hvm-context-empty", "expected an HVM context, found 0 bytes")
            return
        assert body is not None
        self.s.hvm_context = True
        for p in hvm.check_context(body, nr_vcpus=self.nr_vcpus):
            r(p.rule, f"HVM context entry at blob offset {p.offset:#x}: {p.message}")
        self.s.hvm_vcpus = hvm.cpu_instances(body)

    def rec_hvm_params(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        r = self.report
        assert body is not None
        if length < 8:
            r("hvm-params-length", f"expected at least 8 bytes, found {length}")
            return
        h = HVM_PARAMS_HDR.unpack(body, self.s.endian)
        if h["_res1"]:
            r("hvm-params-reserved",
              f"expected reserved field zero, found {h['_res1']:#x}")
        if length != 8 + 16 * h["count"]:
            r("hvm-params-length" if length < 8 + 16 * h["count"] else "hvm-params-length-extra",
              f"expected {8 + 16 * h['count']} bytes for {h['count']} params, found {length}")
            return
        if h["count"] == 0:
            r("errata-zero-content",
              "HVM_PARAMS with no params (tolerated: errata for Xen 4.6-4.8 senders)")
            return
        for i in range(h["count"]):
            e = HVM_PARAMS_ENTRY.unpack(body, self.s.endian, 8 + 16 * i)
            if e["index"] >= HVM_NR_PARAMS:
                r("hvm-params-index",
                  f"expected param index < {HVM_NR_PARAMS}, found {e['index']}")

    def _policy(self, name: str, length: int, unit: int) -> None:
        s = self.s
        r = self.report
        if length == 0 or length % unit:
            r("policy-length",
              f"expected a non-zero multiple of {unit} bytes, found {length}")
        if s.static_data_end:
            r("policy-after-static-data-end",
              f"expected {name} before STATIC_DATA_END, found after it: Xen's restore accepts "
              "it but never applies it")

    def rec_x86_cpuid_policy(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._policy("X86_CPUID_POLICY", length, CPUID_LEAF.size)

    def rec_x86_msr_policy(self, length: int, body: Optional[bytes], _rp: Callable[[int], bytes]) -> None:
        self._policy("X86_MSR_POLICY", length, MSR_ENTRY.size)
        if body and length % 16 == 0:
            for i in range(length // 16):
                e = MSR_ENTRY.unpack(body, self.s.endian, 16 * i)
                if e["flags"]:
                    self.report("msr-policy-flags",
                                f"expected flags of MSR entry {i} zero, found {e['flags']:#x}")
                    break

    def finish(self) -> None:
        """The HVM rules checked when the stream ends."""
        if not self.s.hvm_context:
            self.report("hvm-context-missing",
                        "expected an HVM_CONTEXT record in an HVM stream, found none")
