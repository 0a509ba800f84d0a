"""The code each pipeline stage runs, found from the imports: the `seggen/` files a DVC stage must
depend on, so that `dvc repro` re-runs a stage whenever code it executes changed.

A stage starts at its entry modules (ENTRIES); every `import` / `from ... import` of a seggen module
anywhere in a module -- at the top or inside a function -- adds that module, transitively. Modules
that cannot change a stage's outputs are left out (NEUTRAL: MLflow logging, progress bars, the
pre-flight check, argument parsing, error classes).

    python -m seggen.pipeline.codedeps          # check dvc.yaml and ablation/dvc.yaml (exit 1 naming the gaps)
    python -m seggen.pipeline.codedeps --write  # rewrite their code deps from the imports (comments kept)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # seggen/
ROOT = PACKAGE.parent

# stage (as named in dvc.yaml, before any @) -> where its command's implementation starts: a module,
# or MODULE:FUNCTION for the function of seggen/pipeline/stages.py that runs it (stages.py itself imports every
# stage's implementation, each inside its own function)
ENTRIES: dict[str, tuple[str, ...]] = {
    "check_models": ("seggen.pipeline.stages:check_models",),
    "prepare": ("seggen.pipeline.stages:prepare",),
    "check_data": ("seggen.pipeline.stages:check_data",),
    "caption": ("seggen.pipeline.stages:caption",),
    "train_text2mask": ("seggen.pipeline.stages:train_text2mask",),
    "prepare_corpus": ("seggen.pipeline.stages:prepare_corpus",),
    "train_prior": ("seggen.pipeline.stages:train_prior",),
    "train_mask2img": ("seggen.pipeline.stages:train_mask2img",),
    "synthesize": ("seggen.pipeline.stages:synthesize",),
    "train_segmenter": ("seggen.pipeline.stages:train_segmenter",),
    "evaluate": ("seggen.pipeline.stages:evaluate",),
    "plan_synthesis": ("seggen.pipeline.stages:plan_synthesis",),
    "report": ("seggen.pipeline.stages:report",),
    # the closed loop's rounds (loop.rounds): the same stages
    "plan_round": ("seggen.pipeline.stages:plan_synthesis",),
    "synthesize_round": ("seggen.pipeline.stages:synthesize",),
    "train_round": ("seggen.pipeline.stages:train_segmenter",),
    "evaluate_round": ("seggen.pipeline.stages:evaluate",),
    # the ablation's generator variants (ablation/dvc.yaml): the same stages
    "prepare_corpus_variant": ("seggen.pipeline.stages:prepare_corpus",),
    "train_prior_variant": ("seggen.pipeline.stages:train_prior",),
    "train_mask2img_variant": ("seggen.pipeline.stages:train_mask2img",),
    "synthesize_variant": ("seggen.pipeline.stages:synthesize",),
    "train_segmenter_variant": ("seggen.pipeline.stages:train_segmenter",),
    "evaluate_variant": ("seggen.pipeline.stages:evaluate",),
    # the ablation's targeted arms: the same stages
    "synthesize_targeted": ("seggen.pipeline.stages:synthesize",),
    "train_segmenter_targeted": ("seggen.pipeline.stages:train_segmenter",),
    "evaluate_targeted": ("seggen.pipeline.stages:evaluate",),
    "plan_synthesis_r2": ("seggen.pipeline.stages:plan_synthesis",),
    "synthesize_targeted_r2": ("seggen.pipeline.stages:synthesize",),
    "train_segmenter_targeted_r2": ("seggen.pipeline.stages:train_segmenter",),
    "evaluate_targeted_r2": ("seggen.pipeline.stages:evaluate",),
}
# they do not change what a stage writes
NEUTRAL = {
    "seggen.pipeline.tracking",
    "seggen.pipeline.mlflow_models",
    "seggen.pipeline.registry",
    "seggen.pipeline.tracking_server",
    "seggen.progress",
    "seggen.pipeline.preflight",
    "seggen.cli",
    "seggen.errors",
    "seggen.pipeline.codedeps",
}


def module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imports_of(path: Path, function: str | None = None) -> set[str]:
    """The seggen modules a file imports, anywhere in it -- or, for `function`, at its top level and
    inside that function only."""
    tree = ast.parse(path.read_text())
    if function is None:
        nodes = list(ast.walk(tree))
    else:
        top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
        if not fn:
            raise KeyError(f"{path}: no function {function}")
        nodes = [m for n in top + fn for m in ast.walk(n)]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "seggen"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "seggen"
        ):
            found.add(node.module)
            for a in node.names:  # `from seggen import training`, `from seggen.training import checkpoint`
                if module_file(f"{node.module}.{a.name}") is not None:
                    found.add(f"{node.module}.{a.name}")
    return found


def closure(entries: tuple[str, ...]) -> set[str]:
    """Every seggen module reachable from `entries` (a package's __init__ included), NEUTRAL ones left out."""
    seen: set[str] = set()
    todo: list[str] = []
    for entry in entries:  # MODULE:FUNCTION -> the module, and what that function imports
        module, _, function = entry.partition(":")
        seen.add(module)
        todo += sorted(imports_of(module_file(module), function or None))
    while todo:
        name = todo.pop()
        if name in seen or name in NEUTRAL:
            continue
        f = module_file(name)
        if f is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        todo += sorted(imports_of(f))
    return seen


def required_files(stage: str) -> list[str]:
    """The code files (relative to the project root) a stage depends on."""
    base = stage.split("@")[0].rsplit(":", 1)[-1]
    if base not in ENTRIES:
        raise KeyError(f"stage {base}: no entry modules in seggen.pipeline.codedeps.ENTRIES")
    files = {module_file(m).relative_to(ROOT).as_posix() for m in closure(ENTRIES[base])}
    return sorted(f for f in files if not f.endswith("__init__.py") or Path(ROOT / f).stat().st_size > 0)


def _is_code(dep: str) -> bool:
    return dep == "seggen" or dep.startswith("seggen/")


def covered(dep_paths: list[str], files: list[str]) -> list[str]:
    """The files of `files` that no dependency path covers (a dependency may be a file or a folder)."""
    deps = [d.rstrip("/") for d in dep_paths]
    return [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]


def _stages(dvcfile: Path) -> dict[str, dict]:
    """Stage name -> its definition holding `deps` (a foreach stage: its `do` block); always-changed
    stages (the pre-flight check) are left out: they run every time anyway."""
    import yaml

    out = {}
    for name, st in yaml.safe_load(dvcfile.read_text())["stages"].items():
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
