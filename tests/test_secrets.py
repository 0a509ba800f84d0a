"""Credentials in MLFLOW_TRACKING_URI (http://user:password@host) reach no output: errors, logs, links,
MLflow tags and params, files. The health check sends them as basic auth, as MLflow does."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from helpers import TINY_SEG_MODEL
from seggen.pipeline import tracking

SECRET = "S3cret-p%40ss"  # percent-encoded in the URI: the password is S3cret-p@ss


def test_redact_split_and_scrub():
    uri = f"https://alice:{SECRET}@mlflow.example.org:8443/base"
    assert tracking.redact(uri) == "https://alice:***@mlflow.example.org:8443/base"
    assert tracking.split_credentials(uri) == ("https://mlflow.example.org:8443/base", "alice", "S3cret-p@ss")
    assert tracking.redact("https://TOKEN123@host/x") == "https://***@host/x"  # a lone user part: a token
    assert tracking.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking.redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    text = f"ConnectionError: {uri}/api failed for S3cret-p@ss"
    assert "S3cret" not in tracking.scrub(text, uri) and "alice:***@" in tracking.scrub(text, uri)
    assert tracking.run_url(uri, "1", "abc") == "https://mlflow.example.org:8443/base/#/experiments/1/runs/abc"


@pytest.fixture()
def auth_server():
    """A /health that answers 200 to alice's basic auth only (what an MLflow behind a proxy does)."""
    want = "Basic " + base64.b64encode(b"alice:S3cret-p@ss").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's name
            ok = self.path == "/health" and self.headers.get("Authorization") == want
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_health_check_sends_the_credentials_and_never_prints_them(auth_server, monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    tracking.check_reachable(f"http://alice:{SECRET}@{auth_server}")  # answered 200: no error
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(tracking.TrackingError) as bad:
        tracking.check_reachable(f"http://alice:wrong{SECRET}@{auth_server}")
    assert "/health answered HTTP 401 Unauthorized" in str(bad.value) and "S3cret" not in str(bad.value)
    assert f"alice:***@{auth_server}" in str(bad.value)
    port = free_port()  # nothing listens there
    with pytest.raises(tracking.TrackingError) as down:
        tracking.check_reachable(f"http://alice:{SECRET}@127.0.0.1:{port}")
    assert "unreachable" in str(down.value) and "S3cret" not in str(down.value)


def test_the_cli_error_line_is_redacted(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:{port}"}
    env.pop("SEGGEN_TRACKING", None)
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "prepare"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: MLFLOW_TRACKING_URI=http://alice:***@127.0.0.1")
    assert "S3cret" not in r.stdout + r.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_tracked_stage_with_a_password_in_the_uri_writes_it_nowhere(mlflow_server, small_benchmark, tmp_path):
    """A segmenter training logged to a real `mlflow server` through http://alice:PASSWORD@...: every
    line the stage prints, every file it writes, and every tag and param of its MLflow run."""
    from mlflow import MlflowClient

    host = mlflow_server.removeprefix("http://")
    doc = {
        "data": {"root": str(small_benchmark)},
        "segmenter": {
            "out": str(tmp_path / "seg"),
            "model": TINY_SEG_MODEL,
            "train": {"steps": 3, "batch_size": 2, "crop": 32, "checkpoint_every": 50, "threads": 1},
        },
        "tracking": {"log_every": 1, "system_metrics_interval": 1.0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    experiment = f"secrets-{os.getpid()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@{host}", "MLFLOW_EXPERIMENT_NAME": experiment}
    env.pop("SEGGEN_TRACKING", None)
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "train_segmenter"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for secret in ("S3cret", "p@ss", "p%40ss"):
        assert secret not in r.stdout + r.stderr
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaks == [], leaks
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert runs and runs[0].info.status == "FINISHED"
    for run in runs:
        stored = " ".join([*run.data.tags.values(), *run.data.params.values()])
        assert "S3cret" not in stored and "p@ss" not in stored
    assert Path(tmp_path / "seg" / "model").is_dir()


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_training_is_noticed_in_seconds(small_benchmark, tmp_path):
    """The MLflow server is killed while a tracked training runs: the training finishes (its model is
    written), and the stage ends at once with one line saying the server stopped answering, exit 2 --
    not minutes of MLflow's retries and a traceback."""
    import time

    from conftest import local_server

    home = tmp_path / "server"
    home.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    argv = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "a")]
    doc = {
        "data": {"root": str(small_benchmark)},
        "segmenter": {
            "out": str(tmp_path / "seg"),
            "model": TINY_SEG_MODEL,
            "train": {"steps": 40, "batch_size": 2, "crop": 32, "checkpoint_every": 100, "threads": 1},
        },
        "tracking": {"log_every": 1, "system_metrics": False},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("SEGGEN_TRACKING", None)
    err = tmp_path / "stderr.txt"
    with local_server(argv, uri + "/health", home) as server, err.open("w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seggen.cli", "train_segmenter"], cwd=tmp_path, env=env, stderr=e
        )
        deadline = time.time() + 120
        while "train_segmenter (real):" not in err.read_text() or "1/40" not in err.read_text():
            assert proc.poll() is None and time.time() < deadline, err.read_text()[-2000:]
            time.sleep(0.2)
        import psutil

        for child in [*psutil.Process(server.pid).children(recursive=True), psutil.Process(server.pid)]:
            child.kill()  # the server and its uvicorn workers, mid-training
        killed = time.perf_counter()
        rc = proc.wait(timeout=600)
        after = time.perf_counter() - killed
    text = err.read_text()
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "stopped answering" in errors[0], text[-3000:]
    assert "Traceback" not in text and (tmp_path / "seg" / "model" / "config.json").is_file()
    assert after < 60, f"{after:.0f} s from the server's death to the stage's end"  # the rest of 40 steps + ~3 s
