"""plan_synthesis: the reference segmenter scored on a tuning split, its weak classes weighted up."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import REPO
from seggen.config import load_params
from seggen.data.captions import caption_dataset
from seggen.errors import DataError
from seggen.synthesis.targeting import class_weights, source_weights


def test_weaker_classes_weigh_more_and_the_weights_average_one():
    iou = {"sky": 99.0, "road": 80.0, "car": 40.0, "boat": 5.0, "cow": None}
    w = class_weights(iou, sharpness=1.0, floor=0.05)
    assert w["sky"] < w["road"] < w["car"] < w["boat"] and w["cow"] == 1.0  # not shown: nothing known
    assert np.isclose(np.mean([w[c] for c in ("sky", "road", "car", "boat")]), 1.0)
    assert np.isclose(w["sky"] / w["boat"], 0.05 / 0.95)  # the floor, not 1 - 0.99
    sharp = class_weights(iou, sharpness=2.0, floor=0.05)
    assert sharp["boat"] / sharp["car"] > w["boat"] / w["car"]
    src = source_weights({"a": ["sky"], "b": ["boat", "car"], "c": []}, w)
    assert src["b"] > src["c"] > src["a"] and np.isclose(np.mean(list(src.values())), 1.0)


def test_the_plan_never_reads_a_reported_split(tmp_path):
    for split in ("validation", "validation_shift"):
        r = subprocess.run(
            [sys.executable, "-m", "seggen.cli", "--set", f"plan_synthesis.split={split}", "plan_synthesis"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 2 and "plan_synthesis.split" in r.stderr and "tuning" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_the_plan_scores_the_reference_arm_on_the_tuning_split(small_benchmark, tmp_path):
    from helpers import TINY_SEG_MODEL
    from seggen.pipeline import stages
    from seggen.segmenter.evaluate import evaluate
    from seggen.segmenter.train import train_segmenter

    caption_dataset(small_benchmark, "training", tmp_path / "captions.jsonl", progress=False)
    doc = {
        "data": {"root": str(small_benchmark)},
        "caption": {"out": str(tmp_path / "captions.jsonl")},
        "arms_root": str(tmp_path / "arms"),
        "segmenter": {
            "out": str(tmp_path / "arms" / "baseline"),
            "model": TINY_SEG_MODEL,
            "train": {"steps": 4, "batch_size": 4, "crop": 32, "threads": 1},
        },
        "plan_synthesis": {"out": str(tmp_path / "plan")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    p = load_params(tmp_path / "params.yaml")
    train_segmenter(p, progress=False)
    plan = stages.plan_synthesis(p)
    assert plan["split"] == "tuning" and plan["reference"] == "baseline" and plan["num_images"] == 4
    # the same per-class IoU as `seggen evaluate` on that split
    metrics = evaluate(p, tmp_path / "arms" / "baseline" / "model", "tuning", tmp_path / "eval", progress=False)
    assert plan["per_class_iou"] == metrics["semantic"]["per_class_iou"]
    assert plan["mIoU"] == metrics["semantic"]["mIoU"]
    shown = [c for c, v in plan["per_class_iou"].items() if v is not None]
    order = sorted(shown, key=lambda c: plan["per_class_iou"][c])
    assert plan["class_weights"][order[0]] >= plan["class_weights"][order[-1]]
    assert all(v is None or v >= 0 for v in plan["class_loss"].values())
    assert set(plan["source_weights"]) == set(json.loads(line)["id"] for line in open(tmp_path / "captions.jsonl"))
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 0
    assert json.loads((tmp_path / "plan" / "plan.json").read_text()) == plan
    # the same params, the same plan
    again = stages.plan_synthesis(p)
    assert again == plan

    # a later round goes on only if its reference beat the round before's: here the same segmenter, so it
    # ends the loop; against a weaker one, it goes on
    weaker = {**plan, "mIoU": plan["mIoU"] - 1.0, "reference": "older"}
    (tmp_path / "weaker.json").write_text(json.dumps(weaker))
    for previous, stopped in (("plan/plan.json", "did not raise tuning mIoU"), ("weaker.json", None)):
        over = {"round": 2, "previous": str(tmp_path / previous), "out": str(tmp_path / "plan2")}
        later = stages.plan_synthesis(p.model_copy(update={"plan_synthesis": p.plan_synthesis.model_copy(update=over)}))
        assert (
            later["round"] == 2 and later["previous"]["mIoU"] == json.loads((tmp_path / previous).read_text())["mIoU"]
        )
        assert (stopped in later["stopped"]) if stopped else later["stopped"] is None
        assert later["class_weights"] == plan["class_weights"]

    # drawability: the reference also scored on pairs drawn without a plan. The real training split stands
    # in for them twice: as is, and with the labels of the class the reference gets most right there erased
    # (it still predicts that class, so its IoU on that copy is 0, which says nothing of a drawing: None)
    from seggen.data.images import load_label_png
    from seggen.io import write_png
    from seggen.synthesis.targeting import drawability, drawn_weights, score

    model = tmp_path / "arms" / "baseline" / "model"
    as_is = score(p, model, "training", False)["per_class_iou"]
    name = max((c for c in as_is if as_is[c] is not None), key=lambda c: as_is[c])
    stand_in = tmp_path / "drawn"
    shutil.copytree(small_benchmark, stand_in)
    for f in sorted((stand_in / "annotations" / "training").glob("*.png")):
        y = load_label_png(f)
        write_png(f, np.where(y == 1 + list(as_is).index(name), 0, y).astype(np.uint8))
    erased = score(p, model, "training", False, stand_in)["per_class_iou"]
    assert as_is[name] > 0 and erased[name] == 0.0
    sets = [str(small_benchmark), str(stand_in)]
    over = {"drawability": sets, "out": str(tmp_path / "plan_drawn"), "min_drawability": 0.0}
    drawn = stages.plan_synthesis(p.model_copy(update={"plan_synthesis": p.plan_synthesis.model_copy(update=over)}))
    assert drawn["drawability"]["iou_drawn"] == dict(zip(sets, [as_is, {**erased, name: None}]))
    d = drawability(plan["per_class_iou"], [as_is, {**erased, name: None}], 0.0, 5.0)
    assert drawn["drawability"]["per_class"] == d and d[name] == min(1.0, as_is[name] / plan["per_class_iou"][name])
    assert drawn["undrawable"] == [c for c in d if d[c] == 0] and name not in drawn["undrawable"]
    assert drawn["class_weights"] == drawn_weights(plan["class_weights"], d)
    assert drawn["per_class_iou"] == plan["per_class_iou"] and drawn["mIoU"] == plan["mIoU"]
    bad = {"drawability": [str(tmp_path / "nosuch")], "out": str(tmp_path / "plan_bad")}
    with pytest.raises(DataError, match="nosuch: no dataset with split 'training'"):
        stages.plan_synthesis(p.model_copy(update={"plan_synthesis": p.plan_synthesis.model_copy(update=bad)}))
    assert not (tmp_path / "plan_bad").exists()


def test_data_without_the_planning_split_gets_an_even_plan_that_says_why(small_benchmark, tmp_path):
    from seggen.synthesis.targeting import plan_synthesis

    caption_dataset(small_benchmark, "training", tmp_path / "captions.jsonl", progress=False)
    model = tmp_path / "arms" / "baseline" / "model"
    model.mkdir(parents=True)
    names = ["sky", "road", "car"]
    (model / "config.json").write_text(
        json.dumps({"model_type": "mask2former", "id2label": {str(i): n for i, n in enumerate(names)}})
    )
    doc = {
        "data": {"root": str(small_benchmark)},
        "caption": {"out": str(tmp_path / "captions.jsonl")},
        "arms_root": str(tmp_path / "arms"),
        "plan_synthesis": {"out": str(tmp_path / "plan"), "split": "heldout"},  # as real ADE20K: no such split
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    plan = plan_synthesis(load_params(tmp_path / "params.yaml"), progress=False)
    assert "has no split 'heldout'" in plan["skipped"] and plan["mIoU"] is None
    assert plan["class_weights"] == dict.fromkeys(names, 1.0) and set(plan["source_weights"].values()) == {1.0}
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 0


@pytest.mark.parametrize("missing", ["arm", "model"])
def test_a_missing_reference_is_one_error(missing, small_benchmark, tmp_path):
    doc = {"data": {"root": str(small_benchmark)}, "arms_root": str(tmp_path / "arms")}
    if missing == "arm":
        doc["plan_synthesis"] = {"reference": "nosuch"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(tmp_path / "params.yaml"), "plan_synthesis"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("is not an arm" if missing == "arm" else "train the reference arm first") in r.stderr
    assert not (tmp_path / "data" / "plan").exists()


def _ablation_edges(stage: str) -> set[tuple[str, str]]:
    """The edges (upstream, downstream) of `dvc dag` for an ablation/dvc.yaml stage, names without the file."""
    import re
    from pathlib import Path

    from helpers import REPO

    dvc = str(Path(sys.executable).parent / "dvc")
    r = subprocess.run(
        [dvc, "dag", "--dot", f"ablation/dvc.yaml:{stage}"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return {
        (a.removeprefix("ablation/dvc.yaml:"), b.removeprefix("ablation/dvc.yaml:"))
        for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', r.stdout)
    }


def test_the_ablation_plans_after_its_reference_and_trains_targeted_arms_after_the_plan():
    """ablation/dvc.yaml's targeted arms: REGIME-baseline-s0 -> plan_synthesis@REGIME -> synthesize_targeted
    (filtered by that reference too) -> train_segmenter_targeted, and no blind arm waits on a plan."""
    edges = _ablation_edges("train_segmenter_targeted@low-targeted-0")
    for s in ("masksyn", "imgsyn"):
        assert ("plan_synthesis@low", f"synthesize_targeted@low-{s}") in edges
        assert ("train_segmenter@low-baseline-0", f"synthesize_targeted@low-{s}") in edges
        assert (f"synthesize_targeted@low-{s}", "train_segmenter_targeted@low-targeted-0") in edges
    assert ("train_segmenter@low-baseline-0", "plan_synthesis@low") in edges
    assert not any(b.startswith("train_segmenter@") and "plan" in a for a, b in edges)
    # ablation.targeted.drawability: every round's plan also scores the regime's blind sets, which DVC runs first
    params = load_params(REPO / "ablation" / "params.yaml")
    assert params.ablation.targeted.drawability
    for name in ("low", "low-targeted", "low-targeted-r2"):
        blind = [Path(params.synthesize.out) / "low" / s for s in ("masksyn", "imgsyn")]
        assert params.pick(name).plan_synthesis.drawability == blind
    for s in ("masksyn", "imgsyn"):
        assert (f"synthesize@low-{s}", "plan_synthesis@low") in edges


def test_round_two_plans_after_round_one_and_trains_on_both_rounds():
    """ablation/dvc.yaml's second round: round 1's plan and its first-seed arm -> plan_synthesis_r2 ->
    synthesize_targeted_r2 (filtered by that arm) -> train_segmenter_targeted_r2, which also reads round 1's data."""
    edges = _ablation_edges("train_segmenter_targeted_r2@low-targeted-r2-1")
    assert {
        ("synthesize@low-masksyn", "plan_synthesis_r2@low"),
        ("synthesize@low-imgsyn", "plan_synthesis_r2@low"),
    } <= edges
    assert {
        ("plan_synthesis@low", "plan_synthesis_r2@low"),
        ("train_segmenter_targeted@low-targeted-0", "plan_synthesis_r2@low"),
    } <= edges
    for s in ("masksyn", "imgsyn"):
        assert ("plan_synthesis_r2@low", f"synthesize_targeted_r2@low-{s}") in edges
        assert ("train_segmenter_targeted@low-targeted-0", f"synthesize_targeted_r2@low-{s}") in edges
        for rnd in ("synthesize_targeted", "synthesize_targeted_r2"):
            assert (f"{rnd}@low-{s}", "train_segmenter_targeted_r2@low-targeted-r2-1") in edges


