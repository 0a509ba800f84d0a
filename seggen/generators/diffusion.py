"""What Text2Mask and Mask2Img share: their training data, micro-batches, UNet and noise scheduler,
latents of a pretrained VAE, and the model directory they save and load (seggen.generators.pipelines samples from it).

Determinism: the batch indices, noise, timesteps and caption-dropout mask of every micro-step are
drawn from generators seeded by (seed, micro-step) (seggen.training), and the initial noise of every
sample by (seed, sample index). A resumed run therefore repeats an uninterrupted one exactly, and
sampled outputs do not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen.codec import Palette
from seggen.config import GeneratorParams, Params, UNetParams
from seggen.data.captions import read_captions
from seggen.data.layout import open_split
from seggen.data.meta import DatasetMeta
from seggen.errors import DataError
from seggen.generators.cache import Rows
from seggen.training import batch_indices, lr_at, torch_gen, write_loss_log

log = logging.getLogger(__name__)
MODEL_META = "seggen_model.json"


@dataclass
class GeneratorData:
    """The training split at the generator's resolution: the pixels memory-mapped from the disk
    cache (seggen.generators.cache), read a batch at a time; captions and the palette in memory."""

    colour_maps: Rows  # rows[idx] -> len(idx) x 3 x R x R in [-1, 1]
    images: Rows
    captions: list[str]
    classes: list[list[str]]
    ids: list[str]
    meta: DatasetMeta
    palette: Palette

    def __len__(self) -> int:
        return len(self.ids)


def load_generator_data(params: Params, resolution: int, instances: bool = False, accelerator=None) -> GeneratorData:
    """The captioned training split; its colour maps and images at `resolution` come from the cache
    (written on first use by the main process: uint8, one pass over the dataset)."""
    from seggen.generators.cache import cached_arrays, dataset_identity, key_of

    root = Path(params.data.root)
    split = params.caption.split
    caps = read_captions(params.caption.out)
    if not caps:
        raise DataError(f"{params.caption.out}: no captions (run `seggen caption` first)")
    ds = open_split(root, split)
    meta = ds.meta
    palette = meta.palette(boundary=instances)
    missing = [s.id for s in ds.samples if s.id not in caps]
    if missing:
        raise DataError(f"{params.caption.out}: no caption for {len(missing)} image(s) of {split}, e.g. {missing[0]}")
    if instances and not ds.has_panoptic:
        raise DataError(
            f"{root}: instance-aware colour maps (text2mask.instances) need a panoptic annotation of {split}"
        )

    def rows(chunk: int = 64):
        maps, imgs = [], []
        for i in range(len(ds)):
            img, lab = ds[i]
            lab_r = np.asarray(Image.fromarray(lab).resize((resolution, resolution), Image.NEAREST))
            if instances:
                ids, _ = ds.load_panoptic(i)
                ids_r = np.asarray(
                    Image.fromarray(ids.astype(np.int32)).resize((resolution, resolution), Image.NEAREST)
                )
                maps.append(palette.encode_instances(lab_r, ids_r))
            else:
                maps.append(palette.encode(lab_r))
            imgs.append(np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BOX)))
            if len(maps) == chunk or i == len(ds) - 1:
                yield {"colour_maps": np.stack(maps), "images": np.stack(imgs)}
                maps, imgs = [], []

    identity = dataset_identity(ds, {"data": params.data.model_dump(mode="json"), "split": split})
    key = key_of("generator-pixels", identity, resolution, instances)
    shape = (resolution, resolution, 3)
    arrays = cached_arrays(
        params.cache, key, len(ds), {"colour_maps": (shape, np.uint8), "images": (shape, np.uint8)}, rows, accelerator
    )
    return GeneratorData(
        colour_maps=arrays["colour_maps"],
        images=arrays["images"],
        captions=[caps[s.id].caption for s in ds.samples],
        classes=[caps[s.id].classes for s in ds.samples],
        ids=[s.id for s in ds.samples],
        meta=meta,
        palette=palette,
    )


@dataclass
class MicroBatch:
    idx: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    text: list[torch.Tensor]  # token ids or frozen encoders' outputs (TextConditioner.inputs), "" where dropped

    def to(self, device) -> MicroBatch:
        return MicroBatch(
            self.idx, self.x0.to(device), self.noise.to(device), self.t.to(device), [x.to(device) for x in self.text]
        )


def draw_micro_batch(
    seed: int,
    kind: str,
    micro_step: int,
    x0_all: torch.Tensor,
    text_all: list,
    empty: list[torch.Tensor],
    batch_size: int,
    caption_dropout: float,
    num_timesteps: int,
    device,
    share: slice = slice(None),
) -> MicroBatch:
    """Everything random about one micro-step's global batch of `batch_size`, from generators keyed on
    (seed, micro-step): the same samples, noise and timesteps on 1 or N processes. This process keeps
    the rows of its `share` (Loop.share)."""
    idx = torch.from_numpy(batch_indices(seed, micro_step, len(x0_all), batch_size))
    gen = torch_gen(seed, kind, "noise", micro_step, 0)  # 0: the whole global batch's stream
    noise = torch.randn((len(idx), *x0_all.shape[1:]), generator=gen)
    t = torch.randint(0, num_timesteps, (len(idx),), generator=gen)
    drop = torch.rand(len(idx), generator=gen) < caption_dropout
    idx, noise, t, drop = idx[share], noise[share], t[share], drop[share]
    text = [caption_rows(a[idx], e, drop).to(device) for a, e in zip(text_all, empty)]
    return MicroBatch(idx, x0_all[idx].to(device), noise.to(device), t.to(device), text)


def caption_rows(rows: torch.Tensor, empty: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """The batch's caption rows (ids or embeddings), the empty caption's where `drop`."""
    return torch.where(drop.view(-1, *[1] * (rows.ndim - 1)), empty.expand_as(rows), rows)


class MicroBatches(torch.utils.data.Dataset):
    """Item j: micro-step j's batch (draw_micro_batch, this process's share), read on the CPU: what
    Loop.batches hands a DataLoader, whose workers may read ahead."""

    def __init__(self, loop, seed: int, kind: str, x0_all, text_all, empty, num_timesteps: int):
        tc = loop.train  # draw_micro_batch's arguments but the micro-step's and the device
        self.args = (seed, kind, x0_all, text_all, empty, tc.batch_size, tc.caption_dropout, num_timesteps)
        self.share = loop.share()

    def __getitem__(self, j: int) -> MicroBatch:
        return draw_micro_batch(*self.args[:2], j, *self.args[2:], "cpu", self.share)


def build_unet(cfg: UNetParams, channels: int, cross_attention_dim: int, sample_size: int):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        mid_block_type="UNetMidBlock2DCrossAttn",
        addition_embed_type="text" if cfg.pooled_text else None,
        # diffusers' default of 64 pooling heads must divide the text width (64 heads for widths of 64k)
        addition_embed_type_num_heads=math.gcd(64, cross_attention_dim),
    )


def checkpoint_prediction_type(pretrained: str) -> str:
    """The prediction_type of a Stable Diffusion (XL) repo's scheduler (epsilon if it names none)."""
    from diffusers import DDPMScheduler

    config = DDPMScheduler.load_config(pretrained, subfolder="scheduler")
    return config.get("prediction_type") or "epsilon"


