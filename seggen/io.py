"""Atomic file output: write to a temporary name in the same directory, then rename.

A kill at any moment leaves either the old file, the complete new file, or a stray `*.tmp`
that the next run overwrites -- never a truncated output under the real name.

Output ownership. Output ownership: seggen replaces or clears only directories it wrote itself.

Every directory a command writes as a whole (a dataset, a model's output folder, an evaluation, an
export, a sample folder) carries the marker file `.seggen`. A command may replace, clear or write
into such a directory only if it is absent, empty or marked; anything else -- a real dataset, a
folder of the user's -- stops the command with one line naming the directory, before any compute
and with every byte left as it was.

`check_*` are called before a command computes anything (no side effects); `claim` creates the
directory and its marker when the command starts writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seggen.errors import SeggenError

UMASK = os.umask(0)
os.umask(UMASK)


def _default_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give outputs the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def default_modes(tree: Path) -> None:
    """The usual permissions for a whole tree seggen built (safetensors and mkstemp write 0600)."""
    tree = Path(tree)
    _default_mode(tree, directory=tree.is_dir())
    if tree.is_dir():
        for root, dirs, files in os.walk(tree):
            for d in dirs:
                _default_mode(Path(root) / d, directory=True)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    _default_mode(Path(root) / f)


@contextmanager
def created_parents(path: Path) -> Iterator[None]:
    """mkdir -p the parent of `path`; if the block fails, remove the directories this made (when empty),
    so that a failed command leaves no empty folders behind."""
    made = []
    d = path.parent
    while not d.exists():
        made.append(d)
        d = d.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _named_os_errors(tmp_path, path):
            yield tmp_path
            _default_mode(tmp_path)
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def _named_os_errors(tmp: Path, final: Path) -> Iterator[None]:
    """OS errors while building `final` under the temp name `tmp` (a full disk, say) name the output
    the user asked for: the file under `final`, not the temp name (PIL's errors name no file at all)."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        name = str(e.filename) if e.filename is not None else ""
        where = name.replace(str(tmp), str(final), 1) if name.startswith(str(tmp)) else (name or str(final))
        raise OSError(e.errno, e.strerror or str(e), where) from e


def load_yaml(text: str) -> Any:
    """PyYAML's safe load, through libyaml where PyYAML was built with it: a dvc.yaml or dvc.lock
    parses about 8x faster than in pure Python (every stage reads one at start)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


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


def target(path: str | Path) -> Path:
    """Where seggen writes for `path`: a symbolic link is followed (the link stays; its target is
    written, on the disk the user chose), so that an output root can live elsewhere."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _stale(path: Path) -> list[Path]:
    """What an interrupted atomic_dir / staged_files may have left beside `path`: its temp and old
    names, only those that carry seggen's marker (anything else with such a name is the user's)."""

    names = [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.name}.*.old")]
    names.append(path.with_name(f".{path.name}.old"))  # the name earlier versions used
    return [p for p in names if p.is_dir() and not p.is_symlink() and (p / MARKER).is_file()]


def remove_stale(path: Path) -> None:
    """Remove what an interrupted atomic_dir/staged_files left beside `path`: seggen's temp and old
    directories (marked); a folder of the user's with such a name is left alone."""
    for stale in _stale(target(path)):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _built_beside(path: Path) -> Iterator[Path]:
    """A temp directory beside `path` (its parents made, and removed again if the block fails); OS
    errors in the block name `path`, not the temp name. The temp directory carries the marker from
    the start (so that a killed run's leftover is recognised as seggen's) and is gone afterwards."""

    with created_parents(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            mark(tmp, "a temporary directory of seggen's")
            with _named_os_errors(tmp, path):
                yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, what: str, key: str = "output") -> Iterator[Path]:
    """Build a directory under a temp name and swap it in whole when the block succeeds. The new
    directory carries seggen's marker; an existing `path` is replaced only if seggen wrote it
    (checked before the block runs, so nothing is computed for an output that cannot be written).
    A symbolic link at `path` is followed: its target is replaced, the link kept."""

    path = target(check_dir(path, key))
    with _built_beside(path) as tmp:
        yield tmp
        mark(tmp, what)
        default_modes(tmp)
        if path.exists():
            check_dir(path, key)  # still ours after the block ran
            # a fresh name for the old one (never a folder that is already there), removed once swapped
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # onto the empty directory just made
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


@contextmanager
def staged_files(path: str | Path, what: str, key: str = "output") -> Iterator[Path]:
    """Like atomic_dir, but moves each entry into `path` instead of swapping the directory, so files
    other tools keep there (DVC's .gitignore) survive. `path` must be absent, empty or seggen's; it
    is created (with the marker) only when the block succeeds. Entries are moved in name order; the
    caller names the file that marks completion so it sorts last or writes it after."""

    path = target(check_dir(path, key))
    with _built_beside(path) as tmp:
        yield tmp
        claim(path, key, what)
        for entry in sorted(tmp.iterdir()):
            if entry.name == MARKER:  # the temp directory's own; `path` has its marker from claim
                continue
            dest = path / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            default_modes(entry)
            os.replace(entry, dest)


def digest_tree(path: str | Path) -> str:
    """ "sha256:<hex>" over a directory's files (relative path + bytes, sorted), or over one file."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: str | Path, exclude: set[str] = frozenset()) -> dict[str, list]:
    """Relative path -> [size, sha256] of every file under `root` (sorted), but those in `exclude`
    and seggen's ownership marker (not content: it is rewritten when the directory is swapped in)."""

    root = Path(root)
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel not in exclude and rel != MARKER:
            out[rel] = [f.stat().st_size, sha256_file(f)]
    return out


def _listing(listing: Path) -> dict[str, list] | str:
    try:
        return json.loads(listing.read_text())["files"]
    except FileNotFoundError:
        return f"{listing}: missing (no record of the dataset's files)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{listing}: not a seggen file list"


def verify_files(root: str | Path, listing: str | Path) -> str | None:
    """None when every file of `listing` (a file_digests JSON) is under `root` with its size and
    digest; else the first problem, naming the file."""
    root, listing = Path(root), Path(listing)
    recorded = _listing(listing)
    if isinstance(recorded, str):
        return recorded
    for rel, (size, digest) in recorded.items():
        f = root / rel
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != size or sha256_file(f) != digest:
            return f"{f}: changed since it was written"
    return None


def unlisted_files(root: str | Path, listing: str | Path) -> list[Path]:
    """Files under `root` that `listing` does not name (seggen's marker and the listing aside):
    someone else's, which seggen must not delete."""

    root, listing = Path(root), Path(listing)
    recorded = _listing(listing)
    if isinstance(recorded, str) or not root.is_dir():
        return []
    skip = {MARKER, listing.name}
    return [
        f
        for f in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
        if f.relative_to(root).as_posix() not in recorded and f.relative_to(root).as_posix() not in skip
    ]


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 4) -> Path:
    """rows: list of HxWx3 uint8 images of one row each (already concatenated horizontally)."""
    grid = np.concatenate(rows, 0)
    im = Image.fromarray(grid)
    im = im.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return path


# Output ownership

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
    return UMASK
