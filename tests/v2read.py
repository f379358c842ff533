"""Read back a converted v2 image into plain Python data, for round-trip tests.

Uses the project's parser (records) but decodes the bodies here, by hand, so
that the comparison with the legacy writer's ``Expected`` does not rest on the
converter's own encoders.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from xenstream.io import Source
from xenstream.reading.parser import EndOfInput, EnvelopeData, Header, Parser, Record, XlConfig


@dataclass
class V2Image:
    layers: List[str] = field(default_factory=list)
    headers: Dict[str, Dict[str, int]] = field(default_factory=dict)
    pages: Dict[int, bytes] = field(default_factory=dict)
    page_types: Dict[int, int] = field(default_factory=dict)
    xtab: set = field(default_factory=set)  # type: ignore[type-arg]
    vcpus: Dict[int, Dict[str, bytes]] = field(default_factory=dict)
    pv_info: Optional[Tuple[int, int]] = None
    p2m: Optional[Tuple[int, int, List[int]]] = None
    hvm_params: Dict[int, int] = field(default_factory=dict)
    hvm_context: Optional[bytes] = None
    tsc: Optional[Tuple[int, int, int, int]] = None
    shared_info: Optional[bytes] = None
    verify_at: Optional[int] = None  # index of the VERIFY record among records
    emulator_context: Optional[Tuple[int, bytes]] = None
    xenstore: List[Tuple[bytes, bytes]] = field(default_factory=list)
    record_names: List[str] = field(default_factory=list)
    end_offset: int = 0
    # additions (all optional for older callers)
    xl_config: Optional[bytes] = None  # the xl header's config bytes, if any
    envelope_data: Dict[str, bytes] = field(default_factory=dict)  # kind -> data (libvirt XML)
    header_offsets: Dict[str, int] = field(default_factory=dict)  # header kind -> offset
    xenstore_id: Optional[int] = None  # EMULATOR_XENSTORE_DATA emulator id
    xenstore_raw: Optional[bytes] = None  # its body after the 8-byte emulator header
    verify_pages: Dict[int, bytes] = field(default_factory=dict)  # pages sent after VERIFY
    page_records: List[List[int]] = field(default_factory=list)  # raw entry words per PAGE_DATA
    tsc_raw: Optional[bytes] = None  # the X86_TSC_INFO body, undecoded
    trailing: bytes = b""  # bytes after where the parser stopped (after the final END)
    input_size: int = 0


def read_v2(path: str) -> V2Image:
    img = V2Image()
    with open(path, "rb") as f:
        raw_all = f.read()
    with Source.open(path) as src:
        p = Parser(src)
        for it in p.items():
            if isinstance(it, Header):
                img.headers[it.kind] = dict(it.fields)
                img.header_offsets[it.kind] = it.offset
                continue
            if isinstance(it, XlConfig):
                img.xl_config = it.config
                continue
            if isinstance(it, EnvelopeData):
                if it.data is not None:
                    img.envelope_data[it.kind] = it.data
                continue
            if isinstance(it, EndOfInput):
                continue
            if not isinstance(it, Record):
                continue
            img.record_names.append(f"{it.layer}:{it.name}")
            body = raw_all[it.body_offset: it.body_offset + it.length]
            if it.layer == "libxc":
                t = it.rtype
                if t == 0x01:
                    count = struct.unpack_from("<I", body)[0]
                    ents = struct.unpack_from(f"<{count}Q", body, 8)
                    img.page_records.append(list(ents))
                    off = 8 + 8 * count
                    for e in ents:
                        pfn, typ = e & ((1 << 52) - 1), e >> 60
                        if typ == 0xF:
                            img.xtab.add(pfn)
                            continue
                        img.page_types[pfn] = typ
                        if typ in (0xD, 0xE):
                            continue
                        img.pages[pfn] = body[off: off + 4096]
                        if img.verify_at is not None:
                            img.verify_pages[pfn] = body[off: off + 4096]
                        off += 4096
                elif t == 0x02:
                    img.pv_info = (body[0], body[1])
                elif t == 0x03:
                    s, e = struct.unpack_from("<II", body)
                    n = (len(body) - 8) // 8
                    img.p2m = (s, e, list(struct.unpack_from(f"<{n}Q", body, 8)))
                elif t in (0x04, 0x05, 0x06, 0x0C):
                    vid = struct.unpack_from("<I", body)[0]
                    key = {4: "basic", 5: "extended", 6: "xsave", 0xC: "msrs"}[t]
                    img.vcpus.setdefault(vid, {})[key] = body[8:]
                elif t == 0x07:
                    img.shared_info = body
                elif t == 0x08:
                    img.tsc = struct.unpack_from("<IIQI", body)
                    img.tsc_raw = body
                elif t == 0x09:
                    img.hvm_context = body
                elif t == 0x0A:
                    n = struct.unpack_from("<I", body)[0]
                    for i in range(n):
                        k, v = struct.unpack_from("<QQ", body, 8 + 16 * i)
                        img.hvm_params[k] = v
                elif t == 0x0D:
                    img.verify_at = len(img.record_names) - 1
            else:
                if it.rtype == 2:
                    data = body[8:]
                    img.xenstore_id = struct.unpack_from("<I", body)[0]
                    img.xenstore_raw = data
                    parts = data.split(b"\0")
                    img.xenstore = [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
                elif it.rtype == 3:
                    img.emulator_context = (struct.unpack_from("<I", body)[0], body[8:])
        img.layers = list(p.state.layers)
        img.end_offset = src.pos
        img.input_size = len(raw_all)
        img.trailing = raw_all[img.end_offset:]
    return img
