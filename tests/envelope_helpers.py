"""Helpers for test_envelopes.py: envelope images (libvirt, xenopsd, xend,
bare legacy) built with the writer API, legacy payloads built by hand from
the spec's first-octets table, and small verify/CLI wrappers.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from xenstream.consumers.verify import Result, verify
from xenstream.findings import Finding
from xenstream.formats import xenopsd
from xenstream.io import Source
from xenstream.reading.parser import EnvelopeData, Frame, Header, Legacy, Parser, Record, XlConfig
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_libvirt_xml,
    default_xend_sxp,
    libvirt_header,
    write_image,
    write_libxc,
    xend_header,
    xenops_metadata,
    xenopsd_frame,
)

_counter = itertools.count()
PAGES = 8  # enough for a valid PV p2m/page-table layout, small enough to be fast
QEMU = b"QEVM\0\0\0\3" + bytes(range(56))


# -- building ------------------------------------------------------------------------


def build(fn: Callable[[io.BytesIO], object]) -> bytes:
    out = io.BytesIO()
    fn(out)
    return out.getvalue()


def spec(guest: str = "hvm", **kw: Any) -> ImageSpec:
    kw.setdefault("pages", PAGES)
    return ImageSpec(guest=guest, **kw)


def image(envelope: str, guest: str = "hvm", **kw: Any) -> bytes:
    """A whole valid image from :func:`write_image`."""
    s = spec(guest, envelope=envelope, **kw)
    return build(lambda o: write_image(o, s))


def libxl_stream(guest: str = "hvm", **kw: Any) -> bytes:
    return image("libxl", guest, **kw)


def libxc_stream(guest: str = "hvm", **kw: Any) -> bytes:
    return image("libxc", guest, **kw)


def libxc_with_errors(guest: str = "hvm") -> bytes:
    """A libxc stream with exactly one record error: TSC_INFO mode 3 ("tsc-mode-pvrdtscp")."""
    s = spec(guest, envelope="libxc")

    def go(o: io.BytesIO) -> None:
        w = LibxcWriter(o)
        orig = w.tsc_info
        w.tsc_info = lambda **kw: orig(mode=3)  # type: ignore[method-assign]
        write_libxc(w, s)

    return build(go)


def libxl_with_errors(guest: str = "hvm") -> bytes:
    """A libxl stream whose libxc stream has the one TSC_INFO error."""
    s = spec(guest, envelope="libxl")

    def go(o: io.BytesIO) -> None:
        lw = LibxlWriter(o)
        lw.header()
        lw.libxc_context()
        w = lw.libxc()
        orig = w.tsc_info
        w.tsc_info = lambda **kw: orig(mode=3)  # type: ignore[method-assign]
        write_libxc(w, s, lw)
        if guest == "hvm":
            lw.xenstore_data(s.xenstore)
            lw.emulator_context(s.emulator_context)
        lw.end()

    return build(go)


def libvirt_image(guest: str = "hvm", payload: Optional[bytes] = None,
                  xml: Optional[str] = None, **hdr: Any) -> bytes:
    """libvirt header + XML (writer) + ``payload`` (default: a valid libxl stream)."""
    s = spec(guest)
    body = payload if payload is not None else libxl_stream(guest)
    return build(lambda o: (libvirt_header(o, default_libvirt_xml(s) if xml is None else xml,
                                           **hdr), o.write(body)))


def xend_image(guest: str = "pv", payload: Optional[bytes] = None, sxp: Optional[str] = None,
               **hdr: Any) -> bytes:
    s = spec(guest)
    body = payload if payload is not None else legacy_body(guest, 8 if guest == "pv" else 4,
                                                           producer="xend")
    return build(lambda o: (xend_header(o, default_xend_sxp(s) if sxp is None else sxp, **hdr),
                            o.write(body)))


Frames = Sequence[Tuple[int, bytes]]


def xenopsd_image(frames: Frames, *, signature: bytes = xenopsd.MAGIC_V2) -> bytes:
    """Signature then frames (type, payload) written with :func:`xenopsd_frame`
    (Libxc / Demu / End_of_image with length 0, the rest with their payload length)."""
    def go(o: io.BytesIO) -> None:
        o.write(signature)
        for ftype, payload in frames:
            xenopsd_frame(o, ftype, payload)
    return build(go)


def xenops_frames(guest: str = "hvm", *, metadata: Optional[bytes] = None,
                  libxc: Optional[bytes] = None, between: Frames = (),
                  qemu: Optional[bytes] = QEMU, end: bool = True) -> List[Tuple[int, bytes]]:
    """The frames xenopsd writes: Xenops, Libxc, ``between``, Qemu_trad (HVM), End_of_image."""
    fr: List[Tuple[int, bytes]] = [
        (xenopsd.XENOPS, xenops_metadata() if metadata is None else metadata),
        (xenopsd.LIBXC, libxc_stream(guest) if libxc is None else libxc)]
    fr.extend(between)
    if guest == "hvm" and qemu is not None:
        fr.append((xenopsd.QEMU_TRAD, qemu))
    if end:
        fr.append((xenopsd.END_OF_IMAGE, b""))
    return fr


# -- real legacy streams (the legacy writer) ---------------------------------------------

#: what each producer wrote after the legacy body: (toolstack chunk, HVM qemu record kind)
_PRODUCER = {"bare": (True, "libxl"), "xl": (True, "libxl"), "libvirt": (True, "libxl"),
             "xend": (False, "xend"), "xenopsd": (False, "xenserver")}


def legacy_body(guest: str = "pv", width: int = 8, guest_width: Optional[int] = None, *,
                producer: str = "bare", **kw: Any) -> bytes:
    """A whole, sound legacy stream (no envelope) as ``producer`` wrote it:
    libxl producers add the toolstack chunk and DeviceModelRecord0002, xend
    its QemuDeviceModelRecord to EOF, XenServer its big-endian qemu record."""
    toolstack, qemu = _PRODUCER[producer]
    kw.setdefault("pages", PAGES)
    kw.setdefault("toolstack", toolstack)
    kw.setdefault("qemu", qemu)
    gw = guest_width if guest_width is not None else width
    return build(lambda o: write_legacy(o, LegacySpec(guest=guest, width=width, guest_width=gw,
                                                      **kw)))


def legacy_image(envelope: str, guest: str = "pv", width: int = 8, **kw: Any) -> bytes:
    """A whole legacy image with its envelope, from :func:`write_legacy`."""
    kw.setdefault("pages", PAGES)
    kw.setdefault("guest_width", width)
    return build(lambda o: write_legacy(o, LegacySpec(guest=guest, width=width,
                                                      envelope=envelope, **kw)))


#: summary["legacy"] keys added when the legacy stream was followed
LEGACY_DETAIL_KEYS = {"p2m_size", "pages", "batches", "checkpoints", "verify_mode",
                      "qemu_record", "guest_width"}


# -- legacy payloads by hand (spec "Legacy Images", octets 4-7) ---------------------------

_BODY = bytes(range(1, 41))  # arbitrary bytes after the first 16: never looked at


def legacy_pv32(p2m: int = 0x2000) -> bytes:
    """32-bit toolstack, PV: u32 p2m_size, then the extended-info signature 0xFFFFFFFF."""
    return struct.pack("<II", p2m, 0xFFFFFFFF) + struct.pack("<I", 0x1440) + _BODY


def legacy_pv64(p2m: int = 0x40000) -> bytes:
    """64-bit toolstack, PV: u64 p2m_size, then ~0UL."""
    return struct.pack("<QQ", p2m, 0xFFFFFFFFFFFFFFFF) + struct.pack("<I", 0x1440) + _BODY


def legacy_hvm32(p2m: int = 0x100000, first: int = -7) -> bytes:
    """32-bit toolstack, HVM: u32 p2m_size, then the first chunk's int
    (a chunk id like -7 TSC_INFO, or a page count)."""
    return struct.pack("<Ii", p2m, first) + struct.pack("<II", 0, 0) + _BODY


def legacy_hvm64(p2m: int = 0x100000, first: int = -7) -> bytes:
    """64-bit toolstack, HVM: u64 p2m_size, then the first chunk's int and pad."""
    return struct.pack("<QiI", p2m, first, 0) + _BODY


