"""The path users with real data and weights take: exact ADE20K names, a pretrained checkpoint's own
objective, local directories for every model option, the pre-flight model check, COCO panoptic as a
data.format, the real-data profiles, and a tiny `dvc repro` on an ADE20K-layout root built from the
real samples. Real samples are read from SEGGEN_REAL_SAMPLES; models are tiny and random-init."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import (
    REPO,
    TINY_SEG_MODEL,
    make_project,
    merged,
    tiny_mask2former,
    tiny_params,
    tiny_pipeline_params,
    tiny_stable_diffusion,
)
from seggen.config import load_params
from seggen.errors import ConfigError

SEGGEN = [sys.executable, "-m", "seggen.cli"]


def seggen(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        SEGGEN + list(args), cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


# -- 1. ADE20K class names -------------------------------------------------------------------------


def test_a_checkpoint_with_hugging_face_ade20k_labels_loads(ade_root, tmp_path):
    """HF's ADE20K id2label ("bed " with a space, any case) is the dataset's list; a real difference is
    named by its first differing id."""
    from seggen.data.meta import ade20k_meta

    names = list(ade20k_meta().names)
    hf = [n if n != "bed" else "bed " for n in names]
    hf[44] = "Chest Of Drawers"
    ok = tiny_mask2former(tmp_path / "hf", hf)
    (tmp_path / "p.yaml").write_text("{}\n")
    r = seggen(
        tmp_path,
        "-p",
        "p.yaml",
        "evaluate",
        "--model",
        str(ok),
        "--root",
        str(ade_root),
        "--split",
        "validation",
        "--size",
        "64",
        "--out",
        "eval",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    wrong = names.copy()
    wrong[44] = "chest"  # what the old objectInfo150 parser produced
    bad = tiny_mask2former(tmp_path / "old", wrong)
    r = seggen(
        tmp_path,
        "-p",
        "p.yaml",
        "evaluate",
        "--model",
        str(bad),
        "--root",
        str(ade_root),
        "--split",
        "validation",
        "--size",
        "64",
        "--out",
        "eval2",
    )
    assert r.returncode == 2 and "class id 44 is 'chest' in the model but 'chest of drawers' in the dataset" in r.stderr


def test_captions_use_the_full_names():
    """Multi-word ADE20K classes reach captions whole ("a traffic light", not "a traffic")."""
    import numpy as np

    from seggen.data.captions import label_caption
    from seggen.data.meta import ade20k_meta

    meta = ade20k_meta()
    labels = np.full((64, 64), 3, np.uint8)  # sky
    labels[40:60, 5:15] = meta.names.index("traffic light") + 1
    labels[40:60, 45:60] = meta.names.index("coffee table") + 1
    caption, classes = label_caption(labels, meta)
    assert "a traffic light" in caption and "a coffee table" in caption and "traffic light" in classes


# -- 2. prediction_type follows a pretrained checkpoint ----------------------------------------------


@pytest.mark.parametrize("own", ["epsilon", "v_prediction"])
def test_prediction_type_follows_the_checkpoint(small_benchmark, tmp_path, own):
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.text2mask import train_text2mask

    sd = tiny_stable_diffusion(tmp_path / "sd", small_benchmark, own)
    extra = {
        "text2mask.pretrained": str(sd),
        "mask2img.pretrained": str(sd),
        "mask2img.controlnet": {"conditioning_embedding_out_channels": [8, 8]},
    }
    p = load_params(tiny_params(tmp_path, small_benchmark, steps=1, **extra))
    assert p.text2mask.prediction_type is None  # null: the checkpoint's
    for model in (train_text2mask(p, progress=False), train_mask2img(p, progress=False)):
        assert json.loads((model / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == own
    wrong = load_params(
        tiny_params(tmp_path, small_benchmark, steps=1, **extra, **{"mask2img.prediction_type": "sample"})
    )
    with pytest.raises(ConfigError, match=rf"mask2img\.prediction_type: sample, but .* was trained to predict {own}"):
        train_mask2img(wrong, progress=False)
    from seggen.pipeline.preflight import check_models

    problems = {r.key: pr for r, pr in check_models(wrong)}
    assert (
        problems["text2mask.pretrained"] is None
        and "mask2img.prediction_type: sample" in problems["mask2img.pretrained"]
    )


# -- 3. local directories wherever an id works -------------------------------------------------------


def test_segmenter_backbone_from_a_local_directory(tmp_path):
    """transformers 5's AutoBackbone asks the hub before the disk; a local Swin directory must load."""
    from transformers import SwinConfig, SwinModel

    from seggen.config import SegmenterParams
    from seggen.data.meta import ade20k_meta
    from seggen.segmenter.model import build_model

    swin = tmp_path / "swin"
    SwinModel(
        SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
    ).save_pretrained(swin)
    model = build_model(SegmenterParams(backbone=str(swin)), ade20k_meta())
    ref = SwinModel.from_pretrained(swin).state_dict()
    enc = {k.removeprefix("swin."): v for k, v in model.model.pixel_level_module.encoder.state_dict().items()}
    assert set(ref) <= set(enc) and all(torch.equal(ref[k], enc[k]) for k in ref)


