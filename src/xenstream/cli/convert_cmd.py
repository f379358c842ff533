"""Conversion front ends: ``xenstream convert`` and the ``convert-legacy-stream`` drop-in.

Output safety (:mod:`xenstream.consumers.output`): a regular-file output is
written to an exclusive temporary file (mode 0600) in the same directory and
renamed over the target only on success, so a failure leaves no partial file
and an existing file untouched; the output can never be the input.  Before the
rename the file's data is flushed to the disk (``fdatasync``), and after it the
directory (``fsync``), so a power loss leaves either the old file or the whole
new one under the name (``--no-fsync`` skips both).  FIFOs, devices and
descriptors are written directly (a failure is then the non-zero exit status;
their durability is the caller's).
"""

from __future__ import annotations

from typing import Callable, Tuple

from xenstream.cli.common import Progress
from xenstream.consumers.convert import (
    ConversionError,
    Converter,
    ConvertOptions,
    ConvertResult,
    Sink,
)
from xenstream.consumers.output import Output, open_output
from xenstream.errors import FormatError, UsageError
from xenstream.io import Source

__all__ = ["Output", "Progress", "error_line", "open_output", "run_conversion"]


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
