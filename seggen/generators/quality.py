"""Generator quality on held-out captions and masks.

Text2Mask: decoded masks' valid-class rate, total-variation distance between generated and real
class frequencies, prompt consistency. Mask2Img alignment: a small probe segmenter trained on real
images predicts on generated images, scored (mIoU) against the masks they were conditioned on,
next to its score on real validation images. The probe (seggen.synthesis.probe) is a plain fully-convolutional
network, a stand-in until Mask2Former is available to this stage.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seggen import training
from seggen.config import Params
from seggen.data.captions import label_caption
from seggen.data.layout import open_split
from seggen.metrics.semantic import evaluate_semantic_arrays
from seggen.progress import tqdm
from seggen.synthesis import probe
from seggen.synthesis.probe import ProbeSegmenter


def held_out(params: Params, resolution: int, split: str = "validation", n: int = 64):
    """(captions, class lists, labels at `resolution`, images at `resolution`) for the first n of `split`."""
    root = Path(params.data.root)
    ds = open_split(root, split)
    meta = ds.meta
    caps, classes, labs, imgs = [], [], [], []
    for i in range(min(n, len(ds))):
        img, lab = ds[i]
        c, k = label_caption(lab, meta)
        caps.append(c)
        classes.append(k)
        labs.append(np.asarray(Image.fromarray(lab).resize((resolution, resolution), Image.NEAREST)))
        imgs.append(np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BOX)))
    return caps, classes, np.stack(labs), np.stack(imgs), meta


def train_probe(
    params: Params, resolution: int, steps: int = 400, batch: int = 32, progress: bool = True
) -> ProbeSegmenter:
    return probe.train_probe(params.data.root, resolution, params.seed, steps, batch, progress=progress)[0]


@torch.no_grad()
def probe_miou(model: ProbeSegmenter, images: np.ndarray, labels: np.ndarray, names: list[str]) -> float:
    x = torch.stack([training.to_tensor(i) for i in images])
    pred = probe.predict(model, x).numpy() - 1  # classes 1..N -> 0..N-1
    pairs = list(zip(pred, labels))
    return evaluate_semantic_arrays(pairs, len(names), reduce_zero_label=True, class_names=names)["mIoU"]


def text2mask_quality(params: Params, model_dir: Path, n: int = 64, progress: bool = True) -> dict:
    from seggen.generators.text2mask import mask_quality, sample_text2mask

    cfg = params.text2mask
    caps, classes, labs, _, meta = held_out(params, cfg.resolution, n=n)
    t = time.perf_counter()
    res = sample_text2mask(
        model_dir, caps, 1, params.seed, cfg.sample.steps, cfg.sample.guidance_scale, cfg.sample.batch_size, progress
    )
    elapsed = time.perf_counter() - t
    q = mask_quality(res["labels"], labs, classes, meta.names, cfg.min_class_pixels)
    q["sample_images_per_s"] = len(caps) / elapsed
    return q


def mask2img_alignment(
    params: Params, model_dir: Path, n: int = 64, probe_steps: int = 400, progress: bool = True
) -> dict:
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    cfg = params.mask2img
    caps, _, labs, imgs, meta = held_out(params, cfg.resolution, n=n)
    probe = train_probe(params, cfg.resolution, steps=probe_steps, progress=progress)
    real = probe_miou(probe, imgs, labs, meta.names)
    pipe = SegGenMask2ImgPipeline.from_model_dir(model_dir)
    palette = meta.palette().colors
    pipe.check_palette(palette, str(params.data.root))
    gen = []
    t = time.perf_counter()
    bs = cfg.sample.batch_size
    for b in tqdm(range(0, n, bs), desc="sample mask2img", disable=not progress, dynamic_ncols=True):
        seeds = [training.seed_for(params.seed, "mask2img", "quality", i) for i in range(b, min(n, b + bs))]
        maps, prompts = palette[labs[b : b + bs]], caps[b : b + bs]
        s = cfg.sample
        gen.append(pipe(maps, prompts, 1, s.steps, s.guidance_scale, seeded(seeds), output_type="uint8").images)
    elapsed = time.perf_counter() - t
    gen_imgs = np.concatenate(gen)
    fake = probe_miou(probe, gen_imgs, labs, meta.names)
    return {
        "probe_miou_real_val": real,
        "probe_miou_generated": fake,
        "alignment_ratio": fake / real if real else None,
        "sample_images_per_s": n / elapsed,
        "examples": (palette[labs[:8]], imgs[:8], gen_imgs[:8]),
    }
