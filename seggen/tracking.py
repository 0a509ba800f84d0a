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

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from seggen.errors import SeggenError
from seggen.io import digest_tree

log = logging.getLogger(__name__)

TRACKING_ENV = "SEGGEN_TRACKING"  # off: no tracking
EXECUTION_ENV = "SEGGEN_PIPELINE_RUN"  # an id shared by the stages of one pipeline execution
DVC_EXPERIMENT_ENV = "SEGGEN_DVC_EXPERIMENT"  # the DVC experiment a flow run saves its results as
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "seggen"
KIND, STAGE, EXECUTION = "seggen.kind", "seggen.stage", "seggen.execution"
# MLflow's usage telemetry calls out from every process that imports it, and its telemetry bookkeeping
# has failed a stage that ran right after a tracking server restarted (KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID'): off in seggen's processes unless the variable says otherwise
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(SeggenError):
    pass


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def tracking_uri(project: Path = Path(".")) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project / 'mlflow.db').resolve()}"


# -- credentials: a tracking URI may carry them (http://user:password@host); they never reach an output


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """-> (the URI without user:password@, user, password), percent-decoded."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=host)), user, password


def redact(uri: str) -> str:
    """The URI as messages, links and tags show it: user:***@host (a lone user part, often a token: ***@host)."""
    from urllib.parse import urlsplit, urlunsplit

    bare, user, password = split_credentials(uri)
    if user is None and password is None:
        return uri
    parts = urlsplit(bare)
    shown = f"{user}:***" if password is not None and user else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{parts.netloc}"))


def scrub(text: str, uri: str) -> str:
    """`text` (an error from a library, say) with the URI's password and the URI itself redacted."""
    _, user, password = split_credentials(uri)
    text = text.replace(uri, redact(uri))
    for secret in (password, None if password is not None else user):
        if secret:
            text = text.replace(secret, "***")
    return text


_FROM_URI: set[str] = set()  # the auth variables this process set from a URI's credentials


def _use_credentials(uri: str) -> str:
    """MLflow gets the URI without credentials and them as MLFLOW_TRACKING_USERNAME / _PASSWORD (which
    it sends as basic auth), so that nothing MLflow prints or stores -- its "View run at" links, run
    tags -- holds them. A URI's own credentials win over the variables; those taken from an earlier
    URI go when the next URI has none (a long-lived process must not send them to another server).
    -> the bare URI."""
    bare, user, password = split_credentials(uri)
    given = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    for var, value in given.items():
        if value is not None:
            os.environ[var] = value
            _FROM_URI.add(var)
        elif var in _FROM_URI:
            os.environ.pop(var, None)
            _FROM_URI.discard(var)
    return bare


def _auth_header() -> dict[str, str]:
    """What MLflow would send: a bearer token, or basic auth from the username / password variables."""
    import base64

    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is None:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any compute when a tracking server is named but does not answer. Credentials in
    the URI are sent as basic auth (not read as part of the host name)."""
    if not uri.startswith(("http://", "https://")):
        return
    bare = _use_credentials(uri)
    request = urllib.request.Request(bare.rstrip("/") + "/health", headers=_auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:  # it answered, but not OK: credentials refused (401/403), a proxy...
        reason = f"/health answered HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, "reason", e))
    raise TrackingError(
        f"MLFLOW_TRACKING_URI={redact(uri)}: tracking server unreachable ({scrub(reason, uri)}); "
        f"start it, unset MLFLOW_TRACKING_URI for the local store, or run offline with {TRACKING_ENV}=off"
    )


# -- lineage facts ------------------------------------------------------------------------------


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


def dvc_md5(path: str | Path, project: Path = Path(".")) -> str | None:
    """The md5 dvc.lock records for `path` (as an output of its stage), or None."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return None
    target = Path(os.path.normpath(path)).as_posix()
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for entry in stage.get("outs", []) + stage.get("deps", []):
            if Path(os.path.normpath(entry.get("path", ""))).as_posix() == target and entry.get("md5"):
                return entry["md5"]
    return None


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
        from seggen import mlflow_models as mm

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

        from seggen import mlflow_models as mm

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


def _registered(client, arm_dirs: dict[str, Path], picks: dict[str, str | None]) -> dict[str, tuple[str, str | None]]:
    """{alias: (arm, the registered segmenter version whose digest tag is the arm's model directory's,
    or None)} for each alias with an arm."""
    from seggen import mlflow_models as mm

    name = mm.KINDS["segmenter"]
    out = {}
    for alias, arm in picks.items():
        if arm is None or arm not in arm_dirs or not (arm_dirs[arm] / "config.json").exists():
            continue
        digest = digest_tree(arm_dirs[arm])
        found = client.search_model_versions(f"name='{name}' and tags.digest='{digest}'")
        out[alias] = (arm, str(max(found, key=lambda v: int(v.version)).version) if found else None)
    return out


