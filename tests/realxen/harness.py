"""Host side of the real-Xen tests: tools, the dom0 image, the guest
initramfs, the wheel, and one boot of Xen under QEMU (TCG).

Everything expensive is cached outside the checkout, in
``$XENSTREAM_REALXEN_CACHE`` (default ``~/.cache/xenstream/realxen``), keyed
by the Debian package versions that go into the dom0 image.  Any failure of
this infrastructure raises :class:`InfraError`; the tests turn that into a
skip.  QEMU is always killed when a boot ends, however it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("XENSTREAM_REALXEN_CACHE",
                            Path.home() / ".cache" / "xenstream" / "realxen"))
SUITE = "bookworm"
#: the host's own apt sources for Debian (a deb822 or one-line file that names the
#: suite), handed to mmdebstrap as they are: dom0 comes from the archive the
#: host's apt uses (the host's candidates key the cache)
HOST_SOURCES = ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list")


def host_sources() -> List[str]:
    for name in HOST_SOURCES:
        p = Path(name)
        try:
            if SUITE in p.read_text():
                return [name]
        except OSError:
            continue
    return []  # mmdebstrap's own default


SOURCES = host_sources()
XEN_SERIES = "4.17"
#: what goes into dom0 (versions of the first five key the cache)
DOM0_PACKAGES = [
    f"xen-hypervisor-{XEN_SERIES}-amd64", f"xen-utils-{XEN_SERIES}", "linux-image-amd64",
    "xenstore-utils", "python3", "python3-pip", "busybox", "kmod", "procps", "iproute2",
    "initramfs-tools", "udev",
]
KEY_PACKAGES = DOM0_PACKAGES[:5]
#: host packages: command -> Debian package
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
}
BUSYBOX_STATIC = Path("/bin/busybox")
#: bumped whenever the image layout below changes
IMAGE_FORMAT = 3
ROOTFS_SPARE_MB = 4096  # free space in dom0's disk for the saved images

#: dom0's PID 1, baked into the image: mount the share and run its boot.sh
#: (which lives in the checkout, so changing it does not rebuild the image)
BOOTSTRAP = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
modprobe -a 9pnet_virtio 9p
mkdir -p /mnt/share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none share /mnt/share \\
        && [ -f /mnt/share/boot.sh ]; then
    /bin/sh /mnt/share/boot.sh
else
    echo "realxen-init: no share or no boot.sh" > /dev/console
fi
sync
echo "realxen-init: powering off" > /dev/console
poweroff -f
echo o > /proc/sysrq-trigger
sleep 60
"""

Log = Callable[[str], None]


class InfraError(RuntimeError):
    """The machinery (packages, image, VM) failed: the tests skip."""


def _run(cmd: Sequence[str], log: Log, *, timeout: float, what: str,
         env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> str:
    log(f"$ {' '.join(cmd)}")
    try:
        p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InfraError(f"{what}: {e}") from e
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        tail = "\n".join(out.splitlines()[-15:])
        raise InfraError(f"{what} failed (exit {p.returncode}):\n{tail}")
    return out


# -- host tools -------------------------------------------------------------------------

_apt_updated = False


def apt_install(packages: Sequence[str], log: Log) -> None:
    global _apt_updated
    if os.geteuid() != 0:
        raise InfraError(f"need root to install {', '.join(packages)}")
    if shutil.which("apt-get") is None:
        raise InfraError("no apt-get on this host")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        _run(["apt-get", "update", "-q"], log, timeout=600, what="apt-get update", env=env)
        _apt_updated = True
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], log,
         timeout=1200, what="apt-get install", env=env)


def ensure_host_tools(log: Log) -> None:
    missing = sorted({pkg for cmd, pkg in HOST_TOOLS.items() if shutil.which(cmd) is None})
    if not BUSYBOX_STATIC.exists() or b"statically linked" not in subprocess.run(
            ["file", "-L", str(BUSYBOX_STATIC)], stdout=subprocess.PIPE,
            check=False).stdout:
        missing.append("busybox-static")
    if shutil.which("file") is None:
        missing.append("file")
    if missing:
        apt_install(missing, log)
    for cmd in HOST_TOOLS:
        if shutil.which(cmd) is None:
            raise InfraError(f"{cmd} still missing after apt-get install")


