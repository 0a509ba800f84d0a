"""The seggen pipeline as Prefect flows: full pipeline, synthesis only, train + evaluate only.

Each task runs one DVC stage with `dvc repro --single-item STAGE`, which runs the stage's `seggen`
command (the one implementation in seggen/pipeline/stages.py) only if its params, code or data changed and
records the result in dvc.lock. So Prefect runs and `dvc repro` share one cache and one lock:
whatever either has computed the other skips, and a re-triggered flow continues from the stages
that completed. The tasks run in order in the project directory (stages share it).

One `dvc status` before the first stage says which stages are up to date; such a stage's task asks DVC
nothing more unless a stage it depends on has since changed its outputs (ran, or came back from DVC's
run cache), so a mostly cached run does not start DVC once per stage.
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
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.dag import _dvc, changed_stages, stage_groups, stage_names, upstream  # noqa: F401 (this module's too)
from seggen.config import Params

# which dvc.yaml stages a flow runs: by the `meta: {group: ...}` each stage carries in dvc.yaml (the
# stage list itself lives only there)
SYNTHESIS = ("preflight", "data", "generators", "synthesis")
TRAIN_EVALUATE = ("preflight", "segmentation")
BENCH_UPSTREAM = ("preflight", "data", "generators")  # of dvc.yaml: the ablation synthesizes with its models
# `seggen` exits 2 on bad params or data, the shell 126/127 when a command is missing: retrying cannot help
PERMANENT = (2, 126, 127)


class PipelineRequest(BaseModel):
    """What to run: the project, params to change, whether to force re-runs and to log to MLflow."""

    model_config = ConfigDict(extra="forbid")

    project_dir: str = Field(".", description="The seggen project (git + DVC checkout) to run in.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='params.yaml keys to set for this run, e.g. {"segmenter.train.steps": 900}. '
        "The run is a DVC experiment with these values (like `dvc exp run -S`); the checkout is not changed.",
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


MAX_LOG_LINES = 200
# DVC's advice after a stage ("git add dvc.lock", "dvc push", auto-staging): not the stage's output
_DVC_HINTS = re.compile(
    r"^(To track the changes with git, run:|To enable auto staging, run:|\s*git add |\s*dvc config core\.autostage"
    r"|Use `dvc push` to send your updates|Updating lock file )"
)


def stage_output(text: str) -> list[str]:
    """The stage command's output, condensed: each progress bar's last state (its redraws dropped),
    DVC's hints dropped, the stage's own lines kept."""
    out = []
    for line in text.split("\n"):  # not splitlines(): it splits at \r too
        last = line.rsplit("\r", 1)[-1].rstrip()  # a bar redraws with \r: its final state
        if last.strip() and not _DVC_HINTS.match(last):
            out.append(last)
    return out


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, task_run_name="{stage}")
def run_stage(
    project: str,
    stage: str,
    force: bool = False,
    env: dict[str, str] | None = None,
    position: str = "",
    up_to_date: bool = False,
) -> dict:
    """`dvc repro --single-item STAGE`; its progress bars feed a progress artifact. `position` ("3/12")
    leads the artifact's key and text: Prefect's UI lists a run's artifacts by their random ids, so
    each card says where its stage is in the run. `up_to_date`: DVC already said so (the run's
    `dvc status`, nothing it depends on changed since): recorded without starting DVC again.
    -> {"stage", "ran", "seconds", "changed": whether its outputs may have changed (it ran, or DVC
    restored them from its run cache)}."""
    log = get_run_logger()
    index = position.split("/")[0].zfill(2) if position else ""
    key = re.sub(r"[^a-z0-9-]+", "-", f"progress-{index}-{stage}".lower()).replace("--", "-")
    label = f"{position} {stage}" if position else stage
    if up_to_date:
        create_progress_artifact(100.0, key=key, description=f"{label}: up to date (dvc status)")
        log.info("%s: up to date (dvc status)", stage)
        return {"stage": stage, "ran": False, "seconds": 0.0, "changed": False}
    artifact = create_progress_artifact(0.0, key=key, description=f"{label}: starting")
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
                text = f"{position} {_progress_text(p)}" if position else _progress_text(p)
                update_progress_artifact(artifact, min(100.0, 100.0 * p["n"] / p["total"]), text)
    text = output.read_text(errors="replace")
    shutil.rmtree(work, ignore_errors=True)
    final = stage_output(text)
    if proc.returncode != 0:
        m = re.search(r"exited with (-?\d+)", text)
        raise StageFailed(stage, int(m.group(1)) if m else None, "\n".join(final[-15:]))
    ran = f"Running stage '{stage}'" in text
    seconds = time.perf_counter() - t0
    update_progress_artifact(
        artifact, 100.0, f"{label}: {'done' if ran else 'up to date (dvc.lock)'} in {seconds:.0f} s"
    )
    for ln in final[-MAX_LOG_LINES:] if ran else []:
        log.info("%s", ln)
    log.info("%s: %s in %.1f s", stage, "ran" if ran else "up to date", seconds)
    changed = f"Stage '{stage}' didn't change, skipping" not in text
    return {"stage": stage, "ran": ran, "seconds": seconds, "changed": changed}


# profile -> (dvc.yaml, params file)
PROFILES = {"default": ("dvc.yaml", "params.yaml"), "ablation": ("ablation/dvc.yaml", "ablation/params.yaml")}


def apply_overrides(project: Path, overrides: dict[str, Any], params_file: str = "params.yaml", source="overrides"):
    """Validate, then write the keys into the params file (comments kept; atomic). Returns the params."""
    from seggen.config import write_params

    return write_params(project / params_file, overrides, override_source=source)


def form_defaults(project: Path, params_file: str) -> dict[str, Any]:
    """A deployment's `params` default: the project's params file as validated (its values fill the form).
    With an ablation, `arms` is left empty: it is generated from `ablation` again on validation; so are the arms
    of the loop's rounds (`loop`)."""
    from seggen.config import load_params

    p = load_params(project / params_file)
    tree = p.model_dump(mode="json")
    if p.ablation:
        tree["arms"] = {}
    else:  # the loop's rounds' arms are generated from `loop` too
        tree["arms"] = {a: v for a, v in tree["arms"].items() if a not in p.loop.rounds}
    return tree


