"""The blobs a save image carries, as they are: :func:`extract_blob`, a
consumer of the pull parser (``xenstream extract``).

=====================  =====================================================
``emulator-context``   the device model's state: a libxl EMULATOR_CONTEXT
                       record's data (after its emulator id and index: for
                       qemu-upstream the QEVM stream ``qemu -incoming``
                       reads), a legacy HVM image's qemu record data (after
                       its signature and length), a XenServer image's
                       Qemu_trad frame payload
``hvm-context``        the HVM_CONTEXT record body, a legacy HVM tail's context
``shared-info``        a PV guest's SHARED_INFO record, a legacy PV tail's page
``xenstore``           the device model's xenstore keys: EMULATOR_XENSTORE_DATA
                       pairs; for a legacy HVM image, the pairs libxl 4.5
                       restored from its physmap toolstack record
=====================  =====================================================

The copy of the last complete checkpoint counts
(:mod:`~xenstream.consumers.restore_points`): a Remus/COLO image gives what a
failover restore would use.  Large blobs are staged in temporary files (mode
0600, unlinked) until their checkpoint completes; the output is written
atomically (:mod:`xenstream.consumers.output`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple, Union

from xenstream.consumers.output import ExtractError, open_output
from xenstream.consumers.restore_points import COMMIT, DROP, at_end, restore_point
from xenstream.errors import FormatError, TruncatedError, UsageError
from xenstream.formats import legacy, libxc, libxl, xenopsd
from xenstream.formats.legacy import LChunk, LHeader, LHvmTail, LPvTail, LQemu, LTruncated
from xenstream.io import Source
from xenstream.reading.parser import LAYER_LIBXC, LAYER_LIBXL, Frame, Parser, Record

WHATS = ("emulator-context", "hvm-context", "shared-info", "xenstore")
PIECE = 1 << 20
XENSTORE_MAX = 64 << 20  # EMULATOR_XENSTORE_DATA held at most
Pairs = List[Tuple[bytes, bytes]]

_MISSING = {
    "emulator-context": "expected the device model's state (an EMULATOR_CONTEXT record, a "
                        "legacy qemu record or a Qemu_trad frame), found none: PV and PVH "
                        "guests have no device model",
    "hvm-context": "expected an HVM context (HVM_CONTEXT record or legacy HVM tail), found "
                   "none: not an HVM guest",
    "shared-info": "expected a shared info page (SHARED_INFO record or legacy PV tail), found "
                   "none: HVM guests save none",
    "xenstore": "expected the device model's xenstore data (EMULATOR_XENSTORE_DATA or a legacy "
                "physmap toolstack record), found none",
}


class BlobResult:
    """What :func:`extract_blob` found (and wrote)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.size = 0
        self.source = ""  # the record or item it came from
        self.offset = 0  # of that record or item in the input
        self.emulator: Optional[str] = None  # emulator-context, xenstore: which device model
        self.checkpoints = 0  # complete checkpoints read
        self.pairs: Pairs = []  # xenstore
        self.warnings: List[str] = []

    def describe(self) -> str:
        who = f" ({self.emulator})" if self.emulator else ""
        size = f"{len(self.pairs)} keys" if self.what == "xenstore" else f"{self.size} bytes"
        cps = f", checkpoint {self.checkpoints}" if self.checkpoints > 1 else ""
        return f"{self.what}, {size} from the {self.source}{who} at offset {self.offset:#x}{cps}"


