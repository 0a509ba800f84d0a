"""The seggen code a stage runs, read from the imports (no import runs): each stage's entry modules
(ENTRIES) and every seggen module they import -- at the top or inside a function -- transitively.
Modules that cannot change a stage's outputs are left out (NEUTRAL: MLflow logging, progress bars,
the pre-flight check, argument parsing, error classes).

seggen.pipeline.codedeps makes these files each DVC stage's code deps, so that `dvc repro` re-runs a
stage whenever code it executes changed; the trainings hash them (code_fingerprint) so that they
resume only a checkpoint the same code wrote.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # seggen/
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
    "seggen.codegraph",  # the trainings' code fingerprint: which checkpoints resume, never what they write
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
        raise KeyError(f"stage {base}: no entry modules in seggen.codegraph.ENTRIES")
    files = {module_file(m).relative_to(ROOT).as_posix() for m in closure(ENTRIES[base])}
    return sorted(f for f in files if not f.endswith("__init__.py") or Path(ROOT / f).stat().st_size > 0)


def code_fingerprint(stage: str) -> str:
    """A hash of the code files `stage` runs (required_files: what DVC re-runs it on). A training resumes
    only a checkpoint made by the same code: DVC re-runs a training whose code changed, and resuming
    the old code's checkpoint -- a finished one least of all -- would hand back the old weights."""
    h = hashlib.sha256()
    for rel in required_files(stage):
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]
