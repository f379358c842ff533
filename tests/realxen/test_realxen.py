"""Real Xen (Debian's 4.17 under QEMU/TCG): our commands on real images, and
Xen's restore of what our writers and converters make.

All tests share one boot (the ``xen`` fixture, see conftest.py): the job in
dom0 (dom0/job.py) does every save, restore and negative case and records
the facts in results.json; these tests judge them.  A restore counts only if
the guest's console heartbeat advances past the last one seen before the
save, without a reboot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

pytestmark = pytest.mark.realxen

MEMORY_MB = 128
#: image key -> (guest name, vcpus)
IMAGES = {
    "pv1": ("pv1", 1),
    "pv1-ckpt": ("pv1", 1),
    "pv1-paused": ("pv1", 1),
    "pv1-fifo": ("pv1", 1),
    "pv2": ("pv2", 2),
    "pvmax": ("pvmax", 1),
    "pvh": ("pvh", 1),
    "pvh-migrate": ("pvh", 1),
}
PV_IMAGES = {k for k in IMAGES if not k.startswith("pvh")}
RESTORES = [f"v2:{k}" for k in IMAGES] + [
    "legacy:pv1:xenstream-convert",
    "legacy:pv2:xenstream-convert",
    "legacy:pv1:libxl-helper=xenstream",
    "legacy:pv2:libxl-helper=xenstream",
    "legacy:pv1:libxl-helper=debian+PYTHONPATH",
    "legacy:pvh:xenstream-convert",
    "bare:pv1:libxc-wrapped",
    "bare:pv1:libxl-wrapped",
]
NEGATIVE = ["truncated-page-data", "tsc-info-length", "page-type-5", "vcpu-basic-id",
            "vcpu-extended-size", "hvm-header-magic", "hvm-cpu-instance", "xl-mandatory-flag",
            "libxl-version"]


def results(xen: Any) -> Dict[str, Any]:
    r: Dict[str, Any] = xen.results
    return r


def describe(rec: Dict[str, Any]) -> str:
    w = rec.get("watch") or {}
    return (f"xl rc {rec['restore']['rc']}, heartbeat before {rec.get('hb_before')}, after "
            f"{w.get('heartbeats')}, errors {rec.get('errors')}\n"
            f"console tail: {(w.get('console_tail') or '')[-600:]}")


def test_job_completed(xen: Any) -> None:
    r = results(xen)
    assert not r["errors"], "\n".join(r["errors"])
    assert r["done"], f"the job did not finish (boot {r['_boot']})"


def test_hypervisor(xen: Any) -> None:
    info = results(xen)["xl_info"]
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["xen_major"] == "4" and fields["xen_minor"] == "17", info
    assert "pv" in fields["virt_caps"].split() and "hvm" in fields["virt_caps"].split(), info


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_real_image_saved(xen: Any, key: str) -> None:
    im = results(xen)["images"].get(key)
    assert im is not None, f"no {key} image: {results(xen)['errors']}"
    assert im["save"]["rc"] == 0, im["save"]["out"][-2000:]
    assert im["size"] and im["size"] > MEMORY_MB * 0.9 * 2**20, im
    assert im["hb_before"] >= 3, "the guest was not running when saved"


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_verify_in_dom0(xen: Any, key: str) -> None:
    v = results(xen)["verify"].get(key)
    assert v is not None, f"{key} not verified in dom0"
    assert v["xenstream_verify"]["rc"] == 0, v["xenstream_verify"]["out"][-3000:]
    assert v["verify_stream_v2"]["rc"] == 0, v["verify_stream_v2"]["out"][-3000:]
    assert v["config"]["rc"] == 0, v["config"]["out"][-2000:]
    cfg = json.loads(v["config"]["out"])["config"]
    if isinstance(cfg, str):
        cfg = json.loads(cfg.rstrip("\0"))
    assert cfg["c_info"]["name"] == IMAGES[key][0]
    assert cfg["b_info"]["max_memkb"] == MEMORY_MB * 1024


def _host(args: list, *, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c",
                           "import sys; from xenstream.cli." + args[0] + " import main; "
                           "sys.argv[0] = " + repr(args[0]) + "; sys.exit(main())",
                           *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_verify_on_host(xen: Any, key: str) -> None:
    """The copies on the host: verify, verify-stream-v2, config, and the domain header."""
    from xenstream.io import Source
    from xenstream.reading.parser import Header, Parser

    im = results(xen)["images"].get(key)
    assert im and im.get("copied"), f"{key} was not copied out"
    path = xen.out / im["copied"]
    assert path.stat().st_size == im["size"]
    p = _host(["main", "verify", str(path)], cwd=xen.workdir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "valid" in p.stdout
    p = _host(["verify_stream_v2", "-i", str(path)], cwd=xen.workdir)
    assert p.returncode == 0, p.stdout + p.stderr
    p = _host(["main", "config", str(path)], cwd=xen.workdir)
    assert p.returncode == 0 and f'"{IMAGES[key][0]}"' in p.stdout, p.stdout + p.stderr
    with Source.open(str(path)) as src:
        dh = next(i for i in Parser(src).items()
                  if isinstance(i, Header) and i.kind == "libxc domain header")
    assert (dh.fields["xen_major"], dh.fields["xen_minor"]) == (4, 17), dh.fields
    assert dh.fields["type"] == (1 if key in PV_IMAGES else 2), dh.fields


@pytest.mark.parametrize("label", RESTORES)
def test_restore(xen: Any, label: str) -> None:
    rec = results(xen)["restores"].get(label)
    assert rec is not None, f"{label} never tried: {results(xen)['errors']}"
    assert rec["xl_ok"], describe(rec)
    w = rec["watch"]
    assert w["advancing"], describe(rec)
    assert 1 not in [h for h in w["heartbeats"] if h > rec["hb_before"]]
    assert not w["oops"], describe(rec)


@pytest.mark.xfail(reason="Debian's packaged convert-legacy-stream cannot import its 'xen' "
                   "module without PYTHONPATH (real-xen.md)", strict=False)
def test_restore_debian_converter_as_packaged(xen: Any) -> None:
    rec = results(xen)["restores"].get("legacy:pv1:libxl-helper=debian")
    assert rec is not None
    assert rec["xl_ok"] and rec["watch"]["advancing"], describe(rec)


def test_legacy_images(xen: Any) -> None:
    leg = results(xen)["legacy"]
    assert set(leg) >= {"pv1", "pv2", "pvh"}, leg.keys()
    for key, L in leg.items():
        tr = L["translation"]
        assert tr["online"] == list(range(IMAGES[key][1])), tr
        assert tr["pages"] > MEMORY_MB * 256 * 0.9, tr
        assert L["verify_legacy"]["rc"] == 0 and "legacy" in L["verify_legacy"]["out"], L
        assert L["convert"]["rc"] == 0, L["convert"]["out"][-2000:]
        assert L["verify_converted"]["rc"] == 0, L["verify_converted"]["out"][-2000:]
    L = leg["pv1"]
    for fmt in ("libxc", "libxl"):
        assert L[f"bare_convert_{fmt}"]["rc"] == 0, L[f"bare_convert_{fmt}"]["out"][-2000:]
        assert L[f"bare_verify_{fmt}"]["rc"] == 0, L[f"bare_verify_{fmt}"]["out"][-2000:]
        assert L[f"bare_verify_{fmt}_wrapped"]["rc"] == 0


@pytest.mark.xfail(reason="libxl runs the converter with --guest pv for PVH guests, and "
                   "xenstream's convert-legacy-stream refuses a -g that contradicts the HVM "
                   "content", strict=False)
def test_restore_pvh_legacy_through_libxl(xen: Any) -> None:
    rec = results(xen)["restores"].get("legacy:pvh:libxl-helper=xenstream")
    assert rec is not None
    assert rec["xl_ok"] and rec["watch"]["advancing"], describe(rec)


def test_legacy_copy_on_host(xen: Any) -> None:
    L = results(xen)["legacy"]["pv1"]
    path = xen.out / L["copied"]
    p = _host(["main", "verify", str(path)], cwd=xen.workdir)
    assert p.returncode == 0 and "legacy" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize("name", NEGATIVE)
def test_negative(xen: Any, name: str) -> None:
    """xenstream calls it invalid, and Xen refuses it too (or the guest does not run)."""
    n = results(xen)["negatives"].get(name)
    assert n is not None and "defect" in n, n
    assert n["xenstream"]["rc"] == 1, n
    assert not (n["xl_ok"] and n["guest_ran"]), f"Xen restored a running guest from it: {n}"


@pytest.mark.xfail(reason="xenstream does not look inside the vcpu registers: a bad RIP is "
                   "well formed, Xen restores it, and the guest crashes", strict=False)
def test_probe_vcpu_rip(xen: Any) -> None:
    n = results(xen)["negatives"]["vcpu-rip"]
    assert n["xenstream"]["rc"] == 0, n  # well formed to our rules
    assert n["xl_ok"] and n["guest_ran"], f"xenstream says valid, but the guest did not run: {n}"


@pytest.mark.xfail(reason="xenstream checks HVM entry sizes against HEAD (LAPIC 32 bytes); "
                   "Xen 4.17 refuses a LAPIC entry longer than its 24", strict=False)
def test_probe_hvm_lapic_grown(xen: Any) -> None:
    n = results(xen)["negatives"]["hvm-lapic-grown"]
    assert n["xenstream"]["rc"] == 0, n
    assert n["xl_ok"] and n["guest_ran"], f"xenstream says valid, Xen refused: {n}"


def test_pvh_live_migration(xen: Any) -> None:
    m = results(xen)["migrate"]["pvh"]
    assert m["rc"] == 0, m["out"][-3000:]
    assert m["watch"]["advancing"], m["watch"]


def test_pv_live_migration_attempt_leaves_guest_running(xen: Any) -> None:
    m = results(xen)["migrate"]["pv"]
    assert m["watch"]["advancing"], m["watch"]


@pytest.mark.xfail(reason="Debian builds Xen without shadow paging: PV log-dirty fails "
                   "(\"Failed to enable logdirty: 95\", real-xen.md)", strict=False)
def test_pv_live_migration(xen: Any) -> None:
    m = results(xen)["migrate"]["pv"]
    assert m["rc"] == 0, m["out"][-3000:]


@pytest.mark.parametrize("key", sorted(IMAGES))
def test_inspect_real_image(xen: Any, key: str) -> None:
    """info, dump and regs on every image the real Xen saved (issue 11): the
    values the guest's configuration and Xen 4.17's saver put there."""
    from xenstream.consumers.dump import records
    from xenstream.consumers.info import summary
    from xenstream.consumers.regs import read_state

    im = results(xen)["images"].get(key)
    assert im and im.get("copied"), f"{key} was not copied out"
    path = str(xen.out / im["copied"])
    name, nvcpus = IMAGES[key]
    info = summary(path)
    assert info.verdict.valid, info.verdict.line
    assert info.saved_by.xen_version == "4.17" and not info.saved_by.converted
    assert info.guest.type == ("pv" if key in PV_IMAGES else "pvh"), info.guest
    assert len(info.vcpus.online) == nvcpus, info.vcpus
    assert info.config is not None and info.config.name == name
    assert info.config.max_memory_kib == MEMORY_MB * 1024
    mem = info.memory
    assert mem.resident_pages is not None and mem.resident_pages * 4096 > MEMORY_MB * 0.8 * 2**20
    assert mem.data_pages >= mem.resident_pages
    if key in PV_IMAGES:
        assert mem.highest_pfn is not None and mem.highest_pfn * 4096 < MEMORY_MB * 1.1 * 2**20
    else:  # PVH: guest RAM, and the special pages libxl puts just below 0xff000 (4 GiB - 16 MiB)
        assert mem.highest_pfn is not None and 0xFEF00 <= mem.highest_pfn < 0xFF000, mem
        assert mem.resident_pages - MEMORY_MB * 256 <= 64, mem  # RAM plus a few special pages
    if key == "pvh-migrate":  # live migration: later iterations resend dirty pages
        assert (mem.pfns_sent_more_than_once or 0) > 0
    st = read_state(path)
    assert st.guest_type == info.guest.type
    assert [v.vcpu for v in st.vcpus if v.online] == info.vcpus.online
    for v in st.vcpus:
        if v.online:
            assert v.regs.get("rip", 0) != 0 and v.control.get("cr3", 0) != 0, v
    rows = list(records(path))
    types = [r.type for r in rows]
    assert types.count("END") >= 1 and "PAGE_DATA" in types
    assert ("X86_PV_VCPU_BASIC" in types) == (key in PV_IMAGES)
    assert ("HVM_CONTEXT" in types) == (key not in PV_IMAGES)
    # the folded PAGE_DATA runs carry every page info counted (data pages)
    pages = sum(int(r.fields["pages"]) for r in rows if r.type == "PAGE_DATA")
    assert pages == mem.data_pages >= mem.resident_pages


@pytest.mark.parametrize("key", ["pv1", "pvh", "pvh-migrate"])
def test_extract_memory_of_real_image(xen: Any, key: str, tmp_path: Path) -> None:
    """extract-memory on images the real Xen saved: the raw file holds the
    guest's pages at pfn * 4096 (the running Linux kernel's banner among them,
    as Volatility 3's banners plugin finds it), the ELF core holds the same
    pages (read back with pyelftools), and every vcpu is a NT_PRSTATUS note."""
    import shutil

    from elftools.elf.elffile import ELFFile

    from xenstream.consumers.info import summary
    from xenstream.consumers.memory import extract_memory

    im = results(xen)["images"].get(key)
    assert im and im.get("copied"), f"{key} was not copied out"
    path = str(xen.out / im["copied"])
    info = summary(path)
    raw, elf = tmp_path / "mem.raw", tmp_path / "mem.elf"
    res = extract_memory(path, str(raw), format="raw", durable=False)
    assert res.pages == info.memory.resident_pages
    assert raw.stat().st_size <= (info.memory.highest_pfn + 1) * 4096
    data = raw.read_bytes()
    at = data.find(b"Linux version ")
    assert at > 0, "no Linux banner in the guest's memory"
    extract_memory(path, str(elf), format="elf", durable=False)
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        loads = [s for s in ef.iter_segments() if s["p_type"] == "PT_LOAD"]
        covered = sum(s["p_memsz"] for s in loads) // 4096
        assert covered == info.memory.resident_pages
        seg = next(s for s in loads if s["p_paddr"] <= at < s["p_paddr"] + s["p_memsz"])
        f.seek(seg["p_offset"] + at - seg["p_paddr"])
        assert f.read(64) == data[at : at + 64]
        notes = [n for s in ef.iter_segments() if s["p_type"] == "PT_NOTE"
                 for n in s.iter_notes() if n["n_type"] == "NT_PRSTATUS"]
        assert len(notes) == len(info.vcpus.online)
    vol = shutil.which("vol") or shutil.which("vol", path=os.path.dirname(sys.executable))
    assert vol is not None, "Volatility 3 (the test extra) is not installed"
    if key == "pvh":
        p = subprocess.run([vol, "-q", "-f", str(raw), "banners.Banners"], capture_output=True,
                           text=True, timeout=600)
        assert "Linux version" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
