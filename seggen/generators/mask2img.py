"""Mask2Img: a ControlNet on a base text-conditioned UNet, generating an image from a colour map + caption.

Schedule for the tiny default (no pretrained base exists offline): the base UNet and the ControlNet
are trained jointly from scratch, in one loop, on (image, colour map, caption) triples; the base
learns the image prior from the caption, the ControlNet learns to steer it with the mask through its
zero-initialised residual convolutions. With `mask2img.pretrained` (a Stable Diffusion id or
directory) the base UNet, VAE and text encoder are loaded and frozen and only the ControlNet trains,
in latent space, as in the paper.

Output directory (`mask2img.out`):
    checkpoints/step_XXXXXXX/   resumable state
    model/                      unet/ controlnet/ text_encoder/ tokenizer/ scheduler/ [vae/] seggen_model.json
    samples.png                 colour map | real image | generated, for the first training masks
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen import io as sio
from seggen import training
from seggen.config import Params
from seggen.errors import ConfigError, DataError
from seggen.generators import cache, diffusion, text
from seggen.generators.prior import GRID_STYLES
from seggen.io import check_dir, write_png
from seggen.training.loop import Loop

log = logging.getLogger(__name__)
KIND = "mask2img"
UNET_PRIOR = "unet_prior"  # the broad base a fine-tuned one started from (synthesize.style_swap)


def prior_of(params: Params) -> Path | None:
    """The prior Mask2Img starts from (prior.out/model), when the benchmark's prior is in use."""
    if params.mask2img.pretrained or not params.prior.enabled:
        return None
    d = Path(params.prior.out) / "model"
    info = diffusion.read_model_meta(d, "prior")
    if info.get("skipped"):
        raise DataError(f"{d}: the prior was not trained ({info['skipped']}); run the train_prior stage")
    if int(info["resolution"]) != params.mask2img.resolution:
        raise ConfigError(
            f"mask2img.resolution: {params.mask2img.resolution}, but the prior at {d} is {info['resolution']} px"
        )
    return d


