"""The CI regression gate: it passes within the tolerance and fails, with a clear message and exit
status 1, on a planted regression (the segmenter's learning rate forced to zero)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from seggen.ci_check import compare
from seggen.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_compare_bands():
    base = {"mIoU": {"baseline": {"validation": 50.0}, "seggen": {"validation": 52.0}}}
    lines, bad = compare({"baseline": {"validation": 48.5}, "seggen": {"validation": 60.0}}, base, 2.0)
    assert bad == [] and "ok" in lines[0] and "raise the baseline" in lines[1]
    lines, bad = compare({"baseline": {"validation": 47.9}}, base, 2.0)
    assert bad[0].startswith("baseline/validation: mIoU 47.90 < baseline 50.00") and "no score" in bad[1]


def test_gate_fails_on_a_planted_regression(monkeypatch, tmp_path):
    import seggen.segmenter.train as train

    monkeypatch.setattr(train, "poly_lr", lambda *a, **k: 0.0)  # the planted bug: the segmenter never learns
    r = CliRunner().invoke(app, ["ci-check", "--baseline", str(REPO / "ci" / "baseline.json"),
                                 "--ci-params", str(REPO / "ci" / "params.yaml"), "--workdir", str(tmp_path / "run")])
    assert r.exit_code == 1, r.output[-3000:]
    assert "mIoU regression against" in r.output and "REGRESSION" in r.output
    baseline = json.loads((REPO / "ci" / "baseline.json").read_text())["mIoU"]["baseline"]["validation"]
    assert f"< baseline {baseline:.2f}" in r.output
