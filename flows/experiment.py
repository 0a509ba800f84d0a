"""A flow run as a DVC experiment, never touching the checkout it was asked to run in.

The run works in a git worktree of the checkout's current state (HEAD plus its uncommitted changes
to tracked files and its untracked, not ignored files: what `dvc exp run` would take), sharing the
checkout's DVC cache, so the outputs the checkout already has are checked out, not recomputed. The
form's params are written into the worktree's params file; the stages run there; the result is saved
with `dvc exp save` under the flow run's name, so it appears in the checkout's `dvc exp show` and
`dvc exp apply NAME` promotes it. The worktree is removed afterwards. Two runs have two worktrees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExperimentError(RuntimeError):
    pass


def _run(cwd: Path, *argv: str) -> str:
    r = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ExperimentError(f"{cwd}: `{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def _lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln]


def experiment_name(flow_run_name: str | None, flow_run_id: str | None) -> str:
    """The flow run's name as a valid experiment (git ref) name."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", flow_run_name or "").strip("-") or "seggen-run"
    return name if flow_run_id is None else f"{name}-{str(flow_run_id)[:8]}"


@contextmanager
def experiment_workspace(project: Path, dvc: str) -> Iterator[Path]:
    """A worktree of `project` as it is now, with `project`'s DVC cache; removed on exit."""
    if _run(project, "git", "rev-parse", "--is-inside-work-tree").strip() != "true":
        raise ExperimentError(f"{project}: not a git checkout (a flow run is a DVC experiment of one)")
    top = Path(_run(project, "git", "rev-parse", "--show-toplevel").strip()).resolve()
    if top != project.resolve():
        raise ExperimentError(f"{project}: not the root of its git checkout ({top})")
    cache = _lines(_run(project, dvc, "cache", "dir"))[-1].strip()
    # inside the project (git- and DVC-ignored .dvc/tmp): the same filesystem, so copies of the
    # checkout's uncached outputs (check notes) are reflinks where the filesystem has them
    runs = project / ".dvc" / "tmp" / "seggen-runs"
    runs.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="seggen-exp-", dir=runs))
    work = root / "work"
    _run(project, "git", "worktree", "add", "--detach", "--quiet", str(work), "HEAD")
    try:
        changed = _lines(_run(project, "git", "diff", "--name-only", "HEAD"))
        changed += _lines(_run(project, "git", "ls-files", "--others", "--exclude-standard"))
        for rel in changed:
            src, dst = project / rel, work / rel
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            elif dst.is_file():  # deleted in the checkout
                dst.unlink()
        local = project / ".dvc" / "config.local"
        if local.is_file():  # the checkout's own remotes and settings
            shutil.copy2(local, work / ".dvc" / "config.local")
        _run(work, dvc, "cache", "dir", "--local", cache)
        # the outputs the checkout has (missing ones are simply rebuilt by their stages)
        subprocess.run([dvc, "checkout", "--quiet"], cwd=work, capture_output=True)
        # and the uncached ones git does not carry (check notes): DVC re-runs a stage whose output is
        # missing. Trainings' checkpoints (no DVC outputs) stay out: a training this run must do
        # starts from its params alone, so the experiment is what `dvc repro` of a fresh clone gives.
        for rel in uncached_outputs(work):
            src, dst = project / rel, work / rel
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                # copies, never hard links: a stage writing a file in place would write the checkout's
                subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)
        yield work
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=project, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=project, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def uncached_outputs(work: Path) -> list[str]:
    """Every `cache: false` output of the project's pipelines (dvc.yaml and ablation/dvc.yaml), relative."""
    import os

    from dvc.repo import Repo

    with Repo(str(work)) as repo:
        return sorted(
            {os.path.relpath(o.fs_path, work) for st in repo.index.stages for o in st.outs if not o.use_cache}
        )


def save_experiment(work: Path, name: str, dvc: str, stages: list[str]) -> str:
    """`dvc exp save` of the worktree's state (new metrics and plots included) as experiment `name`.
    DVC caches the outputs of `stages` (the ones this run ran): the others' lock entries are the
    checkout's."""
    import fcntl

    untracked = _lines(_run(work, "git", "ls-files", "--others", "--exclude-standard"))
    argv = [dvc, "exp", "save", "--name", name]
    for rel in untracked:
        argv += ["--include-untracked", rel]
    # one save at a time per repository: the worktrees share the checkout's git refs, and two
    # concurrent `dvc exp save` fail on its experiment stash's lock (tests/test_flow_units.py)
    common = Path(_run(work, "git", "rev-parse", "--git-common-dir").strip())
    lock = (common if common.is_absolute() else work / common) / "seggen-exp-save.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _run(work, *argv, *stages)
    return name
