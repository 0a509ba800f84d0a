"""The denoising loop the generators' pipelines share (seggen.generators.pipelines): classifier-free
guidance over a multistep solver built from the training noise schedule, in pixel space or in a VAE's
latent space, from noise or (img2img) from given images; the outputs and per-sample generators.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from seggen.generators.pipeline_index import SHIM, shim_text

OUTPUT_TYPES = ("pil", "np", "uint8")
SOLVERS = ("dpmsolver++", "unipc")


@dataclass
class Text2MaskPipelineOutput(BaseOutput):
    """images: the N colour maps (output_type "pil": PIL images, as diffusers' pipelines return; "np":
    N x R x R x 3 float32 in [0, 1]; "uint8": N x R x R x 3 uint8); labels: N x R x R class indices (0 =
    ignore, 1..C); instances: N x R x R instance ids of an instance-aware model (0: stuff), else None."""

    images: list[Image.Image] | np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None = None


@dataclass
class ImagePipelineOutput(BaseOutput):
    """images: per prompt (per colour map for Mask2Img), num_images_per_prompt images in a row, as
    output_type asks ("pil", "np": float32 in [0, 1], "uint8")."""

    images: list[Image.Image] | np.ndarray


def seeded(seeds) -> list[torch.Generator]:
    """One CPU generator per sample: the same noise on any device and in any batch."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class SegGenPipeline(DiffusionPipeline):
    """The denoising loop the generators share: classifier-free guidance over a multistep solver
    (DPM-Solver++ 2M or UniPC) built from the training noise schedule, in pixel space or in a VAE's
    latent space. `kind` is the seggen_model.json kind the directory must have."""

    kind = ""
    _denoisers = ("unet",)  # the networks run every step: channels-last, half precision on CUDA, compiled if asked
    _optional_components = ["vae", "tokenizer_2", "text_encoder_2"]
    _amp: torch.dtype | None = None  # the networks' autocast dtype (from_model_dir's precision); None: fp32

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, text_encoder_2=None, tokenizer_2=None):
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

    # -- loading -------------------------------------------------------------------------------

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
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        for name in pipe._denoisers:  # channels-last, as from_model_dir loads them: the same numbers
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(memory_format=torch.channels_last)
        return pipe

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, device: str | None = None, precision: str = "fp32", compile: bool = False, **kw
    ):
        """seggen's loading of a model directory (any kind, pixel or latent). The denoisers go to
        `device` channels-last (oneDNN's and the tensor cores' convolutions are faster in NHWC) and,
        on CUDA, in the inference dtype (weights loaded in it: half the memory and transfer); the text
        encoders and the VAE stay fp32 (SD's VAE overflows in fp16). `precision` (fp32 | bf16 | fp16 |
        auto) is the networks' autocast dtype; the solver's arithmetic stays fp32. `compile`: the
        denoisers under torch.compile. kw: the subclass's own (Mask2Img: style_swap)."""
        import diffusers

        from seggen.generators.diffusion import read_model_meta
        from seggen.generators.text import TextConditioner
        from seggen.training import autocast_dtype

        directory = Path(model_dir)
        info = read_model_meta(directory, cls.kind)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        amp = autocast_dtype(precision, dev)
        half = dev.type == "cuda" and amp is not None

        def denoiser(sub: str, model_cls):
            module = model_cls.from_pretrained(directory / sub, **({"torch_dtype": amp} if half else {}))
            return module.to(dev, **({"dtype": amp} if half else {}), memory_format=torch.channels_last).eval()

        text = TextConditioner.load(directory, int(info["resolution"])).to(dev)
        sched_cls = getattr(diffusers, diffusers.DDPMScheduler.load_config(directory / "scheduler")["_class_name"])
        vae = None
        if info["latent"]:
            vae = diffusers.AutoencoderKL.from_pretrained(directory / "vae").to(dev).eval()
        second = {"tokenizer_2": text.tokenizers[1], "text_encoder_2": text.encoders[1]} if text.sdxl else {}
        pipe = cls(
            **cls._load_denoisers(directory, info, denoiser, **kw),
            text_encoder=text.encoders[0],
            tokenizer=text.tokenizers[0],
            scheduler=sched_cls.from_pretrained(directory / "scheduler"),
            vae=vae,
            **second,
        )
        pipe.register_to_config(_name_or_path=str(directory))
        pipe._amp = amp
        pipe.set_progress_bar_config(disable=True)  # callers count images, not steps
        if compile:
            for name in cls._denoisers:
                if getattr(pipe, name, None) is not None:
                    setattr(pipe, name, torch.compile(getattr(pipe, name)))
        return pipe

    @classmethod
    def _load_denoisers(cls, directory: Path, info: dict, load) -> dict:
        from diffusers import UNet2DConditionModel

        return {"unet": load("unet", UNet2DConditionModel)}

    @property
    def info(self) -> dict:
        """The model directory's seggen_model.json (kind, resolution, palette, classes...)."""
        if "_info" not in self.__dict__:
            from seggen.generators.diffusion import read_model_meta

            path = getattr(self.config, "_name_or_path", None)
            if not path or not (Path(path) / "seggen_model.json").exists():
                raise ValueError(
                    "a seggen pipeline samples from its model directory: load it with from_pretrained(dir)"
                )
            self.__dict__["_info"] = read_model_meta(Path(path), self.kind)
        return self.__dict__["_info"]

    @property
    def resolution(self) -> int:
        return int(self.info["resolution"])

    def _autocast(self):
        """Autocast in the networks' dtype: from_model_dir's precision, or the dtype the weights were loaded in."""
        dtype = self._amp
        if dtype is None and self.unet is not None and self.unet.dtype != torch.float32:
            dtype = self.unet.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._execution_device.type, dtype=dtype)

    # -- the loop --------------------------------------------------------------------------------

    def check_inputs(self, prompts: list[str], generator, solver: str, output_type: str) -> None:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: a string or a non-empty list of strings")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"{len(generator)} generators for {len(prompts)} samples: give one per sample")
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r}: expected one of {', '.join(SOLVERS)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}: expected one of {', '.join(OUTPUT_TYPES)}")

    def encode_prompt(self, prompts: list[str], do_classifier_free_guidance: bool):
        """-> (encoder_hidden_states, added_cond_kwargs or None), the empty prompt's first under guidance."""
        from seggen.generators.text import TextConditioner

        sdxl = getattr(self, "text_encoder_2", None) is not None
        text = TextConditioner(
            [self.tokenizer, *([self.tokenizer_2] if sdxl else [])],
            [self.text_encoder, *([self.text_encoder_2] if sdxl else [])],
            False,
            sdxl,
            self.resolution if sdxl else 0,
        )
        with self._autocast():
            cond, cond_added = text(text.tokenize(prompts))
            if not do_classifier_free_guidance:
                return cond, cond_added
            uncond, uncond_added = text(text.tokenize([""] * len(prompts)))
        added = {k: torch.cat([uncond_added[k], cond_added[k]]) for k in cond_added} if cond_added else None
        return torch.cat([uncond, cond]), added

    def sample_shape(self) -> tuple[int, int, int]:
        r = self.resolution
        if self.vae is not None:
            f = 2 ** (len(self.vae.config.block_out_channels) - 1)
            return (self.denoiser_config().in_channels, r // f, r // f)
        return (3, r, r)

    def denoiser_config(self):
        return self.unet.config

    def prepare_latents(self, batch: int, generator) -> torch.Tensor:
        """Unit Gaussian noise, drawn per sample from its own generator (on the CPU: device-independent)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (batch, *self.sample_shape())
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)

    def make_scheduler(self, solver: str):
        """A fresh multistep solver (it keeps a step index) over the training noise schedule."""
        from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

        config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        if solver == "unipc":
            return UniPCMultistepScheduler.from_config(config)
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")

    def denoise(
        self, x, context, added, steps: int, guidance_scale: float, solver: str, predict, init=None, strength=1.0
    ) -> torch.Tensor:
        """predict(x, t, context, added_cond_kwargs, doubled) -> the model output (doubled: x is [uncond; cond]).
        init: samples to start from (SDEdit, as diffusers' img2img pipelines): x is then the noise that takes
        them to the schedule's point at `strength`, and only the last int(steps * strength) steps run."""
        scheduler = self.make_scheduler(solver)
        scheduler.set_timesteps(steps, device=x.device)
        timesteps = scheduler.timesteps
        if init is None:
            x = x * scheduler.init_noise_sigma
        else:  # x_t = alpha_t * x_0 + sigma_t * noise at the first step kept
            start = (steps - min(int(steps * strength), steps)) * scheduler.order
            timesteps = timesteps[start:]
            scheduler.set_begin_index(start)
            x = scheduler.add_noise(init.to(x), x, timesteps[:1].repeat(len(x)))
        doubled = guidance_scale != 1.0
        for t in self.progress_bar(timesteps):
            xin = scheduler.scale_model_input(x, t)
            with self._autocast():
                out = predict(torch.cat([xin, xin]) if doubled else xin, t, context, added, doubled).float()
            if doubled:  # classifier-free guidance: e = e_uncond + w * (e_cond - e_uncond)
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            x = scheduler.step(out, t, x).prev_sample
        return x

    def encode(self, images: np.ndarray, generator) -> torch.Tensor:
        """B x R x R x 3 uint8 -> the samples the model denoises: pixels in [-1, 1], or latents: a draw from
        the VAE's posterior per image with its own generator, scaled (diffusers' img2img pipelines: the draw
        comes before the noise's; encoded in the VAE's dtype outside autocast, as in decode)."""
        from seggen.training import to_tensor

        x = torch.stack([to_tensor(im) for im in images]).to(self._execution_device)
        if self.vae is None:
            return x
        x = x.to(self.vae.dtype)
        gens = generator if isinstance(generator, list) else None
        z = (
            [self.vae.encode(x[i : i + 1]).latent_dist.sample(gens[i]) for i in range(len(x))]
            if gens
            else [self.vae.encode(x).latent_dist.sample(generator)]
        )
        return torch.cat(z).float() * self.vae.config.scaling_factor

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Samples in [-1, 1] (pixels, or latents through the VAE in fp32, outside autocast) -> B x H x W x 3 uint8."""
        from seggen.training import to_uint8

        if self.vae is not None:
            x = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
        return to_uint8(x)

    def generate(
        self,
        prompts: list[str],
        generator,
        steps,
        guidance_scale,
        solver,
        output_type,
        predict,
        init=None,
        strength=1.0,
    ) -> np.ndarray:
        # 1. Check inputs
        self.check_inputs(prompts, generator, solver, output_type)
        if init is not None and not (0 < strength <= 1 and int(steps * strength) >= 1):
            raise ValueError(f"strength {strength}: expected 0 < strength <= 1 and at least one of {steps} steps")
        # 2. Encode the prompt (and the empty prompt, for classifier-free guidance)
        context, added = self.encode_prompt(prompts, guidance_scale != 1.0)
        # 3. Prepare latents (img2img: the images they noise, encoded first)
        if init is not None:
            init = self.encode(init, generator)
        x = self.prepare_latents(len(prompts), generator)
        # 4. Denoise
        x = self.denoise(x, context, added, steps, guidance_scale, solver, predict, init, strength)
        # 5. Decode
        return self.decode(x)

    def _unet_predict(self, x, t, context, added, _doubled):
        return self.unet(x, t, context, added_cond_kwargs=added).sample
