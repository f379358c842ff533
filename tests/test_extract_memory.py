"""xenstream extract-memory: raw, ELF core and xen dump-core outputs of
writer-built images of every kind, read back with pyelftools and os.pread
(never with xenstream's parser), and opened by the real consumers: gdb and
Volatility 3."""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest
from elftools.elf.elffile import ELFFile

from envelope_helpers import exe, feeder, read_all, run
from extract_helpers import (
    BANNER,
    BANNER_OFF,
    BANNER_PFN,
    PAGE,
    RIP,
    RSP,
    Built,
    check_elf,
    check_raw,
    check_xen_core,
    legacy_image,
    page,
    run_tool,
    runs,
    tool,
    v2_image,
    with_banner,
)
from xenstream.consumers.memory import extract_memory
from xenstream.consumers.pfnset import CHUNK, PfnMap
from xenstream.writers import elfcore
from xenstream.writers.legacy import LegacyWriter
from xenstream.writers.v2 import LibxcWriter

FORMATS = ["raw", "elf", "xen-core"]
CHECKS = {"raw": lambda p, b: check_raw(p, b.pages), "elf": check_elf,
          "xen-core": check_xen_core}


def extract(tmp_path: Path, built: Built, fmt: str, name: str = "out") -> Path:
    img = tmp_path / "image.bin"
    img.write_bytes(built.data)
    out = tmp_path / f"{name}.{fmt}"
    res = extract_memory(str(img), str(out), format=fmt, tmpdir=str(tmp_path))
    assert res.pages == len(built.pages)
    assert res.checkpoints == built.checkpoints
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return out


def extract_all(tmp_path: Path, built: Built) -> None:
    for fmt in FORMATS:
        CHECKS[fmt](extract(tmp_path, built, fmt), built)


# -- the bitmap -----------------------------------------------------------------------------


def test_pfnmap_against_a_set() -> None:
    import random

    rnd = random.Random(7)
    for _ in range(200):
        m, ref = PfnMap(), set()
        lim = rnd.choice([64, 3000, 3 * CHUNK + 5])
        for _ in range(rnd.randint(1, 25)):
            a = rnd.randrange(lim)
            b = min(lim, a + rnd.choice([1, 3, 64, 999, CHUNK, 2 * CHUNK]))
            if rnd.random() < 0.7:
                m.add(a, b)
                ref.update(range(a, b))
            else:
                m.discard(a, b)
                ref.difference_update(range(a, b))
        assert m.count() == len(ref)
        assert m.highest() == (max(ref) if ref else None)
        assert [p for s, e in m.runs() for p in range(s, e)] == sorted(ref)
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(list(m.runs()), list(m.runs())[1:]))
        assert all((p in m) == (p in ref) for p in rnd.sample(range(lim), 40))
        for p in rnd.sample(range(lim), 10):
            base = p - p % CHUNK
            assert m.below_in_chunk(p) == sum(1 for q in range(base, p) if q in ref)
        a = rnd.randrange(lim)
        b = min(lim, a + rnd.randrange(1, 3 * CHUNK))
        segs = m.segments(a, b)
        assert segs[0][0] == a and segs[-1][1] == b
        assert all(e1 == s2 for (_, e1, _), (s2, _, _) in zip(segs, segs[1:]))
        assert all(all((q in ref) == inside for q in range(s, e)) for s, e, inside in segs)
        assert all(x[2] != y[2] for x, y in zip(segs, segs[1:]))


def test_pfnmap_full_chunks_are_shared() -> None:
    """A fully populated 1 TiB guest costs a dictionary entry per chunk."""
    m = PfnMap()
    m.add(0, 1 << 28)
    assert m.count() == 1 << 28 and list(m.runs()) == [(0, 1 << 28)]
    assert len({id(c) for c in m._chunks.values()}) == 1
    m.add((1 << 51) + 3, (1 << 51) + 5)  # a pfn far away costs one chunk
    assert m.highest() == (1 << 51) + 4 and len(m._chunks) == (1 << 28) // CHUNK + 1


# -- v2 images: every envelope, guest and version ---------------------------------------------


