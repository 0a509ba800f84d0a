"""Errors that the CLI reports as one line and a non-zero exit (no traceback)."""


class SeggenError(Exception):
    """Base for user-facing errors: the message names the file or key and what is wrong."""


class ConfigError(SeggenError):
    """params.yaml (or an override) is invalid."""


class DataError(SeggenError):
    """A dataset file is missing, malformed or inconsistent."""
