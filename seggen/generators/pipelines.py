"""The generators' samplers, as diffusers pipelines: every trained Text2Mask / Mask2Img directory is
also a diffusers pipeline directory (model_index.json names its parts), so that

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("models/text2mask/model", trust_remote_code=True)
    out = pipe(prompt=["a street with two cars"], num_images_per_prompt=4)   # out.images (PIL), out.labels

loads and samples it. The pixel-space models (the offline default) have no stock pipeline, so their
model_index.json names these classes through a one-line `seggen_pipeline.py` shim in the directory
(diffusers' custom-pipeline convention, hence `trust_remote_code=True`; importing the class from
`seggen.generators.pipelines` needs no remote code). Latent models trained from SD / SDXL weights name
the stock StableDiffusion(XL)(ControlNet)Pipeline. These classes are seggen's one sampler (loaded with
`from_model_dir` everywhere); per-sample noise comes from a `generator` list, one per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen.generators.sampling import (  # noqa: F401 (seeded and the outputs: imported from here too)
    ImagePipelineOutput,
    SegGenPipeline,
    Text2MaskPipelineOutput,
    seeded,
)


def _as_output(images: np.ndarray, output_type: str):
    """uint8 N x H x W x 3 -> what diffusers' pipelines return for `output_type` (or the uint8 itself)."""
    if output_type == "uint8":
        return images
    if output_type == "pil":
        return [Image.fromarray(im) for im in images]
    return images.astype(np.float32) / 255.0


