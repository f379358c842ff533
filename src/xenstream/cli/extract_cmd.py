"""``xenstream extract-memory`` and ``xenstream extract``: the front ends of
:mod:`xenstream.consumers.memory` and :mod:`xenstream.consumers.blobs`.

:func:`add_extract_memory` and :func:`add_extract` register the commands on
the ``xenstream`` sub-command parser.  Errors are one line: bad input (with
the file offset) exit 1, usage errors exit 2; no output is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Tuple

from xenstream.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Progress
from xenstream.consumers.output import ExtractError
from xenstream.errors import FormatError, UsageError
from xenstream.io import Source

PROG = "xenstream"

MEMORY_EPILOG = """\
formats:
  raw       byte offset = pfn * 4096, holes left as holes (sparse); to a pipe the
            holes are written as zeros up to the highest pfn (LibVMI, dd, grep)
  elf       ELF64 core: a PT_LOAD per run of pfns (p_paddr = p_vaddr = address),
            an NT_PRSTATUS note per vcpu (gdb -core, Volatility 3, crash)
  xen-core  the layout of `xl dump-core` (Volatility 3's XenCoreDumpLayer, crash)

examples:
  xenstream extract-memory vm.xl -o vm.raw
  xenstream extract-memory --format elf vm.save -o vm.core && gdb -core vm.core
  xenstream extract-memory --format xen-core vm.xl -o vm.dump && vol -f vm.dump banners.Banners
  ssh host cat vm.save | xenstream extract-memory - -o - | strings | grep secret

The memory is the restored guest's: the last copy of each page across live
iterations and complete Remus/COLO checkpoints (an incomplete last checkpoint
is dropped, as a failover restore drops it). Outputs are created mode 0600.

exit status: 0 written, 1 bad input (no output is left behind), 2 usage or
internal error
"""

EXTRACT_EPILOG = """\
what:
  emulator-context  the device model's saved state as it is (qemu-upstream: the
                    QEVM stream `qemu -incoming` reads); legacy HVM images: the
                    qemu record's data; XenServer: the Qemu_trad frame's payload
  hvm-context       the HVM context blob (HVM_CONTEXT record, legacy HVM tail)
  shared-info       a PV guest's shared info page
  xenstore          the device model's xenstore keys (EMULATOR_XENSTORE_DATA;
                    legacy: the physmap toolstack record), as key=value lines

examples:
  xenstream extract vm.xl --what emulator-context -o qemu.state
  xenstream extract vm.xl --what xenstore
  xenstream extract --what xenstore --json vm.xl | jq .
  xenstream extract vm.save --what hvm-context -o - | xxd | head

The copy of the last complete checkpoint. The configuration is `xenstream config`.

