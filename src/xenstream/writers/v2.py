"""Writer API: build libxc v2/v3, libxl (plain, Remus, COLO) and xl streams.

Two levels:

* :class:`LibxcWriter`, :class:`LibxlWriter` and :func:`xl_header` write one
  header or record at a time and let every field be overridden (wrong
  lengths, non-zero padding, bad reserved fields), so tests can make any
  broken variant;
* :func:`write_image` writes a whole valid image from a :class:`ImageSpec`.

Everything writes to a binary file object as it goes; nothing holds more than
one record in memory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

from xenstream.formats import hvm, libvirt, libxc, libxl, xend, xenopsd, xl
from xenstream.layout import pad8

PAGE = libxc.PAGE_SIZE


class Writable(Protocol):
    """Anything with ``write(bytes)``: a binary file, or the converter's Sink."""

    def write(self, data: Union[bytes, bytearray, memoryview], /) -> Any: ...


class RecordWriter:
    """Writes ``type | length | body | padding`` records in one byte order."""

    def __init__(self, out: Writable, endian: str = "<") -> None:
        self.out = out
        self.endian = endian
        self.records = 0

    def raw(self, data: bytes) -> None:
        self.out.write(data)

    def record(self, rtype: int, body: Union[bytes, Sequence[bytes]] = b"", *,
               length: Optional[int] = None, padding: Optional[bytes] = None) -> None:
        """Write one record.  ``body`` may be a list of pieces (written without
        joining them).  ``length`` overrides the length field and ``padding`` the
        padding bytes, for broken variants."""
        pieces = [body] if isinstance(body, (bytes, bytearray, memoryview)) else list(body)
        n = sum(len(p) for p in pieces)
        self.out.write(struct.pack(self.endian + "II", rtype, n if length is None else length))
        for p in pieces:
            self.out.write(p)
        self.out.write(b"\0" * pad8(n) if padding is None else padding)
        self.records += 1


