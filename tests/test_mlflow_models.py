"""Trained models as MLflow Models, against a real `mlflow server` on 127.0.0.1: pyfunc predictions
equal seggen's own commands, one registered model per kind with tagged versions and aliases, a
served `@champion` answering a real POST, and training metrics readable while the training runs."""

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from helpers import TINY_SEG_MODEL
from seggen.cli import app


@pytest.fixture()
def store(mlflow_server, monkeypatch, request):
    """This test's own experiment on the real server (registered models are shared: versions are
    told apart by their run)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"t-{request.node.name}-{time.time_ns()}")
    monkeypatch.delenv("SEGGEN_TRACKING", raising=False)
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    return MlflowClient(mlflow_server)


def seg_params(tmp: Path, data_root: Path, **train) -> Path:
    doc = {
        "data": {"root": str(data_root)},
        "segmenter": {
            "out": str(tmp / "seg"),
            "model": TINY_SEG_MODEL,
            "train": {"steps": 6, "batch_size": 4, "crop": 32, "checkpoint_every": 50, "threads": 1, **train},
        },
        "tracking": {"log_every": 5, "system_metrics_interval": 1.0},
    }
    f = tmp / "params.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


def log(kind: str, model_dir: Path, tags: dict | None = None) -> str:
    """Log a model directory the way the stages do (a stage run, then StageRun.log_model)."""
    from seggen.pipeline import tracking

    with tracking.stage_run(f"test_{kind}", {}) as run:
        run.log_model(model_dir, kind, tags)
        return run.run_id


def cli(params: Path, *args: str) -> None:
    r = CliRunner().invoke(app, ["--offline", "-p", str(params), *args])
    assert r.exit_code == 0, r.output


def version_of(client, name: str, run_id: str):
    (v,) = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    return v


def test_generators_as_mlflow_models(store, tiny_gens, small_benchmark, tmp_path):
    import mlflow

    params = tiny_gens / "params.yaml"
    run = log("text2mask", tiny_gens / "t2m" / "model")
    run_m2i = log("mask2img", tiny_gens / "m2i" / "model")  # (the CLI's --offline below turns tracking off)
    v = version_of(store, "seggen-text2mask", run)
    assert v.tags["stage"] == "test_text2mask" and v.tags["digest"].startswith("sha256:")
    logged = mlflow.get_logged_model(store.get_run(run).data.tags["seggen.model_id"])
    assert logged.source_run_id == run
    model = mlflow.pyfunc.load_model(f"models:/seggen-text2mask/{v.version}")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["prompt"]
    out = model.predict(
        {"prompt": ["a car on a road"]},
        params={"num_images_per_prompt": 2, "num_inference_steps": 3, "guidance_scale": 2.0},
    )
    cli(params, "sample", "text2mask", "--prompt", "a car on a road", "--n", "2", "--out", str(tmp_path / "s"))
    for i in range(2):
        np.testing.assert_array_equal(
            out["colour_maps"][i], np.asarray(Image.open(tmp_path / "s" / f"mask_{i:04d}.png"))
        )
        np.testing.assert_array_equal(out["labels"][i], np.asarray(Image.open(tmp_path / "s" / f"label_{i:04d}.png")))

    v = version_of(store, "seggen-mask2img", run_m2i)
    model = mlflow.pyfunc.load_model(f"models:/seggen-mask2img/{v.version}")
    mask = next((small_benchmark / "annotations" / "training").glob("*.png"))
    from seggen.pipeline.mlflow_models import encode_png

    palette = np.asarray(
        json.loads((tiny_gens / "m2i" / "model" / "seggen_model.json").read_text())["palette"], np.uint8
    )
    out = model.predict(
        {"colour_map": [encode_png(palette[np.asarray(Image.open(mask))])], "prompt": ["a house"]},
        params={"num_images_per_prompt": 2, "num_inference_steps": 3},
    )
    cli(
        params,
        "sample",
        "mask2img",
        "--mask",
        str(mask),
        "--labels",
        "--prompt",
        "a house",
        "--n",
        "2",
        "--out",
        str(tmp_path / "m"),
    )
    for i in range(2):
        np.testing.assert_array_equal(out["images"][i], np.asarray(Image.open(tmp_path / "m" / f"image_{i:04d}.png")))


@pytest.fixture(scope="module")
def tiny_seg(small_benchmark, tmp_path_factory):
    from seggen.config import load_params
    from seggen.segmenter.train import train_segmenter

    tmp = tmp_path_factory.mktemp("seg_mlflow")
    p = load_params(seg_params(tmp, small_benchmark))
    return p, train_segmenter(p, progress=False)


def test_segmenter_pyfunc_registry_and_aliases(store, tiny_seg, small_benchmark, tmp_path):
    """pyfunc labels == `seggen evaluate`'s; the registry's aliases are set by digest."""
    import mlflow

    from seggen.pipeline import registry
    from seggen.segmenter.evaluate import evaluate

    p, model_dir = tiny_seg
    run = log("segmenter", model_dir, {"arm": "seggen", "seed": 0})
    v = version_of(store, "seggen-segmenter", run)
    assert v.tags["arm"] == "seggen" and v.tags["seed"] == "0"
    aliases = registry.set_aliases(store, {"seggen": model_dir}, {"seggen": 50.0}, "seggen")
    want = {"arm": "seggen", "version": v.version}
    assert aliases == {"champion": want, "baseline": want}
    assert store.get_model_version_by_alias("seggen-segmenter", "champion").version == v.version

    files = sorted((small_benchmark / "images" / "validation").glob("*"))
    evaluate(p, model_dir, "validation", tmp_path / "ev", task="semantic", progress=False)
    pred = tmp_path / "ev" / "predictions" / "semantic"
    ref = np.stack([np.asarray(Image.open(pred / f"{f.stem}.png")) for f in files])
    model = mlflow.pyfunc.load_model("models:/seggen-segmenter@champion")
    out = model.predict({"image": [f.read_bytes() for f in files]})
    np.testing.assert_array_equal(out["labels"], ref)
    # one small image alone (its deepest feature map would be 1x1 unpadded): labels at its own size
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(files[0]))[:20, :24]).save(buf, format="PNG")
    small = model.predict({"image": [buf.getvalue()]})["labels"]
    assert np.asarray(small).shape == (1, 20, 24)


@pytest.mark.slow  # starts `mlflow models serve` (its own process and uvicorn)
def test_serve_champion(store, tiny_seg, small_benchmark, tmp_path):
    """`mlflow models serve` of models:/seggen-segmenter@champion answers a real POST of a PNG with
    the label map `seggen evaluate` writes."""
    from conftest import free_port, wait_http
    from seggen.pipeline import registry
    from seggen.segmenter.evaluate import evaluate

    p, model_dir = tiny_seg
    log("segmenter", model_dir, {"arm": "seggen"})
    registry.set_aliases(store, {"seggen": model_dir}, {"seggen": 50.0}, None)
    files = sorted((small_benchmark / "images" / "validation").glob("*"))
    evaluate(p, model_dir, "validation", tmp_path / "ev", task="semantic", progress=False)
    ref = np.asarray(Image.open(tmp_path / "ev" / "predictions" / "semantic" / f"{files[0].stem}.png"))

    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server is `uvicorn` from the venv, as when it is active
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log_file = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/seggen-segmenter@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(files[0].read_bytes()).decode()]]}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        np.testing.assert_array_equal(np.asarray(answer["predictions"]["labels"], np.uint8), ref[None])
    finally:
        proc.terminate()
        proc.wait(30)
        log_file.close()


@pytest.mark.slow  # a 400-step training in its own process, polled while it runs
def test_training_metrics_are_live(store, small_benchmark, tmp_path):
    """While `seggen train_segmenter` runs, its MLflow run already holds loss, learning rate and
    throughput at steps 5, 10, ... (not one batch at the end), and system metrics."""
    from seggen.pipeline import tracking

    params = seg_params(tmp_path, small_benchmark, steps=400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "seggen.cli", "-p", str(params), "train_segmenter"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    try:
        exp = None
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            exp = exp or store.get_experiment_by_name(tracking.experiment_name())
            if exp is None:
                continue
            runs = store.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
            if not runs:
                continue
            history = store.get_metric_history(runs[0].info.run_id, "live/loss")
            if len(history) >= 2:
                seen = history
                break
        assert proc.poll() is None, "the training ended before any live metric was read"
        assert len(seen) >= 2 and all(h.step % 5 == 0 for h in seen)
        run = store.get_run(runs[0].info.run_id)
        assert {"live/lr", "live/steps_per_s", "live/samples_per_s"} <= set(run.data.metrics)
    finally:
        proc.kill()
        proc.wait(30)
    assert any(k.startswith("system/") for k in store.get_run(runs[0].info.run_id).data.metrics)
