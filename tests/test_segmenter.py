"""Mask2Former: strategies from the CLI, resume after a kill, evaluation keys and pictures, a pretrained
checkpoint directory on the real ADE20K samples, detectron2 dataset dicts, bad input.

A tiny Swin Mask2Former (32 px crops, a few steps) keeps each training to seconds; accuracy is
measured by the benchmarks on the default config, not here.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import TINY_SEG_MODEL
from seggen.config import load_params
from seggen.errors import DataError

TINY_SEG = {
    "model": TINY_SEG_MODEL,
    "train": {"steps": 6, "batch_size": 4, "crop": 32, "checkpoint_every": 2, "threads": 1},
    "pretrain_steps": 3,
}


def seg_params(tmp: Path, data_root: Path, synthetic: Path | None = None, **seg) -> Path:
    doc = {
        "data": {"root": str(data_root)},
        "segmenter": {**TINY_SEG, "out": str(tmp / "seg"), "synthetic_root": str(synthetic or tmp / "none"), **seg},
    }
    for k in ("model", "train"):
        doc["segmenter"][k] = {**TINY_SEG[k], **seg.get(k, {})}
    f = tmp / "params.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


def cli(params: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), *args], capture_output=True, text=True
    )


@pytest.mark.parametrize("strategy", ["real", "augment", "pretrain_finetune", "concat"])
def test_every_strategy_trains_from_the_cli(strategy, small_benchmark, tiny_synthetic, tmp_path):
    params = seg_params(tmp_path, small_benchmark, tiny_synthetic)
    r = cli(params, "train_segmenter", "--strategy", strategy)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "seg" / "model" / "seggen_segmenter.json").read_text())
    assert info["strategy"] == strategy and info["train"]["steps"] == (9 if strategy == "pretrain_finetune" else 6)
    assert info["synthetic"] == ([] if strategy == "real" else ["masksyn", "imgsyn"])
    log = [r["loss"] for r in json.loads((tmp_path / "seg" / "train_log.json").read_text())["loss"]]
    assert len(log) == info["train"]["steps"] and all(np.isfinite(log))


def test_strategies_draw_what_they_say(small_benchmark, tiny_synthetic, tmp_path):
    from seggen.segmenter.train import Mixture

    def draws(strategy, phase="main", **kw):
        p = load_params(seg_params(tmp_path, small_benchmark, tiny_synthetic, strategy=strategy, **kw))
        mix = Mixture(p)
        rng = np.random.default_rng(0)
        return mix, [d for _ in range(50) for d in mix.draw(phase, 0, 16, rng)]

    _, d = draws("real")
    assert all(s == -1 and r == -1 for s, _, r in d)
    mix, d = draws("augment", p_aug=0.6)
    share = np.mean([s >= 0 for s, *_ in d])
    assert all((r >= 0) == (s >= 0) for s, _, r in d)  # a synthetic sample names the real one it replaces
    assert 0.5 < share < 0.7
    # a replaced sample comes from the real sample it replaces where one was made from it
    assert mix.by_source and all(len(v) >= 1 for v in mix.by_source.values())
    _, d = draws("pretrain_finetune", phase="pretrain")
    assert all(s >= 0 for s, *_ in d)
    mix, d = draws("concat", concat_repeat=2)
    expect = len(mix.syn_pool) / (2 * len(mix.real_idx) + len(mix.syn_pool))
    assert abs(np.mean([s >= 0 for s, *_ in d]) - expect) < 0.08
    mix, _ = draws("real", real_subset=5)
    assert len(mix.real_idx) == 5


def test_augment_add_keeps_every_real_sample_and_brings_synthetic_ones_made_from_them(
    small_benchmark, tiny_synthetic, tmp_path
):
    """augment_mode add: a micro-batch is the real strategy's, crops included, followed by round(p_aug x
    batch_size) synthetic samples made from distinct real samples of it, replacing nothing; the model records
    it; params that would add nothing, or not divide over the processes, are refused."""
    from seggen.errors import ConfigError
    from seggen.segmenter.data import synthetic_by_source
    from seggen.segmenter.train import Mixture, _fingerprint, plan_batch

    def params(**kw):
        return load_params(seg_params(tmp_path, small_benchmark, tiny_synthetic, **kw))

    batch = {"train": {"batch_size": 16}}
    p_real, p_add = params(**batch), params(strategy="augment", p_aug=0.3, augment_mode="add", **batch)
    real, add = Mixture(p_real), Mixture(p_add)
    assert p_add.segmenter.synthetic_added == 5 and p_real.segmenter.synthetic_added == 0  # round(0.3 x 16)
    for step in range(10):
        got = plan_batch(add, p_add, "main", step, 0)
        assert got[:16] == plan_batch(real, p_real, "main", step, 0)  # the same real samples and crops
        assert len(got) == 16 + 5 and all(s >= 0 and r == -1 for s, _, r, _ in got[16:])
    # each added sample is made from a distinct real sample of the batch (picks whose sources all have some)
    made_from = {(k, i): rid for k, src in enumerate(add.syn) for rid, v in synthetic_by_source(src).items() for i in v}
    covered = [int(i) for i in add.real_idx if add.real.ids[i] in add.by_source]
    assert len(covered) >= 16, "the fixture's synthetic sets cover too few real images for this test"
    for seed in range(20):
        picks = [(-1, i, -1) for i in np.random.default_rng(seed).permutation(covered)[:16]]
        sources = [made_from[s, i] for s, i, _ in add.added(picks, np.random.default_rng(seed))]
        assert len(sources) == 5 and len(set(sources)) == 5
        assert set(sources) <= {add.real.ids[i] for _, i, _ in picks}
    assert Mixture(params(strategy="augment", augment_mode="add", paste_real=["sky"])).paste == []  # replaces nothing
    replace = params(strategy="augment", p_aug=0.3, **batch)
    assert _fingerprint(p_add, add) != _fingerprint(replace, Mixture(replace))
    with pytest.raises(ConfigError, match=r"segmenter.p_aug: 0.1 x batch_size 4 adds no synthetic sample"):
        params(strategy="augment", augment_mode="add", p_aug=0.1)
    with pytest.raises(ConfigError, match=r"micro-batches of 16 \+ 5 samples, which do not divide over"):
        params(strategy="augment", augment_mode="add", train={"batch_size": 16, "num_processes": 2})
    r = cli(
        seg_params(tmp_path, small_benchmark, tiny_synthetic, augment_mode="add", p_aug=0.5),
        "train_segmenter",
        "--strategy",
        "augment",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "seg" / "model" / "seggen_segmenter.json").read_text())
    assert info["augment_mode"] == "add" and info["synthetic_per_batch"] == 2  # batch 4 x 0.5


def test_paste_real_keeps_the_replaced_samples_pixels_of_its_classes(small_benchmark, tiny_synthetic, tmp_path):
    """augment + paste_real: a replacing synthetic sample carries the replaced real sample's pixels (image and
    labels) of the listed classes, nothing else changes, and the draws are those of plain augment."""
    import shutil

    from seggen.segmenter.train import Mixture, _fingerprint

    def params(**kw):
        return load_params(seg_params(tmp_path, small_benchmark, tiny_synthetic, strategy="augment", **kw))

    def mixture(**kw):
        return Mixture(params(**kw))

    plain = mixture(p_aug=1.0)
    names = plain.meta.names
    counts = np.bincount(np.concatenate([plain.real.load(i).labels.ravel() for i in range(len(plain.real))]))
    cls = names[int(np.argmax(counts[1:]))]  # the most frequent class (label k + 1 is names[k])
    mix = mixture(p_aug=1.0, paste_real=[cls])
    assert mix.paste == [cls]
    assert _fingerprint(params(p_aug=1.0, paste_real=[cls]), mix) != _fingerprint(params(p_aug=1.0), plain)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    draws = mix.draw("main", 0, 16, rng_a)
    assert draws == plain.draw("main", 0, 16, rng_b)  # pasting draws nothing
    pasted_any = False
    for s, i, r in draws:
        assert s >= 0 and r >= 0
        real, syn, got = plain.real.load(r), plain.load(s, i, r), mix.load(s, i, r)
        m = real.labels == names.index(cls) + 1
        assert np.array_equal(got.labels[m], real.labels[m]) and np.array_equal(got.image[m], real.image[m])
        assert np.array_equal(got.labels[~m], syn.labels[~m]) and np.array_equal(got.image[~m], syn.image[~m])
        pasted_any |= bool(m.any() and (syn.labels[m] != real.labels[m]).any())
    assert pasted_any
    # `undrawable`: the classes of the plan the datasets were synthesized from
    with pytest.raises(DataError, match=r"summary.json: segmenter.paste_real: undrawable needs datasets"):
        mixture(paste_real="undrawable")
    planned = tmp_path / "planned"
    shutil.copytree(tiny_synthetic, planned)
    plan = tmp_path / "plan.json"
    weights = {c: 1.0 for c in names}
    plan.write_text(json.dumps({"class_weights": weights, "source_weights": {}, "undrawable": [names[-1], names[0]]}))
    for d in ("masksyn", "imgsyn"):
        f = planned / d / "summary.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "plan": {"file": str(plan)}}))
    p = load_params(seg_params(tmp_path, small_benchmark, planned, strategy="augment", paste_real="undrawable"))
    assert Mixture(p).paste == [names[0], names[-1]]
    plan.write_text(json.dumps({"class_weights": weights, "source_weights": {}}))  # planned without drawability
    with pytest.raises(DataError, match=r"plan.json: no `undrawable` list"):
        Mixture(p)
    # strategies that replace nothing ignore it, as they do p_aug
    assert Mixture(load_params(seg_params(tmp_path, small_benchmark, paste_real=[cls]))).paste == []
    with pytest.raises(DataError, match=r"segmenter.paste_real: \['unicorn'\] are not classes"):
        mixture(paste_real=["unicorn"])


def test_paste_real_renumbers_panoptic_segments_and_clears_ignored_pixels():
    from seggen.segmenter.data import Item, paste_real

    syn = Item(
        np.zeros((4, 4, 3), np.uint8),
        np.full((4, 4), 1, np.uint8),
        np.full((4, 4), 7, np.int64),
        [{"id": 7, "category_id": 1, "iscrowd": 0}],
        np.ones((4, 4), bool),
    )
    labels = np.full((2, 2), 1, np.uint8)
    labels[0, 0] = 2  # a class-2 segment (id 3) at the top-left; the rest class 1 (id 5)
    ids = np.where(labels == 2, 3, 5)
    segments = [{"id": 3, "category_id": 2}, {"id": 5, "category_id": 1}]
    real = Item(np.full((2, 2, 3), 200, np.uint8), labels, ids, segments)
    out = paste_real(syn, real, np.array([2]), frozenset({2}))  # real is 2x2: resized to 4x4 first
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    assert (out.labels[m] == 2).all() and (out.labels[~m] == 1).all()
    assert (out.image[m] == 200).all() and (out.image[~m] == 0).all()
    assert (out.ids[m] == 3 + 8).all() and (out.ids[~m] == 7).all()
    assert out.segments == [{"id": 7, "category_id": 1, "iscrowd": 0}, {"id": 11, "category_id": 2}]
    assert not out.ignore[m].any() and out.ignore[~m].all()
    # a stuff class the item has already: its pasted pixels join the item's segment of that class
    out = paste_real(syn, real, np.array([1]), frozenset({2}))
    assert (out.ids[~m] == 7).all() and (out.ids[m] == 7).all() and out.segments == syn.segments
    assert (out.image[~m] == 200).all() and (out.image[m] == 0).all()
    assert paste_real(syn, real, np.array([9])) is syn  # nothing of the class: the sample as it was


def test_kill_and_resume_equals_uninterrupted(small_benchmark, tmp_path):
    from safetensors.torch import load_file

    # the same params (output paths included) twice: uninterrupted, set aside, then killed and resumed
    run = tmp_path / "run"
    run.mkdir()
    params = seg_params(run, small_benchmark, train={"steps": 8})
    assert cli(params, "train_segmenter").returncode == 0
    ref = tmp_path / "ref"
    ref.mkdir()
    (run / "seg").rename(ref / "seg")
    proc = subprocess.Popen(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "train_segmenter"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ck = run / "seg" / "checkpoints"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if any(ck.glob("step_000000[24]")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "seg" / "model").exists()  # killed before the end
    r = cli(params, "train_segmenter")
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_file(str(ref / "seg" / "model" / "model.safetensors"))
    b = load_file(str(run / "seg" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # the whole model directory, byte for byte (its DVC hash): the run's own steps and seconds are in
    # train_summary.json beside it, which differs
    files = sorted(f.name for f in (ref / "seg" / "model").iterdir())
    assert files == sorted(f.name for f in (run / "seg" / "model").iterdir())
    assert all((ref / "seg" / "model" / f).read_bytes() == (run / "seg" / "model" / f).read_bytes() for f in files)
    done = [json.loads((d / "seg" / "train_summary.json").read_text()) for d in (ref, run)]
    assert done[0]["steps_this_run"] == 8 and 0 < done[1]["steps_this_run"] < 8
    assert done[0]["steps"] == done[1]["steps"] == 8 and all(d["seconds_this_run"] > 0 for d in done)


@pytest.fixture(scope="module")
def tiny_model(small_benchmark, tmp_path_factory):
    from seggen.segmenter.train import train_segmenter

    tmp = tmp_path_factory.mktemp("segm")
    p = load_params(seg_params(tmp, small_benchmark, task="panoptic", train={"steps": 4}))
    return p, train_segmenter(p, progress=False)


def test_evaluate_writes_foundation_keys_and_pictures(tiny_model, tmp_path):
    from seggen.segmenter.evaluate import evaluate

    p, model_dir = tiny_model
    for split in ("validation", "validation_shift"):
        m = evaluate(p, model_dir, split, tmp_path / split, progress=False)
        assert {"mIoU", "mAcc", "aAcc", "per_class_iou", "per_class_acc"} <= set(m["semantic"])
        assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(m["panoptic"])
        assert {"AP", "AP50", "AP75"} <= set(m["instance"])
        assert json.loads((tmp_path / split / "metrics.json").read_text())["semantic"]["mIoU"] == m["semantic"]["mIoU"]
        for pic in ("confusion.png", "per_class_iou.png", "predictions.png"):
            assert (tmp_path / split / pic).stat().st_size > 0
    # metrics.json is a cached DVC output: the same bytes from a second run (its speed is not in it)
    first = (tmp_path / "validation" / "metrics.json").read_bytes()
    m = evaluate(p, model_dir, "validation", tmp_path / "validation", progress=False)
    assert m["images_per_s"] > 0 and (tmp_path / "validation" / "metrics.json").read_bytes() == first
    assert "images_per_s" not in json.loads(first)


def test_a_split_of_drawn_domains_is_scored_per_domain(tiny_model, tmp_path):
    """validation_shift: each domain's mIoU on its own images (checked against scoring that domain's
    images alone), their mean, population std and worst; in scores.json for DVC, the report and the gate."""
    import numpy as np

    from seggen.data.benchmark import read_domains
    from seggen.data.images import load_label_png
    from seggen.metrics.semantic import SemanticAccumulator
    from seggen.reporting.scores import gate_scores
    from seggen.segmenter.evaluate import evaluate, scores

    p, model_dir = tiny_model
    m = evaluate(p, model_dir, "validation_shift", tmp_path / "ev", task="semantic", progress=False)
    doms = read_domains(p.data.root, "validation_shift")
    d = m["domains"]
    assert list(d["per_domain"]) == [x["name"] for x in doms] and len(doms) == 2
    for dom in doms:  # by hand: only that domain's predictions and labels
        acc = SemanticAccumulator(10, 255, True)
        for stem in dom["images"]:
            pred = load_label_png(tmp_path / "ev" / "predictions" / "semantic" / f"{stem}.png")
            acc.add(pred, load_label_png(Path(p.data.root) / "annotations" / "validation_shift" / f"{stem}.png"))
        assert d["per_domain"][dom["name"]]["mIoU"] == pytest.approx(acc.metrics()["mIoU"])
    v = [x["mIoU"] for x in d["per_domain"].values()]
    assert d["mean"] == pytest.approx(np.mean(v)) and d["std"] == pytest.approx(np.std(v))
    assert d["worst"] == min(v) and d["per_domain"][d["worst_domain"]]["mIoU"] == min(v)
    sc = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert sc == json.loads(json.dumps(scores(m))) and sc["mIoU_domain_mean"] == pytest.approx(d["mean"])
    assert set(gate_scores(sc, "validation_shift")) == {"validation_shift", "validation_shift.domain_mean"}
    # an in-domain split has no domains
    m = evaluate(p, model_dir, "validation", tmp_path / "in", task="semantic", progress=False)
    assert "domains" not in m and set(gate_scores(scores(m), "validation")) == {"validation"}


def test_segmenter_loads_in_transformers_pipeline(tiny_model, small_benchmark, tmp_path):
    """The saved directory carries its image-processor config: transformers' processor gives the
    pixel values seggen feeds the model, and pipeline("image-segmentation", model=dir) agrees with
    `seggen evaluate`'s labels (transformers resizes the mask logits to 384 px before the class
    product, seggen to the image as Mask2Former's reference code does: boundary pixels may differ)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    from seggen.segmenter.data import pixel_values
    from seggen.segmenter.evaluate import evaluate

    p, model_dir = tiny_model
    files = sorted((small_benchmark / "images" / "validation").glob("*"))[:8]
    proc = AutoImageProcessor.from_pretrained(model_dir)
    for f in files[:2]:
        im = np.asarray(Image.open(f).convert("RGB"))
        ours = pixel_values([im])
        theirs = proc(images=im, return_tensors="pt")["pixel_values"]
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    seg = pipeline("image-segmentation", model=str(model_dir), device="cpu")
    evaluate(p, model_dir, "validation", tmp_path / "ev", task="semantic", progress=False)
    agree = total = 0
    for f in files:
        im = Image.open(f).convert("RGB")
        labels = np.full(im.size[::-1], 255, np.int32)
        for o in seg(im, subtask="semantic"):
            labels[np.asarray(o["mask"]) > 0] = seg.model.config.label2id[o["label"]]
        ref = np.asarray(Image.open(tmp_path / "ev" / "predictions" / "semantic" / f"{f.stem}.png"))
        assert (labels != 255).all()
        agree += int((labels == ref).sum())
        total += labels.size
    assert agree / total >= 0.99, agree / total