class LibxcWriter(RecordWriter):
    """One libxc v2/v3 stream."""

    def __init__(self, out: Writable, *, endian: str = "<", version: int = 3) -> None:
        super().__init__(out, endian)
        self.version = version

    def image_header(self, *, version: Optional[int] = None, options: Optional[int] = None,
                     marker: int = libxc.IHDR_MARKER, ident: int = libxc.IHDR_ID,
                     res1: int = 0, res2: int = 0) -> None:
        if options is None:
            options = libxc.IHDR_OPT_BE if self.endian == ">" else 0
        self.raw(libxc.IHDR.pack(">", marker=marker, id=ident,
                                 version=self.version if version is None else version,
                                 options=options, _res1=res1, _res2=res2))

    def domain_header(self, guest: Union[str, int] = "hvm", *, page_shift: int = 12,
                      xen_major: int = 4, xen_minor: int = 21, res1: int = 0) -> None:
        t = {"pv": libxc.DHDR_TYPE_X86_PV, "hvm": libxc.DHDR_TYPE_X86_HVM}.get(guest, guest) \
            if isinstance(guest, str) else guest
        assert isinstance(t, int)
        self.raw(libxc.DHDR.pack(self.endian, type=t, page_shift=page_shift, _res1=res1,
                                 xen_major=xen_major, xen_minor=xen_minor))

    def headers(self, guest: str) -> None:
        self.image_header()
        self.domain_header(guest)

    # records

    def end(self, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_END, **kw)

    def page_data(self, pfns: Sequence[int], types: Union[int, Sequence[int]] = 0,
                  pages: Union[None, bytes, Sequence[bytes]] = None, *, res1: int = 0,
                  entries: Optional[Sequence[int]] = None, **kw: Any) -> None:
        """PAGE_DATA for ``pfns``.  ``types`` is one type for all or one per
        pfn; ``pages`` the data of the data-bearing entries (generated from the
        pfn when omitted); ``entries`` overrides the raw pfn words."""
        tl = [types] * len(pfns) if isinstance(types, int) else list(types)
        if entries is None:
            entries = [(t << libxc.PAGE_DATA_TYPE_SHIFT) | p for p, t in zip(pfns, tl)]
        hdr = libxc.PAGE_DATA_HDR.pack(self.endian, count=len(entries), _res1=res1)
        words = struct.pack(f"{self.endian}{len(entries)}Q", *entries)
        if pages is None:
            data: List[bytes] = [page_content(p) for p, t in zip(pfns, tl)
                                 if t not in libxc.NO_DATA_PAGE_TYPES]
        elif isinstance(pages, (bytes, bytearray, memoryview)):
            data = [bytes(pages)]
        else:
            data = list(pages)
        self.record(libxc.REC_TYPE_PAGE_DATA, [hdr, words, *data], **kw)

    def pv_info(self, width: int = 8, levels: Optional[int] = None, *, res: int = 0,
                extra: bytes = b"", **kw: Any) -> None:
        lv = levels if levels is not None else (4 if width == 8 else 3)
        self.record(libxc.REC_TYPE_X86_PV_INFO,
                    libxc.X86_PV_INFO.pack(self.endian, guest_width=width, pt_levels=lv,
                                           _res0=0, _res1=res) + extra, **kw)

    def p2m_frames(self, start: int, end: int, frames: Sequence[int], **kw: Any) -> None:
        body = libxc.X86_PV_P2M_FRAMES_HDR.pack(self.endian, start_pfn=start, end_pfn=end)
        body += struct.pack(f"{self.endian}{len(frames)}Q", *frames)
        self.record(libxc.REC_TYPE_X86_PV_P2M_FRAMES, body, **kw)

    def vcpu(self, rtype: int, vcpu_id: int, blob: bytes, *, res1: int = 0, **kw: Any) -> None:
        hdr = libxc.X86_PV_VCPU_HDR.pack(self.endian, vcpu_id=vcpu_id, _res1=res1)
        self.record(rtype, hdr + blob, **kw)

    def vcpu_basic(self, vcpu_id: int, width: int = 8, blob: Optional[bytes] = None,
                   **kw: Any) -> None:
        self.vcpu(libxc.REC_TYPE_X86_PV_VCPU_BASIC, vcpu_id,
                  blob if blob is not None else pv_vcpu_context(width, vcpu_id), **kw)

    def vcpu_extended(self, vcpu_id: int, blob: Optional[bytes] = None, **kw: Any) -> None:
        if blob is None:
            blob = struct.pack(self.endian + "II", vcpu_id, 64) + b"\0" * 56
        self.vcpu(libxc.REC_TYPE_X86_PV_VCPU_EXTENDED, vcpu_id, blob, **kw)

    def vcpu_xsave(self, vcpu_id: int, blob: Optional[bytes] = None, **kw: Any) -> None:
        if blob is None:
            # xcr0 = xcr0_accum = x87|SSE: legacy area + header, 576 bytes
            blob = struct.pack(self.endian + "QQ", 3, 3) + b"\0" * 576
        self.vcpu(libxc.REC_TYPE_X86_PV_VCPU_XSAVE, vcpu_id, blob, **kw)

    def vcpu_msrs(self, vcpu_id: int, msrs: Sequence[Tuple[int, int]] = ((0xC0000103, 0),),
                  **kw: Any) -> None:
        blob = b"".join(libxc.VCPU_MSR_ENTRY.pack(self.endian, index=i, value=v)
                        for i, v in msrs)
        self.vcpu(libxc.REC_TYPE_X86_PV_VCPU_MSRS, vcpu_id, blob, **kw)

    def shared_info(self, data: Optional[bytes] = None, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_SHARED_INFO, data if data is not None else b"\0" * PAGE, **kw)

    def tsc_info(self, mode: int = 0, khz: int = 2_000_000, nsec: int = 123_456_789,
                 incarnation: int = 1, *, res: int = 0, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_X86_TSC_INFO,
                    libxc.X86_TSC_INFO.pack(self.endian, mode=mode, khz=khz, nsec=nsec,
                                            incarnation=incarnation, _res1=res), **kw)

    def hvm_context(self, blob: Optional[bytes] = None, *, vcpus: int = 1, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_HVM_CONTEXT,
                    blob if blob is not None else hvm.sample_context(vcpus), **kw)

    def hvm_params(self, params: Union[Dict[int, int], Sequence[Tuple[int, int]]], *,
                   res: int = 0, **kw: Any) -> None:
        items = list(params.items()) if isinstance(params, dict) else list(params)
        body = libxc.HVM_PARAMS_HDR.pack(self.endian, count=len(items), _res1=res)
        body += b"".join(libxc.HVM_PARAMS_ENTRY.pack(self.endian, index=i, value=v)
                         for i, v in items)
        self.record(libxc.REC_TYPE_HVM_PARAMS, body, **kw)

    def static_data_end(self, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_STATIC_DATA_END, **kw)

    def cpuid_policy(self, leaves: Sequence[Tuple[int, int, int, int, int, int]] = (
            (0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),), **kw: Any) -> None:
        self.record(libxc.REC_TYPE_X86_CPUID_POLICY,
                    b"".join(struct.pack(self.endian + "6I", *lf) for lf in leaves), **kw)

    def msr_policy(self, entries: Sequence[Tuple[int, int]] = ((0xCE, 0),), **kw: Any) -> None:
        self.record(libxc.REC_TYPE_X86_MSR_POLICY,
                    b"".join(libxc.MSR_ENTRY.pack(self.endian, idx=i, flags=0, val=v)
                             for i, v in entries), **kw)

    def verify(self, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_VERIFY, **kw)

    def checkpoint(self, **kw: Any) -> None:
        self.record(libxc.REC_TYPE_CHECKPOINT, **kw)


