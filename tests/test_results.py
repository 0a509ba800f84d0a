"""The results page's numbers over seeds: each group's mean ± std (the sample std, n - 1) and its Δ
against the regime's reference group, counted beyond noise only past 2σ of the difference. The tiny
ablation of tests/test_bench.py runs one seed per arm; the aggregation over several is here."""

from __future__ import annotations

import statistics
from pathlib import Path

from seggen.config import load_params
from seggen.reporting.results import _delta_cell, _pm, group

REPO = Path(__file__).resolve().parents[1]


def test_seeds_aggregate_to_mean_std_and_a_delta_beyond_noise():
    p = load_params(REPO / "ablation" / "params.yaml")
    seeds = p.ablation.seeds
    assert len(seeds) >= 3
    # low-both beats low-baseline by 5 with a spread of 0.5: beyond noise; full-both by 0.2: within it
    value = {("low", "baseline"): 40.0, ("low", "both"): 45.0, ("full", "baseline"): 50.0, ("full", "both"): 50.2}
    scores = {}
    for arm in p.arms:
        regime, grp, seed = arm.split("-")[0], arm.split("-")[1], int(arm.rsplit("-s", 1)[1])
        base = value.get((regime, grp), 30.0) + 0.5 * seed
        scores[arm] = {s: {"mIoU": base + (k * 0.1), "PQ": None} for k, s in enumerate(p.evaluate.splits)}
    groups = group(p, scores)
    low, ref = groups["low-both"], groups["low-baseline"]
    assert low.seeds == list(seeds) and low.regime == "low"
    vals = [45.0 + 0.5 * s for s in seeds]
    assert _pm(low, "validation") == f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}"
    assert _pm(low, "validation", "PQ") == "–"  # a metric no seed has
    two_sigma = 2 * (2 * statistics.stdev(vals) ** 2) ** 0.5
    assert _delta_cell(low, groups, "baseline", "validation") == f"+5.0 (2σ {two_sigma:.1f}) ✓"
    assert _delta_cell(groups["full-both"], groups, "baseline", "validation") == f"+0.2 (2σ {two_sigma:.1f})"
    assert _delta_cell(ref, groups, "baseline", "validation") == ""  # the reference against itself
    # one seed: its value, std 0
    one = load_params(REPO / "ablation" / "params.yaml", {"ablation.seeds": [0]})
    g = group(one, {a: {s: {"mIoU": 12.34} for s in one.evaluate.splits} for a in one.arms})["low-both"]
    assert _pm(g, "validation_shift") == "12.3 ± 0.0"
