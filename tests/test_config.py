import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from seggen.config import Params, load_params, parse_overrides
from seggen.errors import ConfigError


def test_repo_params_yaml_is_valid():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.data.format == "benchmark"
    assert 64 <= p.data.benchmark.resolution <= 128


def test_missing_default_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params() == Params()


def test_missing_explicit_file_is_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("data:\n  benchmrk: {}\n", r"data\.benchmrk: unknown key"),
        ("sede: 1\n", r"sede: unknown key"),
        (
            "data:\n  benchmark:\n    resolution: 8\n",
            r"data\.benchmark\.resolution: .*greater than or equal to 32 \(got 8\)",
        ),
        ("data:\n  format: cityscapes\n", r"data\.format: .*'benchmark', 'ade20k' or 'coco'"),
        ("eval:\n  reduce_zero_label: maybe\n", r"eval\.reduce_zero_label: .*boolean"),
        ("seed: -1\n", r"seed: .*greater than or equal to 0"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("data: [\n", r"not valid YAML"),
    ],
)
def test_bad_params_name_the_key(tmp_path, yaml_text, message):
    f = tmp_path / "params.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as e:
        load_params(f)
    assert str(f) in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides():
    p = load_params(REPO / "params.yaml", parse_overrides(["data.benchmark.resolution=96", "mask2img.base=finetune"]))
    assert p.data.benchmark.resolution == 96 and p.mask2img.base == "finetune"
    # a section given only some keys keeps the rest of its tuned default, not the class's generic one
    p = load_params(REPO / "params.yaml", parse_overrides(["prior.unet.pooled_text=true"]))
    assert p.prior.unet.pooled_text is True
    assert p.prior.unet.block_out_channels == Params().prior.unet.block_out_channels
    # the pipeline's label PNGs are 0 = ignored: without the reduction every class would be scored against its neighbour
    with pytest.raises(ConfigError, match=r"^--set eval\.reduce_zero_label: must be true"):
        load_params(REPO / "params.yaml", parse_overrides(["eval.reduce_zero_label=false"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["resolution"])
    with pytest.raises(ConfigError, match=r"data\.benchmark\.resolutoin: unknown key"):
        load_params(REPO / "params.yaml", parse_overrides(["data.benchmark.resolutoin=96"]))


def test_cli_reports_bad_params_in_one_line(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("data:\n  benchmark:\n    num_train: zero\n")
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(f), "prepare"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.benchmark.num_train" in lines[0] and lines[0].startswith("error: ")
    assert not (tmp_path / "data").exists()  # nothing written


def test_bench_profile_is_valid_and_complete():
    """ablation/params.yaml: (4 groups + 2 variants + 2 targeted rounds) x 3 seeds x 2 regimes; the low
    regime's arms train on its subset; a variant's arms train like `both` on the variant's synthetic data."""
    p = load_params(REPO / "ablation" / "params.yaml")
    assert set(p.regimes) == {"full", "low"}
    low = p.regime("low").synthesize
    assert low.real_subset and str(low.out) == f"{p.synthesize.out}/low"
    groups: dict[str, set] = {}
    for arm in p.arms:
        group, seed = arm.rsplit("-s", 1)
        groups.setdefault(group, set()).add(p.arm(arm).segmenter.seed)
        seg = p.arm(arm).segmenter
        if group.startswith("low-"):
            assert seg.real_subset == low.real_subset
        else:
            assert seg.real_subset is None
    assert groups == {
        f"{r}-{a}": {0, 1, 2}
        for r in ("full", "low")
        for a in ("baseline", "imgsyn", "masksyn", "both", "noprior", "leak", "targeted", "targeted-r2")
    }
    leak, both = p.arm("full-leak-s1").segmenter, p.arm("full-both-s1").segmenter
    assert (
        str(leak.synthetic_root) == f"{p.synthesize.out}-leak/full"
        and str(both.synthetic_root) == f"{p.synthesize.out}/full"
    )
    assert (leak.strategy, leak.synthetic, leak.seed) == (both.strategy, both.synthetic, 1)
    assert p.variant("leak").prior.corpus.include_unseen and not p.variant("noprior").prior.enabled
    # the data and captions are the main pipeline's (ablation/dvc.yaml depends on them)
    main = load_params(REPO / "params.yaml")
    assert p.data == main.data and p.caption == main.caption


def test_one_name_picks_any_run():
    """`--arm NAME` picks an arm, a variant, a regime or REGIME-VARIANT; the arms of the ablation train
    under its own arms_root, the pipeline's under models/segmenter."""
    p = load_params(REPO / "ablation" / "params.yaml")
    assert str(p.pick("full-both-s0").segmenter.out) == "models/ablation/segmenter/full-both-s0"
    assert str(load_params(REPO / "params.yaml").pick("seggen").segmenter.out) == "models/segmenter/seggen"
    leak = p.pick("leak")
    assert leak.prior.corpus.include_unseen and str(leak.prior.out) == f"{p.prior.out}-leak"
    assert str(p.pick("low").synthesize.out) == f"{p.synthesize.out}/low"
    low_leak = p.pick("low-leak")
    assert str(low_leak.synthesize.out) == f"{p.synthesize.out}-leak/low" and low_leak.prior.corpus.include_unseen
    assert low_leak.synthesize.real_subset == p.pick("low").synthesize.real_subset == 10
    with pytest.raises(ConfigError, match=r"--arm nope: no such arm, variant or regime \(have: .*low-leak"):
        p.pick("nope")
    # names that two kinds share would make `--arm` ambiguous: refused, naming the key
    with pytest.raises(ConfigError, match="regimes.leak: also a name of variants"):
        load_params(REPO / "ablation" / "params.yaml", {"regimes.leak": {}})


def test_targeted_arms_train_on_their_regimes_planned_data():
    """ablation.targeted: each regime's plan scores REGIME-baseline-s0 into plan_synthesis.out/REGIME;
    REGIME-targeted synthesizes the regime's sources (its real subset) by that plan into
    synthesize.out-targeted/REGIME, filtered by the reference; REGIME-targeted-sSEED trains like `both` on it."""
    p = load_params(REPO / "ablation" / "params.yaml")
    low, planned = p.pick("low"), p.pick("low-targeted")
    assert low.plan_synthesis.reference == "low-baseline-s0" and low.plan_synthesis.reference in p.arms
    assert str(low.plan_synthesis.out) == f"{p.plan_synthesis.out}/low"
    syn = planned.synthesize
    assert (
        str(syn.plan) == f"{p.plan_synthesis.out}/low/plan.json" and str(syn.out) == f"{p.synthesize.out}-targeted/low"
    )
    assert syn.real_subset == low.synthesize.real_subset == 10 and syn.filter.pixel and syn.filter.scorer == "plan"
    assert (
        syn.model_copy(update={"plan": None, "out": low.synthesize.out, "filter": low.synthesize.filter})
        == low.synthesize
    )
    arm, both = p.arm("low-targeted-s2").segmenter, p.arm("low-both-s2").segmenter
    assert str(arm.synthetic_root) == str(syn.out) and arm.real_subset == 10
    assert (arm.strategy, arm.synthetic, arm.seed) == (both.strategy, both.synthetic, 2)


def test_round_two_plans_from_round_ones_arm_and_trains_on_both_rounds():
    """ablation.targeted.round2: REGIME-targeted-r2 scores round 1's arm of the first seed against round
    1's plan, into plan_synthesis.out/REGIME-r2; its data goes to synthesize.out-targeted/REGIME-r2,
    filtered by that arm; REGIME-targeted-r2-sSEED trains on both rounds' data."""
    p = load_params(REPO / "ablation" / "params.yaml")
    assert p.ablation.targeted.round2 == ["full", "low"]
    one, two = p.pick("low-targeted"), p.pick("low-targeted-r2")
    plan = two.plan_synthesis
    assert plan.reference == "low-targeted-s0" and plan.reference in p.arms and plan.round == 2
    assert str(plan.previous) == f"{p.plan_synthesis.out}/low/plan.json" == str(one.synthesize.plan)
    assert str(plan.out) == f"{p.plan_synthesis.out}/low-r2" and str(two.synthesize.plan) == f"{plan.out}/plan.json"
    assert str(two.synthesize.out) == f"{p.synthesize.out}-targeted/low-r2"
    assert two.synthesize.model_copy(update={"plan": one.synthesize.plan, "out": one.synthesize.out}) == one.synthesize
    arm = p.arm("low-targeted-r2-s1").segmenter
    assert arm.synthetic_roots == [one.synthesize.out, two.synthesize.out] and arm.seed == 1 and arm.real_subset == 10
    assert p.arm("low-targeted-s1").segmenter.synthetic_roots == [one.synthesize.out]
    # without round2, no second round: its names are not there
    q = load_params(REPO / "ablation" / "params.yaml", {"ablation.targeted.round2": []})
    assert not any("-r2" in a for a in q.arms)
    with pytest.raises(ConfigError, match="no such arm"):
        q.pick("low-targeted-r2")
    # the first round's plan has no round before it; a later one must name it
    with pytest.raises(ConfigError, match="plan_synthesis.previous"):
        load_params(REPO / "params.yaml", {"plan_synthesis.round": 2})


@pytest.mark.parametrize(
    "over, message",
    [
        ({"ablation.targeted.regimes": ["mid"]}, r"ablation\.targeted\.regimes: 'mid' is not a regime"),
        ({"ablation.targeted.group": "nope"}, r"ablation\.targeted\.group: 'nope' is not a group"),
        ({"ablation.targeted.reference": "baseline-s9"}, r"ablation\.targeted\.reference: 'baseline-s9' is not"),
        ({"ablation.targeted.round2": ["mid"]}, r"ablation\.targeted\.round2: \['mid'\] must list regimes"),
        (
            {"ablation.targeted.regimes": [], "ablation.targeted.round2": ["low"]},
            r"ablation\.targeted\.round2: \['low'\] must list regimes",
        ),
        ({"ablation.groups.targeted": {}}, r"ablation\.groups\.targeted: the name of the targeted arms"),
        ({"ablation.targeted.synthesize": {"filter.marginn": 1}}, r"ablation\.targeted\.synthesize.*marginn"),
        ({"ablation.targeted.segmenter": {"seed": 3}}, r"ablation\.targeted\.segmenter: a mapping of segmenter keys"),
        ({"ablation.targeted.segmenter": {"paste_real": "all"}}, r"full-targeted-s0.*paste_real"),
    ],
)
def test_bad_targeted_arms_name_the_key(over, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_params(REPO / "ablation" / "params.yaml", over)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"regimes": {"low": {"real_subsett": 5}}}, r"regimes\.low\.real_subsett: unknown key"),
        ({"regimes": {"low": {"out": "x"}}}, r"regimes\.low\.out: a regime's datasets go to synthesize\.out/low"),
        ({"regimes": {"Low": {}}}, r"regimes\.Low: regime names"),
        (
            {
                "regimes": {"low": {"real_subset": 50}},
                "arms": {"a": {"strategy": "augment", "real_subset": 40, "synthetic_root": "data/synthetic/low"}},
            },
            r"arms\.a\.real_subset: 40 but its synthetic data \(data/synthetic/low\) is regime low's, made from "
            r"real_subset 50",
        ),
        ({"arms": {"a": {"seed": -1}}}, r"arms\.a\.seed: .*greater than or equal to 0"),
    ],
)
def test_bad_regimes_and_arms_name_the_key(over, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_params(REPO / "params.yaml", over)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "value, message",
    [
        (["a", "a"], "the same path twice"),
        (["a", ["b"]], "a path or a non-empty list of paths"),
        ([], "a path or a non-empty list of paths"),
        (["a", "x$y"], r"item 1: a path of letters"),
        (3, "a path or a list of paths, not int"),
    ],
)
def test_synthetic_roots_are_one_path_or_a_list_of_different_ones(value, message):
    assert load_params(REPO / "params.yaml", {"segmenter.synthetic_root": ["a", "b"]}).segmenter.synthetic_roots == [
        Path("a"),
        Path("b"),
    ]
    with pytest.raises(ConfigError, match=rf"^--set segmenter\.synthetic_root: {message}"):
        load_params(REPO / "params.yaml", {"segmenter.synthetic_root": value})
