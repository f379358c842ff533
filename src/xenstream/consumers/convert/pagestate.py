"""Remus page compression: :class:`PageState`, a sparse temporary file that
holds the current copy of every page, and :func:`decode_page`, which applies
one compressed page (xc_compression.c's encoding) onto the previous copy.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

from xenstream.formats.libxc import PAGE_SIZE as PAGE


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
