"""Training data for Mask2Former: real and synthetic datasets in the ADE20K (+ COCO panoptic) layout,
the strategy's sampling of them, augmentation, and Mask2Former targets.

Every random choice of a training step (which samples, which are replaced by synthetic ones,
scale, crop, flip) comes from a generator keyed on (seed, step), so a resumed run repeats an
uninterrupted one.

Targets (as detectron2's mask formers build them): semantic -- one binary mask per class present,
class index label-1; panoptic -- one binary mask per non-crowd segment, class category_id-1.
Label 0 (ADE "other", and pixels the synthesis filter marked as ignore) belongs to no mask. Pixels
a filter set aside (the dataset's ignore/SPLIT/ID.png) also travel as `Item.ignore`, which the loss
leaves out (seggen.segmenter.model.exclude_ignored_pixels): label 0 alone would make them negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen.data.images import load_label_png
from seggen.data.layout import ignore_dir, open_split
from seggen.data.meta import DatasetMeta
from seggen.errors import DataError
from seggen.training import seed_for

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255  # ImageNet statistics (pretrained Swin)
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@dataclass
class Item:
    image: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW ADE labels (0 = ignore)
    ids: np.ndarray | None  # HxW panoptic segment ids (0 = void), panoptic task only
    segments: list[dict] | None
    ignore: np.ndarray | None = None  # HxW bool: pixels a filter set aside (synthetic data only)


class SegSource:
    """One dataset directory (real or synthetic) and split, optionally with its panoptic layout."""

    def __init__(self, root: str | Path, split: str, panoptic: bool, name: str = ""):
        self.root, self.split, self.name = Path(root), split, name or Path(root).name
        self.ds = open_split(self.root, split)
        self.meta: DatasetMeta = self.ds.meta
        self.ids = self.ds.ids
        self.panoptic = panoptic
        d = ignore_dir(self.root, split)
        self.ignore_dir = d if d.is_dir() else None
        if panoptic:
            if not self.ds.has_panoptic:
                raise DataError(
                    f"{self.root}: the panoptic task needs a panoptic annotation of {split} "
                    f"({self.ds.layout.panoptic_json(self.root, split)})"
                )
            self.ds.segments(0)  # indexes the annotation: a missing one fails here, before training

    def __len__(self) -> int:
        return len(self.ids)

    def shape(self, i: int) -> tuple[int, int]:
        """(height, width) of sample i as load_rgb reads it, from its header (no pixels decoded)."""
        with Image.open(self.ds.samples[i].image_path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the axes
                w, h = h, w
        return h, w

    def load(self, i: int) -> Item:
        image, labels = self.ds[i]
        ids = segments = None
        if self.panoptic:
            ids, segments = self.ds.load_panoptic(i)
        ignore = None
        if self.ignore_dir is not None and (path := self.ignore_dir / f"{self.ids[i]}.png").exists():
            ignore = load_label_png(path) > 0
            if ignore.shape != labels.shape:
                raise DataError(f"{path}: size {ignore.shape[::-1]} does not match its annotation {labels.shape[::-1]}")
        return Item(image, labels, ids, segments, ignore)


def real_subset(seed: int, total: int, n: int | None) -> np.ndarray:
    """Indices (sorted) of the low-data regime's real images: a subset of n drawn with the global seed.
    Synthesis with synthesize.real_subset draws the same one."""
    idx = np.arange(total)
    if n and n < total:
        rng = np.random.default_rng(seed_for(seed, "segmenter", "real_subset"))
        idx = np.sort(rng.choice(total, n, replace=False))
    return idx


def holdout_fold(seed: int, total: int, share: float) -> np.ndarray:
    """Indices (sorted) of the training split's held-out fold: round(share x total) images (at least one
    for a share > 0), drawn with the global seed; the arms with segmenter.holdout train without them and
    plan_synthesis (split `holdout`) scores on them."""
    if not share:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed_for(seed, "segmenter", "holdout"))
    return np.sort(rng.choice(total, min(total - 1, max(1, round(share * total))), replace=False))


def holdout_record(seed: int, share: float, fold: np.ndarray) -> dict:
    """What a segmenter trained without `fold` records of it (seggen_segmenter.json), and what the plan
    compares before scoring it there."""
    return {"seed": seed, "share": share, "images": len(fold)}


def synthetic_by_source(src: SegSource) -> dict[str, list[int]]:
    """Synthetic dataset: real source image id -> indices of its kept samples (from manifest.jsonl)."""
    from seggen.synthesis.manifest import read_manifest

    man = src.root / "manifest.jsonl"
    if not man.exists():
        return {}

    rows = {r.id: r.source_id for r in read_manifest(man) if r.kept}
    out: dict[str, list[int]] = {}
    for i, sid in enumerate(src.ids):
        if sid in rows:
            out.setdefault(rows[sid], []).append(i)
    return out


def paste_real(item: Item, real: Item, labels: np.ndarray, things: frozenset[int] = frozenset()) -> Item:
    """The synthetic `item` with `real`'s pixels of the classes `labels` (1..N) pasted over it: image,
    labels, no ignored pixel there, and in the panoptic task their segments -- a thing segment under a
    new id above the item's, a stuff segment (category not in `things`) merged into the item's segment of
    that category where it has one, as a panoptic annotation holds one segment per stuff class. `real` is
    first resized to the item's size (bilinear image, nearest labels), as copy-paste augmentation does."""
    if real.labels.shape != item.labels.shape:
        real = resized(real, item.labels.shape)
    panoptic = item.ids is not None and real.ids is not None
    wanted = {int(c) for c in labels}
    if panoptic:  # the region is the segments of those classes (the semantic map may disagree at their edges)
        chosen = [sg for sg in real.segments or [] if int(sg["category_id"]) in wanted]
        m = np.isin(real.ids, [sg["id"] for sg in chosen])
    else:
        m = np.isin(real.labels, labels)
    if not m.any():
        return item
    image, lab = item.image.copy(), item.labels.copy()
    image[m], lab[m] = real.image[m], real.labels[m]
    ignore = None
    if item.ignore is not None:
        ignore = item.ignore.copy()
        ignore[m] = False
    ids, segments = item.ids, item.segments
    if panoptic:
        off = int(item.ids.max()) + 1  # new ids above every id of the item
        ids, segments = item.ids.astype(np.int64), list(item.segments or [])
        stuff = {int(sg["category_id"]): int(sg["id"]) for sg in segments if int(sg["category_id"]) not in things}
        for sg in chosen:
            where = m & (real.ids == sg["id"])
            if not where.any():
                continue
            cat = int(sg["category_id"])
            if cat not in things and cat in stuff:
                ids[where] = stuff[cat]
            else:
                ids[where] = int(sg["id"]) + off
                segments.append(dict(sg, id=int(sg["id"]) + off))
    return Item(image, lab, ids, segments, ignore)