class LibxlWriter(RecordWriter):
    """A libxl v2 stream (its libxc part is written with :meth:`libxc`)."""

    def header(self, *, options: Optional[int] = None, version: int = 2,
               ident: int = libxl.HDR_IDENT) -> None:
        if options is None:
            options = libxl.HDR_OPT_BE if self.endian == ">" else 0
        self.raw(libxl.HDR.pack(">", ident=ident, version=version, options=options))

    def libxc(self, *, endian: Optional[str] = None, version: int = 3) -> LibxcWriter:
        return LibxcWriter(self.out, endian=endian or self.endian, version=version)

    def end(self, **kw: Any) -> None:
        self.record(libxl.REC_TYPE_END, **kw)

    def libxc_context(self, **kw: Any) -> None:
        self.record(libxl.REC_TYPE_LIBXC_CONTEXT, **kw)

    def xenstore_data(self, pairs: Union[Dict[str, str], Sequence[Tuple[bytes, bytes]]],
                      *, emulator_id: int = libxl.EMULATOR_QEMU_UPSTREAM, index: int = 0,
                      raw: Optional[bytes] = None, **kw: Any) -> None:
        if raw is None:
            items = ([(k.encode(), v.encode()) for k, v in pairs.items()]
                     if isinstance(pairs, dict) else list(pairs))
            raw = b"".join(k + b"\0" + v + b"\0" for k, v in items)
        self.record(libxl.REC_TYPE_EMULATOR_XENSTORE_DATA,
                    libxl.EMULATOR_HDR.pack(self.endian, id=emulator_id, index=index) + raw, **kw)

    def emulator_context(self, data: bytes, *, emulator_id: int = libxl.EMULATOR_QEMU_UPSTREAM,
                         index: int = 0, **kw: Any) -> None:
        self.record(libxl.REC_TYPE_EMULATOR_CONTEXT,
                    [libxl.EMULATOR_HDR.pack(self.endian, id=emulator_id, index=index), data], **kw)

    def checkpoint_end(self, **kw: Any) -> None:
        self.record(libxl.REC_TYPE_CHECKPOINT_END, **kw)

    def checkpoint_state(self, control_id: int = libxl.CHECKPOINT_NEW, **kw: Any) -> None:
        self.record(libxl.REC_TYPE_CHECKPOINT_STATE, struct.pack(self.endian + "I", control_id),
                    **kw)


