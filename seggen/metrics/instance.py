"""Instance segmentation mask AP: pycocotools' COCOeval with iouType "segm", keys in percent.

One deliberate difference from calling COCOeval on the raw file: COCOeval records a match by
storing the GT annotation id, and an id of 0 reads as "unmatched", so a GT annotation with id 0
(the real COCO val2017 sample has one) can never be a true positive. GT annotation ids are
therefore renumbered 1..N (in file order) before evaluation; nothing else changes.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np

from seggen.data.coco import CocoInstances, read_json
from seggen.errors import DataError

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pct(v: float) -> float | None:
    return None if v < 0 else float(v) * 100.0


def renumber_annotation_ids(coco) -> None:
    """Give GT annotations ids 1..N so that none is 0 (see module doc)."""
    for i, a in enumerate(coco.dataset["annotations"], start=1):
        a["id"] = i
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


def _score(v, path: Path, i: int) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"{path}: detection {i} score must be a number, got {v!r}"[:300])
    if not math.isfinite(v):
        raise DataError(
            f"{path}: detection {i} score is {v}: scores must be finite (NaN or infinite scores rank arbitrarily)"
        )
    return float(v)


def load_detections(dt_path: Path, gt) -> list[dict]:
    """COCO results ([{image_id, category_id, segmentation, score}, ...]) checked one by one, each mask
    as compressed RLE at its image's size (polygons and uncompressed RLE converted as COCO.annToRLE
    converts GT; a mask of another size than its image is an error naming the detection)."""
    from seggen.data.coco import to_rle

    dets = read_json(dt_path)
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise DataError(f"{dt_path}: expected a list of detections (COCO results format)")
    out = []
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or not {"image_id", "category_id", "segmentation", "score"} <= set(d):
            raise DataError(f"{dt_path}: detection {i} needs image_id, category_id, segmentation and score")
        if isinstance(d["image_id"], bool) or d["image_id"] not in gt.imgs:
            raise DataError(f"{dt_path}: detection {i} references unknown image_id {d['image_id']!r}")
        if isinstance(d["category_id"], bool) or d["category_id"] not in gt.cats:
            raise DataError(f"{dt_path}: detection {i} references unknown category_id {d['category_id']!r}")
        im = gt.imgs[d["image_id"]]
        rle = to_rle(d["segmentation"], im["height"], im["width"], dt_path, f"detection {i}")
        out.append(
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "segmentation": rle,
                "score": _score(d["score"], dt_path, i),
            }
        )
    return out


def complete_ground_truth(gt) -> None:
    """GT without `iscrowd` is not crowd (what COCOeval's ignore flag assumes); GT without `area` gets
    its mask's area (what COCO.loadRes gives results): plain COCOeval raises KeyError on both."""
    from pycocotools import mask as mask_utils

    for a in gt.dataset["annotations"]:
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(mask_utils.area(gt.annToRLE(a)))


def _results(gt, dets: list[dict]):
    """COCO.loadRes, which also accepts an empty list (loadRes itself fails on one)."""
    from pycocotools.coco import COCO

    if dets:
        return gt.loadRes([dict(d) for d in dets])
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    res.createIndex()
    return res


def evaluate_instances(gt_json: str | Path, dt_json: str | Path) -> dict:
    """`dt_json`: a COCO results list ([{image_id, category_id, segmentation, score}, ...])."""
    from pycocotools.cocoeval import COCOeval

    gt = CocoInstances(gt_json).coco
    renumber_annotation_ids(gt)
    complete_ground_truth(gt)
    dets = load_detections(Path(dt_json), gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = _results(gt, dets)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict = {k: _pct(v) for k, v in zip(STAT_KEYS, ev.stats[:6])}
    # per-category AP over IoU 0.5:0.95, all areas, maxDets 100 (as the summary's first line)
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T x R x K
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        p = p[p > -1]
        per_class[gt.cats[cid]["name"]] = float(np.mean(p)) * 100 if p.size else None
    out["per_class"] = per_class
    out["num_detections"] = len(dets)
    out["settings"] = {
        "iou_type": "segm",
        "categories": [{"id": c, "name": gt.cats[c]["name"]} for c in sorted(gt.cats)],
        "iou_thresholds": [0.5, 0.95, 0.05],
        "max_dets": list(ev.params.maxDets),
        "area_ranges": dict(zip(ev.params.areaRngLbl, ev.params.areaRng)),
        "gt_annotation_ids": "renumbered 1..N in file order (see seggen.metrics.instance)",
    }
    return out
