"""The trained models as MLflow Models: a `pyfunc` flavour over each saved directory, so that

    mlflow.pyfunc.load_model("models:/seggen-segmenter@champion").predict(df)

and `mlflow models serve` give what `seggen evaluate` / `seggen sample` give for the same inputs.

Inputs and outputs (the signatures logged with each model):
- segmenter: a DataFrame with a binary column `image` (encoded PNG / JPEG bytes; base64 in JSON) ->
  {"labels": N x H x W class indices 0..C-1} (+ "panoptic": segment ids and "segments" for a
  panoptic model), all images of one call at one size;
- text2mask: a DataFrame with a string column `prompt` -> {"colour_maps": N x R x R x 3, "labels":
  N x R x R} (prompt-major, `num_images_per_prompt` each);
- mask2img: a DataFrame with `colour_map` (PNG bytes) and `prompt` -> {"images": N x R x R x 3}.
Sampling settings are MLflow params (num_images_per_prompt, num_inference_steps, guidance_scale, seed).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

EVAL_BATCH = 16  # seggen evaluate's batch size
KINDS = {"segmenter": "seggen-segmenter", "text2mask": "seggen-text2mask", "mask2img": "seggen-mask2img"}


def _decode(blob) -> np.ndarray:
    """A request's image, decoded as `seggen evaluate` reads files (seggen.data.images.load_rgb)."""
    import base64

    from seggen.data.images import decode_rgb

    if isinstance(blob, str):  # base64 text where a client skipped the schema
        blob = base64.b64decode(blob)
    return decode_rgb(bytes(blob), "the request's image")


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _column(model_input, name: str) -> list:
    """The values of one input column; a cell holding a list (MLflow turns {"prompt": [a, b]} into one
    row whose cell is the list) counts as that many rows."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if name not in model_input.columns:
            raise ValueError(f"input needs a column {name!r}; got {list(model_input.columns)}")
        cells = list(model_input[name])
    elif isinstance(model_input, dict) and name in model_input:
        value = model_input[name]
        cells = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    else:
        raise ValueError(f"input must be a DataFrame with a column {name!r}")
    out = []
    for c in cells:
        out.extend(list(c) if isinstance(c, (list, tuple, np.ndarray)) else [c])
    return out


class SegmenterModel:
    def __init__(self, path: str) -> None:
        import torch

        from seggen.segmenter.model import load_model

        self.model, self.info = load_model(path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.things = set(self.info.get("things", []))
        self.task = self.info.get("task", "semantic")

    def predict(self, model_input, params=None) -> dict:
        from seggen.segmenter.evaluate import segment

        images = [_decode(b) for b in _column(model_input, "image")]
        if len({im.shape for im in images}) > 1:
            raise ValueError("all images of one call must have one size (send one request per size)")
        res = [  # in evaluate's batches: the same inputs give the same floats
            r
            for b in range(0, len(images), EVAL_BATCH)
            for r in segment(
                self.model, images[b : b + EVAL_BATCH], self.things, self.task == "panoptic", None, self.device
            )
        ]
        out = {"labels": np.stack([r["labels"] for r in res])}
        if self.task == "panoptic":
            out["panoptic"] = np.stack([r["panoptic"] for r in res])
            out["segments"] = [json.dumps(r["segments"]) for r in res]
        return out


class Text2MaskModel:
    def __init__(self, path: str) -> None:
        from seggen.generators.pipelines import SegGenText2MaskPipeline

        self.pipe = SegGenText2MaskPipeline.from_model_dir(path)

    def predict(self, model_input, params=None) -> dict:
        from seggen.generators.text2mask import sample_text2mask

        p = {**SAMPLE_DEFAULTS["text2mask"], **(params or {})}
        res = sample_text2mask(
            self.pipe,
            [str(x) for x in _column(model_input, "prompt")],
            int(p["num_images_per_prompt"]),
            int(p["seed"]),
            int(p["num_inference_steps"]),
            float(p["guidance_scale"]),
            progress=False,
        )
        return {"colour_maps": res["rgb"], "labels": res["labels"]}


class Mask2ImgModel:
    def __init__(self, path: str) -> None:
        from seggen.generators.pipelines import SegGenMask2ImgPipeline

        self.pipe = SegGenMask2ImgPipeline.from_model_dir(path)

    def predict(self, model_input, params=None) -> dict:
        from seggen.generators.mask2img import model_input as at_resolution
        from seggen.generators.mask2img import sample_mask2img

        p = {**SAMPLE_DEFAULTS["mask2img"], **(params or {})}
        maps = [at_resolution(_decode(b), self.pipe.resolution) for b in _column(model_input, "colour_map")]
        prompts = [str(x) for x in _column(model_input, "prompt")]
        images = [
            sample_mask2img(
                self.pipe,
                m,
                pr,
                int(p["num_images_per_prompt"]),
                int(p["seed"]),
                int(p["num_inference_steps"]),
                float(p["guidance_scale"]),
            )
            for m, pr in zip(maps, prompts)
        ]
        return {"images": np.concatenate(images)}


def _sample_defaults(kind: str) -> dict:
    """Sampling params of an MLflow model without its stage's values: the config's defaults (one home)."""
    from seggen.config import Params

    sample = getattr(Params(), kind).sample
    return {
        "num_images_per_prompt": 1,
        "num_inference_steps": sample.steps,
        "guidance_scale": sample.guidance_scale,
        "seed": 0,
    }


SAMPLE_DEFAULTS = {kind: _sample_defaults(kind) for kind in ("text2mask", "mask2img")}
PYTHON_MODELS = {"segmenter": SegmenterModel, "text2mask": Text2MaskModel, "mask2img": Mask2ImgModel}


def kind_of(model_dir: str | Path) -> str:
    d = Path(model_dir)
    if (d / "seggen_segmenter.json").exists():
        return "segmenter"
    return json.loads((d / "seggen_model.json").read_text())["kind"]


def _load_pyfunc(data_path: str):
    """MLflow's loader_module entry point (no pickled Python object in the MLflow Model: MLmodel names
    this module and the directory is plain files)."""
    return PYTHON_MODELS[kind_of(data_path)](data_path)


def log_pyfunc(model_dir: Path, kind: str, registered_name: str | None, tags: dict, sample: dict | None = None):
    """Log `model_dir` as an MLflow Model (a LoggedModel of the active run) and register it as a new
    version of `registered_name`. -> mlflow's ModelInfo."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.log_model(
            name=kind,
            loader_module="seggen.pipeline.mlflow_models",
            data_path=str(model_dir),
            signature=signature(kind, sample),
            input_example=input_example(kind, model_dir),
            pip_requirements=requirements(),
            registered_model_name=registered_name,
            tags=tags,
            await_registration_for=0,
        )


