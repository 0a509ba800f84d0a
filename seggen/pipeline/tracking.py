"""MLflow lineage for every stage: one parent run per pipeline execution, a nested run per stage.

Where: MLFLOW_TRACKING_URI, else a SQLite store in the project (mlflow.db, artifacts in
mlartifacts/). SEGGEN_TRACKING=off (or `seggen --offline`) runs without tracking.

Which parent: one pipeline execution is one `dvc repro` process (found among the stage's ancestor
processes: stages run as its children) or one Prefect flow run (it sets SEGGEN_PIPELINE_RUN). The
first stage of an execution creates the parent run; later stages find it by its tag. A stage run
outside both is a top-level run.

What: the stage's params, its metrics, artifacts, the datasets it read (digest = the DVC md5 that
dvc.lock records for them) and the models it wrote (registered, tagged with git commit and dvc.lock
hash). So a score leads back to the data, code and generators that made it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seggen.errors import SeggenError, TrackingError, server_lost
from seggen.io import digest_tree, load_yaml
from seggen.pipeline.tracking_server import (  # noqa: F401 (part of this module's interface)
    TRACKING_ENV,
    _use_credentials,
    check_reachable,
    redact,
    scrub,
    split_credentials,
)

log = logging.getLogger(__name__)

EXECUTION_ENV = "SEGGEN_PIPELINE_RUN"  # an id shared by the stages of one pipeline execution
DVC_EXPERIMENT_ENV = "SEGGEN_DVC_EXPERIMENT"  # the DVC experiment a flow run saves its results as
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "seggen"
KIND, STAGE, EXECUTION = "seggen.kind", "seggen.stage", "seggen.execution"
# MLflow's usage telemetry calls out from every process that imports it, and its telemetry bookkeeping
# has failed a stage that ran right after a tracking server restarted (KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID'): off in seggen's processes unless the variable says otherwise
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def tracking_uri(project: Path = Path(".")) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project / 'mlflow.db').resolve()}"


# -- credentials: a tracking URI may carry them (http://user:password@host); they never reach an output


def git_commit(project: Path = Path(".")) -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def dvc_lock_hash(project: Path = Path(".")) -> str:
    lock = project / "dvc.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else "none"


@functools.lru_cache(maxsize=2)
def _lock_md5s(lock: str, mtime_ns: int, size: int) -> dict[str, str]:
    """{path: md5} of a dvc.lock's outputs, then of its deps (an output's md5 wins); cached per
    version of the file, as a stage logs several datasets from one lock."""
    out: dict[str, str] = {}
    stages = (load_yaml(Path(lock).read_text()) or {}).get("stages", {})
    for kind in ("outs", "deps"):
        for stage in stages.values():
            for entry in stage.get(kind, []):
                if entry.get("md5"):
                    out.setdefault(Path(os.path.normpath(entry.get("path", ""))).as_posix(), entry["md5"])
    return out


def dvc_md5(path: str | Path, project: Path = Path(".")) -> str | None:
    """The md5 dvc.lock records for `path` (as an output of its stage), or None."""
    lock = project / "dvc.lock"
    try:
        st = lock.stat()
    except FileNotFoundError:
        return None
    return _lock_md5s(str(lock.resolve()), st.st_mtime_ns, st.st_size).get(Path(os.path.normpath(path)).as_posix())


def execution_key() -> str | None:
    if os.environ.get(EXECUTION_ENV):
        return os.environ[EXECUTION_ENV]
    # the nearest ancestor `dvc` process (Linux /proc): the stages of one `dvc repro` share it
    pid = os.getppid()
    for _ in range(10):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]):
            return f"dvc:{socket.gethostname()}:{pid}:{fields[19]}"  # pid + start time: unique per process
        pid = int(fields[1])
        if pid <= 1:
            return None
    return None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(key: str) -> str:
    return _KEY_BAD.sub("_", key)[:250]


# -- runs ---------------------------------------------------------------------------------------


class NullRun:
    """What a stage logs to when tracking is off."""

    run_id = None
    parent_id = None

    def log_params(self, *a, **k): ...
    def log_metrics(self, *a, **k): ...
    def log_losses(self, *a, **k): ...
    def log_artifact(self, *a, **k): ...
    def log_dataset(self, *a, **k): ...
    def log_model(self, *a, **k): ...
    def log_model_metrics(self, *a, **k): ...
    def set_tags(self, *a, **k): ...


class StageRun(NullRun):
    def __init__(self, client, run_id: str, parent_id: str | None, project: Path, tags: dict[str, str]):
        self.client, self.run_id, self.parent_id, self.project, self.tags = client, run_id, parent_id, project, tags

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in _flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = [
            Metric(metric_key(prefix + k), float(v), now, step or 0)
            for k, v in _flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        for i in range(0, len(flat), 1000):
            self.client.log_batch(self.run_id, metrics=flat[i : i + 1000])

    def log_losses(self, losses: list[float], key: str = "loss") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, float(v), now, i + 1) for i, v in enumerate(losses)]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, path: str | Path, name: str, context: str, split: str | None = None) -> None:
        """A dataset as a run input; digest: its DVC md5 from dvc.lock (else a sha256 of the files)."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        path = Path(path)
        md5 = dvc_md5(path, self.project)
        digest = md5 or digest_tree(path)[:36]
        with warnings.catch_warnings():  # two identical local-artifact source classes are registered
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
        ds = MetaDataset(source=source, name=name, digest=digest[:36])
        tags = {"dvc_md5": md5 or "not tracked by dvc", "path": str(path)}
        if split:
            tags["split"] = split
        mlflow.log_input(ds, context=context, tags=tags)

    def log_model(
        self, model_dir: str | Path, kind: str, tags: dict[str, Any] | None = None, sample: dict | None = None
    ) -> str | None:
        """The model directory as an MLflow Model of this run (pyfunc over the directory; a LoggedModel
        with signature and input example), registered as a new version of the kind's one registered
        model, tagged with the lineage and `tags` (arm, regime, seed). The prior (no pyfunc: it is
        an intermediate base) is logged as artifacts only. -> the LoggedModel id."""
        from seggen.pipeline import mlflow_models as mm

        model_dir = Path(model_dir)
        lineage = {
            "git_commit": self.tags["git_commit"],
            "dvc_lock": self.tags["dvc_lock"],
            "digest": digest_tree(model_dir),
            "stage": self.tags[STAGE],
            **{k: str(v) for k, v in (tags or {}).items() if v is not None},
        }
        if kind not in mm.KINDS:
            self.client.log_artifacts(self.run_id, str(model_dir), f"models/{kind}")
            return None
        name = mm.KINDS[kind]
        info = mm.log_pyfunc(model_dir, kind, name, lineage, sample)
        version = str(info.registered_model_version)
        for k, v in lineage.items():
            self.client.set_model_version_tag(name, version, k, v)
        self.client.set_tag(self.run_id, f"model.{kind}", f"{name}/{version}")
        self.client.set_tag(self.run_id, "seggen.model_id", info.model_id)
        return info.model_id

    def log_model_metrics(self, model_dir: str | Path, metrics: dict[str, Any], prefix: str = "") -> str | None:
        """Scores of a registered segmenter also on its LoggedModel (the version whose digest is the
        directory's), so the model's page lists what it scored. -> its model id, or None."""
        import mlflow

        from seggen.pipeline import mlflow_models as mm

        digest = digest_tree(Path(model_dir))
        found = self.client.search_model_versions(f"name='{mm.KINDS['segmenter']}' and tags.digest='{digest}'")
        if not found:
            return None
        source = max(found, key=lambda v: int(v.version)).source  # models:/m-<id>
        model_id = source.rsplit("/", 1)[-1]
        flat = {
            metric_key(prefix + k): float(v)
            for k, v in _flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        }
        mlflow.log_metrics(flat, model_id=model_id)
        self.client.set_tag(self.run_id, "seggen.model_id", model_id)
        return model_id

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)


