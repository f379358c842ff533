"""Where the consumers that write files put their output.

:func:`open_output` opens the target of a conversion or an extraction: a
regular-file output is written to an exclusive temporary file (mode 0600: the
output may hold guest secrets) in the target's directory and renamed over the
target only on :meth:`Output.commit`, so a failure (:meth:`Output.abort`)
leaves no partial file and an existing file untouched; the output can never
be the input.  Before the rename the file's data is flushed to the disk
(``fdatasync``) and after it the directory (``fsync``), so a power loss
leaves either the old file or the whole new one under the name (``durable``
False, the commands' ``--no-fsync``, skips both).  FIFOs, devices and
descriptors (``-``, ``/dev/fd/N``) are written directly; their durability is
the caller's.  :class:`ExtractError` is the one-line error of the
extractions (``extract-memory``, ``extract``), with the input offset it is
about.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from typing import Optional

from xenstream.errors import UsageError, XenstreamError
from xenstream.io import Source


class ExtractError(XenstreamError):
    """The input cannot give what was asked; ``offset`` names where."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message

    def __str__(self) -> str:
        return f"offset {self.offset:#x}: {self.message}"


class Output:
    """Where the output goes; :meth:`commit` or :meth:`abort` ends it."""

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
    return Output(fd, final=spec, tmp=tmp, close=True, name=spec, durable=durable)



def output_mode(fd: int) -> str:
    """How an output descriptor can be written: "file" (a regular file that
    ``pwrite`` places at any offset), "append" (a regular file opened with
    O_APPEND: writes land at its end whatever the offset) or "stream" (pipes,
    sockets, terminals, devices: written in order)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "stream"
    try:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return "append"
    except (ImportError, OSError):
        pass
    return "file"
