"""The other commands: params, sampling, the metrics CLIs, comparison, promotion, the CI gate, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seggen.cli import _positive, _write_or_print, app, state
from seggen.errors import ConfigError

eval_app = typer.Typer(no_args_is_help=True, help="Reference-exact metrics (mmseg mIoU, COCO PQ, COCO mask AP).")
app.add_typer(eval_app, name="eval")
sample_app = typer.Typer(no_args_is_help=True, help="Sample from a trained generator.")
app.add_typer(sample_app, name="sample")

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
    from seggen.pipeline import params_doc

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
    from seggen.io import check_dir, save_grid, staged_files, write_png

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
    image: Annotated[
        Path | None, typer.Option(help="An image to start from (img2img): re-drawn under the mask, layout kept.")
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="With --image: how far into the schedule it is noised, (0, 1]; default 0.6.")
    ] = None,
) -> None:
    """Generate images for one mask."""
    from seggen.generators.mask2img import sample_mask2img_cli
    from seggen.io import check_dir

    _positive(n, "--n")
    if strength is not None and image is None:
        raise ConfigError("--strength: only with --image (the image it noises)")
    strength = 0.6 if strength is None else strength
    if not 0 < strength <= 1:
        raise ConfigError(f"--strength {strength}: must be in (0, 1]")
    check_dir(out, "--out")  # before sampling, not after
    p = state.params({"mask2img.sample.steps": steps, "mask2img.sample.guidance_scale": guidance_scale})
    s = p.mask2img.sample
    if image is not None and int(s.steps * strength) < 1:
        raise ConfigError(f"--strength {strength}: no step of {s.steps} left to run (steps x strength < 1)")
    written = sample_mask2img_cli(
        model or Path(p.mask2img.out) / "model",
        mask,
        labels,
        prompt,
        n,
        out,
        p.seed,
        s.steps,
        s.guidance_scale,
        image,
        strength,
    )
    typer.echo(f"{written} images written to {out}")


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
    from seggen.pipeline import registry

    for alias, v in registry.promote(state.params(), arm).items():
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
    from seggen.pipeline.ci_check import Regression, check_against_alias, ci_check

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
    from seggen.io import check_file
    from seggen.metrics.semantic import evaluate_semantic_dirs

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
    from seggen.io import check_file
    from seggen.metrics.panoptic import evaluate_panoptic

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
    from seggen.io import check_file
    from seggen.metrics.instance import evaluate_instances

    if json_out:
        check_file(json_out, "--json")
    _write_or_print(evaluate_instances(gt_json, dt_json), json_out)


# errno values of OS errors a user can fix (a full disk, permissions, a path that is not there)
