"""The generators' sections: text encoder, Text2Mask, Mask2Img (ControlNet) and the benchmark's prior."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, model_validator

from seggen.config.base import MAX_STEPS, LoopParams, SafePath, _Section


class TextEncoderParams(_Section):
    """Offline default: a small CLIP text model from scratch with a tokenizer trained on our captions."""

    pretrained: str | None = None
    """A CLIP text model id or directory (its tokenizer alongside), used frozen; null: a small one from scratch."""
    subfolder: str | None = None
    """Subfolder of `pretrained` holding the text model, e.g. text_encoder in a Stable Diffusion repo."""
    vocab_size: StrictInt = Field(512, ge=32, le=65536)
    """Vocabulary of the tokenizer trained on our captions (from-scratch encoder)."""
    hidden_size: StrictInt = Field(64, ge=16)
    """Width of the from-scratch text model."""
    layers: StrictInt = Field(2, ge=1)
    """Transformer layers of the from-scratch text model."""
    heads: StrictInt = Field(4, ge=1)
    """Attention heads of the from-scratch text model (must divide hidden_size)."""
    max_length: StrictInt = Field(64, ge=8, le=512)
    """Longest caption, in tokens (the corpus captions, content + style, need up to ~60)."""
    train: bool = True
    """Train jointly with the generator (from-scratch encoder only)."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TextEncoderParams:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        return self


class TrainParams(LoopParams):
    """A generator's training loop (the shared keys, plus classifier-free guidance and EMA)."""

    warmup_steps: StrictInt = Field(20, ge=0, le=MAX_STEPS)
    """Linear warm-up steps before the constant rate."""
    caption_dropout: float = Field(0.1, ge=0, le=1)
    """Share of captions replaced by the empty prompt (what classifier-free guidance needs)."""
    snr_gamma: float | None = Field(None, gt=0)
    """Min-SNR-g loss weighting (Hang et al. 2023, 5 recommended; diffusers' --snr_gamma): each sample's error
    weighted so that its weight in x0 units is min(SNR_t, g); null: the plain mean squared error.
    """
    ema: bool = False
    """Keep an exponential moving average of the weights and save it."""
    ema_decay: float = Field(0.999, gt=0, lt=1)
    """Decay of the moving average."""


class SampleParams(_Section):
    steps: StrictInt = Field(20, ge=1, le=1000)
    """Denoising steps."""
    guidance_scale: float = Field(3.0, ge=0)
    """Classifier-free guidance scale (1: none)."""
    batch_size: StrictInt = Field(16, ge=1)
    """Samples per batch."""


class UNetParams(_Section):
    block_out_channels: tuple[StrictInt, ...] = (32, 64, 64)
    """Channels of each resolution level."""
    layers_per_block: StrictInt = Field(1, ge=1)
    """ResNet layers per level."""
    attention_levels: tuple[bool, ...] = (False, True, True)
    """Cross-attention to the caption, per level."""
    attention_head_dim: StrictInt = Field(8, ge=1)
    """Channels per attention head."""
    norm_num_groups: StrictInt = Field(8, ge=1)
    """Group-norm groups (must divide every block_out_channels entry)."""
    pooled_text: bool = False
    """The caption, attention-pooled, added to the time embedding (diffusers addition_embed_type "text"): a global
    condition every block sees -- what a style (lighting, palette, rendering) needs
    """

    @model_validator(mode="after")
    def _levels(self) -> UNetParams:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"every block_out_channels entry must be divisible by norm_num_groups {self.norm_num_groups}"
            )
        return self


class GeneratorParams(_Section):
    out: SafePath
    """Where the trained model, its checkpoints and curves go."""
    resolution: StrictInt = Field(32, ge=8, le=2048)
    """Side of the generated images, pixels (pixel space; the VAE's input size with `pretrained`)."""
    pretrained: str | None = None
    """An SD / SDXL model id or directory: the model works in its VAE's latent space; null: pixel space."""
    prediction_type: Literal["epsilon", "sample", "v_prediction"] | None = None
    """What the UNet predicts. null: x0 ("sample") from scratch, the checkpoint's own (its scheduler's prediction_type,
    epsilon or v_prediction for SD/SDXL) with `pretrained`; a value that contradicts the checkpoint is an error (its
    frozen base could not follow another objective)
    """
    num_train_timesteps: StrictInt = Field(1000, ge=10)
    """Diffusion timesteps of the noise schedule."""
    unet: UNetParams = UNetParams()
    """The from-scratch UNet's shape."""
    train: TrainParams = TrainParams()
    """The training loop."""
    sample: SampleParams = SampleParams()
    """Sampling when the model is tried (`seggen sample`, sample grids)."""