class _Slot:
    """One checkpoint's copy of the blob: in a temporary file, or pairs."""

    def __init__(self, tmpdir: Optional[str]) -> None:
        self.tmpdir = tmpdir
        self.fd: Optional[int] = None
        self.size = 0
        self.pairs: Pairs = []
        self.source = ""
        self.offset = 0
        self.emulator: Optional[str] = None
        self.count = 0  # blobs seen in this checkpoint
        self.present = False

    def start(self, source: str, offset: int, emulator: Optional[str] = None) -> None:
        if self.fd is None:
            try:
                fd, path = tempfile.mkstemp(prefix=".xenstream-blob-", dir=self.tmpdir)
            except OSError as e:
                raise UsageError(f"cannot create a staging file: {e.strerror}") from None
            os.unlink(path)
            self.fd = fd
        os.ftruncate(self.fd, 0)
        self.size = 0
        self.source, self.offset, self.emulator = source, offset, emulator
        self.count += 1
        self.present = True

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.size)
            self.size += n
            view = view[n:]

    def clear(self) -> None:
        self.present = False
        self.count = 0
        self.pairs = []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Collector:
    def __init__(self, src: Source, what: str, tmpdir: Optional[str]) -> None:
        if what not in WHATS:
            raise UsageError(f"unknown blob {what!r} (expected {', '.join(WHATS)})")
        self.src = src
        self.what = what
        self.pending = _Slot(tmpdir)
        self.done = _Slot(tmpdir)
        self.committed = 0
        self.res = BlobResult(what)
        self.hdr: Optional[LHeader] = None

    def run(self) -> BlobResult:
        p = Parser(self.src)
        try:
            for item in p.items():
                self._item(item)
                point = restore_point(item, p.state)
                if point == COMMIT:
                    self._commit()
                elif point == DROP:
                    if type(item) is LTruncated:
                        self._warn(f"{item.describe()}; extracted the copy of checkpoint "
                                   f"{self.committed}, as a failover restore would")
                    self.pending.clear()
        except (FormatError, ExtractError) as e:
            if not self.committed:
                raise
            how = "ends" if isinstance(e, TruncatedError) else "breaks"
            self._warn(f"the stream {how} inside checkpoint {self.committed + 1} ({e}); "
                       f"extracted the copy of checkpoint {self.committed}, as a failover "
                       "restore would")
        else:
            if at_end(p.state, self.hdr is not None) == COMMIT:
                self._commit()
        self.pending.close()
        d = self.done
        if not d.present:
            self.done.close()
            raise ExtractError(self.src.pos, _MISSING[self.what])
        r = self.res
        r.size, r.source, r.offset, r.emulator = d.size, d.source, d.offset, d.emulator
        r.pairs = d.pairs
        r.checkpoints = self.committed
        if d.count > 1 and self.what == "emulator-context":
            self._warn(f"the checkpoint holds {d.count} emulator contexts: wrote the last")
        return r

    def _warn(self, msg: str) -> None:
        self.res.warnings.append(msg)

    def _commit(self) -> None:
        self.committed += 1
        if self.pending.present:
            self.pending, self.done = self.done, self.pending
        self.pending.clear()

    # -- items ---------------------------------------------------------------------------

    def _item(self, it: Any) -> None:
        t = type(it)
        w = self.what
        if t is Record:
            self._record(it)
        elif t is LHeader:
            self.hdr = it
        elif t is LQemu and w == "emulator-context":
            self.pending.start(f"legacy qemu record ({it.qkind})", it.offset,
                               "qemu-traditional" if it.qkind in ("xend", "xenserver")
                               else None)
            for chunk in it.chunks(PIECE):
                self.pending.write(chunk)
        elif t is LHvmTail and w == "hvm-context":
            self.pending.start("legacy HVM tail", it.offset)
            self.pending.write(it.context)
        elif t is LPvTail and w == "shared-info":
            self.pending.start("legacy PV tail", it.offset)
            self.pending.write(it.shared_info)
        elif (t is LChunk and w == "xenstore" and it.cid == legacy.CHUNK_TOOLSTACK
              and self.hdr is not None and self.hdr.guest == "hvm"):
            if it.data is None:
                raise ExtractError(it.offset, f"a toolstack record of {it.length} bytes: more "
                                   f"than the {legacy.TOOLSTACK_MAX} xenstream holds")
            try:
                pairs = legacy.physmap_xenstore(legacy.parse_physmap(it.data, self.hdr.width))
            except ValueError as e:
                raise ExtractError(it.offset, f"toolstack record: {e}") from None
            self.pending.start("legacy toolstack (physmap) record", it.offset)
            self.pending.pairs = pairs
        elif t is Frame and w == "emulator-context" and it.ftype == xenopsd.QEMU_TRAD:
            self.pending.start("Qemu_trad frame", it.offset, "qemu-traditional")
            if it.head is not None:
                self.pending.write(it.head)
            while it.consumed < it.length:
                self.pending.write(it.read(min(PIECE, it.length - it.consumed)))

    def _record(self, rec: Record) -> None:
        w = self.what
        if rec.layer == LAYER_LIBXL and rec.rtype in (libxl.REC_TYPE_EMULATOR_CONTEXT,
                                                      libxl.REC_TYPE_EMULATOR_XENSTORE_DATA):
            want = (libxl.REC_TYPE_EMULATOR_CONTEXT if w == "emulator-context" else
                    libxl.REC_TYPE_EMULATOR_XENSTORE_DATA if w == "xenstore" else None)
            if rec.rtype != want:
                return
            if rec.length < libxl.EMULATOR_HDR.size:
                raise ExtractError(rec.offset, f"{rec.what}: expected an emulator header of 8 "
                                   f"bytes, found a {rec.length}-byte body")
            h = libxl.EMULATOR_HDR.unpack(rec.read(libxl.EMULATOR_HDR.size), rec.endian)
            who = libxl.EMULATOR_NAMES.get(h["id"], f"emulator {h['id']}")
            if h["index"]:
                who += f" #{h['index']}"
            if w == "xenstore":
                if not self.pending.present or self.pending.source != rec.name:
                    self.pending.start(rec.name, rec.offset, who)
                self.pending.pairs = self.pending.pairs + _pairs(rec, rec.body(XENSTORE_MAX))
                return
            self.pending.start(rec.name, rec.offset, who)
            for chunk in rec.chunks(PIECE):
                self.pending.write(chunk)
        elif rec.layer == LAYER_LIBXC and (
                (rec.rtype == libxc.REC_TYPE_HVM_CONTEXT and w == "hvm-context")
                or (rec.rtype == libxc.REC_TYPE_SHARED_INFO and w == "shared-info")):
            self.pending.start(rec.name, rec.offset)
            for chunk in rec.chunks(PIECE):
                self.pending.write(chunk)

    def copy_to(self, fd: int) -> None:
        """The committed blob to ``fd``."""
        src = self.done.fd
        assert src is not None
        off = 0
        while off < self.done.size:
            data = os.pread(src, min(PIECE, self.done.size - off), off)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            off += len(data)

    def close(self) -> None:
        self.pending.close()
        self.done.close()


