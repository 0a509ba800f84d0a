"""Semantic-evaluation throughput at ADE20K size: label PNGs on disk -> metrics, one core."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import measured_row, timeit
from seggen.metrics.semantic import SemanticAccumulator, evaluate_semantic_dirs


def run(ade_labels: list[np.ndarray], n: int = 200) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp, "gt"), Path(tmp, "pred")
        gt_dir.mkdir()
        pred_dir.mkdir()
        pairs = []
        for i in range(n):
            gt = np.asarray(Image.fromarray(ade_labels[i % len(ade_labels)]).resize((683, 512), Image.NEAREST))
            pred = np.where(
                rng.random(gt.shape) < 0.1, rng.integers(0, 150, gt.shape), np.maximum(gt.astype(int) - 1, 0)
            )
            pred = pred.astype(np.uint8)
            Image.fromarray(gt).save(gt_dir / f"{i:05d}.png")
            Image.fromarray(pred).save(pred_dir / f"{i:05d}.png")
            pairs.append((pred, gt))
        files = timeit(lambda: evaluate_semantic_dirs(pred_dir, gt_dir, 150, reduce_zero_label=True), repeat=3)

        def compute_only():
            acc = SemanticAccumulator(150, 255, True)
            for p, g in pairs:
                acc.add(p, g)
            acc.metrics()

        arrays = timeit(compute_only, repeat=3)
    body = "\n".join(
        [
            f"{n} pairs of 683x512 label PNGs, 150 classes, reduce_zero_label.",
            "",
            "| path | images/s |",
            "| --- | ---: |",
            f"| `seggen eval semantic` path (PNG decode of prediction and GT + metrics) | {n / files:.0f} |",
            f"| metrics only (arrays in memory) | {n / arrays:.0f} |",
            measured_row("make bench", 2, ", one core"),
        ]
    )
    return body, {"files_img_s": n / files, "arrays_img_s": n / arrays}
