"""The Xen releases, and the table of every change in Xen's history (4.6 to
the newest commit checked) that changes whether a save image restores.

Each :class:`Change` row names the release where it takes effect on master,
the stable releases (X.Y.Z) it was backported to, the commit's short hash,
what changes, and how the boundary was established (``how``: the commands and
code read in xen-project/xen).  Rows are data only: what an image must have or
avoid to restore is in the rules table (:mod:`xenstream.rules`), whose rules
name the rows they depend on; the consumers judge an image for a release
through those rules, never through release numbers of their own.

``RELEASES`` lists 4.6.0 ... 4.22.0, every X.Y.Z a backport in the table
makes matter, and ``HEAD`` (the master commit ``HEAD_COMMIT``).
:func:`parse` reads ``X.Y`` (meaning X.Y.0), ``X.Y.Z``, ``HEAD`` or ``all``.

``python -m xenstream.releases > docs/restorability.md`` writes the table.
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, TextIO, Tuple

#: the xen-project/xen master commit the table was checked against
HEAD_COMMIT = "c447b7308b1330ec6dcfef37220736c28f41daa0"
HEAD_DATE = "2026-08-20"
HEAD = "HEAD"
ALL = "all"
FIRST_MINOR = 6  # 4.6.0: the first release with stream v2
LAST_MINOR = 22  # 4.22.0: the newest release

#: a verdict, for one release: it restores, it does not, or only on some hosts
RESTORES = "restores"
REFUSED = "refused"
HOST = "host"
OUTCOMES = (RESTORES, REFUSED, HOST)

Version = Tuple[int, int, int]
_HEAD_KEY: Version = (4, 99, 0)  # after every release: master past 4.22
_VERSION = re.compile(r"^4\.(\d+)(?:\.(\d+))?$")


class Change(NamedTuple):
    id: str
    release: str  # X.Y.Z of the first master release containing it
    commit: str  # the master commit's short hash
    what: str
    how: str  # how the boundary was established
    #: (X.Y.Z, stable commit) of each backport, the first tag of its branch containing it
    backports: Tuple[Tuple[str, str], ...] = ()
    #: further master commits of the same change (same release)
    also: Tuple[str, ...] = ()


def key(release: str) -> Version:
    """The sort key of ``X.Y.Z`` or ``HEAD`` (ValueError for anything else)."""
    if release == HEAD:
        return _HEAD_KEY
    m = _VERSION.match(release)
    if not m:
        raise ValueError(f"not a Xen release: {release!r}")
    return (4, int(m.group(1)), int(m.group(2) or 0))


def name(k: Version) -> str:
    return HEAD if k == _HEAD_KEY else f"{k[0]}.{k[1]}.{k[2]}"


def series(release: str) -> str:
    """``X.Y`` of a release (``HEAD`` for HEAD)."""
    k = key(release)
    return HEAD if k == _HEAD_KEY else f"{k[0]}.{k[1]}"


def in_effect(c: Change, release: str) -> bool:
    """Whether ``release`` contains change ``c``: on master from ``c.release``
    (and at HEAD), on a stable branch from its backport's X.Y.Z on."""
    k = key(release)
    if k >= key(c.release):
        return True
    for point, _commit in c.backports:
        p = key(point)
        if p[:2] == k[:2] and k >= p:
            return True
    return False


def outcome(before: str, changes: Sequence[Tuple[str, str]], release: str) -> str:
    """The verdict at ``release`` of a rule that is ``before`` at 4.6.0 and
    becomes each ``(change id, verdict)`` from that change on (the last row
    in effect wins)."""
    result = before
    for cid, verdict in changes:
        if in_effect(CHANGES[cid], release):
            result = verdict
    return result


def parse(text: str) -> List[str]:
    """The releases ``text`` names: ``X.Y`` (X.Y.0), ``X.Y.Z``, ``HEAD`` or
    ``all`` (every release of :data:`RELEASES`).  ValueError, with a
    one-line reason, for anything else."""
    t = text.strip()
    if t.lower() == ALL:
        return list(RELEASES)
    if t.upper() == HEAD:
        return [HEAD]
    m = _VERSION.match(t)
    if not m or t.startswith("4.0"):
        raise ValueError(f"expected X.Y, X.Y.Z, HEAD or all, found {text!r}")
    minor = int(m.group(1))
    if not FIRST_MINOR <= minor <= LAST_MINOR:
        raise ValueError(f"expected a release from 4.{FIRST_MINOR} to 4.{LAST_MINOR} "
                         f"(or HEAD), found {text!r}")
    return [name(key(t))]


