"""XenServer / XCP-ng xenopsd suspend images (``ocaml/xenopsd/lib/suspend_image.ml``,
``ocaml/xenopsd/xc/domain.ml`` in xapi-project/xen-api).

Structured images: ``XenSavedDomv2-\\n`` then frames of ``type u64 LE | length
u64 LE | payload``: Xenops metadata (an S-expression), the Libxc memory image
(length 0: the libxc stream ends itself with END), optional UEFI variable and
vTPM frames, the qemu record (HVM), and End_of_image.  Legacy images:
``XenSavedDomain\\n``, a legacy libxc stream, then for HVM
``QemuDeviceModelRecord\\n`` + big-endian u32 length + qemu state.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Set

from xenstream.formats.sexp import SexpError, parse_sxp
from xenstream.layout import Layout

MAGIC_V2 = b"XenSavedDomv2-\n"
MAGIC_LEGACY = b"XenSavedDomain\n"
SIGNATURE_SIZE = 15
FRAME = Layout("xenopsd frame header", [("type", "Q"), ("length", "Q")])

XENOPS = 0x000F
LIBXC = 0x00F0
LIBXL = 0x00F1
LIBXC_LEGACY = 0x00F2
QEMU_TRAD = 0x0F00
QEMU_XEN = 0x0F01
DEMU = 0x0F10
VARSTORED = 0x0F11
SWTPM0 = 0x0F12
SWTPM = 0x0F13
END_OF_IMAGE = 0xFFFF
FRAME_NAMES: Dict[int, str] = {
    XENOPS: "Xenops",
    LIBXC: "Libxc",
    LIBXL: "Libxl",
    LIBXC_LEGACY: "Libxc_legacy",
    QEMU_TRAD: "Qemu_trad",
    QEMU_XEN: "Qemu_xen",
    DEMU: "Demu",
    VARSTORED: "Varstored",
    SWTPM0: "Swtpm0",
    SWTPM: "Swtpm",
    END_OF_IMAGE: "End_of_image",
}
#: Frames whose payload length is in the header (the others: the stream inside ends itself).
SIZED = {XENOPS, QEMU_TRAD, QEMU_XEN, VARSTORED, SWTPM0, SWTPM, LIBXL}
#: xenopsd refuses a qemu record larger than this (CP-9227).
QEMU_RECORD_MAX = 1 << 20
METADATA_MAX = 64 << 20
LEGACY_QEMU_SIGNATURE = b"QemuDeviceModelRecord\n"
LEGACY_QEMU_SIGNATURE_LIBXC = b"DeviceModelRecord0002"
QEVM = b"QEVM"

Report = Callable[..., None]


def frame_name(ftype: int) -> str:
    return FRAME_NAMES.get(ftype, f"UNKNOWN_{ftype:#06x}")


class XenopsdInfo:
    def __init__(self) -> None:
        self.legacy = False
        self.frames: List[str] = []
        self.metadata: Optional[bytes] = None
        self.fields: Dict[str, str] = {}
        self.word_size: Optional[int] = None
        self.memory_images = 0
        self.ended = False


class XenopsdChecker:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.info = XenopsdInfo()
        self._seen: Set[int] = set()

    def frame(self, ftype: int, length: int, head: bytes) -> None:
        """One frame header; ``head`` holds up to the first 16 payload bytes of
        a sized frame."""
        r = self.report
        i = self.info
        name = frame_name(ftype)
        i.frames.append(name)
        if ftype not in FRAME_NAMES:
            r("xenopsd-frame-type",
              f"expected a known frame type, found {ftype:#x} (xenopsd: Invalid_header_type)")
            return
        if ftype in (LIBXL, QEMU_XEN):
            r("xenopsd-frame-unsupported",
              f"{name} frames are defined but xenopsd refuses them on restore")
        if ftype in self._seen and ftype != END_OF_IMAGE:
            r("xenopsd-frame-repeated",
              f"a second {name} frame: xenopsd processes each in turn")
        self._seen.add(ftype)
        if ftype == XENOPS and i.frames[:-1]:
            r("xenopsd-frame-order",
              "expected the Xenops frame first, as xenopsd writes it, found it later")
        if ftype in (LIBXC, LIBXC_LEGACY):
            i.memory_images += 1
            if length:
                r("xenopsd-frame-length",
                  f"{name} frame length {length}: xenopsd writes 0 and ignores the field")
        if ftype == QEMU_TRAD:
            if length > QEMU_RECORD_MAX:
                r("xenopsd-qemu-size",
                  f"expected a qemu record of at most {QEMU_RECORD_MAX} bytes, found {length} "
                  "(xenopsd: \"QEMU record length in header too large\")")
            if length >= 4 and head[:4] != QEVM:
                r("xenopsd-qemu-magic",
                  f"expected qemu state to start with 'QEVM', found {head[:4]!r}")
        if ftype == DEMU:
            r("xenopsd-demu",
              "a Demu (vGPU) frame in the main image: its format is private to the vGPU "
              "emulator, so nothing after it can be checked")
        if ftype == END_OF_IMAGE:
            i.ended = True
            if length:
                r("xenopsd-frame-length",
                  f"End_of_image length {length}: xenopsd writes 0")

    def metadata(self, data: Optional[bytes]) -> None:
        r = self.report
        i = self.info
        if data is None:
            r("xenopsd-metadata-size",
              "Xenops metadata not checked: larger than xenstream holds")
            return
        i.metadata = data
        try:
            sx = parse_sxp(data.decode("utf-8"))
        except (UnicodeDecodeError, SexpError) as e:
            r("xenopsd-metadata",
              f"expected the Xenops record as an S-expression, found unparsable data ({e})")
            return
        if not isinstance(sx, list) or not all(isinstance(f, list) and len(f) >= 1
                                                and isinstance(f[0], str) for f in sx):
            r("xenopsd-metadata",
              "expected a list of (field value) pairs, found another shape")
            return
        for f in sx:
            assert isinstance(f, list) and isinstance(f[0], str)
            val = f[1] if len(f) > 1 else ""
            i.fields[f[0]] = val if isinstance(val, str) else repr(val)
        missing = [k for k in ("time", "word_size") if k not in i.fields]
        if missing:
            r("xenopsd-metadata",
              f"expected fields time and word_size, found no {' or '.join(missing)}")
        unknown = sorted(set(i.fields) - {"time", "word_size", "vm_str", "xs_subtree"})
        if unknown:
            r("xenopsd-metadata-fields",
              f"unknown Xenops fields {', '.join(unknown)}: current xenopsd refuses them")
        ws = i.fields.get("word_size")
        if ws is not None:
            if ws in ("32", "64"):
                i.word_size = int(ws)
            elif ws.isdigit():  # an int xenopsd reads and never uses
                r("xenopsd-word-size", f"expected word_size 32 or 64, found {ws!r}")
            else:
                r("xenopsd-metadata", f"expected word_size 32 or 64, found {ws!r}")

    def finish(self, *, complete: bool) -> None:
        """At the end of the frames (``complete``: End_of_image was read)."""
        if not complete:
            return
        if not self.info.memory_images:
            self.report("xenopsd-no-memory",
                        "expected a Libxc frame, found none (xenopsd: \"Well formed, but "
                        "useless stream\")")