def test_text_encoder_from_a_local_directory(small_benchmark, tmp_path):
    """text_encoder.pretrained: a local CLIP text model (a Stable Diffusion folder with subfolder text_encoder)."""
    from seggen.generators.text2mask import train_text2mask

    sd = tiny_stable_diffusion(tmp_path / "sd", small_benchmark)
    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=1,
            **{"text_encoder.pretrained": str(sd), "text_encoder.subfolder": "text_encoder"},
        )
    )
    model = train_text2mask(p, progress=False)
    from transformers import CLIPTextModel

    a, b = (
        CLIPTextModel.from_pretrained(sd / "text_encoder").state_dict(),
        CLIPTextModel.from_pretrained(model / "text_encoder").state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # used as it is, frozen


# -- 4. the pre-flight check -------------------------------------------------------------------------


def test_check_models_names_each_model_in_seconds(small_benchmark, tmp_path):
    sd = tiny_stable_diffusion(tmp_path / "sd", small_benchmark)
    m2f = tiny_mask2former(tmp_path / "m2f", [f"c{i}" for i in range(10)])
    broken = tmp_path / "broken"
    shutil.copytree(m2f, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    (tmp_path / "p.yaml").write_text(
        yaml.safe_dump(
            {
                "text2mask": {"pretrained": str(sd)},
                "mask2img": {"pretrained": str(tmp_path / "nowhere")},
                "segmenter": {"pretrained": str(m2f)},
                "arms": {
                    "baseline": {"strategy": "real"},
                    "other": {"strategy": "real", "pretrained": str(broken)},
                    "hub": {"strategy": "real", "pretrained": "facebook/mask2former-swin-tiny-ade-semantic"},
                },
            }
        )
    )
    t0 = time.perf_counter()
    r = seggen(
        tmp_path, "-p", "p.yaml", "check_models", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    )
    took = time.perf_counter() - t0
    assert r.returncode == 2 and took < 20, (took, r.stderr)
    assert f"text2mask.pretrained: {sd}: ok" in r.stdout and f"segmenter.pretrained: {m2f}: ok" in r.stdout
    err = r.stderr
    assert "mask2img.pretrained" in err and "no such directory" in err
    assert f"arms.other.pretrained: {weights}: truncated" in err
    assert (
        "arms.hub.pretrained: facebook/mask2former-swin-tiny-ade-semantic: http://127.0.0.1:9 cannot be reached" in err
    )
    assert err.rstrip().splitlines()[-1].startswith("error: 3 of 5 configured models cannot be loaded")
    r = seggen(tmp_path, "-p", "p.yaml", "check_models", env={"HF_HUB_OFFLINE": "1"})
    assert "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in r.stderr
    # a stage fails on its own models before computing anything
    r = seggen(tmp_path, "-p", "p.yaml", "--set", f"data.root={small_benchmark}", "train_mask2img")
    assert r.returncode == 2 and "mask2img.pretrained" in r.stderr and not (tmp_path / "models").exists()


def test_check_models_is_the_first_stage_of_the_pipeline():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert next(iter(stages)) == "check_models" and stages["check_models"]["always_changed"] is True
    assert "data/check_models.txt" in [d if isinstance(d, str) else next(iter(d)) for d in stages["prepare"]["deps"]]


# -- 5. profiles ------------------------------------------------------------------------------------


def test_real_data_profiles_are_deltas_that_validate(tmp_path):
    from seggen.config import profile_changes

    ade = load_params(REPO / "profiles" / "real-ade20k.yaml")
    assert ade.data.format == "ade20k" and list(ade.evaluate.splits) == ["validation"]
    assert (
        ade.segmenter.train.crop == 512
        and ade.synthesize.masksyn_per_source == 10
        and ade.synthesize.imgsyn_per_source == 50
    )
    assert (
        ade.text2mask.pretrained
        and ade.text2mask.prediction_type is None
        and ade.caption.model.startswith("Salesforce/blip2")
    )
    base = load_params(REPO / "params.yaml")
    assert ade.segmenter.p_aug == 0.6 != base.segmenter.p_aug  # the paper's, where the bundled default differs
    assert ade.seed == base.seed and ade.segmenter.train.weight_decay == base.segmenter.train.weight_decay  # inherited
    coco = load_params(REPO / "profiles" / "real-coco.yaml")
    assert coco.data.format == "coco" and coco.arm("seggen").segmenter.strategy == "pretrain_finetune"
    # `seggen params apply` writes the delta into a params.yaml, comments kept
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    r = seggen(tmp_path, "params", "apply", str(REPO / "profiles" / "real-ade20k.yaml"))
    assert r.returncode == 0, r.stderr
    assert load_params(tmp_path / "params.yaml").model_dump() == ade.model_dump()
    assert "# seggen parameters" in (tmp_path / "params.yaml").read_text()
    assert len(profile_changes(REPO / "profiles" / "real-ade20k.yaml")) > 20


def _estimate_row(tmp_path, row: str, **sections) -> tuple[str, str, float]:
    """The row of benchmarks/estimate_gpu_hours.py whose name starts with `row`, for the ADE20K profile with
    `sections` over it."""
    from benchmarks.estimate_gpu_hours import estimate

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"extends": str(REPO / "profiles" / "real-ade20k.yaml"), **sections}))
    return next(r for r in estimate(f)[0] if r[0].startswith(row))