def _pairs(rec: Record, data: bytes) -> Pairs:
    """``key\\0value\\0`` pairs of an EMULATOR_XENSTORE_DATA body."""
    parts = data.split(b"\0")
    if len(parts) % 2 != 1 or parts[-1]:
        raise ExtractError(rec.offset, f"{rec.what}: expected NUL-terminated key/value pairs, "
                           "found an odd number of strings or bytes after the last NUL")
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]


def extract_blob(spec_or_source: Union[str, int, Source], what: str, out_path: Optional[str],
                 *, tmpdir: Optional[str] = None) -> BlobResult:
    """Find blob ``what`` (:data:`WHATS`) in the image ``spec_or_source`` and,
    unless ``out_path`` is None, write it there (a path, atomically and mode
    0600; ``-``; ``/dev/fd/N``).  xenstore pairs are in the result's
    ``pairs``; written, they are :func:`xenstore_text`.  Raises
    :class:`~xenstream.consumers.output.ExtractError` when the image has no
    such blob, :class:`~xenstream.errors.FormatError` on bad input."""
    src = spec_or_source if isinstance(spec_or_source, Source) else Source.open(spec_or_source)
    col = _Collector(src, what, tmpdir)
    try:
        res = col.run()
        if out_path is not None:
            out = open_output(out_path, src)
            try:
                assert out.fd is not None
                if what == "xenstore":
                    data = xenstore_text(res.pairs).encode()
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out.fd, view):]
                else:
                    col.copy_to(out.fd)
            except BaseException:
                out.abort()
                raise
            out.commit()
        return res
    finally:
        col.close()
        if not isinstance(spec_or_source, Source):
            src.close()


def write_text(out_path: str, src: Source, data: bytes) -> None:
    """``data`` to ``out_path``, atomically (mode 0600)."""
    out = open_output(out_path, src)
    try:
        assert out.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(out.fd, view):]
    except BaseException:
        out.abort()
        raise
    out.commit()


# -- xenstore as text -------------------------------------------------------------------


def _text(b: bytes) -> str:
    """UTF-8 text with ``\\``, control characters and undecodable bytes as
    escapes (``\\n``, ``\\\\``, ``\\xNN``): one line, no NUL."""
    s = b.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    return "".join(out)


def xenstore_text(pairs: Pairs) -> str:
    """``key=value`` lines, one per pair, escaped to stay one line each."""
    return "".join(f"{_text(k)}={_text(v)}\n" for k, v in pairs)


def xenstore_json(res: BlobResult, name: str) -> Dict[str, Any]:
    """The document ``extract --what xenstore --json`` prints."""
    return {"file": name, "emulator": res.emulator, "source": res.source,
            "offset": res.offset, "checkpoints": res.checkpoints,
            "xenstore": {_text(k): _text(v) for k, v in res.pairs}}