def xl_header(out: Writable, config: Union[None, bytes, Dict[str, Any]] = None, *,
              streamv2: bool = True, json_flag: Optional[bool] = None, endian: str = "<",
              mandatory_flags: Optional[int] = None, optional_flags: int = 0,
              byteorder: Optional[int] = None, optional_tail: bytes = b"",
              optional_data_len: Optional[int] = None, magic: bytes = xl.MAGIC) -> None:
    """An xl save-file header with its optional data (config)."""
    if isinstance(config, dict):
        cfg: Optional[bytes] = json.dumps(config, indent=4).encode() + b"\0"
        if json_flag is None:
            json_flag = True
    else:
        cfg = config
    flags = mandatory_flags
    if flags is None:
        flags = (xl.MANDATORY_FLAG_STREAMV2 if streamv2 else 0) | \
                (xl.MANDATORY_FLAG_JSON if json_flag else 0)
    opt = b"" if cfg is None else struct.pack(endian + "I", len(cfg)) + cfg + optional_tail
    out.write(magic)
    out.write(struct.pack(endian + "IIII", xl.BYTEORDER if byteorder is None else byteorder,
                          flags, optional_flags,
                          len(opt) if optional_data_len is None else optional_data_len))
    out.write(opt)


# -- content helpers --------------------------------------------------------------

_FILL = bytes(range(256)) * 16


def page_content(pfn: int) -> bytes:
    """Deterministic, pfn-dependent content for a test page."""
    return struct.pack("<QQ", pfn, pfn ^ 0x5A5A5A5A5A5A5A5A) + _FILL[16:]


def pv_vcpu_context(width: int, vcpu_id: int, *, cr3_pfn: int = 1,
                    start_info_pfn: int = 0) -> bytes:
    """A PV vcpu_guest_context of the right size with cr3 and (vcpu0) rdx set."""
    size = libxc.VCPU_BASIC_SIZE[width]
    ctx = bytearray(size)
    if width == 8:
        struct.pack_into("<Q", ctx, 512, 1 | 4 | 32)  # flags: i387_valid, in_kernel, online
        struct.pack_into("<Q", ctx, 520 + 128, 0xFFFFFFFF81000000 + vcpu_id)  # rip
        if vcpu_id == 0:
            struct.pack_into("<Q", ctx, 520 + 96, start_info_pfn)  # rdx
        struct.pack_into("<Q", ctx, 5008, cr3_pfn << 12)
    else:
        struct.pack_into("<I", ctx, 512, 1 | 4 | 32)
        struct.pack_into("<I", ctx, 516 + 32, 0xC1000000 + vcpu_id)  # eip
        if vcpu_id == 0:
            struct.pack_into("<I", ctx, 516 + 8, start_info_pfn)  # edx
        struct.pack_into("<I", ctx, 2728, ((cr3_pfn << 12) | (cr3_pfn >> 20)) & 0xFFFFFFFF)
    return bytes(ctx)


# -- whole images ---------------------------------------------------------------------


