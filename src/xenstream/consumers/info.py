"""What a save image holds, in one pass: ``xenstream info``.

:func:`summary` runs the verifier (:func:`xenstream.consumers.verify.verify`)
once over the image and rides along its pass: its ``on_item`` hook hands every
item of the parser to a collector here, each record's ``tap`` passes on the
body bytes the verifier reads, and the parser's ``pfn_sink`` the pfn arrays of
the PAGE_DATA runs it checks in bulk.  So the summary and the verdict come from
the same read, and on seekable input page data is skipped, never read: the
metadata records, the headers and the pfn arrays are all that is read.

The result is an :class:`ImageInfo`, a tree of dataclasses (``to_json()``
gives the ``--json`` document, ``schema/info.schema.json``; ``text_lines()``
the text).  For a checkpointed (Remus/COLO) stream every per-guest value is
that of the last complete checkpoint, as a failover restore leaves the guest;
the memory tallies count the pages of the complete checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from xenstream.consumers import decode
from xenstream.consumers.config import KINDS, domain_type_of
from xenstream.consumers.pfnmap import PfnBitmap
from xenstream.consumers.report import chain, verdict
from xenstream.consumers.restorability import restoring_ranges
from xenstream.consumers.verify import Result, Verifier
from xenstream.errors import FormatError
from xenstream.formats import hvm, legacy, libxc, libxl, xenopsd, xl
from xenstream.formats.legacy import (
    LBatch,
    LBatchRun,
    LCheckpointEnd,
    LChunk,
    LHeader,
    LHvmTail,
    LPvTail,
    LQemu,
    LTruncated,
)
from xenstream.io import Source
from xenstream.reading.parser import (
    LAYER_LIBXC,
    EndOfInput,
    EnvelopeData,
    Frame,
    Header,
    Item,
    Legacy,
    Mismatch,
    PageRun,
    Record,
    XlConfig,
)

SCHEMA_VERSION = 1
PAGE = 4096

# -- the result ------------------------------------------------------------------------


@dataclass
class Layer:
    """One layer of the envelope chain, outermost first."""

    layer: str  # xl, libvirt, xend, xenopsd, libxl, libxc, legacy
    offset: int
    description: str
    fields: Dict[str, Any] = field(default_factory=dict)


@dataclass
class LegacyOrigin:
    """What a legacy (Xen <= 4.5) image's content tells about its saver."""

    toolstack_width: Optional[int]  # bits: the saving toolstack's unsigned long
    container: str  # bare, xl, xl-streamv2, libvirt, xend, xenopsd, xenopsd-frame
    #: PV: the extended-info blocks ("vcpu", "extv", "xcnt"); None for HVM or a
    #: pre-3.1 stream without extended info (``pre_3_1``)
    extended_info: Optional[List[str]]
    pre_3_1: bool
    qemu_record: Optional[str]  # libxl, remus, xend, xenserver (the signature's writer)
    hints: List[str] = field(default_factory=list)


@dataclass
class SavedBy:
    summary: str
    xen_version: Optional[str]  # "4.21", from the libxc domain header
    libxc_version: Optional[int]  # 2 or 3
    converted: bool  # a converter wrote it from a legacy image
    converter_version: Optional[int]  # the domain header's xen_minor when converted
    libxl_legacy_flag: bool  # the libxl header's LEGACY option (converted by libxl's path)
    legacy: Optional[LegacyOrigin]


@dataclass
class GuestInfo:
    type: Optional[str]  # pv, hvm, pvh (None: unknown)
    basis: str  # what the type was told from
    domain_header: Optional[str]  # the libxc domain header's type name, or the legacy layout
    config_type: Optional[str]  # what the embedded configuration says
    device_model: Optional[bool]  # device-model state present (None: the layer cannot carry it)
    width: Optional[int]  # bits
    pt_levels: Optional[int]
    mode: Optional[str]  # HVM: vcpu 0's CPU mode; PV: where the width comes from


@dataclass
class VcpuInfo:
    online: List[int]
    max: Optional[int]  # from the configuration, or a legacy VCPU_INFO's max_vcpu_id + 1
    source: str


@dataclass
class MemoryInfo:
    page_records: int  # PAGE_DATA records (v2) or page batches (legacy)
    entries: int  # pfn entries of every type
    pages_by_type: Dict[str, int]
    data_pages: int  # entries that carry page data
    highest_pfn: Optional[int]
    resident_pages: Optional[int]  # distinct pfns with data: the restored guest's memory
    resident_bytes: Optional[int]
    resent_pages: Optional[int]  # copies of a pfn after its first (live iterations, checkpoints)
    pfns_sent_more_than_once: Optional[int]
    xtab: int
    broken: int
    xalloc: int
    verify_pages: int  # pages resent after VERIFY / ENABLE_VERIFY_MODE (compared, not loaded)
    compressed_pages: int  # legacy Remus pages whose data came compressed
    max_pfn: Optional[int]  # PV: end_pfn of X86_PV_P2M_FRAMES; legacy: p2m_size - 1
    unmapped_pfns: Optional[int]  # legacy PV tail's list
    untracked_pfns: int  # pfns beyond the bitmap's memory limit (repeats unknown)


@dataclass
class CheckpointInfo:
    kind: Optional[str]  # remus, colo (None: not checkpointed)
    complete: int
    discarded_tail: bool  # the stream goes on past the last complete checkpoint
    state: str


@dataclass
class TscInfo:
    mode: int
    mode_name: str
    khz: int
    nsec: int
    incarnation: int


@dataclass
class HvmParam:
    index: int
    name: str
    value: int


@dataclass
class HvmContextInfo:
    bytes: int
    entries: int
    cpus: List[int]
    gtsc_khz: Optional[int]
    cpuid: Optional[int]


