"""The stage commands, in pipeline order: each is the DVC stage and the function of seggen/pipeline/stages.py
of the same name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seggen.cli import app, state
from seggen.cli.launch import relaunch
from seggen.errors import ConfigError, SeggenError

# the one way to pick a run other than the main one (seggen.config.experiments.pick)
Arm = Annotated[
    str | None,
    typer.Option(
        help="Run as this arm, variant, regime, REGIME-VARIANT or REGIME-targeted of the params file (`arms`, "
        "`variants`, `regimes`, `ablation.targeted`)."
    ),
]


@app.command("check_models")
def check_models_cmd(
    out: Annotated[
        Path | None, typer.Option(help="Also write the per-model lines to this file (the DVC stage's output).")
    ] = None,
) -> None:
    """Resolve every pretrained model the params name (ids and directories) in seconds: one line per model."""
    from seggen.pipeline import stages

    results, lines = stages.check_models(state.params(), out)
    typer.echo("\n".join(lines))
    bad = [(r, pr) for r, pr in results if pr]
    for ref, problem in bad:
        typer.echo(f"{ref.key}: {problem}", err=True)
    if bad:
        raise ConfigError(
            f"{len(bad)} of {len(results)} configured models cannot be loaded ({', '.join(r.key for r, _ in bad)}; "
            "see above)"
        )


@app.command()
def prepare(
    force: Annotated[bool, typer.Option(help="Regenerate even if the dataset is current.")] = False,
    root: Annotated[Path | None, typer.Option(help="Override data.root.")] = None,
) -> None:
    """Generate the bundled benchmark (or check a real dataset root) at data.root."""
    from seggen.pipeline import stages

    p = state.params({"data.root": str(root) if root else None})
    out = stages.prepare(p, force=force)
    typer.echo(f"dataset ready at {out}")


@app.command("check_data")
def check_data_cmd(
    root: Annotated[Path | None, typer.Option(help="Dataset root (default: data.root).")] = None,
    split: Annotated[list[str] | None, typer.Option(help="Split(s) to check (default: all).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the per-split lines to this file.")] = None,
) -> None:
    """Load every sample of a dataset (ADE20K layout, with its panoptic JSON where present, or a COCO
    root: images + annotations/*.json) and stop at the first problem, naming the file."""
    from seggen.pipeline import stages

    typer.echo("\n".join(stages.check_data(state.params(), root, split, out)))


@app.command()
def caption(
    captioner: Annotated[str | None, typer.Option(help="label | blip (default: caption.captioner).")] = None,
    model: Annotated[str | None, typer.Option(help="BLIP/BLIP-2 model id or directory (caption.model).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSONL output (caption.out).")] = None,
) -> None:
    """Caption every training image (skips images already captioned by the same captioner)."""
    from seggen.pipeline import stages

    p = state.params({"caption.captioner": captioner, "caption.model": model, "caption.out": str(out) if out else None})
    c = p.caption
    stats = stages.caption(p)
    typer.echo(f"{c.out}: {stats['captioned']} captioned, {stats['skipped']} already there")


def _train(section: str, steps: int | None, out: Path | None, arm: str | None = None) -> None:
    """A generator's training stage with `SECTION.train.steps` / `SECTION.out` from the options."""
    from seggen.pipeline import stages

    p = state.params({f"{section}.train.steps": steps, f"{section}.out": str(out) if out else None})
    arm = state.value(arm, "--arm")
    relaunch(getattr(p.pick(arm) if arm else p, section).train, f"{section}.train")
    train = getattr(stages, f"train_{section}")
    model = train(p, arm) if arm else train(p)
    _written(model)


def _written(model: Path) -> None:
    from seggen.training import is_main_process

    if is_main_process():  # once, not once per launched process
        typer.echo(f"model written to {model}")


@app.command("train_text2mask")
def train_text2mask_cmd(
    steps: Annotated[int | None, typer.Option(help="text2mask.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="text2mask.out")] = None,
) -> None:
    """Train Text2Mask (caption -> colour-map mask); resumes from the newest checkpoint."""
    _train("text2mask", steps, out)


@app.command("prepare_corpus")
def prepare_corpus_cmd(
    num_images: Annotated[int | None, typer.Option(help="prior.corpus.num_images")] = None,
    out: Annotated[Path | None, typer.Option(help="prior.corpus.out")] = None,
    arm: Arm = None,
) -> None:
    """Render the captioned, unlabelled "web" corpus the prior learns from (no masks)."""
    from seggen.pipeline import stages

    p = state.params({"prior.corpus.num_images": num_images, "prior.corpus.out": str(out) if out else None})
    s = stages.prepare_corpus(p, state.value(arm, "--arm"))
    if s.get("skipped"):
        typer.echo(f"corpus not rendered: {s['skipped']}")
    else:
        d = s["distance_to_labelled"]
        typer.echo(
            f"corpus ready at {s['out']}: {s['images']} images, distance to the labelled domain "
            f"min {d['min']:.2f}, median {d['median']:.2f}"
        )


@app.command("train_prior")
def train_prior_cmd(
    steps: Annotated[int | None, typer.Option(help="prior.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="prior.out")] = None,
    arm: Arm = None,
) -> None:
    """Pretrain the text-to-image prior on the corpus (the stand-in for SD/SDXL pretraining); resumes."""
    _train("prior", steps, out, arm)


@app.command("train_mask2img")
def train_mask2img_cmd(
    steps: Annotated[int | None, typer.Option(help="mask2img.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="mask2img.out")] = None,
    arm: Arm = None,
) -> None:
    """Train Mask2Img (colour map + caption -> image, ControlNet on a base UNet); resumes."""
    _train("mask2img", steps, out, arm)


@app.command()
def synthesize(
    strategy: Annotated[str, typer.Option(help="masksyn (caption -> mask -> image) | imgsyn (real mask -> image).")],
    shard: Annotated[int | None, typer.Option(help="Run only this shard (0-based); merged when all are done.")] = None,
    num_shards: Annotated[int, typer.Option(help="Number of shards the samples are split into.")] = 1,
    dask: Annotated[
        bool, typer.Option(help="Run all shards as tasks on a Dask cluster (synthesize.dask.address, else local).")
    ] = False,
    max_sources: Annotated[int | None, typer.Option(help="synthesize.max_sources")] = None,
    arm: Arm = None,
) -> None:
    """Build a MaskSyn or ImgSyn dataset at synthesize.out/STRATEGY (resumes an interrupted run)."""
    from seggen.pipeline import stages

    strategy, arm = state.value(strategy, "--strategy"), state.value(arm, "--arm")
    res = stages.synthesize(
        state.params({"synthesize.max_sources": max_sources}), strategy, shard, num_shards, dask, arm
    )
    rate = f", {res['images_per_s']:.2f} img/s" if res.get("images_per_s") else ""
    rate += f" with {res['workers']} worker processes" if res.get("workers") else ""
    done = (
        f"; dataset complete: {res['kept']} kept of {res['samples']}"
        if "kept" in res
        else "; other shards still to run"
    )
    typer.echo(f"{strategy}: {res['generated']} generated{rate}{done} ({res['out']})")


@app.command("train_segmenter")
def train_segmenter_cmd(
    strategy: Annotated[
        str | None, typer.Option(help="real | augment | pretrain_finetune | concat (segmenter.strategy)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="segmenter.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="segmenter.out")] = None,
    arm: Annotated[
        str | None, typer.Option(help="A pipeline arm of params.yaml `arms` (its model: arms_root/ARM).")
    ] = None,
) -> None:
    """Train Mask2Former on real (+ synthetic) data with the strategy of params.yaml (or of an arm)."""
    from seggen.pipeline import stages

    arm = state.value(arm, "--arm")
    if arm and (strategy or out):
        raise SeggenError("--arm sets the strategy and output; use `arms.ARM.*` keys (or --set) to change them")
    p = state.params(
        {"segmenter.strategy": strategy, "segmenter.train.steps": steps, "segmenter.out": str(out) if out else None}
    )
    relaunch((p.arm(arm) if arm else p).segmenter.train, "segmenter.train")
    _written(stages.train_segmenter(p, arm))


@app.command()
def evaluate(
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory (metrics.json, predictions, pictures); default evaluate.out/ARM/SPLIT."),
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            help="Split(s) of the dataset: validation, validation_shift, ... (repeat for several; "
            "default: evaluate.splits with --arm, else validation)."
        ),
    ] = None,
    arm: Annotated[str | None, typer.Option(help="Evaluate this pipeline arm's model (params.yaml `arms`).")] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Model directory (default: segmenter.out/model); any Mask2Former checkpoint dir."),
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="Dataset root (default: data.root), e.g. a real ADEChallengeData2016.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="semantic | panoptic (default: the model's task).")] = None,
    size: Annotated[
        int | None, typer.Option(help="Resize images so the short side is this (default: native size).")
    ] = None,
) -> None:
    """Run a Mask2Former on a split: mIoU/mAcc/aAcc/per-class IoU, and PQ + mask AP for panoptic."""
    from seggen.pipeline import stages

    arm = state.value(arm, "--arm")
    split = [state.value(s, "--split") for s in split] if split else None
    p = state.params()
    if arm and model:
        raise SeggenError("give --arm or --model, not both")
    split = list(split or (p.evaluate.splits if arm else ["validation"]))
    if out and len(split) > 1:
        raise SeggenError("--out takes one --split (without --out each split goes to evaluate.out/ARM/SPLIT)")
    for s in split:
        m = stages.evaluate(p, s, arm, model, out, root, task, size)
        line = f"{s}: mIoU {m['semantic']['mIoU']:.2f}"
        if "panoptic" in m:
            line += f", PQ {m['panoptic']['PQ']:.2f}, mask AP {m['instance']['AP']:.2f}"
        typer.echo(line)


@app.command("plan_synthesis")
def plan_synthesis(arm: Arm = None) -> None:
    """Score the reference arm on a tuning split: per-class weights of the generation budget (plan_synthesis.out)."""
    from seggen.pipeline import stages

    arm = state.value(arm, "--arm")
    p = state.params()
    plan = stages.plan_synthesis(p, arm)
    p = p.pick(arm) if arm else p
    if plan["skipped"]:
        typer.echo(f"{p.plan_synthesis.out / 'plan.json'}: an even plan ({plan['skipped']})")
        return
    weakest = sorted((v, c) for c, v in plan["per_class_iou"].items() if v is not None)[:3]
    typer.echo(
        f"{p.plan_synthesis.out / 'plan.json'}: {plan['reference']} on {plan['split']}, mIoU {plan['mIoU']:.1f}; "
        f"weakest: {', '.join(f'{c} {v:.1f}' for v, c in weakest)}"
    )


@app.command()
def report() -> None:
    """Every arm on every split side by side: report.out/report.md, summary.json, miou.png."""
    from seggen.pipeline import stages

    p = state.params()
    summary = stages.report(p)
    typer.echo(f"{p.report.out / 'report.md'}: {len(summary['arms'])} arms x {len(p.evaluate.splits)} splits")
