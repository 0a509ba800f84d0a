"""Mask AP: our wrapper against pycocotools driven directly, on the real COCO instances samples."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seggen.errors import DataError
from seggen.metrics.instance import evaluate_instances


@pytest.fixture(scope="module")
def gt_json(real):
    return real / "coco/annotations/instances_val2017.json"


def detections(gt_json, rng, kind):
    gt = json.loads(gt_json.read_text())
    imgs = {im["id"]: im for im in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        seg = a["segmentation"]
        h, w = imgs[a["image_id"]]["height"], imgs[a["image_id"]]["width"]
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else seg
        if isinstance(rle, list):
            rle = mask_utils.merge(rle)
        m = mask_utils.decode(rle)
        score = 1.0
        if kind == "noisy":
            if rng.random() < 0.2:
                continue
            m = np.roll(m, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
            score = float(rng.random())
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        enc["counts"] = enc["counts"].decode()
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": enc, "score": score})
    if kind == "noisy":  # plus false positives
        cat_ids = [c["id"] for c in gt["categories"]]
        for im in gt["images"]:
            for _ in range(5):
                m = np.zeros((im["height"], im["width"]), np.uint8, order="F")
                y, x = int(rng.integers(0, im["height"] - 50)), int(rng.integers(0, im["width"] - 50))
                m[y : y + 40, x : x + 40] = 1
                enc = mask_utils.encode(m)
                enc["counts"] = enc["counts"].decode()
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": int(rng.choice(cat_ids)),
                        "segmentation": enc,
                        "score": float(rng.random()),
                    }
                )
    return dets


def pycocotools_stats(gt_json, dets, tmp_path):
    """COCOeval on a copy of the GT whose annotation ids start at 1 (COCOeval reads id 0 as unmatched)."""
    d = json.loads(gt_json.read_text())
    for i, a in enumerate(d["annotations"], start=1):
        a["id"] = i
    fixed = tmp_path / "gt_ids_from_1.json"
    fixed.write_text(json.dumps(d))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(fixed))
        ev = COCOeval(gt, gt.loadRes([dict(x) for x in dets]), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


def test_gt_against_itself_is_100(gt_json, tmp_path):
    d = tmp_path / "dets.json"
    d.write_text(json.dumps(detections(gt_json, None, "identity")))
    m = evaluate_instances(gt_json, d)
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(100.0)
    assert m["per_class"]["person"] == pytest.approx(100.0)


def test_annotation_id_zero_is_not_lost(gt_json):
    """The sample's GT annotation 0 is a person: raw COCOeval would score GT-vs-GT person AP 92.3."""
    assert json.loads(gt_json.read_text())["annotations"][0]["id"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools_on_perturbations(gt_json, tmp_path, seed):
    dets = detections(gt_json, np.random.default_rng(seed), "noisy")
    d = tmp_path / "dets.json"
    d.write_text(json.dumps(dets))
    ours = evaluate_instances(gt_json, d)
    ref = pycocotools_stats(gt_json, dets, tmp_path)
    for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref):
        assert (ours[k] is None) if v < 0 else ours[k] == pytest.approx(v * 100, abs=1e-4), k
    assert ours["AP"] < 100


def test_bad_detections_are_errors(gt_json, tmp_path):
    d = tmp_path / "dets.json"
    good = detections(gt_json, None, "identity")
    d.write_text(json.dumps([{**good[0], "image_id": 5}]))
    with pytest.raises(DataError, match="detection 0 references unknown image_id 5"):
        evaluate_instances(gt_json, d)
    d.write_text(json.dumps([{k: v for k, v in good[0].items() if k != "score"}]))
    with pytest.raises(DataError, match="needs image_id, category_id, segmentation and score"):
        evaluate_instances(gt_json, d)


def test_cli_instance_keys(gt_json, tmp_path):
    d = tmp_path / "dets.json"
    d.write_text(json.dumps(detections(gt_json, np.random.default_rng(0), "noisy")))
    out = tmp_path / "ap.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "eval",
            "instance",
            "--gt-json",
            str(gt_json),
            "--dt-json",
            str(d),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(json.loads(out.read_text()))


def test_polygon_detections_count_as_their_masks(gt_json, tmp_path):
    """Polygons are converted as pycocotools converts GT polygons (annToRLE): same AP as the same shapes as RLE."""
    gt = json.loads(gt_json.read_text())
    imgs = {im["id"]: im for im in gt["images"]}
    rng = np.random.default_rng(1)
    polys, rles = [], []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        poly = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        im = imgs[a["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(poly, im["height"], im["width"]))
        rle["counts"] = rle["counts"].decode()
        score = float(rng.random())
        polys.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": poly, "score": score})
        rles.append({**polys[-1], "segmentation": rle})
    (tmp_path / "poly.json").write_text(json.dumps(polys))
    (tmp_path / "rle.json").write_text(json.dumps(rles))
    a, b = evaluate_instances(gt_json, tmp_path / "poly.json"), evaluate_instances(gt_json, tmp_path / "rle.json")
    ref = pycocotools_stats(gt_json, rles, tmp_path)
    for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref):
        assert a[k] == b[k] and ((a[k] is None) if v < 0 else a[k] == pytest.approx(v * 100, abs=1e-4)), k
    assert 0 < a["AP"] < 100


def test_ground_truth_without_iscrowd_or_area(gt_json, tmp_path):
    """Missing iscrowd = not crowd, missing area = the mask's area: pycocotools on a GT so completed."""
    gt = json.loads(gt_json.read_text())
    coco = COCO()
    coco.dataset = json.loads(gt_json.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    full = json.loads(gt_json.read_text())
    for a, f in zip(gt["annotations"], full["annotations"]):
        del a["area"], a["iscrowd"]
        f["area"] = float(mask_utils.area(coco.annToRLE(f)))
        f["iscrowd"] = 0
    (tmp_path / "bare.json").write_text(json.dumps(gt))
    (tmp_path / "full.json").write_text(json.dumps(full))
    dets = detections(gt_json, np.random.default_rng(2), "noisy")
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    ours = evaluate_instances(tmp_path / "bare.json", tmp_path / "dt.json")
    ref = pycocotools_stats(tmp_path / "full.json", dets, tmp_path)
    for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref):
        assert (ours[k] is None) if v < 0 else ours[k] == pytest.approx(v * 100, abs=1e-4), k


def test_no_detections_scores_zero_and_settings_are_recorded(gt_json, tmp_path):
    d = tmp_path / "none.json"
    d.write_text("[]")
    m = evaluate_instances(gt_json, d)
    assert m["AP"] == 0.0 and m["num_detections"] == 0
    s = m["settings"]
    assert (
        s["iou_type"] == "segm"
        and s["max_dets"] == [1, 10, 100]
        and len(s["categories"]) == len(json.loads(gt_json.read_text())["categories"])
    )
