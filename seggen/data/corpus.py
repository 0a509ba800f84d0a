"""The captioned, unlabelled "web" corpus: the bundled benchmark's stand-in for LAION.

SD/SDXL learned the visual world from billions of captioned web images before SegGen specialised
them with a few thousand labelled masks. Here the benchmark's scene generator renders the same kind
of scenes under broad domain randomisation -- class hues and textures, lighting (day, overcast,
dusk, night, colour casts), haze and fog, sensor noise, blur and JPEG, and rendering styles (photo,
flat painting, line drawing) -- and writes only images and captions that name content and style
("two cars on a road, under the sky, a foggy dusk photo"). No mask is ever written.

Held-out rule: the `validation_shift` domain (seggen.data.benchmark.DOMAIN_B) must stay unseen, or a
gain on it would be a leak. Every look is a point in a normalised space (`look_distance`: hue shift
on the circle, saturation, brightness, colour cast, haze, noise, texture, stripes); looks closer
than `holdout_radius` to the shifted domain are redrawn. The corpus records the distance of every
image, and its summary the minimum (the measured margin). `include_shift: true` drops the rule and
renders a tenth of the images in the shifted domain itself: the upper reference (a leak on purpose),
against which a gain can be told apart from one.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from seggen.data.benchmark import CLASSES, DOMAIN_A, DOMAIN_B, Domain, benchmark_meta, render_scene
from seggen.io import atomic_dir, write_json, write_text
from seggen.progress import tqdm

STYLES = ("photo", "painting", "drawing")
CAPTIONS = "captions.jsonl"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Look:
    """How one corpus image is rendered: a domain (appearance), a rendering style, blur and JPEG."""

    domain: Domain
    style: str  # photo | painting | drawing
    blur: float  # Gaussian blur radius, pixels at 64 px
    jpeg: int  # JPEG quality

    def phrase(self) -> str:
        """The words a caption uses for this look: "a photo", "a foggy dusk photo", "a flat painting at night"."""
        d = self.domain
        if self.style == "drawing":
            return "a line drawing"
        r, _, b = d.cast
        light = (
            "night" if d.brightness < 0.55 else "dusk" if r - b > 0.15 else "overcast" if d.sat_scale < 0.65 else "day"
        )
        weather = "foggy " if d.haze > 0.4 else "hazy " if d.haze > 0.22 else ""
        grain = "grainy " if d.noise_sigma > 10 else ""
        if self.style == "painting":
            return (
                "a flat painting"
                + {"night": " at night", "dusk": " at dusk", "overcast": " on an overcast day", "day": ""}[light]
            )
        when = {"night": "night ", "dusk": "dusk ", "overcast": "overcast ", "day": ""}[light]
        words = f"{weather}{grain}{when}photo"
        return ("an " if words[0] in "aeiou" else "a ") + words


def domain_vector(d: Domain) -> np.ndarray:
    """A domain as a point in a space where each axis spans about 1 over the corpus's range."""
    return np.array(
        [
            d.sat_scale / 0.9,
            d.brightness / 0.85,
            *(np.asarray(d.cast) / 0.4),
            d.haze / 0.6,
            d.noise_sigma / 15,
            d.texture_scale / 0.17,
            d.texture_amp / 0.27,
            0.5 * float(d.stripes),
        ],
        np.float64,
    )


def look_distance(look: Look, ref: Domain = DOMAIN_B) -> float:
    """Normalised distance between a look's domain and `ref` (hue shift on the circle, /0.5)."""
    dh = abs(look.domain.hue_shift - ref.hue_shift) % 1.0
    dh = min(dh, 1.0 - dh) / 0.5
    return float(math.sqrt(dh**2 + float(np.sum((domain_vector(look.domain) - domain_vector(ref)) ** 2))))


def in_domain_look() -> Look:
    """The labelled split's own look (DOMAIN_A, a photo): what its captions name."""
    return Look(DOMAIN_A, "photo", 0.0, 95)


