"""Legacy (Xen <= 4.5) save images to streams current Xen restores."""

from xenstream.consumers.compressed import decode_page
from xenstream.consumers.convert.converter import Converter
from xenstream.consumers.convert.envelope import device_model
from xenstream.consumers.convert.options import (
    CONVERTER_VERSION,
    ConversionError,
    ConvertOptions,
    ConvertResult,
)
from xenstream.consumers.convert.sink import Sink
from xenstream.formats.legacy import parse_physmap, physmap_xenstore

__all__ = ["CONVERTER_VERSION", "ConversionError", "Converter", "ConvertOptions",
           "ConvertResult", "Sink", "decode_page", "device_model", "parse_physmap",
           "physmap_xenstore"]