@dataclass
class ImageSpec:
    """What :func:`write_image` builds.  The defaults give a small valid image."""

    envelope: str = "xl"  # "libxc" | "libxl" | "xl" | "libvirt" | "xenopsd"
    guest: str = "hvm"  # "pv" | "hvm"
    version: int = 3  # libxc stream version
    width: int = 8  # PV guest width in bytes
    pages: int = 256  # guest pages (pfns 0 .. pages-1)
    batch: int = 1024  # pfns per PAGE_DATA record
    batch_sizes: Optional[Sequence[int]] = None  # cycle through these instead of ``batch``
    vcpus: int = 1
    endian: str = "<"
    checkpoints: int = 0  # 0: plain stream; n: Remus/COLO with n checkpoints
    colo: bool = False
    dirty_pages: int = 16  # pages resent per later checkpoint
    verify_resend: bool = False  # VERIFY + full resend (xl migrate --debug)
    policies: bool = True  # CPUID/MSR policy records (v3)
    emulator_context: bytes = b"QEVM\0\0\0\3" + b"\0" * 56
    xenstore: Dict[str, str] = field(default_factory=lambda: {
        "physmap/f0000000/start_addr": "f0000000",
        "physmap/f0000000/size": "800000",
        "physmap/f0000000/name": "vga.vram",
    })
    config: Optional[Dict[str, Any]] = None  # xl JSON config (generated when None)
    fast_pages: bool = False  # one shared page pattern (benchmarks): no per-pfn content


def default_config(spec: ImageSpec) -> Dict[str, Any]:
    return {
        "c_info": {"type": spec.guest, "name": f"xenstream-sample-{spec.guest}",
                   "uuid": "5f1e0c6a-9d7e-4c3b-8a8e-0123456789ab"},
        "b_info": {"max_vcpus": spec.vcpus, "max_memkb": spec.pages * 4,
                   "target_memkb": spec.pages * 4,
                   "type.hvm" if spec.guest == "hvm" else "type.pv": {}},
        "on_reboot": "restart",
    }


def _batches(spec: ImageSpec, pfns: Sequence[int]) -> Iterable[Sequence[int]]:
    sizes = list(spec.batch_sizes) if spec.batch_sizes else [spec.batch]
    i = 0
    k = 0
    while i < len(pfns):
        n = sizes[k % len(sizes)]
        k += 1
        yield pfns[i:i + n]
        i += n


def _pv_types(spec: ImageSpec) -> Dict[int, int]:
    """A tiny page-table tree for a PV guest: L4 (pinned) at pfn 1, then L3, L2, L1."""
    if spec.width == 8:
        return {1: 0xC, 2: libxc.PT_L3TAB, 3: libxc.PT_L2TAB, 4: libxc.PT_L1TAB}
    return {1: 0xB, 2: libxc.PT_L2TAB, 3: libxc.PT_L1TAB}


def _write_pages(w: LibxcWriter, spec: ImageSpec, pfns: Sequence[int]) -> None:
    types = _pv_types(spec) if spec.guest == "pv" else {}
    fast = _FILL * (spec.batch if not spec.batch_sizes else max(spec.batch_sizes))
    for chunk in _batches(spec, pfns):
        tl = [types.get(p, 0) for p in chunk]
        if spec.fast_pages:
            w.page_data(chunk, tl, [memoryview(fast)[: PAGE * len(chunk)].tobytes()])
        else:
            w.page_data(chunk, tl)


def _end_of_checkpoint_records(w: LibxcWriter, spec: ImageSpec) -> None:
    w.tsc_info()
    if spec.guest == "hvm":
        w.hvm_context(hvm.sample_context(spec.vcpus))
        w.hvm_params({1: spec.pages - 1, 5: spec.pages - 2, 6: spec.pages - 3,
                      17: spec.pages - 4})
    else:
        w.shared_info()
        for v in range(spec.vcpus):
            w.vcpu_basic(v, spec.width)
            w.vcpu_extended(v)
            w.vcpu_xsave(v)


def p2m_frame_pfns(spec: ImageSpec) -> Tuple[int, List[int]]:
    """(max_pfn, frame pfns) for a PV spec: frames live in the top pages."""
    max_pfn = spec.pages - 1
    fpp = PAGE // spec.width
    n = max_pfn // fpp + 1
    return max_pfn, [spec.pages - 1 - i for i in range(n)]


