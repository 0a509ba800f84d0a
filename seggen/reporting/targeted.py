"""The ablation page's targeted arms: what each regime's plan read, where it put the budget, and how
the weakest classes of the plan fare on the reported splits, against the regime's baseline and the
blind arm trained the same way."""

from __future__ import annotations

import json
from pathlib import Path

from seggen.config import Params
from seggen.config.experiments import targeted_name, targeted_rounds
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


def _cost(outs: list[Path]) -> tuple[float | None, set[str], bool]:
    """The wall seconds the datasets at `outs` took to generate (their compute records; None where a
    record is missing or empty), the devices they ran on, and whether the records cover every sample
    (a run killed by a signal leaves no entry)."""
    from seggen.synthesis.plan import run_path

    total, where, whole = 0.0, set(), True
    for out in outs:
        f = run_path(out)
        rec = json.loads(f.read_text()) if f.exists() else {}
        samples = (_summary(out) or {}).get("samples")
        if not rec.get("runs"):
            if samples == 0:  # nothing to generate (a loop that ended)
                continue
            return None, set(), False
        total += rec["seconds"]
        where |= {r["device"] for r in rec["runs"]}
        whole &= samples is not None and rec["generated"] >= samples
    return total, where, whole


def _cost_line(params: Params, p: Params, rounds: list[str]) -> tuple[str, dict]:
    kinds = ("masksyn", "imgsyn")
    costs = {"blind": _cost([Path(p.synthesize.out) / k for k in kinds])}
    for n in rounds:
        costs[n] = _cost([Path(params.pick(n).synthesize.out) / k for k in kinds])

    def fmt(c):
        if c[0] is None:
            return "n/a (no compute record)"
        return ("" if c[2] else "at least ") + f"{c[0] / 60:.2f} min"

    where = sorted(set().union(*(c[1] for c in costs.values())))
    line = (
        "Generation wall time (MaskSyn + ImgSyn, model loading and filtering included): "
        + ", ".join(f"{'blind' if n == 'blind' else f'`{n}`'} {fmt(c)}" for n, c in costs.items())
        + (f"; on {', '.join(where)}." if where else ".")
    )
    return line, {n: c[0] for n, c in costs.items()}


def _round2(params: Params, name: str) -> dict:
    """Round 2's plan: whom it scored and against what, and whether the loop went on."""
    cfg = params.pick(name).plan_synthesis
    f = Path(cfg.out) / "plan.json"
    if not f.exists():
        raise DataError(f"{f}: missing; run plan_synthesis_r2 first")
    plan = json.loads(f.read_text())
    prev = plan["previous"]
    return {
        "reference": plan["reference"],
        "mIoU": plan["mIoU"],
        "previous_reference": prev["reference"],
        "previous_mIoU": prev["mIoU"],
        "stopped": plan["stopped"],
    }


def _round2_lines(rounds: list[str], r: dict | None) -> list[str]:
    if r is None:
        return []
    fmt = lambda v: f"{v:.1f}" if v is not None else "n/a"  # noqa: E731
    said = (
        f"the loop ended: {r['stopped']}; round 2 generated nothing, and `{rounds[1]}` trains on round 1's data"
        if r["stopped"]
        else "round 2 spent a second budget where it is still weakest"
    )
    return [
        f"Round 2: `{r['reference']}` scored {fmt(r['mIoU'])} mIoU on the planning split, against "
        f"{fmt(r['previous_mIoU'])} for `{r['previous_reference']}`: {said}.",
        "",
    ]


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


def _charts(params: Params, regime: str, rounds: list[str], plan: dict, iou: dict, arms: list[str], splits, img, rel):
    """The regime's pictures, written to `img` and linked by the page's `rel`: each round's plan chart
    (copied: data/ is not tracked by git), and every class's IoU per arm on each reported split, the
    classes ordered as the plan ranked them (weakest on `tuning` first)."""
    import shutil

    from seggen.io import atomic_path
    from seggen.reporting.charts import grouped_bars

    lines: list[str] = []
    for n in rounds:
        src = Path(params.pick(n).plan_synthesis.out) / "plan.png"
        if src.exists():
            dest = img / f"plan-{n}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
            this = json.loads((src.parent / "plan.json").read_text())
            stopped, drawn = this.get("stopped"), "drawability" in this
            caption = (
                f"The plan of `{n}`: the reference's IoU per class on the planning split, "
                + ("the generators' drawability, " if drawn else "")
                + "and the share of the budget"
            )
            lines += [
                f"![{caption}{' (the loop ended: nothing was generated from it)' if stopped else ''}]({rel(dest)})",
                "",
            ]
    classes = [c for _, c in sorted((v, c) for c, v in plan["per_class_iou"].items() if v is not None)]
    for s in splits:
        path = grouped_bars(
            classes,
            {n: [iou[(n, s)].get(c) for c in classes] for n in arms},
            img / f"classes-{regime}-{s}.png",
            f"IoU (%) on {s}, mean over seeds",
            rotate=True,
        )
        lines += [f"![Every class on `{s}`, regime `{regime}` (weakest on the planning split first)]({rel(path)})", ""]
    return lines


