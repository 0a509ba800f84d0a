"""Pydantic models for params.yaml: every stage reads its own section through these.

Unknown keys are rejected (extra="forbid") and every error names its dotted key, so a typo in
params.yaml fails fast with one line instead of silently running with a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from ruamel.yaml.error import YAMLError

from seggen.errors import ConfigError, not_found

DEFAULT_PARAMS = Path("params.yaml")
MAX_STEPS = 10_000_000  # optimizer steps: 27x the paper's longest schedule (COCO, 368,750); a typo stops here

# Paths and split names go into dvc.yaml's deps and outs and onto the file system, never through a
# shell (the stage commands take no `${...}`); still, nothing a shell or DVC's `${}` would read gets
# in: they are refused here, naming the key, and the Prefect form checks the same patterns.
# (?!\n) before $: a JSON-schema validator's $ (and Python's re.search) also matches before a final newline
_PATH_CHARS, _NAME_BODY = r"[\w .,/+=@%~:-]", r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
SAFE_PATH = rf"^{_PATH_CHARS}+(?!\n)$"
SAFE_NAME = rf"^{_NAME_BODY}(?!\n)$"


def _safe_path(value: Path) -> Path:
    text = str(value)
    if not re.fullmatch(f"{_PATH_CHARS}+", text):
        bad = sorted({c for c in text if not re.fullmatch(_PATH_CHARS, c)}) or ["(empty)"]
        shown = " ".join(map(repr, bad))
        raise ValueError(f"a path of letters, digits, spaces and _ . , / + = @ % ~ : - only, not {shown}")
    return value


def _safe_name(value: str) -> str:
    if not re.fullmatch(_NAME_BODY, value):
        raise ValueError("a name of letters, digits, _ . - (starting with a letter or digit, at most 64)")
    return value


SafePath = Annotated[
    Path, AfterValidator(_safe_path), WithJsonSchema({"type": "string", "format": "path", "pattern": SAFE_PATH})
]
SplitName = Annotated[str, AfterValidator(_safe_name), WithJsonSchema({"type": "string", "pattern": SAFE_NAME})]


def _yaml_load(text: str) -> Any:
    """YAML 1.2, as DVC reads and writes params.yaml (`dvc exp run -S` writes `no` unquoted: a string
    in YAML 1.2, a boolean to a YAML 1.1 reader such as PyYAML)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


class _Section(BaseModel):
    # a field's docstring (the string under it) is its description: the Prefect form, `seggen params
    # describe` and docs/params.md show it
    # inf and nan are no learning rate, probability or scale: refused like any bad value
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_defaults(cls, data):
        # a field whose default is a tuned instance (prior.unet, ...) given only some keys keeps the
        # rest of that instance, not the section class's generic defaults
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(field.default, BaseModel) and isinstance(out.get(name), dict):
                # shallow: a sub-section given in part is completed the same way by its own class
                out[name] = {**field.default.model_dump(), **out[name]}
        return out


class DomainsParams(_Section):
    """The domains of the shifted splits, drawn from the documented look distribution (seggen.data.domains)."""

    seed: StrictInt = Field(1, ge=0)
    """Draws the domains (their own seed: the scenes keep the global one)."""
    unseen: StrictInt = Field(8, ge=1, le=64)
    """K: domains in `validation_shift`, the unseen domains every score is reported on."""
    tuning: StrictInt = Field(4, ge=1, le=64)
    """K_t: other domains in `tuning_shift`, the ones choices may read."""
    images: StrictInt = Field(50, ge=1)
    """Images per domain."""
    min_distance: float = Field(0.8, ge=0, le=2.0)
    """Every drawn domain is at least this far from the labelled one (seggen.data.domains.domain_distance; a
    random draw's median is 1.2)."""


class BenchmarkParams(_Section):
    resolution: StrictInt = Field(64, ge=32, le=1024)
    """Image side, pixels."""
    num_train: StrictInt = Field(1000, ge=1)
    """Images in the training split."""
    num_val: StrictInt = Field(200, ge=1)
    """Images in the in-domain validation split."""
    num_tuning: StrictInt = Field(200, ge=1)
    """Images in the in-domain tuning split (`tuning`: what choices are made on, never `validation`)."""
    domains: DomainsParams = DomainsParams()
    """The shifted splits: domains drawn from the look distribution (seggen.data.domains)."""
    max_things: StrictInt = Field(7, ge=2, le=30)
    """Most foreground objects per scene."""
    jpeg_quality: StrictInt = Field(95, ge=50, le=100)
    """JPEG quality of the rendered images."""
    workers: StrictInt = Field(1, ge=1, le=64)
    """Processes rendering the images (the output does not depend on it)."""


