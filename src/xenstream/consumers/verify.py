"""The verifier: a consumer of the pull parser that applies every layer's rules.

:func:`verify` walks an image once, forward, hands each header and record to
the checker of its layer (:mod:`xenstream.formats.xl`, :mod:`xenstream.formats.libxl`,
:mod:`xenstream.formats.libxc`, :mod:`xenstream.formats.hvm`), follows checkpoints across
layers, and returns a :class:`Result` with every finding and a summary.

The :class:`Verifier` keeps the libxl and libxc layers (their records are the
hot path) and owns its other parts: the envelopes
(:mod:`~xenstream.consumers.verify_envelope`), legacy images
(:mod:`~xenstream.consumers.verify_legacy`), the findings and their context
(:mod:`~xenstream.consumers.verify_context`) and the summary
(:mod:`~xenstream.consumers.summary`).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from xenstream.consumers.summary import summarize
from xenstream.consumers.verify_context import Reporter
from xenstream.consumers.verify_envelope import EnvelopeVerification
from xenstream.consumers.verify_legacy import LegacyVerification
from xenstream.consumers.verify_releases import ReleaseFacts
from xenstream.errors import FormatError, TruncatedError
from xenstream.findings import ERROR, INFO, WARNING, Finding
from xenstream.formats import libxc, libxl
from xenstream.formats.libxc import LibxcChecker
from xenstream.formats.libxl import LibxlChecker
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
    PageFilter,
    PageRun,
    Parser,
    Record,
    StopStream,
    XlConfig,
)

SCHEMA_VERSION = 2  # 2: findings carry their rule's source; authorities toolstack, convention
#: Records after which the bulk PAGE_DATA filter may change.
_FILTER_TRIGGERS = frozenset({libxc.REC_TYPE_PAGE_DATA, libxc.REC_TYPE_STATIC_DATA_END,
                              libxc.REC_TYPE_X86_PV_P2M_FRAMES, libxc.REC_TYPE_X86_PV_INFO})
#: Small libxl records (END, LIBXC_CONTEXT, CHECKPOINT_*) are checked on this
#: many leading bytes; the rest, which Xen reads and discards, is skipped.
LIBXL_SMALL_PREFIX = 64
XENSTORE_CHUNK = 1 << 20


class Result:
    """What :func:`verify` found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.valid = True
        self.layers: List[str] = []  # outermost first
        self.findings: List[Finding] = []
        self.summary: Dict[str, Any] = {}
        self.notes: List[str] = []
        self.end_offset = 0  # offset just past the last byte consumed
        #: what only some releases restore (``verify(..., releases=True)``), for
        #: :mod:`xenstream.consumers.restorability`
        self.facts: Optional[ReleaseFacts] = None
        #: the finding where the parse stopped because the input could not be
        #: read on (a format error, or end of input where no failover applies)
        self.stopped: Optional[Finding] = None

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def to_json(self) -> Dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "file": self.file,
            "valid": self.valid,
            "layers": self.layers,
            "findings": [f.to_json() for f in self.findings],
            "summary": self.summary,
            "notes": self.notes,
        }


