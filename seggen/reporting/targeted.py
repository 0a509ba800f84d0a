"""The ablation page's targeted arms: what each regime's plan read, where it put the budget, and how
the weakest classes of the plan fare on the reported splits, against the regime's baseline and the
blind arm trained the same way."""

from __future__ import annotations

import json
from pathlib import Path

from seggen.config import Params
from seggen.errors import DataError


def _class_iou(params: Params, arms: list[str], split: str) -> dict[str, float]:
    """class -> IoU (%) averaged over the arms (seeds) whose evaluation shows the class."""
    per: dict[str, list[float]] = {}
    for arm in arms:
        path = Path(params.evaluate.out) / arm / split / "per_class_iou.json"
        if not path.exists():
            raise DataError(f"{path}: missing; run the evaluate stage for arm {arm}, split {split} first")
        for row in json.loads(path.read_text())["per_class_iou"]:
            if row["iou"] is not None:
                per.setdefault(row["class"], []).append(float(row["iou"]))
    return {c: sum(v) / len(v) for c, v in per.items()}


def _summary(path: Path) -> dict | None:
    """A synthetic dataset's summary.json, or None where the dataset is not there."""
    f = path / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


def _filter_table(classes: list[str], per: dict[str, dict]) -> list[str]:
    """What the targeted datasets' filters kept of `classes` (`per`: strategy -> its summary's
    filter_per_class): the samples showing the class kept / dropped, and the share of its pixels
    dropped (whole samples, and pixels ignored in kept ones); empty where no filter ran."""
    if not per:
        return []
    lines = [
        "What the filter kept of these classes in the targeted data: samples showing the class kept / "
        "dropped, and the share of its labelled pixels dropped.",
        "",
        "| class | " + " | ".join(f"{k} samples | {k} pixels dropped" for k in per) + " |",
        "|---|" + "---:|---:|" * len(per),
    ]
    for c in classes:
        cells = []
        for counts in per.values():
            n = counts.get(c)
            if n is None:
                cells += ["0 / 0", "n/a"]
                continue
            pixels = n["pixels_kept"] + n["pixels_dropped"]
            cells += [f"{n['samples_kept']} / {n['samples_dropped']}", f"{100 * n['pixels_dropped'] / pixels:.0f} %"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def targeted_section(params: Params, groups: dict, splits: tuple[str, str], weakest: int = 3) -> tuple[list, dict]:
    """Markdown lines and a summary per regime of ablation.targeted: the plan's split, reference and
    weakest classes there; their IoU on the reported splits (in-domain, shifted) for the regime's
    reference group, the targeted arms' group and the targeted arms; the synthetic images each made."""
    tg = params.ablation.targeted if params.ablation else None
    if tg is None or not tg.regimes:
        return [], {}
    ref = params.report.reference
    lines = [
        "## Targeted arms: the plan and its weakest classes",
        "",
        "Each regime's plan scores its reference arm on the planning split, the only split a targeted choice "
        "reads; the classes it gets most wrong there get most of the synthetic budget "
        "([docs/synthesis.md](synthesis.md#planning)). Below, those classes on the reported splits: IoU (%), "
        "mean over seeds.",
        "",
    ]
    summary: dict = {}
    for regime in tg.regimes:
        p = params.pick(regime)
        plan_file = Path(p.plan_synthesis.out) / "plan.json"
        if not plan_file.exists():
            raise DataError(f"{plan_file}: missing; run plan_synthesis@{regime} first")
        plan = json.loads(plan_file.read_text())
        shown = sorted((v, c) for c, v in plan["per_class_iou"].items() if v is not None)
        classes = [c for _, c in shown[:weakest]]
        total = sum(plan["class_weights"].values())
        names = [f"{regime}-{ref}", f"{regime}-{tg.group}", f"{regime}-targeted"]
        present = [n for n in names if n in groups]
        iou = {(n, s): _class_iou(params, groups[n].arms, s) for n in present for s in splits}
        blind = [_summary(Path(p.synthesize.out) / k) for k in ("masksyn", "imgsyn")]
        planned_out = Path(params.pick(f"{regime}-targeted").synthesize.out)
        planned = {k: _summary(planned_out / k) for k in ("masksyn", "imgsyn")}
        count = lambda xs: sum(x["samples"] for x in xs if x)  # noqa: E731
        lines += [
            f"### Regime `{regime}`",
            "",
            f"Plan: `{plan['reference']}` on `{plan['split']}` ({plan['num_images']} images, mIoU "
            + (f"{plan['mIoU']:.1f}" if plan["mIoU"] is not None else "n/a")
            + f"). Synthetic images generated: blind {count(blind)}, targeted {count(planned.values())}.",
            "",
            f"| class | `{plan['split']}` IoU | share of the budget | "
            + " | ".join(f"`{n}` {s}" for s in splits for n in present)
            + " |",
            "|---|---:|---:|" + "---:|" * (len(splits) * len(present)),
        ]
        rows = {}
        for c in classes:
            cells = [iou[(n, s)].get(c) for s in splits for n in present]
            rows[c] = {f"{n}/{s}": iou[(n, s)].get(c) for s in splits for n in present}
            share = 100 * plan["class_weights"][c] / total if total else 0.0
            lines.append(
                f"| {c} | {plan['per_class_iou'][c]:.1f} | {share:.0f} % | "
                + " | ".join(f"{v:.1f}" if v is not None else "n/a" for v in cells)
                + " |"
            )
        # only the datasets a filter ran on have the counts
        per = {k: s["filter_per_class"] for k, s in planned.items() if s and s.get("filter_per_class")}
        lines += ["", *_filter_table(classes, per)]
        summary[regime] = {
            "plan_split": plan["split"],
            "reference": plan["reference"],
            "weakest": rows,
            "filtered": {k: {c: counts.get(c) for c in classes} for k, counts in per.items()},
        }
    return lines, summary
