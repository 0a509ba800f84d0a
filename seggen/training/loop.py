"""The training loop every model runs (Text2Mask, the prior, Mask2Img, Mask2Former): written once.

A model module builds its networks and its optimizer's parameters, then hands them to a `Loop`, which
owns everything that is the same for all of them:

1. the accelerator, the optimizer (`train.optimizer`) and the memory savers (gradient checkpointing,
   frozen modules in the mixed-precision dtype);
2. resuming from the newest checkpoint made with the same params (their fingerprint) by the same code
   (the stage's code files, seggen.codegraph);
3. `accelerator.prepare`, then the EMA of the weights, built on the device the model trains on;
4. per step: the learning rate, the model's own step function, the EMA update, the loss (the mean
   over processes), the progress bar, the live MLflow metrics and the checkpoints;
5. `wait_for_everyone`, then the final weights (the EMA's where there is one) and the run's summary.

Side effects (checkpoints, the progress bar, live metrics) happen on the main process only; the model
module writes its outputs only where `Loop.finish()` says it is the main process.

The global batch: `train.batch_size` samples per micro-step over all processes, each process taking
`batch_size / num_processes` of them (`Loop.share`), so that a run means the same on 1 or N processes
(Mask2Former's `augment_mode: add` appends a fixed number of synthetic samples, checked to divide too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from seggen import codegraph
from seggen.errors import ConfigError
from seggen.io import claim
from seggen.training import LiveMetrics, finite_loss, make_accelerator, step_bar, train_summary
from seggen.training import checkpoint as ckpt

log = logging.getLogger(__name__)


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen modules are cast to: they need no fp32 master weights (diffusers' `weight_dtype`)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_optimizer(train, key: str, params) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (`train.optimizer: adamw8bit`: a quarter of the moments'
    memory, what an SDXL UNet needs to fit one 80 GB GPU); `params`: parameters or param groups."""
    if train.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                f"{key}.optimizer: adamw8bit needs bitsandbytes (pip install 'seggen[8bit]'), which is not installed"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def enable_gradient_checkpointing(module) -> None:
    """Recompute activations in the backward pass (diffusers' and transformers' switch, whichever the module has)."""
    if hasattr(module, "enable_gradient_checkpointing"):
        module.enable_gradient_checkpointing()
    elif hasattr(module, "gradient_checkpointing_enable"):
        module.gradient_checkpointing_enable()


