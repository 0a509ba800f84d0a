"""Where the generation budget goes: the reference segmenter's failures on a tuning split (the
plan_synthesis stage).

The reference arm's segmenter (trained on real data only) is scored on a split that no reported
number reads: the bundled benchmark's `tuning` split, rendered with its own seeds (for real data, a
held-out fold of the training split, split `holdout`: the fold the reference arm trains without, its
segmenter.holdout). What it gets wrong becomes the plan:

- class weights: w_c = max(1 - IoU_c, floor) ** sharpness, normalised to mean 1 over the classes
  the split shows (a class it does not show weighs 1: nothing is known of it);
- source weights: per training image, the mean weight of the classes its caption names (the
  captions Text2Mask was trained on), normalised to mean 1: how often MaskSyn should draw its
  caption and ImgSyn repeat its mask (FreeMask's hardness-aware resampling, by class);
- class losses: the reference's mean per-pixel cross-entropy on each class's real pixels of the
  split, what a pixel filter compares a synthetic pixel's loss with.

With plan_synthesis.drawability, the reference is also scored on synthetic pairs drawn without a plan:
a class's drawability d_c = IoU_c(drawn) / IoU_c(real), the mean over those sets, capped at 1. The
weight becomes w_c x d_c (renormalised): weakness alone spends the budget on classes the generators
draw a few pixels wide, whose synthetic labels then teach wrong pixels. Classes under
min_drawability get d_c = 0, and the plan lists them as `undrawable`: the plan's pixel filter
ignores their synthetic pixels.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from seggen.config import Params
from seggen.errors import DataError


def class_weights(iou: dict[str, float | None], sharpness: float, floor: float) -> dict[str, float]:
    """Per-class IoU (percent; None: the split does not show the class) -> weights of mean 1 over
    the shown classes, larger for weaker ones; unshown classes weigh 1."""
    raw = {c: max(1.0 - v / 100.0, floor) ** sharpness for c, v in iou.items() if v is not None}
    mean = float(np.mean(list(raw.values()))) if raw else 0.0
    return {c: (raw[c] / mean if mean > 0 else 1.0) if c in raw else 1.0 for c in iou}


def drawability(real: dict[str, float | None], drawn: list[dict[str, float | None]], least: float, seen: float) -> dict:
    """Per class: IoU drawn / IoU real, the drawn IoU the mean over the sets of `drawn` (per-class IoU on
    synthetic pairs; None where a set labels no pixel of the class) that label the class, capped at 1; 0
    under `least`, 0 where no set labels it, and 0 where the real IoU is under `seen` (or unknown, or 0):
    a reference that does not see a class on real images cannot vouch for a drawing of it."""
    out = {}
    for c, r in real.items():
        got = [s[c] for s in drawn if s.get(c) is not None]
        d = min(1.0, float(np.mean(got)) / r) if got and r is not None and r > 0 and r >= seen else 0.0
        out[c] = d if d >= least else 0.0
    return out


def drawn_weights(weights: dict[str, float], draw: dict[str, float]) -> dict[str, float]:
    """Class weights x drawability, renormalised to the same mean as `weights` (all zero: as they are)."""
    raw = {c: w * draw.get(c, 1.0) for c, w in weights.items()}
    total = sum(raw.values())
    return {c: v * sum(weights.values()) / total for c, v in raw.items()} if total > 0 else raw


def source_weights(classes_of: dict[str, list[str]], weights: dict[str, float]) -> dict[str, float]:
    """Per source image, the mean weight of the classes its caption names (1 for none), normalised
    to mean 1 over the sources."""
    raw = {s: float(np.mean([weights.get(c, 1.0) for c in cs])) if cs else 1.0 for s, cs in classes_of.items()}
    mean = float(np.mean(list(raw.values()))) if raw else 1.0
    return {s: raw[s] / mean if mean > 0 else 0.0 for s in sorted(raw)}  # all 0: `allocate` spends evenly


def allocate(weights: list[float], total: int) -> list[int]:
    """`total` copies shared in proportion to `weights` by largest remainder (each item gets the floor
    of its exact share, the items with the largest remainders one more, ties to the earlier item):
    the blind budget exactly, every item within one copy of its share."""
    w = np.asarray(weights, np.float64)
    if not len(w):
        return []
    share = total * (w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w)))
    n = np.floor(share).astype(np.int64)
    n[np.argsort(n - share, kind="stable")[: total - int(n.sum())]] += 1
    return n.tolist()


def stop_reason(previous: dict, miou: float | None, rnd: int, split: str) -> str | None:
    """Why a closed loop ends before round `rnd` (None: it goes on). `previous`: the plan of round
    rnd-1, whose mIoU is its reference's on `split`; `miou`: round rnd-1's arm on the same split."""
    if previous.get("stopped"):
        return f"the loop ended before round {previous.get('round', 1)}"
    before = previous.get("mIoU")
    if before is None or miou is None:
        return f"no {split} mIoU to compare round {rnd - 1} with (a plan without the split)"
    if miou <= before:
        return f"round {rnd - 1} did not raise {split} mIoU ({before:.2f} -> {miou:.2f})"
    return None


def read_plan(path: Path, names: list[str], key: str = "synthesize.plan") -> dict:
    """A plan_synthesis plan.json, checked against the dataset's classes (one error naming the file)."""
    import json

    from seggen.errors import not_found

    if not path.is_file():
        raise DataError(f"{not_found(path, 'file', 'plan')} ({key}; `seggen plan_synthesis` writes one)")
    try:
        plan = json.loads(path.read_text())
        weights, sources = plan["class_weights"], plan["source_weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a plan of plan_synthesis ({e})") from None
    if sorted(weights) != sorted(names):
        other = sorted(set(weights) ^ set(names))
        raise DataError(f"{path}: its classes are not those of the data (e.g. {other[0]!r}); plan on this data")
    if any(not isinstance(v, (int, float)) or v < 0 for v in [*weights.values(), *sources.values()]):
        raise DataError(f"{path}: weights must be numbers >= 0")
    return plan


