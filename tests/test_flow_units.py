"""Pieces of the Prefect pipeline flow that need no server: the typed request, overrides written
into params.yaml, and which failures are retried."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.pipeline import PipelineRequest, StageFailed, _transient, apply_overrides, stage_names
from seggen.config import load_params
from seggen.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_request_is_validated():
    assert PipelineRequest().project_dir == "." and PipelineRequest().track
    with pytest.raises(ValidationError, match="not a dotted params.yaml key"):
        PipelineRequest(overrides={"segmenter train": 1})
    with pytest.raises(ValidationError):
        PipelineRequest(project="x")  # unknown field


def test_overrides_keep_comments_and_quoting(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path, {"segmenter.train.steps": 900, "arms.seggen.p_aug": 0.4})
    text = (tmp_path / "params.yaml").read_text()
    assert "# seggen parameters" in text and 'mixed_precision: "no"' in text and "model: null" in text
    p = load_params(tmp_path / "params.yaml")
    assert p.segmenter.train.steps == 900 and p.arm("seggen").segmenter.p_aug == 0.4
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ConfigError, match="segmenter.train.steps"):
        apply_overrides(tmp_path, {"segmenter.train.steps": -1})
    assert (tmp_path / "params.yaml").read_text() == before  # nothing written


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_only_transient_failures_are_retried():
    assert not _transient(None, None, _State(StageFailed("evaluate", 2, "bad params")))
    assert not _transient(None, None, _State(StageFailed("evaluate", 127, "seggen: command not found")))
    assert _transient(None, None, _State(StageFailed("train_segmenter@seggen", -9, "killed")))
    assert _transient(None, None, _State(OSError("disk")))


def test_bench_profile_stages_and_overrides(tmp_path):
    """The ablation flow runs ablation/dvc.yaml's stages (regime x strategy, arm x seed) and writes its
    overrides into ablation/params.yaml, not params.yaml."""
    names = stage_names(REPO, None, "ablation/dvc.yaml")
    p = load_params(REPO / "ablation" / "params.yaml")
    assert names[:2] == ["ablation/dvc.yaml:synthesize@full-masksyn", "ablation/dvc.yaml:synthesize@full-imgsyn"]
    assert sum(n.startswith("ablation/dvc.yaml:synthesize@") for n in names) == 2 * len(p.regimes)
    # REGIME-GROUP-sSEED, REGIME-VARIANT-sSEED and REGIME-targeted(-r2)-sSEED arms, one stage each (DVC
    # names matrix stages REGIME-GROUP-SEED); the groups' arms in the order of p.arms
    groups = [a for a in p.arms if a.split("-")[1] not in {*p.variants, "targeted"}]
    assert [n for n in names if ":train_segmenter@" in n] == [
        f"ablation/dvc.yaml:train_segmenter@{a.replace('-s', '-')}" for a in groups
    ]
    trained = {n.split("@")[1] for n in names if ":train_segmenter" in n}
    assert trained == {a.replace("-s", "-") for a in p.arms}
    assert (
        len(p.arms) == 48
        and stage_names(REPO, ("segmentation",), "ablation/dvc.yaml")[-1] == "ablation/dvc.yaml:report"
    )
    (tmp_path / "ablation").mkdir()
    shutil.copy(REPO / "ablation" / "params.yaml", tmp_path / "ablation" / "params.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path, {"segmenter.train.steps": 200}, "ablation/params.yaml")
    assert load_params(tmp_path / "ablation" / "params.yaml").segmenter.train.steps == 200
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    with pytest.raises(ValidationError):  # each deployment runs its own pipeline file: no choice to ignore
        PipelineRequest(profile="ablation")


def test_stage_output_keeps_the_stages_lines_without_dvc_hints():
    from flows.pipeline import stage_output

    text = (
        "Running stage 'evaluate@seggen-validation':\n"
        "> seggen evaluate --arm seggen --split validation\n"
        "evaluate:   0%|          | 0/200 [00:00<?, ?img/s]\revaluate:  50%|#####     | 100/200\r"
        "evaluate: 100%|##########| 200/200 [00:04<00:00, 48.1img/s]\n"
        "mIoU 68.57\n"
        "Updating lock file 'dvc.lock'\n\n"
        "To track the changes with git, run:\n\n\tgit add dvc.lock\n\n"
        "To enable auto staging, run:\n\n\tdvc config core.autostage true\n"
        "Use `dvc push` to send your updates to remote storage.\n"
    )
    assert stage_output(text) == [
        "Running stage 'evaluate@seggen-validation':",
        "> seggen evaluate --arm seggen --split validation",
        "evaluate: 100%|##########| 200/200 [00:04<00:00, 48.1img/s]",
        "mIoU 68.57",
    ]


def test_summary_lists_what_ran_and_only_the_scores_this_run_wrote(tmp_path):
    import json
    import os
    import time

    from flows.pipeline import _summary_markdown

    ev = tmp_path / "reports" / "eval"
    started = time.time() - 1
    for arm in ("baseline", "seggen"):
        (ev / arm / "validation").mkdir(parents=True)
        (ev / arm / "validation" / "scores.json").write_text(json.dumps({"mIoU": 50.0 if arm == "seggen" else 40.0}))
    (ev / "seggen" / "validation_shift").mkdir(parents=True)
    domains = {"mIoU": 30.0, "mIoU_domain_mean": 28.5, "mIoU_domain_worst": 4.25}
    (ev / "seggen" / "validation_shift" / "scores.json").write_text(json.dumps(domains))
    old = ev / "baseline" / "validation" / "scores.json"
    os.utime(old, (started - 60, started - 60))  # written by an earlier run
    results = [
        {"stage": "train_segmenter@seggen", "ran": True, "seconds": 12.0},
        {"stage": "train_segmenter@baseline", "ran": False, "seconds": 1.0},
    ]
    md = _summary_markdown(tmp_path, ev, results, "prefect:x", False, started)
    assert "1 of 2 stages ran" in md and "| train_segmenter@baseline | up to date | 1 | – |" in md
    assert "| seggen | validation | 50.00 | – | – |" in md and "| baseline |" not in md
    assert "| seggen | validation_shift | 30.00 | 28.50 | 4.25 |" in md  # the drawn domains' mean and worst
    for f in ("validation", "validation_shift"):
        os.utime(ev / "seggen" / f / "scores.json", (started - 60, started - 60))
    md = _summary_markdown(tmp_path, ev, results[1:], "prefect:x", False, started)
    assert "No evaluation ran in this run, so it produced no scores." in md and "50.00" not in md


def _tiny_dvc_project(tmp_path: Path):
    """A git + DVC project with one stage: params x -> out/value.txt (cached), score.json (metric) and
    ckpt/ (resumable state like the trainings' checkpoints: no DVC output, git-ignored).
    Returns (project, dvc, sh, env)."""
    import subprocess
    import sys

    dvc = str(Path(sys.executable).with_name("dvc"))
    proj = tmp_path / "proj"
    proj.mkdir()

    def sh(*argv, cwd=proj):
        return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=True).stdout

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    sh(dvc, "init", "-q")
    (proj / "params.yaml").write_text("x: 1\n")
    (proj / "make.py").write_text(
        "import json, pathlib, yaml\n"
        "x = yaml.safe_load(open('params.yaml'))['x']\n"
        "pathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out/value.txt').write_text(str(x))\n"
        "pathlib.Path('score.json').write_text(json.dumps({'score': x * 10}))\n"
        "pathlib.Path('ckpt').mkdir(exist_ok=True)\n"
        "pathlib.Path('ckpt/state.txt').write_text(str(x))\n"
    )
    (proj / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: python make.py\n    deps: [make.py]\n    params: [x]\n"
        "    outs:\n      - out\n"
        "    metrics:\n      - score.json: {cache: false}\n"
    )
    (proj / ".gitignore").write_text("/ckpt\n")
    env_path = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    subprocess.run([dvc, "repro", "-q"], cwd=proj, check=True, env=env_path)
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "first")
    return proj, dvc, sh, env_path


def test_a_run_is_a_dvc_experiment_and_leaves_the_checkout_alone(tmp_path):
    """flows/experiment.py on a tiny git + DVC project: the run's params and outputs live in a worktree
    sharing the cache, are saved as an experiment the checkout's `dvc exp show` lists and `dvc exp
    apply` promotes; the checkout's files and git status are untouched; the worktree is gone."""
    import json
    import subprocess

    from flows.experiment import experiment_name, experiment_workspace, save_experiment

    proj, dvc, sh, env_path = _tiny_dvc_project(tmp_path)
    (proj / "notes.txt").write_text("uncommitted, untracked: the run sees it too\n")
    before = {f: (proj / f).read_bytes() for f in ("params.yaml", "dvc.lock", "score.json", "out/value.txt")}
    status = sh("git", "status", "--porcelain")

    name = experiment_name("amber okapi", "0123456789abcdef")
    assert name == "amber-okapi-01234567"
    with experiment_workspace(proj, dvc) as work:
        assert (work / "notes.txt").exists() and (work / "out" / "value.txt").read_text() == "1"  # from the cache
        assert not (work / "ckpt").exists()  # resumable state is not the run's to share
        assert "up to date" in sh(dvc, "status", cwd=work)  # nothing re-runs for nothing
        (work / "params.yaml").write_text("x: 5\n")
        subprocess.run([dvc, "repro", "-q"], cwd=work, check=True, env=env_path)
        save_experiment(work, name, dvc, ["make"])
    assert not work.exists() and "seggen-exp" not in sh("git", "worktree", "list")
    assert {f: (proj / f).read_bytes() for f in before} == before and sh("git", "status", "--porcelain") == status
    shown = json.dumps(json.loads(sh(dvc, "exp", "show", "--json")))
    assert name in shown and '"score": 50' in shown
    sh(dvc, "exp", "apply", name)
    # the run's write of its state went to its worktree, not the checkout
    assert (proj / "out" / "value.txt").read_text() == "5" and (proj / "ckpt" / "state.txt").read_text() == "1"
    assert json.loads((proj / "score.json").read_text())["score"] == 50
    assert "up to date" in sh(dvc, "status")  # promoted: nothing to re-run


def test_two_runs_at_once_do_not_collide(tmp_path):
    """Two flow runs at the same time (`seggen serve --limit 2`): two worktrees, stages running and
    experiments saved concurrently; each experiment has its own params and results."""
    import json
    import subprocess
    import threading

    from flows.experiment import experiment_workspace, save_experiment

    proj, dvc, sh, env_path = _tiny_dvc_project(tmp_path)
    before = (proj / "params.yaml").read_bytes(), sh("git", "status", "--porcelain")
    barrier, errors = threading.Barrier(2), []

    def run(x: int) -> None:
        try:
            with experiment_workspace(proj, dvc) as work:
                (work / "params.yaml").write_text(f"x: {x}\n")
                barrier.wait(60)
                subprocess.run([dvc, "repro", "-q"], cwd=work, check=True, env=env_path)
                barrier.wait(60)
                save_experiment(work, f"run-{x}", dvc, ["make"])
        except Exception as e:  # reported below, with the thread's value
            errors.append(f"x={x}: {e}")

    threads = [threading.Thread(target=run, args=(x,)) for x in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    exps = json.loads(sh(dvc, "exp", "show", "--json"))
    scores = {
        r["name"]: r["data"]["metrics"]["score.json"]["data"]["score"]
        for e in exps
        for x in e.get("experiments") or []
        for r in x["revs"]
    }
    assert scores == {"run-2": 20, "run-3": 30}
    assert ((proj / "params.yaml").read_bytes(), sh("git", "status", "--porcelain")) == before
    assert "seggen-exp" not in sh("git", "worktree", "list")


def test_the_form_is_the_params_schema_with_the_projects_values():
    """A deployment's `params` parameter: the params schema itself (required, not "or null"), with
    config.py's descriptions and bounds; its defaults are the project's params file."""
    import jsonschema

    from flows.pipeline import FLOWS, form_defaults, parameter_schema_for

    schema = parameter_schema_for(FLOWS["train-evaluate"]).model_dump()
    assert "params" in schema["required"] and schema["properties"]["params"]["$ref"].endswith("/Params")
    seg_train = schema["definitions"]["SegTrainParams"]["properties"]["steps"]
    assert seg_train["minimum"] == 1 and seg_train["description"] == "Optimizer steps."
    defaults = form_defaults(REPO, "params.yaml")
    assert defaults["segmenter"]["train"]["steps"] == load_params(REPO / "params.yaml").segmenter.train.steps
    # what the server checks before it creates a run (Prefect validates against this schema)
    full = {"request": {"project_dir": "."}, "params": defaults}
    jsonschema.validate(full, schema)
    bad = {**defaults, "segmenter": {**defaults["segmenter"], "train": {**defaults["segmenter"]["train"], "steps": -5}}}
    with pytest.raises(jsonschema.ValidationError, match="-5 is less than the minimum of 1"):
        jsonschema.validate({**full, "params": bad}, schema)
    # the ablation deployment's defaults validate again (its arms are generated from `ablation`)
    from seggen.config import Params

    bench = Params.model_validate(form_defaults(REPO, "ablation/params.yaml"))
    assert bench.arms == load_params(REPO / "ablation/params.yaml").arms


def test_form_changes_are_what_the_user_edited():
    from flows.pipeline import form_changes
    from seggen.config import Params

    shown = load_params(REPO / "params.yaml")
    tree = shown.model_dump(mode="json")
    assert form_changes(Params.model_validate(tree), shown) == {}
    tree["segmenter"]["train"]["steps"] = 7
    tree["synthesize"]["styles"] = {"a photo": 1.0}  # a mapping with keys removed: set whole
    tree["arms"].pop("seggen")
    changes = form_changes(Params.model_validate(tree), shown)
    assert changes == {
        "segmenter.train.steps": 7,
        "synthesize.styles": {"a photo": 1.0},
        "arms": {"baseline": tree["arms"]["baseline"]},
    }
    # applied on top of the params file as it is now: an untouched key keeps the file's value
    now = load_params(REPO / "params.yaml", {"segmenter.train.lr": 0.01})
    assert load_params(REPO / "params.yaml", {"segmenter.train.lr": 0.01, **changes}).segmenter.train.lr == 0.01
    assert now.segmenter.train.lr == 0.01
    # the ablation: generated arms are never a change
    bench = load_params(REPO / "ablation/params.yaml")
    btree = bench.model_dump(mode="json")
    btree["arms"] = {}
    btree["ablation"]["seeds"] = [0]
    assert form_changes(Params.model_validate(btree), bench) == {"ablation.seeds": [0]}


def test_the_summary_links_each_stage_to_its_own_run(tmp_path, monkeypatch):
    """The pipeline's parent run carries the tags of the stage that opened it (its stage name too):
    the summary's link for that stage is the stage's run, never the parent."""
    from flows.pipeline import _mlflow_runs
    from seggen.pipeline import tracking

    monkeypatch.delenv("SEGGEN_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.EXECUTION_ENV, "exec-1")
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, "links")
    monkeypatch.chdir(tmp_path)
    ids = {}
    for stage in ("train_segmenter@seggen", "report"):
        with tracking.stage_run(stage, project=tmp_path) as run:
            ids[stage] = run.run_id
            parent = run.parent_id
    parent_url, links = _mlflow_runs(tmp_path, "exec-1")
    assert parent_url.endswith(f"/runs/{parent}")
    assert {s: u.rsplit("/", 1)[-1] for s, u in links.items()} == ids


def test_serve_without_a_server_refuses_in_one_line(tmp_path):
    """No PREFECT_API_URL: Prefect would start a temporary server on a random port that nothing finds."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile that names a server
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "serve", "--project", str(REPO)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: seggen serve: PREFECT_API_URL is not set")
