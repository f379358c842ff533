"""The converter's I/O strategies write the same bytes.

Page payloads move by one of three paths (``xenstream.io``: large ones in the
kernel, small ones through the parser's window, read with one ``pread`` per
window on a file or exactly as declared on a pipe; typed batches by the
ordinary path).  Whatever the thresholds, the input kind (file, pipe) and the
output kind (file, pipe), the output is byte-identical, and a shared input
descriptor is left exactly at the end of the legacy stream.
"""

from __future__ import annotations

import io as pyio
import os
import threading
from typing import Dict, Iterator, List, Tuple

import pytest

from pipe_helpers import feeder, read_all
from xenstream import io as xio
from xenstream.cli import convert_legacy_stream as dropin
from xenstream.consumers.convert import Converter, ConvertOptions, Sink
from xenstream.io import Source
from xenstream.writers.legacy import LegacySpec, write_legacy

#: name -> (KERNEL_COPY_MIN, DATA_WINDOW, PIPE_DATA_WINDOW)
STRATEGIES: Dict[str, Tuple[int, int, int]] = {
    "default": (xio.KERNEL_COPY_MIN, xio.DATA_WINDOW, xio.PIPE_DATA_WINDOW),
    "all-kernel": (1, xio.DATA_WINDOW, xio.PIPE_DATA_WINDOW),  # no batch is small
    "all-window": (1 << 40, xio.DATA_WINDOW, 1 << 23),  # every batch is small
    # windows smaller than a run: batches cross window ends, runs restart
    "tiny-windows": (1 << 40, 5 * 4096 + 100, 64 * 1024),
    "threshold-3-pages": (3 * 4096, 64 * 1024, 64 * 1024),
}

IMAGES: Dict[str, LegacySpec] = {
    # small batches of 1..8 pages (the live-migration shape)
    "hvm-small": LegacySpec(guest="hvm", pages=300, batch_sizes=tuple(range(1, 9))),
    # full 1024-page batches: the kernel path by default
    "hvm-large": LegacySpec(guest="hvm", pages=2600, batch=1024),
    # mixed sizes around the threshold, with a pfn-less XTAB hole
    "hvm-mixed": LegacySpec(guest="hvm", pages=1500, batch_sizes=(1, 70, 3, 512, 2, 64, 7),
                            holes=(10, 400)),
    # PV: typed page-table pages inside small batches (the ordinary path in the
    # middle of window runs), a live second iteration resending pages
    "pv-small-typed": LegacySpec(guest="pv", pages=200, batch_sizes=(3, 1, 5, 2), live=True),
    # a 32-bit toolstack: 4-byte entries widened to v2 words
    "pv-32bit-toolstack": LegacySpec(guest="pv", width=4, guest_width=4, pages=180,
                                     batch_sizes=(2, 7, 1, 300)),
    # Remus: later checkpoints' pages go to the staging file first
    "remus": LegacySpec(guest="hvm", pages=120, batch_sizes=(1, 2, 3), checkpoints=3),
    "remus-truncated": LegacySpec(guest="hvm", pages=120, batch_sizes=(4, 1), checkpoints=3,
                                  truncate_in_checkpoint=3),
    "remus-compressed": LegacySpec(guest="hvm", pages=100, batch_sizes=(2, 5), checkpoints=3,
                                   compression=True),
}


def _image(name: str) -> bytes:
    buf = pyio.BytesIO()
    write_legacy(buf, IMAGES[name])
    return buf.getvalue()


@pytest.fixture
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    kmin, win, pwin = STRATEGIES[request.param]
    monkeypatch.setattr(xio, "KERNEL_COPY_MIN", kmin)
    monkeypatch.setattr(xio, "DATA_WINDOW", win)
    monkeypatch.setattr(xio, "PIPE_DATA_WINDOW", pwin)
    yield request.param


