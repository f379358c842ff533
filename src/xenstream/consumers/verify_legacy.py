"""The verifier's part for legacy (Xen <= 4.5) images.

When the parser finds a legacy stream (bare, or inside an envelope),
:class:`LegacyVerification` judges it against the envelope's configuration,
reports it (a legacy image restores only after conversion) and, unless told to
reject legacy streams, follows it: each item goes to
:class:`xenstream.formats.legacy.LegacyChecker` and is counted under
:func:`record_key`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Tuple

from xenstream.consumers.verify_envelope import EnvelopeVerification
from xenstream.formats.legacy import (
    CHUNK_NAMES,
    LBatch,
    LBatchRun,
    LChunk,
    LegacyChecker,
    LHeader,
    LQemu,
)
from xenstream.formats.libxc import Report
from xenstream.reading.parser import Legacy, Parser

_WHERE = {
    "xl": "after the xl header (STREAMv2 flag clear)",
    "xl-streamv2": "after an xl header whose STREAMv2 flag is set",
    "libvirt": "after the libvirt header",
    "xend": "after the xend header",
    "xenopsd": "in a XenServer image",
}


class LegacyVerification:
    """The legacy stream of one image, once the parser finds one: its checker
    and its record counts."""

    def __init__(self, parser: Parser, envelope: EnvelopeVerification, report: Report, *,
                 reject: bool) -> None:
        self.parser = parser
        self.envelope = envelope
        self.report = report
        self.reject = reject
        self.stream: Optional[Legacy] = None  # what the parser found
        self.checker: Optional[LegacyChecker] = None  # None unless followed
        self.records = 0
        self.counts: Counter[Tuple[str, int]] = Counter()

    def start(self, item: Legacy) -> None:
        """The parser found a legacy stream: say what it is, and follow it
        unless rejected."""
        self.stream = item
        self.envelope.payload("legacy")
        cfg = self.envelope.config_guest()
        if (cfg is not None and cfg[0] == "pv" and item.guess is not None
                and item.guess.guest == "hvm" and not item.guess.certain):
            # a PV stream without extended info (pre-3.1) starts like an HVM one:
            # the configuration decides, as the toolstack did
            self.parser.legacy_options.guest = "pv"
            item.guess.guest = "pv"
        elif cfg is not None and item.guess is not None:
            want = "pv" if cfg[0] == "pv" else "hvm"
            if want != item.guess.guest:
                self.report("legacy-guest-type",
                            f"expected a legacy {want.upper()} stream ({cfg[1]} says type "
                            f"{cfg[0]!r}), found a legacy {item.guess.guest.upper()} stream")
        what = item.guess.describe() if item.guess else "legacy (Xen <= 4.5) stream"
        where = _WHERE.get(item.container, "")
        if item.guess is None:
            self.parser.follow_legacy = False
            self.report("legacy-unrecognised",
                        f"expected a legacy stream{' ' + where if where else ''}, found bytes "
                        "that match no legacy layout (the spec's table of first octets)")
            return
        if self.reject:
            self.parser.follow_legacy = False
            self.report("legacy-stream-rejected",
                        f"legacy stream: convert it ({what}{', ' + where if where else ''}); "
                        "Xen >= 4.6 restores it only through convert-legacy-stream")
            return
        # libxl (xl, libvirt) and xenopsd run a converter by themselves; nothing
        # current converts a bare stream or a xend image on restore
        self.report("legacy-stream" if item.container in ("xl", "xl-streamv2", "libvirt",
                                                          "xenopsd", "xenopsd-frame")
                    else "legacy-stream-unconverted",
                    f"legacy image ({what}{', ' + where if where else ''}): Xen >= 4.6 "
                    "restores it only after conversion (xenstream convert; libxl runs its "
                    "converter by itself for xl and libvirt images when one is installed)")
        self.checker = LegacyChecker(self.report)

    def check(self, item: Any) -> None:
        """One item of the legacy stream followed."""
        assert self.checker is not None
        if isinstance(item, LBatchRun):
            self.records += len(item.batches)
            self.counts[("legacy", 1 << 16)] += len(item.batches)
        elif isinstance(item, (LBatch, LChunk, LQemu, LHeader)):
            self.records += 1
            self.counts[("legacy", record_key(item))] += 1
            if isinstance(item, LHeader) and self.parser.legacy_parser is not None:
                # plain page batches are checked in bulk, their data skipped
                self.parser.legacy_parser.bulk = self.parser.src.seekable
        self.checker.item(item)


def record_key(item: Any) -> int:
    """The record-count key of a legacy item: a chunk's id (negative), or its
    kind shifted left by 16."""
    if isinstance(item, LChunk):
        return int(item.cid)
    return (1 if isinstance(item, LBatch) else 2 if isinstance(item, LQemu) else 3) << 16


def record_name(key: int) -> str:
    """The name of a :func:`record_key` in the summary's record counts."""
    if key < 0:
        return f"CHUNK_{CHUNK_NAMES.get(key, str(key))}"
    return {1: "PAGE_BATCH", 2: "QEMU_RECORD", 3: "HEADER"}.get(key >> 16, str(key))
