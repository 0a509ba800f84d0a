"""The ablation (ablation/dvc.yaml + ablation/params.yaml) on a tiny project: `dvc repro ablation/dvc.yaml`
runs the main pipeline's data stages and generators, then per-regime synthesis, every arm x seed, both
evaluation splits and docs/results.md (built from the evaluations' files; tracked to a real `mlflow
server`)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from test_pipeline import _env, dvc, ran

from helpers import REPO, make_project

pytestmark = pytest.mark.slow  # the whole pipeline through dvc repro, MLflow and Prefect: make test-slow

# the tiny ablation: the low-data regime (its own real subset and synthetic data), 2 groups, the leak
# variant's arms and the targeted arms of both rounds, one seed each. The full regime runs the same
# stages on other paths (their names and paths: test_config.py, test_targeting.py), and more seeds only
# more arms (the page's mean ± std over seeds: test_results.py); both are left out here for CI time.
ABLATION = {
    "groups": {"baseline": {"strategy": "real"}, "both": {"strategy": "augment", "synthetic": ["masksyn", "imgsyn"]}},
    "seeds": [0],
    "targeted": {
        "regimes": ["low"],
        "reference": "baseline-s0",
        "group": "both",
        "synthesize": {"filter.pixel": True, "filter.scorer": "plan"},
        "round2": ["low"],
    },
}


def test_bench_repro_builds_the_results_page(tmp_path, mlflow_server):
    root = make_project(tmp_path / "proj")
    (root / "ablation").mkdir()
    shutil.copy(REPO / "ablation" / "dvc.yaml", root / "ablation" / "dvc.yaml")
    (root / "ablation" / "tuning.md").write_text("## Tuning log\n\ntry 1: nothing yet\n")
    # the repo's bench delta (bench-only paths, regimes, ablation) on the tiny project's params.yaml
    bench = yaml.safe_load((REPO / "ablation" / "params.yaml").read_text())
    bench["regimes"] = {"low": {"real_subset": 8, "max_sources": None, "imgsyn_per_source": 2}}
    bench["ablation"] = ABLATION
    bench["segmenter"] = {}
    bench["variants"] = {"leak": bench["variants"]["leak"]}  # one variant: its corpus, prior, Mask2Img, arms
    (root / "ablation" / "params.yaml").write_text(yaml.safe_dump(bench, sort_keys=False))
    # its own experiment: test_pipeline.py reads the shared server's `seggen` experiment
    env = {**_env(mlflow_server), "MLFLOW_EXPERIMENT_NAME": "seggen-ablation-test"}
    r = dvc(root, "repro", "ablation/dvc.yaml", env=env)
    stages = ran(r)
    # the main pipeline's data stages and generators first (none of its segmenters), then the ablation's own
    assert stages[:3] == ["check_models", "prepare", "caption"] and "train_segmenter@baseline" not in stages
    assert {"train_text2mask", "train_mask2img"} <= set(stages)
    for s in (
        "synthesize@low-imgsyn",
        "train_segmenter@low-both-0",
        "evaluate@low-baseline-0",
        "prepare_corpus_variant@leak",
        "train_prior_variant@leak",
        "synthesize_variant@leak-low-imgsyn",
        "train_segmenter_variant@low-leak-0",
        "evaluate_variant@low-leak-0",
        "plan_synthesis@low",
        "synthesize_targeted@low-imgsyn",
        "train_segmenter_targeted@low-targeted-0",
        "evaluate_targeted@low-targeted-0",
        "plan_synthesis_r2@low",
        "synthesize_targeted_r2@low-imgsyn",
        "train_segmenter_targeted_r2@low-targeted-r2-0",
        "evaluate_targeted_r2@low-targeted-r2-0",
        "report",
    ):
        assert f"ablation/dvc.yaml:{s}" in stages
    assert not any("@full" in s for s in stages)

    # the low regime's synthetic data come from its 8 real images only
    low = [
        json.loads(line)
        for line in (root / "data/ablation/synthetic/low/imgsyn/manifest.jsonl").read_text().splitlines()
    ]
    assert len({row["source_id"] for row in low}) == 8 and len(low) == 16
    info = json.loads((root / "models/ablation/segmenter/low-both-s0/model/seggen_segmenter.json").read_text())
    assert info["real_images"] == 8
    # its targeted data: the same budget over the same 8 sources, spent by the plan of low-baseline-s0 on
    # the tuning split, each row saying why, the pixels filtered by that segmenter
    plan = json.loads((root / "data/ablation/plan/low/plan.json").read_text())
    assert plan["reference"] == "low-baseline-s0" and plan["split"] == "tuning"
    targeted = [
        json.loads(line)
        for line in (root / "data/ablation/synthetic-targeted/low/imgsyn/manifest.jsonl").read_text().splitlines()
    ]
    assert len(targeted) == 16 and {row["source_id"] for row in targeted} <= {row["source_id"] for row in low}
    for row in targeted:
        assert row["plan"]["source_weight"] == plan["source_weights"][row["source_id"]]
        assert row["scores"]["ignored_fraction"] is not None

    # round 2: round 1's first-seed arm scored against round 1's plan; a second budget if it did better on
    # tuning, else an empty one, and the round-2 arm then trains on round 1's data alone: the same weights
    plan2 = json.loads((root / "data/ablation/plan/low-r2/plan.json").read_text())
    assert plan2["reference"] == "low-targeted-s0" and plan2["round"] == 2
    assert plan2["previous"]["mIoU"] == plan["mIoU"] and (plan2["mIoU"] <= plan["mIoU"]) == bool(plan2["stopped"])
    rows2 = (root / "data/ablation/synthetic-targeted/low-r2/imgsyn/manifest.jsonl").read_text().splitlines()
    assert len(rows2) == (0 if plan2["stopped"] else 16)
    assert all(json.loads(line)["plan"]["round"] == 2 for line in rows2)
    info2 = json.loads((root / "models/ablation/segmenter/low-targeted-r2-s0/model/seggen_segmenter.json").read_text())
    assert sorted(info2["synthetic_fingerprints"]) == sorted(
        f"data/ablation/synthetic-targeted/{r}/{k}" for r in ("low", "low-r2") for k in ("imgsyn", "masksyn")
    )
    if plan2["stopped"]:
        same = [
            (root / f"models/ablation/segmenter/{a}/model/model.safetensors").read_bytes()
            for a in ("low-targeted-s0", "low-targeted-r2-s0")
        ]
        assert same[0] == same[1]

    # the page: each group's value (one seed: std 0), equal to what the evaluations wrote (the shifted
    # split: the mean over its unseen domains), and its Δ against the regime's baseline
    page = (root / "docs" / "results.md").read_text()

    def score(arm: str, split: str, key: str) -> float:
        return json.loads((root / "reports/ablation/eval" / arm / split / "scores.json").read_text())[key]

    for group in ("low-baseline", "low-both", "low-leak", "low-targeted", "low-targeted-r2"):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{group}` | 1 |"))
        cells = [c.strip() for c in row.split("|")]
        assert cells[3] == f"{score(f'{group}-s0', 'validation', 'mIoU'):.1f} ± 0.0", row
        assert cells[5] == f"{score(f'{group}-s0', 'validation_shift', 'mIoU_domain_mean'):.1f} ± 0.0", row
        if not group.endswith("baseline"):
            d = score(f"{group}-s0", "validation", "mIoU") - score("low-baseline-s0", "validation", "mIoU")
            assert cells[4].startswith(f"{d:+.1f}"), row
    assert "try 1: nothing yet" in page  # the tuning log is inlined
    # the targeted arms' plan and its weakest classes on tuning, each on the reported splits per arm
    weakest = sorted((v, c) for c, v in plan["per_class_iou"].items() if v is not None)[:3]
    assert "### Regime `low`" in page and "Plan: `low-baseline-s0` on `tuning`" in page
    for v, c in weakest:
        row = next(line for line in page.splitlines() if line.startswith(f"| {c} | {v:.1f} |"))
        assert len(row.split("|")) == 2 + 3 + 4 * 2, row  # class, tuning IoU, share, 4 arms x 2 splits
    assert f"Round 2: `low-targeted-s0` scored {plan2['mIoU']:.1f} mIoU on the planning split" in page
    # what each round's generation cost, from the datasets' compute records
    cost = re.search(
        r"Generation wall time \(.*?\): blind ([\d.]+) min, `low-targeted` ([\d.]+) min, "
        r"`low-targeted-r2` ([\d.]+) min",
        page,
    )
    assert cost and float(cost[1]) > 0 and float(cost[2]) > 0 and (float(cost[3]) == 0) == bool(plan2["stopped"]), cost
    assert ("the loop ended: round 1 did not raise" in page) == bool(plan2["stopped"])
    # and what the reference's pixel filter kept of them, per strategy, from the targeted datasets' summaries
    table = page.split("What the filter kept of these classes")[1].split("\n\n")[1].splitlines()
    for _, c in weakest:
        n = {
            k: json.loads((root / f"data/ablation/synthetic-targeted/low/{k}/summary.json").read_text())[
                "filter_per_class"
            ].get(c)
            for k in ("masksyn", "imgsyn")
        }
        cells = [x.strip() for x in next(line for line in table if line.startswith(f"| {c} |")).split("|")[2:-1]]
        for k, (samples, dropped) in zip(n, (cells[0:2], cells[2:4])):
            if n[k] is None:
                assert (samples, dropped) == ("0 / 0", "n/a")
            else:
                assert samples == f"{n[k]['samples_kept']} / {n[k]['samples_dropped']}"
                share = 100 * n[k]["pixels_dropped"] / (n[k]["pixels_kept"] + n[k]["pixels_dropped"])
                assert dropped == f"{share:.0f} %"
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    # the chart, the regime's 2 synthetic grids, 2 (baseline or both) groups x 2 splits of predictions,
    # the prior's corpus preview, one mask in the styles, synthetic next to real shifted images; the
    # targeted section's plan of each round and every class per arm on each reported split
    assert "img/results/miou.png" in pictures and len(pictures) == 1 + 2 + 4 + 3 + 2 + 2
    assert {"img/results/corpus.png", "img/results/styles.png", "img/results/synthetic_vs_shifted.png"} <= set(pictures)
    assert {
        "img/results/plan-low-targeted.png",
        "img/results/plan-low-targeted-r2.png",
        "img/results/classes-low-validation.png",
        "img/results/classes-low-validation_shift.png",
    } <= set(pictures)
    assert ("(the loop ended: nothing was generated from it)" in page) == bool(plan2["stopped"])
    for p in pictures:
        assert (root / "docs" / p).stat().st_size > 1000, p
    assert ran(dvc(root, "repro", "ablation/dvc.yaml", env=env)) == ["check_models"]
