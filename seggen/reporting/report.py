"""Stage `report`: every arm on every split, side by side (reports/report.md, summary.json, miou.png)."""

from __future__ import annotations

import json
from pathlib import Path

from seggen.config import Params
from seggen.errors import DataError
from seggen.io import atomic_path, write_json, write_text

COLUMNS = ("mIoU", "mAcc", "PQ", "AP")


def collect(params: Params) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for arm in params.arms:
        for split in params.evaluate.splits:
            path = Path(params.evaluate.out) / arm / split / "scores.json"
            if not path.exists():
                raise DataError(f"{path}: missing; run the evaluate stage for arm {arm}, split {split} first")
            out.setdefault(arm, {})[split] = json.loads(path.read_text())
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def build_report(params: Params) -> dict:
    from seggen.outputs import check_file

    for name in ("report.md", "summary.json", "miou.png"):
        check_file(Path(params.report.out) / name, "report.out")
    arms = collect(params)
    base = "baseline" if "baseline" in arms else next(iter(arms))
    splits = list(params.evaluate.splits)
    delta = {arm: {s: arms[arm][s]["mIoU"] - arms[base][s]["mIoU"] for s in splits} for arm in arms if arm != base}
    headline = {a: {s: {k: v for k, v in arms[a][s].items() if k in ("mIoU", "PQ", "AP")} for s in splits} for a in arms}
    summary = {"reference_arm": base, "arms": headline, "delta_mIoU": delta}
    out = Path(params.report.out)
    write_json(out / "summary.json", summary)

    cols = [c for c in COLUMNS if any(c in arms[a][s] for a in arms for s in splits)]
    lines = ["# seggen pipeline report", "",
             f"Mask2Former arms on the evaluation splits ({', '.join(splits)}); Δ = mIoU minus the `{base}` arm.", "",
             "| arm | split | " + " | ".join(cols) + " | Δ mIoU |", "|---|---|" + "---:|" * (len(cols) + 1)]
    for arm in arms:
        for s in splits:
            d = delta.get(arm, {}).get(s)
            lines.append(f"| {arm} | {s} | " + " | ".join(_fmt(arms[arm][s].get(c)) for c in cols) +
                         f" | {'' if d is None else f'{d:+.1f}'} |")
    strategies = {a: params.arm(a).segmenter for a in arms}
    lines += ["", "Arms (see `arms` in params.yaml):", ""]
    lines += [f"- `{a}`: strategy `{c.strategy}`" + (f", synthetic {', '.join(c.synthetic)}" if c.strategy != "real" else "")
              + f", {c.train.steps} steps" for a, c in strategies.items()]
    lines += ["", "![mIoU per arm and split](miou.png)", ""]
    write_text(out / "report.md", "\n".join(lines))
    _chart(arms, splits, out / "miou.png")
    return summary


def _chart(arms: dict, splits: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(arms)
    x = np.arange(len(splits))
    w = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.2))
    for i, a in enumerate(names):
        vals = [arms[a][s]["mIoU"] for s in splits]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * w, vals, w, label=a)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, splits)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