def _collect(fd: int, into: List[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.append(read_all(fd)), daemon=True)
    t.start()
    return t


def convert(data: bytes, tmp_path, *, pipe_in: bool, pipe_out: bool) -> Tuple[bytes, Converter]:
    """Convert ``data`` in-process, reading a file or a pipe (fed in
    ``4096``-byte writes) and writing a file or a pipe."""
    threads = []
    if pipe_in:
        rfd, wfd = os.pipe()
        threads.append(feeder(wfd, data))
        src = Source(rfd, close_fd=True)
    else:
        path = tmp_path / "in.img"
        path.write_bytes(data)
        src = Source.open(str(path))
    got: List[bytes] = []
    if pipe_out:
        ofd, owfd = os.pipe()
        threads.append(_collect(ofd, got))
        out_fd = owfd
    else:
        out_fd = os.open(tmp_path / "out.img", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    opts = ConvertOptions(tmpdir=str(tmp_path))
    conv = Converter(src, Sink(out_fd), opts)
    try:
        with src:
            conv.run()
    finally:
        os.close(out_fd)
        for t in threads:
            t.join(30)
    if pipe_out:
        os.close(ofd)
        return got[0], conv
    return (tmp_path / "out.img").read_bytes(), conv


_reference: Dict[str, bytes] = {}


def reference(name: str, tmp_path) -> bytes:
    """The output of the ordinary path alone (no bulk runs at all)."""
    if name not in _reference:
        import xenstream.reading.legacy as rl

        data = _image(name)
        mp = pytest.MonkeyPatch()
        try:
            # no runs: every batch is read as an LBatch item and copied from the source
            mp.setattr(rl.LegacyParser, "_plain_run", lambda self, at, n, number: None)
            out, _ = convert(data, tmp_path, pipe_in=False, pipe_out=False)
        finally:
            mp.undo()
        _reference[name] = out
    return _reference[name]


_KINDS = {"file-file": (False, False), "pipe-file": (True, False), "file-pipe": (False, True),
          "pipe-pipe": (True, True)}
#: a compressed Remus stream converts to a regular file only (its pages are
#: read back from the output; test_convert checks the refusal of a pipe)
_CASES = [pytest.param(name, kind, id=f"{name}-{kind}") for name in IMAGES for kind in _KINDS
          if not (IMAGES[name].compression and _KINDS[kind][1])]


@pytest.mark.parametrize("strategy", list(STRATEGIES), indirect=True)
@pytest.mark.parametrize("name,kind", _CASES)
def test_every_strategy_writes_the_same_bytes(tmp_path, strategy: str, name: str,
                                              kind: str) -> None:
    pipe_in, pipe_out = _KINDS[kind]
    want = reference(name, tmp_path)
    out, conv = convert(_image(name), tmp_path, pipe_in=pipe_in, pipe_out=pipe_out)
    assert out == want
    assert conv.res.bytes_written == len(want)


def test_the_paths_are_really_taken(tmp_path, monkeypatch) -> None:
    """The strategies differ: the window path writes with writev and no
    per-batch copy; the kernel path copies each batch by offset."""
    data = _image("hvm-small")
    calls: Dict[str, int] = {"writev": 0, "copy_at": 0, "pread_window": 0}
    real_writev, real_copy_at = Sink.writev, Sink.copy_at

    def writev(self, parts):  # type: ignore[no-untyped-def]
        calls["writev"] += 1
        return real_writev(self, parts)

    def copy_at(self, fd, off, n):  # type: ignore[no-untyped-def]
        calls["copy_at"] += 1
        return real_copy_at(self, fd, off, n)

    monkeypatch.setattr(Sink, "writev", writev)
    monkeypatch.setattr(Sink, "copy_at", copy_at)
    convert(data, tmp_path, pipe_in=False, pipe_out=False)
    assert calls["writev"] >= 1 and calls["copy_at"] == 0, calls
    calls.update(writev=0, copy_at=0)
    monkeypatch.setattr(xio, "KERNEL_COPY_MIN", 1)
    convert(data, tmp_path, pipe_in=False, pipe_out=False)
    assert calls["writev"] == 0 and calls["copy_at"] > 50, calls


def test_small_batches_read_in_few_system_calls(tmp_path) -> None:
    """~300 batches of 1-8 pages from a file: a handful of window reads, not
    one read per batch (Source.bytes_read counts what the OS gave)."""
    data = _image("hvm-small")
    out, conv = convert(data, tmp_path, pipe_in=False, pipe_out=False)
    assert out == reference("hvm-small", tmp_path)
    # every byte is read once (the window), plus the small header reads
    assert conv.src.bytes_read < len(data) * 1.1


TRAILER = b"the toolstack reads on from here" * 100


@pytest.mark.parametrize("strategy", list(STRATEGIES), indirect=True)
@pytest.mark.parametrize("name", ["hvm-small", "hvm-mixed", "pv-small-typed",
                                  "pv-32bit-toolstack"])
def test_shared_pipe_left_at_the_end_of_the_stream(tmp_path, strategy: str, name: str) -> None:
    """The drop-in on a pipe others read on (libxl's convention): not one
    byte past the legacy stream is consumed, whichever path moved the pages."""
    spec = IMAGES[name]
    data = _image(name)
    rfd, wfd = os.pipe()
    feeder(wfd, data + TRAILER)
    out = tmp_path / "out"
    args = ["--in", str(rfd), "--out", str(out), "--width", str(spec.width * 8),
            "--guest", spec.guest]
    try:
        rc = dropin.main(args)
        rest = read_all(rfd)
    finally:
        os.close(rfd)
    assert rc == 0
    # what is left is the trailer, and for HVM the qemu record the drop-in
    # leaves for its caller (upstream's convention)
    assert rest.endswith(TRAILER)
    consumed = len(data) + len(TRAILER) - len(rest)
    assert data[consumed:] + TRAILER == rest


@pytest.mark.parametrize("strategy", list(STRATEGIES), indirect=True)
@pytest.mark.parametrize("name", ["hvm-small", "pv-small-typed"])
def test_shared_file_offset_left_at_the_end_of_the_stream(tmp_path, strategy: str,
                                                          name: str) -> None:
    """The same on a file descriptor: its offset ends exactly where a pipe's
    reading stops (the windows read ahead with pread, which moves no offset)."""
    spec = IMAGES[name]
    data = _image(name)
    path = tmp_path / "in"
    path.write_bytes(data + TRAILER)
    # where the stream ends, as seen on a pipe
    rfd, wfd = os.pipe()
    feeder(wfd, data + TRAILER)
    args = ["--width", str(spec.width * 8), "--guest", spec.guest]
    try:
        assert dropin.main(["--in", str(rfd), "--out", str(tmp_path / "o1"), *args]) == 0
        pipe_end = len(data) + len(TRAILER) - len(read_all(rfd))
    finally:
        os.close(rfd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert dropin.main(["--in", str(fd), "--out", str(tmp_path / "o2"), *args]) == 0
        assert os.lseek(fd, 0, os.SEEK_CUR) == pipe_end
    finally:
        os.close(fd)
    assert (tmp_path / "o1").read_bytes() == (tmp_path / "o2").read_bytes()


@pytest.mark.parametrize("strategy", ["default", "all-window", "tiny-windows"], indirect=True)
def test_truncated_pipe_inside_a_small_batch(tmp_path, strategy: str) -> None:
    """A pipe that ends inside a small batch: a clean error naming an offset
    inside that batch, whichever path read it."""
    data = _image("hvm-small")
    cut = len(data) // 2
    with pytest.raises(Exception) as ei:
        convert(data[:cut], tmp_path, pipe_in=True, pipe_out=False)
    from xenstream.errors import FormatError

    assert isinstance(ei.value, FormatError), ei.value
    assert 0 < ei.value.offset <= cut


def test_pipes_read_or_written_are_grown() -> None:
    """A pipe the converter reads or writes holds PIPE_SIZE bytes (fewer,
    larger transfers), where the system allows that much."""
    import fcntl

    with open("/proc/sys/fs/pipe-max-size") as f:
        limit = int(f.read())
    want = min(xio.PIPE_SIZE, limit)
    r, w = os.pipe()
    try:
        assert fcntl.fcntl(r, 1032) < want  # F_GETPIPE_SZ: 64 KiB by default
        Source(r)
        assert fcntl.fcntl(r, 1032) == want
        r2, w2 = os.pipe()
        try:
            Sink(w2)
            assert fcntl.fcntl(w2, 1032) == want
        finally:
            os.close(r2)
            os.close(w2)
    finally:
        os.close(r)
        os.close(w)
