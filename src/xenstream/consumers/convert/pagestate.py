"""Compressed Remus checkpoints.  Once the first checkpoint enabled
compression, later checkpoints send each page as a delta against its previous
copy (xc_compression.c's encoding): :class:`CompressedCheckpoints` keeps the
current copy of every page in :class:`PageState`, a sparse temporary file
filled from the first checkpoint's pages as written to the output, decodes the
COMPRESSED_DATA chunks onto it with :func:`decode_page`, and writes each
complete checkpoint's pages as PAGE_DATA records.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Callable, List, Optional, Sequence, Tuple

from xenstream.consumers.convert.options import Context, ConversionError
from xenstream.consumers.convert.sink import Sink
from xenstream.errors import TruncatedError
from xenstream.formats import legacy, libxc
from xenstream.formats.legacy import LChunk
from xenstream.formats.libxc import PAGE_SIZE as PAGE
from xenstream.io import Source


class PageState:
    """Sparse temporary file holding the current copy of every page
    (offset ``pfn * 4096``), for decoding compressed Remus checkpoints."""

    def __init__(self, directory: Optional[str]) -> None:
        fd, path = tempfile.mkstemp(prefix=".xenstream-pages-", dir=directory)
        os.unlink(path)
        self.fd = fd

    def get(self, pfn: int) -> bytes:
        data = os.pread(self.fd, PAGE, pfn * PAGE)
        return data + bytes(PAGE - len(data)) if len(data) < PAGE else data

    def put(self, pfn: int, data: bytes) -> None:
        os.pwrite(self.fd, data, pfn * PAGE)

    def close(self) -> None:
        os.close(self.fd)


# -- Remus page compression (xc_compression.c) ---------------------------------------


def decode_page(prev: bytes, data: bytes, pos: int) -> Tuple[bytes, int]:
    """Apply one compressed page at ``data[pos:]`` onto ``prev``; return the new
    page and the position after it.  Raises ValueError on malformed data."""
    if pos >= len(data):
        raise ValueError("compressed data ends before the page")
    b = data[pos]
    if b == 0x00:  # EMPTY_PAGE: unchanged
        return prev, pos + 1
    if b == 0x80:  # FULL_PAGE
        if pos + 1 + PAGE > len(data):
            raise ValueError("compressed data ends inside a full page")
        return data[pos + 1 : pos + 1 + PAGE], pos + 1 + PAGE
    page = bytearray(prev)
    off = 0
    while off < PAGE:
        if pos >= len(data):
            raise ValueError("compressed data ends inside a page")
        b = data[pos]
        pos += 1
        n = (b & 0x7F) * 4
        if n == 0:
            raise ValueError(f"run of length 0 at page offset {off}")
        if off + n > PAGE:
            raise ValueError(f"run of {n} bytes at page offset {off} overruns the page")
        if b & 0x80:
            off += n  # skip: unchanged bytes
        else:
            if pos + n > len(data):
                raise ValueError("compressed data ends inside a copy run")
            page[off : off + n] = data[pos : pos + n]
            pos += n
            off += n
    return bytes(page), pos


class CompressedCheckpoints:
    """The pages of compressed checkpoints: a batch names them (:meth:`batch`),
    COMPRESSED_DATA chunks bring their data (:meth:`data`), the checkpoint's
    end writes them (:meth:`end_checkpoint`) to ``pages_sink()``."""

    def __init__(self, ctx: Context, pages_sink: Callable[[], Sink]) -> None:
        self.src = ctx.src
        self.out = ctx.out
        self.res = ctx.res
        self.tmpdir = ctx.opts.tmpdir
        self._pages_sink = pages_sink
        self.state: Optional[PageState] = None
        self.pending: List[int] = []  # pfns awaiting compressed data
        self.entries: List[Tuple[int, int]] = []  # (entry, type) of this checkpoint
        self.buf = b""
        self.pending_index = 0

    def batch(self, keep: Sequence[int]) -> None:
        """A batch of a compressed checkpoint: its pages' data comes later."""
        for e in keep:
            t = (e & legacy.PFINFO_TYPE_MASK) >> legacy.PFINFO_TYPE_SHIFT
            self.entries.append((e, t))
            if t not in legacy.NO_DATA_TYPES:
                self.pending.append(e & legacy.PFINFO_PFN_MASK)

    def data(self, c: LChunk) -> None:
        """Decode compressed pages onto their previous copies, in bounded pieces;
        a page may continue in the next COMPRESSED_DATA chunk."""
        if self.state is None:
            if self.out.fd is not None:
                raise ConversionError(c.offset, "compressed data, but compression was never "
                                      "enabled (no ENABLE_COMPRESSION in the first checkpoint)")
            self.state = PageState(self.tmpdir)  # dry run: check the encoding only
        left = c.length
        while left:
            piece = c.read(min(left, 1 << 20))
            left -= len(piece)
            data = self.buf + piece if self.buf else piece
            pos = 0
            while pos < len(data):
                if self.pending_index >= len(self.pending):
                    raise ConversionError(c.offset, "more compressed data than pages awaiting "
                                          "it in this checkpoint")
                pfn = self.pending[self.pending_index]
                try:
                    page, npos = decode_page(self.state.get(pfn), data, pos)
                except ValueError as e:
                    if "ends" in str(e):
                        break  # the page continues in the next piece or chunk
                    raise ConversionError(c.offset, f"malformed compressed page for pfn "
                                          f"{pfn:#x}: {e}") from None
                self.state.put(pfn, page)
                self.pending_index += 1
                pos = npos
            self.buf = data[pos:]

    def enable(self) -> None:
        """The first checkpoint, which enabled compression, is complete."""
        if self.state is None:
            self._build_page_state()

    def _build_page_state(self) -> None:
        """Compression was enabled: later checkpoints are decoded onto the pages
        of the first, which are in the output so far; copy them into the sparse
        page-state file (reading our own output, never the input again)."""
        if self.out.fd is None:
            # dry run: nothing to read back; decoding onto zero pages still
            # checks the encoding of every compressed page
            self.state = PageState(self.tmpdir)
            return
        if not self.out.regular:
            raise ConversionError(self.src.pos, "a compressed Remus stream can only be converted "
                                  "to a regular file (its pages must be read back)")
        self.state = PageState(self.tmpdir)
        from xenstream.reading.parser import Parser as P

        self.out.flush()
        try:  # the output may be open write-only (a shell redirection)
            rfd = os.open(f"/proc/self/fd/{self.out.fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise ConversionError(self.src.pos, "a compressed Remus stream needs an output that "
                                  "can be read back (its pages are decoded against them)") from None
        src = Source(rfd, close_fd=True)
        src.pos = src.start = 0
        src.size = self.out.pos
        try:
            for it in P(src).items():
                if getattr(it, "layer", "") == "libxc" and getattr(it, "rtype", -1) == 1:
                    rec: Any = it
                    count, _ = struct.unpack("<II", rec.read(8))
                    ents = struct.unpack(f"<{count}Q", rec.read(8 * count))
                    for ent in ents:
                        if (ent >> 60) not in libxc.NO_DATA_PAGE_TYPES:
                            self.state.put(ent & libxc.PAGE_DATA_PFN_MASK, rec.read(PAGE))
        except TruncatedError:
            pass  # the output so far ends here, mid-stream
        finally:
            src.close()

    def end_checkpoint(self) -> None:
        """A later checkpoint is complete: write its pages, if it had any."""
        if self.entries or self.pending:
            self._flush()

    def _flush(self) -> None:
        assert self.state is not None
        missing = len(self.pending) - self.pending_index
        if missing or self.buf:
            raise ConversionError(self.src.pos, f"malformed compressed checkpoint: {missing} "
                                  f"pages have no data, {len(self.buf)} bytes of "
                                  "compressed data are left over")
        self.pending = []
        self.pending_index = 0
        ents = self.entries
        sink = self._pages_sink()
        for i in range(0, len(ents), 1024):
            chunk = ents[i : i + 1024]
            words = [((e & legacy.PFINFO_TYPE_MASK) << 32) | (e & legacy.PFINFO_PFN_MASK)
                     for e, _t in chunk]
            datas = [self.state.get(e & legacy.PFINFO_PFN_MASK) for e, t in chunk
                     if t not in legacy.NO_DATA_TYPES]
            length = 8 + 8 * len(words) + PAGE * len(datas)
            sink.write(struct.pack("<II", libxc.REC_TYPE_PAGE_DATA, length))
            sink.write(libxc.PAGE_DATA_HDR.pack("<", count=len(words), _res1=0))
            sink.write(struct.pack(f"<{len(words)}Q", *words))
            for d in datas:
                sink.write(d)
            self.res.pages += len(datas)
            self.res.records += 1
        self.entries = []

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
