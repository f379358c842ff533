"""The consumers of the pull parser: verify, convert, config, and the
reports they share."""
