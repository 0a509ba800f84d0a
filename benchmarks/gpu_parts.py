"""The parts of the GPU check (benchmarks/gpu_check.py), each run in its own subprocess: train
Text2Mask and Mask2Img, synthesize against diffusers' stock pipelines, one SDXL step, Mask2Former;
with the step clock and memory readings they report."""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

from benchmarks.gpu_models import build_backbone, build_sd, check_params, finish

GiB = 2**30


# -- measuring ------------------------------------------------------------------------------------


class StepClock:
    """Times a training loop's optimizer steps and reads the GPU's peak memory over them
    (seggen.training.observe_steps). exit_after_last: end the process once the last step is
    measured (the SDXL part: writing a 2.6 B-parameter checkpoint is not what it measures)."""

    def __init__(self, on_last=None):
        self.times: list[float] = []
        self.losses: list[float] = []
        self.peak_before = 0
        self.peak = None
        self.on_last = on_last

    def start(self) -> None:
        import torch

        if torch.cuda.is_available():
            self.peak_before = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.times = [time.perf_counter()]

    def step(self, done: int, total: int, loss: float) -> None:
        import torch

        self.times.append(time.perf_counter())
        self.losses.append(float(loss))
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()
        if done == total and self.on_last is not None:
            self.on_last(self)

    def figures(self, samples_per_step: int) -> dict:
        n = len(self.times) - 1
        skip = 2 if n >= 5 else 1  # the first steps warm kernels and allocator up: never timed
        span = self.times[-1] - self.times[skip] if n > skip else float("nan")
        rate = (n - skip) / span if n > skip and span > 0 else None
        return {
            "steps": n,
            "steps_timed": max(0, n - skip),
            "step_per_s": rate,
            "samples_per_s": rate * samples_per_step if rate else None,
            "first_step_s": self.times[1] - self.times[0] if n else None,
            "peak_gpu_gib": self.peak / GiB if self.peak is not None else None,
            "loss_finite": bool(self.losses) and all(math.isfinite(v) for v in self.losses),
            "final_loss": self.losses[-1] if self.losses else None,
        }


