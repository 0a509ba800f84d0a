"""The ablation page (`report.results`, docs/results.md with bench/params.yaml), built from what the
pipeline's stages wrote -- the evaluations' scores.json, the synthetic datasets' grid.png and the
evaluations' predictions.png, all DVC outputs the report stage depends on -- with each evaluation's
MLflow run id beside it where tracking has one.

Arms named GROUP-sSEED are seeds of GROUP (e.g. `low-both-s1`); a group's first word is its data
regime (`low-both` -> `low`). Each group is compared with its regime's reference group
(`report.reference`, e.g. `low-baseline`): Δ = difference of the seed means, and the gain counts as
beyond noise when Δ > 2 x sqrt(std_a² + std_b²) (the std of each group over its seeds).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from seggen import tracking
from seggen.config import Params
from seggen.errors import DataError, SeggenError
from seggen.io import atomic_path, write_text
from seggen.reporting.charts import grouped_bars
from seggen.reporting.scores import collect

SEED = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
METRICS = ("mIoU", "PQ", "AP")


@dataclass
class Group:
    name: str
    regime: str
    seeds: list[int] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)  # the arm of each seed
    # split -> metric -> one value per seed, in `seeds` order
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def mean(self, split: str, metric: str = "mIoU") -> float | None:
        v = self.values.get(split, {}).get(metric, [])
        return statistics.fmean(v) if v else None

    def std(self, split: str, metric: str = "mIoU") -> float | None:
        v = self.values.get(split, {}).get(metric, [])
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)


def group_of(arm: str, regimes: dict) -> tuple[str, str, int]:
    """`low-both-s2` -> ("low-both", "low", 2); an arm without -sN is a group of one seed 0."""
    m = SEED.match(arm)
    name, seed = (m["group"], int(m["seed"])) if m else (arm, 0)
    first = name.split("-", 1)[0]
    return name, first if first in regimes else "", seed


def group(params: Params, scores: dict[str, dict[str, dict]]) -> dict[str, Group]:
    """The arms' scores (seggen.reporting.scores.collect) as groups of seeds."""
    groups: dict[str, Group] = {}
    for arm in params.arms:
        name, regime, seed = group_of(arm, params.regimes)
        g = groups.setdefault(name, Group(name, regime))
        g.seeds.append(seed)
        g.arms.append(arm)
        for split in params.evaluate.splits:
            for m in METRICS:
                v = scores[arm][split].get(m)
                if v is not None:
                    g.values.setdefault(split, {}).setdefault(m, []).append(float(v))
    return groups


def run_ids(project: Path = Path(".")) -> dict[tuple[str, str], str]:
    """(arm, split) -> the MLflow run id of its latest finished evaluation, where tracking has one
    (links only: every number on the page comes from the evaluations' own files)."""
    if not tracking.enabled():
        return {}
    try:
        df, _ = tracking.search_evaluations(project)
    except SeggenError:
        return {}
    return {k: str(r["run_id"]) for k, r in tracking.latest_evaluations(df).items()}


def reference(g: Group, groups: dict[str, Group], ref: str) -> Group | None:
    name = f"{g.regime}-{ref}" if g.regime else ref
    return groups.get(name)


def delta(g: Group, base: Group, split: str) -> tuple[float, float] | None:
    """(Δ of the means, 2 x the std of that difference)."""
    a, b = g.mean(split), base.mean(split)
    if a is None or b is None:
        return None
    return a - b, 2 * ((g.std(split) or 0) ** 2 + (base.std(split) or 0) ** 2) ** 0.5


def _pm(g: Group, split: str, metric: str = "mIoU") -> str:
    m = g.mean(split, metric)
    return "–" if m is None else f"{m:.1f} ± {g.std(split, metric):.1f}"


def _delta_cell(g: Group, groups: dict[str, Group], ref: str, split: str) -> str:
    base = reference(g, groups, ref)
    if base is None or base is g:
        return ""
    d = delta(g, base, split)
    if d is None:
        return ""
    mark = " ✓" if d[0] > d[1] else ""
    return f"{d[0]:+.1f} (2σ {d[1]:.1f}){mark}"


