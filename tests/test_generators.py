"""Text2Mask and Mask2Img: train, checkpoint, resume after a kill, load with plain diffusers, sample.

Tiny configs (16 px, two UNet levels, a few steps) keep this to seconds; quality is measured by
`benchmarks/bench_generators.py` on the default configs, not here.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_UNET, tiny_params  # noqa: F401
from seggen.config import load_params
from seggen.errors import DataError


def weights(model_dir: Path, sub: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next((model_dir / sub).glob("*.safetensors"))))


@pytest.fixture(scope="module")
def trained(small_benchmark, tmp_path_factory):
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.text2mask import train_text2mask

    tmp = tmp_path_factory.mktemp("gen")
    p = load_params(tiny_params(tmp, small_benchmark))
    return {
        "tmp": tmp,
        "params": p,
        "t2m": train_text2mask(p, progress=False),
        "m2i": train_mask2img(p, progress=False),
    }


def test_models_load_with_plain_diffusers_and_transformers(trained):
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(trained["t2m"] / "unet")
    assert unet.config.in_channels == 3 and unet.config.sample_size == 16
    assert CLIPTextModel.from_pretrained(trained["t2m"] / "text_encoder").config.hidden_size == 16
    tok = AutoTokenizer.from_pretrained(trained["t2m"] / "tokenizer")
    assert tok("two cars on a road").input_ids[0] == tok.bos_token_id
    assert ControlNetModel.from_pretrained(trained["m2i"] / "controlnet").config.conditioning_channels == 3
    UNet2DConditionModel.from_pretrained(trained["m2i"] / "unet")
    for d in (trained["t2m"], trained["m2i"]):
        assert not list(d.rglob("*.bin")) and not list(d.rglob("*.pt"))  # safetensors only
    assert (trained["t2m"].parent / "samples.png").exists() and (trained["m2i"].parent / "samples.png").exists()


def test_text2mask_sampling_is_deterministic_and_batch_independent(trained):
    from seggen.generators.text2mask import sample_text2mask

    prompts = ["two cars on a road, under the sky", "a house on the left, on grass, under the sky"]
    a = sample_text2mask(trained["t2m"], prompts, n_per_prompt=3, seed=1, steps=3, batch_size=6, progress=False)
    b = sample_text2mask(trained["t2m"], prompts, n_per_prompt=3, seed=1, steps=3, batch_size=2, progress=False)
    c = sample_text2mask(trained["t2m"], prompts, n_per_prompt=3, seed=2, steps=3, batch_size=6, progress=False)
    assert a["rgb"].shape == (6, 16, 16, 3)
    assert np.array_equal(a["rgb"], b["rgb"]) and not np.array_equal(a["rgb"], c["rgb"])
    assert a["labels"].max() <= 10  # decoded to the dataset's labels


def test_mask2img_sampling(trained, small_benchmark):
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    pipe = SegGenMask2ImgPipeline.from_model_dir(trained["m2i"])
    cmaps = np.zeros((2, 16, 16, 3), np.uint8)
    out1 = pipe(cmaps, ["a car", "a house"], num_inference_steps=3, generator=seeded([1, 2]), output_type="uint8")
    out2 = pipe(cmaps[:1], ["a car"], num_inference_steps=3, generator=seeded([1]), output_type="uint8")
    assert out1.images.shape == (2, 16, 16, 3) and out1.images.dtype == np.uint8
    assert np.array_equal(out1.images[0], out2.images[0])  # a sample's noise is its own generator's, whatever the batch
    with pytest.raises(ValueError, match="1 generators for 2 samples"):
        pipe(cmaps, ["a car", "a house"], num_inference_steps=3, generator=seeded([1, 2])[:1])


def test_cli_sample_commands(trained, small_benchmark):
    tmp, params = trained["tmp"], trained["tmp"] / "params.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "--params",
            str(params),
            "sample",
            "text2mask",
            "--prompt",
            "two cars on a road",
            "--n",
            "3",
            "--out",
            str(tmp / "s1"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert len(list((tmp / "s1").glob("mask_*.png"))) == 3 and (tmp / "s1/grid.png").exists()
    label = sorted((small_benchmark / "annotations/training").iterdir())[0]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "--params",
            str(params),
            "sample",
            "mask2img",
            "--mask",
            str(label),
            "--labels",
            "--prompt",
            "a house",
            "--n",
            "2",
            "--out",
            str(tmp / "s2"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert len(list((tmp / "s2").glob("image_*.png"))) == 2

    # img2img from the mask's own image; bad --strength / --image: one error line, exit 2, nothing written
    photo = small_benchmark / "images/training" / f"{label.stem}.jpg"
    base = [sys.executable, "-m", "seggen.cli", "--params", str(params), "sample", "mask2img", "--mask", str(label)]
    base += ["--labels", "--prompt", "a house", "--n", "2"]
    r = subprocess.run(
        [*base, "--out", str(tmp / "s3"), "--image", str(photo), "--strength", "0.5"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    drawn = [np.asarray(Image.open(tmp / d / "image_0000.png")) for d in ("s2", "s3")]
    assert drawn[0].shape == drawn[1].shape and not np.array_equal(*drawn)
    for extra, says in (
        (["--image", str(photo), "--strength", "0"], "--strength 0.0: must be in (0, 1]"),
        (["--image", str(photo), "--strength", "0.01"], "--strength 0.01: no step of"),
        (["--image", str(tmp / "missing.jpg")], "missing.jpg"),
        (["--strength", "0.5"], "--strength: only with --image"),
    ):
        r = subprocess.run([*base, "--out", str(tmp / "s4"), *extra], capture_output=True, text=True)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
        assert not (tmp / "s4").exists()


def test_wrong_model_type_is_an_error(trained):
    from seggen.generators.pipelines import SegGenMask2ImgPipeline

    with pytest.raises(DataError, match="is a text2mask model, expected mask2img"):
        SegGenMask2ImgPipeline.from_model_dir(trained["t2m"])


def test_checkpoints_of_other_params_or_code_are_set_aside_and_more_steps_resume(small_benchmark, tmp_path, caplog):
    from seggen.codegraph import code_fingerprint
    from seggen.generators.text2mask import train_text2mask

    p = load_params(tiny_params(tmp_path, small_benchmark, steps=4))
    train_text2mask(p, progress=False)
    ck = tmp_path / "t2m" / "checkpoints"
    assert (ck / "step_0000004").exists()
    # more steps: resumes from step 4
    more = p.model_copy(
        update={
            "text2mask": p.text2mask.model_copy(update={"train": p.text2mask.train.model_copy(update={"steps": 6})})
        }
    )
    with caplog.at_level("INFO"):
        train_text2mask(more, progress=False)
    assert "resuming text2mask" in caplog.text and (ck / "step_0000006").exists()
    # another prediction type: old checkpoints moved aside, training starts over
    other = more.model_copy(update={"text2mask": more.text2mask.model_copy(update={"prediction_type": "epsilon"})})
    caplog.clear()
    with caplog.at_level("INFO"):
        train_text2mask(other, progress=False)
    assert "starting over" in caplog.text and (tmp_path / "t2m" / "checkpoints.stale" / "step_0000006").exists()
    # the same params, other code (what the checkpoint records of the stage's code files): never resumed,
    # even when finished -- DVC re-ran the stage because its code changed
    state = ck / "step_0000006" / "trainer_state.json"
    assert json.loads(state.read_text())["code"] == code_fingerprint("train_text2mask")
    state.write_text(json.dumps({**json.loads(state.read_text()), "code": "0" * 16}))
    caplog.clear()
    with caplog.at_level("INFO"):
        train_text2mask(other, progress=False)
    assert "trained with other code" in caplog.text and "resuming" not in caplog.text


def test_a_damaged_checkpoint_is_set_aside_and_resume_uses_the_one_before(small_benchmark, tmp_path, caplog):
    """A truncated weight file in the newest checkpoint: named, moved aside, and training resumes from
    the previous checkpoint -- to exactly the weights of an uninterrupted run."""
    from seggen.generators.text2mask import train_text2mask

    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    ref = load_params(tiny_params(tmp_path / "ref", small_benchmark, steps=6))
    train_text2mask(ref, progress=False)
    p = load_params(tiny_params(tmp_path / "run", small_benchmark, steps=4))
    train_text2mask(p, progress=False)
    ck = tmp_path / "run" / "t2m" / "checkpoints"
    bad = ck / "step_0000004" / "unet" / "diffusion_pytorch_model.safetensors"
    bad.write_bytes(bad.read_bytes()[:1000])
    more = load_params(tiny_params(tmp_path / "run", small_benchmark, steps=6))
    with caplog.at_level("INFO"):
        train_text2mask(more, progress=False)
    assert str(bad) in caplog.text and "truncated" in caplog.text and "resuming text2mask" in caplog.text
    assert (ck / "step_0000004.corrupt").is_dir() and "(step 2)" in caplog.text
    a, b = weights(tmp_path / "ref" / "t2m" / "model", "unet"), weights(tmp_path / "run" / "t2m" / "model", "unet")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_files_have_the_usual_permissions(trained):
    """safetensors writes 0600; every output gets what the umask gives other files (0644 here)."""
    umask = os.umask(0)
    os.umask(umask)
    out = trained["t2m"].parent
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files) and any("checkpoints" in f.parts for f in files)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f


def test_missing_captions_is_an_error(small_benchmark, tmp_path):
    from seggen.generators.text2mask import train_text2mask

    p = load_params(tiny_params(tmp_path, small_benchmark))
    (tmp_path / "captions.jsonl").unlink()
    with pytest.raises(DataError, match="no captions"):
        train_text2mask(p, progress=False)


@pytest.mark.parametrize("kind", ["text2mask", "mask2img"])
def test_kill_and_resume_reaches_the_same_weights(small_benchmark, tmp_path, kind):
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.text2mask import train_text2mask

    steps, every = 60, 5
    # uninterrupted reference run
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    p = load_params(tiny_params(ref_dir, small_benchmark, steps=steps, **{f"{kind}.train.checkpoint_every": every}))
    ref = (train_text2mask if kind == "text2mask" else train_mask2img)(p, progress=False)
    # killed run: SIGKILL once the first checkpoint exists, then run the same command again
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    params = tiny_params(run_dir, small_benchmark, steps=steps, **{f"{kind}.train.checkpoint_every": every})
    out = run_dir / ("t2m" if kind == "text2mask" else "m2i")
    cmd = [sys.executable, "-m", "seggen.cli", "--params", str(params), f"train_{kind}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints/step_0000010").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sub = "unet" if kind == "text2mask" else "controlnet"
    a, b = weights(ref, sub), weights(out / "model", sub)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert "resuming" in r.stderr  # it really did resume rather than start over
    # the curve and its final loss are the whole run's, as an uninterrupted run writes them
    assert (out.parent / out.name / "train_log.json").read_bytes() == (ref.parent / "train_log.json").read_bytes()
    summary = [json.loads((d / "train_summary.json").read_text()) for d in (out, ref.parent)]
    assert summary[0]["final_loss"] == summary[1]["final_loss"] and summary[0]["steps_this_run"] < steps


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory, small_benchmark):
    """A random-init Stable-Diffusion-layout directory (vae, unet, text_encoder, tokenizer, scheduler)."""
    from helpers import tiny_stable_diffusion

    return tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"), small_benchmark)


def test_pretrained_latent_path(tiny_sd, small_benchmark, tmp_path):
    """`pretrained` loads VAE, UNet, text encoder and tokenizer with from_pretrained and trains in latent space."""
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.pipelines import SegGenMask2ImgPipeline
    from seggen.generators.text2mask import sample_text2mask, train_text2mask

    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=2,
            **{
                "text2mask.pretrained": str(tiny_sd),
                "mask2img.pretrained": str(tiny_sd),
                "mask2img.controlnet": {"conditioning_embedding_out_channels": [8, 8]},  # 2x downsampling VAE
            },
        )
    )
    t2m = train_text2mask(p, progress=False)
    assert (t2m / "vae").is_dir()
    res = sample_text2mask(t2m, ["a car"], n_per_prompt=2, steps=2, progress=False)
    assert res["rgb"].shape == (2, 16, 16, 3)
    m2i = train_mask2img(p, progress=False)
    from diffusers import UNet2DConditionModel

    # the base UNet is frozen: saved unchanged
    base = UNet2DConditionModel.from_pretrained(tiny_sd / "unet").state_dict()
    saved = weights(m2i, "unet")
    assert all(torch.equal(base[k], saved[k]) for k in base)
    out = SegGenMask2ImgPipeline.from_model_dir(m2i)(
        np.zeros((1, 16, 16, 3), np.uint8), "a car", 1, 2, output_type="np"
    )
    assert out.images.shape == (1, 16, 16, 3)
    stock_pipelines_generate(t2m, m2i, "StableDiffusionPipeline", "StableDiffusionControlNetPipeline")


def stock_pipelines_generate(t2m, m2i, t2m_class: str, m2i_class: str) -> None:
    """Latent models are stock diffusers pipeline directories: DiffusionPipeline loads and samples them."""
    from diffusers import DiffusionPipeline
    from PIL import Image

    pipe = DiffusionPipeline.from_pretrained(t2m)
    assert type(pipe).__name__ == t2m_class
    img = pipe(prompt="a car", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()
    pipe = DiffusionPipeline.from_pretrained(m2i)
    assert type(pipe).__name__ == m2i_class
    cmap = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    img = pipe(prompt="a car", image=cmap, num_inference_steps=2, height=16, width=16, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


def test_instance_aware_text2mask_and_grad_accum(small_benchmark, tmp_path):
    """text2mask.instances trains on boundary-coded maps and decodes samples to instances;
    grad_accum > 1 runs through accelerate's accumulation."""
    from seggen.generators.pipelines import SegGenText2MaskPipeline
    from seggen.generators.text2mask import sample_text2mask, train_text2mask

    p = load_params(
        tiny_params(
            tmp_path, small_benchmark, steps=2, **{"text2mask.instances": True, "text2mask.train.grad_accum": 2}
        )
    )
    model = train_text2mask(p, progress=False)
    s = SegGenText2MaskPipeline.from_model_dir(model)
    assert s.palette.boundary and len(s.palette.colors) == 12  # ignore + 10 classes + boundary
    res = sample_text2mask(model, ["two cars on a road"], n_per_prompt=2, steps=2, progress=False)
    assert res["instances"].shape == (2, 16, 16) and res["labels"].max() <= 10
    # the training maps really carried boundaries between touching same-class instances
    from seggen.generators.diffusion import load_generator_data

    data = load_generator_data(p, 16, instances=True)
    boundary = np.asarray(data.palette.colors[data.palette.boundary_index], np.float32) / 127.5 - 1
    assert (data.colour_maps[: len(data)].permute(0, 2, 3, 1).numpy() == boundary).all(-1).any()


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_sd, tmp_path_factory):
    """SDXL layout: two text encoders (the second with a projection), a UNet with text_time added conditioning."""
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    d = tmp_path_factory.mktemp("tiny_sdxl")
    for sub in ("vae", "scheduler", "text_encoder", "tokenizer"):
        shutil.copytree(tiny_sd / sub, d / sub)
    shutil.copytree(tiny_sd / "tokenizer", d / "tokenizer_2")
    torch.manual_seed(1)
    CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=128,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=40,
            projection_dim=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    ).save_pretrained(d / "text_encoder_2")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    ).save_pretrained(d / "unet")
    return d


