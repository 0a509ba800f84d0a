"""The real-size path on one GPU, measured in minutes: SD-1.5 and SDXL generators, a ControlNet and
Mask2Former (Swin-T), built from their published architecture configs with random weights (speed and
memory do not depend on the values of the weights), saved as Hugging Face directories and run through
seggen's own stage functions with `pretrained` / `backbone` pointing at them, tracking off.

Parts, each in its own subprocess with a time limit (a crash is reported in one line and the next
part runs):

    text2mask    SD-1.5 UNet fine-tune in latent space, 512 px, batch 16, EMA, bf16, 20 steps
    mask2img     ControlNet over the frozen SD-1.5 UNet, 512 px, batch 16, bf16, 20 steps
    synthesis    ImgSyn and MaskSyn (`synthesize` stage) against diffusers' stock pipelines on the same
                 weights in bf16: batch 16, 20 DPM-Solver++ steps, guidance 7.5
    sdxl         one SDXL Text2Mask step at 1024 px, batch 1, with the memory savers seggen has
    mask2former  Swin-T Mask2Former, 512 px crops, batch 16, bf16, 20 steps; then evaluation images/s

The parts take the real ADE20K profile (profiles/real-ade20k.yaml) and change only sizes, steps and
paths (`check_params`). Data: the bundled benchmark rendered at 512 px, captioned by the label
captioner; text encoders get a tokenizer trained on those captions.

    python -m benchmarks.gpu_check                  the real sizes (needs CUDA); writes gpu-check/
    python -m benchmarks.gpu_check --tiny           the same code paths at tiny sizes, on any device
    python -m benchmarks.gpu_check --record gpu-check/gpu_check.json   its table into docs/benchmarks.md

Outputs (--out): gpu_check.json (every figure, and each failure's one-line error), gpu_check.md (the
table of docs/benchmarks.md) and gpu_check.log (all the parts' output). MLflow, Prefect and DVC are
not needed: the parts run with them hidden, as on a GPU machine that lacks them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "real-ade20k.yaml"
PARTS = ("text2mask", "mask2img", "synthesis", "sdxl", "mask2former")
NEEDS = {"synthesis": ("text2mask", "mask2img")}
# seconds per part (real sizes); the whole run also stops at --budget
LIMITS = {"text2mask": 150, "mask2img": 120, "synthesis": 150, "sdxl": 150, "mask2former": 120}
ABSENT = ("mlflow", "prefect", "dvc")  # hidden from the parts: tracking is off
GiB = 2**30

# -- architectures --------------------------------------------------------------------------------
# Published configs (the `config.json` of each checkpoint, defaults left out) and tiny stand-ins of
# the same structure: the same block types, conditioning and text encoders, at small widths.

SD15_UNET = dict(  # stable-diffusion-v1-5/unet: 860 M parameters
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
SDXL_UNET = dict(  # stable-diffusion-xl-base-1.0/unet: 2.6 B parameters
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # CLIP ViT-L (768) + OpenCLIP ViT-bigG (1280) hidden states
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size/crop ids x 256 + the 1280-d pooled text
    use_linear_projection=True,
    norm_num_groups=32,
)
VAE = dict(  # the SD / SDXL AutoencoderKL: 84 M parameters, 8x down
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)
CLIP_L = dict(  # CLIP ViT-L/14 text tower (SD-1.5's text encoder, SDXL's first): 123 M
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
)
CLIP_BIGG = dict(  # OpenCLIP ViT-bigG/14 text tower (SDXL's second, with projection): 695 M
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
)
SWIN_T = dict(  # microsoft/swin-tiny-patch4-window7-224: 28 M
    image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7
)
SCHEDULER = dict(  # SD-1.5's and SDXL's training noise schedule
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
)

TINY_SD15_UNET = {
    **SD15_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}
TINY_SDXL_UNET = {
    **SDXL_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 4, 4),
    "cross_attention_dim": 64,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 8 * 6 + 32,
}
TINY_VAE = {**VAE, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 4}
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_SWIN = {**SWIN_T, "image_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}


def arch(tiny: bool) -> dict:
    return {
        "sd15_unet": TINY_SD15_UNET if tiny else SD15_UNET,
        "sdxl_unet": TINY_SDXL_UNET if tiny else SDXL_UNET,
        "vae": TINY_VAE if tiny else VAE,
        "clip_l": TINY_CLIP if tiny else CLIP_L,
        "clip_bigg": TINY_CLIP if tiny else CLIP_BIGG,
        "swin": TINY_SWIN if tiny else SWIN_T,
    }


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_sd(root: Path, captions: list[str], xl: bool, tiny: bool, device: str) -> dict:
    """A Stable Diffusion (XL) repo directory with random weights: unet/ vae/ text_encoder[_2]/
    tokenizer[_2]/ scheduler/. Weights are initialised on `device` (fast on a GPU) and saved in fp32,
    as the published checkpoints. -> parameter counts."""
    import torch
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    from seggen.generators.text import train_tokenizer

    a = arch(tiny)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    tokenizer = train_tokenizer(captions, 49408, 77)  # CLIP's vocabulary size and context length
    counts = {}

    def save(name: str, module) -> None:
        counts[name] = _params(module)
        module.save_pretrained(tmp / name)

    try:
        _init_sd(tmp, tokenizer, xl, a, device, save)
    except Exception as e:  # noqa: BLE001 -- a library that cannot initialise under a device context
        if device == "cpu":
            raise
        print(f"note: initialising on {device} failed ({one_line(e)}); initialising on the CPU", flush=True)
        counts["init_device_failed"] = one_line(e)
        shutil.rmtree(tmp, ignore_errors=True)
        _init_sd(tmp, tokenizer, xl, a, "cpu", save)
    if xl:
        EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading").save_pretrained(tmp / "scheduler")
    else:
        PNDMScheduler(**SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False).save_pretrained(tmp / "scheduler")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return counts


def _init_sd(tmp: Path, tokenizer, xl: bool, a: dict, device: str, save) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        save("unet", UNet2DConditionModel(**(a["sdxl_unet"] if xl else a["sd15_unet"])))
        save("vae", AutoencoderKL(**a["vae"], scaling_factor=0.13025 if xl else 0.18215, force_upcast=xl))
        encoders = [("", CLIPTextModel, a["clip_l"])]
        if xl:
            encoders.append(("_2", CLIPTextModelWithProjection, a["clip_bigg"]))
        for sfx, cls, cfg in encoders:
            config = CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **cfg,
            )
            save(f"text_encoder{sfx}", cls(config))
            tokenizer.save_pretrained(tmp / f"tokenizer{sfx}")


def build_backbone(root: Path, tiny: bool) -> int:
    """A Swin image classifier directory (what microsoft/swin-* hold); seggen loads its backbone."""
    import torch
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**arch(tiny)["swin"], num_labels=1000))
    model.save_pretrained(root)
    return _params(model.swin)


# -- params ---------------------------------------------------------------------------------------


def check_params(work: Path, tiny: bool, part: str | None = None):
    """The real ADE20K profile with this check's sizes, steps and paths (everything under `work`)."""
    from seggen.config import load_params

    r = 64 if tiny else 512
    batch = 4 if tiny else 16
    steps = 3 if tiny else 20
    never = 10**7  # no checkpoint but the final one (checkpoint_every at its bound)
    train = {"steps": steps, "batch_size": batch, "checkpoint_every": never, "warmup_steps": 1}
    sets = {
        "data.format": "benchmark",
        "data.root": str(work / "data"),
        "data.benchmark": {
            "resolution": r,
            "num_train": 8 if tiny else 16,
            "num_val": 4 if tiny else 32,
            "num_tuning": 1,
            "domains": {"unseen": 1, "tuning": 1, "images": 1},
            "workers": min(8, os.cpu_count() or 1),
        },
        "caption.captioner": "label",
        "caption.model": None,
        "caption.out": str(work / "captions.jsonl"),
        "text2mask.pretrained": str(work / "sd15"),
        "text2mask.out": str(work / "text2mask"),
        "text2mask.resolution": r,
        "text2mask.train": train,
        "text2mask.sample": {"steps": 2, "batch_size": 8},
        "mask2img.pretrained": str(work / "sd15"),
        "mask2img.out": str(work / "mask2img"),
        "mask2img.resolution": r,
        "mask2img.train": train,
        "mask2img.sample": {"steps": 2, "batch_size": 8},
        "synthesize.out": str(work / "synthetic"),
        "synthesize.text2mask": str(work / "text2mask" / "model"),
        "synthesize.mask2img": str(work / "mask2img" / "model"),
        "synthesize.max_sources": None,
        "synthesize.masksyn_per_source": 1 if tiny else 3,  # 3 batches of 16
        "synthesize.imgsyn_per_source": 1 if tiny else 3,
        "synthesize.steps": 2 if tiny else 20,
        "synthesize.batch_size": batch,
        "synthesize.precision": "bf16",
        "synthesize.workers": 1,
        "synthesize.filter": {"sample": False, "pixel": False},
        "segmenter.strategy": "real",
        "segmenter.backbone": str(work / "swin-t"),
        "segmenter.out": str(work / "segmenter"),
        "segmenter.train": {**train, "crop": r},
        "evaluate.splits": ["validation"],
        "evaluate.size": r,
        "evaluate.out": str(work / "eval"),
    }
    if tiny:
        sets["segmenter.model"] = {
            "hidden_dim": 32,
            "num_queries": 8,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "train_num_points": 256,
        }
    if part == "sdxl":  # one step at SDXL's native size
        sets.update(
            {
                "text2mask.pretrained": str(work / "sdxl"),
                "text2mask.out": str(work / "sdxl_text2mask"),
                "text2mask.resolution": 2 * r,
                "text2mask.train": {**train, "steps": 1, "batch_size": 1},
            }
        )
    return load_params(PROFILE, _leaves(sets), "gpu_check")


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"a.b": {"c": 1}} -> {"a.b.c": 1}: an override replaces one value, never a whole section."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_data(work: Path, tiny: bool) -> list[str]:
    """The benchmark at the check's resolution and its captions (the parts read both)."""
    from seggen.data.captions import read_captions
    from seggen.pipeline import stages

    p = check_params(work, tiny)
    stages.prepare(p)
    stages.caption(p)
    return [row.caption for row in read_captions(p.caption.out).values()]


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
    out.update(crop=tc.crop, batch=tc.batch_size, mixed_precision=tc.mixed_precision)
    out["decoder_layers"] = p.segmenter.model.decoder_layers
    finish(work, "mask2former", {"ok": False, "error": "incomplete", **out})  # what a failed part still reports
    clock = StepClock()
    t = time.perf_counter()
    with observe_steps(clock):
        model_dir = stages.train_segmenter(p)
    out["stage_s"] = time.perf_counter() - t
    out.update(clock.figures(tc.batch_size * tc.grad_accum))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    metrics = stages.evaluate(p, "validation", model=model_dir, out=work / "eval" / "validation")
    out["eval_images_per_s"] = metrics["images_per_s"]
    out["eval_images"] = p.data.benchmark.num_val
    out["eval_size"] = p.evaluate.size
    out["eval_peak_gpu_gib"] = gpu_peak_gib()
    return out