@pytest.mark.parametrize("envelope", ["libxc", "libxl", "xl", "libvirt", "xenopsd"])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_v2_every_envelope(tmp_path: Path, envelope: str, guest: str) -> None:
    extract_all(tmp_path, v2_image(envelope, guest))


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("guest,width", [("hvm", 8), ("pv", 8), ("pv", 4)])
def test_v2_versions_and_widths(tmp_path: Path, version: int, guest: str, width: int) -> None:
    extract_all(tmp_path, v2_image("libxl", guest, version=version, width=width, vcpus=3))


@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_v2_verify_resend_carries_no_data(tmp_path: Path, guest: str) -> None:
    """After VERIFY every page comes again with other contents: compared by the
    restorer, not copied."""
    built = v2_image("xl", guest, verify=True)
    assert page(0, 99) not in built.pages.values()
    extract_all(tmp_path, built)


def test_v2_pages_sent_twice_last_copy_wins(tmp_path: Path) -> None:
    built = v2_image("xl", "hvm", live=True)
    assert built.pages[5] == page(5, 1) and built.pages[9] == page(9, 0)
    out = extract(tmp_path, built, "raw")
    with open(out, "rb") as f:
        assert os.pread(f.fileno(), PAGE, 5 * PAGE) == page(5, 1)
    check_raw(out, built.pages)


def test_v2_xtab_broken_xalloc_carry_no_data(tmp_path: Path) -> None:
    built = v2_image("libxc", "pv")
    assert not {33, 34, 35} & set(built.pages)
    out = extract(tmp_path, built, "xen-core")
    check_xen_core(out, built)


@pytest.mark.parametrize("colo", [False, True], ids=["remus", "colo"])
@pytest.mark.parametrize("cut", [None, "inside", "boundary", "end"])
@pytest.mark.parametrize("guest", ["hvm", "pv"])
def test_v2_checkpoints(tmp_path: Path, guest: str, cut: str, colo: bool) -> None:
    """Later checkpoints resend pages and add new ones; a checkpoint the stream
    ends inside (cut in a record, at a record boundary, or by END) is dropped."""
    built = v2_image("xl", guest, checkpoints=3, colo=colo, cut=cut)
    assert built.checkpoints == 3 and built.pages[BANNER_PFN] == with_banner(
        page(BANNER_PFN, 3), BANNER_PFN)
    assert 36 in built.pages and 38 not in built.pages
    extract_all(tmp_path, built)


@pytest.mark.parametrize("cut", [None, "inside"])
def test_v2_bare_libxc_checkpoints(tmp_path: Path, cut: str) -> None:
    extract_all(tmp_path, v2_image("libxc", "hvm", checkpoints=2, cut=cut))


def test_v2_failover_is_reported(tmp_path: Path) -> None:
    built = v2_image("xl", "hvm", checkpoints=2, cut="inside")
    img = tmp_path / "img"
    img.write_bytes(built.data)
    p = run([exe("xenstream"), "extract-memory", str(img), "-o", str(tmp_path / "o.raw")],
            expect=0)
    assert "inside checkpoint 3" in p.stderr and "checkpoint 2, as a failover" in p.stderr


