"""Rendering of verification results and record listings (text and JSON)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, TextIO

from xenstream.consumers.verify import Result
from xenstream.findings import ERROR, WARNING
from xenstream.formats.legacy import LBatch, LBatchRun
from xenstream.reading import items


def finding_lines(res: Result, name: str, *, warnings: bool = True) -> List[str]:
    out = []
    for f in res.findings:
        if f.severity == ERROR:
            out.append(f.line(name))
        elif f.severity == WARNING and warnings:
            out.append(f"{name}: offset {f.offset:#x}, {f.what}: warning: {f.message}")
    return out


def _libxc_name(s: Dict[str, Any]) -> str:
    return f"libxc v{s['libxc']['version']}" if "libxc" in s else "libxc"


def chain(res: Result) -> str:
    """The layers, outermost first: ``libvirt (v2, XML) -> libxl v2 -> libxc v3``."""
    s = res.summary
    parts: List[str] = []
    for layer in res.layers:
        if layer == "libxc":
            if "xenopsd" in s:
                continue  # shown inside the frame list
            parts.append(_libxc_name(s))
        elif layer == "libxl":
            parts.append("libxl v2")
        elif layer == "xl":
            xs = s.get("xl", {})
            parts.append("xl" + (" (STREAMv2)" if xs.get("streamv2") else ""))
        elif layer == "libvirt":
            lv = s.get("libvirt", {})
            parts.append(f"libvirt (v{lv.get('version')}, XML)")
        elif layer == "xend":
            parts.append("xend (SXP config)")
        elif layer == "xenopsd":
            xo = s.get("xenopsd", {})
            if xo.get("format") == "legacy":
                parts.append("xenopsd legacy image")
            else:
                frames = [_libxc_name(s) if f == "Libxc" else
                          "Xenops metadata" if f == "Xenops" else
                          "end" if f == "End_of_image" else f"{f} record"
                          for f in xo.get("frames", [])]
                parts.append("xenopsd v2 frames" + (f" ({', '.join(frames)})" if frames else ""))
        elif layer == "legacy":
            lg = s.get("legacy", {})
            bits = [f"{lg['width']}-bit toolstack" if lg.get("width") else "",
                    (lg.get("guest_type") or "").upper()]
            parts.append("legacy" + (f" ({', '.join(b for b in bits if b)})"
                                     if any(bits) else ""))
        else:
            parts.append(layer)
    return " -> ".join(parts) if parts else "unrecognised"


def verdict(res: Result, name: str) -> str:
    s = res.summary
    bits = [chain(res)]
    if s.get("guest_type"):
        g = s["guest_type"].upper()
        if s.get("guest_width"):
            g += f" {s['guest_width']}-bit"
        bits.append(g)
    if "pages" in s:
        bits.append(f"{s['pages']} pages")
    if "vcpus" in s:
        bits.append(f"{len(s['vcpus'])} vcpu{'s' if len(s['vcpus']) != 1 else ''}")
    cp = s.get("checkpoints", {})
    if cp.get("kind"):
        bits.append(f"{cp['kind'].upper()}, {cp['complete']} complete checkpoints")
    ne = len(res.errors)
    nw = len(res.warnings)
    state = "valid" if res.valid else f"INVALID ({ne} error{'s' if ne != 1 else ''})"
    if nw:
        state += f", {nw} warning{'s' if nw != 1 else ''}"
    return f"{name}: {state}: {', '.join(bits)}"


def to_json(res: Result) -> str:
    import json

    return json.dumps(res.to_json(), indent=2, sort_keys=False)


def record_line(offset: int, layer: str, index: int, name: str, rest: str) -> str:
    """A record's line in a listing (``verify -v``, ``dump``): offset, layer,
    record number, type, then ``rest``."""
    return f"{offset:#012x}  {layer:<6} #{index:<5} {name:<24} {rest}"


def item_line(offset: int, rest: str) -> str:
    """A header's (or any other item's) line in a listing, after its offset."""
    return f"{offset:#012x}  {rest}"


#: ``-v`` line of each non-record item, after its offset
_ITEM_LINES: Dict[type, Callable[[Any], str]] = {
    items.Header: lambda i: f"{i.layer:<6} {i.kind}: "
                      + ", ".join(f"{k}={v:#x}" for k, v in i.fields.items()),
    items.XlConfig: lambda i: f"xl     optional data: {i.optional_data_len} bytes, "
                        f"config_len {i.config_len}",
    items.Legacy: lambda i: f"legacy {i.guess.describe() if i.guess else 'legacy stream'}",
    items.EndOfInput: lambda i: f"{i.layer:<6} end of input",
    items.Frame: lambda i: f"xenopsd #{i.index:<5} {i.name + ' frame':<24} length {i.length}",
    items.EnvelopeData: lambda i: f"{i.layer:<6} {i.kind}: {i.declared_len} bytes",
    items.Mismatch: lambda i: f"{i.layer:<6} {i.message}",
}


class _Run:
    """The first item of a squashed run (name and layer are all that matter)."""

    def __init__(self, name: str, layer: str) -> None:
        self.name = name
        self.layer = layer
        self.index = 0
        self.offset = 0


class RecordPrinter:
    """``-v`` listing: one line per header or record, runs of PAGE_DATA squashed."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self._run: Optional[Any] = None
        self._run_n = 0
        self._run_bytes = 0

    def _flush(self) -> None:
        if self._run is not None and self._run_n > 1:
            self.emit(f"{'':>12}   ... {self._run_n - 1} more {self._run.name} records "
                      f"({self._run_bytes} bytes in all)")
        self._run = None
        self._run_n = 0
        self._run_bytes = 0

    def __call__(self, item: items.Item) -> None:
        if isinstance(item, items.PageRun):
            if self._run is not None and self._run.name == "PAGE_DATA":
                self._run_n += item.records
                self._run_bytes += item.end - item.offset - 8 * item.records
                return
            self._flush()
            self.emit(record_line(item.offset, item.layer, item.first_index, "PAGE_DATA",
                                  f"{item.records} records, {item.pages} pages"))
            return
        if isinstance(item, LBatchRun):
            if self._run is not None and self._run.name == "legacy batch":
                self._run_n += len(item.batches)
                self._run_bytes += item.pages * 4096
                return
            self._flush()
            self._run = _Run("legacy batch", "legacy")
            self._run_n = len(item.batches)
            self._run_bytes = item.pages * 4096
            self.emit(item_line(item.offset, f"legacy {len(item.batches)} page batches of "
                                f"plain pfns, {item.pages} pages"))
            return
        if isinstance(item, LBatch):
            n = getattr(item, "n_data", 0)
            if self._run is not None and self._run.name == "legacy batch":
                self._run_n += 1
                self._run_bytes += n * 4096
                return
            self._flush()
            self._run = _Run("legacy batch", "legacy")
            self._run_n = 1
            self._run_bytes = n * 4096
            self.emit(item_line(item.offset, f"legacy page batch of "
                                f"{getattr(item, 'count', 0)} pfns, {n} pages"))
            return
        if isinstance(item, items.Record):
            if self._run is not None and item.name == self._run.name and item.layer == self._run.layer:
                self._run_n += 1
                self._run_bytes += item.length
                return
            self._flush()
            if item.name == "PAGE_DATA":
                self._run = item
                self._run_n = 1
                self._run_bytes = item.length
            self.emit(record_line(item.offset, item.layer, item.index, item.name,
                                  f"length {item.length}"))
            return
        self._flush()
        line = _ITEM_LINES.get(type(item))
        if line is not None:
            self.emit(item_line(item.offset, line(item)))
        elif getattr(item, "layer", "") == "legacy":
            self.emit(item_line(item.offset,
                                f"legacy {getattr(item, 'what', type(item).__name__)}"))

    def close(self) -> None:
        self._flush()


def print_lines(lines: List[str], stream: TextIO) -> None:
    for line in lines:
        print(line, file=stream)


__all__ = ["finding_lines", "verdict", "to_json", "RecordPrinter", "chain", "item_line",
           "record_line", "Any"]
