"""Command-line interfaces: ``xenstream`` and the upstream drop-ins."""
