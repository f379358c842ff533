"""Forward-only output: :class:`Sink` writes to a descriptor, moving page
payloads from the input by the kernel (``copy_file_range``, ``sendfile``,
``splice``) where it can and gathering small writes into big ones, and
:class:`Staging`, a temporary file that holds output (a later Remus
checkpoint, a device-model record) until it is known to be wanted.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any, Callable, List, Optional, Union

from xenstream.errors import TruncatedError
from xenstream.io import Source, grow_pipe

COPY_CHUNK = 1 << 20
OUT_BUFFER = 256 << 10  # gathered output written in chunks of this size
SMALL_COPY = 64 << 10  # payloads up to this size go through the output buffer


def _iov_max() -> int:
    try:
        return max(16, min(1024, os.sysconf("SC_IOV_MAX")))
    except (AttributeError, ValueError, OSError):
        return 16


IOV_MAX = _iov_max()  # buffers per writev


class Sink:
    """Forward-only output on a descriptor.  :meth:`copy_from` moves bytes from
    a :class:`Source` with ``copy_file_range`` (file to file), ``sendfile``
    (file to pipe/socket) or ``splice`` (from a pipe), falling back to a
    reusable buffer.  ``fd`` None discards everything (dry run)."""

    def __init__(self, fd: Optional[int]) -> None:
        self.fd = fd
        self.pos = 0
        self._buf: Optional[bytearray] = None
        #: small writes and small page payloads gather here, written in big chunks
        self._out = bytearray()  # allocated on first use (OUT_BUFFER + SMALL_COPY)
        self._n = 0
        self.regular = False
        self.pipe = False
        if fd is not None:
            st = os.fstat(fd)
            self.regular = stat.S_ISREG(st.st_mode)
            self.pipe = stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)
            if self.regular:
                self.pos = os.lseek(fd, 0, os.SEEK_CUR)
            elif self.pipe:
                grow_pipe(fd)
        self.kernel_copies = 0
        self._cfr_ok = True
        self._sendfile_ok = True

    def write(self, data: Union[bytes, bytearray, memoryview]) -> int:
        n = len(data)
        if self.fd is not None and n:
            if not self._out:
                self._out = bytearray(OUT_BUFFER + SMALL_COPY)
            if self._n + n > len(self._out):
                self.flush()
                if n > len(self._out):
                    self._write_all(data)
                    self.pos += n
                    return n
            self._out[self._n : self._n + n] = data
            self._n += n
            if self._n >= OUT_BUFFER:
                self.flush()
        self.pos += n
        return n

    def _write_all(self, data: Any) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            w = os.write(self.fd, view)
            view = view[w:]

    def writev(self, parts: List[Any]) -> None:
        """Write ``parts`` (bytes-like, in order) with as few ``writev`` calls
        as the system's IOV_MAX allows; what :meth:`write` gathered goes first.
        The parts are not kept: the caller may reuse their memory afterwards."""
        n = sum(len(x) for x in parts)
        if self.fd is not None and n:
            if self._n and self._n + n <= len(self._out) and n < SMALL_COPY:
                for x in parts:
                    self.write(x)
                return
            self.flush()
            fd = self.fd
            for i in range(0, len(parts), IOV_MAX):
                chunk = parts[i : i + IOV_MAX]
                want = sum(len(x) for x in chunk)
                done = os.writev(fd, chunk)
                if done != want:  # a short write (a signal, a full pipe): finish it
                    self._write_all(b"".join(bytes(x) for x in chunk)[done:])
        self.pos += n

    def flush(self) -> None:
        """Write out what :meth:`write` gathered."""
        if self.fd is not None and self._n:
            with memoryview(self._out) as mv:
                self._write_all(mv[: self._n])
            self._n = 0

    def discard(self) -> None:
        """Forget what was gathered and not yet written."""
        self._n = 0

    def copy_from(self, src: Source, n: int, what: str) -> None:
        """Move ``n`` bytes from ``src`` (consuming them) to the output: small
        payloads through the reusable output buffer, large ones by the kernel."""
        if n <= 0:
            return
        at = src.pos
        if self.fd is None:
            src.skip(n, what=what, layer="legacy")
            self.pos += n
            return
        if n <= SMALL_COPY:
            self._gather(n, src.readinto, at, what)
            return
        self.flush()
        left = n
        pb = src.take_pushback(left)
        if pb:
            self.write(pb)
            left -= len(pb)
        if src.seekable:
            rem = src.remaining()
            if rem is not None and rem < n:
                src.skip(n, what=what, layer="legacy")  # raises TruncatedError
            left = self._copy_seekable(src, left)
        elif hasattr(os, "splice"):
            left = self._splice(src, left)
        while left:
            if self._buf is None:
                self._buf = bytearray(COPY_CHUNK)
            view = memoryview(self._buf)[: min(left, COPY_CHUNK)]
            got = src.readinto(view)
            if not got:
                raise TruncatedError(src.pos, left, n - left, what=what, layer="legacy")
            self._write_all(view[:got])
            self.pos += got
            left -= got

    def _gather(self, n: int, fill: Callable[[memoryview], int], at: int, what: str) -> None:
        """Read ``n`` bytes with ``fill`` straight into the output buffer."""
        if not self._out:
            self._out = bytearray(OUT_BUFFER + SMALL_COPY)
        if self._n + n > len(self._out):
            self.flush()
        with memoryview(self._out) as mv:
            got = fill(mv[self._n : self._n + n])
        if got != n:
            raise TruncatedError(at, n, got, what=what, layer="legacy")
        self._n += n
        self.pos += n
        if self._n >= OUT_BUFFER:
            self.flush()

    def copy_at(self, in_fd: int, offset: int, n: int) -> None:
        """Move ``n`` bytes at ``offset`` of a seekable input (checked by the
        caller to lie within it), without touching the input's position."""
        if self.fd is None:
            self.pos += n
            return
        if n <= SMALL_COPY:
            self._gather(n, lambda v: os.preadv(in_fd, [v], offset), offset, "page data")
            return
        src = Source(in_fd)
        src.pos = offset
        try:
            self.copy_from(src, n, "page data")
        finally:
            src.pos = src.start  # leave the shared descriptor's offset alone
            src.close()

    def _copy_seekable(self, src: Source, left: int) -> int:
        """copy_file_range to a regular file (it fails across filesystems on
        older kernels), else sendfile, which takes any output on Linux."""
        assert self.fd is not None
        fd = self.fd
        ways = []
        if self.regular and self._cfr_ok and hasattr(os, "copy_file_range"):
            ways.append("cfr")
        if self._sendfile_ok:
            ways.append("sendfile")
        end = src.pos + left
        for way in ways:
            try:
                if way == "cfr":
                    return self._kernel_loop(src, left, 1 << 30, lambda n: os.copy_file_range(
                        src.fd, fd, n, src.pos))
                return self._kernel_loop(src, left, 1 << 30,
                                         lambda n: os.sendfile(fd, src.fd, src.pos, n))
            except OSError:
                left = end - src.pos
                if way == "cfr":
                    self._cfr_ok = False
                else:
                    self._sendfile_ok = False
        return left

    def _kernel_loop(self, src: Source, left: int, step: int, move: Callable[[int], int]) -> int:
        """``move(n)`` (the kernel moves up to ``n`` bytes at ``src.pos``) until
        ``left`` bytes are done or it moves none; returns what is left."""
        while left:
            w = move(min(left, step))
            if w <= 0:
                break
            src.pos += w
            self.pos += w
            left -= w
            self.kernel_copies += 1
        return left

    def _splice(self, src: Source, left: int) -> int:
        assert self.fd is not None
        splice = os.splice  # type: ignore[attr-defined]
        out = self.fd
        end = src.pos + left
        try:
            return self._kernel_loop(src, left, 1 << 20, lambda n: splice(src.fd, out, n))
        except OSError:
            return end - src.pos


class Staging:
    """A temporary file (mode 0600, unlinked at once) that stages output (a
    later Remus checkpoint's pages, a device-model record) until it is known
    to be complete."""

    def __init__(self, directory: Optional[str]) -> None:
        fd, path = tempfile.mkstemp(prefix=".xenstream-stage-", dir=directory)
        os.unlink(path)
        self.fd = fd
        self.sink = Sink(fd)
        self.sink.regular = True

    def reset(self) -> None:
        self.sink.discard()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.sink.pos = 0

    def flush_to(self, out: Sink) -> None:
        self.sink.flush()
        n = self.sink.pos
        stage_src = Source(self.fd)
        stage_src.pos = 0
        stage_src.size = n
        out.copy_from(stage_src, n, "staged checkpoint")
        self.reset()

    def close(self) -> None:
        os.close(self.fd)

