"""Stage `prepare`: make the dataset every later stage reads (bundled benchmark or a real root)."""

from __future__ import annotations

import logging
from pathlib import Path

from seggen.config import Params
from seggen.data import benchmark
from seggen.data.ade20k import ADE20KDataset
from seggen.data.layout import ADE20K, COCO, detect_layout, open_split, splits_of
from seggen.errors import DataError
from seggen.io import check_dir, remove_stale
from seggen.progress import tqdm

log = logging.getLogger(__name__)


def prepare(params: Params, force: bool = False, progress: bool = True) -> Path:
    """Generate the benchmark into data.root (skipped when it is already current), or check a real root."""
    root = Path(params.data.root)
    if params.data.format == "benchmark":
        check_dir(root, "data.root")  # a real dataset or a folder of the user's is never replaced
        benchmark.check_replaceable(root)
        remove_stale(root)  # what a killed run left, even when nothing is to be done
        reason = benchmark.stale_reason(root, params.data.benchmark, params.seed)
        if reason is None and not force:
            log.info("%s is up to date (every file checked)", root)
            return root
        if reason and root.exists() and reason != "rendered with other params":
            log.warning("%s is damaged (%s): rendering it again", root, reason)
        return benchmark.generate(root, params.data.benchmark, params.seed, progress=progress)
    # a real dataset is read where it is, never written: check that every split the params use is
    # there in the layout data.format names, so that a missing one fails now, not after hours of training
    layout = ADE20K if params.data.format == "ade20k" else COCO
    for key, split in used_splits(params).items():
        found = detect_layout(root, split)
        if found is not layout:
            where = layout.images(root, split) if layout is ADE20K else layout.panoptic_json(root, split)
            have = ", ".join(splits_of(root)) or "none"
            raise DataError(
                f"{key}: split {split!r} is not in {root} (expected {where}; data.format {params.data.format}; "
                f"splits there: {have})"
            )
        open_split(root, split)  # indexes and pairs files; raises naming the first problem
    return root


def used_splits(params: Params) -> dict[str, str]:
    """The dataset splits the pipeline reads, by the key that names them."""
    out = {
        "caption.split": params.caption.split,
        "synthesize.split": params.synthesize.split,
        "segmenter.split": params.segmenter.split,
    }
    out.update({f"evaluate.splits[{i}]": s for i, s in enumerate(params.evaluate.splits)})
    return out


def check_dataset(root: str | Path, splits: list[str] | None = None, progress: bool = True) -> dict[str, int]:
    """Load every sample and stop at the first problem, naming the file. Layouts: ADE20K
    (images/SPLIT + annotations/SPLIT, with panoptic/panoptic_SPLIT.json where present) or a COCO root
    (SPLIT/*.jpg + annotations/panoptic_SPLIT.json with its PNG folder, annotations/instances_SPLIT.json).
    -> {what: count} for every part checked."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {'is a file, not' if root.exists() else 'not found; expected'} a dataset directory")
    if (
        not (root / "images").is_dir()
        and (root / "annotations").is_dir()
        and list((root / "annotations").glob("*.json"))
    ):
        return _check_coco_root(root, splits, progress)
    if splits is None:
        img_root = root / "images"
        if not img_root.is_dir():
            raise DataError(
                f"{img_root}: directory not found (expected the ADEChallengeData2016 layout, "
                "or a COCO root with annotations/*.json)"
            )
        splits = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    counts = {}
    for split in splits:
        ds = ADE20KDataset(root, split)
        for _ in tqdm(ds, total=len(ds), desc=f"check {split}", unit="img", disable=not progress):
            pass
        counts[f"{split}: samples"] = len(ds)
        pj = root / "panoptic" / f"panoptic_{split}.json"
        if pj.exists():
            counts[f"{split}: panoptic annotations"] = _check_panoptic(
                pj, pj.with_suffix(""), root / "images" / split, progress, {s.image_path.name for s in ds.samples}
            )
    return counts


def _check_panoptic(
    json_path: Path, png_dir: Path, image_dir: Path, progress: bool, expected: set[str] | None = None
) -> int:
    """Every image of the JSON annotated exactly once (the JSON itself checked by CocoPanoptic), every
    PNG and image loaded. `expected`: the image files of the split, each of which needs an annotation."""
    from seggen.data.coco import CocoPanoptic

    pan = CocoPanoptic(json_path, png_dir, image_dir)
    annotated = {a["image_id"] for a in pan.annotations}
    for iid, im in pan.images.items():
        if iid not in annotated:
            raise DataError(f"{json_path}: image {im['file_name']} (id {iid}) has no annotation")
    if expected is not None:
        listed = {im["file_name"] for im in pan.images.values()}
        missing = sorted(expected - listed)
        if missing:
            raise DataError(f"{json_path}: image {missing[0]} of {image_dir} is not in the JSON")
    for i in tqdm(range(len(pan)), desc=f"check {json_path.name}", unit="img", disable=not progress):
        pan[i]
    return len(pan)


def _check_instances(json_path: Path, image_dir: Path, progress: bool) -> int:
    from seggen.data.coco import CocoInstances

    inst = CocoInstances(json_path, image_dir)
    n = 0
    for i in tqdm(range(len(inst)), desc=f"check {json_path.name}", unit="img", disable=not progress):
        n += len(inst[i][1])
    return n


def _check_coco_root(root: Path, splits: list[str] | None, progress: bool) -> dict[str, int]:
    """annotations/panoptic_SPLIT.json (+ panoptic_SPLIT/ PNGs) and annotations/instances_SPLIT.json,
    with the images in ROOT/SPLIT; panoptic_coco_categories.json checked as a category list."""
    from seggen.data.coco import read_json, validate_categories

    ann = root / "annotations"
    counts: dict[str, int] = {}
    found = False
    for j in sorted(ann.glob("*.json")):
        if j.name == "panoptic_coco_categories.json":
            cats = read_json(j)
            counts[f"{j.name}: categories"] = len(validate_categories({"categories": cats}, j, need_isthing=True))
            continue
        kind, _, split = j.stem.partition("_")
        if kind not in ("panoptic", "instances") or not split or (splits and split not in splits):
            continue
        found = True
        image_dir = root / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image directory of {j.name} not found")
        if kind == "panoptic":
            counts[f"{split}: panoptic annotations"] = _check_panoptic(j, j.with_suffix(""), image_dir, progress)
        else:
            counts[f"{split}: instance annotations"] = _check_instances(j, image_dir, progress)
    if not found:
        raise DataError(
            f"{ann}: no panoptic_SPLIT.json or instances_SPLIT.json"
            + (f" for split(s) {', '.join(splits)}" if splits else "")
        )
    return counts
