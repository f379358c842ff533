"""Every conversion the test suite makes is verified: xenstream convert and
the drop-in never write a file their own verifier rejects (issue 8).

:func:`install` wraps :func:`xenstream.cli.convert_cmd.run_conversion`, the
common path of both front ends: after a successful conversion to a file, the
file is verified with default options.  It must be valid, except that a
conversion written with ``--force`` fails exactly on the rules it forced, the
drop-in's output (judged for any release from 4.6, not for HEAD) exactly on
the release-dependent rules it warned about, and
the drop-in's ``-x -f libxc`` (upstream's own output: an xl header without
STREAMv2 before a libxc stream) fails exactly on ``xl-streamv2-lie`` (a
xend image's output on at most those: its configuration is not inside it).  A
violation is appended to the file named by ``$XENSTREAM_SELFCHECK`` (the
test's conftest fails the test on it) and raised in this process.

Subprocesses load it through ``sitecustomize`` (the conftest puts this
directory on ``PYTHONPATH``); the test process through the conftest.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Optional, Set

_installed = False


def _expected_errors(opts: Any, res: Any) -> Set[str]:
    if opts.upstream_xl and res.envelope == "xl" and opts.out_format == "libxc":
        return {"xl-streamv2-lie"}
    return set(res.forced) | set(getattr(res, "release_dependent", ()))


def _output_path(out: Any, res: Any) -> Optional[str]:
    if out.final is not None:
        return str(out.final)
    if out.fd is None:
        return None
    try:
        st = os.fstat(out.fd)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != res.bytes_written:
        return None  # a pipe, or a file the output does not fill
    return f"/proc/self/fd/{out.fd}"


def check(path: str, opts: Any, res: Any) -> None:
    from xenstream.consumers import restorability
    from xenstream.consumers.verify import verify
    from xenstream.io import Source
    from xenstream.rules import ANY_RELEASE, HEAD, RULES

    target = getattr(opts, "target", HEAD)
    release = target not in (HEAD, ANY_RELEASE)  # convert --target-xen X.Y
    with Source.open(path) as src:
        result = verify(src, releases=release)
    errors = {f.rule for f in result.errors}
    want = _expected_errors(opts, res)
    msg = ""
    if release:
        # judged for that release, the output fails exactly on what was forced; plain
        # verify never raises the rules only a release judging raises
        at = {f.rule for f in restorability.findings_at(result, target) if f.severity == "error"}
        if at != set(res.forced):
            msg = (f"selfcheck: the conversion to {path} fails Xen {target}'s judging on "
                   f"{sorted(at)}, expected {sorted(res.forced)}")
        want = {r for r in want if not RULES[r].uses}
    # a xend image's configuration goes beside the output (OUT.sxp): what the
    # converter judged from it, the verifier of the output cannot see
    seen = errors <= want if res.envelope == "xend" else errors == want
    if not seen:
        msg = (f"selfcheck: the conversion to {path} fails verify on {sorted(errors)}, expected "
               f"{sorted(want)}: " + "; ".join(f.message for f in result.errors))
    if msg:
        log = os.environ.get("XENSTREAM_SELFCHECK")
        if log:
            with open(log, "a") as f:
                f.write(msg + "\n")
        raise AssertionError(msg)


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from xenstream.cli import convert_cmd

    inner = convert_cmd.run_conversion

    def run_conversion(src: Any, out: Any, opts: Any, log: Any) -> Any:
        res = inner(src, out, opts, log)
        path = _output_path(out, res)
        if path is not None:
            check(path, opts, res)
        return res

    convert_cmd.run_conversion = run_conversion  # type: ignore[assignment]
