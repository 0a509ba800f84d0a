"""Stage `synthesize`: MaskSyn and ImgSyn datasets in the layout of their source.

    masksyn: caption of a real image -> Text2Mask -> decode -> Mask2Img -> image (new mask + image)
    imgsyn:  real mask + caption -> Mask2Img -> image (new image for a real mask)

Output (`synthesize.out`/STRATEGY), read like real data by every other stage:
    images/SPLIT/ID.png, annotations/SPLIT/ID.png          ADE20K layout (0 = other / ignored)
    panoptic/panoptic_SPLIT.json + panoptic_SPLIT/ID.png  COCO panoptic, where the source has it
    manifest.jsonl   one row per sample, kept or dropped (seggen.synthesis.manifest.ManifestRow)
    dropped/         images and masks the sample filter removed, for auditing
    summary.json, grid.png (colour map | image), seggen_meta.json
Beside it, STRATEGY.metrics.json: the summary's numbers (kept/dropped, sample mIoU, diversity, styles),
a git-tracked DVC metrics file, so `dvc exp show` / `dvc metrics diff` compare synthetic datasets.

Reproducibility: the samples are planned up front in a fixed order; sample k of source s gets the
seed (seed, strategy, s, k), and samples are generated in fixed batches of that order (float
results depend on batch composition, so a resumed or sharded run batches exactly as a single
uninterrupted one). Shards own whole batches (batch b -> shard b mod n). Each sample's files are
written atomically, then a record under `.work/rows/`; a re-run skips batches whose records all
exist. When every record exists, the dataset is merged: manifest, panoptic JSON, summary and grid,
stray files removed, `.work/` deleted. Changing any param that affects the output starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from seggen.captions import read_captions
from seggen.config import Params
from seggen.data.coco import segments_info
from seggen.data.images import id2rgb
from seggen.data.layout import open_split
from seggen.data.meta import META_FILE, DatasetMeta
from seggen.errors import DataError
from seggen.generators.diffusion import MODEL_META, read_model_meta
from seggen.io import digest_tree, save_grid, write_json, write_png
from seggen.outputs import MARKER, check_dir, claim
from seggen.progress import tqdm
from seggen.synthesis.manifest import ManifestRow, Scores, write_manifest
from seggen.training import seed_for

log = logging.getLogger(__name__)
STRATEGIES = ("masksyn", "imgsyn")
WORK = ".work"


@dataclass(frozen=True)
class Job:
    index: int  # position in the plan
    source: str  # source sample id
    k: int  # copy number for this source
    prompt: str  # the source's caption: Text2Mask's prompt
    id: str
    seed: int
    style: str | None = None  # the style phrase drawn from synthesize.styles (or the model's caption style)

    @property
    def image_prompt(self) -> str:
        """Mask2Img's prompt: the caption plus the style phrase."""
        return f"{self.prompt}, {self.style}" if self.style else self.prompt


@dataclass
class Plan:
    params: Params
    strategy: str
    out: Path
    jobs: list[Job]
    batches: list[list[Job]]
    meta: DatasetMeta
    dataset: object  # the source split (seggen.data.layout.open_split): its layout is the output's
    generators: dict[str, str]  # kind -> model directory digest
    fingerprint: str
    source_index: dict[str, int] = field(default_factory=dict)  # source id -> dataset index

    @property
    def layout(self):
        return self.dataset.layout

    @property
    def panoptic(self) -> bool:
        """The output has a panoptic annotation (the source has one; the COCO layout always does)."""
        return self.dataset.has_panoptic

    @property
    def work(self) -> Path:
        return self.out / WORK

    def record(self, job: Job) -> Path:
        return self.work / "rows" / f"{job.id}.json"

    def shard_batches(self, shard: int, num_shards: int) -> list[list[Job]]:
        return [b for i, b in enumerate(self.batches) if i % num_shards == shard]

    def output_dirs(self, kept: bool) -> tuple[Path, Path | None, Path | None]:
        """(images, label PNGs or None, panoptic PNGs or None) for kept or dropped samples, in the
        source's layout; dropped samples keep image and label PNG under dropped/ for auditing."""
        split = self.params.synthesize.split
        if not kept:
            return self.out / "dropped" / "images", self.out / "dropped" / "annotations", None
        return (
            self.layout.images(self.out, split),
            self.layout.labels(self.out, split),
            self.layout.panoptic_pngs(self.out, split) if self.panoptic else None,
        )


