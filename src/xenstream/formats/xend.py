"""xend ``xm save`` images (``tools/python/xen/xend/XendCheckpoint.py``, Xen 3.x-4.4).

``LinuxGuestRecord`` (16 bytes), a big-endian signed 32-bit config length, the
domain configuration as an S-expression (no NUL), then a legacy libxc stream;
an HVM guest's stream ends with ``QemuDeviceModelRecord`` and the qemu state up
to the end of the file.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from xenstream.formats.sexp import Sexp, SexpError, parse_sxp

MAGIC = b"LinuxGuestRecord"
HEADER_SIZE = len(MAGIC) + 4
CONFIG_MAX = 64 << 20

Report = Callable[..., None]


def child(sx: Sexp, name: str) -> Optional[List[Sexp]]:
    """The first ``(name ...)`` list inside list ``sx``."""
    if isinstance(sx, list):
        for c in sx[1:] if sx and isinstance(sx[0], str) else sx:
            if isinstance(c, list) and c and c[0] == name:
                return c
    return None


def guest_type(sx: Sexp) -> Optional[str]:
    """'hvm' or 'pv' from ``(domain ... (image (hvm ...)))`` / ``(image (linux ...))``."""
    img = child(sx, "image")
    if img is None or len(img) < 2 or not isinstance(img[1], list) or not img[1]:
        return None
    kind = img[1][0]
    if kind == "hvm":
        return "hvm"
    if kind == "linux":
        return "pv"
    return "hvm" if child(img[1], "boot") is not None else None


class XendInfo:
    def __init__(self) -> None:
        self.config_len = 0
        self.config: Optional[bytes] = None
        self.sxp: Optional[Sexp] = None
        self.guest: Optional[str] = None
        self.name: Optional[str] = None


class XendChecker:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.info = XendInfo()

    def header(self, config_len: int) -> None:
        self.info.config_len = config_len
        if config_len <= 0:
            self.report("xend-config-length",
                        f"expected a positive config length, found {config_len}")

    def config(self, data: Optional[bytes]) -> Tuple[Optional[str], Optional[str]]:
        r = self.report
        if data is None:
            r("xend-config-size",
              f"configuration of {self.info.config_len} bytes not checked: larger than "
              "xenstream holds")
            return None, None
        self.info.config = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        if text.endswith("\0"):
            r("xend-config-nul",
              "the configuration ends with a NUL, which xend never wrote")
            text = text.rstrip("\0")
        try:
            sx = parse_sxp(text)
        except SexpError as e:
            r("xend-config-sxp",
              f"expected an S-expression domain configuration, found unparsable text ({e})")
            return None, None
        self.info.sxp = sx
        if not (isinstance(sx, list) and sx and sx[0] == "domain"):
            r("xend-config-sxp",
              "expected a (domain ...) configuration, found "
              f"{(sx[0] if isinstance(sx, list) and sx else sx)!r}")
            return None, None
        self.info.guest = guest_type(sx)
        nm = child(sx, "name")
        if nm is not None and len(nm) > 1 and isinstance(nm[1], str):
            self.info.name = nm[1]
        return self.info.guest, self.info.name
