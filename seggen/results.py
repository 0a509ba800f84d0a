"""The ablation page (`report.results`, docs/results.md with bench/params.yaml), built from MLflow.

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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from seggen import tracking
from seggen.config import Params
from seggen.errors import DataError
from seggen.io import atomic_path, write_text

SEED = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
METRICS = ("mIoU", "PQ", "AP")


@dataclass
class Group:
    name: str
    regime: str
    seeds: list[int] = field(default_factory=list)
    # split -> metric -> one value per seed, in `seeds` order
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    run_ids: dict[str, list[str]] = field(default_factory=dict)  # split -> MLflow run id per seed

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


def collect(params: Params, project: Path = Path(".")):
    """-> ({group: Group}, tracking uri, experiment id): the latest finished evaluation of every arm and split."""
    from seggen.compare import search_evaluations

    if not tracking.enabled():
        raise DataError(f"report.results ({params.report.results}) is built from MLflow runs: tracking is off "
                        f"(unset {tracking.TRACKING_ENV} / drop --offline)")
    df, uri = search_evaluations(project)
    latest: dict[tuple[str, str], object] = {}
    for _, r in df.iterrows():  # newest first
        key = (r.get("tags.arm"), r.get("tags.split"))
        if key[0] in params.arms and key[1] in params.evaluate.splits and key not in latest:
            latest[key] = r
    missing = [f"{a}/{s}" for a in params.arms for s in params.evaluate.splits if (a, s) not in latest]
    if missing:
        raise DataError(f"{uri}: no finished MLflow evaluation for {len(missing)} arm/split(s), e.g. {missing[0]}: "
                        "run the evaluate stages first")
    groups: dict[str, Group] = {}
    for arm in params.arms:
        name, regime, seed = group_of(arm, params.regimes)
        g = groups.setdefault(name, Group(name, regime))
        g.seeds.append(seed)
        for split in params.evaluate.splits:
            r = latest[(arm, split)]
            g.run_ids.setdefault(split, []).append(r["run_id"])
            for m in METRICS:
                v = r.get(f"metrics.{split}/{m}")
                if v is not None and v == v:
                    g.values.setdefault(split, {}).setdefault(m, []).append(float(v))
    exp_id = str(next(iter(latest.values()))["experiment_id"])
    return groups, uri, exp_id


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
    cfg = params.report
    out = Path(cfg.results)
    img = out.parent / "img" / "results"
    groups, uri, exp_id = collect(params, project)
    splits = list(params.evaluate.splits)
    in_domain, shifted = splits[0], splits[-1]
    img_files = _pictures(params, groups, uri, img)
    _chart(groups, splits, img / "miou.png")

    rel = lambda p: p.relative_to(out.parent).as_posix()  # noqa: E731
    lines = ["# Ablation: baseline vs +ImgSyn vs +MaskSyn vs +both vs pretrain→finetune", "",
             "Generated by `seggen report` from the MLflow runs of the `bench` profile "
             "(`dvc repro bench/dvc.yaml`, params in `bench/params.yaml`); do not edit by hand"
             + (f" (the tuning log at the end comes from `{cfg.notes}`)." if cfg.notes else "."), "",
             f"mIoU (%) on the in-domain (`{in_domain}`) and shifted-domain (`{shifted}`) validation splits, "
             "mean ± std over seeds. Δ: difference of the means against the regime's "
             f"`{cfg.reference}`; 2σ = 2 x sqrt(std² + std_baseline²); ✓ = Δ beyond 2σ.", ""]
    summary: dict = {"tracking_uri": uri, "experiment_id": exp_id, "groups": {}}
    for regime in list(params.regimes) or [""]:
        rows = [g for g in groups.values() if g.regime == regime]
        if not rows:
            continue
        if regime:
            syn = params.regime(regime).synthesize
            seg = params.arm(next(a for a in params.arms if group_of(a, params.regimes)[0] == rows[0].name)).segmenter
            real = f"{seg.real_subset} real training images" if seg.real_subset else "all real training images"
            lines += [f"## Regime `{regime}`: {real}", "",
                      f"Synthetic data: {syn.real_subset or 'all'} source images x "
                      f"{syn.masksyn_per_source} MaskSyn / {syn.imgsyn_per_source} ImgSyn"
                      + (f" (at most {syn.max_sources} sources)" if syn.max_sources else "")
                      + f", filters: sample {'on' if syn.filter.sample else 'off'}, pixel {'on' if syn.filter.pixel else 'off'}.", ""]
        lines += [f"| arm | seeds | {in_domain} | Δ | {shifted} | Δ | PQ ({in_domain}) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for g in rows:
            lines.append(f"| `{g.name}` | {len(g.seeds)} | {_pm(g, in_domain)} | {_delta_cell(g, groups, cfg.reference, in_domain)} | "
                         f"{_pm(g, shifted)} | {_delta_cell(g, groups, cfg.reference, shifted)} | {_pm(g, in_domain, 'PQ')} |")
            summary["groups"][g.name] = {"regime": g.regime, "seeds": g.seeds, **{
                s: {"mean": g.mean(s), "std": g.std(s), "values": g.values.get(s, {}).get("mIoU", [])} for s in splits}}
        lines.append("")
    exp_name = os.environ.get(tracking.EXPERIMENT_ENV, tracking.DEFAULT_EXPERIMENT)
    lines += ["![mIoU per arm, mean ± std over seeds](" + rel(img / "miou.png") + ")", "",
              "## Every run", "",
              f"The latest finished `evaluate` run of every arm and split in MLflow experiment `{exp_name}` "
              "(`mlflow ui`, or `seggen -p bench/params.yaml compare`); run ids in brackets.", "",
              "| arm | seed | " + " | ".join(splits) + " |", "|---|---:|" + "---:|" * len(splits)]
    for g in groups.values():
        for i, seed in enumerate(g.seeds):
            lines.append(f"| `{g.name}` | {seed} | " + " | ".join(
                f"{g.values[s]['mIoU'][i]:.1f} ({g.run_ids[s][i][:8]})" for s in splits) + " |")
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


def _pictures(params: Params, groups: dict[str, Group], uri: str, img: Path) -> list[tuple[str, Path]]:
    """Synthetic sample grids (the synthesize runs' grid.png) and prediction grids of one seed of the
    reference and the `both` arm, downloaded from MLflow."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    name = os.environ.get(tracking.EXPERIMENT_ENV, tracking.DEFAULT_EXPERIMENT)
    found: list[tuple[str, str, str]] = []  # (caption, run id, artifact path)
    for regime in params.regimes:
        for strategy in ("masksyn", "imgsyn"):
            df = mlflow.search_runs(experiment_names=[name], max_results=1, order_by=["attributes.start_time DESC"],
                                    filter_string=f"tags.`{tracking.STAGE}` = 'synthesize_{strategy}@{regime}' and attributes.status = 'FINISHED'")
            if not df.empty:
                found.append((f"{strategy} samples, regime {regime} (colour map | generated image)", df.iloc[0]["run_id"], "grid.png"))
    for g in groups.values():
        if g.name.split("-", 1)[-1] in (params.report.reference, "both"):
            arm = f"{g.name}-s{g.seeds[0]}" if f"{g.name}-s{g.seeds[0]}" in params.arms else g.name
            for split in params.evaluate.splits:
                df = mlflow.search_runs(experiment_names=[name], max_results=1, order_by=["attributes.start_time DESC"],
                                        filter_string=f"tags.`{tracking.STAGE}` = 'evaluate@{arm}-{split}' and attributes.status = 'FINISHED'")
                if not df.empty:
                    found.append((f"{arm} on {split} (image | ground truth | prediction)", df.iloc[0]["run_id"], f"eval/{split}/predictions.png"))
    files = []
    img.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for caption, run_id, path in found:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp))
            dest = img / (re.sub(r"[^a-z0-9]+", "-", caption.split(" (")[0].lower()).strip("-") + ".png")
            with atomic_path(dest) as t:
                shutil.copyfile(local, t)
            files.append((caption, dest))
    return files


def _chart(groups: dict[str, Group], splits: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(groups)
    x = np.arange(len(names))
    w = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(names), 3.6))
    for i, s in enumerate(splits):
        means = [groups[n].mean(s) or 0 for n in names]
        stds = [groups[n].std(s) or 0 for n in names]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * w, means, w, yerr=stds, capsize=3, label=s)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mIoU (%), mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
