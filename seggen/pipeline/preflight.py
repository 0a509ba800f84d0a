"""Pre-flight check of every pretrained model the params name: resolved in seconds, before any stage
computes, with one line per model that cannot be loaded.

A value is a local directory when one exists at that path, else a Hugging Face Hub id. A directory
must hold what its loader reads (config files that parse, the subfolders of a Stable Diffusion repo,
weights that are not truncated). A hub id is fine when the local Hugging Face cache holds it;
otherwise, with HF_HUB_OFFLINE set it is an error, and without it the hub is asked once, with a short
timeout and no retries (a hub that cannot be reached is reported at once, not after minutes of
retries deep inside from_pretrained).

`seggen check_models` runs it; so do the first DVC stage (`check_models`), each Prefect flow before
its first stage, and every stage for the models it is about to load.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from seggen.config import Params
from seggen.errors import ConfigError

HUB_TIMEOUT_S = 5.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    key: str  # the params key that names it, e.g. "text2mask.pretrained"
    value: str  # hub id or directory
    kind: str  # blip | clip-text | stable-diffusion | mask2former | backbone
    subfolder: str | None = None


def configured_models(params: Params, stages: tuple[str, ...] | None = None) -> list[ModelRef]:
    """Every pretrained model the params name (the arms' segmenters included), for `stages` only if given
    (caption, text2mask, mask2img, segmenter)."""
    want = set(stages or ("caption", "text2mask", "mask2img", "segmenter"))
    refs: list[ModelRef] = []
    if "caption" in want and params.caption.captioner == "blip":
        if not params.caption.model:
            raise ConfigError("caption.model: required for captioner 'blip' (a BLIP/BLIP-2 model id or directory)")
        refs.append(ModelRef("caption.model", params.caption.model, "blip"))
    te = params.text_encoder
    for gen in ("text2mask", "mask2img"):
        if gen not in want:
            continue
        cfg = getattr(params, gen)
        if te.pretrained:
            refs.append(ModelRef("text_encoder.pretrained", te.pretrained, "clip-text", te.subfolder))
        if cfg.pretrained:
            refs.append(ModelRef(f"{gen}.pretrained", cfg.pretrained, "stable-diffusion"))
    if "segmenter" in want:
        # the segmenter section, and each arm that names models of its own (the others inherit them)
        sections = [("segmenter", params.segmenter)] + [
            (f"arms.{a}", params.arm(a).segmenter)
            for a, over in params.arms.items()
            if {"pretrained", "backbone"} & set(over)
        ]
        for key, seg in sections:
            if seg.pretrained:
                refs.append(ModelRef(f"{key}.pretrained", seg.pretrained, "mask2former"))
            elif seg.backbone:
                refs.append(ModelRef(f"{key}.backbone", seg.backbone, "backbone"))
    seen, out = set(), []
    for r in refs:  # the arms repeat the segmenter's models: one entry per key and model
        if (r.key, r.value) not in seen:
            seen.add((r.key, r.value))
            out.append(r)
    return out


def _json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _needs(ref: ModelRef, root: Path) -> list[str]:
    """The config files the loader of `ref` reads, relative to the model directory."""
    if ref.kind == "stable-diffusion":
        files = ["unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
        unet = _json(root / "unet" / "config.json") or {}
        encoders = (
            ["text_encoder", "text_encoder_2"] if unet.get("addition_embed_type") == "text_time" else ["text_encoder"]
        )
        for e in encoders:
            files += [f"{e}/config.json", f"{e.replace('text_encoder', 'tokenizer')}"]
        return files
    if ref.kind == "clip-text":
        return [
            f"{ref.subfolder}/config.json" if ref.subfolder else "config.json",
            "tokenizer" if ref.subfolder else ".",
        ]
    return ["config.json"]


def check_directory(ref: ModelRef, root: Path) -> str | None:
    from seggen.training.checkpoint import tree_problem

    if not root.is_dir():
        return f"{root} is a file, not a model directory"
    for rel in _needs(ref, root):
        f = root / rel
        if not f.exists():
            return f"{f} is missing (expected a {ref.kind.replace('-', ' ')} directory)"
        if f.suffix == ".json" and _json(f) is None:
            return f"{f} is truncated or not valid JSON"
    model_type = (_json(root / "config.json") or {}).get("model_type") if ref.kind in ("blip", "mask2former") else None
    if ref.kind == "blip" and model_type not in ("blip", "blip-2"):
        return f"{root} is a {model_type!r} model, expected blip or blip-2"
    if ref.kind == "mask2former" and model_type != "mask2former":
        return f"{root} is a {model_type!r} model, expected mask2former"
    return tree_problem(root)  # weights and configs readable (a truncated safetensors is named)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_file(ref: ModelRef) -> str:
    return {
        "stable-diffusion": "unet/config.json",
        "clip-text": f"{ref.subfolder}/config.json" if ref.subfolder else "config.json",
    }.get(ref.kind, "config.json")


def check_hub(ref: ModelRef) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    if not _REPO_ID.match(ref.value):
        return f"{ref.value}: no such directory, and not a Hugging Face Hub id"
    if isinstance(try_to_load_from_cache(ref.value, _first_file(ref)), str):
        return None  # in the local cache: from_pretrained loads it without the network
    if _offline():
        return (
            f"{ref.value}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set "
            "(download it, or name a local directory)"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{ref.value}"
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers, method="GET"), timeout=HUB_TIMEOUT_S
        ) as r:
            return None if r.status == 200 else f"{ref.value}: the hub answered HTTP {r.status}"
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            return f"{ref.value}: not found on {endpoint} (or gated: set HF_TOKEN)"
        return f"{ref.value}: the hub answered HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{ref.value}: {endpoint} cannot be reached ({reason}) and the model is not in the local cache"


def check_ref(ref: ModelRef) -> str | None:
    path = Path(ref.value).expanduser()
    if path.exists():
        return check_directory(ref, path)
    return check_hub(ref)


def check_models(params: Params, stages: tuple[str, ...] | None = None) -> list[tuple[ModelRef, str | None]]:
    """(model, problem or None) for every configured model; also checks that a generator's
    prediction_type agrees with its pretrained checkpoint."""
    from seggen.generators.diffusion import resolved_prediction_type

    results, checked = [], {}
    for ref in configured_models(params, stages):
        where = (ref.value, ref.kind, ref.subfolder)
        if where not in checked:  # each model resolved once, reported under every key that names it
            checked[where] = check_ref(ref)
        problem = checked[where]
        if problem is None and ref.kind == "stable-diffusion":
            gen = ref.key.split(".")[0]
            try:
                resolved_prediction_type(getattr(params, gen), gen)
            except ConfigError as e:
                problem = str(e)
        results.append((ref, problem))
    return results


def require_models(params: Params, stages: tuple[str, ...] | None = None) -> None:
    """Raise one ConfigError naming every model that cannot be loaded (nothing is loaded here)."""
    bad = [(r, p) for r, p in check_models(params, stages) if p]
    if bad:
        raise ConfigError(
            "; ".join(f"{r.key} {p}" if p.startswith(r.value) else f"{r.key} {r.value}: {p}" for r, p in bad)
        )
