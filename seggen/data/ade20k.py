"""Reader for the ADE20K SceneParsing layout (ADEChallengeData2016).

    ROOT/images/{split}/NAME.jpg
    ROOT/annotations/{split}/NAME.png    8-bit labels: 0 = other (ignored), 1..N = classes

Splits are directory names (`training`, `validation`; the bundled benchmark adds
`tuning`, `validation_shift` and `tuning_shift`). Listing checks that every image has its annotation and vice versa;
loading checks decodability, matching sizes and label range.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seggen.data.images import IMAGE_EXTS, load_label_png, load_rgb
from seggen.data.layout import ADE20K
from seggen.data.meta import DatasetMeta, load_meta
from seggen.errors import DataError, not_found


@dataclass(frozen=True)
class SemanticSample:
    id: str
    image_path: Path
    label_path: Path


class ADE20KDataset:
    """A split in the ADE20K layout (seggen.data.layout), with its panoptic annotation where present
    (ROOT/panoptic/panoptic_SPLIT.json, category ids = class ids 1..N)."""

    layout = ADE20K

    def __init__(self, root: str | Path, split: str, meta: DatasetMeta | None = None):
        self.root = Path(root)
        self.split = split
        self.meta = meta or load_meta(self.root)
        self.image_dir = self.root / "images" / split
        self.label_dir = self.root / "annotations" / split
        self.samples = self._index()
        self._pan = None

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def panoptic_json(self) -> Path:
        return ADE20K.panoptic_json(self.root, self.split)

    @property
    def has_panoptic(self) -> bool:
        return self.panoptic_json.is_file()

    def _panoptic(self):
        if self._pan is None:
            from seggen.data.coco import CocoPanoptic

            if not self.has_panoptic:
                raise DataError(f"{self.panoptic_json}: not found (instances need the panoptic layout in {self.root})")
            pan = CocoPanoptic(self.panoptic_json)
            index = {Path(a["file_name"]).stem: k for k, a in enumerate(pan.annotations)}
            missing = [i for i in self.ids if i not in index]
            if missing:
                raise DataError(f"{self.panoptic_json}: no panoptic annotation for {missing[0]}")
            self._pan = (pan, index)
        return self._pan

    def segments(self, i: int) -> list[dict]:
        pan, index = self._panoptic()
        return pan.annotations[index[self.samples[i].id]]["segments_info"]

    def load_panoptic(self, i: int) -> tuple[np.ndarray, list[dict]]:
        """-> (HxW segment ids, 0 = void; segments_info with category_id = class id)."""
        pan, index = self._panoptic()
        return pan.load_ids(index[self.samples[i].id])

    def panoptic_png(self, i: int) -> Path:
        pan, index = self._panoptic()
        return pan.png_dir / pan.annotations[index[self.samples[i].id]]["file_name"]

    def load_image(self, i: int) -> np.ndarray:
        return load_rgb(self.samples[i].image_path)

    def _index(self) -> list[SemanticSample]:
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DataError(not_found(d, "directory") + " (expected the ADEChallengeData2016 layout)")
        # names sorted as strings: Path comparisons cost seconds over a million files
        images = {p.stem: p for p in _listing(self.image_dir) if p.suffix.lower() in IMAGE_EXTS}
        labels = {p.stem: p for p in _listing(self.label_dir) if p.suffix.lower() == ".png"}
        for stem, p in images.items():
            if stem not in labels:
                raise DataError(f"{p}: no annotation partner (expected {self.label_dir / (stem + '.png')})")
        for stem, p in labels.items():
            if stem not in images:
                raise DataError(f"{p}: no image partner (expected {self.image_dir / (stem + '.jpg')})")
        if not images:
            raise DataError(f"{self.image_dir}: no images")
        return [SemanticSample(s, images[s], labels[s]) for s in sorted(images)]

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, i: int) -> np.ndarray:
        s = self.samples[i]
        label = load_label_png(s.label_path)
        top = int(label.max()) if label.size else 0
        if top > self.meta.num_classes:
            raise DataError(
                f"{s.label_path}: label value {top} out of range (0..{self.meta.num_classes} for {self.meta.name})"
            )
        return label.astype(np.uint8) if self.meta.num_classes < 256 else label

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.samples[i]
        image = load_rgb(s.image_path)
        label = self.load_label(i)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{s.label_path}: size {label.shape[1]}x{label.shape[0]} does not match image "
                f"{s.image_path.name} {image.shape[1]}x{image.shape[0]}"
            )
        return image, label

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]


def _listing(directory: Path) -> list[Path]:
    """The directory's entries in name order (as sorted(directory.iterdir()) gives them)."""
    return [directory / name for name in sorted(os.listdir(directory))]