class DataParams(_Section):
    format: Literal["benchmark", "ade20k", "coco"] = "benchmark"
    """benchmark: rendered by `seggen prepare` | ade20k: an ADEChallengeData2016-layout root | coco: a COCO panoptic
    root (SPLIT/*.jpg, annotations/panoptic_SPLIT.json + PNGs), read as it is.
    """
    root: SafePath = Path("data/benchmark")
    """The dataset's root directory (rendered there for the benchmark)."""
    benchmark: BenchmarkParams = BenchmarkParams()
    """The bundled benchmark's rendering (data.format benchmark only)."""


class EvalParams(_Section):
    """How the pipeline's evaluate scores predictions (mmsegmentation's IoUMetric settings)."""

    ignore_index: StrictInt = Field(255, ge=0, le=255)
    """Label value never scored."""
    reduce_zero_label: bool = True
    """Label 0 means ignored, 1..N are classes 0..N-1 (ADE20K's convention; must be true)."""

    @field_validator("reduce_zero_label")
    @classmethod
    def _ade_convention(cls, v: bool) -> bool:
        # seggen's datasets store 0 = ignored, 1..N = classes, and predictions are 0..N-1: without the
        # reduction every class would be compared with its neighbour (a silently wrong mIoU)
        if not v:
            raise ValueError(
                "must be true for the pipeline (its label PNGs are 0 = ignored, 1..N = classes); "
                "`seggen eval semantic` scores other conventions"
            )
        return v


class CaptionParams(_Section):
    captioner: Literal["label", "blip"] = "label"
    """label: captions from the label map (offline, no weights); blip: a BLIP/BLIP-2 model."""
    model: str | None = None
    """BLIP / BLIP-2 model id or local directory, for captioner blip."""
    split: SplitName = "training"
    """The split whose images are captioned."""
    out: SafePath = Path("data/captions.jsonl")
    """The captions file (JSON lines)."""
    batch_size: StrictInt = Field(16, ge=1)
    """Images per captioner batch."""
    max_new_tokens: StrictInt = Field(30, ge=1, le=512)
    """Longest caption the captioner generates, in tokens."""


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


class TrainParams(_Section):
    steps: StrictInt = Field(600, ge=1, le=MAX_STEPS)
    """Optimizer steps."""
    batch_size: StrictInt = Field(16, ge=1)
    """Samples per step."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_steps: StrictInt = Field(20, ge=0, le=MAX_STEPS)
    """Linear warm-up steps before the constant rate."""
    grad_accum: StrictInt = Field(1, ge=1)
    """Batches accumulated per optimizer step."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """accelerate's mixed precision: no, fp16 (CUDA) or bf16."""
    caption_dropout: float = Field(0.1, ge=0, le=1)
    """Share of captions replaced by the empty prompt (what classifier-free guidance needs)."""
    ema: bool = False
    """Keep an exponential moving average of the weights and save it."""
    ema_decay: float = Field(0.999, gt=0, lt=1)
    """Decay of the moving average."""
    checkpoint_every: StrictInt = Field(200, ge=1, le=MAX_STEPS)
    """Steps between resumable checkpoints."""
    keep_checkpoints: StrictInt = Field(2, ge=1)
    """Checkpoints kept (older ones are deleted)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    threads: StrictInt = Field(0, ge=0)
    """Torch CPU threads; 0: torch's default."""


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


class FilterParams(_Section):
    """Quality filters on synthetic pairs (SegGen has none; FreeMask reports gains from filtering).
    Both score every sample with a small segmenter trained on the real training split."""

    sample: bool = False
    """Drop samples whose mIoU (the scoring segmenter on the image vs its mask) is below min_miou."""
    min_miou: float = Field(30.0, ge=0, le=100)
    """The sample filter's threshold, mIoU in percent."""
    pixel: bool = False
    """Ignore pixels whose loss exceeds margin x the class's mean loss on real data."""
    margin: float = Field(2.0, gt=0)
    """The pixel filter's margin."""
    out: SafePath = Path("models/filter_segmenter")
    """Where the scoring segmenter goes (trained once, reused while its params are unchanged)."""
    resolution: StrictInt = Field(64, ge=16, le=1024)
    """Images and masks are scored at this size, pixels."""
    steps: StrictInt = Field(400, ge=1, le=MAX_STEPS)
    """Training steps of the scoring segmenter."""
    batch_size: StrictInt = Field(32, ge=1)
    """Batch size of the scoring segmenter."""


