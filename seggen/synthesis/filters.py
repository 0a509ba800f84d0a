"""Quality filters for synthetic pairs, scored by a segmenter: a small probe trained on the real
training split (filter.scorer: probe), or the plan's reference segmenter, the Mask2Former the
synthetic data is for (filter.scorer: plan), with its per-class losses on the planning split.

(a) sample level: the segmenter predicts on the synthetic image; the sample is dropped when the
    mIoU of that prediction against the synthetic mask is below `filter.min_miou`.
(b) pixel level (FreeMask's idea): pixels whose loss exceeds `margin` x the mean loss of their
    class on real data are set to ignore -- label 0 in the ADE20K-layout PNG, which training and
    evaluation map to 255 (reduce_zero_label), and void in the panoptic PNG. With the plan's scorer,
    every pixel of a class the plan found undrawable (plan.json `undrawable`) is ignored too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen.config import Params
from seggen.io import atomic_dir, check_dir
from seggen.synthesis import probe

log = logging.getLogger(__name__)


def _fingerprint(params: Params) -> str:
    f = params.synthesize.filter
    blob = json.dumps(
        [
            params.seed,
            str(params.data.root),
            params.data.model_dump(mode="json"),
            params.synthesize.split,
            f.resolution,
            f.steps,
            f.batch_size,
            params.synthesize.real_subset,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PlanScorer:
    """The plan's reference Mask2Former as a scorer: labels 1..N and per-pixel -log p(label) at the
    image's own size, by the arithmetic its class losses on the planning split were computed with."""

    def __init__(self, model_dir: Path, size: int | None, device: str | None):
        from seggen.segmenter.model import load_model

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, _ = load_model(model_dir)
        self.model.to(self.device).eval()
        self.num_classes, self.size = self.model.config.num_labels, size

    @torch.no_grad()
    def __call__(self, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        from seggen.segmenter.evaluate import infer
        from seggen.synthesis.targeting import class_probs, pixel_nll

        cls, masks = infer(self.model, [image], self.size, self.device)
        prob = class_probs(cls[0], masks[0])
        return (prob.argmax(0) + 1).numpy(), pixel_nll(prob, labels)


@dataclass
class QualityFilter:
    model: probe.ProbeSegmenter | PlanScorer
    class_loss: list[float | None]  # mean loss per class 1..N on real data
    resolution: int | None  # the probe's input size (the plan's scorer reads images at their own)
    sample: bool
    min_miou: float
    pixel: bool
    margin: float
    undrawable: tuple[int, ...] = ()  # labels (1..N) whose every synthetic pixel is ignored

    def score(self, image: np.ndarray, labels: np.ndarray) -> tuple[float | None, np.ndarray | None]:
        """-> (sample mIoU in percent or None, ignore mask at labels' size or None)."""
        if isinstance(self.model, PlanScorer):
            pred, loss = self.model(image, labels)
            miou = image_miou(pred, labels.astype(np.int64), self.model.num_classes) if self.sample else None
            return miou, (self._bad(loss, torch.from_numpy(labels.astype(np.int64))).numpy() if self.pixel else None)
        r = self.resolution
        h, w = labels.shape
        x = probe.to_tensor(np.asarray(Image.fromarray(image).resize((r, r), Image.BOX)))[None]
        y = torch.from_numpy(
            np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((r, r), Image.NEAREST)).astype(np.int64)
        )[None]
        miou = None
        if self.sample:
            pred = probe.predict(self.model, x)[0].numpy()
            miou = image_miou(pred, y[0].numpy(), self.model.num_classes)
        ignore = None
        if self.pixel:
            bad = self._bad(probe.pixel_losses(self.model, x, y)[0], y[0])
            ignore = np.asarray(Image.fromarray(bad.numpy().astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(
                bool
            )
        return miou, ignore

    def _bad(self, loss: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Labelled pixels whose loss exceeds margin x their class's mean loss on real data (a class
        without real pixels is never filtered; labels past the classes neither)."""
        ref = torch.tensor([0.0] + [v if v is not None else float("inf") for v in self.class_loss])
        y = torch.where(y < len(ref), y, torch.zeros_like(y))
        bad = loss > self.margin * ref[y]
        if self.undrawable:  # the generators do not draw these: their labels mark the wrong pixels
            bad |= torch.isin(y, torch.tensor(self.undrawable, dtype=y.dtype))
        return bad & (y > 0)


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float | None:
    """mIoU (percent) of one image over classes present in its GT or prediction; GT 0 ignored."""
    keep = gt > 0
    p, g = pred[keep], gt[keep]
    if not g.size:
        return None
    inter = np.bincount(g[p == g], minlength=num_classes + 1)
    area_p = np.bincount(p, minlength=num_classes + 1)
    area_g = np.bincount(g, minlength=num_classes + 1)
    union = area_p + area_g - inter
    present = union > 0
    return float(100 * np.mean(inter[present] / union[present]))


def load_filter(params: Params, progress: bool = True, device: str | None = None) -> QualityFilter | None:
    """The filters' scorer for these params: the plan's reference segmenter (filter.scorer: plan, on
    `device`), or the probe, trained on the real training split on first use and kept in `filter.out`
    (reused while its params are unchanged). None when both filters are off."""
    f = params.synthesize.filter
    if not (f.sample or f.pixel):
        return None
    if f.scorer == "plan":
        model_dir, losses, undrawable = plan_scorer(params, check=False)  # the run's make_plan checked it
        scorer = PlanScorer(model_dir, params.evaluate.size, device)
        return QualityFilter(scorer, losses, None, f.sample, f.min_miou, f.pixel, f.margin, undrawable)
    out = check_dir(f.out, "synthesize.filter.out")
    fp = _fingerprint(params)
    info = None
    if (out / "probe.json").exists():
        info = json.loads((out / "probe.json").read_text())
    if info is None or info.get("fingerprint") != fp:
        log.info("training the filter segmenter (%d steps) into %s", f.steps, out)
        subset = None
        if params.synthesize.real_subset:  # the low-data regime: the filter sees only the real subset too
            from seggen.data.layout import open_split
            from seggen.segmenter.data import real_subset

            subset = real_subset(
                params.seed, len(open_split(params.data.root, params.synthesize.split)), params.synthesize.real_subset
            )
        model, x, y = probe.train_probe(
            params.data.root,
            f.resolution,
            params.seed,
            f.steps,
            f.batch_size,
            split=params.synthesize.split,
            progress=progress,
            subset=subset,
        )
        losses = probe.class_mean_losses(model, x, y)
        with atomic_dir(out, "synthesize: filter segmenter", "synthesize.filter.out") as tmp:
            model.save(tmp, {"fingerprint": fp, "resolution": f.resolution, "class_mean_loss": losses})
    model, info = probe.ProbeSegmenter.load(out)
    return QualityFilter(model, info["class_mean_loss"], info["resolution"], f.sample, f.min_miou, f.pixel, f.margin)


def prepare_filter(params: Params, progress: bool = True) -> None:
    """What the filters need before the workers start: the probe, trained once in the planning
    process rather than by every worker (the plan's scorer needs no training)."""
    if params.synthesize.filter.scorer == "probe":
        load_filter(params, progress)


def plan_scorer(params: Params, check: bool = True) -> tuple[Path, list[float | None], tuple[int, ...]]:
    """The plan's reference segmenter (arms_root/REFERENCE/model, the very model the plan scored: with
    `check`, its digest is compared with the plan's), its class losses on the planning split, in
    class order, and the labels (1..N) of the classes the plan found undrawable."""
    from seggen.data.layout import open_split
    from seggen.errors import DataError
    from seggen.io import digest_tree
    from seggen.synthesis.targeting import read_plan

    names = list(open_split(params.data.root, params.synthesize.split).meta.names)
    path = Path(params.synthesize.plan)
    plan = read_plan(path, names)
    model_dir = Path(params.arms_root) / str(plan.get("reference")) / "model"
    if not model_dir.is_dir() or (check and digest_tree(model_dir) != plan.get("model")):
        raise DataError(
            f"{path}: its reference segmenter is not {model_dir} as scored (re-run `seggen plan_synthesis`)"
            " (synthesize.filter.scorer: plan)"
        )
    undrawable = tuple(k + 1 for k, c in enumerate(names) if c in (plan.get("undrawable") or ()))
    return model_dir, [plan["class_loss"].get(c) for c in names], undrawable
