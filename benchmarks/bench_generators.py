"""Generator quality and throughput on the bundled benchmark, for the models of params.yaml.

Run after `seggen caption && seggen train_text2mask && seggen train_mask2img` (the DVC stages):
    python -m benchmarks.bench_generators
Writes the `generators` section of docs/benchmarks.md and docs/img/generators_*.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import measured_row, update_section
from seggen import io as sio
from seggen.config import load_params
from seggen.generators.quality import mask2img_alignment, text2mask_quality

DOCS = Path(__file__).resolve().parents[1] / "docs"


def train_rate(model_dir: Path) -> tuple[float, float]:
    info = json.loads((model_dir.parent / "train_summary.json").read_text())
    return info["steps_this_run"] / info["seconds_this_run"], info["seconds_this_run"]


def main() -> None:
    from shutil import copyfile

    import torch

    p = load_params()
    t2m_dir, m2i_dir = Path(p.text2mask.out) / "model", Path(p.mask2img.out) / "model"
    t2m = text2mask_quality(p, t2m_dir)
    m2i = mask2img_alignment(p, m2i_dir)
    pal, real, gen = m2i.pop("examples")
    sio.save_grid(
        [np.concatenate([a, b, c], 1) for a, b, c in zip(pal, real, gen)], DOCS / "img" / "generators_mask2img.png"
    )

    copyfile(Path(p.text2mask.out) / "samples.png", DOCS / "img" / "generators_text2mask.png")
    t2m_rate, t2m_s = train_rate(t2m_dir)
    m2i_rate, m2i_s = train_rate(m2i_dir)
    tc, mc = p.text2mask, p.mask2img
    body = f"""## Generators

Default params.yaml:
Text2Mask {tc.resolution} px, UNet {list(tc.unet.block_out_channels)}, {tc.train.steps} steps at batch
{tc.train.batch_size}; Mask2Img {mc.resolution} px, ControlNet on UNet {list(mc.unet.block_out_channels)},
{mc.train.steps} steps at batch {mc.train.batch_size}; sampling DPM-Solver++ {tc.sample.steps} steps, guidance
{tc.sample.guidance_scale} / {mc.sample.guidance_scale}, batch {tc.sample.batch_size}.
Held-out prompts and masks: the first 64 of the `validation` split.

| measure | value | target |
| --- | ---: | ---: |
| Text2Mask training | {t2m_rate:.2f} it/s ({t2m_s / 60:.1f} min) | |
| Mask2Img training | {m2i_rate:.2f} it/s ({m2i_s / 60:.1f} min) | |
| both generators, total training time | {(t2m_s + m2i_s) / 60:.1f} min | <= 10 min |
| Text2Mask sampling | {t2m["sample_images_per_s"]:.1f} images/s | |
| Mask2Img sampling | {m2i["sample_images_per_s"]:.1f} images/s | |
| Text2Mask: pixels decoded to a class (not ignore) | {t2m["valid_class_rate"]:.3f} | |
| Text2Mask: TV distance of class frequencies vs real | {t2m["tv_distance"]:.3f} | <= 0.15 |
| Text2Mask: prompt consistency (recall of named classes) | {t2m["prompt_recall"]:.3f} | >= 0.8 |
| Text2Mask: precision (classes present that the prompt names) | {t2m["prompt_precision"]:.3f} | |
| probe segmenter mIoU on real val images | {m2i["probe_miou_real_val"]:.1f} | |
| probe segmenter mIoU on Mask2Img images vs their masks | {m2i["probe_miou_generated"]:.1f} | |
| Mask2Img alignment ratio | {m2i["alignment_ratio"]:.2f} | >= 0.70 |
{measured_row("make bench-generators", 3, f"; torch {torch.__version__}, {torch.get_num_threads()} threads")}

Samples: [Text2Mask](img/generators_text2mask.png) (real colour map | generated, same caption),
[Mask2Img](img/generators_mask2img.png) (colour map | real image | generated).
"""
    update_section("generators", body)
    json.dump({"text2mask": t2m, "mask2img": m2i}, sys.stdout, indent=2, default=float)
    print()


if __name__ == "__main__":
    main()
