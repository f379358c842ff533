"""Every vcpu's registers in a save image: a consumer of the pull parser.

:func:`read_state` walks an image once, forward (page data is skipped, on
seekable input without reading it), keeps the records that carry vcpu state
and decodes them with the layouts of :mod:`xenstream.formats.hvm`,
:mod:`xenstream.formats.pv` and :mod:`xenstream.formats.x86`:

* HVM and PVH guests: the whole HVM context (HVM_CONTEXT record, or a legacy
  image's HVM tail), every entry by typecode, instance and length; the CPU
  record of each vcpu (general, control, debug, segment, descriptor-table and
  MSR registers, the pending event), its LAPIC, LAPIC_REGS, MTRR, XSAVE,
  CPU_MSR, VMCE, VIRIDIAN and TSC_ADJUST records, and the domain's PIC,
  IOAPIC, PIT, RTC, HPET, PMTIMER and IRQ routing.  A record shorter than its
  structure is zero-extended, as Xen's ``hvm_load_entry_zeroextend()`` does
  (and a 1016- or 1024-byte CPU record laid out as ``_hvm_hw_fix_cpu()``
  does); a length Xen refuses is decoded all the same, with a note.
* PV guests: each vcpu's ``vcpu_guest_context`` (X86_PV_VCPU_BASIC, or the
  legacy PV tail) for 64- and 32-bit guests, with the extended context, the
  MSRs and the XSAVE feature masks.  The saver stores cr3 with the guest's
  page-table base already turned from an mfn into a pfn, folded as Xen's
  ``xen_pfn_to_cr3()`` folds it (``pfn << 12``; a 32-bit guest's rotated
  ``(pfn << 12) | (pfn >> 20)``): both the stored value and the pfn are
  reported, likewise the gdt frames (pfns) and vcpu 0's start_info pfn (edx).

For Remus/COLO streams the state is that of the last complete checkpoint, as
a failover restore leaves it: a checkpoint's records count once the
checkpoint is complete (libxc CHECKPOINT, and in a libxl stream the
CHECKPOINT_END after it; a legacy checkpoint's tail).  Records after the last
complete checkpoint are dropped, as Xen's restore drops them.

:func:`vcpus` is the list of :class:`VcpuState`; :func:`elf_gregs` a vcpu's
registers in the x86-64 ``elf_gregset_t`` order (NT_PRSTATUS notes).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from xenstream.errors import FormatError
from xenstream.formats import hvm, legacy, libxc, libxl, pv, x86
from xenstream.formats.libvirt import LibvirtChecker
from xenstream.formats.xl import BYTEORDER as XL_BYTEORDER
from xenstream.formats.xl import XlChecker
from xenstream.io import Source
from xenstream.reading.parser import (
    LAYER_LIBXC,
    EndOfInput,
    EnvelopeData,
    Header,
    Legacy,
    PageFilter,
    Parser,
    Record,
    StopStream,
    XlConfig,
)

Fields = Dict[str, Any]
SourceSpec = Union[str, "os.PathLike[str]", int, Source]

#: X86_PV_VCPU_* record type -> the kind of vcpu blob it carries
_PV_KINDS = {libxc.REC_TYPE_X86_PV_VCPU_BASIC: "basic",
             libxc.REC_TYPE_X86_PV_VCPU_EXTENDED: "extended",
             libxc.REC_TYPE_X86_PV_VCPU_XSAVE: "xsave",
             libxc.REC_TYPE_X86_PV_VCPU_MSRS: "msrs"}


# -- the decoded state --------------------------------------------------------------


@dataclass
class Segment:
    """A segment register: the selector, and for HVM guests the hidden part
    (base, limit, attributes in Xen's 12-bit ``segment_register`` format)."""

    sel: int
    base: Optional[int] = None
    limit: Optional[int] = None
    arbytes: Optional[int] = None

    @property
    def attr(self) -> Optional[Dict[str, int]]:
        """The attribute bits by name (type, s, dpl, p, avl, l, db, g)."""
        return None if self.arbytes is None else bits(self.arbytes, x86.SEGMENT_ATTR)

    def to_json(self) -> Fields:
        out: Fields = {"sel": self.sel}
        for k in ("base", "limit", "arbytes"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.attr is not None:
            out["attr"] = self.attr
        return out


@dataclass
class HvmEntry:
    """One entry of an HVM context: its descriptor, and where it is in the file."""

    typecode: int
    name: str
    instance: int
    length: int
    offset: int  # absolute file offset of the entry's descriptor
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Fields:
        return {"typecode": self.typecode, "name": self.name, "instance": self.instance,
                "length": self.length, "offset": self.offset, "notes": list(self.notes)}


@dataclass
class HvmContext:
    """The HVM context blob: its entries in blob order, the header, and the
    domain-wide records decoded (``platform``: entry name -> fields; PIC is a
    list, instance 0 the master)."""

    offset: int  # absolute file offset of the blob
    length: int
    entries: List[HvmEntry] = field(default_factory=list)
    header: Optional[Fields] = None
    platform: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


@dataclass
class PvState:
    """What a PV ``vcpu_guest_context`` carries besides the registers."""

    flags: int
    flag_names: List[str]
    cr3: int  # as stored: the saver's canonical form, a pfn folded by xen_pfn_to_cr3()
    cr3_pfn: int  # the page-table base pfn (xen_cr3_to_pfn() of the stored cr3)
    user_pt_pfn: Optional[int]  # 64-bit: the user page table (ctrlreg[1], bit 0 = valid)
    start_info_pfn: Optional[int]  # vcpu 0: rdx/edx, the start_info pfn
    kernel_ss: int
    kernel_sp: int
    gdt_ents: int
    gdt_frames: List[int]  # pfns, one per 512 entries in use
    ldt_base: int
    ldt_ents: int
    callbacks: Dict[str, int]
    segment_bases: Dict[str, int]  # 64-bit: fs_base, gs_base_kernel, gs_base_user
    vm_assist: int
    saved_upcall_mask: int
    traps: List[Dict[str, int]]  # the trap table's entries that are set

    def to_json(self) -> Fields:
        return {"flags": self.flags, "flag_names": self.flag_names, "cr3": self.cr3,
                "cr3_pfn": self.cr3_pfn, "user_pt_pfn": self.user_pt_pfn,
                "start_info_pfn": self.start_info_pfn, "kernel_ss": self.kernel_ss,
                "kernel_sp": self.kernel_sp, "gdt_ents": self.gdt_ents,
                "gdt_frames": list(self.gdt_frames), "ldt_base": self.ldt_base,
                "ldt_ents": self.ldt_ents, "callbacks": dict(self.callbacks),
                "segment_bases": dict(self.segment_bases),
                "vm_assist": self.vm_assist, "saved_upcall_mask": self.saved_upcall_mask,
                "traps": [dict(t) for t in self.traps]}


@dataclass
class VcpuState:
    """One vcpu's registers.

    ``regs`` uses the x86-64 names for every guest (``rax`` .. ``r15``,
    ``rip``, ``rflags``, ``rsp``; a 32-bit PV guest's eax .. esp under them,
    without r8-r15).  ``width`` is the guest's register width in bits (64 for
    HVM, whose CPU record is 64-bit whatever the mode; ``mode`` says which).
    ``devices`` holds an HVM vcpu's other records by entry name (LAPIC,
    LAPIC_REGS, MTRR, VMCE_VCPU, VIRIDIAN_VCPU, TSC_ADJUST).
    """

    vcpu: int
    guest_type: str  # "hvm" | "pvh" | "pv"
    width: int
    online: bool
    mode: str
    source: str  # which record (or legacy tail) the registers come from
    offset: Optional[int]  # absolute file offset of the registers' structure
    regs: Dict[str, int] = field(default_factory=dict)
    segments: Dict[str, Segment] = field(default_factory=dict)
    control: Dict[str, int] = field(default_factory=dict)
    debug: Dict[str, int] = field(default_factory=dict)
    tables: Dict[str, Dict[str, int]] = field(default_factory=dict)  # gdtr, idtr
    msrs: Dict[str, int] = field(default_factory=dict)
    fpu: Dict[str, int] = field(default_factory=dict)
    pending_event: Optional[Dict[str, int]] = None
    xsave: Optional[Dict[str, int]] = None
    pv: Optional[PvState] = None
    extended: Optional[Dict[str, int]] = None
    devices: Dict[str, Fields] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Fields:
        return {
            "vcpu": self.vcpu, "online": self.online, "guest_type": self.guest_type,
            "width": self.width, "mode": self.mode, "source": self.source,
            "offset": self.offset, "registers": dict(self.regs),
            "segments": {k: s.to_json() for k, s in self.segments.items()},
            "control": dict(self.control), "debug": dict(self.debug),
            "descriptor_tables": {k: dict(v) for k, v in self.tables.items()},
            "msrs": dict(self.msrs), "fpu": dict(self.fpu),
            "pending_event": self.pending_event, "xsave": self.xsave,
            "pv": self.pv.to_json() if self.pv is not None else None,
            "extended": self.extended, "devices": self.devices,
            "elf_gregs": list(elf_gregs(self)), "notes": list(self.notes),
        }


@dataclass
class GuestState:
    """What :func:`read_state` found: the guest, its HVM context (HVM and
    PVH guests) and its vcpus, as a restore would leave them."""

    file: str
    layers: List[str]
    guest_type: Optional[str]  # "hvm" | "pvh" | "pv"; None when nothing says
    guest_width: Optional[int]  # bits: a PV guest's width (64 for HVM-type guests)
    legacy: bool
    checkpointed: bool
    complete_checkpoints: int
    hvm_context: Optional[HvmContext]
    vcpus: List[VcpuState]
    notes: List[str] = field(default_factory=list)

    def vcpu(self, n: int) -> Optional[VcpuState]:
        for v in self.vcpus:
            if v.vcpu == n:
                return v
        return None


# -- small decoding helpers ----------------------------------------------------------


def bits(value: int, spec: x86.BitFields) -> Dict[str, int]:
    """The bit fields ``(name, shift, width)`` of ``value``."""
    return {name: (value >> shift) & ((1 << width) - 1) for name, shift, width in spec}


def flag_names(value: int, names: Dict[int, str]) -> List[str]:
    """The names of the bits set in ``value`` (unnamed bits as ``bitN``)."""
    out = []
    for b in range(value.bit_length()):
        if value >> b & 1:
            out.append(names.get(b, f"bit{b}"))
    return out


def _public(f: Dict[str, int]) -> Fields:
    """A layout's fields without its padding and reserved ones (``_`` names)."""
    return {k: v for k, v in f.items() if not k.startswith("_")}


def _vectors(data: bytes, base: int) -> List[int]:
    """The vectors set in a LAPIC 256-bit bitmap (ISR, TMR, IRR)."""
    out: List[int] = []
    for i in range(8):
        word = struct.unpack_from("<I", data, base + hvm.LAPIC_BANK_STRIDE * i)[0]
        out.extend(32 * i + b for b in range(32) if word >> b & 1)
    return out


def _fit(body: bytes, size: int, info: Optional[hvm.TypeInfo], notes: List[str]) -> bytes:
    """``body`` zero-extended (or cut) to ``size``, with a note saying how
    Xen's loader treats its length."""
    n = len(body)
    if n == size:
        return body
    strict = info is not None and info.kind == hvm.KIND_STRICT
    if strict:
        notes.append(f"length {n}: Xen refuses it (the length must be {size}); decoded "
                     f"{'zero-extended' if n < size else f'from the first {size} bytes'}")
    elif n < size:
        older = info is not None and n in info.older
        notes.append(f"zero-extended from {n} to {size} bytes, as Xen loads it"
                     + (" (an older Xen's layout)" if older else
                        " (no Xen version writes this length)"))
    else:
        notes.append(f"length {n}: Xen refuses it (at most {size}); decoded from the first "
                     f"{size} bytes")
    return body[:size].ljust(size, b"\0")


# -- HVM context ------------------------------------------------------------------------


def _mode(r: Dict[str, int]) -> str:
    cr0, efer = r["cr0"], r["msr_efer"]
    if not cr0 & x86.CR0_PE:
        return "real mode"
    if r["rflags"] & x86.RFLAGS_VM:
        return "virtual-8086 mode"
    if efer & x86.EFER_LMA:
        long64 = bits(r["cs_arbytes"], x86.SEGMENT_ATTR)["l"]
        return "long mode (64-bit)" if long64 else "long mode (compatibility)"
    if cr0 & x86.CR0_PG:
        return "protected mode, paging" + (" (PAE)" if r["cr4"] & x86.CR4_PAE else "")
    return "protected mode"


def _cpu_vcpu(inst: int, body: bytes, offset: int, guest: str, notes: List[str]) -> VcpuState:
    r = hvm.decode_cpu(body)
    v = VcpuState(inst, guest, 64, True, _mode(r), f"HVM context, CPU instance {inst}",
                  offset, notes=notes)
    v.regs = {k: r[k] for k in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                "rip", "rflags")}
    v.segments = {s: Segment(r[f"{s}_sel"], r[f"{s}_base"], r[f"{s}_limit"], r[f"{s}_arbytes"])
                  for s in hvm.SEGMENTS}
    v.tables = {t: {"base": r[f"{t}_base"], "limit": r[f"{t}_limit"]} for t in ("gdtr", "idtr")}
    v.control = {k: r[k] for k in ("cr0", "cr2", "cr3", "cr4")}
    v.debug = {k: r[k] for k in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")}
    v.msrs = {"efer": r["msr_efer"], "star": r["msr_star"], "lstar": r["msr_lstar"],
              "cstar": r["msr_cstar"], "syscall_mask": r["msr_syscall_mask"],
              "sysenter_cs": r["sysenter_cs"], "sysenter_esp": r["sysenter_esp"],
              "sysenter_eip": r["sysenter_eip"], "shadow_gs": r["shadow_gs"],
              "tsc_aux": r["msr_tsc_aux"], "tsc": r["tsc"]}
    ev = bits(r["pending_event"], hvm.CPU_PENDING_EVENT)
    v.pending_event = {"raw": r["pending_event"], **ev, "error_code": r["error_code"]}
    v.fpu = {**_public(x86.FXSAVE_HEAD.unpack(body.ljust(x86.FXSAVE_SIZE, b"\0"))),
             "initialised": r["flags"] & hvm.XEN_X86_FPU_INITIALISED}
    return v


def _lapic(f: Dict[str, int]) -> Fields:
    base = f["apic_base_msr"]
    out = _public(f)
    out.update(base_address=base & hvm.APIC_BASE_ADDR_MASK,
               enabled=int(bool(base & hvm.APIC_BASE_ENABLE)),
               x2apic=int(bool(base & hvm.APIC_BASE_EXTD)), bsp=int(bool(base & hvm.APIC_BASE_BSP)),
               disabled_by=[n for b, n in hvm.LAPIC_DISABLED.items() if f["disabled"] & b])
    return out


def _lapic_regs(data: bytes, x2apic: bool) -> Fields:
    regs = {name: struct.unpack_from("<I", data, off)[0] for name, off in hvm.LAPIC_REG.items()}
    out: Fields = dict(regs)
    # xAPIC mode keeps the id in bits 31:24; x2APIC mode uses the whole register
    out["apic_id"] = regs["id"] if x2apic else regs["id"] >> 24
    out["x2apic"] = int(x2apic)
    for bank, off in hvm.LAPIC_VECTOR_BANKS.items():
        out[bank] = _vectors(data, off)
    lvtt = bits(regs["lvt_timer"], hvm.LVT_BITS)
    out["timer"] = {"lvt": regs["lvt_timer"], "vector": lvtt["vector"], "masked": lvtt["mask"],
                    "mode": hvm.LVT_TIMER_MODES[lvtt["timer_mode"]],
                    "initial_count": regs["timer_initial"],
                    "current_count": regs["timer_current"], "divide_config": regs["timer_divide"],
                    "divisor": _apic_divisor(regs["timer_divide"])}
    return out


def _apic_divisor(tdcr: int) -> int:
    """The timer divisor a divide configuration selects (bits 0, 1 and 3)."""
    return 1 << ((((tdcr & 3) | ((tdcr & 8) >> 1)) + 1) & 7)


def _mtrr(f: Dict[str, int]) -> Fields:
    shift, width = hvm.MTRR_CAP_VCNT
    vcnt = (f["msr_mtrr_cap"] >> shift) & ((1 << width) - 1)
    dt = bits(f["msr_mtrr_def_type"], hvm.MTRR_DEF_TYPE_BITS)
    var = []
    for i in range(min(vcnt, hvm.MTRR_VCNT)):
        base, mask = f[f"var{i}_base"], f[f"var{i}_mask"]
        var.append({"base": base, "mask": mask, "valid": int(bool(mask & hvm.MTRR_VAR_VALID)),
                    "type": hvm.MTRR_TYPES.get(base & 0xFF, f"{base & 0xFF:#x}")})
    return {"pat": f["msr_pat_cr"], "cap": f["msr_mtrr_cap"], "vcnt": vcnt,
            "def_type": f["msr_mtrr_def_type"], "default_type":
            hvm.MTRR_TYPES.get(dt["type"], f"{dt['type']:#x}"), "enabled": dt["enabled"],
            "fixed_enabled": dt["fixed_enabled"],
            "fixed": {n: f[n] for n in hvm.MTRR_FIXED}, "variable": var}


def _device(tc: int, data: bytes) -> Fields:
    """A domain or vcpu device record, zero-extended to its structure."""
    if tc == hvm.PIT:
        chans = [_public(hvm.PIT_CHANNEL.unpack(data, offset=hvm.PIT_CHANNEL.size * i))
                 for i in range(hvm.PIT_CHANNELS)]
        tail = hvm.PIT_TAIL.unpack(data, offset=hvm.PIT_TAIL_OFFSET)
        return {"channels": chans, "speaker_data_on": tail["speaker_data_on"]}
    f = hvm.RECORD_LAYOUTS[tc].unpack(data)
    if tc == hvm.PIC:
        out = _public(f)
        out.update(bits(f["state"], hvm.PIC_STATE_BITS))
        out.update(bits(f["mode"], hvm.PIC_MODE_BITS))
        return out
    if tc == hvm.IOAPIC:
        pins = []
        for i in range(hvm.VIOAPIC_NUM_PINS):
            raw = f[f"redirtbl{i}"]
            pins.append({"pin": i, "raw": raw, **bits(raw, hvm.IOAPIC_REDIR_BITS)})
        return {"base_address": f["base_address"], "ioregsel": f["ioregsel"], "id": f["id"],
                "redirtbl": pins}
    if tc == hvm.LAPIC:
        return _lapic(f)
    if tc == hvm.HPET:
        timers = [{"config": f[f"timer{t}_config"], "cmp": f[f"timer{t}_cmp"],
                   "fsb": f[f"timer{t}_fsb"], "period": f[f"period{t}"]}
                  for t in range(hvm.HPET_TIMER_NUM)]
        return {"capability": f["capability"], "config": f["config"], "isr": f["isr"],
                "mc64": f["mc64"], "timers": timers}
    if tc == hvm.MTRR:
        return _mtrr(f)
    if tc == hvm.PCI_IRQ:
        words = f["i0"] | f["i1"] << 64
        return {"asserted": [b for b in range(128) if words >> b & 1]}  # device * 4 + INTx
    if tc == hvm.ISA_IRQ:
        return {"asserted": [b for b in range(16) if f["i"] >> b & 1]}
    if tc == hvm.PCI_LINK:
        return {"route": [f[f"route{i}"] for i in range(4)]}
    return _public(f)


def _xsave(body: bytes, notes: List[str]) -> Optional[Dict[str, int]]:
    if len(body) < hvm.XSAVE.size:
        notes.append(f"length {len(body)}: shorter than the {hvm.XSAVE.size}-byte header "
                     "(xfeature_mask, xcr0, xcr0_accum); Xen refuses it")
        return None
    out = dict(hvm.XSAVE.unpack(body))
    out["size"] = len(body) - hvm.XSAVE_HDR_SIZE
    if len(body) >= hvm.XSAVE_HDR_OFFSET + 16:
        h = hvm.XSAVE_HDR.unpack(body.ljust(hvm.XSAVE_HDR_OFFSET + hvm.XSAVE_HDR.size, b"\0"),
                                 offset=hvm.XSAVE_HDR_OFFSET)
        out.update(xstate_bv=h["xstate_bv"], xcomp_bv=h["xcomp_bv"])
    else:
        notes.append(f"length {len(body)}: no XSAVE header (Xen refuses it)")
    return out


def _cpu_msrs(body: bytes, notes: List[str]) -> Dict[str, int]:
    if len(body) < hvm.MSR_HDR_SIZE:
        notes.append(f"length {len(body)}: no count; Xen refuses it")
        return {}
    count = hvm.MSR_HDR.unpack(body)["count"]
    room = (len(body) - hvm.MSR_HDR_SIZE) // hvm.MSR_ENTRY_SIZE
    if count != room or len(body) != hvm.MSR_HDR_SIZE + hvm.MSR_ENTRY_SIZE * room:
        notes.append(f"count {count} for {len(body)} bytes: Xen refuses it; "
                     f"{min(count, room)} entries decoded")
    out = {}
    for i in range(min(count, room)):
        m = hvm.MSR_ENTRY.unpack(body, offset=hvm.MSR_HDR_SIZE + hvm.MSR_ENTRY_SIZE * i)
        out[_msr_name(m["index"])] = m["val"]
    return out


def _msr_name(index: int) -> str:
    return x86.MSR_NAMES.get(index, f"msr_{index:#x}")


def _iter_blob(blob: bytes, base: int, ctx: HvmContext) -> Iterator[Tuple[HvmEntry, bytes]]:
    """The entries up to END, with their bodies; notes where the blob is malformed."""
    pos, n = 0, len(blob)
    dsz = hvm.DESCRIPTOR.size
    while True:
        if n - pos < dsz:
            ctx.notes.append(f"no END entry: the blob ends at offset {base + n:#x} "
                             f"({n - pos} bytes after the last entry); Xen refuses it")
            return
        d = hvm.DESCRIPTOR.unpack(blob, offset=pos)
        tc, inst, length = d["typecode"], d["instance"], d["length"]
        if tc == hvm.END:
            if n - pos - dsz:
                ctx.notes.append(f"{n - pos - dsz} bytes after END (ignored on load)")
            return
        if length > n - pos - dsz:
            ctx.notes.append(f"{hvm.type_name(tc)} entry at offset {base + pos:#x}: length "
                             f"{length} runs past the blob ({n - pos - dsz} bytes left); "
                             "decoding stops there")
            return
        yield HvmEntry(tc, hvm.type_name(tc), inst, length, base + pos), \
            blob[pos + dsz: pos + dsz + length]
        pos += dsz + length


def decode_hvm_context(blob: bytes, base: int, guest: str = "hvm"
                       ) -> Tuple[HvmContext, List[VcpuState]]:
    """The HVM context ``blob`` (at absolute file offset ``base``): the
    context with its entries and platform devices, and the vcpus with a CPU
    record (plus, as offline, those with only other per-vcpu records)."""
    ctx = HvmContext(base, len(blob))
    vcpus: Dict[int, VcpuState] = {}
    per_vcpu: List[Tuple[HvmEntry, bytes]] = []
    seen: Dict[Tuple[int, int], HvmEntry] = {}
    for e, body in _iter_blob(blob, base, ctx):
        if not ctx.entries and e.typecode != hvm.HEADER_CODE:
            ctx.notes.append(f"the blob starts with {e.name}, not HEADER: Xen refuses it")
        ctx.entries.append(e)
        key = (e.typecode, e.instance)
        if key in seen:
            e.notes.append(f"a second {e.name} instance {e.instance}: Xen loads both, the last "
                           "one wins")
        seen[key] = e
        info = hvm.TYPECODES.get(e.typecode)
        if info is None or (e.typecode == hvm.HEADER_CODE and len(ctx.entries) > 1):
            e.notes.append("not a typecode Xen loads: not decoded" if info is None else
                           "HEADER again: Xen refuses it; not decoded")
            continue
        if e.typecode == hvm.HEADER_CODE:
            ctx.header = _public(hvm.HEADER.unpack(_fit(body, hvm.HEADER.size, info, e.notes)))
            continue
        if info.per == hvm.PER_VCPU:
            if e.typecode == hvm.CPU:
                if e.length > hvm.CPU_SIZE:
                    e.notes.append(f"length {e.length}: Xen refuses it (at most "
                                   f"{hvm.CPU_SIZE}); decoded from the first {hvm.CPU_SIZE}")
                elif e.length == hvm.CPU_SIZE_COMPAT:
                    e.notes.append("the pre-3.4 layout (no msr_tsc_aux): re-laid out as Xen "
                                   "loads it, flags read as FPU_INITIALISED")
                elif e.length == hvm.CPU_SIZE_NO_FLAGS:
                    e.notes.append("the Xen 3.4-4.6 layout (no flags): zero-extended, flags "
                                   "read as FPU_INITIALISED, as Xen loads it")
                elif e.length < hvm.CPU_SIZE:
                    e.notes.append(f"zero-extended from {e.length} to {hvm.CPU_SIZE} bytes, as "
                                   "Xen loads it (no Xen version writes this length)")
                vcpus[e.instance] = _cpu_vcpu(e.instance, body, e.offset + hvm.DESCRIPTOR.size,
                                              guest, list(e.notes))
            else:
                per_vcpu.append((e, body))
            continue
        if e.typecode == hvm.PIT:
            data = _fit(body, info.size, info, e.notes)
        else:
            data = _fit(body, hvm.RECORD_LAYOUTS[e.typecode].size, info, e.notes)
        fields = _device(e.typecode, data)
        if e.typecode == hvm.PIC:
            pics = ctx.platform.setdefault("PIC", [])
            fields = {"instance": e.instance, **fields}
            pics[:] = [p for p in pics if p["instance"] != e.instance] + [fields]
            pics.sort(key=lambda p: p["instance"])
        else:
            ctx.platform[e.name] = fields
    for e, body in per_vcpu:
        v = vcpus.get(e.instance)
        if v is None:
            v = VcpuState(e.instance, guest, 64, False, "down (no CPU record)",
                          f"HVM context, instance {e.instance}", None)
            v.notes.append("no CPU record: Xen leaves this vcpu down")
            vcpus[e.instance] = v
        _vcpu_entry(v, e, body)
    return ctx, [vcpus[k] for k in sorted(vcpus)]


def _vcpu_entry(v: VcpuState, e: HvmEntry, body: bytes) -> None:
    """A per-vcpu record other than CPU, into its vcpu."""
    tc = e.typecode
    info = hvm.TYPECODES[tc]
    if tc == hvm.CPU_XSAVE:
        v.xsave = _xsave(body, e.notes)
    elif tc == hvm.CPU_MSR:
        v.msrs.update(_cpu_msrs(body, e.notes))
    elif tc == hvm.LAPIC_REGS:
        lapic = v.devices.get("LAPIC")
        x2apic = bool(lapic and lapic["x2apic"])
        v.devices[e.name] = _lapic_regs(_fit(body, hvm.LAPIC_REGS_SIZE, info, e.notes), x2apic)
    else:
        data = _fit(body, hvm.RECORD_LAYOUTS[tc].size, info, e.notes)
        v.devices[e.name] = _device(tc, data)
    v.notes.extend(f"{e.name}: {n}" for n in e.notes)


# -- PV vcpu context --------------------------------------------------------------------


def pv_cr3_to_pfn(cr3: int, width: int) -> int:
    """xen_cr3_to_pfn(): a 64-bit guest's ``cr3 >> 12``; a 32-bit guest's
    rotated ``(cr3 >> 12) | (cr3 << 20)`` (32 bits)."""
    if width == 8:
        return cr3 >> 12
    cr3 &= 0xFFFFFFFF
    return ((cr3 >> 12) | (cr3 << 20)) & 0xFFFFFFFF


_REGS32_AS_64 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi",
                 "edi": "rdi", "ebp": "rbp", "esp": "rsp", "eip": "rip", "eflags": "rflags"}


def decode_pv_context(vid: int, blob: bytes, width: int, offset: int, source: str,
                      endian: str = "<") -> VcpuState:
    """A PV ``vcpu_guest_context`` (``width`` 8 or 4 bytes) at file ``offset``."""
    notes: List[str] = []
    want = pv.VCPU_CONTEXT_SIZE[width]
    if len(blob) != want:
        notes.append(f"context of {len(blob)} bytes for a {width * 8}-bit guest, expected "
                     f"{want}: Xen refuses it; decoded zero-extended")
        blob = blob[:want].ljust(want, b"\0")
    r = pv.VGC_REGS[width].unpack(blob, endian, pv.VGC_REGS_OFFSET[width])
    t = pv.VGC_TAIL[width].unpack(blob, endian, pv.VGC_TAIL_OFFSET[width])
    flags = r["flags"]
    in_kernel = bool(flags & pv.VGCF_IN_KERNEL)
    v = VcpuState(vid, "pv", width * 8, bool(flags & pv.VGCF_ONLINE),
                  f"{width * 8}-bit PV, {'kernel' if in_kernel else 'user'} mode", source, offset,
                  notes=notes)
    if width == 8:
        v.regs = {k: r[k] for k in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                    "rip", "rflags")}
    else:
        v.regs = {_REGS32_AS_64[k]: r[k] for k in ("eax", "ebx", "ecx", "edx", "esi", "edi",
                                                   "ebp", "esp", "eip", "eflags")}
    v.segments = {s: Segment(r[s]) for s in ("cs", "ds", "es", "fs", "gs", "ss")}
    if width == 8:
        v.segments["fs"].base = t["fs_base"]
        v.segments["gs"].base = t["gs_base_kernel"] if in_kernel else t["gs_base_user"]
    v.control = {f"cr{i}": t[f"cr{i}"] for i in range(8)}
    v.debug = {f"dr{i}": t[f"dr{i}"] for i in range(8)}
    v.fpu = {**_public(x86.FXSAVE_HEAD.unpack(blob, endian)),
             "initialised": flags & 1}
    cr1 = t["cr1"]
    if width == 8:
        callbacks = {k: t[k] for k in ("event_callback_eip", "failsafe_callback_eip",
                                       "syscall_callback_eip")}
        bases = {k: t[k] for k in ("fs_base", "gs_base_kernel", "gs_base_user")}
    else:
        callbacks = {k: t[k] for k in ("event_callback_cs", "event_callback_eip",
                                       "failsafe_callback_cs", "failsafe_callback_eip")}
        bases = {}
    nframes = min(16, -(-t["gdt_ents"] // pv.GDT_ENTRIES_PER_FRAME))
    trap = pv.TRAP_INFO[width]
    traps = []
    for i in range(pv.TRAP_ENTRIES):
        e = trap.unpack(blob, endian, pv.VGC_TRAPS_OFFSET[width] + trap.size * i)
        if e["address"] or e["cs"] or e["flags"]:
            traps.append({"index": i, **_public(e)})
    mask = 0xFFFFFFFFFFFFFFFF if width == 8 else 0xFFFFFFFF
    v.pv = PvState(
        flags=flags, flag_names=flag_names(flags, pv.VGCF_FLAGS), cr3=t["cr3"],
        cr3_pfn=pv_cr3_to_pfn(t["cr3"], width),
        user_pt_pfn=(cr1 >> 12) if width == 8 and cr1 & 1 else None,
        start_info_pfn=v.regs["rdx"] & mask if vid == 0 else None,
        kernel_ss=t["kernel_ss"], kernel_sp=t["kernel_sp"], gdt_ents=t["gdt_ents"],
        gdt_frames=[t[f"gdt_frame{i}"] for i in range(nframes)], ldt_base=t["ldt_base"],
        ldt_ents=t["ldt_ents"], callbacks=callbacks, segment_bases=bases, vm_assist=t["vm_assist"],
        saved_upcall_mask=r["saved_upcall_mask"], traps=traps)
    return v


def decode_pv_extended(blob: bytes, endian: str = "<") -> Dict[str, int]:
    """xen_domctl_ext_vcpucontext: the fields its own ``size`` (and the blob) covers."""
    lay = pv.EXT_VCPUCONTEXT
    f = lay.unpack(blob[:lay.size].ljust(lay.size, b"\0"), endian)
    have = min(len(blob), f["size"]) if len(blob) >= 8 else len(blob)
    out = _public(f)
    for name, since in pv.EXT_VCPUCONTEXT_SINCE.items():
        if have < since:
            del out[name]
    if have < 32:
        for name in list(out):
            if name not in ("vcpu", "size"):
                del out[name]
    return out


def decode_pv_msrs(blob: bytes, endian: str = "<") -> Dict[str, int]:
    ent = libxc.VCPU_MSR_ENTRY
    return {_msr_name(m["index"]): m["value"]
            for m in (ent.unpack(blob, endian, ent.size * i) for i in range(len(blob) // ent.size))}


def decode_pv_xsave(blob: bytes, endian: str = "<", xfeature_mask: Optional[int] = None
                    ) -> Optional[Dict[str, int]]:
    """A PV XSAVE blob: xcr0, xcr0_accum, then the XSAVE area."""
    if len(blob) < pv.VCPU_XSAVE_MIN:
        return None
    xcr0, accum = struct.unpack_from(endian + "QQ", blob)
    out = {"xcr0": xcr0, "xcr0_accum": accum, "size": len(blob) - 16}
    if xfeature_mask is not None:
        out["xfeature_mask"] = xfeature_mask
    if len(blob) >= 16 + 512 + 16:
        out["xstate_bv"], out["xcomp_bv"] = struct.unpack_from(endian + "QQ", blob, 16 + 512)
    return out


# -- the forward pass -------------------------------------------------------------------


class _Snapshot:
    """Vcpu state records of one checkpoint (or of the committed state)."""

    def __init__(self) -> None:
        self.hvm: Optional[Tuple[bytes, int]] = None  # (blob, file offset)
        #: vcpu -> kind -> (blob, file offset, source)
        self.pv: Dict[int, Dict[str, Tuple[bytes, int, str]]] = {}
        self.xfeature: Dict[int, int] = {}  # legacy: the xsave record's xfeature_mask
        self.records = 0

    def merge(self, later: _Snapshot) -> None:
        if later.hvm is not None:
            self.hvm = later.hvm
        for vid, kinds in later.pv.items():
            self.pv.setdefault(vid, {}).update(kinds)
        self.xfeature.update(later.xfeature)
        self.records += later.records


class _Reader:
    def __init__(self, src: Source, format: Optional[str]) -> None:
        self.src = src
        self.parser = Parser(src, format=format)
        if src.seekable:
            self.parser.page_filter = PageFilter()  # page data: skipped in bulk, unread
        self.libxl = False
        self.guest: Optional[str] = None  # "pv" | "hvm"
        self.width = 8  # PV guest width, bytes
        self.endian = "<"
        self.legacy = False
        self.checkpointed = False
        self.complete = 0
        self.pending = _Snapshot()
        self.committed = _Snapshot()
        self.notes: List[str] = []
        self.config_guest: Optional[str] = None  # "pv" | "hvm" | "pvh", as a config says
        self._xl: Optional[XlChecker] = None

    def commit(self) -> None:
        self.committed.merge(self.pending)
        self.pending = _Snapshot()

    def run(self) -> None:
        try:
            for item in self.parser.items():
                if type(item) is Record:
                    self._record(item)
                elif isinstance(item, Header):
                    self._header(item)
                elif isinstance(item, XlConfig):
                    if self._xl is not None:
                        self._xl.optional_data(item.optional_data_len, item.config_len,
                                               item.config)
                        self.config_guest = self._xl.info.guest_type()
                elif isinstance(item, EnvelopeData):
                    if item.layer == "libvirt":
                        lv = LibvirtChecker(_ignore)
                        lv.xml(item.data)
                        t = lv.info.os_type
                        self.config_guest = ("pvh" if t == "xenpvh" else lv.info.domain_type)
                elif isinstance(item, Legacy):
                    self._legacy_start(item)
                elif isinstance(item, EndOfInput):
                    self.notes.append(
                        f"the checkpointed stream ends at offset {item.offset:#x} after "
                        f"{self.complete} complete checkpoints: the state of checkpoint "
                        f"{self.complete}, as a failover restore leaves it")
                elif item.layer == "legacy":
                    self._legacy_item(item)
        except StopStream:
            self._fall_back("a libxl END inside a checkpoint")
        except FormatError as e:
            if self.complete and not self.parser.state.finished and self.checkpointed:
                self._fall_back(str(e))
            else:
                raise

    def _fall_back(self, why: str) -> None:
        if not self.complete:
            raise FormatError(self.src.pos, f"expected a complete checkpoint, found {why}",
                              what="checkpointed stream", rule="checkpoint-eof")
        self.notes.append(f"the checkpointed stream breaks off inside checkpoint "
                          f"{self.complete + 1} ({why}): the state of checkpoint "
                          f"{self.complete}, as a failover restore leaves it")

    # -- v2 ------------------------------------------------------------------------------

    def _header(self, h: Header) -> None:
        if h.kind == "xl header":
            self._xl = XlChecker(_ignore)
            self._xl.header(h.endian if h.fields["byteorder"] == XL_BYTEORDER else "<",
                            h.fields)
        elif h.kind == "libxl header":
            self.libxl = True
        elif h.kind == "libxc domain header":
            self.endian = h.endian
            t = h.fields["type"]
            self.guest = ("pv" if t == libxc.DHDR_TYPE_X86_PV else
                          "hvm" if t == libxc.DHDR_TYPE_X86_HVM else None)
            if self.guest is None:
                self.notes.append(f"domain header type {t:#x}: not an x86 PV or HVM guest, "
                                  "whose registers xenstream decodes")

    def _record(self, rec: Record) -> None:
        rt = rec.rtype
        if rec.layer != LAYER_LIBXC:
            if rt == libxl.REC_TYPE_CHECKPOINT_END:
                self.complete += 1
                self.commit()
            return
        if rt == libxc.REC_TYPE_PAGE_DATA:
            return
        p = self.pending
        if rt == libxc.REC_TYPE_HVM_CONTEXT:
            p.hvm = (rec.body(libxc.REC_LENGTH_MAX), rec.body_offset)
            p.records += 1
        elif rt == libxc.REC_TYPE_X86_PV_INFO:
            body = rec.read(min(rec.length, 8))
            if body and body[0] in (4, 8):
                self.width = body[0]
        elif rt in _PV_KINDS:
            body = rec.body(libxc.REC_LENGTH_MAX)
            if len(body) < 8:
                return
            vid = struct.unpack_from(rec.endian + "I", body)[0]
            if len(body) > 8:  # (an empty blob is the 4.6-4.8 errata: nothing to load)
                p.pv.setdefault(vid, {})[_PV_KINDS[rt]] = (body[8:], rec.body_offset + 8,
                                                           rec.what)
                p.records += 1
        elif rt == libxc.REC_TYPE_CHECKPOINT:
            self.checkpointed = True
            if not self.libxl:
                self.complete += 1
                self.commit()
        elif rt == libxc.REC_TYPE_END:
            if not self.checkpointed:
                self.commit()
            elif self.pending.records:
                self.notes.append(
                    f"END after {self.pending.records} vcpu-state records of an unfinished "
                    f"checkpoint: dropped, as the restorer drops them (the state of checkpoint "
                    f"{self.complete})")
                self.pending = _Snapshot()

    # -- legacy -------------------------------------------------------------------------

    def _legacy_start(self, item: Legacy) -> None:
        self.legacy = True
        g = item.guess
        if g is None:
            raise FormatError(item.offset, "expected a legacy (Xen <= 4.5) stream, found bytes "
                              "that match no legacy layout", what="legacy stream",
                              layer="legacy", rule="legacy-unrecognised")
        if g.guest == "hvm" and not g.certain and self.config_guest == "pv":
            # a pre-3.1 PV stream starts like an HVM one: the configuration
            # decides, as the toolstack did
            self.parser.legacy_options.guest = "pv"
            g.guest = "pv"

    def _legacy_item(self, it: Any) -> None:
        if isinstance(it, legacy.LHeader):
            self.guest = it.guest
            self.width = it.guest_width
            lp = self.parser.legacy_parser
            if lp is not None:
                lp.bulk = self.src.seekable  # page data moved by offset: skipped unread
        elif isinstance(it, legacy.LHvmTail):
            self.pending.hvm = (it.context, it.offset + 28)  # after 3 magic pfns, u32 size
            self.pending.records += 1
        elif isinstance(it, legacy.LPvTail):
            self._legacy_pv_tail(it)
        elif isinstance(it, legacy.LCheckpointEnd):
            self.complete = it.number
            if it.number > 1 or not it.last:
                self.checkpointed = True
            self.commit()
        elif isinstance(it, legacy.LTruncated):
            self.pending = _Snapshot()
            self.notes.append(f"{it.describe()}: the state of checkpoint {it.number - 1}, as a "
                              "failover restore leaves it")

    def _legacy_pv_tail(self, t: legacy.LPvTail) -> None:
        ctx_size = pv.VCPU_CONTEXT_SIZE[self.width]
        ext = pv.VCPU_EXTENDED_MAX
        # the tail: u32 count, count ulongs, then per vcpu the context, the
        # extended context (when "extv"), the xsave record (when "xcnt")
        hdr = self.parser.legacy_parser.header if self.parser.legacy_parser else None
        ulong = hdr.width if hdr is not None else 8
        pos = t.offset + 4 + ulong * len(t.unmapped)
        where = f"legacy PV tail of checkpoint {t.checkpoint}"
        for v in t.vcpus:
            kinds = self.pending.pv.setdefault(v.vcpu_id, {})
            kinds["basic"] = (v.context, pos, where)
            pos += ctx_size
            if v.extended is not None:
                kinds["extended"] = (v.extended, pos, where)
                pos += ext
            if v.xsave is not None:
                kinds["xsave"] = (v.xsave, pos + 16, where)
                self.pending.xfeature[v.vcpu_id] = v.xsave_mask
                pos += 16 + len(v.xsave)
        self.pending.records += 1

    # -- the result ---------------------------------------------------------------------

    def state(self, name: str) -> GuestState:
        c = self.committed
        notes = list(self.notes)
        hctx: Optional[HvmContext] = None
        vcpus: List[VcpuState] = []
        guest = self.guest
        if guest == "hvm":
            if c.hvm is None:
                notes.append("no HVM context: the image carries no vcpu state")
            else:
                blob, off = c.hvm
                kind = self.config_guest if self.config_guest in ("hvm", "pvh") else None
                if kind is None:
                    kind = "pvh" if _looks_pvh(blob) else "hvm"
                guest = kind
                hctx, vcpus = decode_hvm_context(blob, off, guest)
        elif guest == "pv":
            for vid in sorted(c.pv):
                kinds = c.pv[vid]
                if "basic" not in kinds:
                    notes.append(f"vcpu {vid}: extended state without a basic context (Xen "
                                 "leaves such a vcpu down)")
                    continue
                blob, off, where = kinds["basic"]
                v = decode_pv_context(vid, blob, self.width, off, where, self.endian)
                if "extended" in kinds:
                    v.extended = decode_pv_extended(kinds["extended"][0], self.endian)
                if "msrs" in kinds:
                    v.msrs.update(decode_pv_msrs(kinds["msrs"][0], self.endian))
                if "xsave" in kinds:
                    v.xsave = decode_pv_xsave(kinds["xsave"][0], self.endian,
                                              c.xfeature.get(vid))
                vcpus.append(v)
            if not vcpus:
                notes.append("no PV vcpu context: the image carries no vcpu state")
        return GuestState(
            file=name, layers=list(self.parser.state.layers), guest_type=guest,
            guest_width=(self.width * 8 if guest == "pv" else 64 if guest else None),
            legacy=self.legacy, checkpointed=self.checkpointed,
            complete_checkpoints=self.complete, hvm_context=hctx, vcpus=vcpus, notes=notes)


def _ignore(*_a: Any, **_k: Any) -> None:
    """A checker's report, for reading a configuration without judging it."""


def _looks_pvh(blob: bytes) -> bool:
    """A PVH domain has no emulated PIC, IOAPIC or PIT: Xen saves none of them."""
    seen = {e.typecode for e in hvm.iter_entries(blob)}
    return hvm.CPU in seen and not seen & {hvm.PIC, hvm.IOAPIC, hvm.PIT}


# -- the library functions ----------------------------------------------------------------


def read_state(spec_or_source: SourceSpec, *, format: Optional[str] = None) -> GuestState:
    """The guest state of the image at ``spec_or_source`` (a path, ``-``, a file
    descriptor or an open :class:`~xenstream.io.Source`), as a restore would
    leave it.  ``format`` forces the outermost format.  Raises
    :class:`~xenstream.errors.FormatError` on an image that cannot be read."""
    if isinstance(spec_or_source, Source):
        return _read(spec_or_source, spec_or_source.name, format)
    spec = os.fspath(spec_or_source) if not isinstance(spec_or_source, int) else spec_or_source
    with Source.open(spec) as src:
        return _read(src, src.name, format)


def _read(src: Source, name: str, format: Optional[str]) -> GuestState:
    r = _Reader(src, format)
    r.run()
    return r.state(name)


def vcpus(spec_or_source: SourceSpec, *, format: Optional[str] = None) -> List[VcpuState]:
    """Every vcpu's registers (see :func:`read_state`), in vcpu order."""
    return read_state(spec_or_source, format=format).vcpus


#: orig_rax in :func:`elf_gregs`: -1, "not in a system call" (what Linux puts there)
ORIG_RAX_NONE = 0xFFFFFFFFFFFFFFFF


def elf_gregs(vcpu: VcpuState) -> Tuple[int, ...]:
    """The vcpu's registers in the x86-64 ``elf_gregset_t`` order
    (:data:`xenstream.formats.x86.ELF_GREGSET`: r15, r14, r13, r12, rbp, rbx,
    r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp,
    ss, fs_base, gs_base, ds, es, fs, gs): the ``pr_reg`` of an NT_PRSTATUS
    note, as gdb reads it.

    Registers a guest does not have are 0 (r8-r15 of a 32-bit PV guest, the
    segment bases of a 32-bit PV guest); orig_rax is -1
    (:data:`ORIG_RAX_NONE`); the segment registers are the selectors; fs_base
    and gs_base the active bases (HVM: the CPU record's fs/gs bases; 64-bit PV:
    fs_base and, by the in-kernel flag, gs_base_kernel or gs_base_user).
    """
    r = vcpu.regs
    segs = vcpu.segments
    out = []
    for name in x86.ELF_GREGSET:
        if name == "orig_rax":
            out.append(ORIG_RAX_NONE)
        elif name == "eflags":
            out.append(r.get("rflags", 0))
        elif name in ("fs_base", "gs_base"):
            s = segs.get(name[:2])
            out.append((s.base or 0) if s is not None else 0)
        elif name in ("cs", "ss", "ds", "es", "fs", "gs"):
            s = segs.get(name)
            out.append(s.sel if s is not None else 0)
        else:
            out.append(r.get(name, 0))
    return tuple(out)


__all__ = ["GuestState", "HvmContext", "HvmEntry", "PvState", "Segment", "VcpuState",
           "decode_hvm_context", "decode_pv_context", "elf_gregs", "read_state", "vcpus"]