def signature(kind: str, sample: dict | None = None):
    """Input schema (columns), output schema (tensors), and the sampling params with the model's
    own defaults (`sample`: steps and guidance of its params)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    if kind == "segmenter":
        inputs = Schema([ColSpec("binary", "image")])
        outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "labels")])
        return ModelSignature(inputs, outputs)
    if kind == "text2mask":
        inputs = Schema([ColSpec("string", "prompt")])
        outputs = Schema(
            [
                TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "colour_maps"),
                TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "labels"),
            ]
        )
    else:
        inputs = Schema([ColSpec("binary", "colour_map"), ColSpec("string", "prompt")])
        outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "images")])
    defaults = {**SAMPLE_DEFAULTS[kind], **(sample or {})}
    params = ParamSchema([ParamSpec(k, "double" if isinstance(v, float) else "long", v) for k, v in defaults.items()])
    return ModelSignature(inputs, outputs, params)


def input_example(kind: str, model_dir: Path):
    """A one-row example from the model itself (a colour map of its palette; a caption it knows)."""
    import pandas as pd

    meta = json.loads(
        (Path(model_dir) / ("seggen_segmenter.json" if kind == "segmenter" else "seggen_model.json")).read_text()
    )
    if kind == "segmenter":
        r = max(64, int(meta.get("crop", 64)))  # (a tiny test model's 32 px crop is too small to run at)
        grey = np.full((r, r, 3), 128, np.uint8)
        return pd.DataFrame({"image": [encode_png(grey)]})
    classes = meta["classes"]
    prompt = f"a photo of {classes[0]} and {classes[-1]}"
    if kind == "text2mask":
        return pd.DataFrame({"prompt": [prompt]})
    r = int(meta["resolution"])
    palette = np.asarray(meta["palette"], np.uint8)
    cmap = np.zeros((r, r, 3), np.uint8)
    cmap[: r // 2] = palette[1]
    cmap[r // 2 :] = palette[-1]
    return pd.DataFrame({"colour_map": [encode_png(cmap)], "prompt": [prompt]})


def requirements() -> list[str]:
    """What loading needs (pinned to this environment); given, not inferred: inference would load the
    model in a subprocess for every logged version."""
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}"
        for p in ("torch", "transformers", "diffusers", "numpy", "pillow", "pandas", "safetensors", "tokenizers")
    ]