def _experiment(client, project: Path) -> str:
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri(project)
    if uri.startswith("sqlite:///"):  # beside mlflow.db (wherever the stage runs), not ./mlruns
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    elif not uri.startswith(("http://", "https://")):
        location = (project / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent stage
        return client.get_experiment_by_name(name).experiment_id


def _parent(client, exp_id: str, key: str, tags: dict[str, str]) -> str:
    found = client.search_runs([exp_id], f"tags.`{EXECUTION}` = '{key}' and tags.`{KIND}` = 'pipeline'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    name = "pipeline " + time.strftime("%Y-%m-%d %H:%M:%S")
    own = {k: v for k, v in tags.items() if k != STAGE}  # not the stage that happened to open it
    run = client.create_run(
        exp_id,
        run_name=name,
        tags={**own, KIND: "pipeline", EXECUTION: key, "mlflow.source.git.commit": tags["git_commit"]},
    )
    return run.info.run_id


def open_client(project: Path = Path(".")):
    """A client for the tracking store; an unusable MLFLOW_TRACKING_URI fails here, in one line."""
    from mlflow import MlflowClient

    given = tracking_uri(project)
    check_reachable(given)
    uri = _use_credentials(given)  # what MLflow is given: no credentials (they go as its auth variables)
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # resolves the store: an unknown scheme or a bad database fails here
    except Exception as e:  # mlflow raises several unrelated types for a bad URI
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={redact(given)}: not a usable tracking store ({scrub(first, given)[:200]}); "
            f"unset it for the local store, or run offline with {TRACKING_ENV}=off"
        ) from None
    return client, uri


@contextmanager
def stage_run(
    stage: str, params: dict[str, Any] | None = None, project: Path = Path("."), system_metrics: float | None = None
) -> Iterator[NullRun]:
    """A nested MLflow run for one stage (FAILED if the stage raises); NullRun when tracking is off.
    Reachability is checked here, before the stage computes anything. system_metrics: sample CPU,
    memory (and GPU) every this many seconds into the run (MLflow system metrics)."""
    if not enabled():  # mlflow is not imported: tracking off needs no MLflow installed
        yield NullRun()
        return
    with _mlflow_stage_run(stage, params, project, system_metrics) as run:
        yield run


@contextmanager
def _mlflow_stage_run(
    stage: str, params: dict[str, Any] | None, project: Path, system_metrics: float | None
) -> Iterator[StageRun]:
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # a server that stops answering is noticed in seconds, not after MLflow's default retries (minutes)
    for var, value in HTTP_RETRIES.items():
        os.environ.setdefault(var, value)
    client, uri = open_client(project)
    mlflow.set_tracking_uri(uri)
    exp_id = _experiment(client, project)
    tags = {"git_commit": git_commit(project), "dvc_lock": dvc_lock_hash(project), STAGE: stage}
    if os.environ.get(DVC_EXPERIMENT_ENV):
        tags["dvc.experiment"] = os.environ[DVC_EXPERIMENT_ENV]
    key = execution_key()
    parent = _parent(client, exp_id, key, tags) if key else None
    run_tags = {**tags, KIND: "stage", "mlflow.source.git.commit": tags["git_commit"]}
    if key:
        run_tags[EXECUTION] = key
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics)
    active = mlflow.start_run(
        experiment_id=exp_id,
        run_name=stage,
        parent_run_id=parent,
        tags=run_tags,
        log_system_metrics=bool(system_metrics),
    )
    run = StageRun(client, active.info.run_id, parent, project, tags)
    status, lost = "FAILED", None
    try:
        if params:
            run.log_params(params)
        yield run
        status = "FINISHED"
    except Exception as e:
        if not server_lost(e):
            raise
        lost = e
    finally:
        try:
            mlflow.end_run(status)
            if parent:  # finished after every stage; the next stage of the execution re-opens it
                client.set_terminated(parent, status)
        except Exception as e:
            if not server_lost(e):
                raise
            lost = lost or e
    if lost is not None:
        raise TrackingError(
            f"the MLflow tracking server {redact(uri)} stopped answering ({scrub(_first_line(lost), uri)}); "
            "what the stage computed is written, its MLflow run is incomplete -- start the server and run the stage "
            f"again (a training resumes from its last checkpoint), or run offline with {TRACKING_ENV}=off"
        ) from None


# MLflow's defaults -- 7 retries, a doubling back-off, 120 s per request -- spend minutes on each call to
# a server that died or hangs. These: at most 3 attempts of 8 s with 1 + 2 s between, 27 s per call
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (no credentials in the link: the browser asks for them)."""
    uri = split_credentials(uri)[0]
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


# -- queries ---------------------------------------------------------------------------------------


def search_evaluations(project: Path = Path(".")):
    """Finished evaluate runs of the experiment, newest first (a pandas DataFrame), and the tracking URI."""
    import mlflow

    _, uri = open_client(project)
    mlflow.set_tracking_uri(uri)
    name = experiment_name()
    if mlflow.get_experiment_by_name(name) is None:
        raise SeggenError(f"MLflow experiment {name!r} not found at {uri}: run the pipeline first")
    return mlflow.search_runs(
        experiment_names=[name],
        filter_string=f"tags.`{KIND}` = 'stage' and tags.`{STAGE}` LIKE 'evaluate%@%' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    ), uri
