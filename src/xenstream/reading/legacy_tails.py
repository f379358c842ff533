"""The tails of a legacy stream's checkpoints: the PV tail (unmapped pfns,
vcpu contexts, shared info), the HVM tail (magic pfns, HVM context) and the
device-model (qemu) record after it, read as the legacy restorer read them."""

from __future__ import annotations

import struct
from typing import List, Optional

from xenstream.errors import TruncatedError
from xenstream.formats.legacy import (
    EXTV_SIZE,
    HVM_CONTEXT_MAX,
    LAYER,
    QEMU_KINDS,
    QEMU_SIG_LEN,
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


def read_qemu(inp: LegacyInput, number: int, optional: bool) -> Optional[LQemu]:
    """The device-model record after an HVM tail, None if the input ends
    there (or, when ``optional``, if no known signature follows).  A xend
    record (kind "xend") has no length: its data runs to the end of the input."""
    at = inp.pos
    sig = inp.read_upto(QEMU_SIG_LEN)
    if not sig:
        return None  # a libxc-only stream: no device-model record
    what = "legacy qemu record"
    if optional and sig not in QEMU_KINDS:
        # inside a container (a XenServer Libxc_legacy frame) what follows
        # may be the container's own next frame: give the bytes back
        inp.src.unread(sig)
        return None
    if len(sig) < QEMU_SIG_LEN or sig not in QEMU_KINDS:
        raise legacy_error(at, "expected a device-model record (DeviceModelRecord0002, "
                           "RemusDeviceModelState or QemuDeviceModelRecord), found "
                           f"{sig!r} (\"Invalid QEMU signature\")", what,
                           "legacy-qemu-signature")
    kind = QEMU_KINDS[sig]
    if kind == "xend":
        nxt = inp.read_upto(1)
        if nxt == b"\n":  # XenServer: newline, big-endian length
            raw = inp.read(4, what)
            length = int.from_bytes(raw, "big")
            q = LQemu(at, sig + nxt, "xenserver", length, sig + nxt + raw, number)
        else:
            # xend: the data runs to the end of the input
            inp.src.unread(nxt)
            q = LQemu(at, sig, "xend", None, sig, number)
            rem = inp.src.remaining()
            q._init_payload(inp.src, rem if rem is not None else 1 << 62)
            return q
    else:
        raw = inp.read(4, what)
        length = int.from_bytes(raw, "little")
        q = LQemu(at, sig, kind, length, sig + raw, number)
    rem = inp.src.remaining()
    if rem is not None and q.length is not None and q.length > rem:
        raise TruncatedError(inp.pos, q.length, rem, what=what, layer=LAYER)
    q._init_payload(inp.src, q.length or 0)
    return q


def read_pv_tail(inp: LegacyInput, hdr: LHeader, vcpumap: List[int], number: int) -> LPvTail:
    """The PV tail: unmapped pfns, the context of every vcpu in ``vcpumap``,
    the shared info page."""
    at = inp.pos
    what = "legacy PV tail"
    count = inp.u32(what)
    if count > hdr.p2m_size:
        raise legacy_error(at, f"expected at most p2m_size ({hdr.p2m_size:#x}) unmapped pfns, "
                           f"found {count}", what, "legacy-unmapped-count")
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
