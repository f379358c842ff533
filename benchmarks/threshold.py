#!/usr/bin/env python3
"""Choosing ``xenstream.io.KERNEL_COPY_MIN``: which path wins for each batch size.

    python3 benchmarks/threshold.py [--tmpdir DIR] [--size MIB] [--pairs N] [--pages 1,4,...]

For each batch size (pages per legacy batch) a legacy HVM image of ``--size``
MiB in batches of that size is generated in a temp dir, and ``xenstream
convert --no-fsync`` is run on it with every batch forced through the
window (``KERNEL_COPY_MIN`` above the batch) and with every batch forced into
the kernel (``KERNEL_COPY_MIN`` 1), in alternating pairs.  The figure is the
median ratio window/kernel: below 1 the window wins at that size.  The
conversion runs in a fresh interpreter each time (``python -c``: the
threshold is set, then ``xenstream.cli.main.main`` runs), so start-up is in
both sides alike.  Images are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from legacy_images import LegacyImageSpec, write_legacy_image

CODE = ("import sys, xenstream.io as x; x.KERNEL_COPY_MIN = int(sys.argv[1]); "
        "from xenstream.cli.main import main; sys.exit(main(sys.argv[2:]))")


def run(threshold: int, image: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE, str(threshold), "convert", "-q", "--no-fsync",
                    str(image), str(out)], check=True)
    dt = time.perf_counter() - t
    out.unlink()
    return dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--size", type=int, default=512, help="image size in MiB (default 512)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--pages", default="1,2,4,8,16,32,64,128,256,1024")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xenstream-threshold-", dir=args.tmpdir))
    print(f"# {work} ({args.size} MiB images, {args.pairs} pairs); ratio = window / kernel")
    print(f"{'pages':>6} {'window s':>9} {'kernel s':>9} {'ratio':>6}  [min-max]")
    try:
        for pages in (int(x) for x in args.pages.split(",")):
            image = work / f"b{pages}.img"
            with open(image, "wb") as f:
                write_legacy_image(f, LegacyImageSpec(guest="hvm", pages=args.size * 256,
                                                      batch=pages))
                os.fsync(f.fileno())
            out = work / "out.img"
            window, kernel = (pages * 4096 + 1), 1
            run(window, image, out)  # warm-up: page cache and bytecode
            run(kernel, image, out)
            ws, ks = [], []
            for i in range(args.pairs):
                if i % 2:
                    ks.append(run(kernel, image, out))
                    ws.append(run(window, image, out))
                else:
                    ws.append(run(window, image, out))
                    ks.append(run(kernel, image, out))
            ratios = [w / k for w, k in zip(ws, ks)]
            print(f"{pages:>6} {statistics.median(ws):>9.3f} {statistics.median(ks):>9.3f} "
                  f"{statistics.median(ratios):>6.2f}  [{min(ratios):.2f}-{max(ratios):.2f}]",
                  flush=True)
            image.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
