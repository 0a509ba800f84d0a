"""The root of params.yaml: every section, the arms, regimes, variants and ablation that pick a run, and
the checks that span sections. Each section's model lives beside the code it configures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, model_validator

from seggen.config.base import _ARM_BODY, _ARM_NAME, _VARIANT_BODY, _VARIANT_NAME, SafePath, _Section
from seggen.config.data import CaptionParams, DataParams
from seggen.config.generators import Mask2ImgParams, PriorParams, Text2MaskParams, TextEncoderParams
from seggen.config.segmenter import EvalParams, EvaluateParams, SegmenterParams
from seggen.config.synthesis import PlanSynthesisParams, SynthesizeParams


class ReportParams(_Section):
    out: SafePath = Path("reports")
    """Where the report goes: report.md, summary.json, miou.png."""
    results: SafePath | None = None
    """The ablation page (ablation/params.yaml: docs/results.md), built from the evaluations' scores.json: mean ± std
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


DEFAULT_SEEDS = (0, 1, 2)


class TargetedParams(_Section):
    """Targeted arms of an ablation (docs/synthesis.md#planning): per regime, the arm REGIME-REFERENCE is
    scored on the planning split (plan_synthesis.out/REGIME), the regime's MaskSyn / ImgSyn budget is spent by
    that plan (synthesize.out-targeted/REGIME), and REGIME-targeted-sSEED trains on it."""

    regimes: list[str] = Field(default_factory=list)
    """The regimes that get targeted arms ([]: none)."""
    reference: str = "baseline-s0"
    """GROUP-sSEED: the arm of each regime whose segmenter the plan scores (with filter.scorer: plan, also filters)."""
    group: str = "both"
    """The group whose segmenter keys the targeted arms use (the blind arm to compare them with)."""
    synthesize: dict[str, Any] = Field(default_factory=dict)
    """Dotted `synthesize` keys of the targeted synthesis over the regime's, e.g. {filter.pixel: true}."""
    segmenter: dict[str, Any] = Field(default_factory=dict)
    """`segmenter` keys of the targeted arms over their group's, e.g. {paste_real: undrawable}."""
    drawability: bool = False
    """Each plan also scores its reference on the regime's blind MaskSyn and ImgSyn sets (synthesize.out/REGIME):
    class weight = weakness x drawability, undrawn classes' synthetic pixels ignored (plan_synthesis.drawability)
    """
    round2: list[str] = Field(default_factory=list)
    """The regimes whose closed loop runs a second round ([]: none). Round 2 scores round 1's arm
    (REGIME-targeted-sSEED, the first of `seeds`) on the planning split against round 1's plan: if it raised the
    split's mIoU, a second budget goes where it is still weakest (plan_synthesis.out/REGIME-r2,
    synthesize.out-targeted/REGIME-r2); if not, the loop ends and that plan generates nothing.
    REGIME-targeted-r2-sSEED trains on both rounds' data
    """


class RoundParams(_Section):
    after: str
    """The arm this round plans from: an arm of `arms` (the loop's first round) or an earlier round."""


class LoopParams(_Section):
    """The pipeline's closed loop (docs/synthesis.md#rounds). Round ROUND scores the arm before it on the planning
    split (plan_synthesis's keys: loop.out/ROUND/plan), spends the MaskSyn / ImgSyn budget by that plan
    (synthesize's keys and loop.synthesize: loop.out/ROUND/masksyn, imgsyn), and trains arm ROUND (arms.<loop.arm>'s
    keys) on the real data and the data of every round up to it; evaluated like the arms. A round whose arm does
    not raise the planning split's mIoU over the arm it planned from ends the loop: the next round's plan says
    why and generates nothing."""

    rounds: dict[str, RoundParams] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}}
    )
    """Round name -> the arm it plans from, in order, e.g. {r1: {after: baseline}, r2: {after: r1}} ({}: no loop).
    Each round is its own DVC stages (plan_round, synthesize_round, train_round, evaluate_round @ROUND). The
    ablation, which runs its own loop (ablation.targeted), has none of them
    """
    arm: str = "seggen"
    """The arm of `arms` whose segmenter keys the rounds' arms train with (on their rounds' data instead)."""
    synthesize: dict[str, Any] = Field(default_factory=dict)
    """Dotted `synthesize` keys of the rounds' synthesis over the pipeline's, e.g. {filter.pixel: true,
    filter.scorer: plan} (filter with the segmenter the round planned from)
    """
    out: SafePath = Path("data/loop")
    """Each round's plan and datasets: loop.out/ROUND/plan, loop.out/ROUND/masksyn, loop.out/ROUND/imgsyn."""


