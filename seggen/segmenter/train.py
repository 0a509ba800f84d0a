"""Stage `train_segmenter`: Mask2Former on real + synthetic data, one accelerate loop.

Strategies (`segmenter.strategy`):
    real               the baseline: real training images only
    augment            each real sample is replaced, with probability p_aug, by a synthetic sample made
                       from it (ImgSyn: its mask; MaskSyn: its caption), or by a random synthetic sample
                       when none was made from it (the paper: p_aug 0.6 on ADE20K); with `paste_real`,
                       the real sample's pixels of those classes are pasted over its replacement.
                       `augment_mode: add`: no real sample is replaced; round(p_aug x batch_size) of them
                       bring such a synthetic sample besides, in a larger micro-batch
    pretrain_finetune  `pretrain_steps` on synthetic only, then `train.steps` on real, each with its own
                       poly schedule (the paper's choice for COCO)
    concat             uniform draws from real x concat_repeat + synthetic

Output (`segmenter.out`): checkpoints/step_XXXXXXX/ (resumable), model/ (save_pretrained +
seggen_segmenter.json), train_log.json (loss per step), train_summary.json (steps, final loss, and this
run's steps and seconds: kept out of model/ so that the model's bytes depend on the params only).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from seggen.config import Params
from seggen.data.layout import detect_layout
from seggen.data.meta import label_mismatch
from seggen.errors import ConfigError, DataError
from seggen.io import atomic_dir, check_dir, write_json
from seggen.segmenter.data import (
    SegSource,
    apply_augmentation,
    draw_augmentation,
    holdout_fold,
    holdout_record,
    ignore_maps,
    paste_real,
    pixel_values,
    real_subset,
    synthetic_by_source,
    targets,
)
from seggen.segmenter.model import (
    SEG_META,
    build_model,
    exclude_ignored_pixels,
    normalise_masks_over_processes,
    save_image_processor,
)
from seggen.training import seed_for, write_loss_log
from seggen.training.loop import Loop

log = logging.getLogger(__name__)


class Mixture:
    """The strategy's sampling of real and synthetic sources, keyed on (seed, phase, step)."""

    def __init__(self, params: Params):
        cfg = params.segmenter
        self.seed, self.cfg = params.seed, cfg
        pan = cfg.task == "panoptic"
        self.real = SegSource(params.data.root, cfg.split, pan, "real")
        self.meta = self.real.meta
        self.real_idx = real_subset(params.seed, len(self.real), cfg.real_subset)
        self.holdout: dict | None = None
        if cfg.holdout:  # the fold plan_synthesis scores this arm on (split `holdout`) is not trained on
            fold = holdout_fold(params.seed, len(self.real), cfg.holdout)
            self.real_idx = np.setdiff1d(self.real_idx, fold)
            if not len(fold) or not len(self.real_idx):
                raise DataError(
                    f"segmenter.holdout: {cfg.holdout:g} of {len(self.real)} training images leaves "
                    f"{len(fold)} held out and {len(self.real_idx)} to train on"
                )
            # what plan_synthesis checks before scoring this arm on the fold
            self.holdout = holdout_record(params.seed, cfg.holdout, fold)
        self.syn: list[SegSource] = []
        self.syn_pool: list[tuple[int, int]] = []
        self.by_source: dict[str, list[tuple[int, int]]] = {}
        self.syn_fingerprints: dict[str, str] = {}
        summaries: list[tuple[Path, dict]] = []  # each pooled dataset's summary.json (paste_real reads its plan)
        if cfg.strategy != "real":
            if not cfg.synthetic:
                raise DataError(f"segmenter.synthetic: strategy {cfg.strategy} needs at least one synthetic dataset")
            split = params.synthesize.split  # synthetic datasets keep their source split's name and layout
            roots = cfg.synthetic_roots
            # several roots (the rounds of a closed loop): their datasets pooled, named ROOT/NAME
            datasets = [(r / n, n if len(roots) == 1 else f"{r}/{n}") for r in roots for n in cfg.synthetic]
            for root, name in datasets:
                summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").exists() else {}
                if summary.get("samples") == 0:  # a round whose plan ended the loop: nothing to pool
                    self.syn_fingerprints[name] = summary.get("fingerprint", "")
                    continue
                if detect_layout(root, split) is None:
                    raise DataError(
                        f"{root}: synthetic dataset not found (run `seggen synthesize --strategy {root.name}`)"
                    )
                k, src = len(self.syn), SegSource(root, split, pan, root.name)
                differ = label_mismatch(src.meta.names, self.meta.names)
                if differ:
                    raise DataError(f"{root}: its classes are not those of {params.data.root}: {differ}")
                self.syn.append(src)
                self.syn_pool += [(k, i) for i in range(len(src))]
                for real_id, items in synthetic_by_source(src).items():
                    self.by_source.setdefault(real_id, []).extend((k, i) for i in items)
                self.syn_fingerprints[name] = summary.get("fingerprint", "")
                summaries.append((root / "summary.json", summary))
            if not self.syn_pool:
                where = ", ".join(map(str, roots))
                raise DataError(f"{where}: the synthetic datasets {list(cfg.synthetic)} hold no samples")
        # augment + paste_real: the classes whose real pixels are pasted over a replacing synthetic sample
        # the other strategies, and augment_mode add, replace nothing
        pastes = cfg.paste_real and cfg.strategy == "augment" and cfg.augment_mode == "replace"
        self.paste: list[str] = self._paste_classes(cfg, summaries) if pastes else []
        self.paste_labels = np.array([self.meta.names.index(c) + 1 for c in self.paste], np.int64)
        self.things = frozenset(int(t) for t in self.meta.thing_ids)

    def _paste_classes(self, cfg, summaries: list[tuple[Path, dict]]) -> list[str]:
        if cfg.paste_real != "undrawable":
            unknown = [c for c in cfg.paste_real if c not in self.meta.names]
            if unknown:
                raise DataError(f"segmenter.paste_real: {unknown} are not classes of {self.real.root}")
            return sorted(set(cfg.paste_real), key=self.meta.names.index)
        found: set[str] = set()
        for summary, info in summaries:  # each pooled dataset's plan, as its summary records it
            if not isinstance(info.get("plan"), dict) or not info["plan"].get("file"):
                raise DataError(f"{summary}: segmenter.paste_real: undrawable needs datasets synthesized from a plan")
            path = Path(info["plan"]["file"])
            try:
                plan = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:  # targeting.read_plan's imports would tie every
                # training stage to the scorer's code, so the plan is read here
                raise DataError(f"{path}: the plan {summary} was synthesized from cannot be read ({e})") from None
            if not isinstance(plan, dict) or not isinstance(plan.get("undrawable"), list):
                raise DataError(
                    f"{path}: no `undrawable` list (plan_synthesis.drawability was off); "
                    "segmenter.paste_real: undrawable needs one, or name the classes"
                )
            unknown = [c for c in plan["undrawable"] if c not in self.meta.names]
            if unknown:
                raise DataError(f"{path}: undrawable {unknown} are not classes of {self.real.root}")
            found |= set(plan["undrawable"])
        return sorted(found, key=self.meta.names.index)

    def draw(self, phase: str, step: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """-> n (source, index, real) triples; source -1 is the real dataset, k >= 0 synthetic dataset k;
        real: the real sample a synthetic one replaces (augment), else -1. augment_mode add: the real
        strategy's draw (`added` brings the synthetic samples)."""
        cfg = self.cfg
        if phase == "pretrain":
            return [(*self.syn_pool[j], -1) for j in rng.integers(0, len(self.syn_pool), n)]
        if cfg.strategy == "concat":
            pool = len(self.real_idx) * cfg.concat_repeat + len(self.syn_pool)
            out = []
            for j in rng.integers(0, pool, n):
                out.append(
                    (-1, int(self.real_idx[j % len(self.real_idx)]), -1)
                    if j < len(self.real_idx) * cfg.concat_repeat
                    else (*self.syn_pool[j - len(self.real_idx) * cfg.concat_repeat], -1)
                )
            return out
        picks = [(-1, int(i), -1) for i in rng.choice(self.real_idx, n)]
        if cfg.strategy != "augment" or cfg.augment_mode == "add":
            return picks
        out = []
        for pick in picks:
            out.append((*self.made_from(pick[1], rng), pick[1]) if rng.random() < cfg.p_aug else pick)
        return out

    def made_from(self, i: int, rng: np.random.Generator) -> tuple[int, int]:
        """A synthetic sample made from real sample i (ImgSyn: its mask; MaskSyn: its caption), or a random
        one where none was."""
        cands = self.by_source.get(self.real.ids[i]) or self.syn_pool
        return cands[int(rng.integers(0, len(cands)))]

    def added(self, picks: list[tuple[int, int, int]], rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """augment_mode add: segmenter.synthetic_added of the real picks, drawn without repetition, each bring a
        synthetic sample made from it (or a random one where none was); else []."""
        k = self.cfg.synthetic_added
        if not k:
            return []
        return [(*self.made_from(picks[j][1], rng), -1) for j in sorted(rng.choice(len(picks), k, replace=False))]

    def load(self, src: int, i: int, real: int = -1):
        if src < 0:
            return self.real.load(i)
        item = self.syn[src].load(i)
        if real >= 0 and len(self.paste_labels):  # the replaced real sample's pixels of the pasted classes
            item = paste_real(item, self.real.load(real), self.paste_labels, self.things)
        return item

    def shape(self, src: int, i: int) -> tuple[int, int]:
        return (self.real if src < 0 else self.syn[src]).shape(i)


def training_seed(params: Params) -> int:
    s = params.segmenter.seed
    return params.seed if s is None else s


def _fingerprint(params: Params, mix: Mixture) -> str:
    seg = params.segmenter.model_dump(mode="json", exclude={"out"})
    for k in ("checkpoint_every", "keep_checkpoints", "threads", "gradient_checkpointing", "num_processes", "workers"):
        seg["train"].pop(k)
    if seg["train"]["backbone_lr_mult"] is None:  # null is the recipe's rule, read from the fields kept here
        seg["train"].pop("backbone_lr_mult")
    if seg["train"]["optimizer"] == "adamw":  # the default is what a fingerprint without the key means
        seg["train"].pop("optimizer")
    if not seg["holdout"]:
        seg.pop("holdout")
    if seg["augment_mode"] == "replace":  # the default is what a fingerprint without the key means
        seg.pop("augment_mode")
    if mix.paste:  # what `undrawable` resolved to
        seg["paste_real"] = mix.paste
    else:
        seg.pop("paste_real")
    blob = json.dumps([params.seed, params.data.model_dump(mode="json"), seg, mix.syn_fingerprints], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def phase_of(step: int, params: Params) -> tuple[str, int, int]:
    """-> (phase, step within phase, phase length)."""
    cfg = params.segmenter
    pre = cfg.pretrain_steps if cfg.strategy == "pretrain_finetune" else 0
    if step < pre:
        return "pretrain", step, pre
    return "main", step - pre, cfg.train.steps


def poly_lr(base: float, k: int, n: int, power: float, warmup: int) -> float:
    lr = base * (1 - k / n) ** power
    return lr * min(1.0, (k + 1) / warmup) if warmup else lr


def plan_batch(mix: Mixture, params: Params, phase: str, step: int, micro: int) -> list:
    """Micro-step `micro` of step `step`: the global batch's (source, index, Augmentation) per sample,
    from a generator keyed on (seed, phase, step, micro) alone -- the same on 1 or N processes."""
    tc = params.segmenter.train
    rng = np.random.default_rng(seed_for(training_seed(params), "segmenter", phase, step, micro))

    def with_crops(triples: list) -> list:
        return [(s, i, r, draw_augmentation(mix.shape(s, i), rng, tc.crop, tc.scale, tc.flip)) for s, i, r in triples]

    picks = mix.draw(phase, step, tc.batch_size, rng)
    batch = with_crops(picks)
    # augment_mode add: drawn after the real samples' crops, so that those are the real strategy's own
    return batch + with_crops(mix.added(picks, rng))


class StepBatches(torch.utils.data.Dataset):
    """Item j: micro-step j of the run (step j // grad_accum), this process's share of its global
    batch, read, augmented and made Mask2Former's inputs. A function of (step, micro-step, rank)
    only, so a DataLoader's workers may read ahead in any order and a resumed run reads the same."""

    def __init__(self, mix: Mixture, params: Params, total: int, share: slice = slice(None)):
        self.mix, self.params, self.total, self.share = mix, params, total, share
        self.accum = params.segmenter.train.grad_accum

    def __len__(self) -> int:
        return self.total * self.accum

    def __getitem__(self, j: int):
        step, micro = divmod(j, self.accum)
        phase = phase_of(step, self.params)[0]
        crop, task = self.params.segmenter.train.crop, self.params.segmenter.task
        plan = plan_batch(self.mix, self.params, phase, step, micro)[self.share]
        items = [apply_augmentation(self.mix.load(s, i, r), a, crop) for s, i, r, a in plan]
        tg = [targets(it, task) for it in items]
        return pixel_values([it.image for it in items]), [t[0] for t in tg], [t[1] for t in tg], ignore_maps(items)


def train_segmenter(params: Params, progress: bool = True) -> Path:
    cfg, tc = params.segmenter, params.segmenter.train
    out = check_dir(cfg.out, "segmenter.out")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    # 1. The strategy's mixture of real and synthetic sources (bad input fails here, before any training)
    mix = Mixture(params)
    total = tc.steps + (cfg.pretrain_steps if cfg.strategy == "pretrain_finetune" else 0)
    fingerprint = _fingerprint(params, mix)
    desc = f"train_segmenter ({cfg.strategy})"
    # transformers' Mask2Former never uses its Swin backbone's last layer norm (it reads the stages'
    # own outputs): over several processes DDP must be told that some parameters get no gradient
    loop = Loop(
        "train_segmenter",
        out,
        "segmenter.train",
        tc,
        fingerprint,
        params.tracking.log_every,
        total,
        progress,
        desc,
        find_unused_parameters=True,
    )
    extra = cfg.synthetic_added  # augment_mode add: the synthetic samples each micro-batch brings besides
    if (tc.batch_size + extra) % loop.world:  # params checked num_processes; this is the launched count
        raise ConfigError(
            f"segmenter.p_aug: augment_mode add makes micro-batches of {tc.batch_size} + {extra} samples, which do "
            f"not divide over {loop.world} processes"
        )
    torch.manual_seed(seed_for(training_seed(params), "segmenter", "init"))

    # 2. Mask2Former; resume, prepare
    model = build_model(cfg, mix.meta)
    normalise_masks_over_processes(model)
    exclude_ignored_pixels(model)
    criterion = model.criterion  # the same module inside whatever wraps the model for training
    # the published recipe trains a pretrained backbone at a tenth of the rate (detectron2's BACKBONE_MULTIPLIER)
    mult = tc.backbone_lr_mult or (0.1 if cfg.backbone or cfg.pretrained else 1.0)
    if mult == 1.0:
        optimizer = loop.optimizer(model.parameters())
    else:
        backbone = {id(p) for p in model.model.pixel_level_module.encoder.parameters()}
        groups = [
            [p for p in model.parameters() if id(p) in backbone],
            [p for p in model.parameters() if id(p) not in backbone],
        ]
        optimizer = loop.optimizer([{"params": groups[0]}, {"params": groups[1]}])
    model = loop.start({"model": model}, optimizer, raw=("model",))["model"]
    model.train()

    # 3. The steps: per phase, a poly-decayed learning rate; each process reads its share of the
    # global batch, through a DataLoader whose workers read ahead (`train.workers`)
    batches = loop.batches(StepBatches(mix, params, total, loop.share()))

    def lr(step: int) -> float | list[float]:
        _, k, n = phase_of(step, params)
        rate = poly_lr(tc.lr, k, n, tc.poly_power, tc.warmup_steps)
        return rate if mult == 1.0 else [rate * mult, rate]

    def step_fn(step: int):
        accelerator, device = loop.accelerator, loop.device
        step_loss = 0.0
        # the loss samples points with the global RNG: seed it per step so a resumed run repeats
        torch.manual_seed(seed_for(training_seed(params), "segmenter", "step", step))
        for _ in range(tc.grad_accum):
            x, masks, classes, ignore = next(batches)
            criterion.ignore = ignore.to(device, non_blocking=True) if ignore is not None else None
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(
                        pixel_values=x.to(device, non_blocking=True),
                        mask_labels=[m.to(device, non_blocking=True) for m in masks],
                        class_labels=[c.to(device, non_blocking=True) for c in classes],
                    ).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                loop.opt.step()
                loop.opt.zero_grad(set_to_none=True)
            step_loss = step_loss + loss.detach() / tc.grad_accum
        return step_loss

    loop.run(step_fn, lr, (tc.batch_size + extra) * tc.grad_accum)  # augment_mode add: the added samples count
    model_dir = out / "model"
    if not loop.finish():
        return model_dir

    # 4. The model directory: only what the weights depend on (same params, same bytes)
    summary = loop.summary()  # the generators' train_summary.json shape
    losses = summary.pop("loss")  # in train_log.json
    info = {
        "task": cfg.task,
        "strategy": cfg.strategy,
        "synthetic": list(cfg.synthetic) if cfg.strategy != "real" else [],
        "synthetic_fingerprints": mix.syn_fingerprints,
        "classes": mix.meta.names,
        "things": mix.meta.thing_ids,
        "real_images": int(len(mix.real_idx)),
        **({"holdout": mix.holdout} if mix.holdout else {}),
        **({"paste_real": mix.paste} if mix.paste else {}),
        **({"augment_mode": "add", "synthetic_per_batch": extra} if extra else {}),
        "crop": tc.crop,
        "fingerprint": loop.fingerprint,
        # a resumed or re-run training gives the same model directory, hence the same DVC hash; the
        # run's own figures go to train_summary.json
        "train": {"steps": total, "final_loss": summary["final_loss"]},
    }
    with atomic_dir(model_dir, "train_segmenter", "segmenter.out") as tmp:
        loop.final("model").save_pretrained(tmp, safe_serialization=True)
        (tmp / SEG_META).write_text(json.dumps(info, indent=2))
        save_image_processor(tmp, params.eval.ignore_index)
    write_loss_log(out / "train_log.json", losses)
    write_json(out / "train_summary.json", summary)
    if loop.live.run is not None:
        import mlflow

        mlflow.log_metrics({f"train/{k}": float(summary[k]) for k in ("steps_this_run", "seconds_this_run")})
    return model_dir