def points(release: str) -> List[str]:
    """The releases of :data:`RELEASES` in the series of ``release`` from it on
    (4.18.0 -> 4.18.0, 4.18.5): where a later X.Y.Z may judge differently."""
    k = key(release)
    return [r for r in RELEASES if key(r)[:2] == k[:2] and key(r) >= k]


def ranges(restoring: Iterable[str]) -> List[Tuple[str, str]]:
    """The runs of :data:`RELEASES` in ``restoring``, as (first, last) labels:
    ``X.Y`` for a run that starts at X.Y.0 or ends with the series, ``X.Y.Z``
    where a backport splits a series, ``HEAD``."""
    have = set(restoring)
    out: List[Tuple[str, str]] = []
    start: Optional[int] = None
    order = list(RELEASES)
    for i, r in enumerate(order + [""]):
        if r in have:
            if start is None:
                start = i
            continue
        if start is not None:
            first, last = order[start], order[i - 1]
            end = _end_label(last, order[i] if i < len(order) else None)
            begin = _start_label(first)
            if end.count(".") == 2 and series(end) == series(first):
                begin = first  # 4.11.0 - 4.11.0, 4.9.0 - 4.9.2: within one series
            elif end == series(first) and begin != end:
                end += ".x"  # 4.18.5 - 4.18.x: the rest of a series a backport reached
            out.append((begin, end))
            start = None
    return out


def _start_label(r: str) -> str:
    k = key(r)
    return r if r == HEAD or k[2] else series(r)


def _end_label(r: str, nxt: Optional[str]) -> str:
    if r == HEAD:
        return HEAD
    if nxt is None or series(nxt) != series(r):
        return series(r)  # the whole rest of the series
    k = key(nxt)
    return f"4.{k[1]}.{k[2] - 1}"  # up to the point before the next listed one


def ranges_text(pairs: Sequence[Tuple[str, str]]) -> str:
    """``4.14 – 4.20, 4.21.1 – HEAD`` (``none`` for no release)."""
    if not pairs:
        return "none"
    return ", ".join(a if a == b else f"{a} \u2013 {b}" for a, b in pairs)


def _table(rows: Iterable[Change]) -> Dict[str, Change]:
    table: Dict[str, Change] = {}
    for c in rows:
        if c.id in table:
            raise ValueError(f"change {c.id} is in the table twice")
        key(c.release)
        for p, _ in c.backports:
            if key(p) >= key(c.release):
                raise ValueError(f"change {c.id}: backport {p} is not before {c.release}")
        table[c.id] = c
    return table


# -- the table ---------------------------------------------------------------------------
# How: "log" is `git log --oneline RELEASE-4.5.0..HEAD -- <restore paths>` read commit by
# commit; "tag" is `git tag --contains <commit>` (the first RELEASE-X.Y.Z); "trailer" is
# `git log --grep "master commit: <hash>" --grep "cherry picked from commit <hash>"` on
# every stable-4.Y branch, each hit's first RELEASE-4.Y.Z; "-S" is `git log -S <code>` /
# `git grep <code> RELEASE-4.Y.Z` on the stable branches and their tags.

