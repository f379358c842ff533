"""Every header and record of an image, decoded: ``xenstream dump``.

:func:`records` is a consumer of the pull parser: it yields one
:class:`DumpRow` per header, envelope blob, frame and record (a legacy
image's chunks, page batches, tails and device-model record), with its offset,
layer, type, length and the fields it decodes (parameter names and values, TSC
fields, vcpu ids, xenstore keys and values, policy sizes, HVM context entries,
the device-model blob's signature and QEVM version).  Consecutive PAGE_DATA
records (or legacy page batches) fold into one row unless ``pages`` is set.
Only what a row decodes is read: page data is skipped (a seek on seekable
input).  The text and JSON forms of a row are :meth:`DumpRow.text` and
:meth:`DumpRow.to_json` (``schema/dump.schema.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Optional, Set, Union

from xenstream.consumers import decode
from xenstream.consumers.config import domain_type_of
from xenstream.consumers.report import item_line, record_line
from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import legacy, libxc, libxl, xenopsd, xl
from xenstream.formats.legacy import (
    LBatch,
    LBatchRun,
    LBodyEnd,
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
    LAYER_LIBXL,
    EndOfInput,
    EnvelopeData,
    Frame,
    Header,
    Item,
    Legacy,
    Mismatch,
    PageRun,
    Parser,
    Record,
    XlConfig,
)

SCHEMA_VERSION = 1
#: xenstore data shown per record, at most (the rest is counted)
XENSTORE_SHOWN = 1 << 20
#: the row types that fold into runs
PAGE_TYPES = ("PAGE_DATA", "PAGE_BATCH")

Value = Any


@dataclass
class DumpRow:
    """One line of the dump.  ``kind``: header, config, frame, record,
    chunk, batch, tail, marker; ``type``: the record type's (or header's,
    frame's, chunk's) name, as ``--type`` matches it; ``records`` > 1 for a
    folded run (``index`` .. ``last_index``)."""

    offset: int
    layer: str
    kind: str
    type: str
    length: Optional[int] = None
    index: Optional[int] = None
    fields: Dict[str, Value] = field(default_factory=dict)
    records: int = 1
    last_index: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"offset": self.offset, "layer": self.layer, "kind": self.kind,
                               "type": self.type, "index": self.index, "length": self.length,
                               "records": self.records, "fields": self.fields}
        if self.records > 1:
            doc["last_index"] = self.last_index
        return doc

    def text(self) -> str:
        rest = " ".join(_show(k, v) for k, v in self.fields.items() if v is not None)
        if self.index is not None:
            if self.records > 1:
                head = (f"{self.records} records (#{self.index}-#{self.last_index}), "
                        f"{self.length} bytes")
            else:
                head = f"length {self.length}"
            return record_line(self.offset, self.layer, self.index, self.type,
                               head + (f"  {rest}" if rest else ""))
        what = self.type
        if self.records > 1:
            what = f"{self.records} {self.type} items"
        if self.length is not None:
            what += f" ({self.length} bytes)"
        return item_line(self.offset, f"{self.layer:<6} {what}" + (f": {rest}" if rest else ""))


#: fields shown in hex
_HEX = frozenset({"options", "mandatory_flags", "optional_flags", "marker", "ident", "id",
                  "changeset", "cpuid", "p2m_size", "start_pfn", "end_pfn", "lowest_pfn",
                  "highest_pfn", "magic", "value", "ioreq_pfn", "bufioreq_pfn", "store_pfn",
                  "byteorder"})


def _show(k: str, v: Value) -> str:
    """``k=v`` as a listing shows it: counts in decimal, pfns, addresses and
    parameter values in hex, HVM context entries as ``NAME.instance:length``."""
    if isinstance(v, bool):
        return f"{k}={'yes' if v else 'no'}"
    if isinstance(v, int):
        return f"{k}={v:#x}" if k in _HEX else f"{k}={v}"
    if isinstance(v, dict):
        hexa = k == "params"
        return f"{k}=" + ",".join(
            f"{a}={b:#x}" if hexa and isinstance(b, int) else f"{a}={b}" for a, b in v.items())
    if isinstance(v, list):
        return f"{k}=" + ",".join(_item(x) for x in v)
    s = str(v)
    return f"{k}={s!r}" if (" " in s or not s) else f"{k}={s}"


def _item(x: Value) -> str:
    if isinstance(x, dict):
        if {"name", "instance", "length"} <= set(x):
            return f"{x['name']}.{x['instance']}:{x['length']}"
        return "/".join(str(v) for v in x.values())
    return str(x)


# -- the rows of one image --------------------------------------------------------------


def records(spec_or_source: Union[str, int, Source], *, format: Optional[str] = None,
            pages: bool = False, types: Optional[Iterable[str]] = None,
            skip_qemu: bool = False) -> Iterator[DumpRow]:
    """The rows of the image at ``spec_or_source`` (a path, ``-``, an fd, or
    an open :class:`~xenstream.io.Source`, left open), in stream order.
    ``pages``: one row per PAGE_DATA record (or page batch) instead of one per
    run; ``types``: only rows of these types (case-insensitive).  Raises
    :class:`~xenstream.errors.FormatError` where the image cannot be read on,
    after the rows before it; a checkpointed stream cut inside a later
    checkpoint ends with a ``truncated checkpoint`` row instead."""
    want = {t.lower() for t in types} if types else None
    if isinstance(spec_or_source, Source):
        yield from _filtered(_Dumper(spec_or_source, format, skip_qemu).rows(), pages, want)
        return
    with Source.open(spec_or_source) as src:
        yield from _filtered(_Dumper(src, format, skip_qemu).rows(), pages, want)


def _filtered(rows: Iterator[DumpRow], pages: bool,
              want: Optional[Set[str]]) -> Iterator[DumpRow]:
    folded = rows if pages else _fold(rows)
    for r in folded:
        if want is None or r.type.lower() in want:
            yield r


def _fold(rows: Iterator[DumpRow]) -> Iterator[DumpRow]:
    run: Optional[DumpRow] = None
    for r in rows:
        if r.type in PAGE_TYPES:
            if run is not None and run.type == r.type and run.layer == r.layer:
                _merge(run, r)
                continue
            if run is not None:
                yield run
            run = r
            continue
        if run is not None:
            yield run
            run = None
        yield r
    if run is not None:
        yield run


def _merge(run: DumpRow, r: DumpRow) -> None:
    """Fold page row ``r`` into ``run``."""
    f, g = run.fields, r.fields
    f.pop("pfns", None)  # the pfn list of one record only
    run.records += r.records
    run.last_index = r.index if r.index is not None else run.last_index
    if run.length is not None and r.length is not None:
        run.length += r.length
    for k in ("count", "pages", "pfnless_xtab"):
        if isinstance(g.get(k), int):
            f[k] = f.get(k, 0) + g[k]
    lo, hi = g.get("lowest_pfn"), g.get("highest_pfn")
    if lo is not None and (f.get("lowest_pfn") is None or lo < f["lowest_pfn"]):
        f["lowest_pfn"] = lo
    if hi is not None and (f.get("highest_pfn") is None or hi > f["highest_pfn"]):
        f["highest_pfn"] = hi
    if "types" in g:
        t = f.setdefault("types", {})
        for name, n in g["types"].items():
            t[name] = t.get(name, 0) + n
    if g.get("compressed"):
        f["compressed"] = True


class _Dumper:
    def __init__(self, src: Source, format: Optional[str], skip_qemu: bool) -> None:
        self.src = src
        self.parser = Parser(src, format=format)
        if skip_qemu:
            self.parser.legacy_options.qemu = "skip"
        self.xl_json = False
        self.config_type: Optional[str] = None
        self.lwidth = 8
        self.lguest = "pv"
        self.lheader: Optional[LHeader] = None

    def rows(self) -> Iterator[DumpRow]:
        st = self.parser.state
        try:
            for item in self.parser.items():
                row = self._row(item)
                if row is not None:
                    yield row
        except TruncatedError as e:
            complete = st.checkpoint_ends if LAYER_LIBXL in st.layers else st.checkpoints
            if complete >= 1 and not st.finished:
                yield DumpRow(e.offset, e.layer or LAYER_LIBXC, "marker", "truncated checkpoint",
                              fields={"complete_checkpoints": complete, "message": e.message})
                return
            raise

    # -- items ---------------------------------------------------------------------------

    def _row(self, item: Item) -> Optional[DumpRow]:
        if type(item) is Record:
            return self._record(item)  # type: ignore[arg-type]
        if isinstance(item, PageRun):  # (no page filter is set: not expected)
            return DumpRow(item.offset, item.layer, "record", "PAGE_DATA",
                           item.end - item.offset, item.first_index,
                           {"count": item.entries, "pages": item.pages},
                           item.records, item.first_index + item.records - 1)
        if isinstance(item, Header):
            return self._header(item)
        if isinstance(item, XlConfig):
            kind = "xl-json" if self.xl_json else "xl-cfg"
            f: Dict[str, Value] = {"config_len": item.config_len, "config": kind}
            if item.config is not None:
                f.update(_config_fields(kind, item.config))
                self.config_type = domain_type_of(kind, item.config)
            return DumpRow(item.offset, item.layer, "config", "xl optional data",
                           item.optional_data_len, fields=f)
        if isinstance(item, EnvelopeData):
            kind = "libvirt-xml" if item.layer == "libvirt" else "xend-sxp"
            f = {}
            if item.data is not None:
                f = _config_fields(kind, item.data)
                self.config_type = domain_type_of(kind, item.data)
            return DumpRow(item.offset, item.layer, "config", item.kind, item.declared_len,
                           fields=f)
        if isinstance(item, Frame):
            return self._frame(item)
        if isinstance(item, Legacy):
            return self._legacy_start(item)
        if isinstance(item, Mismatch):
            return DumpRow(item.offset, item.layer, "marker", "header mismatch",
                           fields={"rule": item.rule, "message": item.message})
        if isinstance(item, EndOfInput):
            return DumpRow(item.offset, item.layer, "marker", "end of input")
        return self._legacy(item)

    def _header(self, h: Header) -> DumpRow:
        f: Dict[str, Value] = {k: v for k, v in h.fields.items() if not k.startswith("_")}
        if h.kind == "xl header":
            self.xl_json = bool(h.fields["mandatory_flags"] & xl.MANDATORY_FLAG_JSON)
            f["streamv2"] = bool(h.fields["mandatory_flags"] & xl.MANDATORY_FLAG_STREAMV2)
            f["json"] = self.xl_json
        elif h.kind == "libxc image header":
            f["endian"] = "big" if h.fields["options"] & libxc.IHDR_OPT_BE else "little"
        elif h.kind == "libxc domain header":
            f["type"] = libxc.DHDR_TYPE_NAMES.get(h.fields["type"], str(h.fields["type"]))
            if h.fields["xen_major"] == 0:
                f["converted"] = True
        elif h.kind == "libxl header":
            f["legacy"] = bool(h.fields["options"] & libxl.HDR_OPT_LEGACY)
        return DumpRow(h.offset, h.layer, "header", h.kind, h.size, fields=f)

    def _frame(self, fr: Frame) -> DumpRow:
        f: Dict[str, Value] = {"frame_type": fr.ftype}
        head = fr.head or b""
        if fr.ftype == xenopsd.XENOPS and fr.head is not None:
            f.update(_config_fields("xenopsd-sexp", fr.head))
        elif fr.ftype in (xenopsd.QEMU_TRAD, xenopsd.QEMU_XEN):
            f.update(decode.qemu_blob(head))
        length = fr.length if fr.ftype in xenopsd.SIZED or fr.ftype not in xenopsd.FRAME_NAMES \
            else None
        return DumpRow(fr.offset, fr.layer, "frame", fr.name, length, fr.index, f)

    # -- v2 records ----------------------------------------------------------------------------

    def _record(self, rec: Record) -> DumpRow:
        row = DumpRow(rec.offset, rec.layer, "record", rec.name, rec.length, rec.index)
        if rec.layer == LAYER_LIBXC:
            self._libxc(rec, row.fields)
        else:
            self._libxl(rec, row.fields)
        return row

    def _libxc(self, rec: Record, f: Dict[str, Value]) -> None:
        t = rec.rtype
        end = rec.endian
        if t == libxc.REC_TYPE_PAGE_DATA:
            if rec.length < 8:
                return
            count = libxc.PAGE_DATA_HDR.unpack(rec.read(8), end)["count"]
            f["count"] = count
            if not count or 8 + 8 * count > rec.length:
                return
            pe = decode.v2_entries(rec.read(8 * count), end)
            _page_fields(f, pe)
            return
        if t not in libxc.RECORD_NAMES or t in libxc.NO_BODY:
            return
        body = rec.body(libxc.REC_LENGTH_MAX)
        if t == libxc.REC_TYPE_X86_PV_INFO:
            pi = decode.pv_info(body, end)
            if pi:
                f.update(guest_width=pi[0], pt_levels=pi[1])
        elif t == libxc.REC_TYPE_X86_PV_P2M_FRAMES:
            pm = decode.p2m_frames(body, end)
            if pm:
                f.update(start_pfn=pm[0], end_pfn=pm[1], frames=pm[2])
        elif t in libxc.VCPU_RECORDS:
            f["vcpu_id"] = decode.vcpu_id(body, end)
            f["context_bytes"] = max(0, rec.length - 8)
        elif t == libxc.REC_TYPE_X86_TSC_INFO:
            ts = decode.tsc(body, end)
            if ts:
                f.update(ts)
        elif t == libxc.REC_TYPE_HVM_CONTEXT:
            _context_fields(f, body)
        elif t == libxc.REC_TYPE_HVM_PARAMS:
            ps = decode.hvm_params(body, end)
            f["count"] = len(ps)
            f["params"] = {libxc.hvm_param_name(i): v for i, v in ps}
        elif t == libxc.REC_TYPE_X86_CPUID_POLICY:
            f["leaves"] = decode.policy_count(t, rec.length)
        elif t == libxc.REC_TYPE_X86_MSR_POLICY:
            f["entries"] = decode.policy_count(t, rec.length)
        elif t == libxc.REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST:
            f["pfns"] = rec.length // 8

    def _libxl(self, rec: Record, f: Dict[str, Value]) -> None:
        t = rec.rtype
        end = rec.endian
        if t in (libxl.REC_TYPE_EMULATOR_CONTEXT, libxl.REC_TYPE_EMULATOR_XENSTORE_DATA):
            if rec.length < 8:
                return
            eid, index = libxl.EMULATOR_HDR.unpack(rec.read(8), end).values()
            f.update(emulator_id=eid, emulator=decode.emulator_name(eid), index=index)
            if t == libxl.REC_TYPE_EMULATOR_CONTEXT:
                f["bytes"] = rec.length - 8
                f.update(decode.qemu_blob(rec.read(min(8, rec.length - 8))))
            else:
                n = min(rec.length - 8, XENSTORE_SHOWN)
                pairs = decode.xenstore_pairs(rec.read(n))
                f["keys"] = len(pairs)
                f["xenstore"] = {k: v for k, v in pairs}
                if n < rec.length - 8:
                    f["not_shown_bytes"] = rec.length - 8 - n
        elif t == libxl.REC_TYPE_CHECKPOINT_STATE and rec.length >= 4:
            cid = libxl.CHECKPOINT_STATE.unpack(rec.read(4), end)["control_id"]
            f.update(control_id=cid, state=libxl.CHECKPOINT_STATE_NAMES.get(cid, "unknown"))

    # -- legacy --------------------------------------------------------------------------------

    def _legacy_start(self, item: Legacy) -> DumpRow:
        g = item.guess
        if g is None:
            raise FormatError(item.offset, "expected a legacy stream, found bytes that match "
                              "no legacy layout", what="legacy payload", layer="legacy",
                              rule="legacy-unrecognised")
        if g.guest == "hvm" and not g.certain and self.config_type == "pv":
            # a pre-3.1 PV stream starts like an HVM one: the configuration decides
            self.parser.legacy_options.guest = "pv"
            g.guest = "pv"
        self.lwidth, self.lguest = g.width, g.guest
        return DumpRow(item.offset, "legacy", "marker", "legacy stream",
                       fields={"container": item.container, "toolstack_width": g.width * 8,
                               "guest": g.guest, "p2m_size": g.p2m_size})

    def _legacy(self, it: Any) -> Optional[DumpRow]:
        if isinstance(it, LBatch):
            pe = decode.legacy_entries(it.entries)
            f: Dict[str, Value] = {"count": it.count}
            _page_fields(f, pe)
            if pe.data and not it.n_data:
                f["compressed"] = True
            if pe.pfnless:
                f["pfnless_xtab"] = pe.pfnless
            w = self.lwidth
            return DumpRow(it.offset, "legacy", "batch", "PAGE_BATCH",
                           4 + w * it.count + it.n_data * legacy.PAGE_SIZE, fields=f)
        if isinstance(it, LBatchRun):  # (bulk reading is off here: not expected)
            return DumpRow(it.offset, "legacy", "batch", "PAGE_BATCH", it.end - it.offset,
                           fields={"count": it.pages, "pages": it.pages},
                           records=len(it.batches))
        if isinstance(it, LChunk):
            return DumpRow(it.offset, "legacy", "chunk", f"CHUNK_{it.name}",
                           _chunk_length(it, self.lwidth),
                           fields=_chunk_fields(it, self.lguest, self.lwidth))
        if isinstance(it, LHeader):
            self.lheader = it
            f = {"p2m_size": it.p2m_size, "toolstack_width": it.width * 8, "guest": it.guest}
            if it.guest == "pv":
                f.update(extended_info=it.ext_info,
                         blocks=[{"id": b.decode("latin-1"), "size": n} for b, n in it.blocks],
                         guest_width=it.guest_width * 8, pt_levels=it.pt_levels,
                         p2m_frames=len(it.p2m_frames))
                if it.xcnt:
                    f["xcnt"] = it.xcnt
            return DumpRow(it.offset, "legacy", "header", "legacy header", _header_length(it),
                           fields=f)
        if isinstance(it, LBodyEnd):
            return DumpRow(it.offset, "legacy", "chunk", "END_OF_BODY", 4,
                           fields={"checkpoint": it.checkpoint})
        if isinstance(it, LHvmTail):
            f = {"ioreq_pfn": it.magic_pfns[0], "bufioreq_pfn": it.magic_pfns[1],
                 "store_pfn": it.magic_pfns[2]}
            _context_fields(f, it.context)
            return DumpRow(it.offset, "legacy", "tail", "HVM_TAIL", 28 + len(it.context),
                           fields=f)
        if isinstance(it, LPvTail):
            return DumpRow(it.offset, "legacy", "tail", "PV_TAIL", _pv_tail_length(
                it, self.lwidth, self.lheader), fields={
                "unmapped_pfns": len(it.unmapped), "vcpus": [v.vcpu_id for v in it.vcpus],
                "context_bytes": len(it.vcpus[0].context) if it.vcpus else 0,
                "extended": bool(it.vcpus and it.vcpus[0].extended is not None),
                "xsave": bool(it.vcpus and it.vcpus[0].xsave is not None),
                "shared_info_bytes": len(it.shared_info)})
        if isinstance(it, LQemu):
            return self._qemu(it)
        if isinstance(it, LCheckpointEnd):
            return DumpRow(it.offset, "legacy", "marker", "checkpoint end",
                           fields={"checkpoint": it.number, "last": it.last})
        if isinstance(it, LTruncated):
            return DumpRow(it.offset, "legacy", "marker", "truncated checkpoint",
                           fields={"checkpoint": it.number, "message": it.error.message})
        return None

    def _qemu(self, q: LQemu) -> DumpRow:
        src = self.src
        data_at = q.offset + len(q.header)
        size = q.length
        if size is None and src.size is not None:
            size = src.size - data_at
        head = q.read(8) if size is not None and size >= 8 else b""
        f: Dict[str, Value] = {"signature": q.signature.decode("latin-1").rstrip("\n"),
                               "writer": q.qkind, "bytes": size}
        qb = decode.qemu_blob(head)
        f["blob_signature"] = qb["signature"] if head else None
        f["qevm_version"] = qb["qevm_version"]
        return DumpRow(q.offset, "legacy", "record", "QEMU_RECORD",
                       len(q.header) + size if size is not None else None, fields=f)


def _header_length(h: LHeader) -> int:
    n = h.width  # p2m_size
    if h.guest == "pv":
        if h.ext_info:
            n += h.width + 4 + sum(8 + size for _, size in h.blocks)
        n += h.width * len(h.p2m_frames)
    return n


def _chunk_length(c: LChunk, width: int) -> Optional[int]:
    """The chunk's bytes, id included (None for TMEM's, whose walk is not kept)."""
    cid = c.cid
    if cid == legacy.CHUNK_VCPU_INFO:
        return 8 + len(c.data or b"")
    if cid in legacy.HVM_PARAM_CHUNKS:
        return 16
    if cid == legacy.CHUNK_TSC_INFO:
        return 4 + legacy.TSC_INFO.size
    if cid == legacy.CHUNK_COMPRESSED_DATA:
        return 4 + width + c.length
    if cid == legacy.CHUNK_TOOLSTACK:
        return 8 + c.length
    if cid in (legacy.CHUNK_TMEM, legacy.CHUNK_TMEM_EXTRA):
        return None
    return 4


def _pv_tail_length(t: LPvTail, width: int, h: Optional[LHeader]) -> int:
    n = 4 + width * len(t.unmapped) + len(t.shared_info)
    for v in t.vcpus:
        n += len(v.context) + len(v.extended or b"")
        if h is not None and h.xcnt:
            n += 16 + len(v.xsave or b"")
    return n


def _page_fields(f: Dict[str, Value], pe: decode.PageEntries) -> None:
    f["pages"] = len(pe.data)
    f["lowest_pfn"] = pe.min_pfn
    f["highest_pfn"] = pe.max_pfn
    f["pfns"] = decode.pfn_ranges(pe.pfns)
    if set(pe.by_type) - {0}:
        f["types"] = {decode.page_type_name(t): n for t, n in pe.by_type.items()}


def _context_fields(f: Dict[str, Value], blob: bytes) -> None:
    f["context_bytes"] = len(blob)
    hdr = decode.hvm_header(blob)
    if hdr is not None:
        f["gtsc_khz"] = hdr["gtsc_khz"]
        f["cpuid"] = hdr["cpuid"]
    f["entries"] = [{"typecode": t, "name": n, "instance": i, "length": ln}
                    for t, n, i, ln in decode.hvm_entries(blob)]


def _chunk_fields(c: LChunk, guest: str, width: int) -> Dict[str, Value]:
    f: Dict[str, Value] = {}
    cid = c.cid
    if cid == legacy.CHUNK_VCPU_INFO and c.value is not None and c.data is not None:
        words = [int.from_bytes(c.data[i:i + 8], "little") for i in range(0, len(c.data), 8)]
        f["max_vcpu_id"] = c.value
        f["online"] = [v for v in range(c.value + 1) if words[v // 64] >> (v % 64) & 1]
    elif cid in legacy.HVM_PARAM_CHUNKS and c.value is not None:
        idx = legacy.HVM_PARAM_CHUNKS[cid]
        f.update(param=libxc.hvm_param_name(idx), index=idx, value=c.value)
    elif cid == legacy.CHUNK_TSC_INFO:
        ts = decode.legacy_tsc(c.data)
        if ts:
            f.update(ts)
    elif cid == legacy.CHUNK_TOOLSTACK:
        f["bytes"] = c.length
        if c.data is not None and guest == "hvm":
            try:
                f["physmap"] = [{"phys_offset": hex(p), "start": hex(s), "size": hex(n),
                                 "name": name.decode("latin-1")}
                                for p, s, n, name in legacy.parse_physmap(c.data, width)]
            except ValueError as e:
                f["physmap_error"] = str(e)
    elif cid == legacy.CHUNK_COMPRESSED_DATA:
        f["bytes"] = c.length
    elif cid == legacy.CHUNK_TMEM:
        f["pages"] = c.value
    elif cid == legacy.CHUNK_TMEM_EXTRA:
        f["entries"] = c.value
    return f


def _config_fields(kind: str, data: bytes) -> Dict[str, Value]:
    facts = decode.config_facts(kind, data)
    out: Dict[str, Value] = {k: v for k, v in facts.items() if v is not None}
    t = domain_type_of(kind, data) if kind != "xl-cfg" else None
    if t:
        out["domain_type"] = t
    return out


__all__ = ["DumpRow", "PAGE_TYPES", "SCHEMA_VERSION", "records"]
