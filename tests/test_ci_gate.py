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
    """A pull request whose segmenter never learns (its learning rate forced to zero in
    seggen/segmenter/train.py) fails `seggen ci-check`, run as CI runs it: from the project -- here a
    copy with the changed file -- on ci/params.yaml, whose baseline arm's line is the one read. The
    scratch project starts as the unchanged code left it: .ci/run's own gate run (SEGGEN_CI_WORKDIR),
    else a run of this test's, which must pass. DVC then re-runs what the change touches: the
    segmenters, their evaluations and what reads them, not the generators."""
    run = tmp_path / "run"
    given = os.environ.get("SEGGEN_CI_WORKDIR")
    if given and (Path(given) / "dvc.lock").is_file():
        shutil.copytree(given, run, symlinks=True)
    else:
        r = subprocess.run(
            [sys.executable, "-m", "seggen.cli", "ci-check", "--workdir", str(run)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    pr = tmp_path / "pr"
    shutil.copytree(REPO / "seggen", pr / "seggen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "ci", pr / "ci")
    for f in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(REPO / f, pr / f)
    train = pr / "seggen" / "segmenter" / "train.py"
    text = train.read_text()
    assert "def poly_lr(" in text
    train.write_text(text.replace("def poly_lr(", "def poly_lr(*a, **k):\n    return 0.0\n\n\ndef _real_poly_lr(", 1))
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "ci-check", "--workdir", str(run)],
        cwd=pr,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(pr)},  # the pull request's package, as its checkout would import it
    )
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "mIoU regression against" in r.stderr and "REGRESSION" in r.stderr
    baseline = json.loads((REPO / "ci" / "baseline.json").read_text())["mIoU"]["baseline"]["validation"]
    assert f"< baseline {baseline:.2f}" in r.stderr
    reran = {line.split("Running stage ")[1].strip(" ':") for line in r.stderr.splitlines() if "Running stage" in line}
    assert {"train_segmenter@baseline", "train_segmenter@seggen"} <= reran
    assert not reran & {"prepare", "train_text2mask", "train_mask2img"}, reran