def test_a_loop_goes_on_only_after_a_round_that_helped():
    from seggen.synthesis.targeting import stop_reason

    assert stop_reason({"mIoU": 40.0, "round": 1}, 41.5, 2, "tuning") is None
    assert stop_reason({"mIoU": 40.0}, 40.0, 2, "tuning") == "round 1 did not raise tuning mIoU (40.00 -> 40.00)"
    assert "no tuning mIoU" in stop_reason({"mIoU": None}, 40.0, 2, "tuning")
    assert stop_reason({"mIoU": 40.0, "round": 2, "stopped": "x"}, 50.0, 3, "tuning") == "the loop ended before round 2"


def test_the_filter_table_counts_samples_and_pixels_and_is_absent_without_a_filter():
    from seggen.reporting.targeted import _filter_table

    assert _filter_table(["boat"], {}) == []  # no dataset a filter ran on
    counts = {"boat": {"samples_kept": 3, "samples_dropped": 1, "pixels_kept": 30, "pixels_dropped": 10}}
    lines = _filter_table(["boat", "car"], {"masksyn": counts})
    assert lines[2] == "| class | masksyn samples | masksyn pixels dropped |"
    assert lines[4:] == ["| boat | 3 / 1 | 25 % |", "| car | 0 / 0 | n/a |", ""]


