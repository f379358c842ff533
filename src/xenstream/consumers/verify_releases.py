"""What an image carries that only some Xen releases restore, gathered while
the verifier walks it (only when a release is to be judged: ``verify(...,
releases=True)``).

:class:`ReleaseFacts` notes *facts* — the stream version, the record types,
long records, the HVM context's entry lengths and CPU_MSR indices, the
HVM_PARAMS indices, empty PV vcpu records, libxl record types — each with
where it was first seen.  It judges nothing: the rules with ``uses``
(:mod:`xenstream.rules`) say which facts matter, and
:mod:`xenstream.consumers.restorability` matches them for a release.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from xenstream.formats import hvm, libxc
from xenstream.reading.parser import Record
from xenstream.releases import REFUSED
from xenstream.rules import RULES, Rule, verdict

FactKey = Tuple[str, Any]
#: the facts some rule uses: nothing else is kept, so a hostile stream (millions of
#: HVM_PARAMS indices or record types) cannot grow the table
WANTED = frozenset((u[0], u[1]) for r in RULES.values() for u in r.uses)
#: record bodies at least this long are noted (the smallest limit a release has is 8 MiB)
_LONG_RECORD = 1 << 20
_PV_VCPU_RECORDS = frozenset({libxc.REC_TYPE_X86_PV_VCPU_BASIC, libxc.REC_TYPE_X86_PV_VCPU_EXTENDED,
                              libxc.REC_TYPE_X86_PV_VCPU_XSAVE, libxc.REC_TYPE_X86_PV_VCPU_MSRS})


class Fact(NamedTuple):
    size: Optional[int]  # a length where the fact has one
    offset: int
    layer: str
    what: str
    record_index: Optional[int]
    rtype: Optional[str]
    message: str  # what was found there


class ReleaseFacts:
    """The facts of one image: (kind, key) -> the first occurrence of each
    distinct value (a handful per key: no per-page state)."""

    def __init__(self) -> None:
        self.found: Dict[FactKey, List[Fact]] = {}
        #: the judging consumer's findings and verdicts, once computed (its cache)
        self.judged: Optional[List[Any]] = None
        self.outcomes: Dict[str, str] = {}

    def note(self, kind: str, k: Any, message: str, *, offset: int, layer: str, what: str,
             value: Optional[int] = None, index: Optional[int] = None,
             rtype: Optional[str] = None) -> None:
        if (kind, k) not in WANTED:
            return
        seen = self.found.setdefault((kind, k), [])
        if len(seen) < 8 and all(f.size != value for f in seen):
            seen.append(Fact(value, offset, layer, what, index, rtype, message))

    def _at(self, kind: str, k: Any, message: str, rec: Where, *,
            offset: Optional[int] = None, value: Optional[int] = None) -> None:
        self.note(kind, k, message, offset=rec.offset if offset is None else offset,
                  layer=rec.layer, what=rec.what, value=value, index=rec.record_index,
                  rtype=rec.name)

    # -- what the verifier hands over -----------------------------------------------------

    def image_header(self, fields: Dict[str, int], offset: int) -> None:
        version = fields.get("version")
        self.note("stream-version", version, f"a version {version} stream", offset=offset,
                  layer="libxc", what="header (libxc image header)")

    def libxc_record(self, rec: Record, body: Optional[bytes]) -> None:
        """A libxc record the parser yielded (``body``: its bytes, if read)."""
        self._libxc(Where(rec.offset, rec.body_offset, rec.layer, rec.what, rec.index, rec.name,
                          rec.rtype, rec.length), body)

    def libxc_written(self, rtype: int, body: bytes, offset: int, index: int) -> None:
        """A libxc record a converter writes (``offset``: where in its input)."""
        name = libxc.record_name(rtype)
        self._libxc(Where(offset, offset, "libxc", f"output record #{index} ({name})", index,
                          name, rtype, len(body)), body)

    def _libxc(self, rec: Where, body: Optional[bytes]) -> None:
        rtype = rec.rtype
        self._at("record-type", rtype, f"{rec.name} (record {rtype:#x})", rec)
        if rec.length >= _LONG_RECORD:
            self._at("record-length", None, f"a {rec.name} record of {rec.length} bytes", rec,
                     value=rec.length)
        if rtype in _PV_VCPU_RECORDS and rec.length == libxc.X86_PV_VCPU_HDR.size:
            self._at("pv-vcpu-empty", None, f"an empty {rec.name} record", rec)
        elif (rtype == libxc.REC_TYPE_X86_PV_VCPU_XSAVE
              and (rec.length - libxc.X86_PV_VCPU_HDR.size) % 16):
            self._at("pv-xsave-odd", None, f"an X86_PV_VCPU_XSAVE payload of "
                     f"{rec.length - libxc.X86_PV_VCPU_HDR.size} bytes", rec)
        if body is None:
            return
        if rtype == libxc.REC_TYPE_HVM_CONTEXT:
            self._hvm_context(rec, body)
        elif rtype == libxc.REC_TYPE_HVM_PARAMS and len(body) >= libxc.HVM_PARAMS_HDR.size:
            count = libxc.HVM_PARAMS_HDR.unpack(body)["count"]
            size = libxc.HVM_PARAMS_ENTRY.size
            top = min(count, (len(body) - libxc.HVM_PARAMS_HDR.size) // size)
            for i in range(top):
                at = libxc.HVM_PARAMS_HDR.size + size * i
                idx = libxc.HVM_PARAMS_ENTRY.unpack(body, offset=at)["index"]
                self._at("hvm-param", idx, f"HVM_PARAMS entry {i} sets index {idx}", rec,
                         offset=rec.body_offset + at)

    def _hvm_context(self, rec: Where, blob: bytes) -> None:
        for e in hvm.iter_entries(blob):
            where = rec.body_offset + e.offset
            name = hvm.type_name(e.typecode)
            self._at("hvm-length", e.typecode, f"a {e.length}-byte {name} entry (instance "
                     f"{e.instance})", rec, offset=where, value=e.length)
            if e.typecode == hvm.CPU_MSR and e.length >= hvm.MSR_HDR.size:
                body = e.body(blob)
                count = hvm.MSR_HDR.unpack(body)["count"]
                n = min(count, (len(body) - hvm.MSR_HDR.size) // hvm.MSR_ENTRY_SIZE)
                for i in range(n):
                    at = hvm.MSR_HDR.size + hvm.MSR_ENTRY_SIZE * i
                    idx = hvm.MSR_ENTRY.unpack(body, offset=at)["index"]
                    self._at("msr", idx, f"CPU_MSR (instance {e.instance}) carries MSR "
                             f"{idx:#x}", rec, offset=where + hvm.DESCRIPTOR.size + at)

    def libxl_record(self, rec: Record) -> None:
        w = Where(rec.offset, rec.body_offset, rec.layer, rec.what, rec.index, rec.name,
                  rec.rtype, rec.length)
        self._at("libxl-record", rec.rtype, f"a libxl {rec.name} record", w)

    def guest(self, guest: Optional[str], width: Optional[int], offset: int, layer: str,
              what: str) -> None:
        """The guest type and, for PV, the guest's width in bits."""
        if guest == "pv":
            self.note("guest", "pv", "a PV guest", offset=offset, layer=layer, what=what)
            if width == 32:
                self.note("guest", "pv32", "a 32-bit PV guest", offset=offset, layer=layer,
                          what=what)

    # -- what the judge asks ------------------------------------------------------------------

    def matches(self) -> List[Tuple[Rule, Fact]]:
        """Each rule with ``uses`` whose facts the image has, with the first
        such fact."""
        out = []
        for r in _USES_RULES:
            for use in r.uses:
                fact = self.match(use)
                if fact is not None:
                    out.append((r, fact))
                    break
        return out

    def refused_at(self, release: str) -> List[Tuple[Rule, Fact]]:
        """:meth:`matches` that ``release`` refuses."""
        return [(r, f) for r, f in self.matches() if verdict(r, release) == REFUSED]

    def match(self, use: Tuple[Any, ...]) -> Optional[Fact]:
        """The first fact ``use`` (``(kind, key)`` or ``(kind, key, limit)``:
        a value above ``limit``) names, if the image has one."""
        kind, k = use[0], use[1]
        for f in self.found.get((kind, k), []):
            if len(use) < 3 or (f.size is not None and f.size > use[2]):
                return f
        return None


class Where(NamedTuple):
    """Where a record is, for the facts about it."""

    offset: int
    body_offset: int
    layer: str
    what: str
    record_index: Optional[int]
    name: str
    rtype: int
    length: int


_USES_RULES = tuple(r for r in RULES.values() if r.uses)

__all__ = ["Fact", "ReleaseFacts", "WANTED", "Where"]