def resolved_prediction_type(cfg: GeneratorParams, kind: str) -> str:
    """What the UNet will predict: the params' value, checked against a pretrained checkpoint's own."""
    from seggen.errors import ConfigError

    if not cfg.pretrained:
        return cfg.prediction_type or "sample"
    own = checkpoint_prediction_type(cfg.pretrained)
    if cfg.prediction_type and cfg.prediction_type != own:
        raise ConfigError(
            f"{kind}.prediction_type: {cfg.prediction_type}, but {cfg.pretrained} was trained to predict {own} "
            f"(its scheduler's prediction_type); set it to {own} or null to follow the checkpoint"
        )
    return own


def build_noise_scheduler(cfg: GeneratorParams, kind: str):
    from diffusers import DDPMScheduler

    prediction = resolved_prediction_type(cfg, kind)
    if cfg.pretrained:  # the checkpoint's noise schedule and objective
        return DDPMScheduler.from_config(
            DDPMScheduler.load_config(cfg.pretrained, subfolder="scheduler"), prediction_type=prediction
        )
    # cosine schedule: better than linear for small pixel-space images
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction,
        clip_sample=False,
    )


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(kind)


def denoising_loss(scheduler, pred: torch.Tensor, b: MicroBatch, snr_gamma: float | None) -> torch.Tensor:
    """The mean squared error of the prediction against the scheduler's target; with `snr_gamma`, each
    sample's error weighted by Min-SNR-g as diffusers' text-to-image scripts do. A squared error of
    eps or v is the squared x0 error times SNR or SNR + 1 (SNR = a_t / (1 - a_t)), so the weight
    min(SNR, g) in x0 units is min(1, g / SNR) for eps and min(SNR, g) / (SNR + 1) for v: capped, the
    low-noise steps no longer dominate an eps loss, nor the high-noise ones an x0 loss."""
    target = training_target(scheduler, b.x0, b.noise, b.t)
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    a = scheduler.alphas_cumprod.to(b.t.device)[b.t].float()
    snr = a / (1 - a)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":  # min(SNR, g) / SNR, written to stay finite at SNR 0 (a zero-terminal-SNR schedule)
        w = (snr_gamma / snr).clamp(max=1)
    else:
        w = snr.clamp(max=snr_gamma) / (snr + 1 if kind == "v_prediction" else 1)
    err = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.ndim)))
    return (err * w).mean()


