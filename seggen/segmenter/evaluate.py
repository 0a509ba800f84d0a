"""Stage `evaluate`: run a Mask2Former on a split and score it with the reference-exact evaluators.

Semantic: per-pixel class = argmax over classes of sum_q softmax(class_q) * sigmoid(mask_q) (the
Mask2Former semantic inference), written as label PNGs (0..N-1) and scored with
seggen.metrics.semantic (mIoU, mAcc, aAcc, per-class IoU). Panoptic: Mask2Former's panoptic inference
(queries above `score_threshold`, pixel assigned to the query of highest score x mask probability,
segments kept when >= `overlap_threshold` of their mask survives, stuff merged per class), written as
COCO panoptic PNG + JSON and scored with seggen.metrics.panoptic (PQ/SQ/RQ), and its thing segments
as instance detections scored with pycocotools (mask AP) against instances derived from the GT
panoptic annotation.

Output (`--out`): predictions/, metrics.json, confusion.png, per_class_iou.png, predictions.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from seggen.data.ade20k import ADE20KDataset
from seggen.data.images import id2rgb, load_rgb
from seggen.data.meta import DatasetMeta, load_meta
from seggen.errors import DataError
from seggen.io import write_json, write_png
from seggen.segmenter.data import pixel_values
from seggen.segmenter.model import load_model


def _inputs(images: list[np.ndarray], size: int | None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize so the short side is `size` (None: as is); pad to a common size (bottom/right)."""
    shapes, arrs = [], []
    for im in images:
        h, w = im.shape[:2]
        shapes.append((h, w))
        if size and min(h, w) != size:
            s = size / min(h, w)
            im = np.asarray(Image.fromarray(im).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
        arrs.append(im)
    H = max(a.shape[0] for a in arrs)
    W = max(a.shape[1] for a in arrs)
    padded = [np.pad(a, ((0, H - a.shape[0]), (0, W - a.shape[1]), (0, 0))) for a in arrs]
    valid = [(a.shape[0], a.shape[1]) for a in arrs]
    return pixel_values(padded), list(zip(shapes, valid))


@torch.no_grad()
def infer(model, images: list[np.ndarray], size: int | None, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """-> class probabilities (B x Q x C+1) and per-image mask probabilities (Q x H x W at the image's size)."""
    x, geo = _inputs(images, size)
    out = model(pixel_values=x.to(device))
    cls = out.class_queries_logits.float().softmax(-1).cpu()
    logits = F.interpolate(out.masks_queries_logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    masks = []
    for m, ((h, w), (vh, vw)) in zip(logits, geo):
        m = m[:, :vh, :vw]
        masks.append(F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0].sigmoid().cpu())
    return cls, masks


def semantic_from(cls: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """One image: Q x (C+1) class probs, Q x H x W mask probs -> H x W class indices 0..C-1."""
    return torch.einsum("qc,qhw->chw", cls[:, :-1], mask).argmax(0).numpy().astype(np.uint8 if cls.shape[1] <= 256 else np.uint16)


def panoptic_from(cls: torch.Tensor, mask: torch.Tensor, things: set[int], score_threshold: float = 0.5,
                  overlap_threshold: float = 0.8) -> tuple[np.ndarray, list[dict]]:
    """One image -> (segment ids H x W, segments with id, category_id (1-based), isthing, score)."""
    scores, labels = cls[:, :-1].max(-1)
    keep = (labels != cls.shape[1] - 1) & (scores > score_threshold)
    scores, labels, mask = scores[keep], labels[keep], mask[keep]
    h, w = mask.shape[-2:]
    ids = np.zeros((h, w), np.int32)
    segments: list[dict] = []
    if not len(scores):
        return ids, segments
    owner = (scores[:, None, None] * mask).argmax(0)
    stuff_of: dict[int, int] = {}
    for k in range(len(scores)):
        cat = int(labels[k]) + 1
        region = (owner == k) & (mask[k] >= 0.5)
        area, full = int(region.sum()), int((mask[k] >= 0.5).sum())
        if area == 0 or full == 0 or area / full < overlap_threshold:
            continue
        region = region.numpy()
        isthing = cat in things
        if not isthing and cat in stuff_of:
            ids[region] = stuff_of[cat]
            continue
        sid = len(segments) + 1
        ids[region] = sid
        segments.append({"id": sid, "category_id": cat, "isthing": isthing, "score": float(scores[k])})
        if not isthing:
            stuff_of[cat] = sid
    return ids, segments


def _split_root(params, split: str, root: Path | None) -> tuple[Path, str]:
    if root is not None:
        return Path(root), split
    return Path(params.data.root), split


def evaluate(params, model_dir: str | Path, split: str, out: str | Path, root: str | Path | None = None,
             task: str | None = None, size: int | None = None, batch_size: int = 16, progress: bool = True) -> dict:
    """Predict every image of `root`/`split` (default: data.root) and write metrics.json to `out`."""
    from seggen.metrics.semantic import evaluate_semantic_dirs

    data_root, split = _split_root(params, split, Path(root) if root else None)
    ds = ADE20KDataset(data_root, split)
    meta: DatasetMeta = load_meta(data_root)
    model, info = load_model(model_dir)
    task = task or info.get("task", params.segmenter.task)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != meta.names:
        raise DataError(f"{model_dir}: the model's {len(names)} classes differ from the {meta.num_classes} classes of {data_root}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    out = Path(out)
    pred_dir = out / "predictions" / "semantic"
    pan_json_path = data_root / "panoptic" / f"panoptic_{split}.json"
    do_pan = task == "panoptic"
    if do_pan and not pan_json_path.exists():
        raise DataError(f"{pan_json_path}: panoptic evaluation needs the COCO panoptic layout")
    things = set(meta.thing_ids)
    pan_annotations, detections = [], []
    grid = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(ds), desc=f"evaluate {split}", unit="img", disable=not progress, dynamic_ncols=True)
    for b in range(0, len(ds), batch_size):
        idx = list(range(b, min(len(ds), b + batch_size)))
        images = [load_rgb(ds.samples[i].image_path) for i in idx]
        cls, masks = infer(model, images, size, device)
        for j, i in enumerate(idx):
            stem = ds.samples[i].id
            sem = semantic_from(cls[j], masks[j])
            write_png(pred_dir / f"{stem}.png", sem)
            if len(grid) < 8:
                grid.append((images[j], sem))
            if do_pan:
                ids, segs = panoptic_from(cls[j], masks[j], things)
                write_png(out / "predictions" / "panoptic" / f"{stem}.png", id2rgb(ids.astype(np.uint32)))
                pan_annotations.append({"file_name": f"{stem}.png", "segments_info": [
                    {"id": s["id"], "category_id": s["category_id"]} for s in segs], "stem": stem})
                for s in segs:
                    if s["isthing"]:
                        detections.append({"stem": stem, "category_id": s["category_id"], "score": s["score"], "mask": ids == s["id"]})
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    metrics = {"split": split, "root": str(data_root), "task": task, "model": str(model_dir), "images_per_s": len(ds) / seconds}
    metrics["semantic"] = evaluate_semantic_dirs(pred_dir, ds.label_dir, meta.num_classes, params.eval.ignore_index,
                                                 params.eval.reduce_zero_label, meta.names)
    if do_pan:
        metrics["panoptic"], metrics["instance"] = _panoptic_and_instances(pan_json_path, pan_annotations, detections, out)
    _pictures(metrics["semantic"], pred_dir, ds, meta, grid, out, params)
    write_json(out / "metrics.json", metrics)
    return metrics


def _panoptic_and_instances(gt_json: Path, annotations: list[dict], detections: list[dict], out: Path) -> tuple[dict, dict]:
    from pycocotools import mask as mask_utils

    from seggen.metrics.instance import evaluate_instances
    from seggen.metrics.panoptic import evaluate_panoptic

    gt = json.loads(gt_json.read_text())
    by_stem = {Path(a["file_name"]).stem: a for a in gt["annotations"]}
    pred = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    for a in annotations:
        g = by_stem.get(a["stem"])
        if g is None:
            raise DataError(f"{gt_json}: no annotation for {a['stem']}")
        pred["annotations"].append({"image_id": g["image_id"], "file_name": a["file_name"], "segments_info": a["segments_info"]})
    write_json(out / "predictions" / "panoptic.json", pred, indent=None)
    pq = evaluate_panoptic(gt_json, gt_json.with_suffix(""), out / "predictions" / "panoptic.json", out / "predictions" / "panoptic")

    # instances: GT things from the panoptic annotation (crowd kept as iscrowd), detections as RLE
    from seggen.data.coco import CocoPanoptic

    pan = CocoPanoptic(gt_json)
    cats = {c["id"]: c for c in gt["categories"]}
    inst_gt = {"images": gt["images"], "categories": [c for c in gt["categories"] if c.get("isthing")], "annotations": []}
    for i, a in enumerate(pan.annotations):
        ids, segs = pan.load_ids(i)
        for s in segs:
            if not cats[s["category_id"]].get("isthing"):
                continue
            rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            inst_gt["annotations"].append({"id": len(inst_gt["annotations"]) + 1, "image_id": a["image_id"], "category_id": s["category_id"],
                                           "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": list(map(float, mask_utils.toBbox(rle))),
                                           "iscrowd": int(s.get("iscrowd", 0))})
    dts = []
    for d in detections:
        rle = mask_utils.encode(np.asfortranarray(d["mask"].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        dts.append({"image_id": by_stem[d["stem"]]["image_id"], "category_id": d["category_id"], "segmentation": rle, "score": d["score"]})
    write_json(out / "predictions" / "instances_gt.json", inst_gt, indent=None)
    write_json(out / "predictions" / "instances_dt.json", dts, indent=None)
    if not dts:
        ap = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": None, "APl": None, "per_class": {}, "note": "no detections"}
    else:
        ap = evaluate_instances(out / "predictions" / "instances_gt.json", out / "predictions" / "instances_dt.json")
    return pq, ap


def _pictures(sem: dict, pred_dir: Path, ds: ADE20KDataset, meta: DatasetMeta, grid, out: Path, params) -> None:
    """confusion.png (row-normalised), per_class_iou.png, predictions.png (image | GT | prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seggen.data.images import load_label_png
    from seggen.generators.common import save_grid
    from seggen.io import atomic_path
    from seggen.metrics.semantic import SemanticAccumulator

    n = meta.num_classes
    acc = SemanticAccumulator(n, params.eval.ignore_index, params.eval.reduce_zero_label)
    for s in ds.samples:
        acc.add(load_label_png(pred_dir / f"{s.id}.png"), load_label_png(s.label_path), str(s.label_path))
    conf = acc.confusion[:, :n].astype(float)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    show = n <= 40  # ADE20K's 150 classes: a heat map without tick labels
    fig, ax = plt.subplots(figsize=(6, 5) if show else (9, 8))
    im = ax.imshow(conf, cmap="viridis", vmin=0, vmax=1)
    if show:
        ax.set_xticks(range(n), meta.names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), meta.names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    ious = [(k, v) for k, v in sem["per_class_iou"].items() if v is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(ious)), 3.5))
    ax.bar(range(len(ious)), [v for _, v in ious], color="tab:blue")
    ax.set_xticks(range(len(ious)), [k for k, _ in ious], rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-class IoU, mIoU {sem['mIoU']:.1f}")
    fig.tight_layout()
    with atomic_path(out / "per_class_iou.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    colors = meta.palette().colors
    rows = []
    for image, pred in grid:
        lab = load_label_png(ds.samples[len(rows)].label_path)
        h, w = pred.shape
        r = 64 / max(h, w)
        size = (max(1, round(w * r)), max(1, round(h * r)))
        tiles = [np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
                 np.asarray(Image.fromarray(colors[lab]).resize(size, Image.NEAREST)),
                 np.asarray(Image.fromarray(colors[pred.astype(np.int64) + 1]).resize(size, Image.NEAREST))]
        tile = np.concatenate(tiles, 1)
        rows.append(np.pad(tile, ((0, 64 - tile.shape[0]), (0, 192 - tile.shape[1]), (0, 0))))
    if rows:
        save_grid(rows, out / "predictions.png", scale=2)