def host_rss_gib() -> float:
    """This process's peak resident memory: VmHWM (Linux; ru_maxrss would start at the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def gpu_peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- parts ----------------------------------------------------------------------------------------


def _train_generator(work: Path, tiny: bool, kind: str) -> dict:
    from seggen.data.captions import read_captions
    from seggen.pipeline import stages
    from seggen.training import observe_steps

    out: dict = {}
    p = check_params(work, tiny)
    if not (work / "sd15").is_dir():
        t = time.perf_counter()
        captions = [row.caption for row in read_captions(p.caption.out).values()]
        out["parameters"] = build_sd(work / "sd15", captions, False, tiny, _device())
        out["build_s"] = time.perf_counter() - t
    cfg = getattr(p, kind)
    out.update(resolution=cfg.resolution, batch=cfg.train.batch_size, ema=cfg.train.ema)
    out["mixed_precision"] = cfg.train.mixed_precision
    finish(work, kind, {"ok": False, "error": "incomplete", **out})  # what a failed part still reports
    clock = StepClock()
    t = time.perf_counter()
    with observe_steps(clock):
        getattr(stages, f"train_{kind}")(p)
    out["stage_s"] = time.perf_counter() - t
    out.update(clock.figures(cfg.train.batch_size * cfg.train.grad_accum))
    return out


def part_text2mask(work: Path, tiny: bool) -> dict:
    return _train_generator(work, tiny, "text2mask")


def part_mask2img(work: Path, tiny: bool) -> dict:
    return _train_generator(work, tiny, "mask2img")


def _stock_pipelines(p, dtype, device: str):
    """diffusers' stock StableDiffusionPipeline (Text2Mask) and StableDiffusionControlNetPipeline
    (Mask2Img) from the components of our model directories, weights loaded in `dtype`."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DPMSolverMultistepScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import AutoTokenizer, CLIPTextModel

    def parts(d: Path) -> dict:
        return dict(
            vae=AutoencoderKL.from_pretrained(d / "vae", torch_dtype=dtype),
            text_encoder=CLIPTextModel.from_pretrained(d / "text_encoder", torch_dtype=dtype),
            tokenizer=AutoTokenizer.from_pretrained(d / "tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(d / "unet", torch_dtype=dtype),
            scheduler=DPMSolverMultistepScheduler.from_pretrained(d / "scheduler", algorithm_type="dpmsolver++"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    m2i = Path(p.synthesize.mask2img)
    t2m = StableDiffusionPipeline(**parts(Path(p.synthesize.text2mask))).to(device)
    cn = StableDiffusionControlNetPipeline(
        controlnet=ControlNetModel.from_pretrained(m2i / "controlnet", torch_dtype=dtype), **parts(m2i)
    ).to(device)
    for pipe in (t2m, cn):
        pipe.set_progress_bar_config(disable=True)
    return t2m, cn


def _stock_rate(p, strategy: str, prompts: list[str], labels: list, timed_batches: int) -> float:
    """images/s of the stock pipelines at synthesize.batch_size, steps and guidance, bf16 weights,
    after a one-step warm-up call."""
    import numpy as np
    import torch
    from PIL import Image

    from seggen.codec import Palette

    cfg = p.synthesize
    device = _device()
    t2m, cn = _stock_pipelines(p, torch.bfloat16, device)
    t2m_info = json.loads((Path(cfg.text2mask) / "seggen_model.json").read_text())
    palette = Palette(colors=np.asarray(t2m_info["palette"], np.uint8), names=("ignore", *t2m_info["classes"]))
    r = int(t2m_info["resolution"])
    b = cfg.batch_size

    def batch(k: int, steps: int) -> None:
        ps = [prompts[(k * b + i) % len(prompts)] for i in range(b)]
        gens = [torch.Generator().manual_seed(k * b + i) for i in range(b)]
        if strategy == "masksyn":
            rgb = t2m(
                ps,
                height=r,
                width=r,
                num_inference_steps=steps,
                guidance_scale=cfg.text2mask_guidance,
                generator=gens,
                output_type="np",
            ).images
            labs = [palette.decode((x * 255).round().astype(np.uint8)) for x in rgb]
        else:
            labs = [labels[(k * b + i) % len(labels)] for i in range(b)]
        maps = [Image.fromarray(palette.colors[np.asarray(Image.fromarray(lab).resize((r, r), 0))]) for lab in labs]
        cn(
            ps,
            image=maps,
            height=r,
            width=r,
            num_inference_steps=steps,
            guidance_scale=cfg.mask2img_guidance,
            generator=gens,
            output_type="np",
        )

    batch(0, 1)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for k in range(timed_batches):
        batch(k, cfg.steps)
    if device == "cuda":
        torch.cuda.synchronize()
    return timed_batches * b / (time.perf_counter() - t)


def part_synthesis(work: Path, tiny: bool) -> dict:
    import gc

    import numpy as np
    import torch

    from seggen.data.captions import read_captions
    from seggen.data.layout import open_split
    from seggen.pipeline import stages

    p = check_params(work, tiny)
    out: dict = {"batch": p.synthesize.batch_size, "steps": p.synthesize.steps, "precision": "bf16"}
    for strategy in ("imgsyn", "masksyn"):
        t = time.perf_counter()
        res = stages.synthesize(p, strategy)
        out[f"{strategy}_ours_images_per_s"] = res["images_per_s"]
        out[f"{strategy}_ours_wall_images_per_s"] = res["generated"] / (time.perf_counter() - t)
        out[f"{strategy}_images"] = res["generated"]
        finish(work, "synthesis", {"ok": False, "error": "incomplete", **out})  # kept if a later step times out
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["ours_peak_gpu_gib"] = gpu_peak_gib()
    ds = open_split(Path(p.data.root), p.synthesize.split)
    caps = read_captions(p.caption.out)
    prompts = [caps[s.id].caption for s in ds.samples]
    labels = [ds.load_label(i).astype(np.uint8) for i in range(len(ds))]
    for strategy in ("imgsyn", "masksyn"):
        rate = _stock_rate(p, strategy, prompts, labels, 1 if tiny else 2)
        out[f"{strategy}_stock_images_per_s"] = rate
        out[f"{strategy}_ratio"] = out[f"{strategy}_ours_images_per_s"] / rate
        finish(work, "synthesis", {"ok": False, "error": "incomplete", **out})
        gc.collect()
    return out


def part_sdxl(work: Path, tiny: bool) -> dict:
    import torch

    from seggen.data.captions import read_captions
    from seggen.pipeline import stages
    from seggen.training import observe_steps

    out: dict = {}
    p = check_params(work, tiny, "sdxl")
    t = t_part = time.perf_counter()
    captions = [row.caption for row in read_captions(p.caption.out).values()]
    out["parameters"] = build_sd(work / "sdxl", captions, True, tiny, _device())
    out["build_s"] = time.perf_counter() - t
    cfg = p.text2mask
    out.update(resolution=cfg.resolution, batch=cfg.train.batch_size, ema=cfg.train.ema)
    out["mixed_precision"] = cfg.train.mixed_precision
    out["memory_savers"] = savers(cfg.train)
    finish(work, "sdxl", {"ok": False, "error": "incomplete", **out})  # what a failed part still reports
    if torch.cuda.is_available():  # the peak before the step: loading and encoding, not building
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()

    def done(clock: StepClock) -> None:
        out["stage_s"] = time.perf_counter() - started
        out.update(clock.figures(cfg.train.batch_size))
        out["peak_gpu_gib_before_step"] = clock.peak_before / GiB if clock.peak is not None else None
        out["peak_host_rss_gib"] = host_rss_gib()
        finish(work, "sdxl", {"ok": True, **out, "seconds": time.perf_counter() - t_part})
        os._exit(0)  # the step is what this part measures, not saving 41 GB of checkpoint

    with observe_steps(StepClock(on_last=done)):
        stages.train_text2mask(p)
    raise RuntimeError("the training ended without a step")


def savers(train) -> list[str]:
    """The memory savers the training params turn on (the fields that exist in this version)."""
    on = [f"mixed_precision={train.mixed_precision}"] if train.mixed_precision != "no" else []
    for name in ("gradient_checkpointing", "optimizer"):
        v = getattr(train, name, None)
        if v not in (None, False, "adamw"):
            on.append(f"{name}={v}")
    return on


def part_mask2former(work: Path, tiny: bool) -> dict:
    import torch

    from seggen.pipeline import stages
    from seggen.training import observe_steps

    out: dict = {}
    p = check_params(work, tiny)
    t = time.perf_counter()
    out["backbone_parameters"] = build_backbone(work / "swin-t", tiny)
    out["build_s"] = time.perf_counter() - t
    tc = p.segmenter.train
    batch = tc.batch_size + p.segmenter.synthetic_added  # augment_mode add: its samples, too
    out.update(crop=tc.crop, batch=batch, mixed_precision=tc.mixed_precision)
    out["decoder_layers"] = p.segmenter.model.decoder_layers
    finish(work, "mask2former", {"ok": False, "error": "incomplete", **out})  # what a failed part still reports
    clock = StepClock()
    t = time.perf_counter()
    with observe_steps(clock):
        model_dir = stages.train_segmenter(p)
    out["stage_s"] = time.perf_counter() - t
    out.update(clock.figures(batch * tc.grad_accum))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    metrics = stages.evaluate(p, "validation", model=model_dir, out=work / "eval" / "validation")
    out["eval_images_per_s"] = metrics["images_per_s"]
    out["eval_images"] = p.data.benchmark.num_val
    out["eval_size"] = p.evaluate.size
    out["eval_peak_gpu_gib"] = gpu_peak_gib()
    return out
