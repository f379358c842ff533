"""Legacy (Xen <= 4.5) save images to streams current Xen restores: the
:class:`Converter`, a consumer of the pull parser.  It takes the items of a
legacy image one by one, checks the options given against what the stream
says, and hands each item to the piece that owns it: the envelope and its
configuration to :class:`~xenstream.consumers.convert.envelope.Envelope`, what
a checkpoint says (committed at its end, so that a Remus stream converts to
its last complete checkpoint) to
:class:`~xenstream.consumers.convert.state.CheckpointState`, compressed Remus
pages to :class:`~xenstream.consumers.convert.pagestate.CompressedCheckpoints`,
and everything that becomes libxc v3 (or v2) records, inside a libxl v2 stream
for xl, libvirt and xend images, to
:class:`~xenstream.consumers.convert.emit.V2Emitter`.
"""

from __future__ import annotations

from typing import Any, List, Optional

from xenstream.consumers.convert.emit import V2Emitter
from xenstream.consumers.convert.envelope import Envelope
from xenstream.consumers.convert.options import (
    Context,
    ConversionError,
    ConvertOptions,
    ConvertResult,
    Log,
)
from xenstream.consumers.convert.pagestate import CompressedCheckpoints
from xenstream.consumers.convert.sink import Sink
from xenstream.consumers.convert.state import CheckpointState
from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import legacy
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
from xenstream.reading.legacy import LegacyOptions
from xenstream.reading.parser import EnvelopeData, Header, Legacy, Mismatch, Parser, XlConfig


