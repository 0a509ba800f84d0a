"""manifest.jsonl: one validated row per synthetic sample, kept or dropped, in dataset order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seggen.errors import DataError, not_found


class Scores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_miou: float | None = None  # filter (a): segmenter on the image vs the mask, percent
    ignored_fraction: float | None = Field(None, ge=0, le=1)  # filter (b): share of labelled pixels set to ignore


class Why(BaseModel):
    """Why a planned sample was drawn (synthesize.plan): its source's weight, and the weights of the
    classes the source's caption names, from the plan of round `round`."""

    model_config = ConfigDict(extra="forbid")
    source_weight: float = Field(ge=0)
    class_weights: dict[str, float]
    round: int = Field(ge=1)


class ManifestRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    strategy: Literal["masksyn", "imgsyn"]
    source_id: str  # the real training image whose caption (and, for imgsyn, mask) was used
    index: int = Field(ge=0)  # copy number for this source
    prompt: str  # the source's caption (Text2Mask's prompt)
    style: str | None = None  # the style phrase (synthesize.styles), or None
    image_prompt: str | None = None  # Mask2Img's prompt: caption + style
    seed: int = Field(ge=0)  # the Text2Mask and Mask2Img noise seeds derive from it (synthesis.sample_seeds)
    generators: dict[str, str]  # model kind -> sha256 of its model directory
    scores: Scores
    kept: bool
    drop_reason: str | None = None
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    plan: Why | None = None  # planned runs only (absent from a blind run's rows)

    def line(self) -> str:
        """The row as a manifest line (a blind row has no `plan` key)."""
        return self.model_dump_json(exclude={"plan"} if self.plan is None else None)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise DataError(not_found(path, "file", "manifest"))
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(ManifestRow.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else e.msg
            raise DataError(f"{path}: line {n}: {msg}") from None
    return rows
