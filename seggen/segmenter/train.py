"""Stage `train_segmenter`: Mask2Former on real + synthetic data, one accelerate loop.

Strategies (`segmenter.strategy`):
    real               the baseline: real training images only
    augment            each real sample is replaced, with probability p_aug, by a synthetic sample made
                       from it (ImgSyn: its mask; MaskSyn: its caption), or by a random synthetic sample
                       when none was made from it (the paper: p_aug 0.6 on ADE20K)
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
import time
from pathlib import Path

import numpy as np
import torch

from seggen.config import Params
from seggen.data.layout import detect_layout
from seggen.data.meta import label_mismatch
from seggen.errors import DataError
from seggen.io import atomic_dir, check_dir, claim, write_json
from seggen.segmenter.data import SegSource, augment, pixel_values, real_subset, synthetic_by_source, targets
from seggen.segmenter.model import SEG_META, build_model, save_image_processor
from seggen.training import (
    LiveMetrics,
    finite_loss,
    make_accelerator,
    seed_for,
    step_bar,
    train_summary,
    write_loss_log,
)
from seggen.training import checkpoint as ckpt
from seggen.training.checkpoint import resumable_checkpoint

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
        self.syn: list[SegSource] = []
        self.syn_pool: list[tuple[int, int]] = []
        self.by_source: dict[str, list[tuple[int, int]]] = {}
        self.syn_fingerprints: dict[str, str] = {}
        if cfg.strategy != "real":
            if not cfg.synthetic:
                raise DataError(f"segmenter.synthetic: strategy {cfg.strategy} needs at least one synthetic dataset")
            split = params.synthesize.split  # synthetic datasets keep their source split's name and layout
            for k, name in enumerate(cfg.synthetic):
                root = Path(cfg.synthetic_root) / name
                if detect_layout(root, split) is None:
                    raise DataError(f"{root}: synthetic dataset not found (run `seggen synthesize --strategy {name}`)")
                src = SegSource(root, split, pan, name)
                differ = label_mismatch(src.meta.names, self.meta.names)
                if differ:
                    raise DataError(f"{root}: its classes are not those of {params.data.root}: {differ}")
                self.syn.append(src)
                self.syn_pool += [(k, i) for i in range(len(src))]
                for real_id, items in synthetic_by_source(src).items():
                    self.by_source.setdefault(real_id, []).extend((k, i) for i in items)
                summary = root / "summary.json"
                self.syn_fingerprints[name] = (
                    json.loads(summary.read_text()).get("fingerprint", "") if summary.exists() else ""
                )
            if not self.syn_pool:
                raise DataError(f"{cfg.synthetic_root}: the synthetic datasets {list(cfg.synthetic)} hold no samples")

    def draw(self, phase: str, step: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """-> n (source, index) pairs; source -1 is the real dataset, k >= 0 synthetic dataset k."""
        cfg = self.cfg
        if phase == "pretrain":
            return [self.syn_pool[j] for j in rng.integers(0, len(self.syn_pool), n)]
        if cfg.strategy == "concat":
            pool = len(self.real_idx) * cfg.concat_repeat + len(self.syn_pool)
            out = []
            for j in rng.integers(0, pool, n):
                out.append(
                    (-1, int(self.real_idx[j % len(self.real_idx)]))
                    if j < len(self.real_idx) * cfg.concat_repeat
                    else self.syn_pool[j - len(self.real_idx) * cfg.concat_repeat]
                )
            return out
        picks = [(-1, int(i)) for i in rng.choice(self.real_idx, n)]
        if cfg.strategy != "augment":
            return picks
        out = []
        for src, i in picks:
            if rng.random() < cfg.p_aug:
                cands = self.by_source.get(self.real.ids[i]) or self.syn_pool
                out.append(cands[int(rng.integers(0, len(cands)))])
            else:
                out.append((src, i))
        return out

    def load(self, src: int, i: int):
        return (self.real if src < 0 else self.syn[src]).load(i)


def training_seed(params: Params) -> int:
    s = params.segmenter.seed
    return params.seed if s is None else s


def _fingerprint(params: Params, mix: Mixture) -> str:
    seg = params.segmenter.model_dump(mode="json", exclude={"out"})
    for k in ("checkpoint_every", "keep_checkpoints", "threads"):
        seg["train"].pop(k)
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


def make_batch(mix: Mixture, params: Params, phase: str, step: int, micro: int):
    tc = params.segmenter.train
    rng = np.random.default_rng(seed_for(training_seed(params), "segmenter", phase, step, micro))
    items = [
        augment(mix.load(s, i), rng, tc.crop, tc.scale, tc.flip) for s, i in mix.draw(phase, step, tc.batch_size, rng)
    ]
    tg = [targets(it, params.segmenter.task) for it in items]
    return pixel_values([it.image for it in items]), [t[0] for t in tg], [t[1] for t in tg]


def train_segmenter(params: Params, progress: bool = True) -> Path:
    cfg, tc = params.segmenter, params.segmenter.train
    out = check_dir(cfg.out, "segmenter.out")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    mix = Mixture(params)  # bad input fails here, before any training
    accelerator = make_accelerator(tc)
    torch.manual_seed(seed_for(training_seed(params), "segmenter", "init"))
    model = build_model(cfg, mix.meta)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    total = tc.steps + (cfg.pretrain_steps if cfg.strategy == "pretrain_finetune" else 0)
    state = {"fingerprint": _fingerprint(params, mix)}
    start, losses = 0, []
    claim(out, "segmenter.out", "train_segmenter")
    last = resumable_checkpoint(out / "checkpoints", state["fingerprint"])
    if last is not None:
        saved = json.loads((last / "trainer_state.json").read_text())
        ckpt.load_weights(model, last / "model")
        ckpt.load_optimizer(optimizer, last)
        start, losses = saved["step"], saved.get("losses", [])
        log.info("resuming segmenter from %s (step %d)", last, start)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    device = accelerator.device
    bar = step_bar(total, start, f"train_segmenter ({cfg.strategy})", accelerator, progress)
    live = LiveMetrics(
        params.tracking.log_every, tc.batch_size * tc.grad_accum * accelerator.num_processes, accelerator
    )
    t0 = time.perf_counter()
    for step in range(start, total):
        phase, k, n = phase_of(step, params)
        for g in optimizer.param_groups:
            g["lr"] = poly_lr(tc.lr, k, n, tc.poly_power, tc.warmup_steps)
        step_loss = 0.0
        # the loss samples points with the global RNG: seed it per step so a resumed run repeats
        torch.manual_seed(seed_for(training_seed(params), "segmenter", "step", step))
        for micro in range(tc.grad_accum):
            x, masks, classes = make_batch(
                mix, params, phase, step, micro * accelerator.num_processes + accelerator.process_index
            )
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(
                        pixel_values=x.to(device),
                        mask_labels=[m.to(device) for m in masks],
                        class_labels=[c.to(device) for c in classes],
                    ).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.item() / tc.grad_accum
        losses.append(finite_loss(step_loss, step + 1, optimizer.param_groups[0]["lr"], "train_segmenter"))
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", phase=phase)
        live.step(step + 1, step_loss, optimizer.param_groups[0]["lr"], total)
        done = step + 1
        if accelerator.is_main_process and (done % tc.checkpoint_every == 0 or done == total):
            ckpt.write_checkpoint(
                out / "checkpoints",
                done,
                {"model": ckpt.RawStateDict(accelerator.unwrap_model(model))},
                optimizer,
                {**state, "losses": losses},
                tc.keep_checkpoints,
            )
    bar.close()
    elapsed = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    model_dir = out / "model"
    if not accelerator.is_main_process:
        return model_dir
    summary = train_summary(total, start, elapsed, losses)  # the generators' train_summary.json shape
    summary.pop("loss")  # in train_log.json
    info = {
        "task": cfg.task,
        "strategy": cfg.strategy,
        "synthetic": list(cfg.synthetic) if cfg.strategy != "real" else [],
        "synthetic_fingerprints": mix.syn_fingerprints,
        "classes": mix.meta.names,
        "things": mix.meta.thing_ids,
        "real_images": int(len(mix.real_idx)),
        "crop": tc.crop,
        "fingerprint": state["fingerprint"],
        # only what the weights depend on: same params, same bytes (a resumed or re-run training
        # gives the same model directory, hence the same DVC hash); the run's own figures go below
        "train": {"steps": total, "final_loss": summary["final_loss"]},
    }
    with atomic_dir(model_dir, "train_segmenter", "segmenter.out") as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        (tmp / SEG_META).write_text(json.dumps(info, indent=2))
        save_image_processor(tmp, params.eval.ignore_index)
    write_loss_log(out / "train_log.json", losses)
    write_json(out / "train_summary.json", summary)
    if live.run is not None:
        import mlflow

        mlflow.log_metrics({f"train/{k}": float(summary[k]) for k in ("steps_this_run", "seconds_this_run")})
    return model_dir
