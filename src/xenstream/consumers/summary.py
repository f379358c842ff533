"""The summary of a verified image: the ``summary`` object of the verifier's
JSON report (``schema/verify.schema.json``).

:func:`summarize` gathers what each layer's checker saw (the envelopes, libxl,
libxc or the legacy stream), the checkpoints, and the record counts, in the
order of the report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Tuple

from xenstream.consumers.verify_envelope import EnvelopeVerification
from xenstream.consumers.verify_legacy import LegacyVerification
from xenstream.consumers.verify_legacy import record_name as legacy_record_name
from xenstream.formats import libxc, libxl, xenopsd
from xenstream.formats.libxc import LibxcChecker
from xenstream.formats.libxl import LibxlChecker
from xenstream.reading.parser import LAYER_LIBXC, ParseState

Summary = Dict[str, Any]

#: layer -> the name of a record (or frame, or legacy item) type
_NAMES = {LAYER_LIBXC: libxc.record_name, "libxl": libxl.record_name,
          "xenopsd": xenopsd.frame_name, "legacy": legacy_record_name}


def summarize(*, records: int, nbytes: int, counts: Counter[Tuple[str, int]],
              state: ParseState, complete_checkpoints: int, envelope: EnvelopeVerification,
              libxl: Optional[LibxlChecker], libxc: Optional[LibxcChecker],
              legacy: LegacyVerification) -> Summary:
    """The summary, from the verifier's tallies (``records`` and ``counts``,
    without the legacy stream's, which ``legacy`` keeps), the parser's state
    and the layers' checkers."""
    s: Summary = {"records": records + legacy.records, "bytes": nbytes}
    _envelope(s, envelope)
    if libxl is not None:
        ls = libxl.s
        s["libxl"] = {"version": 2, "endian": "big" if ls.endian == ">" else "little",
                      "converted_from_legacy": ls.legacy_converted,
                      "emulators": sorted(set(ls.emulator_ids)),
                      "xenstore_keys": ls.xenstore_keys,
                      "emulator_context_bytes": ls.emulator_context_bytes}
    if libxc is not None:
        _libxc(s, libxc)
    if legacy.stream is not None:
        _legacy(s, legacy)
    s["checkpoints"] = {
        "kind": ("colo" if state.colo else "remus") if state.checkpoints else None,
        "checkpoint_records": state.checkpoints,
        "complete": complete_checkpoints if state.checkpoints else 0,
    }
    all_counts = counts.copy()
    all_counts.update(legacy.counts)
    s["record_counts"] = dict(sorted(
        (f"{layer}:{_NAMES[layer](rtype)}", n) for (layer, rtype), n in all_counts.items()))
    return s


def _envelope(s: Summary, env: EnvelopeVerification) -> None:
    if env.libvirt is not None:
        v = env.libvirt.info
        s["libvirt"] = {"version": v.version, "xml_len": v.xml_len, "name": v.name,
                        "domain_type": v.domain_type}
    if env.xend is not None:
        x = env.xend.info
        s["xend"] = {"config_len": x.config_len, "name": x.name, "guest_type": x.guest}
    if env.xenopsd is not None:
        o = env.xenopsd.info
        s["xenopsd"] = {"format": "legacy" if o.legacy else "v2", "frames": o.frames,
                        "word_size": o.word_size, "time": o.fields.get("time")}
    if env.xl is not None:
        i = env.xl.info
        s["xl"] = {"streamv2": i.streamv2, "mandatory_flags": i.mandatory_flags,
                   "config": i.config_kind, "endian": "big" if i.endian == ">" else "little"}


def _libxc(s: Summary, chk: LibxcChecker) -> None:
    cs = chk.s
    s["libxc"] = {"version": cs.version, "endian": "big" if cs.endian == ">" else "little",
                  "xen_version": cs.xen_version,
                  "converted_from_legacy": cs.converted_from_legacy}
    s["guest_type"] = cs.guest
    if cs.guest == "pv":
        s["guest_width"] = cs.width * 8
        s["vcpus"] = sorted(cs.vcpu_basic)
        s["max_pfn"] = cs.max_pfn
    elif cs.guest == "hvm":
        s["vcpus"] = sorted(cs.hvm_vcpus)
    s["pages"] = cs.pages
    s["page_records"] = cs.page_records
    s["highest_pfn"] = cs.pfns_max
    s["verify_mode"] = cs.verify_mode


def _legacy(s: Summary, lv: LegacyVerification) -> None:
    assert lv.stream is not None
    g = lv.stream.guess
    s["legacy"] = {"container": lv.stream.container,
                   "width": g.width * 8 if g else None,
                   "guest_type": g.guest if g else None}
    lc = lv.checker
    if lc is not None and lc.header is not None:
        h = lc.header
        s["legacy"].update({
            "p2m_size": h.p2m_size, "pages": lc.pages, "batches": lc.batches,
            "checkpoints": lc.checkpoints, "verify_mode": lc.verify_mode,
            "qemu_record": lc.qemu_kind,
            "guest_width": h.guest_width * 8 if h.guest == "pv" else None})
        s["guest_type"] = h.guest
        s["pages"] = lc.pages