def form_changes(form: Params, current: Params) -> dict[str, Any]:
    """The dotted keys where the form's params differ from the project's, with the form's values (what
    `dvc exp run -S` would be given). A mapping the form shortened is set whole."""
    from seggen.config import _get_dotted, flatten

    tree = form.model_dump(mode="json")
    new, old = flatten(tree), flatten(current.model_dump(mode="json"))
    if form.ablation or current.ablation:  # generated from `ablation`: never set by hand
        new = {k: v for k, v in new.items() if not k.startswith("arms")}
        old = {k: v for k, v in old.items() if not k.startswith("arms")}
    made = {f"arms.{r}" for r in (*form.loop.rounds, *current.loop.rounds)}  # generated from `loop`
    new = {k: v for k, v in new.items() if not any(k == m or k.startswith(m + ".") for m in made)}
    old = {k: v for k, v in old.items() if not any(k == m or k.startswith(m + ".") for m in made)}
    changes = {k: v for k, v in new.items() if k not in old or old[k] != v}
    for k in old.keys() - new.keys():  # a key the form removed: its mapping, whole
        parent = k.rsplit(".", 1)[0]
        changes = {c: v for c, v in changes.items() if not c.startswith(parent + ".")}
        changes[parent] = _get_dotted(tree, parent)
    return changes


PARAMS_HELP = (
    "The project's params for this run; the form starts from its params file. Changed values run as a DVC "
    "experiment named after the flow run: the checkout's params file is not changed."
)
REQUEST_HELP = "The project to run in, whether to force re-runs of up-to-date stages and to log to MLflow."


def form_reference(project: Path, params_file: str) -> Params:
    """What the form's params are compared with: the deployment's defaults (the params file as it was
    when the deployment was served: what the form showed), else the params file now. So a value the
    user did not touch never reverts a later edit of the params file."""
    from prefect.runtime import deployment

    from seggen.config import load_params

    if deployment.id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            shown = (client.read_deployment(deployment.id).parameters or {}).get("params")
        if shown:
            return Params.model_validate(shown)
    return load_params(project / params_file)