def set_aliases(client, arm_dirs: dict[str, Path], in_domain: dict[str, float], baseline: str | None) -> dict:
    """The registry's aliases on the segmenter: `champion` -> the version of the arm with the best
    in-domain mIoU, `baseline` -> the baseline arm's. A version is found by the digest of the arm's
    model directory (its tag), so the alias names exactly the weights that were scored."""
    from seggen import mlflow_models as mm

    picks = {"champion": max(in_domain, key=in_domain.get) if in_domain else None, "baseline": baseline}
    set_to = {}
    for alias, (arm, version) in _registered(client, arm_dirs, picks).items():
        if version is None:
            log.warning("%s: no registered version of its model directory (trained with tracking off?)", arm)
            continue
        client.set_registered_model_alias(mm.KINDS["segmenter"], alias, version)
        set_to[alias] = {"arm": arm, "version": version}
    return set_to


def promote(params, champion: str | None = None, project: Path = Path(".")) -> dict[str, dict]:
    """`seggen promote`: move the registry's aliases -- the only way they move (no run, experiment or
    flow does). `champion` -> the registered version of the arm with the best in-domain mIoU in the
    report (reports/summary.json), or of `champion` if given; `baseline` -> the report's reference arm.
    Each promoted version is tagged with the report's scores of its arm (`reference.SPLIT.mIoU`): what
    `ci-check --against ALIAS` compares with, which no later evaluation of the same weights changes.
    Every alias is resolved before any moves. -> {alias: {"arm", "version", "previous"}}."""
    import json

    from mlflow.exceptions import MlflowException

    from seggen import mlflow_models as mm
    from seggen.ci_check import data_fingerprint
    from seggen.reporting.scores import decision_split, gate_scores

    if not enabled():
        raise TrackingError(f"seggen promote moves MLflow registry aliases: tracking is off ({TRACKING_ENV})")
    summary_path = Path(params.report.out) / "summary.json"
    if not summary_path.is_file():
        raise TrackingError(f"{summary_path}: no report to promote from (run the pipeline: dvc repro)")
    summary = json.loads(summary_path.read_text())
    split = decision_split(params)  # in-domain, the tuning split where there is one
    scores = {a: s.get(split, {}).get("mIoU") for a, s in summary["arms"].items()}
    scores = {a: v for a, v in scores.items() if v is not None}
    if champion is not None and champion not in scores:
        raise TrackingError(f"--arm {champion}: not an arm of {summary_path} (have: {', '.join(scores) or 'none'})")
    pick = champion or (max(scores, key=scores.get) if scores else None)
    if pick is None:
        raise TrackingError(f"{summary_path}: no arm has an in-domain ({split}) mIoU")
    client, uri = open_client(project)
    name = mm.KINDS["segmenter"]
    dirs = {a: Path(params.arm(a).segmenter.out) / "model" for a in summary["arms"]}
    picks = {"champion": pick, "baseline": summary.get("reference_arm")}
    resolved = _registered(client, dirs, picks)
    missing = [f"{alias} -> {arm}" for alias, (arm, version) in resolved.items() if version is None]
    if "champion" not in resolved or missing:
        raise TrackingError(
            f"{'; '.join(missing) or 'champion -> ' + pick}: no registered version of {dirs[pick].parent.name}'s model "
            f"in {uri} (trained with tracking off? run the pipeline with tracking on); no alias moved"
        )
    moved = {}
    for alias, (arm, version) in resolved.items():
        try:
            previous = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        for s_name, s in summary["arms"][arm].items():
            for key, v in gate_scores(s, s_name).items() if s.get("mIoU") is not None else ():
                client.set_model_version_tag(name, version, f"reference.{key}.mIoU", f"{v:.4f}")
        client.set_model_version_tag(name, version, "reference.commit", git_commit(project))
        client.set_model_version_tag(name, version, "reference.data", data_fingerprint(params))
        client.set_registered_model_alias(name, alias, version)
        moved[alias] = {"arm": arm, "version": version, "previous": previous}
    return moved


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
    run = client.create_run(
        exp_id,
        run_name=name,
        tags={**tags, KIND: "pipeline", EXECUTION: key, "mlflow.source.git.commit": tags["git_commit"]},
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


def server_lost(e: BaseException) -> bool:
    """True when `e` (or what caused it) says the tracking server cannot be reached any more."""
    seen = 0
    while e is not None and seen < 8:
        name, text = type(e).__name__, str(e)
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError"):
            return True
        if "Max retries exceeded" in text or "Connection refused" in text or "Failed to establish" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


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
        filter_string=f"tags.`{KIND}` = 'stage' and tags.`{STAGE}` LIKE 'evaluate@%' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    ), uri


def latest_evaluations(df) -> dict[tuple[str, str], object]:
    """(arm, split) -> the newest row of `search_evaluations`' DataFrame."""
    latest: dict[tuple[str, str], object] = {}
    for _, r in df.iterrows():  # newest first
        latest.setdefault((r.get("tags.arm"), r.get("tags.split")), r)
    return latest