def draw_style(styles: dict[str, float], seed: int) -> str | None:
    """The style phrase of the sample with manifest seed `seed`: drawn with the weights of
    synthesize.styles (in their order), from the seed alone, so that a plan never depends on batching."""
    if not styles:
        return None
    names = list(styles)
    w = np.asarray([styles[n] for n in names], np.float64)
    u = np.random.default_rng(seed_for(seed, "style")).random()
    return names[min(int(np.searchsorted(np.cumsum(w / w.sum()), u, side="right")), len(names) - 1)]


def sample_seeds(seed: int) -> tuple[int, int]:
    """The Text2Mask and Mask2Img noise seeds of a sample with manifest seed `seed`."""
    return seed_for(seed, "text2mask"), seed_for(seed, "mask2img")


def model_digest(directory: Path) -> str:
    """sha256 over a model directory's files (relative path + bytes), in sorted order."""
    return digest_tree(directory)


def _check_generator(directory: Path, kind: str, meta: DatasetMeta, root: Path, boundary: bool | None = None) -> dict:
    if not (directory / MODEL_META).exists():
        hint = f"run `seggen train_{kind}` first" if not directory.exists() else f"not a seggen {kind} model directory"
        raise DataError(f"{directory}: {hint} (synthesize.{kind})")
    info = read_model_meta(directory, kind)
    want = meta.palette(boundary=bool(info.get("instances")) if boundary is None else boundary).colors
    got = np.asarray(info["palette"], np.uint8)
    if got.shape != want.shape or (got != want).any():
        raise DataError(
            f"{directory}: palette of this {kind} model does not match the palette of {root} ({len(got)} vs "
            f"{len(want)} colours or different colours)"
        )
    return info


def make_plan(params: Params, strategy: str) -> Plan:
    """Every check that can fail on bad input, before any image is generated."""
    import torch

    from seggen.training import autocast_dtype

    if strategy not in STRATEGIES:
        raise DataError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    cfg = params.synthesize
    check_dir(Path(cfg.out) / strategy, "synthesize.out")  # never cleared unless seggen wrote it
    if cfg.filter.sample or cfg.filter.pixel:
        check_dir(cfg.filter.out, "synthesize.filter.out")
    root = Path(params.data.root)
    ds = open_split(root, cfg.split)
    meta = ds.meta
    generators = {}
    if strategy == "masksyn":
        _check_generator(Path(cfg.text2mask), "text2mask", meta, root)
        generators["text2mask"] = model_digest(Path(cfg.text2mask))
    _check_generator(Path(cfg.mask2img), "mask2img", meta, root, boundary=False)
    generators["mask2img"] = model_digest(Path(cfg.mask2img))

    ids = [s.id for s in ds.samples]
    if cfg.real_subset:
        from seggen.segmenter.data import real_subset

        ids = [ids[i] for i in real_subset(params.seed, len(ids), cfg.real_subset)]
    if cfg.max_sources and cfg.max_sources < len(ids):
        rng = np.random.default_rng(seed_for(params.seed, "synthesize", "sources"))
        ids = [ids[i] for i in sorted(rng.choice(len(ids), cfg.max_sources, replace=False))]
    caps_path = Path(params.caption.out)
    if not caps_path.exists():
        raise DataError(f"{caps_path}: captions not found (run `seggen caption` first)")
    caps = read_captions(caps_path)
    missing = [i for i in ids if i not in caps]
    if missing:
        raise DataError(f"{caps_path}: no caption for {len(missing)} source image(s) of {cfg.split}, e.g. {missing[0]}")

    per = cfg.masksyn_per_source if strategy == "masksyn" else cfg.imgsyn_per_source
    m2i_info = read_model_meta(Path(cfg.mask2img), "mask2img")
    jobs = []
    for s in ids:
        for k in range(per):
            seed = seed_for(params.seed, strategy, s, k)
            style = draw_style(cfg.styles, seed) or m2i_info.get("caption_style")
            jobs.append(Job(len(jobs), s, k, caps[s].caption, f"{strategy}_{s}_{k:03d}", seed, style))
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]

    if ds.has_panoptic and strategy == "imgsyn":
        ds.segments(0)  # indexes the source's panoptic annotation: a missing one is named here

    identity = cfg.model_dump(mode="json", exclude={"out", "threads", "workers", "dask", "text2mask", "mask2img"})
    identity["filter"].pop("out")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    identity["precision"] = str(autocast_dtype(cfg.precision, device))  # what `auto` resolves to here
    blob = json.dumps(
        [
            params.seed,
            strategy,
            str(root),
            params.data.model_dump(mode="json"),
            identity,
            generators,
            [(j.id, j.prompt, j.seed, j.style) for j in jobs],
        ],
        sort_keys=True,
    )
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Plan(
        params,
        strategy,
        Path(cfg.out) / strategy,
        jobs,
        batches,
        meta,
        ds,
        generators,
        fingerprint,
        {s.id: i for i, s in enumerate(ds.samples)},
    )


