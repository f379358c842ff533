"""``xenstream regs`` output: the guest state of :mod:`xenstream.consumers.regs`
as text (grouped per vcpu) and as one JSON document
(``schema/regs.schema.json``)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

from xenstream.consumers.regs import GuestState, HvmContext, Segment, VcpuState, flag_names
from xenstream.formats import x86

SCHEMA_VERSION = 1

_GUEST = {"hvm": "HVM", "pvh": "PVH", "pv": "PV"}


def to_json(state: GuestState, vcpu: Optional[int] = None) -> Dict[str, Any]:
    """The JSON document; ``vcpu`` keeps only that vcpu."""
    vs = [v for v in state.vcpus if vcpu is None or v.vcpu == vcpu]
    hc = state.hvm_context
    return {
        "schema_version": SCHEMA_VERSION,
        "file": state.file,
        "layers": state.layers,
        "guest_type": state.guest_type,
        "guest_width": state.guest_width,
        "legacy": state.legacy,
        "checkpoints": {"checkpointed": state.checkpointed,
                        "complete": state.complete_checkpoints},
        "notes": list(state.notes),
        "hvm_context": None if hc is None else {
            "offset": hc.offset, "length": hc.length, "header": hc.header,
            "entries": [e.to_json() for e in hc.entries], "platform": hc.platform,
            "notes": list(hc.notes)},
        "vcpus": [v.to_json() for v in vs],
    }


# -- text ---------------------------------------------------------------------------


#: fields shown in decimal: counts, sizes, ids
_DECIMAL = frozenset({"vcpu", "size", "instance", "vcnt", "timer_divisor", "count",
                      "gtsc_khz", "version"})


def _h(v: Optional[int], digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:#0{digits + 2}x}" if digits else f"{v:#x}"


def _flags(v: int, names: Dict[int, str]) -> str:
    f = flag_names(v, names)
    return f" [{' '.join(f)}]" if f else ""


def _vecs(vs: List[int]) -> str:
    return " ".join(f"{v:#04x}" for v in vs) if vs else "-"


def _row(pairs: List[Any], digits: int) -> str:
    return "  " + "  ".join(f"{n:<3} {_h(v, digits)}" for n, v in pairs)


def summary_line(state: GuestState) -> str:
    g = _GUEST.get(state.guest_type or "", "unknown")
    if state.guest_type == "pv" and state.guest_width:
        g = f"{state.guest_width}-bit {g}"
    n = len(state.vcpus)
    what = f"{g} guest, {n} vcpu{'s' if n != 1 else ''}"
    if state.layers:
        what += ", " + " -> ".join(state.layers)
    if state.checkpointed:
        what += f", the state of checkpoint {state.complete_checkpoints} (checkpointed stream)"
    return f"{state.file}: {what}"


def text_lines(state: GuestState, vcpu: Optional[int] = None) -> Iterator[str]:
    """The text report, line by line; ``vcpu`` shows only that vcpu."""
    yield summary_line(state)
    for n in state.notes:
        yield f"note: {n}"
    hc = state.hvm_context
    if hc is not None and vcpu is None:
        yield from _context_lines(hc)
    for v in state.vcpus:
        if vcpu is None or v.vcpu == vcpu:
            yield ""
            yield from _vcpu_lines(v)
    if hc is not None and vcpu is None and hc.platform:
        yield ""
        yield "platform:"
        yield from _platform_lines(hc.platform)


def _context_lines(hc: HvmContext) -> Iterator[str]:
    yield (f"HVM context: {len(hc.entries)} entries, {hc.length} bytes at offset "
           f"{hc.offset:#x}")
    h = hc.header
    if h is not None:
        yield (f"  header: magic {h['magic']:#010x} version {h['version']} changeset "
               f"{h['changeset']:#x} cpuid {h['cpuid']:#010x} gtsc_khz {h['gtsc_khz']}")
    for n in hc.notes:
        yield f"  note: {n}"
    yield f"  {'typecode':>8}  {'name':<16} {'instance':>8} {'length':>7}  offset"
    for e in hc.entries:
        yield (f"  {e.typecode:>8}  {e.name:<16} {e.instance:>8} {e.length:>7}  "
               f"{e.offset:#x}" + "".join(f"  ({n})" for n in e.notes))


def _seg(name: str, s: Segment, digits: int) -> str:
    if s.base is None and s.limit is None:
        return f"{name} {s.sel:#06x}"
    a = s.attr or {}
    attr = " ".join(f"{k} {v}" for k, v in a.items() if k not in ("type",))
    return (f"  {name:<4} sel {s.sel:#06x}  base {_h(s.base, digits)}  limit "
            f"{_h(s.limit, 8)}  attr {_h(s.arbytes, 3)} (type {a.get('type', 0):#x} {attr})")


def _vcpu_lines(v: VcpuState) -> Iterator[str]:
    where = f", registers at offset {v.offset:#x}" if v.offset is not None else ""
    yield (f"vcpu {v.vcpu}: {'online' if v.online else 'offline'}, {v.mode} "
           f"({v.source}{where})")
    r = v.regs
    d = 16 if v.width == 64 else 8
    if r:
        if v.width == 64:
            names = [("rax", "rax"), ("rbx", "rbx"), ("rcx", "rcx"), ("rdx", "rdx"),
                     ("rsi", "rsi"), ("rdi", "rdi"), ("rbp", "rbp"), ("rsp", "rsp")]
            names += [(f"r{i}", f"r{i}") for i in range(8, 16)]
            ip, fl = "rip", "rflags"
        else:
            names = [("e" + k[1:], k) for k in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi",
                                                 "rbp", "rsp")]
            ip, fl = "eip", "eflags"
        for i in range(0, len(names), 4):
            yield _row([(label, r[k]) for label, k in names[i:i + 4]], d)
        yield (f"  {ip} {_h(r['rip'], d)}  {fl} {_h(r['rflags'], 8)}"
               f"{_flags(r['rflags'] & ~2, x86.RFLAGS_FLAGS)}")
    c = v.control
    if c:
        yield (f"  cr0 {_h(c['cr0'], 8)}{_flags(c['cr0'], x86.CR0_FLAGS)}  cr4 {_h(c['cr4'], 8)}"
               f"{_flags(c['cr4'], x86.CR4_FLAGS)}")
        extra = "".join(f"  {k} {_h(c[k], d)}" for k in ("cr1", "cr2") if k in c)
        yield f"  cr3 {_h(c['cr3'], d)}{extra}"
    if v.debug:
        yield "  " + "  ".join(f"{k} {_h(val, d)}" for k, val in v.debug.items())
    if v.pv is None:
        for name, s in v.segments.items():
            yield _seg(name, s, d)
        for t, tb in v.tables.items():
            yield f"  {t:<4} base {_h(tb['base'], d)}  limit {_h(tb['limit'], 4)}"
    else:
        yield "  " + "  ".join(f"{n} {s.sel:#06x}" for n, s in v.segments.items())
    m = v.msrs
    if "efer" in m:
        yield (f"  efer {_h(m['efer'])}{_flags(m['efer'], x86.EFER_FLAGS)}  star "
               f"{_h(m['star'], 16)}  lstar {_h(m['lstar'], 16)}  cstar {_h(m['cstar'], 16)}")
        yield (f"  syscall_mask {_h(m['syscall_mask'])}  sysenter_cs {_h(m['sysenter_cs'])}  "
               f"sysenter_esp {_h(m['sysenter_esp'], 16)}  sysenter_eip "
               f"{_h(m['sysenter_eip'], 16)}")
        yield (f"  shadow_gs {_h(m['shadow_gs'], 16)}  tsc {_h(m['tsc'])}  tsc_aux "
               f"{_h(m['tsc_aux'])}")
    others = {k: val for k, val in m.items() if k not in _CPU_MSRS}
    if others:
        yield "  MSRs: " + "  ".join(f"{k} {_h(val)}" for k, val in others.items())
    pe = v.pending_event
    if pe is not None:
        if pe["valid"]:
            yield (f"  pending event: vector {pe['vector']:#04x} type {pe['type']}"
                   + (f" error code {pe['error_code']:#x}" if pe["error_valid"] else ""))
        else:
            yield "  pending event: none"
    if v.fpu:
        f = v.fpu
        yield (f"  fpu: fcw {f['fcw']:#06x} fsw {f['fsw']:#06x} ftw {f['ftw']:#04x} mxcsr "
               f"{f['mxcsr']:#010x}{'' if f['initialised'] else ' (not initialised)'}")
    if v.pv is not None:
        yield from _pv_lines(v)
    if v.xsave is not None:
        yield "  XSAVE: " + _kv(v.xsave)
    for name, fields in v.devices.items():
        yield from _device_lines(name, fields)
    for n in v.notes:
        yield f"  note: {n}"


_CPU_MSRS = frozenset({"efer", "star", "lstar", "cstar", "syscall_mask", "sysenter_cs",
                       "sysenter_esp", "sysenter_eip", "shadow_gs", "tsc", "tsc_aux"})


def _pv_lines(v: VcpuState) -> Iterator[str]:
    p = v.pv
    assert p is not None
    d = 16 if v.width == 64 else 8
    yield (f"  cr3 pfn {p.cr3_pfn:#x} (stored cr3 {_h(p.cr3, d)}, the saver's pfn form)"
           + (f"  user page table pfn {p.user_pt_pfn:#x}" if p.user_pt_pfn is not None else "")
           + (f"  start_info pfn {p.start_info_pfn:#x}" if p.start_info_pfn is not None else ""))
    yield (f"  flags {p.flags:#x} [{' '.join(p.flag_names)}]  vm_assist {p.vm_assist:#x}  "
           f"saved_upcall_mask {p.saved_upcall_mask}")
    yield f"  kernel_ss {p.kernel_ss:#06x}  kernel_sp {_h(p.kernel_sp, d)}"
    frames = " ".join(f"{f:#x}" for f in p.gdt_frames) or "-"
    yield (f"  gdt: {p.gdt_ents} entries, frames (pfns) {frames}  ldt: base "
           f"{_h(p.ldt_base, d)}, {p.ldt_ents} entries")
    yield "  callbacks: " + "  ".join(f"{k} {_h(val, d)}" for k, val in p.callbacks.items())
    if p.segment_bases:
        yield "  " + "  ".join(f"{k} {_h(val, d)}" for k, val in p.segment_bases.items())
    yield f"  traps: {len(p.traps)} set"
    if v.extended is not None:
        yield "  extended: " + _kv(v.extended)


def _kv(fields: Dict[str, Any], skip: Tuple[str, ...] = ()) -> str:
    return "  ".join(f"{k} {_val(k, val)}" for k, val in fields.items()
                     if k not in skip and not isinstance(val, (list, dict)))


def _val(k: str, val: Any) -> str:
    if isinstance(val, int) and k not in _DECIMAL:
        return _h(val)
    return str(val)


def _device_lines(name: str, f: Dict[str, Any]) -> Iterator[str]:
    if name == "LAPIC":
        yield (f"  LAPIC: base {f['base_address']:#x}, {'enabled' if f['enabled'] else 'disabled'}"
               f", {'x2APIC' if f['x2apic'] else 'xAPIC'}{', BSP' if f['bsp'] else ''}"
               + (f", disabled by {'/'.join(f['disabled_by'])}" if f["disabled_by"] else "")
               + f", timer divisor {f['timer_divisor']}, tdt_msr {f['tdt_msr']:#x}, "
               f"pending_esr {f['pending_esr']:#x}")
    elif name == "LAPIC_REGS":
        t = f["timer"]
        yield (f"  LAPIC_REGS: id {f['apic_id']:#x} (reg {f['id']:#010x}), tpr {f['tpr']:#04x}, "
               f"ppr {f['ppr']:#04x}, svr {f['svr']:#x}, ldr {f['ldr']:#x}, esr {f['esr']:#x}")
        yield f"    isr {_vecs(f['isr'])}  irr {_vecs(f['irr'])}  tmr {_vecs(f['tmr'])}"
        yield (f"    timer: lvt {t['lvt']:#010x} ({'masked, ' if t['masked'] else ''}{t['mode']}, "
               f"vector {t['vector']:#04x}), initial count {t['initial_count']:#x}, current "
               f"count {t['current_count']:#x}, divide {t['divide_config']:#x} "
               f"(/{t['divisor']})")
        yield ("    lvt: " + "  ".join(f"{k[4:]} {f[k]:#x}" for k in
                                      ("lvt_thermal", "lvt_pmc", "lvt_lint0", "lvt_lint1",
                                       "lvt_error", "lvt_cmci")))
    elif name == "MTRR":
        yield (f"  MTRR: default {f['default_type']}, {'enabled' if f['enabled'] else 'disabled'}"
               f", fixed {'enabled' if f['fixed_enabled'] else 'disabled'}, pat {f['pat']:#018x}"
               f", {f['vcnt']} variable ranges")
        for i, r in enumerate(f["variable"]):
            if r["valid"] or r["base"] or r["mask"]:
                yield (f"    var {i}: base {r['base']:#x} ({r['type']}) mask {r['mask']:#x}"
                       f"{'' if r['valid'] else ' (not valid)'}")
    else:
        yield f"  {name}: {_kv(f)}"


def _platform_lines(p: Dict[str, Any]) -> Iterator[str]:
    for name, f in p.items():
        if name == "PIC":
            for pic in f:
                which = "master" if pic["instance"] == 0 else "slave"
                yield f"  PIC {which}: {_kv(pic, ('instance',))}"
        elif name == "IOAPIC":
            pins = f["redirtbl"]
            live = [q for q in pins if not q["mask"]]
            yield (f"  IOAPIC: base {f['base_address']:#x} id {f['id']} ioregsel "
                   f"{f['ioregsel']:#x}, {len(pins)} pins, {len(pins) - len(live)} masked")
            for q in live:
                yield (f"    pin {q['pin']}: vector {q['vector']:#04x} delivery "
                       f"{q['delivery_mode']} {'level' if q['trig_mode'] else 'edge'} "
                       f"{'low' if q['polarity'] else 'high'} dest {q['dest_id']:#x}"
                       f"{' (logical)' if q['dest_mode'] else ''}"
                       f"{' remote_irr' if q['remote_irr'] else ''}")
        elif name == "PIT":
            for i, c in enumerate(f["channels"]):
                yield f"  PIT channel {i}: {_kv(c)}"
            yield f"  PIT speaker_data_on {f['speaker_data_on']}"
        elif name == "HPET":
            yield f"  HPET: {_kv(f)}"
            for i, t in enumerate(f["timers"]):
                yield (f"    timer {i}: config {t['config']:#x} comparator {t['cmp']:#x} period "
                       f"{t['period']:#x} fsb {t['fsb']:#x}")
        elif isinstance(f, dict) and "asserted" in f:
            yield f"  {name}: asserted {' '.join(str(b) for b in f['asserted']) or '-'}"
        elif name == "PCI_LINK":
            yield f"  PCI_LINK: route {' '.join(str(x) for x in f['route'])}"
        else:
            yield f"  {name}: {_kv(f)}"
