"""Remus page compression (legacy streams, ``xc_compression.c``), decoded.

Once the first checkpoint of a legacy Remus stream enabled compression, the
batches of every later checkpoint name their pages and COMPRESSED_DATA chunks
bring each page as a delta against its previous copy.  :func:`decode_page`
applies one page's encoding; :class:`CompressedDecoder` takes one
checkpoint's pages (:meth:`~CompressedDecoder.expect`) and its chunks
(:meth:`~CompressedDecoder.data`), in bounded pieces (a page may continue in
the next chunk), onto whatever holds the previous copies.  The converter
(:mod:`xenstream.consumers.convert.pagestate`) and ``extract-memory``
(:mod:`xenstream.consumers.memory`) share them.
"""

from __future__ import annotations

import array
from typing import Callable, Tuple

from xenstream.errors import XenstreamError
from xenstream.formats.legacy import PAGE_SIZE as PAGE
from xenstream.formats.legacy import LChunk


class CompressedDataError(XenstreamError):
    """Compressed data that does not decode; ``offset``: the chunk's."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


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


class CompressedDecoder:
    """The compressed pages of one checkpoint: the pfns awaiting data, in
    stream order (an ``array``, not a Python object per pfn), and the bytes of
    a page that continues in the next chunk."""

    PIECE = 1 << 20  # chunk data is read in pieces of at most this size

    def __init__(self) -> None:
        self.pending = array.array("Q")
        self.index = 0  # the next pending pfn to decode
        self.buf = b""

    def expect(self, pfn: int) -> None:
        """A batch of a compressed checkpoint named ``pfn``: its data comes later."""
        self.pending.append(pfn)

    def data(self, c: LChunk, get: Callable[[int], bytes],
             put: Callable[[int, bytes], None]) -> None:
        """Decode the pages of COMPRESSED_DATA chunk ``c`` onto their previous
        copies (``get(pfn)``), handing each new copy to ``put(pfn, page)``."""
        left = c.length
        while left:
            piece = c.read(min(left, self.PIECE))
            left -= len(piece)
            data = self.buf + piece if self.buf else piece
            pos = 0
            while pos < len(data):
                if self.index >= len(self.pending):
                    raise CompressedDataError(c.offset, "more compressed data than pages "
                                              "awaiting it in this checkpoint")
                pfn = self.pending[self.index]
                try:
                    page, npos = decode_page(get(pfn), data, pos)
                except ValueError as e:
                    if "ends" in str(e):
                        break  # the page continues in the next piece or chunk
                    raise CompressedDataError(c.offset, f"malformed compressed page for pfn "
                                              f"{pfn:#x}: {e}") from None
                put(pfn, page)
                self.index += 1
                pos = npos
            self.buf = data[pos:]

    def finish(self, offset: int) -> None:
        """The checkpoint is complete: every page named must have had its data."""
        missing = len(self.pending) - self.index
        if missing or self.buf:
            raise CompressedDataError(offset, f"malformed compressed checkpoint: {missing} "
                                      f"pages have no data, {len(self.buf)} bytes of "
                                      "compressed data are left over")
        self.reset()

    def reset(self) -> None:
        self.pending = array.array("Q")
        self.index = 0
        self.buf = b""
