"""The CI regression gate: it passes within the tolerance and fails, with a clear message and exit
status 1, on a planted regression (the segmenter's learning rate forced to zero)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seggen.pipeline.ci_check import compare

REPO = Path(__file__).resolve().parents[1]


def test_compare_bands():
    base = {"mIoU": {"baseline": {"validation": 50.0}, "seggen": {"validation": 52.0}}}
    lines, bad = compare({"baseline": {"validation": 48.5}, "seggen": {"validation": 60.0}}, base, 2.0)
    assert bad == [] and "ok" in lines[0] and "raise the baseline" in lines[1]
    lines, bad = compare({"baseline": {"validation": 47.9}}, base, 2.0)
    assert bad[0].startswith("baseline/validation: mIoU 47.90 < baseline 50.00") and "no score" in bad[1]


def test_scores_on_other_data_do_not_compare(tmp_path):
    """The registry's reference records what data it was scored on: the benchmark's fingerprint (its
    domains included), or a real dataset's root. Other data, even under the same split names, is refused."""
    from seggen.config import BenchmarkParams, load_params
    from seggen.data.benchmark import fingerprint
    from seggen.pipeline.ci_check import data_fingerprint
    from seggen.reporting.scores import gate_scores

    def params_at(tmp: Path, name: str):
        (tmp / f"{name}.yaml").write_text(f"data: {{root: {tmp / name / 'data'}}}\n")
        return load_params(tmp / f"{name}.yaml")

    a, b = params_at(tmp_path, "a"), params_at(tmp_path, "b")
    for root, seed in ((a, 1), (b, 2)):
        bp = BenchmarkParams(domains={"seed": seed})
        meta = {"generator": {"fingerprint": fingerprint(bp, 0)}}
        Path(root.data.root).mkdir(parents=True)
        (Path(root.data.root) / "seggen_meta.json").write_text(json.dumps(meta))
    assert data_fingerprint(a).startswith("benchmark:") and data_fingerprint(a) != data_fingerprint(b)
    assert data_fingerprint(params_at(tmp_path, "none")).startswith("root:")  # no benchmark there
    sc = {"mIoU": 20.0, "mIoU_domain_mean": 25.0}
    assert gate_scores(sc, "validation_shift") == {"validation_shift": 20.0, "validation_shift.domain_mean": 25.0}


@pytest.mark.slow
def test_gate_fails_on_a_planted_regression(tmp_path):
    """`seggen ci-check` runs dvc.yaml's pipeline through `dvc repro`; a copy of the package whose
    segmenter never learns (learning rate forced to zero), first on PYTHONPATH, must fail the gate. The
    baseline arm (real data only) trains exactly as ci/params.yaml says, so its line is the one read;
    the generators, which only the seggen arm uses, take 4 steps here to save CI time."""
    cheap = tmp_path / "ci-params.yaml"
    gen = {"train": {"steps": 4, "warmup_steps": 2}}
    cheap.write_text(
        json.dumps(
            {
                "extends": str(REPO / "ci" / "params.yaml"),
                "text2mask": gen,
                "mask2img": gen,
                "prior": {**gen, "corpus": {"num_images": 24}},
                "synthesize": {"max_sources": 8},
            }
        )
    )
    planted = tmp_path / "planted"
    shutil.copytree(REPO / "seggen", planted / "seggen", ignore=shutil.ignore_patterns("__pycache__"))
    train = planted / "seggen" / "segmenter" / "train.py"
    text = train.read_text()
    assert "def poly_lr(" in text
    train.write_text(text.replace("def poly_lr(", "def poly_lr(*a, **k):\n    return 0.0\n\n\ndef _real_poly_lr(", 1))
    env = {**os.environ, "PYTHONPATH": str(planted)}
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "ci-check", "--ci-params", str(cheap), "--workdir", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "mIoU regression against" in r.stderr and "REGRESSION" in r.stderr
    baseline = json.loads((REPO / "ci" / "baseline.json").read_text())["mIoU"]["baseline"]["validation"]
    assert f"< baseline {baseline:.2f}" in r.stderr