def test_v2_truncated_plain_stream_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    built = v2_image("xl", "hvm")
    img = tmp_path / "img"
    img.write_bytes(built.data[:len(built.data) // 2])
    out = tmp_path / "o.elf"
    out.write_bytes(b"keep me")
    p = run([exe("xenstream"), "extract-memory", "--format", "elf", str(img), "-o", str(out)],
            expect=1)
    assert re.match(r"^\S+: offset 0x[0-9a-f]+[:,] ", p.stderr) and p.stderr.count("\n") == 1
    assert out.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["img", "o.elf"]


def test_a_checkpointed_stream_without_a_complete_checkpoint_is_an_error(tmp_path: Path) -> None:
    built = v2_image("xl", "hvm", checkpoints=1)
    img = tmp_path / "img"
    img.write_bytes(built.data[:len(built.data) - 40])  # inside the first libxl section
    p = run([exe("xenstream"), "extract-memory", str(img), "-o", str(tmp_path / "o")],
            expect=1)
    assert "offset" in p.stderr and not (tmp_path / "o").exists()


# -- legacy images ----------------------------------------------------------------------------


LEGACY = {
    "pv64": dict(guest="pv", width=8, guest_width=8),
    "pv32": dict(guest="pv", width=4, guest_width=4),
    "pv32-on-64": dict(guest="pv", width=8, guest_width=4),
    "hvm64": dict(guest="hvm", width=8),
    "hvm32": dict(guest="hvm", width=4),
    "pv-live-unmapped": dict(guest="pv", live=True, unmapped=[7, 20], vcpus=3),
    "hvm-live-xalloc": dict(guest="hvm", live=True, vcpus=2),
    "pv-broken-holes": dict(guest="pv", broken=[9], holes=[11, 12]),
    "pv-verify": dict(guest="pv", verify_mode=True),
    "hvm-verify": dict(guest="hvm", verify_mode=True),
    "pv-xsave-offline": dict(guest="pv", xsave=True, vcpus=3, offline_vcpus=[1]),
    "pv-batches-of-5": dict(guest="pv", batch=5),
}


@pytest.mark.parametrize("kind", list(LEGACY))
def test_legacy_dialects(tmp_path: Path, kind: str) -> None:
    extract_all(tmp_path, legacy_image(pages=80, **LEGACY[kind]))  # type: ignore[arg-type]


@pytest.mark.parametrize("envelope", ["bare", "xl", "libvirt", "xend", "xenopsd"])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_every_envelope(tmp_path: Path, envelope: str, guest: str) -> None:
    extract_all(tmp_path, legacy_image(guest=guest, envelope=envelope, pages=48))


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compressed"])
@pytest.mark.parametrize("cut", [None, 3], ids=["complete", "cut-in-3"])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_remus(tmp_path: Path, guest: str, compression: bool, cut: Any) -> None:
    built = legacy_image(guest=guest, pages=64, checkpoints=4, compression=compression,
                         compressed_chunk_size=5000, truncate_in_checkpoint=cut,
                         qemu="remus" if guest == "hvm" else None)
    assert built.checkpoints == (2 if cut else 4)
    extract_all(tmp_path, built)


# -- inputs and outputs ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["v2-remus", "legacy-compressed"])
def test_pipe_input_gives_the_same_output(tmp_path: Path, fmt: str, which: str) -> None:
    built = (v2_image("xl", "pv", checkpoints=3, cut="inside") if which == "v2-remus" else
             legacy_image(guest="pv", pages=64, checkpoints=3, compression=True,
                          truncate_in_checkpoint=3))
    ref = extract(tmp_path, built, fmt, "file")
    r, w = os.pipe()
    t = feeder(w, built.data, chunk=3000)
    out = tmp_path / f"pipe.{fmt}"
    try:
        res = extract_memory(r, str(out), format=fmt, tmpdir=str(tmp_path))
    finally:
        os.close(r)
        t.join()
    assert res.pages == len(built.pages)
    assert out.read_bytes() == ref.read_bytes()
    CHECKS[fmt](out, built)


@pytest.mark.parametrize("which", ["ordered", "checkpointed"])
def test_raw_to_a_pipe_writes_the_holes_as_zeros(tmp_path: Path, which: str) -> None:
    built = v2_image("xl", "hvm") if which == "ordered" else legacy_image(
        guest="pv", pages=64, checkpoints=3, compression=True, unmapped=[5])
    img = tmp_path / "img"
    img.write_bytes(built.data)
    r, w = os.pipe()
    p = subprocess.Popen([exe("xenstream"), "extract-memory", str(img), "-o", "-", "--tmpdir",
                          str(tmp_path)], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    data = read_all(r)
    os.close(r)
    assert p.wait() == 0 and b"Traceback" not in p.stderr.read()  # type: ignore[union-attr]
    top = max(built.pages)
    assert len(data) == (top + 1) * PAGE
    for pfn in range(top + 1):
        assert data[pfn * PAGE:(pfn + 1) * PAGE] == built.pages.get(pfn, bytes(PAGE)), pfn
    assert os.listdir(tmp_path) == ["img"]  # the staging files are gone


def test_raw_to_stdout_redirected_to_a_file(tmp_path: Path) -> None:
    built = v2_image("libxl", "hvm")
    img = tmp_path / "img"
    img.write_bytes(built.data)
    out = tmp_path / "out.raw"
    with open(out, "wb") as f:
        f.write(b"x" * 100000)  # truncated by the redirection? not here: by us
        f.seek(0)
        p = subprocess.run([exe("xenstream"), "extract-memory", "-q", str(img), "-o", "-"],
                           stdout=f, stderr=subprocess.PIPE)
    assert p.returncode == 0 and p.stderr == b""
    check_raw(out, built.pages)


@pytest.mark.parametrize("fmt", ["elf", "xen-core"])
def test_elf_and_xen_core_need_a_seekable_output(tmp_path: Path, fmt: str) -> None:
    img = tmp_path / "img"
    img.write_bytes(v2_image("xl", "hvm").data)
    p = subprocess.run([exe("xenstream"), "extract-memory", "--format", fmt, str(img), "-o",
                        "-"], capture_output=True, text=True)
    assert p.returncode == 2 and "needs a seekable output" in p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr


def test_a_pfn_the_output_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    """A page whose offset lies beyond the largest file the target takes (here
    RLIMIT_FSIZE stands in for ext4's 16 TiB) is one line naming the pfn."""
    buf = io.BytesIO()
    w = LibxcWriter(buf)
    w.headers("hvm")
    w.page_data([0, 1], 0, [page(0, 0), page(1, 0)])
    w.page_data([0x300], 0, [page(0x300, 0)])  # offset 3 MiB
    w.hvm_context(b"")
    w.end()
    img = tmp_path / "img"
    img.write_bytes(buf.getvalue())

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    p = subprocess.run([exe("xenstream"), "extract-memory", str(img), "-o",
                        str(tmp_path / "o.raw")], capture_output=True, text=True,
                       preexec_fn=limit)
    assert p.returncode == 1, p.stderr
    assert "pfn 0x300 needs offset 0x300000" in p.stderr and "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == ["img"]


@pytest.mark.parametrize("order", ["ascending", "new-pfn-below"])
def test_xen_core_dense_pages(tmp_path: Path, order: str) -> None:
    """.xen_pages is dense: pages go straight to their index while new pfns come
    in ascending order (resends go to their index too); a new pfn below the
    top moves the pages above the holes, once, to close the gaps at the end."""
    buf = io.BytesIO()
    w = LibxcWriter(buf)
    w.headers("hvm")
    pages = {p: page(p, 0) for p in [0, 1, 2] + list(range(300, 700)) + [5000, 5001]}
    pfns = sorted(pages)
    for i in range(0, len(pfns), 64):
        chunk = pfns[i:i + 64]
        w.page_data(chunk, 0, [pages[p] for p in chunk])
    w.page_data([1, 301, 5001], 0, [page(1, 5), page(301, 5), page(5001, 5)])  # resends
    pages.update({1: page(1, 5), 301: page(301, 5), 5001: page(5001, 5)})
    if order == "new-pfn-below":
        w.page_data([100, 101], 0, [page(100, 0), page(101, 0)])
        pages.update({100: page(100, 0), 101: page(101, 0)})
    w.hvm_context(b"")
    w.end()
    img = tmp_path / "img"
    img.write_bytes(buf.getvalue())
    out = tmp_path / "o.core"
    res = extract_memory(str(img), str(out), format="xen-core")
    if order == "new-pfn-below":
        assert res.moved_pages > 0
    else:
        assert res.moved_pages == 0
    check_xen_core(out, Built(b"", pages, "hvm"))
    assert out.stat().st_size < (len(pages) + 8) * PAGE  # no hole left behind the pages


@pytest.mark.parametrize("cut", [None, "inside"])
def test_xen_core_dense_through_checkpoints(tmp_path: Path, cut: Any) -> None:
    """Later checkpoints add pfns of the hole (below the top): the store spreads."""
    built = v2_image("libxl", "hvm", checkpoints=3, cut=cut)
    check_xen_core(extract(tmp_path, built, "xen-core"), built)


def test_elf_extended_numbering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 65534 program headers e_phnum is PN_XNUM and section header 0
    holds the count (reached here with the threshold lowered)."""
    monkeypatch.setattr(elfcore, "PHNUM_MAX", 2)
    built = v2_image("xl", "pv")
    out = extract(tmp_path, built, "elf")
    with open(out, "rb") as f:
        e = ELFFile(f)
        assert e["e_phnum"] == 0xFFFF and e.num_segments() == 1 + len(runs(list(built.pages)))
    check_elf(out, built)


def test_result_and_summary_line(tmp_path: Path) -> None:
    built = v2_image("xl", "pv", vcpus=3)
    img = tmp_path / "img"
    img.write_bytes(built.data)
    p = run([exe("xenstream"), "extract-memory", "--format", "elf", str(img), "-o",
             str(tmp_path / "o")], expect=0)
    assert (f"elf, PV 64-bit, {len(built.pages)} pages in 2 runs, highest pfn 0x5f, 3 vcpus"
            in p.stderr)


def test_help_has_examples() -> None:
    for cmd in ("extract-memory", "extract"):
        p = run([exe("xenstream"), cmd, "--help"], expect=0)
        assert "examples:" in p.stdout and "exit status" in p.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    p = run([exe("xenstream"), "extract-memory", str(tmp_path / "missing"), "-o",
             str(tmp_path / "o")], expect=2)
    assert "cannot open" in p.stderr
    p = run([exe("xenstream"), "extract-memory", "x", "-o", "y", "--format", "pdf"], expect=2)


def test_not_an_image_is_exit_1(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.write_bytes(b"hello world, not an image" * 10)
    p = run([exe("xenstream"), "extract-memory", str(img), "-o", str(tmp_path / "o")], expect=1)
    assert "offset 0x0" in p.stderr and not (tmp_path / "o").exists()


# -- gdb -------------------------------------------------------------------------------------


GDB_IMAGES = {
    "v2-hvm": lambda: v2_image("xl", "hvm", checkpoints=2, cut="inside"),
    "v2-pv": lambda: v2_image("libxc", "pv"),
    "v2-pv32": lambda: v2_image("libxl", "pv", width=4),
}


def _gdb(gdb: str, core: Path, *cmds: str) -> str:
    argv = [gdb, "-nx", "-batch"]
    for c in cmds:
        argv += ["-ex", c]
    return run_tool(argv + ["-core", str(core)])


@pytest.mark.parametrize("which", list(GDB_IMAGES))
def test_gdb_reads_memory_and_registers(tmp_path: Path, which: str) -> None:
    gdb = tool("gdb")
    built = GDB_IMAGES[which]()
    out = extract(tmp_path, built, "elf")
    addr = BANNER_PFN * PAGE + BANNER_OFF - 0x40
    text = _gdb(gdb, out, f"x/8gx {addr:#x}", "info registers rip rsp")
    want = struct.unpack_from("<8Q", built.pages[BANNER_PFN], BANNER_OFF - 0x40)
    rows = [line.split(":", 1)[1] for line in text.splitlines()
            if re.match(r"^0x[0-9a-f]+:\s", line)]
    got = [int(x, 16) for row in rows for x in row.split()]
    assert got == list(want), text
    rip, rsp = built.regs[0]
    assert re.search(rf"^rip\s+{rip:#x}\b", text, re.M), text
    assert re.search(rf"^rsp\s+{rsp:#x}\b", text, re.M), text


def test_gdb_sees_every_vcpu_as_a_thread(tmp_path: Path) -> None:
    gdb = tool("gdb")
    built = v2_image("xl", "hvm", vcpus=3, checkpoints=0)
    text = _gdb(gdb, extract(tmp_path, built, "elf"), "info threads",
                "thread 3", "info registers rip")
    assert len(re.findall(r"LWP [123]\b", text)) >= 3
    assert re.search(rf"^rip\s+{built.regs[2][0]:#x}\b", text, re.M), text


def test_gdb_reads_a_legacy_pv_core(tmp_path: Path) -> None:
    """A legacy image built by hand: the banner page and vcpu 0's rip/rsp."""
    gdb = tool("gdb")
    buf = io.BytesIO()
    w = LegacyWriter(buf, width=8, guest="pv", guest_width=8)
    w.header(32)
    pages = {p: with_banner(page(p, 0), p) for p in range(32)}
    w.batch(list(range(32)), 0, [pages[p] for p in range(32)])
    w.vcpu_info(0, [0])
    w.last_checkpoint()
    w.end_of_body()
    from extract_helpers import pv_context

    w.pv_tail([], [(pv_context(8, RIP, RSP), None, None)], bytes(PAGE))
    built = Built(buf.getvalue(), pages, "pv", 8, {0: (RIP, RSP)}, bytes(PAGE))
    out = extract(tmp_path, built, "elf")
    text = _gdb(gdb, out, f"x/s {BANNER_PFN * PAGE + BANNER_OFF:#x}", "info registers rip rsp")
    assert "Linux version 5.10.0-21-xenstream" in text
    assert re.search(rf"^rip\s+{RIP:#x}\b", text, re.M) and re.search(
        rf"^rsp\s+{RSP:#x}\b", text, re.M), text


# -- Volatility 3 -----------------------------------------------------------------------------


def _banners(vol: str, path: Path) -> Dict[int, str]:
    text = run_tool([vol, "-q", "-r", "csv", "-f", str(path), "banners.Banners"])
    found = {}
    for line in text.splitlines():
        m = re.match(r'^\S*,?(0x[0-9a-f]+),"?(Linux version [^"]*)', line)
        if m:
            found[int(m.group(1), 16)] = m.group(2)
    return found


VOL_IMAGES = {
    "v2-hvm-remus": lambda: v2_image("xl", "hvm", checkpoints=2, cut="inside"),
    "legacy-hvm": lambda: _legacy_with_banner("hvm"),
}


def _legacy_with_banner(guest: str) -> Built:
    buf = io.BytesIO()
    w = LegacyWriter(buf, width=8, guest=guest, guest_width=8)
    n = 48
    w.header(n)
    pages = {p: with_banner(page(p, 0), p) for p in range(n) if p != 30}
    order = sorted(pages)
    w.batch(order, 0, [pages[p] for p in order])
    w.vcpu_info(0, [0])
    w.last_checkpoint()
    w.end_of_body()
    from xenstream.formats import hvm

    w.hvm_tail((n - 2, n - 3, n - 1), hvm.sample_context(1))
    w.qemu_record(b"QEVM\0\0\0\3" + bytes(64))
    return Built(buf.getvalue(), pages, guest, 8, {0: (0xFFF0, 0)})


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", list(VOL_IMAGES))
def test_volatility_finds_the_banner_at_its_physical_address(tmp_path: Path, fmt: str,
                                                              which: str) -> None:
    """banners.Banners reports the guest-physical address: the ELF and
    XenCoreDumpLayer layers stacked (an unstacked file reports the file
    offset, which differs by at least the header page)."""
    vol = tool("vol")
    built = VOL_IMAGES[which]()
    assert BANNER_PFN != 0 and max(built.pages) > BANNER_PFN
    out = extract(tmp_path, built, fmt)
    found = _banners(vol, out)
    assert found.get(BANNER_PFN * PAGE + BANNER_OFF, "").startswith(
        BANNER[:-2].decode()), found
    assert len(found) == 1, found


def test_volatility_reads_a_pv_guest_from_its_elf_core(tmp_path: Path) -> None:
    vol = tool("vol")
    built = v2_image("xl", "pv")
    found = _banners(vol, extract(tmp_path, built, "elf"))
    assert list(found) == [BANNER_PFN * PAGE + BANNER_OFF]


@pytest.mark.xfail(strict=True, reason="Volatility 3 (2.28) XenCoreDumpLayer reads .xen_p2m "
                   "entries as plain integers (xen.json's xen_p2m type), so no PV dump-core "
                   "stacks; the banner is then found at its file offset")
def test_volatility_reads_a_pv_xen_core(tmp_path: Path) -> None:
    vol = tool("vol")
    built = v2_image("xl", "pv")
    found = _banners(vol, extract(tmp_path, built, "xen-core"))
    assert list(found) == [BANNER_PFN * PAGE + BANNER_OFF]


# -- the library --------------------------------------------------------------------------------


def test_library_result(tmp_path: Path) -> None:
    built = legacy_image(guest="pv", pages=40, vcpus=2, checkpoints=3, truncate_in_checkpoint=3)
    img = tmp_path / "img"
    img.write_bytes(built.data)
    res = extract_memory(str(img), str(tmp_path / "o"), format="elf")
    assert (res.guest, res.guest_width, res.pages, res.highest_pfn, res.vcpus,
            res.checkpoints) == ("pv", 8, len(built.pages), max(built.pages), [0, 1], 2)
    assert len(res.warnings) == 1 and "checkpoint 3" in res.warnings[0]

