"""Pictures of the generative prior for the reports: the corpus, one mask in eight styles, and
synthetic images next to real in-domain and real shifted-domain ones (what the style prompts are for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seggen.config import Params
from seggen.io import atomic_path, save_grid

N_STYLES = 8


def picture_styles(params: Params) -> list[str]:
    """synthesize.styles, then the prior's grid styles, up to N_STYLES distinct phrases."""
    from seggen.generators.prior import GRID_STYLES

    out: list[str] = []
    for s in [*params.synthesize.styles, *GRID_STYLES]:
        if s not in out:
            out.append(s)
    return out[:N_STYLES]


def _resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((size, size), Image.NEAREST))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def styles_picture(params: Params, out: Path, n_masks: int = 2) -> Path:
    """Rows: a training mask's colour map, then Mask2Img's image for it in each style, same noise, at the
    synthesis guidance -- what synthesize draws from."""
    from seggen.data.captions import read_captions
    from seggen.data.layout import open_split
    from seggen.generators.mask2img import styles_grid
    from seggen.generators.pipelines import SegGenMask2ImgPipeline
    from seggen.training import seed_for

    cfg = params.synthesize
    pipe = SegGenMask2ImgPipeline.from_model_dir(cfg.mask2img, style_swap=cfg.style_swap)  # as synthesize samples
    res, palette = pipe.resolution, pipe.palette
    split = open_split(params.data.root, cfg.split)
    captions = read_captions(params.caption.out)
    maps = [palette[np.minimum(_resize_labels(split[i][1], res), len(palette) - 1)] for i in range(n_masks)]
    caps = [captions[split.ids[i]].caption for i in range(n_masks)]
    seeds = [seed_for(params.seed, "styles-picture", i) for i in range(n_masks)]
    styles = picture_styles(params)
    rows = styles_grid(pipe, [cfg.style_swap], maps, caps, styles, seeds, cfg.steps, cfg.mask2img_guidance)
    return save_grid(rows, out)


def shift_picture(params: Params, out: Path, n: int = 10) -> Path:
    """Three rows of n images: real in-domain training images, ImgSyn images (with the style prompts),
    real shifted-domain validation images."""
    from seggen.data.layout import open_split

    imgsyn = open_split(Path(params.synthesize.out) / "imgsyn", params.synthesize.split)
    real = open_split(params.data.root, params.synthesize.split)
    splits = params.evaluate.splits
    shifted = open_split(params.data.root, "validation_shift" if "validation_shift" in splits else splits[-1])
    res = imgsyn[0][0].shape[0]

    def row(ds) -> np.ndarray:
        pick = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
        imgs = [_resize(ds[int(i)][0], res) for i in pick]
        imgs += [np.full((res, res, 3), 255, np.uint8)] * (n - len(imgs))  # a split with fewer: white
        return np.concatenate(imgs, 1)

    return save_grid([row(real), row(imgsyn), row(shifted)], out, scale=3)


def prior_pictures(params: Params, out_dir: Path) -> list[tuple[str, Path]]:
    """(caption, path) of the pictures, all written into out_dir: a copy of the corpus preview where the
    prior is used (the prepare_corpus stage's file lies in data/, which git does not track, so a page
    linking it would show a broken image on a fresh clone), styles.png and synthetic_vs_shifted.png.
    With regimes (the ablation), the first regime's synthetic data."""
    if params.regimes:
        params = params.regime(next(iter(params.regimes)))
    pics: list[tuple[str, Path]] = []
    preview = Path(params.prior.corpus.out) / "preview.png"
    if params.prior.enabled and not params.mask2img.pretrained and preview.exists():
        with atomic_path(out_dir / "corpus.png", suffix=".png") as tmp:
            tmp.write_bytes(preview.read_bytes())
        pics.append(
            ("The prior's corpus: captioned images of broad looks, never masks (a sample)", out_dir / "corpus.png")
        )
    else:  # the stage's declared output, saying why there is no corpus (not linked from the page)
        from seggen.reporting.charts import note_picture

        note_picture(out_dir / "corpus.png", "no prior corpus: prior disabled or real weights")
    styles = picture_styles(params)
    pics.append(
        (
            f"One mask in {len(styles)} styles (colour map, then: {'; '.join(styles)})",
            styles_picture(params, out_dir / "styles.png"),
        )
    )
    pics.append(
        (
            "Real in-domain training images (top), ImgSyn images with style prompts (middle), "
            "real shifted-domain images (bottom)",
            shift_picture(params, out_dir / "synthetic_vs_shifted.png"),
        )
    )
    return pics