class DaskParams(_Section):
    address: str | None = None
    """Scheduler of an existing cluster, e.g. tcp://10.0.0.5:8786; null: a local cluster."""
    n_workers: StrictInt = Field(2, ge=1)
    """Worker processes of the local cluster."""
    threads_per_worker: StrictInt = Field(1, ge=1)
    """Threads of each worker process (local cluster)."""


# the in-domain look, then one phrase per word of the corpus's generic vocabulary (seggen.data.corpus)
DEFAULT_STYLES = {
    "a photo": 4.0,
    "a night photo": 1.0,
    "a dusk photo": 1.0,
    "an overcast photo": 1.0,
    "a hazy photo": 1.0,
    "a foggy photo": 1.0,
    "a grainy photo": 1.0,
    "a flat painting": 1.0,
    "a line drawing": 1.0,
}


class SynthesizeParams(_Section):
    out: SafePath = Path("data/synthetic")
    """Where the datasets go: out/masksyn and out/imgsyn."""
    split: SplitName = "training"
    """The real split whose captions and masks are the sources (captions from caption.out)."""
    max_sources: StrictInt | None = Field(200, ge=1)
    """A seeded random subset of the source images; null: all."""
    real_subset: StrictInt | None = Field(None, ge=1)
    """Low-data regime: only the images of the real subset the segmenter trains on with segmenter.real_subset = this
    number (same seeded draw), so no other real mask is used
    """
    masksyn_per_source: StrictInt = Field(1, ge=1)
    """MaskSyn samples per source caption (the paper: 10 on ADE20K)."""
    imgsyn_per_source: StrictInt = Field(1, ge=1)
    """ImgSyn samples per source mask (the paper: 50 on ADE20K)."""
    steps: StrictInt = Field(20, ge=1, le=1000)
    """Denoising steps of both generators."""
    text2mask_guidance: float = Field(3.0, ge=0)
    """Classifier-free guidance of Text2Mask."""
    mask2img_guidance: float = Field(4.0, ge=0)
    """Classifier-free guidance of Mask2Img (the style phrase shows from about 4, bench/tuning.md)."""
    batch_size: StrictInt = Field(16, ge=1)
    """Samples per batch; part of the output's identity (float results depend on it)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Network precision while sampling; auto: bf16 on CPUs with native bf16 and on CUDA, else fp32."""
    image_format: Literal["png", "jpg"] = "png"
    """File format of the synthetic images."""
    threads: StrictInt = Field(0, ge=0)
    """Torch CPU threads per process; 0: cores / workers."""
    workers: StrictInt = Field(2, ge=1, le=256)
    """Local processes, each generating a share of the batches (shards); on CPUs two 1-thread processes beat one
    2-thread process. Use 1 on a single GPU.
    """
    text2mask: SafePath = Path("models/text2mask/model")
    """The trained Text2Mask model directory."""
    mask2img: SafePath = Path("models/mask2img/model")
    """The trained Mask2Img model directory."""
    styles: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STYLES))
    """Style prompts: each Mask2Img prompt is the caption plus a style phrase drawn (per sample, from its seed) with
    these weights, e.g. {"a photo": 1, "a foggy dusk photo": 1}; empty: captions alone
    """
    style_swap: bool = False
    """With a Mask2Img trained on the prior: run its ControlNet on the prior's base (DGInStyle's style swap) instead of
    the fine-tuned one
    """
    filter: FilterParams = FilterParams()
    """Quality filters on the synthetic pairs."""
    dask: DaskParams = DaskParams()
    """Where the synthesis shards run when dask is used."""

    @field_validator("styles")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or (v and sum(v.values()) <= 0):
            raise ValueError("style weights must be >= 0 and not all 0")
        return v


class Mask2FormerParams(_Section):
    """The tiny from-scratch default: about 0.3 s per step at 64 px, batch 16, on 2 CPU cores."""

    embed_dim: StrictInt = Field(32, ge=8)
    """Embedding width of the Swin backbone."""
    depths: tuple[StrictInt, ...] = (1, 1, 2, 1)
    """Swin blocks per stage."""
    num_heads: tuple[StrictInt, ...] = (1, 2, 4, 8)
    """Swin attention heads per stage."""
    window_size: StrictInt = Field(4, ge=1)
    """Swin attention window, in patches."""
    hidden_dim: StrictInt = Field(64, ge=8)
    """Width of the pixel decoder and the transformer decoder."""
    num_queries: StrictInt = Field(16, ge=1)
    """Mask queries of the transformer decoder."""
    encoder_layers: StrictInt = Field(2, ge=1)
    """Deformable-attention layers of the pixel decoder."""
    decoder_layers: StrictInt = Field(3, ge=1)
    """Layers of the transformer decoder."""
    train_num_points: StrictInt = Field(1024, ge=16)
    """Points sampled per mask for the mask losses (Mask2Former's point sampling)."""

    @model_validator(mode="after")
    def _stages(self) -> Mask2FormerParams:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads need one entry per Swin stage")
        return self


