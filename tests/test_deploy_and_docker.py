"""docker/: the compose file parses and every command it runs exists with the options it passes
(Docker itself cannot run here). `seggen deploy` registers the deployments on a process work pool
of a real Prefect server (what the compose `deploy` service does)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _help(argv: list[str]) -> str:
    """`CMD SUB ... --help` for the command words of argv (up to the first option)."""
    words = []
    for a in argv:
        if a.startswith("-"):
            break
        words.append(a)
    exe = BIN / words[0]
    assert exe.exists(), f"{words[0]} is not installed by the package"
    r = subprocess.run(
        [str(exe), *words[1:], "--help"],
        capture_output=True,
        text=True,
        env={"PATH": str(BIN), "HOME": "/tmp", "COLUMNS": "200", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
    )
    assert r.returncode == 0, f"{' '.join(words)} --help: {r.stderr[-1000:]}"
    return r.stdout


def test_compose_parses_and_its_commands_exist():
    doc = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "mlflow", "prefect-server", "prefect-worker", "deploy"}
    assert set(doc["volumes"]) >= {"postgres", "mlflow", "prefect", "dvc-cache"}
    # Postgres behind both servers, created by the init script the postgres service mounts
    pg = services.pop("postgres")
    init = next(v.split(":")[0] for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v)
    sql = (REPO / "docker" / init).read_text()
    assert "CREATE DATABASE mlflow;" in sql and "CREATE DATABASE prefect;" in sql
    assert "postgresql+psycopg2://seggen:seggen@postgres:5432/mlflow" in services["mlflow"]["command"]
    db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db == "postgresql+asyncpg://seggen:seggen@postgres:5432/prefect"
    assert "psycopg2-binary" in (REPO / "docker" / "Dockerfile").read_text()
    assert "ports" not in pg  # the database is reachable on the compose network only
    # the worker runs the mounted checkout's code (what DVC hashes); no volume hides tracked files
    worker = services["prefect-worker"]
    assert worker["environment"]["PYTHONPATH"] == worker["working_dir"] == "/workspace"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for v in worker["volumes"]:
        target = v.split(":")[1]
        if target != "/workspace":
            sub = target.removeprefix("/workspace/")
            assert not any(f.startswith(sub + "/") for f in tracked), f"{v} hides tracked files"
    for name in ("mlflow", "prefect-server"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        services[name]["depends_on"].pop("postgres")
    for name, svc in services.items():
        assert (
            svc["build"]["dockerfile"] == "docker/Dockerfile"
            and (REPO / "docker" / svc["build"]["context"]).resolve() == REPO
        )
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: publish on the host's loopback only"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services and (cond["condition"] != "service_healthy" or "healthcheck" in services[dep])
        argv = shlex.split(svc["command"])
        text = _help(argv)
        for opt in [a.split("=")[0] for a in argv if a.startswith("--")]:
            assert opt in text, f"{name}: {argv[0]} does not accept {opt}"
    gpu = services["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["prefect-worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_dockerfile_copies_what_exists():
    lines = [
        ln.strip()
        for ln in (REPO / "docker" / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0].startswith("FROM ")
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), src
    cmd = json.loads(next(ln for ln in lines if ln.startswith("CMD "))[4:])
    _help(cmd)
    assert any("torch==${TORCH_VERSION}" in ln and "--index-url" in ln for ln in lines)


def test_example_workflow_runs_the_tests_and_the_gate():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("make test" in s for s in steps) and any("seggen ci-check" in s for s in steps)
    assert "make test" in (REPO / ".ci" / "run").read_text() and "ci-check" in (REPO / ".ci" / "run").read_text()


def test_deploy_registers_the_deployments_on_a_work_pool(prefect_server, tmp_path):
    for f in ("dvc.yaml", "params.yaml", "ablation/dvc.yaml", "ablation/params.yaml"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / f, tmp_path / f)
    from seggen.config import load_params, write_params

    write_params(tmp_path / "params.yaml", {"segmenter.train.steps": 401})
    r = subprocess.run(
        [str(BIN / "seggen"), "deploy", "--pool", "seggen-test", "--project", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    req = urllib.request.Request(
        prefect_server + "/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        deps = [d for d in json.loads(resp.read()) if d.get("work_pool_name") == "seggen-test"]
    assert {d["name"] for d in deps} == {"full-pipeline", "synthesis-only", "train-evaluate", "ablation"}
    assert all(d["parameters"]["request"]["project_dir"] == str(tmp_path) for d in deps)
    assert all("profile" not in d["parameters"]["request"] for d in deps)  # the ablation flow is the ablation
    # the typed form: the params schema, its defaults the project's params files
    by_name = {d["name"]: d for d in deps}
    for name, d in by_name.items():
        assert d["parameter_openapi_schema"]["properties"]["params"]["$ref"].endswith("/Params")
        file = "ablation/params.yaml" if name == "ablation" else "params.yaml"
        want = load_params(tmp_path / file).segmenter.train.steps
        assert d["parameters"]["params"]["segmenter"]["train"]["steps"] == want
    assert by_name["train-evaluate"]["parameters"]["params"]["segmenter"]["train"]["steps"] == 401
    assert {d["entrypoint"] for d in deps} == {
        "flows/pipeline.py:pipeline",
        "flows/pipeline.py:synthesis",
        "flows/pipeline.py:train_evaluate",
        "flows/pipeline.py:ablation",
    }
    for d in deps:  # the same names are served by test_pipeline.py against this server
        urllib.request.urlopen(
            urllib.request.Request(f"{prefect_server}/deployments/{d['id']}", method="DELETE"), timeout=30
        )
