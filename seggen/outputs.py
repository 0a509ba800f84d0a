"""Output ownership: seggen replaces or clears only directories it wrote itself.

Every directory a command writes as a whole (a dataset, a model's output folder, an evaluation, an
export, a sample folder) carries the marker file `.seggen`. A command may replace, clear or write
into such a directory only if it is absent, empty or marked; anything else -- a real dataset, a
folder of the user's -- stops the command with one line naming the directory, before any compute
and with every byte left as it was.

`check_*` are called before a command computes anything (no side effects); `claim` creates the
directory and its marker when the command starts writing.
"""

from __future__ import annotations

import os
from pathlib import Path

from seggen.errors import SeggenError

MARKER = ".seggen"
# files only seggen writes: outputs of versions before the marker are recognised by them
LEGACY_SIGNS = (
    "seggen_meta.json",
    "seggen_model.json",
    "seggen_segmenter.json",
    "model/seggen_model.json",
    "model/seggen_segmenter.json",
)


class OutputError(SeggenError):
    """An output location cannot be written (a file in the way, someone else's directory, read-only)."""


def _marker_text(what: str) -> str:
    # deterministic: the marker is part of DVC-tracked outputs, whose hashes must not depend on time
    return f"Written by seggen ({what}). seggen replaces or clears only directories that hold this file.\n"


def is_owned(path: str | Path) -> bool:
    """True when `path` is absent, an empty directory, or a directory seggen marked."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_dir():
        return False
    return (path / MARKER).is_file() or any((path / s).is_file() for s in LEGACY_SIGNS) or not any(path.iterdir())


def _writable_ancestor(path: Path, key: str) -> None:
    """The nearest existing ancestor must be a writable directory (else creating `path` fails later)."""
    anc = path.parent
    while not anc.exists():
        if anc.is_symlink():  # a dangling link in the way
            raise OutputError(f"{key} {path}: {anc} is a broken symbolic link")
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{key} {path}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{key} {path}: {anc} is not writable")


def check_dir(path: str | Path, key: str) -> Path:
    """Raise unless seggen may write the directory `path` (named `key` in params or on the command line)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key} {path}: is a file; seggen writes a directory there")
    if path.is_dir():
        if not is_owned(path):
            raise OutputError(
                f"{key} {path}: the directory exists and was not written by seggen (no {MARKER} file in it); "
                f"seggen does not replace it -- choose another {key} or move it away"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{key} {path}: not writable")
        return path
    _writable_ancestor(path, key)
    return path


def check_file(path: str | Path, key: str) -> Path:
    """Raise unless a file can be written at `path` (not a directory; its directory can be made)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{key} {path}: is a directory; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{key} {path}: not writable")
    _writable_ancestor(path, key)
    return path


def claim(path: str | Path, key: str, what: str) -> Path:
    """check_dir, then create the directory and its marker. Returns the path."""
    path = check_dir(path, key)
    path.mkdir(parents=True, exist_ok=True)
    mark(path, what)
    return path


def mark(directory: str | Path, what: str) -> None:
    """Write the marker into a directory seggen is building (e.g. the temp tree of atomic_dir)."""
    marker = Path(directory) / MARKER
    text = _marker_text(what)
    if not marker.is_file() or marker.read_text(errors="replace") != text:
        marker.write_text(text)
        os.chmod(marker, 0o666 & ~_umask())


def _umask() -> int:
    from seggen.io import UMASK

    return UMASK
