"""The generators as diffusers pipelines: every trained Text2Mask / Mask2Img directory is also a
diffusers pipeline directory (model_index.json names its parts), so that

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("models/text2mask/model", trust_remote_code=True)
    out = pipe(prompt=["a street with two cars"], num_images_per_prompt=4)   # out.images (PIL), out.labels

loads and samples it. The pixel-space models (the offline default) have no stock pipeline, so their
model_index.json names these classes through a one-line `seggen_pipeline.py` shim in the directory
(diffusers' custom-pipeline convention, hence `trust_remote_code=True`; importing the class from
`seggen.generators.pipelines` and calling its `from_pretrained` needs no remote code). Latent models
trained from Stable Diffusion / SDXL weights name the stock StableDiffusion(XL)(ControlNet)Pipeline.

The seggen pipelines sample through the same functions as `seggen sample`, so they give the same
images for the same seed (tests/test_library_dirs.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

SHIM = "seggen_pipeline"  # seggen_pipeline.py in the model directory
INDEX = "model_index.json"


@dataclass
class Text2MaskPipelineOutput(BaseOutput):
    """images: the N colour maps (output_type "pil": PIL images, as diffusers' pipelines return; "np":
    N x R x R x 3 float32 in [0, 1]); labels: N x R x R class indices (0 = ignore, 1..C)."""

    images: list[Image.Image] | np.ndarray
    labels: np.ndarray


@dataclass
class Mask2ImgPipelineOutput(BaseOutput):
    """images: per colour map, num_images_per_prompt images in a row (output_type "pil": PIL images;
    "np": N x R x R x 3 float32 in [0, 1])."""

    images: list[Image.Image] | np.ndarray


def _as_output(images: np.ndarray, output_type: str):
    """uint8 N x H x W x 3 -> what diffusers' pipelines return for `output_type`."""
    if output_type == "pil":
        return [Image.fromarray(im) for im in images]
    if output_type == "np":
        return images.astype(np.float32) / 255.0
    raise ValueError(f"output_type {output_type!r}: expected 'pil' or 'np'")


def _text(tokenizer, text_encoder, tokenizer_2=None, text_encoder_2=None):
    from seggen.generators.text import TextConditioner

    if text_encoder_2 is not None:
        return TextConditioner([tokenizer, tokenizer_2], [text_encoder, text_encoder_2], False, True)
    return TextConditioner([tokenizer], [text_encoder], False)


def shim_text(cls_name: str) -> str:
    return (
        '"""diffusers custom-pipeline shim: the class lives in the seggen package."""\n\n'
        f"from seggen.generators.pipelines import {cls_name}  # noqa: F401\n"
    )


class _SegGenPipeline(DiffusionPipeline):
    """Shared: the seggen sampler over this pipeline's components (built once, on the pipeline's device)."""

    _sampler_cls = None
    _sampler_obj = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a seggen generator directory without `trust_remote_code`: its shim is checked to be
        exactly the one-line import of this class (diffusers would otherwise insist on running it)."""
        path = Path(pretrained_model_name_or_path)
        shim = path / f"{SHIM}.py"
        if path.is_dir() and shim.exists() and not kwargs.get("trust_remote_code"):
            if shim.read_text() != shim_text(cls.__name__):
                raise ValueError(
                    f"{shim}: not seggen's shim for {cls.__name__}; inspect it and pass trust_remote_code=True"
                )
            kwargs["trust_remote_code"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _directory(self) -> Path:
        path = getattr(self.config, "_name_or_path", None)
        if not path or not (Path(path) / "seggen_model.json").exists():
            raise ValueError("a seggen pipeline samples from its model directory: load it with from_pretrained(dir)")
        return Path(path)

    def _parts(self) -> dict:
        parts = {"unet": self.unet, "vae": getattr(self, "vae", None)}
        parts["text"] = _text(
            self.tokenizer, self.text_encoder, getattr(self, "tokenizer_2", None), getattr(self, "text_encoder_2", None)
        )
        return parts

    def _sampler(self, **kw):
        key = (str(self.device), tuple(sorted(kw.items())))
        if self._sampler_obj is None or self._sampler_obj[0] != key:
            sampler = self._sampler_cls(self._directory(), device=str(self.device), parts=self._parts(), **kw)
            self._sampler_obj = (key, sampler)
        return self._sampler_obj[1]


class SegGenText2MaskPipeline(_SegGenPipeline):
    """Text2Mask: prompts -> colour-map masks and their decoded label maps."""

    _optional_components = ["vae", "tokenizer_2", "text_encoder_2"]

    def __init__(
        self, unet, text_encoder, tokenizer, scheduler, vae=None, text_encoder_2=None, tokenizer_2=None
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            vae=vae,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )

    @property
    def _sampler_cls(self):
        from seggen.generators.text2mask import Text2MaskSampler

        return Text2MaskSampler

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        seed: int = 0,
        batch_size: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Masks in prompt-major order; the same as `seggen sample text2mask` with this seed (params `seed`)."""
        from seggen.generators.text2mask import sample_text2mask

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        res = sample_text2mask(
            self._sampler(),
            prompts,
            num_images_per_prompt,
            seed,
            num_inference_steps,
            guidance_scale,
            batch_size,
            progress=False,
        )
        images = _as_output(res["rgb"], output_type)
        if not return_dict:
            return images, res["labels"]
        return Text2MaskPipelineOutput(images=images, labels=res["labels"])


class SegGenMask2ImgPipeline(_SegGenPipeline):
    """Mask2Img: (colour map, prompt) -> images; a ControlNet over the base UNet."""

    _optional_components = ["vae", "unet_prior", "tokenizer_2", "text_encoder_2"]

    def __init__(
        self,
        unet,
        controlnet,
        text_encoder,
        tokenizer,
        scheduler,
        vae=None,
        unet_prior=None,
        text_encoder_2=None,
        tokenizer_2=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            controlnet=controlnet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            vae=vae,
            unet_prior=unet_prior,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )

    @property
    def _sampler_cls(self):
        from seggen.generators.mask2img import Mask2ImgSampler

        return Mask2ImgSampler

    def _parts(self) -> dict:
        from seggen.generators.mask2img import UNET_PRIOR

        return {**super()._parts(), "controlnet": self.controlnet, UNET_PRIOR: getattr(self, "unet_prior", None)}

    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        seed: int = 0,
        style_swap: bool = False,
        batch_size: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """image: a colour map (PIL image or H x W x 3 uint8 array) or a list of them, one per prompt
        (a single prompt is used for every map). The same images as `seggen sample mask2img` with this
        seed. style_swap: the ControlNet on the broad base (a Mask2Img fine-tuned over a prior)."""
        from seggen.generators.mask2img import model_input, sample_mask2img

        maps = list(image) if isinstance(image, (list, tuple)) else [image]
        if isinstance(image, np.ndarray) and image.ndim == 4:
            maps = list(image)
        prompts = [prompt] * len(maps) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(maps):
            raise ValueError(f"{len(maps)} colour maps but {len(prompts)} prompts")
        sampler = self._sampler(style_swap=style_swap)
        out = [
            sample_mask2img(
                sampler,
                model_input(np.asarray(m), sampler.resolution),
                p,
                num_images_per_prompt,
                seed,
                num_inference_steps,
                guidance_scale,
                batch_size,
            )
            for m, p in zip(maps, prompts)
        ]
        images = _as_output(np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8), output_type)
        return Mask2ImgPipelineOutput(images=images) if return_dict else (images,)


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
