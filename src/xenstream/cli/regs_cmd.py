"""``xenstream regs``: every vcpu's registers in a save image."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xenstream.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from xenstream.consumers.regs import read_state
from xenstream.consumers.regs_report import text_lines, to_json
from xenstream.errors import FormatError, UsageError
from xenstream.io import Source
from xenstream.reading.parser import FORMAT_NAMES

DESCRIPTION = """\
Print every vcpu's registers as a restore would load them. HVM and PVH guests:
the whole HVM context (every entry by typecode name, instance and length), each
vcpu's CPU record (general, control, debug, segment, descriptor-table and MSR
registers), LAPIC and LAPIC registers (id, TPR, ISR/IRR, timer), MTRRs, XSAVE
feature masks and MSRs, and the domain's PIC, IOAPIC, PIT, RTC, HPET and PM
timer; records shorter than their structure are zero-extended as Xen loads
them. PV guests: each vcpu_guest_context (64- and 32-bit), with cr3 turned
back into a pfn, the GDT frames, callbacks, the extended context, MSRs and
XSAVE masks. For a checkpointed (Remus/COLO) stream, the state of the last
complete checkpoint. Page data is skipped, not read."""

EPILOG = """\
examples:
  xenstream regs demo.xl               every vcpu, grouped per vcpu
  xenstream regs --vcpu 1 vm.save      one vcpu
  xenstream regs --json vm.save | jq '.vcpus[0].registers.rip'
  ssh host cat /var/lib/xen/save/vm | xenstream regs -

exit status: 0 printed, 1 unreadable image or no such vcpu, 2 usage error"""


def add_regs(sub: Any) -> None:
    """Register the ``regs`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("regs", help="print every vcpu's registers (HVM context, PV contexts)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", default="-", metavar="FILE",
                   help="image: a path, - for stdin (default), or /dev/fd/N")
    p.add_argument("--vcpu", type=int, metavar="N", help="show only vcpu N")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (schema: schema/regs.schema.json)")
    p.add_argument("--format", choices=list(FORMAT_NAMES),
                   help="require this outermost format instead of detecting it")
    p.set_defaults(func=run_regs)


def run_regs(args: argparse.Namespace) -> int:
    if args.vcpu is not None and args.vcpu < 0:
        print(f"xenstream regs: --vcpu must be >= 0, found {args.vcpu}", file=sys.stderr)
        return EXIT_USAGE
    try:
        src = Source.open(args.file)
    except UsageError as e:
        print(f"xenstream: {e}", file=sys.stderr)
        return EXIT_USAGE
    name = args.file if args.file != "-" else "<stdin>"
    try:
        with src:
            state = read_state(src, format=args.format)
    except FormatError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_INVALID
    state.file = name
    if args.vcpu is not None and state.vcpu(args.vcpu) is None:
        have = ", ".join(str(v.vcpu) for v in state.vcpus) or "none"
        print(f"{name}: vcpu {args.vcpu} is not in the image (its vcpus: {have})",
              file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(to_json(state, args.vcpu), indent=2))
    else:
        for line in text_lines(state, args.vcpu):
            print(line)
    sys.stdout.flush()
    return EXIT_OK
