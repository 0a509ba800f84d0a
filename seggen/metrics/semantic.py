"""Semantic segmentation metrics with the semantics of mmsegmentation's IoUMetric.

Per image: with reduce_zero_label, GT 0 -> 255 and 1..N -> 0..N-1 (a stored 255 stays ignored);
pixels whose GT equals ignore_index are dropped; prediction values outside 0..N-1 count as wrong
(they add to no class's predicted area but their GT class's union). Intersections, predicted and
GT areas are summed over the whole dataset first; per-class IoU = I / U and Acc = I / GT area,
NaN where the denominator is 0 (class absent from both); mIoU and mAcc are NaN-means and aAcc is
sum(I) / sum(GT area). All reported in percent, unrounded (mmseg rounds to 2 decimals for display).

One bincount of gt * (N + 1) + pred gives the whole confusion matrix per image, which the
segmentation stage also saves as a picture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seggen.data.images import load_label_png
from seggen.errors import DataError, not_found
from seggen.progress import tqdm


def reduce_zero(gt: np.ndarray) -> np.ndarray:
    g = gt.astype(np.int64)
    g[g == 0] = 255
    g -= 1
    g[g == 254] = 255
    return g


@dataclass
class SemanticAccumulator:
    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False
    # rows: GT class, columns: predicted class, last column: prediction out of range
    confusion: np.ndarray = field(init=False)
    num_images: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise DataError(f"num_classes {self.num_classes}: must be at least 1")
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray, name: str = "") -> None:
        n = self.num_classes
        if pred.shape != gt.shape:
            raise DataError(f"{name}: prediction size {pred.shape[::-1]} does not match ground truth {gt.shape[::-1]}")
        g = reduce_zero(gt) if self.reduce_zero_label else gt.astype(np.int64)
        keep = g != self.ignore_index
        g = g[keep]
        p = pred[keep].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= n):
            bad = int(g.max() if g.max() >= n else g.min())
            raise DataError(
                f"{name}: ground-truth label {bad} out of range for {n} classes (ignore index {self.ignore_index})"
            )
        p = np.where((p < 0) | (p >= n), n, p)
        self.confusion += np.bincount(g * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
        self.num_images += 1

    def metrics(self, class_names: Sequence[str] | None = None) -> dict:
        n = self.num_classes
        names = list(class_names) if class_names else [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} class names for {n} classes")
        inter = np.diag(self.confusion[:, :n]).astype(np.float64)
        area_label = self.confusion.sum(1).astype(np.float64)
        area_pred = self.confusion[:, :n].sum(0).astype(np.float64)
        union = area_pred + area_label - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
            acc = inter / area_label
            aacc = inter.sum() / area_label.sum() if area_label.sum() else math.nan

        def pct(v: float) -> float | None:
            return None if math.isnan(v) else float(v) * 100.0

        def nanmean(v: np.ndarray) -> float:
            return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

        return {
            "mIoU": pct(nanmean(iou)),
            "mAcc": pct(nanmean(acc)),
            "aAcc": pct(aacc),
            "per_class_iou": {nm: pct(v) for nm, v in zip(names, iou)},
            "per_class_acc": {nm: pct(v) for nm, v in zip(names, acc)},
            "num_images": self.num_images,
            "num_classes": n,
            "settings": {
                "num_classes": n,
                "ignore_index": self.ignore_index,
                "reduce_zero_label": self.reduce_zero_label,
            },
        }


def _stems(d: Path, what: str) -> dict[str, Path]:
    if not d.is_dir():
        raise DataError(not_found(d, "directory", what))
    out = {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() == ".png"}
    if not out:
        raise DataError(f"{d}: no PNG files in {what} directory")
    return out


def evaluate_semantic_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Label PNGs with matching stems in two directories -> metrics dict (see module doc)."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, gts = _stems(pred_dir, "prediction"), _stems(gt_dir, "ground-truth")
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    if missing:
        raise DataError(f"{pred_dir}: no prediction for {len(missing)} ground-truth file(s), e.g. {missing[0]}.png")
    if extra:
        raise DataError(f"{pred_dir}: {len(extra)} prediction(s) without ground truth in {gt_dir}, e.g. {extra[0]}.png")
    acc = SemanticAccumulator(num_classes, ignore_index, reduce_zero_label)
    for stem in tqdm(sorted(gts), desc="eval semantic", unit="img", disable=not progress):
        pred = load_label_png(preds[stem])
        gt = load_label_png(gts[stem])
        if pred.shape != gt.shape:
            raise DataError(
                f"{preds[stem]}: size {pred.shape[1]}x{pred.shape[0]} does not match ground truth "
                f"{gts[stem].name} {gt.shape[1]}x{gt.shape[0]}"
            )
        acc.add(pred, gt, name=str(gts[stem]))
    return acc.metrics(class_names)


def evaluate_semantic_arrays(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict:
    acc = SemanticAccumulator(num_classes, ignore_index, reduce_zero_label)
    for i, (pred, gt) in enumerate(pairs):
        acc.add(pred, gt, name=f"pair {i}")
    return acc.metrics(class_names)