class Verifier:
    """One verification of one image: runs the parser and hands each item to
    the checker of its layer."""

    def __init__(self, src: Source, *, format: Optional[str] = None, lenient: bool = False,
                 check_trailing: bool = True, reject_legacy: bool = False,
                 on_item: Optional[Callable[[Item], None]] = None,
                 skip_qemu: bool = False, releases: bool = False) -> None:
        self.src = src
        self.parser = Parser(src, format=format)
        if skip_qemu:  # a legacy HVM stream ends at its tail: the caller reads the qemu record
            self.parser.legacy_options.qemu = "skip"
        self.check_trailing = check_trailing
        self.on_item = on_item
        self.result = Result(src.name)
        #: collects the findings into the result, about what ``ctx`` points at
        self.reporter = Reporter(self.result.findings, lenient=lenient)
        self.ctx = self.reporter.ctx
        self.report = self.reporter.report
        #: the envelopes' checkers
        self.envelope = EnvelopeVerification(self.report, self.ctx)
        self.libxl: Optional[LibxlChecker] = None
        self.libxc: Optional[LibxcChecker] = None
        self.counts: Counter[Tuple[str, int]] = Counter()
        self.records = 0
        self.libxc_done = False  # libxc END seen
        self.last_libxl: Optional[int] = None  # type of the last libxl record
        self.emulator_context = False  # an EMULATOR_CONTEXT record was seen
        self.reported_traditional = False
        self.since_checkpoint = 0  # libxc records since the last CHECKPOINT
        #: legacy images; with reject_legacy (the drop-in checks v2 streams only)
        #: a legacy payload is an error and is not read further
        self.legacy = LegacyVerification(self.parser, self.envelope, self.report,
                                         reject=reject_legacy)
        self.reported_colo_pv = False
        #: with ``releases``: what the per-release judging needs to know
        self.facts = self.result.facts = ReleaseFacts() if releases else None

    # -- main loop ------------------------------------------------------------------

    def run(self) -> Result:
        res = self.result
        try:
            ctx = self.ctx
            on_item = self.on_item
            record = self._record
            for item in self.parser.items():
                ctx.item = item
                if on_item is not None:
                    on_item(item)
                if type(item) is Record:
                    record(item)
                elif type(item) is PageRun:
                    self._page_run(item)
                elif isinstance(item, Header):
                    self._header(item)
                elif isinstance(item, XlConfig):
                    self.envelope.xl_config(item)
                elif isinstance(item, Frame):
                    self._frame(item)
                elif isinstance(item, EnvelopeData):
                    self.envelope.data(item)
                elif isinstance(item, Legacy):
                    self.legacy.start(item)
                elif isinstance(item, Mismatch):
                    self.report(item.rule, item.message)
                elif self.legacy.checker is not None and item.layer == "legacy":
                    self.legacy.check(item)
                elif isinstance(item, EndOfInput):
                    self._end_of_input(item)
            self._finish()
        except StopStream:
            pass
        except TruncatedError as e:
            self._truncated(e)
        except FormatError as e:
            self._ctx_from_error(e)
            self.report(e.rule, e.message)
            res.stopped = res.findings[-1]
        res.layers = list(self.parser.state.layers)
        res.end_offset = self.src.pos
        res.valid = not res.errors
        res.summary = summarize(
            records=self.records, nbytes=self.src.pos - self.src.start, counts=self.counts,
            state=self.parser.state, complete_checkpoints=self._complete_checkpoints(),
            envelope=self.envelope, libxl=self.libxl, libxc=self.libxc, legacy=self.legacy)
        for chk in (self.libxc,):
            if chk is not None:
                res.notes.extend(chk.notes)
        return res

    # -- items -----------------------------------------------------------------------

    def _header(self, h: Header) -> None:
        env = self.envelope
        if env.header(h):
            return
        if h.kind == "libxl header":
            env.payload("libxl")
            self.libxl = LibxlChecker(self.report)
            self.libxl.header(h.fields)
        elif h.kind == "libxc image header":
            self.libxc = LibxcChecker(self.report, nr_vcpus=env.nr_vcpus())
            self.libxc.image_header(h.fields)
            if self.facts is not None:
                self.facts.image_header(h.fields, h.offset)
        elif h.kind == "libxc domain header":
            assert self.libxc is not None
            self.libxc.domain_header(h.fields)
            env.check_guest(self.libxc.s.guest)

    def _frame(self, f: Frame) -> None:
        self.records += 1
        self.counts[(f.layer, f.ftype)] += 1
        self.envelope.frame(f)

    def _record(self, rec: Record) -> None:
        self.records += 1
        self.counts[(rec.layer, rec.rtype)] += 1
        if rec.layer == LAYER_LIBXC:
            self._libxc_record(rec)
        else:
            self._libxl_record(rec)
        pad = rec.finish()
        if any(pad):
            self.report("padding-zero" if rec.layer == LAYER_LIBXC else "libxl-padding-zero",
                        f"expected {len(pad)} zero padding bytes, found {pad.hex(' ')}",
                        offset=rec.body_offset + rec.length)

    def _page_run(self, run: PageRun) -> None:
        """PAGE_DATA records the parser checked in bulk against our filter."""
        chk = self.libxc
        assert chk is not None
        s = chk.s
        self._after_libxl()
        self.records += run.records
        self.counts[(LAYER_LIBXC, libxc.REC_TYPE_PAGE_DATA)] += run.records
        self.since_checkpoint += run.records
        s.pages += run.pages
        s.page_records += run.records
        if s.pfns_max is None or run.max_pfn > s.pfns_max:
            s.pfns_max = run.max_pfn

    def _update_page_filter(self) -> None:
        """Let the parser check PAGE_DATA in bulk once no ordering rule can
        fire on it: STATIC_DATA_END seen (or inferred), and for PV the p2m
        known.  PV pfns beyond max_pfn and p2m frame pfns stay one by one."""
        chk = self.libxc
        if chk is None:
            return
        s = chk.s
        if not s.static_data_end or s.guest is None:
            self.parser.page_filter = None
            return
        if s.guest == libxc.GUEST_PV:
            if not s.seen_p2m or s.max_pfn is None:
                self.parser.page_filter = None
                return
            self.parser.page_filter = PageFilter(s.max_pfn, s.p2m_frame_pfns)
        else:
            self.parser.page_filter = PageFilter()

    def _after_libxl(self) -> None:
        """A libxc record (or run) follows: COLO's CHECKPOINT_STATE must have
        come between CHECKPOINT_END and it."""
        st = self.parser.state
        if (st.colo and self.last_libxl == libxl.REC_TYPE_CHECKPOINT_END
                and self.since_checkpoint == 0 and st.checkpoint_ends):
            self.report("colo-checkpoint-state-missing",
                        "expected CHECKPOINT_STATE after CHECKPOINT_END in a COLO stream, found "
                        "a libxc record")
        self.last_libxl = None

    def _libxc_record(self, rec: Record) -> None:
        chk = self.libxc
        assert chk is not None
        st = self.parser.state
        self._after_libxl()
        rtype = rec.rtype
        body: Optional[bytes] = None
        known = rtype in libxc.RECORD_NAMES
        if known and rtype != libxc.REC_TYPE_PAGE_DATA:
            body = rec.body(libxc.REC_LENGTH_MAX)
        elif rtype == libxc.REC_TYPE_PAGE_DATA and rec.length < 8:
            body = rec.body()
        if rtype == libxc.REC_TYPE_END and st.checkpoints and self.since_checkpoint:
            self.report("end-discards-checkpoint",
                        f"END after {self.since_checkpoint} records of an unfinished checkpoint: "
                        "the restorer discards them and keeps the last complete checkpoint")
        chk.record(rtype, rec.length, body, rec.read)
        if self.facts is not None:
            self.facts.libxc_record(rec, body)
        if rtype == libxc.REC_TYPE_CHECKPOINT:
            self.since_checkpoint = 0
        else:
            self.since_checkpoint += 1
        if rtype == libxc.REC_TYPE_END:
            self.libxc_done = True
        elif rtype in _FILTER_TRIGGERS and self.src.seekable:
            self._update_page_filter()

    def _libxl_record(self, rec: Record) -> None:
        chk = self.libxl
        assert chk is not None
        st = self.parser.state
        rtype = rec.rtype
        rest: Any = ()
        if rtype == libxl.REC_TYPE_EMULATOR_CONTEXT:
            # emulator header, and the QEMU file magic and version (for info)
            body = rec.read(min(rec.length, 16))
        elif rtype == libxl.REC_TYPE_EMULATOR_XENSTORE_DATA:
            body = rec.read(min(rec.length, 8))
            rest = rec.chunks(XENSTORE_CHUNK)
        elif rtype in libxl.RECORD_NAMES:
            body = rec.read(min(rec.length, LIBXL_SMALL_PREFIX))
        else:
            body = None
        guest = self.libxc.s.guest if self.libxc else None
        # A CHECKPOINT_STATE is in its place right after CHECKPOINT_END (COLO);
        # the parser yields CHECKPOINT_END while still inside the checkpoint.
        colo = (rtype == libxl.REC_TYPE_CHECKPOINT_STATE
                and self.last_libxl == libxl.REC_TYPE_CHECKPOINT_END)
        chk.record(rtype, rec.length, body, guest=guest, in_checkpoint=st.in_checkpoint,
                   colo=colo, after_libxc=self.libxc_done or st.checkpoints > 0, rest=rest)
        if self.facts is not None:
            self.facts.libxl_record(rec)
        if rtype == libxl.REC_TYPE_EMULATOR_CONTEXT:
            self.emulator_context = True
            if (body is not None and len(body) >= 4 and not self.reported_traditional
                    and struct.unpack_from("<I", body)[0] == libxl.EMULATOR_QEMU_TRADITIONAL):
                self.reported_traditional = True
                self.report("qemu-traditional-state",
                            "the device-model state is qemu-traditional's (emulator id 1): "
                            "it restores only on a host that still builds that device model "
                            "(none from Xen 4.21, which removed it)")
        elif rtype == libxl.REC_TYPE_END and guest == "hvm" and not self.emulator_context:
            self.envelope.no_device_state()
        if colo and guest == "pv" and not self.reported_colo_pv:
            self.reported_colo_pv = True
            self.report("colo-pv",
                        "COLO streams must be HVM (libxl: \"COLO only supports HVM\"), found PV")
        self.last_libxl = rtype

    def _complete_checkpoints(self) -> int:
        st = self.parser.state
        if self.libxl is not None:
            return st.checkpoint_ends
        return st.checkpoints

    def _end_of_input(self, item: EndOfInput) -> None:
        n = self._complete_checkpoints()
        kind = "COLO" if self.parser.state.colo else "Remus"
        self.report("checkpoint-eof",
                    f"checkpointed ({kind}) stream ends at end of input after {n} complete "
                    f"checkpoint{'s' if n != 1 else ''}: a restore fails over to checkpoint {n}")

    def _ctx_from_error(self, e: FormatError) -> None:
        it = self.ctx.item
        layer = e.layer or (it.layer if it is not None else self.ctx.layer)
        what = e.what or (it.what if it is not None else self.ctx.what)
        self.ctx.set(e.offset, what, layer)
        self.ctx.index = e.index
        self.ctx.rtype = e.record_type

    def _truncated(self, e: TruncatedError) -> None:
        n = self._complete_checkpoints()
        self._ctx_from_error(e)
        if n >= 1 and not self.parser.state.finished:
            kind = "COLO" if self.parser.state.colo else "Remus"
            self.report("checkpoint-eof",
                        f"checkpointed ({kind}) stream ends inside checkpoint {n + 1} ({e.message}): "
                        f"what a dying primary leaves; a restore fails over to checkpoint {n}")
            self._finish(truncated=True)
        else:
            extra = ""
            if self.parser.state.checkpoints:
                extra = " before the first complete checkpoint"
            self.report(e.rule, e.message + extra)
            self.result.stopped = self.result.findings[-1]

    def _finish(self, truncated: bool = False) -> None:
        if self.legacy.stream is not None:
            return
        st = self.parser.state
        if not truncated:
            self.envelope.finish(self.src.pos)
        if self.libxc is not None:
            self.ctx.set(self.src.pos, "end of stream", LAYER_LIBXC)
            self.libxc.finish()
        if (not truncated and self.check_trailing and st.finished
                and self.src.remaining()):
            self.ctx.set(self.src.pos, "end of stream", st.layers[0] if st.layers else "")
            self.report("trailing-data",
                        f"{self.src.remaining()} bytes after the final END (the restorer never "
                        "reads them)")


def verify(src: Source, **kw: Any) -> Result:
    """Verify the image readable from ``src``; see :class:`Verifier`."""
    return Verifier(src, **kw).run()


__all__ = ["Result", "Verifier", "verify", "INFO"]