# -- running --------------------------------------------------------------------------------------


def finish(work: Path, part: str, result: dict) -> None:
    path = work / "results" / f"{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    for line in text:  # CUDA's out-of-memory message starts with the allocation that failed
        if "out of memory" in line.lower():
            first = line
            break
    return f"{type(e).__name__}: {first}"[:400]


def run_part(part: str, work: Path, tiny: bool) -> None:
    """The child: one part, its figures (or its one-line error) in WORK/results/PART.json."""
    import traceback

    for name in ABSENT:  # as on a GPU machine without them: import fails, find_spec finds nothing
        sys.modules.setdefault(name, None)
    os.environ["SEGGEN_TRACKING"] = "off"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t = time.perf_counter()
    try:
        result = {"ok": True, **globals()[f"part_{part}"](work, tiny)}
    except BaseException as e:  # noqa: BLE001 -- every failure is a finding, reported in one line
        traceback.print_exc()
        partial = work / "results" / f"{part}.json"  # what the part measured before it failed
        result = {**(json.loads(partial.read_text()) if partial.exists() else {}), "ok": False, "error": one_line(e)}
    result["seconds"] = time.perf_counter() - t
    result.setdefault("peak_host_rss_gib", host_rss_gib())
    if "peak_gpu_gib" not in result:
        try:
            result["peak_gpu_gib"] = gpu_peak_gib()
        except Exception:  # noqa: BLE001 -- a broken CUDA context: the error above says why
            result["peak_gpu_gib"] = None
    finish(work, part, result)


