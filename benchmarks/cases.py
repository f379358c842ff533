"""The benchmark images and cases, as declarative entries.

Adding a case is adding one :class:`Case` to :data:`CASES` (and, if it needs a
new kind of image, one :class:`Image` to :data:`IMAGES`).  The harness
(``run.py``) does the rest: it generates only the images the selected cases
use, runs each case's tool and reference side by side, and checks the targets.

Command templates are tuples of strings.  ``{image}`` is replaced by the path
of the case's image and ``{out}`` by a scratch output path in the temp dir
(removed after every run).  The first word of a *tool* command names a tool
(see ``TOOLS`` in run.py: ``xenstream``, ``verify-stream-v2``, and
``upstream:verify-stream-v2`` for Xen's own script); the first word of a
*reference* command is a physical command looked up on PATH (``cat``, ``dd``).
With ``pipe=True`` both commands read the image from a pipe fed by
``cat {image}``; stdout always goes to /dev/null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from xenstream.writer import ImageSpec

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Image:
    """A benchmark image: generated on demand with ``write_image(spec)``."""

    name: str
    description: str
    spec: ImageSpec  # full size (the default)
    quick_spec: ImageSpec  # --quick


@dataclass(frozen=True)
class Targets:
    """Pass limits for the tool.  ``None``: not checked."""

    max_ratio: Optional[float] = None  # median time ratio tool/reference, <=
    max_read_fraction: Optional[float] = None  # tool's rchar / image size, <=
    max_rss_mib: Optional[float] = None  # tool's peak RSS, strictly <


@dataclass(frozen=True)
class Case:
    name: str
    image: str  # an Image name
    tool: Tuple[str, ...]
    reference: Tuple[str, ...]
    pipe: bool = False  # both commands read ``cat {image} |``
    targets: Targets = Targets()
    what: str = ""
    group: str = "core"  # the issue that introduced the case
    upstream: bool = False  # needs --upstream-xen; a comparison row (no targets)
    expect_exit: Optional[int] = 0  # the tool's expected exit status (None: just record it)


def _libxc_hvm(pages: int) -> ImageSpec:
    return ImageSpec(envelope="libxc", pages=pages, batch=1024, fast_pages=True)


def _libxc_small_records(pages: int) -> ImageSpec:
    return ImageSpec(envelope="libxc", pages=pages, batch_sizes=list(range(1, 9)),
                     fast_pages=True)


IMAGES = [
    Image("libxc-hvm-4g",
          "libxc v3 HVM, 4 GiB of pages in 1024-page PAGE_DATA records (quick: 256 MiB)",
          _libxc_hvm(4 * GiB // 4096), _libxc_hvm(256 * MiB // 4096)),
    Image("libxc-small-records-1g",
          "libxc v3 HVM, 1 GiB of pages in PAGE_DATA records of 1,2,..,8 pages (quick: 64 MiB)",
          _libxc_small_records(GiB // 4096), _libxc_small_records(64 * MiB // 4096)),
]

_SEEKABLE = Targets(max_ratio=0.5, max_read_fraction=0.01, max_rss_mib=64)

CASES = [
    Case("verify-seekable-4g", "libxc-hvm-4g",
         tool=("xenstream", "verify", "-q", "{image}"),
         reference=("cat", "{image}"),
         targets=_SEEKABLE,
         what="verify a seekable file: page data must be skipped, not read"),
    Case("verify-pipe-4g", "libxc-hvm-4g",
         tool=("xenstream", "verify", "-q", "-"),
         reference=("cat",),
         pipe=True,
         targets=Targets(max_ratio=1.3, max_rss_mib=64),
         what="verify from a pipe: every byte passes through; must keep up with cat"),
    Case("verify-small-records-1g", "libxc-small-records-1g",
         tool=("xenstream", "verify", "-q", "{image}"),
         reference=("cat", "{image}"),
         targets=Targets(max_ratio=3.0, max_rss_mib=64),
         what="per-record cost: ~58k PAGE_DATA records of 1-8 pages"),
    Case("verify-stream-v2-4g", "libxc-hvm-4g",
         tool=("verify-stream-v2", "-i", "{image}"),
         reference=("cat", "{image}"),
         targets=_SEEKABLE,
         what="the drop-in verify-stream-v2 on the seekable 4 GiB file"),
    # Xen's own tools/python/scripts/verify-stream-v2, for comparison (no targets).
    Case("upstream-verify-seekable-4g", "libxc-hvm-4g",
         tool=("upstream:verify-stream-v2", "-i", "{image}"),
         reference=("cat", "{image}"),
         upstream=True, expect_exit=None,
         what="upstream verify-stream-v2 on case verify-seekable-4g's file"),
    Case("upstream-verify-pipe-4g", "libxc-hvm-4g",
         tool=("upstream:verify-stream-v2",),
         reference=("cat",),
         pipe=True, upstream=True, expect_exit=None,
         what="upstream verify-stream-v2 reading the pipe on stdin (its default, fd 0)"),
    Case("upstream-verify-small-records-1g", "libxc-small-records-1g",
         tool=("upstream:verify-stream-v2", "-i", "{image}"),
         reference=("cat", "{image}"),
         upstream=True, expect_exit=None,
         what="upstream verify-stream-v2 on case verify-small-records-1g's file"),
]