class SegTrainParams(_Section):
    steps: StrictInt = Field(400, ge=1, le=MAX_STEPS)
    """Optimizer steps."""
    batch_size: StrictInt = Field(16, ge=1)
    """Images per step."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay."""
    poly_power: float = Field(0.9, ge=0)
    """Power of the polynomial learning-rate decay."""
    warmup_steps: StrictInt = Field(0, ge=0, le=MAX_STEPS)
    """Linear warm-up steps."""
    crop: StrictInt = Field(64, ge=16)
    """Side of the square training crop, pixels."""
    scale: tuple[float, float] = (0.75, 1.5)
    """Random resize range (min, max) before the crop."""
    flip: bool = True
    """Random horizontal flips."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """accelerate's mixed precision: no, fp16 (CUDA) or bf16."""
    grad_accum: StrictInt = Field(1, ge=1)
    """Batches accumulated per optimizer step."""
    max_grad_norm: float = Field(0.01, gt=0)
    """Mask2Former's full-model gradient clipping norm."""
    checkpoint_every: StrictInt = Field(200, ge=1, le=MAX_STEPS)
    """Steps between resumable checkpoints."""
    keep_checkpoints: StrictInt = Field(2, ge=1)
    """Checkpoints kept (older ones are deleted)."""
    threads: StrictInt = Field(0, ge=0)
    """Torch CPU threads; 0: torch's default."""

    @model_validator(mode="after")
    def _scale(self) -> SegTrainParams:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be (min, max) with 0 < min <= max")
        return self


class SegmenterParams(_Section):
    task: Literal["semantic", "panoptic"] = "semantic"
    """semantic (mIoU) or panoptic (PQ; needs panoptic annotations)."""
    out: SafePath = Path("models/segmenter/baseline")
    """Where the trained segmenter goes (models/segmenter/ARM for the pipeline's arms)."""
    strategy: Literal["real", "augment", "pretrain_finetune", "concat"] = "real"
    """real: baseline | augment: each real sample replaced by a synthetic one with probability p_aug |
    pretrain_finetune: synthetic for pretrain_steps, then real for train.steps | concat: real x concat_repeat +
    synthetic.
    """
    synthetic: tuple[Literal["masksyn", "imgsyn"], ...] = ("masksyn", "imgsyn")
    """The synthetic datasets mixed in (any strategy but real)."""
    synthetic_root: SafePath = Path("data/synthetic")
    """Directory holding the masksyn/ and imgsyn/ datasets."""
    p_aug: float = Field(0.3, ge=0, le=1)
    """augment: probability that a real sample is replaced by a synthetic one (the paper: 0.6 on ADE20K)."""
    concat_repeat: StrictInt = Field(1, ge=1)
    """concat: times the real set is repeated beside the synthetic one."""
    pretrain_steps: StrictInt = Field(300, ge=0, le=MAX_STEPS)
    """pretrain_finetune: steps on synthetic data before train.steps on real data."""
    real_subset: StrictInt | None = Field(None, ge=1)
    """Low-data regime: a seeded subset of this many real training images; null: all."""
    seed: StrictInt | None = Field(None, ge=0, lt=2**32)
    """Training randomness (init, sampling, augmentation, loss points); null: the global `seed`. The real subset is
    drawn with the global seed, so the seeds of an ablation see the same images.
    """
    split: SplitName = "training"
    """The real training split."""
    pretrained: str | None = None
    """A Mask2Former checkpoint id or directory (e.g. an ADE20K or COCO one); null: from scratch."""
    backbone: str | None = None
    """A Swin checkpoint id or directory for the backbone (ignored with `pretrained`)."""
    model: Mask2FormerParams = Mask2FormerParams()
    """The from-scratch Mask2Former's shape (ignored with `pretrained`)."""
    train: SegTrainParams = SegTrainParams()
    """The training loop."""

    @model_validator(mode="after")
    def _group_norm_has_values(self) -> SegmenterParams:
        # Mask2Former's pixel decoder normalises 32 groups of hidden_dim / 32 channels over the deepest
        # feature map (stride 32): a group must hold more than one value per batch, or training stops
        if self.pretrained:
            return self
        side, per_group = self.train.crop // 32, max(1, self.model.hidden_dim // 32)
        if self.train.batch_size * per_group * side * side < 2:
            raise ValueError(
                f"segmenter.train.crop: {self.train.crop} px at batch_size {self.train.batch_size} leaves "
                f"{per_group} value(s) per normalisation group of the {side}x{side} deepest feature map; "
                "use crop >= 64, batch_size >= 2 or model.hidden_dim >= 64"
            )
        return self


