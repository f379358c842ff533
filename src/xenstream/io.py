"""Exact, forward-only input over a file descriptor.

:class:`Source` is the only thing in xenstream that reads input bytes.  It
guarantees, whatever the descriptor is:

* reads are exact: short reads (pipes, sockets) are looped over;
* on a non-seekable descriptor no byte beyond what the caller asked for is
  ever read, so a parent process sharing the descriptor can read on from the
  very next byte;
* on a seekable descriptor small reads are served from a small window read
  with ``pread``, skips are free (no read at all), and :meth:`Source.close`
  (or leaving the ``with`` block) puts the descriptor's offset exactly at the
  end of what was consumed;
* memory is bounded: nothing here allocates more than the caller asks for,
  and :meth:`Source.skip` moves through any amount of data in bounded chunks
  (``splice`` to ``/dev/null`` where the OS has it).
"""

from __future__ import annotations

import os
import stat
import sys
from types import TracebackType
from typing import Optional, Tuple, Type, Union

from xenstream.errors import TruncatedError, UsageError

#: Size of the read window used on seekable input.  Small on purpose: a
#: verifier that skips page data should read about this much per record.
WINDOW = 16 * 1024
#: Window used while the records being skipped are small.
BIG_WINDOW = 64 * 1024
#: Chunk used to discard data from a non-seekable input.
DISCARD_CHUNK = 1024 * 1024

# -- how page data moves (the one place for these thresholds) --------------------------
#
# Page payloads of at least KERNEL_COPY_MIN bytes move in the kernel
# (copy_file_range, sendfile, splice): no copy through user space, one system
# call per payload.  Smaller payloads cost more in system calls than in
# copying, so they are read in bulk through one reusable window of
# DATA_WINDOW bytes (seekable input: one pread per window; a pipe: one read
# per payload, exactly the bytes the stream has declared) and written with
# one writev per window.  Chosen by measurement (benchmarks/README.md,
# "Choosing the threshold").

#: payloads from this size up move in the kernel
KERNEL_COPY_MIN = 128 * 1024
#: the reusable window small payloads are read through, on seekable input
DATA_WINDOW = 8 * 1024 * 1024
#: the same on a pipe, where reads are exact and at most a pipe buffer each
PIPE_DATA_WINDOW = 1024 * 1024

PathOrFd = Union[str, int]


#: pipes we read or write are grown to this (fewer, larger transfers per system
#: call: a pipe holds 64 KiB by default); at most the system's pipe-max-size
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux; named in the fcntl module from 3.10)
_F_GETPIPE_SZ = 1032