def _pump(stream, sinks, tail: list) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        for s in sinks:
            s.write(chunk)
            s.flush()
        tail.append(chunk)
        del tail[:-64]


def spawn(part: str, work: Path, tiny: bool, limit: float, log) -> dict:
    """Run a part in a subprocess (its own process group), stream its output, kill it at `limit`."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--part", part, "--work", str(work)]
    cmd += ["--tiny"] if tiny else []
    result_path = work / "results" / f"{part}.json"
    result_path.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: list[bytes] = []
    pump = threading.Thread(target=_pump, args=(proc.stdout, [sys.stdout.buffer, log], tail), daemon=True)
    pump.start()
    rc, error = None, None
    try:
        rc = proc.wait(timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        error = f"timed out after {limit:.0f} s"
    finally:
        try:  # the part and anything it started; also when this process is being stopped
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
        pump.join()  # the pipe closes with the last process of the group
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if error is None and result.get("error") != "incomplete" and result:
        return result
    if error is None:
        last = [ln for ln in b"".join(tail).decode(errors="replace").splitlines() if ln.strip()]
        error = f"exit code {rc}: {last[-1].strip()[:300] if last else 'no output'}"
    return {**result, "ok": False, "error": error, "seconds": time.perf_counter() - t}


def environment() -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for mod in ("diffusers", "transformers", "accelerate"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        env.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / GiB, 1), cuda=torch.version.cuda)
    else:
        env["gpu"] = None
    return env


def check(out: Path, tiny: bool, parts: tuple[str, ...], budget: float, work: Path | None, keep: bool) -> dict:
    """Every part in turn, within `budget` seconds in all; -> the results, also written to
    out/gpu_check.json and .md after each part (a run stopped from outside keeps what it measured)."""
    import signal

    from seggen.io import claim

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="seggen-gpu-check-")) if own_work else work
    claim(work, "--work", "gpu check")  # a folder of the user's is refused: the check replaces what it names
    report: dict = {"tiny": tiny, "parts": {}}
    os.environ["SEGGEN_TRACKING"] = "off"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: clean up and write what was measured

    def write() -> None:
        report["wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu_check.md").write_text(table(report))

    try:
        with open(out / "gpu_check.log", "wb") as log:
            t = time.perf_counter()
            prepare_data(work, tiny)
            report["data_s"] = time.perf_counter() - t
            report["environment"] = environment()  # after the data's worker processes: CUDA starts here
            report["settings"] = settings(check_params(work, tiny))
            for i, part in enumerate(parts):
                left = budget - (time.perf_counter() - t0)
                missing = [n for n in NEEDS.get(part, ()) if not report["parts"].get(n, {}).get("ok")]
                if missing:
                    res = {"ok": False, "error": f"not run: needs {' and '.join(missing)}", "seconds": 0.0}
                elif left < 10:
                    res = {"ok": False, "error": f"not run: the {budget:.0f} s budget was spent", "seconds": 0.0}
                else:
                    banner = f"\n=== gpu_check [{i + 1}/{len(parts)}] {part}\n"
                    sys.stdout.write(banner)
                    sys.stdout.flush()
                    log.write(banner.encode())
                    res = spawn(part, work, tiny, min(left, LIMITS[part] * (2 if tiny else 1)), log)
                report["parts"][part] = res
                write()
                status = "ok" if res["ok"] else res["error"]
                print(f"=== gpu_check {part}: {status} ({res.get('seconds', 0):.0f} s)", flush=True)
                if part in ("text2mask", "mask2img") and not keep:  # 14 GB of resumable state at SD-1.5 size
                    shutil.rmtree(work / part / "checkpoints", ignore_errors=True)
                if part == "synthesis" and not keep:  # the SD-1.5 directories are no longer needed
                    for d in ("sd15", "text2mask", "mask2img", "synthetic"):
                        shutil.rmtree(work / d, ignore_errors=True)
    finally:
        report.setdefault("environment", environment())
        write()
        if own_work and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


# -- the table ------------------------------------------------------------------------------------


def settings(p) -> dict:
    """What the table states of the synthesis measurement, from the check's params."""
    syn = p.synthesize
    return {
        "synthesis": {
            "resolution": p.mask2img.resolution,
            "batch": syn.batch_size,
            "steps": syn.steps,
            "guidance": [syn.text2mask_guidance, syn.mask2img_guidance],
            "images": [
                syn.imgsyn_per_source * p.data.benchmark.num_train,
                syn.masksyn_per_source * p.data.benchmark.num_train,
            ],
        }
    }