@dataclass(frozen=True)
class Augmentation:
    """One sample's augmentation, drawn before its pixels are read: resize to `size` (h, w), crop at
    (y, x), flip. Drawing it needs only the sample's size, so every process can draw the whole global
    batch's and read only its own share."""

    size: tuple[int, int]
    y: int
    x: int
    flip: bool


def draw_augmentation(
    shape: tuple[int, int], rng: np.random.Generator, crop: int, scale: tuple[float, float], flip: bool
) -> Augmentation:
    """Random resize (of the short side to crop x U(scale)), random crop (of the image padded to the crop), flip."""
    h, w = shape
    s = crop * rng.uniform(*scale) / min(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    y = int(rng.integers(0, max(nh, crop) - crop + 1))
    x = int(rng.integers(0, max(nw, crop) - crop + 1))
    return Augmentation((nh, nw), y, x, bool(flip and rng.random() < 0.5))


def resized(item: Item, size: tuple[int, int]) -> Item:
    """The item at `size` (h, w): the image bilinear, labels, segment ids and ignore mask nearest."""
    h, w = size

    def nearest(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST))

    return Item(
        np.asarray(Image.fromarray(item.image).resize((w, h), Image.BILINEAR)),
        nearest(item.labels),
        nearest(item.ids.astype(np.int32)) if item.ids is not None else None,
        item.segments,
        nearest(item.ignore),
    )


def apply_augmentation(item: Item, a: Augmentation, crop: int) -> Item:
    """The augmentation's resize, padding (image: the mean colour, labels: ignore), crop and flip."""
    nh, nw = a.size
    r = resized(item, a.size)
    image, labels, ids, ignore = r.image, r.labels, r.ids, r.ignore
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        image[nh:, :] = MEAN.astype(np.uint8)
        image[:, nw:] = MEAN.astype(np.uint8)
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=0)
        if ids is not None:
            ids = np.pad(ids, ((0, ph), (0, pw)), constant_values=0)
        if ignore is not None:
            ignore = np.pad(ignore, ((0, ph), (0, pw)), constant_values=False)
    sl = (slice(a.y, a.y + crop), slice(a.x, a.x + crop))
    image, labels = image[sl], labels[sl]
    ids = ids[sl] if ids is not None else None
    ignore = ignore[sl] if ignore is not None else None
    if a.flip:
        image, labels = image[:, ::-1], labels[:, ::-1]
        ids = ids[:, ::-1] if ids is not None else None
        ignore = ignore[:, ::-1] if ignore is not None else None
    return Item(
        np.ascontiguousarray(image),
        np.ascontiguousarray(labels),
        np.ascontiguousarray(ids) if ids is not None else None,
        item.segments,
        np.ascontiguousarray(ignore) if ignore is not None else None,
    )


def augment(item: Item, rng: np.random.Generator, crop: int, scale: tuple[float, float], flip: bool) -> Item:
    """Draw an augmentation for the item and apply it."""
    return apply_augmentation(item, draw_augmentation(item.labels.shape, rng, crop, scale, flip), crop)


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    x = (np.stack(images).astype(np.float32) - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def ignore_maps(items: list[Item]) -> torch.Tensor | None:
    """B x H x W bool of the pixels set aside in a batch of augmented items; None when none has any
    (then the loss is the published one, bit for bit)."""
    if all(it.ignore is None for it in items):
        return None
    return torch.from_numpy(
        np.stack([it.ignore if it.ignore is not None else np.zeros(it.labels.shape, bool) for it in items])
    )


def targets(item: Item, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mask_labels n x H x W float, class_labels n int64)."""
    masks, classes = [], []
    if task == "semantic":
        for c in np.unique(item.labels):
            if c == 0:
                continue
            masks.append(item.labels == c)
            classes.append(int(c) - 1)
    else:
        for s in item.segments or []:
            if s.get("iscrowd", 0):
                continue
            m = item.ids == s["id"]
            if m.any():
                masks.append(m)
                classes.append(int(s["category_id"]) - 1)
    h, w = item.labels.shape
    mask_t = torch.from_numpy(np.stack(masks)).float() if masks else torch.zeros((0, h, w))
    # int64: uint8 class labels are taken for a boolean mask by the matcher, which then fails
    return mask_t, torch.tensor(classes, dtype=torch.int64)
