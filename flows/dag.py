"""Which stages a flow runs, in what order, and which of them DVC already has: read from DVC itself
(`dvc stage list`, `dvc dag`, `dvc status`) and from the `meta: {group: ...}` of each stage in dvc.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _dvc() -> str:
    return shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def stage_names(project: Path, groups: tuple[str, ...] | None, dvcfile: str = "dvc.yaml") -> list[str]:
    """The stages of `dvcfile` (foreach/matrix expanded) in file order where DVC's graph allows it, those
    whose `meta.group` is one of `groups` only if given. Stages of another dvc.yaml are addressed
    FILE:NAME (as `dvc stage list` prints them)."""
    r = subprocess.run([_dvc(), "stage", "list", dvcfile, "--name-only"], cwd=project, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{project}/{dvcfile}: {r.stderr.strip() or r.stdout.strip()}")
    names = _dag_order(project, r.stdout.split())
    if groups is None:
        return names
    group = stage_groups(project / dvcfile)
    return [n for n in names if group.get(n.rsplit(":", 1)[-1].split("@")[0]) in groups]


def upstream(project: Path, names: list[str]) -> dict[str, set[str]]:
    """Stage -> the stages of `names` whose outputs it reads, as DVC's graph says (`dvc dag --dot`)."""
    r = subprocess.run([_dvc(), "dag", "--dot"], cwd=project, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{project}: dvc dag: {r.stderr.strip() or r.stdout.strip()}")
    after: dict[str, set[str]] = {n: set() for n in names}
    for a, b in re.findall(r'^"([^"]+)" -> "([^"]+)";$', r.stdout, re.M):
        if a in after and b in after:
            after[b].add(a)
    return after


def changed_stages(project: Path, names: list[str]) -> set[str] | None:
    """The stages of `names` that `dvc status` says would run (changed, or always_changed); None when
    DVC cannot say, and then every stage asks DVC itself."""
    r = subprocess.run([_dvc(), "status", "--json", *names], cwd=project, capture_output=True, text=True)
    try:
        return set(json.loads(r.stdout)) if r.returncode == 0 else None
    except ValueError:
        return None


def _dag_order(project: Path, names: list[str]) -> list[str]:
    """`names` (file order) reordered so that every stage comes after the stages it depends on, as DVC's
    graph says (`dvc dag --dot`), file order kept where the graph allows: a foreach expands a stage for
    every item before the next stage, so round 2 of a loop lists its plan before round 1's arm."""
    import heapq

    pos = {n: i for i, n in enumerate(names)}
    after = upstream(project, names)
    waiting = {n: len(after[n]) for n in names}
    users: dict[str, list[str]] = {n: [] for n in names}
    for n, before in after.items():
        for a in before:
            users[a].append(n)
    ready = [pos[n] for n in names if not waiting[n]]
    heapq.heapify(ready)
    order = []
    while ready:
        n = names[heapq.heappop(ready)]
        order.append(n)
        for u in users[n]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, pos[u])
    return order


def stage_groups(dvcfile: Path) -> dict[str, str]:
    """Stage name (before @) -> its `meta.group` in dvc.yaml."""
    from seggen.io import load_yaml

    stages = load_yaml(dvcfile.read_text())["stages"]
    return {name: ((st.get("do", st).get("meta") or st.get("meta") or {}).get("group")) for name, st in stages.items()}