def class_probs(cls: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One image's Mask2Former outputs (Q x (C+1) class probabilities, Q x H x W mask probabilities)
    -> C x H x W per-pixel class probabilities: sum over queries of p(class) x p(pixel in mask),
    normalised over the classes (the semantic map `seggen evaluate` takes the argmax of)."""
    prob = torch.einsum("qc,qhw->chw", cls[:, :-1], masks)
    return prob / prob.sum(0, keepdim=True).clamp_min(1e-12)


def pixel_nll(prob: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """-log p(labelled class) per pixel (labels 1..C; 0 and labels past C score as class 1 or C: mask them)."""
    target = torch.from_numpy(labels.astype(np.int64) - 1).clamp(0, prob.shape[0] - 1)
    return -prob.gather(0, target[None])[0].clamp_min(1e-12).log()


@torch.no_grad()
def score(
    params: Params,
    model_dir: Path,
    split: str,
    progress: bool = True,
    root: Path | None = None,
    only: list[int] | None = None,
) -> dict:
    """The segmenter on every image of `split` of `root` (default: data.root), or on the images `only`
    lists (indices in id order), as `seggen evaluate` predicts and scores it -> {"mIoU",
    "per_class_iou", "class_loss", "num_images"}. class_loss: mean
    -log p(true class) over the class's labelled pixels, p the Mask2Former semantic probabilities (class
    x mask, normalised)."""
    from seggen.data.images import load_label_png, load_rgb
    from seggen.data.meta import label_mismatch
    from seggen.metrics.semantic import SemanticAccumulator
    from seggen.segmenter.evaluate import eval_set, infer, semantic_from
    from seggen.segmenter.model import load_model

    model, _ = load_model(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    with tempfile.TemporaryDirectory(prefix="seggen_plan_") as tmp:  # COCO's semantic ground truth goes here
        es = eval_set(params, split, root, Path(tmp), progress, only)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        differ = label_mismatch(names, es.names)
        if differ:
            raise DataError(f"{model_dir}: its classes are not those of {es.root}: {differ}")
        n_cls, ev = len(names), params.eval
        acc = SemanticAccumulator(n_cls, ev.ignore_index, ev.reduce_zero_label)
        loss_sum, pixels = np.zeros(n_cls), np.zeros(n_cls)
        n, bs = len(es.stems), 16
        desc = f"plan_synthesis {root} {split}" if root else f"plan_synthesis {split}"
        bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
        for b in range(0, n, bs):
            idx = range(b, min(n, b + bs))
            cls, masks = infer(model, [load_rgb(es.image_paths[i]) for i in idx], params.evaluate.size, device)
            for j, i in enumerate(idx):
                gt = load_label_png(es.label_paths[i])
                acc.add(semantic_from(cls[j], masks[j]), gt, es.stems[i])
                # labels 1..N are the classes (0 and the ignore index are not scored)
                valid = torch.from_numpy((gt > 0) & (gt <= n_cls))
                nll = pixel_nll(class_probs(cls[j], masks[j]), gt)
                t = (torch.from_numpy(gt.astype(np.int64)) - 1)[valid].numpy()
                loss_sum += np.bincount(t, weights=nll[valid].double().numpy(), minlength=n_cls)
                pixels += np.bincount(t, minlength=n_cls)
            bar.update(len(idx))
        bar.close()
    m = acc.metrics(names)
    loss = {c: (float(loss_sum[k] / pixels[k]) if pixels[k] else None) for k, c in enumerate(names)}
    return {"mIoU": m["mIoU"], "per_class_iou": m["per_class_iou"], "class_loss": loss, "num_images": n}


def drawn_iou(params: Params, model_dir: Path, root: Path, progress: bool = True) -> dict[str, float | None]:
    """The segmenter's per-class IoU on a synthetic set (split synthesize.split), None for a class no mask
    of the set labels: the segmenter may still predict it (IoU 0), which says nothing of a drawing."""
    sc = score(params, model_dir, params.synthesize.split, progress, root)
    return {c: v if sc["class_loss"][c] is not None else None for c, v in sc["per_class_iou"].items()}


def planning_fold(params: Params) -> dict:
    """plan_synthesis.split `holdout`: the reference arm's held-out fold of its training split -> {split,
    share, indices, ids}; an error naming the key when the reference trains on every image."""
    import json

    from seggen.config.experiments import arm
    from seggen.data.layout import open_split
    from seggen.segmenter.data import holdout_fold, holdout_record
    from seggen.segmenter.model import SEG_META

    cfg = params.plan_synthesis
    ref = arm(params, cfg.reference).segmenter
    if not ref.holdout:
        raise DataError(
            f"plan_synthesis.split: holdout scores arm {cfg.reference!r} on training images it did not see, but it "
            "trains on all of them: plan with a real-only arm of its own, e.g. arms.reference: {strategy: real, "
            "holdout: 0.1} and plan_synthesis.reference: reference (the reported arms keep every image)"
        )
    ids = open_split(params.data.root, ref.split).ids
    idx = holdout_fold(params.seed, len(ids), ref.holdout)
    # the model must be the one trained without this fold (a direct `seggen plan_synthesis` has no DVC to say so)
    meta = Path(params.arms_root) / cfg.reference / "model" / SEG_META
    trained = json.loads(meta.read_text()).get("holdout") if meta.is_file() else None
    expect = holdout_record(params.seed, ref.holdout, idx)
    if trained != expect:
        raise DataError(
            f"{meta}: trained with held-out fold {trained}, not {expect}; train the reference again "
            f"(train_segmenter@{cfg.reference})"
        )
    return {"split": ref.split, "share": ref.holdout, "indices": idx.tolist(), "ids": [ids[i] for i in idx]}


def plan_synthesis(params: Params, progress: bool = True) -> dict:
    """Score the reference arm on the planning split and write plan_synthesis.out: plan.json and
    plan.png (per class: the reference's IoU and the share of the budget the plan gives it). In a
    later round of a loop (plan_synthesis.previous), the plan also says whether the loop goes on:
    `stopped` is why not (the reference, the last round's arm, did not beat the previous plan's mIoU)."""
    from seggen.data.captions import read_captions
    from seggen.data.layout import detect_layout
    from seggen.io import atomic_dir, check_dir, digest_tree, write_json
    from seggen.reporting.charts import grouped_bars, note_picture

    cfg = params.plan_synthesis
    if cfg.reference not in params.arms:
        raise DataError(f"plan_synthesis.reference: {cfg.reference!r} is not an arm (arms: {', '.join(params.arms)})")
    model_dir = Path(params.arms_root) / cfg.reference / "model"
    if not model_dir.is_dir():
        raise DataError(f"{model_dir}: not found; train the reference arm first (train_segmenter@{cfg.reference})")
    out = check_dir(cfg.out, "plan_synthesis.out")  # before any compute
    if cfg.previous is not None and not Path(cfg.previous).is_file():
        read_plan(Path(cfg.previous), [], "plan_synthesis.previous")  # names the missing file
    for d in cfg.drawability:
        if detect_layout(d, params.synthesize.split) is None:
            raise DataError(f"{d}: no dataset with split {params.synthesize.split!r} (plan_synthesis.drawability)")
    # split `holdout`: the fold of the training split that the reference trains without
    fold = planning_fold(params) if cfg.split == "holdout" else None
    if fold is not None:
        scored, skipped = score(params, model_dir, fold["split"], progress, only=fold["indices"]), None
    elif detect_layout(params.data.root, cfg.split) is None:
        # real ADE20K / COCO have no tuning split; scoring a held-out fold of training needs a reference
        # trained without it: until then, an even plan that says why
        from transformers import AutoConfig

        labels = AutoConfig.from_pretrained(model_dir).id2label
        names = [labels[i] for i in sorted(labels)]
        scored = {"mIoU": None, "per_class_iou": dict.fromkeys(names), "class_loss": dict.fromkeys(names)}
        scored["num_images"] = 0
        skipped = f"{params.data.root} has no split {cfg.split!r}: every class and source weighs 1"
    else:
        scored, skipped = score(params, model_dir, cfg.split, progress), None
    weights = class_weights(scored["per_class_iou"], cfg.sharpness, cfg.floor)
    drawn = {}
    if cfg.drawability and not skipped:  # what the reference sees of each class on pairs drawn without a plan
        drawn = {str(d): drawn_iou(params, model_dir, Path(d), progress) for d in cfg.drawability}
        draw = drawability(scored["per_class_iou"], list(drawn.values()), cfg.min_drawability, cfg.min_real_iou)
        weights = drawn_weights(weights, draw)
    captions = read_captions(params.caption.out)
    plan = {
        "reference": cfg.reference,
        "model": digest_tree(model_dir),
        "split": cfg.split,
        "skipped": skipped,
        **({"holdout": {k: fold[k] for k in ("split", "share", "ids")}} if fold else {}),
        "num_images": scored["num_images"],
        "mIoU": scored["mIoU"],
        "per_class_iou": scored["per_class_iou"],
        "class_weights": weights,
        "class_loss": scored["class_loss"],
        "source_weights": source_weights({i: list(r.classes) for i, r in captions.items()}, weights),
    }
    if drawn:
        plan["drawability"] = {"per_class": draw, "iou_drawn": drawn, "min": cfg.min_drawability}
        plan["undrawable"] = [c for c in draw if draw[c] == 0]  # weigh 0; the plan's pixel filter ignores them
    if cfg.previous is not None:  # a later round of a closed loop: go on only if the last round helped
        previous = read_plan(Path(cfg.previous), list(weights), "plan_synthesis.previous")
        plan["round"] = cfg.round
        plan["previous"] = {"plan": str(cfg.previous), "reference": previous["reference"], "mIoU": previous["mIoU"]}
        plan["stopped"] = stop_reason(previous, scored["mIoU"], cfg.round, cfg.split)
    names = list(weights)
    total = sum(weights.values())
    with atomic_dir(out, "plan_synthesis", "plan_synthesis.out") as tmp:
        write_json(tmp / "plan.json", plan)
        if skipped:
            note_picture(tmp / "plan.png", f"no plan: {skipped}")
            return plan
        iou = [v if v is not None and not math.isnan(v) else None for v in scored["per_class_iou"].values()]
        bars = {f"IoU on {cfg.split} (%)": iou}
        if drawn:
            bars["drawability (%)"] = [100 * draw[c] for c in names]
        bars["share of the budget (%)"] = [100 * weights[c] / total if total else 0.0 for c in names]
        grouped_bars(
            names,
            bars,
            tmp / "plan.png",
            "%",
            rotate=len(names) > 12,
        )
    return plan
