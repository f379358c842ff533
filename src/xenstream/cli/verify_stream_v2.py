"""Drop-in replacement for Xen's ``verify-stream-v2``.

Same options and meaning as upstream (``tools/python/scripts/verify-stream-v2``):
``-i/--in FD-or-FILE`` (default: stdin, fd 0), ``-f/--format libxc|libxl|xl``,
``-v``, ``-q``, ``--syslog``.  Without ``-f`` the format is detected.  It never
reads past the end of the stream, so a caller sharing the fd (XenServer's
suspend-image viewer) reads on from the next byte.  Exit 0 valid, 1 invalid,
2 usage or internal error.
"""

from __future__ import annotations

import argparse
import sys
import syslog
from typing import List, Optional

from xenstream import __version__
from xenstream.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, dropin_parser, guarded
from xenstream.consumers.report import RecordPrinter, finding_lines, verdict
from xenstream.consumers.verify import verify
from xenstream.errors import UsageError
from xenstream.io import Source

PROG = "verify-stream-v2"


class _Log:
    def __init__(self, use_syslog: bool, quiet: bool, verbose: bool) -> None:
        self.syslog = use_syslog
        self.quiet = quiet
        self.verbose = verbose
        if use_syslog:
            syslog.openlog(PROG, syslog.LOG_PID)

    def info(self, msg: str) -> None:
        if self.quiet or not self.verbose:
            return
        if self.syslog:
            syslog.syslog(syslog.LOG_INFO, msg)
        else:
            print(msg, flush=True)

    def err(self, msg: str) -> None:
        if self.quiet:
            return
        if self.syslog:
            syslog.syslog(syslog.LOG_ERR, msg)
        print(msg, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = dropin_parser(
        PROG, "%(prog)s [options]",
        "Verify a stream according to the v2 (or later) spec. Drop-in "
        "replacement for Xen's verify-stream-v2 (xenstream).",
        "examples:\n  verify-stream-v2 -i image.libxc\n  verify-stream-v2 -f xl -i save.xl -v\n"
        "  verify-stream-v2 --in 5 --syslog      (a caller's fd; the offset is left just past "
        "the stream)\n\nexit status: 0 valid, 1 stream error, 2 usage or internal error")
    p.add_argument("-i", "--in", dest="fin", metavar="<FD or FILE>", default="0",
                   help="Stream to verify (defaults to stdin)")
    p.add_argument("-v", "--verbose", action="store_true", help="Summarise stream contents")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress all logging/errors")
    p.add_argument("-f", "--format", dest="format", metavar="<libxc|libxl|xl>",
                   choices=["libxc", "libxl", "xl"],
                   help="Format of the incoming stream (default: detected from content)")
    p.add_argument("--syslog", action="store_true", help="Log to syslog instead of stdout")
    p.add_argument("--version", action="version", version=f"%(prog)s (xenstream {__version__})")
    return p


def _run(args: argparse.Namespace) -> int:
    log = _Log(args.syslog, args.quiet, args.verbose)
    try:
        src = Source.open(args.fin, allow_bare_fd=True)
    except UsageError as e:
        log.err(f"{PROG}: {e}")
        return EXIT_USAGE
    name = src.name
    printer = RecordPrinter(log.info) if args.verbose and not args.quiet else None
    with src:
        res = verify(src, format=args.format, check_trailing=False, reject_legacy=True,
                     on_item=printer)
    if printer:
        printer.close()
    for line in finding_lines(res, name, warnings=False):
        log.err(line)
    for f in res.warnings:
        log.info(f"{name}: offset {f.offset:#x}, {f.what}: warning: {f.message}")
    log.info(verdict(res, name))
    return EXIT_OK if res.valid else EXIT_INVALID


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: _run(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
