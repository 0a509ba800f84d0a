"""Instance segmentation mask AP: pycocotools' COCOeval with iouType "segm", keys in percent.

One deliberate difference from calling COCOeval on the raw file: COCOeval records a match by
storing the GT annotation id, and an id of 0 reads as "unmatched", so a GT annotation with id 0
(the real COCO val2017 sample has one) can never be a true positive. GT annotation ids are
therefore renumbered 1..N (in file order) before evaluation; nothing else changes.
"""

from __future__ import annotations

import contextlib
import io
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


def evaluate_instances(gt_json: str | Path, dt_json: str | Path) -> dict:
    """`dt_json`: a COCO results list ([{image_id, category_id, segmentation, score}, ...])."""
    from pycocotools.cocoeval import COCOeval

    gt = CocoInstances(gt_json).coco
    renumber_annotation_ids(gt)
    dt_path = Path(dt_json)
    dets = read_json(dt_path)
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise DataError(f"{dt_path}: expected a list of detections (COCO results format)")
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or not {"image_id", "category_id", "segmentation", "score"} <= set(d):
            raise DataError(f"{dt_path}: detection {i} needs image_id, category_id, segmentation and score")
        if d["image_id"] not in gt.imgs:
            raise DataError(f"{dt_path}: detection {i} references unknown image_id {d['image_id']}")
        if d["category_id"] not in gt.cats:
            raise DataError(f"{dt_path}: detection {i} references unknown category_id {d['category_id']}")
    cats = sorted(gt.cats)
    if not dets:
        zero = {k: 0.0 for k in STAT_KEYS}
        return {**zero, "per_class": {gt.cats[c]["name"]: None for c in cats}, "num_detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d) for d in dets])
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
    return out