@dataclass
class PolicyInfo:
    cpuid_leaves: Optional[int]
    cpuid_bytes: Optional[int]
    msr_entries: Optional[int]
    msr_bytes: Optional[int]


@dataclass
class EmulatorInfo:
    source: str  # libxl EMULATOR_CONTEXT, legacy qemu record (SIG), xenopsd Qemu_trad frame
    emulator: str  # qemu-upstream, qemu-traditional, unknown
    emulator_id: Optional[int]
    index: Optional[int]
    bytes: Optional[int]  # None: to the end of the input, on a pipe
    signature: Optional[str]  # the blob's first 4 bytes
    qevm_version: Optional[int]


@dataclass
class ConfigInfo:
    kind: str
    description: str
    envelope: str
    offset: int
    bytes: int
    name: Optional[str]
    memory_kib: Optional[int]
    max_memory_kib: Optional[int]
    vcpus: Optional[int]
    domain_type: Optional[str]
    device_model: Optional[str]


@dataclass
class Verdict:
    valid: bool
    errors: int
    warnings: int
    line: str


@dataclass
class ImageInfo:
    file: str
    bytes: Optional[int]
    chain: str
    layers: List[Layer]
    saved_by: SavedBy
    guest: GuestInfo
    vcpus: VcpuInfo
    memory: MemoryInfo
    checkpoints: CheckpointInfo
    tsc: Optional[TscInfo]
    hvm_params: List[HvmParam]
    hvm_context: Optional[HvmContextInfo]
    policies: Optional[PolicyInfo]
    emulators: List[EmulatorInfo]
    xenstore_keys: Optional[int]
    shared_info: bool
    config: Optional[ConfigInfo]
    verdict: Verdict
    #: the Xen releases that restore the image (on some host at least), as
    #: ranges from the release table (:mod:`xenstream.releases`): ``["4.14 – 4.20"]``;
    #: empty when none does
    restores_on: Optional[List[str]] = None
    notes: List[str] = field(default_factory=list)
    #: the verifier's result of the same pass
    result: Optional[Result] = field(default=None, repr=False, compare=False)

    def to_json(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            if f.name != "result":
                doc[f.name] = _plain(getattr(self, f.name))
        return doc

    def text_lines(self, name: Optional[str] = None) -> List[str]:
        return _text(self, name or self.file)


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


# -- what one checkpoint leaves ------------------------------------------------------------


class _State:
    """The record-borne state as of one point of the stream: the running
    tallies, the last value of every per-guest record, and the records of the
    checkpoint under way (emulators, xenstore, PV vcpus)."""

    def __init__(self) -> None:
        self.records = 0
        self.entries = 0
        self.by_type: Dict[int, int] = {}
        self.data_pages = 0
        self.highest_pfn: Optional[int] = None
        self.verify_pages = 0
        self.compressed_pages = 0
        self.bitmap: Tuple[int, int, int, int] = (0, 0, 0, 0)  # PfnBitmap counters, at commit
        self.tsc: Optional[Dict[str, Any]] = None
        self.params: Dict[int, int] = {}
        self.hvm_context: Optional[bytes] = None
        self.cpuid: Optional[Tuple[int, int]] = None  # (leaves, bytes)
        self.msr: Optional[Tuple[int, int]] = None
        self.pv_info: Optional[Tuple[int, int]] = None
        self.p2m_end: Optional[int] = None
        self.shared_info = False
        self.vcpu_map: Optional[Tuple[int, List[int]]] = None  # legacy VCPU_INFO
        self.unmapped: Optional[int] = None
        # the checkpoint under way
        self.pv_vcpus: List[int] = []
        self.emulators: List[EmulatorInfo] = []
        self.xenstore_keys: Optional[int] = None

    def copy(self) -> _State:
        c = _State()
        c.__dict__.update(self.__dict__)
        c.by_type = dict(self.by_type)
        c.params = dict(self.params)
        return c

    def next_checkpoint(self) -> None:
        self.pv_vcpus = []
        self.emulators = []
        self.xenstore_keys = None


# -- the collector ---------------------------------------------------------------------------


class _Collector:
    """Sees every item of the verifier's pass (``on_item``), the bytes of
    the bodies it reads (``Record.tap``) and the pfn arrays of bulk runs
    (``sink``)."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.cur = _State()
        self.committed: Optional[_State] = None
        self.since_commit = 0  # records after the last complete checkpoint
        self.bitmap = PfnBitmap()
        self.layers: List[Layer] = []
        self.notes: List[str] = []
        self.verify = False
        # headers and envelopes
        self.xl_json = False
        self.xl_streamv2 = False
        self.libxl = False
        self.libxl_legacy_flag = False
        self.libxc_version: Optional[int] = None
        self.libxc_endian = "<"
        self.dhdr: Optional[Dict[str, int]] = None
        self.config: Optional[Tuple[str, str, int, bytes]] = None  # kind, envelope, offset, data
        self.config_len: Optional[Tuple[str, str, int, int]] = None  # too large to hold
        self.xenopsd_frames: List[str] = []
        self.xenopsd_layer: Optional[Layer] = None
        # legacy
        self.legacy: Optional[Legacy] = None
        self.lheader: Optional[LHeader] = None
        self.ltoolstack = False
        self.lchunks: List[int] = []
        self.ltruncated = False
        self.lqemu: Optional[str] = None
        # the record whose body the verifier is reading
        self._pending: Optional[Record] = None
        self._body: List[bytes] = []
        self._nuls = 0

    # -- the verifier's hooks -------------------------------------------------------------

    def on_item(self, item: Item) -> None:
        if self._pending is not None:
            self._flush()
        t = type(item)
        if t is Record:
            self._record(item)  # type: ignore[arg-type]
        elif t is PageRun:  # its records were counted by the sink, one by one
            self.since_commit += item.records  # type: ignore[union-attr]
        elif isinstance(item, Header):
            self._header(item)
        elif isinstance(item, XlConfig):
            self._xl_config(item)
        elif isinstance(item, EnvelopeData):
            kind = "libvirt-xml" if item.layer == "libvirt" else "xend-sxp"
            if item.data is not None:
                self.config = (kind, item.layer, item.offset, item.data)
            else:
                self.config_len = (kind, item.layer, item.offset, item.declared_len)
        elif isinstance(item, Frame):
            self._frame(item)
        elif isinstance(item, Legacy):
            self._legacy_start(item)
        elif isinstance(item, Mismatch):
            self.notes.append(f"{item.layer} header: {item.message}")
        elif isinstance(item, EndOfInput):
            pass
        else:
            self._legacy_item(item)

    def sink(self, raw: bytes, endian: str) -> None:
        """One PAGE_DATA record of a bulk run: its pfn array."""
        if self._pending is not None:
            self._flush()
        self._pages_v2(raw, endian)

    def finish(self) -> None:
        if self._pending is not None:
            self._flush()

    # -- records -----------------------------------------------------------------------

    def _record(self, rec: Record) -> None:
        rtype = rec.rtype
        if rec.layer == LAYER_LIBXC:
            self.since_commit += 1
            if rtype == libxc.REC_TYPE_VERIFY:
                self.verify = True
            elif rtype == libxc.REC_TYPE_CHECKPOINT:
                if not self.libxl:
                    self._commit()
            elif rtype in libxc.RECORD_NAMES and rtype != libxc.REC_TYPE_END:
                self._tap(rec)
            elif rtype == libxc.REC_TYPE_END:
                self.since_commit -= 1
            return
        if rtype == libxl.REC_TYPE_CHECKPOINT_END:
            self._commit()
        elif rtype in (libxl.REC_TYPE_EMULATOR_CONTEXT, libxl.REC_TYPE_EMULATOR_XENSTORE_DATA):
            self.since_commit += 1
            self._tap(rec)

    def _tap(self, rec: Record) -> None:
        self._pending = rec
        self._body = []
        self._nuls = 0
        if rec.rtype == libxl.REC_TYPE_EMULATOR_XENSTORE_DATA and rec.layer != LAYER_LIBXC:
            rec.tap = self._count_pairs
        else:
            rec.tap = self._body.append

    def _count_pairs(self, data: bytes) -> None:
        if not self._body:
            self._body.append(data[:8])  # the emulator header
            data = data[8:]
        self._nuls += data.count(0)

    def _flush(self) -> None:
        rec = self._pending
        assert rec is not None
        self._pending = None
        rec.tap = None
        body = b"".join(self._body)
        self._body = []
        s = self.cur
        end = rec.endian
        rtype = rec.rtype
        if rec.layer != LAYER_LIBXC:
            if rtype == libxl.REC_TYPE_EMULATOR_XENSTORE_DATA:
                s.xenstore_keys = (s.xenstore_keys or 0) + self._nuls // 2
            elif rtype == libxl.REC_TYPE_EMULATOR_CONTEXT and len(body) >= 8:
                eid, index = libxl.EMULATOR_HDR.unpack(body, end).values()
                q = decode.qemu_blob(body[8:16])
                s.emulators.append(EmulatorInfo(
                    "libxl EMULATOR_CONTEXT", decode.emulator_name(eid), eid, index,
                    rec.length - 8, q["signature"], q["qevm_version"]))
            return
        if rtype == libxc.REC_TYPE_PAGE_DATA:
            if len(body) >= 8:
                count = libxc.PAGE_DATA_HDR.unpack(body, end)["count"]
                s.records += 1
                self._pages_v2(body[8:8 + 8 * count], end, count_record=False)
            return
        if rtype == libxc.REC_TYPE_X86_TSC_INFO:
            s.tsc = decode.tsc(body, end) or s.tsc
        elif rtype == libxc.REC_TYPE_HVM_PARAMS:
            for i, v in decode.hvm_params(body, end):
                s.params[i] = v
        elif rtype == libxc.REC_TYPE_HVM_CONTEXT:
            if body:
                s.hvm_context = body
        elif rtype == libxc.REC_TYPE_X86_CPUID_POLICY:
            s.cpuid = (decode.policy_count(rtype, rec.length), rec.length)
        elif rtype == libxc.REC_TYPE_X86_MSR_POLICY:
            s.msr = (decode.policy_count(rtype, rec.length), rec.length)
        elif rtype == libxc.REC_TYPE_X86_PV_INFO:
            s.pv_info = decode.pv_info(body, end) or s.pv_info
        elif rtype == libxc.REC_TYPE_X86_PV_P2M_FRAMES:
            pm = decode.p2m_frames(body, end)
            if pm is not None:
                s.p2m_end = pm[1] if s.p2m_end is None else max(s.p2m_end, pm[1])
        elif rtype == libxc.REC_TYPE_X86_PV_VCPU_BASIC:
            vid = decode.vcpu_id(body, end)
            if vid is not None and rec.length > 8 and vid not in s.pv_vcpus:
                s.pv_vcpus.append(vid)
        elif rtype == libxc.REC_TYPE_SHARED_INFO:
            s.shared_info = True

    # -- pages -------------------------------------------------------------------------------

    def _pages_v2(self, raw: bytes, endian: str, *, count_record: bool = True) -> None:
        self._tally(decode.v2_entries(raw, endian), count_record)

    def _tally(self, pe: decode.PageEntries, count_record: bool = True,
               compressed: bool = False) -> None:
        s = self.cur
        if count_record:
            s.records += 1
        if self.verify:
            s.verify_pages += len(pe.data)
            return
        s.entries += pe.count
        for t, n in pe.by_type.items():
            s.by_type[t] = s.by_type.get(t, 0) + n
        s.data_pages += len(pe.data)
        if compressed:
            s.compressed_pages += len(pe.data)
        m = pe.max_pfn
        if m is not None and (s.highest_pfn is None or m > s.highest_pfn):
            s.highest_pfn = m
        self.bitmap.add(pe.data)

    def _commit(self) -> None:
        """A checkpoint is complete: its state is what a failover restores."""
        b = self.bitmap
        self.cur.bitmap = (b.distinct, b.repeats, b.repeated, b.untracked)
        self.committed = self.cur.copy()
        self.cur.next_checkpoint()
        self.since_commit = 0

    # -- headers and envelopes -----------------------------------------------------------------

    def _header(self, h: Header) -> None:
        f = h.fields
        k = h.kind
        if k == "xl header":
            mf = f["mandatory_flags"]
            self.xl_json = bool(mf & xl.MANDATORY_FLAG_JSON)
            self.xl_streamv2 = bool(mf & xl.MANDATORY_FLAG_STREAMV2)
            flags = [n for n, bit in (("STREAMv2", xl.MANDATORY_FLAG_STREAMV2),
                                      ("JSON", xl.MANDATORY_FLAG_JSON)) if mf & bit]
            self.layers.append(Layer("xl", h.offset, "xl save file header"
                                     + (f" ({', '.join(flags)})" if flags else ""),
                                     {"mandatory_flags": mf,
                                      "optional_data_len": f["optional_data_len"],
                                      "byte_order": "big" if h.endian == ">" else "little"}))
        elif k == "libvirt header":
            self.layers.append(Layer("libvirt", h.offset,
                                     f"libvirt save header, version {f['version']}",
                                     {"version": f["version"], "xml_len": f["xml_len"]}))
        elif k == "xend header":
            self.layers.append(Layer("xend", h.offset, "xend save header (LinuxGuestRecord)",
                                     {"config_len": f["config_len"]}))
        elif k in ("xenopsd signature", "xenopsd legacy signature"):
            lg = k == "xenopsd legacy signature"
            self.xenopsd_layer = Layer("xenopsd", h.offset,
                                       "XenServer image (XenSavedDomain)" if lg
                                       else "XenServer image (XenSavedDomv2 frames)",
                                       {"format": "legacy" if lg else "v2", "frames": []})
            self.layers.append(self.xenopsd_layer)
        elif k == "libxl header":
            self.libxl = True
            self.libxl_legacy_flag = bool(f["options"] & libxl.HDR_OPT_LEGACY)
            opts = [n for n, bit in (("big-endian", libxl.HDR_OPT_BE),
                                     ("LEGACY", libxl.HDR_OPT_LEGACY)) if f["options"] & bit]
            self.layers.append(Layer("libxl", h.offset, f"libxl stream v{f['version']}"
                                     + (f" ({', '.join(opts)})" if opts else ""),
                                     {"version": f["version"], "options": f["options"]}))
        elif k == "libxc image header":
            self.libxc_version = f["version"]
            self.libxc_endian = ">" if f["options"] & libxc.IHDR_OPT_BE else "<"
            self.layers.append(Layer(LAYER_LIBXC, h.offset, f"libxc stream v{f['version']}"
                                     + (" (big-endian)" if self.libxc_endian == ">" else ""),
                                     {"version": f["version"], "options": f["options"]}))
        elif k == "libxc domain header":
            self.dhdr = dict(f)
            lay = self.layers[-1] if self.layers and self.layers[-1].layer == LAYER_LIBXC \
                else None
            if lay is not None:
                lay.fields.update(domain_type=f["type"], xen_major=f["xen_major"],
                                  xen_minor=f["xen_minor"])
                lay.description += f", {libxc.DHDR_TYPE_NAMES.get(f['type'], 'unknown type')}"

    def _xl_config(self, item: XlConfig) -> None:
        kind = "xl-json" if self.xl_json else "xl-cfg"
        if item.config is not None:
            self.config = (kind, "xl", item.offset + 4, item.config)
        elif item.config_len:
            self.config_len = (kind, "xl", item.offset + 4, item.config_len)

    def _frame(self, f: Frame) -> None:
        if self.xenopsd_layer is not None:
            self.xenopsd_layer.fields["frames"].append(f.name)
        if f.ftype == xenopsd.XENOPS and f.head is not None:
            self.config = ("xenopsd-sexp", "xenopsd", f.offset + 16, f.head)
        elif f.ftype in (xenopsd.QEMU_TRAD, xenopsd.QEMU_XEN):
            q = decode.qemu_blob(f.head or b"")
            self.cur.emulators.append(EmulatorInfo(
                f"xenopsd {f.name} frame",
                "qemu-traditional" if f.ftype == xenopsd.QEMU_TRAD else "qemu-upstream",
                None, None, f.length, q["signature"], q["qevm_version"]))

    # -- legacy ---------------------------------------------------------------------------

    def _legacy_start(self, item: Legacy) -> None:
        self.legacy = item
        g = item.guess
        self.layers.append(Layer("legacy", item.offset,
                                 g.describe() if g else "legacy stream (unrecognised)",
                                 {"container": item.container}))

    def _legacy_item(self, it: Any) -> None:
        s = self.cur
        if isinstance(it, LBatchRun):
            for _at, entries in it.batches:
                self._tally(decode.legacy_entries(entries))
            self.since_commit += len(it.batches)
        elif isinstance(it, LBatch):
            pe = decode.legacy_entries(it.entries)
            self._tally(pe, compressed=bool(pe.data) and it.n_data == 0)
            self.since_commit += 1
        elif isinstance(it, LChunk):
            self._chunk(it)
            self.since_commit += 1
        elif isinstance(it, LHeader):
            self.lheader = it
        elif isinstance(it, LHvmTail):
            for param, value in zip(legacy.MAGIC_PFN_PARAMS, it.magic_pfns):
                s.params[param] = value
            s.hvm_context = it.context or s.hvm_context
        elif isinstance(it, LPvTail):
            s.unmapped = len(it.unmapped)
            # the legacy restorer gives these back (the guest ballooned them out)
            self.bitmap.remove(it.unmapped)
            s.pv_vcpus = [v.vcpu_id for v in it.vcpus]
            s.shared_info = True
        elif isinstance(it, LQemu):
            self._qemu(it)
        elif isinstance(it, LCheckpointEnd):
            self._commit()
        elif isinstance(it, LTruncated):
            self.ltruncated = True

    def _chunk(self, c: LChunk) -> None:
        s = self.cur
        cid = c.cid
        if cid not in self.lchunks:
            self.lchunks.append(cid)
        if cid == legacy.CHUNK_VCPU_INFO and c.value is not None and c.data is not None:
            words = [int.from_bytes(c.data[i:i + 8], "little") for i in range(0, len(c.data), 8)]
            online = [v for v in range(c.value + 1) if words[v // 64] >> (v % 64) & 1]
            s.vcpu_map = (c.value, online)
        elif cid in legacy.HVM_PARAM_CHUNKS and c.value is not None:
            s.params[legacy.HVM_PARAM_CHUNKS[cid]] = c.value
        elif cid == legacy.CHUNK_TSC_INFO:
            s.tsc = decode.legacy_tsc(c.data) or s.tsc
        elif cid == legacy.CHUNK_ENABLE_VERIFY_MODE:
            self.verify = True
        elif cid == legacy.CHUNK_TOOLSTACK:
            self.ltoolstack = True

    def _qemu(self, q: LQemu) -> None:
        self.lqemu = q.qkind
        head = b""
        size = q.length
        src = self.src
        data_at = q.offset + len(q.header)
        if size is None and src.size is not None:
            size = src.size - data_at
        # the verifier never reads the record's data: its first bytes are ours
        if size is not None and size >= 8 and (q.length is not None or src.seekable):
            head = q.read(8)
        qb = decode.qemu_blob(head)
        sig = q.signature.decode("latin-1").rstrip("\n")
        self.cur.emulators.append(EmulatorInfo(
            f"legacy qemu record ({sig})", "unknown", None, None, size,
            qb["signature"] if head else None, qb["qevm_version"]))


# -- the summary ---------------------------------------------------------------------------


def summary(spec_or_source: Union[str, int, Source], *, format: Optional[str] = None,
            lenient: bool = False, skip_qemu: bool = False,
            name: Optional[str] = None) -> ImageInfo:
    """What the image at ``spec_or_source`` (a path, ``-``, an fd, or an open
    :class:`~xenstream.io.Source`, left open) holds, and the verifier's
    verdict on it, from one pass.  Raises :class:`~xenstream.errors.FormatError`
    when the image cannot be read on (the parse stopped: no summary)."""
    if isinstance(spec_or_source, Source):
        return _summary(spec_or_source, format, lenient, skip_qemu, name)
    with Source.open(spec_or_source) as src:
        return _summary(src, format, lenient, skip_qemu, name)


def _summary(src: Source, format: Optional[str], lenient: bool, skip_qemu: bool,
             name: Optional[str]) -> ImageInfo:
    col = _Collector(src)
    v = Verifier(src, format=format, lenient=lenient, on_item=col.on_item, skip_qemu=skip_qemu,
                 releases=True)
    v.parser.pfn_sink = col.sink
    res = v.run()
    col.finish()
    if res.stopped is not None:
        f = res.stopped
        raise FormatError(f.offset, f.message, what=f.what, layer=f.layer, rule=f.rule)
    return _build(col, v, res, name or src.name)


def _final_state(col: _Collector, checkpointed: bool) -> _State:
    if checkpointed and col.committed is not None:
        return col.committed
    s = col.cur
    b = col.bitmap
    s.bitmap = (b.distinct, b.repeats, b.repeated, b.untracked)
    return s


def _build(col: _Collector, v: Verifier, res: Result, name: str) -> ImageInfo:
    st = v.parser.state
    legacy_stream = col.legacy is not None
    checkpointed = legacy_stream or st.checkpoints > 0
    s = _final_state(col, checkpointed)
    config = _config(col)
    guest = _guest(col, s, config)
    ne, nw = len(res.errors), len(res.warnings)
    info = ImageInfo(
        file=name, bytes=(v.src.size - v.src.start) if v.src.size is not None else None,
        chain=chain(res), layers=col.layers, saved_by=_saved_by(col),
        guest=guest, vcpus=_vcpus(col, s, guest, config), memory=_memory(col, s),
        checkpoints=_checkpoints(col, v, res, legacy_stream),
        tsc=TscInfo(**s.tsc) if s.tsc else None,
        hvm_params=[HvmParam(i, libxc.hvm_param_name(i), val)
                    for i, val in sorted(s.params.items())],
        hvm_context=_hvm_context(s.hvm_context),
        policies=(PolicyInfo(s.cpuid[0] if s.cpuid else None, s.cpuid[1] if s.cpuid else None,
                             s.msr[0] if s.msr else None, s.msr[1] if s.msr else None)
                  if (s.cpuid or s.msr) else None),
        emulators=_emulators(s.emulators, config), xenstore_keys=s.xenstore_keys,
        shared_info=s.shared_info, config=config,
        verdict=Verdict(res.valid, ne, nw, verdict(res, name)),
        restores_on=[f"{a} – {b}" if a != b else a for a, b in restoring_ranges(res)],
        notes=col.notes, result=res)
    return info


def _saved_by(col: _Collector) -> SavedBy:
    dh = col.dhdr
    lg: Optional[LegacyOrigin] = None
    xen: Optional[str] = None
    converted = False
    conv: Optional[int] = None
    if dh is not None:
        if dh["xen_major"] == 0:
            converted, conv = True, dh["xen_minor"]
        else:
            xen = f"{dh['xen_major']}.{dh['xen_minor']}"
    if col.legacy is not None:
        lg = _legacy_origin(col)
    if lg is not None:
        bits = ["a legacy (Xen <= 4.5) saver"]
        if lg.toolstack_width:
            bits.append(f"{lg.toolstack_width}-bit toolstack")
        if lg.pre_3_1:
            bits.append("no extended info (pre-3.1 layout)")
        elif lg.extended_info is not None:
            bits.append(f"extended info ({', '.join(lg.extended_info)})")
        text = ", ".join(bits) + (f"; {'; '.join(lg.hints)}" if lg.hints else "")
    elif converted:
        text = (f"converted from a legacy image (converter version {conv}, libxc v"
                f"{col.libxc_version} stream)")
    elif xen is not None:
        text = f"Xen {xen} (libxc v{col.libxc_version} stream)"
    else:
        text = "unknown (no libxc domain header)"
    if col.libxl_legacy_flag and not converted:
        text += "; the libxl header says converted from a legacy stream"
    return SavedBy(text, xen, col.libxc_version, converted, conv, col.libxl_legacy_flag, lg)


_QEMU_WRITERS = {"libxl": "DeviceModelRecord0002: libxl (Xen 4.1-4.5)",
                 "remus": "RemusDeviceModelState: xend's Remus",
                 "xend": "QemuDeviceModelRecord: xend (xm save)",
                 "xenserver": "QemuDeviceModelRecord\\n: XenServer's xenopsd"}


def _legacy_origin(col: _Collector) -> LegacyOrigin:
    item = col.legacy
    assert item is not None
    h = col.lheader
    g = item.guess
    width = (h.width if h is not None else g.width if g is not None else None)
    ext: Optional[List[str]] = None
    pre = False
    hints: List[str] = []
    guest = h.guest if h is not None else g.guest if g is not None else None
    if h is not None and guest == "pv":
        if h.ext_info:
            ext = [b.decode("latin-1") for b, _ in h.blocks]
        else:
            pre = True
        if h.xcnt:
            hints.append("xcnt block: a Xen >= 4.1 saver")
    if col.lqemu in _QEMU_WRITERS:
        hints.append(_QEMU_WRITERS[col.lqemu])
    if col.ltoolstack:
        hints.append("TOOLSTACK chunk: libxl (Xen 4.2-4.5)")
    if legacy.CHUNK_HVM_IOREQ_SERVER_PFN in col.lchunks:
        hints.append("HVM_IOREQ_SERVER_PFN chunk: a Xen 4.5 saver")
    if legacy.CHUNK_TMEM in col.lchunks:
        hints.append("TMEM chunk: the guest used tmem (gone in Xen 4.13)")
    return LegacyOrigin(width * 8 if width else None, item.container, ext, pre, col.lqemu,
                        hints)


def _config(col: _Collector) -> Optional[ConfigInfo]:
    if col.config is None:
        if col.config_len is not None:
            kind, env, off, n = col.config_len
            return ConfigInfo(kind, KINDS[kind], env, off, n, None, None, None, None, None, None)
        return None
    kind, env, off, data = col.config
    facts = decode.config_facts(kind, data)
    dtype = domain_type_of(kind, data) if kind != "xl-cfg" else _xl_cfg_type(data)
    return ConfigInfo(kind, KINDS[kind], env, off, len(data), facts["name"], facts["memory_kib"],
                      facts["max_memory_kib"], facts["vcpus"], dtype, facts["device_model"])


def _xl_cfg_type(data: bytes) -> Optional[str]:
    import re

    m = re.search(rb"""^\s*(?:type|builder)\s*=\s*["']([a-z]+)["']""", data, re.M)
    if not m:
        return None
    return {b"pv": "pv", b"linux": "pv", b"hvm": "hvm", b"pvh": "pvh"}.get(m.group(1))


def _guest(col: _Collector, s: _State, config: Optional[ConfigInfo]) -> GuestInfo:
    cfg_type = config.domain_type if config is not None else None
    cfg_where = f"the {config.kind} configuration" if config is not None else ""
    dh = col.dhdr
    dm_present = bool(s.emulators)
    gtype: Optional[str]
    if dh is not None:
        dtype = libxc.DHDR_TYPE_NAMES.get(dh["type"], f"unknown ({dh['type']})")
        if dh["type"] == libxc.DHDR_TYPE_X86_PV:
            gtype, basis = "pv", "the libxc domain header (x86 PV)"
        elif dh["type"] == libxc.DHDR_TYPE_X86_HVM:
            gtype, basis = _hvm_or_pvh(col, cfg_type, cfg_where, dm_present)
        else:
            gtype, basis = None, f"the libxc domain header says {dtype}"
    elif col.legacy is not None:
        h = col.lheader
        g = col.legacy.guess
        lguest = h.guest if h is not None else g.guest if g is not None else None
        dtype = f"legacy {lguest.upper()} layout" if lguest else "legacy (unrecognised)"
        if lguest == "hvm":
            gtype, basis = _hvm_or_pvh(col, cfg_type, cfg_where, dm_present,
                                       "the legacy stream's HVM layout")
        else:
            gtype, basis = lguest, "the legacy stream's layout"
    else:
        dtype = None
        gtype, basis = None, "no libxc or legacy stream found"
    width: Optional[int] = None
    levels: Optional[int] = None
    mode: Optional[str] = None
    if gtype == "pv":
        if s.pv_info is not None:
            width, levels, mode = s.pv_info[0] * 8, s.pv_info[1], "X86_PV_INFO"
        elif col.lheader is not None:
            h = col.lheader
            width, levels = h.guest_width * 8, h.pt_levels
            mode = ("the extended info's vcpu context size" if h.ext_info
                    else "the toolstack's width (no extended info)")
    elif gtype in ("hvm", "pvh") and s.hvm_context:
        cm = decode.cpu_mode(s.hvm_context)
        if cm is not None:
            width, levels, mode = cm[0], cm[1], f"vcpu 0: {cm[2]}"
    device_model: Optional[bool] = None
    if gtype in ("hvm", "pvh"):
        if dm_present:
            device_model = True
        elif col.legacy is None and (col.libxl or col.xenopsd_layer is not None):
            device_model = False  # the layer carries it when there is one
    return GuestInfo(gtype, basis, dtype, cfg_type, device_model, width, levels, mode)


def _hvm_or_pvh(col: _Collector, cfg_type: Optional[str], cfg_where: str, dm_present: bool,
                head: str = "the libxc domain header (x86 HVM)") -> Tuple[Optional[str], str]:
    """An HVM-type stream (PVH is HVM to libxc): the configuration tells,
    else the device-model state (an HVM guest has one, a PVH guest none)."""
    if cfg_type == "pvh":
        return "pvh", f"{head} and {cfg_where} (type pvh)"
    if cfg_type == "hvm":
        return "hvm", f"{head} and {cfg_where} (type hvm)"
    if dm_present:
        return "hvm", f"{head} and its device-model state"
    if col.legacy is not None:
        return "hvm", f"{head} (the device-model record was not read)"
    if col.libxl or col.xenopsd_layer is not None:
        return "pvh", f"{head} without device-model state (a PVH guest has none)"
    return "hvm", (f"{head}; a bare libxc stream cannot tell HVM from PVH (no configuration, "
                   "no device-model state)")


def _vcpus(col: _Collector, s: _State, guest: GuestInfo,
           config: Optional[ConfigInfo]) -> VcpuInfo:
    mx = config.vcpus if config is not None else None
    if s.vcpu_map is not None:
        online = s.vcpu_map[1]
        src = "the legacy VCPU_INFO chunk"
        mx = s.vcpu_map[0] + 1
        if guest.type == "pv" and s.pv_vcpus:
            online = sorted(s.pv_vcpus)
            src = "the legacy PV tail's vcpu contexts (VCPU_INFO's map)"
        return VcpuInfo(online, mx, src)
    if guest.type == "pv":
        return VcpuInfo(sorted(s.pv_vcpus), mx, "X86_PV_VCPU_BASIC records")
    if s.hvm_context:
        return VcpuInfo(sorted(hvm.cpu_instances(s.hvm_context)), mx,
                        "the HVM context's CPU records")
    return VcpuInfo([], mx, "no vcpu state found")


def _memory(col: _Collector, s: _State) -> MemoryInfo:
    distinct, repeats, repeated, untracked = s.bitmap
    exact = untracked == 0
    by_type = {decode.page_type_name(t): n for t, n in sorted(s.by_type.items())}
    max_pfn: Optional[int] = s.p2m_end
    if max_pfn is None and col.lheader is not None:
        max_pfn = col.lheader.p2m_size - 1
    resident = distinct if exact else None
    return MemoryInfo(
        page_records=s.records, entries=s.entries, pages_by_type=by_type,
        data_pages=s.data_pages, highest_pfn=s.highest_pfn, resident_pages=resident,
        resident_bytes=resident * PAGE if resident is not None else None,
        resent_pages=repeats if exact else None,
        pfns_sent_more_than_once=repeated if exact else None,
        xtab=s.by_type.get(libxc.PT_XTAB, 0), broken=s.by_type.get(libxc.PT_BROKEN, 0),
        xalloc=s.by_type.get(libxc.PT_XALLOC, 0), verify_pages=s.verify_pages,
        compressed_pages=s.compressed_pages, max_pfn=max_pfn, unmapped_pfns=s.unmapped,
        untracked_pfns=untracked)


def _checkpoints(col: _Collector, v: Verifier, res: Result, legacy_stream: bool) -> CheckpointInfo:
    st = v.parser.state
    if legacy_stream:
        lp = v.parser.legacy_parser
        complete = lp.checkpoints if lp is not None else 0
        # every plain save ends its body with LAST_CHECKPOINT; Remus never does
        remus = complete > 1 or col.ltruncated or (lp is not None and not lp.last_checkpoint)
        if not remus:
            return CheckpointInfo(None, 0, False, "not checkpointed")
        return CheckpointInfo("remus", complete, col.ltruncated,
                              f"checkpoint {complete}" + (" (a later one is cut short: a "
                                                          "failover restores this one)"
                                                          if col.ltruncated else ""))
    if not st.checkpoints:
        return CheckpointInfo(None, 0, False, "not checkpointed")
    kind = "colo" if st.colo else "remus"
    complete = res.summary.get("checkpoints", {}).get("complete", 0)
    discarded = col.since_commit > 0
    state = f"checkpoint {complete}"
    if discarded:
        state += " (the records after it are discarded: a failover restores this one)"
    return CheckpointInfo(kind, complete, discarded, state)


def _hvm_context(blob: Optional[bytes]) -> Optional[HvmContextInfo]:
    if not blob:
        return None
    hdr = decode.hvm_header(blob)
    return HvmContextInfo(len(blob), len(decode.hvm_entries(blob)),
                          sorted(hvm.cpu_instances(blob)),
                          hdr["gtsc_khz"] if hdr else None, hdr["cpuid"] if hdr else None)


def _emulators(ems: List[EmulatorInfo], config: Optional[ConfigInfo]) -> List[EmulatorInfo]:
    """Legacy records do not name the device model: the configuration may."""
    dm = config.device_model if config is not None else None
    out = []
    for e in ems:
        if e.emulator == "unknown" and dm in {"qemu-upstream", "qemu-traditional"}:
            e = dataclasses.replace(e, emulator=f"{dm} (from the configuration)")
        out.append(e)
    return out


# -- text --------------------------------------------------------------------------------


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.1f} {unit}" if v != int(v) else f"{int(v)} {unit}"
    return f"{n} bytes"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ids(ids: List[int]) -> str:
    return decode.pfn_ranges(ids, limit=16).replace("0x", "") if ids else "none"


def _text(info: ImageInfo, name: str) -> List[str]:
    out = [f"{name}:"]

    def line(label: str, text: str) -> None:
        out.append(f"  {label + ':' if label else '':<13} {text}")

    line("envelope", info.chain)
    line("saved by", info.saved_by.summary)
    g = info.guest
    gt = (g.type or "unknown").upper()
    bits = [gt]
    if g.width:
        bits.append(f"{g.width}-bit")
    if g.pt_levels:
        bits.append(f"{g.pt_levels}-level page tables")
    line("guest", ", ".join(bits) + f" (from {g.basis}"
         + (f"; {g.mode}" if g.mode else "") + ")")
    vc = info.vcpus
    line("vcpus", f"{len(vc.online)} online ({_ids(vc.online)})"
         + (f" of {vc.max}" if vc.max else "") + f", from {vc.source}")
    m = info.memory
    unit = "batch" if info.saved_by.legacy else "record"
    mem = [f"{m.data_pages} pages sent in {m.page_records} {unit}"
           f"{'' if m.page_records == 1 else 'es' if unit == 'batch' else 's'}"]
    if m.resident_pages is not None:
        mem.append(f"{m.resident_pages} resident ({_size(m.resident_bytes)})")
    if m.highest_pfn is not None:
        mem.append(f"highest pfn {m.highest_pfn:#x}")
    line("memory", ", ".join(mem))
    extra = [", ".join(f"{k} {v}" for k, v in m.pages_by_type.items()) or "no pages"]
    if m.pfns_sent_more_than_once is not None:
        extra.append(f"{m.pfns_sent_more_than_once} pfns sent more than once "
                     f"({m.resent_pages} extra copies)")
    for label, n in (("VERIFY resends", m.verify_pages), ("compressed", m.compressed_pages),
                     ("unmapped pfns", m.unmapped_pfns or 0),
                     ("pfns not tracked", m.untracked_pfns)):
        if n:
            extra.append(f"{label} {n}")
    if m.max_pfn is not None:
        extra.append(f"max_pfn {m.max_pfn:#x}")
    line("", "; ".join(extra))
    cp = info.checkpoints
    line("checkpoints", "none" if not cp.kind else
         f"{cp.kind.upper()}, {cp.complete} complete; state: {cp.state}")
    if info.tsc:
        t = info.tsc
        line("TSC", f"mode {t.mode} ({t.mode_name}), {t.khz} kHz, elapsed {t.nsec} ns, "
             f"incarnation {t.incarnation}")
    if info.hvm_params:
        line("HVM params", " ".join(f"{p.name}={p.value:#x}" for p in info.hvm_params))
    if info.hvm_context:
        h = info.hvm_context
        line("HVM context", f"{h.bytes} bytes, {h.entries} entries, CPU records for vcpus "
             f"{_ids(h.cpus)}" + (f", guest TSC {h.gtsc_khz} kHz" if h.gtsc_khz else ""))
    if info.policies:
        p = info.policies
        pol = []
        if p.cpuid_leaves is not None:
            pol.append(f"CPUID {_plural(p.cpuid_leaves, 'leaf').replace('leafs', 'leaves')} "
                       f"({p.cpuid_bytes} bytes)")
        if p.msr_entries is not None:
            pol.append(f"MSR {_plural(p.msr_entries, 'entry').replace('entrys', 'entries')} "
                       f"({p.msr_bytes} bytes)")
        line("policies", ", ".join(pol))
    for e in info.emulators:
        qv = f", QEVM version {e.qevm_version}" if e.qevm_version is not None else (
            f", starts with {e.signature!r}" if e.signature else "")
        line("emulator", f"{e.emulator}, {_size(e.bytes) if e.bytes is not None else 'to the end'}"
             f" ({e.source}{qv})")
    if not info.emulators and info.guest.device_model is False:
        line("emulator", "none (no device-model state)")
    if info.xenstore_keys is not None:
        line("xenstore", f"{_plural(info.xenstore_keys, 'key')} (EMULATOR_XENSTORE_DATA)")
    if info.shared_info:
        line("shared info", "present")
    c = info.config
    if c is not None:
        facts = []
        if c.name:
            facts.append(f"name {c.name}")
        if c.memory_kib is not None:
            facts.append(f"memory {_size(c.memory_kib * 1024)}")
        if c.max_memory_kib is not None and c.max_memory_kib != c.memory_kib:
            facts.append(f"max {_size(c.max_memory_kib * 1024)}")
        if c.vcpus:
            facts.append(f"{_plural(c.vcpus, 'vcpu')}")
        if c.domain_type:
            facts.append(f"type {c.domain_type}")
        line("config", f"{c.kind} ({c.description}), {c.bytes} bytes"
             + (f": {', '.join(facts)}" if facts else ""))
    else:
        line("config", "none")
    for note in info.notes:
        line("note", note)
    line("verdict", info.verdict.line)
    if info.restores_on is not None:
        line("restores on", ", ".join(f"Xen {r}" for r in info.restores_on) or
             "no Xen release from 4.6 on (see verify --target-xen all)")
    return out


__all__ = ["ImageInfo", "SCHEMA_VERSION", "summary", "CheckpointInfo", "ConfigInfo",
           "EmulatorInfo", "GuestInfo", "HvmContextInfo", "HvmParam", "Layer", "LegacyOrigin",
           "MemoryInfo", "PolicyInfo", "SavedBy", "TscInfo", "VcpuInfo", "Verdict"]