CHANGES: Dict[str, Change] = _table([
    # -- the stream formats and the toolstacks ----------------------------------------------
    Change("stream-v2", "4.6.0", "3a9ace0147",
           "libxc, libxl and xl restore migration stream v2 (libxc v2 records, the libxl v2 "
           "stream, xl's header); optional records (bit 31) of unknown type are skipped "
           "(93c2ff78ad, xc_sr_restore.c: restore())",
           "log + tag: both commits first in RELEASE-4.6.0; RELEASE-4.6.0:tools/libxc/"
           "xc_sr_restore.c read_headers() accepts version 2 only",
           also=("93c2ff78ad",)),
    Change("legacy-restore-removed", "4.6.0", "b15bc4345e",
           "libxc's legacy (Xen <= 4.5) restore is removed: xc_domain_restore() reads v2 "
           "only, so a bare legacy stream restores only after conversion",
           "log --diff-filter=D -- tools/libxc/xc_domain_restore.c; tag: RELEASE-4.6.0 has no "
           "xc_domain_restore.c"),
    Change("legacy-converter", "4.6.0", "d9c8790393",
           "libxl converts a legacy stream itself (xl without STREAMv2, libvirt version 1) by "
           "running convert-legacy-stream (74a7c7a928; LIBXL_CONVERT_HELPER or libexec); xl's "
           "mandatory STREAMv2 flag says which (e72ce244dc)",
           "log + tag: all three first in RELEASE-4.6.0; RELEASE-4.6.0:tools/libxl/"
           "libxl_convert_callout.c runs the helper",
           also=("74a7c7a928", "e72ce244dc")),
    Change("record-length-128m", "4.10.0", "e48e33e219",
           "REC_LENGTH_MAX grows from 8 MiB to 128 MiB: a record body over 8 MiB (a large "
           "HVM_CONTEXT) is refused by read_record() before 4.10",
           "tag; -S: `git grep 'define REC_LENGTH_MAX' stable-4.6 ... stable-4.10` is 8U << 20 "
           "on every branch up to stable-4.9 (no backport); trailer: none"),
    Change("hvm-params-exact", "4.9.0", "119ee4d773",
           "handle_hvm_params() refuses an HVM_PARAMS body longer than 8 + 16 * count (and "
           "skips a count-0 record, which earlier releases also accepted)",
           "tag; trailer found none, `git log -S 'Tolerate empty records'` on stable-4.6/4.7/"
           "4.8 found the cherry-picks (\"cherry picked from commit 119ee4d773\"), first in "
           "RELEASE-4.6.6, 4.7.3, 4.8.2",
           backports=(("4.6.6", "7496924db2"), ("4.7.3", "1956c9e91d"), ("4.8.2", "834ea870c5"))),
    Change("empty-pv-vcpu", "4.11.0", "f593747666",
           "an empty X86_PV_VCPU_* record (the errata's zero-content records) restores: "
           "119ee4d773 meant to skip them but left rc -1, so 4.6-4.10 refuse them",
           "tag; read handle_x86_pv_vcpu_blob() at RELEASE-4.10.0 (rc = -1 on the skip path) "
           "and on every stable-4.6 ... 4.10 branch (no `rc = 0` after \"Skipping empty\"); "
           "trailer and `--grep 'really tolerate empty'`: no backport"),
    Change("stream-v3", "4.14.0", "6501e46ca7",
           "stream version 3 and STATIC_DATA_END (record 0x10): read_headers() accepts 2 <= "
           "version <= 3 (4.6-4.13: version 2 only; 0x10 an unknown mandatory record)",
           "tag; RELEASE-4.13.0 vs 4.14.0 read_headers() and xc_sr_stream_format.h; trailer: "
           "no backport", also=("4f8b684117",)),
    Change("policy-records", "4.14.0", "8baf4363e1",
           "X86_CPUID_POLICY / X86_MSR_POLICY (records 0x11, 0x12) are handled and applied "
           "at STATIC_DATA_END (1a6be420e0): the host's CPU must offer that policy",
           "tag; RELEASE-4.13.0 stream format has no 0x11/0x12; trailer: no backport",
           also=("1a6be420e0",)),
    Change("colo", "4.7.0", "f5d947bf1b",
           "libxl reads CHECKPOINT_STATE (libxl record 5, COLO's back channel); libxc "
           "restores COLO streams (f8c8727d25)",
           "tag; process_record() of RELEASE-4.6.0:tools/libxl/libxl_stream_read.c has no "
           "REC_TYPE_CHECKPOINT_STATE case (4.7.0 has)", also=("f8c8727d25",)),
    Change("emulator-hvm-only", "4.10.0", "ef284a9693",
           "libxl refuses EMULATOR_* records for a domain whose configuration is not HVM "
           "(before: only for device_model_version NONE)",
           "tag; process_record() at RELEASE-4.9.0 vs 4.10.0"),
    # -- the hypervisor's checks of the vcpu and device state --------------------------------
    Change("xsave-header", "4.7.0", "d570d82291",
           "validate_xstate() checks the whole XSAVE header: xcomp_bv 0 (uncompacted) and "
           "reserved bytes zero (HVM CPU_XSAVE and PV X86_PV_VCPU_XSAVE)",
           "tag; trailer: no backport"),
    Change("xsave-size-exact", "4.8.0", "681aea049c",
           "hvm_load_cpu_xsave_states() and XEN_DOMCTL_setvcpuextstate refuse an XSAVE area "
           "shorter than the size of its xcr0_accum",
           "`git log -L` of hvm_load_cpu_xsave_states between RELEASE-4.7.0 and 4.8.0; tag; "
           "trailer: stable-4.7 1983d58d18, first in RELEASE-4.7.1",
           backports=(("4.7.1", "1983d58d18"),)),
    Change("tsc-pvrdtscp-removed", "4.12.0", "a4ac3d40ec",
           "tsc_set_info() returns -EINVAL for TSC mode 3 (PVRDTSCP) and unknown modes; "
           "4.6-4.11 set them",
           "tag; tsc_set_info() at RELEASE-4.11.0 (void, every mode) vs 4.12.0; -S "
           "TSC_MODE_PVRDTSCP present on every stable branch up to 4.11 (no backport)"),
    Change("efer-known-mask", "4.12.0", "ef0269c621",
           "hvm_efer_valid() refuses EFER bits outside EFER_KNOWN_MASK on restore",
           "tag; trailer: stable-4.8 b149b06b1e, 4.9 a894c9dcbd, 4.10 b07c76fece, 4.11 "
           "7de2155573, first in RELEASE-4.8.5, 4.9.3, 4.10.2, 4.11.1",
           backports=(("4.8.5", "b149b06b1e"), ("4.9.3", "a894c9dcbd"), ("4.10.2", "b07c76fece"),
                      ("4.11.1", "7de2155573"))),
    Change("tsc-aux-32", "4.12.0", "5f5a7a6d36",
           "hvm_load_cpu_ctxt() refuses an msr_tsc_aux above 32 bits",
           "-S 'bad MSR_TSC_AUX': first in RELEASE-4.12.0, on no earlier stable tag"),
    Change("mtrr-vcnt", "4.12.0", "76159f10b1",
           "hvm_load_mtrr_msr() refuses an MTRRcap VCNT above 8",
           "log of mtrr.c RELEASE-4.11.0..RELEASE-4.12.0; -S 'variable range MTRRs' on the "
           "stable tags: 4.12.0 first"),
    Change("cr3-maxphysaddr", "4.14.0", "80872597e6",
           "hvm_load_cpu_ctxt() refuses CR3 bits at or above the guest's maxphysaddr",
           "-S 'restore: bad CR3' on the stable tags: 4.14.0 first"),
    Change("pv-vcpu-blob-audit", "4.14.0", "2a62c22715",
           "handle_x86_pv_vcpu_blob()'s multiple-of-16 check moves from X86_PV_VCPU_XSAVE, "
           "where it was misapplied (an XSAVE area of 2696 bytes, PKRU, was refused), to "
           "X86_PV_VCPU_MSRS; XSAVE needs >= 16 bytes (0729830cc4, same releases)",
           "tag; trailer: stable-4.12 288872ad3b, 4.13 0e2bbcf8b4 (first in RELEASE-4.12.3, "
           "4.13.1); the stable-4.10/4.11 cherry-picks (b413732087, a58bba28da) are in no tag",
           backports=(("4.12.3", "288872ad3b"), ("4.13.1", "0e2bbcf8b4"))),
    Change("hvm-context-blob", "4.14.0", "59e1f6d897",
           "handle_hvm_context() keeps the record with update_blob(), which refuses an empty one",
           "tag; trailer: no backport"),
    Change("dr67-32", "4.18.0", "15987cb03f",
           "hvm_load_cpu_ctxt() refuses DR6/DR7 above 32 bits",
           "-S 'bad DR6' on the stable tags: 4.18.0 first (no backport)"),
    Change("vpic-vpit-pci-link", "4.19.0", "69c89dd787",
           "the vPIC (69c89dd787), vPIT (c53013da6f) and PCI_LINK pad (7a3bd1cbc4) records are "
           "checked on load",
           "-S vpic_check / pit_check / 'pci_link->pad0[link]' on the stable tags: 4.19.0 first",
           also=("c53013da6f", "7a3bd1cbc4")),
    # -- HVM save-record sizes (zero-extended loads refuse a longer record) -------------------
    Change("hvm-cpu-1032", "4.7.0", "a3b6844d3b",
           "HVM CPU record 1024 -> 1032 bytes (flags, a3b6844d3b; pad0, eb68c40ba5)",
           "log -- xen/include/public/arch-x86/hvm/save.h; tag; trailer: no backport",
           also=("eb68c40ba5",)),
    Change("hvm-viridian-vcpu-16", "4.7.0", "78c5f59ebd",
           "VIRIDIAN_VCPU 8 -> 16 bytes (apic_assist_vector) and loaded zero-extended "
           "(4.6 loads it strictly)",
           "save.h diff; RELEASE-4.6.0 viridian.c has hvm_load_entry(VIRIDIAN_VCPU); -S "
           "apic_assist_vector: stable-4.7 first"),
    Change("hvm-vmce-32", "4.10.0", "e2fea563b9",
           "VMCE_VCPU 24 -> 32 bytes (mcg_ext_ctl)",
           "save.h diff; -S mcg_ext_ctl on the stable branches: stable-4.10 first"),
    Change("hvm-viridian-vcpu-216", "4.13.0", "26fba3c855",
           "VIRIDIAN_VCPU 16 -> 216 bytes (SynIC MSRs, a85089d0ef; synthetic timers, "
           "26fba3c855)",
           "save.h diff; -S stimer_config_msr: stable-4.13 first", also=("a85089d0ef",)),
    Change("hvm-rtc-24", "4.14.0", "105b06fc7e",
           "RTC 16 -> 24 bytes (rtc_offset), loaded zero-extended from then on",
           "save.h diff; -S rtc_offset: stable-4.14 first; RELEASE-4.13.0 rtc.c loads strictly"),
    Change("hvm-lapic-32", "4.21.0", "b28b590d4a",
           "LAPIC 24 -> 32 bytes (pending_esr): a release without it refuses the longer "
           "record (\"HVM restore mismatch: expected zeroextended type 5 length 24, saw ... "
           "length 32\", seen on Xen 4.17)",
           "tag; trailer \"master commit: b28b590d4a...\": stable-4.18 70b6b7cc10, 4.19 "
           "da239140a4, 4.20 4a480e7a14, first in RELEASE-4.18.5, 4.19.2, 4.20.1; -S "
           "pending_esr: nothing on stable-4.17 and older",
           backports=(("4.18.5", "70b6b7cc10"), ("4.19.2", "da239140a4"), ("4.20.1", "4a480e7a14"))),
    # -- CPU_MSR indices hvm_load_cpu_msrs() (or the vendor's load_msr) accepts ----------------
    Change("msr-xss", "4.7.0", "460b9a4b36",
           "CPU_MSR MSR_IA32_XSS is loaded (vmx_load_msr(); common code from 4.13, 4ec08bb826)",
           "case labels of vmx_load_msr() at RELEASE-4.6.0 / 4.7.0; -S 'case MSR_IA32_XSS:'"),
    Change("msr-misc-features", "4.11.0", "b90f86be16",
           "CPU_MSR MSR_INTEL_MISC_FEATURES_ENABLES (CPUID faulting) is loaded",
           "-S 'case MSR_INTEL_MISC_FEATURES_ENABLES:'; tag; trailer: stable-4.8 2aff8d5e73, "
           "4.9 186c3c6e94 (vmx.c), 4.10 8cac25c4d2 (before 4.10.0 was tagged)",
           backports=(("4.8.4", "2aff8d5e73"), ("4.9.2", "186c3c6e94"), ("4.10.0", "8cac25c4d2"))),
    Change("msr-spec-ctrl", "4.11.0", "0cf2a4eb76",
           "CPU_MSR MSR_SPEC_CTRL is loaded",
           "-S 'case MSR_SPEC_CTRL:'; tag; trailer: stable-4.7 b7dae55c0e, 4.8 e6bcb416a5, 4.9 "
           "2fdee60ec1 (vmx.c), 4.10 8baba874d6, first in RELEASE-4.7.5, 4.8.4, 4.9.2, 4.10.1 "
           "(stable-4.6 db743b0499 is in no tag)",
           backports=(("4.7.5", "b7dae55c0e"), ("4.8.4", "e6bcb416a5"), ("4.9.2", "2fdee60ec1"),
                      ("4.10.1", "8baba874d6"))),
    Change("msr-virt-spec-ctrl", "4.17.0", "0d251a1dd1",
           "CPU_MSR MSR_VIRT_SPEC_CTRL is loaded",
           "case labels of hvm_load_cpu_msrs() at every stable branch and tag: 4.17.0 first"),
    Change("msr-pkrs", "4.18.0", "59bbbb823d",
           "CPU_MSR MSR_PKRS is loaded",
           "case labels of hvm_load_cpu_msrs() at every stable branch and tag: 4.18.0 first"),
    # -- HVM_PARAMS indices (hvmop_set_param() refuses index >= HVM_NR_PARAMS) ----------------
    Change("param-x87-fip-width", "4.7.0", "5d768fb1f3",
           "HVM_NR_PARAMS 36 -> 37: HVM_PARAM_X87_FIP_WIDTH (36), which savers send from 4.7",
           "HVM_NR_PARAMS at each tag; tag; trailer: stable-4.6 aa97712d9b, first in "
           "RELEASE-4.6.3", backports=(("4.6.3", "aa97712d9b"),)),
    Change("param-vm86-tss-sized", "4.9.0", "3619af2b2b",
           "HVM_NR_PARAMS 38: HVM_PARAM_VM86_TSS_SIZED (37), which savers send from 4.9",
           "HVM_NR_PARAMS at each tag; tag; trailer: no backport"),
    Change("param-mca-cap", "4.10.0", "4e731e9707",
           "HVM_NR_PARAMS 39: HVM_PARAM_MCA_CAP (38), which savers send from 4.10",
           "HVM_NR_PARAMS at each tag; tag; trailer: no backport"),
    # -- what the restoring host must have -----------------------------------------------------
    Change("pv32-option", "4.14.0", "68d757df8d",
           "32-bit PV support becomes a build option (CONFIG_PV32) and a boot option (pv=); "
           "off by default outside the PV shim from 4.16.0 / 4.15.1 / 4.14.3 (1a0f2fe229)",
           "tag; Kconfig at RELEASE-4.14.0; trailer for 1a0f2fe229: stable-4.14 c6ee6d4ec3, "
           "4.15 77069ea825"),
    Change("pv-needs-pv32", "4.15.0", "1379576729",
           "Xen no longer keeps the compat M2P without PV32, and libxenguest asks for it for "
           "every PV guest: a PV image restores only where 32-bit PV is enabled",
           "tag; d21121685f's message (\"libxenguest will fail saving or restoring a PV "
           "domain\")"),
    Change("pv-restore-fixed", "4.16.0", "d21121685f",
           "libxenguest asks for the compat M2P only for 32-bit PV guests",
           "tag; trailer: stable-4.15 77069ea825 (with 1a0f2fe229), first in RELEASE-4.15.1",
           backports=(("4.15.1", "77069ea825"),)),
    Change("qemu-trad-not-default", "4.16.0", "faddd16e36",
           "qemu-traditional is no longer built by default (--enable-qemu-traditional)",
           "-S qemu-traditional -- tools/configure.ac; tag; trailer: no backport"),
    Change("qemu-trad-removed", "4.21.0", "19ab8356ab",
           "libxl no longer runs qemu-traditional (1eb944f650 removes its build): its device "
           "state cannot be restored",
           "tag; libxl_create.c diff; trailer: no backport", also=("1eb944f650",)),
])

