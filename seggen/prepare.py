"""Stage `prepare`: make the dataset every later stage reads (bundled benchmark or a real root)."""

from __future__ import annotations

import logging
from pathlib import Path

from seggen.config import Params
from seggen.data import benchmark
from seggen.data.ade20k import ADE20KDataset
from seggen.errors import DataError

log = logging.getLogger(__name__)


def prepare(params: Params, force: bool = False, progress: bool = True) -> Path:
    """Generate the benchmark into data.root (skipped when it is already current), or check a real root."""
    root = Path(params.data.root)
    if params.data.format == "benchmark":
        if not force and benchmark.is_current(root, params.data.benchmark, params.seed):
            log.info("%s is up to date", root)
            return root
        return benchmark.generate(root, params.data.benchmark, params.seed, progress=progress)
    if params.data.format == "ade20k":
        for split in ("training", "validation"):
            ADE20KDataset(root, split)  # indexes and pairs files; raises naming the first problem
        return root
    raise DataError(f"data.format: {params.data.format} is not supported by prepare")


def check_dataset(root: str | Path, splits: list[str] | None = None, progress: bool = True) -> dict[str, int]:
    """Load every sample of every split (and the panoptic layout where present); raise on the first problem."""
    from tqdm import tqdm

    from seggen.data.coco import CocoPanoptic

    root = Path(root)
    if splits is None:
        img_root = root / "images"
        if not img_root.is_dir():
            raise DataError(f"{img_root}: directory not found (expected the ADEChallengeData2016 layout)")
        splits = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    counts = {}
    for split in splits:
        ds = ADE20KDataset(root, split)
        for _ in tqdm(ds, total=len(ds), desc=f"check {split}", unit="img", disable=not progress):
            pass
        pj = root / "panoptic" / f"panoptic_{split}.json"
        if pj.exists():
            pan = CocoPanoptic(pj, image_dir=root / "images" / split)
            for i in tqdm(range(len(pan)), desc=f"check panoptic {split}", unit="img", disable=not progress):
                pan[i]
        counts[split] = len(ds)
    return counts
