"""The seggen pipeline as Prefect flows: full pipeline, synthesis only, train + evaluate only.

Each task runs one DVC stage with `dvc repro --single-item STAGE`, which runs the stage's `seggen`
command (the one implementation in seggen/stages.py) only if its params, code or data changed and
records the result in dvc.lock. So Prefect runs and `dvc repro` share one cache and one lock:
whatever either has computed the other skips, and a re-triggered flow continues from the stages
that completed. The tasks run in order in the project directory (stages share it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator

# which dvc.yaml stages a flow runs: by the `meta: {group: ...}` each stage carries in dvc.yaml (the
# stage list itself lives only there)
SYNTHESIS = ("preflight", "data", "generators", "synthesis")
TRAIN_EVALUATE = ("preflight", "segmentation")
# `seggen` exits 2 on bad params or data, the shell 126/127 when a command is missing: retrying cannot help
PERMANENT = (2, 126, 127)


class PipelineRequest(BaseModel):
    """What to run. The Prefect UI shows this as a validated form."""

    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(".", description="The seggen project (git + DVC checkout) to run in.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='params.yaml keys to set before running, e.g. {"segmenter.train.steps": 900}. '
        "Written to params.yaml (like `dvc exp run -S`) so dvc.lock records them.",
    )
    profile: Literal["default", "bench"] = Field(
        "default",
        description="default: dvc.yaml + params.yaml; bench: the ablation, bench/dvc.yaml + bench/params.yaml.",
    )
    force: bool = Field(False, description="Re-run the selected stages even if dvc.lock says they are up to date.")
    track: bool = Field(True, description="Log to MLflow (MLFLOW_TRACKING_URI, else mlflow.db in the project).")

    @field_validator("overrides")
    @classmethod
    def _dotted_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
                raise ValueError(f"{key!r} is not a dotted params.yaml key")
        return v


class StageFailed(RuntimeError):
    def __init__(self, stage: str, code: int | None, tail: str):
        self.code = code
        super().__init__(
            f"stage {stage} failed" + (f" (its command exited with {code})" if code is not None else "") + f":\n{tail}"
        )


def _dvc() -> str:
    return shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def _transient(task, task_run, state) -> bool:
    """Retry unless the stage rejected its input (exit 2): a killed worker or a flaky disk is worth a retry."""
    try:
        state.result()
    except StageFailed as e:
        return e.code not in PERMANENT
    except Exception:
        return True
    return False


def _progress_text(p: dict) -> str:
    eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") is not None else ""
    rate = f", {p['rate']:.2f} {p.get('unit', 'it')}/s" if p.get("rate") else ""
    return f"{p.get('desc', '')}: {p['n']}/{p.get('total') or '?'}{rate}{eta}"


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, task_run_name="{stage}")
def run_stage(project: str, stage: str, force: bool = False, env: dict[str, str] | None = None) -> dict:
    """`dvc repro --single-item STAGE`; its progress bars feed a progress artifact."""
    log = get_run_logger()
    key = re.sub(r"[^a-z0-9-]", "-", f"progress-{stage}".lower())
    artifact = create_progress_artifact(0.0, key=key, description=f"{stage}: starting")
    work = Path(tempfile.mkdtemp(prefix="seggen-stage-"))
    progress, output = work / "progress.json", work / "output.log"
    cmd = [_dvc(), "repro", "--single-item", stage] + (["--force"] if force else [])
    t0 = time.perf_counter()
    with open(output, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **(env or {}),
                "SEGGEN_PROGRESS_FILE": str(progress),
                # the stage commands (seggen) from this environment
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )
        shown = None
        while proc.poll() is None:
            time.sleep(1.0)
            try:
                p = json.loads(progress.read_text())
            except (OSError, ValueError):
                continue
            if p != shown and p.get("total"):
                shown = p
                update_progress_artifact(artifact, min(100.0, 100.0 * p["n"] / p["total"]), _progress_text(p))
    text = output.read_text(errors="replace")
    shutil.rmtree(work, ignore_errors=True)
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    final = [ln for ln in lines if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
    if proc.returncode != 0:
        m = re.search(r"exited with (-?\d+)", text)
        raise StageFailed(stage, int(m.group(1)) if m else None, "\n".join(final[-15:]))
    ran = f"Running stage '{stage}'" in text
    seconds = time.perf_counter() - t0
    update_progress_artifact(
        artifact, 100.0, f"{stage}: {'done' if ran else 'up to date (dvc.lock)'} in {seconds:.0f} s"
    )
    for ln in final[-5:] if ran else []:
        log.info("%s", ln)
    log.info("%s: %s in %.1f s", stage, "ran" if ran else "up to date", seconds)
    return {"stage": stage, "ran": ran, "seconds": seconds}


# profile -> (dvc.yaml, params file)
PROFILES = {"default": ("dvc.yaml", "params.yaml"), "bench": ("bench/dvc.yaml", "bench/params.yaml")}


def stage_names(project: Path, groups: tuple[str, ...] | None, dvcfile: str = "dvc.yaml") -> list[str]:
    """The stages of `dvcfile` in file order (foreach/matrix expanded), those whose `meta.group` is one
    of `groups` only if given. Stages of another dvc.yaml are addressed FILE:NAME (as `dvc stage list`
    prints them)."""
    r = subprocess.run([_dvc(), "stage", "list", dvcfile, "--name-only"], cwd=project, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{project}/{dvcfile}: {r.stderr.strip() or r.stdout.strip()}")
    names = r.stdout.split()
    if groups is None:
        return names
    group = stage_groups(project / dvcfile)
    return [n for n in names if group.get(n.rsplit(":", 1)[-1].split("@")[0]) in groups]


def stage_groups(dvcfile: Path) -> dict[str, str]:
    """Stage name (before @) -> its `meta.group` in dvc.yaml."""
    import yaml

    stages = yaml.safe_load(dvcfile.read_text())["stages"]
    return {name: ((st.get("do", st).get("meta") or st.get("meta") or {}).get("group")) for name, st in stages.items()}


def apply_overrides(project: Path, overrides: dict[str, Any], params_file: str = "params.yaml"):
    """Validate, then write the keys into the params file (comments kept; atomic). Returns the params."""
    from seggen.config import write_params

    return write_params(project / params_file, overrides, override_source="overrides")


def _mlflow_links(project: Path, execution: str) -> tuple[dict[tuple[str, str], str], str | None]:
    """The latest evaluate run of each (arm, split) and this execution's parent run, as UI links."""
    from seggen import tracking

    df, uri = tracking.search_evaluations(project)
    exp_id = df["experiment_id"].iloc[0] if len(df) else None
    runs = {
        k: tracking.run_url(uri, r["experiment_id"], r["run_id"]) for k, r in tracking.latest_evaluations(df).items()
    }
    client, _ = tracking.open_client(project)
    parent = (
        client.search_runs(
            [exp_id], f"tags.`{tracking.EXECUTION}` = '{execution}' and tags.`{tracking.KIND}` = 'pipeline'"
        )
        if exp_id
        else []
    )
    return runs, tracking.run_url(uri, exp_id, parent[0].info.run_id) if parent else None


