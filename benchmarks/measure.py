"""The measuring process: spawns commands and measures them (stdlib only).

run.py starts this file as a separate, small process (``python -S -I measure.py``)
and sends it one JSON request per line on stdin; it answers one JSON line per
request on stdout.  Why a separate process: Linux gives an exec'ed child the peak
RSS of the process it was forked/vforked from as a floor for its own
``ru_maxrss`` (``exec_mmap`` folds the old mm's high-water mark into
``signal->maxrss``).  The harness holds images' worth of bookkeeping and
would lend its RSS to every tool run; this process stays at a Python
interpreter's minimum (its own peak, reported as ``floor_kib``, is the floor
below which a child's peak RSS cannot be seen; it is the VmHWM of this process's
own memory, which is what a vforked child inherits).

Per request: the command is started with ``posix_spawn`` (no shell), stdin from
/dev/null or, for a pipeline, from a pipe fed by a producer (``cat IMAGE``) that
this process also spawns; stdout goes to /dev/null, stderr to a file.  Each child
is waited for with ``waitid(WEXITED | WNOWAIT)`` so that it stays a zombie: its
``/proc/PID/io`` (rchar, totals over all its threads) is read then, and
``wait4`` reaps it and gives its rusage.  The time is wall-clock
(``perf_counter``) from just before the first spawn to the last exit.

With ``stdin_file`` the command's stdin is that file, opened read-only (a
seekable descriptor, as libxl hands its converter the saved image's fd).  With
``consumer`` (``[cat]``) the command's stdout is a pipe into the consumer,
whose stdout is ``consumer_out`` (created/truncated): ``... | cat >OUT``.  With
``stdout_file`` the command's stdout is that file (created/truncated): ``>OUT``.

Request:  {"argv": [...], "env": {...}, "producer": [cat, image] | null,
           "stdin_file": path | null, "consumer": [cat] | null, "consumer_out": path | null,
           "stdout_file": path | null, "stderr": path, "timeout": seconds}
Answer:   {"seconds": s, "main": PROC, "producer": PROC | null, "consumer": PROC | null,
           "floor_kib": n}
          PROC = {"exit": n (-N: signal N), "rchar": n | null, "io": {...} | null,
                  "maxrss_kib": n, "utime": s, "stime": s}
"""

import json
import os
import select
import signal
import sys
import time


def _io(pid):
    """/proc/PID/io as a dict (rchar, wchar, syscr, syscw, read_bytes, ...), or None."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k.strip(): int(v) for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        return None


def _hwm_kib():
    """This process's own peak RSS (VmHWM of its mm; not its ru_maxrss, which
    includes the floor it inherited from run.py)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _spawn(argv, env, stdin, stdout, stderr):
    return os.posix_spawn(argv[0], argv, env, file_actions=[
        (os.POSIX_SPAWN_DUP2, stdin, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ])


def _wait(pid, deadline, kill):
    """Wait until ``pid`` has exited, leaving it unreaped; the time seen.  Past
    ``deadline`` the processes in ``kill`` are killed."""
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pfd = -1
    if pfd >= 0:
        try:
            ready, _, _ = select.select([pfd], [], [], max(deadline - time.perf_counter(), 0))
            if not ready:
                for p in kill:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
        finally:
            os.close(pfd)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return time.perf_counter()


def _reap(pid):
    io = _io(pid)  # still a zombie: /proc/PID/io is readable
    _, status, ru = os.wait4(pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "io": io,
            "rchar": None if io is None else io.get("rchar"),
            "maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime}


def measure(req, devnull_r, devnull_w):
    argv = req["argv"]
    env = req["env"]
    producer = req.get("producer")
    consumer = req.get("consumer")
    deadline = time.perf_counter() + req.get("timeout", 1800.0)
    errfd = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    opened = []  # descriptors of this process to close once everything is spawned
    pids = []  # (role, pid) in spawn order
    try:
        stdin = devnull_r
        if req.get("stdin_file"):
            stdin = os.open(req["stdin_file"], os.O_RDONLY)
            opened.append(stdin)
        stdout = devnull_w
        cons_in = cons_out = None
        if req.get("stdout_file"):
            stdout = os.open(req["stdout_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            opened.append(stdout)
        if consumer:
            cons_in, stdout = os.pipe()
            opened += [cons_in, stdout]
            cons_out = os.open(req["consumer_out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            opened.append(cons_out)
        prod_w = None
        if producer:
            stdin, prod_w = os.pipe()
            opened += [stdin, prod_w]
        try:
            t0 = time.perf_counter()
            if producer:
                pids.append(("producer", _spawn(producer, dict(os.environ), devnull_r, prod_w,
                                                errfd)))
            pids.append(("main", _spawn(argv, env, stdin, stdout, errfd)))
            if consumer:
                pids.append(("consumer", _spawn(consumer, dict(os.environ), cons_in, cons_out,
                                                errfd)))
        except BaseException:
            for _, pid in pids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise
        finally:
            for fd in opened:
                os.close(fd)
        everyone = tuple(pid for _, pid in pids)
        ans = {"producer": None, "consumer": None}
        t_last = t0
        # the main command first (its exit is what matters), then the others
        for role, pid in sorted(pids, key=lambda rp: rp[0] != "main"):
            t_last = max(t_last, _wait(pid, deadline, everyone))
            ans[role] = _reap(pid)
        ans["seconds"] = t_last - t0
        return ans
    finally:
        os.close(errfd)


def serve():
    devnull_r = os.open(os.devnull, os.O_RDONLY)
    devnull_w = os.open(os.devnull, os.O_WRONLY)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            ans = measure(req, devnull_r, devnull_w)
        except OSError as e:
            ans = {"error": f"{type(e).__name__}: {e}"}
        ans["floor_kib"] = _hwm_kib()
        sys.stdout.write(json.dumps(ans) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