def test_pretrained_sdxl_path(tiny_sdxl, small_benchmark, tmp_path):
    """An SDXL repo: both text encoders, pooled text embeds and time ids reach the UNet and the ControlNet."""
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.pipelines import SegGenMask2ImgPipeline
    from seggen.generators.text2mask import sample_text2mask, train_text2mask

    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=2,
            **{
                "text2mask.pretrained": str(tiny_sdxl),
                "mask2img.pretrained": str(tiny_sdxl),
                "mask2img.controlnet": {"conditioning_embedding_out_channels": [8, 8]},
            },
        )
    )
    t2m = train_text2mask(p, progress=False)
    assert (t2m / "text_encoder_2").is_dir() and (t2m / "tokenizer_2").is_dir()
    assert sample_text2mask(t2m, ["a car"], n_per_prompt=2, steps=2, progress=False)["rgb"].shape == (2, 16, 16, 3)
    m2i = train_mask2img(p, progress=False)
    out = SegGenMask2ImgPipeline.from_model_dir(m2i)(
        np.zeros((1, 16, 16, 3), np.uint8), "a car", 1, 2, output_type="np"
    )
    assert out.images.shape == (1, 16, 16, 3)
    stock_pipelines_generate(t2m, m2i, "StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline")


@pytest.mark.parametrize("repo", ["tiny_sd", "tiny_sdxl"])
def test_frozen_text_encoders_run_once_into_the_disk_cache(repo, request, tmp_path):
    """A frozen encoder's outputs (SDXL: both encoders' hidden states and the pooled projection) are
    computed once into the cache and condition the UNet as the encoders do; the encoders stay on
    the CPU; other weights are another cache entry."""
    from seggen.config import TextEncoderParams
    from seggen.generators.text import TextConditioner

    path, sdxl = request.getfixturevalue(repo), repo == "tiny_sdxl"
    captions = ["a car on a road", "two people", "a tree beside a building", "a car"]
    cond = TextConditioner.build(TextEncoderParams(), captions, str(path), sdxl, 16)
    rows = cond.inputs(captions, tmp_path / "cache")
    assert len(rows) == (2 if sdxl else 1) and all(len(r) == 4 for r in rows)
    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.npy")}
    assert len(stamps) == len(rows)
    again = cond.inputs(captions, tmp_path / "cache")
    assert [r.path for r in again] == [r.path for r in rows]
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.npy")} == stamps  # not re-encoded
    idx = torch.tensor([2, 0, 2])
    ctx, added = cond([r[idx] for r in rows])
    ref_ctx, ref_added = cond([i[idx] for i in cond.tokenize(captions)])
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=1e-6)
    if sdxl:
        for k in ("text_embeds", "time_ids"):
            torch.testing.assert_close(added[k], ref_added[k], rtol=0, atol=1e-6)
    else:
        assert added is None and ref_added is None
    assert all(e.device.type == "cpu" for e in cond.encoders)
    with torch.no_grad():
        next(cond.encoders[0].parameters()).add_(1.0)
    other = cond.inputs(captions, tmp_path / "cache")
    assert other[0].path.parent != rows[0].path.parent
    in_memory = cond.inputs(captions)  # no cache: computed in memory
    torch.testing.assert_close(in_memory[0], other[0][torch.arange(4)], rtol=0, atol=1e-6)


