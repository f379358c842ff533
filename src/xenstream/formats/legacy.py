"""The legacy (Xen <= 4.5) libxc save format: recognition and the pull parser.

A legacy image has no header and no version: it starts with ``p2m_size`` as
the saving toolstack's ``unsigned long``; a PV image follows it with the
extended-info signature ``~0UL``, an HVM image with its first chunk (an
``int``: a page count 1..1024 or a chunk id -1..-20).  This module tells a
legacy image from garbage using the first 16 bytes (the v2 spec's "zero bits
in the first 8 octets" rule plus these shapes).

:class:`LegacyParser` reads a legacy stream as the legacy C restorer
(``tools/libxc/xc_domain_restore.c`` before Xen 4.6) read it: header, bodies
of page batches and chunks, the PV or HVM tail, the device-model record, and
the repeated bodies and tails of a checkpointed (Remus) stream.  It yields
typed items with their offsets; page payloads stay in the input for the
consumer to move, copy or skip.  Facts: reference xen-formats.md §4.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from xenstream.errors import FormatError, TruncatedError
from xenstream.io import Source

P2M_SIZE_MAX = 0x10000000  # the legacy saver refuses p2m_size > 0x0FFFFFFF
MAX_BATCH_SIZE = 1024
CHUNK_MIN = -20


class LegacyGuess:
    __slots__ = ("width", "guest", "p2m_size", "extended_info", "certain")

    def __init__(self, width: int, guest: str, p2m_size: int, extended_info: bool,
                 certain: bool = True) -> None:
        self.width = width  # saving toolstack's word size in bytes: 4 or 8
        self.guest = guest  # "pv" or "hvm"
        self.p2m_size = p2m_size
        self.extended_info = extended_info  # PV: ~0 signature present (False: pre-3.1)
        #: False when a PV stream without extended info (pre-3.1) would look the
        #: same: its first p2m frame number reads like an HVM page count
        self.certain = certain

    def __repr__(self) -> str:
        return (f"LegacyGuess(width={self.width}, guest={self.guest!r}, "
                f"p2m_size={self.p2m_size:#x}, extended_info={self.extended_info})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LegacyGuess) and (
            self.width, self.guest, self.p2m_size, self.extended_info) == (
            other.width, other.guest, other.p2m_size, other.extended_info)

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        g = self.guest.upper()
        return (f"legacy (Xen <= 4.5) {g} stream from a {self.width * 8}-bit toolstack, "
                f"p2m_size {self.p2m_size:#x}")


def _plausible_chunk(v: int) -> bool:
    return 1 <= v <= MAX_BATCH_SIZE or CHUNK_MIN <= v <= -1


def sniff(head: bytes) -> Optional[LegacyGuess]:
    """Guess the legacy dialect from the first 16 bytes (or fewer), or None."""
    if len(head) < 8:
        return None
    p32 = struct.unpack_from("<I", head, 0)[0]
    w1 = struct.unpack_from("<I", head, 4)[0]
    # 32-bit toolstack, PV: p2m_size u32, then 0xFFFFFFFF.
    if 0 < p32 <= P2M_SIZE_MAX and w1 == 0xFFFFFFFF:
        return LegacyGuess(4, "pv", p32, True)
    if len(head) >= 16:
        p64 = struct.unpack_from("<Q", head, 0)[0]
        n64 = struct.unpack_from("<Q", head, 8)[0]
        c64 = struct.unpack_from("<i", head, 8)[0]
        if 0 < p64 <= P2M_SIZE_MAX:
            if n64 == 0xFFFFFFFFFFFFFFFF:
                return LegacyGuess(8, "pv", p64, True)
            if _plausible_chunk(c64):
                return LegacyGuess(8, "hvm", p64, False, certain=c64 < 0)
    c32 = struct.unpack_from("<i", head, 4)[0]
    if 0 < p32 <= P2M_SIZE_MAX and _plausible_chunk(c32):
        return LegacyGuess(4, "hvm", p32, False, certain=c32 < 0)
    return None


# -- the format ----------------------------------------------------------------

CHUNK_END = 0
CHUNK_ENABLE_VERIFY_MODE = -1
CHUNK_VCPU_INFO = -2
CHUNK_HVM_IDENT_PT = -3
CHUNK_HVM_VM86_TSS = -4
CHUNK_TMEM = -5
CHUNK_TMEM_EXTRA = -6
CHUNK_TSC_INFO = -7
CHUNK_HVM_CONSOLE_PFN = -8
CHUNK_LAST_CHECKPOINT = -9
CHUNK_HVM_ACPI_IOPORTS_LOCATION = -10
CHUNK_HVM_VIRIDIAN = -11
CHUNK_COMPRESSED_DATA = -12
CHUNK_ENABLE_COMPRESSION = -13
CHUNK_HVM_GENERATION_ID_ADDR = -14
CHUNK_HVM_PAGING_RING_PFN = -15
CHUNK_HVM_MONITOR_RING_PFN = -16
CHUNK_HVM_SHARING_RING_PFN = -17
CHUNK_TOOLSTACK = -18
CHUNK_HVM_IOREQ_SERVER_PFN = -19
CHUNK_HVM_NR_IOREQ_SERVER_PAGES = -20
CHUNK_NAMES: Dict[int, str] = {
    -1: "ENABLE_VERIFY_MODE", -2: "VCPU_INFO", -3: "HVM_IDENT_PT", -4: "HVM_VM86_TSS",
    -5: "TMEM", -6: "TMEM_EXTRA", -7: "TSC_INFO", -8: "HVM_CONSOLE_PFN", -9: "LAST_CHECKPOINT",
    -10: "HVM_ACPI_IOPORTS_LOCATION", -11: "HVM_VIRIDIAN", -12: "COMPRESSED_DATA",
    -13: "ENABLE_COMPRESSION", -14: "HVM_GENERATION_ID_ADDR", -15: "HVM_PAGING_RING_PFN",
    -16: "HVM_MONITOR_RING_PFN", -17: "HVM_SHARING_RING_PFN", -18: "TOOLSTACK",
    -19: "HVM_IOREQ_SERVER_PFN", -20: "HVM_NR_IOREQ_SERVER_PAGES",
}
#: chunk id -> HVM_PARAM index (``{int id; u32 pad; u64 value}``)
HVM_PARAM_CHUNKS: Dict[int, int] = {
    -3: 12, -4: 15, -8: 17, -10: 19, -11: 9, -14: 34, -15: 27, -16: 28, -17: 29, -19: 32, -20: 33,
}
MAX_VCPU_ID = 4095
#: pfn entries held by one LBatchRun at most (a few hundred KiB of Python ints)
RUN_MAX_PAGES = 4096

# XEN_DOMCTL_PFINFO_* in bits 28-31 of a pfn_type entry
PFINFO_TYPE_SHIFT = 28
PFINFO_TYPE_MASK = 0xF0000000
PFINFO_PFN_MASK = 0x0FFFFFFF
PT_XTAB = 0xF
PT_XALLOC = 0xE
PT_BROKEN = 0xD
NO_DATA_TYPES = frozenset({PT_XTAB, PT_XALLOC, PT_BROKEN})
XTAB_NO_PFN = 0xF0000000  # the saver's entry for a page it could not map

PAGE_SIZE = 4096
VCPU_CTX_SIZE = {8: 5168, 4: 2800}  # guest width -> sizeof(vcpu_guest_context)
GUEST_WIDTH_OF_CTX = {5168: 8, 2800: 4}
EXTV_SIZE = 128
SHARED_INFO_SIZE = 4096
HVM_CONTEXT_MAX = 128 << 20
TOOLSTACK_MAX = 64 << 20
TMEM_PAGE_MAX = 1 << 16

QEMU_SIG_LIBXL = b"DeviceModelRecord0002"
QEMU_SIG_REMUS = b"RemusDeviceModelState"
QEMU_SIG_XEND = b"QemuDeviceModelRecord"
QEMU_SIG_LEN = 21
QEMU_KINDS = {QEMU_SIG_LIBXL: "libxl", QEMU_SIG_REMUS: "remus", QEMU_SIG_XEND: "xend"}


def p2m_frame_entries(p2m_size: int, guest_width: int) -> int:
    """P2M_FL_ENTRIES: frames of guest-width p2m entries covering p2m_size pfns."""
    fpp = PAGE_SIZE // guest_width
    return (p2m_size + fpp - 1) // fpp


# -- items ---------------------------------------------------------------------

LAYER = "legacy"


class _Item:
    __slots__ = ("offset",)
    kind = "item"
    layer = LAYER

    @property
    def what(self) -> str:
        return f"legacy {self.kind}"


class LHeader(_Item):
    __slots__ = ("p2m_size", "width", "guest", "ext_info", "guest_width", "pt_levels", "extv",
                 "xcnt", "vcpu0", "blocks", "p2m_frames")
    kind = "header"

    def __init__(self, offset: int, p2m_size: int, width: int, guest: str) -> None:
        self.offset = offset
        self.p2m_size = p2m_size
        self.width = width  # saving toolstack's unsigned long, bytes
        self.guest = guest
        self.ext_info = False
        self.guest_width = width  # PV guest width, bytes (from the "vcpu" block)
        self.pt_levels = 4 if width == 8 else 3
        self.extv = False
        self.xcnt: Optional[int] = None
        self.vcpu0: Optional[bytes] = None
        self.blocks: List[Tuple[bytes, int]] = []
        self.p2m_frames: List[int] = []


class _Lazy(_Item):
    """An item whose payload stays in the input until the consumer reads it."""

    __slots__ = ("_src", "_left", "_what")

    def _init_payload(self, src: Source, n: int) -> None:
        self._src = src
        self._left = n

    def read(self, n: int) -> bytes:
        if n > self._left:
            raise ValueError("read past the payload")
        at = self._src.pos
        data = self._src.read_upto(n)
        if len(data) != n:
            raise TruncatedError(at, n, len(data), what=self.what, layer=LAYER)
        self._left -= n
        return data

    @property
    def left(self) -> int:
        return self._left

    def finish(self) -> None:
        if self._left:
            n, self._left = self._left, 0
            try:
                self._src.skip(n)
            except TruncatedError as e:
                e.what, e.layer = self.what, LAYER
                raise


class LBatch(_Lazy):
    """A page batch: ``entries`` are the raw pfn_type words; the page data
    (``n_data`` pages, none in a compressed checkpoint) follows in the input."""

    __slots__ = ("count", "entries", "n_data", "checkpoint", "notab")
    kind = "page batch"

    def __init__(self, offset: int, count: int, entries: Tuple[int, ...], n_data: int,
                 checkpoint: int) -> None:
        self.offset = offset
        self.count = count
        self.entries = entries
        self.n_data = n_data
        self.checkpoint = checkpoint
        #: every entry is a plain pfn (type NOTAB, no other bits)
        self.notab = False


class LChunk(_Lazy):
    """A metadata chunk (negative id).  Fixed payloads are decoded into
    ``value``/``data``; COMPRESSED_DATA's bytes stay in the input."""

    __slots__ = ("cid", "value", "data", "length", "checkpoint")
    kind = "chunk"

    def __init__(self, offset: int, cid: int, checkpoint: int) -> None:
        self.offset = offset
        self.cid = cid
        self.value: Optional[int] = None
        self.data: Optional[bytes] = None
        self.length = 0
        self.checkpoint = checkpoint

    @property
    def name(self) -> str:
        return CHUNK_NAMES.get(self.cid, str(self.cid))

    @property
    def what(self) -> str:
        return f"legacy chunk {self.cid} ({self.name})"


