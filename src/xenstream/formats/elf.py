"""ELF64 core files, the layer ``extract-memory`` writes: the file, program
and section headers, notes, and the x86-64 ``elf_prstatus`` note that gdb,
crash and Volatility read a vcpu's registers from.

Facts: the System V gABI (ELF-64 object file format, "Program header",
"Sections", "Note section"), Linux's ``include/uapi/linux/elfcore.h`` and
``arch/x86/include/asm/user_64.h`` for ``elf_prstatus`` and
``elf_gregset_t`` (the layout gdb's ``elf_x86_64_grok_prstatus`` expects: a
336-byte descriptor with the 27 registers at offset 112), and the kernel's
extended numbering (``PN_XNUM``) for more than 65534 program headers.
Everything is little-endian (ELFDATA2LSB).
"""

from __future__ import annotations

from typing import Tuple

from xenstream.layout import Layout

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
#: e_ident: magic, class, data, version, OS ABI, ABI version, padding
IDENT = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, 0]) + bytes(7)

ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62

EHDR = Layout("Elf64_Ehdr", [
    ("e_ident", "16s"), ("e_type", "H"), ("e_machine", "H"), ("e_version", "I"),
    ("e_entry", "Q"), ("e_phoff", "Q"), ("e_shoff", "Q"), ("e_flags", "I"),
    ("e_ehsize", "H"), ("e_phentsize", "H"), ("e_phnum", "H"), ("e_shentsize", "H"),
    ("e_shnum", "H"), ("e_shstrndx", "H"),
])
PHDR = Layout("Elf64_Phdr", [
    ("p_type", "I"), ("p_flags", "I"), ("p_offset", "Q"), ("p_vaddr", "Q"), ("p_paddr", "Q"),
    ("p_filesz", "Q"), ("p_memsz", "Q"), ("p_align", "Q"),
])
SHDR = Layout("Elf64_Shdr", [
    ("sh_name", "I"), ("sh_type", "I"), ("sh_flags", "Q"), ("sh_addr", "Q"),
    ("sh_offset", "Q"), ("sh_size", "Q"), ("sh_link", "I"), ("sh_info", "I"),
    ("sh_addralign", "Q"), ("sh_entsize", "Q"),
])
NHDR = Layout("Elf64_Nhdr", [("n_namesz", "I"), ("n_descsz", "I"), ("n_type", "I")])
assert (EHDR.size, PHDR.size, SHDR.size, NHDR.size) == (64, 56, 64, 12)

PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4
#: e_phnum when the real count is in section header 0's sh_info
PN_XNUM = 0xFFFF

SHN_UNDEF = 0
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_STRTAB = 3
SHT_NOTE = 7
SHSTRTAB = ".shstrtab"

#: note names and sizes are padded to 4 bytes in ELF64 core notes (as Linux writes them)
NOTE_ALIGN = 4
NOTE_NAME_CORE = b"CORE"
NT_PRSTATUS = 1

#: elf_gregset_t on x86-64 (struct user_regs_struct), in order
GREGS_X86_64: Tuple[str, ...] = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
    "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
    "es", "fs", "gs",
)
#: struct elf_prstatus (x86-64): siginfo, cursig, signal masks, ids, four
#: timevals, the registers, pr_fpvalid
PRSTATUS_X86_64 = Layout("elf_prstatus (x86-64)", [
    ("si_signo", "i"), ("si_code", "i"), ("si_errno", "i"), ("pr_cursig", "h"), ("_pad0", "h"),
    ("pr_sigpend", "Q"), ("pr_sighold", "Q"), ("pr_pid", "i"), ("pr_ppid", "i"),
    ("pr_pgrp", "i"), ("pr_sid", "i"),
    ("utime_sec", "q"), ("utime_usec", "q"), ("stime_sec", "q"), ("stime_usec", "q"),
    ("cutime_sec", "q"), ("cutime_usec", "q"), ("cstime_sec", "q"), ("cstime_usec", "q"),
] + [(f"pr_reg_{r}", "Q") for r in GREGS_X86_64] + [("pr_fpvalid", "i"), ("_pad1", "i")])
PRSTATUS_REG_OFFSET = 112
assert PRSTATUS_X86_64.size == 336
