"""Two processes train as one. `SECTION.train.num_processes: 2` runs a training stage under `accelerate
launch` (two CPU processes over gloo here, one per GPU on a GPU machine): each process takes half of
the global batch, so the run gives one MLflow run, one output directory and the loss curve of one
process at the same global batch. The generators' curves agree to float reordering only (gradients
averaged over two processes, not over one batch): within rtol 1e-3 over the tiny runs' steps.
Mask2Former's loss also samples its mask points at random, per process (transformers' loss), so its
curve agrees within rtol 5e-2; that its processes read exactly the one-process batch is
tests/test_segmenter.py's. Killed and run again, a 2-process run resumes and ends where an
uninterrupted one does. From `dvc repro` and a Prefect run (which runs `dvc repro`), the params
alone ask for two processes: tests/test_pipeline.py's Prefect deployment run trains one arm so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import TINY_SEG_MODEL, TINY_UNET, tiny_params

pytestmark = pytest.mark.slow  # four stages x (1 and 2 processes): make test-slow

SECTION = {"text2mask": "text2mask", "prior": "prior", "mask2img": "mask2img", "segmenter": "segmenter"}
OUT = {"text2mask": "t2m", "prior": "prior", "mask2img": "m2i", "segmenter": "seg"}


def project(tmp: Path, data_root: Path, stage: str) -> Path:
    """A tiny params file for `stage` in tmp (the prior's corpus rendered first)."""
    extra: dict = {}
    if stage == "prior":
        extra["prior"] = {
            "enabled": True,
            "out": str(tmp / "prior"),
            "resolution": 16,
            "unet": {**TINY_UNET, "pooled_text": True},
            "corpus": {"out": str(tmp / "corpus"), "num_images": 24, "resolution": 16, "max_things": 3},
            "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "threads": 1, "warmup_steps": 1},
        }
    if stage == "segmenter":
        extra["segmenter"] = {
            "out": str(tmp / "seg"),
            "model": TINY_SEG_MODEL,
            "train": {"steps": 6, "batch_size": 4, "crop": 32, "checkpoint_every": 2, "threads": 1},
        }
    params = tiny_params(tmp, data_root, steps=6, **extra)
    if stage == "prior":
        from seggen.config import load_params
        from seggen.data.corpus import prepare_corpus

        prepare_corpus(load_params(params), progress=False)
    return params


def launch(params: Path, stage: str, n: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seggen.cli", "--params", str(params)]
    cmd += ["--set", f"{SECTION[stage]}.train.num_processes={n}", f"train_{stage}"]
    # its own process group: a kill reaches the launcher and every process it started
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-4000:]
    return out + err


def curve(out: Path) -> np.ndarray:
    return np.array([r["loss"] for r in json.loads((out / "train_log.json").read_text())["loss"]])


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {f.relative_to(model_dir).as_posix(): load_file(f) for f in sorted(model_dir.rglob("*.safetensors"))}


@pytest.mark.parametrize("stage", ["text2mask", "prior", "mask2img", "segmenter"])
def test_two_processes_train_as_one(stage, small_benchmark, tmp_path, mlflow_server):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    off = {**os.environ, "SEGGEN_TRACKING": "off"}
    finished(launch(project(one, small_benchmark, stage), stage, 1, off))

    tracked = {k: v for k, v in os.environ.items() if k != "SEGGEN_TRACKING"}
    tracked.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME=f"two-processes-{stage}")
    text = finished(launch(project(two, small_benchmark, stage), stage, 2, tracked))
    assert text.count("model written to") == 1  # said once, by the main process

    # one MLflow run of the stage, finished, with the whole curve
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(f"two-processes-{stage}")
    runs = client.search_runs([exp.experiment_id], f"tags.`seggen.stage` = 'train_{stage}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 6

    # one output directory, as one process writes it
    a, b = one / OUT[stage], two / OUT[stage]
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    # the same global batch: the loss curve of one process
    np.testing.assert_allclose(curve(b), curve(a), rtol=5e-2 if stage == "segmenter" else 1e-3)
    wa, wb = weights(a / "model"), weights(b / "model")
    assert wa.keys() == wb.keys()
    if stage != "segmenter":
        for f in wa:
            for k in wa[f]:
                np.testing.assert_allclose(wb[f][k].float().numpy(), wa[f][k].float().numpy(), rtol=1e-2, atol=1e-4)


def test_a_killed_two_process_run_resumes_where_it_stopped(small_benchmark, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    off = {**os.environ, "SEGGEN_TRACKING": "off"}
    keys = {"text2mask.train.steps": 60, "text2mask.train.checkpoint_every": 5}
    finished(launch(tiny_params(ref_dir, small_benchmark, **keys), "text2mask", 2, off))
    params = tiny_params(run_dir, small_benchmark, **keys)
    proc = launch(params, "text2mask", 2, {**off, "PYTHONUNBUFFERED": "1"})
    ckpt = run_dir / "t2m" / "checkpoints" / "step_0000010"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists() and proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", str(params)], check=False)  # any process that left the group
    proc.communicate()
    time.sleep(1)
    assert not (run_dir / "t2m" / "model").exists()
    text = finished(launch(params, "text2mask", 2, off))
    assert "resuming text2mask" in text
    np.testing.assert_array_equal(curve(run_dir / "t2m"), curve(ref_dir / "t2m"))
    wa, wb = weights(ref_dir / "t2m" / "model"), weights(run_dir / "t2m" / "model")
    for f in wa:
        for k in wa[f]:
            np.testing.assert_array_equal(wb[f][k].numpy(), wa[f][k].numpy())


def test_a_global_batch_that_does_not_divide_is_refused(small_benchmark, tmp_path):
    params = tiny_params(tmp_path, small_benchmark, **{"text2mask.train.batch_size": 3})
    r = launch(params, "text2mask", 2, {**os.environ, "SEGGEN_TRACKING": "off"})
    _, err = r.communicate(timeout=300)
    assert r.returncode == 2 and err.strip().splitlines() == [
        "error: text2mask.train.batch_size: 3 does not divide over 2 processes (it is the global batch: each "
        "process takes batch_size / processes)"
    ]
    assert not (tmp_path / "t2m" / "model").exists()
    yaml.safe_load(params.read_text())  # the user's params file untouched and readable
