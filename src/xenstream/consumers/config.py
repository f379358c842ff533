"""The domain configuration an image carries: a consumer of the pull parser.

xl save files carry libxl JSON (or xl cfg text for Xen <= 4.4), libvirt images
their domain XML, xend images an SXP configuration, XenServer images a Xenops
metadata record.  Configuration always precedes the saved stream, so reading
stops at the first record.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from xenstream.formats import xenopsd, xl
from xenstream.io import Source
from xenstream.reading.parser import EnvelopeData, Frame, Header, Parser, XlConfig

KINDS = {
    "xl-json": "libxl JSON domain configuration (xl save file)",
    "xl-cfg": "xl configuration file text (xl save file, Xen <= 4.4)",
    "libvirt-xml": "libvirt domain XML",
    "xend-sxp": "xend SXP domain configuration",
    "xenopsd-sexp": "XenServer xenopsd metadata record (S-expression)",
}


class EmbeddedConfig:
    __slots__ = ("kind", "envelope", "offset", "data")

    def __init__(self, kind: str, envelope: str, offset: int, data: bytes) -> None:
        self.kind = kind
        self.envelope = envelope
        self.offset = offset
        self.data = data

    def text(self) -> str:
        t = self.data.decode("utf-8", errors="replace")
        return t[:-1] if t.endswith("\0") else t

    def to_json(self) -> Dict[str, Any]:
        value: Any = self.text()
        if self.kind == "xl-json":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        return {"kind": self.kind, "description": KINDS[self.kind], "envelope": self.envelope,
                "offset": self.offset, "length": len(self.data), "config": value}


def find_config(src: Source, *, format: Optional[str] = None) -> Optional[EmbeddedConfig]:
    """The first embedded configuration, or None when the image carries none.
    Raises :class:`~xenstream.errors.FormatError` on an image that cannot be read."""
    json_flag = False
    for item in Parser(src, format=format).items():
        if isinstance(item, Header):
            if item.kind == "xl header":
                json_flag = bool(item.fields["mandatory_flags"] & xl.MANDATORY_FLAG_JSON)
            elif item.kind in ("libxl header", "libxc image header"):
                return None  # the saved stream has begun: no configuration before it
        elif isinstance(item, XlConfig):
            if item.config is None:
                return None
            return EmbeddedConfig("xl-json" if json_flag else "xl-cfg", "xl", item.offset + 4,
                                  item.config)
        elif isinstance(item, EnvelopeData):
            if item.data is None:
                return None
            kind = "libvirt-xml" if item.layer == "libvirt" else "xend-sxp"
            return EmbeddedConfig(kind, item.layer, item.offset, item.data)
        elif isinstance(item, Frame):
            if item.ftype == xenopsd.XENOPS and item.head is not None:
                return EmbeddedConfig("xenopsd-sexp", "xenopsd", item.offset + 16, item.head)
            return None
        else:
            return None  # a record, a legacy payload: past any configuration
    return None


def guest_type_of(kind: str, data: bytes) -> Optional[str]:
    """'pv' or 'hvm' (PVH is HVM to libxc) as a configuration of ``kind`` says, if it says."""
    t = domain_type_of(kind, data)
    return "hvm" if t == "pvh" else t


def domain_type_of(kind: str, data: bytes) -> Optional[str]:
    """'pv', 'hvm' or 'pvh' as a configuration of ``kind`` says, if it says."""
    try:
        if kind == "xl-json":
            doc = json.loads(data.rstrip(b"\0").decode("utf-8"))
            t = doc.get("c_info", {}).get("type") if isinstance(doc, dict) else None
            if not isinstance(t, str):
                return None
            return {"pv": "pv", "pvh": "pvh"}.get(t.lower(), "hvm")
        if kind == "libvirt-xml":
            import xml.etree.ElementTree as ET

            node = ET.fromstring(data.rstrip(b"\0")).find("os/type")
            t = (node.text or "").strip().lower() if node is not None else ""
            return {"hvm": "hvm", "xen": "pv", "linux": "pv", "xenpvh": "pvh"}.get(t)
        if kind == "xend-sxp":
            from xenstream.formats.sexp import parse_sxp
            from xenstream.formats.xend import guest_type

            return guest_type(parse_sxp(data.decode("utf-8", "replace").rstrip("\0")))
    except Exception:  # noqa: BLE001 - an unreadable config says nothing
        return None
    return None