def _drawability_lines(plan: dict) -> list[str]:
    """What the plan read of the generators (plan_synthesis.drawability): the blind sets, the rule, the undrawn."""
    d = plan.get("drawability")
    if not d:
        return []
    sets = ", ".join(f"`{k}`" for k in d["iou_drawn"])
    gone = ", ".join(plan.get("undrawable") or []) or "none"
    return [
        f"Drawability: the reference also scored the blind pairs ({sets}); a class's weight is its weakness times "
        f"its IoU there over its `{plan['split']}` IoU (capped at 1; 0 under {d['min']:.2f}, and 0 where the "
        "reference scores too low on real images to judge a drawing). At 0, weighted 0 and their synthetic "
        f"pixels ignored: {gone}.",
        "",
    ]


def targeted_section(
    params: Params,
    groups: dict,
    splits: tuple[str, str],
    weakest: int = 3,
    img: Path | None = None,
    rel=None,
) -> tuple[list, dict]:
    """Markdown lines and a summary per regime of ablation.targeted: the plan's split, reference and
    weakest classes there; their IoU on the reported splits (in-domain, shifted) for the regime's
    reference group, the targeted arms' group and the targeted arms; the synthetic images each made.
    With `img` (and `rel`, the page's link to a file), also each round's plan chart and every class per arm."""
    tg = params.ablation.targeted if params.ablation else None
    if tg is None or not tg.regimes:
        return [], {}
    ref = params.report.reference
    lines = [
        "## Targeted arms: the plan and its weakest classes",
        "",
        "Each regime's plan scores its reference arm on the planning split, the only split a targeted choice "
        "reads; the classes it gets most wrong there get most of the synthetic budget, times how well the "
        "generators draw them where the plan measures it ([docs/synthesis.md](synthesis.md#planning)). Below, "
        "the weakest classes on the reported splits: IoU (%), mean over seeds.",
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
        draw = (plan.get("drawability") or {}).get("per_class")
        rounds = [targeted_name(regime, r) for r in range(1, targeted_rounds(tg, regime) + 1)]
        names = [f"{regime}-{ref}", f"{regime}-{tg.group}", *rounds]
        present = [n for n in names if n in groups]
        iou = {(n, s): _class_iou(params, groups[n].arms, s) for n in present for s in splits}
        blind = [_summary(Path(p.synthesize.out) / k) for k in ("masksyn", "imgsyn")]
        planned_out = Path(params.pick(rounds[0]).synthesize.out)
        planned = {k: _summary(planned_out / k) for k in ("masksyn", "imgsyn")}
        count = lambda xs: sum(x["samples"] for x in xs if x)  # noqa: E731
        cost_line, seconds = _cost_line(params, p, rounds)
        r2 = _round2(params, rounds[1]) if len(rounds) > 1 else None
        made = [count(_summary(Path(params.pick(n).synthesize.out) / k) for k in ("masksyn", "imgsyn")) for n in rounds]
        lines += [
            f"### Regime `{regime}`",
            "",
            f"Plan: `{plan['reference']}` on `{plan['split']}` ({plan['num_images']} images, mIoU "
            + (f"{plan['mIoU']:.1f}" if plan["mIoU"] is not None else "n/a")
            + f"). Synthetic images generated: blind {count(blind)}, "
            + ", ".join(f"round {r} (`{n}`) {k}" for r, (n, k) in enumerate(zip(rounds, made), 1))
            + ("; round 2's arms train on both rounds' images." if len(rounds) > 1 and made[1] else "."),
            "",
            cost_line,
            "",
            *_drawability_lines(plan),
            *_round2_lines(rounds, r2),
            f"| class | `{plan['split']}` IoU | "
            + ("drawability | " if draw else "")
            + "share of the budget | "
            + " | ".join(f"`{n}` {s}" for s in splits for n in present)
            + " |",
            "|---|---:|" + ("---:|" if draw else "") + "---:|" + "---:|" * (len(splits) * len(present)),
        ]
        rows = {}
        for c in classes:
            cells = [iou[(n, s)].get(c) for s in splits for n in present]
            rows[c] = {f"{n}/{s}": iou[(n, s)].get(c) for s in splits for n in present}
            share = 100 * plan["class_weights"][c] / total if total else 0.0
            lines.append(
                f"| {c} | {plan['per_class_iou'][c]:.1f} | "
                + (f"{draw[c]:.2f} | " if draw else "")
                + f"{share:.0f} % | "
                + " | ".join(f"{v:.1f}" if v is not None else "n/a" for v in cells)
                + " |"
            )
        # only the datasets a filter ran on have the counts
        per = {k: s["filter_per_class"] for k, s in planned.items() if s and s.get("filter_per_class")}
        lines += ["", *_filter_table(classes, per)]
        if img is not None:
            lines += _charts(params, regime, rounds, plan, iou, present, splits, img, rel)
        summary[regime] = {
            "plan_split": plan["split"],
            "reference": plan["reference"],
            "images": {"blind": count(blind), **dict(zip(rounds, made))},
            "generation_seconds": seconds,
            **({"round2": r2} if r2 else {}),
            "weakest": rows,
            "filtered": {k: {c: counts.get(c) for c in classes} for k, counts in per.items()},
        }
    return lines, summary
