"""Conversion front ends: ``xenstream convert`` and the ``convert-legacy-stream`` drop-in.

Output safety: a regular-file output is written to an exclusive temporary file
(mode 0600) in the same directory and renamed over the target only on
success, so a failure leaves no partial file and an existing file untouched;
the output can never be the input.  Before the rename the file's data is
flushed to the disk (``fdatasync``), and after it the directory (``fsync``),
so a power loss leaves either the old file or the whole new one under the
name (``--no-fsync`` skips both, for users who sync once after a batch).
FIFOs, devices and descriptors are written directly (a failure is then the
non-zero exit status; their durability is the caller's).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from typing import Callable, Optional, Tuple

from xenstream.consumers.convert import (
    ConversionError,
    Converter,
    ConvertOptions,
    ConvertResult,
    Sink,
)
from xenstream.errors import FormatError, UsageError
from xenstream.io import Source


class Output:
    """Where converted bytes go; :meth:`commit` or :meth:`abort` ends it."""

    def __init__(self, fd: Optional[int], *, final: Optional[str] = None,
                 tmp: Optional[str] = None, close: bool = False, name: str = "",
                 durable: bool = True) -> None:
        self.fd = fd
        self.final = final
        self.tmp = tmp
        self.close_fd = close
        self.name = name
        #: flush the data and the rename to the disk (a file we create only)
        self.durable = durable

    def commit(self) -> None:
        """Make the output final: for a file we created, its data on the disk
        (when durable), then the rename, then the directory entry on the disk."""
        renaming = self.tmp is not None and self.final is not None
        if renaming and self.durable and self.fd is not None:
            os.fdatasync(self.fd)
        if self.close_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if renaming:
            assert self.tmp is not None and self.final is not None
            os.replace(self.tmp, self.final)
            self.tmp = None
            if self.durable:
                fsync_directory(os.path.dirname(os.path.abspath(self.final)))

    def abort(self) -> None:
        if self.close_fd and self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None


def fsync_directory(path: str) -> None:
    """``fsync`` a directory, so that a rename in it is on the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_output(spec: str, src: Source, *, allow_bare_fd: bool = False,
                dry_run: bool = False, durable: bool = True) -> Output:
    """Open ``spec`` (path, ``-``, ``/dev/fd/N``, or a bare fd number for the
    drop-in) for writing the conversion of ``src``; ``durable``: see
    :meth:`Output.commit`."""
    if dry_run:
        return Output(None, name="(dry run)")
    in_st = os.fstat(src.fd)
    fd: Optional[int] = None
    if spec == "-":
        fd = sys.stdout.fileno()
        if os.isatty(fd):
            raise UsageError("refusing to write a binary image to a terminal")
    elif allow_bare_fd and spec.isdigit():
        fd = int(spec)
    elif spec.startswith("/dev/fd/") and spec[8:].isdigit():
        fd = int(spec[8:])
    if fd is not None:
        try:
            fst = os.fstat(fd)
        except OSError as e:
            raise UsageError(f"cannot write to {spec}: {e.strerror}") from None
        if stat.S_ISREG(fst.st_mode) and _same_file(fst, in_st):
            raise UsageError(f"the output {spec} is the input")
        return Output(fd, name=spec)
    st: Optional[os.stat_result]
    try:
        st = os.stat(spec)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"cannot use {spec}: {e.strerror}") from None
    if st is not None:
        if _same_file(st, in_st):
            raise UsageError(f"the output {spec} is the input")
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"cannot write to {spec}: is a directory")
        if not stat.S_ISREG(st.st_mode):  # FIFO, device, socket: write directly
            try:
                fd = os.open(spec, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise UsageError(f"cannot open {spec}: {e.strerror}") from None
            return Output(fd, close=True, name=spec)
    directory = os.path.dirname(os.path.abspath(spec))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(spec)}.", suffix=".xenstream-tmp",
                                   dir=directory)
    except OSError as e:
        raise UsageError(f"cannot create a file in {directory}: {e.strerror}") from None
    return Output(fd, final=spec, tmp=tmp, close=True, name=spec, durable=durable)


def run_conversion(src: Source, out: Output, opts: ConvertOptions,
                   log: Callable[[str, str], None]) -> ConvertResult:
    """Convert; on any failure remove the partial output and re-raise."""
    try:
        res = Converter(src, Sink(out.fd), opts, log).run()
    except BaseException:
        out.abort()
        raise
    out.commit()
    return res


def error_line(e: BaseException, name: str) -> Tuple[str, int]:
    """The one-line message and exit status for a failed conversion."""
    if isinstance(e, UsageError):
        return f"{e}", 2
    if isinstance(e, (ConversionError, FormatError)):
        return f"{name}: {e}", 1
    if isinstance(e, OSError):
        return f"{name}: {e.strerror or e}", 1
    return f"internal error: {type(e).__name__}: {e}", 2


class Progress:
    """A progress bar on a terminal (tqdm when installed, a plain line otherwise)."""

    def __init__(self, total: Optional[int], enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and total is not None and sys.stderr.isatty()
        self._bar = None
        self._last = -1
        if self.enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found,import-untyped,unused-ignore]

                self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                 leave=False, desc="converting")
            except ImportError:
                self._bar = None

    def __call__(self, pos: int) -> None:
        if not self.enabled or self.total is None:
            return
        if self._bar is not None:
            self._bar.update(pos - self._bar.n)
            return
        pct = pos * 100 // max(1, self.total)
        if pct != self._last:
            self._last = pct
            print(f"\rconverting: {pct:3d}%", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
