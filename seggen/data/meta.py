"""Dataset metadata: class names, which are things, and the colour-map palette.

A dataset root may carry `seggen_meta.json` (the bundled benchmark and synthetic datasets do);
a root without one is taken to be ADE20K-150.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seggen.codec import Palette
from seggen.errors import DataError

META_FILE = "seggen_meta.json"


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: int = Field(ge=1, le=65535)  # label value in semantic PNGs (1..N)
    name: str
    isthing: bool
    color: tuple[int, int, int]  # colour-map colour (the codec's palette), not image appearance
    source_id: int | None = None  # the dataset's own category id where it differs (COCO: 1..200); else `id`

    @property
    def category_id(self) -> int:
        """The category id of this class in the dataset's COCO JSON."""
        return self.id if self.source_id is None else self.source_id

    @property
    def phrase(self) -> str:
        """The name as words for a caption: COCO's "sky-other-merged" -> "sky", "wall-brick" -> "brick wall"."""
        return readable_name(self.name)


_READABLE = {"window-blind": "window blind", "playingfield": "playing field"}


def readable_name(name: str) -> str:
    """COCO panoptic stuff names as words: drop -merged / -other / -stuff, then "wall-brick" -> "brick wall"."""
    name = name.strip()
    if name in _READABLE:
        return _READABLE[name]
    for suffix in ("-merged", "-other", "-stuff"):
        name = name.removesuffix(suffix)
    if "-" in name:
        head, _, tail = name.partition("-")
        name = f"{tail} {head}"
    return name


class DatasetMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    classes: list[ClassInfo]
    ignore_color: tuple[int, int, int] = (0, 0, 0)
    boundary_color: tuple[int, int, int] = (255, 255, 255)
    generator: dict = Field(default_factory=dict)  # params that produced it, for provenance

    @model_validator(mode="after")
    def _contiguous(self) -> DatasetMeta:
        ids = [c.id for c in self.classes]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError("class ids must be 1..N in order")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def thing_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.isthing]

    def palette(self, boundary: bool = False) -> Palette:
        return Palette.create(
            [c.color for c in self.classes],
            self.names,
            ignore_color=self.ignore_color,
            things=self.thing_ids,
            boundary=boundary,
            boundary_color=self.boundary_color,
        )

    def coco_categories(self) -> list[dict]:
        return [
            {
                "id": c.category_id,
                "name": c.name,
                "isthing": int(c.isthing),
                "color": list(c.color),
                "supercategory": c.name,
            }
            for c in self.classes
        ]

    def class_of_category(self) -> dict[int, int]:
        """COCO JSON category id -> class id 1..N."""
        return {c.category_id: c.id for c in self.classes}


def same_label(a: str, b: str) -> bool:
    """Class names equal up to case and whitespace (HF's ADE20K id2label writes "bed ")."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def label_mismatch(model: list[str], dataset: list[str]) -> str | None:
    """None when two class lists agree (same_label); else what differs, naming the first differing id."""
    if len(model) != len(dataset):
        return f"the model has {len(model)} classes, the dataset {len(dataset)}"
    for i, (a, b) in enumerate(zip(model, dataset)):
        if not same_label(a, b):
            return f"class id {i} is {a!r} in the model but {b!r} in the dataset"
    return None


def ade20k_meta() -> DatasetMeta:
    from seggen.data.ade20k_meta import ADE20K_CLASSES, ADE20K_IS_STUFF, ADE20K_PALETTE

    return DatasetMeta(
        name="ade20k",
        classes=[
            ClassInfo(id=i + 1, name=n, isthing=not s, color=c)
            for i, (n, s, c) in enumerate(zip(ADE20K_CLASSES, ADE20K_IS_STUFF, ADE20K_PALETTE))
        ],
    )


def coco_meta(categories: list[dict], name: str = "coco") -> DatasetMeta:
    """Classes 1..N of a COCO panoptic category list, in category-id order (COCO's 133: ids 1..200),
    with their own colours (distinct colours where the list gives none)."""
    import numpy as np

    from seggen.codec import make_distinct

    cats = sorted(categories, key=lambda c: int(c["id"]))
    given = np.array([c.get("color") or (0, 0, 0) for c in cats], np.int64).reshape(-1, 3)
    colors = make_distinct(given, reserved=[(0, 0, 0), (255, 255, 255)]) if len(cats) else given
    return DatasetMeta(
        name=name,
        classes=[
            ClassInfo(
                id=k + 1,
                name=str(c["name"]),
                isthing=bool(c.get("isthing", 0)),
                color=tuple(int(v) for v in colors[k]),
                source_id=int(c["id"]) if int(c["id"]) != k + 1 else None,
            )
            for k, c in enumerate(cats)
        ],
    )


def load_meta(root: str | Path) -> DatasetMeta:
    path = Path(root) / META_FILE
    if not path.exists():
        return ade20k_meta()
    try:
        return DatasetMeta.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path}: {key}: {first['msg']}") from None
