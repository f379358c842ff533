"""The verifier's part for an image's envelopes: the xl, libvirt, xend and
xenopsd containers around a libxl/libxc stream (or around a legacy one).

:class:`EnvelopeVerification` creates each envelope's checker when the parser
meets its header, hands it the envelope's data (xl config, libvirt XML, xend
config, xenopsd frames) and tells the rest of the verifier what the image's
own configuration says: the guest type, checked against the stream's, and
the number of vcpus.
"""

from __future__ import annotations

from typing import Optional, Tuple

from xenstream.consumers.verify_context import FindingContext
from xenstream.formats import xenopsd as xenopsd_mod
from xenstream.formats import xl as xl_mod
from xenstream.formats.libvirt import LibvirtChecker
from xenstream.formats.libxc import Report
from xenstream.formats.xend import XendChecker
from xenstream.formats.xenopsd import XenopsdChecker
from xenstream.formats.xl import XlChecker
from xenstream.reading.parser import EnvelopeData, Frame, Header, XlConfig


class EnvelopeVerification:
    """The checkers of the envelope layers of one image, each None until the
    parser meets its header."""

    def __init__(self, report: Report, ctx: FindingContext) -> None:
        self.report = report
        self.ctx = ctx
        self.xl: Optional[XlChecker] = None
        self.libvirt: Optional[LibvirtChecker] = None
        self.xend: Optional[XendChecker] = None
        self.xenopsd: Optional[XenopsdChecker] = None

    def header(self, h: Header) -> bool:
        """Check an envelope's header; False if ``h`` is not one."""
        if h.kind == "libvirt header":
            self.libvirt = LibvirtChecker(self.report)
            self.libvirt.header(h.fields)
        elif h.kind == "xend header":
            self.xend = XendChecker(self.report)
            self.xend.header(h.fields["config_len"])
        elif h.kind in ("xenopsd signature", "xenopsd legacy signature"):
            self.xenopsd = XenopsdChecker(self.report)
            self.xenopsd.info.legacy = h.kind == "xenopsd legacy signature"
        elif h.kind == "xl header":
            self.xl = XlChecker(self.report)
            raw_bo = h.fields["byteorder"]
            self.xl.header(h.endian if raw_bo == xl_mod.BYTEORDER else None, h.fields)
        else:
            return False
        return True

    def xl_config(self, item: XlConfig) -> None:
        assert self.xl is not None
        self.xl.optional_data(item.optional_data_len, item.config_len, item.config)

    def data(self, item: EnvelopeData) -> None:
        if item.layer == "libvirt" and self.libvirt is not None:
            self.libvirt.xml(item.data)
        elif item.layer == "xend" and self.xend is not None:
            self.xend.config(item.data)

    def frame(self, f: Frame) -> None:
        assert self.xenopsd is not None
        self.xenopsd.frame(f.ftype, f.length, f.head or b"")
        if f.ftype == xenopsd_mod.XENOPS:
            self.xenopsd.metadata(f.head)

    def payload(self, kind: str) -> None:
        """The libvirt version field against the content (``"libxl"`` or
        ``"legacy"``): about the libvirt header.  Nothing without libvirt."""
        if self.libvirt is None:
            return
        item = self.ctx.item
        self.ctx.set(16, "header (libvirt header)", "libvirt")
        self.libvirt.payload(kind)
        self.ctx.item = item

    def config_guest(self) -> Optional[Tuple[str, str]]:
        """(guest type, where it comes from) as the image's own configuration says."""
        if self.xl is not None and self.xl.info.guest_type():
            return self.xl.info.guest_type() or "", "the xl config"
        if self.libvirt is not None and self.libvirt.info.domain_type:
            return self.libvirt.info.domain_type, "the libvirt XML"
        if self.xend is not None and self.xend.info.guest:
            return self.xend.info.guest, "the xend config"
        return None

    def check_guest(self, got: Optional[str]) -> None:
        """The libxc domain header's guest type (``"pv"``, ``"hvm"`` or None)
        against the configuration's."""
        cfg = self.config_guest()
        if cfg is None or got is None:
            return
        want = "pv" if cfg[0] == "pv" else "hvm"  # PVH is HVM at the libxc level
        if want != got:
            self.report("guest-type-mismatch",
                        f"expected an x86 {want.upper()} stream ({cfg[1]} says type "
                        f"{cfg[0]!r}), found x86 {got.upper()}: libxc restores into a domain "
                        "built from the config and refuses the other type")

    def device_model(self) -> Optional[Tuple[bool, str]]:
        """Whether the configuration runs a device model for an HVM-type
        (libxc) guest: True for HVM, False for PVH, with where it says so;
        None when there is no configuration to tell."""
        if self.xl is not None and self.xl.info.guest_type() in ("hvm", "pvh"):
            return self.xl.info.guest_type() == "hvm", "the xl config"
        os_type = self.libvirt.info.os_type if self.libvirt is not None else None
        if os_type in ("hvm", "xenpvh"):
            return os_type == "hvm", "the libvirt XML"
        return None

    def no_device_state(self) -> None:
        """An HVM-type libxl stream without EMULATOR_CONTEXT: fine for a PVH
        guest, a lost device state where a device model runs, since libxl
        starts it with ``-incoming`` from that record's data."""
        dm = self.device_model()
        if dm is None:
            self.report("libxl-emulator-unknown",
                        "expected an EMULATOR_CONTEXT record unless the guest is PVH, found "
                        "none, and no configuration says which: an HVM guest's device-model "
                        "state would be missing")
        elif dm[0]:
            self.report("libxl-emulator-missing",
                        f"expected an EMULATOR_CONTEXT record ({dm[1]} runs a device model for "
                        "this HVM guest), found none: libxl starts the device model with "
                        "-incoming from that record's data, and the restore fails without it")

    def nr_vcpus(self) -> Optional[int]:
        """The vcpu count the image's own configuration gives, if any."""
        return (self.xl.info.max_vcpus() if self.xl else
                self.libvirt.info.vcpus if self.libvirt else None)

    def finish(self, pos: int) -> None:
        """The envelope's rules at the end of a stream that was not cut short."""
        if self.xenopsd is not None:
            self.ctx.set(pos, "end of stream", "xenopsd")
            self.xenopsd.finish(complete=self.xenopsd.info.ended)
