"""Drop-in replacement for Xen's ``convert-legacy-stream``.

Same options and meaning as upstream (``tools/python/scripts/convert-legacy-stream``):
``-i/--in`` and ``-o/--out`` (an fd number or a file), ``-w/--width 32|64``,
``-g/--guest-type pv|hvm`` (``--guest`` as libxl abbreviates it),
``-f/--format libxc|libxl`` (default libxc), ``-x/--xl``, ``--skip-qemu``,
``-v``, ``--syslog``, ``--version`` (and xenstream's ``--no-fsync``: an output
file is otherwise flushed to the disk before it is renamed into place).  Width and guest type are optional and
detected from the content: a ``-w`` that contradicts it is overridden with a
warning (libxl passes its own width), a ``-g`` that contradicts it is an
error.  The input is never read past the legacy stream, so with
``--skip-qemu`` the caller reads the qemu record from the same descriptor.
Exit status: 0 converted, 1 bad input, 2 usage or internal error.
"""

from __future__ import annotations

import argparse
import sys
import syslog
from typing import List, Optional

from xenstream.cli.common import EXIT_OK, EXIT_USAGE, dropin_parser, guarded
from xenstream.consumers.convert import CONVERTER_VERSION, ConvertOptions
from xenstream.errors import UsageError
from xenstream.io import Source
from xenstream.rules import ANY_RELEASE

PROG = "convert-legacy-stream"


def build_parser() -> argparse.ArgumentParser:
    p = dropin_parser(
        PROG, "%(prog)s [options] -i INPUT -o OUTPUT [-w WIDTH] [-g GUEST]",
        "Convert a legacy stream to a v2 (or later) stream. Drop-in replacement "
        "for Xen's convert-legacy-stream (xenstream): width and guest type are detected.",
        "examples:\n  convert-legacy-stream -i old.libxc -o new.libxc\n"
        "  convert-legacy-stream -x -f libxl -i old.xl -o stream.libxl\n"
        "  convert-legacy-stream --in 5 --out 7 --width 64 --guest hvm --format libxl   (libxl)\n"
        "\nexit status: 0 converted, 1 bad input, 2 usage or internal error")
    p.add_argument("-i", "--in", dest="fin", metavar="<FD or FILE>", help="Legacy input to convert")
    p.add_argument("-o", "--out", dest="fout", metavar="<FD or FILE>",
                   help="v2 (or later) format output")
    p.add_argument("-w", "--width", dest="twidth", metavar="<32/64>", choices=["32", "64"],
                   help="Legacy toolstack bitness (default: detected; a contradiction is "
                   "overridden by the content, with a warning)")
    p.add_argument("-g", "--guest-type", dest="gtype", metavar="<pv/hvm>", choices=["pv", "hvm"],
                   help="Type of guest in stream (default: detected; a contradiction is an "
                   "error)")
    p.add_argument("-f", "--format", dest="format", metavar="<libxc|libxl>", default="libxc",
                   choices=["libxc", "libxl"],
                   help="Desired format of the outgoing stream (defaults to libxc)")
    p.add_argument("-v", "--verbose", action="store_true", help="Summarise stream contents")
    p.add_argument("-x", "--xl", action="store_true",
                   help="Is an `xl` header present in the stream? (default no)")
    p.add_argument("--skip-qemu", action="store_true",
                   help="Skip processing of the qemu tail? (default no)")
    p.add_argument("--stream-version", type=int, choices=[2, 3], default=2,
                   help="libxc stream version to write (default 2, which every Xen from 4.6 "
                   "restores; 3 needs Xen >= 4.14)")
    p.add_argument("--syslog", action="store_true", help="Log to syslog instead of stdout")
    p.add_argument("--no-fsync", action="store_true",
                   help="(xenstream) an output FILE is not flushed to the disk before it is "
                   "renamed into place")
    p.add_argument("--version", action="version",
                   version=f"{CONVERTER_VERSION} (xenstream)")
    return p


def _run(args: argparse.Namespace) -> int:
    from xenstream.cli.convert_cmd import error_line, open_output, run_conversion

    if args.syslog:
        syslog.openlog(PROG, syslog.LOG_PID)

    def log(level: str, msg: str) -> None:
        if level == "info" and not args.verbose:
            return
        if args.syslog:
            syslog.syslog(syslog.LOG_WARNING if level == "warning" else syslog.LOG_INFO, msg)
        elif level == "warning":
            print(f"{PROG}: warning: {msg}", file=sys.stderr)
        else:
            print(msg, flush=True)

    def err(msg: str) -> None:
        if args.syslog:
            syslog.syslog(syslog.LOG_ERR, msg)
        print(msg, file=sys.stderr)

    if args.fin is None or args.fout is None:
        build_parser().print_usage(sys.stderr)
        err(f"{PROG}: -i/--in and -o/--out are required")
        return EXIT_USAGE
    try:
        src = Source.open(args.fin, allow_bare_fd=True)
    except UsageError as e:
        err(f"{PROG}: {e}")
        return EXIT_USAGE
    opts = ConvertOptions(
        out_format=args.format, width_hint=int(args.twidth) // 8 if args.twidth else None,
        guest=args.gtype, skip_qemu=args.skip_qemu, xl=args.xl, keep_envelope=args.xl,
        upstream_xl=True, hints=False, stream_version=args.stream_version, target=ANY_RELEASE)
    with src:
        try:
            out = open_output(args.fout, src, allow_bare_fd=True, durable=not args.no_fsync)
            res = run_conversion(src, out, opts, log)
        except Exception as e:  # noqa: BLE001 - one line, never a traceback
            line, rc = error_line(e, src.name)
            err(f"{PROG}: {line}")
            return rc
    log("info", f"converted {res.guest.upper()} stream from a {res.width}-bit toolstack: "
                f"{res.output}, {res.pages} pages")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: _run(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