def _summary_markdown(project: Path, summary_path: Path, results: list[dict], execution: str, track: bool) -> str:
    lines = ["# seggen pipeline run", "", "| stage | result | seconds |", "|---|---|---:|"]
    lines += [f"| {r['stage']} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']:.0f} |" for r in results]
    runs, parent_url = {}, None
    if track:
        try:
            runs, parent_url = _mlflow_links(project, execution)
        except Exception as e:  # the summary must not fail a finished run
            lines += ["", f"(MLflow links unavailable: {e})"]
    if summary_path.exists():
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines += [
            "",
            "## Scores (latest evaluation of each arm)",
            "",
            "| arm | split | mIoU | PQ | AP | MLflow run |",
            "|---|---|---:|---:|---:|---|",
        ]
        for arm, splits in json.loads(summary_path.read_text())["arms"].items():
            for split, s in splits.items():
                link = f"[run]({runs[(arm, split)]})" if (arm, split) in runs else "–"
                lines.append(
                    f"| {arm} | {split} | {fmt(s.get('mIoU'))} | {fmt(s.get('PQ'))} | {fmt(s.get('AP'))} | {link} |"
                )
    if parent_url:
        lines += ["", f"MLflow pipeline run (nested stage runs): [{parent_url}]({parent_url})"]
    elif track:
        lines += ["", "Every stage was up to date: no new MLflow runs (the links above are the latest)."]
    return "\n".join(lines)