def grow_pipe(fd: int) -> None:
    """Make the pipe ``fd`` hold :data:`PIPE_SIZE` bytes where the system
    allows it (nothing happens for anything else, or where it does not)."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not sys.platform.startswith("linux"):
            return
        import fcntl

        if fcntl.fcntl(fd, _F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ValueError, ImportError):
        pass  # EPERM beyond the user's limit, EBUSY, not a pipe: keep it as it is


def _is_seekable(fd: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return False
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


class Source:
    """A forward-only reader over one file descriptor.

    ``pos`` is the absolute offset of the next byte to be consumed: the file
    offset for seekable input, the count of bytes consumed since the start
    otherwise.
    """

    def __init__(self, fd: int, *, name: str = "", close_fd: bool = False) -> None:
        self.fd = fd
        self.name = name or f"fd {fd}"
        self.close_fd = close_fd
        self.seekable = _is_seekable(fd)
        self.start = os.lseek(fd, 0, os.SEEK_CUR) if self.seekable else 0
        self.pos = self.start
        self.size: Optional[int] = None
        if self.seekable:
            self.size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, self.pos, os.SEEK_SET)
        else:
            grow_pipe(fd)
        self._win = b""
        self._win_start = 0
        self._pushback = b""
        #: size of the next window: small while records are large (skipping
        #: their payload must not read it), large while they are small
        self._window = WINDOW
        self._closed = False
        self._discard: Optional[bytearray] = None
        self._devnull: Optional[int] = None
        #: bytes obtained from the OS by read()/pread() (not skipped)
        self.bytes_read = 0

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, spec: PathOrFd, *, allow_bare_fd: bool = False) -> Source:
        """Open ``spec``: a path, ``-`` (stdin), ``/dev/fd/N``, or an fd number.

        A bare number is taken as a descriptor only when ``allow_bare_fd`` is
        set (the drop-ins' ``--in FD``) or when ``spec`` is an ``int``.
        """
        if isinstance(spec, int):
            return cls(spec, name=f"fd {spec}")
        if spec == "-":
            return cls(sys.stdin.fileno(), name="<stdin>")
        if allow_bare_fd and spec.isdigit():
            fd = int(spec)
            try:
                os.fstat(fd)
            except OSError as e:
                raise UsageError(f"cannot use file descriptor {fd}: {e.strerror}") from None
            return cls(fd, name=f"fd {fd}")
        if spec.startswith("/dev/fd/") and spec[8:].isdigit():
            # Use the descriptor itself rather than reopening: reopening a
            # pipe is fine but reopening a file would start at offset 0 and
            # lose the shared-offset contract.
            fd = int(spec[8:])
            try:
                os.fstat(fd)
            except OSError as e:
                raise UsageError(f"cannot use {spec}: {e.strerror}") from None
            return cls(fd, name=spec)
        try:
            fd = os.open(spec, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise UsageError(f"cannot open {spec}: {e.strerror}") from None
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"cannot read {spec}: is a directory")
        return cls(fd, name=spec, close_fd=True)

    # -- context management --------------------------------------------------

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self) -> None:
        """Leave the descriptor's offset at ``pos`` (seekable) and release it."""
        if self._closed:
            return
        self._closed = True
        if self.seekable:
            try:
                os.lseek(self.fd, self.pos, os.SEEK_SET)
            except OSError:
                pass
        if self._devnull is not None:
            os.close(self._devnull)
        if self.close_fd:
            os.close(self.fd)

    # -- reading -------------------------------------------------------------

    def remaining(self) -> Optional[int]:
        """Bytes left before end of file, when that is known (seekable input)."""
        if self.size is None:
            return None
        return max(0, self.size - self.pos)

    def _os_read(self, n: int) -> bytes:
        """Read up to exactly ``n`` bytes at ``pos`` (fewer only at EOF)."""
        if self.seekable:
            chunks = []
            got = 0
            while got < n:
                b = os.pread(self.fd, n - got, self.pos + got)
                if not b:
                    break
                chunks.append(b)
                got += len(b)
            data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        else:
            b = os.read(self.fd, n)
            if len(b) == n or not b:
                data = b
            else:
                parts = [b]
                got = len(b)
                while got < n:
                    b = os.read(self.fd, n - got)
                    if not b:
                        break
                    parts.append(b)
                    got += len(b)
                data = b"".join(parts)
        self.bytes_read += len(data)
        return data

    def read_upto(self, n: int) -> bytes:
        """Consume and return up to ``n`` bytes; fewer only at end of stream."""
        if n <= 0:
            return b""
        if self._pushback:
            data = self.take_pushback(n)
            if len(data) == n:
                return data
            return data + self.read_upto(n - len(data))
        if self.seekable:
            off = self.pos - self._win_start
            if off >= 0 and off + n <= len(self._win):
                self.pos += n
                return self._win[off : off + n]
            if n < WINDOW:
                self._win = self._os_read(self._window)
                self._win_start = self.pos
                data = self._win[:n]
            else:
                data = self._os_read(n)
        else:
            data = self._os_read(n)
        self.pos += len(data)
        return data

    def advance_to(self, pos: int, tail: bytes = b"") -> None:
        """Seekable input only: consume up to ``pos`` (checked by the caller
        to lie within the file).  ``tail``, bytes already fetched at ``pos``,
        becomes the read window so that they are not read again."""
        self.pos = pos
        self._win = tail
        self._win_start = pos

    def readinto(self, view: memoryview) -> int:
        """Consume up to ``len(view)`` bytes into ``view`` (one copy: from the
        window when it holds them, else straight from the OS); fewer only at
        the end of the stream."""
        n = len(view)
        got = 0
        if self._pushback:
            pb = self.take_pushback(n)
            view[: len(pb)] = pb
            got = len(pb)
        if self.seekable:
            off = self.pos - self._win_start
            if got == 0 and off >= 0 and off + n <= len(self._win):
                view[:] = self._win[off : off + n]
                self.pos += n
                return n
        while got < n:
            k = (os.preadv(self.fd, [view[got:]], self.pos) if self.seekable
                 else os.readv(self.fd, [view[got:]]))
            if k <= 0:
                break
            self.bytes_read += k
            self.pos += k
            got += k
        return got

    def read(self, n: int, *, what: str = "", layer: str = "") -> bytes:
        """Consume exactly ``n`` bytes or raise :class:`TruncatedError`."""
        at = self.pos
        data = self.read_upto(n)
        if len(data) != n:
            raise TruncatedError(at, n, len(data), what=what, layer=layer)
        return data

    def unread(self, data: bytes) -> None:
        """Give back bytes just consumed (detection peeks): the next reads
        return them again.  Nothing is re-read from a non-seekable input."""
        if not data:
            return
        self.pos -= len(data)
        if not self.seekable:
            self._pushback = data + self._pushback

    def take_pushback(self, n: int) -> bytes:
        """Up to ``n`` given-back bytes (non-seekable input), consumed."""
        if not self._pushback:
            return b""
        data, self._pushback = self._pushback[:n], self._pushback[n:]
        self.pos += len(data)
        return data

    def skip(self, n: int, *, what: str = "", layer: str = "") -> None:
        """Consume ``n`` bytes without keeping them.

        Seekable input: no read at all, only a bounds check against the file
        size.  Otherwise the bytes are moved to ``/dev/null`` with ``splice``
        where available, or read into one reusable buffer.
        """
        if n <= 0:
            return
        if self._pushback:
            n -= len(self.take_pushback(n))
            if n <= 0:
                return
        at = self.pos
        if self.seekable:
            assert self.size is not None
            self._window = BIG_WINDOW if n < BIG_WINDOW // 4 else WINDOW
            if self.pos + n > self.size:
                got = max(0, self.size - self.pos)
                self.pos = self.size
                raise TruncatedError(at, n, got, what=what, layer=layer)
            self.pos += n
            return
        left = n
        if hasattr(os, "splice"):
            left, eof = self._skip_splice(left)
            if eof:
                raise TruncatedError(at, n, n - left, what=what, layer=layer)
        if left:
            if self._discard is None:
                self._discard = bytearray(min(left, DISCARD_CHUNK))
            view = memoryview(self._discard)
            while left:
                k = min(left, len(self._discard))
                got = os.readv(self.fd, [view[:k]])
                if got <= 0:
                    raise TruncatedError(at, n, n - left, what=what, layer=layer)
                self.bytes_read += got
                self.pos += got
                left -= got

    def _skip_splice(self, left: int) -> Tuple[int, bool]:
        """Move ``left`` bytes from a pipe to /dev/null.  Returns what is left
        and whether the input ended (splice unsupported: nothing moved, False)."""
        if self._devnull is None:
            try:
                self._devnull = os.open(os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return left, False
        splice = os.splice  # type: ignore[attr-defined]
        while left:
            try:
                got = splice(self.fd, self._devnull, min(left, DISCARD_CHUNK))
            except OSError:
                return left, False  # not a pipe: fall back to reading
            if got <= 0:
                return left, True
            self.pos += got
            left -= got
        return left, False