def prepare_output(plan: Plan) -> bool:
    """-> True when the dataset for this plan is already complete. Output of other params is removed."""
    out, work = plan.out, plan.work
    summary = out / "summary.json"
    current = None
    if (work / "fingerprint").exists():
        current = (work / "fingerprint").read_text().strip()
    elif summary.exists():
        try:
            current = json.loads(summary.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            current = None
    if current == plan.fingerprint:
        return not work.exists()
    claim(out, "synthesize.out", f"synthesize {plan.strategy}")  # raises unless seggen wrote it
    split = plan.params.synthesize.split
    ours = {MARKER, WORK, ".merge.lock", "manifest.jsonl", "summary.json", "grid.png", META_FILE, "dropped"}
    ours |= {"images", "annotations", "panoptic", split}  # the ADE20K and COCO layouts' folders
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:  # starting over removes the folder's content: never a file of someone else's
        raise DataError(
            f"{out / foreign[0]}: not written by seggen, and starting this dataset over would delete it; move it away"
        )
    if any(p.name != MARKER for p in out.iterdir()):
        log.warning("%s holds a dataset made with other params or generators: starting over", out)
        for p in out.iterdir():
            if p.name != MARKER:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (work / "rows").mkdir(parents=True, exist_ok=True)
    (work / "fingerprint").write_text(plan.fingerprint + "\n")
    return False


# -- generation --------------------------------------------------------------------------------


def _resize(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """size = (width, height)."""
    if a.shape[1] == size[0] and a.shape[0] == size[1]:
        return a
    return np.asarray(Image.fromarray(a).resize(size, resample))


def panoptic_from_labels(
    labels: np.ndarray, instances: np.ndarray | None, meta: DatasetMeta
) -> tuple[np.ndarray, list[dict]]:
    """Panoptic ids + segments for a generated mask: one segment per stuff class; thing instances
    from the instance map of an instance-aware Text2Mask, else 8-connected components. Ids count up
    from 1 in class order, then instance value (or component) order. Linear in the pixels, whatever
    the number of segments."""
    from scipy import ndimage

    ids = np.zeros(labels.shape, np.uint32)
    order: list[tuple[int, int, int]] = []
    things = set(meta.thing_ids)
    eight = np.ones((3, 3), bool)
    for cls in (int(c) for c in np.unique(labels) if c != 0):
        region = labels == cls
        if cls in things and instances is not None:
            inst = instances[region]
            values = np.unique(inst[inst != 0])
            comp = np.zeros(labels.shape, np.int64)
            comp[region] = np.where(inst != 0, np.searchsorted(values, inst) + 1, 0)
            n = len(values)
        elif cls in things:
            comp, n = ndimage.label(region, structure=eight)
        else:
            comp, n = region.astype(np.int64), 1
        base = len(order)
        inside = comp > 0
        ids[inside] = comp[inside] + base
        order += [(base + k + 1, cls, 0) for k in range(n)]
    return ids, segments_info(ids, order)


def _source_size(plan: Plan, source: str) -> tuple[int, int]:
    """(width, height) of the source image as the readers load it (EXIF orientation applied)."""
    from seggen.data.images import oriented_size

    return oriented_size(plan.dataset.samples[plan.source_index[source]].image_path)


def _source_panoptic(plan: Plan, source: str) -> tuple[np.ndarray, list[dict]]:
    """The source's panoptic annotation, category ids 1..N (the class ids)."""
    return plan.dataset.load_panoptic(plan.source_index[source])


class Generators:
    """The loaded models of one run (loaded once per process)."""

    def __init__(self, plan: Plan):
        from seggen.generators.mask2img import Mask2ImgSampler
        from seggen.synthesis.filters import load_filter

        cfg = plan.params.synthesize
        self.t2m = None
        if plan.strategy == "masksyn":
            from seggen.generators.text2mask import Text2MaskSampler

            self.t2m = Text2MaskSampler(cfg.text2mask, precision=cfg.precision)
        self.m2i = Mask2ImgSampler(cfg.mask2img, precision=cfg.precision, style_swap=cfg.style_swap)
        self.filter = load_filter(plan.params, progress=False)
        self.plain = plan.meta.palette().colors


def _generate_batch(plan: Plan, gens: Generators, batch: list[Job]) -> list[dict]:
    """-> per job: image (HxWx3), labels (HxW), panoptic (ids, segments) or None, at the source size."""
    cfg = plan.params.synthesize
    prompts = [j.prompt for j in batch]
    image_prompts = [j.image_prompt for j in batch]
    seeds = [sample_seeds(j.seed) for j in batch]
    r = gens.m2i.resolution
    sizes = [_source_size(plan, j.source) for j in batch]
    out = []
    if plan.strategy == "masksyn":
        rgb = gens.t2m(prompts, [s[0] for s in seeds], cfg.steps, cfg.text2mask_guidance)
        labels, insts = [], []
        for x in rgb:
            if gens.t2m.palette.boundary:
                lab, inst = gens.t2m.decode_instances(x)
            else:
                lab, inst = gens.t2m.decode(x), None
            labels.append(lab.astype(np.uint8))
            insts.append(inst)
        cmaps = np.stack([gens.plain[_resize(lab, (r, r), Image.NEAREST)] for lab in labels])
        imgs = gens.m2i(cmaps, image_prompts, [s[1] for s in seeds], cfg.steps, cfg.mask2img_guidance)
        for img, lab, inst, size in zip(imgs, labels, insts, sizes):
            lab_o = _resize(lab, size, Image.NEAREST)
            inst_o = _resize(inst.astype(np.int32), size, Image.NEAREST) if inst is not None else None
            pan = panoptic_from_labels(lab_o, inst_o, plan.meta) if plan.panoptic else None
            out.append({"image": _resize(img, size, Image.BICUBIC), "labels": lab_o, "panoptic": pan})
    else:
        labels = [plan.dataset.load_label(plan.source_index[j.source]).astype(np.uint8) for j in batch]
        cmaps = np.stack([gens.plain[_resize(lab, (r, r), Image.NEAREST)] for lab in labels])
        imgs = gens.m2i(cmaps, image_prompts, [s[1] for s in seeds], cfg.steps, cfg.mask2img_guidance)
        for img, lab, size, j in zip(imgs, labels, sizes, batch):
            pan = _source_panoptic(plan, j.source) if plan.panoptic else None
            out.append({"image": _resize(img, size, Image.BICUBIC), "labels": lab, "panoptic": pan})
    return out


def _filter_and_write(plan: Plan, gens: Generators, job: Job, sample: dict) -> None:
    cfg = plan.params.synthesize
    fmt = cfg.image_format
    image, labels, pan = sample["image"], sample["labels"].copy(), sample["panoptic"]
    scores = Scores()
    kept, reason = True, None
    if gens.filter is not None:
        miou, ignore = gens.filter.score(image, labels)
        scores.sample_miou = miou
        if ignore is not None:
            labelled = labels > 0
            scores.ignored_fraction = float(ignore[labelled].mean()) if labelled.any() else 0.0
            labels[ignore] = 0
            if pan is not None:
                ids = pan[0].copy()
                ids[ignore] = 0
                pan = (ids, segments_info(ids, [(s["id"], s["category_id"], s.get("iscrowd", 0)) for s in pan[1]]))
        if gens.filter.sample and (miou is None or miou < gens.filter.min_miou):
            kept, reason = (
                False,
                f"sample_miou below {gens.filter.min_miou:g}" if miou is not None else "no labelled pixels",
            )
    if kept and not (labels > 0).any():
        kept, reason = False, "empty mask"
    h, w = labels.shape
    img_dir, lab_dir, pan_dir = plan.output_dirs(kept)
    _write_image(fmt)(img_dir / f"{job.id}.{fmt}", image)
    if lab_dir is not None:  # the COCO layout keeps labels in its panoptic annotation only
        write_png(lab_dir / f"{job.id}.png", labels)
    if kept and pan is not None:
        write_png(pan_dir / f"{job.id}.png", id2rgb(pan[0]))
    row = ManifestRow(
        id=job.id,
        strategy=plan.strategy,
        source_id=job.source,
        index=job.k,
        prompt=job.prompt,
        style=job.style,
        image_prompt=job.image_prompt,
        seed=job.seed,
        generators=plan.generators,
        scores=scores,
        kept=kept,
        drop_reason=reason,
        width=w,
        height=h,
    )
    record = {"row": row.model_dump(mode="json"), "segments": pan[1] if (kept and pan is not None) else None}
    write_json(plan.record(job), record, indent=None)


def _write_image(fmt: str):
    from seggen.io import write_jpeg

    return write_png if fmt == "png" else (lambda p, a: write_jpeg(p, a, 95))


# -- entry points ------------------------------------------------------------------------------


def run_shard(
    params: Params,
    strategy: str,
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = True,
    merge: bool = True,
    plan: Plan | None = None,
) -> dict:
    """Generate the samples of one shard (all of them for 1 shard), then merge if every shard is done."""
    import torch

    if not 0 <= shard < num_shards:
        raise DataError(f"--shard {shard}: must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    plan = plan or make_plan(params, strategy)
    if prepare_output(plan):
        log.info("%s: complete for these params, nothing to do", plan.out)
        summary = json.loads((plan.out / "summary.json").read_text())
        if not metrics_path(plan.out).exists():  # a dataset made before the metrics file existed
            write_metrics(plan.out, summary)
        return {**summary, "generated": 0, "seconds": 0.0}

    if params.synthesize.threads:
        torch.set_num_threads(params.synthesize.threads)
    todo = [b for b in plan.shard_batches(shard, num_shards) if not all(plan.record(j).exists() for j in b)]
    mine = sum(len(b) for b in plan.shard_batches(shard, num_shards))
    n_todo = sum(len(b) for b in todo)
    t0 = time.perf_counter()
    if todo:
        gens = Generators(plan)
        t0 = time.perf_counter()  # the rate counts generation, not model loading or filter training
        desc = f"synthesize {strategy}" + (f" [{shard + 1}/{num_shards}]" if num_shards > 1 else "")
        bar = tqdm(total=mine, initial=mine - n_todo, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
        for batch in todo:
            for job, sample in zip(batch, _generate_batch(plan, gens, batch)):
                _filter_and_write(plan, gens, job, sample)
            bar.update(len(batch))
        bar.close()
    elapsed = time.perf_counter() - t0
    result = {
        "strategy": strategy,
        "shard": shard,
        "num_shards": num_shards,
        "generated": n_todo,
        "seconds": elapsed,
        "images_per_s": n_todo / elapsed if n_todo and elapsed else None,
    }
    if merge and all(plan.record(j).exists() for j in plan.jobs):
        result.update(merge_once(plan))
    return result


def merge_once(plan: Plan) -> dict:
    """Merge unless another shard's process is merging right now (an flock, released if it dies)."""
    import fcntl

    with open(plan.out / ".merge.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_EX)  # wait for it, then report its result
        try:
            if not plan.work.exists():
                return json.loads((plan.out / "summary.json").read_text())
            return merge_dataset(plan)
        finally:
            Path(lock.name).unlink(missing_ok=True)  # waiters re-check .work/ after acquiring


def synthesize(
    params: Params,
    strategy: str,
    shard: int | None = None,
    num_shards: int = 1,
    dask: bool = False,
    progress: bool = True,
) -> dict:
    """The one way a MaskSyn / ImgSyn dataset is made (the CLI, dvc.yaml and the Prefect flows call it),
    resuming whatever an earlier run left:

    - `shard` given: only that shard of `num_shards` (any machine); merged when every shard is done;
    - `dask`: every shard as a Prefect task on a Dask cluster (`synthesize.dask`), then merged;
    - else `synthesize.workers` local processes, one shard each (one process: in this one), then merged.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from seggen.synthesis.filters import load_filter

    if shard is not None:
        return run_shard(params, strategy, shard, num_shards, progress)
    if num_shards != 1 and not dask:
        raise DataError("--num-shards needs --shard (or --dask to run all shards)")
    if dask:
        from seggen.synthesis.dask import synthesize_on_dask

        return synthesize_on_dask(params, strategy, num_shards if num_shards > 1 else None)
    cfg = params.synthesize
    if cfg.workers == 1:
        return run_shard(params, strategy, 0, 1, progress)

    plan = make_plan(params, strategy)
    if prepare_output(plan):
        return run_shard(params, strategy, 0, 1, progress, plan=plan)
    load_filter(params, progress)  # trained once here, not by every worker
    n = cfg.workers
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
    p = params.model_copy(update={"synthesize": cfg.model_copy(update={"threads": threads})})
    rows = plan.work / "rows"
    bar = tqdm(
        total=len(plan.jobs),
        initial=len(list(rows.glob("*.json"))),
        desc=f"synthesize {strategy} [{n} workers]",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_shard, p, strategy, i, n, False, False) for i in range(n)]
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            bar.update(len(list(rows.glob("*.json"))) - bar.n)
        parts = [f.result() for f in futures]
    bar.close()
    generated = sum(r["generated"] for r in parts)
    seconds = max(r["seconds"] for r in parts)
    result = {
        "strategy": strategy,
        "workers": n,
        "generated": generated,
        "seconds": seconds,
        "images_per_s": generated / seconds if generated and seconds else None,
    }
    result.update(merge_once(plan))
    return result


def merge_dataset(plan: Plan) -> dict:
    """Manifest, panoptic JSON, meta, summary and grid from the per-sample records; stray files
    (of interrupted writes or earlier runs) removed; `.work/` deleted last."""
    cfg = plan.params.synthesize
    split, fmt = cfg.split, cfg.image_format
    records = []
    for j in plan.jobs:
        p = plan.record(j)
        if not p.exists():
            raise DataError(f"{plan.out}: sample {j.id} is missing; run the remaining shards")
        records.append(json.loads(p.read_text()))
    rows = [ManifestRow.model_validate(r["row"]) for r in records]
    kept = [(r, rec) for r, rec in zip(rows, records) if r.kept]
    img_dir, lab_dir, pan_dir = plan.output_dirs(kept=True)
    expected = {
        img_dir: {f"{r.id}.{fmt}" for r, _ in kept},
        plan.out / "dropped" / "images": {f"{r.id}.{fmt}" for r in rows if not r.kept},
        plan.out / "dropped" / "annotations": {f"{r.id}.png" for r in rows if not r.kept},
    }
    if lab_dir is not None:
        expected[lab_dir] = {f"{r.id}.png" for r, _ in kept}
    if pan_dir is not None:
        expected[pan_dir] = {f"{r.id}.png" for r, _ in kept}
    for d, names in expected.items():
        present = {p.name for p in d.iterdir()} if d.is_dir() else set()
        if names - present:
            raise DataError(
                f"{d}: {len(names - present)} file(s) missing, e.g. {sorted(names - present)[0]}; delete {plan.work} "
                "to regenerate"
            )
        for stray in present - names:
            (d / stray).unlink()
    for tmp in plan.out.rglob("*.tmp"):
        if WORK not in tmp.parts:
            tmp.unlink()

    if plan.panoptic:
        category = {c.id: c.category_id for c in plan.meta.classes}  # COCO layout: the source's own category ids
        images, anns = [], []
        for n, (r, rec) in enumerate(kept, 1):
            images.append({"id": n, "file_name": f"{r.id}.{fmt}", "height": r.height, "width": r.width})
            segments = [{**seg, "category_id": category[int(seg["category_id"])]} for seg in rec["segments"]]
            anns.append({"image_id": n, "file_name": f"{r.id}.png", "segments_info": segments})
        write_json(
            plan.layout.panoptic_json(plan.out, split),
            {
                "info": {"description": f"seggen {plan.strategy}, {split}"},
                "images": images,
                "annotations": anns,
                "categories": plan.meta.coco_categories(),
            },
            indent=None,
        )
    provenance = {
        "synthetic": plan.strategy,
        "source": str(plan.params.data.root),
        "split": split,
        "fingerprint": plan.fingerprint,
        "generators": plan.generators,
    }
    write_json(plan.out / META_FILE, plan.meta.model_copy(update={"generator": provenance}).model_dump(mode="json"))
    write_manifest(plan.out / "manifest.jsonl", rows)
    miou = [r.scores.sample_miou for r in rows if r.scores.sample_miou is not None]
    ign = [r.scores.ignored_fraction for r in rows if r.scores.ignored_fraction is not None]
    reasons: dict[str, int] = {}
    for r in rows:
        if r.drop_reason:
            reasons[r.drop_reason] = reasons.get(r.drop_reason, 0) + 1
    summary = {
        "strategy": plan.strategy,
        "fingerprint": plan.fingerprint,
        "samples": len(rows),
        "kept": len(kept),
        "dropped": len(rows) - len(kept),
        "drop_reasons": reasons,
        "mean_sample_miou": float(np.mean(miou)) if miou else None,
        "mean_ignored_fraction": float(np.mean(ign)) if ign else None,
        "generators": plan.generators,
    }
    if plan.strategy == "imgsyn" and cfg.imgsyn_per_source >= 2:
        from seggen.synthesis.diversity import imgsyn_diversity

        summary["diversity"] = imgsyn_diversity(plan.out, plan.params.data.root, split)
    summary["styles"] = _count([r.style for r in rows])
    _write_grid(plan, [r for r, _ in kept][:8])
    write_json(plan.out / "summary.json", summary)
    write_metrics(plan.out, summary)
    shutil.rmtree(plan.work)
    return summary


def metrics_path(out: Path) -> Path:
    """The dataset's DVC metrics file: beside its directory (a cached DVC output), so git tracks it."""
    return out.parent / f"{out.name}.metrics.json"


def write_metrics(out: Path, summary: dict) -> None:
    """The summary's numbers only (no timings, no digests): the same dataset gives the same file."""

    def numbers(d: dict) -> dict:
        res = {}
        for k, v in d.items():
            if isinstance(v, dict):
                if sub := numbers(v):
                    res[k] = sub
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                res[k] = round(v, 6) if isinstance(v, float) else v
        return res

    m = numbers({k: v for k, v in summary.items() if k not in ("fingerprint", "generators")})
    if summary.get("samples"):
        m["kept_fraction"] = round(summary["kept"] / summary["samples"], 6)
    write_json(metrics_path(out), m)


def _count(values: list) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _write_grid(plan: Plan, rows: list[ManifestRow]) -> None:
    """grid.png: colour map | image per row, for the first kept samples (read back as any stage reads them)."""
    if not rows:
        return
    ds = open_split(plan.out, plan.params.synthesize.split, plan.meta)
    index = {sid: i for i, sid in enumerate(ds.ids)}
    colors = plan.meta.palette().colors
    tiles = []
    for r in rows:
        img, lab = ds[index[r.id]]
        img = _resize(img, (64, 64), Image.BICUBIC)
        tiles.append(np.concatenate([colors[_resize(lab.astype(np.uint8), (64, 64), Image.NEAREST)], img], 1))
    save_grid(tiles, plan.out / "grid.png", scale=2)