def _prompts(prompt: str | list[str], n: int) -> list[str]:
    """Prompt-major: each prompt n times in a row, as diffusers repeats num_images_per_prompt."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return [p for p in prompts for _ in range(n)]


def _listed(x) -> list:
    """One image / colour map, a list of them, or a B x H x W x 3 array -> a list, one per sample."""
    return list(x) if isinstance(x, (list, tuple)) or getattr(x, "ndim", 0) == 4 else [x]


def _square(image, r: int) -> np.ndarray:
    """An image (PIL, or an H x W [x 3|4] uint8 array: grey spread to RGB, alpha dropped) resized to r x r,
    bicubic: squared as the colour maps are."""
    from seggen.data.images import resize_array

    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(
            f"init image of shape {a.shape} and dtype {a.dtype}: expected H x W x 3 uint8 (or a PIL image)"
        )
    a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
    return resize_array(np.ascontiguousarray(a), (r, r), Image.BICUBIC)


class SegGenPriorPipeline(SegGenPipeline):
    """The offline text-to-image prior (the stand-in for SD / SDXL): prompts -> images."""

    kind = "prior"

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        solver: str = "dpmsolver++",
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        prompts = _prompts(prompt, num_images_per_prompt)
        rgb = self.generate(
            prompts, generator, num_inference_steps, guidance_scale, solver, output_type, self._unet_predict
        )
        images = _as_output(rgb, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class SegGenText2MaskPipeline(SegGenPriorPipeline):
    """Text2Mask: prompts -> colour-map masks (the prior's loop: its images are colour maps) and labels."""

    kind = "text2mask"

    @property
    def palette(self):
        """The training palette (seggen.codec.Palette): colour i is class i, colour 0 ignore."""
        if "_palette" not in self.__dict__:
            from seggen.codec import Palette

            info = self.info
            self.__dict__["_palette"] = Palette(
                colors=np.asarray(info["palette"], np.uint8),
                names=("ignore", *info["classes"]),
                things=frozenset(info["things"]),
                boundary=info["instances"],
            )
        return self.__dict__["_palette"]

    def decode_labels(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A colour map -> (labels by nearest palette colour, instance ids or None). Instance-aware
        models draw boundaries: their pixels take the label of the nearest non-boundary pixel."""
        if self.palette.boundary:
            return self.palette.decode_instances(rgb)
        return self.palette.decode(rgb), None

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        solver: str = "dpmsolver++",
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Masks in prompt-major order. `generator`: one per mask for per-sample seeds (`seggen sample
        text2mask` seeds mask k of prompt p with seggen.training.seed_for(seed, "text2mask", "sample", p, k))."""
        self.check_inputs(_prompts(prompt, num_images_per_prompt), generator, solver, output_type)
        rgb = (
            super()
            .__call__(prompt, num_images_per_prompt, num_inference_steps, guidance_scale, generator, solver, "uint8")
            .images
        )
        decoded = [self.decode_labels(x) for x in rgb]
        labels = np.stack([d[0] for d in decoded])
        instances = np.stack([d[1] for d in decoded]) if self.palette.boundary else None
        images = _as_output(rgb, output_type)
        if not return_dict:
            return images, labels
        return Text2MaskPipelineOutput(images=images, labels=labels, instances=instances)


class SegGenMask2ImgPipeline(SegGenPipeline):
    """Mask2Img: (colour map, prompt) -> images; a ControlNet over the base UNet."""

    kind = "mask2img"
    _denoisers = ("unet", "unet_prior", "controlnet")
    _optional_components = ["unet", "vae", "unet_prior", "tokenizer_2", "text_encoder_2"]

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
        super().__init__(unet, text_encoder, tokenizer, scheduler, vae, text_encoder_2, tokenizer_2)
        self.register_modules(controlnet=controlnet, unet_prior=unet_prior)

    @classmethod
    def _load_denoisers(cls, directory: Path, info: dict, load, style_swap: bool | None = False) -> dict:
        """style_swap: the broad base UNet only (unet_prior/, DGInStyle's style swap), False: the
        fine-tuned one only, None: both (the training grid draws with each)."""
        from diffusers import ControlNetModel, UNet2DConditionModel

        from seggen.generators.mask2img import UNET_PRIOR, check_style_swap

        has_prior = (directory / UNET_PRIOR).is_dir()
        if style_swap and not has_prior:
            check_style_swap(directory, info)
        swap_only = style_swap and has_prior
        return {
            "unet": None if swap_only else load("unet", UNet2DConditionModel),
            "unet_prior": load(UNET_PRIOR, UNet2DConditionModel) if has_prior and style_swap is not False else None,
            "controlnet": load("controlnet", ControlNetModel),
        }

    @property
    def palette(self) -> np.ndarray:
        """The training palette: (C + 1) x 3 uint8, colour i for class i."""
        return np.asarray(self.info["palette"], np.uint8)

    def check_palette(self, palette: np.ndarray, source: str) -> None:
        from seggen.errors import DataError

        if palette.shape != self.palette.shape or (palette != self.palette).any():
            raise DataError(
                f"{source}: dataset palette does not match the palette {self.config._name_or_path} was trained on"
            )

    def denoiser_config(self):
        return (self.unet if self.unet is not None else self.unet_prior).config

    def base(self, style_swap: bool):
        """The UNet the ControlNet steers: the fine-tuned one, or with style_swap the broad one."""
        from seggen.generators.mask2img import check_style_swap

        if style_swap and self.unet_prior is not None:
            return self.unet_prior
        if style_swap:
            check_style_swap(Path(self.config._name_or_path), self.info)
        if self.unet is None:
            raise ValueError("this pipeline was loaded with the style-swap base only: call it with style_swap=True")
        return self.unet

    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        solver: str = "dpmsolver++",
        style_swap: bool = False,
        init_image=None,
        strength: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """image: a colour map (PIL image or H x W x 3 uint8 array), a list of them or a B x H x W x 3
        array, one per prompt (a single prompt is used for every map); maps are resized to the model's
        resolution by nearest neighbour (colours stay palette colours). Images in map-major order.
        style_swap: the ControlNet on the broad base (a Mask2Img fine-tuned over a prior).
        init_image, strength: img2img (diffusers' StableDiffusionControlNetImg2ImgPipeline): one image per
        map, resized to the resolution (bicubic), noised to the schedule's point at `strength` and denoised
        from there under the map's control; strength 1 starts from noise at the schedule's first step."""
        from seggen.generators.mask2img import model_input

        maps = _listed(image)
        prompts = [prompt] * len(maps) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(maps):
            raise ValueError(f"{len(maps)} colour maps but {len(prompts)} prompts")
        n = num_images_per_prompt
        r = self.resolution
        maps = np.stack([model_input(np.asarray(m), r) for m in maps for _ in range(n)])
        unet = self.base(style_swap)
        scale = self.info.get("conditioning_scale", 1.0)
        control = torch.from_numpy(maps).permute(0, 3, 1, 2).float().div(255).to(self._execution_device)
        init = None
        if init_image is not None:
            inits = _listed(init_image)
            if len(inits) * n != len(maps):
                raise ValueError(f"{len(inits)} init images for {len(maps) // n} colour maps: give one per map")
            init = np.stack([_square(im, r) for im in inits for _ in range(n)])

        def predict(x, t, context, added, doubled):
            down, mid = self.controlnet(
                x,
                t,
                encoder_hidden_states=context,
                controlnet_cond=torch.cat([control, control]) if doubled else control,
                conditioning_scale=scale,
                added_cond_kwargs=added,
                return_dict=False,
            )
            return unet(
                x,
                t,
                context,
                added_cond_kwargs=added,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample

        rgb = self.generate(
            _prompts(prompts, n),
            generator,
            num_inference_steps,
            guidance_scale,
            solver,
            output_type,
            predict,
            init,
            strength,
        )
        images = _as_output(rgb, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
