"""Stage `report`: every arm on every split, side by side (reports/report.md, summary.json, miou.png)."""

from __future__ import annotations

import os
from pathlib import Path

from seggen.config import Params
from seggen.io import write_json, write_text
from seggen.reporting.charts import grouped_bars
from seggen.reporting.scores import collect

COLUMNS = ("mIoU", "mAcc", "PQ", "AP")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def build_report(params: Params) -> dict:
    from seggen.outputs import check_file
    from seggen.reporting.pictures import prior_pictures

    for name in ("report.md", "summary.json", "miou.png", "styles.png", "synthetic_vs_shifted.png", "corpus.png"):
        check_file(Path(params.report.out) / name, "report.out")
    arms = collect(params)  # every arm's scores.json on every split
    base = "baseline" if "baseline" in arms else next(iter(arms))
    splits = list(params.evaluate.splits)
    delta = {arm: {s: arms[arm][s]["mIoU"] - arms[base][s]["mIoU"] for s in splits} for arm in arms if arm != base}
    headline = {
        a: {s: {k: v for k, v in arms[a][s].items() if k in ("mIoU", "PQ", "AP")} for s in splits} for a in arms
    }
    summary = {"reference_arm": base, "arms": headline, "delta_mIoU": delta}
    out = Path(params.report.out)
    write_json(out / "summary.json", summary)

    cols = [c for c in COLUMNS if any(c in arms[a][s] for a in arms for s in splits)]
    lines = [
        "# seggen pipeline report",
        "",
        f"Mask2Former arms on the evaluation splits ({', '.join(splits)}); Δ = mIoU minus the `{base}` arm.",
        "",
        "| arm | split | " + " | ".join(cols) + " | Δ mIoU |",
        "|---|---|" + "---:|" * (len(cols) + 1),
    ]
    for arm in arms:
        for s in splits:
            d = delta.get(arm, {}).get(s)
            lines.append(
                f"| {arm} | {s} | "
                + " | ".join(_fmt(arms[arm][s].get(c)) for c in cols)
                + f" | {'' if d is None else f'{d:+.1f}'} |"
            )
    strategies = {a: params.arm(a).segmenter for a in arms}
    lines += ["", "Arms (see `arms` in params.yaml):", ""]
    lines += [
        f"- `{a}`: strategy `{c.strategy}`"
        + (f", synthetic {', '.join(c.synthetic)}" if c.strategy != "real" else "")
        + f", {c.train.steps} steps"
        for a, c in strategies.items()
    ]
    lines += ["", "![mIoU per arm and split](miou.png)", ""]
    lines += ["## Synthetic data", ""]
    for caption, path in prior_pictures(params, out):
        rel = os.path.relpath(path, out)
        lines += [f"**{caption}**", "", f"![{caption.split(' (')[0]}]({Path(rel).as_posix()})", ""]
    write_text(out / "report.md", "\n".join(lines))
    miou = {a: [arms[a][s]["mIoU"] for s in splits] for a in arms}
    if len(arms) <= 4:  # a few arms side by side within each split
        grouped_bars(splits, miou, out / "miou.png", "mIoU (%)")
    else:  # many (the bench's arms x seeds): one group per arm, else the bars and labels are unreadable
        grouped_bars(
            list(arms),
            {s: [miou[a][i] for a in arms] for i, s in enumerate(splits)},
            out / "miou.png",
            "mIoU (%)",
            rotate=True,
        )
    return summary
