"""The `seggen` command. Every subcommand reads params.yaml through seggen.config; flags override it.

Errors that users can fix (bad params, bad data) print one line `error: ...` and exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seggen.config import DEFAULT_PARAMS, Params, load_params, parse_overrides
from seggen.errors import SeggenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegGen pipeline: data, generators (Text2Mask, Mask2Img), synthesis, Mask2Former, evaluation.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
eval_app = typer.Typer(no_args_is_help=True, help="Reference-exact metrics (mmseg mIoU, COCO PQ, COCO mask AP).")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")


class _State:
    params_path: Path = DEFAULT_PARAMS
    overrides: list[str] = []

    def params(self, extra: dict | None = None) -> Params:
        ov = parse_overrides(self.overrides)
        ov.update({k: v for k, v in (extra or {}).items() if v is not None})
        return load_params(self.params_path, ov)


state = _State()


@app.callback()
def _root(
    params: Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")] = DEFAULT_PARAMS,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", "-s", help="Override a parameter: KEY=VALUE (dotted key).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    state.params_path = params
    state.overrides = list(set_ or [])


def _write_or_print(result: dict, out: Optional[Path]) -> None:
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
    root: Annotated[Optional[Path], typer.Option(help="Override data.root.")] = None,
) -> None:
    """Generate the bundled benchmark (or check a real dataset root) at data.root."""
    from seggen.prepare import prepare as run

    p = state.params({"data.root": str(root) if root else None})
    out = run(p, force=force)
    typer.echo(f"dataset ready at {out}")


@data_app.command("check")
def data_check(
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (default: data.root).")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Split(s) to check (default: all).")] = None,
) -> None:
    """Load every sample of a dataset and report the first problem, naming the file."""
    from seggen.prepare import check_dataset

    p = state.params()
    counts = check_dataset(root or p.data.root, split)
    for s, n in counts.items():
        typer.echo(f"{s}: {n} samples ok")


# -- eval ---------------------------------------------------------------------------------------


@eval_app.command("semantic")
def eval_semantic(
    pred: Annotated[Path, typer.Option(help="Directory of predicted label PNGs.")],
    gt: Annotated[Path, typer.Option(help="Directory of ground-truth label PNGs (same file stems).")],
    num_classes: Annotated[int, typer.Option(help="Number of classes N (predictions are 0..N-1).")],
    reduce_zero_label: Annotated[
        Optional[bool], typer.Option(help="GT 0 -> ignored, 1..N -> 0..N-1 (default: eval.reduce_zero_label).")
    ] = None,
    ignore_index: Annotated[Optional[int], typer.Option(help="GT value to ignore (default: eval.ignore_index).")] = None,
    meta: Annotated[
        Optional[Path], typer.Option(help="Dataset root or seggen_meta.json for class names (N=150: ADE20K names).")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """mIoU / mAcc / aAcc / per-class IoU with mmsegmentation's semantics."""
    from seggen.metrics.semantic import evaluate_semantic_dirs

    p = state.params()
    names = _class_names(num_classes, meta)
    result = evaluate_semantic_dirs(
        pred,
        gt,
        num_classes,
        ignore_index=p.eval.ignore_index if ignore_index is None else ignore_index,
        reduce_zero_label=p.eval.reduce_zero_label if reduce_zero_label is None else reduce_zero_label,
        class_names=names,
        progress=True,
    )
    _write_or_print(result, json_out)


def _class_names(n: int, meta: Optional[Path]) -> list[str] | None:
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
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """PQ / SQ / RQ (all, things, stuff) with the COCO panoptic API's semantics."""
    from seggen.metrics.panoptic import evaluate_panoptic

    state.params()
    _write_or_print(evaluate_panoptic(gt_json, gt_dir, pred_json, pred_dir, progress=True), json_out)


@eval_app.command("instance")
def eval_instance(
    gt_json: Annotated[Path, typer.Option(help="Ground-truth COCO instances JSON.")],
    dt_json: Annotated[Path, typer.Option(help="Detections in COCO results format (segm).")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """Mask AP / AP50 / AP75 / APs / APm / APl via pycocotools COCOeval (iouType segm)."""
    from seggen.metrics.instance import evaluate_instances

    state.params()
    _write_or_print(evaluate_instances(gt_json, dt_json), json_out)


def main() -> None:
    try:
        app()
    except SeggenError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
