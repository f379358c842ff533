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
from typing import Optional, Tuple, Union

from legacy_images import LegacyImageSpec
from xenstream.writers.v2 import ImageSpec

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Image:
    """A benchmark image: generated on demand with ``write_image(spec)`` (an
    ``ImageSpec``) or ``legacy_images.write_legacy_image(spec)`` (a
    ``LegacyImageSpec``: legacy images, checked once after generation by
    converting and verifying them)."""

    name: str
    description: str
    spec: Union[ImageSpec, LegacyImageSpec]  # full size (the default)
    quick_spec: Union[ImageSpec, LegacyImageSpec]  # --quick


@dataclass(frozen=True)
class Targets:
    """Pass limits for the tool.  ``None``: not checked."""

    max_ratio: Optional[float] = None  # median time ratio tool/reference, <=
    max_read_fraction: Optional[float] = None  # tool's rchar / image size, <=
    max_rss_mib: Optional[float] = None  # tool's peak RSS, strictly <
    # |peak RSS - peak RSS of case ``Case.rss_vs``| <= this (checked when both ran)
    max_rss_diff_mib: Optional[float] = None


@dataclass(frozen=True)
class Versus:
    """A further command the tool is timed against, in the same rounds as the
    reference (each round runs the tool, the reference and every ``Versus``,
    in rotating order).  ``argv``'s first word is a physical command on PATH
    or ``upstream:SCRIPT`` (Xen's own script: needs ``--upstream-xen``, else
    this comparison is left out and says so).  The figure is the median over
    rounds of tool time / this command's time, in the same round."""

    label: str
    argv: Tuple[str, ...]
    max_ratio: Optional[float] = None  # a target, or None: for information


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
    stdin_image: bool = False  # both commands get the image file (read-only) as stdin
    consumer: bool = False  # both commands' stdout is a pipe into ``cat >{out}``
    rss_vs: Optional[str] = None  # the case whose peak RSS Targets.max_rss_diff_mib refers to
    versus: Tuple[Versus, ...] = ()  # more commands timed in the same rounds
    stdout_out: bool = False  # every command's stdout is ``>{out}`` (a regular file)


def _libxc_hvm(pages: int) -> ImageSpec:
    return ImageSpec(envelope="libxc", pages=pages, batch=1024, fast_pages=True)


def _libxc_small_records(pages: int) -> ImageSpec:
    return ImageSpec(envelope="libxc", pages=pages, batch_sizes=list(range(1, 9)),
                     fast_pages=True)


