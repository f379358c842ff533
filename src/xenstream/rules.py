"""The rules: one table of every rule a checker applies.

Each :class:`Rule` names its severity in the strict verifier, its authority
and the source it comes from (``spec``: a section of a specification;
``restore``: the Xen function that refuses it; ``toolstack``: the libxl, xl,
xenopsd or libvirt code that does; ``convention``: nothing enforces it, so it
is never an error), whether Xen HEAD's restore tolerates it anyway, and a
one-line description.  Checkers name rules by id only; the consumers look the
rest up here.  ``docs/rules.md`` is generated from this table
(``python -m xenstream.rules > docs/rules.md``).

Per release: a rule whose verdict is not the same at every release from 4.6
names the rows of the release table (:mod:`xenstream.releases`) it depends
on: ``before`` is its verdict at 4.6.0 (``restores``, ``refused`` or
``host``: it depends on the restoring host, ``condition`` says on what) and
``changes`` the verdict from each row on.  A rule with no rows is judged the
same by every release: refused where it is an error HEAD does not tolerate.
Rules with ``uses`` are raised only when a release is judged: they say what
an image carries that only some releases restore (a v3 stream, a 32-byte
LAPIC record, ...); the judging consumer matches ``uses`` against what the
verifier saw.

The judging targets: ``HEAD`` (what ``xenstream convert`` and ``verify``
judge against: the newest Xen), ``ANY_RELEASE`` (the drop-in converter runs
on the restoring host, whose release it cannot know: it refuses only what no
release from 4.6 on restores), or any release ``X.Y.Z``.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, TextIO, Tuple

from xenstream import releases
from xenstream.findings import CONVENTION, ERROR, INFO, RESTORE, SPEC, TOOLSTACK, WARNING
from xenstream.releases import HOST, REFUSED, RESTORES

AUTHORITIES = (SPEC, RESTORE, TOOLSTACK, CONVENTION)

#: the first release with the v2 stream format
FIRST_V2_RELEASE = "4.6"
HEAD = "head"
ANY_RELEASE = "any"

#: what an image carries, matched by the judging consumer: (kind, key) or (kind, key, limit)
Use = Tuple[Any, ...]


class Rule(NamedTuple):
    id: str
    severity: str
    authority: str
    source: str
    tolerated: bool
    description: str
    #: the verdict at 4.6.0 (None: the same at every release, from severity and tolerated)
    before: Optional[str] = None
    #: (release-table row, verdict from that row on), in order
    changes: Tuple[Tuple[str, str], ...] = ()
    #: for a ``host`` verdict: what the restoring host must have
    condition: str = ""
    #: what to do where it is refused
    advice: str = ""
    #: raised only when a release is judged: what the image carries (any of these)
    uses: Tuple[Use, ...] = ()

    @property
    def since(self) -> Optional[str]:
        """X.Y of the first master release that refuses it, where later than
        4.6 (None: refused by every release, or by none)."""
        if self.before != RESTORES:
            return None
        for cid, verdict in self.changes:
            if verdict == REFUSED:
                return releases.series(releases.CHANGES[cid].release)
        return None


def refused_from(change: str) -> Dict[str, Any]:
    """The fields of a rule that every release restores until ``change``
    and refuses from it on."""
    return {"before": RESTORES, "changes": ((change, REFUSED),)}


def restored_from(change: str, verdict: str = RESTORES) -> Dict[str, Any]:
    """The fields of a rule refused until ``change``, ``verdict`` from it on."""
    return {"before": REFUSED, "changes": ((change, verdict),)}


def _table(rows: Iterable[Rule]) -> Dict[str, Rule]:
    table: Dict[str, Rule] = {}
    for r in rows:
        if r.id in table:
            raise ValueError(f"rule {r.id} is in the table twice")
        for cid, verdict in r.changes:
            if cid not in releases.CHANGES or verdict not in releases.OUTCOMES:
                raise ValueError(f"rule {r.id}: bad release row {cid!r} / {verdict!r}")
        table[r.id] = r
    return table


def rule(rule_id: str) -> Rule:
    """The rule with ``rule_id`` (KeyError for an id that is not in the table:
    a bug of the checker that used it)."""
    return RULES[rule_id]


def _release_name(target: str) -> str:
    return releases.HEAD if target in (HEAD, releases.HEAD) else target


def verdict(r: Rule, target: str = HEAD) -> str:
    """``restores``, ``refused`` or ``host``: what a restore on ``target``
    (a release ``X.Y.Z`` or HEAD) does with an image that breaks ``r``."""
    if r.before is None:
        return REFUSED if r.severity == ERROR and not r.tolerated else RESTORES
    return releases.outcome(r.before, r.changes, _release_name(target))


def refused(r: Rule, target: str = HEAD) -> bool:
    """Whether a restore on ``target`` fails on an image that breaks ``r``:
    HEAD (or a release ``X.Y.Z``) refuses what its verdict says; for
    ANY_RELEASE it must be refused by every release from 4.6 on (a rule
    enforced only since a later release is something an older host still
    restores)."""
    if target == ANY_RELEASE:
        return all(verdict(r, rel) == REFUSED for rel in releases.RELEASES)
    return verdict(r, target) == REFUSED


def affected(r: Rule) -> List[str]:
    """The releases of :data:`xenstream.releases.RELEASES` that do not simply
    restore an image breaking ``r`` (refused, or only on some hosts)."""
    return [rel for rel in releases.RELEASES if verdict(r, rel) != RESTORES]


def last_restoring(r: Rule) -> Optional[str]:
    """The newest release that still restores an image breaking ``r`` (None:
    no v2 release does, or every release does)."""
    if r.since is None:
        return None
    major, minor = releases.key(r.since)[:2]
    return f"{major}.{minor - 1}"


def refusal_note(r: Rule) -> str:
    """``; Xen 4.12 and later refuse it, 4.11 is the last release that
    restores it`` (with the stable releases a backport reached), or ``""``."""
    last = last_restoring(r)
    if last is None:
        return ""
    bps = [p for cid, v in r.changes if v == REFUSED
           for p, _ in releases.CHANGES[cid].backports]
    extra = f" (by backport also {', '.join(bps)} and later)" if bps else ""
    last_txt = f"{last}.0" if bps else last
    return f"; Xen {r.since} and later refuse it{extra}, {last_txt} is the last release that restores it"


def releases_text(r: Rule) -> str:
    """The rule's verdicts by release, for docs/rules.md."""
    if r.before is None:
        return ""
    parts = [f"{r.before} at 4.6"]
    for cid, v in r.changes:
        c = releases.CHANGES[cid]
        bps = "".join(f", {p}" for p, _ in c.backports)
        parts.append(f"{v} from {releases.series(c.release)}{bps} (`{cid}`)")
    return "; ".join(parts)


def markdown(out: TextIO) -> None:
    """``docs/rules.md``: the table, by authority then id."""
    out.write("# Rules\n\nGenerated from `src/xenstream/rules.py` (`python -m xenstream.rules "
              "> docs/rules.md`); do not edit.\n\n")
    counts = ", ".join(f"{sum(1 for r in RULES.values() if r.authority == a)} {a}"
                       for a in AUTHORITIES)
    out.write(f"{len(RULES)} rules: {counts}. *Tolerated*: Xen HEAD's restore accepts the "
              "image anyway. *Releases*: the verdict by release where it is not the same at "
              "every release from 4.6, with the rows of [restorability.md](restorability.md) "
              "it depends on (`host`: it depends on the restoring host). Rules marked *judged "
              "per release* are raised only by `verify --target-xen`.\n\n")
    out.write("| rule | severity | authority | source | tolerated | releases | what it requires |\n")
    out.write("| --- | --- | --- | --- | --- | --- | --- |\n")
    for r in sorted(RULES.values(), key=lambda r: (AUTHORITIES.index(r.authority), r.id)):
        desc = r.description + (" (judged per release)" if r.uses else "")
        if r.condition:
            desc += f"; host: {r.condition}"
        source, desc, rel = (s.replace("|", "\\|") for s in (r.source, desc, releases_text(r)))
        out.write(f"| `{r.id}` | {r.severity} | {r.authority} | {source} | "
                  f"{'yes' if r.tolerated else 'no'} | {rel} | {desc} |\n")


