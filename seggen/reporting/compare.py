"""`seggen compare`: the latest evaluation of every arm, side by side, from MLflow."""

from __future__ import annotations

from seggen.errors import SeggenError
from seggen.pipeline import tracking

SHOW = ("mIoU", "mIoU_domain_mean", "PQ", "AP")  # mIoU_domain_mean: a split of drawn domains


def compare_runs(splits: list[str], latest: int = 1) -> str:
    df, uri = tracking.search_evaluations()
    if df.empty:
        raise SeggenError(f"no finished evaluate runs at {uri}: run the pipeline (dvc repro) first")
    rows: dict[tuple[str, int], dict] = {}
    seen: dict[tuple[str, str], int] = {}
    for _, r in df.iterrows():
        arm, split = r.get("tags.arm"), r.get("tags.split")
        if split not in splits or not isinstance(arm, str):
            continue
        k = seen.get((arm, split), 0)
        if k >= latest:
            continue
        seen[(arm, split)] = k + 1
        row = rows.setdefault((arm, k), {"arm": arm, "commit": str(r.get("tags.git_commit", ""))[:10]})
        row["when"] = min(row.get("when", "~"), str(r["start_time"])[:16])
        for m in SHOW:
            v = r.get(f"metrics.{split}/{m}")
            row[f"{split} {m}"] = None if v is None or v != v else float(v)
        row[f"{split} run"] = r["run_id"][:8]
    if not rows:
        raise SeggenError(f"no evaluate runs for split(s) {', '.join(splits)} at {uri}")
    cols = [f"{s} {m}" for s in splits for m in SHOW if any(row.get(f"{s} {m}") is not None for row in rows.values())]
    base = next((row for (a, k), row in sorted(rows.items()) if a == "baseline" and k == 0), None)
    head = ["arm", *cols] + ([f"{s} ΔmIoU" for s in splits] if base else []) + ["commit", "when"]
    table = []
    order = sorted(rows, key=lambda ak: (ak[0] != "baseline", ak[0], ak[1]))
    for key in order:
        row = rows[key]
        cells = [row["arm"] + (f" (-{key[1]})" if key[1] else "")]
        cells += ["–" if row.get(c) is None else f"{row[c]:.2f}" for c in cols]
        if base:
            for s in splits:
                a, b = row.get(f"{s} mIoU"), base.get(f"{s} mIoU")
                cells.append("–" if a is None or b is None else f"{a - b:+.2f}")
        cells += [row["commit"], row["when"]]
        table.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in table]
    return "\n".join(lines) + f"\n(MLflow: {uri})"
