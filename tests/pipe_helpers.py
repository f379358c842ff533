"""Pipe helpers shared by the tests: a writer thread and a reader to EOF."""

from __future__ import annotations

import os
import threading


def feeder(fd: int, data: bytes, chunk: int = 4096) -> threading.Thread:
    """Write ``data`` to the pipe ``fd`` ``chunk`` bytes per os.write, then close it."""

    def run() -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view[:chunk])
                view = view[n:]
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def read_all(fd: int) -> bytes:
    """Read ``fd`` to end of file."""
    parts = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(parts)
        parts.append(b)
