"""The pipeline's stages: each runs its implementation inside an MLflow stage run and logs its lineage.

The `seggen` CLI calls these, dvc.yaml calls the CLI and the Prefect flows run the dvc stages, so
there is one implementation of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seggen.config import Params
from seggen.io import check_dir
from seggen.pipeline import tracking
from seggen.pipeline.preflight import require_models


def _sections(params: Params, *names: str) -> dict[str, Any]:
    dump = params.model_dump(mode="json")
    return {n: dump[n] for n in names}


def _losses(path: Path) -> list[float]:
    return [r["loss"] for r in json.loads(path.read_text())["loss"]] if path.exists() else []


# a round of the closed loop runs these stages under its own DVC stage names (dvc.yaml)
ROUND_STAGES = {
    "plan_synthesis": "plan_round",
    "synthesize": "synthesize_round",
    "train_segmenter": "train_round",
    "evaluate": "evaluate_round",
}


def _stage(params: Params, stage: str, arm: str | None) -> str:
    """The name of the DVC stage that runs `stage` for `arm` (its MLflow stage run's name)."""
    return ROUND_STAGES[stage] if arm in params.loop.rounds and params.ablation is None else stage


def _system(params: Params) -> float | None:
    """The system-metrics sampling interval of the training stages, or None (off)."""
    t = params.tracking
    return t.system_metrics_interval if t.system_metrics else None


def check_models(params: Params, out: Path | None = None) -> tuple[list, list[str]]:
    """Resolve every pretrained model the params name, in seconds: ([(ref, problem or None)], lines).
    `out` gets the lines only when every model resolves (the DVC stage's output)."""
    from seggen.io import check_file, write_text
    from seggen.pipeline.preflight import check_models as run

    if out:
        check_file(out, "--out")
    results = run(params)
    lines = [f"{ref.key}: {ref.value}: {'ok' if problem is None else 'FAILED'}" for ref, problem in results]
    lines = lines or ["no pretrained models configured (everything trains from scratch)"]
    if out and not any(problem for _, problem in results):
        write_text(out, "\n".join(lines) + "\n")
    return results, lines


def check_data(
    params: Params, root: Path | None = None, splits: list[str] | None = None, out: Path | None = None
) -> list[str]:
    """Load every sample of a dataset root (default data.root); stops at the first problem, naming the file."""
    from seggen.data.prepare import check_dataset
    from seggen.io import check_file, write_text

    if out:
        check_file(out, "--out")
    lines = [f"{s}: {n} ok" for s, n in check_dataset(root or params.data.root, splits).items()]
    if out:
        write_text(out, "\n".join(lines) + "\n")
    return lines


def prepare(params: Params, force: bool = False) -> Path:
    from seggen.data.prepare import prepare as run

    with tracking.stage_run("prepare", _sections(params, "seed", "data")) as mlrun:
        root = run(params, force=force)
        mlrun.log_dataset(root, "benchmark" if params.data.format == "benchmark" else root.name, "produced")
    return root


def caption(params: Params) -> dict:
    from seggen.data.captions import caption_dataset

    c = params.caption
    require_models(params, ("caption",))
    with tracking.stage_run("caption", _sections(params, "caption")) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "captioned", c.split)
        stats = caption_dataset(params.data.root, c.split, c.out, c.captioner, c.model, c.batch_size, c.max_new_tokens)
        mlrun.log_metrics(stats)
        mlrun.log_artifact(c.out)
    return stats


def _worker() -> bool:
    """A process of `accelerate launch` other than the main one: it trains its share and returns; the
    MLflow run, the logged files and the outputs are the main process's alone."""
    from seggen.training import is_main_process

    return not is_main_process()


def _picked(params: Params, stage: str, arm: str | None) -> tuple[Params, str]:
    """The params of run `arm` (a variant, a regime, REGIME-VARIANT or an arm: Params.pick) and the
    MLflow run's name, the DVC stage's: STAGE or STAGE@ARM."""
    return (params.pick(arm), f"{stage}@{arm}") if arm else (params, stage)


