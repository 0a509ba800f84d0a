"""No value of the params ever runs as a command: the stage commands take no `${...}` (dvc.yaml and
ablation/dvc.yaml name their items as seggen templates), and the schema refuses paths and names with
characters a shell or DVC's interpolation would read -- in seggen, in the Prefect form, and under a
real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from seggen.config import load_params
from seggen.errors import ConfigError

EVIL = ["x$(touch PWNED)", "x`touch PWNED`", "x;touch PWNED", "x\ntouch PWNED", "x' ; touch PWNED '"]
PATH_KEYS = [
    "data.root",
    "caption.out",
    "text2mask.out",
    "mask2img.out",
    "prior.out",
    "prior.corpus.out",
    "synthesize.out",
    "synthesize.filter.out",
    "synthesize.text2mask",
    "synthesize.mask2img",
    "segmenter.out",
    "segmenter.synthetic_root",
    "evaluate.out",
    "report.out",
    "report.results",
    "report.notes",
]
SPLIT_KEYS = ["caption.split", "synthesize.split", "segmenter.split"]


@pytest.mark.parametrize("value", EVIL)
def test_seggen_refuses_every_unsafe_path_and_name_naming_the_key(value):
    for key in PATH_KEYS + SPLIT_KEYS:
        with pytest.raises(ConfigError, match=rf"--set {key}: "):
            load_params(REPO / "params.yaml", {key: f"data/{value}" if key in PATH_KEYS else value})
    with pytest.raises(ConfigError, match=r"evaluate\.splits\.1"):
        load_params(REPO / "params.yaml", {"evaluate.splits": ["validation", value]})
    for group in ("arms", "regimes", "variants"):
        with pytest.raises(ConfigError, match=rf"{group}\.x"):
            load_params(REPO / "params.yaml", {group: {value: {}}})


def test_paths_with_spaces_and_ordinary_names_are_accepted():
    p = load_params(REPO / "params.yaml", {"data.root": "data/my bench 2", "evaluate.splits": ["val_2017.a"]})
    assert str(p.data.root) == "data/my bench 2" and p.evaluate.splits == ("val_2017.a",)


def test_the_prefect_form_refuses_them_before_a_run_exists():
    """The deployments' parameter schema (what the Prefect server validates a run's parameters against)."""
    import jsonschema

    from flows.pipeline import FLOWS, form_defaults, parameter_schema_for

    schema = parameter_schema_for(FLOWS["full-pipeline"]).model_dump()
    good = form_defaults(REPO, "params.yaml")
    jsonschema.validate({"request": {"project_dir": "."}, "params": good}, schema)

    def refused(params: dict) -> None:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"request": {"project_dir": "."}, "params": params}, schema)

    for value in EVIL:
        refused({**good, "data": {**good["data"], "root": f"data/{value}"}})
        refused({**good, "evaluate": {**good["evaluate"], "splits": [value]}})
        refused({**good, "segmenter": {**good["segmenter"], "out": f"models/{value}"}})
        refused({**good, "arms": {value: {"strategy": "real"}}})
        refused({**good, "regimes": {value: {}}})


def _project(tmp_path: Path) -> Path:
    """The project's pipeline files in an empty DVC project (no git), tiny benchmark params."""
    proj = tmp_path / "proj"
    (proj / "ablation").mkdir(parents=True)
    for rel in ("dvc.yaml", "params.yaml", "ablation/dvc.yaml", "ablation/params.yaml"):
        shutil.copy(REPO / rel, proj / rel)
    shutil.copytree(REPO / "seggen", proj / "seggen", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=proj, check=True, env=_env())
    return proj


def _env() -> dict:
    bindir = str(Path(sys.executable).parent)  # seggen and dvc of this environment
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "SEGGEN_TRACKING": "off"}


def _set(proj: Path, rel: str, changes: dict) -> None:
    doc = yaml.safe_load((proj / rel).read_text())
    for key, value in changes.items():
        node = doc
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    (proj / rel).write_text(yaml.safe_dump(doc, sort_keys=False))


def _create_deps(proj: Path, stage: str) -> None:
    """Every missing dependency of `stage` as an empty file or folder, so that DVC runs its command."""
    from contextlib import chdir

    from dvc.repo import Repo

    with chdir(proj), Repo(str(proj)) as repo:  # a target is found from the working directory
        (st,) = repo.stage.collect(stage)
        for dep in st.deps:
            path = Path(dep.fs_path)
            if not path.exists():
                if path.suffix in (".json", ".jsonl", ".txt", ".py"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("")
                else:
                    path.mkdir(parents=True)


def _repro(proj: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dvc", "repro", "--single-item", *targets], cwd=proj, env=_env(), capture_output=True, text=True, timeout=300
    )


def test_under_dvc_repro_no_value_executes_and_paths_with_spaces_work(tmp_path):
    """Each interpolated key of both dvc.yaml files with a command substitution in it: DVC runs the
    stage, seggen refuses the value, nothing is executed. Then a data.root with a space reproduces."""
    proj = _project(tmp_path)
    tiny = {
        "data.benchmark.num_train": 4,
        "data.benchmark.num_val": 2,
        "data.benchmark.num_tuning": 2,
        "data.benchmark.domains": {"unseen": 1, "tuning": 1, "images": 2},
    }
    evil = "x$(touch PWNED)"
    cases = [
        ("params.yaml", {"data.root": f"data/{evil}"}, "check_data"),
        ("params.yaml", {"arms": {evil: {"strategy": "real"}}}, f"train_segmenter@{evil}"),
        ("params.yaml", {"evaluate.splits": [evil]}, f"evaluate@baseline-{evil}"),
        ("ablation/params.yaml", {"regimes": {evil: {}}}, f"ablation/dvc.yaml:synthesize@{evil}-masksyn"),
        ("ablation/params.yaml", {"variants": {evil: {}}}, f"ablation/dvc.yaml:prepare_corpus_variant@{evil}"),
    ]
    saved = {rel: (proj / rel).read_text() for rel in ("params.yaml", "ablation/params.yaml")}
    for rel, changes, stage in cases:
        _set(proj, rel, changes)
        _create_deps(proj, stage)
        r = _repro(proj, stage)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "error: " in out, (stage, out[-2000:])  # seggen ran, and refused
        assert not list(proj.rglob("PWNED")), f"{stage}: a params value ran as a command"
        for f, text in saved.items():
            (proj / f).write_text(text)
    _set(proj, "params.yaml", {"data.root": "data/my bench", **tiny})
    r = _repro(proj, "check_models", "prepare", "check_data")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "training: samples: 4 ok" in (proj / "data" / "check.txt").read_text()
    assert (proj / "data" / "my bench" / "seggen_meta.json").exists()
