"""The ablation page (`report.results`, docs/results.md with ablation/params.yaml), built from what the
pipeline's stages wrote -- the evaluations' scores.json, the synthetic datasets' grid.png and the
evaluations' predictions.png, all DVC outputs the report stage depends on (never MLflow's state, which
DVC does not track).

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

from seggen.config import Params
from seggen.errors import DataError
from seggen.io import atomic_path, write_text
from seggen.pipeline import tracking
from seggen.reporting.charts import grouped_bars
from seggen.reporting.scores import collect

SEED = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
METRICS = ("mIoU", "PQ", "AP", "mIoU_domain_mean", "mIoU_domain_worst")


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


def reference(g: Group, groups: dict[str, Group], ref: str) -> Group | None:
    name = f"{g.regime}-{ref}" if g.regime else ref
    return groups.get(name)


def delta(g: Group, base: Group, split: str, metric: str = "mIoU") -> tuple[float, float] | None:
    """(Δ of the means, 2 x the std of that difference)."""
    a, b = g.mean(split, metric), base.mean(split, metric)
    if a is None or b is None:
        return None
    return a - b, 2 * ((g.std(split, metric) or 0) ** 2 + (base.std(split, metric) or 0) ** 2) ** 0.5


def _pm(g: Group, split: str, metric: str = "mIoU") -> str:
    m = g.mean(split, metric)
    return "–" if m is None else f"{m:.1f} ± {g.std(split, metric):.1f}"


def _delta_cell(g: Group, groups: dict[str, Group], ref: str, split: str, metric: str = "mIoU") -> str:
    base = reference(g, groups, ref)
    if base is None or base is g:
        return ""
    d = delta(g, base, split, metric)
    if d is None:
        return ""
    mark = " ✓" if d[0] > d[1] else ""
    return f"{d[0]:+.1f} (2σ {d[1]:.1f}){mark}"


def build_results(params: Params) -> dict:
    from seggen.reporting.pictures import prior_pictures
    from seggen.reporting.targeted import targeted_section

    cfg = params.report
    out = Path(cfg.results)
    img = out.parent / "img" / "results"
    groups = group(params, collect(params))
    splits = list(params.evaluate.splits)
    in_domain = "validation" if "validation" in splits else splits[0]  # the reported splits
    shifted = "validation_shift" if "validation_shift" in splits else splits[-1]
    # a split of drawn domains: its headline is the mean over the domains (each weighed once)
    sm = "mIoU_domain_mean" if any(g.mean(shifted, "mIoU_domain_mean") is not None for g in groups.values()) else "mIoU"
    img_files = _pictures(params, groups, img)
    img_files += prior_pictures(params, img)  # the generative prior's pictures
    names = list(groups)
    hm = {s: "mIoU_domain_mean" if groups[names[0]].mean(s, "mIoU_domain_mean") is not None else "mIoU" for s in splits}
    grouped_bars(
        names,
        {s: [groups[n].mean(s, hm[s]) for n in names] for s in (in_domain, shifted)},
        img / "miou.png",
        "mIoU (%), mean ± std over seeds",
        errors={s: [groups[n].std(s, hm[s]) or 0 for n in names] for s in (in_domain, shifted)},
        rotate=True,
    )

    rel = lambda p: Path(os.path.relpath(p, out.parent)).as_posix()  # noqa: E731
    lines = [
        "# Ablation: real only vs + synthetic data (ImgSyn, MaskSyn, both; generator variants)",
        "",
        "Generated by `seggen report` from the evaluations of the `ablation` profile "
        "(`dvc repro ablation/dvc.yaml`, params in `ablation/params.yaml`); do not edit by hand"
        + (f" (the tuning log at the end comes from `{cfg.notes}`)." if cfg.notes else "."),
        "",
        f"mIoU (%) on the in-domain (`{in_domain}`) and shifted (`{shifted}`"
        + (": the mean over its unseen domains, and the worst domain" if sm != "mIoU" else "")
        + ") validation splits, mean ± std over seeds. Δ: difference of the means against the regime's "
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
        worst = sm != "mIoU"
        lines += [
            f"| arm | seeds | {in_domain} | Δ | {shifted}{' mean' if worst else ''} | Δ |"
            + (" worst domain | Δ |" if worst else "")
            + f" PQ ({in_domain}) |",
            "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if worst else "") + "---:|",
        ]
        for g in rows:
            lines.append(
                f"| `{g.name}` | {len(g.seeds)} | {_pm(g, in_domain)} | "
                f"{_delta_cell(g, groups, cfg.reference, in_domain)} | "
                f"{_pm(g, shifted, sm)} | {_delta_cell(g, groups, cfg.reference, shifted, sm)} | "
                + (
                    f"{_pm(g, shifted, 'mIoU_domain_worst')} | "
                    f"{_delta_cell(g, groups, cfg.reference, shifted, 'mIoU_domain_worst')} | "
                    if worst
                    else ""
                )
                + f"{_pm(g, in_domain, 'PQ')} |"
            )
            summary["groups"][g.name] = {
                "regime": g.regime,
                "seeds": g.seeds,
                **{
                    s: {
                        "mean": g.mean(s),
                        "std": g.std(s),
                        "values": g.values.get(s, {}).get("mIoU", []),
                        **(
                            {"domain_mean": g.mean(s, sm), "domain_mean_std_over_seeds": g.std(s, sm)}
                            if g.mean(s, "mIoU_domain_mean") is not None
                            else {}
                        ),
                    }
                    for s in splits
                },
            }
        lines.append("")
    # the targeted arms' plans and weakest classes (their inputs reach the report through the evaluations)
    targeted_lines, summary["targeted"] = targeted_section(params, groups, (in_domain, shifted), img=img, rel=rel)
    exp_name = tracking.experiment_name()
    lines += [
        "![mIoU per arm, mean ± std over seeds](" + rel(img / "miou.png") + ")",
        "",
        *targeted_lines,
        "## Every run",
        "",
        f"mIoU of every arm and split, from its `{params.evaluate.out}/ARM/SPLIT/scores.json` (DVC-tracked "
        f"outputs of the `evaluate` stages: the page changes only when they do). Every evaluation is also an "
        f"MLflow run in experiment `{exp_name}` tagged `arm` and `split` (`mlflow ui`, filter "
        "`tags.arm = 'ARM'`, or `seggen -p ablation/params.yaml compare`).",
        "",
        "| arm | seed | " + " | ".join(splits) + " |",
        "|---|---:|" + "---:|" * len(splits),
    ]
    for g in groups.values():
        for i, (seed, arm) in enumerate(zip(g.seeds, g.arms)):
            cells = [f"{g.values[s]['mIoU'][i]:.1f}" for s in splits]
            lines.append(f"| `{arm}` | {seed} | " + " | ".join(cells) + " |")
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