def prepare_corpus(params: Params, arm: str | None = None) -> dict:
    """The captioned, unlabelled corpus the prior learns from (seggen.data.corpus)."""
    from seggen.data.corpus import prepare_corpus as run

    params, name = _picked(params, "prepare_corpus", arm)
    with tracking.stage_run(name, _sections(params, "seed", "prior")) as mlrun:
        summary = run(params)
        mlrun.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if "distance_to_labelled" in summary:
            mlrun.log_metrics(summary["distance_to_labelled"], prefix="distance_to_labelled/")
            mlrun.log_artifact(Path(params.prior.corpus.out) / "preview.png")
        mlrun.log_artifact(Path(params.prior.corpus.out) / "summary.json")
    return {**summary, "out": str(params.prior.corpus.out)}


def train_prior(params: Params, arm: str | None = None) -> Path:
    """The text-to-image prior pretrained on the corpus (skipped with real mask2img weights)."""
    from seggen.generators.prior import train_prior

    params, name = _picked(params, "train_prior", arm)
    if _worker():
        return train_prior(params)
    with tracking.stage_run(
        name, _sections(params, "seed", "text_encoder", "prior"), system_metrics=_system(params)
    ) as mlrun:
        out = Path(params.prior.out)
        mlrun.log_dataset(params.prior.corpus.out, "corpus", "training")
        model_dir = train_prior(params)
        if (out / "train_summary.json").exists() and (out / "samples.png").exists():
            mlrun.log_losses(_losses(out / "train_log.json"))
            summary = json.loads((out / "train_summary.json").read_text())
            mlrun.log_metrics({k: v for k, v in summary.items() if k != "loss"}, prefix="train/")
            mlrun.log_artifact(out / "samples.png")
            mlrun.log_model(model_dir, "prior")
    return model_dir


def train_text2mask(params: Params) -> Path:
    """Text2Mask: caption -> colour-map mask."""
    from seggen.generators.text2mask import train_text2mask as run

    return _train_generator(params, "text2mask", run, None)


def train_mask2img(params: Params, arm: str | None = None) -> Path:
    """Mask2Img: colour map + caption -> image (a ControlNet over the prior or a pretrained base)."""
    from seggen.generators.mask2img import train_mask2img as run

    return _train_generator(params, "mask2img", run, arm)


def _train_generator(params: Params, kind: str, run, arm: str | None) -> Path:
    params, name = _picked(params, f"train_{kind}", arm)
    cfg = getattr(params, kind)
    if _worker():
        return run(params)
    require_models(params, (kind,))
    with tracking.stage_run(
        name, _sections(params, "seed", "text_encoder", kind), system_metrics=_system(params)
    ) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "training", "training")
        mlrun.log_dataset(params.caption.out, "captions", "training")
        model_dir = run(params)
        out = Path(cfg.out)
        mlrun.log_losses(_losses(out / "train_log.json"))
        summary = json.loads((out / "train_summary.json").read_text())
        mlrun.log_metrics({k: v for k, v in summary.items() if k != "loss"}, prefix="train/")
        mlrun.log_artifact(out / "samples.png")
        sample = {"num_inference_steps": cfg.sample.steps, "guidance_scale": cfg.sample.guidance_scale}
        mlrun.log_model(model_dir, kind, sample={**sample, "seed": params.seed})
    return model_dir


def synthesize(
    params: Params,
    strategy: str,
    shard: int | None = None,
    num_shards: int = 1,
    dask: bool = False,
    arm: str | None = None,
) -> dict:
    """A MaskSyn or ImgSyn dataset at synthesize.out/STRATEGY; with `arm` (a regime, a variant or
    REGIME-VARIANT), that run's (MLflow: synthesize@ARM-STRATEGY)."""
    from seggen.synthesis.plan import model_digest
    from seggen.synthesis.synthesize import synthesize as run

    params = params.pick(arm) if arm else params
    cfg = params.synthesize
    out = Path(cfg.out) / strategy
    logged = _sections(params, "seed", "synthesize")
    name = f"{_stage(params, 'synthesize', arm)}@{arm}-{strategy}" if arm else f"synthesize@{strategy}"  # DVC's
    with tracking.stage_run(name, logged) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "source", cfg.split)
        mlrun.log_dataset(params.caption.out, "captions", "source")
        if cfg.plan:  # lineage: the plan that spent the budget
            mlrun.log_dataset(cfg.plan, "plan", "plan")
        if mlrun.run_id:  # hashing real generators reads gigabytes: only for a run that records it
            gens = [cfg.mask2img] + ([cfg.text2mask] if strategy == "masksyn" else [])
            mlrun.set_tags(
                {f"generator.{Path(g).parent.name}": model_digest(Path(g)) for g in gens if Path(g).exists()}
            )
        res = run(params, strategy, shard, num_shards, dask)
        mlrun.log_metrics({k: v for k, v in res.items() if isinstance(v, (int, float))}, prefix="synthesis/")
        if "kept" in res:  # the dataset is complete
            for name in ("manifest.jsonl", "summary.json", "grid.png"):
                mlrun.log_artifact(out / name)
    return {**res, "out": str(out)}