def test_drawability_is_the_synthetic_over_real_iou_ratio_and_scales_the_weights():
    from seggen.synthesis.targeting import drawability, drawn_weights

    real = {"sky": 90.0, "car": 20.0, "boat": 1.0, "gone": None, "cow": 50.0, "road": 80.0}
    synth = [
        {"sky": 99.0, "car": 2.0, "boat": 1.0, "gone": None, "cow": None, "road": 8.0},
        {"sky": 81.0, "car": 6.0, "boat": 0.0, "gone": 3.0, "cow": None, "road": None},
    ]
    d = drawability(real, synth, 0.0, 5.0)
    # capped at 1; a set that does not show the class says nothing (road: 8 / 80); the reference cannot judge boat
    assert d == {
        "sky": 1.0,
        "car": pytest.approx(0.2),
        "boat": 0.0,
        "gone": 0.0,
        "cow": 0.0,
        "road": pytest.approx(0.1),
    }
    least = drawability(real, synth, 0.15, 5.0)
    assert least["car"] == pytest.approx(0.2) and least["road"] == 0.0
    w = {"sky": 0.2, "car": 1.0, "boat": 2.0, "gone": 1.0, "cow": 1.0, "road": 0.8}
    dw = drawn_weights(w, least)
    assert np.isclose(sum(dw.values()), sum(w.values())) and dw["boat"] == dw["road"] == 0.0
    assert np.isclose(dw["car"] / dw["sky"], (1.0 * 0.2) / (0.2 * 1.0))
    assert drawn_weights({"a": 1.0}, {"a": 0.0}) == {"a": 0.0}  # nothing drawable: nothing to spend on
    assert drawability({"a": 0.0}, [{"a": 3.0}], 0.0, 0.0) == {"a": 0.0}  # no real IoU to divide by


