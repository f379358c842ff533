"""The legacy (Xen <= 4.5) libxc save format: recognition, constants, the
typed items its pull parser yields, and its rules.

A legacy image has no header and no version: it starts with ``p2m_size`` as
the saving toolstack's ``unsigned long``; a PV image follows it with the
extended-info signature ``~0UL``, an HVM image with its first chunk (an
``int``: a page count 1..1024 or a chunk id -1..-20).  This module tells a
legacy image from garbage using the first 16 bytes (the v2 spec's "zero bits
in the first 8 octets" rule plus these shapes).  The pull parser that reads
one is :class:`xenstream.reading.legacy.LegacyParser`; the items below keep
their page payloads in the input for the consumer to move, copy or skip.
Facts: reference xen-formats.md §4.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from xenstream.errors import FormatError, TruncatedError
from xenstream.formats import pv
from xenstream.io import Source
from xenstream.layout import Layout

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
#: the TSC_INFO chunk's payload after its id: packed, written field by field
TSC_INFO = Layout("legacy TSC_INFO", [("mode", "I"), ("nsec", "Q"), ("khz", "I"),
                                      ("incarnation", "I")])
#: HVM tail magic pfns, in order, as the HVM_PARAM each stands for
MAGIC_PFN_PARAMS = (5, 6, 1)  # IOREQ_PFN, BUFIOREQ_PFN, STORE_PFN
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
VCPU_CTX_SIZE = pv.VCPU_CONTEXT_SIZE  # guest width -> sizeof(vcpu_guest_context)
GUEST_WIDTH_OF_CTX = pv.GUEST_WIDTH_OF_CONTEXT
EXTV_SIZE = pv.VCPU_EXTENDED_MAX  # the "extv" block's extended context, always this size
SHARED_INFO_SIZE = pv.SHARED_INFO_SIZE
HVM_CONTEXT_MAX = 128 << 20
TOOLSTACK_MAX = 64 << 20
TMEM_PAGE_MAX = 1 << 16

QEMU_SIG_LIBXL = b"DeviceModelRecord0002"
QEMU_SIG_REMUS = b"RemusDeviceModelState"
QEMU_SIG_XEND = b"QemuDeviceModelRecord"
QEMU_SIG_LEN = 21
QEMU_KINDS = {QEMU_SIG_LIBXL: "libxl", QEMU_SIG_REMUS: "remus", QEMU_SIG_XEND: "xend"}
#: what xenopsd reads after a XenSavedDomain image's stream (then a u32 BE length)
QEMU_SIG_XENOPSD = QEMU_SIG_XEND + b"\n"
#: a qemu save file (the device-model state) begins with it
QEMU_SAVE_MAGIC = b"QEVM"


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
    found in bulk by a consumer that set
    :attr:`xenstream.reading.legacy.LegacyParser.bulk` or ``bulk_data``.
    ``batches`` holds ``(data_offset, entries)`` per batch: the page data,
    ``4096 * len(entries)`` bytes, is at ``data_offset`` in the input.  The
    parser resumes at ``end``.

    ``window``, when not None, holds the input bytes from ``window_start``
    (the run's first count) to ``end``: every batch's count, entries and page
    data, read in bulk; the consumer slices the data out of it (and, for a
    64-bit toolstack, the entries: ``width`` 8 makes them the v2 words as they
    are).  It is valid only until the next item.  Without it the data is
    still in the input, to be moved by offset (seekable input)."""

    __slots__ = ("batches", "end", "pages", "checkpoint", "window", "window_start", "width")
    kind = "page batches"

    def __init__(self, offset: int, batches: List[Tuple[int, Tuple[int, ...]]], end: int,
                 pages: int, checkpoint: int, window: Optional[memoryview] = None,
                 window_start: int = 0, width: int = 8) -> None:
        self.offset = offset
        self.batches = batches
        self.end = end
        self.pages = pages
        self.checkpoint = checkpoint
        self.window = window
        self.window_start = window_start
        self.width = width


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
    """End of input, or a malformed structure, inside checkpoint ``number``
    (> 1): what a failing Remus primary leaves; the legacy restorer discards
    that checkpoint and restores the previous one."""

    __slots__ = ("number", "error")
    kind = "truncated checkpoint"

    def __init__(self, offset: int, number: int, error: FormatError) -> None:
        self.offset = offset
        self.number = number
        self.error = error

    @property
    def cut(self) -> bool:
        """True for end of input, False for a malformed structure."""
        return isinstance(self.error, TruncatedError)

    def describe(self) -> str:
        how = "ends inside" if self.cut else "has a malformed"
        return f"the Remus stream {how} checkpoint {self.number} ({self.error.message})"


LItem = Union[LHeader, LBatch, LBatchRun, LChunk, LBodyEnd, LHvmTail, LPvTail, LQemu,
              LCheckpointEnd, LTruncated]


# -- the physmap toolstack record (libxl 4.5) ------------------------------------------