def arm_tags(params: Params, arm: str | None) -> dict[str, Any]:
    """What tells the registered segmenter versions apart: arm, regime, group, seed, strategy."""
    cfg = params.segmenter
    tags = {
        "arm": arm or "segmenter",
        "strategy": cfg.strategy,
        "synthetic": ",".join(cfg.synthetic) if cfg.strategy != "real" else "",
        "seed": cfg.seed if cfg.seed is not None else params.seed,
        "real_subset": cfg.real_subset,
    }
    parts = (arm or "").split("-")
    if len(parts) >= 3 and parts[0] in params.regimes and parts[-1].startswith("s"):  # REGIME-GROUP-sSEED
        tags.update(regime=parts[0], group="-".join(parts[1:-1]))
    return tags


def train_segmenter(params: Params, arm: str | None = None) -> Path:
    from seggen.segmenter.train import train_segmenter as run

    p = params.arm(arm) if arm else params
    cfg = p.segmenter
    if _worker():
        return run(p)
    require_models(p.model_copy(update={"arms": {}}), ("segmenter",))
    logged = _sections(p, "seed", "segmenter")
    if arm:
        logged["arm"] = arm
    name = f"{_stage(params, 'train_segmenter', arm)}@{arm}" if arm else "train_segmenter"
    with tracking.stage_run(name, logged, system_metrics=_system(params)) as mlrun:
        mlrun.log_dataset(p.data.root, "real", "training", cfg.split)
        if cfg.strategy != "real":
            roots = cfg.synthetic_roots  # several: the rounds of a closed loop, the lineage to each
            for root in roots:
                for name in cfg.synthetic:
                    mlrun.log_dataset(root / name, name if len(roots) == 1 else f"{root.name}/{name}", "training")
        model_dir = run(p)
        mlrun.log_losses(_losses(Path(cfg.out) / "train_log.json"))
        info = json.loads((model_dir / "seggen_segmenter.json").read_text())
        mlrun.log_metrics(info["train"], prefix="train/")
        mlrun.log_model(model_dir, "segmenter", arm_tags(p, arm))
    return model_dir


def evaluate(
    params: Params,
    split: str,
    arm: str | None = None,
    model: Path | None = None,
    out: Path | None = None,
    root: Path | None = None,
    task: str | None = None,
    size: int | None = None,
) -> dict:
    """Predict and score one split. With an arm (the pipeline): that arm's model, written to
    evaluate.out/ARM/SPLIT, panoptic too where the split has panoptic ground truth."""
    from seggen.segmenter.evaluate import evaluate as run
    from seggen.segmenter.evaluate import scores

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
    name = f"{_stage(params, 'evaluate', arm)}@{arm}-{split}" if arm else f"evaluate-{split}"
    logged = {"split": split, "arm": arm, "model": str(model), "task": task, "eval": p.eval.model_dump(mode="json")}
    with tracking.stage_run(name, logged) as mlrun:
        mlrun.log_dataset(root or p.data.root, "real", "evaluation", split)
        metrics = run(p, model, split, out, root, task, size if size is not None else ev.size, key=key)
        mlrun.log_metrics(scores(metrics), prefix=f"{split}/")
        mlrun.log_metrics({"images_per_s": metrics["images_per_s"]}, prefix=f"{split}/run/")
        mlrun.log_model_metrics(model, scores(metrics), prefix=f"{split}/")
        mlrun.log_metrics(metrics["semantic"]["per_class_iou"], prefix=f"{split}/iou/")
        for part in ("panoptic", "instance"):
            if part in metrics:
                mlrun.log_metrics(
                    {k: v for k, v in metrics[part].items() if k != "per_class"}, prefix=f"{split}/{part}/"
                )
        for f in ("metrics.json", "confusion.png", "per_class_iou.png", "predictions.png"):
            mlrun.log_artifact(out / f, f"eval/{split}")
        mlrun.set_tags({"model.source": str(model), "split": split, **({"arm": arm} if arm else {})})
    return metrics