def sample_look(rng: np.random.Generator) -> Look:
    """A broad random look (the corpus distribution, before the held-out rule)."""
    style = str(rng.choice(STYLES, p=[0.7, 0.2, 0.1]))
    night = rng.random() < 0.15
    dusk = not night and rng.random() < 0.2
    brightness = rng.uniform(0.3, 0.55) if night else rng.uniform(0.55, 1.15)
    if night:
        cast = (rng.uniform(0.7, 0.9), rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.25))
    elif dusk:
        cast = (rng.uniform(1.05, 1.25), rng.uniform(0.85, 1.0), rng.uniform(0.7, 0.9))
    else:
        cast = tuple(rng.uniform(0.88, 1.12, 3))
    domain = Domain(
        hue_shift=float(rng.uniform(-0.5, 0.5)) if rng.random() < 0.6 else float(rng.normal(0, 0.04)),
        sat_scale=float(rng.uniform(0.3, 1.25)),
        brightness=float(brightness),
        cast=tuple(float(c) for c in cast),
        haze=float(rng.uniform(0.0, 0.6)),
        noise_sigma=float(rng.uniform(0.0, 15.0)),
        texture_scale=float(rng.uniform(0.03, 0.2)),
        texture_amp=float(rng.uniform(0.03, 0.3)),
        stripes=bool(rng.random() < 0.3),
    )
    return Look(domain, style, float(rng.uniform(0.0, 1.2)) if rng.random() < 0.4 else 0.0, int(rng.integers(30, 96)))


def draw_look(rng: np.random.Generator, holdout_radius: float, include_shift: bool) -> Look:
    if include_shift and rng.random() < 0.1:  # the leak reference: the shifted domain itself
        return Look(DOMAIN_B, "photo", 0.0, 95)
    while True:
        look = sample_look(rng)
        if include_shift or look_distance(look) >= holdout_radius:
            return look


def stylise(rgb: np.ndarray, labels: np.ndarray, inst: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """The rendering style, blur and JPEG on a rendered scene."""
    img = rgb.astype(np.float32)
    if look.style == "painting":  # flat colours: the mean of each region, a few tones, soft edges
        region = labels.astype(np.int64) * 1000 + inst
        _, inv = np.unique(region, return_inverse=True)
        inv = inv.reshape(region.shape)
        sums = np.zeros((inv.max() + 1, 3))
        np.add.at(sums, inv, img)
        counts = np.bincount(inv.ravel())[:, None]
        img = (sums / np.maximum(counts, 1))[inv]
        img = np.round(img / 32) * 32
    elif look.style == "drawing":  # dark outlines of every region on paper, a light wash of colour
        region = labels.astype(np.int64) * 1000 + inst
        edge = np.zeros(region.shape, bool)
        edge[:-1] |= region[:-1] != region[1:]
        edge[:, :-1] |= region[:, :-1] != region[:, 1:]
        paper = np.full_like(img, 245.0) * np.asarray([1.0, 0.98, 0.93], np.float32)
        img = 0.8 * paper + 0.2 * img
        img[edge] = rng.uniform(20, 70)
    out = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))
    if look.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(look.blur * out.size[0] / 64))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=look.jpeg)
    return np.asarray(Image.open(buf).convert("RGB"))


def _render(args: tuple[int, int, int, int, float, bool]) -> dict:
    from seggen.captions import label_caption

    seed, index, size, max_things, radius, include_shift = args
    rng = np.random.default_rng([seed, 7, index])  # 7: not a benchmark split's stream
    look = draw_look(rng, radius, include_shift)
    rgb, labels, inst, instances = render_scene(rng, size, max_things, look.domain)
    img = stylise(rgb, labels, inst, look, rng)
    meta = benchmark_meta_cached()
    counts: dict[int, int] = {}
    for _, cls in instances:
        counts[cls] = counts.get(cls, 0) + 1
    content, _ = label_caption(labels, meta, counts)
    return {"image": img, "caption": f"{content}, {look.phrase()}", "look": look, "distance": look_distance(look)}


_META = None