def test_the_plans_pixel_filter_ignores_every_pixel_of_an_undrawable_class():
    import torch

    from seggen.synthesis.filters import QualityFilter

    y = torch.tensor([[0, 1, 2], [2, 3, 3]])
    loss = torch.tensor([[9.0, 0.1, 0.1], [5.0, 0.1, 0.1]])
    f = QualityFilter(None, [1.0, 1.0, 1.0], None, False, 0.0, True, 2.0)
    assert f._bad(loss, y).tolist() == [[False, False, False], [True, False, False]]  # loss > 2 x 1 only
    f.undrawable = (3,)
    assert f._bad(loss, y).tolist() == [[False, False, False], [True, True, True]]  # never label 0


def _loop_project(root: Path, rounds: dict) -> Path:
    """The repo's dvc.yaml and params.yaml with these loop rounds, a DVC project of their own."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["loop"]["rounds"] = rounds
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    Repo.init(str(root), no_scm=True)
    return root


def test_the_loop_is_rounds_of_stages_each_planned_after_the_arm_before(tmp_path):
    """loop.rounds: each round its own plan (scoring the arm it plans after; after a round, that round's
    plan is the one to beat), datasets spent by it, and arm, trained like loop.arm on every round's data
    so far; DVC runs them in that order, and so do the Prefect flows."""
    import re

    from flows.pipeline import stage_names
    from seggen.errors import ConfigError

    rounds = {"r1": {"after": "baseline"}, "r2": {"after": "r1"}}
    root = _loop_project(tmp_path / "proj", rounds)
    p = load_params(root / "params.yaml")
    r1, r2 = p.pick("r1"), p.pick("r2")
    assert (r1.plan_synthesis.reference, r1.plan_synthesis.round, r1.plan_synthesis.previous) == ("baseline", 1, None)
    assert (r2.plan_synthesis.reference, r2.plan_synthesis.round) == ("r1", 2)
    assert r2.plan_synthesis.previous == Path("data/loop/r1/plan/plan.json")
    assert r2.plan_synthesis.out == Path("data/loop/r2/plan") and r2.synthesize.out == Path("data/loop/r2")
    assert r2.synthesize.plan == Path("data/loop/r2/plan/plan.json")
    assert r2.segmenter.synthetic_roots == [Path("data/loop/r1"), Path("data/loop/r2")]
    assert r1.segmenter.synthetic_roots == [Path("data/loop/r1")] and r2.segmenter.out == Path("models/segmenter/r2")
    seggen = p.arm("seggen").segmenter
    assert (r2.segmenter.strategy, r2.segmenter.synthetic) == (seggen.strategy, seggen.synthetic)
    # the rounds' synthesis: the pipeline's, with loop.synthesize's keys
    over = load_params(root / "params.yaml", {"loop.synthesize": {"filter.pixel": True, "filter.scorer": "plan"}})
    assert over.pick("r1").synthesize.filter.scorer == "plan" and over.synthesize.filter.scorer != "plan"

    # the params survive a dump (the Prefect form holds them so); the form neither shows nor edits the rounds' arms
    from flows.pipeline import form_changes, form_defaults
    from seggen.config import Params

    assert Params.model_validate(p.model_dump(mode="json")).arms == p.arms
    shown = form_defaults(root, "params.yaml")
    assert not set(rounds) & set(shown["arms"]) and form_changes(Params.model_validate(shown), p) == {}
    # a variant (other generators) runs no loop of its own
    varied = load_params(root / "params.yaml", {"variants": {"v1": {"synthesize.steps": 10}}})
    assert varied.variant("v1").loop.rounds == {} and set(rounds) <= set(varied.arms)

    dvc = str(Path(sys.executable).parent / "dvc")
    r = subprocess.run([dvc, "dag", "--dot", "report"], cwd=root, capture_output=True, text=True, check=True)
    edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', r.stdout))
    assert ("train_segmenter@baseline", "plan_round@r1") in edges
    for s in ("masksyn", "imgsyn"):
        assert ("plan_round@r1", f"synthesize_round@r1-{s}") in edges
        assert (f"synthesize_round@r1-{s}", "train_round@r1") in edges
        assert (f"synthesize_round@r2-{s}", "train_round@r2") in edges
    assert ("train_round@r1", "plan_round@r2") in edges and ("train_round@r2", "evaluate_round@r2-tuning") in edges
    assert ("evaluate_round@r2-validation_shift", "report") in edges
    # DVC lists every plan_round before any train_round; a flow runs the stages in the graph's order
    names = stage_names(root, None)
    assert all(names.index(a) < names.index(b) for a, b in edges)
    assert names.index("train_round@r1") < names.index("plan_round@r2") < names.index("train_round@r2")
    assert names[-1] == "report" and len(names) == 22 + 2 + 4 + 2 + 2 * 4
    plain = stage_names(_loop_project(tmp_path / "plain", {}), None)
    assert len(plain) == 22 and not any("_round" in n for n in plain)

    for bad, msg in (
        ({"r1": {"after": "nope"}}, r"loop.rounds.r1.after: 'nope' is neither an arm nor a round"),
        ({"seggen": {"after": "baseline"}}, r"loop.rounds.seggen: also an arm of `arms`"),
        ({"r1": {"after": "r2"}, "r2": {"after": "r1"}}, r"loop.rounds.r1: its `after` chain comes back to it"),
        ({"r1": "baseline"}, r"loop.rounds.r1: expected \{after: ARM\}"),
    ):
        with pytest.raises(ConfigError, match=msg):
            load_params(root / "params.yaml", {"loop.rounds": bad})
    with pytest.raises(ConfigError, match="loop.arm: arm 'baseline' trains on real data only"):
        load_params(root / "params.yaml", {"loop.arm": "baseline"})
    with pytest.raises(ConfigError, match="loop.arm: arm 'plain' trains on real data only"):  # segmenter's strategy
        load_params(root / "params.yaml", {"arms.plain": {"seed": 3}, "loop.arm": "plain"})
    with pytest.raises(ConfigError, match="loop.synthesize.out: a round's plan and datasets go to loop.out/r1"):
        load_params(root / "params.yaml", {"loop.synthesize": {"out": "elsewhere"}})
    # the ablation (which extends params.yaml) runs its own loop, ablation.targeted: no round arms there
    ablation = load_params(REPO / "ablation" / "params.yaml", {"loop.rounds": rounds})
    assert not set(rounds) & set(ablation.arms)


def test_without_a_tuning_split_the_plan_scores_the_fold_its_reference_did_not_train_on(small_benchmark, tmp_path):
    """plan_synthesis.split holdout (real ADE20K / COCO): the reference arm trains without a seeded fold
    of the training split, and the plan scores it on exactly that fold."""
    from helpers import TINY_SEG_MODEL
    from seggen.config.experiments import arm
    from seggen.data.layout import open_split
    from seggen.errors import ConfigError
    from seggen.segmenter.data import holdout_fold
    from seggen.segmenter.train import Mixture, train_segmenter
    from seggen.synthesis.targeting import plan_synthesis, score

    caption_dataset(small_benchmark, "training", tmp_path / "captions.jsonl", progress=False)
    doc = {
        "data": {"root": str(small_benchmark)},
        "caption": {"out": str(tmp_path / "captions.jsonl")},
        "arms_root": str(tmp_path / "arms"),
        "arms": {"reference": {"strategy": "real", "holdout": 0.25}, "baseline": {"strategy": "real"}},
        "segmenter": {"model": TINY_SEG_MODEL, "train": {"steps": 4, "batch_size": 4, "crop": 32, "threads": 1}},
        "plan_synthesis": {"out": str(tmp_path / "plan"), "split": "holdout", "reference": "reference"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    p = load_params(tmp_path / "params.yaml")
    ids = open_split(small_benchmark, "training").ids
    fold = holdout_fold(p.seed, len(ids), 0.25)
    assert len(fold) == round(0.25 * len(ids)) and np.array_equal(fold, holdout_fold(p.seed, len(ids), 0.25))
    ref = arm(p, "reference")
    mix = Mixture(ref)
    assert set(mix.real_idx.tolist()) == set(range(len(ids))) - set(fold.tolist())
    assert len(Mixture(arm(p, "baseline")).real_idx) == len(ids)
    train_segmenter(ref, progress=False)
    plan = plan_synthesis(p, progress=False)
    assert plan["skipped"] is None and plan["split"] == "holdout" and plan["num_images"] == len(fold)
    assert plan["holdout"] == {"split": "training", "share": 0.25, "ids": [ids[i] for i in fold]}
    model = tmp_path / "arms" / "reference" / "model"
    assert plan["per_class_iou"] == score(p, model, "training", False, only=fold.tolist())["per_class_iou"]

    # a reference that saw every image cannot be scored on them: one error naming the key
    (tmp_path / "arms" / "baseline").mkdir(parents=True)
    shutil.copytree(model, tmp_path / "arms" / "baseline" / "model")
    over = {"reference": "baseline", "out": str(tmp_path / "plan_b")}
    with pytest.raises(DataError, match="'baseline' on training images it did not see"):
        plan_synthesis(p.model_copy(update={"plan_synthesis": p.plan_synthesis.model_copy(update=over)}), False)
    assert not (tmp_path / "plan_b").exists()
    # nor a model trained without another fold than the params say (its seggen_segmenter.json records it)
    meta = json.loads((model / "seggen_segmenter.json").read_text())
    assert meta["holdout"] == {"seed": p.seed, "share": 0.25, "images": len(fold)}
    other = load_params(tmp_path / "params.yaml", {"arms.reference.holdout": 0.5, "plan_synthesis.out": "plan_c"})
    with pytest.raises(DataError, match="trained with held-out fold"):
        plan_synthesis(other, False)
    # a later round's reference trained on pairs drawn from the fold: holdout plans round 1 only
    with pytest.raises(ConfigError, match="round 1 only"):
        load_params(tmp_path / "params.yaml", {"plan_synthesis.round": 2, "plan_synthesis.previous": "plan.json"})
    # and a fold is for real-only arms: synthetic pairs drawn from it would train on it
    with pytest.raises(ConfigError, match="segmenter.holdout"):
        arm(load_params(tmp_path / "params.yaml", {"arms.reference.strategy": "augment"}), "reference")