def plan_synthesis(params: Params, arm: str | None = None) -> dict:
    """The reference arm scored on the planning split -> where the generation budget should go; with
    `arm` (a regime of ablation.targeted), that regime's plan (MLflow: plan_synthesis@REGIME)."""
    from seggen.synthesis.targeting import plan_synthesis as run

    params = params.pick(arm) if arm else params
    cfg = params.plan_synthesis
    name = f"{_stage(params, 'plan_synthesis', arm)}@{arm}" if arm else "plan_synthesis"  # the DVC stage's name
    with tracking.stage_run(name, _sections(params, "plan_synthesis", "evaluate")) as mlrun:
        mlrun.log_dataset(params.data.root, "real", "planning", cfg.split)
        plan = run(params)
        # lineage: the segmenter scored (in a loop, the arm of the round before)
        mlrun.log_dataset(Path(params.arms_root) / cfg.reference / "model", f"segmenter-{cfg.reference}", "reference")
        if plan["mIoU"] is not None:
            mlrun.log_metrics({"mIoU": plan["mIoU"]}, prefix=f"{cfg.split}/")
        mlrun.log_metrics({k: v for k, v in plan["per_class_iou"].items() if v is not None}, prefix=f"{cfg.split}/iou/")
        mlrun.log_metrics(plan["class_weights"], prefix="weight/")
        for f in ("plan.json", "plan.png"):
            mlrun.log_artifact(Path(cfg.out) / f, "plan")
        tags = {"plan.reference": cfg.reference, "plan.model": plan["model"]}
        if arm in params.loop.rounds:
            tags["plan.round"] = str(cfg.round)
        if cfg.previous is not None:  # a later round of a loop: the lineage to the round before
            tags |= {"plan.round": str(cfg.round), "plan.previous": str(cfg.previous)}
            tags["plan.stopped"] = plan["stopped"] or "no"
        mlrun.set_tags(tags)
    return plan


def report(params: Params) -> dict:
    from seggen.reporting.report import ARTIFACTS, build_report
    from seggen.reporting.results import build_results
    from seggen.reporting.scores import decision_split

    with tracking.stage_run("report", _sections(params, "arms", "evaluate", "report", "synthesize")) as mlrun:
        summary = build_report(params)
        out = Path(params.report.out)
        for arm, splits in summary["arms"].items():
            for split, s in splits.items():
                mlrun.log_metrics(s, prefix=f"{arm}/{split}/")
        for f in ARTIFACTS:
            mlrun.log_artifact(out / f)
        split = decision_split(params)  # in-domain: the tuning split where there is one
        in_domain = {
            a: s[split]["mIoU"] for a, s in summary["arms"].items() if s.get(split, {}).get("mIoU") is not None
        }
        if in_domain:  # which arm `seggen promote` would make champion; the report moves no alias itself
            mlrun.set_tags({"candidate.champion": max(in_domain, key=in_domain.get)})
        if params.report.results:  # the ablation page
            res = build_results(params)
            mlrun.log_artifact(params.report.results)
            for name, g in res["groups"].items():
                mlrun.log_metrics(
                    {
                        f"{s}/mIoU_{k}": g[s][k]
                        for s in params.evaluate.splits
                        for k in ("mean", "std")
                        if g[s][k] is not None
                    },
                    prefix=f"{name}/",
                )
        if mlrun.parent_id:  # the headline numbers on the pipeline run too
            parent = tracking.StageRun(mlrun.client, mlrun.parent_id, None, mlrun.project, mlrun.tags)
            for arm, splits in summary["arms"].items():
                for split, s in splits.items():
                    parent.log_metrics(s, prefix=f"{arm}/{split}/")
            parent.log_artifact(out / "report.md")
    return summary
