"""The training stages on a CUDA GPU: Text2Mask (EMA on) and Mask2Img over a pretrained Stable
Diffusion directory, and Mask2Former over a Swin backbone, 3 steps each in bf16, then evaluation --
the real ADE20K profile at tiny sizes (benchmarks/gpu_check.py's params). Skipped where torch sees no
GPU; `make gpu-check` measures the same path at real sizes."""

import math

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import gpu_models, gpu_parts
from seggen.pipeline import stages
from seggen.training import observe_steps

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu")
    captions = gpu_models.prepare_data(work, tiny=True)
    gpu_models.build_sd(work / "sd15", captions, xl=False, tiny=True, device="cpu")
    gpu_models.build_backbone(work / "swin-t", tiny=True)
    return work


def _train(run) -> gpu_parts.StepClock:
    clock = gpu_parts.StepClock()
    with observe_steps(clock):
        run()
    assert len(clock.losses) == 3 and all(math.isfinite(v) for v in clock.losses)
    assert clock.peak and clock.peak > 0  # the steps ran on the GPU
    return clock


def _weights(directory) -> dict:
    return load_file(str(next(directory.glob("*.safetensors"))))


def test_text2mask_trains_on_cuda_in_bf16_with_ema(work):
    p = gpu_models.check_params(work, tiny=True)
    assert p.text2mask.train.ema and p.text2mask.train.mixed_precision == "bf16"
    _train(lambda: stages.train_text2mask(p))
    out = p.text2mask.out
    last = sorted((out / "checkpoints").glob("step_*"))[-1]
    raw, ema = _weights(last / "unet"), _weights(last / "unet_ema")
    start = _weights(work / "sd15" / "unet")
    moved = [k for k in start if not torch.equal(raw[k], start[k])]
    assert moved, "the UNet did not train"
    assert any(not torch.equal(raw[k], ema[k]) for k in moved), "the EMA copy is the raw weights"
    final = _weights(out / "model" / "unet")
    assert all(torch.equal(final[k], ema[k]) for k in ema)  # the model directory holds the EMA weights


def test_mask2img_trains_on_cuda_in_bf16(work):
    p = gpu_models.check_params(work, tiny=True)
    _train(lambda: stages.train_mask2img(p))
    assert (p.mask2img.out / "model" / "controlnet").is_dir()


def test_mask2former_trains_and_evaluates_on_cuda_in_bf16(work):
    p = gpu_models.check_params(work, tiny=True)
    assert p.segmenter.train.mixed_precision == "bf16"
    model_dir = None

    def run():
        nonlocal model_dir
        model_dir = stages.train_segmenter(p)

    _train(run)
    metrics = stages.evaluate(p, "validation", model=model_dir, out=work / "eval")
    assert 0 <= metrics["semantic"]["mIoU"] <= 100 and metrics["images_per_s"] > 0


def test_pipelines_hold_their_networks_in_the_inference_dtype(work):
    """On CUDA the UNet and ControlNet are loaded in bf16 (half the memory); the VAE decodes in fp32."""
    import numpy as np

    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    p = gpu_models.check_params(work, tiny=True)
    pipe = SegGenMask2ImgPipeline.from_model_dir(p.mask2img.out / "model", device="cuda", precision="bf16")
    assert pipe.unet.dtype == pipe.controlnet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    r = pipe.resolution
    maps = np.zeros((2, r, r, 3), np.uint8)
    out = pipe(maps, ["a room", "a street"], 1, 2, generator=seeded([0, 1]), output_type="uint8").images
    assert out.shape == (2, r, r, 3) and out.std() > 0