class EvaluateParams(_Section):
    """The pipeline's evaluate stage: every arm on every split (dvc.yaml matrix)."""

    splits: tuple[SplitName, ...] = ("tuning", "tuning_shift", "validation", "validation_shift")
    """The splits every arm is evaluated on: the tuning splits (in-domain, K_t drawn domains) that choices read, and
    the reported ones (in-domain, the K unseen domains)."""
    panoptic: bool = True
    """Also PQ and mask AP where the split has panoptic ground truth."""
    size: StrictInt | None = Field(None, ge=16)
    """Resize the short side to this many pixels; null: native size."""
    out: SafePath = Path("reports/eval")
    """Where evaluations go: out/ARM/SPLIT with metrics.json, scores.json and pictures."""


class ReportParams(_Section):
    out: SafePath = Path("reports")
    """Where the report goes: report.md, summary.json, miou.png."""
    results: SafePath | None = None
    """The ablation page (bench/params.yaml: docs/results.md), built from the evaluations' scores.json: mean ± std
    over seeds (arms named GROUP-sSEED), bar chart and sample grids in results' folder img/results/.
    """
    notes: SafePath | None = None
    """A hand-written markdown file inlined into the results page (tuning log)."""
    reference: str = "baseline"
    """The group each regime's arms are compared with: REGIME-REFERENCE."""
    readme: SafePath | None = Path("README.md")
    """A markdown file whose block between `<!-- report:headline -->` markers the
    report rewrites with the headline table; a missing file is left alone."""


class TrackingParams(_Section):
    """What the training stages send to MLflow while they run (not part of any output: DVC does not
    re-run a stage when these change)."""

    log_every: StrictInt = Field(10, ge=1)
    """Log loss, learning rate and throughput every N steps, live."""
    system_metrics: bool = True
    """Log CPU, memory (and GPU where present) of the training stages."""
    system_metrics_interval: float = Field(10.0, gt=0)
    """Seconds between system-metric samples."""


_ARM_BODY, _VARIANT_BODY = r"[a-z0-9][a-z0-9_-]{0,39}", r"[a-z0-9][a-z0-9_]{0,39}"
_ARM_NAME = rf"^{_ARM_BODY}(?!\n)$"  # arms, regimes, ablation groups (the form's pattern)
_VARIANT_NAME = rf"^{_VARIANT_BODY}(?!\n)$"


DEFAULT_SEEDS = (0, 1, 2)


class AblationParams(_Section):
    """The arms of an ablation, generated (Params._ablation_arms): every regime x group x seed."""

    groups: dict[str, dict[str, Any]] = Field(json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}})
    """Group name -> `segmenter` keys, e.g. both: {strategy: augment}."""
    seeds: tuple[StrictInt, ...] = Field(DEFAULT_SEEDS, min_length=1)
    """segmenter.seed of each copy of a group."""
    variant_group: str = "both"
    """The group whose segmenter keys the arms of every variant (Params.variants) use."""