# -- verifying -------------------------------------------------------------------------


def put(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"img{next(_counter)}.bin"
    p.write_bytes(data)
    return p


def check(tmp_path: Path, data: bytes, **kw: Any) -> Result:
    p = put(tmp_path, data)
    with Source.open(str(p)) as src:
        return verify(src, **kw)


#: the finding at a legacy payload's start: converted by the container's
#: toolstack, unconverted (bare, xend), rejected (the drop-in), or no legacy shape
LEGACY_MARKER_RULES = {"legacy-stream", "legacy-stream-unconverted", "legacy-stream-rejected",
                       "legacy-unrecognised"}


def envelope_findings(res: Result) -> List[Finding]:
    """The findings, less those from inside a legacy payload's body.

    The hand-made legacy payloads here are only their first bytes (what the
    envelopes and the detection look at) followed by filler; a parser that
    follows legacy streams rightly reports on the filler.  Those findings are
    on layer "legacy" past the payload's start, where the legacy-stream
    finding (one of :data:`LEGACY_MARKER_RULES`) is.  Tests of real legacy
    streams (legacy_body/legacy_image) look at ``res.findings`` whole."""
    starts = [f.offset for f in res.findings if f.rule in LEGACY_MARKER_RULES]
    if not starts:
        return list(res.findings)
    at = starts[0]
    return [f for f in res.findings if not (f.layer == "legacy" and f.offset > at)]


def rules(res: Result) -> List[Tuple[str, str]]:
    """(rule, severity) of every envelope-level finding, sorted."""
    return sorted((f.rule, f.severity) for f in envelope_findings(res))


def described(res: Result) -> List[Tuple[str, str, str]]:
    return [(f.rule, f.severity, f.message) for f in res.findings]


def find(res: Result, rule: str) -> Finding:
    fs = [f for f in envelope_findings(res) if f.rule == rule]
    assert len(fs) == 1, (rule, described(res))
    return fs[0]


def parse_items(tmp_path: Path, data: bytes, **kw: Any) -> List[Any]:
    """The parser's items (bodies not read; record items are kept)."""
    p = put(tmp_path, data)
    out: List[Any] = []
    with Source.open(str(p)) as src:
        parser = Parser(src, **kw)
        # stop at the Legacy marker: the legacy bodies here are filler
        parser.follow_legacy = False  # type: ignore[attr-defined]
        for it in parser.items():
            if isinstance(it, Frame) and it.head is not None:
                it.head = bytes(it.head)
            out.append(it)
    return out


def extents(tmp_path: Path, data: bytes) -> List[Tuple[int, int, str]]:
    """(start, end, layer) of every item of a valid image, in order."""
    out: List[Tuple[int, int, str]] = []
    for it in parse_items(tmp_path, data):
        if isinstance(it, Record):
            out.append((it.offset, it.offset + 8 + it.length + (-it.length & 7), it.layer))
        elif isinstance(it, Header):
            out.append((it.offset, it.offset + it.size, it.layer))
        elif isinstance(it, XlConfig):
            out.append((it.offset, it.offset + it.optional_data_len, "xl"))
        elif isinstance(it, EnvelopeData):
            out.append((it.offset, it.offset + it.declared_len, it.layer))
        elif isinstance(it, Frame):
            n = it.length if it.ftype in xenopsd.SIZED else 0
            out.append((it.offset, it.offset + 16 + n, "xenopsd"))
        elif isinstance(it, Legacy):
            out.append((it.offset, it.offset, "legacy"))
    return out


# -- processes -------------------------------------------------------------------------

BIN = os.path.dirname(sys.executable)


def exe(name: str) -> str:
    cand = os.path.join(BIN, name)
    if os.path.exists(cand):
        return cand
    found = shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


def run(argv: Sequence[str], *, pass_fds: Sequence[int] = (),
        expect: Optional[int] = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run a command; never a traceback."""
    p = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                       pass_fds=tuple(pass_fds), timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if expect is not None:
        assert p.returncode == expect, (argv, p.returncode, out, err)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


from pipe_helpers import feeder, read_all  # noqa: E402,F401 - shared pipe helpers
