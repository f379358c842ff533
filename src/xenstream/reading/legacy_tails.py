"""The tails of a legacy stream's checkpoints: the PV tail (unmapped pfns,
vcpu contexts, shared info), the HVM tail (magic pfns, HVM context) and the
device-model (qemu) record after it, read as the legacy restorer read them."""

from __future__ import annotations

import struct
from typing import List, Optional

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats.legacy import (
    EXTV_SIZE,
    HVM_CONTEXT_MAX,
    LAYER,
    QEMU_KINDS,
    QEMU_SAVE_MAGIC,
    QEMU_SIG_LEN,
    QEMU_SIG_XEND,
    QEMU_SIG_XENOPSD,
    SHARED_INFO_SIZE,
    VCPU_CTX_SIZE,
    LHeader,
    LHvmTail,
    LPvTail,
    LQemu,
    LVcpu,
)
from xenstream.reading.legacy_input import LegacyInput, legacy_error


def read_hvm_tail(inp: LegacyInput, number: int) -> LHvmTail:
    """The HVM tail: the magic pfns and the HVM context."""
    at = inp.pos
    what = "legacy HVM tail"
    magic = struct.unpack("<QQQ", inp.read(24, what))
    size = inp.u32(what)
    if size > HVM_CONTEXT_MAX:
        raise legacy_error(at + 24, f"expected an HVM context of at most {HVM_CONTEXT_MAX} "
                           f"bytes, found {size}", what, "legacy-hvm-context-size")
    rem = inp.src.remaining()
    if rem is not None and size > rem:
        raise TruncatedError(inp.pos, size, rem, what=what, layer=LAYER)
    ctx = inp.read(size, what)
    return LHvmTail(at, (magic[0], magic[1], magic[2]), ctx, number)


def _qemu_error(at: int, message: str, rule: str) -> FormatError:
    return legacy_error(at, message + ": the guest's device state would be lost",
                        "legacy qemu record", rule)


def _newline(inp: LegacyInput) -> bool:
    """Consume a newline if one comes next."""
    nxt = inp.read_upto(1)
    if nxt == b"\n":
        return True
    inp.src.unread(nxt)
    return False


