"""GPU-hours per stage of a real-data profile, estimated from FLOPs (not measured: no GPU here).

Forward FLOPs of the real architectures are counted with torch's FlopCounterMode (on the meta device -- no weights --
where the model allows it): SDXL's UNet (its published config; the parameter count is checked against
SDXL's 2.567 B), the ControlNet seggen builds from it (ControlNetModel.from_unet, the profile's
conditioning channels), Mask2Former with a Swin-L backbone and BLIP-2's ViT-g (its language model
counted as 2 FLOPs per parameter and token). A training step costs 3x its forward (forward + backward);
ControlNet training runs the frozen base forward and back-propagates through it to the ControlNet's
residuals (counted as 3x both). Hours assume an H100's dense bf16 peak (989 TFLOP/s) at MFU (model FLOPs
utilisation) of 35% -- what tuned diffusion and segmentation training typically reach; `make gpu-check`
measures the real figure on a GPU. FlopCounterMode counts a multiply-add as 2 FLOPs (papers that quote
detectron2's counter count it as 1) and skips grid_sample, a small share of Mask2Former's deformable
attention.

    python -m benchmarks.estimate_gpu_hours [profiles/real-ade20k.yaml]   -> docs/real-data.md (its estimate section)

The dataset's size and class count follow the profile's data.format (ADE20K or COCO panoptic); the
step counts, solver, multiplicities and batches are the profile's.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import fail
from seggen.config import load_params
from seggen.errors import ConfigError

PEAK_BF16 = 989e12  # H100 SXM dense bf16 FLOP/s
MFU = 0.35
DOC = Path(__file__).resolve().parents[1] / "docs" / "real-data.md"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    in_channels=4,
    layers_per_block=2,
    mid_block_type="UNetMidBlock2DCrossAttn",
    norm_num_groups=32,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
SDXL_PARAMS = 2.567e9


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def diffusion_flops(resolution: int, conditioning_channels: tuple[int, ...]) -> tuple[float, float, float]:
    """Forward FLOPs of one SDXL UNet call, one ControlNet call, at `resolution` px (batch 1); UNet params."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        control = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
    n = sum(p.numel() for p in unet.parameters())
    lat = resolution // 8
    x, t = torch.empty(1, 4, lat, lat, device="meta"), torch.tensor([10], device="meta")
    ctx = torch.empty(1, 77, 2048, device="meta")
    added = {"text_embeds": torch.empty(1, 1280, device="meta"), "time_ids": torch.empty(1, 6, device="meta")}
    cond = torch.empty(1, 3, resolution, resolution, device="meta")
    u = _flops(lambda: unet(x, t, ctx, added_cond_kwargs=added))
    c = _flops(
        lambda: control(
            x, t, encoder_hidden_states=ctx, controlnet_cond=cond, added_cond_kwargs=added, return_dict=False
        )
    )
    return u, c, float(n)