def parameter_schema_for(flow_fn) -> Any:
    """The flow's parameter schema with `params` as the params schema itself (not "params or null"),
    required: the form shows every section and field with its type, bounds and description."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow_fn)
    prop = schema.properties["params"]
    ref = next(o for o in prop.get("anyOf", [prop]) if o.get("type") != "null")
    schema.properties["params"] = {**ref, "title": "params", "description": PARAMS_HELP, "position": prop["position"]}
    schema.properties["request"]["description"] = REQUEST_HELP
    schema.required = sorted({*(schema.required or []), "params"})
    return schema


def _mlflow_runs(project: Path, execution: str) -> tuple[str | None, dict[str, str]]:
    """This execution's MLflow parent run and stage runs (stage name -> URL), found by its tag."""
    from seggen.pipeline import tracking

    client, uri = tracking.open_client(project)
    exp = client.get_experiment_by_name(tracking.experiment_name())
    if exp is None:
        return None, {}
    runs = client.search_runs([exp.experiment_id], f"tags.`{tracking.EXECUTION}` = '{execution}'", max_results=5000)
    url = lambda r: tracking.run_url(uri, exp.experiment_id, r.info.run_id)  # noqa: E731
    parent = next((url(r) for r in runs if r.data.tags.get(tracking.KIND) == "pipeline"), None)
    # the parent carries the tags of the stage that opened it, its STAGE too: link stages to stage runs only
    stages = [r for r in runs if r.data.tags.get(tracking.KIND) == "stage" and tracking.STAGE in r.data.tags]
    return parent, {r.data.tags[tracking.STAGE]: url(r) for r in stages}


def produced_scores(eval_root: Path, since: float) -> dict[tuple[str, str], dict]:
    """(arm, split) -> scores of the evaluations this run wrote (scores.json newer than its start)."""
    found = {}
    for f in sorted(eval_root.glob("*/*/scores.json")):
        if f.stat().st_mtime >= since:
            found[(f.parent.parent.name, f.parent.name)] = json.loads(f.read_text())
    return found


