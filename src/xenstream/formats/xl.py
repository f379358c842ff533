"""xl save-file header (``tools/xl/xl.h``, ``xl_saverestore.c``, ``xl_vmcontrol.c``).

48 bytes: a 32-byte magic, then byteorder, mandatory_flags, optional_flags and
optional_data_len in the saving host's byte order; then the optional data,
which starts with ``config_len`` and the domain configuration.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, Dict, Optional

from xenstream.layout import Layout

MAGIC = b"Xen saved domain, xl format\n \0 \r"
BYTEORDER = 0x01020304
HDR = Layout(
    "xl header fields",
    [("byteorder", "I"), ("mandatory_flags", "I"), ("optional_flags", "I"), ("optional_data_len", "I")],
)
HEADER_SIZE = len(MAGIC) + HDR.size  # 48

MANDATORY_FLAG_JSON = 1 << 0
MANDATORY_FLAG_STREAMV2 = 1 << 1
MANDATORY_FLAG_ALL = MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2

#: No limit in xl; when the input is not seekable we refuse configs beyond this.
OPTIONAL_DATA_STREAM_LIMIT = 64 << 20

Report = Callable[..., None]


def byte_order(raw4: bytes) -> Optional[str]:
    """'<' or '>' from the raw byteorder word, None if it is neither."""
    if raw4 == struct.pack("<I", BYTEORDER):
        return "<"
    if raw4 == struct.pack(">I", BYTEORDER):
        return ">"
    return None


class XlInfo:
    def __init__(self) -> None:
        self.endian = "<"
        self.mandatory_flags = 0
        self.optional_flags = 0
        self.optional_data_len = 0
        self.streamv2 = False
        self.config_kind: Optional[str] = None  # "json" | "xl-cfg"
        self.config: Optional[bytes] = None
        self.config_json: Optional[Dict[str, Any]] = None

    def _b_or_c_info(self, section: str, key: str) -> Any:
        """``config_json[section][key]`` (None where the config lacks it)."""
        info = self.config_json.get(section) if self.config_json else None
        return info.get(key) if isinstance(info, dict) else None

    def guest_type(self) -> Optional[str]:
        """'pv' / 'hvm' / 'pvh' from the JSON config, if it says."""
        t = self._b_or_c_info("c_info", "type")
        return t.lower() if isinstance(t, str) else None

    def max_vcpus(self) -> Optional[int]:
        v = self._b_or_c_info("b_info", "max_vcpus")
        return v if isinstance(v, int) and v > 0 else None
        b_info = self.config_json.get("b_info")
        if isinstance(b_info, dict):
            v = b_info.get("max_vcpus")
            if isinstance(v, int) and v > 0:
                return v
        return None


class XlChecker:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.info = XlInfo()

    def header(self, endian: Optional[str], f: Dict[str, int]) -> None:
        r = self.report
        i = self.info
        if endian is None:
            r("xl-byteorder",
              f"expected byteorder 0x01020304, found {f['byteorder']:#010x}")
            endian = "<"
        elif endian == ">":
            r("xl-big-endian",
              "expected a little-endian save file (byteorder bytes 04 03 02 01), found a "
              "big-endian one: xl refuses it (\"wrong byte order\")")
        i.endian = endian
        i.mandatory_flags = f["mandatory_flags"]
        i.optional_flags = f["optional_flags"]
        i.optional_data_len = f["optional_data_len"]
        i.streamv2 = bool(f["mandatory_flags"] & MANDATORY_FLAG_STREAMV2)
        unknown = f["mandatory_flags"] & ~MANDATORY_FLAG_ALL
        if unknown:
            r("xl-mandatory-flags",
              f"expected mandatory flags within {MANDATORY_FLAG_ALL:#x}, found "
              f"{f['mandatory_flags']:#x} (xl: \"need newer xl\")")
        if f["optional_flags"]:
            r("xl-optional-flags",
              f"unknown optional flags {f['optional_flags']:#x} (xl ignores them)")

    def optional_data(self, odl: int, clen: Optional[int], cfg: Optional[bytes]) -> None:
        """``odl`` optional_data_len; ``clen`` config_len (None if odl < 4);
        ``cfg`` the config bytes (None if they are not all there or too large)."""
        r = self.report
        i = self.info
        if odl == 0:
            if i.mandatory_flags & MANDATORY_FLAG_JSON:
                r("xl-config-missing",
                  "expected a JSON configuration (JSON flag set), found no optional data")
            return
        if clen is None:
            r("xl-config-length",
              f"expected at least 4 bytes of optional data (config_len), found {odl}")
            return
        if clen > odl - 4:
            r("xl-config-length",
              f"expected config_len <= {odl - 4} (the optional data left), found {clen}")
            return
        if cfg is None:
            r("xl-config-size",
              f"configuration of {clen} bytes not checked: larger than xenstream holds")
            return
        i.config = cfg
        if i.mandatory_flags & MANDATORY_FLAG_JSON:
            i.config_kind = "json"
            text = cfg
            if text.endswith(b"\0"):
                text = text[:-1]
            else:
                r("xl-config-nul",
                  "expected the JSON configuration to be NUL-terminated, found no NUL")
            try:
                doc = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                r("xl-config-json",
                  f"expected a JSON domain configuration, found unparsable data ({e})")
                return
            if isinstance(doc, dict):
                i.config_json = doc
            else:
                r("xl-config-json",
                  "expected a JSON object as domain configuration, found "
                  f"{type(doc).__name__}")
        else:
            i.config_kind = "xl-cfg"