exit status: 0 written, 1 bad input or the image has no such blob, 2 usage or
internal error
"""


def _error(e: BaseException, name: str) -> Tuple[str, int]:
    if isinstance(e, UsageError):
        return f"{PROG}: {e}", EXIT_USAGE
    if isinstance(e, (ExtractError, FormatError)):
        return f"{name}: {e}", EXIT_INVALID
    if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
        return f"{name}: {e.strerror or e}", EXIT_INVALID
    raise e


def _open(spec: str) -> Tuple[Source, str]:
    return Source.open(spec), spec if spec != "-" else "<stdin>"


def _guard(name: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except (UsageError, ExtractError, FormatError, OSError) as e:
        line, rc = _error(e, name)
        print(line, file=sys.stderr)
        return rc


def _extract_memory(args: argparse.Namespace) -> int:
    from xenstream.consumers.memory import extract_memory

    name = args.file if args.file != "-" else "<stdin>"

    def run() -> int:
        src, _ = _open(args.file)
        with src:
            progress = Progress(src.size, not args.quiet, label="extracting")

            def log(level: str, msg: str) -> None:
                if level == "warning" and not args.quiet:
                    progress.close()
                    print(f"{name}: warning: {msg}", file=sys.stderr)

            try:
                res = extract_memory(src, args.output, format=args.format, tmpdir=args.tmpdir,
                                     progress=progress, log=log, durable=not args.no_fsync)
            finally:
                progress.close()
        if not args.quiet:
            top = "none" if res.highest_pfn is None else f"{res.highest_pfn:#x}"
            what = args.output if args.output != "-" else "stdout"
            guest = res.guest.upper() + (f" {res.guest_width * 8}-bit" if res.guest_width else "")
            cps = f", checkpoint {res.checkpoints}" if res.checkpoints > 1 else ""
            regs = f", {len(res.vcpus)} vcpus" if args.format != "raw" else ""
            print(f"{name}: wrote {what}: {args.format}, {guest}, {res.pages} pages in "
                  f"{res.runs} runs, highest pfn {top}{regs}{cps}", file=sys.stderr)
        return EXIT_OK

    return _guard(name, run)


def add_extract_memory(sub: Any) -> None:
    """Register ``extract-memory`` on the sub-command parser ``sub``."""
    from xenstream.consumers.memory import FORMATS

    p = sub.add_parser(
        "extract-memory", help="write the guest's memory as a raw, ELF core or xen dump-core file",
        description="Write the memory of the guest a save image holds, as it is after restore, "
        "to a sparse raw file, an ELF64 core with the vcpus' registers, or Xen's dump-core "
        "layout. Every envelope and stream version, legacy images included.",
        epilog=MEMORY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the image: a path, - for stdin, or /dev/fd/N")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where to write: a path (written atomically, mode 0600), - for stdout "
                   "(raw only, unless stdout is a file), /dev/fd/N")
    p.add_argument("--format", choices=FORMATS, default="raw",
                   help="output layout (default raw)")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not flush the output to the disk before renaming it into place "
                   "(as convert --no-fsync)")
    p.add_argument("--tmpdir", metavar="DIR",
                   help="directory for staging files (later checkpoints; all of the memory "
                   "for raw to a pipe) (default: $TMPDIR)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print errors only (no summary, warnings or progress)")
    p.set_defaults(func=_extract_memory)


def _extract(args: argparse.Namespace) -> int:
    from xenstream.consumers.blobs import extract_blob, xenstore_json, xenstore_text

    name = args.file if args.file != "-" else "<stdin>"
    if args.json and args.what != "xenstore":
        print(f"{PROG}: --json applies to --what xenstore only", file=sys.stderr)
        return EXIT_USAGE

    def run() -> int:
        src, _ = _open(args.file)
        with src:
            if args.what == "xenstore":
                res = extract_blob(src, "xenstore", None, tmpdir=args.tmpdir)
                text = (json.dumps(xenstore_json(res, name), indent=2) + "\n" if args.json
                        else xenstore_text(res.pairs))
                if args.output == "-":
                    sys.stdout.write(text)
                    sys.stdout.flush()
                else:
                    from xenstream.consumers.blobs import write_text

                    write_text(args.output, src, text.encode())
            else:
                res = extract_blob(src, args.what, args.output, tmpdir=args.tmpdir)
        if not args.quiet and args.output != "-":
            print(f"{name}: wrote {args.output}: {res.describe()}", file=sys.stderr)
        for w in res.warnings:
            if not args.quiet:
                print(f"{name}: warning: {w}", file=sys.stderr)
        return EXIT_OK

    return _guard(name, run)


def add_extract(sub: Any) -> None:
    """Register ``extract`` on the sub-command parser ``sub``."""
    from xenstream.consumers.blobs import WHATS

    p = sub.add_parser(
        "extract", help="write a blob the image carries (device state, HVM context, ...)",
        description="Write one blob a save image carries, as it is: the device model's state, "
        "the HVM context, a PV guest's shared info page, or the device model's xenstore keys.",
        epilog=EXTRACT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the image: a path, - for stdin, or /dev/fd/N")
    p.add_argument("--what", choices=WHATS, required=True, help="the blob")
    p.add_argument("-o", "--output", metavar="OUT", default="-",
                   help="where to write: a path (written atomically, mode 0600), - for stdout "
                   "(the default; binary blobs are not written to a terminal), /dev/fd/N")
    p.add_argument("--json", action="store_true",
                   help="xenstore: one JSON document instead of key=value lines")
    p.add_argument("--tmpdir", metavar="DIR",
                   help="directory for the staging files of checkpointed images (default: $TMPDIR)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=_extract)
