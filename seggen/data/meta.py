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
    id: int = Field(ge=1, le=65535)  # label value in semantic PNGs; category_id in COCO JSON
    name: str
    isthing: bool
    color: tuple[int, int, int]  # colour-map colour (the codec's palette), not image appearance


class DatasetMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    classes: list[ClassInfo]
    ignore_color: tuple[int, int, int] = (0, 0, 0)
    boundary_color: tuple[int, int, int] = (255, 255, 255)
    generator: dict = Field(default_factory=dict)  # params that produced it, for provenance

    @model_validator(mode="after")
    def _contiguous(self) -> "DatasetMeta":
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
            {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color), "supercategory": c.name}
            for c in self.classes
        ]


def ade20k_meta() -> DatasetMeta:
    from seggen.data.ade20k_meta import ADE20K_CLASSES, ADE20K_IS_STUFF, ADE20K_PALETTE

    return DatasetMeta(
        name="ade20k",
        classes=[
            ClassInfo(id=i + 1, name=n, isthing=not s, color=c)
            for i, (n, s, c) in enumerate(zip(ADE20K_CLASSES, ADE20K_IS_STUFF, ADE20K_PALETTE))
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
