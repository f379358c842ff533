"""libxl migration stream, version 2 (``docs/specs/libxl-migration-stream.pandoc``).

Layouts and constants, then :class:`LibxlChecker` with the rules of the spec and
of ``tools/libs/light/libxl_stream_read.c``.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from xenstream.layout import Layout

HDR_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
HDR_VERSION = 2
HDR_OPT_BE = 1 << 0
HDR_OPT_LEGACY = 1 << 1
HDR_OPT_RESERVED = 0xFFFFFFFC

# The header is always big-endian.
HDR = Layout("libxl header", [("ident", "Q"), ("version", "I"), ("options", "I")])
RH = Layout("record header", [("type", "I"), ("length", "I")])
EMULATOR_HDR = Layout("emulator header", [("id", "I"), ("index", "I")])
CHECKPOINT_STATE = Layout("CHECKPOINT_STATE", [("control_id", "I")])

REC_TYPE_END = 0
REC_TYPE_LIBXC_CONTEXT = 1
REC_TYPE_EMULATOR_XENSTORE_DATA = 2
REC_TYPE_EMULATOR_CONTEXT = 3
REC_TYPE_CHECKPOINT_END = 4
REC_TYPE_CHECKPOINT_STATE = 5
RECORD_NAMES: Dict[int, str] = {
    0: "END",
    1: "LIBXC_CONTEXT",
    2: "EMULATOR_XENSTORE_DATA",
    3: "EMULATOR_CONTEXT",
    4: "CHECKPOINT_END",
    5: "CHECKPOINT_STATE",
}
REC_TYPE_OPTIONAL = 0x80000000

EMULATOR_UNKNOWN = 0
EMULATOR_QEMU_TRADITIONAL = 1
EMULATOR_QEMU_UPSTREAM = 2
EMULATOR_NAMES = {0: "unknown (legacy conversion)", 1: "qemu-traditional", 2: "qemu-upstream"}

CHECKPOINT_NEW = 0
CHECKPOINT_SVM_SUSPENDED = 1
CHECKPOINT_SVM_READY = 2
CHECKPOINT_SVM_RESUMED = 3
CHECKPOINT_STATE_NAMES = {0: "NEW", 1: "SVM_SUSPENDED", 2: "SVM_READY", 3: "SVM_RESUMED"}

#: Characters the spec allows in xenstore keys.
KEY_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")

QEVM_MAGIC = b"QEVM"

Report = Callable[..., None]


def record_name(rtype: int) -> str:
    if rtype in RECORD_NAMES:
        return RECORD_NAMES[rtype]
    if rtype & REC_TYPE_OPTIONAL:
        return f"OPTIONAL_{rtype:#010x}"
    return f"UNKNOWN_{rtype:#010x}"


#: Longest key or value accepted when scanning (xenstore's own payload limit is 4 KiB).
XENSTORE_ITEM_MAX = 1 << 20


#: iter_xenstore_data's error for a pair longer than anyone holds
ITEM_TOO_LONG = f"expected a key/value pair of at most {XENSTORE_ITEM_MAX} bytes each, found a longer one"


def iter_xenstore_data(chunks: Iterable[bytes]) -> Iterator[Tuple[int, bytes, Optional[bytes], Optional[str]]]:
    """Split ``key\0value\0...`` arriving in chunks, in bounded memory.

    Yields ``(offset, key, value, error)``; ``error`` ends the scan.
    """
    carry = b""
    base = 0  # offset of carry[0] in the data
    for chunk in chunks:
        buf = carry + chunk if carry else chunk
        pos = 0
        while True:
            k_end = buf.find(b"\0", pos)
            if k_end < 0:
                break
            v_end = buf.find(b"\0", k_end + 1)
            if v_end < 0:
                break
            yield base + pos, buf[pos:k_end], buf[k_end + 1:v_end], None
            pos = v_end + 1
        carry = buf[pos:]
        base += pos
        if len(carry) > 2 * XENSTORE_ITEM_MAX:
            yield base, carry[:32], None, ITEM_TOO_LONG
            return
    if carry:
        k_end = carry.find(b"\0")
        if k_end < 0:
            yield base, carry, None, "expected the key to be NUL-terminated, found end of record"
        else:
            yield base, carry[:k_end], None, "expected a NUL-terminated value after the key, found end of record"


class LibxlState:
    def __init__(self) -> None:
        self.endian = "<"
        self.legacy_converted = False
        self.libxc_contexts = 0
        self.emulator_ids: List[int] = []
        self.xenstore_keys = 0
        self.emulator_context_bytes = 0
        self.checkpoint_ends = 0
        self.checkpoint_states = 0
        self.ended = False


class LibxlChecker:
    """Rules of the libxl layer; one instance per libxl stream."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.s = LibxlState()

    def header(self, f: Dict[str, int]) -> None:
        r = self.report
        if f["version"] != HDR_VERSION:
            r("libxl-version",
              f"expected version 2, found {f['version']}")
        if f["options"] & HDR_OPT_BE:
            self.s.endian = ">"
            r("libxl-big-endian",
              "expected a little-endian stream (options bit 0 clear), found a big-endian stream: "
              "parsed in its byte order, but libxl on x86 refuses to restore it")
        if f["options"] & HDR_OPT_LEGACY:
            self.s.legacy_converted = True
        if f["options"] & HDR_OPT_RESERVED:
            r("libxl-options-reserved",
              f"expected reserved option bits 2-31 zero, found options {f['options']:#010x}")

    def record(self, rtype: int, length: int, body: Optional[bytes], *,
               guest: Optional[str], in_checkpoint: bool, colo: bool,
               after_libxc: bool, rest: Iterable[bytes] = ()) -> None:
        """Check one libxl record.  ``body`` is the first bytes of the body:
        all of a small record, the emulator header (and 4 more bytes) of the
        emulator records; ``rest`` yields the remainder of EMULATOR_XENSTORE_DATA
        in chunks."""
        r = self.report
        s = self.s
        if rtype not in RECORD_NAMES:
            opt = " (the optional bit is set, but libxl has no optional records)" if rtype & REC_TYPE_OPTIONAL else ""
            r("libxl-unknown-record",
              f"expected a libxl record type 0-5, found {rtype:#010x}{opt}")
            return
        if rtype == REC_TYPE_END:
            if length:
                r("libxl-record-length-zero", f"expected body length 0, found {length}")
            if s.libxc_contexts == 0:
                r("libxl-no-libxc-context",
                  "expected a LIBXC_CONTEXT record before END, found none: the image holds no "
                  "domain memory")
            if in_checkpoint:
                # after a complete checkpoint, libxl buffers END, reads on and fails over
                r("libxl-end-in-checkpoint" if not s.checkpoint_ends
                  else "libxl-end-in-checkpoint-failover",
                  "expected CHECKPOINT_END to close the checkpoint, found END")
            s.ended = True
        elif rtype == REC_TYPE_LIBXC_CONTEXT:
            if length:
                r("libxl-record-length-zero", f"expected body length 0, found {length}")
            if s.libxc_contexts:
                r("libxl-libxc-context-once",
                  "expected one LIBXC_CONTEXT record, found a second")
            s.libxc_contexts += 1
        elif rtype in (REC_TYPE_EMULATOR_XENSTORE_DATA, REC_TYPE_EMULATOR_CONTEXT):
            name = RECORD_NAMES[rtype]
            if guest is not None and guest != "hvm":
                r("libxl-emulator-not-hvm",
                  f"{name} is only valid for an HVM guest, found in a {guest.upper()} stream")
            if not after_libxc:
                r("libxl-emulator-order",
                  f"expected {name} after the libxc stream, found it before LIBXC_CONTEXT")
            if length < 8:
                r("libxl-emulator-length",
                  f"expected at least 8 bytes (emulator_id, index), found {length}")
                return
            assert body is not None
            h = EMULATOR_HDR.unpack(body, s.endian)
            if h["id"] not in EMULATOR_NAMES:
                r("libxl-emulator-id",
                  f"expected emulator_id 0-2, found {h['id']}")
            s.emulator_ids.append(h["id"])
            if rtype == REC_TYPE_EMULATOR_XENSTORE_DATA:
                self._xenstore(itertools.chain([body[8:]], rest))
            else:
                s.emulator_context_bytes += length - 8
                if length == 8:
                    r("libxl-emulator-context-empty",
                      "EMULATOR_CONTEXT carries no emulator state")
                elif body[8:12] != QEVM_MAGIC[: min(4, length - 8)] and h["id"] == EMULATOR_QEMU_UPSTREAM:
                    r("libxl-emulator-context-magic",
                      f"expected qemu-upstream state to start with 'QEVM', found {body[8:12]!r}")
        elif rtype == REC_TYPE_CHECKPOINT_END:
            if length:
                r("libxl-record-length-zero", f"expected body length 0, found {length}")
            if not in_checkpoint:
                r("libxl-checkpoint-end-unexpected",
                  "expected CHECKPOINT_END only after a libxc CHECKPOINT, found it outside a "
                  "checkpoint (\"Unexpected CHECKPOINT_END record in stream\")")
            s.checkpoint_ends += 1
        elif rtype == REC_TYPE_CHECKPOINT_STATE:
            s.checkpoint_states += 1
            if not colo:
                r("libxl-checkpoint-state-unexpected",
                  "expected CHECKPOINT_STATE only after CHECKPOINT_END of a COLO checkpoint, "
                  "found it elsewhere")
            if length == 0:
                r("libxl-checkpoint-state-empty",
                  "expected 4 bytes (control_id), found 0: libxl dereferences NULL on this")
                return
            if length != 4:
                r("libxl-checkpoint-state-length", f"expected 4 bytes (control_id), found {length}")
            if length >= 4:
                assert body is not None
                cid = CHECKPOINT_STATE.unpack(body, s.endian)["control_id"]
                if cid != CHECKPOINT_NEW:
                    r("libxl-checkpoint-state-id",
                      f"expected control_id 0 (NEW) on the primary-to-secondary stream, found "
                      f"{cid} ({CHECKPOINT_STATE_NAMES.get(cid, 'unknown')})")

    def _xenstore(self, chunks: Iterable[bytes]) -> None:
        r = self.report
        for off, key, value, err in iter_xenstore_data(chunks):
            at = f"key/value pair at body offset {8 + off:#x}"
            if err:
                r("libxl-xenstore-item-size" if err is ITEM_TOO_LONG else "libxl-xenstore-nul",
                  f"{at}: {err}")
                return
            if not key:
                r("libxl-xenstore-key-empty", f"{at}: expected a key, found an empty one")
                continue
            if key.startswith(b"/"):
                r("libxl-xenstore-key-absolute",
                  f"{at}: expected a relative key, found {key.decode('latin-1')!r}")
                continue
            bad = set(key) - KEY_CHARS
            if bad:
                r("libxl-xenstore-key-chars",
                  f"{at}: expected key characters alphanumeric or -/_@, found {key.decode('latin-1')!r}")
            self.s.xenstore_keys += 1
            assert value is not None
