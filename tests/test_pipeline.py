"""The orchestrated pipeline on a tiny project: dvc repro (+ no-op, metrics, plots, exp run), MLflow
lineage on a real `mlflow server`, failure behaviour, and the Prefect deployments served to a real
`prefect server` and triggered through its API. Tests run in file order on one project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import REPO, make_project

pytestmark = pytest.mark.slow  # the whole pipeline through dvc repro, MLflow and Prefect: make test-slow

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def _env(mlflow_uri: str | None) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SEGGEN_TRACKING", None)
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    return env


def dvc(project: Path, *args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([DVC, *args], cwd=project, env=env, capture_output=True, text=True)
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def ran(r: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", r.stdout + r.stderr)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_server):
    root = make_project(tmp_path_factory.mktemp("pipeline") / "proj")
    env = _env(mlflow_server)
    r = dvc(root, "repro", env=env)
    return {"root": root, "env": env, "first": r, "mlflow": mlflow_server}


def stage_list(project: Path) -> list[str]:
    """dvc.yaml's stages (foreach / matrix expanded): the one list of stages, read as DVC reads it."""
    r = subprocess.run([DVC, "stage", "list", "--name-only"], cwd=project, capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_repro_runs_every_stage_then_nothing(project):
    root = project["root"]
    first = ran(project["first"])
    # every stage, the pre-flight check first (check_models runs on every repro; nothing re-runs because of it)
    # 14 stages + evaluate@ARM-SPLIT for 2 arms x the project's 3 splits (tuning, validation, validation_shift)
    assert sorted(first) == sorted(stage_list(root)) and first[0] == "check_models" and len(first) == 20
    plan = json.loads((root / "data" / "plan" / "plan.json").read_text())
    assert plan["reference"] == "baseline" and plan["split"] == "tuning"
    assert "## Where synthetic data should go" in (root / "reports" / "report.md").read_text()
    for arm in ("baseline", "seggen"):
        for split in ("validation", "validation_shift"):
            scores = json.loads((root / "reports" / "eval" / arm / split / "scores.json").read_text())
            assert 0 <= scores["mIoU"] <= 100 and "PQ" in scores and "AP" in scores
    report = (root / "reports" / "report.md").read_text()
    assert "| seggen | validation_shift |" in report and "### validation_shift: each domain" in report
    summary = json.loads((root / "reports" / "summary.json").read_text())
    assert list(summary["domains"]["validation_shift"]) == ["unseen-1", "unseen-2"]  # the project's 2 domains
    assert set(summary["delta_mIoU_domains"]["seggen"]["validation_shift"]) == {"mean", "worst"}
    assert (root / "reports" / "domains.png").stat().st_size > 5000  # a chart, not the no-domain note
    again = dvc(root, "repro", env=project["env"])
    assert ran(again) == ["check_models"] and "Stage 'prepare' didn't change, skipping" in again.stdout


def test_metrics_plots_and_remote(project, tmp_path):
    root, env = project["root"], project["env"]
    metrics = json.loads(dvc(root, "metrics", "show", "--json", env=env).stdout)
    files = next(iter(metrics.values()))["data"]
    scores = {p: v["data"] for p, v in files.items()}
    assert "mIoU" in scores["reports/eval/seggen/validation_shift/scores.json"]
    assert scores["reports/summary.json"]["arms"]["baseline"]["validation"]["mIoU"] >= 0
    dvc(root, "plots", "show", "-o", str(tmp_path / "plots"), env=env)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "per_class_iou.json" in html and "train_log.json" in html and "confusion.png" in html
    # the default remote is a local directory: push, drop the cache, pull back
    dvc(root, "push", env=env)
    assert any((root / ".dvc-remote").rglob("*"))
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "models" / "segmenter" / "baseline" / "model")
    dvc(root, "pull", env=env)
    assert (root / "models" / "segmenter" / "baseline" / "model" / "model.safetensors").exists()
    assert ran(dvc(root, "repro", env=env)) == ["check_models"]


