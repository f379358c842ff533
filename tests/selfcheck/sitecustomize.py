"""Loaded by every Python subprocess of the test suite (the conftest puts this
directory on PYTHONPATH): verify every conversion it makes."""

import os

if os.environ.get("XENSTREAM_SELFCHECK"):
    try:
        import xenstream_selfcheck
    except ImportError:  # not the project's own interpreter
        pass
    else:
        xenstream_selfcheck.install()
