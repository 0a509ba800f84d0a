"""The GPU check (benchmarks/gpu_check.py) at tiny sizes, on whatever device this machine has: every part
runs the same stage functions as on a GPU, with MLflow, Prefect and DVC hidden, and its report is
complete. The real sizes run on a GPU (`make gpu-check`, docs/benchmarks.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_tiny_gpu_check_runs_every_part_and_reports_it(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--out", str(out), "--work", str(tmp_path / "w")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["text2mask", "mask2img", "synthesis", "sdxl", "mask2former"]
    assert all(p["ok"] for p in parts.values()), {k: p.get("error") for k, p in parts.items()}
    for name in ("text2mask", "mask2img", "mask2former"):
        p = parts[name]
        assert p["steps"] == 3 and p["loss_finite"] and math.isfinite(p["final_loss"]), name
        assert p["step_per_s"] > 0 and p["samples_per_s"] == p["step_per_s"] * p["batch"], name
        assert 0.05 < p["peak_host_rss_gib"] < 64, name  # GiB: a unit slip would leave this range
    assert parts["text2mask"]["ema"] and parts["text2mask"]["mixed_precision"] == "bf16"  # the real profile's
    # the models are the published structures: an SD-1.5 UNet beside a CLIP text tower, SDXL's two encoders
    assert set(parts["text2mask"]["parameters"]) == {"unet", "vae", "text_encoder"}
    assert set(parts["sdxl"]["parameters"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert parts["sdxl"]["steps"] == 1 and parts["sdxl"]["resolution"] == 128 and parts["sdxl"]["batch"] == 1
    syn = parts["synthesis"]
    for s in ("imgsyn", "masksyn"):
        assert syn[f"{s}_images"] == 8 and syn[f"{s}_ours_images_per_s"] > 0 and syn[f"{s}_stock_images_per_s"] > 0
        assert syn[f"{s}_ratio"] == syn[f"{s}_ours_images_per_s"] / syn[f"{s}_stock_images_per_s"]
    assert parts["mask2former"]["eval_images_per_s"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "| Text2Mask (SD-1.5 UNet fine-tune) |" in md and "| masksyn |" in md and "Failures: none." in md
    assert "=== gpu_check [5/5] mask2former" in (out / "gpu_check.log").read_text()


def test_a_failing_part_is_one_line_and_the_others_still_run(tmp_path):
    """A part that cannot run (synthesis without its generators) is reported, not fatal; the exit code says so."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--parts", "synthesis,sdxl", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert parts["synthesis"] == {"ok": False, "error": "not run: needs text2mask and mask2img", "seconds": 0.0}
    assert parts["sdxl"]["ok"]
    assert "Failures: synthesis: not run: needs text2mask and mask2img" in (out / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the real check is `make gpu-check` itself")
def test_the_real_check_refuses_without_a_gpu_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error: the real-size check needs a CUDA GPU")
    assert not (tmp_path / "gpu_check.json").exists()


def test_the_real_architectures_are_the_published_models():
    """Built on the meta device (no memory): the parameter counts of the published checkpoints, and a
    forward pass of each conditioning path at its real shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, SwinConfig, SwinModel

    from benchmarks import gpu_models as g
    from seggen.generators.mask2img import controlnet_from_unet

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        sd = UNet2DConditionModel(**g.SD15_UNET)
        xl = UNet2DConditionModel(**g.SDXL_UNET)
        controlnet = controlnet_from_unet(sd, (16, 32, 96, 256))  # the real profiles' conditioning embedding
        assert count(sd) == 859_520_964 and count(xl) == 2_567_463_684
        assert count(AutoencoderKL(**g.VAE)) == 83_653_863
        text = dict(vocab_size=49408, max_position_embeddings=77)
        assert count(CLIPTextModel(CLIPTextConfig(**text, **g.CLIP_L))) == 123_060_480
        assert count(CLIPTextModelWithProjection(CLIPTextConfig(**text, **g.CLIP_BIGG))) == 694_659_840
        assert count(SwinModel(SwinConfig(**g.SWIN_T))) == 27_519_354
        x, t = torch.zeros(2, 4, 64, 64), torch.tensor([1, 2])
        down, mid = controlnet(
            x,
            t,
            encoder_hidden_states=torch.zeros(2, 77, 768),
            controlnet_cond=torch.zeros(2, 3, 512, 512),
            return_dict=False,
        )
        y = sd(x, t, torch.zeros(2, 77, 768), down_block_additional_residuals=down, mid_block_additional_residual=mid)
        assert y.sample.shape == x.shape
        added = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}  # pooled bigG + size ids
        z = torch.zeros(1, 4, 128, 128)
        assert xl(z, t[:1], torch.zeros(1, 77, 2048), added_cond_kwargs=added).sample.shape == z.shape