class AblationParams(_Section):
    """The arms of an ablation, generated (Params._ablation_arms): every regime x group x seed."""

    groups: dict[str, dict[str, Any]] = Field(json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}})
    """Group name -> `segmenter` keys, e.g. both: {strategy: augment}."""
    seeds: tuple[StrictInt, ...] = Field(DEFAULT_SEEDS, min_length=1)
    """segmenter.seed of each copy of a group."""
    variant_group: str = "both"
    """The group whose segmenter keys the arms of every variant (Params.variants) use."""
    targeted: TargetedParams = TargetedParams()
    """Targeted arms: REGIME-targeted-sSEED, on synthetic data planned from REGIME's reference arm (and
    REGIME-targeted-r2-sSEED for a second round)."""


class Params(_Section):
    seed: StrictInt = Field(0, ge=0, lt=2**32)
    """The global seed: the benchmark's rendering, the real subset draws, and every stage whose own seed is not set."""
    data: DataParams = DataParams()
    """The training and evaluation dataset."""
    cache: SafePath = Path("data/cache")
    """The generators' training inputs, cached once for every process and run (uint8 pixels, VAE
    latents, frozen text encoders' outputs), by content key."""
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
    plan_synthesis: PlanSynthesisParams = PlanSynthesisParams()
    """Where the generation budget should go: the reference segmenter's weak classes on a tuning split."""
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
    `segmenter` keys overriding that section; its model goes to arms_root/ARM
    """
    arms_root: SafePath = Path("models/segmenter")
    """Where each arm's segmenter goes (arms_root/ARM): the ablation's arms have their own (ablation/params.yaml)."""
    regimes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": _ARM_NAME}}
    )
    """Data regimes of an ablation (ablation/params.yaml): each is a set of `synthesize` keys overriding that section
    (e.g. real_subset for the low-data regime); its datasets go to synthesize.out/REGIME
    """
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": _VARIANT_NAME}}
    )
    """Other generator setups of an ablation (ablation/params.yaml), each a set of dotted keys of `prior`,
    `mask2img` and `synthesize` over these params; their corpus, prior, Mask2Img and synthetic data go beside the
    main ones with -NAME appended (Params.variant), and their arms are REGIME-NAME-sSEED, trained like
    ablation.variant_group on that data
    """
    loop: LoopParams = LoopParams()
    """The closed loop: rounds of plan, targeted synthesis and an arm trained on it, each from the arm before."""
    ablation: AblationParams | None = None
    """An ablation (ablation/params.yaml): `arms` generated, one per regime x group x seed (and variant)"""
    evaluate: EvaluateParams = EvaluateParams()
    """The evaluate stage: which splits, which metrics."""
    report: ReportParams = ReportParams()
    """Where the report and the ablation page go."""
    tracking: TrackingParams = TrackingParams()
    """What the training stages send to MLflow while they run."""

    @model_validator(mode="before")
    @classmethod
    def _ablation_arms(cls, data: Any) -> Any:
        """With `ablation`, `arms` is generated: seggen.config.experiments.ablation_arms."""
        from seggen.config.experiments import ablation_arms, loop_arms

        return loop_arms(ablation_arms(data), cls.model_fields["arms"].default_factory())

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

        from seggen.config.experiments import names_clash, targeted_name, targeted_rounds

        if clash := names_clash(self):
            raise ValueError(clash)

        for name in self.regimes:
            if not re.fullmatch(_ARM_BODY, name):
                raise ValueError(f"regimes.{name}: regime names are lowercase letters, digits, - and _")
            self.regime(name)
        for name in self.variants:
            if not re.fullmatch(_VARIANT_BODY, name):
                raise ValueError(f"variants.{name}: variant names are lowercase letters, digits and _")
            self.variant(name)
        for name in self.ablation.targeted.regimes if self.ablation else []:
            for rnd in range(1, targeted_rounds(self.ablation.targeted, name) + 1):  # each round's params are valid
                self.pick(targeted_name(name, rnd))
        for name in self.loop.rounds if self.ablation is None else []:  # each round's plan and synthesis are valid
            self.pick(name)
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
                    and Path(syn.out) in seg.synthetic_roots
                    and seg.real_subset != syn.real_subset
                ):
                    raise ValueError(
                        f"arms.{name}.real_subset: {seg.real_subset} but its synthetic data "
                        f"({Path(syn.out)}) is regime {regime}'s, made from real_subset {syn.real_subset}"
                    )
        return self

    def pick(self, name: str) -> Params:
        """These params resolved for run `name` (`--arm`): an arm, a variant, a regime or REGIME-VARIANT."""
        from seggen.config.experiments import pick

        return pick(self, name)

    def variant(self, name: str) -> Params:
        """These params with variant `name`'s keys set, its outputs beside the main ones (-NAME)."""
        from seggen.config.experiments import variant

        return variant(self, name)

    def regime(self, name: str) -> Params:
        """These params with `synthesize` set to what regime `name` synthesizes (out: synthesize.out/NAME)."""
        from seggen.config.experiments import regime

        return regime(self, name)

    def arm(self, name: str) -> Params:
        """These params with `segmenter` set to what arm `name` trains."""
        from seggen.config.experiments import arm

        return arm(self, name)
