"""The scores every evaluate stage wrote (evaluate.out/ARM/SPLIT/scores.json), for every arm and split."""

from __future__ import annotations

import json
from pathlib import Path

from seggen.config import Params
from seggen.errors import DataError


def collect(params: Params) -> dict[str, dict[str, dict]]:
    """{arm: {split: scores}} for every arm of `arms` and every split of `evaluate.splits`; a missing
    evaluation is an error naming it (the report never shows a partial table as if it were whole)."""
    out: dict[str, dict[str, dict]] = {}
    for arm in params.arms:
        for split in params.evaluate.splits:
            path = Path(params.evaluate.out) / arm / split / "scores.json"
            if not path.exists():
                raise DataError(f"{path}: missing; run the evaluate stage for arm {arm}, split {split} first")
            out.setdefault(arm, {})[split] = json.loads(path.read_text())
    return out
