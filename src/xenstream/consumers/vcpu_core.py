"""What a core file says about each vcpu: the registers of its ELF
``NT_PRSTATUS`` note (x86-64 ``elf_gregset_t``) and the
``vcpu_guest_context`` of its ``.xen_prstatus`` entry, from what the image
holds: an HVM guest's CPU save records (HVM context), a PV guest's
``vcpu_guest_context`` (X86_PV_VCPU_BASIC records, the legacy PV tail).

For HVM the ``vcpu_guest_context`` is made the way Xen's
``arch_get_info_guest()`` (``xen/arch/x86/domctl.c``) makes it for
``xl dump-core``: FPU image, flags i387-valid and online, the general
registers, segment selectors, fs base and the kernel/user gs bases by the
privilege level of cs, debug and control registers.  A PV guest's context is
kept as the stream has it (cr3 and the GDT frames as the saver normalised
them: pfns, consistent with the identity ``.xen_p2m`` the core gets).
"""

from __future__ import annotations

import struct
from typing import Dict, List, Tuple

from xenstream.consumers.regs import decode_hvm_context, decode_pv_context, elf_gregs
from xenstream.formats import hvm, xencore
from xenstream.formats.elf import GREGS_X86_64

Gregs = Tuple[int, ...]


class VcpuCore:
    """One vcpu as a core file carries it."""

    __slots__ = ("vcpu_id", "gregs", "context")

    def __init__(self, vcpu_id: int, gregs: Gregs, context: bytes) -> None:
        self.vcpu_id = vcpu_id
        self.gregs = gregs  # elf_gregset_t order
        self.context = context  # vcpu_guest_context (5168 bytes at most)

    def reg(self, name: str) -> int:
        return self.gregs[GREGS_X86_64.index(name)]


def hvm_vcpus(blob: bytes) -> List[VcpuCore]:
    """The vcpus of an HVM context blob: one per CPU record (typecode 2), by
    instance; short older records are zero-extended as Xen loads them.  The
    registers are :func:`xenstream.consumers.regs.elf_gregs` of what
    ``regs`` decodes."""
    _, decoded = decode_hvm_context(blob, 0)
    gregs = {v.vcpu: elf_gregs(v) for v in decoded if v.online}
    out: Dict[int, VcpuCore] = {}
    for e in hvm.iter_entries(blob):
        if e.typecode != hvm.CPU or e.instance not in gregs:
            continue
        body = e.body(blob)
        r = hvm.decode_cpu(body)
        out[e.instance] = VcpuCore(e.instance, gregs[e.instance], _hvm_context(body, r))
    return [out[v] for v in sorted(out)]


def _hvm_context(body: bytes, r: Dict[str, int]) -> bytes:
    """A 64-bit vcpu_guest_context as arch_get_info_guest() fills it for HVM."""
    ctx = bytearray(xencore.VCPU_CONTEXT_ANY_SIZE)
    fpu = body[:xencore.VCPU_FPU_SIZE]
    ctx[:len(fpu)] = fpu
    struct.pack_into("<Q", ctx, xencore.VCPU_FLAGS, xencore.VGCF_I387_VALID | xencore.VGCF_ONLINE)
    regs = {n: r[n] for n in ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9",
                              "r8", "rax", "rcx", "rdx", "rsi", "rdi", "rip", "rsp", "rflags")}
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        regs[seg] = r[f"{seg}_sel"] & 0xFFFF
    ctx[xencore.VCPU_USER_REGS[8]:xencore.VCPU_USER_REGS[8] + xencore.USER_REGS_X86_64.size] = \
        xencore.USER_REGS_X86_64.pack("<", error_code=0, entry_vector=0, saved_upcall_mask=0,
                                       **regs)
    for i, cr in ((0, "cr0"), (2, "cr2"), (3, "cr3"), (4, "cr4")):
        struct.pack_into("<Q", ctx, xencore.VCPU_CTRLREG[8] + 8 * i, r[cr])
    for i in xencore.DEBUGREGS:
        struct.pack_into("<Q", ctx, xencore.VCPU_DEBUGREG[8] + 8 * i, r[f"dr{i}"])
    kernel = r["cs_sel"] & 3 == 0
    gs, shadow = r["gs_base"], r["shadow_gs"]
    struct.pack_into("<QQQ", ctx, xencore.VCPU_SEGMENT_BASES_X86_64, r["fs_base"],
                     gs if kernel else shadow, shadow if kernel else gs)
    return bytes(ctx)


def pv_vcpu(vcpu_id: int, ctx: bytes, width: int) -> VcpuCore:
    """A PV vcpu from its vcpu_guest_context (``width``: the guest's, 4 or 8);
    the registers are :func:`xenstream.consumers.regs.elf_gregs` of it."""
    return VcpuCore(vcpu_id, elf_gregs(decode_pv_context(vcpu_id, ctx, width, 0, "core")), ctx)
