"""Conversion front ends: ``xenstream convert`` and the ``convert-legacy-stream`` drop-in.

Output safety: a regular-file output is written to an exclusive temporary file
(mode 0600) in the same directory and renamed over the target only on
success, so a failure leaves no partial file and an existing file untouched;
the output can never be the input.  FIFOs, devices and descriptors are written
directly (a failure is then the non-zero exit status).
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
                 tmp: Optional[str] = None, close: bool = False, name: str = "") -> None:
        self.fd = fd
        self.final = final
        self.tmp = tmp
        self.close_fd = close
        self.name = name

    def commit(self) -> None:
        # No fsync: the input is never the output, so a crash loses nothing
        # that cannot be converted again; the rename is what keeps a partial
        # file from ever standing under the output's name.
        if self.close_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None and self.final is not None:
            os.replace(self.tmp, self.final)
            self.tmp = None

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


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_output(spec: str, src: Source, *, allow_bare_fd: bool = False,
                dry_run: bool = False) -> Output:
    """Open ``spec`` (path, ``-``, ``/dev/fd/N``, or a bare fd number for the
    drop-in) for writing the conversion of ``src``."""
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
    return Output(fd, final=spec, tmp=tmp, close=True, name=spec)


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
