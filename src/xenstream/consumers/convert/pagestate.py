"""Compressed Remus checkpoints.  Once the first checkpoint enabled
compression, later checkpoints send each page as a delta against its previous
copy (xc_compression.c's encoding): :class:`CompressedCheckpoints` keeps the
current copy of every page in :class:`PageState`, a sparse temporary file
filled from the first checkpoint's pages as written to the output, decodes the
COMPRESSED_DATA chunks onto it with :class:`~xenstream.consumers.compressed.CompressedDecoder`, and writes each
complete checkpoint's pages as PAGE_DATA records.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Callable, List, Optional, Sequence, Tuple

from xenstream.consumers.compressed import CompressedDataError, CompressedDecoder
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
        self.decoder = CompressedDecoder()  # this checkpoint's pfns awaiting data
        self.entries: List[Tuple[int, int]] = []  # (entry, type) of this checkpoint

    def batch(self, keep: Sequence[int]) -> None:
        """A batch of a compressed checkpoint: its pages' data comes later."""
        for e in keep:
            t = (e & legacy.PFINFO_TYPE_MASK) >> legacy.PFINFO_TYPE_SHIFT
            self.entries.append((e, t))
            if t not in legacy.NO_DATA_TYPES:
                self.decoder.expect(e & legacy.PFINFO_PFN_MASK)

    def data(self, c: LChunk) -> None:
        """Decode compressed pages onto their previous copies, in bounded pieces;
        a page may continue in the next COMPRESSED_DATA chunk."""
        if self.state is None:
            if self.out.fd is not None:
                raise ConversionError(c.offset, "compressed data, but compression was never "
                                      "enabled (no ENABLE_COMPRESSION in the first checkpoint)")
            self.state = PageState(self.tmpdir)  # dry run: check the encoding only
        state = self.state
        try:
            self.decoder.data(c, state.get, state.put)
        except CompressedDataError as e:
            raise ConversionError(e.offset, e.message) from None

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
        if self.entries or self.decoder.pending:
            self._flush()

    def _flush(self) -> None:
        assert self.state is not None
        try:
            self.decoder.finish(self.src.pos)
        except CompressedDataError as e:
            raise ConversionError(e.offset, e.message) from None
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