def _f(v, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def table(report: dict) -> str:
    """docs/benchmarks.md's GPU-check section, from a gpu_check.json."""
    env, parts = report["environment"], report["parts"]
    where = f"{env.get('gpu') or 'no GPU (CPU)'}" + (
        f" ({env['gpu_memory_gib']} GiB), CUDA {env['cuda']}" if env.get("gpu") else ""
    )
    lines = [
        "## Real-size path on one GPU" + (" (tiny configs)" if report.get("tiny") else ""),
        "",
        f"`make gpu-check` on {where}, {env.get('cpu_cores')} CPU cores, Python {env['python']}, torch "
        f"{env['torch']}, diffusers {env.get('diffusers')}, transformers {env.get('transformers')}, "
        f"accelerate {env.get('accelerate')}; measured {env['date']}; {report['wall_s'] / 60:.1f} min in all "
        f"(data {report.get('data_s', 0):.0f} s). Random weights of the published configs; step rates "
        "leave out the first steps (warm-up); peak memory is the allocator's (`max_memory_allocated`).",
        "",
        "| part | setting | result | step/s | samples/s | peak GPU GiB | peak host RSS GiB | part s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(name: str, setting: str, res: dict, result: str | None = None) -> None:
        ok = res.get("ok")
        result = result or ("ok" if ok else f"**failed**: `{res.get('error', '?')}`")
        if res.get("steps") and res.get("steps_timed", 0) >= res["steps"]:  # no step but warm-up ones: no rate
            res = {k: v for k, v in res.items() if k not in ("step_per_s", "samples_per_s")}
        lines.append(
            f"| {name} | {setting} | {result} | {_f(res.get('step_per_s'))} | {_f(res.get('samples_per_s'), '{:.1f}')} "
            f"| {_f(res.get('peak_gpu_gib'), '{:.1f}')} | {_f(res.get('peak_host_rss_gib'), '{:.1f}')} "
            f"| {_f(res.get('seconds'), '{:.0f}')} |"
        )

    def gen(res: dict) -> str:
        return f"{res.get('resolution', '?')} px, batch {res.get('batch', '?')}, {res.get('mixed_precision', '?')}"

    if "text2mask" in parts:
        r = parts["text2mask"]
        extra = f", loss finite: {r.get('loss_finite')}" if r.get("ok") else ""
        row("Text2Mask (SD-1.5 UNet fine-tune)", gen(r) + f", EMA {r.get('ema')}", r, "ok" + extra if r["ok"] else None)
    if "mask2img" in parts:
        r = parts["mask2img"]
        extra = f", loss finite: {r.get('loss_finite')}" if r.get("ok") else ""
        row("Mask2Img (ControlNet, frozen SD-1.5)", gen(r), r, "ok" + extra if r["ok"] else None)
    if "sdxl" in parts:
        r = parts["sdxl"]
        savers = ", ".join(r.get("memory_savers") or []) or "none"
        result = None
        if r.get("ok"):
            result = (
                f"ok: the step took {_f(r.get('first_step_s'))} s (the first: with warm-up); "
                f"{_f(r.get('peak_gpu_gib_before_step'), '{:.1f}')} GiB peak before it "
                "(its set-up: the models, the split's VAE latents)"
            )
        row("SDXL Text2Mask, one step", gen(r) + f", EMA {r.get('ema')}; savers: {savers}", r, result)
    if "mask2former" in parts:
        r = parts["mask2former"]
        row(
            "Mask2Former Swin-T train",
            f"{r.get('crop', '?')} px crops, batch {r.get('batch', '?')}, {r.get('mixed_precision', '?')}",
            r,
        )
        if r.get("ok"):
            lines.append(
                f"| Mask2Former Swin-T evaluate | {r.get('eval_images')} images, short side {r.get('eval_size')}, fp32 "
                f"| {_f(r.get('eval_images_per_s'))} images/s | | | {_f(r.get('eval_peak_gpu_gib'), '{:.1f}')} | | |"
            )
    lines.append(f"| measured on | {where}; {env['date']}; `make gpu-check` |" + " |" * 6)
    if "synthesis" in parts:
        r = parts["synthesis"]
        st = report.get("settings", {}).get("synthesis", {})
        lines += [
            "",
            f"Synthesis, SD-1.5 size at {st.get('resolution', '?')} px, batch {st.get('batch', '?')}, "
            f"{st.get('steps', '?')} DPM-Solver++ steps, "
            f"guidance {' / '.join(map(str, st.get('guidance', [])))}, bf16, "
            f"{' and '.join(str(n) for n in st.get('images', []))} images (ImgSyn and MaskSyn) "
            "(ours: the synthesize stage, fp32 weights under bf16 autocast, images/s over generation with its first "
            "batch, files written; stock: diffusers' pipelines with bf16 weights, two batches after a warm-up call):",
            "",
            "| strategy | ours images/s | stock images/s | ours / stock |",
            "| --- | --- | --- | --- |",
        ]
        for s in ("imgsyn", "masksyn"):
            if f"{s}_ours_images_per_s" in r or r.get("ok"):
                lines.append(
                    f"| {s} | {_f(r.get(f'{s}_ours_images_per_s'))} | {_f(r.get(f'{s}_stock_images_per_s'))} "
                    f"| {_f(r.get(f'{s}_ratio'))}x |"
                )
        if not r.get("ok"):
            lines.append(f"| | **failed**: `{r.get('error')}` | | |")
    failed = [f"{k}: {v.get('error')}" for k, v in parts.items() if not v.get("ok")]
    lines += ["", "Failures: " + ("; ".join(failed) if failed else "none."), ""]
    return "\n".join(lines)


def fail(message: str) -> None:
    """Bad input: one line, exit 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    import torch

    from benchmarks.common import DOC, update_section
    from seggen.errors import SeggenError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (the CPU check of the same code paths)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu-check", help="where gpu_check.json/.md/.log go")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all parts (default 420)")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory's models")
    ap.add_argument("--record", type=Path, help="write this gpu_check.json's table into docs/benchmarks.md")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # the child process of one part
    a = ap.parse_args()
    if a.part:
        run_part(a.part, a.work, a.tiny)
        return
    if a.record:
        try:
            report = json.loads(a.record.read_text())
            text = table(report)
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"--record {a.record}: not a gpu_check.json ({type(e).__name__}: {e})")
        update_section("gpu", text)
        print(f"wrote the GPU check section of {DOC}")
        return
    parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        fail(f"--parts {a.parts}: expected some of {', '.join(PARTS)}, comma-separated")
    if a.budget <= 0:
        fail(f"--budget {a.budget:g}: seconds, more than 0")
    if not a.tiny and not torch.cuda.is_available():
        fail("the real-size check needs a CUDA GPU (torch sees none); --tiny runs the same code on any device")
    try:
        report = check(a.out, a.tiny, parts, a.budget, a.work, a.keep)
    except SeggenError as e:  # a --work or --out that is someone else's
        fail(str(e))
    print(table(report))
    failed = [k for k, v in report["parts"].items() if not v.get("ok")]
    print(f"wrote {a.out}/gpu_check.json, gpu_check.md, gpu_check.log; {len(failed)} part(s) failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