class Params(_Section):
    seed: StrictInt = Field(0, ge=0, lt=2**32)
    """The global seed: the benchmark's rendering, the real subset draws, and every stage whose own seed is not set."""
    data: DataParams = DataParams()
    """The training and evaluation dataset."""
    eval: EvalParams = EvalParams()
    """How predictions are scored (mmsegmentation's IoUMetric conventions)."""
    caption: CaptionParams = CaptionParams()
    """The captioner that describes each real training image."""
    text_encoder: TextEncoderParams = TextEncoderParams()
    """The text encoder the generators condition on (CLIP's text model)."""
    text2mask: Text2MaskParams = Text2MaskParams()
    """Text2Mask: the caption-to-colour-map diffusion model."""
    mask2img: Mask2ImgParams = Mask2ImgParams()
    """Mask2Img: the ControlNet that draws an image from a colour map and a caption."""
    prior: PriorParams = PriorParams()
    """The benchmark's generative prior, pretrained on a captioned corpus (stand-in for SD/SDXL)."""
    synthesize: SynthesizeParams = SynthesizeParams()
    """MaskSyn and ImgSyn: how many synthetic pairs, sampled how."""
    segmenter: SegmenterParams = SegmenterParams()
    """Mask2Former and how it trains on real plus synthetic data."""
    arms: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "baseline": {"strategy": "real"},
            "seggen": {"strategy": "augment", "synthetic": ["masksyn", "imgsyn"]},
        },
        json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}},
    )
    """The segmenter runs of the pipeline (dvc.yaml: train_segmenter foreach, evaluate matrix): each arm is a set of
    `segmenter` keys overriding that section; its model goes to models/segmenter/ARM
    """
    regimes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}}
    )
    """Data regimes of an ablation (bench/params.yaml): each is a set of `synthesize` keys overriding that section
    (e.g. real_subset for the low-data regime); its datasets go to synthesize.out/REGIME
    """
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": _VARIANT_NAME}}
    )
    """Other generator setups of an ablation (bench/params.yaml), each a set of dotted keys of `prior`, `mask2img` and
    `synthesize` over these params; their corpus, prior, Mask2Img and synthetic data go beside the main ones with
    -NAME appended (Params.variant), and their arms are REGIME-NAME-sSEED, trained like ablation.variant_group on
    that data
    """
    ablation: AblationParams | None = None
    """An ablation (bench/params.yaml): `arms` generated, one per regime x group x seed (and variant)"""
    evaluate: EvaluateParams = EvaluateParams()
    """The evaluate stage: which splits, which metrics."""
    report: ReportParams = ReportParams()
    """Where the report and the ablation page go."""
    tracking: TrackingParams = TrackingParams()
    """What the training stages send to MLflow while they run."""

    @model_validator(mode="before")
    @classmethod
    def _ablation_arms(cls, data: Any) -> Any:
        """With `ablation`, the arms are REGIME-GROUP-sSEED for every regime, group and seed: the group's
        segmenter keys, the seed as segmenter.seed, the regime's synthetic data (synthesize.out/REGIME) and
        its real subset. Hand-listed arms would contradict them: `arms` must then be {} (or absent)."""
        if not isinstance(data, dict) or not data.get("ablation"):
            return data
        if data.get("arms"):
            raise ValueError("arms: generated from `ablation` (regime x group x seed); set `arms: {}`")
        ab = data["ablation"]
        if not isinstance(ab, dict) or not isinstance(ab.get("groups"), dict):
            return data  # the field validation below names what is wrong
        for group in ab["groups"]:
            if not isinstance(group, str) or not re.fullmatch(_ARM_BODY, group):
                raise ValueError(f"ablation.groups.{group}: group names are lowercase letters, digits, - and _")
        regimes = data.get("regimes") or {"": {}}
        root = Path((data.get("synthesize") or {}).get("out", SynthesizeParams().out))
        variants = data.get("variants") or {}
        vgroup = ab.get("variant_group", "both")
        if variants and vgroup not in ab["groups"]:
            raise ValueError(f"ablation.variant_group: {vgroup!r} is not a group (have: {', '.join(ab['groups'])})")
        clash = sorted(set(variants) & set(ab["groups"]))
        if clash:
            raise ValueError(f"variants.{clash[0]}: also the name of a group; an arm name would be ambiguous")
        arms = {}
        for regime, over in regimes.items():
            runs = [(g, k, root) for g, k in ab["groups"].items()]
            runs += [(v, ab["groups"][vgroup], variant_path(root, v)) for v in variants]
            for group, keys, syn_root in runs:
                for seed in ab.get("seeds", DEFAULT_SEEDS):
                    arm = dict(keys or {}, seed=seed)
                    if regime:
                        arm["synthetic_root"] = str(syn_root / regime)
                        if (over or {}).get("real_subset"):
                            arm["real_subset"] = over["real_subset"]
                    elif syn_root != root:
                        arm["synthetic_root"] = str(syn_root)
                    arms[f"{regime}-{group}-s{seed}" if regime else f"{group}-s{seed}"] = arm
        return {**data, "arms": arms}

    @model_validator(mode="after")
    def _generators_valid(self) -> Params:
        m = self.mask2img
        broad = m.pretrained or self.prior.enabled
        if m.base == "frozen" and not broad:
            raise ValueError(
                "mask2img.base: frozen needs a trained base (mask2img.pretrained or prior.enabled); "
                "from scratch it is trained"
            )
        if self.synthesize.style_swap and not broad:
            raise ValueError(
                "synthesize.style_swap: needs a broad base to swap to (mask2img.pretrained or prior.enabled)"
            )
        if self.prior.enabled and not m.pretrained and self.data.format != "benchmark":
            # the corpus renders the benchmark's own scenes: a prior for real data is SD/SDXL weights
            raise ValueError(
                f"prior.enabled: the bundled corpus is the benchmark's; with data.format {self.data.format} set "
                "mask2img.pretrained (SD/SDXL weights) or prior.enabled: false (Mask2Img from scratch)"
            )
        if self.prior.enabled and not m.pretrained and self.prior.resolution != m.resolution:
            raise ValueError(
                f"prior.resolution: {self.prior.resolution}, but Mask2Img starts from the prior at mask2img.resolution "
                f"{m.resolution}"
            )
        return self

    @model_validator(mode="after")
    def _arms_valid(self) -> Params:
        import re

        for name in self.regimes:
            if not re.fullmatch(_ARM_BODY, name):
                raise ValueError(f"regimes.{name}: regime names are lowercase letters, digits, - and _")
            self.regime(name)
        for name in self.variants:
            if not re.fullmatch(_VARIANT_BODY, name):
                raise ValueError(f"variants.{name}: variant names are lowercase letters, digits and _")
            self.variant(name)
        for name in self.arms:
            if not re.fullmatch(_ARM_BODY, name):
                raise ValueError(f"arms.{name}: arm names are lowercase letters, digits, - and _")
            seg = self.arm(name).segmenter  # each arm must give a valid segmenter section
            # an arm on a regime's synthetic data must train on that regime's real images: in the
            # low-data regime no real mask outside the subset may reach the segmenter
            for regime in self.regimes:
                syn = self.regime(regime).synthesize
                if (
                    seg.strategy != "real"
                    and Path(seg.synthetic_root) == Path(syn.out)
                    and seg.real_subset != syn.real_subset
                ):
                    raise ValueError(
                        f"arms.{name}.real_subset: {seg.real_subset} but its synthetic data "
                        f"({seg.synthetic_root}) is regime {regime}'s, made from real_subset {syn.real_subset}"
                    )
        return self

    def variant(self, name: str) -> Params:
        """These params with variant `name`'s keys set, its outputs moved beside the main ones (-NAME)."""
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: no such variant (have: {', '.join(self.variants) or 'none'})")
        tree = self.model_dump(mode="json")
        for key, value in self.variants[name].items():
            if key.split(".")[0] not in VARIANT_SECTIONS:
                raise ConfigError(f"variants.{name}.{key}: a variant sets keys of {', '.join(VARIANT_SECTIONS)} only")
            _set_dotted(tree, key, value, f"variants.{name}")
        for section, key in (("prior", "out"), ("mask2img", "out"), ("synthesize", "out")):
            tree[section][key] = str(variant_path(Path(tree[section][key]), name))
        tree["prior"]["corpus"]["out"] = str(variant_path(Path(tree["prior"]["corpus"]["out"]), name))
        tree["synthesize"]["mask2img"] = str(Path(tree["mask2img"]["out"]) / "model")
        tree["arms"], tree["variants"] = {}, {}
        try:
            return Params.model_validate(tree)
        except ValidationError as e:
            raise ConfigError(_format_error(f"variants.{name}", e)) from None

    def regime(self, name: str) -> Params:
        """These params with `synthesize` set to what regime `name` synthesizes (out: synthesize.out/NAME)."""
        if "out" in self.regimes.get(name, {}):
            raise ConfigError(f"regimes.{name}.out: a regime's datasets go to synthesize.out/{name}")
        return self._overridden("regimes", name, "synthesize", Path(self.synthesize.out) / name)

    def arm(self, name: str) -> Params:
        """These params with `segmenter` set to what arm `name` trains."""
        return self._overridden("arms", name, "segmenter", Path(ARMS_ROOT) / name)

    def _overridden(self, group: str, name: str, section: str, out: Path) -> Params:
        """`section` with the keys of `group`.`name` (an arm or a regime) set and `out` moved to `out`."""
        entries = getattr(self, group)
        if name not in entries:
            raise ConfigError(f"{group}.{name}: no such {group[:-1]} (have: {', '.join(entries) or 'none'})")
        current = getattr(self, section)
        tree = current.model_dump(mode="json")
        tree["out"] = str(out)
        for key, value in entries[name].items():
            _set_dotted(tree, key, value, f"{group}.{name}")
        try:
            new = type(current).model_validate(tree)
        except ValidationError as e:
            raise ConfigError(
                _format_error(f"{group}.{name}", e).replace(f"{group}.{name}: ", f"{group}.{name}.", 1)
            ) from None
        return self.model_copy(update={section: new})


