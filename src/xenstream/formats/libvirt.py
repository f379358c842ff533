"""libvirt's libxl-driver save image (``virsh save``, managed save).

A 64-byte header (``src/libxl/libxl_conf.h``, ``libxlSavefileHeader``), the
domain XML (``xmlLen`` bytes, NUL included), then a bare libxl v2 stream
(``version`` 2) or a legacy stream (``version`` 1), with no xl header.
Checks follow ``libxlDomainSaveImageOpen`` (``src/libxl/libxl_domain.c``); the
version is handed to libxl as ``stream_version``, which converts iff it is 1.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from xenstream.layout import Layout

MAGIC = b"libvirt-xml\n \0 \r"
HDR = Layout("libvirt header", [("version", "I"), ("xml_len", "I")]
             + [(f"unused{i}", "I") for i in range(10)])
HEADER_SIZE = len(MAGIC) + HDR.size  # 64
VERSION_LEGACY = 1  # a legacy stream follows: libxl runs the converter
VERSION_V2 = 2  # a libxl v2 stream follows
VERSION_MAX = 2
#: XML larger than this is skipped rather than held when checking.
XML_MAX = 64 << 20

Report = Callable[..., None]


class LibvirtInfo:
    def __init__(self) -> None:
        self.version = 0
        self.xml_len = 0
        self.xml: Optional[bytes] = None
        self.name: Optional[str] = None
        self.domain_type: Optional[str] = None  # "hvm" / "pv" from <os><type>
        self.os_type: Optional[str] = None  # <os><type> as written ("hvm", "xenpvh", "xen")
        self.vcpus: Optional[int] = None  # <vcpu>


class LibvirtChecker:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.info = LibvirtInfo()

    def header(self, f: Dict[str, int]) -> None:
        r = self.report
        i = self.info
        i.version = f["version"]
        i.xml_len = f["xml_len"]
        if f["version"] > VERSION_MAX:
            r("libvirt-version",
              f"expected version 1 or 2, found {f['version']} (libvirt: \"image version is not "
              "supported\")")
        elif f["version"] == 0:
            r("libvirt-version-zero",
              "expected version 1 or 2, found 0: libvirt accepts it and libxl reads the stream "
              "as v2")
        if f["xml_len"] == 0:
            r("libvirt-xml-length",
              "expected a non-zero xmlLen, found 0 (libvirt: \"invalid XML length\")")
        unused = [n for n in HDR.names if n.startswith("unused") and f[n]]
        if unused:
            r("libvirt-reserved",
              f"expected the unused header words zero, found {', '.join(unused)} non-zero")

    def xml(self, data: Optional[bytes]) -> None:
        """The XML as stored (``xmlLen`` bytes), or None when too large to hold."""
        r = self.report
        if data is None:
            r("libvirt-xml-size",
              f"domain XML of {self.info.xml_len} bytes not checked: larger than xenstream holds")
            return
        if not data.endswith(b"\0"):
            r("libvirt-xml-nul",
              "expected the domain XML to end with a NUL (libvirt parses it as a C string), "
              "found none")
            text = data
        else:
            text = data[:-1]
            if b"\0" in text:
                r("libvirt-xml-nul-inner",
                  "expected one NUL, at the end of the XML, found another inside it")
                text = text.split(b"\0", 1)[0]
        self.info.xml = text
        try:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(text)
        except Exception as e:  # noqa: BLE001 - any parse failure is a finding
            r("libvirt-xml",
              f"expected a well-formed domain XML, found unparsable data ({e})")
            return
        if root.tag != "domain":
            r("libvirt-xml",
              f"expected a <domain> element, found <{root.tag}>")
            return
        name = root.find("name")
        self.info.name = name.text if name is not None else None
        vcpu = root.find("vcpu")
        if vcpu is not None and vcpu.text and vcpu.text.strip().isdigit():
            self.info.vcpus = int(vcpu.text.strip()) or None
        ostype = root.find("os/type")
        if ostype is not None and ostype.text:
            t = ostype.text.strip().lower()
            self.info.os_type = t
            self.info.domain_type = {"hvm": "hvm", "xen": "pv", "linux": "pv",
                                     "xenpvh": "hvm"}.get(t)

    def payload(self, kind: str) -> None:
        """``kind`` of what follows the XML: "libxl" or "legacy" (from content)."""
        v = self.info.version
        if kind == "libxl" and v == VERSION_LEGACY:
            self.report("libvirt-version-lie",
                        "expected a legacy stream (header version 1), found a libxl v2 stream: "
                        "libxl would run the legacy converter on it and fail (the 2016 "
                        "libvirt version mix-up)")
        elif kind == "legacy" and v != VERSION_LEGACY:
            self.report("libvirt-version-lie",
                        f"expected a libxl v2 stream (header version {v}), found a legacy "
                        "stream: libxl would read it as v2 and fail")