def _legacy(guest: str, size: int, batch_sizes: Optional[Tuple[int, ...]] = None) -> LegacyImageSpec:
    return LegacyImageSpec(guest=guest, pages=size // 4096, batch_sizes=batch_sizes)


_SMALL_BATCHES = tuple(range(1, 9))

IMAGES = [
    Image("libxc-hvm-4g",
          "libxc v3 HVM, 4 GiB of pages in 1024-page PAGE_DATA records (quick: 256 MiB)",
          _libxc_hvm(4 * GiB // 4096), _libxc_hvm(256 * MiB // 4096)),
    Image("libxc-small-records-1g",
          "libxc v3 HVM, 1 GiB of pages in PAGE_DATA records of 1,2,..,8 pages (quick: 64 MiB)",
          _libxc_small_records(GiB // 4096), _libxc_small_records(64 * MiB // 4096)),
    # legacy (Xen <= 4.5) images from a 64-bit toolstack, for the convert cases
    # (benchmarks/legacy_images.py: one shared page pattern, bounded memory)
    Image("legacy-pv-4g",
          "legacy PV (64-bit toolstack and guest), 4 GiB in 1024-page batches, ext info, "
          "P2M frame list, VCPU_INFO, LAST_CHECKPOINT, PV tail (quick: 256 MiB)",
          _legacy("pv", 4 * GiB), _legacy("pv", 256 * MiB)),
    Image("legacy-hvm-4g",
          "legacy HVM (64-bit toolstack), 4 GiB in 1024-page batches, HVM params, toolstack "
          "physmap chunk, HVM tail, 1 MiB DeviceModelRecord0002 (quick: 256 MiB)",
          _legacy("hvm", 4 * GiB), _legacy("hvm", 256 * MiB)),
    Image("legacy-hvm-small-batches-1g",
          "legacy HVM (64-bit toolstack), 1 GiB in batches of 1,2,..,8 pages (quick: 64 MiB)",
          _legacy("hvm", GiB, _SMALL_BATCHES), _legacy("hvm", 64 * MiB, _SMALL_BATCHES)),
    Image("legacy-pv-64m", "as legacy-pv-4g, 64 MiB (the RSS comparison; same at --quick)",
          _legacy("pv", 64 * MiB), _legacy("pv", 64 * MiB)),
    Image("legacy-hvm-64m", "as legacy-hvm-4g, 64 MiB (the RSS comparison; same at --quick)",
          _legacy("hvm", 64 * MiB), _legacy("hvm", 64 * MiB)),
]

_SEEKABLE = Targets(max_ratio=0.5, max_read_fraction=0.01, max_rss_mib=64)

#: file to file; {out} is in the temp dir (same filesystem as the image), removed after each run
_CONVERT_FILE = ("xenstream", "convert", "-q", "{image}", "{out}")  # durable (the default)
_CONVERT_NOSYNC = ("xenstream", "convert", "-q", "--no-fsync", "{image}", "{out}")
_DD = ("dd", "if={image}", "of={out}", "bs=4M")
_DD_SYNC = ("dd", "if={image}", "of={out}", "bs=4M", "conv=fdatasync")
_CP = ("cp", "{image}", "{out}")  # coreutils 9: copy_file_range, the kernel-copy floor
#: exactly libxl's argv (libxl_convert_callout.c): the saved image's fd in, a pipe out
_DROPIN_LIBXL = ("convert-legacy-stream", "--in", "0", "--out", "1", "--width", "64",
                 "--guest", "hvm", "--format", "libxl")


def _upstream_convert(guest: str) -> Tuple[str, ...]:
    return ("upstream:convert-legacy-stream", "-i", "{image}", "-o", "{out}", "-w", "64",
            "-g", guest)


def _vs_upstream(guest: str, target: Optional[float] = 0.7) -> Versus:
    return Versus("upstream", _upstream_convert(guest), target)


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
    Case("info-seekable-4g", "libxc-hvm-4g",
         tool=("xenstream", "info", "{image}"),
         reference=("cat", "{image}"),
         targets=_SEEKABLE, group="inspect",
         what="info on a seekable file: the summary and the verdict from one pass that "
              "skips page data (pfn arrays and metadata only)"),
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

    # -- convert (legacy -> v2): xenstream convert, the convert-legacy-stream drop-in.
    # Durable (the default: fdatasync + rename + directory fsync) against
    # dd conv=fdatasync; --no-fsync against cp (the kernel-copy floor), dd and
    # Xen's own script, all in the same rounds.
    Case("convert-pv-4g", "legacy-pv-4g",
         tool=_CONVERT_FILE, reference=_DD_SYNC,
         targets=Targets(max_ratio=1.05, max_rss_mib=64, max_rss_diff_mib=8),
         rss_vs="convert-pv-64m", group="convert",
         what="file to file, durable: page data moves in the kernel (copy_file_range)"),
    Case("convert-pv-4g-nofsync", "legacy-pv-4g",
         tool=_CONVERT_NOSYNC, reference=_CP,
         targets=Targets(max_ratio=1.05, max_rss_mib=64),
         versus=(Versus("dd", _DD), _vs_upstream("pv")), group="convert",
         what="file to file, --no-fsync"),
    Case("convert-hvm-4g", "legacy-hvm-4g",
         tool=_CONVERT_FILE, reference=_DD_SYNC,
         targets=Targets(max_ratio=1.05, max_rss_mib=64, max_rss_diff_mib=8),
         rss_vs="convert-hvm-64m", group="convert",
         what="file to file, durable, HVM with params, physmap and a 1 MiB qemu record"),
    Case("convert-hvm-4g-nofsync", "legacy-hvm-4g",
         tool=_CONVERT_NOSYNC, reference=_CP,
         targets=Targets(max_ratio=1.05, max_rss_mib=64),
         versus=(Versus("dd", _DD), _vs_upstream("hvm")), group="convert",
         what="file to file, --no-fsync, HVM"),
    Case("convert-small-batches-1g", "legacy-hvm-small-batches-1g",
         tool=_CONVERT_NOSYNC, reference=_DD,
         targets=Targets(max_ratio=1.5, max_rss_mib=64),
         versus=(Versus("cp", _CP), _vs_upstream("hvm")), group="convert",
         what="per-batch cost: ~58k batches of 1-8 pages, --no-fsync"),
    Case("convert-pipe-4g", "legacy-hvm-4g",
         tool=("xenstream", "convert", "-q", "-", "-"),
         reference=("cat",),
         pipe=True, consumer=True,
         targets=Targets(max_ratio=1.1, max_rss_mib=64),
         versus=(Versus("upstream", ("upstream:convert-legacy-stream", "-i", "0", "-o", "1",
                                     "-w", "64", "-g", "hvm"), 0.7),),
         group="convert",
         what="pipe to pipe: cat IN | TOOL | cat >OUT against cat IN | cat | cat >OUT"),
    Case("convert-legacy-stream-pipe-pv-4g", "legacy-pv-4g",
         tool=("convert-legacy-stream", "-i", "0", "-o", "1", "-w", "64", "-g", "pv"),
         reference=("cat",),
         pipe=True, stdout_out=True,
         targets=Targets(max_ratio=1.1, max_rss_mib=64),
         versus=(Versus("upstream", ("upstream:convert-legacy-stream", "-i", "0", "-o", "1",
                                     "-w", "64", "-g", "pv"), 0.7),),
         group="convert",
         what="the drop-in from a pipe to a file: cat IN | TOOL >OUT against cat IN | cat >OUT"),
    Case("convert-legacy-stream-libxl-4g", "legacy-hvm-4g",
         tool=_DROPIN_LIBXL,
         reference=("cat",),
         stdin_image=True, consumer=True,
         targets=Targets(max_rss_mib=64),
         versus=(Versus("upstream", ("upstream:convert-legacy-stream",) + _DROPIN_LIBXL[1:]),),
         group="convert",
         what="the drop-in as libxl runs it: image fd in, pipe out (libxl reads the pipe)"),
    Case("convert-pv-64m", "legacy-pv-64m",
         tool=_CONVERT_FILE, reference=_DD_SYNC,
         targets=Targets(max_rss_mib=64), group="convert",
         what="RSS at 64 MiB, compared with convert-pv-4g (start-up dominates the time)"),
    Case("convert-hvm-64m", "legacy-hvm-64m",
         tool=_CONVERT_FILE, reference=_DD_SYNC,
         targets=Targets(max_rss_mib=64), group="convert",
         what="RSS at 64 MiB, compared with convert-hvm-4g"),
    # the verifier on a legacy image: pfn lists parsed in bulk, page data skipped
    Case("verify-legacy-small-batches-1g", "legacy-hvm-small-batches-1g",
         tool=("xenstream", "verify", "-q", "{image}"),
         reference=("cat", "{image}"),
         targets=Targets(max_ratio=3.0, max_read_fraction=0.02, max_rss_mib=64),
         group="convert",
         what="verify the 1-8-page legacy image: one exact pread per batch, data skipped"),

    # -- extract-memory (--no-fsync, as cp): the guest's memory out of a save image,
    # beside a plain copy of it.
    # raw: the page data moves by copy_file_range to pfn * 4096 of a sparse file, as much
    # data as cp moves; elf and xen-core add headers after the data (xen-core closes the
    # gaps between runs, none in this image): within 10% of raw, so <= 1.05 * 1.1 of cp.
    Case("extract-raw-4g", "libxc-hvm-4g",
         tool=("xenstream", "extract-memory", "-q", "--no-fsync", "{image}", "-o", "{out}"),
         reference=_CP, targets=Targets(max_ratio=1.05, max_rss_mib=64), group="extract",
         what="v3 image to a sparse raw file, against cp of the image"),
    Case("extract-raw-legacy-4g", "legacy-hvm-4g",
         tool=("xenstream", "extract-memory", "-q", "--no-fsync", "{image}", "-o", "{out}"),
         reference=_CP, targets=Targets(max_ratio=1.05, max_rss_mib=64), group="extract",
         what="legacy image (bulk batch runs) to a sparse raw file, against cp"),
    Case("extract-elf-4g", "libxc-hvm-4g",
         tool=("xenstream", "extract-memory", "-q", "--no-fsync", "--format", "elf", "{image}", "-o",
               "{out}"),
         reference=_CP, targets=Targets(max_ratio=1.155, max_rss_mib=64), group="extract",
         what="ELF core: one PT_LOAD, the notes after the data"),
    Case("extract-xen-core-4g", "libxc-hvm-4g",
         tool=("xenstream", "extract-memory", "-q", "--no-fsync", "--format", "xen-core", "{image}", "-o",
               "{out}"),
         reference=_CP, targets=Targets(max_ratio=1.155, max_rss_mib=64), group="extract",
         what="xl dump-core layout; no hole, so no page moves"),
    Case("extract-xen-core-hole-4g", "legacy-hvm-4g",
         tool=("xenstream", "extract-memory", "-q", "--no-fsync", "--format", "xen-core", "{image}", "-o",
               "{out}"),
         reference=_CP, targets=Targets(max_rss_mib=64), group="extract",
         what="information: a hole (pfn-less XTAB) at the middle pfn, pages ascending: no page moves"),
]
