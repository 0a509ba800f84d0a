"""Stage `evaluate`: run a Mask2Former on a split and score it with the reference-exact evaluators.

Splits in the ADE20K layout (ROOT/images/SPLIT + annotations/SPLIT, with ROOT/panoptic/ for the
panoptic task: the bundled benchmark, ADEChallengeData2016, synthetic datasets) or the COCO layout
(ROOT/SPLIT/*.jpg + ROOT/annotations/panoptic_SPLIT.json and PNGs, e.g. COCO val2017).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seggen.data.benchmark import read_domains
from seggen.data.images import id2rgb, load_rgb
from seggen.data.layout import ADE20K, open_split
from seggen.data.meta import label_mismatch
from seggen.errors import DataError
from seggen.io import check_dir, write_json, write_png
from seggen.progress import tqdm
from seggen.segmenter.data import pixel_values
from seggen.segmenter.model import load_model

# the input is padded to at least this: Swin's deepest feature map (stride 32) is then 2x2 or more, which
# Mask2Former's GroupNorm layers need for one image of a few dozen pixels (at 1x1 a group holds one value)
MIN_SIDE = 64


def _inputs(images: list[np.ndarray], size: int | None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize so the short side is `size` (None: as is); pad to a common size (bottom/right), at
    least MIN_SIDE (predictions are cropped back to each image's own pixels)."""
    shapes, arrs = [], []
    for im in images:
        h, w = im.shape[:2]
        shapes.append((h, w))
        if size and min(h, w) != size:
            s = size / min(h, w)
            im = np.asarray(Image.fromarray(im).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
        arrs.append(im)
    H = max(MIN_SIDE, *(a.shape[0] for a in arrs))
    W = max(MIN_SIDE, *(a.shape[1] for a in arrs))
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
    return (
        torch.einsum("qc,qhw->chw", cls[:, :-1], mask)
        .argmax(0)
        .numpy()
        .astype(np.uint8 if cls.shape[1] <= 256 else np.uint16)
    )


def panoptic_from(
    cls: torch.Tensor,
    mask: torch.Tensor,
    things: set[int],
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
) -> tuple[np.ndarray, list[dict]]:
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


def segment(model, images: list[np.ndarray], things: set[int], panoptic: bool, size: int | None, device) -> list[dict]:
    """One batch of images -> per image {"labels"} (+ "panoptic" segment ids and "segments" when
    `panoptic`): what `seggen evaluate` writes and the MLflow model returns."""
    cls, masks = infer(model, images, size, device)
    out = []
    for j in range(len(images)):
        r = {"labels": semantic_from(cls[j], masks[j])}
        if panoptic:
            r["panoptic"], r["segments"] = panoptic_from(cls[j], masks[j], things)
        out.append(r)
    return out


@dataclass
class EvalSet:
    """What evaluation needs of a split, whatever its layout."""

    root: Path
    split: str
    stems: list[str]
    image_paths: list[Path]
    label_paths: list[Path]  # GT semantic PNGs: 0 ignored, 1..N classes (ADE20K convention)
    names: list[str]
    things: set[int]  # 1-based class indices that are things
    colors: np.ndarray  # (N+1) x 3 colour-map palette, 0 = ignore
    cat_ids: list[int]  # class index 0..N-1 -> the dataset's category id (panoptic JSON)
    pan_json: Path | None
    pan_dir: Path | None


def eval_set(
    params, split: str, root: Path | None, out: Path, progress: bool = True, only: list[int] | None = None
) -> EvalSet:
    """The split of `root` (default: data.root) in either layout; `only`: those samples of it (indices in
    id order). The COCO layout has no semantic label PNGs: they are derived from its panoptic annotation
    (void -> 0) and written under OUT/ground_truth/semantic; its classes are the JSON's categories in id order."""
    root = Path(root) if root else Path(params.data.root)
    ds = open_split(root, split)
    meta = ds.meta
    idx = list(range(len(ds))) if only is None else [int(i) for i in only]
    samples = [ds.samples[i] for i in idx]
    if ds.layout is ADE20K:
        labels = [s.label_path for s in samples]
    else:
        gt_dir = out / "ground_truth" / "semantic"
        labels = []
        for i in tqdm(idx, desc="ground truth", unit="img", disable=not progress, dynamic_ncols=True):
            write_png(gt_dir / f"{ds.samples[i].id}.png", ds.load_label(i))
            labels.append(gt_dir / f"{ds.samples[i].id}.png")
    pj = ds.panoptic_json if ds.has_panoptic else None
    return EvalSet(
        root,
        split,
        [s.id for s in samples],
        [s.image_path for s in samples],
        labels,
        meta.names,
        set(meta.thing_ids),
        meta.palette().colors,
        [c.category_id for c in meta.classes],
        pj,
        pj.with_suffix("") if pj else None,
    )


def scores(metrics: dict) -> dict:
    """The headline numbers of a metrics.json (scores.json: what `dvc metrics`, the reports and the CI gate read)."""
    out = {k: metrics["semantic"][k] for k in ("mIoU", "mAcc", "aAcc")}
    if "domains" in metrics:  # a split of drawn domains: the spread over them, and each one
        d = metrics["domains"]
        out.update({f"mIoU_domain_{k}": d[k] for k in ("mean", "std", "worst")})
        out["mIoU_domain"] = {name: v["mIoU"] for name, v in d["per_domain"].items()}
    if "panoptic" in metrics:
        out.update({k: metrics["panoptic"][k] for k in ("PQ", "SQ", "RQ")})
        out.update({k: metrics["instance"][k] for k in ("AP", "AP50", "AP75")})
    return out


RUN_FIGURES = ("images_per_s",)  # measured by this run, not determined by model and data


def evaluate(
    params,
    model_dir: str | Path,
    split: str,
    out: str | Path,
    root: str | Path | None = None,
    task: str | None = None,
    size: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    key: str = "--out",
) -> dict:
    """Predict every image of `root`/`split` (default: data.root; ADE20K or COCO layout) and write the
    whole evaluation into `out` (named `key` in messages): predictions/, scores.json, per_class_iou.json,
    confusion.png, per_class_iou.png, predictions.png, and metrics.json last -- present only for a
    complete evaluation. A failed one leaves the previous files or none (built under a temp name);
    `out` is replaced only if seggen wrote it."""
    from seggen.io import staged_files

    out = check_dir(out, key)  # before any compute
    (out / "metrics.json").unlink(missing_ok=True)
    with staged_files(out, "evaluate", key) as tmp:
        metrics = _predict_and_score(params, model_dir, split, tmp, root, task, size, batch_size, progress)
        write_json(tmp / "scores.json", scores(metrics))
        per_class = [{"class": c, "iou": v} for c, v in metrics["semantic"]["per_class_iou"].items() if v is not None]
        write_json(tmp / "per_class_iou.json", {"per_class_iou": per_class}, indent=None)
    # metrics.json is a cached DVC output: only what the model and data determine (the run's speed
    # goes to MLflow and the caller, not into a file whose hash would change on every run)
    write_json(out / "metrics.json", {k: v for k, v in metrics.items() if k not in RUN_FIGURES})
    return metrics


def _predict_and_score(
    params,
    model_dir: str | Path,
    split: str,
    out: Path,
    root: str | Path | None,
    task: str | None,
    size: int | None,
    batch_size: int,
    progress: bool,
) -> dict:
    """Predictions, pictures and metrics of one split, written under `out`."""
    from seggen.metrics.semantic import evaluate_semantic_dirs

    out = Path(out)
    es = eval_set(params, split, Path(root) if root else None, out, progress)
    model, info = load_model(model_dir)
    task = task or info.get("task", params.segmenter.task)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    differ = label_mismatch(names, es.names)
    if differ:
        raise DataError(f"{model_dir}: its classes are not those of {es.root}: {differ}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    pred_dir = out / "predictions" / "semantic"
    do_pan = task == "panoptic"
    if do_pan and es.pan_json is None:
        raise DataError(f"{es.root}: panoptic evaluation needs the COCO panoptic layout (panoptic_{split}.json)")
    pan_annotations, detections = [], []
    grid = []
    doms = read_domains(es.root, split)  # a split of drawn domains: the picture shows each domain's first image
    shown = {d["images"][0] for d in doms[:8]} if doms else set(es.stems[:8])
    t0 = time.perf_counter()
    n = len(es.stems)
    bar = tqdm(total=n, desc=f"evaluate {split}", unit="img", disable=not progress, dynamic_ncols=True)
    for b in range(0, n, batch_size):
        idx = list(range(b, min(n, b + batch_size)))
        images = [load_rgb(es.image_paths[i]) for i in idx]
        for j, (i, res) in enumerate(zip(idx, segment(model, images, es.things, do_pan, size, device))):
            stem = es.stems[i]
            sem = res["labels"]
            write_png(pred_dir / f"{stem}.png", sem)
            if stem in shown:
                grid.append((images[j], sem, es.label_paths[i]))
            if do_pan:
                ids, segs = res["panoptic"], res["segments"]
                write_png(out / "predictions" / "panoptic" / f"{stem}.png", id2rgb(ids.astype(np.uint32)))
                pan_annotations.append(
                    {
                        "file_name": f"{stem}.png",
                        "stem": stem,
                        "segments_info": [
                            {"id": s["id"], "category_id": es.cat_ids[s["category_id"] - 1]} for s in segs
                        ],
                    }
                )
                for s in segs:
                    if s["isthing"]:
                        detections.append(
                            {
                                "stem": stem,
                                "category_id": es.cat_ids[s["category_id"] - 1],
                                "score": s["score"],
                                "mask": ids == s["id"],
                            }
                        )
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    metrics = {"split": split, "root": str(es.root), "task": task, "model": str(model_dir), "images_per_s": n / seconds}
    gt_dir = es.label_paths[0].parent
    metrics["semantic"] = evaluate_semantic_dirs(
        pred_dir, gt_dir, len(es.names), params.eval.ignore_index, params.eval.reduce_zero_label, es.names
    )
    if doms:
        metrics["domains"] = domain_scores(doms, pred_dir, es, params)
    if do_pan:
        metrics["panoptic"], metrics["instance"] = _panoptic_and_instances(
            es.pan_json, es.pan_dir, pan_annotations, detections, out
        )
    _pictures(metrics["semantic"], pred_dir, es, grid, out, params)
    return metrics


def domain_scores(domains: list[dict], pred_dir: Path, es: EvalSet, params) -> dict:
    """mIoU of every drawn domain of the split on its own images, and over the K domains their mean,
    standard deviation (population, ddof 0) and the worst one. The split's pooled mIoU (metrics
    "semantic") weighs the domains by their pixels; this weighs each domain once."""
    from seggen.data.images import load_label_png
    from seggen.metrics.semantic import SemanticAccumulator

    label_of = dict(zip(es.stems, es.label_paths))
    per = {}
    for d in domains:
        acc = SemanticAccumulator(len(es.names), params.eval.ignore_index, params.eval.reduce_zero_label)
        for stem in d["images"]:
            if stem not in label_of:
                raise DataError(f"{es.root}: domain {d['name']} lists {stem}, which split {es.split} lacks")
            acc.add(load_label_png(pred_dir / f"{stem}.png"), load_label_png(label_of[stem]), stem)
        m = acc.metrics(es.names)
        per[d["name"]] = {
            "mIoU": m["mIoU"],
            "mAcc": m["mAcc"],
            "aAcc": m["aAcc"],
            "images": len(d["images"]),
            "distance_to_labelled": d["distance_to_labelled"],
        }
    v = np.asarray([x["mIoU"] for x in per.values()], np.float64)
    worst = min(per, key=lambda k: per[k]["mIoU"])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "worst": per[worst]["mIoU"],
        "worst_domain": worst,
        "per_domain": per,
    }


def _panoptic_and_instances(
    gt_json: Path, gt_dir: Path, annotations: list[dict], detections: list[dict], out: Path
) -> tuple[dict, dict]:
    from pycocotools import mask as mask_utils

    from seggen.data.coco import CocoPanoptic, rle_encode
    from seggen.metrics.instance import evaluate_instances
    from seggen.metrics.panoptic import evaluate_panoptic

    gt = json.loads(gt_json.read_text())
    by_stem = {Path(a["file_name"]).stem: a for a in gt["annotations"]}
    pred = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    for a in annotations:
        g = by_stem.get(a["stem"])
        if g is None:
            raise DataError(f"{gt_json}: no annotation for {a['stem']}")
        pred["annotations"].append(
            {"image_id": g["image_id"], "file_name": a["file_name"], "segments_info": a["segments_info"]}
        )
    write_json(out / "predictions" / "panoptic.json", pred, indent=None)
    pq = evaluate_panoptic(gt_json, gt_dir, out / "predictions" / "panoptic.json", out / "predictions" / "panoptic")

    # instances: GT things from the panoptic annotation (crowd kept as iscrowd), detections as RLE

    pan = CocoPanoptic(gt_json, gt_dir)
    cats = {c["id"]: c for c in gt["categories"]}
    inst_gt = {
        "images": gt["images"],
        "categories": [c for c in gt["categories"] if c.get("isthing")],
        "annotations": [],
    }
    for i, a in enumerate(pan.annotations):
        ids, segs = pan.load_ids(i)
        for s in segs:
            if not cats[s["category_id"]].get("isthing"):
                continue
            rle = rle_encode(ids == s["id"])
            inst_gt["annotations"].append(
                {
                    "id": len(inst_gt["annotations"]) + 1,
                    "image_id": a["image_id"],
                    "category_id": s["category_id"],
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": list(map(float, mask_utils.toBbox(rle))),
                    "iscrowd": int(s.get("iscrowd", 0)),
                }
            )
    dts = []
    for d in detections:
        rle = rle_encode(d["mask"])
        dts.append(
            {
                "image_id": by_stem[d["stem"]]["image_id"],
                "category_id": d["category_id"],
                "segmentation": rle,
                "score": d["score"],
            }
        )
    write_json(out / "predictions" / "instances_gt.json", inst_gt, indent=None)
    write_json(out / "predictions" / "instances_dt.json", dts, indent=None)
    if not inst_gt["annotations"]:  # no thing in the ground truth: AP is undefined
        ap = {
            "AP": None,
            "AP50": None,
            "AP75": None,
            "APs": None,
            "APm": None,
            "APl": None,
            "per_class": {},
            "note": "no thing instances in the ground truth",
        }
    else:
        ap = evaluate_instances(out / "predictions" / "instances_gt.json", out / "predictions" / "instances_dt.json")
    return pq, ap


def _pictures(sem: dict, pred_dir: Path, es: EvalSet, grid, out: Path, params) -> None:
    """confusion.png (row-normalised), per_class_iou.png, predictions.png (image | GT | prediction)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    from seggen.data.images import load_label_png
    from seggen.io import atomic_path, save_grid
    from seggen.metrics.semantic import SemanticAccumulator

    n = len(es.names)
    acc = SemanticAccumulator(n, params.eval.ignore_index, params.eval.reduce_zero_label)
    for stem, lp in zip(es.stems, es.label_paths):
        acc.add(load_label_png(pred_dir / f"{stem}.png"), load_label_png(lp), str(lp))
    conf = acc.confusion[:, :n].astype(float)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    show = n <= 40  # ADE20K's 150 classes: a heat map without tick labels
    fig = Figure(figsize=(6, 5) if show else (9, 8))
    ax = fig.subplots()
    im = ax.imshow(conf, cmap="viridis", vmin=0, vmax=1)
    if show:
        ax.set_xticks(range(n), es.names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), es.names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    ious = [(k, v) for k, v in sem["per_class_iou"].items() if v is not None]
    fig = Figure(figsize=(max(5, 0.25 * len(ious)), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(ious)), [v for _, v in ious], color="tab:blue")
    ax.set_xticks(range(len(ious)), [k for k, _ in ious], rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-class IoU, mIoU {sem['mIoU']:.1f}")
    fig.tight_layout()
    with atomic_path(out / "per_class_iou.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    colors = es.colors
    rows = []
    for image, pred, label_path in grid:
        lab = load_label_png(label_path)
        h, w = pred.shape
        r = 64 / max(h, w)
        size = (max(1, round(w * r)), max(1, round(h * r)))
        tiles = [
            np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(colors[lab]).resize(size, Image.NEAREST)),
            np.asarray(Image.fromarray(colors[pred.astype(np.int64) + 1]).resize(size, Image.NEAREST)),
        ]
        tile = np.concatenate(tiles, 1)
        rows.append(np.pad(tile, ((0, 64 - tile.shape[0]), (0, 192 - tile.shape[1]), (0, 0))))
    if rows:
        save_grid(rows, out / "predictions.png", scale=2)
