"""model_index.json beside a saved generator: what makes its directory a diffusers pipeline directory.
Pixel-space models name seggen's pipelines (through a one-line shim, diffusers' custom-pipeline
convention); latent models trained from Stable Diffusion / SDXL weights name the stock pipelines."""

from __future__ import annotations

import json
from pathlib import Path

SHIM = "seggen_pipeline"  # seggen_pipeline.py in the model directory
INDEX = "model_index.json"


def shim_text(cls_name: str) -> str:
    return (
        '"""diffusers custom-pipeline shim: the class lives in the seggen package."""\n\n'
        f"from seggen.generators.pipelines import {cls_name}  # noqa: F401\n"
    )


def _entry(module) -> list:
    """model_index.json's [library, class] of a loaded module."""
    if module is None:
        return [None, None]
    lib = type(module).__module__.split(".")[0]
    return [lib, type(module).__name__]


def write_pipeline_index(directory: Path, kind: str, parts: dict, cond, scheduler, vae) -> None:
    """model_index.json (and the shim for seggen's pipelines) beside the saved parts. Pixel space: the
    seggen pipeline; latent SD: StableDiffusion(ControlNet)Pipeline; latent SDXL: the XL ones."""
    import diffusers

    comps = {name: _entry(m) for name, m in parts.items()}
    names = ("", "_2")
    for tok, enc, sfx in zip(cond.tokenizers, cond.encoders, names):
        comps[f"tokenizer{sfx}"] = _entry(tok)
        comps[f"text_encoder{sfx}"] = _entry(enc)
    comps["scheduler"] = _entry(scheduler)
    control = kind == "mask2img"
    if vae is None:
        cls = "SegGenMask2ImgPipeline" if control else "SegGenText2MaskPipeline"
        index = {"_class_name": [SHIM, cls], **comps, "vae": [None, None]}
        (directory / f"{SHIM}.py").write_text(shim_text(cls))
    else:
        comps.pop("unet_prior", None)  # the stock pipelines have one UNet
        comps["vae"] = _entry(vae)
        xl = cond.sdxl
        cls = f"StableDiffusion{'XL' if xl else ''}{'ControlNet' if control else ''}Pipeline"
        extra = (
            {"force_zeros_for_empty_prompt": True, "image_encoder": [None, None], "feature_extractor": [None, None]}
            if xl
            else {
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "requires_safety_checker": False,
            }
        )
        index = {"_class_name": cls, **comps, **extra}
    index = {
        "_class_name": index.pop("_class_name"),
        "_diffusers_version": diffusers.__version__,
        **dict(sorted(index.items())),
    }
    (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