def write_libxc(w: LibxcWriter, spec: ImageSpec, libxl_w: Optional[LibxlWriter] = None) -> None:
    """The libxc part of an image (with the libxl checkpoint sections, if any)."""
    w.headers(spec.guest)
    if spec.guest == "pv":
        w.pv_info(spec.width)
    if spec.version >= 3:
        if spec.policies:
            w.cpuid_policy()
            w.msr_policy()
        w.static_data_end()
    if spec.guest == "pv":
        max_pfn, frames = p2m_frame_pfns(spec)
        w.p2m_frames(0, max_pfn, frames)
    all_pfns = range(spec.pages)
    _write_pages(w, spec, all_pfns)
    if spec.verify_resend:
        w.verify()
        _write_pages(w, spec, all_pfns)
    _end_of_checkpoint_records(w, spec)
    if not spec.checkpoints:
        w.end()
        return
    for k in range(spec.checkpoints):
        if k:
            dirty = [(k * 37 + i * 5) % spec.pages for i in range(min(spec.dirty_pages, spec.pages))]
            _write_pages(w, spec, sorted(set(dirty)))
            _end_of_checkpoint_records(w, spec)
        w.checkpoint()
        if libxl_w is not None:
            _emulator_records(libxl_w, spec)
            libxl_w.checkpoint_end()
            if spec.colo:
                libxl_w.checkpoint_state(libxl.CHECKPOINT_NEW)


def _emulator_records(lw: LibxlWriter, spec: ImageSpec) -> None:
    if spec.guest != "hvm":
        return
    if spec.xenstore:
        lw.xenstore_data(spec.xenstore)
    if spec.emulator_context:
        lw.emulator_context(spec.emulator_context)


def write_libxl(out: BinaryIO, spec: ImageSpec) -> None:
    lw = LibxlWriter(out, spec.endian)
    lw.header()
    lw.libxc_context()
    w = lw.libxc(version=spec.version)
    write_libxc(w, spec, lw)
    if spec.checkpoints:
        return
    _emulator_records(lw, spec)
    lw.end()


# -- envelopes ----------------------------------------------------------------------


def libvirt_header(out: Writable, xml: Union[str, bytes], *, version: int = 2,
                   xml_len: Optional[int] = None, nul: bool = True,
                   unused: Sequence[int] = (0,) * 10, magic: bytes = libvirt.MAGIC) -> None:
    """libvirt's 64-byte header and the domain XML (NUL-terminated, as libvirt writes)."""
    data = xml.encode() if isinstance(xml, str) else xml
    if nul:
        data += b"\0"
    out.write(magic)
    fields = {f"unused{i}": v for i, v in enumerate(unused)}
    out.write(libvirt.HDR.pack("<", version=version,
                               xml_len=len(data) if xml_len is None else xml_len, **fields))
    out.write(data)


def default_libvirt_xml(spec: ImageSpec) -> str:
    ostype = "hvm" if spec.guest == "hvm" else "linux"
    return (f"<domain type='xen'>\n  <name>xenstream-sample-{spec.guest}</name>\n"
            "  <uuid>5f1e0c6a-9d7e-4c3b-8a8e-0123456789ab</uuid>\n"
            f"  <memory unit='KiB'>{spec.pages * 4}</memory>\n"
            f"  <vcpu placement='static'>{spec.vcpus}</vcpu>\n"
            f"  <os>\n    <type arch='x86_64' machine='xenfv'>{ostype}</type>\n  </os>\n"
            "</domain>\n")


def xend_header(out: Writable, sxp: Union[str, bytes], *, config_len: Optional[int] = None,
                magic: bytes = xend.MAGIC) -> None:
    """``LinuxGuestRecord``, the big-endian signed config length and the SXP config."""
    data = sxp.encode() if isinstance(sxp, str) else sxp
    out.write(magic)
    out.write(struct.pack(">i", len(data) if config_len is None else config_len))
    out.write(data)