def test_the_gpu_hours_estimate_counts_the_samples_augment_add_adds(tmp_path):
    def mask2former(**seg):
        return _estimate_row(tmp_path, "train Mask2Former", segmenter=seg)

    replace, add = mask2former(), mask2former(strategy="augment", augment_mode="add", p_aug=0.25)
    assert replace[1].endswith("x 16") and add[1].endswith("x 20")  # 16 real + round(0.25 x 16) synthetic
    assert add[2] == replace[2] * 20 / 16


def test_the_gpu_hours_estimate_counts_the_steps_imgsyn_strength_runs(tmp_path):
    def imgsyn(**syn):
        return _estimate_row(tmp_path, "synthesize ImgSyn", synthesize=syn)

    full, half = imgsyn(), imgsyn(imgsyn_strength=0.5)
    assert (
        "(strength" not in full[1]
        and f"x {int(load_params(REPO / 'profiles' / 'real-ade20k.yaml').synthesize.steps * 0.5)} " in half[1]
    )
    assert half[2] * 2 == pytest.approx(full[2], rel=1e-9)  # 15 of 30 steps


def test_a_split_the_params_use_but_the_dataset_lacks_fails_at_prepare(ade_root, tmp_path):
    (tmp_path / "p.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"format": "ade20k", "root": str(ade_root)},
                "prior": {"enabled": False},
                "caption": {"split": "validation"},
                "synthesize": {"split": "validation"},
                "segmenter": {"split": "validation"},
            }
        )
    )
    r = seggen(tmp_path, "-p", "p.yaml", "prepare")  # evaluate.splits keeps the benchmark's tuning splits
    assert (
        r.returncode == 2
        and "evaluate.splits[0]: split 'tuning' is not in" in r.stderr
        and "splits there: validation" in r.stderr
    )