#: what was looked at and does not move a boundary inside 4.6 ... HEAD
UNCHANGED = (
    "HVM save typecodes: HEADER..CPU_MSR (1-20) at RELEASE-4.5.0 and HEAD alike "
    "(HVM_SAVE_CODE_MAX 20; 6e99520bf4 only reserves numbers); TSC_ADJUST (19) is 8 bytes "
    "throughout",
    "VIRIDIAN_DOMAIN is 32 bytes at RELEASE-4.6.0 (dd94caca53 is in 4.6.0) and HEAD",
    "IOAPIC keeps its x86 size across a891a308e9 / cde048340a (4.9: 48 pins)",
    "CPU_MSR MSR_IA32_BNDCFGS (vmx) and MSR_AMD64_DR0-3_ADDRESS_MASK (svm) are loaded from "
    "4.6.0 (vendor code until 4.12/4.13)",
    "PAGE_DATA types: 9e59d9f8ee (4.16) rewrites the check, the refused set (5-8) is the same",
    "libxl END, LIBXC_CONTEXT, EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT and CHECKPOINT_END "
    "(49ddaa1ae1) are read from 4.6.0",
    "HVM_MAX_VCPUS is 128 at every release",
    "794347f5e3 (4.7): a live Remus failover before the first CHECKPOINT_END is refused; a "
    "saved image is judged the same at every release",
    "969a57f73f (4.17.0; 4.14.5, 4.15.3, 4.16.1) clamps MSR_SPEC_CTRL on the saving side: "
    "what a restore accepts is unchanged",
    "9d8c1d1814 (4.12.0; 4.9.4, 4.10.3, 4.11.2) and 345fd6d01e (4.15) audit CR4/EFER against "
    "the guest's CPUID policy instead of the host's: host-dependent before and after",
    "eb48045d74 (4.20) moves the LAPIC checks (x2APIC without enable refused since 4.6) into "
    "check hooks; c95cd5f9c5 (4.20.0; 4.18.4, 4.19.1) lowers XEN_DOMCTL_set_vcpu_msrs' "
    "maximum by 4, above what any saver sends",
    "aafae0e800 (4.14.0; 4.12.3, 4.13.1) rewrites the X86_PV_INFO audit: the combinations "
    "refused are the same",
)