def train_text_to_image(loop, seed: int, kind: str, unet, cond, noise_scheduler, x0_all, text_all, empty) -> bool:
    """Steps 3-4 that Text2Mask and the prior share: the UNet (and a from-scratch text encoder)
    train through `loop` (resume, prepare, EMA), then the denoising steps; `text_all` / `empty`:
    the captions' and the empty caption's TextConditioner.inputs. True on the main process, which
    writes the outputs; `loop.final("unet")` and `cond` are then the trained modules."""
    modules = {"unet": unet} | ({"text_encoder": cond.encoders[0]} if cond.trainable else {})
    trainable = [p for m in modules.values() for p in m.parameters()]
    optimizer = loop.optimizer(trainable)
    modules = loop.start(modules, optimizer, ema="unet")  # a frozen encoder's outputs are in text_all
    unet = modules["unet"]
    if cond.trainable:
        cond.encoders[0] = modules["text_encoder"]
    tc, num_timesteps = loop.train, noise_scheduler.config.num_train_timesteps
    batches = loop.batches(MicroBatches(loop, seed, kind, x0_all, text_all, empty, num_timesteps))

    def step(s: int):
        micro = (next(batches) for _ in range(tc.grad_accum))
        return text_to_image_step(loop, unet, cond, noise_scheduler, micro, trainable)

    loop.run(step, lambda s: lr_at(s, tc.lr, tc.warmup_steps))
    return loop.finish()


def text_to_image_step(loop, unet, cond, noise_scheduler, batches, trainable) -> torch.Tensor:
    """One optimizer step of a text-conditioned UNet over `batches` (its micro-batches, gradients
    accumulated): the denoising update Text2Mask and the prior share. Returns the last micro-batch's loss.

    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (add_noise); the UNet predicts the scheduler's target
    (x_0, eps or v) from x_t, t and the caption, and the loss is their mean squared error
    (Min-SNR-weighted with `train.snr_gamma`: denoising_loss)."""
    accelerator, optimizer = loop.accelerator, loop.opt
    for b in batches:
        b = b.to(loop.device)
        with accelerator.accumulate(unet):
            with accelerator.autocast():
                ctx, added = cond(b.text)
                noisy = noise_scheduler.add_noise(b.x0, b.noise, b.t)
                pred = unet(noisy, b.t, ctx, added_cond_kwargs=added).sample
                loss = denoising_loss(noise_scheduler, pred, b, loop.train.snr_gamma)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable, loop.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss


def load_vae(pretrained: str | None):
    """The frozen AutoencoderKL of a pretrained Stable Diffusion / SDXL repo, or None (pixel space)."""
    from diffusers import AutoencoderKL

    if not pretrained:
        return None

    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
    vae.requires_grad_(False)
    return vae.eval()


def save_model(model_dir: Path, parts: dict, cond, noise_scheduler, vae, info: dict) -> Path:
    """The final model directory, swapped in whole: each part with save_pretrained, the text
    conditioner, the scheduler, the VAE for latent models, and seggen_model.json. The run's timing
    (`train` in info) goes beside it, to train_summary.json, so that the same params give a
    byte-identical model directory (its digest names the model in synthesis manifests)."""
    from seggen.generators.pipeline_index import write_pipeline_index
    from seggen.io import atomic_dir, write_json

    info = dict(info)
    train = dict(info.pop("train", None) or {})
    if train:
        losses = train.pop("loss", [])  # the whole run's (restored on resume): its first step follows
        write_loss_log(model_dir.parent / "train_log.json", losses, train["steps"] - len(losses))
        write_json(model_dir.parent / "train_summary.json", train)
    with atomic_dir(model_dir, f"train_{info['kind']}", f"{info['kind']}.out") as tmp:
        for name, module in parts.items():
            module.save_pretrained(tmp / name)
        cond.save(tmp)
        noise_scheduler.save_pretrained(tmp / "scheduler")
        if vae is not None:
            vae.save_pretrained(tmp / "vae")
        write_model_meta(tmp, {**info, "latent": vae is not None})
        if info["kind"] in ("text2mask", "mask2img"):  # also a diffusers pipeline directory
            write_pipeline_index(tmp, info["kind"], parts, cond, noise_scheduler, vae)
    return model_dir


def write_model_meta(directory: Path, info: dict) -> None:
    (directory / MODEL_META).write_text(json.dumps(info, indent=2))


def read_model_meta(directory: str | Path, kind: str) -> dict:
    from seggen.training.checkpoint import tree_problem

    path = Path(directory) / MODEL_META
    if not Path(directory).is_dir():
        raise DataError(
            f"{directory}: {'is a file, not' if Path(directory).exists() else 'not found; expected'} a seggen {kind} "
            "model directory"
        )
    if not path.exists():
        raise DataError(f"{directory}: not a seggen {kind} model directory (no {MODEL_META})")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: truncated or corrupt JSON") from None
    if not isinstance(info, dict) or info.get("kind") != kind:
        raise DataError(
            f"{directory}: is a {info.get('kind') if isinstance(info, dict) else 'unknown'} model, expected {kind}"
        )

    problem = tree_problem(Path(directory))  # a truncated weight file fails here, named, not deep in from_pretrained
    if problem:
        raise DataError(problem)
    return info


def fingerprint_params(params: Params, gen: GeneratorParams, prediction_type: str) -> str:
    """What a checkpoint's trajectory depends on: not the step budget, checkpointing (of weights or of
    activations), threads, processes or sampling settings, so raising `train.steps` resumes and extends
    an earlier run. The prediction type as resolved (null and its resolution are the same training)."""
    g = gen.model_dump(mode="json", exclude={"out", "sample"})
    g["prediction_type"] = prediction_type
    for k in (
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "threads",
        "gradient_checkpointing",
        "num_processes",
        "workers",
    ):
        g["train"].pop(k)
    if g["train"]["optimizer"] == "adamw":  # the default is what a fingerprint without the key means
        g["train"].pop("optimizer")
    if g["train"]["snr_gamma"] is None:  # likewise
        g["train"].pop("snr_gamma")
    blob = json.dumps(
        [
            params.seed,
            params.data.model_dump(mode="json"),
            params.caption.model_dump(mode="json"),
            params.text_encoder.model_dump(mode="json"),
            g,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