# -- 6. COCO panoptic as a data.format -----------------------------------------------------------------


@pytest.mark.slow  # an end-to-end pipeline (make test-slow)
def test_coco_format_end_to_end_on_the_real_sample(real, tmp_path):
    """Captions with readable names, generators, MaskSyn/ImgSyn in the COCO layout (the source's own
    category ids), data check, a panoptic Mask2Former on real + synthetic, and evaluation (PQ, AP):
    on the real COCO val2017 sample as it is, with no conversion."""
    p = merged(yaml.safe_load((REPO / "params.yaml").read_text()), tiny_pipeline_params())
    p["data"] = {"format": "coco", "root": str(real / "coco")}
    p["prior"]["enabled"] = False  # no SD weights offline: Mask2Img from scratch (the corpus is the benchmark's)
    for k in ("caption", "synthesize", "segmenter"):
        p[k]["split"] = "val2017"
    p["synthesize"]["max_sources"] = None
    p["segmenter"]["task"] = "panoptic"
    p["evaluate"]["splits"] = ["val2017"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for cmd in (
        ["prepare"],
        ["caption"],
        ["train_text2mask"],
        ["train_mask2img"],
        ["synthesize", "--strategy", "masksyn"],
        ["synthesize", "--strategy", "imgsyn"],
        ["train_segmenter", "--arm", "seggen"],
        ["evaluate", "--arm", "seggen"],
    ):
        r = seggen(tmp_path, *cmd)
        assert r.returncode == 0, (cmd, r.stderr[-3000:])
    caps = [json.loads(x) for x in (tmp_path / "data" / "captions.jsonl").read_text().splitlines()]
    text = " ".join(c["caption"] for c in caps)
    assert "people" in text and "-merged" not in text and "-other" not in text
    cats = {c["id"] for c in json.loads((real / "coco/annotations/panoptic_val2017.json").read_text())["categories"]}
    for strategy in ("masksyn", "imgsyn"):
        d = tmp_path / "data" / "synthetic" / strategy
        pj = json.loads((d / "annotations" / "panoptic_val2017.json").read_text())
        assert {c["id"] for c in pj["categories"]} == cats and len(list((d / "val2017").iterdir())) == 2
        assert all(s["category_id"] in cats for a in pj["annotations"] for s in a["segments_info"])
        r = seggen(tmp_path, "check_data", "--root", str(d))
        assert r.returncode == 0 and "val2017: panoptic annotations: 2 ok" in r.stdout
    m = json.loads((tmp_path / "reports" / "eval" / "seggen" / "val2017" / "metrics.json").read_text())
    assert m["semantic"]["num_classes"] == 133 and m["panoptic"]["PQ"] is not None and "AP" in m["instance"]


# -- 7. a tiny pipeline on an ADE20K-layout root of real images ------------------------------------------


@pytest.mark.slow  # an end-to-end pipeline (make test-slow)
def test_dvc_repro_on_a_real_ade20k_layout(ade_root, tmp_path):
    params = merged(
        tiny_pipeline_params(),
        {
            "data": {"format": "ade20k", "root": "data/ADEChallengeData2016"},
            "prior": {"enabled": False},  # Mask2Img from scratch: the bundled corpus is the benchmark's
            "evaluate": {"splits": ["validation"], "size": 64},
            "segmenter": {"model": TINY_SEG_MODEL},
        },
    )
    del params["data"]["benchmark"]
    proj = make_project(tmp_path / "proj", params)
    root = proj / "data" / "ADEChallengeData2016"
    shutil.copytree(ade_root, root)
    shutil.copytree(root / "images" / "validation", root / "images" / "training")
    shutil.copytree(root / "annotations" / "validation", root / "annotations" / "training")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SEGGEN_TRACKING": "off",
    }
    r = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro"], cwd=proj, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for arm in ("baseline", "seggen"):
        s = json.loads((proj / "reports" / "eval" / arm / "validation" / "scores.json").read_text())
        assert 0 <= s["mIoU"] <= 100
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # the real dataset is never written
    assert "| seggen | validation |" in (proj / "reports" / "report.md").read_text()
