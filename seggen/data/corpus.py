"""The captioned, unlabelled "web" corpus: the bundled benchmark's stand-in for LAION.

SD/SDXL learned the visual world from billions of captioned web images before SegGen specialised
them with a few thousand labelled masks. Here the benchmark's scene generator renders the same kind
of scenes under broad domain randomisation -- class hues and textures, lighting (day, overcast,
dusk, night, colour casts), haze and fog, sensor noise, blur and JPEG, and rendering styles (photo,
flat painting, line drawing) -- and writes only images and captions that name content and style
("two cars on a road, under the sky, a foggy dusk photo"). No mask is ever written.

Looks are drawn from the benchmark's documented look distribution (seggen.data.domains.sample_domain,
its own random stream), with a rendering style, blur and JPEG quality on top: nothing about any
evaluation domain is read to draw them, no region of the look space is cut out. Every image's look
is recorded (captions.jsonl), so the report can measure how near the corpus came to each evaluation
domain (`look_distance`) -- measured and shown, never used to filter. `include_unseen: true` renders
a tenth of the images in the unseen evaluation domains themselves: the upper reference (a leak on
purpose), against which a gain can be told apart from one.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from seggen.data.benchmark import CLASSES, benchmark_meta, render_scene
from seggen.data.domains import LABELLED, Domain, domain_distance, sample_domain
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


# The words captions use for a look: a fixed, generic vocabulary (what web alt-text says of a picture),
# written down with the look distribution and never adjusted to an evaluation domain. The synthesis
# style prompts (synthesize.styles) are phrases of it.
VOCABULARY = {
    "time of day": ("day", "dusk", "night", "overcast"),
    "weather": ("hazy", "foggy"),
    "camera": ("grainy",),
    "medium": ("photo", "flat painting", "line drawing"),
}


def vocabulary_phrases() -> set[str]:
    """Every phrase `Look.phrase` can write."""
    out = {"a line drawing"}
    for when in ("", "night ", "dusk ", "overcast "):
        for weather in ("", "foggy ", "hazy "):
            for grain in ("", "grainy "):
                words = f"{weather}{grain}{when}photo"
                out.add(("an " if words[0] in "aeiou" else "a ") + words)
    out |= {"a flat painting" + w for w in ("", " at night", " at dusk", " on an overcast day")}
    return out


def look_distance(look: Look, ref: Domain) -> float:
    """How far a corpus look is from a domain's photos: seggen.data.domains.domain_distance, and 0.5
    more (in quadrature) for another rendering style."""
    other_style = 0.0 if look.style == "photo" else 0.5
    return float(math.sqrt(domain_distance(look.domain, ref) ** 2 + other_style**2))


def in_domain_look() -> Look:
    """The labelled split's own look (a photo): what its captions name."""
    return Look(LABELLED, "photo", 0.0, 95)


def sample_look(rng: np.random.Generator) -> Look:
    """A corpus look: a draw of the look distribution, a style (photo 70 %, flat painting 20 %, line
    drawing 10 %), a blur (40 % of images) and a JPEG quality."""
    style = str(rng.choice(STYLES, p=[0.7, 0.2, 0.1]))
    domain = sample_domain(rng)
    return Look(domain, style, float(rng.uniform(0.0, 1.2)) if rng.random() < 0.4 else 0.0, int(rng.integers(30, 96)))


def draw_look(rng: np.random.Generator, leak: list[Domain] | None = None) -> Look:
    if leak and rng.random() < 0.1:  # the leak reference: one of the unseen domains itself
        return Look(leak[int(rng.integers(len(leak)))], "photo", 0.0, 95)
    return sample_look(rng)


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


def _render(args: tuple[int, int, int, int, list[Domain] | None]) -> dict:
    from seggen.data.captions import label_caption

    seed, index, size, max_things, leak = args
    rng = np.random.default_rng([seed, 7, index])  # 7: not a benchmark split's stream
    look = draw_look(rng, leak)
    rgb, labels, inst, instances = render_scene(rng, size, max_things, look.domain)
    img = stylise(rgb, labels, inst, look, rng)
    meta = benchmark_meta_cached()
    counts: dict[int, int] = {}
    for _, cls in instances:
        counts[cls] = counts.get(cls, 0) + 1
    content, _ = label_caption(labels, meta, counts)
    return {"image": img, "caption": f"{content}, {look.phrase()}", "look": look}


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
    leak: list[Domain] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Render the corpus into `out` (images/*.jpg, captions.jsonl with each image's look, summary.json,
    preview.png), built under a temporary name and swapped in whole. `leak`: domains a tenth of the
    images are rendered in (the leak reference). Byte-identical for the same arguments, whatever `workers`."""
    out = Path(out)
    jobs = [(seed, i, resolution, max_things, leak) for i in range(num_images)]
    with atomic_dir(out, "prepare_corpus", "prior.corpus.out") as tmp:
        (tmp / "images").mkdir()
        rows, looks, dists = [], [], []
        bar = tqdm(total=num_images, desc="render corpus", unit="img", disable=not progress, dynamic_ncols=True)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        results = pool.map(_render, jobs, chunksize=32) if pool else map(_render, jobs)
        previews = []
        for i, r in enumerate(results):
            name = image_name(i)
            Image.fromarray(r["image"]).save(tmp / "images" / f"{name}.jpg", format="JPEG", quality=95)
            rows.append(json.dumps({"id": name, "caption": r["caption"], "look": look_record(r["look"])}))
            looks.append(r["look"])
            dists.append(look_distance(r["look"], LABELLED))
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
            "look_distribution": "seggen.data.domains.sample_domain",
            "leak_domains": len(leak or []),
            "distance_to_labelled": {
                "min": float(d.min()),
                "p05": float(np.percentile(d, 5)),
                "median": float(np.median(d)),
            },
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
    return {"style": look.style, "blur": look.blur, "jpeg": look.jpeg, "domain": look.domain.record()}


def read_looks(root: str | Path) -> list[Look]:
    """The look of every corpus image (captions.jsonl)."""
    out = []
    for line in (Path(root) / CAPTIONS).read_text().splitlines():
        r = json.loads(line)["look"]
        out.append(Look(Domain.from_record(r["domain"]), r["style"], r["blur"], r["jpeg"]))
    return out


def nearest_look(looks: list[Look], domain: Domain) -> float:
    """The distance from `domain` to the nearest corpus look (`look_distance`)."""
    return min(look_distance(lk, domain) for lk in looks)


def prepare_corpus(params, progress: bool = True) -> dict:
    """Stage `prepare_corpus`: the corpus prior.corpus describes, or, when the prior is not used, a
    directory whose summary says why (DVC still gets its output)."""
    from seggen.generators.prior import skipped

    c = params.prior.corpus
    reason = skipped(params)
    if reason:
        with atomic_dir(c.out, "prepare_corpus (skipped)", "prior.corpus.out") as tmp:
            write_json(tmp / SUMMARY, {"skipped": reason})
        return {"skipped": reason}
    return generate_corpus(
        c.out,
        c.num_images,
        c.resolution,
        c.max_things,
        params.seed,
        _unseen_domains(params) if c.include_unseen else None,
        c.workers,
        progress,
    )


def _unseen_domains(params) -> list[Domain]:
    """The leak reference's domains: the unseen evaluation domains of the benchmark params describe."""
    from seggen.data.benchmark import split_domains
    from seggen.errors import ConfigError

    if params.data.format != "benchmark":
        raise ConfigError("prior.corpus.include_unseen: needs data.format benchmark (its unseen domains)")
    return list(dict.fromkeys(split_domains(params.data.benchmark)["validation_shift"]))
