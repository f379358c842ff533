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

from xenstream import io
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
    #: runs of plain batches then come as one LBatchRun item, their pfn lists
    #: read with one exact ``pread`` per batch and their data left in the input
    bulk = False
    #: set by a consumer that moves page data (the converter): runs of plain
    #: batches whose payloads are below ``io.KERNEL_COPY_MIN`` come as LBatchRun
    #: items with their bytes in a reusable window (any input); larger
    #: payloads as LBatchRun items without a window (seekable input) or as
    #: LBatch items, for the consumer to move in the kernel
    bulk_data = False
    _window: Optional[bytearray] = None
    _no_run_at = -1  # a batch the window found typed: for the ordinary path
    _pipe_window = 64 * 1024  # the part of the window a pipe run uses
    _win_start = 0  # seekable input: the window holds the input's bytes from here ...
    _win_len = 0  # ... this many

    def _plain_run(self, at: int, n: int, number: int) -> Optional[LBatchRun]:
        """A run of plain batches from the batch at ``at`` (whose count ``n``
        is read), or None: the ordinary path reads the batch."""
        if not 0 < n <= MAX_BATCH_SIZE or at == self._no_run_at:
            return None  # (a bad count is for the ordinary path to report)
        small = n * PAGE_SIZE < io.KERNEL_COPY_MIN
        if self.bulk_data and small:
            if self.src.seekable:
                return self._window_run(at, number)
            return self._pipe_run(at, n, number)
        if self.src.seekable:
            return self._header_run(at, n, number)
        return None

    def _limits(self) -> Tuple[int, str, int]:
        hdr = self.header
        assert hdr is not None
        return hdr.width, "Q" if hdr.width == 8 else "I", min(hdr.p2m_size, PFINFO_PFN_MASK + 1)

    def _window_buf(self, size: int) -> memoryview:
        """The reusable window, at least ``size`` bytes (grown, never shrunk)."""
        if self._window is None or len(self._window) < size:
            self._window = bytearray(size)
        return memoryview(self._window)

    def _window_run(self, at: int, number: int) -> Optional[LBatchRun]:
        """Seekable input: the small plain batches from ``at`` that lie wholly
        in the window, which is read with one ``pread`` (from ``at``) unless it
        already holds them: a run that stopped at a typed batch goes on in the
        same window after the ordinary path has read that one."""
        src = self.src
        size = src.size
        assert size is not None
        w, fmt, limit = self._limits()
        small = io.KERNEL_COPY_MIN
        unpack_from = struct.unpack_from
        fresh = not (at - self._win_start >= 0 and at - self._win_start + 4 <= self._win_len)
        while True:
            if fresh:
                want = min(io.DATA_WINDOW, size - at)
                mv = self._window_buf(want)
                got = 0
                while got < want:
                    k = os.preadv(src.fd, [mv[got:want]], at + got)
                    if k <= 0:
                        break
                    got += k
                src.bytes_read += got
                self._win_start, self._win_len = at, got
            buf = self._window
            assert buf is not None
            mv = memoryview(buf)
            ws, got = self._win_start, self._win_len
            at_eof = ws + got == size
            batches: List[Tuple[int, Tuple[int, ...]]] = []
            pages = 0
            p = at - ws
            while p + 4 <= got:
                count = unpack_from("<i", buf, p)[0]
                if not 0 < count <= MAX_BATCH_SIZE or count * PAGE_SIZE >= small:
                    break
                data = p + 4 + count * w
                nxt = data + count * PAGE_SIZE
                if nxt > got:
                    if at_eof or (fresh and not batches):
                        self._no_run_at = ws + p  # the input ends inside it, or it is too big
                    break  # else it continues past the window: the next run reads it
                entries = unpack_from(f"<{count}{fmt}", buf, p + 4)
                if max(entries) >= limit:
                    self._no_run_at = ws + p  # types, XTAB entries, out-of-range pfns
                    break
                batches.append((ws + data, entries))
                pages += count
                p = nxt
            if batches or fresh or self._no_run_at == at:
                break
            fresh = True  # the rest of the window holds no whole batch: read on
        if not batches:
            return None
        end = ws + p
        src.advance_to(end, bytes(buf[p : min(got, p + io.BIG_WINDOW)]))
        return LBatchRun(at, batches, end, pages, number, mv[:p], ws, w)

    def _pipe_run(self, at: int, n: int, number: int) -> Optional[LBatchRun]:
        """Non-seekable input: read each small plain batch's entries and data,
        and the next count, with one exact read into the window: never a byte
        the stream has not declared (a batch is always followed by a count or
        a chunk id), so a parent sharing the descriptor reads on from the
        right place.  A batch found typed is given back (``Source.unread``)
        for the ordinary path, and so is a count that ends the run."""
        src = self.src
        w, fmt, limit = self._limits()
        first = n * (w + PAGE_SIZE) + 8
        if first > io.PIPE_DATA_WINDOW:
            return None
        # the part used grows with the runs, to PIPE_DATA_WINDOW when they fill it
        size = max(self._pipe_window, first)
        mv = self._window_buf(size)[:size]
        buf = self._window
        assert buf is not None
        small = io.KERNEL_COPY_MIN
        unpack_from = struct.unpack_from
        batches: List[Tuple[int, Tuple[int, ...]]] = []
        pages = 0
        struct.pack_into("<i", buf, 0, n)  # the first count (already consumed)
        fill = 4  # window bytes in use, the count at hand's included: byte i is at + i
        count = n
        while True:
            need = count * (w + PAGE_SIZE) + 4  # entries, data, the next count
            if fill + need > len(mv):
                self._pipe_window = min(io.PIPE_DATA_WINDOW, 2 * self._pipe_window)
                break  # (not for the first batch: checked above)
            got = src.readinto(mv[fill : fill + need])
            if got != need:
                raise self._pipe_truncated(at + fill, count, w, got)
            entries = unpack_from(f"<{count}{fmt}", buf, fill)
            if max(entries) >= limit:
                if not batches:  # the ordinary path reads on after the count
                    src.unread(bytes(mv[fill : fill + need]))
                    return None
                src.unread(bytes(mv[fill : fill + need]))
                self._no_run_at = at + fill - 4
                break
            batches.append((at + fill + count * w, entries))
            pages += count
            fill += need
            count = unpack_from("<i", buf, fill - 4)[0]
            if not 0 < count <= MAX_BATCH_SIZE or count * PAGE_SIZE >= small:
                break
        # the count at hand (window bytes fill-4..fill) is not in the run
        src.unread(bytes(mv[fill - 4 : fill]))
        fill -= 4
        return LBatchRun(at, batches, at + fill, pages, number, mv[:fill], at, w)

    @staticmethod
    def _pipe_truncated(at: int, count: int, w: int, got: int) -> TruncatedError:
        """The error for a batch whose entries start at ``at``, read short."""
        if got < count * w:
            return TruncatedError(at, count * w, got, what="legacy page batch (pfn types)",
                                  layer=LAYER)
        got -= count * w
        if got < count * PAGE_SIZE:
            return TruncatedError(at + count * w, count * PAGE_SIZE, got,
                                  what="legacy page batch", layer=LAYER)
        return TruncatedError(at + count * (w + PAGE_SIZE), 4, got - count * PAGE_SIZE,
                              what="legacy chunk", layer=LAYER)

    def _header_run(self, at: int, n: int, number: int) -> Optional[LBatchRun]:
        """Seekable input: batches of plain pfns from ``at``, each checked with
        one exact ``pread`` of its count and entries; the data stays in the
        input.  With ``bulk_data`` the run stops before a small batch (for
        the window)."""
        src = self.src
        size = src.size
        assert size is not None
        w, fmt, limit = self._limits()
        stop_small = self.bulk_data
        small = io.KERNEL_COPY_MIN
        fd = src.fd
        pos = at  # the count of the batch at hand
        count = n
        guess = max(n, 16)  # entries fetched along with the next count
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
                if not 0 < count <= MAX_BATCH_SIZE or (stop_small and count * PAGE_SIZE < small):
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
            guess = max(count, 16)
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
            if (n > 0 and (self.bulk or self.bulk_data) and not self.compressing
                    and not self.inp.pre):
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
