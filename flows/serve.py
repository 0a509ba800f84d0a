"""Register the pipeline deployments (and the ablation) with a Prefect server.

`seggen serve` (or `python -m flows.serve`): this process serves them and runs the flow runs that
the UI or the API create (no work pool needed). `seggen deploy --pool NAME`: registers them for a
process work pool instead, run by `prefect worker start --pool NAME` (the docker compose set-up).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.pipeline import FLOWS, PROFILES, form_defaults, parameter_schema_for

ENTRYPOINTS = {
    "full-pipeline": "pipeline",
    "synthesis-only": "synthesis",
    "train-evaluate": "train_evaluate",
    "ablation": "ablation",
}


def _parameters(project: Path, name: str) -> dict:
    """A deployment's defaults: the project, and its params file's values (the form's starting point)."""
    return {"request": {"project_dir": str(project)}, "params": form_defaults(project, _profile(name)[1])}


def _available(project: Path) -> dict:
    """The flows whose pipeline file the project has (a project without ablation/ gets no ablation deployment:
    it could only fail)."""
    return {n: f for n, f in FLOWS.items() if (project / _profile(n)[0]).is_file()}


def _profile(name: str) -> tuple[str, str]:
    return PROFILES["ablation" if name == "ablation" else "default"]


def _typed(deployment, flow_fn):
    """The deployment with the flow's typed params form (flows.pipeline.parameter_schema_for)."""
    deployment._parameter_openapi_schema = parameter_schema_for(flow_fn)
    return deployment


def serve(project_dir: str | Path = ".", limit: int = 1) -> None:
    """Serve the deployments until interrupted; `limit` flow runs at a time (each in its own worktree).
    Refuses without a server to serve to: Prefect would otherwise start a temporary one on a random
    port, which no UI or teammate can find, and which goes with this process."""
    import signal
    import warnings

    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    from seggen.errors import ConfigError

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "seggen serve: PREFECT_API_URL is not set (no Prefect server to serve to); start one with "
            "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    project = Path(project_dir).resolve()
    deployments = [
        _typed(f.to_deployment(name=name, parameters=_parameters(project, name), tags=["seggen"]), f)
        for name, f in _available(project).items()
    ]
    print(f"serving {', '.join(d.name for d in deployments)} of {project} to {url} (Ctrl-C stops)", flush=True)
    # Ctrl-C stops it even where it was started in the background (where a shell ignores SIGINT); a
    # SIGTERM takes Prefect's own graceful shutdown, whose never-awaited coroutine warning is noise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.filterwarnings("ignore", message=r"coroutine 'Runner\.astop' was never awaited")
    try:
        prefect_serve(*deployments, limit=limit)
    except KeyboardInterrupt:
        pass
    print("stopped serving", flush=True)


def deploy(pool: str, project_dir: str | Path = ".", source: str | Path | None = None) -> list[str]:
    """Register the deployments on a process work pool; `source` is where the worker finds the code."""
    from prefect import flow as prefect_flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:  # the pool, if the worker has not created it yet
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    project = Path(project_dir).resolve()
    src = str(Path(source).resolve() if source else Path(__file__).resolve().parents[1])
    ids = []
    for name in _available(project):
        fn = ENTRYPOINTS[name]
        remote = prefect_flow.from_source(source=src, entrypoint=f"flows/pipeline.py:{fn}")
        # to_deployment + apply, not flow.deploy: deploy's check for online workers sends a request
        # that Prefect 3.8's own server rejects (limit=None -> 422)
        dep = remote.to_deployment(
            name=name, work_pool_name=pool, parameters=_parameters(project, name), tags=["seggen"]
        )
        ids.append(str(_typed(dep, FLOWS[name]).apply()))
    return ids


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else ".")
