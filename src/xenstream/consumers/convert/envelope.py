"""The envelope around a legacy stream: :class:`Envelope` keeps what the
parser reported of it (xl header and configuration, libvirt header and domain
XML, xend or xenopsd signature), checks that the image is a legacy one, tells
the guest type and device model its configuration names, and writes the
envelope back around the v2 stream; :func:`device_model` reads the device
model from a configuration.
"""

from __future__ import annotations

import json
import re
from typing import Optional

from xenstream.consumers.convert.options import Context, ConversionError
from xenstream.formats import xl
from xenstream.formats.libvirt import VERSION_LEGACY as LIBVIRT_VERSION_LEGACY
from xenstream.reading.parser import EnvelopeData, Header, XlConfig
from xenstream.writers.v2 import libvirt_header, xl_header


class Envelope:
    """The envelope of the input (``kind``: "bare", "xl", "libvirt", "xend" or
    "xenopsd") and its parts, as the parser reports them."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.kind = "bare"
        self.xl_hdr: Optional[Header] = None
        self.xl_cfg: Optional[XlConfig] = None
        self.libvirt_hdr: Optional[Header] = None
        self.libvirt_xml: Optional[bytes] = None
        self.xenopsd_legacy = False

    def header(self, h: Header) -> None:
        if h.kind == "xl header":
            self.kind = "xl"
            self.xl_hdr = h
        elif (h.kind == "libxl header" and self.xl_hdr is not None
              and self.xl_hdr.fields["mandatory_flags"] & xl.MANDATORY_FLAG_STREAMV2):
            raise ConversionError(self.xl_hdr.offset, "expected an xl save file without "
                                  "STREAMv2, found one with it: already a v2 image, nothing "
                                  "to convert")
        elif h.kind == "libvirt header":
            self.kind = "libvirt"
            self.libvirt_hdr = h
        elif h.kind == "xend header":
            self.kind = "xend"
        elif h.kind == "xenopsd legacy signature":
            self.kind = "xenopsd"
            self.xenopsd_legacy = True
        else:
            raise ConversionError(h.offset, f"expected a legacy image, found a {h.kind}: "
                                  "already in the v2 format (nothing to convert)")

    def contradiction(self, offset: int, rule: str, message: str) -> None:
        """A header field that says the stream is a v2 one where a legacy
        stream follows: its own toolstack would fail on the image.  Refused
        unless ``--force``; forced, the output gets the envelope its content
        calls for (which :meth:`write` writes anyway)."""
        if not self.ctx.opts.force:
            raise ConversionError(offset, f"{message} (rule {rule})" + self.ctx.hint(
                "; --force converts it by its content"))
        self.ctx.warn(f"{message} (rule {rule}); converted by its content as forced: the "
                      f"output's {self.kind} header says what it holds")

    def legacy_payload(self) -> None:
        """A legacy stream follows the envelope: check the header's version."""
        h = self.libvirt_hdr
        if h is not None and h.fields["version"] != LIBVIRT_VERSION_LEGACY:
            self.contradiction(h.offset + 16, "libvirt-version-lie",
                               f"expected a libvirt header of version "
                               f"{LIBVIRT_VERSION_LEGACY} before a legacy stream, found version "
                               f"{h.fields['version']}: libxl would read it as a v2 stream "
                               "and fail")

    def data(self, item: EnvelopeData) -> None:
        """The libvirt domain XML is kept; the xend configuration goes into the
        result (it is written beside the output)."""
        if item.layer == "libvirt":
            self.libvirt_xml = item.data
        elif item.layer == "xend":
            self.ctx.res.sxp = item.data

    def device_model(self) -> Optional[str]:
        if self.xl_cfg is not None and self.xl_hdr is not None:
            kind = ("xl-json" if self.xl_hdr.fields["mandatory_flags"] & xl.MANDATORY_FLAG_JSON
                    else "xl-cfg")
            return device_model("xl", kind, self.xl_cfg.config)
        if self.libvirt_xml is not None:
            return device_model("libvirt", "libvirt-xml", self.libvirt_xml)
        return device_model(self.kind, None, None)

    def config_guest(self) -> Optional[str]:
        """'pv' or 'hvm' (PVH is HVM to libxc) as the configuration says."""
        t = self.domain_type()
        return "hvm" if t == "pvh" else t

    def domain_type(self) -> Optional[str]:
        """'pv', 'hvm' or 'pvh' as the image's configuration says, if any."""
        from xenstream.consumers.config import domain_type_of

        if self.xl_cfg is not None and self.xl_cfg.config:
            return domain_type_of("xl-json", self.xl_cfg.config)
        if self.libvirt_xml:
            return domain_type_of("libvirt-xml", self.libvirt_xml)
        if self.ctx.res.sxp:
            return domain_type_of("xend-sxp", self.ctx.res.sxp)
        return None

    def device_model_runs(self) -> bool:
        """The configuration says an HVM guest (a device model runs for it)."""
        return self.domain_type() == "hvm"

    def write(self, fmt: str) -> None:
        """The envelope before a ``fmt`` ("libxc" or "libxl") stream: xl gets
        STREAMv2 for libxl, libvirt version 2, xend an xl header (its
        configuration is written beside the output)."""
        out = self.ctx.out
        if not self.ctx.opts.keep_envelope:
            if self.kind in ("libvirt", "xend"):
                what = "domain XML" if self.kind == "libvirt" else "SXP configuration"
                self.ctx.warn(f"the {self.kind} header and its {what} are not carried into the "
                              "bare output stream (xenstream convert keeps them)")
            return
        if self.kind == "xl":
            assert self.xl_hdr is not None
            f = self.xl_hdr.fields
            flags = f["mandatory_flags"]
            if fmt == "libxl":
                flags |= xl.MANDATORY_FLAG_STREAMV2
            else:
                # the drop-in's -x -f libxc: upstream's output, kept as it was
                self.ctx.warn("the output is an xl header without STREAMv2 before a libxc "
                              "stream, as upstream's converter wrote it: no xl restores that "
                              "(xl reads a v2 stream only after STREAMv2, as a libxl stream; "
                              "-f libxl writes one)")
            # the optional data (configuration and anything after it) verbatim
            opt = self.xl_cfg.raw if self.xl_cfg is not None else b""
            if opt is None:
                raise ConversionError(self.xl_cfg.offset if self.xl_cfg else 0,
                                      "the xl optional data is too large to carry over")
            out.write(xl.MAGIC)
            out.write(xl.HDR.pack(self.xl_hdr.endian, byteorder=f["byteorder"],
                                  mandatory_flags=flags,
                                  optional_flags=f["optional_flags"],
                                  optional_data_len=len(opt)))
            out.write(opt)
        elif self.kind == "libvirt":
            assert self.libvirt_hdr is not None
            xml_data = self.libvirt_xml or b""
            f = self.libvirt_hdr.fields
            libvirt_header(out, xml_data, version=2, nul=False,
                           unused=[f[f"unused{i}"] for i in range(10)])
        elif self.kind == "xend":
            xl_header(out, None, mandatory_flags=xl.MANDATORY_FLAG_STREAMV2)


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
