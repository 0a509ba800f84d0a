"""Pydantic models for params.yaml: every stage reads its own section through these.

Unknown keys are rejected (extra="forbid") and every error names its dotted key, so a typo in
params.yaml fails fast with one line instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seggen.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchmarkParams(_Section):
    resolution: int = Field(64, ge=32, le=1024)
    num_train: int = Field(1000, ge=1)
    num_val: int = Field(200, ge=1)
    num_val_shift: int = Field(200, ge=1)
    max_things: int = Field(7, ge=2, le=30)
    jpeg_quality: int = Field(95, ge=50, le=100)
    workers: int = Field(1, ge=1, le=64)


class DataParams(_Section):
    format: Literal["benchmark", "ade20k"] = "benchmark"
    root: Path = Path("data/benchmark")
    benchmark: BenchmarkParams = BenchmarkParams()


class EvalParams(_Section):
    ignore_index: int = Field(255, ge=0, le=255)
    reduce_zero_label: bool = True


class Params(_Section):
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataParams = DataParams()
    eval: EvalParams = EvalParams()


def _format_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


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
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: value is not valid YAML ({e.__class__.__name__})") from None
    return out


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; a missing file means all defaults."""
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    elif path != DEFAULT_PARAMS:
        raise ConfigError(f"{path}: params file not found")
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value, "--set")
    try:
        return Params.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path), e)) from None