# -- the dom0 image ---------------------------------------------------------------------


def package_versions(log: Log) -> Dict[str, str]:
    """Candidate versions (this host's apt lists) of the packages that key the cache.

    The host is expected to be Debian bookworm, so its lists are the
    archive's; linux-image-amd64's version pins the kernel ABI package too.
    """
    out = _run(["apt-cache", "policy", *KEY_PACKAGES], log, timeout=60, what="apt-cache policy")
    versions: Dict[str, str] = {}
    cur = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            cur = line[:-1]
        elif cur and line.strip().startswith("Candidate:"):
            versions[cur] = line.split(":", 1)[1].strip()
    bad = [p for p in KEY_PACKAGES if versions.get(p) in (None, "(none)")]
    if bad:
        if not _apt_updated:
            apt_install([], log)  # apt-get update, then look again
            return package_versions(log)
        raise InfraError(f"no candidate version for {', '.join(bad)} in the apt lists")
    return versions


@dataclass
class Dom0Image:
    dir: Path
    rootfs: Path  # raw ext4
    xen: Path  # uncompressed hypervisor (multiboot ELF)
    vmlinuz: Path
    initrd: Path
    versions: Dict[str, str]


def _image_from(d: Path) -> Dom0Image:
    meta = json.loads((d / "versions.json").read_text())
    return Dom0Image(d, d / "rootfs.ext4", d / "xen", d / "vmlinuz", d / "initrd.img", meta)


def build_dom0(log: Log) -> Dom0Image:
    versions = package_versions(log)
    key_src = json.dumps({"v": versions, "pkgs": DOM0_PACKAGES, "boot": BOOTSTRAP,
                          "fmt": IMAGE_FORMAT, "suite": SUITE,
                          "src": [Path(s).read_text() for s in SOURCES]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    d = CACHE / f"dom0-{SUITE}-xen{XEN_SERIES}-{key}"
    if (d / "complete").exists():
        log(f"dom0 image cached: {d}")
        return _image_from(d)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        tree = work / "tree"
        t0 = time.monotonic()
        _run(["mmdebstrap", "--variant=minbase", "--mode=root",
              "--aptopt=APT::Install-Recommends \"false\"",
              "--dpkgopt=path-exclude=/usr/share/doc/*",
              "--dpkgopt=path-exclude=/usr/share/man/*",
              "--dpkgopt=path-exclude=/usr/share/locale/*",
              f"--include={','.join(DOM0_PACKAGES)}", SUITE, str(tree), *SOURCES],
             log, timeout=1500, what="mmdebstrap")
        log(f"mmdebstrap took {time.monotonic() - t0:.0f} s")
        boot = tree / "boot"
        xengz = sorted(boot.glob(f"xen-{XEN_SERIES}*-amd64.gz")) or sorted(boot.glob("xen*.gz"))
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if not (xengz and kernels and initrds):
            raise InfraError(f"dom0 tree lacks xen/vmlinuz/initrd: {os.listdir(boot)}")
        with gzip.open(xengz[-1]) as f, open(work / "xen", "wb") as g:
            shutil.copyfileobj(f, g)
        shutil.copy(kernels[-1], work / "vmlinuz")
        shutil.copy(initrds[-1], work / "initrd.img")
        init = tree / "sbin" / "realxen-init"
        init.write_text(BOOTSTRAP)
        init.chmod(0o755)
        (tree / "etc" / "hostname").write_text("realxen-dom0\n")
        (tree / "etc" / "fstab").write_text("/dev/vda / ext4 rw 0 1\n")
        dpkg = _run(["chroot", str(tree), "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"],
                    log, timeout=60, what="dpkg-query")
        installed = dict(line.split("=", 1) for line in dpkg.split() if "=" in line)
        off = {p: (v, installed.get(p)) for p, v in versions.items() if installed.get(p) != v}
        if off:
            raise InfraError(f"dom0 tree does not hold the keyed versions: {off}")
        used = int(_run(["du", "-sm", str(tree)], log, timeout=120, what="du").split()[0])
        size_mb = used + used // 4 + ROOTFS_SPARE_MB
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "realxen", "-d", str(tree),
              str(work / "rootfs.ext4"), f"{size_mb}M"], log, timeout=900, what="mke2fs -d")
        shutil.rmtree(tree)
        meta = {"key": versions, "installed": installed, "suite": SUITE}
        (work / "versions.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        (work / "complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        if d.exists():
            shutil.rmtree(d)
        work.rename(d)
        log(f"dom0 image built in {time.monotonic() - t0:.0f} s: {d}")
        return _image_from(d)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# -- the guests' initramfs --------------------------------------------------------------

GUEST_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
n=0
while :; do
    n=$((n + 1))
    echo "heartbeat $n" > /dev/hvc0
    /bin/busybox sleep 2
done
"""


def _cpio_newc(entries: Sequence[tuple]) -> bytes:  # (name, mode, data)
    out = bytearray()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def build_guest_initramfs(dest: Path) -> Path:
    """A gzip'd newc cpio: static busybox and an init printing a heartbeat every 2 s."""
    bb = BUSYBOX_STATIC.read_bytes()
    d, x = 0o040755, 0o100755
    entries = [("bin", d, b""), ("dev", d, b""), ("proc", d, b""), ("sys", d, b""),
               ("bin/busybox", x, bb), ("init", x, GUEST_INIT.encode())]
    dest.write_bytes(gzip.compress(_cpio_newc(entries), 6))
    return dest


# -- our wheel --------------------------------------------------------------------------


def build_wheel(dest: Path, log: Log) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix="xs-src-"))
    try:
        # a clean copy: the build must not write into the checkout (egg-info, build/)
        shutil.copytree(REPO, src / "x", ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
            "tests", "benchmarks"))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest),
              str(src / "x")], log, timeout=600, what="pip wheel")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    wheels = sorted(dest.glob("xenstream-*.whl"))
    if not wheels:
        raise InfraError("pip wheel made no xenstream wheel")
    return wheels[-1]