def read_qemu(inp: LegacyInput, number: int, optional: bool, container: str) -> Optional[LQemu]:
    """The device-model record after an HVM tail, read as its restorer reads
    it.  The legacy C restorer (``xc_domain_restore.c``: ``buffer_tail_hvm``)
    reads a 21-byte signature right after the HVM context and refuses any but
    ``DeviceModelRecord0002``/``RemusDeviceModelState`` (u32 LE length, then
    the data) and ``QemuDeviceModelRecord`` (xend: the data to the end of the
    input, starting with ``QEVM``: ``compat_buffer_qemu``); xenopsd reads
    ``QemuDeviceModelRecord\n`` (22 bytes) and a u32 BE length after a
    ``XenSavedDomain`` image's stream (and a bare stream may end in that
    record: what a XenServer caller's descriptor holds).  ``optional`` (inside a XenServer
    Libxc_legacy frame, whose container may go on with its next frame):
    None when no known signature follows."""
    at = inp.pos
    what = "legacy qemu record"
    sig = inp.read_upto(QEMU_SIG_LEN)
    if optional and sig not in QEMU_KINDS:
        inp.src.unread(sig)
        return None
    if len(sig) < QEMU_SIG_LEN:
        e = TruncatedError(at, QEMU_SIG_LEN, len(sig), what=what, layer=LAYER, message=(
            f"expected a device-model record after the HVM tail, found end of stream after "
            f"{len(sig)} bytes (\"Error reading QEMU signature\"): the guest's device state "
            "is missing"))
        e.rule = "legacy-qemu-missing"
        raise e
    if container == "xenopsd":
        nl = inp.read_upto(1) if sig == QEMU_SIG_XEND else b""
        if nl != b"\n":
            raise _qemu_error(at, "expected xenopsd's device-model signature "
                              f"{QEMU_SIG_XENOPSD!r}, found {sig + nl!r}", "xenopsd-qemu-signature")
        raw = inp.read(4, what)
        q = LQemu(at, sig + nl, "xenserver", int.from_bytes(raw, "big"), sig + nl + raw, number)
    elif sig not in QEMU_KINDS:
        raise _qemu_error(at, "expected a device-model record (DeviceModelRecord0002, "
                          "RemusDeviceModelState or QemuDeviceModelRecord), found "
                          f"{sig!r} (\"Invalid QEMU signature\")", "legacy-qemu-signature")
    elif QEMU_KINDS[sig] == "xend" and container == "bare" and _newline(inp):
        # a bare stream: what a XenServer caller's descriptor holds after
        # xenopsd read the XenSavedDomain signature (it then reads this itself)
        raw = inp.read(4, what)
        q = LQemu(at, sig + b"\n", "xenserver", int.from_bytes(raw, "big"), sig + b"\n" + raw,
                  number)
    elif QEMU_KINDS[sig] == "xend":
        # no length: the data runs to the end of the input and must be a
        # qemu save file
        magic = inp.read_upto(4)
        inp.src.unread(magic)
        if magic != QEMU_SAVE_MAGIC:
            raise _qemu_error(at + QEMU_SIG_LEN, f"expected the qemu data to begin with "
                              f"{QEMU_SAVE_MAGIC!r}, found {magic!r} (\"Invalid QEMU magic\")",
                              "legacy-qemu-qevm")
        q = LQemu(at, sig, "xend", None, sig, number)
        rem = inp.src.remaining()
        q._init_payload(inp.src, rem if rem is not None else 1 << 62)
        return q
    else:
        raw = inp.read(4, what)
        q = LQemu(at, sig, QEMU_KINDS[sig], int.from_bytes(raw, "little"), sig + raw, number)
    rem = inp.src.remaining()
    if rem is not None and q.length is not None and q.length > rem:
        e = TruncatedError(inp.pos, q.length, rem, what=what, layer=LAYER, message=(
            f"expected {q.length} bytes of device-model state (the record's length), found "
            f"end of stream after {rem}"))
        e.rule = "xenopsd-qemu-length" if q.qkind == "xenserver" else "legacy-qemu-length"
        raise e
    q._init_payload(inp.src, q.length or 0)
    return q


#: buffer_tail_pv(): "up to 1TB of address space"
UNMAPPED_MAX = 1 << 28


def read_pv_tail(inp: LegacyInput, hdr: LHeader, vcpumap: List[int], number: int) -> LPvTail:
    """The PV tail: unmapped pfns, the context of every vcpu in ``vcpumap``,
    the shared info page."""
    at = inp.pos
    what = "legacy PV tail"
    count = inp.u32(what)
    if count > UNMAPPED_MAX:
        raise legacy_error(at, f"expected at most {UNMAPPED_MAX:#x} unmapped pfns (\"Error when "
                           f"reading pfn count\"), found {count:#x}", what, "legacy-unmapped-count")
    unmapped: List[int] = []
    left = count
    while left:
        k = min(left, 1024)
        unmapped.extend(inp.ulongs(k, what))
        left -= k
    ctx_size = VCPU_CTX_SIZE[hdr.guest_width]
    vcpus: List[LVcpu] = []
    for vid in vcpumap:
        ctx = inp.read(ctx_size, f"legacy PV tail (vcpu {vid} context)")
        ext = (inp.read(EXTV_SIZE, f"legacy PV tail (vcpu {vid} extended)") if hdr.extv
               else None)
        mask = 0
        xs: Optional[bytes] = None
        if hdr.xcnt:
            mask = inp.u64(f"legacy PV tail (vcpu {vid} xsave)")
            size = inp.u64(f"legacy PV tail (vcpu {vid} xsave)")
            if 16 + size != hdr.xcnt:
                raise legacy_error(inp.pos - 16, f"expected an xsave record of {hdr.xcnt} "
                                   f"bytes (xcnt) for vcpu {vid}, found {16 + size}",
                                   what, "legacy-xsave-size")
            xs = inp.read(size, f"legacy PV tail (vcpu {vid} xsave)")
        vcpus.append(LVcpu(vid, ctx, ext, mask, xs))
    shinfo = inp.read(SHARED_INFO_SIZE, "legacy PV tail (shared info)")
    return LPvTail(at, unmapped, vcpus, shinfo, number)
