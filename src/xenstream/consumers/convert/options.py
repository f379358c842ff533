"""What a conversion is given and what it gives back: the options
(:class:`ConvertOptions`), the result (:class:`ConvertResult`), the error that
names where the input cannot be converted (:class:`ConversionError`), the
converter's version, which the output's domain header carries, and the
:class:`Context` every piece of one conversion shares (input, output, options,
result and log).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from xenstream.consumers.convert.sink import Sink
from xenstream.errors import XenstreamError
from xenstream.io import Source
from xenstream.rules import HEAD

CONVERTER_VERSION = 1  # written as the domain header's xen_minor (xen_major 0)

Log = Callable[[str, str], None]  # (level "info"|"warning", message)


class ConversionError(XenstreamError):
    """The input cannot be converted; ``offset`` names where."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message

    def __str__(self) -> str:
        return f"offset {self.offset:#x}: {self.message}"


# -- options and result ----------------------------------------------------------------


class ConvertOptions:
    def __init__(self, *, out_format: Optional[str] = None, stream_version: int = 3,
                 width: Optional[int] = None, guest: Optional[str] = None, force: bool = False,
                 width_hint: Optional[int] = None, skip_qemu: bool = False,
                 drop_tmem: bool = False, xl: Optional[bool] = None,
                 tmpdir: Optional[str] = None, keep_envelope: bool = True,
                 progress: Optional[Callable[[int], None]] = None,
                 hints: bool = True, upstream_xl: bool = False, target: str = HEAD) -> None:
        self.out_format = out_format  # "libxc" | "libxl" | None: from the envelope
        self.stream_version = stream_version
        self.width = width  # forced toolstack width in bytes (error on contradiction)
        self.width_hint = width_hint  # the drop-in's -w: content overrides it with a warning
        self.guest = guest
        self.force = force
        self.skip_qemu = skip_qemu
        self.drop_tmem = drop_tmem
        self.xl = xl  # drop-in -x: True requires an xl header, False forbids one
        self.tmpdir = tmpdir
        #: False (the drop-in): write the bare stream, as upstream's converter did
        self.keep_envelope = keep_envelope
        self.progress = progress  # called with the input offset now and then
        #: error messages may suggest xenstream convert's options (not the drop-in's)
        self.hints = hints
        #: the drop-in's -x: copy the xl header and optional data as upstream
        #: did, adding STREAMv2 only for libxl output
        self.upstream_xl = upstream_xl
        #: what the output is judged against: HEAD (xenstream convert) or
        #: ANY_RELEASE (the drop-in, run on a restoring host of any release)
        self.target = target


class ConvertResult:
    def __init__(self) -> None:
        self.envelope = ""
        self.output = ""  # description of what was written
        self.width = 0
        self.guest = ""
        self.pages = 0
        self.records = 0
        self.checkpoints = 0
        self.warnings: List[str] = []
        self.sxp: Optional[bytes] = None  # xend config to write beside the output
        self.bytes_written = 0
        #: ids of the rules the output breaks because --force wrote it anyway
        self.forced: List[str] = []
        #: ids of the rules the output breaks that only some releases enforce
        #: (the drop-in writes them with a warning: the restoring host decides)
        self.release_dependent: List[str] = []


class Context:
    """What the pieces of one conversion share: the input and the output, the
    options, the result being filled in and the log (warnings also go into
    the result)."""

    def __init__(self, src: Source, out: Sink, opts: ConvertOptions,
                 log: Optional[Log] = None) -> None:
        self.src = src
        self.out = out
        self.opts = opts
        self.res = ConvertResult()
        self._log = log

    def hint(self, text: str) -> str:
        """``text`` (a suggestion of xenstream convert's options) if hints are on."""
        return text if self.opts.hints else ""

    def info(self, msg: str) -> None:
        if self._log:
            self._log("info", msg)

    def warn(self, msg: str) -> None:
        self.res.warnings.append(msg)
        if self._log:
            self._log("warning", msg)
