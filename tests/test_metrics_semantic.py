"""Semantic metrics against an independent mmsegmentation-style reference (torch.histc per image)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from seggen.data.ade20k import ADE20KDataset
from seggen.errors import DataError
from seggen.metrics.semantic import evaluate_semantic_arrays, evaluate_semantic_dirs


def reference_iou(pairs, num_classes, ignore_index=255, reduce_zero_label=False):
    """mmseg IoUMetric, restated: histc per image, sums over the dataset, nanmean."""
    ti = torch.zeros(num_classes, dtype=torch.float64)
    tu = torch.zeros_like(ti)
    tp = torch.zeros_like(ti)
    tl = torch.zeros_like(ti)
    for pred, gt in pairs:
        label = torch.from_numpy(gt.astype(np.uint8).copy())
        if reduce_zero_label:  # as LoadAnnotations does, on uint8
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        label = label.long()
        pred = torch.from_numpy(pred.astype(np.int64))
        mask = label != ignore_index
        p, g = pred[mask], label[mask]
        inter = p[p == g]
        ai = torch.histc(inter.float(), bins=num_classes, min=0, max=num_classes - 1).double()
        ap = torch.histc(p.float(), bins=num_classes, min=0, max=num_classes - 1).double()
        al = torch.histc(g.float(), bins=num_classes, min=0, max=num_classes - 1).double()
        ti += ai
        tu += ap + al - ai
        tp += ap
        tl += al
    iou = (ti / tu).numpy()
    acc = (ti / tl).numpy()
    return {
        "mIoU": np.nanmean(iou) * 100,
        "mAcc": np.nanmean(acc) * 100,
        "aAcc": float(ti.sum() / tl.sum()) * 100,
        "iou": iou * 100,
    }


def assert_close(ours, ref, tol=1e-4):
    for k in ("mIoU", "mAcc", "aAcc"):
        assert ours[k] == pytest.approx(ref[k], abs=tol), k
    got = np.array([np.nan if v is None else v for v in ours["per_class_iou"].values()])
    assert np.allclose(got, ref["iou"], atol=tol, equal_nan=True)


@pytest.fixture(scope="module")
def ade_labels(ade_root):
    ds = ADE20KDataset(ade_root, "validation")
    return [ds.load_label(i) for i in range(len(ds))]


def perturb(gt, rng, kind):
    """A 0-based prediction from an ADE GT label (0..150)."""
    pred = np.where(gt > 0, gt.astype(np.int64) - 1, rng.integers(0, 150, gt.shape))
    if kind == "identity":
        return pred
    if kind == "noise":
        flip = rng.random(gt.shape) < 0.2
        return np.where(flip, rng.integers(0, 150, gt.shape), pred)
    if kind == "shift":
        return np.roll(pred, (7, -11), axis=(0, 1))
    if kind == "relabel":  # swap a few classes wholesale, plus out-of-range predictions
        out = pred.copy()
        out[pred == 0] = 2
        out[pred == 2] = 0
        out[rng.random(gt.shape) < 0.05] = 255
        return out
    if kind == "blocks":
        out = pred.copy()
        for _ in range(20):
            y, x = rng.integers(0, gt.shape[0] - 40), rng.integers(0, gt.shape[1] - 40)
            out[y : y + 40, x : x + 40] = rng.integers(0, 150)
        return out
    raise ValueError(kind)


def test_gt_against_itself_is_100(ade_labels):
    pairs = [(np.where(g > 0, g.astype(np.int64) - 1, 0), g) for g in ade_labels]
    m = evaluate_semantic_arrays(pairs, 150, reduce_zero_label=True)
    assert m["mIoU"] == 100.0 and m["mAcc"] == 100.0 and m["aAcc"] == 100.0
    present = {int(v) - 1 for g in ade_labels for v in np.unique(g) if v > 0}
    assert {i for i, v in enumerate(m["per_class_iou"].values()) if v is not None} == present


@pytest.mark.parametrize("kind", ["identity", "noise", "shift", "relabel", "blocks"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_on_perturbations(ade_labels, kind, seed):
    rng = np.random.default_rng(seed)
    pairs = [(perturb(g, rng, kind), g) for g in ade_labels]
    ours = evaluate_semantic_arrays(pairs, 150, reduce_zero_label=True)
    assert_close(ours, reference_iou(pairs, 150, reduce_zero_label=True))


def test_matches_reference_without_reduce_zero_label(ade_labels):
    rng = np.random.default_rng(3)
    pairs = [(np.where(rng.random(g.shape) < 0.3, rng.integers(0, 151, g.shape), g), g) for g in ade_labels]
    ours = evaluate_semantic_arrays(pairs, 151, ignore_index=255, reduce_zero_label=False)
    assert_close(ours, reference_iou(pairs, 151))


def test_hand_checked_example():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3]], np.uint8)  # 0 ignored after reduction
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 1, 9]], np.uint8)  # 9 is out of range
    m = evaluate_semantic_arrays([(pred, gt)], 4, reduce_zero_label=True)
    # class 0: I=4, P=5, L=4 -> U=5; class 1: I=3, P=4, L=4 -> U=5; class 2: I=0, P=0, L=2 -> U=2;
    # class 3: absent everywhere -> NaN (null), excluded from the mean
    iou = m["per_class_iou"]
    assert iou["0"] == pytest.approx(80.0) and iou["1"] == pytest.approx(60.0) and iou["2"] == 0.0 and iou["3"] is None
    assert m["mIoU"] == pytest.approx((80 + 60 + 0) / 3)
    assert m["aAcc"] == pytest.approx(7 / 10 * 100)
    assert m["mAcc"] == pytest.approx((100 + 75 + 0) / 3)


def _write_dir(d, arrays):
    d.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        Image.fromarray(a.astype(np.uint8)).save(d / f"{name}.png")


def test_cli_semantic_json(ade_root, ade_labels, tmp_path):
    rng = np.random.default_rng(0)
    preds = {f"ADE_val_0000000{i + 1}": perturb(g, rng, "noise") for i, g in enumerate(ade_labels)}
    _write_dir(tmp_path / "pred", preds)
    out = tmp_path / "m.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "eval",
            "semantic",
            "--pred",
            str(tmp_path / "pred"),
            "--gt",
            str(ade_root / "annotations/validation"),
            "--num-classes",
            "150",
            "--reduce-zero-label",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert {"mIoU", "mAcc", "aAcc", "per_class_iou"} <= set(m)
    assert "wall" in m["per_class_iou"] and len(m["per_class_iou"]) == 150
    ref = reference_iou([(preds[k], g) for k, g in zip(sorted(preds), ade_labels)], 150, reduce_zero_label=True)
    assert m["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-4)


def test_cli_defaults_are_mmsegmentations_and_recorded(tmp_path):
    """No flag: no zero-label reduction and ignore index 255, as mmsegmentation's IoUMetric, whatever a
    params.yaml in the working directory says (the CLI reads none); the JSON records the settings."""
    rng = np.random.default_rng(3)
    gt = {f"im{i}": rng.integers(0, 10, (24, 32)) for i in range(4)}  # 0-indexed labels: 0 is a class
    for g in gt.values():
        g[:3] = 255
    pred = {
        k: np.where(rng.random(g.shape) < 0.6, np.minimum(g, 9), rng.integers(0, 10, g.shape)) for k, g in gt.items()
    }
    _write_dir(tmp_path / "gt", gt)
    _write_dir(tmp_path / "pred", pred)
    (tmp_path / "params.yaml").write_text("eval: {reduce_zero_label: true}\nnot_a_section: 1\n")
    base = [
        sys.executable,
        "-m",
        "seggen.cli",
        "eval",
        "semantic",
        "--pred",
        "pred",
        "--gt",
        "gt",
        "--num-classes",
        "10",
    ]
    r = subprocess.run(base + ["--json", "m.json"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    ref = reference_iou([(pred[k], gt[k]) for k in sorted(gt)], 10, reduce_zero_label=False)
    assert m["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-4) and m["mIoU"] > 30
    assert m["settings"] == {"num_classes": 10, "ignore_index": 255, "reduce_zero_label": False}
    r = subprocess.run(base + ["--reduce-zero-label", "--json", "z.json"], capture_output=True, text=True, cwd=tmp_path)
    z = json.loads((tmp_path / "z.json").read_text())
    assert z["settings"]["reduce_zero_label"] is True
    assert z["mIoU"] == pytest.approx(
        reference_iou([(pred[k], gt[k]) for k in sorted(gt)], 10, reduce_zero_label=True)["mIoU"], abs=1e-4
    )
    assert z["mIoU"] < m["mIoU"] - 20  # the trap the default avoids: every class scored against its neighbour


def test_mismatched_stems_and_sizes_are_errors(ade_root, ade_labels, tmp_path):
    gt_dir = ade_root / "annotations/validation"
    preds = {f"ADE_val_0000000{i + 1}": g for i, g in enumerate(ade_labels)}
    _write_dir(tmp_path / "missing", {k: v for k, v in list(preds.items())[:2]})
    with pytest.raises(DataError, match="no prediction for 1 ground-truth file.*ADE_val_00000003.png"):
        evaluate_semantic_dirs(tmp_path / "missing", gt_dir, 150, reduce_zero_label=True)
    _write_dir(tmp_path / "extra", {**preds, "ADE_val_00000009": ade_labels[0]})
    with pytest.raises(DataError, match="1 prediction.*without ground truth.*ADE_val_00000009.png"):
        evaluate_semantic_dirs(tmp_path / "extra", gt_dir, 150, reduce_zero_label=True)
    _write_dir(tmp_path / "size", {**preds, "ADE_val_00000002": ade_labels[0]})
    with pytest.raises(DataError, match="ADE_val_00000002.png: size 683x512 does not match ground truth"):
        evaluate_semantic_dirs(tmp_path / "size", gt_dir, 150, reduce_zero_label=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "eval",
            "semantic",
            "--pred",
            str(tmp_path / "size"),
            "--gt",
            str(gt_dir),
            "--num-classes",
            "150",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    last = r.stderr.strip().splitlines()[-1]  # earlier lines are the progress bar
    assert r.returncode == 2 and last.startswith("error: ") and "does not match" in last and "Traceback" not in r.stderr


def test_gt_out_of_range_is_error():
    gt = np.full((3, 3), 7, np.uint8)
    with pytest.raises(DataError, match="ground-truth label 7 out of range for 5 classes"):
        evaluate_semantic_arrays([(gt, gt)], 5)


def test_empty_after_ignore_gives_null():
    gt = np.zeros((3, 3), np.uint8)
    m = evaluate_semantic_arrays([(gt, gt)], 5, reduce_zero_label=True)
    assert m["mIoU"] is None and m["aAcc"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
