"""Reader for the ADE20K SceneParsing layout (ADEChallengeData2016).

    ROOT/images/{split}/NAME.jpg
    ROOT/annotations/{split}/NAME.png    8-bit labels: 0 = other (ignored), 1..N = classes

Splits are directory names (`training`, `validation`; the bundled benchmark adds
`validation_shift`). Listing checks that every image has its annotation and vice versa;
loading checks decodability, matching sizes and label range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from seggen.data.images import IMAGE_EXTS, load_label_png, load_rgb
from seggen.data.meta import DatasetMeta, load_meta
from seggen.errors import DataError, not_found


@dataclass(frozen=True)
class SemanticSample:
    id: str
    image_path: Path
    label_path: Path


class ADE20KDataset:
    def __init__(self, root: str | Path, split: str, meta: DatasetMeta | None = None):
        self.root = Path(root)
        self.split = split
        self.meta = meta or load_meta(self.root)
        self.image_dir = self.root / "images" / split
        self.label_dir = self.root / "annotations" / split
        self.samples = self._index()

    def _index(self) -> list[SemanticSample]:
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DataError(not_found(d, "directory") + " (expected the ADEChallengeData2016 layout)")
        images = {p.stem: p for p in sorted(self.image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        labels = {p.stem: p for p in sorted(self.label_dir.iterdir()) if p.suffix.lower() == ".png"}
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