class LBatchRun(_Item):
    """Consecutive page batches of plain pfns (type NOTAB, below p2m_size),
    found by a consumer that set :attr:`LegacyParser.bulk` (seekable input).
    ``batches`` holds ``(data_offset, entries)`` per batch: the page data,
    ``4096 * len(entries)`` bytes, is at ``data_offset`` in the input.  The
    parser resumes at ``end``; the consumer moves the data by offset."""

    __slots__ = ("batches", "end", "pages", "checkpoint")
    kind = "page batches"

    def __init__(self, offset: int, batches: List[Tuple[int, Tuple[int, ...]]], end: int,
                 pages: int, checkpoint: int) -> None:
        self.offset = offset
        self.batches = batches
        self.end = end
        self.pages = pages
        self.checkpoint = checkpoint


class LBodyEnd(_Item):
    __slots__ = ("checkpoint",)
    kind = "end of body"

    def __init__(self, offset: int, checkpoint: int) -> None:
        self.offset = offset
        self.checkpoint = checkpoint


class LHvmTail(_Item):
    __slots__ = ("magic_pfns", "context", "checkpoint")
    kind = "HVM tail"

    def __init__(self, offset: int, magic_pfns: Tuple[int, int, int], context: bytes,
                 checkpoint: int) -> None:
        self.offset = offset
        self.magic_pfns = magic_pfns  # ioreq, bufioreq, store
        self.context = context
        self.checkpoint = checkpoint


