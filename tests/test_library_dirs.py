"""Trained models load in their own libraries: the generators with diffusers' DiffusionPipeline, the
segmenter with transformers' image-segmentation pipeline, and each gives what seggen's own command gives."""

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from seggen.cli import app
from seggen.config import load_params
from seggen.generators.mask2img import model_input
from seggen.generators.pipelines import seeded
from seggen.training import seed_for


def cli(params: Path, *args: str) -> None:
    r = CliRunner().invoke(app, ["--offline", "-p", str(params), *args])
    assert r.exit_code == 0, r.output


HOUSE = ("--prompt", "a house", "--n", "2", "--out")


def pngs(d: Path, prefix: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(f)) for f in sorted(d.glob(f"{prefix}_*.png"))])


def test_text2mask_is_a_diffusers_pipeline(tiny_gens, tmp_path):
    from diffusers import DiffusionPipeline

    from seggen.generators.pipelines import SegGenText2MaskPipeline

    model = tiny_gens / "t2m" / "model"
    cli(
        tiny_gens / "params.yaml",
        "sample",
        "text2mask",
        "--prompt",
        "a car on a road",
        "--n",
        "3",
        "--out",
        str(tmp_path / "s"),
    )
    pipe = DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
    assert type(pipe).__name__ == "SegGenText2MaskPipeline"
    # `seggen sample` seeds mask k of a prompt with seed_for(seed, "text2mask", "sample", prompt, k)
    seed = load_params(tiny_gens / "params.yaml").seed
    gens = lambda: seeded(seed_for(seed, "text2mask", "sample", "a car on a road", k) for k in range(3))  # noqa: E731
    out = pipe(
        prompt="a car on a road", num_images_per_prompt=3, num_inference_steps=3, guidance_scale=2.0, generator=gens()
    )
    assert all(isinstance(im, Image.Image) for im in out.images)  # PIL images, as diffusers' pipelines return
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in out.images]), pngs(tmp_path / "s", "mask"))
    np.testing.assert_array_equal(out.labels, pngs(tmp_path / "s", "label"))
    # without remote code: the class from the package; output_type "np" as diffusers' (float in [0, 1])
    again = SegGenText2MaskPipeline.from_pretrained(model)
    arr = again(
        prompt=["a car on a road"],
        num_images_per_prompt=3,
        num_inference_steps=3,
        guidance_scale=2.0,
        generator=gens(),
        output_type="np",
    ).images
    assert arr.dtype == np.float32 and arr.max() <= 1.0
    np.testing.assert_array_equal(np.round(arr * 255).astype(np.uint8), pngs(tmp_path / "s", "mask"))


def test_mask2img_is_a_diffusers_pipeline(tiny_gens, small_benchmark, tmp_path):
    from diffusers import DiffusionPipeline

    model = tiny_gens / "m2i" / "model"
    mask = next((small_benchmark / "annotations" / "training").glob("*.png"))
    cli(tiny_gens / "params.yaml", "sample", "mask2img", "--mask", str(mask), "--labels", *HOUSE, str(tmp_path / "s"))
    pipe = DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
    assert type(pipe).__name__ == "SegGenMask2ImgPipeline"
    cmap = pipe.palette[np.asarray(Image.open(mask))]
    # `seggen sample mask2img` seeds image i with seed_for(seed, "mask2img", "sample", the map's content, prompt, i)
    key = hashlib.sha256(model_input(cmap, pipe.resolution).tobytes()).hexdigest()[:16]
    seed = load_params(tiny_gens / "params.yaml").seed
    gens = seeded(seed_for(seed, "mask2img", "sample", key, "a house", i) for i in range(2))
    out = pipe(
        image=Image.fromarray(cmap), prompt="a house", num_images_per_prompt=2, num_inference_steps=3, generator=gens
    )
    images = np.stack([np.asarray(im) for im in out.images])
    np.testing.assert_array_equal(images, pngs(tmp_path / "s", "image"))
    # the noise follows the map's content, not the file it was read from
    moved = tmp_path / "elsewhere.png"
    moved.write_bytes(mask.read_bytes())
    cli(tiny_gens / "params.yaml", "sample", "mask2img", "--mask", str(moved), "--labels", *HOUSE, str(tmp_path / "t"))
    np.testing.assert_array_equal(pngs(tmp_path / "t", "image"), images)


def test_model_index_names_loadable_parts(tiny_gens):
    import json

    for kind, cls in (("t2m", "SegGenText2MaskPipeline"), ("m2i", "SegGenMask2ImgPipeline")):
        d = tiny_gens / kind / "model"
        index = json.loads((d / "model_index.json").read_text())
        assert index["_class_name"] == ["seggen_pipeline", cls]
        for name, entry in index.items():
            if isinstance(entry, list) and name != "_class_name" and entry[0] is not None:
                assert (d / name).is_dir(), name
