"""Stage `report`: every arm on every split, side by side (reports/report.md, summary.json, miou.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from seggen.config import Params
from seggen.io import write_json, write_text
from seggen.reporting.charts import grouped_bars
from seggen.reporting.scores import DOMAIN_KEYS, collect

COLUMNS = ("mIoU", "mAcc", "PQ", "AP")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def _head(split: str, scores: dict) -> str:
    if scores.get("mIoU_domain") is None:
        return f"{split} mIoU"
    return f"{split}: {len(scores['mIoU_domain'])} domains, mean ± std (worst)"


def _distances(params: Params, split: str) -> dict[str, float]:
    from seggen.data.benchmark import read_domains

    return {d["name"]: d["distance_to_labelled"] for d in read_domains(params.data.root, split) or []}


def corpus_nearest(params: Params, splits: list[str]) -> dict[str, dict[str, float]]:
    """{split: {domain: distance to the nearest corpus image}} where the prior's corpus records its looks."""
    from seggen.data.benchmark import read_domains
    from seggen.data.corpus import CAPTIONS, nearest_look, read_looks
    from seggen.data.domains import Domain

    f = Path(params.prior.corpus.out) / CAPTIONS
    if not params.prior.enabled or params.mask2img.pretrained or not f.is_file():
        return {}
    try:
        looks = read_looks(f.parent)
    except (KeyError, ValueError):  # a corpus written before looks were recorded: no distances to show
        return {}
    return {
        s: {
            d["name"]: round(nearest_look(looks, Domain.from_record(d["look"])), 4)
            for d in read_domains(params.data.root, s) or []
        }
        for s in splits
    }


def _domains_chart(arms: dict, domain_splits: list[str], path: Path) -> None:
    """domains.png: every drawn domain's mIoU, one bar per arm (a note where no split has domains)."""
    from seggen.reporting.charts import note_picture

    doms = [(s, d) for s in domain_splits for d in next(iter(arms.values()))[s]["mIoU_domain"]]
    if doms and len(arms) <= 4:
        series = {a: [arms[a][s]["mIoU_domain"][d] for s, d in doms] for a in arms}
        grouped_bars([d for _, d in doms], series, path, "mIoU (%)", rotate=len(doms) > 10)
        return
    note_picture(path, "no split of drawn domains" if not doms else f"{len(arms)} arms: see the results page")


README_START, README_END = "<!-- report:headline -->", "<!-- /report:headline -->"
REPORTED, REPORTED_SHIFT = "validation", "validation_shift"  # the splits no choice reads


def _domain_deltas(summary: dict, arm: str) -> dict[str, float]:
    """{unseen domain: `arm`'s mIoU minus the reference arm's} on the reported shifted split."""
    base = summary["reference_arm"]
    return {d: r[arm] - r[base] for d, r in summary["domains"][REPORTED_SHIFT].items()}


def headline(summary: dict) -> dict:
    """The few numbers a run is judged by (`dvc exp show` columns `headline.*`): the method arm against
    the reference on the reported splits -- in-domain, the mean over the unseen domains, the worst
    domain's Δ and how many domains lose more than 2 mIoU. Empty without those two splits."""
    arms, base = summary["arms"], summary["reference_arm"]
    others = [a for a in arms if a != base]
    if not others or any(s not in arms[base] for s in (REPORTED, REPORTED_SHIFT)):
        return {}
    if arms[base][REPORTED_SHIFT].get("mIoU_domain_mean") is None:
        return {}
    arm = "seggen" if "seggen" in others else others[0]
    per = _domain_deltas(summary, arm)
    return {
        "arm": arm,
        "in_domain": arms[arm][REPORTED]["mIoU"] - arms[base][REPORTED]["mIoU"],
        "unseen_mean": arms[arm][REPORTED_SHIFT]["mIoU_domain_mean"] - arms[base][REPORTED_SHIFT]["mIoU_domain_mean"],
        "unseen_worst_domain": min(per.values()),
        "domains_worse_by_2": sum(v < -2 for v in per.values()),
    }


