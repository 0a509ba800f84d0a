"""Stage `train_prior`: the text-to-image prior -- the bundled benchmark's stand-in for SD/SDXL pretraining.

A pixel-space text-conditioned UNet and a small CLIP text encoder (its tokenizer trained on the
corpus captions) learn the captioned, unlabelled corpus (seggen.data.corpus: broad looks, styles
named in the captions). Mask2Img then starts from it (seggen.generators.mask2img): its ControlNet
learns the labelled masks over this base, and synthesis can ask for any style the prior knows.

With `mask2img.pretrained` naming real weights (SD / SDXL), the prior is not needed: the stage writes
a model directory that says so (`skipped`) and trains nothing.

Output directory (`prior.out`):
    checkpoints/step_XXXXXXX/   resumable training state
    model/                      unet/ text_encoder/ tokenizer/ scheduler/ seggen_model.json
    samples.png                 one prompt in every style of the corpus, a row per prompt
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen import io as sio
from seggen import training
from seggen.config import Params
from seggen.generators import diffusion, text
from seggen.io import check_dir, claim
from seggen.training.loop import Loop

log = logging.getLogger(__name__)
KIND = "prior"
# the grid of samples.png: styles the corpus names, for two prompts
GRID_STYLES = (
    "a photo",
    "a dusk photo",
    "a night photo",
    "a foggy photo",
    "an overcast photo",
    "a flat painting",
    "a line drawing",
    "a grainy photo",
)
GRID_PROMPTS = (
    "two cars on a road, under the sky, on grass",
    "a house on the left and two trees on the right, on grass, under the sky",
)


def load_corpus(params: Params, resolution: int, accelerator=None):
    """The corpus images at `resolution` (cached: rows[idx] -> len(idx) x 3 x R x R in [-1, 1]) and their captions."""
    from seggen.data.corpus import read_corpus
    from seggen.generators.cache import cached_arrays, key_of

    rows = read_corpus(params.prior.corpus.out)
    listing = Path(params.prior.corpus.out) / "captions.jsonl"
    files = [[str(p), p.stat().st_size] for p, _ in rows]
    key = key_of("corpus-pixels", sio.sha256_file(listing), files, resolution)

    def pixels(chunk: int = 256):
        batch = []
        for k, (path, _) in enumerate(rows):
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (resolution, resolution):
                    im = im.resize((resolution, resolution), Image.BOX)
                batch.append(np.asarray(im))
            if len(batch) == chunk or k == len(rows) - 1:
                yield {"images": np.stack(batch)}
                batch = []

    shape = ((resolution, resolution, 3), np.uint8)
    images = cached_arrays(params.cache, key, len(rows), {"images": shape}, pixels, accelerator)["images"]
    return images, [c for _, c in rows]


def skipped(params: Params) -> str | None:
    """Why the prior is not trained, or None."""
    if params.mask2img.pretrained:
        return f"mask2img.pretrained names real weights ({params.mask2img.pretrained})"
    if not params.prior.enabled:
        return "prior.enabled is false"
    return None


def train_prior(params: Params, progress: bool = True) -> Path:
    """Train the prior (resuming from the newest checkpoint in prior.out) and write prior.out/model."""
    cfg = params.prior
    out = check_dir(cfg.out, "prior.out")
    reason = skipped(params)
    if reason:
        from seggen.io import atomic_dir

        with atomic_dir(out / "model", "train_prior (skipped)", "prior.out") as tmp:
            diffusion.write_model_meta(tmp, {"kind": KIND, "skipped": reason})
        claim(out, "prior.out", "train_prior")
        (out / "checkpoints").mkdir(exist_ok=True)  # a DVC output, empty
        log.info("prior not trained: %s", reason)
        return out / "model"
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    # 1. The noise schedule and objective
    noise_scheduler = diffusion.build_noise_scheduler(cfg, KIND)
    fingerprint = diffusion.fingerprint_params(params, cfg, noise_scheduler.config.prediction_type)
    loop = Loop("train_prior", out, "prior.train", tc, fingerprint, params.tracking.log_every, None, progress)
    torch.manual_seed(training.seed_for(params.seed, KIND, "init"))

    # 2. The corpus; the tokenizer learns its words (content and style), which the labelled captions share
    x0_all, captions = load_corpus(params, cfg.resolution, loop.accelerator)
    cond = text.TextConditioner.build(params.text_encoder, captions)
    unet = diffusion.build_unet(cfg.unet, 3, cond.context_dim(), cfg.resolution)
    text_all, empty = cond.inputs(captions, params.cache, loop.accelerator), cond.inputs([""])

    # 3-4. The UNet and the text encoder train (Text2Mask's steps, over the corpus's images)
    if not diffusion.train_text_to_image(loop, params.seed, KIND, unet, cond, noise_scheduler, x0_all, text_all, empty):
        return out / "model"

    # 5. The model directory and its grid of styles
    model_dir = diffusion.save_model(
        out / "model",
        {"unet": loop.final("unet")},
        cond.unwrapped(loop.accelerator),
        noise_scheduler,
        None,
        {
            "kind": KIND,
            "resolution": cfg.resolution,
            "images": len(captions),
            "train": loop.summary(),
            "fingerprint": fingerprint,
        },
    )
    sio.save_grid(sample_grid(model_dir, params.seed, cfg.sample.steps, cfg.sample.guidance_scale), out / "samples.png")
    return model_dir


def sample_grid(model_dir: Path, seed: int, steps: int, guidance: float) -> list[np.ndarray]:
    """Rows of GRID_PROMPTS x GRID_STYLES samples (one seed per column: the styles differ, not the noise)."""
    from seggen.generators.pipelines import SegGenPriorPipeline, seeded

    pipe = SegGenPriorPipeline.from_model_dir(model_dir)
    rows = []
    for prompt in GRID_PROMPTS:
        seeds = [training.seed_for(seed, KIND, "grid", prompt)] * len(GRID_STYLES)
        styled = [f"{prompt}, {s}" for s in GRID_STYLES]
        imgs = pipe(styled, 1, steps, guidance, seeded(seeds), output_type="uint8").images
        rows.append(np.concatenate(list(imgs), 1))
    return rows