def test_mlflow_lineage(project):
    from mlflow import MlflowClient

    client = MlflowClient(project["mlflow"])
    exp = client.get_experiment_by_name("seggen")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("seggen.kind") == "pipeline"]
    first = parents[-1]  # the oldest: the first `dvc repro`
    assert "seggen.stage" not in first.data.tags  # a search by stage finds the stage's runs only
    children = {
        r.data.tags["seggen.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id
    }
    # check_models and check_data are plain checks, not tracked stages
    assert sorted(children) == sorted(s for s in stage_list(project["root"]) if s not in ("check_models", "check_data"))
    assert first.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children.values())

    lock = yaml.safe_load((project["root"] / "dvc.lock").read_text())["stages"]
    md5 = {o["path"]: o["md5"] for st in lock.values() for o in st.get("outs", [])}
    ev = children["evaluate@seggen-validation_shift"]
    assert {"validation_shift/mIoU", "validation_shift/PQ", "validation_shift/AP"} <= set(ev.data.metrics)
    assert any(k.startswith("validation_shift/iou/") for k in ev.data.metrics)
    arts = {a.path for a in client.list_artifacts(ev.info.run_id, "eval/validation_shift")}
    assert {
        "eval/validation_shift/confusion.png",
        "eval/validation_shift/per_class_iou.png",
        "eval/validation_shift/predictions.png",
    } <= arts
    tr = children["train_segmenter@seggen"]
    inputs = {i.dataset.name: i.dataset.digest for i in tr.inputs.dataset_inputs}
    assert inputs["masksyn"] == md5["data/synthetic/masksyn"][:36] and inputs["real"] == md5["data/benchmark"][:36]
    assert tr.data.params["arm"] == "seggen" and tr.data.params["segmenter.strategy"] == "augment"
    assert len(client.get_metric_history(tr.info.run_id, "loss")) == 4
    syn = children["synthesize@masksyn"]
    assert "manifest.jsonl" in {a.path for a in client.list_artifacts(syn.info.run_id)}
    assert {"generator.text2mask", "generator.mask2img"} <= set(syn.data.tags)

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project["root"], capture_output=True, text=True
    ).stdout.strip()
    import mlflow

    mlflow.set_tracking_uri(project["mlflow"])
    for name, stage in [
        ("seggen-text2mask", "train_text2mask"),
        ("seggen-mask2img", "train_mask2img"),
        ("seggen-segmenter", "train_segmenter@seggen"),
    ]:
        versions = [
            v for v in client.search_model_versions(f"name='{name}'") if v.run_id == children[stage].info.run_id
        ]
        assert len(versions) == 1, name
        tags = versions[0].tags
        assert tags["git_commit"].startswith(commit) and len(tags["dvc_lock"]) == 16 and tags["stage"] == stage
        # an MLflow Model (pyfunc over the saved directory) with its signature, linked to the stage run
        info = mlflow.models.get_model_info(f"models:/{name}/{versions[0].version}")
        assert info.signature is not None and "python_function" in info.flavors
        assert mlflow.get_logged_model(info.model_id).source_run_id == children[stage].info.run_id
    assert client.search_model_versions("name='seggen-segmenter'")[0].tags.get("arm") in ("baseline", "seggen")
    # no run moves an alias: `seggen promote` does -- champion = best in-domain arm, baseline = the reference arm
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("seggen-segmenter", "champion")
    summary = json.loads((project["root"] / "reports" / "summary.json").read_text())
    best = max(summary["arms"], key=lambda a: summary["arms"][a]["tuning"]["mIoU"])  # a choice: the tuning split
    assert children["report"].data.tags["candidate.champion"] == best
    r = subprocess.run(
        [str(BIN / "seggen"), "promote"], cwd=project["root"], env=project["env"], capture_output=True, text=True
    )
    assert r.returncode == 0 and f"@champion: {best} (version " in r.stdout and "; new)" in r.stdout, r.stderr
    assert client.get_model_version_by_alias("seggen-segmenter", "champion").tags["arm"] == best
    assert client.get_model_version_by_alias("seggen-segmenter", "baseline").tags["arm"] == "baseline"
    # the scores are on the segmenter's LoggedModel too
    champion = client.get_model_version_by_alias("seggen-segmenter", "champion")
    logged = mlflow.get_logged_model(champion.source.rsplit("/", 1)[-1])
    assert {m.key for m in logged.metrics} >= {"validation/mIoU", "validation_shift/mIoU_domain_mean"}
    # live training metrics (every tracking.log_every steps) and system metrics on the training stages
    tr = children["train_segmenter@seggen"]
    assert "live/loss" in tr.data.metrics and any(k.startswith("system/") for k in tr.data.metrics)
    # the run's own figures (train_summary.json, kept out of the model directory) are on the stage run
    assert {"train/steps", "train/final_loss", "train/steps_this_run", "train/seconds_this_run"} <= set(tr.data.metrics)

    report = children["report"]
    assert (
        "seggen/validation/mIoU" in report.data.metrics
        and "seggen/validation/mIoU" in client.get_run(first.info.run_id).data.metrics
    )


