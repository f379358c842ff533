"""v2 emission: :class:`V2Emitter` writes the converted stream, the envelope
(through :class:`~xenstream.consumers.convert.envelope.Envelope`), the libxl
and libxc headers, the PAGE_DATA records of the first checkpoint (later ones
go to the checkpoint's staging file), the PV or HVM tail, the libxl tail with
the device-model records, and END.  Every record is checked by the libxc and
libxl layer checkers as it is written, except PAGE_DATA on the hot path, whose
few rules are checked by hand; a broken rule stops the conversion.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Dict, List, Optional, Sequence

from xenstream.consumers.convert.envelope import Envelope
from xenstream.consumers.convert.options import CONVERTER_VERSION, Context, ConversionError
from xenstream.consumers.convert.state import CheckpointState
from xenstream.consumers.verify_releases import ReleaseFacts
from xenstream.findings import ERROR
from xenstream.formats import legacy, libxc, libxl
from xenstream.formats.legacy import LBatch, LBatchRun, LHeader, LHvmTail, LPvTail
from xenstream.formats.libxc import PAGE_SIZE as PAGE
from xenstream.formats.libxc import LibxcChecker
from xenstream.formats.libxl import LibxlChecker
from xenstream.rules import ANY_RELEASE, HEAD, refusal_note, refused, rule
from xenstream.writers.v2 import LibxcWriter, LibxlWriter

_PAGE_DATA_HEAD = struct.Struct("<IIII")
_PFN_STRUCTS: Dict[int, struct.Struct] = {}


def _pfn_struct(count: int) -> struct.Struct:
    st = _PFN_STRUCTS.get(count)
    if st is None:
        st = _PFN_STRUCTS[count] = struct.Struct(f"<{count}Q")
    return st


class V2Emitter:
    """The output side of a conversion: ``start`` writes everything up to the
    pages, ``page_data`` and ``batch_run`` the pages, ``finish`` the rest."""

    def __init__(self, ctx: Context, env: Envelope, cp: CheckpointState) -> None:
        self.src = ctx.src
        self.out = ctx.out
        self.opts = ctx.opts
        self.res = ctx.res
        self.warn = ctx.warn
        self.hint = ctx.hint
        self.env = env
        self.cp = cp
        self._pages_sink = cp.pages_sink  # this checkpoint's: the output or its staging
        self.fmt = "libxc"
        self.hdr: Optional[LHeader] = None
        self.libxc_checker: Optional[LibxcChecker] = None
        self.libxl_checker: Optional[LibxlChecker] = None
        self.findings: List[str] = []  # the refusals of the records written so far
        self.verify_written = False
        self.tsc_written = False
        #: a release target: what only some releases restore, judged for it
        self.release_facts = (ReleaseFacts() if ctx.opts.target not in (HEAD, ANY_RELEASE)
                              else None)
        self._release_reported: List[str] = []
        self.w: LibxcWriter
        self.libxl_w: LibxlWriter

    # -- records, each checked as it is written ---------------------------------------------

    def _report(self, rule_id: str, message: str, **_: Any) -> None:
        """A finding of a layer checker about the record just written, judged
        as the target release's restore would judge it (:mod:`xenstream.rules`)."""
        r = rule(rule_id)
        if r.severity != ERROR:
            return  # what the verifier reports as a warning is written as it is
        since = refusal_note(r)
        target = self.opts.target
        if target != HEAD and not refused(r, target):
            # ANY_RELEASE: some release restores it; a release: that one does
            where = "" if target in (ANY_RELEASE, HEAD) else f"; Xen {target} restores it"
            self.warn(f"the converted stream breaks rule {rule_id}: {message}{where}{since}")
            self.res.release_dependent.append(rule_id)
        elif self.opts.force:
            self.warn(f"the converted stream breaks rule {rule_id}: {message}{since}; written "
                      "as forced")
            self.res.forced.append(rule_id)
        else:
            self.findings.append(f"the converted stream would break rule {rule_id}: "
                                 f"{message}{since}")

    def _libxc_record(self, w: LibxcWriter, rtype: int, body: bytes) -> None:
        w.record(rtype, body)
        self.res.records += 1
        if self.libxc_checker is not None:
            view = memoryview(body)
            pos = [0]

            def read_prefix(n: int) -> bytes:
                data = bytes(view[pos[0] : pos[0] + n])
                pos[0] += n
                return data

            self.libxc_checker.record(rtype, len(body),
                                      None if rtype == libxc.REC_TYPE_PAGE_DATA else body,
                                      read_prefix)
            if self.release_facts is not None:
                self._judge_release(rtype, body)
            self._check_findings()

    def _judge_release(self, rtype: int, body: bytes) -> None:
        """What the target release refuses though HEAD restores it (a record
        length, an HVM entry size, an MSR or HVM param index it lacks)."""
        facts = self.release_facts
        assert facts is not None
        facts.libxc_written(rtype, body, self.src.pos, self.res.records)
        for r, fact in facts.refused_at(self.opts.target):
            if r.id not in self._release_reported:
                self._release_reported.append(r.id)
                self._report(r.id, f"found {fact.message}: {r.description}")

    def _check_findings(self) -> None:
        if self.findings:
            raise ConversionError(self.src.pos, self.findings[0]
                                  + self.hint(" (--force writes it anyway)"))

    # -- legacy header -> v2 headers --------------------------------------------------------

    def start(self, h: LHeader) -> None:
        """The envelope, the libxl header and LIBXC_CONTEXT (libxl output), the
        libxc image and domain headers and the static records."""
        self.hdr = h
        o = self.opts
        if o.out_format:
            self.fmt = o.out_format
        else:
            self.fmt = "libxl" if self.env.kind in ("xl", "libvirt", "xend") else "libxc"
        if (o.keep_envelope and not o.upstream_xl and self.env.kind in ("xl", "libvirt", "xend")
                and self.fmt != "libxl"):
            raise ConversionError(h.offset, f"a {self.env.kind} image needs a libxl stream "
                                  "inside; --format libxc applies to bare legacy streams only")
        self.env.write(self.fmt)
        if self.fmt == "libxl":
            lw = LibxlWriter(self.out)
            lw.header(options=libxl.HDR_OPT_LEGACY)
            self.libxl_w = lw
            self.libxl_checker = LibxlChecker(self._report)
            lw.libxc_context()
            self.libxl_checker.record(libxl.REC_TYPE_LIBXC_CONTEXT, 0, b"", guest=h.guest,
                                      in_checkpoint=False, colo=False, after_libxc=False)
        w = LibxcWriter(self.out, version=o.stream_version)
        self.w = w
        self.libxc_checker = LibxcChecker(self._report)
        ih = dict(marker=libxc.IHDR_MARKER, id=libxc.IHDR_ID, version=o.stream_version,
                  options=0, _res1=0, _res2=0)
        w.image_header()
        self.libxc_checker.image_header(ih)
        w.domain_header(h.guest, xen_major=0, xen_minor=CONVERTER_VERSION)
        self.libxc_checker.domain_header(dict(
            type=libxc.DHDR_TYPE_X86_PV if h.guest == "pv" else libxc.DHDR_TYPE_X86_HVM,
            page_shift=12, _res1=0, xen_major=0, xen_minor=CONVERTER_VERSION))
        if h.guest == "pv":
            self._libxc_record(w, libxc.REC_TYPE_X86_PV_INFO, libxc.X86_PV_INFO.pack(
                "<", guest_width=h.guest_width, pt_levels=h.pt_levels, _res0=0, _res1=0))
        if o.stream_version >= 3:
            self._libxc_record(w, libxc.REC_TYPE_STATIC_DATA_END, b"")
        if h.guest == "pv":
            frames = h.p2m_frames
            body = libxc.X86_PV_P2M_FRAMES_HDR.pack("<", start_pfn=0, end_pfn=h.p2m_size - 1)
            body += struct.pack(f"<{len(frames)}Q", *frames)
            self._libxc_record(w, libxc.REC_TYPE_X86_PV_P2M_FRAMES, body)

    def verify(self) -> None:
        if not self.verify_written:
            self._libxc_record(self.w, libxc.REC_TYPE_VERIFY, b"")
            self.verify_written = True

    def tsc_info(self, data: bytes) -> None:
        mode, nsec, khz, inc = struct.unpack("<IQII", data)
        if not self.tsc_written:
            self._libxc_record(self.w, libxc.REC_TYPE_X86_TSC_INFO, libxc.X86_TSC_INFO.pack(
                "<", mode=mode, khz=khz, nsec=nsec, incarnation=inc, _res1=0))
            self.tsc_written = True

    # -- pages ----------------------------------------------------------------------------

    def batch_run(self, run: LBatchRun) -> None:
        """Plain-pfn batches the parser found in bulk: a PAGE_DATA record each
        (type NOTAB: the v2 words are the pfns).  With the run's bytes in the
        parser's window, the records go out with one ``writev``: headers and
        slices of the window, the entries too when they are 8 bytes wide (then
        they are the v2 words as they are); else the page data moves by offset,
        in the kernel."""
        sink = self._pages_sink()
        win = run.window
        if win is not None:
            ws = run.window_start
            head = _PAGE_DATA_HEAD.pack
            parts: List[Any] = []
            add = parts.append
            if run.width == 8:
                for data_offset, entries in run.batches:
                    count = len(entries)
                    add(head(libxc.REC_TYPE_PAGE_DATA, 8 + 8 * count + PAGE * count, count, 0))
                    a = data_offset - ws
                    add(win[a - 8 * count : a + PAGE * count])
            else:
                for data_offset, entries in run.batches:
                    count = len(entries)
                    add(head(libxc.REC_TYPE_PAGE_DATA, 8 + 8 * count + PAGE * count, count, 0)
                        + _pfn_struct(count).pack(*entries))
                    a = data_offset - ws
                    add(win[a : a + PAGE * count])
            sink.writev(parts)
        else:
            fd = self.src.fd
            for data_offset, entries in run.batches:
                count = len(entries)
                sink.write(_PAGE_DATA_HEAD.pack(libxc.REC_TYPE_PAGE_DATA,
                                                8 + 8 * count + PAGE * count, count, 0)
                           + _pfn_struct(count).pack(*entries))
                sink.copy_at(fd, data_offset, PAGE * count)
        n = len(run.batches)
        self.res.pages += run.pages
        self.res.records += n
        if self.opts.progress is not None:
            self.opts.progress(run.end)

    def page_data(self, b: LBatch, keep: Sequence[int], notab: bool = False) -> None:
        if not keep:
            return
        # v2 words: the type moves from bits 28-31 to 60-63 (a plain pfn is unchanged)
        words = keep if notab else [
            ((e & legacy.PFINFO_TYPE_MASK) << 32) | (e & legacy.PFINFO_PFN_MASK) for e in keep]
        n_data = b.n_data
        count = len(words)
        length = 8 + 8 * count + PAGE * n_data
        # The record's rules, checked here rather than by the generic checker
        # (this is the hot path): types were checked by Converter._batch, the
        # count is 1..1024, the length follows from the types; what is left is
        # the PV pfn range (the p2m written from p2m_size) and the legacy pfn field.
        hdr = self.hdr
        assert hdr is not None
        top = max(keep) if notab else max(e & legacy.PFINFO_PFN_MASK for e in keep)
        if hdr.guest == "pv" and top >= hdr.p2m_size:
            raise ConversionError(b.offset, f"expected pfns below p2m_size {hdr.p2m_size:#x}, "
                                  f"found {top:#x}")
        sink = self._pages_sink()
        # record header (type, length), PAGE_DATA header (count, reserved), pfn words
        sink.write(_PAGE_DATA_HEAD.pack(libxc.REC_TYPE_PAGE_DATA, length, count, 0)
                   + _pfn_struct(count).pack(*words))
        sink.copy_from(self.src, PAGE * n_data, b.what)
        b._left = 0
        self.res.pages += n_data
        self.res.records += 1
        if self.opts.progress is not None and self.res.records & 63 == 0:
            self.opts.progress(self.src.pos)

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> None:
        hdr = self.hdr
        assert hdr is not None
        w = self.w
        tail = self.cp.tail
        if tail is None:
            raise ConversionError(self.src.pos, "the stream ended before its first checkpoint "
                                  "was complete")
        if isinstance(tail, LPvTail):
            self._pv_tail(tail)
        else:
            self._hvm_tail(tail)
        self._libxc_record(w, libxc.REC_TYPE_END, b"")
        assert self.libxc_checker is not None
        self.libxc_checker.finish()
        self._check_findings()
        if self.cp.qemu_staged and self.env.device_model() == "traditional":
            self.warn("the device-model state is qemu-traditional's (as the image's "
                      f"{self.env.kind} configuration says): Xen >= 4.21 no longer runs that "
                      "device model")
        if self.fmt == "libxl":
            self._libxl_tail()
        elif self.cp.qemu_staged and self.cp.qemu_stage is not None:
            # libxc output: keep the qemu record after the stream, as upstream does
            self.out.write(self.cp.qemu_header)
            self.cp.qemu_stage.flush_to(self.out)
        self.out.flush()
        self.res.envelope = self.env.kind
        self.res.output = self._describe()

    def _pv_tail(self, t: LPvTail) -> None:
        w = self.w
        hdr = self.hdr
        assert hdr is not None
        # the unmapped pfns, kept as XTAB entries (the v2 restore ignores them)
        pfns = [p for p in t.unmapped]
        for i in range(0, len(pfns), 1024):
            chunk = pfns[i : i + 1024]
            body = libxc.PAGE_DATA_HDR.pack("<", count=len(chunk), _res1=0)
            body += struct.pack(f"<{len(chunk)}Q", *[(libxc.PT_XTAB << 60) | p for p in chunk])
            self._libxc_record(w, libxc.REC_TYPE_PAGE_DATA, body)
        for v in t.vcpus:
            hdr8 = libxc.X86_PV_VCPU_HDR.pack("<", vcpu_id=v.vcpu_id, _res1=0)
            self._libxc_record(w, libxc.REC_TYPE_X86_PV_VCPU_BASIC, hdr8 + v.context)
            if v.extended is not None:
                self._libxc_record(w, libxc.REC_TYPE_X86_PV_VCPU_EXTENDED, hdr8 + v.extended)
            if v.xsave is not None and v.xsave_mask:
                self._libxc_record(w, libxc.REC_TYPE_X86_PV_VCPU_XSAVE, hdr8 + v.xsave)
        self._libxc_record(w, libxc.REC_TYPE_SHARED_INFO, t.shared_info)

    def _hvm_tail(self, t: LHvmTail) -> None:
        w = self.w
        params = dict(self.cp.params)
        ioreq, bufioreq, store = t.magic_pfns
        for idx, val in ((5, ioreq), (6, bufioreq), (1, store)):
            params[idx] = val
        # a zero value would make the v2 restore clear guest page 0 (IOREQ) or
        # set a meaningless param: leave unset values out
        items = sorted((k, v) for k, v in params.items() if v)
        if items:
            body = libxc.HVM_PARAMS_HDR.pack("<", count=len(items), _res1=0)
            body += b"".join(libxc.HVM_PARAMS_ENTRY.pack("<", index=k, value=v) for k, v in items)
            self._libxc_record(w, libxc.REC_TYPE_HVM_PARAMS, body)
        self._libxc_record(w, libxc.REC_TYPE_HVM_CONTEXT, t.context)

    def _libxl_tail(self) -> None:
        lw = self.libxl_w
        chk = self.libxl_checker
        assert chk is not None
        hdr = self.hdr
        assert hdr is not None
        if hdr.guest == "hvm":
            if self.cp.physmap:
                raw = b"".join(k + b"\0" + v + b"\0" for k, v in self.cp.physmap)
                body = libxl.EMULATOR_HDR.pack("<", id=libxl.EMULATOR_UNKNOWN, index=0) + raw
                lw.record(libxl.REC_TYPE_EMULATOR_XENSTORE_DATA, body)
                chk.record(libxl.REC_TYPE_EMULATOR_XENSTORE_DATA, len(body), body[:8],
                           guest="hvm", in_checkpoint=False, colo=False, after_libxc=True,
                           rest=[body[8:]])
            if self.cp.qemu_staged and self.cp.qemu_stage is not None:
                n = self.cp.qemu_stage.sink.pos
                ehdr = libxl.EMULATOR_HDR.pack("<", id=libxl.EMULATOR_UNKNOWN, index=0)
                self.out.write(struct.pack("<II", libxl.REC_TYPE_EMULATOR_CONTEXT, 8 + n))
                self.out.write(ehdr)
                self.cp.qemu_stage.sink.flush()
                head = os.pread(self.cp.qemu_stage.fd, 64, 0)
                self.cp.qemu_stage.flush_to(self.out)
                self.out.write(b"\0" * ((-(8 + n)) & 7))
                chk.record(libxl.REC_TYPE_EMULATOR_CONTEXT, 8 + n, ehdr + head[:4],
                           guest="hvm", in_checkpoint=False, colo=False, after_libxc=True)
            elif self.env.device_model_runs():
                # --skip-qemu: the image's configuration runs a device model,
                # which libxl starts from the state this stream lacks
                self._report("libxl-emulator-missing", "the device-model record was left "
                             f"unread (--skip-qemu) and the {self.env.kind} configuration "
                             "runs a device model: libxl starts it with -incoming from that "
                             "state")
        elif self.cp.qemu_staged:
            self.warn("a device-model record after a PV stream was dropped")
        lw.end()
        chk.record(libxl.REC_TYPE_END, 0, b"", guest=hdr.guest, in_checkpoint=False,
                   colo=False, after_libxc=True)
        self._check_findings()

    def _describe(self) -> str:
        inner = f"libxc v{self.opts.stream_version}"
        if self.fmt == "libxl":
            inner = f"libxl v2 -> {inner}"
        env = {"xl": "xl (STREAMv2) -> ", "libvirt": "libvirt (v2, XML) -> ",
               "xend": "xl (STREAMv2, no config) -> "}.get(self.env.kind, "")
        if not self.opts.keep_envelope:
            env = ""
        return env + inner
