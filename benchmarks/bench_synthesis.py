"""Synthesis throughput: our batched MaskSyn / ImgSyn against a per-image loop of diffusers' stock
pipeline calls on the same models, steps and guidance.

The stock loop is what a user would write with diffusers: one `StableDiffusionPipeline` call per
caption for Text2Mask, then one `StableDiffusionControlNetPipeline` call per mask for Mask2Img,
built from the components of our model directories. Our models are pixel-space (no VAE), so the
pipelines are given `vae=None`, a VAE scale factor of 1 and `output_type="latent"` (the latent *is*
the image); everything else is the stock `__call__`.

Ours: the real `seggen synthesize` code path (planning, batched sampling, decoding, filtering off,
atomic writes of images, labels and panoptic PNGs), images/s over generation (model loading
excluded, as it is for the stock loop).

Run after the generator stages (`dvc repro train_text2mask train_mask2img`):
    python -m benchmarks.bench_synthesis            (writes the `synthesis` section of docs/benchmarks.md)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import measured_row, update_section
from seggen.config import load_params

N_STOCK = 16  # images per stock measurement (per-image calls; ~1 s each on 2 cores)
N_OURS = 96  # samples per measurement of ours (6 batches of 16)


def _stock_parts(model_dir: Path, controlnet: bool):
    import torch
    from diffusers import (
        ControlNetModel,
        DPMSolverMultistepScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.image_processor import VaeImageProcessor
    from transformers import AutoTokenizer, CLIPTextModel

    kw = dict(
        vae=None,
        text_encoder=CLIPTextModel.from_pretrained(model_dir / "text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(model_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(model_dir / "unet"),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(model_dir / "scheduler", algorithm_type="dpmsolver++"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if controlnet:
        pipe = StableDiffusionControlNetPipeline(
            controlnet=ControlNetModel.from_pretrained(model_dir / "controlnet"), **kw
        )
        pipe.control_image_processor = VaeImageProcessor(vae_scale_factor=1, do_convert_rgb=True, do_normalize=False)
    else:
        pipe = StableDiffusionPipeline(**kw)
    pipe.vae_scale_factor = 1  # pixel space: the UNet's sample is the image
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def stock_loop(p, strategy: str, prompts: list[str], masks: list[np.ndarray], dtype) -> float:
    """images/s of one stock pipeline call per image (Text2Mask, decode, Mask2Img for masksyn)."""
    import torch
    from PIL import Image

    from seggen.codec import Palette

    cfg = p.synthesize
    t2m_dir, m2i_dir = Path(cfg.text2mask), Path(cfg.mask2img)
    cp = _stock_parts(m2i_dir, True).to(dtype)
    info = json.loads((m2i_dir / "seggen_model.json").read_text())
    r = int(info["resolution"])
    colors = np.asarray(info["palette"], np.uint8)
    if strategy == "masksyn":
        tp = _stock_parts(t2m_dir, False).to(dtype)
        t2m_info = json.loads((t2m_dir / "seggen_model.json").read_text())
        palette = Palette(colors=np.asarray(t2m_info["palette"], np.uint8), names=("ignore", *t2m_info["classes"]))
        r_t = int(t2m_info["resolution"])

    def one(i: int) -> np.ndarray:
        g = torch.Generator().manual_seed(i)
        if strategy == "masksyn":
            x = tp(
                prompts[i],
                height=r_t,
                width=r_t,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.text2mask_guidance,
                output_type="latent",
                generator=g,
            ).images
            rgb = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            lab = palette.decode(rgb)
        else:
            lab = masks[i]
        cmap = Image.fromarray(colors[np.asarray(Image.fromarray(lab.astype(np.uint8)).resize((r, r), Image.NEAREST))])
        return cp(
            prompts[i],
            image=cmap,
            height=r,
            width=r,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.mask2img_guidance,
            output_type="latent",
            generator=g,
        ).images

    one(0)  # warm-up
    t = time.perf_counter()
    for i in range(N_STOCK):
        one(i)
    return N_STOCK / (time.perf_counter() - t)


def ours(p, strategy: str, precision: str, workers: int = 1, compile: bool = False, n: int = N_OURS):
    """-> (images/s over generation, images/s over the whole call incl. starting workers and loading models,
    seconds of generation): `stages.synthesize`, what `seggen synthesize` and the pipeline's synthesize
    stages run (tracking off)."""
    import os

    from seggen.pipeline import stages

    with tempfile.TemporaryDirectory() as tmp:
        q = p.model_copy(
            update={
                "synthesize": p.synthesize.model_copy(
                    update={
                        "out": Path(tmp),
                        "max_sources": n,
                        "masksyn_per_source": 1,
                        "imgsyn_per_source": 1,
                        "precision": precision,
                        "workers": workers,
                        "threads": 0,
                        "compile": compile,
                        "filter": p.synthesize.filter.model_copy(update={"sample": False, "pixel": False}),
                    }
                )
            }
        )
        os.environ["SEGGEN_TRACKING"] = "off"
        t = time.perf_counter()
        r = stages.synthesize(q, strategy)
        return r["images_per_s"], n / (time.perf_counter() - t), n / r["images_per_s"]


def ours_compiled(p, strategy: str) -> float:
    """images/s of the default set-up with `compile: true` once compiled: the marginal rate between a run of
    N_OURS and one of 3 x N_OURS samples, so that each worker's compilation of its first batch cancels out.
    A first run fills torch's compilation caches, which the two measured runs then both read."""
    ours(p, strategy, "auto", workers=2, compile=True, n=32)
    t1 = ours(p, strategy, "auto", workers=2, compile=True)[2]
    t3 = ours(p, strategy, "auto", workers=2, compile=True, n=3 * N_OURS)[2]
    return 2 * N_OURS / (t3 - t1)


