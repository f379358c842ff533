#!/usr/bin/env python3
"""xenstream benchmark suite.

    python3 benchmarks/run.py [--quick] [--only NAME ...] [--pairs N] [--tmpdir DIR]
                              [--json OUT] [--upstream-xen DIR] [--python] [--check]

Every figure is a ratio against a physical reference command (``cat``, ``dd``,
``cat | cat``) run side by side, in alternating pairs, in the same session:
absolute times on shared machines mean little.  See benchmarks/README.md.

The cases themselves are declared in benchmarks/cases.py.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cases import CASES, IMAGES, Case, Image, MiB, Versus
from legacy_images import LegacyImageSpec, write_legacy_image
from legacy_images import estimate_size as legacy_estimate_size
from xenstream.writers.v2 import write_image

PAGE = 4096
#: tool name -> module for ``--python`` (``sys.executable -m MODULE``)
TOOL_MODULES = {
    "xenstream": "xenstream",
    "verify-stream-v2": "xenstream.cli.verify_stream_v2",
    "convert-legacy-stream": "xenstream.cli.convert_legacy_stream",
}
UPSTREAM_PREFIX = "upstream:"
UPSTREAM_PROBE = ("from xen.util import open_file_or_fd\n"
                  "from xen.migration.verify import StreamError, RecordError\n"
                  "from xen.migration.libxc import VerifyLibxc\n"
                  "from xen.migration.libxl import VerifyLibxl\n")


class BenchError(Exception):
    """A set-up problem: reported on stderr, exit status 2."""


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """What one finished process cost."""

    argv: List[str]
    exit: int  # exit status; -N for killed by signal N
    rchar: Optional[int]  # /proc/PID/io rchar, read while the process was a zombie
    maxrss_kib: int  # ru_maxrss
    utime: float
    stime: float
    io: Optional[Dict[str, int]] = None  # all of /proc/PID/io
    stderr: str = ""

    @property
    def cpu(self) -> float:
        return self.utime + self.stime

    def to_json(self) -> Dict[str, Any]:
        return {"exit": self.exit, "rchar": self.rchar, "maxrss_kib": self.maxrss_kib,
                "utime": round(self.utime, 4), "stime": round(self.stime, 4), "io": self.io}


@dataclass
class Run:
    """One timed (or warm-up) run of a command or a pipeline."""

    seconds: float
    main: Proc  # the measured process: the tool, or the last process of a reference
    producer: Optional[Proc] = None  # ``cat {image}`` feeding the pipe
    consumer: Optional[Proc] = None  # ``cat >{out}`` reading the command's stdout

    @property
    def cpu(self) -> float:
        """CPU seconds (user + system) of the whole command or pipeline."""
        return self.main.cpu + sum(p.cpu for p in (self.producer, self.consumer) if p)

    @property
    def helpers_ok(self) -> bool:
        """The ``cat`` processes around the command exited 0."""
        return all(p.exit == 0 for p in (self.producer, self.consumer) if p)

    def to_json(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"seconds": round(self.seconds, 6), **self.main.to_json()}
        if self.producer is not None:
            d["producer"] = self.producer.to_json()
        if self.consumer is not None:
            d["consumer"] = self.consumer.to_json()
        return d


def _proc(argv: Sequence[str], d: Dict[str, Any]) -> Proc:
    return Proc(list(argv), int(d["exit"]), d["rchar"], int(d["maxrss_kib"]),
                float(d["utime"]), float(d["stime"]), d.get("io"))


class Runner:
    """Client of the measuring process (measure.py, see there for the method:
    posix_spawn, waitid(WNOWAIT) + /proc/PID/io, wait4).  It is a separate small
    process so that the harness's own memory does not show up as the children's
    peak RSS."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.err_path = workdir / "stderr.txt"
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-I", str(Path(__file__).with_name("measure.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.floor_kib = 0

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()

    def run(self, argv: Sequence[str], env: Dict[str, str], pipe_from: Optional[str],
            cat: str, out_path: Optional[Path], stdin_file: Optional[str] = None,
            consumer: bool = False, stdout_out: bool = False) -> Run:
        """Run ``argv`` (stdout to /dev/null); with ``pipe_from``, as the reader of
        ``cat pipe_from |``; with ``stdin_file``, with that file as stdin; with
        ``consumer``, with stdout into ``| cat >out_path``; with ``stdout_out``,
        with stdout ``>out_path``.  The time is wall-clock
        from the first spawn to the last exit."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if out_path is not None:
            if out_path.exists():
                out_path.unlink()
            # untimed: the previous run's writeback is done before this one starts
            os.sync()
        producer = [cat, pipe_from] if pipe_from is not None else None
        req = {"argv": list(argv), "env": env, "producer": producer,
               "stdin_file": stdin_file, "consumer": [cat] if consumer else None,
               "consumer_out": str(out_path) if consumer else None,
               "stdout_file": str(out_path) if stdout_out else None,
               "stderr": str(self.err_path), "timeout": self.timeout}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        finally:
            if out_path is not None and out_path.exists():
                out_path.unlink()
        if not line:
            raise BenchError("the measuring process (measure.py) died")
        ans = json.loads(line)
        if "error" in ans:
            raise BenchError(f"cannot run {' '.join(argv)}: {ans['error']}")
        self.floor_kib = max(self.floor_kib, int(ans["floor_kib"]))
        run = Run(float(ans["seconds"]), _proc(argv, ans["main"]),
                  _proc(producer, ans["producer"]) if producer else None,
                  _proc([cat], ans["consumer"]) if consumer else None)
        if run.main.exit != 0 or not run.helpers_ok:
            run.main.stderr = self.err_path.read_text(errors="replace")[-2000:]
        return run


# -- tools ----------------------------------------------------------------------------------


@dataclass
class Tool:
    argv: List[str]
    env: Dict[str, str]
    how: str  # for the report


def _console_script(name: str) -> Tuple[Optional[str], str]:
    """The console script ``name`` of the running interpreter's installation, else the
    one on PATH."""
    scripts = sysconfig.get_path("scripts")
    if scripts:
        p = Path(scripts) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p), "console script"
    found = shutil.which(name)
    if found:
        return found, "found on PATH"
    return None, ""


def tool_env(pycache: Optional[Path]) -> Dict[str, str]:
    """The environment the Python tools run in.  With ``pycache``, bytecode is
    cached there (``PYTHONPYCACHEPREFIX``, in the temp dir; nothing is written
    next to the sources) even if the environment sets PYTHONDONTWRITEBYTECODE: an
    installed package runs from cached bytecode, and compiling every module
    from source on each start is not a cost users pay.  The warm-up run fills
    the cache."""
    env = dict(os.environ)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def resolve_tools(names: Sequence[str], use_python: bool, upstream: Optional[Tuple[Path, str]],
                  base_env: Dict[str, str]) -> Dict[str, Tool]:
    tools: Dict[str, Tool] = {}
    for name in names:
        if name.startswith(UPSTREAM_PREFIX):
            assert upstream is not None
            root, pythonpath = upstream
            env = dict(base_env, PYTHONPATH=pythonpath)
            script = root / "scripts" / name[len(UPSTREAM_PREFIX):]
            tools[name] = Tool([sys.executable, str(script)], env,
                               f"{sys.executable} {script} (PYTHONPATH={pythonpath})")
        elif use_python:
            tools[name] = Tool([sys.executable, "-m", TOOL_MODULES[name]], dict(base_env),
                               f"{sys.executable} -m {TOOL_MODULES[name]}")
        else:
            path, how = _console_script(name)
            if path is None:
                raise BenchError(f"console script {name!r} not found (pip install -e . first, "
                                 f"or use --python)")
            tools[name] = Tool([path], dict(base_env), f"{path} ({how})")
    return tools


def check_upstream(arg: str, workdir: Path) -> Tuple[Path, str, List[str]]:
    """Find upstream's tools/python tree under ``arg`` and make sure its
    verify-stream-v2 can import what it needs; if ``xen.util`` (or another small
    piece) is missing, a shim package in the temp dir supplies it.  Returns (root,
    PYTHONPATH, notes)."""
    base = Path(arg).resolve()
    root = None
    for cand in (base, base / "tools" / "python"):
        if (cand / "scripts" / "verify-stream-v2").is_file() and (cand / "xen" / "migration").is_dir():
            root = cand
            break
    if root is None:
        raise BenchError(f"--upstream-xen {arg}: no scripts/verify-stream-v2 and xen/migration/ "
                         f"under {base} or {base / 'tools' / 'python'}")
    notes: List[str] = []

    def probe(pythonpath: str) -> str:
        p = subprocess.run([sys.executable, "-c", UPSTREAM_PROBE], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=pythonpath))
        return "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1]

    err = probe(str(root))
    if not err:
        return root, str(root), notes
    # Shim: a 'xen' package that extends its __path__ with upstream's, plus xen/util.py
    # with upstream's open_file_or_fd (only used if upstream's tree lacks it).
    shim = workdir / "upstream-shim"
    (shim / "xen").mkdir(parents=True, exist_ok=True)
    (shim / "xen" / "__init__.py").write_text(
        f"__path__.append({str(root / 'xen')!r})\n")
    if not (root / "xen" / "util.py").is_file():
        (shim / "xen" / "util.py").write_text(
            "import os\n\n\n"
            "def open_file_or_fd(val, *argl, **kwargs):\n"
            "    try:\n        fd = int(val, 10)\n    except ValueError:\n        fd = -1\n"
            "    if fd != -1:\n        return os.fdopen(fd, *argl, **kwargs)\n"
            "    return open(val, *argl, **kwargs)\n")
    pythonpath = f"{shim}{os.pathsep}{root}"
    err2 = probe(pythonpath)
    if err2:
        raise BenchError(f"--upstream-xen {arg}: upstream's verify-stream-v2 cannot import its "
                         f"modules: {err}; with a shim: {err2}")
    notes.append(f"upstream tree lacked importable pieces ({err}); shim in the temp dir used")
    return root, pythonpath, notes


# -- images ---------------------------------------------------------------------------------


def estimate_size(spec: Any) -> int:
    if isinstance(spec, LegacyImageSpec):
        return legacy_estimate_size(spec)
    sizes = list(spec.batch_sizes) if spec.batch_sizes else [spec.batch]
    records = 0
    left = spec.pages
    for n in cycle(sizes):
        if left <= 0:
            break
        left -= n
        records += 1
    return spec.pages * (PAGE + 8) + records * 16 + 64 * 1024


def generate(image: Image, spec: Any, path: Path) -> Dict[str, Any]:
    t0 = time.perf_counter()
    with open(path, "wb", buffering=8 * MiB) as f:
        if isinstance(spec, LegacyImageSpec):
            write_legacy_image(f, spec)
        else:
            write_image(f, spec)
        f.flush()
        t1 = time.perf_counter()
        os.fsync(f.fileno())  # no writeback of this image while commands are timed
    t2 = time.perf_counter()
    return {"name": image.name, "description": image.description, "path": str(path),
            "size": path.stat().st_size, "pages": spec.pages,
            "write_seconds": round(t1 - t0, 3), "fsync_seconds": round(t2 - t1, 3)}


def check_legacy_image(path: Path, workdir: Path, env: Dict[str, str],
                       use_python: bool) -> Dict[str, Any]:
    """Once per legacy image, outside timing: ``xenstream convert -q IMAGE OUT`` and
    ``xenstream verify -q OUT`` must both succeed (OUT is removed)."""
    if use_python:
        argv0 = [sys.executable, "-m", "xenstream"]
    else:
        found, _ = _console_script("xenstream")
        if found is None:
            raise BenchError("console script 'xenstream' not found (needed to check the "
                             "legacy images)")
        argv0 = [found]
    out = workdir / "check.out"
    t0 = time.perf_counter()
    try:
        conv = subprocess.run(argv0 + ["convert", "-q", str(path), str(out)], env=env,
                              capture_output=True, text=True)
        if conv.returncode != 0:
            raise BenchError(f"generated image {path.name} does not convert (exit "
                             f"{conv.returncode}): {conv.stderr.strip()[-500:]}")
        size = out.stat().st_size
        ver = subprocess.run(argv0 + ["verify", str(out)], env=env, capture_output=True,
                             text=True)
        if ver.returncode != 0:
            raise BenchError(f"generated image {path.name} converts to an invalid stream "
                             f"(exit {ver.returncode}): {ver.stdout.strip()[-500:]}"
                             f"{ver.stderr.strip()[-500:]}")
    finally:
        if out.exists():
            out.unlink()
    return {"converted_size": size, "verify": ver.stdout.strip().splitlines()[-1:],
            "seconds": round(time.perf_counter() - t0, 3)}


def mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- cases ----------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: Case
    tool_argv: List[str] = field(default_factory=list)
    ref_argv: List[str] = field(default_factory=list)
    image_size: int = 0
    warmup: Dict[str, Run] = field(default_factory=dict)
    tool_runs: List[Run] = field(default_factory=list)
    ref_runs: List[Run] = field(default_factory=list)
    skipped: str = ""
    peer: Optional[CaseResult] = None  # the case named by Case.rss_vs, if it ran
    #: per Case.versus label: its argv and runs (one per round, beside tool_runs)
    versus_argv: Dict[str, List[str]] = field(default_factory=dict)
    versus_runs: Dict[str, List[Run]] = field(default_factory=dict)
    versus_skipped: Dict[str, str] = field(default_factory=dict)

    def versus_ratios(self, label: str) -> List[float]:
        return [t.seconds / r.seconds for t, r in zip(self.tool_runs, self.versus_runs[label])]

    def versus_cpu_ratios(self, label: str) -> List[float]:
        return [t.cpu / max(r.cpu, 1e-3) for t, r in zip(self.tool_runs, self.versus_runs[label])]

    def versus_ok(self, v: Versus) -> Optional[bool]:
        if v.max_ratio is None or v.label not in self.versus_runs:
            return None
        return statistics.median(self.versus_ratios(v.label)) <= v.max_ratio

    def rss_diff_kib(self) -> Optional[int]:
        if self.peer is None or self.peer.skipped or not self.peer.tool_runs:
            return None
        return self.max_rss_kib() - self.peer.max_rss_kib()

    @property
    def ratios(self) -> List[float]:
        return [t.seconds / r.seconds for t, r in zip(self.tool_runs, self.ref_runs)]

    @property
    def cpu_ratios(self) -> List[float]:
        """Per pair: CPU time (user + system, whole pipeline) tool / reference."""
        return [t.cpu / max(r.cpu, 1e-3) for t, r in zip(self.tool_runs, self.ref_runs)]

    def checks(self) -> List[Tuple[str, bool]]:
        c = self.case
        t = c.targets
        out: List[Tuple[str, bool]] = []
        if c.expect_exit is not None:
            bad = [r for r in self.tool_runs + [self.warmup["tool"]]
                   if r.main.exit != c.expect_exit or not r.helpers_ok]
            out.append(("exit", not bad))
        if t.max_ratio is not None:
            out.append(("ratio", statistics.median(self.ratios) <= t.max_ratio))
        if t.max_read_fraction is not None:
            rc = self.max_rchar()
            out.append(("read", rc is not None and rc <= t.max_read_fraction * self.image_size))
        if t.max_rss_mib is not None:
            out.append(("rss", self.max_rss_kib() < t.max_rss_mib * 1024))
        diff = self.rss_diff_kib()
        if t.max_rss_diff_mib is not None and diff is not None:
            out.append(("rss-diff", abs(diff) <= t.max_rss_diff_mib * 1024))
        for v in c.versus:
            ok = self.versus_ok(v)
            if ok is not None:
                out.append((f"vs-{v.label}", ok))
        return out

    def max_rchar(self) -> Optional[int]:
        vals = [r.main.rchar for r in self.tool_runs]
        return None if any(v is None for v in vals) else max(v for v in vals if v is not None)

    def max_rss_kib(self) -> int:
        return max(r.main.maxrss_kib for r in self.tool_runs)

    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        checks = self.checks()
        if not any(name != "exit" for name, _ in checks) and self.case.expect_exit is None:
            return "-"
        failed = [name for name, ok in checks if not ok]
        return "PASS" if not failed else "FAIL(" + ",".join(failed) + ")"

    def to_json(self) -> Dict[str, Any]:
        c = self.case
        d: Dict[str, Any] = {
            "name": c.name, "group": c.group, "what": c.what, "image": c.image,
            "image_size": self.image_size, "pipe": c.pipe, "upstream": c.upstream,
            "tool": self.tool_argv, "reference": self.ref_argv,
            "targets": {"max_ratio": c.targets.max_ratio,
                        "max_read_fraction": c.targets.max_read_fraction,
                        "max_rss_mib": c.targets.max_rss_mib,
                        "max_rss_diff_mib": c.targets.max_rss_diff_mib},
            "verdict": self.verdict(),
        }
        if self.skipped:
            d["skipped"] = self.skipped
            return d
        ratios = self.ratios
        rc = self.max_rchar()
        d.update({
            "median_ratio": round(statistics.median(ratios), 4),
            "ratios": [round(x, 4) for x in ratios],
            "median_cpu_ratio": round(statistics.median(self.cpu_ratios), 4),
            "tool_median_seconds": round(statistics.median(r.seconds for r in self.tool_runs), 6),
            "ref_median_seconds": round(statistics.median(r.seconds for r in self.ref_runs), 6),
            "tool_rchar": rc,
            "tool_read_fraction": None if rc is None else rc / self.image_size,
            "tool_maxrss_kib": self.max_rss_kib(),
            "rss_vs": c.rss_vs, "rss_diff_kib": self.rss_diff_kib(),
            "tool_exits": sorted({r.main.exit for r in self.tool_runs}),
            "checks": dict(self.checks()),
            "warmup": {k: v.to_json() for k, v in self.warmup.items()},
            "tool_runs": [r.to_json() for r in self.tool_runs],
            "ref_runs": [r.to_json() for r in self.ref_runs],
            "versus": {
                v.label: ({"skipped": self.versus_skipped[v.label]}
                          if v.label in self.versus_skipped else {
                              "argv": self.versus_argv[v.label], "max_ratio": v.max_ratio,
                              "median_ratio": round(statistics.median(
                                  self.versus_ratios(v.label)), 4),
                              "ratios": [round(x, 4) for x in self.versus_ratios(v.label)],
                              "median_cpu_ratio": round(statistics.median(
                                  self.versus_cpu_ratios(v.label)), 4),
                              "median_seconds": round(statistics.median(
                                  r.seconds for r in self.versus_runs[v.label]), 6),
                              "exits": sorted({r.main.exit for r in self.versus_runs[v.label]}),
                              "runs": [r.to_json() for r in self.versus_runs[v.label]]})
                for v in c.versus},
        })
        return d


def expand(template: Sequence[str], image: Path, out: Path) -> List[str]:
    return [w.replace("{image}", str(image)).replace("{out}", str(out)) for w in template]


def run_case(res: CaseResult, runner: Runner, tool: Tool, ref_prog: str, cat: str,
             image: Path, pairs: int, log: Any, others: Dict[str, Tuple[List[str], Dict[str, str]]],
             ) -> None:
    """Warm up, then ``pairs`` rounds: the tool, the reference and every
    ``Case.versus`` command (``others``: label -> resolved argv prefix and
    environment), in an order that rotates from round to round."""
    c = res.case
    out = runner.workdir / "out.bin"
    res.tool_argv = tool.argv + expand(c.tool[1:], image, out)
    res.ref_argv = [ref_prog] + expand(c.reference[1:], image, out)
    uses_out = any("{out}" in w for w in c.tool + c.reference) or any(
        "{out}" in w for v in c.versus for w in v.argv)
    pipe_from = str(image) if c.pipe else None
    stdin_file = str(image) if c.stdin_image else None
    out_path = out if (uses_out or c.consumer or c.stdout_out) else None

    def runner_of(argv: List[str], env: Dict[str, str]) -> Any:
        return lambda: runner.run(argv, env, pipe_from, cat, out_path, stdin_file, c.consumer,
                                  c.stdout_out)

    cmds: List[Tuple[str, Any]] = [("tool", runner_of(res.tool_argv, tool.env)),
                                   ("reference", runner_of(res.ref_argv, dict(os.environ)))]
    for v in c.versus:
        if v.label not in others:
            continue
        prefix, env = others[v.label]
        argv = prefix + expand(v.argv[1:], image, out)
        res.versus_argv[v.label] = argv
        res.versus_runs[v.label] = []
        cmds.append((v.label, runner_of(argv, env)))
    for name, fn in [cmds[1], cmds[0], *cmds[2:]]:
        res.warmup[name] = fn()
    for i in range(pairs):
        k = i % len(cmds)
        order = cmds[k:] + cmds[:k]
        if i % 2:
            order.reverse()
        got: Dict[str, Run] = {}
        for name, fn in order:
            got[name] = fn()
        res.tool_runs.append(got["tool"])
        res.ref_runs.append(got["reference"])
        for label in res.versus_runs:
            res.versus_runs[label].append(got[label])
        t = got["tool"].seconds
        log(f"    round {i + 1}/{pairs}: tool {t:.3f} s, "
            + ", ".join(f"{name} {got[name].seconds:.3f} s (ratio {t / got[name].seconds:.3f})"
                        for name, _ in cmds[1:]))
    w = res.warmup["tool"]
    if c.expect_exit is not None and (w.main.exit != c.expect_exit or not w.helpers_ok):
        log(f"    tool exit {w.main.exit} (expected {c.expect_exit}); stderr:\n"
            + "\n".join("      " + x for x in w.main.stderr.splitlines()[-15:]))


def startup_baseline(tool: Tool, runner: Runner) -> Dict[str, Any]:
    """The tool's fixed cost: ``TOOL --help`` (interpreter start-up and imports)."""
    argv = tool.argv + ["--help"]
    runner.run(argv, tool.env, None, "", None)
    runs = [runner.run(argv, tool.env, None, "", None) for _ in range(3)]
    return {"argv": argv, "median_seconds": round(statistics.median(r.seconds for r in runs), 6),
            "rchar": max((r.main.rchar or 0) for r in runs),
            "maxrss_kib": max(r.main.maxrss_kib for r in runs)}