def test_ema_and_bf16_train_checkpoint_and_resume(small_benchmark, tmp_path, caplog):
    """EMA weights are checkpointed and restored on resume; bf16 autocast runs through accelerate."""
    from seggen.generators.text2mask import train_text2mask

    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=2,
            **{
                "text2mask.train.ema": True,
                "text2mask.train.ema_decay": 0.9,
                "text2mask.train.mixed_precision": "bf16",
            },
        )
    )
    train_text2mask(p, progress=False)
    assert (tmp_path / "t2m/checkpoints/step_0000002/unet_ema").is_dir()
    longer = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=4,
            **{
                "text2mask.train.ema": True,
                "text2mask.train.ema_decay": 0.9,
                "text2mask.train.mixed_precision": "bf16",
            },
        )
    )
    with caplog.at_level("INFO"):
        model = train_text2mask(longer, progress=False)
    assert "resuming text2mask" in caplog.text
    # the saved model is the EMA: it differs from the raw weights of the last checkpoint
    raw = weights(tmp_path / "t2m/checkpoints/step_0000004", "unet")
    ema = weights(model, "unet")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    torch.testing.assert_close(ema, weights(tmp_path / "t2m/checkpoints/step_0000004", "unet_ema"))
    # and the EMA of the resumed run is the uninterrupted run's (its decay schedule continues from step 2)
    whole = tmp_path / "whole"
    whole.mkdir()
    keys = {"text2mask.train.ema": True, "text2mask.train.ema_decay": 0.9, "text2mask.train.mixed_precision": "bf16"}
    ref = train_text2mask(load_params(tiny_params(whole, small_benchmark, steps=4, **keys)), progress=False)
    torch.testing.assert_close(ema, weights(ref, "unet"), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from seggen.errors import TrainingError
    from seggen.training.checkpoint import RawStateDict, write_checkpoint

    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    opt = torch.optim.AdamW(m.parameters())
    with pytest.raises(TrainingError, match=r"weights hold NaN or inf after step 3 \(model: weight\)"):
        write_checkpoint(tmp_path / "checkpoints", 3, {"model": RawStateDict(m)}, opt, {}, 2)
    assert not (tmp_path / "checkpoints").exists()


def test_the_processes_of_a_run_draw_the_one_process_batch():
    """Samples, noise, timesteps and dropped captions of a micro-step: N processes' shares interleave
    into the one-process batch."""
    from seggen.generators.diffusion import draw_micro_batch

    x0 = torch.randn(10, 3, 4, 4)
    ids = [torch.arange(10 * 5).reshape(10, 5)]
    empty = [torch.zeros(1, 5, dtype=torch.long)]
    args = (0, "text2mask", 7, x0, ids, empty, 8, 0.5, 1000, "cpu")
    whole = draw_micro_batch(*args)
    for world in (2, 4):
        parts = [draw_micro_batch(*args, slice(r, None, world)) for r in range(world)]
        for field in ("idx", "x0", "noise", "t"):
            joined = torch.stack([getattr(parts[k % world], field)[k // world] for k in range(8)])
            assert torch.equal(joined, getattr(whole, field))
        joined = torch.stack([parts[k % world].text[0][k // world] for k in range(8)])
        assert torch.equal(joined, whole.text[0])


def test_dataloader_workers_and_the_disk_cache_change_nothing(small_benchmark, tmp_path):
    """The cached, memory-mapped pixels read through 2 DataLoader workers train the same weights as
    the training's own process; the cache is written once and reused."""
    from seggen.generators.mask2img import train_mask2img

    out = {}
    for workers in (0, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        p = load_params(tiny_params(d, small_benchmark, steps=3, **{"mask2img.train.workers": workers}))
        p = p.model_copy(update={"cache": tmp_path / "cache"})
        out[workers] = weights(train_mask2img(p, progress=False), "controlnet")
    assert out[0].keys() == out[2].keys() and all(torch.equal(out[0][k], out[2][k]) for k in out[0])
    assert len(list((tmp_path / "cache").glob("*/images.npy"))) == 1  # one dataset, one resolution: one entry


def test_img2img_matches_diffusers_controlnet_img2img(tiny_sd, small_benchmark, tmp_path):
    """init_image / strength sample as diffusers' StableDiffusionControlNetImg2ImgPipeline does: the same
    posterior draw, noise, truncated schedule and guidance give the same image (fp32, same models)."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            steps=1,
            **{
                "mask2img.pretrained": str(tiny_sd),
                "mask2img.controlnet": {"conditioning_embedding_out_channels": [8, 8]},
            },
        )
    )
    m2i = train_mask2img(p, progress=False)
    ours = SegGenMask2ImgPipeline.from_model_dir(m2i, precision="fp32")
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    cmaps = ours.palette[rng.integers(0, len(ours.palette), (2, 16, 16))]
    prompts = ["a car on a road", "a house"]
    kw = {"num_inference_steps": 10, "guidance_scale": 3.0, "output_type": "uint8"}

    got = ours(cmaps, prompts, init_image=init, strength=0.5, generator=seeded([1, 2]), **kw).images
    stock = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(m2i, safety_checker=None)
    stock.scheduler = ours.make_scheduler("dpmsolver++")
    want = stock(
        prompts,
        image=[Image.fromarray(i) for i in init],
        control_image=[Image.fromarray(c) for c in cmaps],
        strength=0.5,
        num_inference_steps=10,
        guidance_scale=3.0,
        controlnet_conditioning_scale=ours.info.get("conditioning_scale", 1.0),
        generator=seeded([1, 2]),
        output_type="np",
    ).images
    assert np.abs(got.astype(float) - np.round(want * 255)).max() <= 1

    # strength changes where sampling starts: the full schedule from the image is another image, and
    # without an init image the result is the plain sampler's, whatever the strength
    full = ours(cmaps, prompts, init_image=init, strength=1.0, generator=seeded([1, 2]), **kw).images
    plain = ours(cmaps, prompts, generator=seeded([1, 2]), **kw).images
    assert not np.array_equal(full, got)
    other = ours(cmaps, prompts, init_image=init[::-1], strength=0.5, generator=seeded([1, 2]), **kw).images
    assert not np.array_equal(other, got)  # the image it starts from shows
    # n per map: each map's init image beside it, each sample its own draw (as n calls of one sample)
    two = ours(cmaps, prompts, 2, init_image=init, strength=0.5, generator=seeded([1, 5, 2, 6]), **kw).images
    assert np.array_equal(two[[0, 2]], got)
    one = ours(cmaps[1:], prompts[1:], init_image=init[1:], strength=0.5, generator=seeded([6]), **kw).images
    assert np.array_equal(two[3], one[0])
    grey = ours(cmaps[:1], prompts[:1], init_image=init[0, ..., 0], strength=0.5, generator=seeded([1]), **kw).images
    assert grey.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="expected H x W x 3 uint8"):
        ours(cmaps[:1], prompts[:1], init_image=init[:1] / 255.0, strength=0.5, generator=seeded([1]), **kw)
    assert np.array_equal(plain, ours(cmaps, prompts, strength=0.3, generator=seeded([1, 2]), **kw).images)
    with pytest.raises(ValueError, match="strength 0.05"):
        ours(cmaps, prompts, init_image=init, strength=0.05, generator=seeded([1, 2]), **kw)
    with pytest.raises(ValueError, match="1 init images for 2 colour maps"):
        ours(cmaps, prompts, init_image=init[:1], strength=0.5, generator=seeded([1, 2]), **kw)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weighting_is_the_diffusers_scripts(prediction_type):
    """`train.snr_gamma` weighs the loss as diffusers' train_text_to_image.py does with --snr_gamma."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from seggen.generators.diffusion import MicroBatch, denoising_loss, training_target

    sched = DDPMScheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(6, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 3, 100, 400, 800, 999])
    b = MicroBatch(torch.arange(6), x0, noise, t, [])
    target = training_target(sched, x0, noise, t)
    assert torch.equal(denoising_loss(sched, pred, b, None), F.mse_loss(pred, target))
    # the script's lines, for gamma 5
    snr = compute_snr(sched, t)
    w = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        w = w / snr
    elif prediction_type == "v_prediction":
        w = w / (snr + 1)
    expected = (F.mse_loss(pred, target, reduction="none").mean(dim=[1, 2, 3]) * w).mean()
    torch.testing.assert_close(denoising_loss(sched, pred, b, 5.0), expected)
    assert not torch.isclose(expected, F.mse_loss(pred, target))
    if prediction_type != "sample":  # a zero-terminal-SNR schedule (SNR 0 at its last step): still finite
        sched = DDPMScheduler(prediction_type=prediction_type, rescale_betas_zero_snr=True)
        assert torch.isfinite(denoising_loss(sched, pred, b, 5.0))
