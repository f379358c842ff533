"""``xenstream info`` and ``xenstream dump``: what an image holds.

:func:`add_info` and :func:`add_dump` register the subcommands on the
``xenstream`` command's subparsers; the work is
:func:`xenstream.consumers.info.summary` and
:func:`xenstream.consumers.dump.records`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any, Optional, Tuple

from xenstream.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from xenstream.errors import FormatError, UsageError
from xenstream.io import Source

PROG = "xenstream"
FORMATS = ["libxc", "libxl", "xl", "libvirt", "xenopsd", "xend", "legacy"]

INFO_EPILOG = """\
examples:
  xenstream info demo.xl                 what the image holds, and the verdict
  xenstream info --json vm.save | jq .memory.resident_bytes
  ssh host cat /var/lib/xen/save/vm | xenstream info -

Only metadata is read: on a file, page data is skipped (a few hundredths of
the image are read). For a checkpointed (Remus/COLO) stream the guest's state
is that of the last complete checkpoint.

exit status: 0 summary printed (the verdict line says whether the image is
valid), 1 the image cannot be read (one line naming the offset), 2 usage error
"""

DUMP_EPILOG = """\
examples:
  xenstream dump demo.xl                      every header and record, one per line
  xenstream dump --type hvm_params --type x86_tsc_info vm.save
  xenstream dump --pages --type page_data vm.save | head
  xenstream dump --json vm.save | jq -c 'select(.type == "HVM_CONTEXT") | .fields.entries'

TYPE is the type column as printed, any case: a record type (PAGE_DATA,
EMULATOR_CONTEXT), a header ("libxc image header"), a xenopsd frame (Xenops,
Qemu_trad) or a legacy item (PAGE_BATCH, CHUNK_TSC_INFO, HVM_TAIL, PV_TAIL,
QEMU_RECORD).

exit status: 0 dumped, 1 the image cannot be read on (the rows before the
error are printed, then one line naming the offset), 2 usage error
"""


def _parser(sub: Any, name: str, help: str, description: str, epilog: str) -> Any:
    p = sub.add_parser(name, help=help, description=textwrap.fill(description, 78),
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", default="-", metavar="FILE",
                   help="image: a path, - for stdin (default), or /dev/fd/N")
    p.add_argument("--format", choices=FORMATS, help="require this outermost format")
    p.add_argument("--json", action="store_true", help=_json_help(name))
    p.add_argument("--skip-qemu", action="store_true",
                   help="a legacy HVM image ends at its tail: the caller keeps the "
                   "device-model record (as verify --skip-qemu)")
    return p


def _json_help(name: str) -> str:
    return ("print one JSON document (schema: schema/info.schema.json)" if name == "info"
            else "print one JSON object per row (JSON lines; schema: schema/dump.schema.json)")


def add_info(sub: Any) -> None:
    p = _parser(
        sub, "info", "summarise what an image holds",
        "Summarise a save image in one pass: the envelope chain, who saved it, the guest "
        "type (PV, HVM or PVH), width and page-table levels, vcpus, memory (pages by type, "
        "highest pfn, pages sent more than once, resident size), checkpoints, TSC, HVM "
        "params, CPUID/MSR policies, device-model state, the embedded configuration, and "
        "the verifier's verdict from the same pass.", INFO_EPILOG)
    p.add_argument("--lenient", action="store_true",
                   help="the verdict reports spec violations Xen's restore tolerates as "
                   "warnings")
    p.set_defaults(func=run_info)


def add_dump(sub: Any) -> None:
    p = _parser(
        sub, "dump", "list every header and record, decoded",
        "List every header and record of a save image, one per line: offset, layer, type, "
        "length and the decoded fields (HVM params by name, TSC fields, vcpu ids, xenstore "
        "keys and values, policy sizes, HVM context entries, the device-model blob's "
        "signature and QEVM version). Legacy images list their chunks and batches. Runs of "
        "PAGE_DATA (or page batches) fold into one line.", DUMP_EPILOG)
    p.add_argument("--pages", action="store_true",
                   help="one line per PAGE_DATA record or page batch (with its pfns)")
    p.add_argument("--type", action="append", metavar="TYPE", dest="types",
                   help="only rows of this type (repeatable; case-insensitive)")
    p.set_defaults(func=run_dump)


def _open(spec: str) -> Optional[Tuple[Source, str]]:
    try:
        src = Source.open(spec)
    except UsageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return None
    return src, spec if spec != "-" else "<stdin>"


def run_info(args: argparse.Namespace) -> int:
    from xenstream.consumers.info import summary

    opened = _open(args.file)
    if opened is None:
        return EXIT_USAGE
    src, name = opened
    try:
        with src:
            info = summary(src, format=args.format, lenient=args.lenient,
                           skip_qemu=args.skip_qemu, name=name)
    except FormatError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        for line in info.text_lines(name):
            print(line)
    return EXIT_OK


def run_dump(args: argparse.Namespace) -> int:
    from xenstream.consumers.dump import records

    opened = _open(args.file)
    if opened is None:
        return EXIT_USAGE
    src, name = opened
    out = sys.stdout
    with src:
        try:
            for row in records(src, format=args.format, pages=args.pages, types=args.types,
                               skip_qemu=args.skip_qemu):
                out.write((json.dumps(row.to_json()) if args.json else row.text()) + "\n")
        except FormatError as e:
            out.flush()
            print(f"{name}: {e}", file=sys.stderr)
            return EXIT_INVALID
    return EXIT_OK


__all__ = ["add_dump", "add_info", "run_dump", "run_info"]
