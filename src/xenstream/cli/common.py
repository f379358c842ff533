"""Helpers shared by the command-line front ends."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

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


class Progress:
    """A progress bar on a terminal (tqdm when installed, a plain line otherwise)."""

    def __init__(self, total: Optional[int], enabled: bool, label: str = "converting") -> None:
        self.total = total
        self.label = label
        self.enabled = enabled and total is not None and sys.stderr.isatty()
        self._bar = None
        self._last = -1
        if self.enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found,import-untyped,unused-ignore]

                self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                 leave=False, desc=label)
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
            print(f"\r{self.label}: {pct:3d}%", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