def train_mask2img(params: Params, progress: bool = True) -> Path:
    from diffusers import UNet2DConditionModel

    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    cfg, tc = params.mask2img, params.mask2img.train
    out = check_dir(cfg.out, "mask2img.out")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    # 1. The base's noise schedule and objective: the prior's, a checkpoint's, or a new one
    prior = prior_of(params)  # the benchmark's pretrained base, or None
    if prior is not None:
        from diffusers import DDPMScheduler

        noise_scheduler = DDPMScheduler.from_pretrained(prior / "scheduler")
    else:
        noise_scheduler = diffusion.build_noise_scheduler(cfg, KIND)  # a contradicting prediction_type fails here
    fingerprint = diffusion.fingerprint_params(params, cfg, noise_scheduler.config.prediction_type)
    if prior is not None:  # trained on another prior: other checkpoints
        fingerprint = training.seed_for(fingerprint, diffusion.read_model_meta(prior, "prior")["fingerprint"])
        fingerprint = f"{fingerprint:016x}"[:16]
    loop = Loop("train_mask2img", out, "mask2img.train", tc, fingerprint, params.tracking.log_every, None, progress)
    torch.manual_seed(training.seed_for(params.seed, KIND, "init"))

    # 2. (image, colour map, caption) triples; images as pixels or the pretrained VAE's latents
    data = diffusion.load_generator_data(params, cfg.resolution, accelerator=loop.accelerator)
    captions = [f"{c}, {cfg.caption_style}" for c in data.captions] if cfg.caption_style else data.captions
    vae = diffusion.load_vae(cfg.pretrained)
    corpus = None
    if cfg.pretrained:
        unet = UNet2DConditionModel.from_pretrained(cfg.pretrained, subfolder="unet")
        sdxl = unet.config.addition_embed_type == "text_time"
        cond = text.TextConditioner.build(params.text_encoder, captions, cfg.pretrained, sdxl, cfg.resolution)
        x0_all = cache.cached_latents(params, vae, data.images, cfg.pretrained, loop.accelerator)
    elif prior is not None:  # the prior's UNet and (frozen) text encoder; the ControlNet learns the masks
        unet = UNet2DConditionModel.from_pretrained(prior / "unet")
        cond = text.TextConditioner.load(prior)
        x0_all = data.images
        if cfg.base == "finetune" and cfg.prior_mix > 0:
            from seggen.generators.prior import load_corpus

            cx, ccaps = load_corpus(params, cfg.resolution, loop.accelerator)
            corpus = (cx, cond.inputs(ccaps, params.cache, loop.accelerator))
    else:
        cond = text.TextConditioner.build(params.text_encoder, captions)
        unet = diffusion.build_unet(cfg.unet, 3, cond.context_dim(), cfg.resolution)
        x0_all = data.images
    # the captions as token ids, or a frozen encoder's outputs (cached: the encoders then stay off the device)
    text_all, empty = cond.inputs(captions, params.cache, loop.accelerator), cond.inputs([""])

    # 3. The ControlNet starts as a copy of the base's encoder, its residuals zero-initialised. A broad
    # base (real weights, the prior) stays frozen unless asked; one from scratch must learn too.
    train_base = cfg.base == "finetune" or (cfg.base == "auto" and not (cfg.pretrained or prior is not None))
    unet.requires_grad_(train_base)
    controlnet = controlnet_from_unet(unet, tuple(cfg.controlnet.conditioning_embedding_out_channels))
    modules = {"controlnet": controlnet}
    modules |= {"unet": unet} if train_base else {}
    modules |= {"text_encoder": cond.encoders[0]} if cond.trainable else {}
    trainable = [p for m in modules.values() for p in m.parameters()]
    optimizer = loop.optimizer(trainable)
    frozen = () if train_base else (unet.eval(),)  # a frozen text encoder's outputs are in text_all
    modules = loop.start(modules, optimizer, frozen=frozen, ema="controlnet")
    controlnet = modules["controlnet"]
    unet = modules.get("unet", unet)
    if cond.trainable:
        cond.encoders[0] = modules["text_encoder"]

    # 4. The steps: the base predicts the target from x_t, t, the caption and the ControlNet's residuals
    device, scale = loop.device, cfg.controlnet.conditioning_scale
    num_timesteps = noise_scheduler.config.num_train_timesteps
    batches = loop.batches(
        Mask2ImgBatches(loop, params.seed, x0_all, data.colour_maps, text_all, empty, num_timesteps, corpus, cfg)
    )

    def step(s: int):
        accelerator = loop.accelerator
        for _ in range(tc.grad_accum):
            b, cimg, gate = next(batches)
            b, cimg = b.to(device), cimg.to(device)
            gate = None if gate is None else gate.to(device)
            with accelerator.accumulate(controlnet):
                with accelerator.autocast():
                    ctx, added = cond(b.text)
                    noisy = noise_scheduler.add_noise(b.x0, b.noise, b.t)
                    down, mid = controlnet(
                        noisy,
                        b.t,
                        encoder_hidden_states=ctx,
                        controlnet_cond=cimg,
                        conditioning_scale=scale,
                        added_cond_kwargs=added,
                        return_dict=False,
                    )
                    if gate is not None:
                        down = [d * gate.view(-1, 1, 1, 1) for d in down]
                        mid = mid * gate.view(-1, 1, 1, 1)
                    pred = unet(
                        noisy,
                        b.t,
                        ctx,
                        added_cond_kwargs=added,
                        down_block_additional_residuals=down,
                        mid_block_additional_residual=mid,
                    ).sample
                    loss = diffusion.denoising_loss(noise_scheduler, pred, b, tc.snr_gamma)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, tc.max_grad_norm)
                loop.opt.step()
                loop.opt.zero_grad(set_to_none=True)
        return loss

    loop.run(step, lambda s: training.lr_at(s, tc.lr, tc.warmup_steps))
    if not loop.finish():
        return out / "model"

    # 5. The model directory (the EMA weights where kept), its sample grid and its styles grid
    parts = {"unet": loop.final("unet") if train_base else unet, "controlnet": loop.final("controlnet")}
    if train_base and (cfg.pretrained or prior is not None):  # the broad base beside it, for the style swap
        parts[UNET_PRIOR] = (
            UNet2DConditionModel.from_pretrained(cfg.pretrained, subfolder="unet")
            if cfg.pretrained
            else UNet2DConditionModel.from_pretrained(prior / "unet")
        )
    model_dir = diffusion.save_model(
        out / "model",
        parts,
        cond.unwrapped(loop.accelerator),
        noise_scheduler,
        vae,
        {
            "kind": KIND,
            "resolution": cfg.resolution,
            "palette": data.palette.colors.tolist(),
            "classes": data.meta.names,
            "conditioning_scale": scale,
            "caption_style": cfg.caption_style,
            "base": "finetuned" if train_base else "frozen",
            "prior": None if prior is None else diffusion.read_model_meta(prior, "prior")["fingerprint"],
            "train": loop.summary(),
            "fingerprint": fingerprint,
        },
    )
    n = min(8, len(data))
    pipe = SegGenMask2ImgPipeline.from_model_dir(model_dir, style_swap=None)  # both bases, where there are two
    seeds = [training.seed_for(params.seed, KIND, "grid", i) for i in range(n)]
    maps = training.to_uint8(data.colour_maps[:n])
    gen = pipe(maps, captions[:n], 1, cfg.sample.steps, cfg.sample.guidance_scale, seeded(seeds), output_type="uint8")
    rows = [np.concatenate([c, r, g], 1) for c, r, g in zip(maps, training.to_uint8(data.images[:n]), gen.images)]
    sio.save_grid(rows, out / "samples.png")
    styles = list(params.synthesize.styles) or (list(GRID_STYLES) if prior is not None else [])
    if styles:
        # with a fine-tuned base, a second row per mask: the ControlNet on the broad base (the style swap)
        swaps = [False, True] if pipe.unet_prior is not None else [False]
        seeds = [training.seed_for(params.seed, KIND, "styles", i) for i in range(2)]
        rows = styles_grid(
            pipe, swaps, maps[:2], data.captions[:2], styles[:8], seeds, cfg.sample.steps, cfg.sample.guidance_scale
        )
        sio.save_grid(rows, out / "styles.png")
    elif (out / "styles.png").exists():
        (out / "styles.png").unlink()
    return model_dir