def build_results(params: Params, project: Path = Path(".")) -> dict:
    from seggen.reporting.pictures import prior_pictures

    cfg = params.report
    out = Path(cfg.results)
    img = out.parent / "img" / "results"
    groups = group(params, collect(params))
    ids = run_ids(project)
    splits = list(params.evaluate.splits)
    in_domain, shifted = splits[0], splits[-1]
    img_files = _pictures(params, groups, img)
    img_files += prior_pictures(params, img)  # the generative prior's pictures
    names = list(groups)
    grouped_bars(
        names,
        {s: [groups[n].mean(s) for n in names] for s in splits},
        img / "miou.png",
        "mIoU (%), mean ± std over seeds",
        errors={s: [groups[n].std(s) or 0 for n in names] for s in splits},
        rotate=True,
    )

    rel = lambda p: Path(os.path.relpath(p, out.parent)).as_posix()  # noqa: E731  (the corpus preview lies in data/)
    lines = [
        "# Ablation: real only vs + synthetic data (ImgSyn, MaskSyn, both; generator variants)",
        "",
        "Generated by `seggen report` from the evaluations of the `bench` profile "
        "(`dvc repro bench/dvc.yaml`, params in `bench/params.yaml`); do not edit by hand"
        + (f" (the tuning log at the end comes from `{cfg.notes}`)." if cfg.notes else "."),
        "",
        f"mIoU (%) on the in-domain (`{in_domain}`) and shifted-domain (`{shifted}`) validation splits, "
        "mean ± std over seeds. Δ: difference of the means against the regime's "
        f"`{cfg.reference}`; 2σ = 2 x sqrt(std² + std_baseline²); ✓ = Δ beyond 2σ.",
        "",
    ]
    summary: dict = {"groups": {}}
    for regime in list(params.regimes) or [""]:
        rows = [g for g in groups.values() if g.regime == regime]
        if not rows:
            continue
        if regime:
            syn = params.regime(regime).synthesize
            seg = params.arm(next(a for a in params.arms if group_of(a, params.regimes)[0] == rows[0].name)).segmenter
            real = f"{seg.real_subset} real training images" if seg.real_subset else "all real training images"
            lines += [
                f"## Regime `{regime}`: {real}",
                "",
                f"Synthetic data: {syn.real_subset or 'all'} source images x "
                f"{syn.masksyn_per_source} MaskSyn / {syn.imgsyn_per_source} ImgSyn"
                + (f" (at most {syn.max_sources} sources)" if syn.max_sources else "")
                + f", filters: sample {'on' if syn.filter.sample else 'off'}, "
                f"pixel {'on' if syn.filter.pixel else 'off'}.",
                "",
            ]
        lines += [
            f"| arm | seeds | {in_domain} | Δ | {shifted} | Δ | PQ ({in_domain}) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for g in rows:
            lines.append(
                f"| `{g.name}` | {len(g.seeds)} | {_pm(g, in_domain)} | "
                f"{_delta_cell(g, groups, cfg.reference, in_domain)} | "
                f"{_pm(g, shifted)} | {_delta_cell(g, groups, cfg.reference, shifted)} | {_pm(g, in_domain, 'PQ')} |"
            )
            summary["groups"][g.name] = {
                "regime": g.regime,
                "seeds": g.seeds,
                **{
                    s: {"mean": g.mean(s), "std": g.std(s), "values": g.values.get(s, {}).get("mIoU", [])}
                    for s in splits
                },
            }
        lines.append("")
    exp_name = tracking.experiment_name()
    lines += [
        "![mIoU per arm, mean ± std over seeds](" + rel(img / "miou.png") + ")",
        "",
        "## Every run",
        "",
        f"mIoU of every arm and split (its `{params.evaluate.out}/ARM/SPLIT/scores.json`); in brackets the "
        f"latest finished `evaluate` run in MLflow experiment `{exp_name}` (`mlflow ui`, or "
        "`seggen -p bench/params.yaml compare`), where tracking recorded one.",
        "",
        "| arm | seed | " + " | ".join(splits) + " |",
        "|---|---:|" + "---:|" * len(splits),
    ]
    for g in groups.values():
        for i, (seed, arm) in enumerate(zip(g.seeds, g.arms)):
            cells = []
            for s in splits:
                rid = ids.get((arm, s))
                cells.append(f"{g.values[s]['mIoU'][i]:.1f}" + (f" ({rid[:8]})" if rid else ""))
            lines.append(f"| `{g.name}` | {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    if img_files:
        lines += ["## Samples", ""]
        for caption, path in img_files:
            lines += [f"**{caption}**", "", f"![{caption}]({rel(path)})", ""]
    if cfg.notes:
        notes = Path(cfg.notes)
        if not notes.exists():
            raise DataError(f"report.notes: {notes} not found")
        lines += [notes.read_text().rstrip(), ""]
    write_text(out, "\n".join(lines))
    return summary


def _pictures(params: Params, groups: dict[str, Group], img: Path) -> list[tuple[str, Path]]:
    """Synthetic sample grids (each regime's grid.png) and prediction grids of the first seed of the
    reference and the `both` arms (their evaluations' predictions.png), copied next to the page."""
    found: list[tuple[str, Path]] = []
    for regime in params.regimes:
        for strategy in ("masksyn", "imgsyn"):
            grid = Path(params.regime(regime).synthesize.out) / strategy / "grid.png"
            if grid.exists():
                found.append((f"{strategy} samples, regime {regime} (colour map | generated image)", grid))
    for g in groups.values():
        if g.name.split("-", 1)[-1] in (params.report.reference, "both"):
            for split in params.evaluate.splits:
                found.append(
                    (
                        f"{g.arms[0]} on {split} (image | ground truth | prediction)",
                        Path(params.evaluate.out) / g.arms[0] / split / "predictions.png",
                    )
                )
    files = []
    img.mkdir(parents=True, exist_ok=True)
    for caption, src in found:
        if not src.exists():
            raise DataError(f"{src}: missing (a picture of the results page)")
        dest = img / (re.sub(r"[^a-z0-9]+", "-", caption.split(" (")[0].lower()).strip("-") + ".png")
        with atomic_path(dest) as t:
            shutil.copyfile(src, t)
        files.append((caption, dest))
    return files
