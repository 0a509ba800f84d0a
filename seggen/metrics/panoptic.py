"""Panoptic quality with the semantics of the COCO panoptic API's pq_compute.

Per image, segments are matched when they share a category and IoU > 0.5, where the union leaves
out the prediction's overlap with void (id 0). GT crowd segments are never matched; unmatched
GT non-crowd segments are false negatives; an unmatched prediction is a false positive unless
more than half of it lies on void or on a crowd region of its category. GT segment areas are
taken from the GT JSON (`area`, as the reference does; counted from the PNG where absent),
predicted areas from the PNG. PQ = sum(IoU of TP) / (TP + FP/2 + FN/2) per category, averaged
over categories with any TP, FP or FN, for all / things / stuff. Reported in percent.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from seggen.data.coco import read_json
from seggen.data.images import load_panoptic_png
from seggen.errors import DataError, not_found
from seggen.progress import tqdm

OFFSET = 256 * 256 * 256
VOID = 0


class _Stat:
    __slots__ = ("iou", "tp", "fp", "fn")

    def __init__(self) -> None:
        self.iou, self.tp, self.fp, self.fn = 0.0, 0, 0, 0


def pq_image(gt_ids, gt_segs, pred_ids, pred_segs, categories, stats, where: str) -> None:
    """Accumulate one image's TP/FP/FN/IoU into `stats` (category id -> _Stat)."""
    gt_segms = {int(s["id"]): dict(s) for s in gt_segs}
    pred_segms = {int(s["id"]): dict(s) for s in pred_segs}
    labels, counts = np.unique(pred_ids, return_counts=True)
    unseen = set(pred_segms)
    for label, cnt in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise DataError(f"{where}: predicted segment id {label} is in the PNG but not in the prediction JSON")
        pred_segms[label]["area"] = cnt
        unseen.discard(label)
        if pred_segms[label]["category_id"] not in categories:
            raise DataError(
                f"{where}: predicted segment {label} has unknown category_id {pred_segms[label]['category_id']}"
            )
    if unseen:
        raise DataError(
            f"{where}: predicted segment id(s) {sorted(unseen)[:5]} are in the prediction JSON but not in the PNG"
        )

    glabels, gcounts = np.unique(gt_ids, return_counts=True)
    for label, cnt in zip(glabels.tolist(), gcounts.tolist()):
        if label == VOID:
            continue
        if label not in gt_segms:
            raise DataError(f"{where}: ground-truth segment id {label} is in the PNG but not in the GT JSON")
        gt_segms[label].setdefault("area", cnt)
    for gs in gt_segms.values():
        gs.setdefault("area", 0)  # listed but not drawn: can only be a false negative

    joint = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    keys, inter = np.unique(joint, return_counts=True)
    gt_pred = {(int(k // OFFSET), int(k % OFFSET)): int(c) for k, c in zip(keys.tolist(), inter.tolist())}

    gt_matched, pred_matched = set(), set()
    for (g, p), i in gt_pred.items():
        if g not in gt_segms or p not in pred_segms:
            continue
        gs, ps = gt_segms[g], pred_segms[p]
        if gs.get("iscrowd", 0) == 1 or gs["category_id"] != ps["category_id"]:
            continue
        union = ps["area"] + gs["area"] - i - gt_pred.get((VOID, p), 0)
        iou = i / union
        if iou > 0.5:
            st = stats[gs["category_id"]]
            st.tp += 1
            st.iou += iou
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of = {}
    for g, gs in gt_segms.items():
        if g in gt_matched:
            continue
        if gs.get("iscrowd", 0) == 1:
            crowd_of[gs["category_id"]] = g
            continue
        stats[gs["category_id"]].fn += 1

    for p, ps in pred_segms.items():
        if p in pred_matched:
            continue
        ignored = gt_pred.get((VOID, p), 0)
        if ps["category_id"] in crowd_of:
            ignored += gt_pred.get((crowd_of[ps["category_id"]], p), 0)
        if ignored / ps["area"] > 0.5:
            continue
        stats[ps["category_id"]].fp += 1


def pq_average(stats, categories: dict, isthing: bool | None) -> tuple[dict, dict]:
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for cid, cat in categories.items():
        if isthing is not None and (cat.get("isthing", 0) == 1) != isthing:
            continue
        st = stats.get(cid) or _Stat()
        if st.tp + st.fp + st.fn == 0:
            per_class[cid] = None
            continue
        n += 1
        denom = st.tp + 0.5 * st.fp + 0.5 * st.fn
        pq_c = st.iou / denom
        sq_c = st.iou / st.tp if st.tp else 0.0
        rq_c = st.tp / denom
        per_class[cid] = {"PQ": pq_c * 100, "SQ": sq_c * 100, "RQ": rq_c * 100, "TP": st.tp, "FP": st.fp, "FN": st.fn}
        pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
    if n == 0:
        return {"PQ": None, "SQ": None, "RQ": None, "n": 0}, per_class
    return {"PQ": pq / n * 100, "SQ": sq / n * 100, "RQ": rq / n * 100, "n": n}, per_class


def evaluate_panoptic(
    gt_json: str | Path, gt_dir: str | Path, pred_json: str | Path, pred_dir: str | Path, progress: bool = False
) -> dict:
    """Both JSONs are validated fully first (seggen.data.coco.validate_panoptic); the prediction's
    categories are the ground truth's, as in pq_compute. The result records them under `settings`."""
    from seggen.data.coco import validate_panoptic

    gt_json, pred_json, gt_dir, pred_dir = Path(gt_json), Path(pred_json), Path(gt_dir), Path(pred_dir)
    gt, pred = read_json(gt_json), read_json(pred_json)
    categories, _, gt_anns = validate_panoptic(gt, gt_json, images=False)
    _, _, pred_anns = validate_panoptic(pred, pred_json, categories=categories, images=False)
    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise DataError(not_found(d, "directory", "PNG"))
    preds = {a["image_id"]: a for a in pred_anns}
    stats: dict[int, _Stat] = defaultdict(_Stat)
    for ga in tqdm(gt_anns, desc="eval panoptic", unit="img", disable=not progress):
        iid = ga["image_id"]
        if iid not in preds:
            raise DataError(f"{pred_json}: no prediction for image_id {iid}")
        pa = preds[iid]
        gt_ids = load_panoptic_png(gt_dir / ga["file_name"])
        pred_ids = load_panoptic_png(pred_dir / pa["file_name"])
        if gt_ids.shape != pred_ids.shape:
            raise DataError(
                f"{pred_dir / pa['file_name']}: size {pred_ids.shape[1]}x{pred_ids.shape[0]} does not match "
                f"ground truth {ga['file_name']} {gt_ids.shape[1]}x{gt_ids.shape[0]}"
            )
        pq_image(
            gt_ids,
            ga["segments_info"],
            pred_ids,
            pa["segments_info"],
            categories,
            stats,
            str(pred_dir / pa["file_name"]),
        )

    out: dict = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        res, per_class = pq_average(stats, categories, isthing)
        out[f"PQ{suffix}"], out[f"SQ{suffix}"], out[f"RQ{suffix}"] = res["PQ"], res["SQ"], res["RQ"]
        out[f"n{suffix}"] = res["n"]
        if isthing is None:
            out["per_class"] = {
                categories[cid]["name"]: (None if v is None else {"category_id": cid, **v})
                for cid, v in per_class.items()
            }
    out["num_images"] = len(gt_anns)
    out["settings"] = {
        "categories": [{"id": cid, "name": c["name"], "isthing": int(c["isthing"])} for cid, c in categories.items()],
        "match_iou": 0.5,
        "void_id": VOID,
    }
    return out
