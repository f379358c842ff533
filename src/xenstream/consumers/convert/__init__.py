"""Legacy (Xen <= 4.5) save images to streams current Xen restores."""

from xenstream.consumers.convert.converter import (
    CONVERTER_VERSION,
    ConversionError,
    Converter,
    ConvertOptions,
    ConvertResult,
    Sink,
    decode_page,
    device_model,
)
from xenstream.formats.legacy import parse_physmap, physmap_xenstore

__all__ = ["CONVERTER_VERSION", "ConversionError", "Converter", "ConvertOptions",
           "ConvertResult", "Sink", "decode_page", "device_model", "parse_physmap",
           "physmap_xenstore"]