def benchmark_meta_cached():
    global _META
    if _META is None:
        from seggen.config import BenchmarkParams

        _META = benchmark_meta(BenchmarkParams(), 0)
    return _META


def image_name(index: int) -> str:
    return f"web_{index:06d}"


def generate_corpus(
    out: str | Path,
    num_images: int,
    resolution: int,
    max_things: int,
    seed: int,
    holdout_radius: float,
    include_shift: bool,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Render the corpus into `out` (images/*.jpg, captions.jsonl, summary.json, preview.png), built
    under a temporary name and swapped in whole. Byte-identical for the same arguments, whatever `workers`."""
    out = Path(out)
    jobs = [(seed, i, resolution, max_things, holdout_radius, include_shift) for i in range(num_images)]
    with atomic_dir(out, "prepare corpus", "prior.corpus.out") as tmp:
        (tmp / "images").mkdir()
        rows, looks, dists = [], [], []
        bar = tqdm(total=num_images, desc="render corpus", unit="img", disable=not progress, dynamic_ncols=True)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        results = pool.map(_render, jobs, chunksize=32) if pool else map(_render, jobs)
        previews = []
        for i, r in enumerate(results):
            name = image_name(i)
            Image.fromarray(r["image"]).save(tmp / "images" / f"{name}.jpg", format="JPEG", quality=95)
            rows.append(json.dumps({"id": name, "caption": r["caption"], "distance_to_shift": round(r["distance"], 4)}))
            looks.append(r["look"])
            dists.append(r["distance"])
            if len(previews) < 48:
                previews.append(r["image"])
            bar.update()
        bar.close()
        if pool:
            pool.shutdown()
        write_text(tmp / CAPTIONS, "\n".join(rows) + "\n")
        d = np.asarray(dists)
        summary = {
            "images": num_images,
            "resolution": resolution,
            "seed": seed,
            "holdout_radius": holdout_radius,
            "include_shift": include_shift,
            "distance_to_shift": {
                "min": float(d.min()),
                "p05": float(np.percentile(d, 5)),
                "median": float(np.median(d)),
            },
            "distance_of_the_labelled_domain": look_distance(in_domain_look()),
            "styles": {s: sum(lk.style == s for lk in looks) for s in STYLES},
            "classes": [c[0] for c in CLASSES],
        }
        write_json(tmp / SUMMARY, summary)
        _preview(previews, tmp / "preview.png")
    return summary


def _preview(images: list[np.ndarray], path: Path, columns: int = 12) -> None:
    rows = [np.concatenate(images[i : i + columns], 1) for i in range(0, len(images) - columns + 1, columns)]
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def read_corpus(root: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) of every corpus image."""
    from seggen.errors import DataError, not_found

    root = Path(root)
    f = root / CAPTIONS
    if not f.is_file():
        raise DataError(not_found(f, "file", "corpus captions") + " (run the prepare_corpus stage)")
    out = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            rid, caption = str(row["id"]), str(row["caption"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{f}:{n}: not a corpus row") from None
        if not rid or "/" in rid or "\\" in rid or rid.startswith(".") or "\0" in rid:
            raise DataError(f"{f}:{n}: image id {rid!r} points outside the corpus (a path, not an id)")
        out.append((root / "images" / f"{rid}.jpg", caption))
    return out


def look_record(look: Look) -> dict:
    return {**asdict(look), "phrase": look.phrase()}


def prepare_corpus(params, progress: bool = True) -> dict:
    """Stage `prepare_corpus`: the corpus prior.corpus describes, or, when the prior is not used, a
    directory whose summary says why (DVC still gets its output)."""
    from seggen.generators.prior import skipped

    c = params.prior.corpus
    reason = skipped(params)
    if reason:
        with atomic_dir(c.out, "prepare corpus (skipped)", "prior.corpus.out") as tmp:
            write_json(tmp / SUMMARY, {"skipped": reason})
        return {"skipped": reason}
    return generate_corpus(
        c.out,
        c.num_images,
        c.resolution,
        c.max_things,
        params.seed,
        c.holdout_radius,
        c.include_shift,
        c.workers,
        progress,
    )
