"""The formats: one module per stream layer and envelope, each holding that
layer's structures (:class:`xenstream.layout.Layout`), constants, names and
checks.  Nothing here reads input; the reading side uses these."""
