"""Shared fixtures. Real dataset samples are read from SEGGEN_REAL_SAMPLES (never copied)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# real ADE20K and COCO samples (ade20k/ADEChallengeData2016/, coco/), read where they are, never copied in
REAL = Path(os.environ.get("SEGGEN_REAL_SAMPLES", "/nonexistent/real-samples"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# under pytest-xdist (`-n 2`) each worker, and every process it starts, gets one compute thread:
# two workers on two cores instead of each oversubscribing both
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
# no MLflow tracking unless a test asks for it (tests/test_pipeline.py runs against a real server)
os.environ["SEGGEN_TRACKING"] = "off"
os.environ.pop("MLFLOW_TRACKING_URI", None)


# the files whose slow tests take longest, first: `make test-slow` hands whole files to its two workers
# in this order (--dist loadfile --no-loadscope-reorder), so each long file starts at once and the short
# ones fill in at the end; the tests of a file keep their order
LONGEST_FIRST = ("test_pipeline.py", "test_bench.py", "test_ci_gate.py", "test_real_data.py", "test_multiprocess.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first; `gpu` tests run where CUDA is, and say why they skip elsewhere."""
    import torch

    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order kept

    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real() -> Path:
    if not (REAL / "ade20k").is_dir():
        why = f"real ADE20K/COCO samples not found at {REAL} (set SEGGEN_REAL_SAMPLES to their directory)"
        if os.environ.get("SEGGEN_REQUIRE_REAL") == "1":  # .ci/run: a skip must not pass CI
            pytest.fail(why)
        pytest.skip(why)
    return REAL


@pytest.fixture(scope="session")
def ade_root(real: Path) -> Path:
    return real / "ade20k" / "ADEChallengeData2016"


@pytest.fixture()
def ade_copy(ade_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the ADE samples in a temp dir, for planting bad input."""
    dst = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory) -> Path:
    """A small bundled-benchmark dataset shared by the tests that only read it."""
    from seggen.config import BenchmarkParams
    from seggen.data.benchmark import generate

    root = tmp_path_factory.mktemp("bench") / "benchmark"
    generate(
        root,
        BenchmarkParams(
            resolution=64, num_train=24, num_val=8, num_tuning=4, domains={"unseen": 2, "tuning": 1, "images": 4}
        ),
        seed=0,
        progress=False,
    )
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120.0) -> None:
    import time
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def local_server(argv: list[str], health_url: str, home: Path, env: dict | None = None):
    """Start a server process (log in HOME/server.log), wait for its health URL, stop it afterwards."""
    import subprocess

    log = open(home / "server.log", "w")
    proc = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(health_url, proc)
    except Exception:
        proc.kill()
        raise RuntimeError((home / "server.log").read_text()[-2000:]) from None
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` (API and UI) on loopback with its own SQLite home; yields the API URL and
    points this process (and the processes it starts) at it."""
    import sys

    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    url = f"http://127.0.0.1:{port}/api"
    env["PREFECT_UI_API_URL"] = url  # the UI's calls (its default is port 4200)
    argv = [
        str(Path(sys.executable).with_name("prefect")),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with local_server(argv, url + "/health", home, env):
        saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = str(home)
        try:
            yield url
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (SQLite store, proxied artifacts); yields its URI."""
    import sys

    home = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    argv = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
    ]
    with local_server(argv, uri + "/health", home):
        yield uri


@pytest.fixture(scope="session")
def tiny_gens(small_benchmark, tmp_path_factory):
    """Tiny trained Text2Mask + Mask2Img on the small benchmark (params.yaml in the returned dir)."""
    from helpers import tiny_params
    from seggen.config import load_params
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.text2mask import train_text2mask

    tmp = tmp_path_factory.mktemp("syn_gens")
    p = load_params(tiny_params(tmp, small_benchmark))
    train_text2mask(p, progress=False)
    train_mask2img(p, progress=False)
    return tmp


@pytest.fixture(scope="session")
def tiny_synthetic(tiny_gens, tmp_path_factory) -> Path:
    """MaskSyn and ImgSyn datasets (24 samples each) from the tiny generators: ROOT/masksyn, ROOT/imgsyn."""
    from helpers import params_file
    from seggen.config import load_params
    from seggen.synthesis.synthesize import synthesize

    out = tmp_path_factory.mktemp("tiny_syn") / "synthetic"
    p = load_params(params_file(tiny_gens, out))
    for strategy in ("masksyn", "imgsyn"):
        synthesize(p, strategy, progress=False)
    return out
