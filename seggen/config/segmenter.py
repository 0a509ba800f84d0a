"""The segmenter's sections: Mask2Former, its training, and how it is evaluated and scored."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from seggen.config.base import MAX_STEPS, LoopParams, SafePath, SafePaths, SplitName, _Section


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
    """As transformers' Mask2FormerConfig.decoder_layers (detectron2's DEC_LAYERS): the transformer
    decoder's layers + 1 (the prediction from the queries alone); the published 10 = 9 layers."""
    train_num_points: StrictInt = Field(1024, ge=16)
    """Points sampled per mask for the mask losses (Mask2Former's point sampling)."""

    @model_validator(mode="after")
    def _stages(self) -> Mask2FormerParams:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads need one entry per Swin stage")
        return self


class SegTrainParams(LoopParams):
    """Mask2Former's training loop: its recipe's defaults (AdamW, poly schedule, tight clipping), crops."""

    steps: StrictInt = Field(400, ge=1, le=MAX_STEPS)
    """Optimizer steps."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay."""
    warmup_steps: StrictInt = Field(0, ge=0, le=MAX_STEPS)
    """Linear warm-up steps."""
    max_grad_norm: float = Field(0.01, gt=0)
    """Mask2Former's full-model gradient clipping norm."""
    poly_power: float = Field(0.9, ge=0)
    """Power of the polynomial learning-rate decay."""
    crop: StrictInt = Field(64, ge=16)
    """Side of the square training crop, pixels."""
    scale: tuple[float, float] = (0.75, 1.5)
    """Random resize range (min, max) before the crop."""
    flip: bool = True
    """Random horizontal flips."""
    backbone_lr_mult: float | None = Field(None, gt=0)
    """Learning rate of the backbone relative to the rest; null: the recipe's 0.1 over pretrained
    weights (segmenter.backbone or segmenter.pretrained), 1 from scratch."""

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
    synthetic_root: SafePaths = Path("data/synthetic")
    """Directory holding the masksyn/ and imgsyn/ datasets; a list: several such directories (e.g. the rounds of a
    closed loop), their datasets pooled
    """
    p_aug: float = Field(0.3, ge=0, le=1)
    """augment: probability that a real sample is replaced by a synthetic one (the paper: 0.6 on ADE20K); with
    `augment_mode: add`, the share of the batch's real samples that bring one as well."""
    augment_mode: Literal["replace", "add"] = "replace"
    """augment: replace: each real sample is replaced by a synthetic one with probability p_aug (the paper) | add:
    every real sample stays, and round(p_aug x batch_size) of them, drawn per micro-step, bring a synthetic sample
    made from them besides (a micro-batch of batch_size + that many: more compute per step, no real supervision
    given up). paste_real applies to replace only
    """
    paste_real: list[str] | Literal["undrawable"] = Field(default_factory=list)
    """augment: classes whose real pixels survive the replacement. Where a real sample is replaced, its pixels of
    these classes (image and labels) are pasted over the synthetic sample, as copy-paste augmentation does, so
    classes the generators draw badly keep all of their real supervision; `undrawable`: the classes the plan of
    the synthetic datasets found undrawn (plan.json `undrawable`); []: none (the paper's replacement). Other
    strategies and `augment_mode: add` replace nothing and ignore it
    """
    concat_repeat: StrictInt = Field(1, ge=1)
    """concat: times the real set is repeated beside the synthetic one."""
    pretrain_steps: StrictInt = Field(300, ge=0, le=MAX_STEPS)
    """pretrain_finetune: steps on synthetic data before train.steps on real data."""
    real_subset: StrictInt | None = Field(None, ge=1)
    """Low-data regime: a seeded subset of this many real training images; null: all."""
    holdout: float = Field(0.0, ge=0, lt=1)
    """The share of the real training split this arm trains without: a fold drawn with the global `seed`, which
    `plan_synthesis.split: holdout` scores the arm on (the planning split of data without a tuning split, e.g. real
    ADE20K / COCO); 0: none. Strategy real only (synthetic pairs drawn from the fold would leak it)
    """
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

    @property
    def synthetic_roots(self) -> list[Path]:
        """synthetic_root as a list of directories."""
        roots = self.synthetic_root
        return [Path(r) for r in roots] if isinstance(roots, list) else [Path(roots)]

    @property
    def synthetic_added(self) -> int:
        """augment_mode add: the synthetic samples each micro-batch brings besides its batch_size real ones; else 0."""
        add = self.strategy == "augment" and self.augment_mode == "add"
        return round(self.p_aug * self.train.batch_size) if add else 0

    @model_validator(mode="after")
    def _added_samples_divide(self) -> SegmenterParams:
        if self.strategy != "augment" or self.augment_mode != "add":
            return self
        n, k, world = self.train.batch_size, self.synthetic_added, self.train.num_processes
        if not k:
            raise ValueError(
                f"segmenter.p_aug: {self.p_aug:g} x batch_size {n} adds no synthetic sample (augment_mode add)"
            )
        if (n + k) % world:
            raise ValueError(
                f"segmenter.p_aug: augment_mode add makes micro-batches of {n} + {k} samples, which do not divide over "
                f"train.num_processes {world}; choose p_aug so that they do"
            )
        return self

    @model_validator(mode="after")
    def _holdout_trains_on_real_only(self) -> SegmenterParams:
        if self.holdout and self.strategy != "real":
            raise ValueError(
                f"segmenter.holdout: a held-out fold needs strategy real (not {self.strategy}): synthetic pairs "
                "drawn from its images would put them back into training"
            )
        return self

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
