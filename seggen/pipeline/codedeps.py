"""The code each pipeline stage runs (seggen.codegraph: read from the imports) as its DVC code deps: the
`seggen/` files a stage must depend on, so that `dvc repro` re-runs a stage whenever code it executes
changed.

    python -m seggen.pipeline.codedeps          # check dvc.yaml and ablation/dvc.yaml (exit 1 naming the gaps)
    python -m seggen.pipeline.codedeps --write  # rewrite their code deps from the imports (comments kept)
"""

from __future__ import annotations

import sys
from pathlib import Path

from seggen.codegraph import ROOT, required_files


def _is_code(dep: str) -> bool:
    return dep == "seggen" or dep.startswith("seggen/")


def covered(dep_paths: list[str], files: list[str]) -> list[str]:
    """The files of `files` that no dependency path covers (a dependency may be a file or a folder)."""
    deps = [d.rstrip("/") for d in dep_paths]
    return [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]


def _stages(dvcfile: Path) -> dict[str, dict]:
    """Stage name -> its definition holding `deps` (a foreach stage: its `do` block); always-changed
    stages (the pre-flight check) are left out: they run every time anyway."""
    from seggen.io import load_yaml

    out = {}
    for name, st in load_yaml(dvcfile.read_text())["stages"].items():
        body = st.get("do", st)
        if not st.get("always_changed") and not body.get("always_changed"):
            out[name] = body
    return out


def check(dvcfile: Path) -> dict[str, list[str]]:
    """{stage: code files its deps miss} (empty when complete)."""
    missing = {}
    for name, st in _stages(dvcfile).items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in st.get("deps", [])]
        gaps = covered(deps, required_files(name))
        if gaps:
            missing[name] = gaps
    return missing


def write(dvcfile: Path) -> None:
    """Replace each stage's code deps (seggen/... lines of its `deps:` list) with the files its imports
    reach, in place: other deps, comments and layout are kept."""
    import re

    stages = _stages(dvcfile)
    lines = dvcfile.read_text().splitlines()
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z_][\w-]*):\s*(#.*)?$", line)
        if m:
            stage = m.group(1)
        dm = re.match(r"^(\s+)deps:\s*$", line)
        if not dm or stage not in stages:
            out.append(line)
            i += 1
            continue
        out.append(line)
        indent = len(dm.group(1))
        i += 1
        items: list[str] = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            items.append(lines[i])
            i += 1
        pad = next(
            (it[: len(it) - len(it.lstrip())] for it in items if it.strip().startswith("- ")), " " * (indent + 2)
        )
        kept = [it for it in items if not re.match(r"^\s*- seggen(/|$)", it)]
        out += kept + [f"{pad}- {f}" for f in required_files(stage)]
    dvcfile.write_text("\n".join(out) + "\n")


def main(argv: list[str]) -> int:
    files = [ROOT / "dvc.yaml", ROOT / "ablation" / "dvc.yaml"]
    if "--write" in argv:
        for f in files:
            write(f)
        return 0
    bad = 0
    for f in files:
        for stage, gaps in check(f).items():
            bad += 1
            print(f"{f.relative_to(ROOT)}: stage {stage} runs {', '.join(gaps)} but does not depend on it")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