# -- one boot ---------------------------------------------------------------------------


@dataclass
class Boot:
    returncode: Optional[int]
    timed_out: bool
    seconds: float
    serial: Path
    qemu_log: Path


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def qemu_command(img: Dom0Image, share: Path, serial: Path, *, mem_mb: int = 3072,
                 dom0_mb: int = 1024) -> List[str]:
    for p in (img.xen, img.vmlinuz, img.initrd, share):
        if "," in str(p) or " " in str(p):
            raise InfraError(f"path unusable on QEMU's multiboot line: {p}")
    xen_args = (f"console=com1 com1=115200,8n1 dom0_mem={dom0_mb}M,max:{dom0_mb}M "
                "dom0_max_vcpus=2 loglvl=all guest_loglvl=all noreboot")
    kernel_args = "root=/dev/vda rw console=hvc0 earlyprintk=xen init=/sbin/realxen-init quiet"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max,-smap,-xsave", "-smp", "2",
        "-m", str(mem_mb), "-machine", "pc", "-display", "none", "-no-reboot",
        "-nodefaults", "-monitor", "none",
        "-serial", f"file:{serial}",
        "-kernel", str(img.xen), "-append", xen_args,
        "-initrd", f"{img.vmlinuz} {kernel_args},{img.initrd}",
        "-drive", f"file={img.rootfs},format=raw,if=virtio,snapshot=on,cache=unsafe",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none,id=share",
    ]