# -- the table -------------------------------------------------------------------------

RULES: Dict[str, Rule] = _table([
    # -- the libxc v2/v3 stream, the libxl v2 stream and the xl header -------------------------
    Rule("ihdr-version", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: read_headers()",
         False, "image header version is 2 or 3"),
    Rule("ihdr-big-endian", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: read_headers()",
         False, "image header options bit 0 (big-endian) is clear"),
    Rule("ihdr-options-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Image Header",
         True, "image header option bits 1-15 are zero"),
    Rule("ihdr-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Image Header",
         True, "image header reserved fields (_res1, _res2) are zero"),
    Rule("dhdr-type", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: x86_pv_setup(); xg_sr_restore_x86_hvm.c: x86_hvm_setup()",
         False, "domain header type is 1 (x86 PV) or 2 (x86 HVM)"),
    Rule("dhdr-page-shift", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: x86_pv_setup(); xg_sr_restore_x86_hvm.c: x86_hvm_setup()",
         False, "domain header page_shift is 12 (4 KiB pages)"),
    Rule("dhdr-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Domain Header",
         True, "domain header reserved field is zero"),
    Rule("optional-known-type", WARNING, CONVENTION,
         "docs/specs/libxc-migration-stream.pandoc §Records; tools/libs/guest/xg_sr_restore.c: restore() ignores any record with bit 31 set",
         True, "a known record type is not sent with the optional bit set (the restorer would drop its content)"),
    Rule("optional-record", INFO, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Records",
         True, "an optional record of unknown type is skipped, as the specification allows",
         before=RESTORES, changes=(("stream-v2", RESTORES),)),
    Rule("unknown-mandatory", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore()",
         False, "every mandatory record type is known (0x00-0x12)"),
    Rule("v3-record-in-v2", WARNING, CONVENTION,
         "docs/specs/libxc-migration-stream.pandoc §Future Extensions; tools/libs/guest/xg_sr_restore.c: process_record() does not version-gate",
         True, "STATIC_DATA_END and the CPUID/MSR policy records appear only in version 3 streams"),
    Rule("pv-record-in-hvm", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_hvm.c: x86_hvm_process_record(); xg_sr_restore.c: restore()",
         False, "an HVM stream has no X86_PV_* or SHARED_INFO records"),
    Rule("hvm-record-in-pv", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: x86_pv_process_record(); xg_sr_restore.c: restore()",
         False, "a PV stream has no HVM_CONTEXT or HVM_PARAMS records"),
    Rule("record-length-zero", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §END, §VERIFY, §CHECKPOINT, §STATIC_DATA_END",
         True, "END, VERIFY, CHECKPOINT and STATIC_DATA_END have body length 0"),
    Rule("toolstack-record", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore() (no x86 process_record() handles TOOLSTACK)",
         False, "no TOOLSTACK record (deprecated; an unhandled mandatory record)"),
    Rule("dirty-pfn-list-forward", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore() (CHECKPOINT_DIRTY_PFN_LIST not handled on the forward stream)",
         False, "no CHECKPOINT_DIRTY_PFN_LIST in the primary-to-secondary stream"),
    Rule("static-data-end-once", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_static_data_end()",
         False, "at most one STATIC_DATA_END, counting the one a v2 stream infers at its first PAGE_DATA/X86_PV_P2M_FRAMES"),
    Rule("static-data-end-missing", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data(); xg_sr_restore_x86_pv.c: handle_x86_pv_p2m_frames()",
         False, "a version 3 stream has STATIC_DATA_END before its first PAGE_DATA and X86_PV_P2M_FRAMES"),
    Rule("static-data-end-absent", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §v3 compat with v2",
         True, "a version 3 stream contains a STATIC_DATA_END record (even without memory records)"),
    Rule("page-data-before-p2m", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data() (x86_pv_pfn_is_valid(): max_pfn is 0 until X86_PV_P2M_FRAMES)",
         False, "in a PV stream X86_PV_P2M_FRAMES precedes the first PAGE_DATA"),
    Rule("page-data-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data()",
         False, "PAGE_DATA length is 8 + 8*count + 4096 per pfn of a type that carries data"),
    Rule("page-data-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §PAGE_DATA",
         True, "PAGE_DATA header reserved field is zero"),
    Rule("page-data-count", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data()",
         False, "PAGE_DATA count is at least 1"),
    Rule("page-data-batch", WARNING, CONVENTION,
         "tools/libs/guest/xg_save_restore.h: MAX_BATCH_SIZE (saver only; the restorer has no maximum)",
         True, "PAGE_DATA carries at most 1024 pfns, as Xen's saver sends"),
    Rule("page-data-pfn-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §PAGE_DATA",
         True, "PAGE_DATA pfn entries have bits 52-59 zero"),
    Rule("page-data-type", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data() (is_known_page_type())",
         False, "PAGE_DATA page types are 0-4, 9-0xC, 0xD-0xF (not 5-8)"),
    Rule("page-data-pfn-range", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data() (x86_pv_pfn_is_valid())",
         False, "PV PAGE_DATA pfns are <= the max_pfn set by X86_PV_P2M_FRAMES"),
    Rule("pv-info-once", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_info()",
         False, "X86_PV_INFO appears at most once"),
    Rule("pv-info-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_info()",
         False, "X86_PV_INFO body is at least 8 bytes"),
    Rule("pv-info-length-extra", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §X86_PV_INFO, §Future Extensions",
         True, "X86_PV_INFO body is exactly 8 bytes (a longer one is accepted by the restorer)"),
    Rule("pv-info-width", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_info() (valid_x86_pv_info_combination())",
         False, "X86_PV_INFO guest_width/pt_levels is 8/4 or 4/3"),
    Rule("pv-info-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §X86_PV_INFO, §Fields",
         True, "X86_PV_INFO reserved bytes are zero"),
    Rule("pv-info-first", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_p2m_frames(), handle_shared_info()",
         False, "X86_PV_INFO precedes X86_PV_P2M_FRAMES and SHARED_INFO"),
    Rule("pv-info-before-vcpu", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §x86 PV Guest (strict ordering)",
         True, "X86_PV_INFO precedes the X86_PV_VCPU_* records"),
    Rule("p2m-frames-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_p2m_frames()",
         False, "X86_PV_P2M_FRAMES length is 8 + 8 per p2m frame from start_pfn/fpp to end_pfn/fpp"),
    Rule("p2m-frames-range", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_p2m_frames()",
         False, "X86_PV_P2M_FRAMES start_pfn <= end_pfn"),
    Rule("vcpu-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         False, "X86_PV_VCPU_* body holds the 8-byte vcpu header"),
    Rule("vcpu-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §X86_PV_VCPU_BASIC, EXTENDED, XSAVE, MSRS",
         True, "X86_PV_VCPU_* header reserved field is zero"),
    Rule("errata-zero-content", WARNING, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Errata",
         True, "variable-size records (X86_PV_VCPU_*, HVM_PARAMS) carry content; empty ones are tolerated errata of 4.6-4.8 senders"),
    Rule("vcpu-id", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         False, "X86_PV_VCPU_* vcpu_id is below the restoring domain's vcpu count (config max_vcpus)"),
    Rule("vcpu-basic-size", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         False, "X86_PV_VCPU_BASIC context is 5168 bytes (64-bit guest) or 2800 bytes (32-bit guest)"),
    Rule("vcpu-extended-size", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         False, "X86_PV_VCPU_EXTENDED context is at most 128 bytes"),
    Rule("vcpu-extended-embedded-size", ERROR, RESTORE,
         "xen/arch/x86/domctl.c: arch_do_domctl() XEN_DOMCTL_set_ext_vcpucontext",
         False, "X86_PV_VCPU_EXTENDED context holds its vcpu and size fields, and size >= 32 (offsetof vmce)"),
    Rule("vcpu-extended-embedded-vcpu", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §X86_PV_VCPU_BASIC, EXTENDED, XSAVE, MSRS",
         True, "X86_PV_VCPU_EXTENDED context's own vcpu field equals the record's vcpu_id (Xen applies the embedded one)"),
    Rule("vcpu-xsave-size", ERROR, RESTORE,
         "xen/arch/x86/domctl.c: arch_do_domctl() XEN_DOMCTL_setvcpuextstate",
         False, "X86_PV_VCPU_XSAVE is >= 16 bytes; 16 when xcr0_accum is 0; else >= 16+576 and not above 16 + uncompressed size(xcr0_accum)"),
    Rule("vcpu-xsave-size-short", ERROR, RESTORE,
         "xen/arch/x86/domctl.c: arch_do_domctl() XEN_DOMCTL_setvcpuextstate",
         False, "X86_PV_VCPU_XSAVE with xcr0_accum set is not shorter than 16 + uncompressed XSAVE size of xcr0_accum",
         **refused_from("xsave-size-exact")),
    Rule("vcpu-xsave-state", ERROR, RESTORE,
         "xen/arch/x86/domctl.c: arch_do_domctl() XEN_DOMCTL_setvcpuextstate; xen/arch/x86/xstate.c: validate_xstate()",
         False, "X86_PV_VCPU_XSAVE xcr0/xcr0_accum are valid, xcr0 within xcr0_accum (0 if accum 0), xstate_bv within xcr0_accum"),
    Rule("vcpu-xsave-compacted", ERROR, RESTORE,
         "xen/arch/x86/xstate.c: validate_xstate()",
         False, "X86_PV_VCPU_XSAVE area is uncompacted (xcomp_bv 0)",
         **refused_from("xsave-header")),
    Rule("vcpu-msrs-size", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         False, "X86_PV_VCPU_MSRS context is a multiple of 16 bytes",
         **refused_from("pv-vcpu-blob-audit")),
    Rule("vcpu-msrs-reserved", ERROR, RESTORE,
         "xen/arch/x86/domctl.c: arch_do_domctl() XEN_DOMCTL_set_vcpu_msrs",
         False, "X86_PV_VCPU_MSRS entries have their reserved field zero"),
    Rule("shared-info-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_shared_info()",
         False, "SHARED_INFO body is exactly 4096 bytes"),
    Rule("tsc-info-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common_x86.c: handle_x86_tsc_info()",
         False, "X86_TSC_INFO body is exactly 24 bytes"),
    Rule("tsc-mode-pvrdtscp", ERROR, RESTORE,
         "xen/arch/x86/time.c: tsc_set_info()",
         False, "X86_TSC_INFO mode is not 3 (PVRDTSCP, removed from Xen)",
         **refused_from("tsc-pvrdtscp-removed")),
    Rule("tsc-mode", ERROR, RESTORE,
         "xen/arch/x86/time.c: tsc_set_info()",
         False, "X86_TSC_INFO mode is 0-2 (values above 3 are rejected)",
         **refused_from("tsc-pvrdtscp-removed")),
    Rule("tsc-info-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §X86_TSC_INFO",
         True, "X86_TSC_INFO reserved field is zero"),
    Rule("hvm-context-empty", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_hvm.c: handle_hvm_context() (update_blob())",
         False, "HVM_CONTEXT body is not empty",
         **refused_from("hvm-context-blob")),
    Rule("hvm-context-missing", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: hvm_load() (via xg_sr_restore_x86_hvm.c: x86_hvm_stream_complete())",
         False, "an HVM stream contains an HVM_CONTEXT record"),
    Rule("hvm-params-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_hvm.c: handle_hvm_params()",
         False, "HVM_PARAMS body holds its 8-byte header and count 16-byte entries"),
    Rule("hvm-params-length-extra", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_hvm.c: handle_hvm_params()",
         False, "HVM_PARAMS body is no longer than 8 + 16*count",
         **refused_from("hvm-params-exact")),
    Rule("hvm-params-reserved", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §HVM_PARAMS",
         True, "HVM_PARAMS header reserved field is zero"),
    Rule("hvm-params-index", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvmop_set_param()",
         False, "HVM_PARAMS indices are below HVM_NR_PARAMS (39)"),
    Rule("policy-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common_x86.c: handle_x86_cpuid_policy(), handle_x86_msr_policy()",
         False, "X86_CPUID_POLICY / X86_MSR_POLICY length is a non-zero multiple of 24 / 16"),
    Rule("policy-after-static-data-end", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §STATIC_DATA_END, §Layout",
         True, "CPUID/MSR policy records precede STATIC_DATA_END (after it they are never applied)"),
    Rule("msr-policy-flags", ERROR, RESTORE,
         "xen/arch/x86/lib/cpu-policy/copy-from-buffer.c: x86_msr_copy_from_buffer()",
         False, "X86_MSR_POLICY entries applied at STATIC_DATA_END have flags zero"),
    Rule("pv-info-missing", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_p2m_frames()",
         False, "a PV stream contains X86_PV_INFO"),
    Rule("p2m-frames-missing", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: process_start_info(), update_guest_p2m()",
         False, "a PV stream contains X86_PV_P2M_FRAMES"),
    Rule("vcpu0-missing", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: update_vcpu_context()",
         False, "a PV stream contains X86_PV_VCPU_BASIC for vcpu 0"),
    Rule("p2m-frame-range", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: update_guest_p2m()",
         False, "p2m frame pfns are <= max_pfn"),
    Rule("p2m-frame-type", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: update_guest_p2m()",
         False, "p2m frame pages were last sent with type NOTAB"),
    Rule("libxl-version", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_header_done()",
         False, "libxl header version is 2"),
    Rule("libxl-big-endian", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_header_done()",
         False, "libxl header options bit 0 (big-endian) is clear"),
    Rule("libxl-options-reserved", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §Header",
         True, "libxl header option bits 2-31 are zero"),
    Rule("libxl-unknown-record", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record()",
         False, "libxl record types are 0-5 (libxl has no optional records)"),
    Rule("libxl-record-length-zero", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §END, §LIBXC_CONTEXT, §CHECKPOINT_END",
         True, "libxl END, LIBXC_CONTEXT and CHECKPOINT_END have body length 0"),
    Rule("libxl-no-libxc-context", WARNING, CONVENTION,
         "tools/libs/light/libxl_stream_read.c: process_record() (END completes the stream unchecked)",
         True, "a libxl stream has a LIBXC_CONTEXT before END (else the image holds no domain state)"),
    Rule("libxl-libxc-context-once", WARNING, CONVENTION,
         "tools/libs/light/libxl_stream_read.c: process_record() (each LIBXC_CONTEXT restarts xc_domain_restore())",
         True, "a libxl stream has one LIBXC_CONTEXT"),
    Rule("libxl-end-in-checkpoint", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_continue(), checkpoint_done(); tools/libs/guest/xg_sr_restore.c: handle_checkpoint()",
         False, "END does not appear inside the first checkpoint (before its CHECKPOINT_END)"),
    Rule("libxl-end-in-checkpoint-failover", WARNING, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_continue(), checkpoint_done(); tools/libs/guest/xg_sr_restore.c: handle_checkpoint()",
         True, "END inside a later checkpoint: the restore fails over to the last complete checkpoint"),
    Rule("libxl-emulator-not-hvm", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record()",
         False, "EMULATOR_XENSTORE_DATA / EMULATOR_CONTEXT appear only for an HVM domain (config type hvm)",
         **refused_from("emulator-hvm-only")),
    Rule("libxl-emulator-order", WARNING, CONVENTION,
         "tools/libs/light/libxl_stream_write.c writes them after the libxc stream; libxl_stream_read.c: process_record() accepts any order",
         True, "emulator records follow the libxc stream"),
    Rule("libxl-emulator-length", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record(), write_emulator_blob()",
         False, "emulator records hold the 8-byte emulator header"),
    Rule("libxl-emulator-id", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §Emulator Records",
         True, "emulator_id is 0-2"),
    Rule("libxl-emulator-context-empty", WARNING, CONVENTION,
         "tools/libs/light/libxl_stream_read.c: write_emulator_blob() writes it unchecked; the device model then loads it",
         False, "EMULATOR_CONTEXT carries emulator state"),
    Rule("libxl-emulator-context-magic", WARNING, CONVENTION,
         "tools/libs/light/libxl_stream_read.c: write_emulator_blob() writes it unchecked; qemu-upstream loads it as a QEMU migration stream",
         False, "qemu-upstream EMULATOR_CONTEXT starts with 'QEVM'"),
    Rule("libxl-checkpoint-end-unexpected", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record()",
         False, "CHECKPOINT_END appears only inside a checkpoint (after a libxc CHECKPOINT)"),
    Rule("libxl-checkpoint-state-unexpected", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record()",
         False, "CHECKPOINT_STATE appears only where COLO reads one (after CHECKPOINT_END)"),
    Rule("libxl-checkpoint-state-empty", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record() (reads control_id through a NULL body)",
         False, "CHECKPOINT_STATE has a body"),
    Rule("libxl-checkpoint-state-length", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §CHECKPOINT_STATE",
         True, "CHECKPOINT_STATE body is exactly 4 bytes (control_id)"),
    Rule("libxl-checkpoint-state-id", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_colo_restore.c: colo_stream_read_done()",
         False, "CHECKPOINT_STATE control_id on the primary-to-secondary stream is 0 (NEW)"),
    Rule("libxl-xenstore-nul", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_dom_save.c: libxl__restore_emulator_xenstore_data()",
         False, "EMULATOR_XENSTORE_DATA keys and values are NUL-terminated"),
    Rule("libxl-xenstore-item-size", WARNING, CONVENTION,
         "xenstream's own bound (XENSTORE_ITEM_MAX); libxl has none",
         True, "EMULATOR_XENSTORE_DATA keys/values are at most 1 MiB each (else not checked further)"),
    Rule("libxl-xenstore-key-empty", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_dom_save.c: libxl__restore_emulator_xenstore_data()",
         False, "EMULATOR_XENSTORE_DATA keys are not empty"),
    Rule("libxl-xenstore-key-absolute", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_dom_save.c: libxl__restore_emulator_xenstore_data()",
         False, "EMULATOR_XENSTORE_DATA keys are relative (no leading '/')"),
    Rule("libxl-xenstore-key-chars", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §EMULATOR_XENSTORE_DATA",
         True, "EMULATOR_XENSTORE_DATA keys use only alphanumerics and -/_@"),
    Rule("xl-byteorder", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "xl header byteorder is 0x01020304 in one of the two byte orders"),
    Rule("xl-big-endian", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "xl header is little-endian (byteorder bytes 04 03 02 01)"),
    Rule("xl-mandatory-flags", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "xl mandatory flags are within JSON|STREAMv2 (0x3)"),
    Rule("xl-optional-flags", WARNING, CONVENTION,
         "tools/xl/xl.h: struct save_file_header (comment says reject; xl_vmcontrol.c: create_domain() ignores them)",
         True, "xl optional flags are zero"),
    Rule("xl-config-missing", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "the xl save file carries a domain configuration (optional data present)"),
    Rule("xl-config-length", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "xl optional data holds config_len and config_len bytes of configuration"),
    Rule("xl-config-size", INFO, CONVENTION,
         "xenstream's own bound on the configuration it reads; xl has none",
         True, "the configuration fits what xenstream checks (else it is not checked)"),
    Rule("xl-config-nul", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain() (passes the config to libxl_domain_config_from_json() as a C string)",
         False, "a JSON configuration ends with a NUL byte"),
    Rule("xl-config-json", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain(); tools/libs/light/libxl_create.c: libxl__domain_create_info_setdefault()",
         False, "a JSON configuration parses as a JSON object"),
    Rule("libxc-marker", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: read_headers()",
         False, "the libxc image header starts with marker 0xFFFFFFFFFFFFFFFF"),
    Rule("ihdr-id", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: read_headers()",
         False, "the libxc image header id is 0x58454E46 ('XENF')"),
    Rule("length-limit", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common.c: read_record()",
         False, "a libxc record body length is at most REC_LENGTH_MAX (128 MiB; 8 MiB before 4.10)"),
    Rule("padding-zero", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Records, §Fields",
         True, "libxc record padding bytes are zero"),
    Rule("libxl-padding-zero", ERROR, SPEC,
         "docs/specs/libxl-migration-stream.pandoc §Record Overview",
         True, "libxl record padding bytes are zero"),
    # -- the HVM context blob (HVM_CONTEXT, the legacy HVM tail) -------------------------------
    Rule("hvm-header-first", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: hvm_load()",
         False, "the blob starts with a HEADER descriptor (typecode 1, length 24) whose body fits in the blob"),
    Rule("hvm-header-magic", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: arch_hvm_check()",
         False, "HEADER magic is HVM_FILE_MAGIC 0x54381286"),
    Rule("hvm-header-version", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: arch_hvm_check()",
         False, "HEADER version is HVM_FILE_VERSION 1"),
    Rule("hvm-header-repeated", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: hvm_load()",
         False, "HEADER (typecode 1) appears only as the first entry (no load handler for it: EINVAL)"),
    Rule("hvm-typecode-unknown", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: hvm_load()",
         False, "every typecode before END is a registered save type 2..20 (EINVAL otherwise)"),
    Rule("hvm-end-missing", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: hvm_load()",
         False, "an END descriptor (typecode 0) follows the last entry; the blob may not end, or end in 1..7 bytes, without one (ENODATA)"),
    Rule("hvm-entry-overrun", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         False, "an entry's length does not exceed the bytes left in the blob"),
    Rule("hvm-end-nonzero", WARNING, CONVENTION,
         "xen/include/public/hvm/save.h: struct hvm_save_end (comment only; hvm_load() checks the typecode alone)",
         True, "END has instance 0 and length 0, as hvm_save() writes it"),
    Rule("hvm-end-not-last", WARNING, CONVENTION,
         "xen/arch/x86/hvm/save.c: hvm_save() (writer only; hvm_load() ignores bytes after END)",
         True, "nothing follows the END descriptor"),
    Rule("hvm-duplicate", WARNING, CONVENTION,
         "xen/arch/x86/hvm/save.c: hvm_save() (writer only; hvm_load() loads each copy, the last wins)",
         True, "at most one entry per (typecode, instance)"),
    Rule("hvm-order", WARNING, CONVENTION,
         "xen/arch/x86/hvm/save.c: hvm_save() (writer only; hvm_load() accepts any order)",
         True, "entries in hvm_save() order (typecode, then instance); out of order loads, but PCI_IRQ after ISA_IRQ/PCI_LINK or CPU after CPU_XSAVE silently changes the loaded state"),
    Rule("hvm-instance", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "a per-vcpu entry's instance names an existing vcpu (< max_vcpus) (EINVAL in every per-vcpu loader)"),
    Rule("hvm-pic-instance", ERROR, RESTORE,
         "xen/arch/x86/hvm/vpic.c: vpic_check()",
         False, "PIC instance is 0 (master) or 1 (slave)"),
    Rule("hvm-instance-nonzero", WARNING, CONVENTION,
         "xen/arch/x86/hvm/save.c: hvm_save() (writer only; per-domain loaders ignore the instance)",
         True, "HEADER and per-domain entries other than PIC have instance 0"),
    Rule("hvm-entry-length", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         False, "a strict entry's length equals sizeof its HEAD struct; a zero-extended one (CPU, LAPIC, RTC, VIRIDIAN_*, VMCE_VCPU) is no longer than it"),
    Rule("hvm-entry-length-unusual", WARNING, CONVENTION,
         "xen/arch/x86/hvm/save.c: _hvm_read_entry() (zero-extends any shorter length)",
         True, "a zero-extended entry has a length some Xen release wrote (CPU 1016/1024/1032, LAPIC 24/32, RTC 16/24, VIRIDIAN_DOMAIN 16/24/32, VIRIDIAN_VCPU 8/16/216, VMCE_VCPU 8/24/32)"),
    Rule("hvm-cpu-state", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "CPU: no reserved CR0 bits, CR0.ET set, no PG without PE; CR4 within the bits Xen can allow; EFER.LMA only with EFER.LME and CR0.PG"),
    Rule("hvm-cpu-flags", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "CPU (1032-byte layout): pad0 is 0 and flags has no bit but XEN_X86_FPU_INITIALISED"),
    Rule("hvm-cpu-efer", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_efer_valid()",
         False, "CPU: msr_efer has no bit outside EFER_KNOWN_MASK (SCE LME LMA NXE SVME FFXSE AIBRSE)",
         **refused_from("efer-known-mask")),
    Rule("hvm-cpu-tsc-aux", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "CPU: msr_tsc_aux fits in 32 bits",
         **refused_from("tsc-aux-32")),
    Rule("hvm-cpu-cr3", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "CPU: cr3 has no bit at or above the guest's maxphysaddr (52 at most)",
         **refused_from("cr3-maxphysaddr")),
    Rule("hvm-cpu-dr67", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_ctxt()",
         False, "CPU: dr6 and dr7 fit in 32 bits",
         **refused_from("dr67-32")),
    Rule("hvm-cpu-xsave", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_xsave_states()",
         False, "CPU_XSAVE: length >= 600; xstate_bv and xcr0 within xcr0_accum, xcr0_accum within the XCR0 states Xen knows, xcr0 and xcr0_accum valid; any bytes beyond 24 + size(xcr0_accum) are zero"),
    Rule("hvm-cpu-xsave-header", ERROR, RESTORE,
         "xen/arch/x86/xstate.c: validate_xstate()",
         False, "CPU_XSAVE: the XSAVE header has xcomp_bv 0 (standard format) and reserved[0..5] 0",
         **refused_from("xsave-header")),
    Rule("hvm-cpu-xsave-short", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_xsave_states()",
         False, "CPU_XSAVE: length is at least 24 + the standard XSAVE size of xcr0_accum",
         **refused_from("xsave-size-exact")),
    Rule("hvm-cpu-xsave-oversize", WARNING, CONVENTION,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_xsave_states() (accepts a zero excess, logs a warning)",
         True, "CPU_XSAVE: length is exactly 24 + the standard XSAVE size of xcr0_accum (Xen <= 4.3 wrote longer, zero-padded records)"),
    Rule("hvm-cpu-msr", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         False, "CPU_MSR: length >= 24 and == 8 + 16 * count, every _rsvd 0, every index one HEAD loads"),
    Rule("hvm-pic-state", ERROR, RESTORE,
         "xen/arch/x86/hvm/vpic.c: vpic_check()",
         False, "PIC: int_output 0/1, is_master == (instance == 0), no init in progress with int_output set, elcr within 0xfc (master) / 0xde (slave)",
         **refused_from("vpic-vpit-pci-link")),
    Rule("hvm-pci-link", ERROR, RESTORE,
         "xen/arch/x86/hvm/irq.c: irq_check_link()",
         False, "PCI_LINK: every route[] is an ISA IRQ < 16"),
    Rule("hvm-pci-link-pad", ERROR, RESTORE,
         "xen/arch/x86/hvm/irq.c: irq_check_link()",
         False, "PCI_LINK: pad0[4] is zero",
         **refused_from("vpic-vpit-pci-link")),
    Rule("hvm-pit-state", ERROR, RESTORE,
         "xen/arch/x86/emul-i8254.c: pit_check()",
         False, "PIT: speaker_data_on <= 1, pad0 0, channel fields in range, channels 0 and 1 gated on",
         **refused_from("vpic-vpit-pci-link")),
    Rule("hvm-lapic-state", ERROR, RESTORE,
         "xen/arch/x86/hvm/vlapic.c: lapic_check_hidden()",
         False, "LAPIC: apic_base_msr has EXTD (x2APIC) only with ENABLE"),
    Rule("hvm-mtrr-state", ERROR, RESTORE,
         "xen/arch/x86/hvm/mtrr.c: hvm_load_mtrr_msr()",
         False, "MTRR: msr_mtrr_cap.VCNT is at most 8",
         **refused_from("mtrr-vcnt")),
    Rule("hvm-viridian-state", ERROR, RESTORE,
         "xen/arch/x86/hvm/viridian/viridian.c: viridian_load_vcpu_ctxt()",
         False, "VIRIDIAN_VCPU: _pad[7] is zero"),
    # -- legacy streams, envelopes (libvirt, xenopsd, xend) and the reader's framing -----------
    Rule("legacy-ext-info", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: load_p2m_frame_list()",
         False, "every extended-info block (8-byte header + data) fits within tot_bytes"),
    Rule("legacy-vcpu-size", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: load_p2m_frame_list()",
         False, "the \"vcpu\" extended-info block is 5168 (64-bit) or 2800 (32-bit) bytes"),
    Rule("legacy-ext-block", WARNING, TOOLSTACK,
         "tools/python/scripts/convert-legacy-stream: read_pv_extended_info()",
         False, "extended-info blocks are vcpu, extv or xcnt (the 4.5 restorer skipped others; Xen HEAD's converter refuses them)"),
    Rule("legacy-batch-size", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: pagebuf_get_one()",
         False, "a page batch holds at most 1024 pages (MAX_BATCH_SIZE)"),
    Rule("legacy-chunk-id", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: pagebuf_get_one()",
         False, "a negative chunk id is one of -1..-20"),
    Rule("legacy-vcpu-info", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: pagebuf_get_one()",
         False, "VCPU_INFO max_vcpu_id is below 4096 (XC_SR_MAX_VCPUS)"),
    Rule("legacy-page-type", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data()",
         False, "pfn_type entries have page type 0-4 or 9-15 (the converter passes the type through; v2 refuses 5-8)"),
    Rule("legacy-pfn-range", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: handle_page_data()",
         False, "PV: every batch pfn is below p2m_size (the converter's P2M_FRAMES end)"),
    Rule("legacy-hvm-pfn-range", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: apply_batch()",
         True, "HVM: every batch pfn is below p2m_size (the 4.5 restorer refused it; HEAD's x86_hvm_pfn_is_valid() accepts any pfn)"),
    Rule("legacy-tmem", ERROR, TOOLSTACK,
         "tools/python/scripts/convert-legacy-stream: read_chunks()",
         False, "no TMEM or TMEM_EXTRA chunk (HEAD's converter raises \"todo\"; tmem left Xen in 4.13)"),
    Rule("legacy-tmem-page-size", ERROR, TOOLSTACK,
         "tools/python/scripts/convert-legacy-stream: read_chunks()",
         False, "a TMEM pool's page size is at most 64 KiB (xenstream reads no further; HEAD refuses any TMEM chunk)"),
    Rule("legacy-tsc-pvrdtscp", ERROR, RESTORE,
         "xen/arch/x86/time.c: tsc_set_info()",
         False, "TSC_INFO mode is not 3 (PVRDTSCP, refused with -EINVAL since 4.12)",
         **refused_from("tsc-pvrdtscp-removed")),
    Rule("legacy-tsc-mode", ERROR, RESTORE,
         "xen/arch/x86/time.c: tsc_set_info()",
         False, "TSC_INFO mode is 0-3 (4.6-4.11 set any mode silently; 4.12 returns -EINVAL)",
         **refused_from("tsc-pvrdtscp-removed")),
    Rule("legacy-toolstack", ERROR, TOOLSTACK,
         "tools/python/scripts/convert-legacy-stream: read_libxl_toolstack()",
         False, "the TOOLSTACK chunk is libxl's physmap record: version 1, count entries, NUL-terminated names"),
    Rule("legacy-toolstack-size", WARNING, CONVENTION,
         "none: the legacy restorer (tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: "
         "pagebuf_get_one()) takes any u32 length; xenstream holds at most 64 MiB",
         True, "a TOOLSTACK chunk over 64 MiB is skipped, not checked (convert refuses it)"),
    Rule("legacy-unmapped-count", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: buffer_tail_pv()",
         True, "the PV tail's unmapped-pfn count is at most 2^28 (HEAD's converter reads and discards any count)"),
    Rule("legacy-xsave-size", ERROR, TOOLSTACK,
         "tools/python/scripts/convert-legacy-stream: read_pv_tail()",
         False, "every vcpu's xsave record (mask, size, data) is xcnt bytes"),
    Rule("legacy-hvm-context-size", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common.c: read_record()",
         False, "the HVM context is at most 128 MiB (it becomes one HVM_CONTEXT record; REC_LENGTH_MAX)"),
    Rule("legacy-qemu-missing", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: buffer_tail_hvm()",
         False, "a 21-byte device-model signature follows the HVM context (\"Error reading QEMU signature\" at end of input)"),
    Rule("legacy-qemu-signature", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: buffer_tail_hvm()",
         False, "the signature is DeviceModelRecord0002, RemusDeviceModelState or QemuDeviceModelRecord (\"Invalid QEMU signature\")"),
    Rule("legacy-qemu-qevm", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: compat_buffer_qemu()",
         False, "xend's QemuDeviceModelRecord data (to end of input) begins with \"QEVM\""),
    Rule("legacy-qemu-length", ERROR, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: buffer_qemu()",
         False, "DeviceModelRecord0002/RemusDeviceModelState: the u32 LE length's bytes are all present (\"Error reading QEMU state\")"),
    Rule("legacy-checkpoint-eof", WARNING, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: xc_domain_restore()",
         True, "a Remus stream that ends inside checkpoint n>1 fails over to checkpoint n-1 (HEAD's converter reads checkpoint 1 only)"),
    Rule("legacy-stream", WARNING, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: libxl__stream_read_start()",
         True, "a legacy stream in an xl (STREAMv2 clear), libvirt (version 1) or XenSavedDomain image: the toolstack runs convert-legacy-stream",
         before=HOST, changes=(("legacy-converter", HOST),),
         condition="convert-legacy-stream runs on the host (libxl: $LIBXL_CONVERT_HELPER or "
         "its libexec copy; xenopsd: its own)",
         advice="or convert it first (xenstream convert IN OUT)"),
    Rule("legacy-stream-unconverted", WARNING, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Legacy Images (x86 only)",
         False, "a bare or xend legacy stream: nothing at HEAD converts it (\"shall be handled by translating\"); xenstream convert does",
         before=REFUSED, changes=(("legacy-restore-removed", REFUSED),),
         advice="convert it first (xenstream convert IN OUT)"),
    Rule("legacy-stream-rejected", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Legacy Images (x86 only)",
         False, "the v2-only checker (verify-stream-v2 drop-in) refuses a legacy stream"),
    Rule("legacy-unrecognised", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Legacy Images (x86 only)",
         False, "where a container promises a legacy stream, its first 16 bytes have a legacy shape (octets 4-7 per the spec's table)"),
    Rule("legacy-guest-type", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: libxl__stream_read_start()",
         False, "the legacy stream's guest type matches the configuration's (libxl runs the converter with --guest from the config)"),
    Rule("libvirt-magic", ERROR, TOOLSTACK,
         "libvirt src/libxl/libxl_domain.c: libxlDomainSaveImageOpen()",
         False, "the header starts with \"libvirt-xml\\n \\0 \\r\" (\"image magic is incorrect\")"),
    Rule("libvirt-version", ERROR, TOOLSTACK,
         "libvirt src/libxl/libxl_domain.c: libxlDomainSaveImageOpen()",
         False, "version is at most 2 (\"image version is not supported\")"),
    Rule("libvirt-version-zero", WARNING, CONVENTION,
         "libvirt src/libxl/libxl_driver.c: libxlDoDomainSave() (writes 1 or 2; libxl reads stream_version 0 as v2)",
         True, "version is 1 or 2, not 0"),
    Rule("libvirt-version-lie", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_create.c: domcreate_bootloader_done()",
         False, "version 1 iff a legacy stream follows (libxl converts iff stream_version == 1)"),
    Rule("libvirt-xml-length", ERROR, TOOLSTACK,
         "libvirt src/libxl/libxl_domain.c: libxlDomainSaveImageOpen()",
         False, "xmlLen is not 0 (\"invalid XML length\")"),
    Rule("libvirt-reserved", WARNING, CONVENTION,
         "libvirt src/libxl/libxl_driver.c: libxlDoDomainSave() (zeroes the header; never read)",
         True, "the ten unused header words are zero"),
    Rule("libvirt-xml-size", WARNING, CONVENTION,
         "none (xenstream's 64 MiB hold limit)",
         True, "domain XML larger than 64 MiB is skipped, not checked"),
    Rule("libvirt-xml-nul", ERROR, TOOLSTACK,
         "libvirt src/libxl/libxl_domain.c: libxlDomainSaveImageOpen()",
         False, "the XML ends with its NUL (libvirt parses the xmlLen-byte buffer as a C string)"),
    Rule("libvirt-xml-nul-inner", WARNING, CONVENTION,
         "libvirt src/libxl/libxl_driver.c: libxlDoDomainSave() (xmlLen = strlen + 1)",
         True, "no NUL before the last byte of the XML (libvirt ignores what follows one)"),
    Rule("libvirt-xml", ERROR, TOOLSTACK,
         "libvirt src/libxl/libxl_domain.c: libxlDomainSaveImageOpen()",
         False, "the XML is a well-formed <domain> definition (virDomainDefParseString)"),
    Rule("libvirt-payload", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_header_done()",
         False, "a libxl v2 stream or a legacy stream follows the XML"),
    Rule("xend-magic", ERROR, TOOLSTACK,
         "tools/python/xen/xend/XendCheckpoint.py@RELEASE-4.4.0: restore()",
         False, "the image starts with \"LinuxGuestRecord\""),
    Rule("xend-config-length", ERROR, TOOLSTACK,
         "tools/python/xen/xend/XendCheckpoint.py@RELEASE-4.4.0: restore()",
         False, "the big-endian signed config length is positive"),
    Rule("xend-config-size", WARNING, CONVENTION,
         "none (xenstream's 64 MiB hold limit)",
         True, "a configuration larger than 64 MiB is skipped, not checked"),
    Rule("xend-config-nul", WARNING, CONVENTION,
         "tools/python/xen/xend/XendCheckpoint.py@RELEASE-4.4.0: save() (writes no NUL)",
         True, "the configuration has no trailing NUL"),
    Rule("xend-config-sxp", ERROR, TOOLSTACK,
         "tools/python/xen/xend/XendCheckpoint.py@RELEASE-4.4.0: restore()",
         False, "the configuration parses as a (domain ...) S-expression (\"config parse\")"),
    Rule("xenopsd-signature", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: read_save_signature()",
         False, "the image starts with XenSavedDomv2-\\n or XenSavedDomain\\n"),
    Rule("xenopsd-signature-lie", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/xc/domain.ml: restore_common()",
         False, "a XenSavedDomain image carries a legacy stream, not a v2 one (xenopsd runs convert-legacy-stream on it)"),
    Rule("xenopsd-frame-type", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: header_type_of_int64()",
         False, "every frame type is a known one (Invalid_header_type)"),
    Rule("xenopsd-frame-unsupported", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/xc/domain.ml: restore_common()",
         False, "no Libxl or Qemu_xen frame (restore fails with Suspend_image_failure)"),
    Rule("xenopsd-frame-repeated", WARNING, CONVENTION,
         "xen-api ocaml/xenopsd/xc/domain.ml: suspend()",
         True, "each frame type other than End_of_image appears once"),
    Rule("xenopsd-frame-order", WARNING, CONVENTION,
         "xen-api ocaml/xenopsd/xc/domain.ml: suspend()",
         True, "the Xenops frame comes first, as xenopsd writes it"),
    Rule("xenopsd-frame-length", WARNING, CONVENTION,
         "xen-api ocaml/xenopsd/xc/domain.ml: suspend()",
         True, "Libxc, Libxc_legacy and End_of_image frames have length 0 (ignored on restore)"),
    Rule("xenopsd-qemu-size", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/xc/domain.ml: consume_qemu_record()",
         False, "a qemu record is at most 1 MiB (\"QEMU record length in header too large\")"),
    Rule("xenopsd-qemu-magic", WARNING, CONVENTION,
         "none (xenopsd does not look inside)",
         True, "Qemu_trad data begins with \"QEVM\""),
    Rule("xenopsd-demu", WARNING, CONVENTION,
         "xen-api ocaml/xenopsd/xc/domain.ml: restore_common()",
         True, "a Demu (vGPU) frame in the main image: its private format ends the check"),
    Rule("xenopsd-metadata-size", WARNING, CONVENTION,
         "none (xenstream's 64 MiB hold limit)",
         True, "Xenops metadata larger than 64 MiB is skipped, not checked"),
    Rule("xenopsd-metadata", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: Xenops_record.of_string()",
         False, "the Xenops frame is an S-expression record with time (string) and word_size (int)"),
    Rule("xenopsd-metadata-fields", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: Xenops_record.of_string()",
         False, "the Xenops record has no fields beyond time, word_size, vm_str, xs_subtree (t_of_sexp refuses extra fields)"),
    Rule("xenopsd-word-size", WARNING, CONVENTION,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: Xenops_record.make()",
         True, "word_size is 32 or 64 (xenopsd reads any integer and never uses it)"),
    Rule("xenopsd-no-memory", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/xc/domain.ml: restore_common()",
         False, "a complete image has a Libxc or Libxc_legacy frame (\"Well formed, but useless stream\")"),
    Rule("xenopsd-qemu-signature", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/lib/suspend_image.ml: read_legacy_qemu_header()",
         False, "after a XenSavedDomain image's HVM stream: the 22 bytes \"QemuDeviceModelRecord\\n\""),
    Rule("xenopsd-qemu-length", ERROR, TOOLSTACK,
         "xen-api ocaml/xenopsd/xc/domain.ml: consume_qemu_record()",
         False, "the XenSavedDomain qemu record's u32 BE length's bytes are all present (\"qemu save file was truncated\")"),
    Rule("xl-magic", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "the xl header starts with the 32-byte xl magic (\"File has wrong magic number\")"),
    Rule("xl-payload", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_header_done()",
         False, "with STREAMv2 set, a libxl stream follows the optional data (\"Invalid ident\")"),
    Rule("xl-streamv2-lie", ERROR, TOOLSTACK,
         "tools/xl/xl_vmcontrol.c: create_domain()",
         False, "STREAMv2 clear means a legacy stream (xl passes stream_version 1, libxl converts the v2 stream and fails)"),
    Rule("xl-streamv2-legacy", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: stream_header_done()",
         False, "STREAMv2 set means a libxl v2 stream, not a legacy one (\"Invalid ident\")"),
    Rule("unrecognised", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Image Header",
         False, "the input starts with a known envelope, a v2 header or a legacy shape"),
    Rule("format-mismatch", ERROR, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §Image Header",
         False, "the input is of the format forced with --format"),
    Rule("truncated", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common.c: read_record()",
         False, "the input does not end inside a header, record or legacy structure"),
    Rule("guest-type-mismatch", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_hvm.c: x86_hvm_setup() (x86_pv_setup() for PV)",
         False, "the libxc domain header's type matches the configuration's guest type"),
    Rule("trailing-data", WARNING, SPEC,
         "docs/specs/libxc-migration-stream.pandoc §END",
         True, "nothing follows the final END (\"shall be the final record\")"),
    Rule("end-discards-checkpoint", WARNING, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore()",
         True, "END after records of an unfinished checkpoint: they are discarded"),
    Rule("checkpoint-eof", WARNING, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore()",
         True, "a checkpointed stream that ends after >= 1 complete checkpoint fails over to the last one"),
    Rule("colo-checkpoint-state-missing", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: libxl__stream_read_checkpoint_state()",
         False, "COLO: CHECKPOINT_STATE follows CHECKPOINT_END"),
    Rule("colo-pv", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_create.c: domcreate_bootloader_done()",
         False, "COLO streams are HVM (\"COLO only supports HVM\")"),
    # -- added with the judging of issue 8 ---------------------------------------------------------
    Rule("qemu-traditional-state", WARNING, TOOLSTACK,
         "tools/libs/light/libxl_create.c: libxl__domain_build_info_setdefault() (from "
         "19ab8356ab, Xen 4.21, the device model is always qemu-xen)",
         True, "qemu-traditional device state restores only where that device model is built "
         "(a condition of the restoring host, not of the stream)",
         before=RESTORES, changes=(("qemu-trad-not-default", HOST), ("qemu-trad-removed", REFUSED)),
         condition="the host builds qemu-traditional (--enable-qemu-traditional; the default "
         "up to 4.15)",
         advice="restore on a host that still builds qemu-traditional"),
    Rule("legacy-checkpoint-bad", WARNING, RESTORE,
         "tools/libxc/xc_domain_restore.c@RELEASE-4.5.0: xc_domain_restore()",
         True, "a malformed structure in a later Remus checkpoint: the restorer discards that "
         "checkpoint and restores the last complete one (\"error buffering image tail, finishing\")"),
    Rule("libxl-emulator-missing", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_create.c: domcreate_stream_done(); libxl_dm.c: "
         "libxl__build_device_model_args_new()",
         False, "an HVM guest whose configuration runs a device model has an EMULATOR_CONTEXT "
         "record: libxl starts the device model with -incoming from its data"),
    Rule("libxl-emulator-unknown", WARNING, TOOLSTACK,
         "tools/libs/light/libxl_create.c: domcreate_stream_done(); libxl_dm.c: "
         "libxl__build_device_model_args_new()",
         True, "an HVM-type libxl stream without EMULATOR_CONTEXT and no configuration to say "
         "whether it is PVH (none needed) or HVM (its device state is missing)"),
    # -- judged per release (verify --target-xen): what only some releases restore ---------------
    Rule("release-stream-v3", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: read_headers()",
         True, "restores from 4.14 (4.6-4.13's read_headers() accepts version 2 only)",
         uses=(("stream-version", 3),), **restored_from("stream-v3")),
    Rule("release-static-data-end", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore() (\"Mandatory record ... not handled\")",
         True, "restores from 4.14 (before, record 0x10 is an unknown mandatory record)",
         uses=(("record-type", 0x10),), **restored_from("stream-v3")),
    Rule("release-policy-records", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore.c: restore(); xg_sr_common_x86.c: handle_x86_cpuid_policy()",
         True, "restores from 4.14, where the CPUID/MSR policy (records 0x11, 0x12) is applied "
         "as the domain's (before, unknown mandatory records)",
         uses=(("record-type", 0x11), ("record-type", 0x12)),
         condition="the host's CPU offers every feature of the stream's CPUID/MSR policy",
         **restored_from("policy-records", HOST)),
    Rule("release-record-length", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common.c: read_record()",
         True, "restores from 4.10 (REC_LENGTH_MAX is 8 MiB before, 128 MiB from e48e33e219)",
         uses=(("record-length", None, 8 << 20),), **restored_from("record-length-128m")),
    Rule("release-empty-pv-vcpu", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         True, "restores from 4.11 (4.6-4.10 fail on an X86_PV_VCPU_* record with no content, "
         "the errata's)",
         uses=(("pv-vcpu-empty", None),), **restored_from("empty-pv-vcpu")),
    Rule("release-pv-xsave-size16", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_restore_x86_pv.c: handle_x86_pv_vcpu_blob()",
         True, "restores where the release has 2a62c22715 (before, an X86_PV_VCPU_XSAVE "
         "payload had to be a multiple of 16 bytes)",
         uses=(("pv-xsave-odd", None),), **restored_from("pv-vcpu-blob-audit")),
    Rule("release-hvm-cpu-1032", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores from 4.7 (4.6 loads a CPU record of at most 1024 bytes)",
         uses=(("hvm-length", 2, 1024),), **restored_from("hvm-cpu-1032")),
    Rule("release-hvm-viridian-vcpu-16", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores from 4.7 (4.6 loads VIRIDIAN_VCPU as exactly 8 bytes)",
         uses=(("hvm-length", 17, 8),), **restored_from("hvm-viridian-vcpu-16")),
    Rule("release-hvm-viridian-vcpu-216", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores from 4.13 (VIRIDIAN_VCPU at most 16 bytes before: no SynIC or synthetic timers)",
         uses=(("hvm-length", 17, 16),), **restored_from("hvm-viridian-vcpu-216")),
    Rule("release-hvm-vmce-32", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores from 4.10 (VMCE_VCPU at most 24 bytes before: no mcg_ext_ctl)",
         uses=(("hvm-length", 18, 24),), **restored_from("hvm-vmce-32")),
    Rule("release-hvm-rtc-24", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores from 4.14 (RTC exactly 16 bytes before: no rtc_offset)",
         uses=(("hvm-length", 11, 16),), **restored_from("hvm-rtc-24")),
    Rule("release-hvm-lapic-32", ERROR, RESTORE,
         "xen/arch/x86/hvm/save.c: _hvm_check_entry()",
         True, "restores where the release has pending_esr (LAPIC at most 24 bytes without b28b590d4a)",
         uses=(("hvm-length", 5, 24),), **restored_from("hvm-lapic-32")),
    Rule("release-msr-xss", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         True, "restores from 4.7 (MSR_IA32_XSS in CPU_MSR)",
         uses=(("msr", 0xDA0),), **restored_from("msr-xss")),
    Rule("release-msr-misc-features", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         True, "restores where the release loads MSR_INTEL_MISC_FEATURES_ENABLES from CPU_MSR",
         uses=(("msr", 0x140),), **restored_from("msr-misc-features")),
    Rule("release-msr-spec-ctrl", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         True, "restores where the release loads MSR_SPEC_CTRL from CPU_MSR",
         uses=(("msr", 0x48),), **restored_from("msr-spec-ctrl")),
    Rule("release-msr-virt-spec-ctrl", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         True, "restores from 4.17 (MSR_VIRT_SPEC_CTRL in CPU_MSR)",
         uses=(("msr", 0xC001011F),), **restored_from("msr-virt-spec-ctrl")),
    Rule("release-msr-pkrs", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvm_load_cpu_msrs()",
         True, "restores from 4.18 (MSR_PKRS in CPU_MSR)",
         uses=(("msr", 0x6E1),), **restored_from("msr-pkrs")),
    Rule("release-param-x87-fip-width", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvmop_set_param()",
         True, "restores from 4.7 and 4.6.3 (HVM_NR_PARAMS 36 before: no X87_FIP_WIDTH)",
         uses=(("hvm-param", 36),), **restored_from("param-x87-fip-width")),
    Rule("release-param-vm86-tss-sized", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvmop_set_param()",
         True, "restores from 4.9 (HVM_NR_PARAMS 37 before: no VM86_TSS_SIZED)",
         uses=(("hvm-param", 37),), **restored_from("param-vm86-tss-sized")),
    Rule("release-param-mca-cap", ERROR, RESTORE,
         "xen/arch/x86/hvm/hvm.c: hvmop_set_param()",
         True, "restores from 4.10 (HVM_NR_PARAMS 38 before: no MCA_CAP)",
         uses=(("hvm-param", 38),), **restored_from("param-mca-cap")),
    Rule("release-colo", ERROR, TOOLSTACK,
         "tools/libs/light/libxl_stream_read.c: process_record()",
         True, "restores from 4.7 (before, CHECKPOINT_STATE is an unknown libxl record: no COLO)",
         uses=(("libxl-record", 5),), **restored_from("colo")),
    Rule("release-pv32", ERROR, RESTORE,
         "xen/arch/x86/pv/domain.c: switch_compat()",
         True, "a 32-bit PV guest restores only where Xen runs 32-bit PV guests (an option from 4.14)",
         uses=(("guest", "pv32"),), before=RESTORES, changes=(("pv32-option", HOST),),
         condition="the host's Xen runs 32-bit PV guests (CONFIG_PV32 and pv=32; off by "
         "default outside the PV shim from 4.16.0, 4.15.1 and 4.14.3)"),
    Rule("release-pv-compat-m2p", ERROR, RESTORE,
         "tools/libs/guest/xg_sr_common_x86_pv.c: x86_pv_map_m2p()",
         True, "a PV guest restores on 4.15.0 only where 32-bit PV is enabled (libxenguest maps "
         "the compat M2P, which Xen keeps only then)",
         uses=(("guest", "pv"),), before=RESTORES,
         changes=(("pv-needs-pv32", HOST), ("pv-restore-fixed", RESTORES)),
         condition="the host's Xen has 32-bit PV enabled (4.15.0's libxenguest needs its "
         "compat M2P for every PV guest; fixed in 4.15.1)"),
])


__all__ = ["ANY_RELEASE", "AUTHORITIES", "CONVENTION", "ERROR", "FIRST_V2_RELEASE", "HEAD",
           "HOST", "INFO", "REFUSED", "RESTORE", "RESTORES", "RULES", "Rule", "SPEC", "TOOLSTACK",
           "WARNING", "affected", "last_restoring", "markdown", "refusal_note", "refused",
           "refused_from", "releases_text", "restored_from", "rule", "verdict"]

if __name__ == "__main__":
    markdown(sys.stdout)
