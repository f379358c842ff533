"""xenstream: Xen domain save images and migration streams.

Read every envelope a Xen save image has had, verify it against the
specifications and Xen's restore code, and convert legacy images to streams current Xen
restores. The subpackages follow the roles: formats, reading, consumers,
writers, cli (README.md, "Layout").
"""

__version__ = "0.2.0"
