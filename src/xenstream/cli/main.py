"""The ``xenstream`` command."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional, Tuple

from xenstream import __version__
from xenstream.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, guarded
from xenstream.cli.extract_cmd import add_extract, add_extract_memory
from xenstream.cli.inspect_cmd import add_dump, add_info
from xenstream.cli.regs_cmd import add_regs
from xenstream.consumers.report import RecordPrinter, finding_lines, to_json, verdict
from xenstream.consumers.verify import verify
from xenstream.errors import UsageError
from xenstream.io import Source

PROG = "xenstream"
FORMATS = ["libxc", "libxl", "xl", "libvirt", "xenopsd", "xend", "legacy"]

EPILOG = """\
examples:
  xenstream sample -o demo.xl          write a small HVM xl save file
  xenstream verify -v demo.xl          check it, listing every record
  xenstream verify --json image.save   one JSON document for scripts
  xenstream config vm.save             the domain configuration it carries
  xenstream convert old.xl new.xl      bring a Xen <= 4.5 image forward
  cat image.save | xenstream verify -  read a pipe

exit status: 0 valid, 1 invalid input, 2 usage or internal error
"""


def _open_input(spec: str) -> Optional[Tuple[Source, str]]:
    """The input and the name to report it by; None (after a one-line message)
    when it cannot be opened."""
    try:
        src = Source.open(spec)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return None
    return src, spec if spec != "-" else "<stdin>"


def _target_xen(text: str) -> List[str]:
    """--target-xen's value: the releases it names (argparse's type)."""
    from xenstream import releases

    try:
        return releases.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _verify(args: argparse.Namespace) -> int:
    opened = _open_input(args.file)
    if opened is None:
        return EXIT_USAGE
    src, name = opened
    printer: Optional[RecordPrinter] = None
    if args.verbose and not args.quiet and not args.json:
        printer = RecordPrinter(print)
    with src:
        res = verify(src, format=args.format, lenient=args.lenient, on_item=printer,
                     skip_qemu=args.skip_qemu, releases=args.target_xen is not None)
    res.file = name
    if printer:
        printer.close()
    if args.target_xen is not None:
        return _verify_target(args, res, name)
    if args.json:
        print(to_json(res))
    elif not args.quiet:
        lines = finding_lines(res, name, warnings=True)
        for line in lines:
            print(line, file=sys.stderr if not res.valid else sys.stdout)
        if args.verbose:
            for n in res.notes:
                print(f"{name}: note: {n}")
        print(verdict(res, name))
    return EXIT_OK if res.valid else EXIT_INVALID


def _verify_target(args: argparse.Namespace, res: Any, name: str) -> int:
    """verify --target-xen: the verdict of one release, or of every release."""
    import json

    from xenstream import releases
    from xenstream.consumers import restorability as rb

    targets: List[str] = args.target_xen
    every = len(targets) > 1
    release = releases.HEAD if every else targets[0]
    v = rb.judge(res, release)
    if args.json:
        requested = "all" if every else release
        print(json.dumps(rb.to_json(res, requested, release), indent=2))
    elif not args.quiet:
        if every:
            for line in rb.all_lines(res, name):
                print(line)
        else:
            lines, v = rb.text_lines(res, name, release)
            for line in lines[:-1]:
                print(line, file=sys.stderr if v.outcome == releases.REFUSED else sys.stdout)
            print(lines[-1])
        if args.verbose:
            for n in res.notes:
                print(f"{name}: note: {n}")
    return rb.exit_code(v)


def _config(args: argparse.Namespace) -> int:
    import json

    from xenstream.consumers.config import find_config
    from xenstream.errors import FormatError

    opened = _open_input(args.file)
    if opened is None:
        return EXIT_USAGE
    src, name = opened
    try:
        with src:
            cfg = find_config(src, format=args.format)
    except FormatError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if cfg is None:
        print(f"{name}: the image carries no domain configuration (bare libxl, libxc or legacy "
              "streams have none)", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        doc = {"file": name, **cfg.to_json()}
        print(json.dumps(doc, indent=2))
    else:
        text = cfg.text()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from xenstream.cli.convert_cmd import Progress, error_line, open_output, run_conversion
    from xenstream.consumers.convert import ConvertOptions

    try:
        target, stream_version = _convert_target(args)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    opened = _open_input(args.input)
    if opened is None:
        return EXIT_USAGE
    src, name = opened
    quiet = args.quiet

    def log(level: str, msg: str) -> None:
        if level == "warning" and not quiet:
            print(f"{name}: warning: {msg}", file=sys.stderr)
        elif level == "info" and args.verbose:
            print(f"{name}: {msg}", file=sys.stderr)

    progress = Progress(src.size, not quiet and not args.dry_run)
    opts = ConvertOptions(
        out_format=args.format, stream_version=stream_version, target=target,
        width=args.width // 8 if args.width else None, guest=args.guest_type, force=args.force,
        skip_qemu=args.skip_qemu, drop_tmem=args.drop_tmem, tmpdir=args.tmpdir,
        progress=progress)
    with src:
        try:
            out = open_output(args.output, src, dry_run=args.dry_run,
                              durable=not args.no_fsync)
            res = run_conversion(src, out, opts, log)
        except Exception as e:  # noqa: BLE001 - one line, never a traceback
            progress.close()
            line, rc = error_line(e, name)
            print(f"{PROG}: {line}" if rc == 2 else line, file=sys.stderr)
            return rc
        finally:
            progress.close()
    if res.sxp is not None and not args.dry_run and args.output != "-":
        cfg = args.output + ".sxp"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(res.sxp)
        if not quiet:
            print(f"{name}: the xend configuration is in {cfg}: convert it to an xl config "
                  f"and run `xl restore CFG {args.output}`", file=sys.stderr)
    if not quiet:
        what = "checked (dry run, nothing written)" if args.dry_run else f"wrote {args.output}"
        guest = res.guest.upper() + (f" {res.width}-bit toolstack" if res.width else "")
        cps = f", {res.checkpoints} checkpoints collapsed" if res.checkpoints > 1 else ""
        print(f"{name}: {what}: {res.output}, {guest}, {res.pages} pages{cps}", file=sys.stderr)
    return EXIT_OK


def _convert_target(args: argparse.Namespace) -> Tuple[str, int]:
    """The release convert judges against and the stream version it writes:
    v3 where the target restores v3 (4.14 on), v2 before (release-stream-v3)."""
    from xenstream.rules import HEAD, REFUSED, rule, verdict

    if args.target_xen is None:
        return HEAD, args.stream_version or 3
    if len(args.target_xen) > 1:
        raise UsageError("convert --target-xen takes one release (X.Y, X.Y.Z or HEAD), not all")
    target = args.target_xen[0]
    v2_only = verdict(rule("release-stream-v3"), target) == REFUSED
    wanted = 2 if v2_only else 3
    if args.stream_version is not None and args.stream_version != wanted and v2_only:
        raise UsageError(f"--stream-version 3 is refused by Xen {target} (stream v3 from 4.14)")
    return target, args.stream_version or wanted


def _sample(args: argparse.Namespace) -> int:
    import tempfile

    from xenstream.writers.sample import write_sample

    out = args.output
    if out in (None, "-"):
        if sys.stdout.isatty():
            print(f"{PROG}: refusing to write a binary image to a terminal; use -o FILE",
                  file=sys.stderr)
            return EXIT_USAGE
        write_sample(sys.stdout.buffer, pv=args.pv, pages=args.pages, vcpus=args.vcpus)
        sys.stdout.buffer.flush()
        return EXIT_OK
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".xenstream-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_sample(f, pv=args.pv, pages=args.pages, vcpus=args.vcpus)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    kind = "PV" if args.pv else "HVM"
    print(f"wrote {out}: xl save file, libxl v2 stream, {kind} guest, {args.pages} pages, "
          f"{args.vcpus} vcpus")
    return EXIT_OK


def _command(sub: Any, name: str, help: str, description: str, epilog: str) -> Any:
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _image_args(p: Any, file_help: str, format_help: str) -> None:
    """The image operand and --format, as verify and config take them."""
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help=file_help)
    p.add_argument("--format", choices=FORMATS, help=format_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Read, verify and inspect Xen save images and migration streams.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    v = _command(
        sub, "verify", "check an image against the specs and Xen's restore rules",
        "Check a save image or migration stream against the libxc/libxl "
        "specifications and the rules of Xen's C restore code. The layers (xl, libxl, "
        "libxc) are detected from content; checkpointed Remus/COLO streams are followed.",
        "examples:\n  xenstream verify demo.xl\n  xenstream verify --json -q img\n"
        "  ssh host cat /var/lib/xen/save/vm | xenstream verify -\n"
        "  xenstream verify --target-xen 4.17 vm.save     will Xen 4.17.0 restore it?\n"
        "  xenstream verify --target-xen all vm.save      one line per release\n\n"
        "exit status: 0 valid, 1 invalid, 2 usage or internal error; with --target-xen: 0 "
        "the release restores it (perhaps on a condition of the host, printed), 1 it does "
        "not")
    _image_args(v, "image to check: a path, - for stdin (default), or /dev/fd/N",
                "require this outermost format instead of detecting it")
    v.add_argument("-v", "--verbose", action="store_true",
                   help="list every header and record (runs of PAGE_DATA squashed)")
    v.add_argument("-q", "--quiet", action="store_true", help="print nothing; exit status only")
    v.add_argument("--json", action="store_true", help="print one JSON document")
    v.add_argument("--lenient", action="store_true",
                   help="report spec violations that Xen's restore tolerates as warnings")
    v.add_argument("--skip-qemu", action="store_true",
                   help="a legacy HVM image ends at its tail: the caller keeps the "
                   "device-model record (as convert --skip-qemu)")
    v.add_argument("--target-xen", metavar="X.Y[.Z]|HEAD|all", type=_target_xen,
                   help="judge whether this Xen release restores the image (through xl/libxl "
                   "or the envelope's toolstack): exit 0 if it does or does on a host with "
                   "what is printed, 1 if not; all: one line per release, exit as for HEAD")
    v.set_defaults(func=_verify)

    c = _command(
        sub, "config", "print the domain configuration an image carries",
        "Print the domain configuration embedded in a save image: libxl JSON or "
        "xl cfg text (xl save files), the domain XML (libvirt), the SXP configuration (xend), "
        "or the metadata record (XenServer). Only the headers are read.",
        "examples:\n  xenstream config demo.xl\n  xenstream config --json vm.save | jq .kind\n\n"
        "exit status: 0 printed, 1 no configuration or unreadable image, 2 usage error")
    _image_args(c, "image: a path, - for stdin (default), or /dev/fd/N",
                "require this outermost format")
    c.add_argument("--json", action="store_true",
                   help="print {kind, envelope, offset, length, config} as JSON")
    c.set_defaults(func=_config)
    add_info(sub)
    add_dump(sub)
    add_regs(sub)

    cv = _command(
        sub, "convert", "convert a legacy (Xen <= 4.5) image to one current Xen restores",
        "Convert a legacy save image (Xen 3.4-4.5: xl, libvirt, xend, XenServer or a "
        "bare libxc stream) to a stream current Xen restores, keeping its envelope: xl files "
        "get STREAMv2 around a libxl v2 stream, libvirt files version 2, xend files become xl "
        "files (the SXP config is written to OUT.sxp), bare and XenServer streams become libxc "
        "v3. The saving toolstack's width and the guest type are detected from the content.",
        "examples:\n  xenstream convert old.xl new.xl\n"
        "  xenstream convert --target-xen 4.11 old.xl new.xl   a stream v2 for a 4.11 host\n"
        "  xenstream convert --dry-run old.save -\n"
        "  ssh oldhost cat vm.save | xenstream convert - vm.xl\n\n"
        "exit status: 0 converted, 1 bad input (no output is left behind), 2 usage or "
        "internal error")
    cv.add_argument("input", metavar="IN", help="legacy image: a path, - for stdin, /dev/fd/N")
    cv.add_argument("output", metavar="OUT",
                    help="where to write: a path (written atomically), - for stdout, a FIFO")
    cv.add_argument("--width", type=int, choices=[32, 64],
                    help="saving toolstack's width (default: detected; contradicting the "
                    "content is an error unless --force)")
    cv.add_argument("--guest-type", choices=["pv", "hvm"],
                    help="guest type (default: detected; same rule)")
    cv.add_argument("--force", action="store_true",
                    help="convert with the given --width/--guest-type even against the content")
    cv.add_argument("--format", choices=["libxc", "libxl"],
                    help="stream inside a bare legacy image's output (default libxc)")
    cv.add_argument("--stream-version", type=int, choices=[2, 3], default=None,
                    help="libxc stream version to write (default 3; with --target-xen, what "
                    "that release restores: 2 before 4.14)")
    cv.add_argument("--target-xen", metavar="X.Y[.Z]", type=_target_xen,
                    help="write what this release restores and judge the output against it "
                    "instead of HEAD (e.g. 4.11 restores TSC mode 3, 4.12 refuses it)")
    cv.add_argument("--skip-qemu", action="store_true",
                    help="stop after the HVM tail and leave the qemu record unread")
    cv.add_argument("--drop-tmem", action="store_true",
                    help="convert a guest that used tmem, losing its tmem pages (warned)")
    cv.add_argument("--dry-run", action="store_true",
                    help="perform the whole conversion without writing anything")
    cv.add_argument("--no-fsync", action="store_true",
                    help="do not flush the output to the disk before renaming it into place "
                    "(faster; a power loss may then leave an empty or partial file under "
                    "OUT: sync once after a batch of conversions)")
    cv.add_argument("--tmpdir", metavar="DIR",
                    help="directory for staging checkpointed (Remus) streams (default: $TMPDIR)")
    cv.add_argument("-v", "--verbose", action="store_true", help="say what was found")
    cv.add_argument("-q", "--quiet", action="store_true",
                    help="print errors only (no warnings, no progress)")
    cv.set_defaults(func=_convert)

    add_extract_memory(sub)
    add_extract(sub)

    s = _command(
        sub, "sample", "write a small realistic save image",
        "Write a small, valid xl save file (libxl v2 stream around libxc v3) "
        "to try the other commands on.",
        "examples:\n  xenstream sample -o demo.xl\n  xenstream sample --pv -o pv.xl")
    s.add_argument("-o", "--output", metavar="FILE", help="output path (default: stdout)")
    s.add_argument("--pv", action="store_true", help="a 64-bit PV guest instead of HVM")
    s.add_argument("--pages", type=int, default=2048, help="guest pages (default 2048 = 8 MiB)")
    s.add_argument("--vcpus", type=int, default=2, help="vcpus (default 2)")
    s.set_defaults(func=_sample)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "sample" and (args.pages < 16 or args.vcpus < 1 or args.vcpus > 128):
        parser.error("--pages must be >= 16 and --vcpus between 1 and 128")
    return guarded(lambda: int(args.func(args)), PROG)


if __name__ == "__main__":
    sys.exit(main())
