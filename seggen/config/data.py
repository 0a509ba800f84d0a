"""The dataset sections: the bundled benchmark and its drawn domains, real data, captions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt

from seggen.config.base import SafePath, SplitName, _Section


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