def boot(img: Dom0Image, share: Path, logdir: Path, *, timeout: float, log: Log) -> Boot:
    """Boot Xen with ``share`` as dom0's /mnt/share; wait for power-off or ``timeout``.

    QEMU is killed when this returns or raises, whatever the reason.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    serial = logdir / "serial.log"
    qlog = logdir / "qemu.log"
    cmd = qemu_command(img, share, serial)
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    with open(qlog, "wb") as qf, _sigterm_as_interrupt():
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qf,
                                    stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        except OSError as e:
            raise InfraError(f"cannot start QEMU: {e}") from e
        try:
            rc = proc.wait(timeout=timeout)
            return Boot(rc, False, time.monotonic() - t0, serial, qlog)
        except subprocess.TimeoutExpired:
            log(f"QEMU still running after {timeout:.0f} s: killing it")
            return Boot(None, True, time.monotonic() - t0, serial, qlog)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the share --------------------------------------------------------------------------

#: files of this directory that dom0 needs (the job imports the two modules)
SHARE_FILES = ["dom0/boot.sh", "dom0/job.py", "v2legacy.py", "mutate.py"]


def prepare_share(share: Path, log: Log, *, job: Optional[Path] = None) -> None:
    """Fill ``share``: boot.sh, the job and its modules, the guests' initramfs,
    and a wheel of this checkout in ``wheel/``."""
    share.mkdir(parents=True, exist_ok=True)
    for rel in SHARE_FILES:
        src = job if (job is not None and rel == "dom0/job.py") else HERE / rel
        shutil.copy(src, share / Path(rel).name)
    build_guest_initramfs(share / "guest-initrd.gz")
    build_wheel(share / "wheel", log)
    (share / "out").mkdir(exist_ok=True)


# -- everything: one boot, one job ------------------------------------------------------

#: QEMU's hard limit for the whole boot (the job's own limit is a little lower)
BOOT_TIMEOUT = float(os.environ.get("XENSTREAM_REALXEN_TIMEOUT", "1500"))


@dataclass
class Run:
    workdir: Path
    share: Path
    out: Path
    image: Dom0Image
    boot: Boot
    results: Dict[str, object]
    seconds: float


KEEP_RUNS = 2  # finished runs kept in CACHE/runs (each holds about 1.5 GB of images)


def new_workdir() -> Path:
    """A fresh run directory in CACHE/runs; older runs beyond KEEP_RUNS are removed."""
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in runs.iterdir() if p.is_dir())
    for p in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(p, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))


def load_run(workdir: Path) -> Run:
    """A finished run's results, without booting (``$XENSTREAM_REALXEN_REUSE``)."""
    out = workdir / "share" / "out"
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise InfraError(f"no results to reuse in {workdir}: {e}") from e
    results.setdefault("_boot", {"reused": str(workdir)})
    img = Dom0Image(workdir, workdir, workdir, workdir, workdir, {})
    b = Boot(0, False, 0.0, workdir / "logs" / "serial.log", workdir / "logs" / "qemu.log")
    return Run(workdir, workdir / "share", out, img, b, results, 0.0)


def run_job(workdir: Path, log: Log, *, timeout: float = BOOT_TIMEOUT) -> Run:
    """Tools, image, share, one boot running dom0/job.py; the job's results.

    Raises InfraError when the machinery fails: no image, no boot, no results.
    """
    t0 = time.monotonic()
    ensure_host_tools(log)
    img = build_dom0(log)
    share = workdir / "share"
    if share.exists():
        shutil.rmtree(share)
    prepare_share(share, log)
    (share / "job-timeout").write_text(f"{max(60, int(timeout) - 120)}\n")
    b = boot(img, share, workdir / "logs", timeout=timeout, log=log)
    out = share / "out"
    serial = b.serial.read_text(errors="replace") if b.serial.exists() else ""
    if "realxen: toolstack up" not in serial:
        tail = "\n".join(serial.splitlines()[-25:])
        raise InfraError(f"dom0's toolstack never came up (boot {b.seconds:.0f} s, "
                         f"timed out: {b.timed_out}); serial tail:\n{tail}")
    res_path = out / "results.json"
    if not res_path.exists():
        raise InfraError(f"the job wrote no results (boot {b.seconds:.0f} s, timed out: "
                         f"{b.timed_out}); see {out}")
    results = json.loads(res_path.read_text())
    results["_boot"] = {"seconds": round(b.seconds, 1), "timed_out": b.timed_out,
                        "returncode": b.returncode}
    return Run(workdir, share, out, img, b, results, time.monotonic() - t0)
