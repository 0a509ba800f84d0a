"""The training toolkit every model's loop uses (Text2Mask, Mask2Img, Mask2Former, the probe):
determinism, accelerate set-up, learning-rate warm-up, loss logs, precision; resumable checkpoints
without pickle (checkpoint.py). Imports seggen's utilities only, never the pipeline's plumbing.

Determinism: batch indices, noise, timesteps and augmentation of every step are drawn from
generators seeded by (seed, ..., step), never from a shared stream, so a resumed run repeats an
uninterrupted one exactly and outputs do not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from seggen.errors import TrainingError, server_lost

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """False in the processes of `accelerate launch` other than the first (rank 0), read from the
    launcher's environment before any process group exists: their stage runs only the training."""
    return int(os.environ.get("RANK", "0")) == 0


def finite_loss(loss: float, step: int, lr: float, what: str) -> float:
    """The loss of optimizer step `step` (1-based), or a TrainingError naming the step and the learning
    rate: a NaN or infinite loss stops the training there, before anything of it is saved."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"{what}: the loss is {loss} at step {step} (lr {lr:g}); stopped there, nothing of this step saved "
            "-- lower the learning rate or add warm-up steps, and run again"
        )
    return loss


def seed_for(*parts: int | str) -> int:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def torch_gen(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


def batch_indices(seed: int, micro_step: int, n: int, batch_size: int) -> np.ndarray:
    """The dataset indices of a micro-step's global batch (with replacement only when n < batch_size)."""
    rng = np.random.default_rng(seed_for(seed, "batch", micro_step))
    return rng.choice(n, batch_size, replace=n < batch_size)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Bx3xHxW in [-1, 1] -> BxHxWx3 uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_accelerator(train_cfg, find_unused_parameters: bool = False):
    """find_unused_parameters: DDP's, for models with parameters that take no part in some losses."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    # AcceleratorState is a per-process singleton that pins the first run's mixed precision; a
    # second training in the same process (a Prefect flow, the tests) may use another. The
    # process-group state (PartialState) is kept, so `accelerate launch` runs are unaffected.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=train_cfg.mixed_precision,
        gradient_accumulation_steps=train_cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def train_summary(steps: int, start: int, elapsed: float, losses: list[float]) -> dict:
    return {
        "steps": steps,
        "seconds_this_run": elapsed,
        "steps_this_run": steps - start,
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "loss": list(losses),
    }


def write_loss_log(path: Path, losses: list[float], first_step: int = 0) -> None:
    """train_log.json: {"loss": [{"step", "loss"}, ...]}, the shape `dvc plots` reads."""
    from seggen.io import write_json

    write_json(
        path, {"loss": [{"step": first_step + i + 1, "loss": float(v)} for i, v in enumerate(losses)]}, indent=None
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Sampling precision: `auto` is bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA
    devices that support it, fp16 on other CUDA devices, else fp32 (None: no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


_observers: list = []


@contextmanager
def observe_steps(observer):
    """Call `observer.start()` when a training loop starts and `observer.step(done, total, loss)` after
    each of its optimizer steps, in this process (benchmarks time steps and read peak memory so)."""
    _observers.append(observer)
    try:
        yield observer
    finally:
        _observers.remove(observer)


class LiveMetrics:
    """Loss, learning rate and throughput sent to the active MLflow run (the stage's) every `every`
    steps while a training runs, so a long training can be watched in MLflow; a no-op without one
    (tracking off, or a training called outside a stage). Created right before the first step."""

    def __init__(self, every: int, samples_per_step: int, accelerator=None):
        # no run can be active where mlflow was never imported (tracking off): it need not be installed
        self.mlflow = sys.modules.get("mlflow")
        main = accelerator is None or accelerator.is_main_process
        self.run = self.mlflow.active_run() if main and self.mlflow is not None else None
        self.every, self.samples = every, samples_per_step
        self.window: list[float] = []
        self.t = time.perf_counter()
        self.steps = 0
        for o in _observers:
            o.start()

    def step(self, done: int, loss: float, lr: float, total: int) -> None:
        """After optimizer step `done` (1-based) of `total`."""
        for o in _observers:
            o.step(done, total, loss)
        if self.run is None:
            return
        self.window.append(loss)
        self.steps += 1
        if done % self.every and done != total:
            return
        now = time.perf_counter()
        rate = self.steps / max(now - self.t, 1e-9)
        try:
            self.mlflow.log_metrics(
                {
                    "live/loss": float(np.mean(self.window)),
                    "live/lr": float(lr),
                    "live/steps_per_s": rate,
                    "live/samples_per_s": rate * self.samples,
                },
                step=done,
            )
        except Exception as e:
            if not server_lost(e):
                raise
            # the training goes on; the stage says at its end that its MLflow run is incomplete
            log.warning("MLflow tracking lost at step %d: the training goes on without live metrics", done)
            self.run = None
        self.window, self.steps, self.t = [], 0, now


def step_bar(total: int, start: int, desc: str, accelerator, progress: bool = True):
    """The training loop's progress bar (rate and ETA), on the main process only."""
    from seggen.progress import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        disable=not progress or not accelerator.is_main_process,
    )
