"""Helpers for test_streams.py: build streams with the writer API, verify them
from a file, and pick findings apart.

Streams are built in memory (the writer only needs a binary file object) and
written to a file under ``tmp_path`` to be verified, since
:class:`xenstream.io.Source` works on file descriptors.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from xenstream.consumers.verify import Result, verify
from xenstream.findings import WARNING, Finding
from xenstream.io import Source
from xenstream.reading.parser import EndOfInput, Header, Legacy, Parser, Record, XlConfig
from xenstream.writers.legacy import LegacySpec, write_legacy
from xenstream.writers.v2 import (
    ImageSpec,
    LibxcWriter,
    LibxlWriter,
    default_config,
    write_image,
    write_libxc,
    xl_header,
)

_counter = itertools.count()


# -- building ------------------------------------------------------------------


def image(**kw: Any) -> bytes:
    """A whole valid image from :func:`write_image` (small by default)."""
    kw.setdefault("pages", 4)
    out = io.BytesIO()
    write_image(out, ImageSpec(**kw))
    return out.getvalue()


def libxl_stream(spec: Optional[ImageSpec] = None, *, header: Optional[Dict[str, Any]] = None,
                 before: Optional[Callable[[LibxlWriter], None]] = None,
                 after: Optional[Callable[[LibxlWriter], None]] = None,
                 emu: bool = True, end: bool = True, ctx: bool = True,
                 endian: str = "<") -> bytes:
    """A plain libxl stream: header, [before], LIBXC_CONTEXT, libxc stream,
    [after], the emulator records (HVM), END.  Each part can be left out."""
    spec = spec or ImageSpec(envelope="libxl", pages=4, endian=endian)
    out = io.BytesIO()
    lw = LibxlWriter(out, spec.endian)
    lw.header(**(header or {}))
    if before is not None:
        before(lw)
    if ctx:
        lw.libxc_context()
    write_libxc(lw.libxc(version=spec.version), spec, lw)
    if after is not None:
        after(lw)
    if emu and spec.guest == "hvm":
        lw.xenstore_data(spec.xenstore)
        lw.emulator_context(spec.emulator_context)
    if end:
        lw.end()
    return out.getvalue()


def legacy_stream(guest: str = "pv", width: int = 8, **kw: Any) -> bytes:
    """A whole, sound legacy (Xen <= 4.5) stream without an envelope, from the
    legacy writer (8 pages: room for the PV page tables and HVM magic pfns)."""
    kw.setdefault("pages", 8)
    kw.setdefault("guest_width", width)
    out = io.BytesIO()
    write_legacy(out, LegacySpec(guest=guest, width=width, **kw))
    return out.getvalue()


def minimal_hvm_libxc(w: LibxcWriter, pages: int = 8) -> None:
    """Headers and the first (complete) iteration of a small HVM libxc stream,
    without END or CHECKPOINT."""
    w.headers("hvm")
    w.cpuid_policy()
    w.msr_policy()
    w.static_data_end()
    w.page_data(list(range(pages)))
    hvm_tail(w, pages)


def hvm_tail(w: LibxcWriter, pages: int = 8) -> None:
    """The end-of-checkpoint records of an HVM guest."""
    w.tsc_info()
    w.hvm_context()
    w.hvm_params({1: pages - 1})


def libxl_custom(fn: Callable[[LibxlWriter, LibxcWriter], None], endian: str = "<") -> bytes:
    """libxl header and LIBXC_CONTEXT, then whatever ``fn`` writes with the
    libxl and libxc writers (for hand-made checkpoint sequences)."""
    out = io.BytesIO()
    lw = LibxlWriter(out, endian)
    lw.header()
    lw.libxc_context()
    fn(lw, lw.libxc())
    return out.getvalue()


def libxc_custom(fn: Callable[[LibxcWriter], None], endian: str = "<") -> bytes:
    out = io.BytesIO()
    fn(LibxcWriter(out, endian=endian))
    return out.getvalue()


def xl_image(spec: Optional[ImageSpec] = None, payload: Optional[bytes] = None,
             config: Any = "default", **xl_kw: Any) -> bytes:
    """An xl header (``xl_kw`` go to :func:`xl_header`) then ``payload`` or
    the libxl stream of ``spec``."""
    spec = spec or ImageSpec(envelope="xl", pages=4)
    out = io.BytesIO()
    xl_header(out, default_config(spec) if config == "default" else config, **xl_kw)
    if payload is None:
        write_image(out, replace(spec, envelope="libxl"))
    else:
        out.write(payload)
    return out.getvalue()


def xl_raw_optional(optional: bytes, payload: Optional[bytes] = None, **xl_kw: Any) -> bytes:
    """An xl header whose optional data is exactly ``optional`` (hand-made
    config_len and config), then a valid libxl stream."""
    out = io.BytesIO()
    xl_header(out, None, optional_data_len=len(optional), **xl_kw)
    out.write(optional)
    out.write(payload if payload is not None else image(envelope="libxl"))
    return out.getvalue()


# -- verifying -------------------------------------------------------------------


def write_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"img{next(_counter)}.bin"
    p.write_bytes(data)
    return p


def check(tmp_path: Path, data: bytes, **kw: Any) -> Result:
    """verify() on ``data`` read from a file."""
    p = write_file(tmp_path, data)
    with Source.open(str(p)) as src:
        return verify(src, **kw)


class Item(NamedTuple):
    kind: str  # Header / XlConfig / Record / Legacy / EndOfInput
    layer: str
    offset: int
    name: str  # header kind or record type name
    length: int  # record body length (0 for the rest)
    end: int  # offset just after the item (records: padded body)
    index: int  # record index (-1 for the rest)


def items_of(tmp_path: Path, data: bytes) -> List[Item]:
    """The parser's items of a valid stream, with their extents."""
    out: List[Item] = []
    p = write_file(tmp_path, data)
    with Source.open(str(p)) as src:
        parser = Parser(src)
        for it in parser.items():
            if isinstance(it, Record):
                padded = it.length + (-it.length % 8)
                out.append(Item("Record", it.layer, it.offset, it.name, it.length,
                                it.offset + 8 + padded, it.index))
            elif isinstance(it, Header):
                out.append(Item("Header", it.layer, it.offset, it.kind, 0,
                                it.offset + it.size, -1))
            elif isinstance(it, XlConfig):
                out.append(Item("XlConfig", it.layer, it.offset, "xl optional data", 0,
                                it.offset + it.optional_data_len, -1))
            elif isinstance(it, (Legacy, EndOfInput)):
                out.append(Item(type(it).__name__, it.layer, it.offset, "", 0, it.offset, -1))
    return out