def parse_physmap(data: bytes, width: int) -> List[Tuple[int, int, int, bytes]]:
    """libxl 4.5's toolstack record: ``(phys_offset, start_addr, size, name)``."""
    if len(data) < 8:
        raise ValueError(f"expected at least 8 bytes (version, count), found {len(data)}")
    version, count = struct.unpack_from("<II", data)
    if version != 1:
        raise ValueError(f"expected toolstack record version 1, found {version}")
    entry = 32 if width == 8 else 28  # sizeof(struct libxl__physmap_info)
    pos = 8
    out = []
    for i in range(count):
        if pos + 28 > len(data):
            raise ValueError(f"physmap entry {i} runs past the record")
        phys, start, size, namelen = struct.unpack_from("<QQQI", data, pos)
        if pos + entry + namelen > len(data):
            raise ValueError(f"physmap entry {i} (name of {namelen} bytes) runs past the record")
        name = data[pos + 28 : pos + 28 + namelen]
        if namelen and name[-1:] != b"\0":
            raise ValueError(f"physmap entry {i}: name not NUL-terminated")
        out.append((phys, start, size, name[:-1] if namelen else b""))
        pos += entry + namelen
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the {count} physmap entries")
    return out


def physmap_xenstore(entries: List[Tuple[int, int, int, bytes]]) -> List[Tuple[bytes, bytes]]:
    """The EMULATOR_XENSTORE_DATA pairs libxl 4.5 restored them as (``%PRIx64``)."""
    pairs = []
    for phys, start, size, name in entries:
        base = f"physmap/{phys:x}".encode()
        pairs.append((base + b"/start_addr", f"{start:x}".encode()))
        pairs.append((base + b"/size", f"{size:x}".encode()))
        if name:
            pairs.append((base + b"/name", name))
    return pairs


# -- rules ------------------------------------------------------------------------


class LegacyChecker:
    """What makes a legacy stream unconvertible, or not restorable once
    converted.  ``report(rule, message)`` with the ids of :mod:`xenstream.rules`."""

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
                    r("legacy-ext-block",
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
                r("legacy-page-type",
                  f"expected page types 0-4 and 9-15, found type "
                  f"{(e & PFINFO_TYPE_MASK) >> PFINFO_TYPE_SHIFT:#x} for pfn "
                  f"{e & PFINFO_PFN_MASK:#x}: Xen's v2 restore rejects it")
            hdr = self.header
            if hdr is not None:
                over = [e & PFINFO_PFN_MASK for e in it.entries
                        if e != XTAB_NO_PFN and (e & PFINFO_PFN_MASK) >= hdr.p2m_size]
                if over:
                    r("legacy-pfn-range" if hdr.guest == "pv" else "legacy-hvm-pfn-range",
                      f"expected pfns below p2m_size {hdr.p2m_size:#x}, found {over[0]:#x}")
        elif isinstance(it, LChunk):
            if it.cid in (CHUNK_TMEM, CHUNK_TMEM_EXTRA):
                self.tmem = True
                r("legacy-tmem",
                  "the guest used tmem, which left Xen in 4.13: no current Xen restores its "
                  "tmem pages (convert with --drop-tmem to lose them knowingly)")
            elif it.cid == CHUNK_TSC_INFO and it.data is not None:
                mode = struct.unpack_from("<I", it.data)[0]
                if mode == 3:
                    r("legacy-tsc-pvrdtscp",
                      "TSC mode 3 (PVRDTSCP): Xen >= 4.12 refuses to restore it")
                elif mode > 3:
                    r("legacy-tsc-mode",
                      f"expected TSC mode 0-3, found {mode}")
            elif it.cid == CHUNK_ENABLE_VERIFY_MODE:
                self.verify_mode = True
            elif it.cid == CHUNK_TOOLSTACK and it.data is None:
                r("legacy-toolstack-size", f"a toolstack record of {it.length} bytes, more than "
                  f"{TOOLSTACK_MAX}: skipped, not checked")
            elif (it.cid == CHUNK_TOOLSTACK and it.data is not None and self.header is not None
                  and self.header.guest == "hvm"):
                try:
                    parse_physmap(it.data, self.header.width)
                except ValueError as e:
                    r("legacy-toolstack",
                      f"expected libxl's physmap toolstack record, found: {e}")
        elif isinstance(it, LHvmTail):
            from xenstream.formats import hvm

            # the converted stream carries the blob as it is: its own rules
            for p in hvm.check_context(it.context):
                r(p.rule, f"HVM context entry at blob offset {p.offset:#x}: {p.message}")
        elif isinstance(it, LQemu):
            self.qemu_kind = it.qkind
        elif isinstance(it, LCheckpointEnd):
            self.checkpoints = it.number
        elif isinstance(it, LTruncated):
            self.truncated_in = it.number
            r("legacy-checkpoint-eof" if it.cut else "legacy-checkpoint-bad",
              f"{it.describe()}: a restore fails over to checkpoint {it.number - 1}")