def main() -> None:
    import torch

    from seggen.data.ade20k import ADE20KDataset
    from seggen.data.captions import read_captions
    from seggen.training import autocast_dtype

    p = load_params()
    cfg = p.synthesize
    for d in (cfg.text2mask, cfg.mask2img):
        if not (Path(d) / "seggen_model.json").exists():
            sys.exit(f"{d}: no trained model; run `dvc repro train_text2mask train_mask2img` first")
    ds = ADE20KDataset(p.data.root, cfg.split)
    caps = read_captions(p.caption.out)
    prompts = [caps[s.id].caption for s in ds.samples[: N_STOCK + 1]]
    masks = [ds.load_label(i) for i in range(N_STOCK + 1)]
    auto = autocast_dtype("auto", torch.device("cpu"))
    low = "bf16" if auto == torch.bfloat16 else None
    rows = {}
    for strategy in ("masksyn", "imgsyn"):
        r = {
            "stock_fp32": stock_loop(p, strategy, prompts, masks, torch.float32),
            "ours_fp32": ours(p, strategy, "fp32")[0],
        }
        if low:
            r["stock_bf16"] = stock_loop(p, strategy, prompts, masks, torch.bfloat16)
            r["ours_bf16"] = ours(p, strategy, "bf16")[0]
        r["ours_default"], r["ours_default_wall"], _ = ours(p, strategy, "auto", workers=2)
        r["ours_compiled"] = ours_compiled(p, strategy)
        rows[strategy] = r
        print(strategy, json.dumps(r), flush=True)

    def fmt(v):
        return f"{v:.2f}" if v else "n/a"

    lines = []
    for strategy, r in rows.items():
        same = f"{r['ours_fp32'] / r['stock_fp32']:.1f}x" + (
            f" / {r['ours_bf16'] / r['stock_bf16']:.1f}x" if low else ""
        )
        lines.append(
            f"| {strategy} | {fmt(r['stock_fp32'])} | {fmt(r.get('stock_bf16'))} | {fmt(r['ours_fp32'])} | "
            f"{fmt(r.get('ours_bf16'))} "
            f"| {fmt(r['ours_default'])} ({fmt(r['ours_default_wall'])}) | "
            f"**{r['ours_default'] / r['stock_fp32']:.1f}x** "
            f"({r['ours_default_wall'] / r['stock_fp32']:.1f}x) | {same} | "
            f"{fmt(r['ours_compiled'])} (**{r['ours_compiled'] / r['stock_fp32']:.1f}x**) |"
        )

    def verdict(key):
        return "; ".join(
            f"{k} {'met' if r[key] / r['stock_fp32'] >= 3 else 'NOT met'} ({r[key] / r['stock_fp32']:.1f}x)"
            for k, r in rows.items()
        )

    m, i = rows["masksyn"], rows["imgsyn"]
    t2m_ours, t2m_stock = 1 / m["ours_default"] - 1 / i["ours_default"], 1 / m["stock_fp32"] - 1 / i["stock_fp32"]
    halves = (
        f"Text2Mask {t2m_ours:.3f} s against {t2m_stock:.3f} s ({t2m_stock / t2m_ours:.1f}x), "
        f"Mask2Img {1 / i['ours_default']:.3f} s against {1 / i['stock_fp32']:.3f} s "
        f"({i['ours_default'] / i['stock_fp32']:.1f}x)"
    )
    t2m_px, m2i_px = (
        json.loads((Path(d) / "seggen_model.json").read_text())["resolution"] for d in (cfg.text2mask, cfg.mask2img)
    )
    header = (
        "| "
        + " | ".join(
            [
                "strategy",
                "stock loop fp32",
                "stock loop bf16",
                "ours fp32, 1 process",
                "ours bf16, 1 process",
                "ours default: `precision: auto`, `workers: 2`",
                "default / stock fp32 (target >= 3x)",
                "same set-up, 1 process: fp32 / bf16",
                "default + `compile: true`, once compiled (/ stock fp32)",
            ]
        )
        + " |"
    )
    bf16 = "yes" if low else "no"
    torch_note = f"; torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {bf16}"
    measured = measured_row("make bench-synthesis", 9, torch_note)
    body = f"""## Synthesis throughput

Default generators of params.yaml (Text2Mask at {t2m_px} px, Mask2Img at {m2i_px} px),
DPM-Solver++ {cfg.steps} steps, guidance {cfg.text2mask_guidance} / {cfg.mask2img_guidance}. Stock: one diffusers
pipeline call per image ({N_STOCK} images after a warm-up call, {torch.get_num_threads()} threads); ours: `seggen
synthesize` at batch
{cfg.batch_size} over {N_OURS} samples (decoding and writing images, labels and panoptic PNGs included), images/s over
generation (model loading excluded, as for the stock loop); in brackets, over the whole call including starting the
worker processes and loading the models. Higher is better.

{header}
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(lines)}
{measured}

Target (>= 3x the stock loop at batch 16, generation rate): default set-up: {verdict("ours_default")};
with `synthesize.compile: true`: {verdict("ours_compiled")}. The compiled rate is the marginal one between
runs of {N_OURS} and {3 * N_OURS} samples after a run that fills torch's compilation caches: each worker
first compiles the UNet and the ControlNet (a minute and more on this CPU with cold caches, once per
process), which a run of a real dataset's size amortises and a {N_OURS}-sample run does not.

Where the speed-up comes from, measured separately: (1) batching 16 samples amortises the per-call work
of the stock pipeline and runs larger, more efficient kernels (last column: same precision, one process);
(2) channels-last memory format for the UNet and ControlNet convolutions; (3) bf16 autocast, the default
`precision: auto` on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA; (4) `workers: 2` -- on two cores,
two single-threaded processes each generating a share of the batches use the cores better than one
two-threaded process. On a 2-core CPU the networks themselves dominate, so batching alone cannot give
large factors here; on a GPU, where batch 1 leaves the device idle, it does. Outputs are byte-identical for
any `workers`/`threads` on a given machine (tested), and at either precision reproducible on that machine.

MaskSyn's two halves, seconds per image by difference of the rows (MaskSyn less ImgSyn is Text2Mask and its
decoding; default set-up against the stock loop fp32): {halves}.
"""
    update_section("synthesis", body)


if __name__ == "__main__":
    main()