def test_semantic_inference_matches_a_hand_computation():
    import torch

    from seggen.segmenter.evaluate import semantic_from

    cls = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])  # 2 queries, 2 classes + no-object
    mask = torch.zeros(2, 2, 2)
    mask[0, 0] = 1.0
    mask[1, 1] = 1.0
    assert semantic_from(cls, mask).tolist() == [[0, 0], [1, 1]]


def test_pretrained_checkpoint_directory_on_real_ade20k(ade_root, tmp_path):
    """A Mask2Former checkpoint directory (tiny, random init, ADE20K's 150 labels) runs end to end on
    the real ADE20K samples through the same code, and fine-tunes from the directory."""
    from seggen.data.meta import ade20k_meta

    ckpt = _tiny_checkpoint(tmp_path / "mask2former-ade", ade20k_meta().names)
    params = seg_params(tmp_path, ade_root, pretrained=str(ckpt), split="validation", train={"steps": 2})
    r = cli(
        params,
        "evaluate",
        "--model",
        str(ckpt),
        "--root",
        str(ade_root),
        "--split",
        "validation",
        "--size",
        "64",
        "--out",
        str(tmp_path / "eval"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["semantic"]["num_classes"] == 150 and m["semantic"]["num_images"] == len(
        list((ade_root / "images" / "validation").iterdir())
    )
    r = cli(params, "train_segmenter")  # fine-tune the checkpoint on the real samples
    assert r.returncode == 0, r.stderr[-3000:]


def _tiny_checkpoint(path: Path, names: list[str]) -> Path:
    from helpers import tiny_mask2former

    return tiny_mask2former(path, names)


def test_pretrained_checkpoint_on_real_coco_panoptic(real, tmp_path):
    """A COCO-panoptic Mask2Former checkpoint directory (tiny, random init, the 133 categories) on the
    real COCO val2017 samples in their own layout: semantic, PQ and mask AP computed end to end."""
    coco = real / "coco"
    cats = sorted(
        json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())["categories"], key=lambda c: c["id"]
    )
    ckpt = _tiny_checkpoint(tmp_path / "m2f-coco", [c["name"] for c in cats])
    (tmp_path / "p.yaml").write_text("{}\n")
    r = cli(
        tmp_path / "p.yaml",
        "evaluate",
        "--model",
        str(ckpt),
        "--root",
        str(coco),
        "--split",
        "val2017",
        "--task",
        "panoptic",
        "--size",
        "64",
        "--out",
        str(tmp_path / "eval"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["semantic"]["num_classes"] == 133 and m["semantic"]["num_images"] == 2
    assert {"PQ", "SQ", "RQ"} <= set(m["panoptic"]) and "AP" in m["instance"]
    pred = json.loads((tmp_path / "eval" / "predictions" / "panoptic.json").read_text())
    ids = {c["id"] for c in cats}
    assert all(s["category_id"] in ids for a in pred["annotations"] for s in a["segments_info"])


def test_detectron2_dicts(small_benchmark, tiny_synthetic, tmp_path):
    from seggen.data.images import load_label_png
    from seggen.segmenter.detectron2_export import export_detectron2

    doc = {"data": {"root": str(small_benchmark)}, "synthesize": {"out": str(tiny_synthetic)}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "d2"
    counts = export_detectron2(load_params(tmp_path / "p.yaml"), out, progress=False)
    assert counts["real_training_sem_seg"] == 24 and counts["masksyn_panoptic"] > 0 and counts["imgsyn_instance"] > 0
    sem = json.loads((out / "real_training_sem_seg.json").read_text())
    d = sem[0]
    assert set(d) == {"file_name", "height", "width", "image_id", "sem_seg_file_name"}
    assert Path(d["file_name"]).exists() and Path(d["sem_seg_file_name"]).exists()
    orig = load_label_png(small_benchmark / "annotations" / "training" / f"{d['image_id']}.png").astype(int)
    conv = load_label_png(Path(d["sem_seg_file_name"])).astype(int)
    assert (conv == np.where(orig == 0, 255, orig - 1)).all()
    pan = json.loads((out / "masksyn_panoptic.json").read_text())[0]
    assert set(pan) >= {"file_name", "image_id", "pan_seg_file_name", "sem_seg_file_name", "segments_info"}
    meta = json.loads((out / "metadata.json").read_text())
    for s in pan["segments_info"]:
        assert set(s) == {"id", "category_id", "iscrowd", "isthing", "area", "bbox"} and 0 <= s["category_id"] < len(
            meta["stuff_classes"]
        )
    inst = json.loads((out / "imgsyn_instance.json").read_text())
    ann = next(a for r in inst for a in r["annotations"])
    assert (
        ann["bbox_mode"] == 1
        and set(ann["segmentation"]) == {"size", "counts"}
        and 0 <= ann["category_id"] < len(meta["thing_classes"])
    )
    reg = (out / "register.py").read_text()
    compile(reg, "register.py", "exec")
    ns: dict = {"__file__": str(out / "register.py")}
    exec(reg, ns)
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="detectron2 is needed"):
            ns["register_all"](out)


def test_bad_input(small_benchmark, tmp_path, tiny_gens):
    from seggen.segmenter.evaluate import evaluate
    from seggen.segmenter.train import train_segmenter

    p = load_params(seg_params(tmp_path, small_benchmark, strategy="augment"))
    with pytest.raises(DataError, match=r"none/masksyn: synthetic dataset not found"):
        train_segmenter(p, progress=False)
    with pytest.raises(DataError, match=r"not a Mask2Former model directory"):
        evaluate(p, tiny_gens / "t2m" / "model", "validation", tmp_path / "ev", progress=False)
    r = cli(seg_params(tmp_path, small_benchmark), "train_segmenter", "--strategy", "mixup")
    assert r.returncode == 2 and "segmenter.strategy" in r.stderr


def test_segmenter_seed_changes_the_run_not_the_real_subset(small_benchmark, tmp_path):
    from seggen.segmenter.train import Mixture, StepBatches

    p0 = load_params(seg_params(tmp_path, small_benchmark, real_subset=6))
    p1 = load_params(seg_params(tmp_path, small_benchmark, real_subset=6, seed=1))
    assert list(Mixture(p0).real_idx) == list(Mixture(p1).real_idx)
    b0, b0_again, b1 = (StepBatches(Mixture(p), p, 1)[0][0] for p in (p0, p0, p1))
    assert b0.equal(b0_again) and not b0.equal(b1)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_the_processes_of_a_run_read_the_one_process_batch(mode, small_benchmark, tiny_synthetic, tmp_path):
    """Each of N processes reads every N-th sample of the global batch: together, the one-process
    batch (samples, replacements, added synthetic samples and augmentation alike), on any world size."""
    import torch

    from seggen.segmenter.train import Mixture, StepBatches

    seg = {"strategy": "augment", "p_aug": 0.5, "augment_mode": mode}  # add: micro-batches of 4 + 2
    p = load_params(seg_params(tmp_path, small_benchmark, tiny_synthetic, **seg))
    mix = Mixture(p)
    whole = StepBatches(mix, p, 6)
    for world in (2, 4) if mode == "replace" else (2, 3):
        shares = [StepBatches(mix, p, 6, slice(r, None, world)) for r in range(world)]
        for j in (0, 5):
            x, masks, classes, ignore = whole[j]
            assert len(x) == 4 + p.segmenter.synthetic_added  # add: 4 real + 2 synthetic
            parts = [s[j] for s in shares]
            assert all(len(part[0]) == len(x) // world for part in parts)
            assert ignore is None and all(part[3] is None for part in parts)  # no filtered pixels in these sets
            for k in range(len(x)):
                px, pm, pc, _ = parts[k % world]
                assert torch.equal(px[k // world], x[k]) and torch.equal(pm[k // world], masks[k])
                assert torch.equal(pc[k // world], classes[k])


def test_a_pretrained_backbone_trains_at_a_tenth_of_the_rate(small_benchmark, tmp_path):
    """The recipe's backbone multiplier: two param groups, the backbone's at 0.1x (checkpointed
    optimizer state); from scratch one group at the base rate."""
    from seggen.segmenter.train import train_segmenter

    def groups(**seg) -> list[dict]:
        out = tmp_path / ("mult" if seg else "scratch")
        p = load_params(seg_params(tmp_path, small_benchmark, out=str(out), **seg))
        train_segmenter(p, progress=False)
        state = json.loads((out / "checkpoints" / "step_0000006" / "optimizer.json").read_text())
        return state["param_groups"]

    scratch = groups()
    assert len(scratch) == 1
    tenth = groups(train={"backbone_lr_mult": 0.1})
    assert len(tenth) == 2 and tenth[0]["lr"] == pytest.approx(0.1 * tenth[1]["lr"])
    assert tenth[1]["lr"] == pytest.approx(scratch[0]["lr"])


def _criterion(points: int = 256):
    from types import SimpleNamespace

    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = Mask2FormerConfig(num_labels=5, train_num_points=points)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    return SimpleNamespace(criterion=Mask2FormerLoss(config, weights))


def _loss(model, masks_logits, class_logits, targets, classes, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return model.criterion(masks_logits, class_logits, targets, classes)


def test_ignored_pixels_are_left_out_of_the_mask_losses_and_the_matching():
    """A pixel the filter set aside teaches nothing: what the labels say under it changes no loss, and
    no mask logit there gets a gradient; without such pixels the published criterion runs unchanged."""
    import torch

    from seggen.segmenter.model import exclude_ignored_pixels

    g = torch.Generator().manual_seed(0)
    b, q, h, w = 2, 6, 32, 32
    masks_logits = torch.randn(b, q, h, w, generator=g, requires_grad=True)
    class_logits = torch.randn(b, q, 6, generator=g)
    # image 0: class 1 on the right half, class 3 on the left; image 1: one class everywhere
    t0 = torch.zeros(2, h, w)
    t0[0, :, 16:] = 1
    t0[1, :, :16] = 1
    targets = [t0, torch.ones(1, h, w)]
    classes = [torch.tensor([1, 3]), torch.tensor([2])]

    published = _criterion()
    ours = _criterion()
    ours.criterion.load_state_dict(published.criterion.state_dict())
    exclude_ignored_pixels(ours)

    # no ignored pixels: the published losses, bit for bit (None) and to rounding (an all-False map)
    ref = _loss(published, masks_logits, class_logits, targets, classes)
    got = _loss(ours, masks_logits, class_logits, targets, classes)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ours.criterion.ignore = torch.zeros(b, h, w, dtype=torch.bool)
    got = _loss(ours, masks_logits, class_logits, targets, classes)
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)

    # the left half of image 0 set aside: the labels under it (inside by 2 px, beyond the bilinear
    # reach of a kept point) do not matter, and its mask logits get no gradient from the mask losses
    ignore = torch.zeros(b, h, w, dtype=torch.bool)
    ignore[0, :, :16] = True
    ours.criterion.ignore = ignore
    other = [t0.clone(), targets[1]]
    other[0][1, :, :13] = 0  # class 3 erased where it is ignored, but for column 13 (so it is still there)
    for seed in range(3):
        a = _loss(ours, masks_logits, class_logits, targets, classes, seed)
        c = _loss(ours, masks_logits, class_logits, other, classes, seed)
        assert all(torch.equal(a[k], c[k]) for k in a), seed
        r = _loss(published, masks_logits, class_logits, other, classes, seed)
        assert not torch.allclose(r["loss_mask"], c["loss_mask"])  # the published loss does see them
    masks_logits.grad = None
    loss = _loss(ours, masks_logits, class_logits, targets, classes)
    (loss["loss_mask"] + loss["loss_dice"]).backward()
    grad = masks_logits.grad
    assert grad[0, :, :, :14].abs().max() == 0 and grad[0, :, :, 17:].abs().sum() > 0 and grad[1].abs().sum() > 0


def test_a_synthetic_dataset_s_ignore_masks_reach_the_loss(small_benchmark, tiny_synthetic, tmp_path):
    """Ignore masks beside a synthetic dataset (ignore/SPLIT/ID.png) are read, augmented with their
    sample and change the training; a mask of the wrong size is named."""
    import shutil

    from PIL import Image

    syn = tmp_path / "synthetic"
    shutil.copytree(tiny_synthetic, syn)
    (tmp_path / "a").mkdir()
    f = seg_params(tmp_path / "a", small_benchmark, syn, strategy="concat")
    r = cli(f, "train_segmenter")
    assert r.returncode == 0, r.stderr
    before = json.loads((tmp_path / "a" / "seg" / "train_log.json").read_text())
    labels = sorted((syn / "masksyn" / "annotations" / "training").iterdir())
    (syn / "masksyn" / "ignore" / "training").mkdir(parents=True)
    for p in labels:  # every labelled pixel of every MaskSyn sample set aside
        lab = np.asarray(Image.open(p))
        Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(syn / "masksyn" / "ignore" / "training" / p.name)
    (tmp_path / "b").mkdir()
    r = cli(seg_params(tmp_path / "b", small_benchmark, syn, strategy="concat"), "train_segmenter")
    assert r.returncode == 0, r.stderr
    after = json.loads((tmp_path / "b" / "seg" / "train_log.json").read_text())
    assert before != after

    from seggen.segmenter.data import SegSource

    src = SegSource(syn / "masksyn", "training", panoptic=False)
    item = src.load(0)
    assert item.ignore is not None and np.array_equal(item.ignore, item.labels > 0)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(syn / "masksyn" / "ignore" / "training" / labels[0].name)
    with pytest.raises(DataError, match=labels[0].name):
        src.load(0)


def test_a_query_that_draws_only_on_ignored_pixels_is_not_taught_no_object():
    """The class loss: an unmatched query's "no object" target weighs the share of its predicted mask
    outside ignored pixels, so a query that predicts the object the filter distrusted is left alone."""
    import torch

    from seggen.segmenter.model import exclude_ignored_pixels

    g = torch.Generator().manual_seed(1)
    b, q, h, w = 1, 6, 32, 32
    masks_logits = torch.randn(b, q, h, w, generator=g)
    masks_logits[0, 5] = -10.0
    masks_logits[0, 5, :, :16] = 10.0  # query 5 draws on the left half only
    class_logits = torch.randn(b, q, 6, generator=g)
    class_logits[0, 5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 8.0, 0.0])  # and calls it class 4
    target = torch.zeros(1, h, w)
    target[0, :, 16:] = 1  # the one target: class 1 on the right half
    targets, classes = [target], [torch.tensor([1])]
    ignore = torch.zeros(b, h, w, dtype=torch.bool)
    ignore[0, :, :16] = True

    def grad_of_query_5(model):
        logits = class_logits.clone().requires_grad_(True)
        torch.manual_seed(0)
        model.criterion(masks_logits, logits, targets, classes)["loss_cross_entropy"].backward()
        return logits.grad[0, 5].abs().sum().item()

    published, ours = _criterion(), _criterion()
    exclude_ignored_pixels(ours)
    ours.criterion.ignore = ignore
    torch.manual_seed(0)
    matched = ours.criterion.matcher(masks_logits, class_logits, targets, classes)[0][0].tolist()
    assert 5 not in matched
    taught = grad_of_query_5(published)
    assert taught > 0.1 and grad_of_query_5(ours) < 1e-3 * taught
    ours.criterion.ignore = torch.zeros_like(ignore)  # nothing ignored: the published loss
    assert abs(grad_of_query_5(ours) - taught) < 1e-6
