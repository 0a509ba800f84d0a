"""Errors that the CLI reports as one line and a non-zero exit (no traceback)."""


class SeggenError(Exception):
    """Base for user-facing errors: the message names the file or key and what is wrong."""


class ConfigError(SeggenError):
    """params.yaml (or an override) is invalid."""


class DataError(SeggenError):
    """A dataset file is missing, malformed or inconsistent."""


class TrainingError(SeggenError):
    """A training that cannot go on as configured (a diverging loss): one line, nothing of it saved."""


def not_found(path, kind: str = "file", what: str = "") -> str:
    """The message for a path that is missing -- or that exists as the wrong kind (a directory where a
    file should be, or the reverse), which "not found" would misreport."""
    from pathlib import Path

    p = Path(path)
    label = f"{what} {kind}" if what else kind
    if kind == "file" and p.is_dir():
        return f"{p}: is a directory, expected a {label}"
    if kind == "directory" and p.exists() and not p.is_dir():
        return f"{p}: is a file, expected a {label}"
    return f"{p}: {label} not found"


class TrackingError(SeggenError):
    """An MLflow tracking server that cannot be reached or used, or tracking that a command needs is off."""


def server_lost(e: BaseException) -> bool:
    """True when `e` (or what caused it) says the tracking server cannot be reached any more."""
    seen = 0
    while e is not None and seen < 8:
        name, text = type(e).__name__, str(e)
        lost = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError")
        if name in (*lost, "ProtocolError", "IncompleteRead", "ChunkedEncodingError"):
            return True  # the last three: a server that died while answering
        if any(t in text for t in ("Max retries exceeded", "Connection refused", "Failed to establish")):
            return True
        if "Connection broken" in text or "IncompleteRead" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False
