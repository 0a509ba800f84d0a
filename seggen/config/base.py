"""What every params section shares: strict validation, safe paths and names, the training loop's keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

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


def _safe_paths(value: object) -> Path | list[Path]:
    """One path, or a non-empty list of different paths (one error naming the bad one)."""
    one = lambda v: isinstance(v, (str, Path))  # noqa: E731
    if isinstance(value, (list, tuple)):
        if not value or not all(map(one, value)):
            raise ValueError("a path or a non-empty list of paths")
        paths = []
        for i, v in enumerate(value):
            try:
                paths.append(_safe_path(Path(v)))
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
        if len(set(paths)) < len(paths):
            raise ValueError("the same path twice (its datasets would be drawn twice as often)")
        return paths
    if not one(value):
        raise ValueError(f"a path or a list of paths, not {type(value).__name__}")
    return _safe_path(Path(value))


_PATH_SCHEMA = {"type": "string", "format": "path", "pattern": SAFE_PATH}
# a directory or several (pooled): the JSON schema of the Prefect form takes either
SafePaths = Annotated[
    Path | list[Path],
    PlainValidator(_safe_paths),
    WithJsonSchema({"anyOf": [_PATH_SCHEMA, {"type": "array", "items": _PATH_SCHEMA, "minItems": 1}]}),
]
SplitName = Annotated[str, AfterValidator(_safe_name), WithJsonSchema({"type": "string", "pattern": SAFE_NAME})]


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


class LoopParams(_Section):
    """The keys every training loop reads (generators and segmenter; each sets its own defaults where they
    differ, and adds its own)."""

    steps: StrictInt = Field(600, ge=1, le=MAX_STEPS)
    """Optimizer steps."""
    batch_size: StrictInt = Field(16, ge=1)
    """Samples per micro-step over all processes (the global batch; each process takes batch_size / processes)."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_steps: StrictInt = Field(20, ge=0, le=MAX_STEPS)
    """Linear warm-up steps."""
    grad_accum: StrictInt = Field(1, ge=1)
    """Batches accumulated per optimizer step."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """accelerate's mixed precision: no, fp16 (CUDA) or bf16."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    checkpoint_every: StrictInt = Field(200, ge=1, le=MAX_STEPS)
    """Steps between resumable checkpoints."""
    keep_checkpoints: StrictInt = Field(2, ge=1)
    """Checkpoints kept (older ones are deleted)."""
    threads: StrictInt = Field(0, ge=0)
    """Torch CPU threads; 0: torch's default."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """adamw | adamw8bit (bitsandbytes, the `8bit` extra: a quarter of AdamW's state memory)."""
    workers: StrictInt = Field(0, ge=0, le=64)
    """DataLoader processes reading the next batches while the model trains (0: the training's own)."""
    num_processes: StrictInt = Field(1, ge=1, le=1024)
    """Processes to train with (one per GPU; CPU processes without one): the stage runs under `accelerate launch`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for about a third more compute."""


_ARM_BODY, _VARIANT_BODY = r"[a-z0-9][a-z0-9_-]{0,39}", r"[a-z0-9][a-z0-9_]{0,39}"
_ARM_NAME = rf"^{_ARM_BODY}(?!\n)$"  # arms, regimes, ablation groups (the form's pattern)
_VARIANT_NAME = rf"^{_VARIANT_BODY}(?!\n)$"
