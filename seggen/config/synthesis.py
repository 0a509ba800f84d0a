"""The synthesis section: MaskSyn and ImgSyn, their filters, styles and workers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from seggen.config.base import MAX_STEPS, SafePath, SplitName, _Section


class FilterParams(_Section):
    """Quality filters on synthetic pairs (SegGen has none; FreeMask reports gains from filtering).
    Both score every sample with a segmenter: a small one trained on the real training split, or the
    plan's reference segmenter (the one the synthetic data is meant for)."""

    scorer: Literal["probe", "plan"] = "probe"
    """Who scores: probe (a small segmenter trained here on the real training split, at `resolution`) or plan (the
    reference segmenter that synthesize.plan was scored with, at the image's size; its per-class loss on the
    planning split is the pixel filter's reference)
    """

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
    """Scheduler of a cluster started with Dask's own CLIs (`dask scheduler`, `dask worker`), e.g.
    tcp://10.0.0.5:8786; null: a local cluster of n_workers processes for the run
    """
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
    solver: Literal["dpmsolver++", "unipc"] = "dpmsolver++"
    """The sampler of both generators: DPM-Solver++ (2M) or UniPC; steps against quality for each: docs/synthesis.md."""
    text2mask_guidance: float = Field(3.0, ge=0)
    """Classifier-free guidance of Text2Mask."""
    mask2img_guidance: float = Field(4.0, ge=0)
    """Classifier-free guidance of Mask2Img (the style phrase shows from about 4, ablation/tuning.md)."""
    batch_size: StrictInt = Field(16, ge=1)
    """Samples per batch; part of the output's identity (float results depend on it)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Network precision while sampling; auto: bf16 on CPUs with native bf16 and on CUDA, else fp32."""
    image_format: Literal["png", "jpg"] = "png"
    """File format of the synthetic images."""
    threads: StrictInt = Field(0, ge=0)
    """Torch CPU threads per process; 0: cores / workers."""
    workers: StrictInt = Field(2, ge=1, le=256)
    """Local processes on the CPU, each generating a share of the batches (shards); two 1-thread processes beat one
    2-thread process. On GPUs: one per device (devices).
    """
    devices: Literal["auto", "cpu"] | list[StrictInt] = "auto"
    """Where local workers run, one per GPU, each seeing only its own: auto: every visible GPU, else the CPU
    (`workers` processes); a list: those GPUs (e.g. [0, 2]); cpu: the CPU even where GPUs are
    """
    compile: bool = False
    """torch.compile the UNet and ControlNet (GPUs; the first batches pay for compiling)."""
    text2mask: SafePath = Path("models/text2mask/model")
    """The trained Text2Mask model directory."""
    mask2img: SafePath = Path("models/mask2img/model")
    """The trained Mask2Img model directory."""
    styles: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STYLES))
    """Style prompts: each Mask2Img prompt is the caption plus a style phrase drawn (per sample, from its seed) with
    these weights, e.g. {"a photo": 1, "a foggy dusk photo": 1}; empty: captions alone
    """
    imgsyn_strength: float = Field(1.0, gt=0, le=1)
    """ImgSyn only: 1, a new image from the mask alone (the paper's ImgSyn); below 1, the source image noised to
    this point of the schedule and re-drawn from there under its mask (SDEdit, diffusers' img2img `strength`):
    its layout and small things kept, its look changed the more the higher
    """
    style_swap: bool = False
    """With a Mask2Img trained on the prior: run its ControlNet on the prior's base (DGInStyle's style swap) instead of
    the fine-tuned one
    """
    plan: SafePath | None = None
    """A plan of the plan_synthesis stage (its plan.json): the same budget, spent by source weight -- MaskSyn draws
    the captions of the weak classes' sources more often, ImgSyn repeats their masks (docs/synthesis.md#planning);
    null: every source alike
    """
    filter: FilterParams = FilterParams()
    """Quality filters on the synthetic pairs."""
    dask: DaskParams = DaskParams()
    """Where the synthesis shards run when dask is used."""

    @model_validator(mode="after")
    def _strength_leaves_a_step(self):
        if int(self.steps * self.imgsyn_strength) < 1:
            raise ValueError(
                f"imgsyn_strength {self.imgsyn_strength}: of {self.steps} steps it runs none (steps x strength < 1)"
            )
        return self

    @model_validator(mode="after")
    def _scorer_needs_a_plan(self):
        if self.filter.scorer == "plan" and self.plan is None:
            raise ValueError("filter.scorer: plan scores with the plan's reference segmenter: set synthesize.plan")
        return self

    @field_validator("styles")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()) or (v and sum(v.values()) <= 0):
            raise ValueError("style weights must be >= 0 and not all 0")
        return v