def test_ci_gate_against_champion(project):
    """`seggen ci-check --against champion`: this project's evaluations against what the registry's
    champion scored; a drop beyond the tolerance fails with exit 1, an unknown alias in one line."""
    root, env = project["root"], project["env"]
    seggen = str(BIN / "seggen")
    r = subprocess.run([seggen, "promote"], cwd=root, env=env, capture_output=True, text=True)  # as main's CI
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([seggen, "ci-check", "--against", "champion"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    # per split: tuning, validation, validation_shift (+ its domain mean)
    assert "against @champion = version" in r.stdout and r.stdout.count(" ok") == 4, r.stdout
    from mlflow import MlflowClient

    arm = MlflowClient(project["mlflow"]).get_model_version_by_alias("seggen-segmenter", "champion").tags["arm"]
    f = root / "reports" / "eval" / arm / "validation_shift" / "scores.json"
    original = f.read_text()
    try:
        f.write_text(json.dumps({**json.loads(original), "mIoU": json.loads(original)["mIoU"] - 5}))
        r = subprocess.run(
            [seggen, "ci-check", "--against", "champion", "--tolerance", "1"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1 and f"{arm}/validation_shift: mIoU" in r.stderr and "REGRESSION" in r.stderr
    finally:
        f.write_text(original)
    # a reference scored on other data (another benchmark, other domains) does not compare: refused
    client = MlflowClient(project["mlflow"])
    mv = client.get_model_version_by_alias("seggen-segmenter", "champion")
    client.set_model_version_tag("seggen-segmenter", mv.version, "reference.data", "benchmark:0123456789abcdef")
    try:
        r = subprocess.run(
            [seggen, "ci-check", "--against", "champion"], cwd=root, env=env, capture_output=True, text=True
        )
        assert r.returncode == 2 and "was scored on other data (benchmark:0123456789abcdef" in r.stderr, r.stderr
    finally:
        client.set_model_version_tag("seggen-segmenter", mv.version, "reference.data", mv.tags["reference.data"])
    r = subprocess.run([seggen, "ci-check", "--against", "nope"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "models:/seggen-segmenter@nope: no such alias" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_pull_request_that_regresses_fails_the_gate_and_moves_no_alias(project, tmp_path):
    """A branch whose code costs mIoU -- here its evaluation shifts every predicted class by one -- runs
    the champion arm's in-domain evaluation through DVC (tracked and logged, on the same weights as
    main's): `ci-check --against champion` fails with exit 1, @champion still names main's version, and
    the reference it compares with is still main's (the branch's metrics on the same model do not move it)."""
    import shutil

    from mlflow import MlflowClient

    root, env = project["root"], project["env"]
    seggen = str(BIN / "seggen")
    assert subprocess.run([seggen, "promote"], cwd=root, env=env, capture_output=True).returncode == 0
    client = MlflowClient(project["mlflow"])
    champion = client.get_model_version_by_alias("seggen-segmenter", "champion")
    saved = {f: (root / f).read_bytes() for f in ("params.yaml", "dvc.lock")}
    branch = tmp_path / "branch"  # the branch's code: first on PYTHONPATH for its stages
    shutil.copytree(REPO / "seggen", branch / "seggen", ignore=shutil.ignore_patterns("__pycache__"))
    ev = branch / "seggen" / "segmenter" / "evaluate.py"
    text = ev.read_text()
    assert "def semantic_from(" in text
    ev.write_text(
        text.replace("def semantic_from(", "def _semantic_from(", 1)
        + (
            "\n\ndef semantic_from(cls, mask):\n"
            "    labels = _semantic_from(cls, mask)\n"
            "    return (labels + 1) % (cls.shape[-1] - 1)  # the branch's bug: every class off by one\n"
        )
    )
    try:
        # DVC cannot see code on PYTHONPATH change: the branch's stage is forced (the others keep main's)
        stage = f"evaluate@{champion.tags['arm']}-validation"
        dvc(root, "repro", "--force", "--single-item", stage, env={**env, "PYTHONPATH": str(branch)})
        r = subprocess.run(
            [seggen, "ci-check", "--against", "champion"], cwd=root, env=env, capture_output=True, text=True
        )
        assert r.returncode == 1 and "REGRESSION" in r.stderr, r.stdout + r.stderr[-2000:]
        after = client.get_model_version_by_alias("seggen-segmenter", "champion")
        assert after.version == champion.version
        assert {k: v for k, v in after.tags.items() if k.startswith("reference.")} == {
            k: v for k, v in champion.tags.items() if k.startswith("reference.")
        }
    finally:  # main's lock back: the stage's outputs then differ from it, and it re-runs on main's code
        (root / "dvc.lock").write_bytes(saved["dvc.lock"])
        dvc(root, "repro", env=env)
    assert (root / "dvc.lock").read_bytes() == saved["dvc.lock"]  # main's outputs again, to the byte
    assert (root / "params.yaml").read_bytes() == saved["params.yaml"]


def test_compare_prints_arms_side_by_side(project):
    r = subprocess.run(
        [str(BIN / "seggen"), "compare"], cwd=project["root"], env=project["env"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["arm", "tuning"] and any(ln.startswith("baseline") for ln in lines)
    assert any(ln.startswith("seggen") for ln in lines) and "ΔmIoU" in lines[0]


def test_doc_python_snippets_run_verbatim(project, tmp_path):
    """Every ```python block of the README and docs/*.md, as written, in the project after `seggen promote`
    (MLFLOW_TRACKING_URI names this test's server, the snippets' documented alternative to ./mlflow.db)."""
    from test_docs import blocks

    root, env = project["root"], project["env"]
    r = subprocess.run([str(BIN / "seggen"), "promote"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    snippets = blocks("python")
    assert len(snippets) >= 2
    # a copy whose photo is 64 px, the smallest transformers' pipeline takes (this project renders 32 px)
    work = tmp_path / "proj"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("cache", "tmp"))
    photo = work / "data" / "benchmark" / "images" / "validation" / "bench_validation_000000.jpg"
    Image.open(photo).resize((64, 64)).save(photo)
    for i, (page, code) in enumerate(snippets):
        f = tmp_path / f"snippet_{i}.py"
        f.write_text(code)
        r = subprocess.run([sys.executable, str(f)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{page.name} snippet {i}:\n{code}\n{r.stderr[-3000:]}"


def test_unreachable_tracking_server_fails_before_compute(project, tmp_path):
    from conftest import free_port

    root = project["root"]
    env = {**project["env"], "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    before = (root / "models/segmenter/baseline/model/model.safetensors").stat().st_mtime_ns
    t0 = time.time()
    r = subprocess.run(
        [str(BIN / "seggen"), "train_segmenter", "--arm", "baseline"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "tracking server unreachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.time() - t0 < 30
    assert (root / "models/segmenter/baseline/model/model.safetensors").stat().st_mtime_ns == before
    r = subprocess.run([str(BIN / "seggen"), "--offline", "report"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_param_change_reruns_only_segmentation_and_failures_resume(project):
    root, env = project["root"], project["env"]
    # the pipeline's results as a commit: git tracks the training curves, summaries and synthesis
    # metrics (the model directories stay DVC's), so an experiment compares with it
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "first run"], cwd=root, check=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert {
        "models/text2mask/train_log.json",
        "models/mask2img/train_summary.json",
        "models/segmenter/seggen/train_log.json",
        "data/synthetic/imgsyn.metrics.json",
        "reports/eval/seggen/validation/scores.json",
    } <= set(tracked)
    assert not any(f.startswith(("models/segmenter/seggen/model/", "data/synthetic/imgsyn/")) for f in tracked)
    # one arm's param (Hydra's `++` adds the key): that arm's training and evaluations re-run, nothing else
    r = dvc(root, "exp", "run", "-S", "++arms.seggen.p_aug=0.6", env=env)
    must = {
        "check_models",
        "train_segmenter@seggen",
        *(s for s in stage_list(root) if s.startswith("evaluate@seggen-")),
    }
    # the report re-runs only if its inputs changed (a 4-step model may predict as before)
    assert len(must) == 5 and must <= set(ran(r)) <= must | {"report"}
    shown = json.dumps(json.loads(dvc(root, "exp", "show", "--json", env=env).stdout))
    assert '"p_aug": 0.6' in shown and '"experiments": [' in shown
    for f in ("data/synthetic/masksyn.metrics.json", "models/text2mask/train_summary.json"):
        assert f in shown, f
    exp = re.search(r"Ran experiment\(s\): (\S+)", r.stdout + r.stderr).group(1)
    # the two runs' segmenter losses side by side: each revision's train_log.json from git
    diff = json.loads(dvc(root, "plots", "diff", "HEAD", exp, "--json", env=env).stdout)
    curves = diff["data"]["models/segmenter/seggen/train_log.json"][0]
    assert {"HEAD", exp} <= set(curves["revisions"])
    both = json.loads(dvc(root, "metrics", "diff", "HEAD", exp, "--all", "--json", env=env).stdout)
    assert "mIoU" in both["reports/eval/seggen/validation/scores.json"]  # each revision's scores
    kept = both["data/synthetic/masksyn.metrics.json"]["kept"]
    assert kept["old"] == kept["new"]  # synthesis did not re-run
    subprocess.run(["git", "reset", "-q", "--soft", "HEAD~1"], cwd=root, check=True)  # as the fixture left it

    # a stage that fails leaves no output; the next repro resumes from the stages that completed
    from ruamel.yaml import YAML  # YAML 1.2, as DVC writes params.yaml

    rt = YAML()
    before = (root / "params.yaml").read_text()
    weights = (root / "models/segmenter/seggen/model/model.safetensors").read_bytes()
    params = rt.load(before)
    params["arms"]["seggen"]["synthetic_root"] = "data/missing"
    rt.dump(params, root / "params.yaml")
    r = dvc(root, "repro", env=env, check=False)
    assert r.returncode != 0 and "train_segmenter@seggen" in ran(r)
    assert not (root / "models/segmenter/seggen/model").exists()
    # fixed: the stage's outputs come back from DVC's run cache (the checkpoints are no DVC outputs,
    # so every output of the stage is cached), and nothing that completed runs again
    (root / "params.yaml").write_text(before)
    r = dvc(root, "repro", env=env)
    assert ran(r) == ["check_models"] and "Stage 'train_segmenter@seggen' is cached" in r.stdout + r.stderr
    assert (root / "models/segmenter/seggen/model/model.safetensors").read_bytes() == weights


def _summary(url: str, run_id: str) -> dict:
    """The flow run's summary artifact (its markdown in ["data"])."""
    arts = _api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return next(a for a in arts if a["key"] == "seggen-summary")


def _api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    for attempt in range(6):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:  # 503: Prefect maps a database timeout to it (seen once); retry
            if e.code != 503 or attempt == 5:
                raise
            time.sleep(2)


def _wait_served(api_url: str, serve: subprocess.Popen, log: Path, expected: set[str], since: float = 0.0) -> None:
    """Wait until `seggen serve` has registered (or updated, after `since`) exactly these deployments:
    it registers them one after another."""
    names = set()
    for _ in range(120):
        assert serve.poll() is None, log.read_text()[-3000:]
        names = {
            d["name"]
            for d in _api(api_url, "/deployments/filter", {})
            if datetime.fromisoformat(d["updated"]).timestamp() >= since
        }
        if names >= expected:
            break
        time.sleep(1)
    assert names == expected


def _saved_experiment(root: Path, env: dict, run_name: str) -> dict:
    """The one DVC experiment a flow run saved (named after the run), as `dvc exp show --json` lists it."""
    exps = json.loads(dvc(root, "exp", "show", "--json", env=env).stdout)
    revs = [r for e in exps for x in e.get("experiments") or [] for r in x["revs"]]
    saved = [r for r in revs if r["name"].startswith(run_name)]
    assert len(saved) == 1, [r["name"] for r in revs]
    return saved[0]


# one arm's training in two processes (accelerate launch, as on two GPUs): the arm's own keys over
# `segmenter` (dotted, as in params.yaml's arms), so only that arm re-trains and re-scores
TWO_PROCESSES = {"train.steps": 6, "train.num_processes": 2}


def test_prefect_deployment_triggered_through_the_api(project, prefect_server):
    root = project["root"]
    env = {**project["env"], "PREFECT_API_URL": prefect_server}
    seggen_arm = {**yaml.safe_load((root / "params.yaml").read_text())["arms"]["seggen"], **TWO_PROCESSES}
    log = open(root.parent / "serve.log", "w")
    serve = subprocess.Popen(
        [str(BIN / "seggen"), "serve", "--project", str(root)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    checkout = {f: (root / f).read_bytes() for f in ("params.yaml", "dvc.lock", "reports/summary.json")}
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    try:
        # no ablation deployment: the project has no ablation/dvc.yaml yet (the browser test adds one)
        _wait_served(
            prefect_server, serve, root.parent / "serve.log", {"full-pipeline", "synthesis-only", "train-evaluate"}
        )
        dep = _api(prefect_server, "/deployments/name/seggen-train-evaluate/train-evaluate")
        assert "request" in dep["parameter_openapi_schema"]["properties"]  # the UI's form comes from the pydantic model
        # as the UI does: create a flow run of the deployment with edited parameters
        run = _api(
            prefect_server,
            f"/deployments/{dep['id']}/create_flow_run",
            # the params alone ask for the two processes
            {"parameters": {"request": {"project_dir": str(root), "overrides": {"arms.seggen": seggen_arm}}}},
        )
        _wait_run(prefect_server, run["id"], root.parent / "serve.log")
        project["api_run"] = run["id"]  # its run page and summary: the browser test's screenshots
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()
    tasks = _api(prefect_server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert {t["name"] for t in tasks} == {
        s
        for s in stage_list(root)
        if s.split("@")[0] in ("check_models", "train_segmenter", "evaluate", "plan_synthesis", "report")
    }
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    # the run left the checkout as it was: it is a DVC experiment named after the flow run
    assert {f: (root / f).read_bytes() for f in checkout} == checkout
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == status
    name = _api(prefect_server, f"/flow_runs/{run['id']}")["name"]
    saved = _saved_experiment(root, env, name)
    exp = saved["name"]
    assert saved["data"]["params"]["params.yaml"]["data"]["arms"]["seggen"] == seggen_arm
    # its MLflow runs carry the experiment's name
    from mlflow import MlflowClient

    client = MlflowClient(project["mlflow"])
    exp_id = client.get_experiment_by_name("seggen").experiment_id
    tagged = client.search_runs([exp_id], f"tags.`dvc.experiment` = '{exp}'")
    # (the report re-runs only if an evaluation's outputs changed: a 6-step model may predict as the 4-step one)
    stages = [r.data.tags.get("seggen.stage") for r in tagged]
    assert set(stages) >= {"train_segmenter@seggen", "evaluate@seggen-validation"}
    # one run per stage, though two processes trained the arm; the model written once, by the main process
    assert stages.count("train_segmenter@seggen") == 1 and "train_segmenter@baseline" not in stages
    # promoted with dvc exp apply: its params, lock, scores and cached outputs come into the checkout,
    # which is then up to date (checkpoints are no DVC outputs, so none is "missing")
    dvc(root, "exp", "apply", exp, env=env)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["train_segmenter@seggen"]["params"]["params.yaml"]["arms.seggen"] == seggen_arm
    assert (root / "models/segmenter/seggen/model/model.safetensors").is_file()
    stale = json.loads(dvc(root, "status", "--json", env=env).stdout)
    assert set(stale) <= {"check_models"}, stale  # the pre-flight runs on every repro (always_changed)
    arts = _api(prefect_server, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    md = next(a["data"] for a in arts if a["key"] == "seggen-summary")
    assert "| seggen | validation_shift |" in md and "#/experiments/" in md and f"dvc exp apply {exp}" in md
    # only what this run did: the changed arm's stages ran, the other arm's were up to date
    seggen_stages = {t["name"] for t in tasks if t["name"].split("@")[-1].split("-")[0] == "seggen"}
    assert len(seggen_stages) == 4  # its training and its 3 evaluations
    for name in seggen_stages:
        assert f"| {name} | ran |" in md, md
    assert "| train_segmenter@baseline | up to date |" in md and "| evaluate@baseline-validation | up to date |" in md
    ran_count = int(re.search(rf"(\d+) of {len(tasks)} stages ran", md).group(1))
    assert len(seggen_stages) + 1 <= ran_count <= len(seggen_stages) + 2  # + check_models, the report if it moved
    assert "| seggen | validation |" in md and "| baseline | validation |" not in md  # the scores this run wrote
    # each task's log has its stage's own output, not DVC's git advice
    logs = _api(prefect_server, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    messages = "\n".join(entry["message"] for entry in logs)
    assert "> seggen train_segmenter --arm '{key}'" in messages and "git add dvc.lock" not in messages
    assert any(a["type"] == "progress" and a["data"] == 100.0 for a in arts)


# -- the Prefect UI and the MLflow UI in a real browser (Debian's chromium, driven by playwright) ------

SCREENSHOTS = Path(os.environ.get("SEGGEN_SCREENSHOTS", Path(__file__).resolve().parents[1] / "test-output" / "ui"))


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: `make test` installs Debian's chromium (make browser)")
    return path


def _form_field(page, *labels: str):
    """The Prefect form's input of a nested property: _form_field(page, "Segmenter", "Train", "Steps")."""
    node = page.locator("body")
    for label in labels:
        node = node.locator(
            "xpath=.//div[contains(@class,'schema-form-property')][./div[contains(@class,'p-label__header')]"
            f"//span[contains(@class,'schema-form-property__label') and normalize-space()='{label} (Optional)']]"
        ).first
    return node.locator(".p-label__body input").first


def _flow_runs(api_url: str, deployment_id: str) -> list[dict]:
    return _api(api_url, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})


def _wait_run(api_url: str, run_id: str, log: Path) -> None:
    state = None
    for _ in range(600):
        state = _api(api_url, f"/flow_runs/{run_id}")["state_type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state == "COMPLETED", log.read_text()[-4000:]


FLOW_OF = {
    "full-pipeline": "pipeline",
    "synthesis-only": "synthesis",
    "train-evaluate": "train-evaluate",
    "ablation": "ablation",
}


def _submit_form(page, ui: str, api_url: str, deployment: str, field: tuple[str, ...], value) -> str:
    """Deployments -> DEPLOYMENT -> Run -> Custom run: set one field of the typed form and Submit;
    returns the id of the flow run the form created."""
    dep = _api(api_url, f"/deployments/name/seggen-{FLOW_OF[deployment]}/{deployment}")
    page.goto(f"{ui}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")
    box = _form_field(page, *field)
    box.fill(str(value))
    before = {r["id"] for r in _flow_runs(api_url, dep["id"])}
    page.get_by_role("button", name="Submit").click()  # the UI then shows the deployment's runs
    new = set()
    for _ in range(180):  # the UI creates the run through the API: seconds, minutes on a loaded machine
        new = {r["id"] for r in _flow_runs(api_url, dep["id"])} - before
        if new:
            break
        time.sleep(1)
    assert len(new) == 1, f"the {deployment} form created no run"
    return new.pop()


def _add_tiny_bench(root: Path) -> None:
    """The project gets the repo's ablation/dvc.yaml (so `seggen serve` offers the ablation deployment) with
    the smallest ablation: one regime, the baseline group, one seed, no generator variants."""
    (root / "ablation").mkdir(exist_ok=True)
    shutil.copy(REPO / "ablation" / "dvc.yaml", root / "ablation" / "dvc.yaml")
    (root / "ablation" / "tuning.md").write_text("## Tuning log\n\nnothing yet\n")
    bench = yaml.safe_load((REPO / "ablation" / "params.yaml").read_text())
    bench.update(
        segmenter={},
        regimes={"full": {}},
        # no targeted arms: ablation/dvc.yaml's matrices read ablation.targeted.regimes and round2, so they are stated
        ablation={
            "groups": {"baseline": {"strategy": "real"}},
            "seeds": [0],
            "targeted": {"regimes": [], "round2": []},
        },
        variants={},
    )
    (root / "ablation" / "params.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
    subprocess.run(["git", "add", "ablation"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "a tiny ablation"], cwd=root, check=True)


def _saved_params(root: Path, env: dict, run_name: str, params_file: str = "params.yaml") -> dict:
    return _saved_experiment(root, env, run_name)["data"]["params"][params_file]["data"]


@pytest.mark.timeout(1800)  # three flow runs through worktrees, two at a time
def test_prefect_ui_typed_forms_run_as_experiments_in_a_browser(project, prefect_server):
    """As a user, in headless Chromium: the Custom run form shows the params with the project's values
    and config.py's descriptions; a bad value is refused by the server's validation and no run exists;
    the API test's train-evaluate run shows completed with its summary; a typed edit of each of the
    other three deployments' forms runs as a DVC experiment with the typed value and completes
    (submitted together, `seggen serve --limit 2`); the checkout never changes."""
    from playwright.sync_api import sync_playwright

    root = project["root"]
    env = {**project["env"], "PREFECT_API_URL": prefect_server}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _add_tiny_bench(root)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    params_before = (root / "params.yaml").read_bytes()
    current = yaml.safe_load(params_before)
    log_path = root.parent / "serve-ui.log"
    log = open(log_path, "w")
    started = time.time()
    serve = subprocess.Popen(
        [str(BIN / "seggen"), "serve", "--project", str(root), "--limit", "2"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ui = prefect_server.removesuffix("/api")
    runs = {}
    try:
        # the earlier test registered three of them: wait until this serve has updated all four
        _wait_served(prefect_server, serve, log_path, set(FLOW_OF), since=started)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            te = _api(prefect_server, "/deployments/name/seggen-train-evaluate/train-evaluate")
            page.goto(f"{ui}/deployments/deployment/{te['id']}/run", wait_until="networkidle")
            steps = _form_field(page, "Segmenter", "Train", "Steps")
            # the project's params.yaml, not the code default; descriptions from config.py
            assert steps.input_value() == str(current["segmenter"]["train"]["steps"])
            assert page.get_by_text("Optimizer steps.").count() > 0
            page.screenshot(path=SCREENSHOTS / "prefect-form.png")
            # a bad value: the server's validation refuses it, naming the key, and no run is created
            earlier = {r["id"] for r in _flow_runs(prefect_server, te["id"])}  # the API test's run
            steps.fill("-5")
            page.get_by_role("button", name="Submit").click()
            page.get_by_text("params.segmenter.train.steps").first.wait_for(timeout=30_000)
            steps.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "prefect-form-invalid.png")  # while the error shows
            assert "less than the minimum of 1" in page.inner_text("body")
            assert {r["id"] for r in _flow_runs(prefect_server, te["id"])} == earlier
            # the API test's train-evaluate run (one arm in two processes), as the UI shows it
            api_run = project["api_run"]
            page.goto(f"{ui}/runs/flow-run/{api_run}", wait_until="networkidle")
            page.get_by_text("Completed").first.wait_for(timeout=30_000)
            page.screenshot(path=SCREENSHOTS / "prefect-run.png", full_page=True)
            summary = _summary(prefect_server, api_run)
            assert "Scores this run produced" in summary["data"] and "| seggen | validation |" in summary["data"]
            page.goto(f"{ui}/artifacts/artifact/{summary['id']}", wait_until="networkidle")
            page.get_by_text("Scores this run produced").first.wait_for(timeout=30_000)
            page.screenshot(path=SCREENSHOTS / "prefect-summary.png", full_page=True)
            # a typed custom run of each other deployment, submitted one after the other; serve runs two
            # at a time. The full pipeline's edit is one no stage reads (what training sends to MLflow):
            # every stage is up to date, and the experiment still holds the typed value
            new_syn = current["synthesize"]["steps"] + 1
            new_log = current["tracking"]["log_every"] + 1
            new_steps = current["segmenter"]["train"]["steps"] + 2
            runs["synthesis-only"] = _submit_form(
                page, ui, prefect_server, "synthesis-only", ("Synthesize", "Steps"), new_syn
            )
            runs["full-pipeline"] = _submit_form(
                page, ui, prefect_server, "full-pipeline", ("Tracking", "Log Every"), new_log
            )
            runs["ablation"] = _submit_form(
                page, ui, prefect_server, "ablation", ("Segmenter", "Train", "Steps"), new_steps
            )
            for name in ("synthesis-only", "full-pipeline", "ablation"):
                _wait_run(prefect_server, runs[name], log_path)
            browser.close()
    finally:
        serve.terminate()
        serve.wait(30)
        log.close()
    # no run changed the checkout: each is a DVC experiment with the form's value
    assert (root / "params.yaml").read_bytes() == params_before
    assert subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout == status
    names = {d: _api(prefect_server, f"/flow_runs/{r}")["name"] for d, r in runs.items()}
    assert _saved_params(root, env, names["synthesis-only"])["synthesize"]["steps"] == new_syn
    assert _saved_params(root, env, names["full-pipeline"])["tracking"]["log_every"] == new_log
    bench = _saved_params(root, env, names["ablation"], "ablation/params.yaml")
    assert bench["segmenter"]["train"]["steps"] == new_steps
    assert re.search(r"^1 of \d+ stages ran", _summary(prefect_server, runs["full-pipeline"])["data"], re.M)
    assert "| full-baseline-s0 |" in _summary(prefect_server, runs["ablation"])["data"]


def test_mlflow_ui_compares_two_arms_in_a_browser(project):
    """MLflow's UI, in headless Chromium: the run-comparison view of two arms' evaluations."""
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(project["mlflow"])
    exp_id = client.get_experiment_by_name("seggen").experiment_id
    compared = [
        client.search_runs([exp_id], f"tags.arm = '{arm}' and tags.split = 'validation'", max_results=1)[0]
        for arm in ("baseline", "seggen")
    ]
    ids = json.dumps([r.info.run_id for r in compared])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{project['mlflow']}/#/compare-runs?runs={ids}&experiments={json.dumps([exp_id])}")
        page.get_by_text("validation/mIoU").first.wait_for(timeout=60_000)
        page.wait_for_timeout(3000)  # the plots render after the data arrives (MLflow's UI keeps polling)
        page.screenshot(path=SCREENSHOTS / "mlflow-compare.png", full_page=True)
        browser.close()


def test_serve_says_where_it_serves_and_stops_cleanly(project, prefect_server):
    """`seggen serve` names the deployments and the server it serves them to; Ctrl-C (SIGINT) or a
    `kill` (SIGTERM) stops it with no traceback."""
    import signal

    root = project["root"]
    env = {**project["env"], "PREFECT_API_URL": prefect_server}
    for sig in (signal.SIGINT, signal.SIGTERM):
        log_path = root.parent / f"serve-stop-{sig.name}.log"
        with log_path.open("w") as log:
            started = time.time()
            serve = subprocess.Popen(
                [str(BIN / "seggen"), "serve", "--project", str(root)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as from a terminal: SIGINT not ignored as in a background job
            )
            _wait_served(prefect_server, serve, log_path, set(FLOW_OF), since=started)  # the ablation's too
            serve.send_signal(sig)
            assert serve.wait(60) in (0, -sig, 128 + sig), log_path.read_text()[-2000:]
        text = log_path.read_text()
        assert f"to {prefect_server} (Ctrl-C stops)" in text and "Traceback" not in text, text[-3000:]
        assert "never awaited" not in text
    # Prefect's own commands work on the locked Prefect / fastapi pair (a newer fastapi answers 422)
    prefect = str(BIN / "prefect")
    for cmd, want in (("deployment", "train-evaluate"), ("flow-run", "seggen-"), ("work-pool", "")):
        r = subprocess.run([prefect, cmd, "ls"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        # HTTP 422 as a word (the tables print ids whose hex may hold "422")
        rejected = re.search(r"\b422\b|Unprocessable", r.stdout + r.stderr)
        assert r.returncode == 0 and want in r.stdout and not rejected, (cmd, r.stderr[-2000:])


def test_two_rounds_of_the_closed_loop(project, monkeypatch):
    """loop.rounds on the project: each round its own DVC stages and MLflow runs, the second planned after
    the first round's arm and against its plan; the report's loop table says what each round did and where
    the loop ended. Nothing else re-runs. (The rounds' arms are evaluated on the planning split only, which
    is what the loop reads; on the other splits they are evaluated like any arm.)"""
    from mlflow import MlflowClient

    from seggen.config import load_params, write_params
    from seggen.reporting.report import loop_section

    root, env = project["root"], project["env"]
    rounds = {"r1": {"after": "baseline"}, "r2": {"after": "r1"}}
    loop = {"loop.rounds": rounds, "loop.synthesize": {"filter.pixel": True, "filter.scorer": "plan"}}
    write_params(root / "params.yaml", loop)  # as `seggen params apply` would: comments and quoting kept
    targets = [f"evaluate_round@{k}-tuning" for k in rounds]
    done = ran(dvc(root, "repro", *targets, env=env))
    expected = [f"plan_round@{k}" for k in rounds] + [f"train_round@{k}" for k in rounds]
    expected += [f"synthesize_round@{k}-{s}" for k in rounds for s in ("masksyn", "imgsyn")]
    assert sorted(done) == sorted(["check_models", *expected, *targets])
    assert done.index("train_round@r1") < done.index("plan_round@r2") < done.index("synthesize_round@r2-masksyn")

    # round 1 planned after the baseline; round 2 after round 1's arm, against round 1's plan
    plans = {k: json.loads((root / "data" / "loop" / k / "plan" / "plan.json").read_text()) for k in rounds}
    assert plans["r1"]["reference"] == "baseline" and "previous" not in plans["r1"]
    assert plans["r2"]["reference"] == "r1" and plans["r2"]["round"] == 2
    assert plans["r2"]["previous"] == {
        "plan": "data/loop/r1/plan/plan.json",
        "reference": "baseline",
        "mIoU": plans["r1"]["mIoU"],
    }
    tuning = {
        a: json.loads((root / "reports" / "eval" / a / "tuning" / "scores.json").read_text())["mIoU"]
        for a in ("baseline", *rounds)
    }
    assert plans["r1"]["mIoU"] == pytest.approx(tuning["baseline"], abs=0.01)  # the plan scores as evaluate does
    assert plans["r2"]["mIoU"] == pytest.approx(tuning["r1"], abs=0.01)
    helped = plans["r2"]["mIoU"] > plans["r1"]["mIoU"]
    assert (plans["r2"]["stopped"] is None) == helped
    # what each round generated, and why: its rows record the round; a loop that ended generates nothing
    for k, rnd in (("r1", 1), ("r2", 2)):
        for s in ("masksyn", "imgsyn"):
            summary = json.loads((root / "data" / "loop" / k / s / "summary.json").read_text())
            rows = [json.loads(x) for x in (root / "data" / "loop" / k / s / "manifest.jsonl").read_text().splitlines()]
            assert summary["samples"] == (0 if k == "r2" and not helped else 4)
            assert all(row["plan"]["round"] == rnd for row in rows) and len(rows) == summary["samples"]
    seeds = {
        k: {
            json.loads(x)["seed"]
            for x in (root / "data" / "loop" / k / "imgsyn" / "manifest.jsonl").read_text().splitlines()
        }
        for k in rounds
    }
    assert len(seeds["r1"]) == 4 and not seeds["r1"] & seeds["r2"]  # round 2 draws new pairs, not round 1's
    if not helped:  # the loop ended: round 2's arm saw the same draws as round 1's
        weights = [(root / "models" / "segmenter" / k / "model" / "model.safetensors").read_bytes() for k in rounds]
        assert weights[0] == weights[1]
    # round 2's arm trained on both rounds' data
    meta = json.loads((root / "models" / "segmenter" / "r2" / "model" / "seggen_segmenter.json").read_text())
    assert len(meta["synthetic_fingerprints"]) == 4, meta["synthetic_fingerprints"]

    monkeypatch.chdir(root)  # the report stage's view: the project's relative paths
    table = "\n".join(loop_section(load_params("params.yaml"), {k: {"tuning": {"mIoU": tuning[k]}} for k in tuning}))
    assert "## The closed loop" in table and "| r1 | `baseline` |" in table and "| r2 | `r1` |" in table
    assert ("The loop ended before round `r2`, which generated nothing." in table) == (not helped)
    assert f"| {plans['r1']['mIoU']:.1f} | {plans['r2']['mIoU']:.1f} | 4 + 4 |" in table  # round 1's row

    # each round's stages are MLflow runs named as DVC names them; round 2's plan names round 1's as the one before
    client = MlflowClient(project["mlflow"])
    exp = client.get_experiment_by_name("seggen")
    runs = client.search_runs([exp.experiment_id], "tags.`seggen.kind` = 'stage'", max_results=500)
    by_stage = {run.data.tags.get("seggen.stage"): run for run in runs}
    assert {*expected, *targets} <= set(by_stage)
    tags = by_stage["plan_round@r2"].data.tags
    assert tags["plan.reference"] == "r1" and tags["plan.round"] == "2"
    assert tags["plan.previous"] == "data/loop/r1/plan/plan.json"
    inputs = {d.dataset.name for d in by_stage["plan_round@r2"].inputs.dataset_inputs}
    assert "segmenter-r1" in inputs

    assert ran(dvc(root, "repro", *targets, env=env)) == ["check_models"]
