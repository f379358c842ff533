"""Helpers shared by the command-line front ends."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def guarded(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; turn any unexpected exception into a one-line error, exit 2.

    Set ``XENSTREAM_DEBUG=1`` to see the traceback.
    """
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # stdout closed early (e.g. | head): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - last resort, never a traceback
        if os.environ.get("XENSTREAM_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USAGE


def dropin_parser(prog: str, usage: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The argument parser of a drop-in for one of Xen's scripts: upstream's
    option names (abbreviations allowed, as argparse allowed them there)."""
    return argparse.ArgumentParser(prog=prog, usage=usage, description=description,
                                   epilog=epilog, allow_abbrev=True,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