class PlanSynthesisParams(_Section):
    """The plan_synthesis stage: the reference arm's segmenter scored on a tuning split that no
    reported number reads; its per-class IoU says where synthetic data should go (docs/synthesis.md)."""

    reference: str = "baseline"
    """The arm whose segmenter is scored (trained on real data only): arms_root/REFERENCE/model."""
    split: SplitName = "tuning"
    """The split it is scored on: a tuning split (never validation or validation_shift, which the results report), or
    `holdout`: the fold of the training split that the reference arm trains without (its `segmenter.holdout`), for
    data without a tuning split
    """
    sharpness: float = Field(1.0, gt=0, le=8)
    """Class weight = max(1 - IoU, floor) ** sharpness, normalised to mean 1: larger puts more of the budget on the
    weakest classes
    """
    floor: float = Field(0.05, ge=0, le=1)
    """The smallest (1 - IoU) a class weighs with: a class the segmenter gets right still gets some data."""
    out: SafePath = Path("data/plan")
    """Where the plan goes: plan.json (class and source weights, class losses) and plan.png."""
    round: StrictInt = Field(1, ge=1)
    """The round of a closed loop this plan is for (the manifest rows record it); rounds after the first need
    `previous`
    """
    previous: SafePath | None = None
    """The plan.json of the round before: its mIoU (that round's reference on the same split) is the one to beat.
    A reference that does not beat it ends the loop: this plan generates nothing (its `stopped` says why)
    """
    drawability: list[SafePath] = Field(default_factory=list)
    """Synthetic datasets drawn without a plan (blind MaskSyn / ImgSyn, split synthesize.split) that the reference is
    also scored on: a class's drawability is its IoU on them over its IoU on the planning split (capped at 1), and
    its weight is weakness x drawability ([]: weakness only). The plan stage reads them: list them in its DVC deps
    """
    min_drawability: float = Field(0.2, ge=0, le=1)
    """With `drawability`: a class drawn under this fraction of its real IoU weighs 0, and the plan's pixel filter
    ignores its synthetic pixels (filter.scorer: plan)
    """
    min_real_iou: float = Field(5.0, ge=0, le=100)
    """With `drawability`: a class the reference scores under this IoU (%) on the planning split cannot be judged
    (it sees the class on neither real nor drawn images); its drawability is 0
    """

    @model_validator(mode="after")
    def _holdout_plans_the_first_round(self):
        if self.split == "holdout" and self.round > 1:
            raise ValueError(
                "plan_synthesis.split: holdout plans round 1 only; a later round's reference trained on synthetic "
                "pairs drawn from every training image, the fold's included"
            )
        return self

    @model_validator(mode="after")
    def _later_rounds_follow_one(self):
        if (self.round > 1) != (self.previous is not None):
            raise ValueError("plan_synthesis.previous: set for rounds after the first (the plan of the round before)")
        return self

    @field_validator("split")
    @classmethod
    def _not_reported(cls, v: str) -> str:
        if v.startswith("validation"):
            raise ValueError(f"{v!r} is reported in the results: plan on a tuning split (tuning, tuning_shift)")
        return v
