"""The guest's memory as it is after restore, out of any save image:
:func:`extract_memory`, a consumer of the pull parser (``xenstream
extract-memory``).

Which copy of a page counts is the restorer's: the last copy of each pfn
wins, across live-migration iterations and complete Remus/COLO checkpoints; a
checkpoint the stream ends inside (or breaks inside) is dropped, as a failover
restore drops it; pages after VERIFY (v2) or ENABLE_VERIFY_MODE (legacy) are
compared by the restorer, not copied, and are ignored here; XTAB, BROKEN and
XALLOC entries carry no data and leave a page as it was (a legacy PV tail's
unmapped pfns, which the legacy restorer gives back to Xen, are removed);
Remus-compressed pages are decoded onto their previous copies
(:class:`~xenstream.consumers.compressed.CompressedDecoder`).

Output formats (:data:`FORMATS`):

* ``raw``: byte offset = pfn * 4096, holes left as holes (a sparse file); to
  a pipe or a device, holes are written as zeros up to the highest pfn.
* ``elf``: an ELF64 core, one PT_LOAD per run of consecutive pfns and an
  ``NT_PRSTATUS`` note per vcpu (:mod:`xenstream.writers.elfcore`).
* ``xen-core``: Xen's dump-core layout (``xl dump-core``), ``.xen_pfn`` for
  HVM, ``.xen_p2m`` for PV with the pfn as gmfn.

How the bytes move: page data goes from the input to its place in the output
with ``copy_file_range`` (by offset, on seekable input: the parser seeks past
it) or ``pwrite`` (from a pipe), a run of consecutive pfns at a time; the
per-pfn state is a :class:`~xenstream.consumers.pfnset.PfnMap` bitmap.  The
first checkpoint's pages go straight to the output, those of each later
checkpoint to a sparse staging file (mode 0600, in ``tmpdir``) and are
copied into the output when the checkpoint completes.  ``raw`` to a pipe, a
device or a file opened for appending stages the whole memory in such a file
first (whether a later record resends a page is known only at the end of the
stream).  ``elf`` lays the
pages at ``4096 + pfn * 4096`` as they come and writes its headers after the
data (the ELF header last, at offset 0).  ``xen-core`` puts each page
straight at its index in the dense ``.xen_pages`` while every pfn new to the
image comes above the others (a save's first iteration is in ascending
order, later iterations and checkpoints resend pages already sent); a new
pfn below them spreads the pages to ``4096 + pfn * 4096`` (moving those above
the first hole up once) and the gaps are closed at the end (moving them down
once).  The output is written to an exclusive temporary file (mode 0600) renamed on success
(:mod:`xenstream.consumers.output`).
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from xenstream.consumers.compressed import CompressedDataError, CompressedDecoder
from xenstream.consumers.output import ExtractError, Output, open_output, output_mode
from xenstream.consumers.pfnset import CHUNK_SHIFT, PfnMap
from xenstream.consumers.restore_points import COMMIT, DROP, at_end, restore_point
from xenstream.consumers.vcpu_core import VcpuCore, hvm_vcpus, pv_vcpu
from xenstream.errors import FormatError, TruncatedError, UsageError
from xenstream.formats import elf, legacy, libxc
from xenstream.formats.legacy import (
    LBatch,
    LBatchRun,
    LChunk,
    LHeader,
    LHvmTail,
    LPvTail,
    LTruncated,
)
from xenstream.io import Source
from xenstream.reading.parser import LAYER_LIBXC, Header, Parser, Record
from xenstream.writers import elfcore

FORMATS = ("raw", "elf", "xen-core")
PAGE = 4096
ZERO_PAGE = bytes(PAGE)
#: where elf and xen-core put pfn 0 (the page after the ELF header)
CORE_BASE = PAGE
COPY_CHUNK = 1 << 30  # bytes per copy_file_range call at most
BOUNCE = 1 << 20  # buffer for copies the kernel cannot do
HVM_CONTEXT_MAX = 64 << 20  # an HVM context held for the registers, at most
Progress = Callable[[int], None]
Log = Callable[[str, str], None]


class MemoryResult:
    """What :func:`extract_memory` wrote."""

    def __init__(self, fmt: str, output: str) -> None:
        self.format = fmt
        self.output = output
        self.guest = ""  # "hvm" | "pv"
        self.guest_width = 0  # PV: 4 or 8 (bytes)
        self.pages = 0  # pages present
        self.highest_pfn: Optional[int] = None
        self.runs = 0  # runs of consecutive pfns (the PT_LOADs of an ELF core)
        self.vcpus: List[int] = []  # vcpus with registers in the core
        self.checkpoints = 0  # complete checkpoints read (1 for a plain stream)
        self.warnings: List[str] = []
        self.bytes_written = 0  # size of the output
        self.moved_pages = 0  # xen-core: pages moved to close the gaps
        self.staged = False  # the whole memory went through a staging file


# -- files of pages --------------------------------------------------------------------


class OutputError(ExtractError):
    """The output cannot take what it must hold (a file size limit, no space)."""


class PageFile:
    """A file holding page ``pfn`` at ``base + pfn * 4096``; ``name`` for messages."""

    def __init__(self, fd: int, base: int, name: str, *, rfd: Optional[int] = None) -> None:
        self.fd = fd
        self.base = base
        self.name = name
        self._rfd = rfd
        self._own_rfd = False
        self._cfr = hasattr(os, "copy_file_range")
        self._buf: Optional[bytearray] = None

    @classmethod
    def temporary(cls, directory: Optional[str], what: str) -> PageFile:
        try:
            fd, path = tempfile.mkstemp(prefix=".xenstream-pages-", dir=directory)
        except OSError as e:
            raise UsageError(f"cannot create a staging file in {directory or tempfile.gettempdir()}"
                             f": {e.strerror}") from None
        os.unlink(path)
        return cls(fd, 0, what, rfd=fd)

    def offset(self, index: int) -> int:
        """Where page ``index`` of the file is (the pfn, in a sparse file)."""
        return self.base + index * PAGE

    def _fail(self, e: OSError, pfn: int, index: int) -> OutputError:
        if e.errno == errno.EFBIG:
            return OutputError(0, f"pfn {pfn:#x} needs offset {self.offset(index):#x} of "
                               f"{self.name}, more than its filesystem holds ({e.strerror}): "
                               "put the output (and --tmpdir) on a filesystem that holds "
                               "larger files")
        return OutputError(0, f"cannot write {self.name}: {e.strerror}")

    def readable(self) -> int:
        """A descriptor to read the file back with."""
        if self._rfd is None:
            try:  # the output may be open write-only (a shell redirection)
                self._rfd = os.open(f"/proc/self/fd/{self.fd}",
                                    os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._own_rfd = True
            except OSError:
                raise OutputError(0, f"{self.name} cannot be read back (it is needed for "
                                  "this image): give a path as the output") from None
        return self._rfd

    def read_page(self, index: int) -> bytes:
        data = os.pread(self.readable(), PAGE, self.offset(index))
        return data + bytes(PAGE - len(data)) if len(data) < PAGE else data

    def write(self, index: int, data: bytes, pfn: Optional[int] = None) -> None:
        try:
            view = memoryview(data)
            at = self.offset(index)
            while view:
                n = os.pwrite(self.fd, view, at)
                view = view[n:]
                at += n
        except OSError as e:
            raise self._fail(e, index if pfn is None else pfn, index) from None

    def copy_in(self, in_fd: int, in_off: int, index: int, n: int,
                pfn: Optional[int] = None) -> None:
        """``n`` pages at ``in_off`` of the seekable ``in_fd`` to page ``index``."""
        left = n * PAGE
        src, dst = in_off, self.offset(index)
        try:
            while left and self._cfr:
                try:
                    k = os.copy_file_range(in_fd, self.fd, min(left, COPY_CHUNK), src, dst)
                except OSError as e:
                    if e.errno == errno.EFBIG:
                        raise
                    self._cfr = False  # (EXDEV, ENOSYS, EINVAL ...): copy it ourselves
                    break
                if k <= 0:
                    raise ExtractError(src, f"expected {left} more bytes of page data, found "
                                       "end of file")
                src += k
                dst += k
                left -= k
            if left:
                self._bounce(in_fd, src, dst, left)
        except OSError as e:
            done = (dst - self.offset(index)) // PAGE
            raise self._fail(e, (index if pfn is None else pfn) + done, index + done) from None

    def _bounce(self, in_fd: int, src: int, dst: int, left: int) -> None:
        if self._buf is None:
            self._buf = bytearray(BOUNCE)
        view = memoryview(self._buf)
        while left:
            k = os.preadv(in_fd, [view[:min(left, BOUNCE)]], src)
            if k <= 0:
                raise ExtractError(src, f"expected {left} more bytes of page data, found end "
                                   "of file")
            done = 0
            while done < k:
                done += os.pwrite(self.fd, view[done:k], dst + done)
            src += k
            dst += k
            left -= k

    def move(self, src_index: int, dst_index: int, n: int) -> None:
        """Move ``n`` pages within this file through the bounce buffer: front
        to back when moving down, back to front when moving up, so that no
        piece is overwritten before it is read (each is read whole first)."""
        if src_index == dst_index or not n:
            return
        fd = self.readable()
        size = n * PAGE
        src, dst = self.offset(src_index), self.offset(dst_index)
        starts = range(0, size, BOUNCE)
        for i in (reversed(starts) if dst_index > src_index else starts):
            self._bounce(fd, src + i, dst + i, min(BOUNCE, size - i))

    def copy_to(self, out: PageFile, index: int, n: int, out_index: int, pfn: int) -> None:
        out.copy_in(self.readable(), self.offset(index), out_index, n, pfn)

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        if self._own_rfd and self._rfd is not None:
            os.close(self._rfd)
        self._rfd = None


# -- where a checkpoint's pages go --------------------------------------------------


class _Pages:
    """Pages and the bitmap of the pfns they hold: page ``pfn`` at index ``pfn``
    of the file (a staging file, a raw or ELF output)."""

    def __init__(self, file: PageFile) -> None:
        self.file = file
        self.pfns = PfnMap()

    def claim(self, pfn: int, n: int) -> List[Tuple[int, int, int]]:
        """Take pfns ``pfn .. pfn+n-1`` in: ``(pfn, count, index)`` of where
        each piece goes in the file."""
        self.pfns.add(pfn, pfn + n)
        return [(pfn, n, pfn)]

    def index(self, pfn: int) -> int:
        return pfn

    def discard(self, pfn: int) -> None:
        self.pfns.discard(pfn, pfn + 1)


class _DenseStore(_Pages):
    """xen-core's pages, dense while it can be: as long as every pfn new to
    the set comes above all the others (a save sends its first iteration in
    ascending order, resends only pages it sent), page ``pfn`` is at index
    ``rank(pfn)``, its final place in ``.xen_pages``.  A pfn new below the
    top, or a pfn taken out, spreads the pages to index = pfn (moving them up
    once) and the store goes on sparse; the gaps are closed at the end."""

    def __init__(self, file: PageFile) -> None:
        super().__init__(file)
        self.dense = True
        self.count = 0
        self.top = -1
        self._base: Dict[int, int] = {}  # chunk -> rank of its first pfn
        self.moved = 0  # pages moved by a spread

    def index(self, pfn: int) -> int:
        if not self.dense:
            return pfn
        return self._base[pfn >> CHUNK_SHIFT] + self.pfns.below_in_chunk(pfn)

    def claim(self, pfn: int, n: int) -> List[Tuple[int, int, int]]:
        if not self.dense:
            return super().claim(pfn, n)
        pieces = self.pfns.segments(pfn, pfn + n)
        if any(not present and s <= self.top for s, _e, present in pieces):
            self.spread()
            return super().claim(pfn, n)
        out = [(s, e - s, self.index(s)) for s, e, present in pieces if present]
        if not pieces[-1][2]:  # the new pfns, above the top: appended
            s, e, _ = pieces[-1]
            for c in range(s >> CHUNK_SHIFT, ((e - 1) >> CHUNK_SHIFT) + 1):
                self._base.setdefault(c, self.count + max(0, (c << CHUNK_SHIFT) - s))
            out.append((s, e - s, self.count))
            self.count += e - s
            self.top = e - 1
        self.pfns.add(pfn, pfn + n)
        return out

    def discard(self, pfn: int) -> None:
        if self.dense and pfn in self.pfns:
            self.spread()
        super().discard(pfn)

    def spread(self) -> None:
        """From index = rank to index = pfn: each run moves up, the highest first."""
        placed = []
        j = 0
        for a, b in self.pfns.runs():
            placed.append((a, b, j))
            j += b - a
        for a, b, j in reversed(placed):
            if a != j:
                self.file.move(j, a, b - a)
                self.moved += b - a
        self.dense = False
        self._base.clear()


def _runs_of(pfns: Sequence[int]) -> List[Tuple[int, int, int]]:
    """``(first pfn, count, index of the first)`` for each stretch of
    consecutive pfns, in order: one for the common record of 1024 pages."""
    n = len(pfns)
    p0 = pfns[0]
    if pfns[-1] - p0 == n - 1 and tuple(pfns) == tuple(range(p0, p0 + n)):
        return [(p0, n, 0)]
    out: List[Tuple[int, int, int]] = []
    start, i0 = p0, 0
    for i in range(1, n):
        if pfns[i] != pfns[i - 1] + 1:
            out.append((start, i - i0, i0))
            start, i0 = pfns[i], i
    out.append((start, n - i0, i0))
    return out


class MemoryExtraction:
    """One extraction: the items of ``src``'s image into ``out``."""

    def __init__(self, src: Source, out: Output, fmt: str, *, tmpdir: Optional[str] = None,
                 progress: Optional[Progress] = None, log: Optional[Log] = None) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown memory format {fmt!r} (expected raw, elf or xen-core)")
        self.src = src
        self.out = out
        self.fmt = fmt
        self.tmpdir = tmpdir
        self.progress = progress
        self._log = log
        self.res = MemoryResult(fmt, out.name)
        assert out.fd is not None
        mode = output_mode(out.fd)
        owned = out.tmp is not None
        if fmt != "raw" and mode != "file":
            raise UsageError(f"{fmt} needs a seekable output (a regular file, not "
                             f"{'a file opened for appending' if mode == 'append' else 'a pipe or device'}"
                             "): write it to a file")
        self.stream = mode != "file"  # raw to a pipe, device or O_APPEND file
        base = 0
        if not self.stream:
            base = os.lseek(out.fd, 0, os.SEEK_CUR)
            if fmt != "raw" and base:
                raise UsageError(f"{fmt} must start at offset 0 of its file, the output is at "
                                 f"offset {base}")
            if not owned:
                os.ftruncate(out.fd, base)  # what the holes must read as: nothing
        self._target_base = base
        if self.stream:
            self.res.staged = True
            self.store = _Pages(PageFile.temporary(tmpdir, "the staging file"))
        else:
            f = PageFile(out.fd, CORE_BASE if fmt != "raw" else base, out.name,
                         rfd=out.fd if owned else None)
            self.store = _DenseStore(f) if fmt == "xen-core" else _Pages(f)
        self.stage: Optional[_Pages] = None  # a later checkpoint's pages
        self.committed = 0  # complete checkpoints
        self.verify = False
        self.guest = ""
        self.width = 8
        self.xen = (0, 0)
        self.seekable = src.seekable
        self.parser: Optional[Parser] = None
        self.legacy_hdr: Optional[LHeader] = None
        self.decoder = CompressedDecoder()
        # a checkpoint's state (c_*) and the committed one
        self.c_hvm: Optional[bytes] = None
        self.c_pv: Dict[int, bytes] = {}
        self.c_shinfo: Optional[bytes] = None
        self.c_unmapped: List[int] = []
        self.hvm_context: Optional[bytes] = None
        self.pv_contexts: Dict[int, bytes] = {}
        self.shared_info: Optional[bytes] = None

    def warn(self, msg: str) -> None:
        self.res.warnings.append(msg)
        if self._log is not None:
            self._log("warning", msg)

    # -- the items -------------------------------------------------------------------------

    def run(self) -> MemoryResult:
        p = self.parser = Parser(self.src)
        try:
            try:
                for item in p.items():
                    self._item(item)
                    point = restore_point(item, p.state)
                    if point == COMMIT:
                        self._commit(item.offset)
                    elif point == DROP and (type(item) is LTruncated or self._pending()):
                        why = (item.describe() if type(item) is LTruncated else
                               f"the stream ends (END) inside checkpoint {self.committed + 1}")
                        self._failover(why)
            except OutputError:
                raise
            except (FormatError, ExtractError) as e:
                if not self.committed:
                    raise
                # a dying primary: the restore fails over to the last complete checkpoint
                how = "ends" if isinstance(e, TruncatedError) else "breaks"
                self._failover(f"the stream {how} inside checkpoint {self.committed + 1} ({e})")
            else:
                if at_end(p.state, self.legacy_hdr is not None) == COMMIT:
                    self._commit(self.src.pos)  # a plain v2 stream: END was read
                elif self._pending():
                    self._failover(f"the stream ends inside checkpoint {self.committed + 1}")
            if not self.guest:
                raise ExtractError(self.src.pos, "expected a guest's memory, found an image "
                                   "without a libxc or legacy stream")
            if not self.committed:
                raise ExtractError(self.src.pos, "expected a complete checkpoint, found none")
            self._finish()
        finally:
            if self.stage is not None:
                self.stage.file.close()
                os.close(self.stage.file.fd)
            if self.stream:
                self.store.file.close()
                os.close(self.store.file.fd)
            else:
                self.store.file.close()
        return self.res

    def _pending(self) -> bool:
        """Whether the current checkpoint has said anything yet."""
        return (bool(self.stage is not None and self.stage.pfns) or self.c_hvm is not None
                or bool(self.c_pv) or self.c_shinfo is not None or bool(self.decoder.pending))

    def _item(self, it: Any) -> None:
        t = type(it)
        if t is Record:
            self._record(it)
        elif t is LBatchRun:
            self._batch_run(it)
        elif t is LBatch:
            self._batch(it)
        elif t is Header:
            if it.kind == "libxc domain header":
                f = it.fields
                self.guest = {libxc.DHDR_TYPE_X86_PV: "pv", libxc.DHDR_TYPE_X86_HVM: "hvm"}.get(
                    f["type"], "")
                if not self.guest:
                    raise ExtractError(it.offset, f"expected an x86 PV or HVM domain, found "
                                       f"domain type {f['type']}")
                self.xen = (f["xen_major"], f["xen_minor"])
        elif t is LHeader:
            self._legacy_header(it)
        elif t is LChunk:
            self._chunk(it)
        elif t is LPvTail:
            self.c_pv = {v.vcpu_id: v.context for v in it.vcpus}
            self.c_shinfo = it.shared_info
            self.c_unmapped = list(it.unmapped)
        elif t is LHvmTail:
            self.c_hvm = it.context

    # -- v2 records ------------------------------------------------------------------------

    def _record(self, rec: Record) -> None:
        rtype = rec.rtype
        if rec.layer == LAYER_LIBXC:
            if rtype == libxc.REC_TYPE_PAGE_DATA:
                self._page_data(rec)
            elif rtype == libxc.REC_TYPE_VERIFY:
                self.verify = True
            elif rtype == libxc.REC_TYPE_HVM_CONTEXT:
                self.c_hvm = rec.body(HVM_CONTEXT_MAX)
            elif rtype == libxc.REC_TYPE_X86_PV_INFO:
                body = rec.body(64)
                if len(body) >= 1 and body[0] in (4, 8):
                    self.width = body[0]
            elif rtype == libxc.REC_TYPE_X86_PV_VCPU_BASIC:
                body = rec.body(64 << 10)
                if len(body) > 8:
                    vcpu_id = struct.unpack_from(rec.endian + "I", body)[0]
                    self.c_pv[vcpu_id] = body[8:]
            elif rtype == libxc.REC_TYPE_SHARED_INFO:
                self.c_shinfo = rec.body(64 << 10)
        if self.progress is not None:
            self.progress(self.src.pos)

    def _page_data(self, rec: Record) -> None:
        e = rec.endian
        if rec.length < 8:
            raise ExtractError(rec.offset, f"{rec.what}: expected a body of at least 8 bytes, "
                               f"found {rec.length}")
        count = struct.unpack(e + "I", rec.read(4))[0]
        rec.read(4)
        if count == 0 or rec.length < 8 + 8 * count:
            raise ExtractError(rec.offset, f"{rec.what}: expected 1 or more pfns within the "
                               f"body, found count {count} in a {rec.length}-byte body")
        raw = rec.read(8 * count)
        words = struct.unpack(f"{e}{count}Q", raw)
        top = raw[7::8] if e == "<" else raw[0::8]
        if not top.strip(b"\0") and max(words) <= libxc.PAGE_DATA_PFN_MASK:
            pfns: Sequence[int] = words  # plain pfns (type NOTAB): the common case
        else:
            data: List[int] = []
            for w in words:
                t = w >> libxc.PAGE_DATA_TYPE_SHIFT
                if t not in libxc.KNOWN_PAGE_TYPES:
                    raise ExtractError(rec.offset, f"{rec.what}: expected page types 0-4, "
                                       f"9-15, found {t:#x} for pfn "
                                       f"{w & libxc.PAGE_DATA_PFN_MASK:#x}")
                if t not in libxc.NO_DATA_PAGE_TYPES:
                    data.append(w & libxc.PAGE_DATA_PFN_MASK)
            pfns = data
        want = 8 + 8 * count + PAGE * len(pfns)
        if rec.length != want:
            raise ExtractError(rec.offset, f"{rec.what}: expected {want} bytes ({count} pfns, "
                               f"{len(pfns)} with page data), found {rec.length}")
        if not pfns or self.verify:
            return  # the parser skips the data (VERIFY: compared, not copied)
        self._place(pfns, rec.body_offset + 8 + 8 * count, rec.read)

    # -- legacy items ----------------------------------------------------------------------

    def _legacy_header(self, h: LHeader) -> None:
        self.legacy_hdr = h
        self.guest = h.guest
        self.width = h.guest_width
        assert self.parser is not None
        lp = self.parser.legacy_parser
        if lp is not None and self.seekable:
            lp.bulk = True  # plain batches come as runs, their data moved by offset

    def _compressing(self) -> bool:
        assert self.parser is not None
        lp = self.parser.legacy_parser
        return lp is not None and lp.compressing

    def _batch_run(self, run: LBatchRun) -> None:
        if not self.verify:
            for data_offset, entries in run.batches:
                self._place(entries, data_offset, None)
        if self.progress is not None:
            self.progress(run.end)

    def _batch(self, b: LBatch) -> None:
        compressing = self._compressing()
        if b.notab and not compressing:
            pfns: Sequence[int] = b.entries
        else:
            data: List[int] = []
            for e in b.entries:
                t = (e & legacy.PFINFO_TYPE_MASK) >> legacy.PFINFO_TYPE_SHIFT
                if 5 <= t <= 8:
                    raise ExtractError(b.offset, f"{b.what}: expected page types 0-4 and 9-15, "
                                       f"found type {t:#x} for pfn {e & legacy.PFINFO_PFN_MASK:#x}")
                if t not in legacy.NO_DATA_TYPES:
                    data.append(e & legacy.PFINFO_PFN_MASK)
            pfns = data
        if compressing:
            for pfn in pfns:  # the data comes in COMPRESSED_DATA chunks
                self.decoder.expect(pfn)
        elif pfns and not self.verify:
            self._place(pfns, self.src.pos, b.read)
        if self.progress is not None:
            self.progress(self.src.pos)

    def _chunk(self, c: LChunk) -> None:
        if c.cid == legacy.CHUNK_ENABLE_VERIFY_MODE:
            self.verify = True
        elif c.cid == legacy.CHUNK_COMPRESSED_DATA:
            if not self.committed:
                raise ExtractError(c.offset, "compressed data in the first checkpoint: "
                                   "compression applies to later checkpoints only")
            stage = self._stage()
            store = self.store

            def get(pfn: int) -> bytes:
                if pfn in stage.pfns:
                    return stage.file.read_page(pfn)
                return store.file.read_page(store.index(pfn)) if pfn in store.pfns else ZERO_PAGE

            def put(pfn: int, page: bytes) -> None:
                stage.claim(pfn, 1)
                stage.file.write(pfn, page)

            try:
                self.decoder.data(c, get, put)
            except CompressedDataError as e:
                raise ExtractError(e.offset, e.message) from None

    # -- pages -----------------------------------------------------------------------------

    def _stage(self) -> _Pages:
        if self.stage is None:
            self.stage = _Pages(PageFile.temporary(self.tmpdir, "the checkpoint staging file"))
        return self.stage

    def _place(self, pfns: Sequence[int], data_offset: int,
               read: Optional[Callable[[int], bytes]]) -> None:
        """The pages of ``pfns``, whose data is at ``data_offset`` of the input
        in that order, to this checkpoint's target (read with ``read`` from a
        pipe)."""
        dest = self.store if not self.committed else self._stage()
        f = dest.file
        seek = self.seekable
        fd = self.src.fd
        for pfn, n, i in _runs_of(pfns):
            for p, k, index in dest.claim(pfn, n):
                at = data_offset + (i + p - pfn) * PAGE
                if seek:
                    f.copy_in(fd, at, index, k, p)
                    continue
                assert read is not None
                done = 0
                while done < k:
                    m = min(k - done, 256)
                    f.write(index + done, read(m * PAGE), p + done)
                    done += m

    # -- checkpoints -------------------------------------------------------------------------

    def _commit(self, offset: int) -> None:
        """A checkpoint is complete: its pages and state become the guest's."""
        if self.decoder.pending:
            try:
                self.decoder.finish(offset)
            except CompressedDataError as e:
                raise ExtractError(e.offset, e.message) from None
        stage = self.stage
        store = self.store
        if stage is not None and stage.pfns:
            for a, b in stage.pfns.runs():
                for p, k, index in store.claim(a, b - a):
                    stage.file.copy_to(store.file, p, k, index, p)
            stage.pfns.clear()
            stage.file.reset()
        for pfn in self.c_unmapped:  # given back to Xen by the legacy restorer
            if pfn in store.pfns:
                store.discard(pfn)  # (a dense store spreads: index = pfn from now on)
                store.file.write(pfn, ZERO_PAGE)
        self.c_unmapped = []
        if self.c_hvm is not None:
            self.hvm_context = self.c_hvm
        if self.c_pv:
            self.pv_contexts = self.c_pv
        if self.c_shinfo is not None:
            self.shared_info = self.c_shinfo
        self.c_hvm, self.c_pv, self.c_shinfo = None, {}, None
        self.committed += 1

    def _failover(self, why: str) -> None:
        """The current checkpoint is incomplete: drop it, as a failover does."""
        if self.stage is not None:
            self.stage.pfns.clear()
            self.stage.file.reset()
        self.c_hvm, self.c_pv, self.c_shinfo, self.c_unmapped = None, {}, None, []
        self.decoder.reset()
        self.warn(f"{why}; extracted the memory of checkpoint {self.committed}, as a failover "
                  "restore would")

    # -- the output ---------------------------------------------------------------------------

    def _vcpus(self) -> List[VcpuCore]:
        if self.guest == "hvm":
            return hvm_vcpus(self.hvm_context) if self.hvm_context is not None else []
        return [pv_vcpu(v, ctx, self.width) for v, ctx in sorted(self.pv_contexts.items())
                if len(ctx) >= (5168 if self.width == 8 else 2800)]

    def _finish(self) -> None:
        res = self.res
        pfns = self.store.pfns
        res.guest = self.guest
        res.guest_width = self.width if self.guest == "pv" else 0
        res.checkpoints = self.committed
        res.pages = pfns.count()
        res.highest_pfn = pfns.highest()
        res.runs = sum(1 for _ in pfns.runs())
        vcpus = self._vcpus() if self.fmt != "raw" else []
        res.vcpus = [v.vcpu_id for v in vcpus]
        if self.fmt != "raw" and not vcpus:
            self.warn("the image holds no vcpu registers: the core has no register notes")
        end_pfn = 0 if res.highest_pfn is None else res.highest_pfn + 1
        fd = self.store.file.fd
        assert self.out.fd is not None
        if self.fmt == "raw":
            if self.stream:
                res.bytes_written = self._stream_out(end_pfn * PAGE)
            else:
                size = self._target_base + end_pfn * PAGE
                try:
                    os.ftruncate(fd, size)  # the holes at the end
                except OSError as e:
                    raise self.store.file._fail(e, end_pfn, end_pfn) from None
                os.lseek(fd, size, os.SEEK_SET)
                res.bytes_written = end_pfn * PAGE
        elif self.fmt == "elf":
            notes = b"".join(elfcore.note(elf.NOTE_NAME_CORE, elf.NT_PRSTATUS,
                                          elfcore.prstatus(v.vcpu_id + 1, v.gregs))
                             for v in vcpus)
            res.bytes_written = elfcore.finish_elf(
                fd, base=CORE_BASE, data_end=CORE_BASE + end_pfn * PAGE, runs=pfns.runs,
                nruns=res.runs, notes=notes)
        else:
            self._close_gaps()
            hvm = self.guest == "hvm"
            machine = elf.EM_386 if self.guest == "pv" and self.width == 4 else elf.EM_X86_64
            res.bytes_written = elfcore.finish_xen_core(
                fd, pages_offset=CORE_BASE, nr_pages=res.pages, runs=pfns.runs, hvm=hvm,
                prstatus_contexts=[v.context for v in vcpus],
                shared_info=self.shared_info if not hvm else None, machine=machine,
                xen_major=self.xen[0], xen_minor=self.xen[1])
            os.ftruncate(fd, res.bytes_written)
        if self.fmt != "raw":
            os.lseek(fd, res.bytes_written, os.SEEK_SET)

    def _close_gaps(self) -> None:
        """xen-core: each run to its index in the dense .xen_pages (nothing to
        do if the store stayed dense)."""
        store = self.store
        f = store.file
        index = 0
        dense = isinstance(store, _DenseStore) and store.dense
        if isinstance(store, _DenseStore):
            self.res.moved_pages += store.moved
        for a, b in store.pfns.runs():
            if not dense and a != index:
                f.move(a, index, b - a)
                self.res.moved_pages += b - a
            index += b - a
        os.ftruncate(f.fd, f.offset(index))  # what lay above is gone

    def _stream_out(self, size: int) -> int:
        """raw to a stream: the staged memory in order, holes as zeros."""
        assert self.out.fd is not None
        out = self.out.fd
        stage_fd = self.store.file.readable()
        os.ftruncate(stage_fd, size)
        off = 0
        use_sendfile = True
        buf: Optional[bytearray] = None
        while off < size:
            n = min(size - off, COPY_CHUNK)
            if use_sendfile:
                try:
                    k = os.sendfile(out, stage_fd, off, n)
                except OSError as e:
                    if e.errno in (errno.EINVAL, errno.ENOSYS):
                        use_sendfile = False
                        continue
                    raise
            else:
                if buf is None:
                    buf = bytearray(BOUNCE)
                view = memoryview(buf)
                k = os.preadv(stage_fd, [view[:min(n, BOUNCE)]], off)
                w = 0
                while w < k:
                    w += os.write(out, view[w:k])
            if k <= 0:
                raise ExtractError(0, f"short write to {self.out.name}")
            off += k
        return size