def default_xend_sxp(spec: ImageSpec) -> str:
    image = ("(image (hvm (kernel '') (boot c) (device_model /usr/lib/xen/bin/qemu-dm)))"
             if spec.guest == "hvm" else
             "(image (linux (kernel /boot/vmlinuz) (args 'root=/dev/xvda1 ro')))")
    return (f"(domain (domid 7) (name xenstream-sample-{spec.guest}) "
            "(uuid 5f1e0c6a-9d7e-4c3b-8a8e-0123456789ab) "
            f"(memory {max(1, spec.pages // 256)}) (maxmem {max(1, spec.pages // 256)}) "
            f"(vcpus {spec.vcpus}) {image} (on_reboot restart) (state -b----))")


def xenopsd_frame(out: Writable, ftype: int, payload: bytes = b"", *,
                  length: Optional[int] = None) -> None:
    """One XenServer frame; Libxc, Demu and End_of_image are written with length 0."""
    if length is None:
        length = len(payload) if ftype in xenopsd.SIZED else 0
    out.write(xenopsd.FRAME.pack("<", type=ftype, length=length))
    out.write(payload)


def xenops_metadata(*, time: str = "20261125T10:00:00Z", word_size: int = 64,
                    vm_str: Optional[str] = None, extra: str = "") -> bytes:
    """The Xenops record as xenopsd's sexplib printer writes it."""
    parts = [f"(time {time})", f"(word_size {word_size})"]
    if vm_str is not None:
        esc = vm_str.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'(vm_str"{esc}")')
    parts.append("(xs_subtree())")
    return ("(" + "".join(parts) + extra + ")").encode()


def write_xenopsd(out: BinaryIO, spec: ImageSpec, *, varstored: Optional[bytes] = None,
                  swtpm: Optional[bytes] = None) -> None:
    """A XenServer structured image: signature, Xenops, Libxc (+ libxc stream),
    [Varstored, Swtpm], [Qemu_trad for HVM], End_of_image."""
    out.write(xenopsd.MAGIC_V2)
    xenopsd_frame(out, xenopsd.XENOPS, xenops_metadata(
        vm_str=f"((id 5f1e0c6a-9d7e-4c3b-8a8e-0123456789ab)(name xenstream-{spec.guest}))"))
    xenopsd_frame(out, xenopsd.LIBXC)
    write_libxc(LibxcWriter(out, endian=spec.endian, version=spec.version), spec)
    if varstored is not None:
        xenopsd_frame(out, xenopsd.VARSTORED, varstored)
    if swtpm is not None:
        xenopsd_frame(out, xenopsd.SWTPM, swtpm)
    if spec.guest == "hvm":
        xenopsd_frame(out, xenopsd.QEMU_TRAD, spec.emulator_context)
    xenopsd_frame(out, xenopsd.END_OF_IMAGE)


def write_image(out: BinaryIO, spec: Optional[ImageSpec] = None) -> None:
    """Write a whole valid image as ``spec`` describes."""
    spec = spec or ImageSpec()
    if spec.envelope == "libxc":
        write_libxc(LibxcWriter(out, endian=spec.endian, version=spec.version), spec)
    elif spec.envelope == "libxl":
        write_libxl(out, spec)
    elif spec.envelope == "xl":
        xl_header(out, spec.config if spec.config is not None else default_config(spec),
                  endian=spec.endian)
        write_libxl(out, spec)
    elif spec.envelope == "libvirt":
        libvirt_header(out, default_libvirt_xml(spec))
        write_libxl(out, spec)
    elif spec.envelope == "xenopsd":
        write_xenopsd(out, spec)
    else:
        raise ValueError(f"unknown envelope {spec.envelope!r} (xend images carry legacy "
                         "streams: use xend_header() and a legacy writer)")