class LVcpu:
    __slots__ = ("vcpu_id", "context", "extended", "xsave_mask", "xsave")

    def __init__(self, vcpu_id: int, context: bytes, extended: Optional[bytes],
                 xsave_mask: int, xsave: Optional[bytes]) -> None:
        self.vcpu_id = vcpu_id
        self.context = context
        self.extended = extended
        self.xsave_mask = xsave_mask
        self.xsave = xsave  # xcr0, xcr0_accum, XSAVE area (a v2 X86_PV_VCPU_XSAVE blob)


class LPvTail(_Item):
    __slots__ = ("unmapped", "vcpus", "shared_info", "checkpoint")
    kind = "PV tail"

    def __init__(self, offset: int, unmapped: List[int], vcpus: List[LVcpu],
                 shared_info: bytes, checkpoint: int) -> None:
        self.offset = offset
        self.unmapped = unmapped
        self.vcpus = vcpus
        self.shared_info = shared_info
        self.checkpoint = checkpoint


class LQemu(_Lazy):
    """The device-model record: ``signature`` as found, ``length`` None when
    the data runs to the end of the input (xend)."""

    __slots__ = ("signature", "qkind", "length", "header", "checkpoint")
    kind = "qemu record"

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The data in chunks (to the end of the input for xend's record)."""
        while self._left:
            data = self._src.read_upto(min(size, self._left))
            if not data:
                if self.length is None:
                    self._left = 0
                    return
                raise TruncatedError(self._src.pos, self._left, 0, what=self.what, layer=LAYER)
            self._left -= len(data)
            yield data

    def finish(self) -> None:
        if self.length is None:
            if self._src.seekable:
                self._left = 0
                self._src.skip(self._src.remaining() or 0)
            for _ in self.chunks():
                pass
            return
        super().finish()

    def __init__(self, offset: int, signature: bytes, qkind: str, length: Optional[int],
                 header: bytes, checkpoint: int) -> None:
        self.offset = offset
        self.signature = signature
        self.qkind = qkind  # libxl | remus | xend | xenserver
        self.length = length
        self.header = header  # the bytes before the data (signature and length)
        self.checkpoint = checkpoint


class LCheckpointEnd(_Item):
    """A checkpoint is complete (body, tail and device-model record read)."""

    __slots__ = ("number", "last")
    kind = "checkpoint end"

    def __init__(self, offset: int, number: int, last: bool) -> None:
        self.offset = offset
        self.number = number
        self.last = last


class LTruncated(_Item):
    """End of input inside checkpoint ``number`` (> 1): what a failing Remus
    primary leaves; the restorer fails over to the previous checkpoint."""

    __slots__ = ("number", "error")
    kind = "truncated checkpoint"

    def __init__(self, offset: int, number: int, error: TruncatedError) -> None:
        self.offset = offset
        self.number = number
        self.error = error


LItem = Union[LHeader, LBatch, LBatchRun, LChunk, LBodyEnd, LHvmTail, LPvTail, LQemu,
              LCheckpointEnd, LTruncated]


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
                 options: Optional[LegacyOptions] = None) -> None:
        self.src = src
        self.opts = options or LegacyOptions()
        self._pre = prefix
        self._pre_at = src.pos - len(prefix)
        self.header: Optional[LHeader] = None
        self.checkpoints = 0  # complete ones
        self.last_checkpoint = False
        self.compressing = False  # in bodies after the first tail, when enabled
        self.compression_enabled = False
        self.vcpumap: List[int] = [0]
        self._pending_lazy: Optional[_Lazy] = None

    # reading with the detection prefix in front

    @property
    def pos(self) -> int:
        return self.src.pos - len(self._pre)

    def _read(self, n: int, what: str) -> bytes:
        if self._pre:
            take = self._pre[:n]
            self._pre = self._pre[n:]
            if len(take) == n:
                return take
            return take + self.src.read(n - len(take), what=what, layer=LAYER)
        return self.src.read(n, what=what, layer=LAYER)

    def _read_upto(self, n: int) -> bytes:
        if self._pre:
            take = self._pre[:n]
            self._pre = self._pre[n:]
            if len(take) == n:
                return take
            return take + self.src.read_upto(n - len(take))
        return self.src.read_upto(n)

    def _ulong(self, what: str) -> int:
        w = self.header.width if self.header else 8
        return int.from_bytes(self._read(w, what), "little")

    def _ulongs(self, n: int, what: str) -> Tuple[int, ...]:
        assert self.header is not None
        w = self.header.width
        return struct.unpack(f"<{n}{'Q' if w == 8 else 'I'}", self._read(n * w, what))

    def _u32(self, what: str) -> int:
        return int(struct.unpack("<I", self._read(4, what))[0])

    def _i32(self, what: str) -> int:
        return int(struct.unpack("<i", self._read(4, what))[0])

    def _u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self._read(8, what))[0])

    def _error(self, offset: int, message: str, what: str, rule: str = "legacy-format") -> FormatError:
        return FormatError(offset, message, what=what, layer=LAYER, rule=rule)

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
            except TruncatedError as e:
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
        at = self.pos
        head = self._pre[:16]
        guess = sniff(head) if len(head) >= 8 else None
        width = self.opts.width or (guess.width if guess else 8)
        guest = self.opts.guest or (guess.guest if guess else "pv")
        hdr = LHeader(at, 0, width, guest)
        self.header = hdr
        hdr.p2m_size = self._ulong("legacy header (p2m_size)")
        if not 0 < hdr.p2m_size <= P2M_SIZE_MAX:
            raise self._error(at, f"expected p2m_size 1..{P2M_SIZE_MAX - 1:#x}, found "
                              f"{hdr.p2m_size:#x}", "legacy header")
        if guest == "hvm":
            return hdr
        # PV: extended info, or (pre-3.1) the first p2m frame list entry
        first = self._ulong("legacy header (extended info)")
        ones = (1 << (8 * width)) - 1
        frames: List[int] = []
        if first == ones:
            hdr.ext_info = True
            tot = self._u32("legacy extended info (tot_bytes)")
            left = tot
            while left > 0:
                bat = self.pos
                if left < 8:
                    raise self._error(bat, f"expected an 8-byte block header within tot_bytes, "
                                      f"found {left} bytes left", "legacy extended info")
                bid = self._read(4, "legacy extended info block")
                size = self._u32("legacy extended info block")
                left -= 8
                if size > left:
                    raise self._error(bat, f"expected block {bid!r} of {size} bytes within "
                                      f"tot_bytes ({left} left)", "legacy extended info")
                hdr.blocks.append((bid, size))
                if bid == b"vcpu":
                    if size not in GUEST_WIDTH_OF_CTX:
                        raise self._error(bat, "expected a vcpu context of 5168 (64-bit) or "
                                          f"2800 (32-bit) bytes, found {size}",
                                          "legacy extended info (vcpu)", "legacy-vcpu-size")
                    hdr.vcpu0 = self._read(size, "legacy extended info (vcpu)")
                    hdr.guest_width = GUEST_WIDTH_OF_CTX[size]
                    hdr.pt_levels = 4 if hdr.guest_width == 8 else 3
                elif bid == b"extv":
                    hdr.extv = True
                    self._skip(size, "legacy extended info (extv)")
                elif bid == b"xcnt":
                    data = self._read(size, "legacy extended info (xcnt)")
                    if size >= 4:
                        hdr.xcnt = struct.unpack_from("<I", data)[0]
                else:
                    self._skip(size, f"legacy extended info ({bid!r})")
                left -= size
        else:
            frames.append(first)
        n = p2m_frame_entries(hdr.p2m_size, hdr.guest_width)
        if n - len(frames) > 0:
            frames.extend(self._ulongs(n - len(frames), "legacy P2M frame list"))
        hdr.p2m_frames = frames
        return hdr

    def _skip(self, n: int, what: str) -> None:
        if self._pre:
            take = min(n, len(self._pre))
            self._pre = self._pre[take:]
            n -= take
        if n:
            self.src.skip(n, what=what, layer=LAYER)

    def _checkpoint(self, number: int) -> Iterator[LItem]:
        hdr = self.header
        assert hdr is not None
        first = True
        while True:
            at = self.pos
            if first and number > 1:
                raw = self._read_upto(4)
                if not raw:
                    return  # clean EOF between checkpoints
                if len(raw) < 4:
                    raise TruncatedError(at, 4, len(raw), what="legacy chunk", layer=LAYER)
                n = struct.unpack("<i", raw)[0]
            else:
                n = self._i32("legacy chunk")
            first = False
            if n == 0:
                yield LBodyEnd(at, number)
                break
            if n > 0 and self.bulk and not self.compressing and not self._pre:
                run = self._plain_run(at, n, number)
                if run is not None:
                    yield run
                    continue
            if n > 0:
                yield self._batch(at, n, number)
            else:
                yield self._chunk(at, n, number)
        # the tail
        if hdr.guest == "hvm":
            yield self._hvm_tail(number)
            if self.opts.qemu == "skip":
                self._stop_after_tail = True
            else:
                q = self._qemu(number)
                if q is not None:
                    yield q
        else:
            yield self._pv_tail(number)
        if self.compression_enabled:
            self.compressing = True
        yield LCheckpointEnd(self.pos, number, self.last_checkpoint)

    def _batch(self, at: int, n: int, number: int) -> LBatch:
        hdr = self.header
        assert hdr is not None
        if n > MAX_BATCH_SIZE:
            raise self._error(at, f"expected a batch of at most {MAX_BATCH_SIZE} pages, found "
                              f"{n} (\"Max batch size exceeded\")", "legacy page batch",
                              "legacy-batch-size")
        entries = self._ulongs(n, "legacy page batch (pfn types)")
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
            raise TruncatedError(self.pos, n_data * PAGE_SIZE, rem, what="legacy page batch",
                                 layer=LAYER)
        b = LBatch(at, n, entries, n_data, number)
        b.notab = notab
        b._init_payload(self.src, n_data * PAGE_SIZE)
        return b

    def _chunk(self, at: int, cid: int, number: int) -> LChunk:
        hdr = self.header
        assert hdr is not None
        c = LChunk(at, cid, number)
        c._init_payload(self.src, 0)
        what = c.what
        if cid == CHUNK_ENABLE_VERIFY_MODE:
            pass
        elif cid == CHUNK_VCPU_INFO:
            max_id = self._i32(what)
            if not 0 <= max_id <= MAX_VCPU_ID:
                raise self._error(at, f"expected max_vcpu_id 0..{MAX_VCPU_ID}, found {max_id}",
                                  what, "legacy-vcpu-info")
            words = struct.unpack(f"<{max_id // 64 + 1}Q",
                                  self._read(8 * (max_id // 64 + 1), what))
            c.value = max_id
            c.data = b"".join(struct.pack("<Q", w) for w in words)
            self.vcpumap = [i for i in range(max_id + 1) if words[i // 64] >> (i % 64) & 1]
        elif cid in HVM_PARAM_CHUNKS:
            self._read(4, what)
            c.value = self._u64(what)
        elif cid == CHUNK_TSC_INFO:
            c.data = self._read(20, what)
        elif cid == CHUNK_LAST_CHECKPOINT:
            self.last_checkpoint = True
        elif cid == CHUNK_ENABLE_COMPRESSION:
            self.compression_enabled = True
        elif cid == CHUNK_COMPRESSED_DATA:
            c.length = self._ulong(what)
            rem = self.src.remaining()
            if rem is not None and c.length > rem:
                raise TruncatedError(self.pos, c.length, rem, what=what, layer=LAYER)
            c._init_payload(self.src, c.length)
        elif cid == CHUNK_TOOLSTACK:
            length = self._u32(what)
            if length > TOOLSTACK_MAX:
                raise self._error(at, f"expected a toolstack record of at most {TOOLSTACK_MAX} "
                                  f"bytes, found {length}", what, "legacy-toolstack-size")
            c.length = length
            c.data = self._read(length, what)
        elif cid == CHUNK_TMEM:
            c.value = self._tmem(what)
        elif cid == CHUNK_TMEM_EXTRA:
            c.value = self._tmem_extra(what)
        else:
            raise self._error(at, f"expected a page count 1..1024 or a chunk id -1..-20, found "
                              f"{cid} (\"Max batch size exceeded\")", "legacy chunk",
                              "legacy-chunk-id")
        return c

    def _tmem(self, what: str) -> int:
        """Walk a TMEM chunk (xc_tmem.c); returns the number of pages it carries."""
        self._read(12, what)  # version, max_pools, -1
        self._read(16, what)  # client flags, weight, cap, -1
        pages = 0
        while True:
            pool_id = self._u32(what)
            if pool_id == 0xFFFFFFFF:
                return pages
            flags = self._u32(what)
            n_pages = self._u32(what)
            self._read(16, what)  # uuid
            psize = 1 << (((flags >> 4) & 0xF) + 12)
            if psize > TMEM_PAGE_MAX:
                raise self._error(self.pos, f"expected a tmem page size of at most "
                                  f"{TMEM_PAGE_MAX}, found {psize}", what, "legacy-tmem")
            for _ in range(n_pages):
                oid = self._read(24, what)
                if oid == b"\xff" * 24:
                    break
                self._read(4, what)
                self._skip(psize, what)
                pages += 1

    def _tmem_extra(self, what: str) -> int:
        n = 0
        while self._u32(what) != 0xFFFFFFFF:
            self._read(28, what)  # oid[3], index
            n += 1
        return n

    def _hvm_tail(self, number: int) -> LHvmTail:
        at = self.pos
        what = "legacy HVM tail"
        magic = struct.unpack("<QQQ", self._read(24, what))
        size = self._u32(what)
        if size > HVM_CONTEXT_MAX:
            raise self._error(at + 24, f"expected an HVM context of at most {HVM_CONTEXT_MAX} "
                              f"bytes, found {size}", what, "legacy-hvm-context-size")
        rem = self.src.remaining()
        if rem is not None and size > rem:
            raise TruncatedError(self.pos, size, rem, what=what, layer=LAYER)
        ctx = self._read(size, what)
        return LHvmTail(at, (magic[0], magic[1], magic[2]), ctx, number)

    def _qemu(self, number: int) -> Optional[LQemu]:
        at = self.pos
        sig = self._read_upto(QEMU_SIG_LEN)
        if not sig:
            return None  # a libxc-only stream: no device-model record
        what = "legacy qemu record"
        if self.opts.qemu == "optional" and sig not in QEMU_KINDS:
            # inside a container (a XenServer Libxc_legacy frame) what follows
            # may be the container's own next frame: give the bytes back
            self.src.unread(sig)
            return None
        if len(sig) < QEMU_SIG_LEN or sig not in QEMU_KINDS:
            raise self._error(at, "expected a device-model record (DeviceModelRecord0002, "
                              "RemusDeviceModelState or QemuDeviceModelRecord), found "
                              f"{sig!r} (\"Invalid QEMU signature\")", what, "legacy-qemu-signature")
        kind = QEMU_KINDS[sig]
        if kind == "xend":
            nxt = self._read_upto(1)
            if nxt == b"\n":  # XenServer: newline, big-endian length
                raw = self._read(4, what)
                length = int.from_bytes(raw, "big")
                q = LQemu(at, sig + nxt, "xenserver", length, sig + nxt + raw, number)
            else:
                # xend: the data runs to the end of the input
                self.src.unread(nxt)
                q = LQemu(at, sig, "xend", None, sig, number)
                self._stop_after_tail = True
                rem = self.src.remaining()
                q._init_payload(self.src, rem if rem is not None else 1 << 62)
                return q
        else:
            raw = self._read(4, what)
            length = int.from_bytes(raw, "little")
            q = LQemu(at, sig, kind, length, sig + raw, number)
        rem = self.src.remaining()
        if rem is not None and q.length is not None and q.length > rem:
            raise TruncatedError(self.pos, q.length, rem, what=what, layer=LAYER)
        q._init_payload(self.src, q.length or 0)
        return q

    def _pv_tail(self, number: int) -> LPvTail:
        hdr = self.header
        assert hdr is not None
        at = self.pos
        what = "legacy PV tail"
        count = self._u32(what)
        if count > hdr.p2m_size:
            raise self._error(at, f"expected at most p2m_size ({hdr.p2m_size:#x}) unmapped pfns, "
                              f"found {count}", what, "legacy-unmapped-count")
        unmapped: List[int] = []
        left = count
        while left:
            k = min(left, 1024)
            unmapped.extend(self._ulongs(k, what))
            left -= k
        ctx_size = VCPU_CTX_SIZE[hdr.guest_width]
        vcpus: List[LVcpu] = []
        for vid in self.vcpumap:
            ctx = self._read(ctx_size, f"legacy PV tail (vcpu {vid} context)")
            ext = self._read(EXTV_SIZE, f"legacy PV tail (vcpu {vid} extended)") if hdr.extv else None
            mask = 0
            xs: Optional[bytes] = None
            if hdr.xcnt:
                mask = self._u64(f"legacy PV tail (vcpu {vid} xsave)")
                size = self._u64(f"legacy PV tail (vcpu {vid} xsave)")
                if 16 + size != hdr.xcnt:
                    raise self._error(self.pos - 16, f"expected an xsave record of {hdr.xcnt} "
                                      f"bytes (xcnt) for vcpu {vid}, found {16 + size}",
                                      what, "legacy-xsave-size")
                xs = self._read(size, f"legacy PV tail (vcpu {vid} xsave)")
            vcpus.append(LVcpu(vid, ctx, ext, mask, xs))
        shinfo = self._read(SHARED_INFO_SIZE, "legacy PV tail (shared info)")
        return LPvTail(at, unmapped, vcpus, shinfo, number)


# -- rules ------------------------------------------------------------------------


class LegacyChecker:
    """What makes a legacy stream unconvertible, or not restorable once
    converted.  ``report(severity, rule, authority, tolerated, message)``."""

    def __init__(self, report: Callable[..., None]) -> None:
        self.report = report
        self.header: Optional[LHeader] = None
        self.pages = 0
        self.batches = 0
        self.checkpoints = 0
        self.tmem = False
        self.verify_mode = False
        self.truncated_in: Optional[int] = None
        self.qemu_kind: Optional[str] = None

    def item(self, it: LItem) -> None:
        r = self.report
        if isinstance(it, LHeader):
            self.header = it
            for bid, size in it.blocks:
                if bid not in (b"vcpu", b"extv", b"xcnt"):
                    r("warning", "legacy-ext-block", "restore", True,
                      f"unknown extended-info block {bid!r} ({size} bytes): the legacy "
                      "restorer skipped it, and so does the converter")
        elif isinstance(it, LBatchRun):
            self.batches += len(it.batches)
            self.pages += it.pages  # plain pfns below p2m_size: nothing to check
        elif isinstance(it, LBatch):
            self.batches += 1
            self.pages += it.n_data
            bad = [e for e in it.entries if 5 <= (e & PFINFO_TYPE_MASK) >> PFINFO_TYPE_SHIFT <= 8]
            if bad:
                e = bad[0]
                r("error", "legacy-page-type", "restore", False,
                  f"expected page types 0-4 and 9-15, found type "
                  f"{(e & PFINFO_TYPE_MASK) >> PFINFO_TYPE_SHIFT:#x} for pfn "
                  f"{e & PFINFO_PFN_MASK:#x}: Xen's v2 restore rejects it")
            hdr = self.header
            if hdr is not None:
                over = [e & PFINFO_PFN_MASK for e in it.entries
                        if e != XTAB_NO_PFN and (e & PFINFO_PFN_MASK) >= hdr.p2m_size]
                if over:
                    r("error", "legacy-pfn-range", "restore", False,
                      f"expected pfns below p2m_size {hdr.p2m_size:#x}, found {over[0]:#x}")
        elif isinstance(it, LChunk):
            if it.cid in (CHUNK_TMEM, CHUNK_TMEM_EXTRA):
                self.tmem = True
                r("error", "legacy-tmem", "restore", False,
                  "the guest used tmem, which left Xen in 4.13: no current Xen restores its "
                  "tmem pages (convert with --drop-tmem to lose them knowingly)")
            elif it.cid == CHUNK_TSC_INFO and it.data is not None:
                mode = struct.unpack_from("<I", it.data)[0]
                if mode == 3:
                    r("warning", "legacy-tsc-mode", "restore", False,
                      "TSC mode 3 (PVRDTSCP): Xen >= 4.12 refuses to restore it")
                elif mode > 3:
                    r("error", "legacy-tsc-mode", "restore", False,
                      f"expected TSC mode 0-3, found {mode}")
            elif it.cid == CHUNK_ENABLE_VERIFY_MODE:
                self.verify_mode = True
            elif (it.cid == CHUNK_TOOLSTACK and it.data is not None and self.header is not None
                  and self.header.guest == "hvm"):
                from xenstream.consumers.convert import parse_physmap

                try:
                    parse_physmap(it.data, self.header.width)
                except ValueError as e:
                    r("error", "legacy-toolstack", "restore", False,
                      f"expected libxl's physmap toolstack record, found: {e}")
        elif isinstance(it, LHvmTail):
            from xenstream.formats import hvm

            for p in hvm.check_context(it.context):
                if p.severity == "error" and not p.tolerated:
                    r("warning", p.rule, "restore", True,
                      f"HVM context entry at blob offset {p.offset:#x}: {p.message} (current "
                      "Xen may refuse this saved state)")
        elif isinstance(it, LQemu):
            self.qemu_kind = it.qkind
        elif isinstance(it, LCheckpointEnd):
            self.checkpoints = it.number
        elif isinstance(it, LTruncated):
            self.truncated_in = it.number
            r("warning", "legacy-checkpoint-eof", "restore", True,
              f"the Remus stream ends inside checkpoint {it.number} ({it.error.message}): a "
              f"restore fails over to checkpoint {it.number - 1}")