class Loop:
    """One training run of `what` (the stage's name) into `out`, configured by `train` (LoopParams, the
    params section `key`). `total`: the optimizer steps (default `train.steps`); `desc`: the progress
    bar's label (default `what`); find_unused_parameters: DDP's, for a model with parameters that take
    no part in the loss."""

    def __init__(
        self,
        what: str,
        out: Path,
        key: str,
        train,
        fingerprint: str,
        log_every: int,
        total: int | None = None,
        progress: bool = True,
        desc: str | None = None,
        find_unused_parameters: bool = False,
    ):
        self.what, self.out, self.key, self.train = what, Path(out), key, train
        self.desc = desc or what  # the progress bar's
        self.fingerprint, self.log_every, self.progress = fingerprint, log_every, progress
        self.code = codegraph.code_fingerprint(f"train_{key.split('.')[0]}")
        self.total = train.steps if total is None else total
        self.accelerator = make_accelerator(train, find_unused_parameters)
        world = self.accelerator.num_processes
        if train.batch_size % world:
            raise ConfigError(
                f"{key}.batch_size: {train.batch_size} does not divide over {world} processes "
                "(it is the global batch: each process takes batch_size / processes)"
            )
        self.start_step, self.losses = 0, []
        self.modules: dict = {}
        self.ema = None
        self.elapsed = 0.0

    # -- the global batch ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def share(self) -> slice:
        """This process's rows of a micro-step's global batch (every `world`-th, from `rank`)."""
        return slice(self.rank, None, self.world)

    def batches(self, dataset) -> Iterator:
        """The micro-batches from the resumed step on, in order: item j of `dataset` is micro-step j
        (this process's share), read through a DataLoader with `train.workers` processes reading ahead."""
        tc = self.train
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,  # an item is a micro-batch already
            sampler=range(self.start_step * tc.grad_accum, self.total * tc.grad_accum),
            num_workers=tc.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if tc.workers else None,
        )
        return iter(loader)

    # -- 1-3: optimizer, resume, prepare, EMA ------------------------------------------------------
    def optimizer(self, params) -> torch.optim.Optimizer:
        return make_optimizer(self.train, self.key, params)

    def start(
        self,
        trainable: dict,
        optimizer: torch.optim.Optimizer,
        frozen: tuple = (),
        ema: str | None = None,
        raw: tuple[str, ...] = (),
    ) -> dict:
        """Resume, prepare and place; -> the prepared trainable modules by name.

        trainable: name -> module; the names are the checkpoint's subdirectories. frozen: modules
        (or objects with `.to`) placed on the device in the mixed-precision dtype. ema: the name of
        the module whose moving average is kept (`train.ema`). raw: names saved as plain state dicts
        (ckpt.RawStateDict)."""
        acc, tc = self.accelerator, self.train
        self.raw, self.ema_name = raw, ema if getattr(tc, "ema", False) else None
        if getattr(tc, "gradient_checkpointing", False):
            for m in [*trainable.values(), *frozen]:
                enable_gradient_checkpointing(m)
        claim(self.out, f"{self.key.split('.')[0]}.out", self.what)
        last = ckpt.resumable_checkpoint(self.out / "checkpoints", self.fingerprint, self.code)
        saved = None
        if last is not None:
            saved = json.loads((last / ckpt.STATE).read_text())
            for name, module in trainable.items():
                ckpt.load_weights(module, last / name)
            ckpt.load_optimizer(optimizer, last)
            self.start_step = saved["step"]
            self.losses = list(saved.get("losses", []))  # the whole run's curve, not only the steps after here
            log.info("resuming %s from %s (step %d)", self.key.split(".")[0], last, self.start_step)
        names = list(trainable)
        *prepared, self.opt = acc.prepare(*trainable.values(), optimizer)
        self.modules = dict(zip(names, prepared))
        # on CUDA only: CPU autocast leaves ops such as group_norm in fp32, which then meet bf16 weights
        dtype = weight_dtype(acc.mixed_precision) if acc.device.type == "cuda" else torch.float32
        for m in frozen:  # not wrapped for distributed training (no gradients to average), only placed
            m.to(acc.device) if dtype == torch.float32 else m.to(acc.device, dtype=dtype)
        if self.ema_name:
            # built after prepare, from the weights as resumed, so that the shadow lives where the model trains
            from diffusers.training_utils import EMAModel

            model = acc.unwrap_model(self.modules[self.ema_name])
            self.ema = EMAModel(
                model.parameters(), decay=tc.ema_decay, model_cls=type(model), model_config=model.config
            )
            if saved is not None:
                shadow = type(model).from_config(model.config)
                ckpt.load_weights(shadow, last / f"{self.ema_name}_ema")
                self.ema.shadow_params = [p.detach().to(acc.device) for p in shadow.parameters()]
                # one EMA update per optimizer step: its decay schedule goes on from here, not from 0
                self.ema.optimization_step = self.start_step
        return self.modules

    # -- 4: the steps ------------------------------------------------------------------------------
    def run(
        self,
        step_fn: Callable[[int], torch.Tensor | float],
        lr_fn: Callable[[int], float | list[float]],
        samples_per_step: int | None = None,
    ) -> None:
        """step_fn(step) runs optimizer step `step` (0-based: its micro-steps, backward, optimizer
        step) and returns its loss; lr_fn(step) gives the learning rate, or one per param group;
        samples_per_step: what the samples/s figure counts (default batch_size x grad_accum)."""
        acc, tc = self.accelerator, self.train
        bar = step_bar(self.total, self.start_step, self.desc, acc, self.progress)
        live = LiveMetrics(self.log_every, samples_per_step or tc.batch_size * tc.grad_accum, acc)
        t0 = time.perf_counter()
        for step in range(self.start_step, self.total):
            lrs = lr_fn(step)
            groups = self.opt.param_groups
            for g, lr in zip(groups, lrs if isinstance(lrs, list) else [lrs] * len(groups)):
                g["lr"] = lr
            loss = step_fn(step)
            if self.ema is not None:
                self.ema.step(acc.unwrap_model(self.modules[self.ema_name]).parameters())
            if torch.is_tensor(loss):
                loss = (acc.reduce(loss.detach(), "mean") if self.world > 1 else loss).item()
            lr = max(g["lr"] for g in self.opt.param_groups)  # the base rate (a backbone's may be a fraction)
            self.losses.append(finite_loss(float(loss), step + 1, lr, self.what))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4f}")
            live.step(step + 1, self.losses[-1], lr, self.total)
            done = step + 1
            if acc.is_main_process and (done % tc.checkpoint_every == 0 or done == self.total):
                self.checkpoint(done)
        bar.close()
        self.elapsed = time.perf_counter() - t0
        self.live = live

    def checkpoint(self, done: int) -> None:
        mods = {n: self.unwrapped(n) for n in self.modules}
        mods = {n: ckpt.RawStateDict(m) if n in self.raw else m for n, m in mods.items()}
        if self.ema is not None:
            mods[f"{self.ema_name}_ema"] = self.ema_copy()
        state = {"fingerprint": self.fingerprint, "code": self.code, "losses": self.losses}
        ckpt.write_checkpoint(self.out / "checkpoints", done, mods, self.opt, state, self.train.keep_checkpoints)

    # -- 5: the end --------------------------------------------------------------------------------
    def finish(self) -> bool:
        """Wait for every process; True on the main process, the one that writes the outputs."""
        self.accelerator.wait_for_everyone()
        return self.accelerator.is_main_process

    def unwrapped(self, name: str):
        return self.accelerator.unwrap_model(self.modules[name])

    def ema_copy(self):
        model = self.unwrapped(self.ema_name)
        copy = type(model).from_config(model.config)
        self.ema.copy_to(copy.parameters())
        return copy

    def final(self, name: str):
        """The trained module `name`, unwrapped, with the moving average's weights where it keeps one."""
        model = self.unwrapped(name)
        if self.ema is not None and name == self.ema_name:
            self.ema.copy_to(model.parameters())
        return model

    def summary(self) -> dict:
        return train_summary(self.total, self.start_step, self.elapsed, self.losses)
