"""The bundled benchmark: procedurally rendered outdoor scenes, generated offline and deterministically.

10 classes -- stuff: sky, mountain, grass, water, road; things: house, tree, car, person, boat
(several instances per image, drawn far to near so nearer ones occlude). Images get textures
(value noise), per-instance colour variation, directional lighting, sensor noise and JPEG
compression, so segmentation is not a colour lookup.

Splits (ADE20K directory names): `training`, `validation` and `tuning` in the labelled domain;
`validation_shift` (K unseen domains) and `tuning_shift` (K_t others), the same scene distribution
rendered in looks drawn from seggen.data.domains' distribution, to measure generalisation to domains
no choice read; ROOT/seggen_domains.json lists each one's look, distance to the labelled one, images.

Written in both layouts: ADE20K's (ROOT/images/{split}/*.jpg, ROOT/annotations/{split}/*.png) and COCO
panoptic (ROOT/panoptic/panoptic_{split}.json + panoptic_{split}/*.png), with ROOT/seggen_meta.json (the
classes, the colour-map palette). Every sample's random stream derives from (seed, split, index) alone,
so the output does not depend on the number of worker processes or the order they finish in.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seggen.config import BenchmarkParams
from seggen.data.coco import segment_info
from seggen.data.domains import LABELLED, Domain, domain_distance, draw_domains
from seggen.data.images import id2rgb, load_panoptic_png
from seggen.data.meta import META_FILE, ClassInfo, DatasetMeta
from seggen.io import (
    OutputError,
    atomic_dir,
    check_dir,
    file_digests,
    remove_stale,
    unlisted_files,
    verify_files,
    write_json,
    write_png,
)
from seggen.progress import tqdm

SPLITS = {"training": 0, "validation": 1, "validation_shift": 2, "tuning": 3, "tuning_shift": 4}
# the splits of drawn domains -> the prefix of their domains' names (unseen-1 .. unseen-K)
SHIFTED = {"validation_shift": "unseen", "tuning_shift": "tuning"}
DOMAINS_FILE = "seggen_domains.json"  # every drawn domain: its look, its distance, its images

# (name, isthing, colour-map colour). Colour-map colours are far apart for the generators' sake.
CLASSES = [
    ("sky", False, (0, 190, 255)),
    ("mountain", False, (150, 80, 0)),
    ("grass", False, (0, 150, 0)),
    ("water", False, (0, 0, 200)),
    ("road", False, (128, 128, 128)),
    ("house", True, (255, 0, 0)),
    ("tree", True, (120, 255, 120)),
    ("car", True, (255, 200, 0)),
    ("person", True, (255, 0, 255)),
    ("boat", True, (130, 0, 255)),
]
SKY, MOUNTAIN, GRASS, WATER, ROAD, HOUSE, TREE, CAR, PERSON, BOAT = range(1, 11)


def benchmark_meta(params: BenchmarkParams, seed: int) -> DatasetMeta:
    return DatasetMeta(
        name="seggen-benchmark",
        classes=[ClassInfo(id=i + 1, name=n, isthing=t, color=c) for i, (n, t, c) in enumerate(CLASSES)],
        generator={
            "kind": "seggen.data.benchmark",
            "version": 3,
            "seed": seed,
            **params.model_dump(exclude={"workers"}),
        },
    )


# ---------------------------------------------------------------------------------------------
# appearance


# the labelled data's look; the others are drawn from seggen.data.domains.sample_domain
DOMAIN_A = LABELLED

# base appearance per class: (hue, sat, value) ranges as (lo, hi)
_APPEAR = {
    SKY: ((0.55, 0.60), (0.35, 0.6), (0.85, 1.0)),
    MOUNTAIN: ((0.05, 0.12), (0.15, 0.4), (0.40, 0.60)),
    GRASS: ((0.22, 0.32), (0.5, 0.8), (0.45, 0.70)),
    WATER: ((0.52, 0.62), (0.5, 0.8), (0.45, 0.70)),
    ROAD: ((0.0, 1.0), (0.0, 0.08), (0.25, 0.40)),
    HOUSE: ((0.0, 0.12), (0.2, 0.6), (0.55, 0.90)),
    TREE: ((0.25, 0.38), (0.5, 0.9), (0.20, 0.45)),
    CAR: ((0.0, 1.0), (0.6, 0.95), (0.5, 0.95)),
    PERSON: ((0.0, 1.0), (0.4, 0.9), (0.3, 0.9)),
    BOAT: ((0.0, 0.15), (0.0, 0.3), (0.75, 1.0)),
}


def _hsv(rng: np.random.Generator, cls: int, dom: Domain) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = _APPEAR[cls]
    h = (rng.uniform(h0, h1) + dom.hue_shift) % 1.0
    s = min(1.0, rng.uniform(s0, s1) * dom.sat_scale)
    v = rng.uniform(v0, v1)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255.0


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, int(round(h / max(cell, 1.0))) + 2), max(2, int(round(w / max(cell, 1.0))) + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR), np.float32)


# ---------------------------------------------------------------------------------------------
# geometry


class Canvas:
    """Label map + instance map + image, painted in depth order."""

    def __init__(self, size: int):
        self.size = size
        self.labels = np.zeros((size, size), np.uint8)
        self.inst = np.zeros((size, size), np.int32)
        self.rgb = np.zeros((size, size, 3), np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.yy, self.xx = (yy + 0.5) / size, (xx + 0.5) / size

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray, inst: int = 0) -> None:
        self.labels[mask] = cls
        self.inst[mask] = inst
        self.rgb[mask] = colour if colour.ndim == 1 else colour[mask]

    def poly(self, pts: list[tuple[float, float]]) -> np.ndarray:
        im = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(im).polygon([(x * self.size, y * self.size) for x, y in pts], fill=1)
        return np.asarray(im, bool)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2 <= 1.0

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)


def _textured(rng, canvas: Canvas, base: np.ndarray, dom: Domain, amp_scale: float = 1.0, stripes: bool = False):
    s = canvas.size
    n = value_noise(rng, s, s, dom.texture_scale * s)
    fine = value_noise(rng, s, s, 1.5)
    tex = 0.7 * n + 0.3 * fine
    if stripes:  # ploughed / tiled
        phase = rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(10, 18)
        tex = 0.5 * tex + 0.5 * np.sin(canvas.yy * freq * 2 * np.pi + canvas.xx * 3 + phase)
    elif dom.texture == "speckle":  # fine grain over faint blotches (the same draws, another mix)
        tex = 0.25 * n + 1.2 * fine
    return base[None, None, :] * (1.0 + dom.texture_amp * amp_scale * tex[..., None])


def render_scene(rng: np.random.Generator, size: int, max_things: int, dom: Domain):
    """One scene -> (rgb uint8, labels uint8, instance ids int32, [(inst id, class)])."""
    c = Canvas(size)
    horizon = rng.uniform(0.30, 0.55)
    # sky: vertical gradient, lighter towards the horizon
    sky = _hsv(rng, SKY, dom)
    grad = (1.0 + 0.35 * (c.yy / horizon))[..., None].clip(1.0, 1.35)
    sky_rgb = np.clip(sky[None, None] * grad, 0, 255) + 6 * value_noise(rng, size, size, size * 0.3)[..., None]
    c.paint(c.yy < horizon, SKY, sky_rgb)
    # ground: grass everywhere below the horizon
    c.paint(c.yy >= horizon, GRASS, _textured(rng, c, _hsv(rng, GRASS, dom), dom, 1.5, dom.texture == "stripes"))
    # mountains: a ridge line above the horizon
    if rng.random() < 0.6:
        xs = np.linspace(0, 1, 9)
        ys = horizon - rng.uniform(0.05, 0.22) * np.abs(np.sin(xs * rng.uniform(2, 5) + rng.uniform(0, 6))) - 0.02
        ridge = np.interp(c.xx[0], xs, ys)
        mask = (c.yy >= ridge[None, :]) & (c.yy < horizon)
        c.paint(mask, MOUNTAIN, _textured(rng, c, _hsv(rng, MOUNTAIN, dom), dom, 1.2))
    water = None
    if rng.random() < 0.5:
        y1 = horizon + rng.uniform(0.10, 0.30)
        x0, x1 = sorted(rng.uniform(0, 1, 2))
        x0, x1 = (0.0, 1.0) if x1 - x0 < 0.3 else (x0, x1)
        mask = c.ellipse((x0 + x1) / 2, horizon, (x1 - x0) / 2, y1 - horizon) & (c.yy >= horizon)
        ripples = np.sin(c.yy * size * 1.3 + rng.uniform(0, 6))[..., None] * 0.06
        c.paint(mask, WATER, _textured(rng, c, _hsv(rng, WATER, dom), dom, 0.8) * (1 + ripples))
        water = mask
    road = None
    if rng.random() < 0.7:
        if rng.random() < 0.5:  # perspective road towards a vanishing point
            vx = rng.uniform(0.3, 0.7)
            bx, half = rng.uniform(0.2, 0.8), rng.uniform(0.18, 0.35)
            mask = c.poly([(vx - 0.015, horizon), (vx + 0.015, horizon), (bx + half, 1.02), (bx - half, 1.02)])
        else:  # a band across the view
            y0 = rng.uniform(horizon + 0.08, 0.85)
            mask = c.rect(-1, y0, 2, y0 + rng.uniform(0.07, 0.14))
        col = _textured(rng, c, _hsv(rng, ROAD, dom), dom, 0.6)
        c.paint(mask, ROAD, col)
        road = mask
    # things, far to near
    things = []
    n = int(rng.integers(2, max_things + 1))
    for _ in range(n):
        kind = int(rng.choice([HOUSE, TREE, CAR, PERSON, BOAT], p=[0.2, 0.3, 0.2, 0.2, 0.1]))
        where = {CAR: road, BOAT: water}.get(kind)
        if kind in (CAR, BOAT) and where is None:
            kind = TREE
            where = None
        if where is not None:
            ys, xs = np.nonzero(where)
            if len(ys) == 0:
                continue
            j = int(rng.integers(len(ys)))
            fy, fx = (ys[j] + 0.5) / size, (xs[j] + 0.5) / size
        else:
            fy = rng.uniform(horizon + 0.02, 1.0)
            fx = rng.uniform(0.0, 1.0)
        things.append((fy, fx, kind))
    things.sort()
    instances = []
    for k, (fy, fx, kind) in enumerate(things, start=1):
        scale = 0.35 + 1.4 * (fy - horizon) / (1.0 - horizon)  # perspective: nearer is larger
        _draw_thing(rng, c, kind, fx, fy, scale, dom, k)
        instances.append((k, kind))
    # lighting, haze, sensor noise
    img = c.rgb
    direction = rng.uniform(-1, 1) + dom.light_direction
    light = dom.brightness * (1.0 + 0.15 * direction * (c.xx - 0.5) * 2)
    img = img * light[..., None] * np.asarray(dom.cast, np.float32)
    depth = np.clip(1.0 - (c.yy - horizon) / (1 - horizon), 0, 1) * (c.yy >= horizon) + (c.yy < horizon)
    haze_col = np.asarray(dom.cast, np.float32) * 200.0
    img = img * (1 - dom.haze * depth[..., None]) + haze_col * dom.haze * depth[..., None]
    img = img + rng.normal(0, dom.noise_sigma, img.shape).astype(np.float32)
    # things keep only their visible pixels; ids are per image
    return np.clip(img, 0, 255).round().astype(np.uint8), c.labels, c.inst, instances


def _draw_thing(rng, c: Canvas, kind: int, fx: float, fy: float, s: float, dom: Domain, k: int) -> None:
    col = _hsv(rng, kind, dom)
    dark = col * 0.45
    if kind == HOUSE:
        w, h = rng.uniform(0.10, 0.18) * s, rng.uniform(0.08, 0.14) * s
        body = c.rect(fx - w / 2, fy - h, fx + w / 2, fy)
        roof = c.poly(
            [(fx - w / 2 - 0.01, fy - h), (fx + w / 2 + 0.01, fy - h), (fx, fy - h - rng.uniform(0.5, 0.9) * h)]
        )
        roof_col = _hsv(rng, HOUSE, dom) * 0.55
        c.paint(body, HOUSE, _textured(rng, c, col, dom, 0.5), k)
        c.paint(roof, HOUSE, roof_col, k)
        win = (
            body
            & (np.sin(c.xx * 2 * np.pi / max(w / 3, 1e-3)) > 0.5)
            & (np.sin(c.yy * 2 * np.pi / max(h / 2, 1e-3)) > 0.6)
        )
        c.rgb[win] = dark
    elif kind == TREE:
        h = rng.uniform(0.10, 0.20) * s
        trunk = c.rect(fx - 0.012 * s, fy - 0.45 * h, fx + 0.012 * s, fy)
        c.paint(trunk, TREE, np.array([90, 60, 30], np.float32) * dom.brightness, k)
        if rng.random() < 0.5:
            crown = c.ellipse(fx, fy - 0.65 * h, rng.uniform(0.25, 0.4) * h, 0.4 * h)
        else:
            crown = c.poly([(fx - 0.3 * h, fy - 0.35 * h), (fx + 0.3 * h, fy - 0.35 * h), (fx, fy - 1.1 * h)])
        c.paint(crown, TREE, _textured(rng, c, col, dom, 1.6), k)
    elif kind == CAR:
        w, h = rng.uniform(0.10, 0.15) * s, rng.uniform(0.04, 0.06) * s
        body = c.rect(fx - w / 2, fy - h, fx + w / 2, fy - 0.2 * h)
        cabin = c.rect(fx - w / 4, fy - 1.7 * h, fx + w / 4, fy - h + 1e-3)
        wheels = c.ellipse(fx - w / 3, fy - 0.2 * h, 0.22 * h, 0.22 * h) | c.ellipse(
            fx + w / 3, fy - 0.2 * h, 0.22 * h, 0.22 * h
        )
        c.paint(body | cabin, CAR, col, k)
        c.rgb[cabin & ~body] = np.array([60, 70, 90], np.float32) * dom.brightness
        c.paint(wheels, CAR, np.array([20, 20, 20], np.float32), k)
    elif kind == PERSON:
        h = rng.uniform(0.09, 0.14) * s
        w = 0.3 * h
        legs = c.rect(fx - w / 2, fy - 0.45 * h, fx + w / 2, fy)
        torso = c.rect(fx - w / 2 - 0.003, fy - 0.85 * h, fx + w / 2 + 0.003, fy - 0.45 * h + 1e-3)
        head = c.ellipse(fx, fy - 0.93 * h, 0.1 * h + 0.004, 0.1 * h + 0.004)
        c.paint(legs, PERSON, np.array([40, 40, 70], np.float32) * dom.brightness, k)
        c.paint(torso, PERSON, col, k)
        c.paint(head, PERSON, np.array([225, 180, 150], np.float32) * dom.brightness, k)
    elif kind == BOAT:
        w = rng.uniform(0.10, 0.16) * s
        hull = c.poly([(fx - w / 2, fy - 0.03 * s), (fx + w / 2, fy - 0.03 * s), (fx + w / 3, fy), (fx - w / 3, fy)])
        sail = c.poly([(fx, fy - 0.03 * s), (fx, fy - 0.03 * s - 0.9 * w), (fx + 0.4 * w, fy - 0.03 * s)])
        c.paint(hull, BOAT, _hsv(rng, HOUSE, dom) * 0.6, k)
        c.paint(sail, BOAT, col, k)


# ---------------------------------------------------------------------------------------------
# writing


def sample_name(split: str, index: int) -> str:
    return f"bench_{split}_{index:06d}"


def segment_id(cls: int, inst: int) -> int:
    """Panoptic segment id: class * 1000 + instance (0 for the stuff segment of a class)."""
    return cls * 1000 + inst


def _render_one(args: tuple[int, str, int, int, int, int, str, Domain]) -> dict:
    seed, split, index, size, max_things, quality, root, dom = args
    rng = np.random.default_rng([seed, SPLITS[split], index])
    rgb, labels, inst, instances = render_scene(rng, size, max_things, dom)
    name = sample_name(split, index)
    rootp = Path(root)
    img_path = rootp / "images" / split / f"{name}.jpg"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(img_path, format="JPEG", quality=quality, subsampling=0)
    write_png(rootp / "annotations" / split / f"{name}.png", labels)
    # panoptic: one segment per stuff class present, one per visible thing instance
    pan = np.zeros(labels.shape, np.uint32)
    segments = []
    thing_of = dict(instances)
    for cls in np.unique(labels):
        cls = int(cls)
        if cls == 0:
            continue
        if CLASSES[cls - 1][1]:
            for k in np.unique(inst[labels == cls]):
                k = int(k)
                if thing_of.get(k) != cls:
                    continue
                m = (labels == cls) & (inst == k)
                segments.append(segment_info(segment_id(cls, k), cls, m))
                pan[m] = segments[-1]["id"]
        else:
            m = labels == cls
            segments.append(segment_info(segment_id(cls, 0), cls, m))
            pan[m] = segments[-1]["id"]
    write_png(rootp / "panoptic" / f"panoptic_{split}" / f"{name}.png", id2rgb(pan))
    return {
        "image": {"id": index + 1, "file_name": f"{name}.jpg", "height": size, "width": size},
        "annotation": {"image_id": index + 1, "file_name": f"{name}.png", "segments_info": segments},
    }


def fingerprint(params: BenchmarkParams, seed: int) -> str:
    blob = json.dumps(benchmark_meta(params, seed).model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


FILES = "seggen_files.json"  # every file of the dataset with its size and sha256, checked before "up to date"


def stale_reason(root: Path, params: BenchmarkParams, seed: int) -> str | None:
    """None when `root` holds exactly the dataset these params render; else why not (naming the
    first damaged file: missing, changed or unexpected)."""
    meta = root / META_FILE
    if not meta.exists():
        return "no dataset there yet"
    try:
        recorded = json.loads(meta.read_text()).get("generator", {}).get("fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"{meta}: not valid JSON"
    if recorded != fingerprint(params, seed):
        return "rendered with other params"
    return verify_files(root, root / FILES)


def check_replaceable(root: Path) -> None:
    """Re-rendering swaps the whole directory: refuse if files that seggen did not write are in it."""
    if root.is_dir() and (root / FILES).exists():
        extra = unlisted_files(root, root / FILES)
        if extra:
            raise OutputError(
                f"data.root {root}: {extra[0]} was not written by seggen and re-rendering would delete it; move it away"
            )


def split_domains(params: BenchmarkParams) -> dict[str, list[Domain]]:
    """Every split's images, as the domain each is rendered in: the labelled domain for `training`,
    `validation` and `tuning`; `images` consecutive images per drawn domain for the shifted splits."""
    d = params.domains
    out = {
        "training": [LABELLED] * params.num_train,
        "validation": [LABELLED] * params.num_val,
        "validation_shift": [],
        "tuning": [LABELLED] * params.num_tuning,
        "tuning_shift": [],
    }
    for split, k in (("validation_shift", d.unseen), ("tuning_shift", d.tuning)):
        for dom in draw_domains(d.seed, SPLITS[split], k, d.min_distance):
            out[split] += [dom] * d.images
    return out


def _domain_records(split: str, doms: list[Domain]) -> list[dict]:
    out: list[dict] = []
    for i, dom in enumerate(doms):
        if not out or out[-1]["look"] != dom.record():
            name = f"{SHIFTED[split]}-{len(out) + 1}"
            out.append(
                {
                    "name": name,
                    "look": dom.record(),
                    "distance_to_labelled": round(domain_distance(dom, LABELLED), 4),
                    "images": [],
                }
            )
        out[-1]["images"].append(sample_name(split, i))
    return out


def read_domains(root: str | Path, split: str) -> list[dict] | None:
    """The drawn domains of `split` of a benchmark root ({"name", "look", "distance_to_labelled",
    "images"}), or None: a split of one domain (in-domain splits, real datasets)."""
    f = Path(root) / DOMAINS_FILE
    if not f.is_file():
        return None
    return json.loads(f.read_text()).get("splits", {}).get(split)


def generate(root: str | Path, params: BenchmarkParams, seed: int, progress: bool = True) -> Path:
    """Render the benchmark into `root` (built under a temporary name, swapped in when complete).
    An existing `root` is replaced only if seggen wrote it."""
    root = Path(check_dir(root, "data.root"))
    check_replaceable(root)
    remove_stale(root)
    looks = split_domains(params)
    meta = benchmark_meta(params, seed)
    meta = meta.model_copy(update={"generator": {**meta.generator, "fingerprint": fingerprint(params, seed)}})
    with atomic_dir(root, "prepare", "data.root") as tmp:
        record = {"distribution": "seggen.data.domains.sample_domain", **params.domains.model_dump(), "splits": {}}
        record["labelled"] = LABELLED.record()
        for split, doms in looks.items():
            n = len(doms)
            jobs = [
                (seed, split, i, params.resolution, params.max_things, params.jpeg_quality, str(tmp), d)
                for i, d in enumerate(doms)
            ]
            if split in SHIFTED:
                record["splits"][split] = _domain_records(split, doms)
            bar = tqdm(total=n, desc=f"prepare {split}", unit="img", disable=not progress, dynamic_ncols=True)
            results = []
            if params.workers > 1:
                with ProcessPoolExecutor(params.workers) as pool:
                    for r in pool.map(_render_one, jobs, chunksize=16):
                        results.append(r)
                        bar.update()
            else:
                for j in jobs:
                    results.append(_render_one(j))
                    bar.update()
            bar.close()
            pan = {
                "info": {"description": f"seggen benchmark, {split}", "version": "1"},
                "images": [r["image"] for r in results],
                "annotations": [r["annotation"] for r in results],
                "categories": meta.coco_categories(),
            }
            write_json(tmp / "panoptic" / f"panoptic_{split}.json", pan, indent=None)
        write_json(tmp / META_FILE, meta.model_dump(mode="json"))
        write_json(tmp / DOMAINS_FILE, record)
        write_preview(tmp, meta)
        write_json(tmp / FILES, {"files": file_digests(tmp, exclude={FILES})}, indent=None)
    return root


def write_preview(root: Path, meta: DatasetMeta, n: int = 6) -> Path:
    """preview.png: per split, rows of image | colour map | panoptic segments (random colours); for a
    split of drawn domains, one row per domain."""
    from seggen.data.ade20k import ADE20KDataset

    pal = meta.palette()
    columns = []
    for split in SPLITS:
        ds = ADE20KDataset(root, split, meta)
        pan_dir = root / "panoptic" / f"panoptic_{split}"
        rows = []
        doms = read_domains(root, split)  # a split of drawn domains: the first image of each
        ids = {stem: i for i, stem in enumerate(ds.ids)}
        for i in [ids[d["images"][0]] for d in doms] if doms else range(min(n, len(ds))):
            img, lab = ds[i]
            ids = load_panoptic_png(pan_dir / (ds.samples[i].id + ".png"))
            uniq, inv = np.unique(ids, return_inverse=True)
            colours = np.random.default_rng(i).integers(40, 256, (len(uniq), 3), dtype=np.uint8)
            seg = colours[inv.reshape(ids.shape)]
            rows.append(np.concatenate([img, pal.encode(lab), seg], 1))
        columns.append(np.concatenate(rows, 0))
    h = max(c.shape[0] for c in columns)
    padded = []
    for c in columns:  # splits may have fewer samples than n: pad with white
        padded += [
            np.pad(c, ((0, h - c.shape[0]), (0, 0), (0, 0)), constant_values=255),
            np.full((h, 4, 3), 255, np.uint8),
        ]
    grid = np.concatenate(padded[:-1], 1)
    scale = max(1, 384 // grid.shape[0])
    out = root / "preview.png"
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(out)
    return out
