"""``xenstream sample``: small realistic save images for a first run."""

from __future__ import annotations

from typing import BinaryIO

from xenstream.writers.v2 import ImageSpec, write_image


def sample_spec(*, pv: bool = False, pages: int = 2048, vcpus: int = 2) -> ImageSpec:
    """An xl save file around a libxl v2 stream: HVM with xenstore data and
    emulator context, or (``pv``) a 64-bit PV guest."""
    return ImageSpec(envelope="xl", guest="pv" if pv else "hvm", pages=pages, vcpus=vcpus)


def write_sample(out: BinaryIO, *, pv: bool = False, pages: int = 2048, vcpus: int = 2) -> None:
    write_image(out, sample_spec(pv=pv, pages=pages, vcpus=vcpus))
