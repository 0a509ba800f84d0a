"""The `seggen` command. Every subcommand reads params.yaml through seggen.config; flags override it.

Errors that users can fix (bad params, data, options or output locations, a full disk) print one line
`error: ...` naming the file, key or option, and exit 2; `--debug` adds the traceback. Anything else is
a bug: one line and exit 1 (the traceback with `--debug`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from seggen.config import DEFAULT_PARAMS, Params, load_params, parse_overrides
from seggen.errors import ConfigError, SeggenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegGen pipeline: data, generators (Text2Mask, Mask2Img), synthesis, Mask2Former, evaluation.",
)
eval_app = typer.Typer(no_args_is_help=True, help="Reference-exact metrics (mmseg mIoU, COCO PQ, COCO mask AP).")
app.add_typer(eval_app, name="eval")


def _plugins() -> None:
    """Commands of packages layered on seggen (the Prefect flows' `serve` and `deploy`), registered
    through the `seggen.cli` entry point group: seggen itself never imports them."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="seggen.cli"):
        ep.load()(app)


class _State:
    params_path: Path = DEFAULT_PARAMS
    overrides: list[str] = []
    variant: str | None = None

    def params(self, extra: dict | None = None) -> Params:
        ov = parse_overrides(self.overrides)
        ov.update({k: v for k, v in (extra or {}).items() if v is not None})
        p = load_params(self.params_path, ov)
        return p.variant(self.value(self.variant, "--variant")) if self.variant else p

    def value(self, value: str | None, option: str) -> str | None:
        """An option's value; a template such as '{item.arm}' (what dvc.yaml passes) filled from the DVC
        stage this command runs as (seggen.dvcstage), so that no params value passes through a shell."""
        from seggen import dvcstage

        if not dvcstage.is_template(value):
            return value
        tree = load_params(self.params_path, parse_overrides(self.overrides)).model_dump(mode="json")
        return dvcstage.expand(value, option, tree, self.params_path.parent / "dvc.yaml")


state = _State()


@app.callback()
def _root(
    params: Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")] = DEFAULT_PARAMS,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a parameter: KEY=VALUE (dotted key; `seggen params describe` lists the keys)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="No MLflow tracking for this command (same as SEGGEN_TRACKING=off).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an error.")] = False,
    variant: Annotated[
        str | None, typer.Option("--variant", help="Run with the params of this variant (`variants` in the file).")
    ] = None,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # per-request and per-worker chatter of the Prefect client and Dask
        for name in ("httpx", "distributed", "prefect.client"):
            logging.getLogger(name).setLevel(logging.WARNING)
    state.params_path = params
    state.overrides = list(set_ or [])
    state.variant = variant
    if offline:
        import os

        from seggen.tracking import TRACKING_ENV

        os.environ[TRACKING_ENV] = "off"


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"{option} {value}: must be at least 1")
    return value


def _write_or_print(result: dict, out: Path | None) -> None:
    from seggen.io import write_json

    text = json.dumps(result, indent=2)
    if out:
        write_json(out, result)
        typer.echo(f"wrote {out}", err=True)
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    typer.echo(json.dumps(summary, indent=2) if out else text)


# -- data ---------------------------------------------------------------------------------------


@app.command()
def prepare(
    force: Annotated[bool, typer.Option(help="Regenerate even if the dataset is current.")] = False,
    root: Annotated[Path | None, typer.Option(help="Override data.root.")] = None,
) -> None:
    """Generate the bundled benchmark (or check a real dataset root) at data.root."""
    from seggen import stages

    p = state.params({"data.root": str(root) if root else None})
    out = stages.prepare(p, force=force)
    typer.echo(f"dataset ready at {out}")


params_app = typer.Typer(
    no_args_is_help=True, help="Show the params a command sees, or apply a profile to params.yaml."
)
app.add_typer(params_app, name="params")


@params_app.command("describe")
def params_describe(
    key: Annotated[str | None, typer.Argument(help="A section or dotted key (default: everything).")] = None,
    markdown: Annotated[
        bool, typer.Option(help="The reference page with the code defaults (docs/params.md), as markdown.")
    ] = False,
) -> None:
    """Every key with its type, bounds, value and description (the descriptions on the fields of seggen/config/,
    which the Prefect form shows too)."""
    from seggen import params_doc

    if markdown:
        typer.echo(params_doc.markdown(), nl=False)
        return
    text = params_doc.describe(state.params(), key)
    if not text:
        raise ConfigError(f"{key}: no such key (seggen params describe lists them)")
    typer.echo(text)


@params_app.command("show")
def params_show(
    key: Annotated[str | None, typer.Argument(help="A section or dotted key (default: everything).")] = None,
) -> None:
    """The validated params (file, profile `extends`, --set overrides and code defaults resolved) as YAML."""
    import yaml

    tree = state.params().model_dump(mode="json")
    if key:
        for k in key.split("."):
            if not isinstance(tree, dict) or k not in tree:
                raise ConfigError(f"{key}: no such key")
            tree = tree[k]
    typer.echo(yaml.safe_dump(tree, sort_keys=False).rstrip())


@params_app.command("apply")
def params_apply(
    profile: Annotated[
        Path, typer.Argument(help="A profile: a params file with `extends:` (e.g. profiles/real-ade20k.yaml).")
    ],
    to: Annotated[Path, typer.Option(help="The params file to write the profile's keys into.")] = Path("params.yaml"),
) -> None:
    """Write a profile's keys into params.yaml (comments kept, validated first), so that `dvc repro` runs it."""
    from seggen.config import profile_changes, write_params

    changes = profile_changes(profile)
    write_params(to, changes)
    typer.echo(f"{to}: {len(changes)} keys set from {profile}")


@app.command("check_models")
def check_models_cmd(
    out: Annotated[
        Path | None, typer.Option(help="Also write the per-model lines to this file (the DVC stage's output).")
    ] = None,
) -> None:
    """Resolve every pretrained model the params name (ids and directories) in seconds: one line per model."""
    from seggen import stages

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


@app.command("check_data")
def check_data_cmd(
    root: Annotated[Path | None, typer.Option(help="Dataset root (default: data.root).")] = None,
    split: Annotated[list[str] | None, typer.Option(help="Split(s) to check (default: all).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the per-split lines to this file.")] = None,
) -> None:
    """Load every sample of a dataset (ADE20K layout, with its panoptic JSON where present, or a COCO
    root: images + annotations/*.json) and stop at the first problem, naming the file."""
    from seggen import stages

    typer.echo("\n".join(stages.check_data(state.params(), root, split, out)))


# -- captions and generators ------------------------------------------------------------------


@app.command()
def caption(
    captioner: Annotated[str | None, typer.Option(help="label | blip (default: caption.captioner).")] = None,
    model: Annotated[str | None, typer.Option(help="BLIP/BLIP-2 model id or directory (caption.model).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSONL output (caption.out).")] = None,
) -> None:
    """Caption every training image (skips images already captioned by the same captioner)."""
    from seggen import stages

    p = state.params({"caption.captioner": captioner, "caption.model": model, "caption.out": str(out) if out else None})
    c = p.caption
    stats = stages.caption(p)
    typer.echo(f"{c.out}: {stats['captioned']} captioned, {stats['skipped']} already there")


sample_app = typer.Typer(no_args_is_help=True, help="Sample from a trained generator.")
app.add_typer(sample_app, name="sample")


@app.command("prepare_corpus")
def prepare_corpus_cmd(
    num_images: Annotated[int | None, typer.Option(help="prior.corpus.num_images")] = None,
    out: Annotated[Path | None, typer.Option(help="prior.corpus.out")] = None,
) -> None:
    """Render the captioned, unlabelled "web" corpus the prior learns from (no masks)."""
    from seggen import stages

    p = state.params({"prior.corpus.num_images": num_images, "prior.corpus.out": str(out) if out else None})
    s = stages.prepare_corpus(p)
    if s.get("skipped"):
        typer.echo(f"corpus not rendered: {s['skipped']}")
    else:
        d = s["distance_to_labelled"]
        typer.echo(
            f"corpus ready at {p.prior.corpus.out}: {s['images']} images, distance to the labelled domain "
            f"min {d['min']:.2f}, median {d['median']:.2f}"
        )


@app.command("train_prior")
def train_prior_cmd(
    steps: Annotated[int | None, typer.Option(help="prior.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="prior.out")] = None,
) -> None:
    """Pretrain the text-to-image prior on the corpus (the stand-in for SD/SDXL pretraining); resumes."""
    from seggen import stages

    p = state.params({"prior.train.steps": steps, "prior.out": str(out) if out else None})
    typer.echo(f"model written to {stages.train_prior(p)}")


@app.command("train_text2mask")
def train_text2mask_cmd(
    steps: Annotated[int | None, typer.Option(help="text2mask.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="text2mask.out")] = None,
) -> None:
    """Train Text2Mask (caption -> colour-map mask); resumes from the newest checkpoint."""
    from seggen import stages

    p = state.params({"text2mask.train.steps": steps, "text2mask.out": str(out) if out else None})
    typer.echo(f"model written to {stages.train_text2mask(p)}")


@app.command("train_mask2img")
def train_mask2img_cmd(
    steps: Annotated[int | None, typer.Option(help="mask2img.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="mask2img.out")] = None,
) -> None:
    """Train Mask2Img (colour map + caption -> image, ControlNet on a base UNet); resumes."""
    from seggen import stages

    p = state.params({"mask2img.train.steps": steps, "mask2img.out": str(out) if out else None})
    typer.echo(f"model written to {stages.train_mask2img(p)}")


@app.command("train_segmenter")
def train_segmenter_cmd(
    strategy: Annotated[
        str | None, typer.Option(help="real | augment | pretrain_finetune | concat (segmenter.strategy)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="segmenter.train.steps")] = None,
    out: Annotated[Path | None, typer.Option(help="segmenter.out")] = None,
    arm: Annotated[
        str | None, typer.Option(help="A pipeline arm of params.yaml `arms` (its model: models/segmenter/ARM).")
    ] = None,
) -> None:
    """Train Mask2Former on real (+ synthetic) data with the strategy of params.yaml (or of an arm)."""
    from seggen import stages

    arm = state.value(arm, "--arm")
    if arm and (strategy or out):
        raise SeggenError("--arm sets the strategy and output; use `arms.ARM.*` keys (or --set) to change them")
    p = state.params(
        {"segmenter.strategy": strategy, "segmenter.train.steps": steps, "segmenter.out": str(out) if out else None}
    )
    typer.echo(f"model written to {stages.train_segmenter(p, arm)}")


@sample_app.command("text2mask")
def sample_text2mask_cmd(
    prompt: Annotated[list[str], typer.Option(help="Caption(s) to generate masks for.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    n: Annotated[int, typer.Option(help="Masks per prompt.")] = 8,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: text2mask.out/model).")] = None,
    steps: Annotated[int | None, typer.Option(help="text2mask.sample.steps")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="text2mask.sample.guidance_scale")] = None,
) -> None:
    """Generate colour-map masks and their decoded label PNGs."""
    import numpy as np

    from seggen.generators.text2mask import sample_text2mask
    from seggen.io import save_grid, staged_files, write_png
    from seggen.outputs import check_dir

    _positive(n, "--n")
    check_dir(out, "--out")  # before sampling, not after
    p = state.params({"text2mask.sample.steps": steps, "text2mask.sample.guidance_scale": guidance_scale})
    s = p.text2mask.sample
    res = sample_text2mask(
        model or Path(p.text2mask.out) / "model", prompt, n, p.seed, s.steps, s.guidance_scale, s.batch_size
    )
    with staged_files(out, "sample text2mask", "--out") as tmp:  # all files or none
        for i, (rgb, lab) in enumerate(zip(res["rgb"], res["labels"])):
            write_png(tmp / f"mask_{i:04d}.png", rgb)
            write_png(tmp / f"label_{i:04d}.png", lab.astype("uint8"))
            if "instances" in res:  # instance ids as a 16-bit PNG (0 = stuff / no instance)
                write_png(tmp / f"instances_{i:04d}.png", res["instances"][i].astype("uint16"))
        save_grid(
            [np.concatenate(list(res["rgb"][k : k + n]), 1) for k in range(0, len(res["rgb"]), n)], tmp / "grid.png"
        )
    typer.echo(f"{len(res['rgb'])} masks written to {out}")


@sample_app.command("mask2img")
def sample_mask2img_cmd(
    mask: Annotated[Path, typer.Option(help="Colour-map PNG (or label PNG with --labels).")],
    prompt: Annotated[str, typer.Option(help="Caption.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    n: Annotated[int, typer.Option(help="Images to generate.")] = 4,
    labels: Annotated[bool, typer.Option(help="--mask is a label PNG (values 0..N), not a colour map.")] = False,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: mask2img.out/model).")] = None,
    steps: Annotated[int | None, typer.Option(help="mask2img.sample.steps")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="mask2img.sample.guidance_scale")] = None,
) -> None:
    """Generate images for one mask."""
    from seggen.generators.mask2img import sample_mask2img_cli
    from seggen.outputs import check_dir

    _positive(n, "--n")
    check_dir(out, "--out")  # before sampling, not after
    p = state.params({"mask2img.sample.steps": steps, "mask2img.sample.guidance_scale": guidance_scale})
    s = p.mask2img.sample
    written = sample_mask2img_cli(
        model or Path(p.mask2img.out) / "model", mask, labels, prompt, n, out, p.seed, s.steps, s.guidance_scale
    )
    typer.echo(f"{written} images written to {out}")


# -- synthesis ----------------------------------------------------------------------------------


@app.command()
def synthesize(
    strategy: Annotated[str, typer.Option(help="masksyn (caption -> mask -> image) | imgsyn (real mask -> image).")],
    shard: Annotated[int | None, typer.Option(help="Run only this shard (0-based); merged when all are done.")] = None,
    num_shards: Annotated[int, typer.Option(help="Number of shards the samples are split into.")] = 1,
    dask: Annotated[
        bool, typer.Option(help="Run all shards in parallel as Prefect tasks on Dask (synthesize.dask).")
    ] = False,
    max_sources: Annotated[int | None, typer.Option(help="synthesize.max_sources")] = None,
    regime: Annotated[
        str | None,
        typer.Option(help="A data regime of params `regimes` (its datasets: synthesize.out/REGIME/STRATEGY)."),
    ] = None,
) -> None:
    """Build a MaskSyn or ImgSyn dataset at synthesize.out/STRATEGY (resumes an interrupted run)."""
    from seggen import stages

    strategy, regime = state.value(strategy, "--strategy"), state.value(regime, "--regime")
    p = state.params({"synthesize.max_sources": max_sources})
    if regime:
        p = p.regime(regime)
    res = stages.synthesize(p, strategy, shard, num_shards, dask, regime)
    rate = f", {res['images_per_s']:.2f} img/s" if res.get("images_per_s") else ""
    rate += f" with {res['workers']} worker processes" if res.get("workers") else ""
    done = (
        f"; dataset complete: {res['kept']} kept of {res['samples']}"
        if "kept" in res
        else "; other shards still to run"
    )
    typer.echo(f"{strategy}: {res['generated']} generated{rate}{done} ({Path(p.synthesize.out) / strategy})")


# -- segmenter evaluation ---------------------------------------------------------------------


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
    from seggen import stages

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


@app.command()
def report() -> None:
    """Every arm on every split side by side: report.out/report.md, summary.json, miou.png."""
    from seggen import stages

    p = state.params()
    summary = stages.report(p)
    typer.echo(f"{p.report.out / 'report.md'}: {len(summary['arms'])} arms x {len(p.evaluate.splits)} splits")


@app.command()
def compare(
    split: Annotated[list[str] | None, typer.Option(help="Split(s) to show (default: evaluate.splits).")] = None,
    runs: Annotated[int, typer.Option(help="Latest N evaluations per arm and split.")] = 1,
) -> None:
    """Baseline and SegGen arms side by side, from the MLflow runs (mlflow.search_runs)."""
    from seggen.reporting.compare import compare_runs

    p = state.params()
    typer.echo(compare_runs(list(split or p.evaluate.splits), runs))


@app.command()
def promote(
    arm: Annotated[
        str | None, typer.Option(help="The arm to make champion (default: the best in-domain arm of the report).")
    ] = None,
) -> None:
    """Move the registry's aliases: champion -> the best (or --arm) arm's registered segmenter of the
    latest report, baseline -> the reference arm's. Nothing else moves them: run it on the main branch."""
    from seggen import tracking

    for alias, v in tracking.promote(state.params(), arm).items():
        was = f"was version {v['previous']}" if v["previous"] else "new"
        typer.echo(f"@{alias}: {v['arm']} (version {v['version']}; {was})")


@app.command("ci-check")
def ci_check_cmd(
    baseline: Annotated[Path, typer.Option(help="Committed scores to compare with.")] = Path("ci/baseline.json"),
    ci_params: Annotated[Path, typer.Option("--ci-params", help="Params of the small pipeline.")] = Path(
        "ci/params.yaml"
    ),
    tolerance: Annotated[
        float | None, typer.Option(help="Allowed mIoU drop in points (default: the baseline's).")
    ] = None,
    update: Annotated[
        bool, typer.Option(help="Write the measured scores as the new baseline instead of comparing.")
    ] = False,
    workdir: Annotated[Path | None, typer.Option(help="Keep the run's files here (default: a temp dir).")] = None,
    against: Annotated[
        str | None,
        typer.Option(
            help="A registry alias (e.g. champion): gate this project's evaluations (after dvc repro) "
            "against what models:/seggen-segmenter@ALIAS scored, instead of running the small pipeline."
        ),
    ] = None,
    arm: Annotated[str | None, typer.Option(help="With --against: the arm to gate (default: the alias's arm).")] = None,
) -> None:
    """Run a small fixed-seed pipeline and gate its mIoU against ci/baseline.json, or gate this project's
    evaluations against a registered model's alias (--against champion); exit 1 on a regression."""
    from seggen.ci_check import Regression, check_against_alias, ci_check

    try:
        if against:
            if update:
                raise typer.BadParameter("--update writes ci/baseline.json; aliases move with `seggen promote`")
            typer.echo(check_against_alias(against, state.params_path, tolerance, arm))
            return
        typer.echo(ci_check(baseline, ci_params, tolerance, update, workdir))
    except Regression as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


export_app = typer.Typer(no_args_is_help=True, help="Export datasets for other tools.")
app.add_typer(export_app, name="export")


@export_app.command("detectron2")
def export_detectron2_cmd(
    out: Annotated[Path, typer.Option(help="Output directory for the dataset dicts.")] = Path("data/detectron2"),
    split: Annotated[
        list[str] | None,
        typer.Option(help="Real split(s) (default: segmenter.split and the first of evaluate.splits)."),
    ] = None,
    synthetic: Annotated[bool, typer.Option(help="Include the synthetic datasets at synthesize.out.")] = True,
) -> None:
    """Real + synthetic data as detectron2 dataset dicts (JSON) + a register.py for the official Mask2Former."""
    from seggen.segmenter.detectron2_export import export_detectron2

    counts = export_detectron2(state.params(), out, split, synthetic)
    for name, n in counts.items():
        typer.echo(f"{name}: {n} records")
    typer.echo(
        f"written to {out} (register with: import sys; sys.path.insert(0, '{out}'); from register import register_all)"
    )


# -- eval ---------------------------------------------------------------------------------------


@eval_app.command("semantic")
def eval_semantic(
    pred: Annotated[Path, typer.Option(help="Directory of predicted label PNGs.")],
    gt: Annotated[Path, typer.Option(help="Directory of ground-truth label PNGs (same file stems).")],
    num_classes: Annotated[
        int,
        typer.Option(
            min=1,
            max=4096,
            help="Number of classes N (predictions are 0..N-1; at most 4096: an N x N confusion matrix).",
        ),
    ],
    reduce_zero_label: Annotated[
        bool,
        typer.Option(
            "--reduce-zero-label/--no-reduce-zero-label",
            help="GT 0 -> ignored, 1..N -> 0..N-1 (ADE20K's label PNGs). Off by default, as in mmsegmentation.",
        ),
    ] = False,
    ignore_index: Annotated[int, typer.Option(help="GT value to ignore (mmsegmentation's default 255).")] = 255,
    meta: Annotated[
        Path | None, typer.Option(help="Dataset root or seggen_meta.json for class names (N=150: ADE20K names).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """mIoU / mAcc / aAcc / per-class IoU with mmsegmentation's IoUMetric semantics and defaults.

    Nothing is taken from params.yaml: the answer depends only on the options shown here, and the
    JSON records them under `settings`."""
    from seggen.metrics.semantic import evaluate_semantic_dirs
    from seggen.outputs import check_file

    _positive(num_classes, "--num-classes")
    if json_out:
        check_file(json_out, "--json")
    names = _class_names(num_classes, meta)
    result = evaluate_semantic_dirs(
        pred,
        gt,
        num_classes,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        class_names=names,
        progress=True,
    )
    _write_or_print(result, json_out)


def _class_names(n: int, meta: Path | None) -> list[str] | None:
    from seggen.data.meta import META_FILE, ade20k_meta, load_meta
    from seggen.errors import ConfigError

    if meta is not None:
        root = meta.parent if meta.name == META_FILE else meta
        m = load_meta(root) if (root / META_FILE).exists() else None
        if m is None:
            raise ConfigError(f"--meta {meta}: no {META_FILE} there")
        names = m.names
    elif n == 150:
        names = ade20k_meta().names
    else:
        return None
    if len(names) != n:
        raise ConfigError(f"--num-classes {n} does not match the {len(names)} classes of {meta or 'ADE20K'}")
    return names


@eval_app.command("panoptic")
def eval_panoptic(
    gt_json: Annotated[Path, typer.Option(help="Ground-truth panoptic JSON.")],
    gt_dir: Annotated[Path, typer.Option(help="Ground-truth panoptic PNG directory.")],
    pred_json: Annotated[Path, typer.Option(help="Predicted panoptic JSON.")],
    pred_dir: Annotated[Path, typer.Option(help="Predicted panoptic PNG directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """PQ / SQ / RQ (all, things, stuff) with the COCO panoptic API's semantics (categories: the GT JSON's)."""
    from seggen.metrics.panoptic import evaluate_panoptic
    from seggen.outputs import check_file

    if json_out:
        check_file(json_out, "--json")
    _write_or_print(evaluate_panoptic(gt_json, gt_dir, pred_json, pred_dir, progress=True), json_out)


@eval_app.command("instance")
def eval_instance(
    gt_json: Annotated[Path, typer.Option(help="Ground-truth COCO instances JSON.")],
    dt_json: Annotated[Path, typer.Option(help="Detections in COCO results format (segm: RLE or polygons).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """Mask AP / AP50 / AP75 / APs / APm / APl via pycocotools COCOeval (iouType segm)."""
    from seggen.metrics.instance import evaluate_instances
    from seggen.outputs import check_file

    if json_out:
        check_file(json_out, "--json")
    _write_or_print(evaluate_instances(gt_json, dt_json), json_out)


# errno values of OS errors a user can fix (a full disk, permissions, a path that is not there)
_USER_ERRNOS = {
    "ENOSPC",
    "EDQUOT",
    "EACCES",
    "EPERM",
    "EROFS",
    "ENOENT",
    "ENOTDIR",
    "EISDIR",
    "ENAMETOOLONG",
    "EFBIG",
    "EMFILE",
    "ELOOP",
}


def _fail(message: str, code: int, debug: bool) -> None:
    """Print `error: message` on its own line (after any progress bar) and exit."""
    import traceback

    from tqdm import tqdm as _tqdm

    for bar in list(getattr(_tqdm, "_instances", [])):  # end open bars' lines: the error starts a line of its own
        try:
            bar.close()
        except Exception:
            pass
    if debug:
        traceback.print_exc()
    sys.stderr.flush()
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def main() -> None:
    import errno

    from typer.exceptions import TyperException

    _plugins()

    debug = "--debug" in sys.argv[1:]
    try:
        rc = typer.main.get_command(app).main(args=sys.argv[1:], prog_name="seggen", standalone_mode=False)
    except TyperException as e:  # typer's click: a bad option or value -> one line, with where to look
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `seggen data` alone: its help
            typer.echo(ctx.get_help())
            sys.exit(0)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(e.format_message() + where, e.exit_code, debug)
    except typer.Abort:
        _fail("aborted", 1, debug)
    except SeggenError as e:
        _fail(str(e), 2, debug)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "")
        if name not in _USER_ERRNOS:
            _fail(
                f"unexpected {type(e).__name__}: {e} (a bug in seggen? re-run with --debug for the traceback)", 1, debug
            )
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        _fail(f"{where + ': ' if where else ''}{e.strerror or e}", 2, debug)
    except KeyboardInterrupt:
        _fail("interrupted", 130, debug)
    except MemoryError:
        _fail("out of memory (host RAM): lower the batch size, resolution or class count, or free memory", 2, debug)
    except Exception as e:
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text:
            # a full disk raised as another library's error (safetensors' SafetensorError, ...)
            _fail(f"the disk is full: No space left on device ({type(e).__name__} while writing)", 2, debug)
        _fail(f"unexpected {type(e).__name__}: {e} (a bug in seggen? re-run with --debug for the traceback)", 1, debug)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
