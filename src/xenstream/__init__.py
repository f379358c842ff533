"""xenstream: Xen domain save images and migration streams.

Read every envelope a Xen save image has had, verify it against the
specifications and Xen's restore code, and (later) convert and inspect it.
"""

__version__ = "0.1.0"