def readme_block(summary: dict) -> str:
    """The README's "what you get" table, from summary.json (the report stage writes it; a test checks
    that the README holds exactly this)."""
    arms, base, h = summary["arms"], summary["reference_arm"], summary.get("headline") or {}
    if not h:
        return "No `validation` / `validation_shift` scores in this run's report."
    doms = summary["domains"][REPORTED_SHIFT]
    lines = [
        f"| arm | in-domain (`{REPORTED}`) | {len(doms)} unseen domains: mean ± std | worst unseen domain "
        f"| domains worse than `{base}` by > 2 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for a, sc in arms.items():
        ind, sh = sc[REPORTED], sc[REPORTED_SHIFT]
        cells = [f"{ind['mIoU']:.1f}", f"{sh['mIoU_domain_mean']:.1f} ± {sh['mIoU_domain_std']:.1f}"]
        if a != base:
            cells[0] += f" (**{ind['mIoU'] - arms[base][REPORTED]['mIoU']:+.1f}**)"
            cells[1] += f" (**{sh['mIoU_domain_mean'] - arms[base][REPORTED_SHIFT]['mIoU_domain_mean']:+.1f}**)"
        worse = {d: v for d, v in _domain_deltas(summary, a).items() if v < -2} if a != base else {}
        cells += [f"{sh['mIoU_domain_worst']:.1f}", ", ".join(f"{d}: {v:+.1f}" for d, v in worse.items()) or "–"]
        lines.append(f"| `{a}` | " + " | ".join(cells) + " |")
    per = sorted(((v, d) for d, v in _domain_deltas(summary, h["arm"]).items()), reverse=True)
    met = h["unseen_mean"] >= 3 and h["domains_worse_by_2"] == 0 and h["in_domain"] >= -1
    lines += [
        "",
        f"Per unseen domain, `{h['arm']}` minus `{base}`: "
        + ", ".join(f"{d} {v:+.1f}" for v, d in per)
        + ". Targets (≥ +3 over the unseen domains' mean, no domain worse by more than 2, in-domain ≥ -1): "
        + ("**met**." if met else "**not met**."),
    ]
    return "\n".join(lines)


def update_readme(path: Path, block: str) -> None:
    """Rewrite the block between the README's report markers (a README without the file: nothing to do)."""
    from seggen.errors import ConfigError

    if not path.is_file():
        return
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ConfigError(f"report.readme {path}: no {README_START} ... {README_END} markers to write between")
    head, rest = text.split(README_START, 1)
    write_text(path, head + README_START + "\n" + block + "\n" + README_END + rest.split(README_END, 1)[1])


# what build_report writes into report.out (corpus.png: a copy of prepare_corpus's preview, not logged again)
OUTPUTS = (
    "report.md",
    "summary.json",
    "miou.png",
    "domains.png",
    "styles.png",
    "synthetic_vs_shifted.png",
    "corpus.png",
    "plan.png",
)
ARTIFACTS = tuple(f for f in OUTPUTS if f != "corpus.png")


def build_report(params: Params) -> dict:
    from seggen.io import check_file
    from seggen.reporting.pictures import prior_pictures

    for name in OUTPUTS:
        check_file(Path(params.report.out) / name, "report.out")
    arms = collect(params)  # every arm's scores.json on every split
    base = "baseline" if "baseline" in arms else next(iter(arms))
    splits = list(params.evaluate.splits)
    delta = {arm: {s: arms[arm][s]["mIoU"] - arms[base][s]["mIoU"] for s in splits} for arm in arms if arm != base}
    domain_splits = [s for s in splits if arms[base][s].get("mIoU_domain") is not None]
    keep = ("mIoU", "PQ", "AP", *DOMAIN_KEYS)
    kept = {a: {s: {k: v for k, v in arms[a][s].items() if k in keep} for s in splits} for a in arms}
    delta_dom = {
        arm: {
            s: {
                k.removeprefix("mIoU_domain_"): arms[arm][s][k] - arms[base][s][k]
                for k in ("mIoU_domain_mean", "mIoU_domain_worst")
            }
            for s in domain_splits
        }
        for arm in arms
        if arm != base
    }
    nearest = corpus_nearest(params, domain_splits)
    summary = {
        "reference_arm": base,
        "arms": kept,
        "delta_mIoU": delta,
        "delta_mIoU_domains": delta_dom,
        "domains": {
            s: {
                d: {"corpus_nearest": nearest.get(s, {}).get(d), **{a: arms[a][s]["mIoU_domain"][d] for a in arms}}
                for d in arms[base][s]["mIoU_domain"]
            }
            for s in domain_splits
        },
    }
    summary["headline"] = headline(summary)
    out = Path(params.report.out)
    write_json(out / "summary.json", summary)
    if params.report.readme:
        update_readme(Path(params.report.readme), readme_block(summary))

    lines = ["# seggen pipeline report", ""]
    in_dom = [s for s in splits if s not in domain_splits]
    if domain_splits:
        lines += [
            "Headline: mIoU in-domain, and over the drawn domains of each shifted split their mean ± std,",
            "each domain weighed once, and the worst one. Δ: minus the `" + base + "` arm. "
            "`tuning` / `tuning_shift` are the splits choices read; `validation` / `validation_shift` are only "
            "reported.",
            "",
            "| arm | " + " | ".join(_head(s, arms[base][s]) for s in splits) + " |",
            "|---|" + "---:|" * len(splits),
        ]
        for arm in arms:
            cells = []
            for s in splits:
                sc = arms[arm][s]
                if s in domain_splits:
                    mean, std, worst = (sc[k] for k in DOMAIN_KEYS)
                    cell = f"{mean:.1f} ± {std:.1f} (worst {worst:.1f})"
                    if arm != base:
                        dd = delta_dom[arm][s]
                        cell += f" Δ {dd['mean']:+.1f} (worst - worst {dd['worst']:+.1f})"
                else:
                    cell = f"{sc['mIoU']:.1f}" + (f" Δ {delta[arm][s]:+.1f}" if arm != base else "")
                cells.append(cell)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += [""]
    cols = [c for c in COLUMNS if any(c in arms[a][s] for a in arms for s in splits)]
    lines += [
        f"Every arm on every split ({', '.join(splits)}), pooled over the split's images"
        + (f" (in-domain: {', '.join(in_dom)})" if domain_splits else "")
        + f"; Δ = mIoU minus the `{base}` arm.",
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
    for s in domain_splits if len(arms) <= 4 else []:  # many arms (the ablation): its results page
        doms = list(arms[base][s]["mIoU_domain"])
        lines += [
            "",
            f"### {s}: each domain",
            "",
            "Distance: seggen.data.domains.domain_distance to the labelled domain, and to the nearest image of "
            "the prior's corpus (measured, never used to draw or filter anything).",
            "",
            "| domain | to labelled | to corpus | "
            + " | ".join(arms)
            + " | "
            + " | ".join(f"Δ {a}" for a in arms if a != base)
            + " |",
            "|---|---:|---:|" + "---:|" * (2 * len(arms) - 1),
        ]
        dist = _distances(params, s)
        for d in doms:
            near = nearest.get(s, {}).get(d)
            lines.append(
                f"| {d} | {dist.get(d, float('nan')):.2f} | {'–' if near is None else f'{near:.2f}'} | "
                + " | ".join(f"{arms[a][s]['mIoU_domain'][d]:.1f}" for a in arms)
                + " | "
                + " | ".join(
                    f"{arms[a][s]['mIoU_domain'][d] - arms[base][s]['mIoU_domain'][d]:+.1f}" for a in arms if a != base
                )
                + " |"
            )
    if domain_splits and len(arms) <= 4:
        lines += ["", "![mIoU per drawn domain](domains.png)"]
    _domains_chart(arms, domain_splits, out / "domains.png")
    lines += [""]
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
    lines += plan_section(params, out)
    lines += loop_section(params, arms)
    write_text(out / "report.md", "\n".join(lines))
    # a split of drawn domains shows its headline, the mean over domains (error bar: their std)
    miou = {a: [arms[a][s].get("mIoU_domain_mean", arms[a][s]["mIoU"]) for s in splits] for a in arms}
    std = {a: [arms[a][s].get("mIoU_domain_std") or 0.0 for s in splits] for a in arms}
    if len(arms) <= 4:  # a few arms side by side within each split
        grouped_bars(splits, miou, out / "miou.png", "mIoU (%)", errors=std if domain_splits else None)
    else:  # many (the ablation's arms x seeds): one group per arm, else the bars and labels are unreadable
        grouped_bars(
            list(arms),
            {s: [miou[a][i] for a in arms] for i, s in enumerate(splits)},
            out / "miou.png",
            "mIoU (%)",
            rotate=True,
        )
    return summary


def plan_section(params: Params, out: Path) -> list[str]:
    """The plan_synthesis stage's plan: its chart copied to out/plan.png (data/ is not tracked by git)
    and the reference's weakest classes on the planning split; without a plan, a picture saying so."""
    from seggen.io import atomic_path
    from seggen.reporting.charts import note_picture

    if params.ablation is not None:  # the ablation has no plan stage (its arms are many)
        return []
    cfg = params.plan_synthesis
    plan_json, chart = Path(cfg.out) / "plan.json", Path(cfg.out) / "plan.png"
    if not (plan_json.exists() and chart.exists()):
        note_picture(out / "plan.png", "no synthesis plan: run plan_synthesis")
        return []
    plan = json.loads(plan_json.read_text())
    if plan.get("skipped"):
        note_picture(out / "plan.png", "no synthesis plan")
        return ["## Where synthetic data should go", "", f"No plan: {plan['skipped']}.", ""]
    with atomic_path(out / "plan.png", suffix=".png") as tmp:
        tmp.write_bytes(chart.read_bytes())
    iou = sorted((v, c) for c, v in plan["per_class_iou"].items() if v is not None)
    total = sum(plan["class_weights"].values())
    weakest = ", ".join(
        f"{c} (IoU {v:.1f}, {100 * plan['class_weights'][c] / total:.0f} % of the budget)" for v, c in iou[:3]
    )
    return [
        "## Where synthetic data should go",
        "",
        f"`{plan['reference']}` on `{plan['split']}` (a split no reported number reads), mIoU {plan['mIoU']:.1f}:",
        f"its weakest classes are {weakest}. "
        + (
            "The pipeline's synthesis spends it (synthesize.plan)."
            if params.synthesize.plan and Path(params.synthesize.plan) == plan_json
            else "The pipeline's synthesis is blind (synthesize.plan); the closed loop's rounds plan their own "
            "(`loop.rounds`)."
        ),
        "",
        "![the reference's IoU and the plan's share of the budget per class](plan.png)",
        "",
    ]


def loop_section(params: Params, arms: dict) -> list[str]:
    """The closed loop's rounds (loop.rounds), first round first: what each planned after, the planning
    split's mIoU before and after it, what it generated, and where the loop ended. The plans and dataset
    summaries are read without being DVC deps of the report: each is upstream of a round's arm, whose
    evaluations are."""
    from seggen.config.experiments import round_chain
    from seggen.reporting.targeted import _summary

    rounds = params.loop.rounds
    if params.ablation is not None or not rounds:
        return []
    split, root = params.plan_synthesis.split, Path(params.loop.out)

    def plan_of(name: str) -> dict:
        f = root / name / "plan" / "plan.json"
        return json.loads(f.read_text()) if f.exists() else {}

    rows, ended = [], None
    for name in sorted(rounds, key=lambda r: len(round_chain(rounds, r))):
        plan = plan_of(name)
        made = [(_summary(root / name / s) or {}).get("kept") for s in ("masksyn", "imgsyn")]
        before = plan.get("mIoU")
        # the round's own arm on the planning split: as the next round's plan scored it (its stop rule
        # read that), else as its evaluation did
        later = [plan_of(r) for r, x in rounds.items() if x.after == name]
        mine = later[0].get("mIoU") if later else None
        mine = mine if mine is not None else arms.get(name, {}).get(split, {}).get("mIoU")
        if plan.get("stopped"):
            verdict = f"generated nothing: {plan['stopped']}"
            ended = ended or name
        elif before is None or mine is None:
            verdict = f"not compared (no {split} mIoU)"
        else:
            verdict = f"{split} mIoU {mine - before:+.2f}" + ("" if later else " (the last round)")
        rows.append(
            f"| {name} | `{rounds[name].after}` | {_fmt(before)} | {_fmt(mine)} | "
            + " + ".join("–" if n is None else str(n) for n in made)
            + f" | {verdict} |"
        )
    return [
        "## The closed loop",
        "",
        f"Each round scored the arm it planned after on `{split}` (a split no reported number reads), spent its "
        "MaskSyn + ImgSyn budget where that arm is weakest, and trained its own arm on real data and every "
        "round's data up to it (`loop.rounds`; the arms' scores are in the tables above). A round whose arm "
        f"does not raise `{split}` mIoU ends the loop."
        + (f" The loop ended before round `{ended}`, which generated nothing." if ended else ""),
        "",
        f"| round | planned after | that arm's {split} mIoU | this round's arm | images (MaskSyn + ImgSyn) | verdict |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        "",
    ]
