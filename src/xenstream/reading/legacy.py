"""The legacy (Xen <= 4.5) stream's pull parser.

:class:`LegacyParser` reads a legacy stream as the legacy C restorer
(``tools/libxc/xc_domain_restore.c`` before Xen 4.6) read it: header, bodies
of page batches and chunks, the PV or HVM tail, the device-model record, and
the repeated bodies and tails of a checkpointed (Remus) stream.  It yields the
typed items of :mod:`xenstream.formats.legacy` with their offsets; page
payloads stay in the input for the consumer to move, copy or skip.  Facts:
reference xen-formats.md §4.

The parser here reads the header, walks bodies and checkpoints, and reads
page batches (one by one, or in bulk as :class:`~xenstream.formats.legacy.LBatchRun`);
it owns a :class:`~xenstream.reading.legacy_input.LegacyInput` for its field
reads and hands chunks to :mod:`~xenstream.reading.legacy_chunks` and tails to
:mod:`~xenstream.reading.legacy_tails`.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator, List, Optional, Tuple

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats.legacy import (
    GUEST_WIDTH_OF_CTX,
    LAYER,
    MAX_BATCH_SIZE,
    NO_DATA_TYPES,
    P2M_SIZE_MAX,
    PAGE_SIZE,
    PFINFO_PFN_MASK,
    PFINFO_TYPE_MASK,
    PFINFO_TYPE_SHIFT,
    RUN_MAX_PAGES,
    LBatch,
    LBatchRun,
    LBodyEnd,
    LCheckpointEnd,
    LHeader,
    LItem,
    LTruncated,
    _Lazy,
    p2m_frame_entries,
    sniff,
)
from xenstream.io import Source
from xenstream.reading.legacy_chunks import read_chunk
from xenstream.reading.legacy_input import LegacyInput, legacy_error
from xenstream.reading.legacy_tails import read_hvm_tail, read_pv_tail, read_qemu


class LegacyOptions:
    """How to read a legacy stream.  ``width``/``guest``: forced values (None:
    from content).  ``qemu``: "auto" reads a device-model record after an HVM
    tail when bytes follow, "skip" never reads one (the caller reads it),
    "optional" reads one only when a known signature follows."""

    __slots__ = ("width", "guest", "qemu")

    def __init__(self, width: Optional[int] = None, guest: Optional[str] = None,
                 qemu: str = "auto") -> None:
        self.width = width
        self.guest = guest
        self.qemu = qemu


# -- the parser ------------------------------------------------------------------


class LegacyParser:
    """Pull parser for one legacy stream starting at ``src.pos - len(prefix)``;
    ``prefix`` holds bytes already consumed by detection."""

    def __init__(self, src: Source, *, prefix: bytes = b"",
                 options: Optional[LegacyOptions] = None, container: str = "bare") -> None:
        self.src = src
        self.opts = options or LegacyOptions()
        #: what the stream came in: "bare", "xl", "libvirt", "xend", "xenopsd"
        #: (a XenSavedDomain image) or "xenopsd-frame"; decides the qemu record
        self.container = container
        self.inp = LegacyInput(src, prefix)
        self._pre_at = src.pos - len(prefix)
        self.header: Optional[LHeader] = None
        self.checkpoints = 0  # complete ones
        self.last_checkpoint = False
        self.compressing = False  # in bodies after the first tail, when enabled
        self.compression_enabled = False
        self.vcpumap: List[int] = [0]
        self._pending_lazy: Optional[_Lazy] = None

    @property
    def pos(self) -> int:
        return self.inp.pos

    # -- items --------------------------------------------------------------------

    def items(self) -> Iterator[LItem]:
        hdr = self._header()
        yield hdr
        number = 1
        while True:
            try:
                ended = False
                for it in self._checkpoint(number):
                    yield it
                    if isinstance(it, _Lazy):
                        it.finish()
                    if isinstance(it, LCheckpointEnd):
                        ended = True
                if not ended:
                    return  # clean end of input before a later checkpoint
            except FormatError as e:
                # in a later checkpoint, the legacy restorer discards it and
                # restores the last complete one ("error buffering image
                # tail, finishing"; likewise for a batch): a dying primary
                if number == 1:
                    raise
                yield LTruncated(e.offset, number, e)
                return
            self.checkpoints = number
            if self.last_checkpoint or self._stop_after_tail:
                return
            number += 1

    _stop_after_tail = False
    #: set by a consumer that moves page data by offset (seekable input only):
    #: runs of plain batches then come as one LBatchRun item
    bulk = False

    def _plain_run(self, at: int, n: int, number: int) -> Optional[LBatchRun]:
        """Batches of plain pfns from ``at`` (whose count ``n`` is read), checked
        with one exact ``pread`` each; stops before any other chunk or batch,
        leaving it for the ordinary path."""
        src = self.src
        hdr = self.header
        assert hdr is not None
        size = src.size
        if size is None or not 0 < n <= MAX_BATCH_SIZE:
            return None  # (a bad count is for the ordinary path to report)
        w = hdr.width
        fmt = "Q" if w == 8 else "I"
        limit = min(hdr.p2m_size, PFINFO_PFN_MASK + 1)
        fd = src.fd
        pos = at  # the count of the batch at hand
        count = n
        guess = n  # entries fetched along with the next count: the last batch's
        batches: List[Tuple[int, Tuple[int, ...]]] = []
        pages = 0
        nread = 0
        raw = b""
        while True:
            if batches:  # read the next count (and, likely, all its entries)
                raw = os.pread(fd, 4 + guess * w, pos)
                nread += len(raw)
                if len(raw) < 4:
                    break
                count = struct.unpack_from("<i", raw)[0]
                if not 0 < count <= MAX_BATCH_SIZE:
                    break
                if len(raw) < 4 + count * w:
                    raw = os.pread(fd, 4 + count * w, pos)
                    nread += len(raw)
                    if len(raw) < 4 + count * w:
                        break
                entries = struct.unpack_from(f"<{count}{fmt}", raw, 4)
            else:
                raw = os.pread(fd, count * w, pos + 4)
                nread += len(raw)
                if len(raw) < count * w:
                    break
                entries = struct.unpack_from(f"<{count}{fmt}", raw)
            if max(entries) >= limit:
                break  # types, XTAB entries or out-of-range pfns: the ordinary path
            data = pos + 4 + count * w
            nxt = data + count * PAGE_SIZE
            if nxt > size:
                break
            batches.append((data, entries))
            pages += count
            guess = count
            pos = nxt
            if pages >= RUN_MAX_PAGES:
                break  # bounded memory: the next run goes on from here
        src.bytes_read += nread
        if not batches:
            return None
        end = batches[-1][0] + len(batches[-1][1]) * PAGE_SIZE
        src.advance_to(end)  # the ordinary path reads on from here
        return LBatchRun(at, batches, end, pages, number)

    def _header(self) -> LHeader:
        at = self.inp.pos
        head = self.inp.pre[:16]
        guess = sniff(head) if len(head) >= 8 else None
        width = self.opts.width or (guess.width if guess else 8)
        guest = self.opts.guest or (guess.guest if guess else "pv")
        hdr = LHeader(at, 0, width, guest)
        self.header = hdr
        self.inp.width = width
        hdr.p2m_size = self.inp.ulong("legacy header (p2m_size)")
        if not 0 < hdr.p2m_size <= P2M_SIZE_MAX:
            raise legacy_error(at, f"expected p2m_size 1..{P2M_SIZE_MAX - 1:#x}, found "
                               f"{hdr.p2m_size:#x}: no legacy saver wrote one", "legacy header",
                               "legacy-unrecognised")
        if guest == "hvm":
            return hdr
        # PV: extended info, or (pre-3.1) the first p2m frame list entry
        first = self.inp.ulong("legacy header (extended info)")
        ones = (1 << (8 * width)) - 1
        frames: List[int] = []
        if first == ones:
            hdr.ext_info = True
            tot = self.inp.u32("legacy extended info (tot_bytes)")
            left = tot
            while left > 0:
                bat = self.inp.pos
                if left < 8:
                    raise legacy_error(bat, f"expected an 8-byte block header within tot_bytes, "
                                       f"found {left} bytes left", "legacy extended info",
                                       "legacy-ext-info")
                bid = self.inp.read(4, "legacy extended info block")
                size = self.inp.u32("legacy extended info block")
                left -= 8
                if size > left:
                    raise legacy_error(bat, f"expected block {bid!r} of {size} bytes within "
                                       f"tot_bytes ({left} left)", "legacy extended info",
                                       "legacy-ext-info")
                hdr.blocks.append((bid, size))
                if bid == b"vcpu":
                    if size not in GUEST_WIDTH_OF_CTX:
                        raise legacy_error(bat, "expected a vcpu context of 5168 (64-bit) or "
                                           f"2800 (32-bit) bytes, found {size}",
                                           "legacy extended info (vcpu)", "legacy-vcpu-size")
                    hdr.vcpu0 = self.inp.read(size, "legacy extended info (vcpu)")
                    hdr.guest_width = GUEST_WIDTH_OF_CTX[size]
                    hdr.pt_levels = 4 if hdr.guest_width == 8 else 3
                elif bid == b"extv":
                    hdr.extv = True
                    self.inp.skip(size, "legacy extended info (extv)")
                elif bid == b"xcnt":
                    data = self.inp.read(size, "legacy extended info (xcnt)")
                    if size >= 4:
                        hdr.xcnt = struct.unpack_from("<I", data)[0]
                else:
                    self.inp.skip(size, f"legacy extended info ({bid!r})")
                left -= size
        else:
            frames.append(first)
        n = p2m_frame_entries(hdr.p2m_size, hdr.guest_width)
        if n - len(frames) > 0:
            frames.extend(self.inp.ulongs(n - len(frames), "legacy P2M frame list"))
        hdr.p2m_frames = frames
        return hdr

    def _checkpoint(self, number: int) -> Iterator[LItem]:
        hdr = self.header
        assert hdr is not None
        first = True
        while True:
            at = self.inp.pos
            if first and number > 1:
                raw = self.inp.read_upto(4)
                if not raw:
                    return  # clean EOF between checkpoints
                if len(raw) < 4:
                    raise TruncatedError(at, 4, len(raw), what="legacy chunk", layer=LAYER)
                n = struct.unpack("<i", raw)[0]
            else:
                n = self.inp.i32("legacy chunk")
            first = False
            if n == 0:
                yield LBodyEnd(at, number)
                break
            if n > 0 and self.bulk and not self.compressing and not self.inp.pre:
                run = self._plain_run(at, n, number)
                if run is not None:
                    yield run
                    continue
            if n > 0:
                yield self._batch(at, n, number)
            else:
                yield read_chunk(self.inp, self, at, n, number)
        # the tail
        if hdr.guest == "hvm":
            yield read_hvm_tail(self.inp, number)
            if self.opts.qemu == "skip":
                self._stop_after_tail = True
            else:
                q = read_qemu(self.inp, number, self.opts.qemu == "optional", self.container)
                if q is not None:
                    if q.qkind == "xend":
                        self._stop_after_tail = True  # its data runs to the end of the input
                    yield q
        else:
            yield read_pv_tail(self.inp, hdr, self.vcpumap, number)
        if self.compression_enabled:
            self.compressing = True
        yield LCheckpointEnd(self.inp.pos, number, self.last_checkpoint)

    def _batch(self, at: int, n: int, number: int) -> LBatch:
        hdr = self.header
        assert hdr is not None
        if n > MAX_BATCH_SIZE:
            raise legacy_error(at, f"expected a batch of at most {MAX_BATCH_SIZE} pages, found "
                               f"{n} (\"Max batch size exceeded\")", "legacy page batch",
                               "legacy-batch-size")
        entries = self.inp.ulongs(n, "legacy page batch (pfn types)")
        n_data = 0
        notab = max(entries) <= PFINFO_PFN_MASK  # the common case: no type bits at all
        if self.compressing:
            pass
        elif notab:
            n_data = n
        else:
            n_data = sum(1 for e in entries
                         if ((e & PFINFO_TYPE_MASK) >> PFINFO_TYPE_SHIFT) not in NO_DATA_TYPES)
        rem = self.src.remaining()
        if rem is not None and n_data * PAGE_SIZE > rem:
            raise TruncatedError(self.inp.pos, n_data * PAGE_SIZE, rem, what="legacy page batch",
                                 layer=LAYER)
        b = LBatch(at, n, entries, n_data, number)
        b.notab = notab
        b._init_payload(self.src, n_data * PAGE_SIZE)
        return b
