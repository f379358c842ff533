"""Xen's dump-core file (``xl dump-core``): an ELF64 ET_CORE file with section
headers and no program headers, the layout ``extract-memory --format
xen-core`` writes and Volatility 3's ``XenCoreDumpLayer`` and crash's
xendump code read.

Facts: Xen's ``docs/misc/dump-core-format.txt`` (format version 0.1),
``tools/libs/guest/xg_core.h`` / ``xg_core_x86.h`` / ``xg_core.c`` (the
writer), ``xen/include/public/elfnote.h`` (note types),
``xen/include/public/version.h`` (the xen_version descriptor's pieces) and
``xen/include/public/arch-x86/xen*.h`` (``vcpu_guest_context``, the entries
of ``.xen_prstatus``).

Sections: ``.note.Xen`` (SHT_NOTE, notes named "Xen": NONE, HEADER,
XEN_VERSION, FORMAT_VERSION), ``.xen_prstatus`` (one ``vcpu_guest_context``
per vcpu, each the size of the x86 union, 5168 bytes), ``.xen_shared_info``
(optional, one page), ``.xen_pages`` (the pages, dense, in ascending pfn
order), ``.xen_pfn`` (auto-translated guests, HVM: one u64 pfn per page) or
``.xen_p2m`` (PV: ``{u64 pfn, u64 gmfn}`` per page), ``.shstrtab``.
"""

from __future__ import annotations

from typing import Tuple

from xenstream.formats import pv
from xenstream.layout import Layout

SEC_NOTE = ".note.Xen"
SEC_PRSTATUS = ".xen_prstatus"
SEC_SHARED_INFO = ".xen_shared_info"
SEC_P2M = ".xen_p2m"
SEC_PFN = ".xen_pfn"
SEC_PAGES = ".xen_pages"

NOTE_NAME = b"Xen"
NOTE_NONE = 0x2000000
NOTE_HEADER = 0x2000001
NOTE_XEN_VERSION = 0x2000002
NOTE_FORMAT_VERSION = 0x2000003

XC_CORE_MAGIC = 0xF00FEBED  # paravirtualised domain
XC_CORE_MAGIC_HVM = 0xF00FEBEE  # fully virtualised (auto-translated) domain
FORMAT_VERSION = (0 << 32) | 1  # major 0, minor 1: the only version there is
INVALID_PFN = (1 << 64) - 1

HEADER_DESC = Layout("xen_dumpcore_elfnote_header_desc", [
    ("xch_magic", "Q"), ("xch_nr_vcpus", "Q"), ("xch_nr_pages", "Q"), ("xch_page_size", "Q"),
])
XEN_VERSION_DESC = Layout("xen_dumpcore_elfnote_xen_version_desc", [
    ("major_version", "Q"), ("minor_version", "Q"), ("extra_version", "16s"),
    ("compiler", "64s"), ("compile_by", "16s"), ("compile_domain", "32s"),
    ("compile_date", "32s"), ("capabilities", "1024s"), ("changeset", "64s"),
    ("virt_start", "Q"), ("pagesize", "Q"),
])
FORMAT_VERSION_DESC = Layout("xen_dumpcore_elfnote_format_version_desc", [("version", "Q")])
P2M_ENTRY = Layout("xen_dumpcore_p2m", [("pfn", "Q"), ("gmfn", "Q")])
assert (HEADER_DESC.size, XEN_VERSION_DESC.size, P2M_ENTRY.size) == (32, 1280, 16)

#: sizeof(vcpu_guest_context_any_t) on x86: the 64-bit layout, the larger one
VCPU_CONTEXT_ANY_SIZE = max(pv.VCPU_CONTEXT_SIZE.values())

# -- vcpu_guest_context: the pieces a core file needs ------------------------------
# merge: formats.pv (the regs work) may come to define these layouts; use its then.

#: struct cpu_user_regs, x86-64 (at VCPU_USER_REGS[8] in vcpu_guest_context)
USER_REGS_X86_64 = Layout("cpu_user_regs (x86-64)", [
    ("r15", "Q"), ("r14", "Q"), ("r13", "Q"), ("r12", "Q"), ("rbp", "Q"), ("rbx", "Q"),
    ("r11", "Q"), ("r10", "Q"), ("r9", "Q"), ("r8", "Q"), ("rax", "Q"), ("rcx", "Q"),
    ("rdx", "Q"), ("rsi", "Q"), ("rdi", "Q"), ("error_code", "I"), ("entry_vector", "I"),
    ("rip", "Q"), ("cs", "H"), ("_pad0", "H"), ("saved_upcall_mask", "B"), ("_pad1", "B"),
    ("_pad1b", "H"), ("rflags", "Q"), ("rsp", "Q"),
] + [field for seg in ("ss", "es", "ds", "fs", "gs")  # u16 selector, 6 bytes of padding
     for field in ((seg, "H"), (f"_{seg}_pad", "H"), (f"_{seg}_pad2", "I"))])
#: struct cpu_user_regs, x86-32 (at VCPU_USER_REGS[4])
USER_REGS_X86_32 = Layout("cpu_user_regs (x86-32)", [
    ("ebx", "I"), ("ecx", "I"), ("edx", "I"), ("esi", "I"), ("edi", "I"), ("ebp", "I"),
    ("eax", "I"), ("error_code", "H"), ("entry_vector", "H"), ("eip", "I"), ("cs", "H"),
    ("saved_upcall_mask", "B"), ("_pad0", "B"), ("eflags", "I"), ("esp", "I"),
    ("ss", "H"), ("_pad1", "H"), ("es", "H"), ("_pad2", "H"), ("ds", "H"), ("_pad3", "H"),
    ("fs", "H"), ("_pad4", "H"), ("gs", "H"), ("_pad5", "H"),
])
assert (USER_REGS_X86_64.size, USER_REGS_X86_32.size) == (200, 68)

VGCF_I387_VALID = 1 << 0
VGCF_IN_KERNEL = 1 << 2
VGCF_ONLINE = 1 << 5

#: guest width -> offset of user_regs (after fpu_ctxt[512] and the unsigned long flags)
VCPU_USER_REGS = {8: 520, 4: 516}
#: guest width -> offset of ctrlreg[8] and debugreg[8] (unsigned longs)
VCPU_CTRLREG = {8: 4984, 4: 2716}
VCPU_DEBUGREG = {8: 5048, 4: 2748}
#: x86-64 only: fs_base, gs_base_kernel, gs_base_user (u64 each)
VCPU_SEGMENT_BASES_X86_64 = 5144
VCPU_FLAGS = 512
VCPU_FPU_SIZE = 512
#: the debug registers Xen fills (dr4 and dr5 alias dr6 and dr7)
DEBUGREGS: Tuple[int, ...] = (0, 1, 2, 3, 6, 7)
assert pv.VCPU_CONTEXT_SIZE[8] == VCPU_SEGMENT_BASES_X86_64 + 24
