"""Where a split's files live in the two layouts seggen reads and writes.

    ade20k   ROOT/images/SPLIT/*.jpg, ROOT/annotations/SPLIT/*.png (labels: 0 = ignored, 1..N),
             ROOT/panoptic/panoptic_SPLIT.json + panoptic_SPLIT/*.png where instances exist
             (ADEChallengeData2016, the bundled benchmark, synthetic datasets of such a source)
    coco     ROOT/SPLIT/*.jpg, ROOT/annotations/panoptic_SPLIT.json + panoptic_SPLIT/*.png
             (COCO 2017 panoptic, synthetic datasets of a COCO source); semantic labels are derived
             from the panoptic annotation, category ids are the dataset's own (COCO: 1..200)

Either layout may hold ROOT/ignore/SPLIT/ID.png (`ignore_dir`): pixels a synthesis filter set aside
(label 0 / void in the annotation), which the segmenter's loss leaves out instead of taking them for
"no object here" (seggen.segmenter.model.exclude_ignored_pixels).

`open_split(root, split)` reads either, behind one interface (seggen.data.ade20k.ADE20KDataset,
seggen.data.coco.CocoSplit): samples (id, image path), meta (classes 1..N), load_label, and
load_panoptic / segments where the split has a panoptic annotation, with category ids 1..N.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seggen.errors import DataError


@dataclass(frozen=True)
class Layout:
    name: str

    def images(self, root: Path, split: str) -> Path:
        return Path(root) / ("images" if self.name == "ade20k" else "") / split

    def labels(self, root: Path, split: str) -> Path | None:
        return Path(root) / "annotations" / split if self.name == "ade20k" else None

    def panoptic_json(self, root: Path, split: str) -> Path:
        return Path(root) / ("panoptic" if self.name == "ade20k" else "annotations") / f"panoptic_{split}.json"

    def panoptic_pngs(self, root: Path, split: str) -> Path:
        return self.panoptic_json(root, split).with_suffix("")


ADE20K = Layout("ade20k")
COCO = Layout("coco")


def ignore_dir(root: str | Path, split: str) -> Path:
    """Where a dataset keeps the masks (0/255 PNGs, one per sample that has any) of the pixels its
    pixel filter set aside; the same place in both layouts."""
    return Path(root) / "ignore" / split


def detect_layout(root: str | Path, split: str) -> Layout | None:
    root = Path(root)
    if ADE20K.images(root, split).is_dir():
        return ADE20K
    if COCO.panoptic_json(root, split).is_file():
        return COCO
    return None


def open_split(root: str | Path, split: str, meta=None):
    """The split in whichever layout `root` has; an error naming both places it looked otherwise."""
    root = Path(root)
    layout = detect_layout(root, split)
    if layout is ADE20K:
        from seggen.data.ade20k import ADE20KDataset

        return ADE20KDataset(root, split, meta)
    if layout is COCO:
        from seggen.data.coco import CocoSplit

        return CocoSplit(root, split)
    if not root.is_dir():
        raise DataError(f"{root}: {'is a file, not' if root.exists() else 'not found; expected'} a dataset directory")
    raise DataError(
        f"{root}: no split {split!r} in the ADE20K layout ({ADE20K.images(root, split)}) "
        f"or the COCO layout ({COCO.panoptic_json(root, split)})"
    )


def splits_of(root: str | Path) -> list[str]:
    """The splits a dataset root holds, in either layout."""
    root = Path(root)
    if (root / "images").is_dir():
        return sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    ann = root / "annotations"
    return (
        sorted(
            p.stem[len("panoptic_") :]
            for p in ann.glob("panoptic_*.json")
            if (root / p.stem[len("panoptic_") :]).is_dir()
        )
        if ann.is_dir()
        else []
    )