def sig(f: Finding) -> Tuple[str, str, str, bool]:
    return (f.rule, f.severity, f.authority, f.restore_tolerates)


def sigs(res: Result) -> List[Tuple[str, str, str, bool]]:
    return [sig(f) for f in res.findings]


def rules(res: Result) -> List[str]:
    return [f.rule for f in res.findings]


def minus_device_state_warning(res: Result) -> Result:
    """``res`` without its one ``libxl-emulator-unknown`` warning (an HVM-type
    libxl stream without EMULATOR_CONTEXT and no config to say whether it is
    PVH): for tests whose hand-built streams leave the record out."""
    found = [f for f in res.findings if f.rule == "libxl-emulator-unknown"]
    assert len(found) == 1 and found[0].severity == WARNING, [f.rule for f in res.findings]
    res.findings.remove(found[0])
    return res


def only(res: Result, rule: str) -> Finding:
    """The single finding of ``res`` (asserting there is exactly one) with ``rule``."""
    assert len(res.findings) == 1, [(f.rule, f.message) for f in res.findings]
    f = res.findings[0]
    assert f.rule == rule, (f.rule, f.message)
    return f


def one_of(res: Result, rule: str) -> Finding:
    """The one finding with ``rule`` (others may exist)."""
    found = [f for f in res.findings if f.rule == rule]
    assert len(found) == 1, [(f.rule, f.message) for f in res.findings]
    return found[0]


def load_json(text: str) -> Dict[str, Any]:
    doc = json.loads(text)
    assert isinstance(doc, dict)
    return doc
