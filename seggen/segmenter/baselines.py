"""Trivial baselines that a trained segmenter must clearly beat: the majority class everywhere, and a
colour-only pixel classifier (each pixel's RGB, quantised to 16 levels per channel, mapped to the
class most often seen with that colour on the training split; unseen colours -> majority class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seggen.data.layout import open_split
from seggen.metrics.semantic import SemanticAccumulator


def _bins(image: np.ndarray) -> np.ndarray:
    q = (image >> 4).astype(np.int64)
    return (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]


def fit(root: str | Path, split: str = "training") -> tuple[int, np.ndarray]:
    """-> (majority class 1..N, colour bin -> class 1..N table of 4096 entries)."""
    ds = open_split(root, split)
    n = ds.meta.num_classes
    counts = np.zeros((4096, n + 1), np.int64)
    for img, lab in ds:
        np.add.at(counts, (_bins(img).ravel(), lab.ravel().astype(np.int64)), 1)
    counts[:, 0] = 0  # label 0 is ignored, never predicted
    majority = int(counts.sum(0).argmax())
    table = np.where(counts.sum(1) > 0, counts.argmax(1), majority)
    return majority, table


def evaluate_baselines(
    root: str | Path,
    split: str,
    majority: int,
    table: np.ndarray,
    ignore_index: int = 255,
    reduce_zero_label: bool = True,
) -> dict[str, float]:
    ds = open_split(root, split)
    meta, n = ds.meta, ds.meta.num_classes
    acc_major = SemanticAccumulator(n, ignore_index, reduce_zero_label)
    acc_colour = SemanticAccumulator(n, ignore_index, reduce_zero_label)
    for img, lab in ds:
        acc_major.add(np.full(lab.shape, majority - 1), lab)
        acc_colour.add(table[_bins(img)] - 1, lab)
    return {
        "majority_class": acc_major.metrics(meta.names)["mIoU"],
        "colour_only": acc_colour.metrics(meta.names)["mIoU"],
    }
