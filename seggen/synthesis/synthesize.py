"""Stage `synthesize`: MaskSyn and ImgSyn datasets in the layout of their source.

    masksyn: caption of a real image -> Text2Mask -> decode -> Mask2Img -> image (new mask + image)
    imgsyn:  real mask + caption -> Mask2Img -> image (new image for a real mask)

Output (`synthesize.out`/STRATEGY), read like real data by every other stage:
    images/SPLIT/ID.png, annotations/SPLIT/ID.png          ADE20K layout (0 = other / ignored)
    ignore/SPLIT/ID.png   the pixels the pixel filter set aside (255), where a kept sample has any:
                          label 0 above, and left out of the segmenter's loss
    panoptic/panoptic_SPLIT.json + panoptic_SPLIT/ID.png  COCO panoptic, where the source has it
    manifest.jsonl   one row per sample, kept or dropped (seggen.synthesis.manifest.ManifestRow)
    dropped/         images and masks the sample filter removed, for auditing
    summary.json, grid.png (colour map | image), seggen_meta.json
Beside it, STRATEGY.metrics.json: the summary's numbers (kept/dropped, sample mIoU, diversity, styles),
a git-tracked DVC metrics file, so `dvc exp show` / `dvc metrics diff` compare synthetic datasets; and
STRATEGY.run.json: what generating it cost (wall seconds, images, devices per run; not part of the dataset).

Reproducibility: the samples are planned up front in a fixed order; sample k of source s gets the
seed (seed, strategy, s, k), and samples are generated in fixed batches of that order (float
results depend on batch composition, so a resumed or sharded run batches exactly as a single
uninterrupted one). Shards own whole batches (batch b -> shard b mod n). Each sample's files are
written atomically, then the batch's record under `.work/batches/` (its manifest rows); a re-run
skips batches whose record exists. When every record exists, the dataset is merged: manifest,
panoptic JSON, summary and grid, stray files removed, `.work/` deleted. Changing any param that
affects the output starts over.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from seggen.config import Params
from seggen.data.coco import segments_info
from seggen.data.images import id2rgb, load_rgb, resize_array
from seggen.data.layout import ignore_dir
from seggen.data.meta import DatasetMeta
from seggen.errors import DataError
from seggen.io import write_png, write_text
from seggen.progress import tqdm
from seggen.synthesis.manifest import ManifestRow, Scores
from seggen.synthesis.merge import batch_columns, merge_dataset, metrics_path, record_run, write_metrics
from seggen.synthesis.plan import (
    WORK,
    Job,
    Plan,
    make_plan,
    prepare_output,
    sample_seeds,
)

log = logging.getLogger(__name__)


# -- generation --------------------------------------------------------------------------------


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
    """The loaded models of one run, on `device` (None: this process's default, its own GPU if any)."""

    def __init__(self, plan: Plan, device: str | None = None):
        from seggen.generators.pipelines import SegGenMask2ImgPipeline, SegGenText2MaskPipeline
        from seggen.synthesis.filters import load_filter

        cfg = plan.params.synthesize
        kw = {"device": device, "precision": cfg.precision, "compile": cfg.compile}
        self.t2m = SegGenText2MaskPipeline.from_model_dir(cfg.text2mask, **kw) if plan.strategy == "masksyn" else None
        self.m2i = SegGenMask2ImgPipeline.from_model_dir(cfg.mask2img, style_swap=cfg.style_swap, **kw)
        self.filter = load_filter(plan.params, progress=False, device=device)
        self.plain = plan.meta.palette().colors


_loaded: dict = {}  # the last run's Generators in this process: a Dask worker's next shard reuses them


def generators_for(plan: Plan, device: str | None = None) -> Generators:
    key = (plan.fingerprint, plan.strategy, device)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = Generators(plan, device)
    return _loaded[key]


def _generate_batch(plan: Plan, gens: Generators, batch: list[Job]) -> list[dict]:
    """-> per job: image (HxWx3), labels (HxW), panoptic (ids, segments) or None, at the source size."""
    from seggen.generators.pipelines import seeded

    cfg = plan.params.synthesize
    seeds = [sample_seeds(j.seed) for j in batch]  # (Text2Mask's, Mask2Img's) per sample
    r = gens.m2i.resolution
    sizes = [_source_size(plan, j.source) for j in batch]

    def draw(labels: list[np.ndarray], init: list[np.ndarray] | None = None) -> np.ndarray:
        return gens.m2i(  # the labels as plain colour maps at Mask2Img's size; img2img from `init`
            np.stack([gens.plain[resize_array(lab, (r, r), Image.NEAREST)] for lab in labels]),
            [j.image_prompt for j in batch],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.mask2img_guidance,
            generator=seeded(s[1] for s in seeds),
            solver=cfg.solver,
            style_swap=cfg.style_swap,
            init_image=init,
            strength=cfg.imgsyn_strength,
            output_type="uint8",
        ).images

    out = []
    if plan.strategy == "masksyn":
        masks = gens.t2m(
            [j.prompt for j in batch],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.text2mask_guidance,
            generator=seeded(s[0] for s in seeds),
            solver=cfg.solver,
            output_type="uint8",
        )
        labels = [lab.astype(np.uint8) for lab in masks.labels]
        insts = list(masks.instances) if masks.instances is not None else [None] * len(batch)
        imgs = draw(labels)
        for img, lab, inst, size in zip(imgs, labels, insts, sizes):
            lab_o = resize_array(lab, size, Image.NEAREST)
            inst_o = resize_array(inst.astype(np.int32), size, Image.NEAREST) if inst is not None else None
            pan = panoptic_from_labels(lab_o, inst_o, plan.meta) if plan.panoptic else None
            out.append({"image": resize_array(img, size, Image.BICUBIC), "labels": lab_o, "panoptic": pan})
    else:
        rows = [plan.source_index[j.source] for j in batch]
        labels = [plan.dataset.load_label(i).astype(np.uint8) for i in rows]
        init = [load_rgb(plan.dataset.samples[i].image_path) for i in rows] if cfg.imgsyn_strength < 1 else None
        imgs = draw(labels, init)
        for img, lab, size, j in zip(imgs, labels, sizes, batch):
            pan = _source_panoptic(plan, j.source) if plan.panoptic else None
            out.append({"image": resize_array(img, size, Image.BICUBIC), "labels": lab, "panoptic": pan})
    return out


def _score(plan: Plan, gens: Generators, sample: dict) -> dict:
    """The filters' verdict on a generated sample (on the generating device): its scores, the labels
    and panoptic segments with filtered pixels ignored, kept or the reason it is dropped."""
    image, labels, pan = sample["image"], sample["labels"].copy(), sample["panoptic"]
    scores = Scores()
    kept, reason, classes, ignored = True, None, None, None
    if gens.filter is not None:
        miou, ignore = gens.filter.score(image, labels)
        scores.sample_miou = miou
        labelled = labels > 0
        # per class: [labelled pixels, of them ignored by the pixel filter], before the filter edits the mask
        classes = {int(c): [int(n), 0] for c, n in zip(*np.unique(labels[labelled], return_counts=True))}
        if ignore is not None:
            scores.ignored_fraction = float(ignore[labelled].mean()) if labelled.any() else 0.0
            for c, n in zip(*np.unique(labels[ignore & labelled], return_counts=True)):
                classes[int(c)][1] = int(n)
            ignored = ignore & labelled  # the pixels set aside (label 0 already means "no class")
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
    return {
        "image": image,
        "labels": labels,
        "panoptic": pan,
        "scores": scores,
        "kept": kept,
        "reason": reason,
        "classes": classes,
        "ignore": ignored if ignored is not None and ignored.any() else None,
    }


def _write(plan: Plan, job: Job, sample: dict) -> tuple[ManifestRow, dict]:
    """A scored sample's files, each atomically -> its manifest row and what else the merge needs of
    it: its panoptic segments, its class colours (ImgSyn's diversity statistics), the filter's pixel
    counts per class."""
    fmt = plan.params.synthesize.image_format
    image, labels, pan, kept = sample["image"], sample["labels"], sample["panoptic"], sample["kept"]
    h, w = labels.shape
    img_dir, lab_dir, pan_dir = plan.output_dirs(kept)
    _write_image(fmt)(img_dir / f"{job.id}.{fmt}", image)
    if lab_dir is not None:  # the COCO layout keeps labels in its panoptic annotation only
        write_png(lab_dir / f"{job.id}.png", labels)
    if kept and pan is not None:
        write_png(pan_dir / f"{job.id}.png", id2rgb(pan[0]))
    if kept and sample["ignore"] is not None:
        ignored = sample["ignore"] * np.uint8(255)
        write_png(ignore_dir(plan.out, plan.params.synthesize.split) / f"{job.id}.png", ignored)
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
        scores=sample["scores"],
        kept=kept,
        drop_reason=sample["reason"],
        width=w,
        height=h,
        plan=job.why,
    )
    extra: dict = {"segments": pan[1] if (kept and pan is not None) else None, "classes": sample["classes"]}
    if kept and plan.strategy == "imgsyn" and plan.copies >= 2:
        from seggen.synthesis.diversity import class_colours

        colours = class_colours(image, labels, len(plan.meta.names))
        extra["colours"] = {str(c): v.tolist() for c, v in colours.items()}
    return row, extra


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
    digests: dict[str, str] | None = None,
    device: str | None = None,
) -> dict:
    """Generate the samples of one shard (all of them for 1 shard), then merge if every shard is done.
    `digests`: the generators' (make_plan); `device`: where to sample (default: this process's GPU, else CPU)."""
    import torch

    if not 0 <= shard < num_shards:
        raise DataError(f"--shard {shard}: must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    plan = plan or make_plan(params, strategy, digests)
    if prepare_output(plan):
        log.info("%s: complete for these params, nothing to do", plan.out)
        summary = json.loads((plan.out / "summary.json").read_text())
        if not metrics_path(plan.out).exists():  # a dataset made before the metrics file existed
            write_metrics(plan.out, summary)
        return {**summary, "generated": 0, "seconds": 0.0}

    if params.synthesize.threads:
        torch.set_num_threads(params.synthesize.threads)
    todo = [b for b in plan.shard_batches(shard, num_shards) if not plan.done(b)]
    mine = sum(len(b) for b in plan.shard_batches(shard, num_shards))
    n_todo = sum(len(b) for b in todo)
    t0 = time.perf_counter()
    if todo:
        gens = generators_for(plan, device)
        t0 = time.perf_counter()  # the rate counts generation, not model loading or filter training
        desc = f"synthesize {strategy}" + (f" [{shard + 1}/{num_shards}]" if num_shards > 1 else "")
        bar = tqdm(total=mine, initial=mine - n_todo, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
        _generate_and_write(plan, gens, todo, bar)
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
    if merge and all(plan.done(b) for b in plan.batches):
        result.update(merge_once(plan))
    return result


def _generate_and_write(plan: Plan, gens: Generators, batches: list[list[Job]], bar, ahead: int = 2) -> None:
    """Each batch generated and scored here, its files encoded and written by a background thread
    while the next batches generate (at most `ahead` batches wait to be written)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    diversity = plan.strategy == "imgsyn" and plan.copies >= 2

    def write(batch, samples):
        rows, extras = zip(*(_write(plan, job, sample) for job, sample in zip(batch, samples)))
        record = plan.record(batch)
        record.parent.mkdir(parents=True, exist_ok=True)
        columns = json.dumps(batch_columns(list(rows), list(extras), diversity))
        # one file, written last and atomically: that it exists says the batch is complete
        write_text(record, columns + "\n" + "".join(r.line() + "\n" for r in rows))

    pending: deque = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="seggen-writer") as writer:
        for batch in batches:
            samples = [_score(plan, gens, s) for s in _generate_batch(plan, gens, batch)]
            pending.append(writer.submit(write, batch, samples))
            while len(pending) > ahead or (pending and pending[0].done()):
                pending.popleft().result()  # a failed write stops the run here
            bar.update(len(batch))
        while pending:
            pending.popleft().result()


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
    - `dask`: every shard as a task on a Dask cluster (`synthesize.dask`), then merged;
    - else local processes, one shard each (one per GPU of `synthesize.devices`; on the CPU
      `synthesize.workers`; one process: in this one), then merged.

    A call that runs every shard adds its wall time, images and devices to the dataset's compute record
    (STRATEGY.run.json); one stopped by Ctrl-C adds its time too (its images unknown: `generated` null).
    A process killed by a signal (SIGTERM, SIGKILL, a lost machine) records nothing, nor do hand-run
    shards (one file, many writers): the record then covers part of the dataset, which its `generated`
    total shows.
    """
    t0 = time.perf_counter()
    out = Path(params.synthesize.out) / strategy
    try:
        res = _synthesize(params, strategy, shard, num_shards, dask, progress)
    except KeyboardInterrupt:
        if shard is None and (out / WORK).is_dir():  # generation had started
            record_run(out, _entry(params, dask, None, t0, {}))
        raise
    if shard is not None:
        if "kept" in res:  # the shard that merged: the record exists
            record_run(out, None)
        return res
    res["compute"] = record_run(out, _entry(params, dask, res["generated"], t0, res) if res.get("generated") else None)
    return res


def _entry(params: Params, dask: bool, generated: int | None, t0: float, res: dict) -> dict:
    """One run's line of the compute record."""
    return {
        "generated": generated,
        "seconds": round(time.perf_counter() - t0, 3),  # wall time, model loading and filtering included
        "processes": len(res["shards"]) if "shards" in res else res.get("workers", 1),
        "device": _device_name(params, dask),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def _device_name(params: Params, dask: bool) -> str:
    import os

    import torch

    from seggen.synthesis import devices

    if dask:
        return f"dask cluster ({params.synthesize.dask.address or 'local'})"
    gpus = devices.resolve(params.synthesize.devices)
    if gpus:
        return f"{len(gpus)} x {torch.cuda.get_device_name(gpus[0])}"
    return f"CPU ({os.cpu_count()} cores)"


def _synthesize(params: Params, strategy: str, shard: int | None, num_shards: int, dask: bool, progress: bool) -> dict:
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from seggen.synthesis import devices
    from seggen.synthesis.filters import prepare_filter

    if shard is not None:
        return run_shard(params, strategy, shard, num_shards, progress)
    if num_shards != 1 and not dask:
        raise DataError("--num-shards needs --shard (or --dask to run all shards)")
    if dask:
        from seggen.synthesis.dask import synthesize_on_dask

        return synthesize_on_dask(params, strategy, num_shards if num_shards > 1 else None, progress)
    cfg = params.synthesize
    gpus = devices.resolve(cfg.devices)
    n = len(gpus) or cfg.workers
    plan = make_plan(params, strategy)  # the generators hashed once, here
    if n == 1 or prepare_output(plan):
        return run_shard(params, strategy, 0, 1, progress, plan=plan, device=f"cuda:{gpus[0]}" if gpus else "cpu")

    prepare_filter(params, progress)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
    p = params.model_copy(update={"synthesize": cfg.model_copy(update={"threads": threads})})
    bar = tqdm(
        total=len(plan.jobs),
        initial=plan.written(),
        desc=f"synthesize {strategy} [{n} {'GPUs' if gpus else 'workers'}]",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    # one single-process pool per worker: each is spawned with its own GPU (devices.pin), before
    # torch initialises CUDA there, so that its "cuda" is that GPU alone
    spawn = multiprocessing.get_context("spawn")
    pools = [
        ProcessPoolExecutor(1, mp_context=spawn, initializer=devices.pin, initargs=(gpus[i] if gpus else None,))
        for i in range(n)
    ]
    try:
        shard_kw = {"progress": False, "merge": False, "digests": plan.generators, "device": "cuda" if gpus else "cpu"}
        futures = [pool.submit(run_shard, p, strategy, i, n, **shard_kw) for i, pool in enumerate(pools)]
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            bar.update(plan.written() - bar.n)
        parts = [f.result() for f in futures]
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)
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