def run_pipeline(request: PipelineRequest, groups: tuple[str, ...] | None) -> dict:
    from prefect.runtime import flow_run

    from seggen import tracking
    from seggen.preflight import require_models

    log = get_run_logger()
    project = Path(request.project_dir).resolve()
    dvcfile, params_file = PROFILES[request.profile]
    if not (project / dvcfile).exists():
        raise FileNotFoundError(f"{project}: no {dvcfile} (project_dir must be a seggen checkout)")
    params = apply_overrides(project, request.overrides, params_file)

    require_models(params)  # an unreachable model fails the flow here, before its first task
    env = {tracking.EXECUTION_ENV: f"prefect:{flow_run.id or 'local'}"}
    if not request.track:
        env[tracking.TRACKING_ENV] = "off"
    else:  # an unreachable tracking server fails here, before any stage computes
        tracking.check_reachable(tracking.tracking_uri(project))
    stages = stage_names(project, groups, dvcfile)
    overall = create_progress_artifact(0.0, key="pipeline-progress", description=f"0/{len(stages)} stages")
    results = []
    for i, stage in enumerate(stages):
        results.append(run_stage(str(project), stage, request.force, env))
        update_progress_artifact(overall, 100.0 * (i + 1) / len(stages), f"{i + 1}/{len(stages)} stages ({stage} done)")
    md = _summary_markdown(
        project, project / params.report.out / "summary.json", results, env[tracking.EXECUTION_ENV], request.track
    )
    create_markdown_artifact(md, key="seggen-summary", description="Stages, scores and MLflow links of this run")
    log.info(
        "%d stages: %d ran, %d up to date",
        len(results),
        sum(r["ran"] for r in results),
        sum(not r["ran"] for r in results),
    )
    return {"stages": results}


@flow(
    name="seggen-pipeline",
    description="The whole pipeline: data, captions, generators, synthesis, Mask2Former arms, evaluation, report.",
)
def pipeline(request: PipelineRequest = PipelineRequest()) -> dict:
    return run_pipeline(request, None)


@flow(
    name="seggen-synthesis", description="Data, captions, Text2Mask + Mask2Img training and MaskSyn/ImgSyn synthesis."
)
def synthesis(request: PipelineRequest = PipelineRequest()) -> dict:
    return run_pipeline(request, SYNTHESIS)


@flow(name="seggen-train-evaluate", description="Mask2Former arms on the existing data, evaluation and report.")
def train_evaluate(request: PipelineRequest = PipelineRequest()) -> dict:
    return run_pipeline(request, TRAIN_EVALUATE)


@flow(
    name="seggen-bench",
    description="The ablation (bench/dvc.yaml): generators, MaskSyn/ImgSyn per data regime, "
    "every arm x seed, both evaluation splits, docs/results.md.",
)
def bench(request: PipelineRequest = PipelineRequest(profile="bench")) -> dict:
    return run_pipeline(request.model_copy(update={"profile": "bench"}), None)


FLOWS = {"full-pipeline": pipeline, "synthesis-only": synthesis, "train-evaluate": train_evaluate, "bench": bench}