def extract_memory(spec_or_source: Union[str, int, Source], out_path: str, *,
                   format: str = "raw", tmpdir: Optional[str] = None,
                   progress: Optional[Progress] = None,
                   log: Optional[Log] = None, durable: bool = True) -> MemoryResult:
    """Write the guest memory of the image ``spec_or_source`` (a path, ``-``,
    ``/dev/fd/N``, a descriptor, or an open :class:`~xenstream.io.Source`) to
    ``out_path`` (a path, written atomically; ``-``; ``/dev/fd/N``) in
    ``format`` (:data:`FORMATS`).  Raises :class:`~xenstream.errors.FormatError`
    or :class:`~xenstream.consumers.output.ExtractError` on bad input (no
    output is left behind), :class:`~xenstream.errors.UsageError` on a bad
    output.  ``durable``: flush the output to the disk before it is renamed
    into place (:meth:`~xenstream.consumers.output.Output.commit`)."""
    if format not in FORMATS:
        raise UsageError(f"unknown memory format {format!r} (expected raw, elf or xen-core)")
    src = spec_or_source if isinstance(spec_or_source, Source) else Source.open(spec_or_source)
    try:
        out = open_output(out_path, src, durable=durable)
        try:
            res = MemoryExtraction(src, out, format, tmpdir=tmpdir, progress=progress,
                                   log=log).run()
        except BaseException:
            out.abort()
            raise
        out.commit()
        return res
    finally:
        if not isinstance(spec_or_source, Source):
            src.close()