class Text2MaskParams(GeneratorParams):
    out: SafePath = Path("models/text2mask")
    """Where the trained Text2Mask, its checkpoints and curves go."""
    min_class_pixels: StrictInt = Field(4, ge=1)
    """A decoded class counts as present from this many pixels."""
    instances: bool = False
    """Instance-aware colour maps (boundary colour between touching instances of a thing class); needs the panoptic
    layout; samples then decode to labels and instances
    """


class ControlNetParams(_Section):
    conditioning_embedding_out_channels: tuple[StrictInt, ...] = (32,)
    """Channels of the colour-map encoder's levels."""
    conditioning_scale: float = Field(1.0, ge=0)
    """Strength of the ControlNet's residuals at sampling."""


class Mask2ImgParams(GeneratorParams):
    out: SafePath = Path("models/mask2img")
    """Where the trained Mask2Img, its checkpoints and curves go."""
    resolution: StrictInt = Field(64, ge=8, le=2048)
    """Side of the generated images, pixels (64 px draws the small things, people and cars, that 32 px cannot)."""
    unet: UNetParams = UNetParams(block_out_channels=(16, 32, 64, 64), attention_levels=(False, False, False, True))
    """The from-scratch UNet (the prior brings its own): the mask steers, the caption attends only at the bottom."""
    train: TrainParams = TrainParams(steps=450)
    """The training loop."""
    sample: SampleParams = SampleParams(guidance_scale=2.0)
    """Sampling when the model is tried (`seggen sample`, sample grids)."""
    controlnet: ControlNetParams = ControlNetParams()
    """The ControlNet's shape and strength."""
    base: Literal["auto", "frozen", "finetune"] = "auto"
    """The base UNet under the ControlNet. auto: trained with it from scratch, frozen over `pretrained` weights or the
    benchmark's prior (prior.enabled); finetune over those: trained too, and the broad base is kept beside it
    (unet_prior/) for synthesize.style_swap; frozen from scratch is an error
    """
    prior_mix: float = Field(0.5, ge=0, le=4)
    """With the prior and a fine-tuned base: this share of each batch (extra samples) from the corpus, ControlNet off
    for them, so that the base keeps its styles ("the prior mixed back in")
    """
    caption_style: str | None = "a photo"
    """Appended to the labelled captions in training ("two cars on a road, a photo"): what the labelled images look
    like, in the words of the prior's captions; null: captions as they are
    """


class CorpusParams(_Section):
    """The captioned, unlabelled "web" corpus the prior learns from (seggen.data.corpus)."""

    out: SafePath = Path("data/corpus")
    """Where the corpus images and captions go."""
    num_images: StrictInt = Field(6000, ge=16)
    """Images in the corpus."""
    resolution: StrictInt = Field(64, ge=16, le=512)
    """Side of the corpus images, pixels."""
    max_things: StrictInt = Field(7, ge=2, le=30)
    """Most foreground objects per scene."""
    include_unseen: bool = False
    """The leak reference: a tenth of the corpus rendered in the unseen evaluation domains themselves."""
    workers: StrictInt = Field(1, ge=1, le=64)
    """Processes rendering the corpus (the output does not depend on it)."""


class PriorParams(GeneratorParams):
    """The text-to-image prior, pretrained on the corpus (the benchmark's stand-in for SD/SDXL
    pretraining); Mask2Img starts from it. Not used when mask2img.pretrained names real weights."""

    enabled: bool = True
    """Pretrain the prior and start Mask2Img from it (the benchmark's stand-in for SD/SDXL weights)."""
    out: SafePath = Path("models/prior")
    """Where the pretrained prior, its checkpoints and curves go."""
    resolution: StrictInt = Field(64, ge=8, le=2048)
    """Side of the prior's images, pixels (must equal mask2img.resolution)."""
    corpus: CorpusParams = CorpusParams()
    """The captioned, unlabelled corpus the prior learns from."""
    unet: UNetParams = UNetParams(
        block_out_channels=(16, 32, 64, 64), attention_levels=(False, False, False, True), pooled_text=True
    )
    """The prior's UNet (Mask2Img's base when the prior is used)."""
    train: TrainParams = TrainParams(steps=1500, batch_size=32)
    """The pretraining loop."""
    sample: SampleParams = SampleParams(guidance_scale=2.0)
    """Sampling when the prior is tried (sample grids)."""
