"""Text2Mask: a text-conditioned diffusion UNet that generates segmentation masks as colour maps.

Pixel space for the tiny default (the colour map itself is the sample); latent space through the
AutoencoderKL of a pretrained Stable Diffusion model when `text2mask.pretrained` is set (its UNet is
fine-tuned, its text encoder kept frozen). Generated colour maps decode to labels by nearest palette
colour (seggen.codec), and to instances where the model was trained on instance-aware maps.

Output directory (`text2mask.out`):
    checkpoints/step_XXXXXXX/   resumable training state (safetensors + JSON, no pickle)
    model/                      unet/ text_encoder/ tokenizer/ scheduler/ [vae/] seggen_model.json
    samples.png                 generated colour maps next to real ones for the same captions
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from seggen import io as sio
from seggen import training
from seggen.config import Params
from seggen.generators import cache, diffusion, text
from seggen.io import check_dir
from seggen.progress import tqdm
from seggen.training.loop import Loop

log = logging.getLogger(__name__)
KIND = "text2mask"


def train_text2mask(params: Params, progress: bool = True) -> Path:
    """Train (resuming from the newest checkpoint in text2mask.out) and write text2mask.out/model."""
    cfg, tc = params.text2mask, params.text2mask.train
    out = check_dir(cfg.out, "text2mask.out")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    # 1. The noise schedule and objective (a contradicting prediction_type fails here, first)
    noise_scheduler = diffusion.build_noise_scheduler(cfg, KIND)
    fingerprint = diffusion.fingerprint_params(params, cfg, noise_scheduler.config.prediction_type)
    loop = Loop("train_text2mask", out, "text2mask.train", tc, fingerprint, params.tracking.log_every, None, progress)
    torch.manual_seed(training.seed_for(params.seed, KIND, "init"))

    # 2. The training split's colour maps, as pixels or as the pretrained VAE's latents (both cached on disk)
    data = diffusion.load_generator_data(params, cfg.resolution, cfg.instances, loop.accelerator)
    vae = diffusion.load_vae(cfg.pretrained)
    if cfg.pretrained:  # SD / SDXL: its UNet fine-tuned on the latents of the colour maps, its text encoders frozen
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(cfg.pretrained, subfolder="unet")
        sdxl = unet.config.addition_embed_type == "text_time"
        cond = text.TextConditioner.build(params.text_encoder, data.captions, cfg.pretrained, sdxl, cfg.resolution)
        x0_all = cache.cached_latents(params, vae, data.colour_maps, cfg.pretrained, loop.accelerator)
    else:
        cond = text.TextConditioner.build(params.text_encoder, data.captions)
        unet = diffusion.build_unet(cfg.unet, 3, cond.context_dim(), cfg.resolution)
        x0_all = data.colour_maps
    # the captions as token ids, or a frozen encoder's outputs (cached: the encoders then stay off the device)
    text_all = cond.inputs(data.captions, params.cache, loop.accelerator)
    empty = cond.inputs([""])  # the unconditional prompt of classifier-free guidance

    # 3-4. The UNet (and a from-scratch text encoder) train: resume, prepare, EMA, the denoising steps
    if not diffusion.train_text_to_image(loop, params.seed, KIND, unet, cond, noise_scheduler, x0_all, text_all, empty):
        return out / "model"

    # 5. The model directory (the EMA weights where kept) and its sample grid
    model_dir = diffusion.save_model(
        out / "model",
        {"unet": loop.final("unet")},
        cond.unwrapped(loop.accelerator),
        noise_scheduler,
        vae,
        {
            "kind": KIND,
            "resolution": cfg.resolution,
            "palette": data.palette.colors.tolist(),
            "classes": data.meta.names,
            "things": data.meta.thing_ids,
            "instances": cfg.instances,
            "min_class_pixels": cfg.min_class_pixels,
            "train": loop.summary(),
            "fingerprint": fingerprint,
        },
    )
    # sample grid: real colour map | generated, for the first captions
    n = min(8, len(data))
    gen = sample_text2mask(
        model_dir,
        data.captions[:n],
        seed=params.seed,
        steps=cfg.sample.steps,
        guidance_scale=cfg.sample.guidance_scale,
        batch_size=cfg.sample.batch_size,
        progress=False,
    )
    real = training.to_uint8(data.colour_maps[:n])
    sio.save_grid([np.concatenate([r, g], 1) for r, g in zip(real, gen["rgb"])], out / "samples.png")
    return model_dir


def sample_text2mask(
    model_dir,
    prompts: list[str],
    n_per_prompt: int = 1,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 3.0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """-> {"prompts": [...], "rgb": N x H x W x 3 uint8, "labels": N x H x W[, "instances"]} (prompt-major
    order): `seggen sample text2mask`, the training grid and the MLflow model. Mask k of prompt p is
    drawn from seed_for(seed, "text2mask", "sample", p, k), whatever the batch. model_dir: a model
    directory or a loaded SegGenText2MaskPipeline."""
    from seggen.generators.pipelines import SegGenText2MaskPipeline, seeded

    pipe = (
        model_dir
        if isinstance(model_dir, SegGenText2MaskPipeline)
        else SegGenText2MaskPipeline.from_model_dir(model_dir)
    )
    jobs = [(p, k) for p in prompts for k in range(n_per_prompt)]
    outs = []
    bar = tqdm(total=len(jobs), desc="sample text2mask", unit="img", disable=not progress, dynamic_ncols=True)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        generator = seeded(training.seed_for(seed, KIND, "sample", p, k) for p, k in chunk)
        outs.append(pipe([p for p, _ in chunk], 1, steps, guidance_scale, generator=generator, output_type="uint8"))
        bar.update(len(chunk))
    bar.close()
    if not outs:
        return {"prompts": [], "rgb": np.zeros((0, 0, 0, 3), np.uint8), "labels": np.zeros((0, 0, 0), np.uint8)}
    out = {
        "prompts": [p for p, _ in jobs],
        "rgb": np.concatenate([o.images for o in outs]),
        "labels": np.concatenate([o.labels for o in outs]),
    }
    if outs[0].instances is not None:
        out["instances"] = np.concatenate([o.instances for o in outs])
    return out


def class_presence(labels: np.ndarray, num_classes: int, min_pixels: int) -> np.ndarray:
    """N x (num_classes + 1) bool: class c present in mask i with >= min_pixels pixels."""
    counts = np.stack([np.bincount(lab.ravel(), minlength=num_classes + 1)[: num_classes + 1] for lab in labels])
    return counts >= min_pixels


def mask_quality(
    generated: np.ndarray, real: np.ndarray, prompt_classes: list[list[str]], names: list[str], min_pixels: int
) -> dict:
    """Valid-class rate (pixels decoded to a class, not to ignore; decoding only ever yields palette
    labels), TV distance of class frequencies vs real masks, prompt consistency (recall: classes the
    prompt names that appear; precision: classes that appear that the prompt names)."""
    n = len(names)
    valid = float((generated >= 1).mean())  # pixels decoded to a class rather than to "ignore"
    fg = np.bincount(generated.ravel(), minlength=n + 1)[1 : n + 1].astype(float)
    fr = np.bincount(real.ravel(), minlength=n + 1)[1 : n + 1].astype(float)
    tv = 0.5 * np.abs(fg / max(fg.sum(), 1) - fr / max(fr.sum(), 1)).sum()
    pres = class_presence(generated, n, min_pixels)
    index = {nm: i + 1 for i, nm in enumerate(names)}
    rec, prec = [], []
    for p, want in zip(pres, prompt_classes):
        wanted = {index[c] for c in want if c in index}
        got = {c for c in range(1, n + 1) if p[c]}
        if wanted:
            rec.append(len(wanted & got) / len(wanted))
        if got:
            prec.append(len(wanted & got) / len(got))
    return {
        "valid_class_rate": valid,
        "tv_distance": float(tv),
        "prompt_recall": float(np.mean(rec)) if rec else math.nan,
        "prompt_precision": float(np.mean(prec)) if prec else math.nan,
        "num_samples": int(len(generated)),
    }
