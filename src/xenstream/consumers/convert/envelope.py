"""The envelope around a legacy stream (xl, libvirt, xend, xenopsd) and what
it says about the image: :func:`device_model` tells which device model's state
the image carries.
"""

from __future__ import annotations

import json
import re
from typing import Optional


def device_model(envelope: str, config_kind: Optional[str], config: Optional[bytes]) -> Optional[str]:
    """"traditional" / "upstream" for the device model whose state an image
    carries, from what its envelope says (None: it does not say).  The QEMU
    state itself does not tell the two apart (both write QEVM version 3 with
    many identical section names), the toolstack's record of it does."""
    if envelope in ("xend", "xenopsd"):
        return "traditional"  # xend ran qemu-dm; XenServer's legacy images too
    if not config:
        return None
    text = config.decode("utf-8", "replace")
    if config_kind == "xl-json":
        try:
            doc = json.loads(text.rstrip("\0"))
        except ValueError:
            return None
        v = doc.get("b_info", {}).get("device_model_version") if isinstance(doc, dict) else None
        return {"qemu_xen_traditional": "traditional", "qemu_xen": "upstream"}.get(str(v))
    if config_kind == "xl-cfg":
        m = re.search(r'^\s*device_model_version\s*=\s*["\']([\w-]+)', text, re.M)
        if m:
            return "traditional" if m.group(1) == "qemu-xen-traditional" else "upstream"
        return None
    if config_kind == "libvirt-xml":
        m = re.search(r"<emulator>([^<]*)</emulator>", text)
        if m:
            return "traditional" if m.group(1).strip().endswith("qemu-dm") else "upstream"
    return None