class Converter:
    """Converts the legacy image read from ``src`` into ``sink`` (:meth:`run`)."""

    def __init__(self, src: Source, sink: Sink, opts: Optional[ConvertOptions] = None,
                 log: Optional[Log] = None) -> None:
        self.ctx = ctx = Context(src, sink, opts or ConvertOptions(), log)
        self.src = src
        self.out = sink
        self.opts = ctx.opts
        self.res = ctx.res
        self.info, self.warn, self._hint = ctx.info, ctx.warn, ctx.hint  # for short
        self.env = Envelope(ctx)
        self.hdr: Optional[LHeader] = None
        self.guess: Optional[legacy.LegacyGuess] = None
        self.cp = CheckpointState(ctx)
        self.compressed = CompressedCheckpoints(ctx, self.cp.pages_sink)
        self.emit = V2Emitter(ctx, self.env, self.cp)
        self.parser: Parser

    # -- main ---------------------------------------------------------------------------

    def run(self) -> ConvertResult:
        p = Parser(self.src)
        p.legacy_options = LegacyOptions(
            width=self.opts.width, guest=self.opts.guest,
            qemu="skip" if self.opts.skip_qemu else "auto")
        self.parser = p
        try:
            try:
                for item in p.items():
                    self._item(item)
            except TruncatedError as e:
                # the converter itself ran out of input while moving a later
                # checkpoint's payload (a pipe): the same failover rule
                if self.cp.checkpoint < 2:
                    raise
                self._item(LTruncated(e.offset, self.cp.checkpoint, e))
            except FormatError as e:
                g = self.guess
                if (g is not None and not g.certain and g.guest == "hvm"
                        and self.parser.legacy_options.guest != "pv"):
                    raise ConversionError(e.offset, f"{e.message} (the stream's first words also "
                                          "fit a PV stream without extended info, pre-Xen 3.1"
                                          + self._hint(": try --guest-type pv") + ")") from None
                raise
            if self.hdr is None:
                raise ConversionError(0, "expected a legacy stream, found none")
            self.emit.finish()
        finally:
            self.cp.close()
            self.compressed.close()
        self.res.bytes_written = self.out.pos
        return self.res

    def _item(self, item: Any) -> None:
        if type(item) is LBatchRun:  # by far the most frequent
            self.emit.batch_run(item)
        elif type(item) is LBatch:
            self._batch(item)
        elif isinstance(item, Header):
            self.env.header(item)
        elif isinstance(item, XlConfig):
            self.env.xl_cfg = item
        elif isinstance(item, EnvelopeData):
            self.env.data(item)
        elif isinstance(item, Legacy):
            self.env.legacy_payload()
            self._legacy_marker(item)
        elif isinstance(item, Mismatch) and item.rule == "xl-streamv2-legacy":
            self.env.contradiction(item.offset, item.rule, item.message)
        elif isinstance(item, LHeader):
            self._start(item)
        elif isinstance(item, LBatch):
            self._batch(item)
        elif isinstance(item, LChunk):
            self._chunk(item)
        elif isinstance(item, LBodyEnd):
            self._body_end(item)
        elif isinstance(item, (LHvmTail, LPvTail)):
            self.cp.c_tail = item
        elif isinstance(item, LQemu):
            self.cp.qemu(item)
        elif isinstance(item, LCheckpointEnd):
            self._checkpoint_end(item)
        elif isinstance(item, LTruncated):
            self.warn(f"{item.describe()}; converted the state of checkpoint "
                      f"{item.number - 1}, as a failover restore would")
            self.cp.discard()
        else:
            kind = getattr(item, "kind", type(item).__name__)
            raise ConversionError(getattr(item, "offset", 0),
                                  f"expected a legacy stream, found {kind}: this image is "
                                  "already in the v2 format (nothing to convert)")

    def _legacy_marker(self, item: Legacy) -> None:
        o = self.opts
        if o.xl is True and self.env.kind != "xl":
            raise ConversionError(item.offset, "expected an xl header (-x/--xl given), found "
                                  "none: drop -x for a bare legacy stream")
        if o.xl is False and self.env.kind == "xl":
            raise ConversionError(0, "found an xl save-file header: pass -x/--xl to convert an "
                                  "xl file")
        g = self.guess = item.guess
        lo = self.parser.legacy_options
        if g is None:
            width = o.width or o.width_hint
            if width is None or o.guest is None:
                raise ConversionError(item.offset, "expected a legacy stream, found bytes that "
                                      "match no legacy layout" + self._hint(
                                          " (give --width and --guest-type to force one)"))
            lo.width, lo.guest = width, o.guest
            self.warn(f"the stream's layout is not recognised: reading it as a "
                      f"{width * 8}-bit-toolstack {o.guest.upper()} stream as given")
            return
        cfg_guest = self.env.config_guest()
        if o.guest is None and cfg_guest == "pv" and g.guest == "hvm" and not g.certain:
            lo.guest = "pv"
            self.info("reading the stream as PV without extended info (pre-3.1 layout), as the "
                      "image's configuration says")
        elif o.guest == "pv" and g.guest == "hvm" and not g.certain:
            # a PV stream without extended info (pre-3.1) starts like an HVM one
            lo.guest = "pv"
            self.info("reading the stream as PV without extended info (pre-3.1 layout), "
                      "as the guest type given says")
        elif o.guest and o.guest != g.guest:
            if not o.force:
                raise ConversionError(item.offset, f"the guest type given ({o.guest}) contradicts "
                                      f"the stream, which is {g.guest.upper()}" + self._hint(
                                          " (use --force to convert it as given)"))
            self.warn(f"converting as {o.guest.upper()} as forced; the stream looks "
                      f"{g.guest.upper()}")
        if o.width and o.width != g.width:
            if not o.force:
                raise ConversionError(item.offset, f"the width given ({o.width * 8}) contradicts "
                                      f"the stream, which was saved by a {g.width * 8}-bit "
                                      "toolstack" + self._hint(
                                          " (use --force to convert it as given)"))
            self.warn(f"converting with a {o.width * 8}-bit width as forced; the stream looks "
                      f"{g.width * 8}-bit")
        if o.width_hint and o.width_hint != g.width and not o.width:
            self.warn(f"--width {o.width_hint * 8} overridden: the stream was saved by a "
                      f"{g.width * 8}-bit toolstack")

    # -- the legacy header -------------------------------------------------------------------

    def _start(self, h: LHeader) -> None:
        self.hdr = h
        lp = self.parser.legacy_parser
        if lp is not None:
            # plain batches come in bulk: large payloads are moved by offset
            # (seekable input), small ones with their bytes in the parser's
            # window (unless nothing is written: a dry run only skips them)
            lp.bulk = self.src.seekable
            lp.bulk_data = self.out.fd is not None or not self.src.seekable
        self.res.width = h.width * 8
        self.res.guest = h.guest
        self.emit.start(h)
        self.info(f"legacy {h.guest.upper()} stream from a {h.width * 8}-bit toolstack, "
                  f"p2m_size {h.p2m_size:#x}" + (f", {h.guest_width * 8}-bit guest"
                                                 if h.guest == "pv" else ""))

    # -- body ---------------------------------------------------------------------------------

    def _batch(self, b: LBatch) -> None:
        hdr = self.hdr
        assert hdr is not None
        if b.notab and not (self.parser.legacy_parser is not None
                            and self.parser.legacy_parser.compressing):
            self.emit.page_data(b, b.entries, notab=True)  # the hot path: plain pfns
            return
        keep: List[int] = []
        for e in b.entries:
            if e == legacy.XTAB_NO_PFN:
                continue
            t = (e & legacy.PFINFO_TYPE_MASK) >> legacy.PFINFO_TYPE_SHIFT
            if 5 <= t <= 8:
                raise ConversionError(b.offset, f"expected page types 0-4 and 9-15, found type "
                                      f"{t:#x} for pfn {e & legacy.PFINFO_PFN_MASK:#x}: Xen's v2 "
                                      "restore rejects it")
            keep.append(e)
        if self.parser.legacy_parser is not None and self.parser.legacy_parser.compressing:
            # compressed checkpoint: data arrives later in COMPRESSED_DATA chunks
            self.compressed.batch(keep)
            return
        self.emit.page_data(b, keep)

    def _chunk(self, c: LChunk) -> None:
        cid = c.cid
        if cid == legacy.CHUNK_ENABLE_VERIFY_MODE:
            self.emit.verify()
        elif cid in legacy.HVM_PARAM_CHUNKS:
            assert c.value is not None
            self.cp.c_params[legacy.HVM_PARAM_CHUNKS[cid]] = c.value
        elif cid == legacy.CHUNK_TSC_INFO:
            assert c.data is not None
            self.emit.tsc_info(c.data)
        elif cid in (legacy.CHUNK_TMEM, legacy.CHUNK_TMEM_EXTRA):
            if not self.opts.drop_tmem:
                raise ConversionError(c.offset, "the guest used tmem (transcendent memory), which "
                                      "left Xen in 4.13: no current Xen can restore its tmem "
                                      "pages" + self._hint(" (--drop-tmem converts without them)"))
            self.warn(f"dropped the guest's tmem state ({c.name}, {c.value or 0} pages): the "
                      "guest loses those pages")
        elif cid == legacy.CHUNK_TOOLSTACK:
            if c.data is None:
                raise ConversionError(c.offset, f"a toolstack record of {c.length} bytes: more "
                                      f"than the {legacy.TOOLSTACK_MAX} xenstream holds to "
                                      "convert it")
            hdr = self.hdr
            assert hdr is not None
            if hdr.guest == "hvm":
                try:
                    self.cp.c_physmap = legacy.physmap_xenstore(legacy.parse_physmap(c.data, hdr.width))
                except ValueError as e:
                    raise ConversionError(c.offset, f"toolstack record: {e}") from None
        elif cid == legacy.CHUNK_COMPRESSED_DATA:
            self.compressed.data(c)
        # VCPU_INFO, LAST_CHECKPOINT, ENABLE_COMPRESSION: the parser keeps them

    def _body_end(self, e: LBodyEnd) -> None:
        lp = self.parser.legacy_parser
        if e.checkpoint == 1 and lp is not None and lp.compression_enabled:
            self.compressed.enable()

    def _checkpoint_end(self, e: LCheckpointEnd) -> None:
        if e.number > 1:
            self.compressed.end_checkpoint()
        self.cp.end(e)