def markdown(out: TextIO) -> None:
    """``docs/restorability.md``: the releases and the table."""
    out.write("# Restorability by Xen release\n\nGenerated from `src/xenstream/releases.py` "
              "(`python -m xenstream.releases > docs/restorability.md`); do not edit.\n\n")
    out.write(f"Checked against xen-project/xen master `{HEAD_COMMIT[:10]}` ({HEAD_DATE}), "
              f"the newest commit fetched; 4.{LAST_MINOR}.0 is the newest release. "
              "`xenstream verify --target-xen X.Y[.Z]|HEAD|all` judges an image for a "
              "release with these rows, through the rules that name them "
              "([rules.md](rules.md), column *releases*).\n\n")
    out.write("Releases judged: " + ", ".join(RELEASES) + ".\n\n")
    out.write("| release | change | commit | backports | how the boundary was established |\n")
    out.write("| --- | --- | --- | --- | --- |\n")
    for c in sorted(CHANGES.values(), key=lambda c: (key(c.release), c.id)):
        commits = ", ".join(f"`{h}`" for h in (c.commit,) + c.also)
        bps = ", ".join(f"{p} (`{h}`)" for p, h in c.backports)
        cells = (series(c.release), f"**{c.id}**: {c.what}", commits, bps, c.how)
        out.write("| " + " | ".join(s.replace("|", "\\|") for s in cells) + " |\n")
    out.write("\n## Looked at, no boundary\n\n")
    for line in UNCHANGED:
        out.write(f"- {line}\n")


def _releases() -> Tuple[str, ...]:
    pts = {(4, m, 0) for m in range(FIRST_MINOR, LAST_MINOR + 1)}
    for c in CHANGES.values():
        for p, _ in c.backports:
            pts.add(key(p))
    return tuple(name(k) for k in sorted(pts)) + (HEAD,)


#: every release judged: each X.Y.0, the X.Y.Z a backport makes matter, HEAD
RELEASES: Tuple[str, ...] = _releases()

__all__ = ["ALL", "CHANGES", "Change", "HEAD", "HEAD_COMMIT", "HOST", "OUTCOMES", "REFUSED",
           "RELEASES", "RESTORES", "in_effect", "key", "markdown", "outcome", "parse", "points",
           "ranges", "ranges_text", "series"]

if __name__ == "__main__":
    markdown(sys.stdout)