def mask2former_flops(crop: int, num_classes: int, queries: int, decoder_layers: int) -> float:
    """Forward FLOPs of Mask2Former with the Swin-L backbone (window 12, ImageNet-22k 384) at crop x crop."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(
        image_size=384,
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin, num_labels=num_classes, num_queries=queries, decoder_layers=decoder_layers
    )
    model = Mask2FormerForUniversalSegmentation(
        cfg
    ).eval()  # on the CPU: its pixel decoder makes CPU tensors, which meta rejects
    x = torch.zeros(1, 3, crop, crop)
    with torch.no_grad():
        return _flops(lambda: model(pixel_values=x))


def blip2_flops(new_tokens: int) -> float:
    """BLIP-2 (ViT-g at 224 px, OPT-2.7B): the vision forward, plus 2 FLOPs per LM parameter per token."""
    from transformers import Blip2VisionConfig, Blip2VisionModel

    with torch.device("meta"):
        vit = Blip2VisionModel(Blip2VisionConfig())
    v = _flops(lambda: vit(pixel_values=torch.empty(1, 3, 224, 224, device="meta")))
    return v + 2 * 2.7e9 * (32 + new_tokens)  # 32 query tokens from the Q-Former, then generation


# the real datasets a profile's data.format reads: training images, classes, evaluation images
DATASETS = {"ade20k": ("ADE20K", 20210, 150, 2000), "coco": ("COCO panoptic", 118287, 133, 5000)}


def estimate(profile: Path) -> tuple[list[tuple[str, str, float]], dict]:
    p = load_params(profile)
    name, n_train, n_classes, n_eval = DATASETS[p.data.format]
    if p.synthesize.max_sources:
        n_train = min(n_train, p.synthesize.max_sources)  # the sources synthesis draws from
    res = p.text2mask.resolution
    unet, control, n_params = diffusion_flops(res, tuple(p.mask2img.controlnet.conditioning_embedding_out_channels))
    seg = p.segmenter
    m2f = mask2former_flops(seg.train.crop, n_classes, seg.model.num_queries, seg.model.decoder_layers)
    cap = blip2_flops(p.caption.max_new_tokens)
    t2m, m2i, syn = p.text2mask.train, p.mask2img.train, p.synthesize
    # samples per optimizer step: the global batch of a micro-step x the micro-steps accumulated
    b_t2m, b_m2i = (t.batch_size * t.grad_accum for t in (t2m, m2i))
    b_seg = (seg.train.batch_size + seg.synthetic_added) * seg.train.grad_accum  # augment_mode add: + its samples
    cfg_mult = 2  # classifier-free guidance: a conditional and an unconditional pass per step
    img_steps = int(syn.steps * syn.imgsyn_strength)  # img2img ImgSyn runs only the last part of the schedule
    masksyn = n_train * syn.masksyn_per_source
    imgsyn = n_train * syn.imgsyn_per_source
    rows = [
        ("caption (BLIP-2)", f"{n_train} images", n_train * cap),
        (
            "train Text2Mask (SDXL UNet fine-tuned)",
            f"{t2m.steps} steps x {b_t2m}",
            3 * unet * t2m.steps * b_t2m,
        ),
        (
            "train Mask2Img (SDXL ControlNet)",
            f"{m2i.steps} steps x {b_m2i}",
            3 * (unet + control) * m2i.steps * b_m2i,
        ),
        (
            "synthesize MaskSyn",
            f"{masksyn} pairs x {syn.steps} {syn.solver} steps, batches of {syn.batch_size} a GPU",
            masksyn * syn.steps * cfg_mult * (2 * unet + control),
        ),
        (
            "synthesize ImgSyn",
            f"{imgsyn} images x {img_steps} {syn.solver} steps"
            + (f" (strength {syn.imgsyn_strength} of {syn.steps})" if img_steps != syn.steps else "")
            + f", batches of {syn.batch_size} a GPU",
            imgsyn * img_steps * cfg_mult * (unet + control),
        ),
        (
            "train Mask2Former Swin-L (one arm)",
            f"{seg.train.steps} steps x {b_seg}",
            3 * m2f * seg.train.steps * b_seg,
        ),
        (f"evaluate (one arm, {n_eval} images)", f"{n_eval} images", n_eval * m2f * 1.5),  # larger than the crop
    ]
    info = {
        "dataset": f"{name}: {n_train} training images, {n_classes} classes",
        "unet_tflops": unet / 1e12,
        "control_tflops": control / 1e12,
        "m2f_tflops": m2f / 1e12,
        "resolution": res,
        "crop": seg.train.crop,
        "unet_params": n_params,
    }
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", nargs="?", type=Path, default=Path("profiles/real-ade20k.yaml"))
    profile = ap.parse_args().profile
    try:
        rows, info = estimate(profile)
    except ConfigError as e:  # a missing or invalid profile: one line, as the seggen commands say it
        fail(str(e))
    assert abs(info["unet_params"] - SDXL_PARAMS) / SDXL_PARAMS < 0.01, info["unet_params"]
    eff = PEAK_BF16 * MFU
    lines = [
        f"Estimated, not measured, for `{profile}` ({info['dataset']}; FLOPs counted by "
        f"`python -m benchmarks.estimate_gpu_hours {profile}`; "
        f"H100 bf16 peak 989 TFLOP/s at {MFU:.0%} MFU). One forward pass: SDXL UNet {info['unet_tflops']:.2f} TFLOPs "
        "and its "
        f"ControlNet {info['control_tflops']:.2f} TFLOPs at {info['resolution']} px; Mask2Former Swin-L "
        f"{info['m2f_tflops']:.2f} TFLOPs at {info['crop']} px.",
        "",
        "| stage | work | PFLOPs | H100-hours |",
        "|---|---|---:|---:|",
    ]
    total = 0.0
    for name, work, flops in rows:
        hours = flops / eff / 3600
        total += hours
        lines.append(f"| {name} | {work} | {flops / 1e15:,.0f} | {hours:,.1f} |")
    lines.append(f"| **total** (two arms: add one Mask2Former) | | | **{total:,.0f}** |")
    body = "\n".join(lines)
    text = DOC.read_text()
    start, end = f"<!-- estimate:gpu-hours:{profile.stem} -->", f"<!-- /estimate:gpu-hours:{profile.stem} -->"
    if start not in text:
        raise SystemExit(f"{DOC}: no {start} ... {end} section to write")
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    DOC.write_text(text)
    print(body)


if __name__ == "__main__":
    main()