class Mask2ImgBatches(torch.utils.data.Dataset):
    """Item j: micro-step j's (batch, ControlNet conditioning, gate), this process's share, on the
    CPU. With the prior mixed back in (`prior_mix`), corpus samples join the batch with the
    ControlNet gated off for them (gate 0) and a blank conditioning image."""

    def __init__(self, loop, seed, x0_all, colour_maps, text_all, empty, num_timesteps, corpus, cfg):
        tc = loop.train
        self.seed, self.x0_all, self.maps, self.text_all, self.empty = seed, x0_all, colour_maps, text_all, empty
        self.num_timesteps, self.corpus, self.share = num_timesteps, corpus, loop.share()
        self.batch, self.dropout = tc.batch_size, tc.caption_dropout
        self.n_prior = max(1, round(cfg.prior_mix * tc.batch_size))  # corpus samples per global micro-batch

    def __getitem__(self, j: int):
        b = diffusion.draw_micro_batch(
            self.seed,
            KIND,
            j,
            self.x0_all,
            self.text_all,
            self.empty,
            self.batch,
            self.dropout,
            self.num_timesteps,
            "cpu",
            self.share,
        )
        cimg = (self.maps[b.idx] + 1) / 2  # ControlNet conditioning images live in [0, 1]
        if self.corpus is None:
            return b, cimg, None
        pb = diffusion.draw_micro_batch(
            self.seed,
            "mask2img-prior",
            j,
            self.corpus[0],
            self.corpus[1],
            self.empty,
            self.n_prior,
            self.dropout,
            self.num_timesteps,
            "cpu",
            self.share,
        )
        n = len(pb.idx)
        gate = torch.cat([torch.ones(len(b.idx)), torch.zeros(n)])
        b = diffusion.MicroBatch(
            b.idx,
            torch.cat([b.x0, pb.x0]),
            torch.cat([b.noise, pb.noise]),
            torch.cat([b.t, pb.t]),
            [torch.cat([x, y]) for x, y in zip(b.text, pb.text)],
        )
        return b, torch.cat([cimg, torch.zeros((n, *cimg.shape[1:]))]), gate


def controlnet_from_unet(unet, conditioning_channels: tuple[int, ...]):
    """ControlNetModel.from_unet, keeping the UNet's pooled-text heads (from_unet drops
    addition_embed_type_num_heads and would build 64 heads whatever the text width)."""
    import copy

    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
    heads = unet.config.get("addition_embed_type_num_heads", 64)
    if unet.config.get("addition_embed_type") == "text" and controlnet.config.addition_embed_type_num_heads != heads:
        controlnet.add_embedding = copy.deepcopy(unet.add_embedding)
        controlnet.register_to_config(addition_embed_type_num_heads=heads)
    return controlnet


