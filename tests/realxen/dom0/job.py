"""The real-Xen job, run in dom0 by boot.sh: ``python3 job.py SHARE``.

Boots small guests, saves them every way the issue asks, verifies the images
with our commands, rewrites saves as Xen 4.5 legacy images, restores
everything (judging each restore by the guest's console heartbeat), builds
broken images and tries them on both xenstream and Xen.  Facts only: the
host-side tests assert on ``out/results.json``; the images are copied to
``out/images/``.  Results are written after every step, so a job cut short
by the harness's timeout still reports what it did.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SHARE = Path(sys.argv[1] if len(sys.argv) > 1 else "/mnt/share")
OUT = SHARE / "out"
IMG = Path("/root/img")
CFG = Path("/root/cfg")
CONSOLE = Path("/var/log/xen/console")
DEBIAN_BIN = "/usr/lib/xen-4.17/bin"
DEBIAN_PY = "/usr/lib/xen-4.17/lib/python"
MEMORY_MB = 128
sys.path.insert(0, str(SHARE))

import mutate  # noqa: E402
import v2legacy  # noqa: E402

R: Dict[str, Any] = {"started": time.time(), "images": {}, "verify": {}, "restores": {},
                     "negatives": {}, "legacy": {}, "migrate": {}, "errors": [], "done": False}
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}] {msg}", flush=True)


def save_results() -> None:
    tmp = OUT / "results.json.tmp"
    tmp.write_text(json.dumps(R, indent=1, sort_keys=True))
    os.replace(tmp, OUT / "results.json")


def sh(cmd: Sequence[str], *, timeout: float = 180, env: Optional[Dict[str, str]] = None,
       quiet: bool = False) -> Dict[str, Any]:
    t = time.monotonic()
    try:
        p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=None if env is None else {**os.environ, **env})
        rc: Optional[int] = p.returncode
        out = p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        rc = None
        out = (e.stdout or b"").decode(errors="replace") + f"\n[timeout after {timeout} s]"
    dt = round(time.monotonic() - t, 1)
    if not quiet:
        say(f"$ {' '.join(cmd)} -> {rc} ({dt} s)")
        for line in out.splitlines()[-12:]:
            print("    " + line, flush=True)
    return {"cmd": list(cmd), "rc": rc, "out": out[-20000:], "seconds": dt}


def step(name: str):  # decorator: run, record exceptions, save results
    def wrap(fn):  # type: ignore[no-untyped-def]
        def run(*a, **kw):  # type: ignore[no-untyped-def]
            say(f"== {name}")
            try:
                return fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - record and go on
                import traceback
                R["errors"].append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                say(f"!! {name}: {e}")
                return None
            finally:
                save_results()
        return run
    return wrap


# -- consoles and heartbeats --------------------------------------------------------------

HB = re.compile(rb"heartbeat (\d+)")


def console_sizes() -> Dict[str, int]:
    return {p.name: p.stat().st_size for p in CONSOLE.glob("guest-*.log")}


def new_console(since: Dict[str, int], prefix: str) -> bytes:
    out = b""
    for p in sorted(CONSOLE.glob(f"guest-{prefix}*.log")):
        with open(p, "rb") as f:
            f.seek(since.get(p.name, 0))
            out += f.read()
    return out


def heartbeats(data: bytes) -> List[int]:
    return [int(m.group(1)) for m in HB.finditer(data)]


def last_heartbeat(name: str) -> int:
    hb = heartbeats(new_console({}, name))
    return hb[-1] if hb else 0


def watch(name: str, since: Dict[str, int], *, after: int, want: int = 3,
          timeout: float = 45) -> Dict[str, Any]:
    """Wait for ``want`` heartbeats above ``after`` in the console written since ``since``."""
    t = time.monotonic()
    hb: List[int] = []
    while time.monotonic() - t < timeout:
        hb = heartbeats(new_console(since, name))
        if len([h for h in hb if h > after]) >= want:
            break
        time.sleep(1)
    text = new_console(since, name).decode(errors="replace")
    above = [h for h in hb if h > after]
    return {"heartbeats": hb, "after": after, "waited": round(time.monotonic() - t, 1),
            "advancing": len(above) >= 2 and above == sorted(set(above)),
            "console_tail": text[-3000:],
            "oops": bool(re.search(r"Oops|BUG:|general protection|Kernel panic|segfault", text))}


# -- domains --------------------------------------------------------------------------------


def domains() -> Dict[str, int]:
    r = sh(["xl", "list"], quiet=True)
    out = {}
    for line in r["out"].splitlines()[1:]:
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            out[f[0]] = int(f[1])
    return out


def destroy_all() -> None:
    for name in domains():
        if name != "Domain-0":
            sh(["xl", "destroy", name], timeout=60)


KERNEL = sorted(glob.glob("/boot/vmlinuz-*"))[-1]
RAMDISK = "/root/guest-initrd.gz"


def write_cfg(name: str, gtype: str, vcpus: int, maxvcpus: Optional[int] = None) -> Path:
    lines = [f'name = "{name}"', f'type = "{gtype}"', f'kernel = "{KERNEL}"',
             f'ramdisk = "{RAMDISK}"', 'extra = "console=hvc0 loglevel=4"',
             f"memory = {MEMORY_MB}", f"vcpus = {vcpus}", 'on_crash = "preserve"']
    if maxvcpus:
        lines.append(f"maxvcpus = {maxvcpus}")
    if gtype == "pvh":
        lines += ['tsc_mode = "native"', 'cpuid = "host,rdtscp=0"']
    p = CFG / f"{name}.cfg"
    p.write_text("\n".join(lines) + "\n")
    return p


def create(name: str, gtype: str, vcpus: int, maxvcpus: Optional[int] = None) -> bool:
    cfg = write_cfg(name, gtype, vcpus, maxvcpus)
    since = console_sizes()
    r = sh(["xl", "create", "-e", str(cfg)], timeout=180)
    w = watch(name, since, after=0, want=3, timeout=180) if r["rc"] == 0 else None
    R["images"].setdefault("_boots", {})[name] = {"create": r, "watch": w}
    return bool(w and w["advancing"])


def record_image(key: str, path: Path, how: str, guest: str, hb_before: int,
                 save: Dict[str, Any]) -> None:
    R["images"][key] = {"path": str(path), "how": how, "guest": guest, "hb_before": hb_before,
                        "save": save, "size": path.stat().st_size if path.exists() else None}


def xl_save(key: str, name: str, args: Sequence[str], how: str) -> None:
    dest = IMG / f"{key}.xl"
    hb = last_heartbeat(name)
    r = sh(["xl", "save", *args, name, str(dest)], timeout=240)
    record_image(key, dest, how, name, hb, r)


def xl_save_fifo(key: str, name: str, args: Sequence[str], how: str) -> None:
    fifo = IMG / f"{key}.fifo"
    dest = IMG / f"{key}.xl"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    got: Dict[str, int] = {}

    def reader() -> None:
        with open(fifo, "rb") as f, open(dest, "wb") as g:
            got["bytes"] = shutil.copyfileobj(f, g, 1 << 20) or dest.stat().st_size

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    hb = last_heartbeat(name)
    r = sh(["xl", "save", *args, name, str(fifo)], timeout=240)
    th.join(60)
    r["reader_done"] = not th.is_alive()
    record_image(key, dest, how, name, hb, r)
    fifo.unlink()


# -- steps ---------------------------------------------------------------------------------


@step("setup")
def setup() -> None:
    for d in (IMG, CFG, OUT / "images"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARE / "guest-initrd.gz", RAMDISK)
    R["xl_info"] = sh(["xl", "info"])["out"]
    R["kernel"] = KERNEL
    R["xenstream_version"] = sh(["xenstream", "--version"])["out"].strip()


@step("pv1: boot, PV live migration attempt, saves -c, -p, FIFO, plain")
def pv1() -> None:
    if not create("pv1", "pv", 1):
        raise RuntimeError("pv1 did not boot")
    send = IMG / "pv1-migrate.send"
    rune = f"tee {send} | xl -v migrate-receive -e 2>{IMG}/pv1-migrate.recv-err | tee {IMG}/pv1-migrate.recv"
    since = console_sizes()
    hb = last_heartbeat("pv1")
    m = sh(["xl", "-v", "migrate", "-s", "", "pv1", rune], timeout=300)
    m["domains_after"] = domains()
    m["recv_err"] = (IMG / "pv1-migrate.recv-err").read_text(errors="replace")[-4000:] \
        if (IMG / "pv1-migrate.recv-err").exists() else None
    m["send_size"] = send.stat().st_size if send.exists() else None
    for n in list(m["domains_after"]):
        if n.startswith("pv1--"):
            sh(["xl", "destroy", n])
    m["watch"] = watch("pv1", since, after=hb, want=2, timeout=30)
    R["migrate"]["pv"] = m
    if "pv1" not in domains():
        raise RuntimeError("pv1 gone after the migration attempt")
    xl_save("pv1-ckpt", "pv1", ["-c"], "xl save -c (checkpoint, guest left running)")
    xl_save("pv1-paused", "pv1", ["-p"], "xl save -p (guest left paused, then unpaused)")
    sh(["xl", "unpause", "pv1"])
    time.sleep(3)
    xl_save_fifo("pv1-fifo", "pv1", ["-c"], "xl save -c into a FIFO (cat-like reader)")
    time.sleep(3)
    xl_save("pv1", "pv1", [], "xl save (plain: guest destroyed)")
    destroy_all()


@step("pv2: 2 vcpus, plain save")
def pv2() -> None:
    if not create("pv2", "pv", 2):
        raise RuntimeError("pv2 did not boot")
    xl_save("pv2", "pv2", [], "xl save, vcpus=2")
    destroy_all()


@step("pvmax: vcpus=1 maxvcpus=2, plain save")
def pvmax() -> None:
    if not create("pvmax", "pv", 1, maxvcpus=2):
        raise RuntimeError("pvmax did not boot")
    xl_save("pvmax", "pvmax", [], "xl save, vcpus=1 maxvcpus=2")
    destroy_all()


@step("pvh: boot, live migration captured, plain save")
def pvh() -> None:
    if not create("pvh", "pvh", 1):
        raise RuntimeError("pvh did not boot")
    send = IMG / "pvh-migrate.xl"
    hb = last_heartbeat("pvh")
    since = console_sizes()
    rune = f"tee {send} | xl -v migrate-receive -e 2>{IMG}/pvh-migrate.recv-err | tee {IMG}/pvh-migrate.recv"
    m = sh(["xl", "-v", "migrate", "-s", "", "pvh", rune], timeout=400)
    m["domains_after"] = domains()
    m["recv_err"] = (IMG / "pvh-migrate.recv-err").read_text(errors="replace")[-4000:] \
        if (IMG / "pvh-migrate.recv-err").exists() else None
    # the sender's console (guest-pvh.log) ran on during the live phase; the
    # receiver writes guest-pvh--incoming.log (xenconsoled names a log once)
    hb_sent = max(heartbeats(new_console(since, "pvh")) or [hb])
    m["hb_sender_last"] = hb_sent
    m["watch"] = watch("pvh", console_sizes(), after=hb_sent, want=2, timeout=45)
    R["migrate"]["pvh"] = m
    record_image("pvh-migrate", send, "xl migrate -s '' pvh \"tee SEND | xl migrate-receive\" "
                 "(the send side, live)", "pvh", hb, m)
    if "pvh" in domains():
        xl_save("pvh", "pvh", [], "xl save of the migrated PVH guest")
    destroy_all()


def verify_image(key: str, path: Path) -> Dict[str, Any]:
    v: Dict[str, Any] = {}
    v["xenstream_verify"] = sh(["xenstream", "verify", str(path)], timeout=300)
    v["verify_stream_v2"] = sh(["verify-stream-v2", "-i", str(path)], timeout=300)
    v["config"] = sh(["xenstream", "config", "--json", str(path)], timeout=120)
    R["verify"][key] = v
    return v


@step("verify the real images in dom0")
def verify_all() -> None:
    for key, im in sorted(R["images"].items()):
        if key.startswith("_") or not im.get("size"):
            continue
        verify_image(key, Path(im["path"]))
        save_results()
    # Debian's own verifier as a baseline, on two images
    for key in ("pv1", "pvh"):
        im = R["images"].get(key)
        if im and im.get("size"):
            R["verify"][key]["debian_verify_stream_v2"] = sh(
                ["python3", f"{DEBIAN_BIN}/verify-stream-v2", "-f", "xl", "-i", im["path"]],
                env={"PYTHONPATH": DEBIAN_PY}, timeout=600)


def restore(label: str, path: Path, name: str, hb_before: int, *,
            env: Optional[Dict[str, str]] = None, extra: Optional[Dict[str, Any]] = None,
            watch_timeout: float = 45, dmesg: bool = False) -> Dict[str, Any]:
    destroy_all()
    since = console_sizes()
    dmesg_before = sh(["xl", "dmesg"], quiet=True)["out"].splitlines() if dmesg else []
    r = sh(["xl", "-v", "restore", "-e", str(path)], timeout=300, env=env)
    rec: Dict[str, Any] = {"image": str(path), "guest": name, "restore": r, "hb_before": hb_before}
    rec["xl_ok"] = r["rc"] == 0
    rec["domains"] = domains()
    if rec["xl_ok"] or name in rec["domains"]:
        # a failed xl leaving a domain behind: a short look is enough
        rec["watch"] = watch(name, since, after=hb_before, want=2,
                             timeout=watch_timeout if rec["xl_ok"] else 10)
        rec["xl_list"] = sh(["xl", "list"], quiet=True)["out"]
    lines = [ln for ln in r["out"].splitlines() if "progress:" not in ln and ln.strip()]
    rec["errors"] = [ln for ln in lines if re.search(
        r"error|fail|Error|Fail|refus|invalid|mismatch|panic|mandatory|Traceback", ln)][-12:]
    rec["output_tail"] = lines[-8:]
    if dmesg:
        after = sh(["xl", "dmesg"], quiet=True)["out"].splitlines()
        # the lines this restore added (the whole tail if the ring wrapped)
        new = after[len(dmesg_before):] if after[:len(dmesg_before)] == dmesg_before \
            else after[-60:]
        rec["xen_dmesg"] = [ln for ln in new if re.search(r"HVM|restore|d\d+v?\d*.*(error|fail)",
                                                          ln, re.I)][-8:]
    rec.update(extra or {})
    destroy_all()
    R["restores"][label] = rec
    save_results()
    return rec


@step("restore the real images")
def restore_real() -> None:
    for key in ("pv1", "pv1-ckpt", "pv1-paused", "pv1-fifo", "pv2", "pvmax", "pvh",
                "pvh-migrate"):
        im = R["images"].get(key)
        if im and im.get("size"):
            restore(f"v2:{key}", Path(im["path"]), im["guest"], im["hb_before"])


def wrap_xl(config: bytes, libxl_stream_path: Path, dest: Path) -> None:
    """An xl file (STREAMv2|JSON) around a libxl stream."""
    opt = struct.pack("<I", len(config)) + config
    with open(dest, "wb") as g, open(libxl_stream_path, "rb") as f:
        g.write(b"Xen saved domain, xl format\n \0 \r")
        g.write(struct.pack("<IIII", 0x01020304, 0x3, 0, len(opt)))
        g.write(opt)
        shutil.copyfileobj(f, g, 1 << 20)


def wrap_libxc(libxc_path: Path, dest: Path) -> None:
    """A libxl v2 stream around a bare libxc stream: header, LIBXC_CONTEXT, it, END."""
    with open(dest, "wb") as g, open(libxc_path, "rb") as f:
        g.write(struct.pack(">QII", 0x4C6962786C466D74, 2, 0))
        g.write(struct.pack("<II", 1, 0))
        shutil.copyfileobj(f, g, 1 << 20)
        g.write(struct.pack("<II", 0, 0))


@step("legacy round trips")
def legacy() -> None:
    ours_helper = shutil.which("convert-legacy-stream") or "convert-legacy-stream"
    for key in ("pv1", "pv2", "pvh"):
        im = R["images"].get(key)
        if not (im and im.get("size")):
            continue
        src = Path(im["path"])
        leg = IMG / f"{key}-legacy.xl"
        t = time.monotonic()
        tr = v2legacy.translate(str(src), str(leg))
        L: Dict[str, Any] = {"translation": tr.__dict__, "seconds": round(time.monotonic() - t, 1),
                             "size": leg.stat().st_size}
        R["legacy"][key] = L
        # a PVH guest has no device model: its legacy HVM stream carries no
        # device-model record, which the caller says with --skip-qemu
        skip = ["--skip-qemu"] if im["guest"] == "pvh" or key == "pvh" else []
        L["verify_legacy"] = sh(["xenstream", "verify", *skip, str(leg)], timeout=300)
        conv = IMG / f"{key}-legacy-converted.xl"
        L["convert"] = sh(["xenstream", "convert", *skip, str(leg), str(conv)], timeout=600)
        if conv.exists():
            L["verify_converted"] = sh(["xenstream", "verify", str(conv)], timeout=300)
            restore(f"legacy:{key}:xenstream-convert", conv, im["guest"], im["hb_before"])
        restore(f"legacy:{key}:libxl-helper=xenstream", leg, im["guest"], im["hb_before"],
                env={"LIBXL_CONVERT_HELPER": ours_helper})
        if key == "pv1":
            restore(f"legacy:{key}:libxl-helper=debian", leg, im["guest"], im["hb_before"])
            restore(f"legacy:{key}:libxl-helper=debian+PYTHONPATH", leg, im["guest"],
                    im["hb_before"], env={"PYTHONPATH": DEBIAN_PY})
            # bare streams: our libxc and libxl outputs, each wrapped in an xl file
            bare = IMG / f"{key}-legacy.bare"
            with open(leg, "rb") as f, open(bare, "wb") as g:
                f.seek(tr.legacy_offset)
                shutil.copyfileobj(f, g, 1 << 20)
            L["bare_verify"] = sh(["xenstream", "verify", str(bare)], timeout=300)
            config = v2legacy.read_v2(str(src)).config or b""
            for fmt in ("libxc", "libxl"):
                out = IMG / f"{key}-bare.{fmt}"
                L[f"bare_convert_{fmt}"] = sh([ours_helper, "-i", str(bare), "-o", str(out),
                                               "-f", fmt], timeout=600)
                L[f"bare_verify_{fmt}"] = sh(["xenstream", "verify", str(out)], timeout=300)
                libxl_path = out
                if fmt == "libxc":
                    libxl_path = IMG / f"{key}-bare.libxc.libxl"
                    wrap_libxc(out, libxl_path)
                wrapped = IMG / f"{key}-bare-{fmt}-wrapped.xl"
                wrap_xl(config, libxl_path, wrapped)
                L[f"bare_verify_{fmt}_wrapped"] = sh(["xenstream", "verify", str(wrapped)],
                                                     timeout=300)
                restore(f"bare:{key}:{fmt}-wrapped", wrapped, im["guest"], im["hb_before"])
                for p in (out, libxl_path, wrapped):
                    if p.exists():
                        p.unlink()
            bare.unlink()
        conv.unlink(missing_ok=True)
        save_results()


@step("negative images")
def negatives() -> None:
    for name, (kind, _fn, expect_invalid) in mutate.NEGATIVES.items():
        src_key = "pv1" if kind == "pv" else "pvh"
        im = R["images"].get(src_key)
        if not (im and im.get("size")):
            continue
        dst = IMG / f"neg-{name}.xl"
        N: Dict[str, Any] = {"source": src_key, "expect_invalid": expect_invalid}
        R["negatives"][name] = N
        try:
            N["defect"] = mutate.make(name, im["path"], str(dst))
        except Exception as e:  # noqa: BLE001
            N["defect_error"] = f"{type(e).__name__}: {e}"
            continue
        v = sh(["xenstream", "verify", str(dst)], timeout=300)
        N["xenstream"] = {"rc": v["rc"], "findings": [ln for ln in v["out"].splitlines()
                                                      if ln.strip()][-8:]}
        rec = restore(f"neg:{name}", dst, im["guest"], im["hb_before"], watch_timeout=30,
                      dmesg=True)
        N["xl_ok"] = rec["xl_ok"]
        N["xl_rc"] = rec["restore"]["rc"]
        N["xen_errors"] = rec["errors"]
        N["xen_dmesg"] = rec.get("xen_dmesg")
        N["guest_ran"] = bool(rec.get("watch", {}).get("advancing"))
        N["oops"] = bool(rec.get("watch", {}).get("oops"))
        dst.unlink(missing_ok=True)
        save_results()


@step("copy the real images out")
def copy_out() -> None:
    for key, im in sorted(R["images"].items()):
        if key.startswith("_") or not im.get("size"):
            continue
        dest = OUT / "images" / Path(im["path"]).name
        shutil.copyfile(im["path"], dest)
        im["copied"] = str(dest.relative_to(OUT))


@step("copy the legacy image out")
def copy_legacy() -> None:
    for key in ("pv1",):
        p = IMG / f"{key}-legacy.xl"
        if p.exists() and key in R["legacy"]:
            shutil.copyfile(p, OUT / "images" / p.name)
            R["legacy"][key]["copied"] = f"images/{p.name}"


def main() -> None:
    setup()
    pv1()
    pv2()
    pvmax()
    pvh()
    verify_all()
    # 9p is slow (about 1 MB/s per vcpu-second under TCG): copy beside the restores
    copier = threading.Thread(target=copy_out, daemon=True)
    copier.start()
    restore_real()
    legacy()
    negatives()
    copier.join()
    copy_legacy()
    R["done"] = True
    R["seconds"] = round(time.monotonic() - T0, 1)
    save_results()
    say("job done")


if __name__ == "__main__":
    main()
