"""Atomic file output: write to a temporary name in the same directory, then rename.

A kill at any moment leaves either the old file, the complete new file, or a stray `*.tmp`
that the next run overwrites -- never a truncated output under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

_UMASK = os.umask(0)
os.umask(_UMASK)


def _default_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give outputs the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _default_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False) + "\n")


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Lossless PNG (uint8 HxW labels or HxWx3 RGB); deterministic bytes for the same array."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", optimize=False)


def write_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    with atomic_path(path, suffix=".jpg") as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="JPEG", quality=quality, subsampling=0)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name and swap it in whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _default_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_files(path: str | Path) -> Iterator[Path]:
    """Like atomic_dir, but moves each entry into `path` instead of swapping the directory, so files
    other tools keep there (DVC's .gitignore) survive. Entries are moved in name order; the caller
    names the file that marks completion so it sorts last or writes it after."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            dest = path / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            _default_mode(entry, directory=entry.is_dir())
            os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def digest_tree(path: str | Path) -> str:
    """"sha256:<hex>" over a directory's files (relative path + bytes, sorted), or over one file."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()
