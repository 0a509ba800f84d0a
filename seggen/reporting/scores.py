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


DOMAIN_KEYS = ("mIoU_domain_mean", "mIoU_domain_std", "mIoU_domain_worst")


def gate_scores(scores: dict, split: str) -> dict[str, float]:
    """What the CI gate and the registry's references compare, from one scores.json: {split: mIoU}, and
    for a split of drawn domains also {split.domain_mean: the mean mIoU over its domains}."""
    out = {split: round(float(scores["mIoU"]), 2)}
    if scores.get("mIoU_domain_mean") is not None:
        out[f"{split}.domain_mean"] = round(float(scores["mIoU_domain_mean"]), 2)
    return out


def decision_split(params: Params) -> str:
    """The in-domain split that choices read (which arm is champion): `tuning` where it is evaluated;
    without it (real datasets, the CI profile) the first of evaluate.splits."""
    splits = list(params.evaluate.splits)
    return "tuning" if "tuning" in splits else splits[0]
