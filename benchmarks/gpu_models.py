"""The models of the GPU check (benchmarks/gpu_check.py): the published architecture configs of SD-1.5,
SDXL, their VAE and text encoders and Swin-T, tiny stand-ins of the same structure, their Hugging Face
directories with random weights, the data and the params every part runs with."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "real-ade20k.yaml"

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
    # one micro-step per optimizer step: the step rates and peaks are of `batch` samples (the profiles accumulate 4)
    train = {"steps": steps, "batch_size": batch, "grad_accum": 1, "checkpoint_every": never, "warmup_steps": 1}
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
