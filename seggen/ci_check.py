"""`seggen ci-check`: the regression gate. A small fixed-seed pipeline (ci/params.yaml) runs end to
end through the stage functions; each arm's mIoU on each split must stay within `tolerance` of the
committed ci/baseline.json. Scores above the band pass with a note to raise the baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from seggen.config import load_params
from seggen.errors import ConfigError, SeggenError, not_found
from seggen.io import write_json

DEFAULT_TOLERANCE = 3.0  # mIoU points: float differences between CPUs move a 200-step run by ~1


class Regression(SeggenError):
    pass


@contextmanager
def _inside(directory: Path):
    old = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


def run_small_pipeline(params_path: Path, workdir: Path) -> dict[str, dict[str, float]]:
    """Every stage, in order, in `workdir`; returns {arm: {split: mIoU}}. No MLflow tracking."""
    from seggen import stages, tracking

    params_path = params_path.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get(tracking.TRACKING_ENV)
    os.environ[tracking.TRACKING_ENV] = "off"
    try:
        with _inside(workdir):
            p = load_params(params_path)
            stages.prepare(p)
            stages.caption(p)
            stages.train_generator(p, "text2mask")
            stages.train_generator(p, "mask2img")
            for strategy in ("masksyn", "imgsyn"):
                stages.synthesize(p, strategy)
            scores: dict[str, dict[str, float]] = {}
            for arm in p.arms:
                stages.train_segmenter(p, arm)
                for split in p.evaluate.splits:
                    scores.setdefault(arm, {})[split] = round(stages.evaluate(p, split, arm)["semantic"]["mIoU"], 2)
    finally:
        if saved is None:
            os.environ.pop(tracking.TRACKING_ENV, None)
        else:
            os.environ[tracking.TRACKING_ENV] = saved
    return scores


def compare(scores: dict, baseline: dict, tolerance: float) -> tuple[list[str], list[str]]:
    """(lines of the report, regressions)."""
    lines, bad = [], []
    for arm, splits in baseline["mIoU"].items():
        for split, ref in splits.items():
            got = scores.get(arm, {}).get(split)
            if got is None:
                bad.append(f"{arm}/{split}: no score (arm or split missing from the run)")
                continue
            verdict = "ok"
            if got < ref - tolerance:
                verdict = "REGRESSION"
                bad.append(f"{arm}/{split}: mIoU {got:.2f} < baseline {ref:.2f} - tolerance {tolerance:g}")
            elif got > ref + tolerance:
                verdict = "better (raise the baseline: seggen ci-check --update)"
            lines.append(f"{arm:>10} {split:<18} mIoU {got:6.2f}  baseline {ref:6.2f}  {got - ref:+6.2f}  {verdict}")
    return lines, bad


def ci_check(baseline_path: Path, params_path: Path, tolerance: float | None = None, update: bool = False,
             workdir: Path | None = None) -> str:
    if not params_path.exists():
        raise ConfigError(not_found(params_path, "file", "CI params"))
    t0 = time.perf_counter()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="seggen-ci-") as tmp:
            scores = run_small_pipeline(params_path, Path(tmp))
    else:
        scores = run_small_pipeline(params_path, workdir)
    seconds = time.perf_counter() - t0
    if update:
        old = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
        tol = tolerance if tolerance is not None else old.get("tolerance", DEFAULT_TOLERANCE)
        write_json(baseline_path, {"params": str(params_path), "tolerance": tol, "mIoU": scores,
                                   "note": "written by `seggen ci-check --update`; commit it with the change that moved the scores"})
        return f"{baseline_path}: baseline updated ({seconds:.0f} s): " + json.dumps(scores)
    if not baseline_path.exists():
        raise ConfigError(f"{baseline_path}: no baseline; create it with `seggen ci-check --update` and commit it")
    try:
        baseline = json.loads(baseline_path.read_text())
        baseline["mIoU"]
    except (ValueError, KeyError):
        raise ConfigError(f"{baseline_path}: not a ci-check baseline (expected JSON with an mIoU table)") from None
    tol = tolerance if tolerance is not None else float(baseline.get("tolerance", DEFAULT_TOLERANCE))
    lines, bad = compare(scores, baseline, tol)
    text = "\n".join(lines) + f"\n({seconds:.0f} s, tolerance {tol:g} mIoU)"
    if bad:
        raise Regression("mIoU regression against " + str(baseline_path) + ": " + "; ".join(bad) + "\n" + text)
    return text