def _summary_markdown(
    project: Path, eval_root: Path, results: list[dict], execution: str, track: bool, since: float
) -> str:
    parent, stage_urls, note = None, {}, None
    if track:
        try:
            parent, stage_urls = _mlflow_runs(project, execution)
        except Exception as e:  # the summary must not fail a finished run
            note = f"(MLflow links unavailable: {e})"
    ran = [r for r in results if r["ran"]]
    lines = [
        "# seggen pipeline run",
        "",
        f"{len(ran)} of {len(results)} stages ran"
        + ("; the others were up to date (dvc.lock)." if len(ran) < len(results) else "."),
        "",
        "| stage | result | seconds | MLflow |",
        "|---|---|---:|---|",
    ]
    for r in results:
        name = r["stage"].rsplit(":", 1)[-1]
        urls = [u for st, u in stage_urls.items() if st == name or st.startswith(name + "-")] if r["ran"] else []
        links = ", ".join(f"[run]({u})" for u in urls) or "–"
        lines.append(f"| {r['stage']} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']:.0f} | {links} |")
    scores = produced_scores(eval_root, since)
    lines += ["", "## Scores this run produced", ""]
    if scores:
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        # a split of drawn domains: the mean over its domains (each weighed once) and the worst one too
        lines += [
            "| arm | split | mIoU | mIoU, mean over domains | worst domain | PQ | AP |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for (arm, split), s in scores.items():
            cells = [s.get(k) for k in ("mIoU", "mIoU_domain_mean", "mIoU_domain_worst", "PQ", "AP")]
            lines.append(f"| {arm} | {split} | " + " | ".join(fmt(v) for v in cells) + " |")
    else:
        lines.append("No evaluation ran in this run, so it produced no scores.")
    if parent:
        lines += ["", f"MLflow pipeline run (its nested stage runs): [{parent}]({parent})"]
    elif track and not ran:
        lines += ["", "No stage ran, so this run logged nothing to MLflow."]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def run_pipeline(
    request: PipelineRequest, params: Params | None, groups: tuple[str, ...] | None, profile: str = "default"
) -> dict:
    """The stages in a worktree of the project (flows/experiment.py), saved as a DVC experiment named
    after the flow run: the project's params.yaml, dvc.lock and outputs are never changed."""
    from prefect.runtime import flow_run

    from flows.experiment import experiment_name, experiment_workspace, save_experiment
    from seggen.config import load_params
    from seggen.pipeline import tracking
    from seggen.pipeline.preflight import require_models

    log = get_run_logger()
    project = Path(request.project_dir).resolve()
    dvcfile, params_file = PROFILES[profile]
    if not (project / dvcfile).exists():
        raise FileNotFoundError(f"{project}: no {dvcfile} (project_dir must be a seggen checkout)")
    # the form's params (Prefect validated them against the schema) as changes -- what the user edited in
    # the form -- on top of the project's params file as it is now; then the request's dotted
    # overrides; all validated together before anything is created
    changes = form_changes(params, form_reference(project, params_file)) if params is not None else {}
    changes.update(request.overrides)
    require_models(load_params(project / params_file, changes, override_source="the run's parameters"))
    name = experiment_name(flow_run.name, flow_run.id)
    env = {tracking.EXECUTION_ENV: f"prefect:{flow_run.id or 'local'}", tracking.DVC_EXPERIMENT_ENV: name}
    if not request.track:
        env[tracking.TRACKING_ENV] = "off"
    else:  # an unreachable tracking server fails here, before any stage computes
        env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(project)  # the project's store, not the worktree's
        tracking.check_reachable(env["MLFLOW_TRACKING_URI"])
    with experiment_workspace(project, _dvc()) as work:
        params = apply_overrides(work, changes, params_file, "the run's parameters")
        if changes:
            log.info("params changed for this run: %s", json.dumps(changes))
        stages = stage_names(work, groups, dvcfile)
        if profile == "ablation":  # what the ablation builds on: the main pipeline's data, prior, generators
            stages = stage_names(work, BENCH_UPSTREAM) + stages
        started = time.time()
        overall = create_progress_artifact(0.0, key="pipeline-progress", description=f"0/{len(stages)} stages")
        # what DVC says before anything runs; a stage is asked again once a stage it reads has changed
        stale = None if request.force else changed_stages(work, stages)
        after = upstream(work, stages)
        results, changed = [], set()
        for i, stage in enumerate(stages):
            known = stale is not None and stage not in stale and not after[stage] & changed
            results.append(run_stage(str(work), stage, request.force, env, f"{i + 1}/{len(stages)}", known))
            if results[-1]["changed"]:
                changed.add(stage)
            update_progress_artifact(
                overall, 100.0 * (i + 1) / len(stages), f"{i + 1}/{len(stages)} stages ({stage} done)"
            )
        save_experiment(work, name, _dvc(), [r["stage"] for r in results if r["ran"]])
        md = _summary_markdown(
            project, work / params.evaluate.out, results, env[tracking.EXECUTION_ENV], request.track, started
        )
    md += (
        f"\n\nSaved as the DVC experiment `{name}` (the checkout is unchanged): `dvc exp show` lists it, "
        f"`dvc exp apply {name}` promotes it into the checkout."
    )
    create_markdown_artifact(
        md, key="seggen-summary", description="What this run executed, the scores it produced, its MLflow runs"
    )
    log.info(
        "%d stages: %d ran, %d up to date; DVC experiment %s",
        len(results),
        sum(r["ran"] for r in results),
        sum(not r["ran"] for r in results),
        name,
    )
    return {"stages": results, "experiment": name}


@flow(
    name="seggen-pipeline",
    description="The whole pipeline: data, captions, generators, synthesis, Mask2Former arms, evaluation, report.",
)
def pipeline(request: PipelineRequest = PipelineRequest(), params: Params | None = None) -> dict:
    return run_pipeline(request, params, None)


@flow(
    name="seggen-synthesis", description="Data, captions, Text2Mask + Mask2Img training and MaskSyn/ImgSyn synthesis."
)
def synthesis(request: PipelineRequest = PipelineRequest(), params: Params | None = None) -> dict:
    return run_pipeline(request, params, SYNTHESIS)


@flow(name="seggen-train-evaluate", description="Mask2Former arms on the existing data, evaluation and report.")
def train_evaluate(request: PipelineRequest = PipelineRequest(), params: Params | None = None) -> dict:
    return run_pipeline(request, params, TRAIN_EVALUATE)


@flow(
    name="seggen-ablation",
    description="The ablation (ablation/dvc.yaml): generators, MaskSyn/ImgSyn per data regime, "
    "every arm x seed, both evaluation splits, docs/results.md.",
)
def ablation(request: PipelineRequest = PipelineRequest(), params: Params | None = None) -> dict:
    return run_pipeline(request, params, None, "ablation")


FLOWS = {"full-pipeline": pipeline, "synthesis-only": synthesis, "train-evaluate": train_evaluate, "ablation": ablation}