# -- reporting ------------------------------------------------------------------------------


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.{1 if n < 100 * size else 0}f} {unit}"
    return f"{int(n)} B"


def fmt_target(x: Optional[float], prefix: str, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{prefix}{x * 100:g}%" if pct else f"{prefix}{x:g}"


def table(results: Sequence[CaseResult]) -> str:
    head = ("case", "tool s", "ref s", "ratio", "[min-max]", "target", "cpu ratio", "tool read",
            "of image", "target", "RSS MiB", "target", "exit", "result")
    rows: List[Tuple[str, ...]] = []
    for res in results:
        c = res.case
        t = c.targets
        if res.skipped:
            rows.append((c.name, "", "", "", "", "", "", "", "", "", "", "", "",
                         f"SKIP ({res.skipped})"))
            continue
        ratios = res.ratios
        rc = res.max_rchar()
        exits = sorted({r.main.exit for r in res.tool_runs})
        rows.append((
            c.name,
            f"{statistics.median(r.seconds for r in res.tool_runs):.3f}",
            f"{statistics.median(r.seconds for r in res.ref_runs):.3f}",
            f"{statistics.median(ratios):.2f}",
            f"[{min(ratios):.2f}-{max(ratios):.2f}]",
            fmt_target(t.max_ratio, "<="),
            f"{statistics.median(res.cpu_ratios):.2f}",
            fmt_bytes(rc),
            "?" if rc is None else f"{100 * rc / res.image_size:.2f}%",
            fmt_target(t.max_read_fraction, "<=", pct=True),
            f"{res.max_rss_kib() / 1024:.1f}",
            fmt_target(t.max_rss_mib, "<"),
            ",".join(str(e) for e in exits),
            res.verdict(),
        ))
        for v in c.versus:
            name = f"  vs {v.label}"
            if v.label in res.versus_skipped:
                rows.append((name, "", "", "", "", "", "", "", "", "", "", "", "",
                             f"SKIP ({res.versus_skipped[v.label]})"))
                continue
            vr = res.versus_ratios(v.label)
            ok = res.versus_ok(v)
            vexits = sorted({r.main.exit for r in res.versus_runs[v.label]})
            rows.append((
                name, "",
                f"{statistics.median(r.seconds for r in res.versus_runs[v.label]):.3f}",
                f"{statistics.median(vr):.2f}", f"[{min(vr):.2f}-{max(vr):.2f}]",
                fmt_target(v.max_ratio, "<="),
                f"{statistics.median(res.versus_cpu_ratios(v.label)):.2f}",
                "", "", "", "", "", ",".join(str(e) for e in vexits),
                "-" if ok is None else ("PASS" if ok else "FAIL"),
            ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    left = {0, 13}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def first_line(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        return (p.stdout.splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return "?"


def source_state() -> str:
    """The checkout measured: git commit, and whether src/ differs from it (read-only)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(not a git checkout)"
    if not head:
        return "(not a git checkout)"
    return f"at {head}" + (" + uncommitted changes in src/" if dirty else "")


def filesystem(path: str) -> str:
    """The type and mount point of the filesystem ``path`` is on (/proc/mounts)."""
    real = os.path.realpath(path)
    best = ("?", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[1]):
                    best = (parts[2], mnt)
    except OSError:
        pass
    return f"{best[0]} (mounted at {best[1] or '?'}; {real})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="xenstream benchmarks: time ratios against cat/dd run side by side.",
        epilog="cases: " + ", ".join(c.name for c in CASES)
        + "\n(upstream-* cases need --upstream-xen)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small images (256 MiB / 64 MiB) for a fast smoke run")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these cases (shell-style patterns allowed)")
    p.add_argument("--pairs", type=int, default=5, metavar="N",
                   help="timed rounds per case (tool, reference, vs commands), >= 3 (default 5)")
    p.add_argument("--tmpdir", metavar="DIR", default=None,
                   help="where the temporary image directory is made (default: system temp)")
    p.add_argument("--json", metavar="OUT", help="also write all figures to this JSON file")
    p.add_argument("--upstream-xen", metavar="DIR",
                   help="Xen source tree (or its tools/python) to run upstream's "
                   "verify-stream-v2 for comparison")
    p.add_argument("--python", action="store_true",
                   help="run the tools as 'python -m xenstream' instead of console scripts")
    p.add_argument("--env-as-is", action="store_true",
                   help="run the tools in this environment unchanged (default: bytecode is "
                   "cached in the temp dir even if PYTHONDONTWRITEBYTECODE is set)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if any target fails (default: always 0, it is a measurement)")
    p.add_argument("--timeout", type=float, default=1800, metavar="S",
                   help="kill a run that takes longer than this (default 1800 s)")
    return p


def select_cases(only: Optional[Sequence[str]], upstream: bool) -> List[Case]:
    if not only:
        return [c for c in CASES if upstream or not c.upstream]
    chosen: List[Case] = []
    for pat in only:
        hits = [c for c in CASES if fnmatch.fnmatchcase(c.name, pat)]
        if not hits:
            raise BenchError(f"--only {pat}: no such case; cases: "
                             + ", ".join(c.name for c in CASES))
        if not upstream:
            if all(c.upstream for c in hits):
                raise BenchError(f"--only {pat}: upstream cases need --upstream-xen DIR")
            hits = [c for c in hits if not c.upstream]
        chosen += [c for c in hits if c not in chosen]
    return chosen


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pairs < 3:
        print("benchmarks/run.py: --pairs must be >= 3", file=sys.stderr)
        return 2
    try:
        return _main(args)
    except BenchError as e:
        print(f"benchmarks/run.py: error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cases = select_cases(args.only, bool(args.upstream_xen))
    images = {im.name: im for im in IMAGES}
    needed = [images[n] for n in dict.fromkeys(c.image for c in cases)]
    specs = {im.name: (im.quick_spec if args.quick else im.spec) for im in needed}
    cat = shutil.which("cat")
    if cat is None:
        raise BenchError("cat not found on PATH")
    refs: Dict[str, str] = {}
    for c in cases:
        for word in [c.reference[0]] + [v.argv[0] for v in c.versus]:
            if word.startswith(UPSTREAM_PREFIX):
                continue
            prog = shutil.which(word)
            if prog is None:
                raise BenchError(f"reference command {word!r} not found on PATH")
            refs[word] = prog

    parent = args.tmpdir or tempfile.gettempdir()
    if not os.path.isdir(parent):
        raise BenchError(f"--tmpdir {parent}: not a directory")
    est = {n: estimate_size(s) for n, s in specs.items()}
    uses_out = any("{out}" in w for c in cases
                   for w in c.tool + c.reference + tuple(x for v in c.versus for x in v.argv)
                   ) or any(c.consumer or c.stdout_out for c in cases)
    need = sum(est.values()) + (max(est.values()) if uses_out and est else 0) + 64 * MiB
    free = shutil.disk_usage(parent).free
    if free < need:
        raise BenchError(f"not enough free disk in {parent}: the images need {fmt_bytes(need)}, "
                         f"only {fmt_bytes(free)} free (use --tmpdir DIR, or --quick)")
    avail = mem_available()

    workdir = Path(tempfile.mkdtemp(prefix="xenstream-bench-", dir=parent))
    runner = Runner(workdir, args.timeout)
    started = time.time()
    load_start = os.getloadavg()
    try:
        notes: List[str] = []
        upstream: Optional[Tuple[Path, str]] = None
        if args.upstream_xen:
            root, pythonpath, unotes = check_upstream(args.upstream_xen, workdir)
            upstream = (root, pythonpath)
            notes += unotes
        pycache = None if args.env_as_is else workdir / "pycache"
        tool_names = [c.tool[0] for c in cases] + [
            v.argv[0] for c in cases for v in c.versus
            if v.argv[0].startswith(UPSTREAM_PREFIX) and upstream is not None]
        tools = resolve_tools(list(dict.fromkeys(tool_names)), args.python,
                              upstream, tool_env(pycache))
        if pycache is not None:
            notes.append("Python tools run with bytecode cached in the temp dir (PYTHONPYCACHEPREFIX"
                         + ("; the environment's PYTHONDONTWRITEBYTECODE=1 is dropped for them"
                            if os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
                         + "), as an installed package; --env-as-is to keep the environment")
        elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
            notes.append("PYTHONDONTWRITEBYTECODE is set (--env-as-is): the tools compile their "
                         "modules from source on every start")
        if avail is not None and avail < sum(est.values()) + 512 * MiB:
            notes.append(f"only {fmt_bytes(avail)} of memory available for "
                         f"{fmt_bytes(sum(est.values()))} of images: they may not stay in the page "
                         f"cache, and the references then measure the disk")

        image_info: Dict[str, Dict[str, Any]] = {}
        paths: Dict[str, Path] = {}
        for im in needed:
            path = workdir / f"{im.name}.img"
            log(f"generating {im.name} ({fmt_bytes(est[im.name])}) in {workdir} ...")
            info = generate(im, specs[im.name], path)
            log(f"  {fmt_bytes(info['size'])} written in {info['write_seconds']:.1f} s "
                f"(+ fsync {info['fsync_seconds']:.1f} s)")
            if isinstance(specs[im.name], LegacyImageSpec):
                info["check"] = check_legacy_image(path, workdir, tool_env(pycache),
                                                   args.python)
                log(f"  checked: converts ({fmt_bytes(info['check']['converted_size'])}) and "
                    f"verifies, {info['check']['seconds']:.1f} s: "
                    f"{' '.join(info['check']['verify'])}")
            image_info[im.name] = info
            paths[im.name] = path
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        baselines: Dict[str, Dict[str, Any]] = {}
        for name, tool in tools.items():
            baselines[name] = startup_baseline(tool, runner)

        results: List[CaseResult] = []
        for c in cases:
            res = CaseResult(c, image_size=image_info[c.image]["size"])
            results.append(res)
            log(f"{c.name}: warm-up + {args.pairs} pairs ...")
            others: Dict[str, Tuple[List[str], Dict[str, str]]] = {}
            for v in c.versus:
                if v.argv[0].startswith(UPSTREAM_PREFIX):
                    if v.argv[0] not in tools:
                        res.versus_skipped[v.label] = "needs --upstream-xen"
                        continue
                    others[v.label] = (tools[v.argv[0]].argv, tools[v.argv[0]].env)
                else:
                    others[v.label] = ([refs[v.argv[0]]], dict(os.environ))
            run_case(res, runner, tools[c.tool[0]], refs[c.reference[0]], cat,
                     paths[c.image], args.pairs, log, others)
        by_name = {r.case.name: r for r in results}
        for r in results:
            if r.case.rss_vs is not None:
                r.peer = by_name.get(r.case.rss_vs)
    finally:
        runner.close()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = os.getloadavg()

    # report
    out: List[str] = []
    out.append(f"xenstream benchmarks  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
               f"  {'QUICK (small images)' if args.quick else 'full sizes'}, {args.pairs} pairs")
    out.append(f"host: {socket.gethostname()}, Linux {platform.release()}, {os.cpu_count()} CPUs "
               f"({cpu_model()}), Python {platform.python_version()}, "
               f"load {load_start[0]:.2f} -> {load_end[0]:.2f}")
    out.append(f"references: {first_line([cat, '--version'])}; xenstream {source_state()}")
    out.append(f"filesystem of the images and outputs: {filesystem(parent)}")
    for name, tool in tools.items():
        b = baselines[name]
        out.append(f"tool {name}: {tool.how}")
        out.append(f"  start-up ({' '.join([name, '--help'])}): {b['median_seconds']:.3f} s, "
                   f"reads {fmt_bytes(b['rchar'])}, RSS {b['maxrss_kib'] / 1024:.1f} MiB")
    out.append("images (generated in a temp dir, removed at the end):")
    for n, info in image_info.items():
        out.append(f"  {n}: {fmt_bytes(info['size'])} ({info['size']} bytes), written in "
                   f"{info['write_seconds']:.1f} s + fsync {info['fsync_seconds']:.1f} s")
    out.append(f"  generator peak RSS (whole harness): {gen_rss / 1024:.1f} MiB")
    out.append(f"peak-RSS floor: {runner.floor_kib / 1024:.1f} MiB (the measuring process's own "
               f"peak; a spawned command's ru_maxrss cannot be reported below it)")
    for n in notes:
        out.append(f"note: {n}")
    out.append("")
    out.append(table(results))
    out.append("")
    out.append("ratio = median over rounds of (tool wall time / reference wall time), each round "
               "running the tool, the reference and the 'vs' commands in rotating order;")
    out.append("'vs X' rows: the same ratio against X in the same rounds; cpu ratio = "
               "the same with user+system CPU seconds")
    out.append("(information only); tool read = max rchar of the tool process over the timed runs "
               "(includes interpreter")
    out.append("start-up; bytes moved by splice() are not counted); RSS = max ru_maxrss of the tool.")
    for res in results:
        if res.case.rss_vs is not None and res.rss_diff_kib() is not None:
            assert res.peer is not None
            out.append(f"  RSS {res.case.name} {res.max_rss_kib() / 1024:.1f} MiB vs "
                       f"{res.peer.case.name} {res.peer.max_rss_kib() / 1024:.1f} MiB: "
                       f"difference {res.rss_diff_kib() / 1024:+.1f} MiB (target: within "
                       f"{res.case.targets.max_rss_diff_mib:g} MiB)")
    scratch = str(workdir / "out.bin")
    for res in results:
        c = res.case
        pipe = f"{cat} IMAGE | " if c.pipe else ""
        stdin = " <IMAGE" if c.stdin_image else ""
        tail = f" | {cat} >OUT" if c.consumer else " >/dev/null"
        img = str(paths.get(c.image, ""))

        def show(argv: Sequence[str], img: str = img) -> str:
            return " ".join(argv).replace(img, "IMAGE").replace(scratch, "OUT")

        if c.stdout_out:
            tail = " >OUT"
        out.append(f"  {c.name}: tool: {pipe}{show(res.tool_argv)}{stdin}{tail}"
                   f"   reference: {pipe}{show(res.ref_argv)}{stdin}{tail}")
        for label, argv in res.versus_argv.items():
            out.append(f"      vs {label}: {pipe}{show(argv)}{stdin}{tail}")
    print("\n".join(out), flush=True)

    if args.json:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "quick": args.quick, "pairs": args.pairs,
            "filesystem": filesystem(parent),
            "host": {"hostname": socket.gethostname(), "kernel": platform.release(),
                     "cpus": os.cpu_count(), "cpu": cpu_model(),
                     "python": platform.python_version(), "loadavg_start": load_start,
                     "loadavg_end": load_end, "mem_available": avail},
            "references": {"cat": first_line([cat, "--version"]), **refs},
            "xenstream_source": source_state(),
            "tools": {n: {"argv": t.argv, "how": t.how, "startup": baselines[n]}
                      for n, t in tools.items()},
            "images": image_info, "generator_maxrss_kib": gen_rss,
            "rss_floor_kib": runner.floor_kib, "notes": notes,
            "cases": [r.to_json() for r in results],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    failed = [r for r in results if r.verdict().startswith("FAIL")]
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())