ARMS_ROOT = "models/segmenter"
VARIANT_SECTIONS = ("prior", "mask2img", "synthesize")


def variant_path(path: Path, name: str) -> Path:
    """Where variant `name` writes what the main setup writes at `path`: models/prior -> models/prior-NAME."""
    return path.with_name(f"{path.name}-{name}")


def _format_error(
    source: str, err: ValidationError, overrides: dict[str, Any] | None = None, override_source: str = "--set"
) -> str:
    """One line for all errors; each names its dotted key, and where the value came from when that was
    an override rather than the file."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        origin = _override_origin(key if e["loc"] else "", overrides, override_source)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            if not e["loc"]:  # a model validator's message names its key
                parts.append(f"{origin}: {msg}" if origin else msg)
                continue
        parts.append(f"{origin} {key}: {msg}" if origin else f"{key}: {msg}")
    if overrides and all(p.startswith(override_source) for p in parts):
        return "; ".join(parts)
    return f"{source}: " + "; ".join(parts)


def _override_origin(key: str, overrides: dict[str, Any] | None, label: str) -> str:
    """`label` when the offending key (or a section holding it) was set by an override, else ''."""
    for k in overrides or {}:
        if key and (key == k or key.startswith(k + ".") or k.startswith(key + ".")):
            return label
    return ""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key.sub=value` strings (values parsed as YAML scalars) -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. data.benchmark.resolution=96")
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. data.benchmark.resolution=96")
        try:
            out[key.strip()] = _yaml_load(raw) if raw != "" else ""
        except YAMLError as e:
            raise ConfigError(f"--set {item}: value is not valid YAML ({e.__class__.__name__})") from None
    return out


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a params file; a file with `extends: BASE` (relative to it) is BASE's mapping with
    its own keys merged in -- a profile states only what differs (profiles/*.yaml)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a params file")
    if not path.exists():
        raise ConfigError(not_found(path, "file", "params"))
    try:
        loaded = _yaml_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop(EXTENDS, None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {EXTENDS}: expected the path of the params file this one changes")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: {EXTENDS}: {base} extends itself (a cycle)")
    return deep_merge(_read_tree(base_path, seen + (path.resolve(),)), loaded)


EXTENDS = "extends"
# mappings a profile or an override replaces whole: a profile's arms are its arms, its styles its styles
REPLACED_WHOLE = ("arms", "regimes", "variants", "styles")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`: mappings merged key by key, anything else replaced; REPLACED_WHOLE mappings
    are replaced whole (a profile's arms are its arms, not added to the base's)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in REPLACED_WHOLE
            else v
        )
    return out


def load_params(
    path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None, override_source: str = "--set"
) -> Params:
    """Read and validate params.yaml (or a profile that extends it); a missing params.yaml means all
    defaults. Errors name the file and key, or `override_source` and the key when the bad value came
    from `overrides`."""
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.exists() or path.is_dir() or path != DEFAULT_PARAMS:
        tree = _read_tree(path)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value, override_source)
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e, overrides, override_source)) from None


def write_params(path: str | Path, changes: dict[str, Any], override_source: str = "--set") -> Params:
    """Validate `changes` (dotted keys) on top of the params file, then write them into it with its
    comments and quoting kept (what `dvc exp run -S` does), atomically. Returns the new params."""
    import io

    from ruamel.yaml import YAML

    from seggen.io import write_text

    path = Path(path)
    loaded = load_params(path, changes, override_source)  # raises naming the key if a value is bad
    if not changes:
        return loaded
    yaml = YAML()  # round trip ("no" must stay quoted for YAML 1.1 readers)
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(path.read_text()) if path.exists() else {}
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = doc
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    write_text(path, buf.getvalue())
    return loaded


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; REPLACED_WHOLE mappings stay whole."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in REPLACED_WHOLE:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def profile_changes(profile: str | Path) -> dict[str, Any]:
    """The dotted keys a profile (a params file with `extends`) sets, with their values."""
    path = Path(profile)
    tree = _read_tree(path)
    loaded = _yaml_load(path.read_text())
    if not isinstance(loaded, dict) or EXTENDS not in loaded:
        raise ConfigError(f"{path}: not a profile (no `{EXTENDS}:` naming the params file it changes)")
    own = {k: v for k, v in loaded.items() if k != EXTENDS}
    flat = flatten(own)
    return {k: _get_dotted(tree, k) for k in flat}


def _get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        node = node[k]
    return node
