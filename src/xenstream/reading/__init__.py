"""The reading side: the pull parser that turns bytes (read through
:mod:`xenstream.io`) into typed items with their offsets, for every layer and
envelope, and the legacy stream's pull parser."""