def styles_grid(
    pipe,
    swaps: list[bool],
    maps: np.ndarray,
    captions: list[str],
    styles: list[str],
    row_seeds: list[int],
    steps: int,
    guidance: float,
) -> list:
    """Per mask and base (style_swap False / True), a row: its colour map, then one image per style with
    the same noise (the style phrase is all that differs)."""
    from seggen.generators.pipelines import seeded

    rows = []
    for cmap, caption, seed in zip(maps, captions, row_seeds):
        for swap in swaps:
            imgs = pipe(
                np.stack([cmap] * len(styles)),
                [f"{caption}, {s}" for s in styles],
                1,
                steps,
                guidance,
                seeded([seed] * len(styles)),
                style_swap=swap,
                output_type="uint8",
            ).images
            rows.append(np.concatenate([cmap, *imgs], 1))
    return rows


def check_style_swap(directory: Path, info: dict) -> None:
    """synthesize.style_swap steers a broad base: a fine-tuned one's unet_prior/, or a frozen base."""
    if info.get("base") != "frozen":
        raise DataError(
            f"{directory}: synthesize.style_swap needs a Mask2Img trained over a broad base (mask2img.pretrained "
            "or prior.enabled); this one was trained from scratch"
        )


def model_input(colour_map: np.ndarray, resolution: int) -> np.ndarray:
    """A colour map at the model's resolution (nearest neighbour: colours stay palette colours)."""
    cmap = np.asarray(colour_map, np.uint8)[..., :3]
    if cmap.shape[:2] == (resolution, resolution):
        return np.ascontiguousarray(cmap)
    return np.asarray(Image.fromarray(cmap).resize((resolution, resolution), Image.NEAREST))


def sample_mask2img(
    pipe,
    colour_map: np.ndarray,
    prompt: str,
    n: int = 4,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 2.0,
    batch_size: int = 16,
    init_image: np.ndarray | None = None,
    strength: float = 1.0,
) -> np.ndarray:
    """n images for one colour map (at the model's resolution) and prompt: `seggen sample mask2img`
    and the MLflow model. Each image's noise comes from the seed, the map's content and the prompt
    (not from where the map was read): seed_for(seed, "mask2img", "sample", content key, prompt, i).
    init_image, strength: img2img from that image (SegGenMask2ImgPipeline)."""
    from seggen.generators.pipelines import seeded

    key = hashlib.sha256(np.ascontiguousarray(colour_map).tobytes()).hexdigest()[:16]
    seeds = [training.seed_for(seed, KIND, "sample", key, prompt, i) for i in range(n)]
    out = [
        pipe(
            [colour_map],
            prompt,
            len(chunk),
            steps,
            guidance_scale,
            seeded(chunk),
            init_image=init_image,
            strength=strength,
            output_type="uint8",
        ).images
        for chunk in (seeds[b : b + batch_size] for b in range(0, n, batch_size))
    ]
    return np.concatenate(out) if out else np.zeros((0, *colour_map.shape), np.uint8)


def sample_mask2img_cli(
    model_dir,
    mask: Path,
    is_labels: bool,
    prompt: str,
    n: int,
    out: Path,
    seed: int,
    steps: int,
    guidance_scale: float,
    image: Path | None = None,
    strength: float = 1.0,
) -> int:
    from seggen.data.images import load_label_png, load_rgb
    from seggen.generators.pipelines import SegGenMask2ImgPipeline
    from seggen.io import check_dir, staged_files

    check_dir(out, "--out")
    raw = load_label_png(mask) if is_labels else load_rgb(mask)  # a bad --mask fails before the model loads
    init = None if image is None else load_rgb(image)  # and a bad --image
    pipe = SegGenMask2ImgPipeline.from_model_dir(model_dir)
    if is_labels:
        if raw.max() >= len(pipe.palette):
            raise DataError(f"{mask}: label value {int(raw.max())} has no colour in the model's palette")
        cmap = pipe.palette[raw]
    else:
        cmap = raw
    cmap = model_input(cmap, pipe.resolution)
    imgs = sample_mask2img(pipe, cmap, prompt, n, seed, steps, guidance_scale, init_image=init, strength=strength)
    with staged_files(out, "sample mask2img", "--out") as tmp:  # all files or none
        for i, im in enumerate(imgs):
            write_png(tmp / f"image_{i:04d}.png", im)
        sio.save_grid([np.concatenate([cmap, *imgs], 1)], tmp / "grid.png")
    return n
