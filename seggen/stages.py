"""The pipeline's stages: each runs its implementation inside an MLflow stage run and logs its lineage.

The `seggen` CLI calls these, dvc.yaml calls the CLI and the Prefect flows run the dvc stages, so
there is one implementation of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seggen import tracking
from seggen.config import Params
from seggen.errors import DataError
from seggen.preflight import require_models


def _sections(params: Params, *names: str) -> dict[str, Any]:
    dump = params.model_dump(mode="json")
    return {n: dump[n] for n in names}


def _losses(path: Path) -> list[float]:
    return [r["loss"] for r in json.loads(path.read_text())["loss"]] if path.exists() else []


def prepare(params: Params, force: bool = False) -> Path:
    from seggen.prepare import prepare as run

    with tracking.stage_run("prepare", _sections(params, "seed", "data")) as mlrun:
        root = run(params, force=force)
        mlrun.log_dataset(root, "benchmark" if params.data.format == "benchmark" else root.name, "produced")
    return root


def caption(params: Params) -> dict:
    from seggen.captions import caption_dataset

    c = params.caption
    require_models(params, ("caption",))
    with tracking.stage_run("caption", _sections(params, "caption")) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "captioned", c.split)
        stats = caption_dataset(params.data.root, c.split, c.out, c.captioner, c.model, c.batch_size, c.max_new_tokens)
        mlrun.log_metrics(stats)
        mlrun.log_artifact(c.out)
    return stats


def train_generator(params: Params, kind: str) -> Path:
    """kind: text2mask | mask2img."""
    if kind == "text2mask":
        from seggen.generators.text2mask import train_text2mask as run
    else:
        from seggen.generators.mask2img import train_mask2img as run
    cfg = getattr(params, kind)
    require_models(params, (kind,))
    with tracking.stage_run(f"train_{kind}", _sections(params, "seed", "text_encoder", kind)) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "training", "training")
        mlrun.log_dataset(params.caption.out, "captions", "training")
        model_dir = run(params)
        out = Path(cfg.out)
        mlrun.log_losses(_losses(out / "train_log.json"))
        summary = json.loads((out / "train_summary.json").read_text())
        mlrun.log_metrics({k: v for k, v in summary.items() if k != "loss"}, prefix="train/")
        mlrun.log_artifact(out / "samples.png")
        mlrun.log_model(model_dir, kind, f"seggen-{kind}")
    return model_dir


def synthesize(params: Params, strategy: str, shard: int | None = None, num_shards: int = 1, dask: bool = False,
               regime: str | None = None) -> dict:
    """`params` already resolved for `regime` (Params.regime), which names the MLflow run."""
    from seggen.synthesis.synthesize import model_digest, run_shard

    if shard is None and num_shards != 1 and not dask:
        raise DataError("--num-shards needs --shard (or --dask to run all shards)")
    cfg = params.synthesize
    out = Path(cfg.out) / strategy
    with tracking.stage_run(f"synthesize_{strategy}" + (f"@{regime}" if regime else ""), _sections(params, "seed", "synthesize")) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "source", cfg.split)
        mlrun.log_dataset(params.caption.out, "captions", "source")
        gens = [cfg.mask2img] + ([cfg.text2mask] if strategy == "masksyn" else [])
        mlrun.set_tags({f"generator.{Path(g).parent.name}": model_digest(Path(g)) for g in gens if Path(g).exists()})
        if dask:
            from flows.synthesis import synthesize_on_dask

            res = synthesize_on_dask(params, strategy, num_shards if num_shards > 1 else None)
        else:
            res = run_shard(params, strategy, shard or 0, num_shards)
        mlrun.log_metrics({k: v for k, v in res.items() if isinstance(v, (int, float))}, prefix="synthesis/")
        if "kept" in res:  # the dataset is complete
            for name in ("manifest.jsonl", "summary.json", "grid.png"):
                mlrun.log_artifact(out / name)
    return res


def train_segmenter(params: Params, arm: str | None = None) -> Path:
    from seggen.segmenter.train import train_segmenter as run

    p = params.arm(arm) if arm else params
    cfg = p.segmenter
    require_models(p.model_copy(update={"arms": {}}), ("segmenter",))
    logged = _sections(p, "seed", "segmenter")
    if arm:
        logged["arm"] = arm
    with tracking.stage_run(f"train_segmenter@{arm}" if arm else "train_segmenter", logged) as mlrun:
        mlrun.log_dataset(p.data.root, "real", "training", cfg.split)
        if cfg.strategy != "real":
            for name in cfg.synthetic:
                mlrun.log_dataset(Path(cfg.synthetic_root) / name, name, "training")
        model_dir = run(p)
        mlrun.log_losses(_losses(Path(cfg.out) / "train_log.json"))
        info = json.loads((model_dir / "seggen_segmenter.json").read_text())
        mlrun.log_metrics(info["train"], prefix="train/")
        mlrun.log_model(model_dir, "mask2former", f"seggen-mask2former-{arm or 'segmenter'}")
    return model_dir


def scores(metrics: dict) -> dict:
    """The headline numbers of a metrics.json (what `dvc metrics` and the CI gate compare)."""
    out = {k: metrics["semantic"][k] for k in ("mIoU", "mAcc", "aAcc")}
    if "panoptic" in metrics:
        out.update({k: metrics["panoptic"][k] for k in ("PQ", "SQ", "RQ")})
        out.update({k: metrics["instance"][k] for k in ("AP", "AP50", "AP75")})
    return out


def evaluate(params: Params, split: str, arm: str | None = None, model: Path | None = None, out: Path | None = None,
             root: Path | None = None, task: str | None = None, size: int | None = None) -> dict:
    """Predict and score one split. With an arm (the pipeline): that arm's model, written to
    evaluate.out/ARM/SPLIT, panoptic too where the split has panoptic ground truth."""
    from seggen.io import staged_files, write_json
    from seggen.segmenter.evaluate import evaluate as run

    from seggen.outputs import check_dir

    ev = params.evaluate
    p = params.arm(arm) if arm else params
    model = Path(model or Path(p.segmenter.out) / "model")
    key = "--out" if out else "evaluate.out"
    out = check_dir(out or Path(ev.out) / (arm or "model") / split, key)  # before any compute
    if arm and task is None and ev.panoptic:
        from seggen.data.layout import detect_layout

        r = Path(root or p.data.root)
        layout = detect_layout(r, split)
        task = "panoptic" if layout is not None and layout.panoptic_json(r, split).is_file() else "semantic"
    name = f"evaluate@{arm}-{split}" if arm else f"evaluate-{split}"
    with tracking.stage_run(name, {"split": split, "arm": arm, "model": str(model), "task": task, "eval": p.eval.model_dump(mode="json")}) as mlrun:
        mlrun.log_dataset(root or p.data.root, "real", "evaluation", split)
        (out / "metrics.json").unlink(missing_ok=True)  # present only for a complete evaluation
        with staged_files(out, "evaluate", key) as tmp:  # a failed evaluation leaves the old files or none, never half-written ones
            metrics = run(p, model, split, tmp, root, task, size if size is not None else ev.size)
            (tmp / "metrics.json").unlink()
            s = scores(metrics)
            write_json(tmp / "scores.json", s)
            write_json(tmp / "per_class_iou.json", {"per_class_iou": [
                {"class": c, "iou": v} for c, v in metrics["semantic"]["per_class_iou"].items() if v is not None]}, indent=None)
        write_json(out / "metrics.json", metrics)
        mlrun.log_metrics(s, prefix=f"{split}/")
        mlrun.log_metrics(metrics["semantic"]["per_class_iou"], prefix=f"{split}/iou/")
        if "panoptic" in metrics:
            mlrun.log_metrics({k: v for k, v in metrics["panoptic"].items() if k != "per_class"}, prefix=f"{split}/panoptic/")
            mlrun.log_metrics({k: v for k, v in metrics["instance"].items() if k != "per_class"}, prefix=f"{split}/instance/")
        for f in ("metrics.json", "confusion.png", "per_class_iou.png", "predictions.png"):
            mlrun.log_artifact(out / f, f"eval/{split}")
        mlrun.set_tags({"model.source": str(model), "split": split, **({"arm": arm} if arm else {})})
    return metrics


def report(params: Params) -> dict:
    from seggen.report import build_report

    with tracking.stage_run("report", _sections(params, "arms", "evaluate", "report")) as mlrun:
        summary = build_report(params)
        out = Path(params.report.out)
        for arm, splits in summary["arms"].items():
            for split, s in splits.items():
                mlrun.log_metrics(s, prefix=f"{arm}/{split}/")
        for f in ("report.md", "summary.json", "miou.png"):
            mlrun.log_artifact(out / f)
        if params.report.results:  # the ablation page, from the MLflow runs
            from seggen.results import build_results

            res = build_results(params)
            mlrun.log_artifact(params.report.results)
            for name, g in res["groups"].items():
                mlrun.log_metrics({f"{s}/mIoU_{k}": g[s][k] for s in params.evaluate.splits for k in ("mean", "std")
                                   if g[s][k] is not None}, prefix=f"{name}/")
        if mlrun.parent_id:  # the headline numbers on the pipeline run too
            parent = tracking.StageRun(mlrun.client, mlrun.parent_id, None, mlrun.project, mlrun.tags)
            for arm, splits in summary["arms"].items():
                for split, s in splits.items():
                    parent.log_metrics(s, prefix=f"{arm}/{split}/")
            parent.log_artifact(out / "report.md")
    return summary
