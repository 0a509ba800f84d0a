"""Merging a synthesis run once every batch is written: manifest, panoptic JSON, summary, metrics, grid."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from seggen.data.images import load_label_png, load_rgb, resize_array
from seggen.data.layout import ignore_dir, open_split
from seggen.data.meta import META_FILE
from seggen.errors import DataError
from seggen.io import atomic_path, save_grid, write_json
from seggen.synthesis.diversity import Spreads
from seggen.synthesis.manifest import ManifestRow
from seggen.synthesis.plan import Plan, run_path

log = logging.getLogger(__name__)


def batch_columns(rows: list[ManifestRow], extras: list[dict], diversity: bool) -> dict:
    """What the merge needs of a batch's samples, as columns: the first line of the batch's record
    (Plan.record), before its manifest rows. The merge parses these, a fraction of the rows' bytes,
    copies the rows as written, and adds the batch's colour sums (ImgSyn's diversity) instead of
    reading the images again."""
    spreads = Spreads()
    if diversity:
        for r, e in zip(rows, extras):
            if r.kept:
                spreads.add(r.source_id, e["colours"])
    return {
        "id": [r.id for r in rows],
        "kept": [r.kept for r in rows],
        "height": [r.height for r in rows],
        "width": [r.width for r in rows],
        "miou": [r.scores.sample_miou for r in rows],
        "ignored": [r.scores.ignored_fraction for r in rows],
        "reason": [r.drop_reason for r in rows],
        "style": [r.style for r in rows],
        "segments": [e["segments"] for e in extras],
        "spreads": spreads.to_json(),
        "classes": [e["classes"] for e in extras],  # filtered runs: {class: [pixels, ignored]} per sample
    }


def add_class_counts(counts: dict, classes: dict | None, kept: bool) -> None:
    """Add one filtered sample to `counts` (class id -> samples and pixels kept or dropped): a dropped
    sample drops all its pixels, a kept one the pixels the pixel filter ignored."""
    for c, (pixels, ignored) in (classes or {}).items():
        n = counts.setdefault(int(c), {"samples_kept": 0, "samples_dropped": 0, "pixels_kept": 0, "pixels_dropped": 0})
        n["samples_kept" if kept else "samples_dropped"] += 1
        n["pixels_kept"] += pixels - ignored if kept else 0
        n["pixels_dropped"] += ignored if kept else pixels


def merge_dataset(plan: Plan) -> dict:
    """Manifest, panoptic JSON, meta, summary and grid from the batches' records; stray files
    (of interrupted writes or earlier runs) removed; `.work/` deleted last. One pass over the
    records, a batch at a time: the manifest rows are copied as written, the batches' columns are
    parsed; no image is read but the grid's 8, and what is held is a few fields per sample (and, for
    a panoptic layout, the segments its JSON needs)."""
    cfg = plan.params.synthesize
    split, fmt = cfg.split, cfg.image_format
    diversity = plan.strategy == "imgsyn" and plan.copies >= 2
    kept, dropped, first = [], [], []  # (id, height, width) of kept samples; ids of dropped; the grid's rows
    ignored = []  # ids of kept samples with pixels the pixel filter set aside (an ignore mask each)
    segments: list = []
    spreads = Spreads()
    miou, ign, reasons, styles = [], [], {}, []
    per_class: dict = {}  # class id -> what the filters kept and dropped of it (filtered runs only)
    panoptic = plan.panoptic  # a property that looks at the source dataset: once, not per row
    with atomic_path(plan.out / "manifest.jsonl") as tmp, open(tmp, "w") as manifest:
        for b in plan.batches:
            record = plan.record(b)
            if not record.exists():
                raise DataError(f"{plan.out}: the batch of {b[0].id} is missing; run the remaining shards")
            header, _, text = record.read_text().partition("\n")
            c = json.loads(header)
            if not isinstance(c.get("id"), list):  # a record without columns (an older seggen's)
                raise DataError(f"{record}: a record without the batch's columns; delete {plan.work} to regenerate")
            manifest.write(text)  # the rows as the shards wrote them (validated then)
            miou += [v for v in c["miou"] if v is not None]
            ign += [v for v in c["ignored"] if v is not None]
            for r in c["reason"]:
                if r:
                    reasons[r] = reasons.get(r, 0) + 1
            styles += c["style"]
            for cls, ok in zip(c.get("classes") or [], c["kept"]):
                add_class_counts(per_class, cls, ok)
            for k, (sid, ok) in enumerate(zip(c["id"], c["kept"])):
                if not ok:
                    dropped.append(sid)
                    continue
                kept.append((sid, c["height"][k], c["width"][k]))
                if c["ignored"][k]:
                    ignored.append(sid)
                if len(first) < 8:
                    first.append(ManifestRow.model_validate_json(text.splitlines()[k]))
                if panoptic:
                    segments.append(c["segments"][k])
            if diversity:
                spreads.update(c["spreads"])
        _sweep(plan, kept, dropped, ignored, keep=tmp)  # a missing file fails here, before the manifest is in place

    if panoptic:
        category = {c.id: c.category_id for c in plan.meta.classes}  # COCO layout: the source's own category ids
        images, anns = [], []
        for n, ((sid, h, w), segs) in enumerate(zip(kept, segments), 1):
            images.append({"id": n, "file_name": f"{sid}.{fmt}", "height": h, "width": w})
            segs = [{**seg, "category_id": category[int(seg["category_id"])]} for seg in segs]
            anns.append({"image_id": n, "file_name": f"{sid}.png", "segments_info": segs})
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
    samples = len(kept) + len(dropped)
    summary = {
        "strategy": plan.strategy,
        "fingerprint": plan.fingerprint,
        "samples": samples,
        "kept": len(kept),
        "dropped": len(dropped),
        "drop_reasons": reasons,
        "mean_sample_miou": float(np.mean(miou)) if miou else None,
        "mean_ignored_fraction": float(np.mean(ign)) if ign else None,
        "generators": plan.generators,
    }
    if diversity:
        summary["diversity"] = spreads.result(plan.params.data.root, split)
    summary["styles"] = _count(styles)
    if per_class:  # by class name, in the dataset's class order
        names = plan.meta.names
        summary["filter_per_class"] = {names[c - 1]: per_class[c] for c in sorted(per_class)}  # ids 1..N
    if cfg.plan:  # how the plan spent the budget: sources drawn, and the most copies of one
        drawn = {j.source for j in plan.jobs}
        summary["plan"] = {"file": str(cfg.plan), "sources": len(drawn), "max_copies": plan.copies}
    _write_grid(plan, first)
    write_json(plan.out / "summary.json", summary)
    write_metrics(plan.out, summary)
    shutil.rmtree(plan.work)
    return summary


def _sweep(plan: Plan, kept: list[tuple], dropped: list[str], ignored: list[str], keep: Path) -> None:
    """Every recorded sample's files present; any other file in the dataset's directories (of an
    interrupted write, or a sample of an earlier run) removed, but `keep` (the manifest being written)."""
    split, fmt = plan.params.synthesize.split, plan.params.synthesize.image_format
    img_dir, lab_dir, pan_dir = plan.output_dirs(kept=True)
    expected = {
        img_dir: {f"{sid}.{fmt}" for sid, _, _ in kept},
        plan.out / "dropped" / "images": {f"{sid}.{fmt}" for sid in dropped},
        plan.out / "dropped" / "annotations": {f"{sid}.png" for sid in dropped},
        ignore_dir(plan.out, split): {f"{sid}.png" for sid in ignored},
    }
    for d in (lab_dir, pan_dir):
        if d is not None:
            expected[d] = {f"{sid}.png" for sid, _, _ in kept}
    for d, names in expected.items():
        present = set(os.listdir(d)) if d.is_dir() else set()
        if names - present:
            raise DataError(
                f"{d}: {len(names - present)} file(s) missing, e.g. {sorted(names - present)[0]}; delete {plan.work} "
                "to regenerate"
            )
        for stray in present - names:
            (d / stray).unlink()
    # what interrupted atomic writes left elsewhere (the directories above are swept already)
    for d in {plan.out, plan.layout.panoptic_json(plan.out, split).parent}:
        for name in os.listdir(d) if d.is_dir() else []:
            if name.endswith(".tmp") and os.path.abspath(d / name) != os.path.abspath(keep):
                (d / name).unlink()


def metrics_path(out: Path) -> Path:
    """The dataset's DVC metrics file: beside its directory (a cached DVC output), so git tracks it."""
    return out.parent / f"{out.name}.metrics.json"


def record_run(out: Path, entry: dict | None) -> dict:
    """Add one synthesis call's cost to the dataset's compute record. The record belongs to one
    fingerprint (a dataset of other params starts a new one); a run that resumes an interrupted one
    adds its own entry. `generated` sums the entries that know their images: equal to the dataset's
    samples when every run was recorded. `entry` None: nothing was generated (the record is written
    if missing)."""
    from seggen.io import write_json

    fp = ""
    for f in (out / ".work" / "fingerprint", out / "summary.json"):  # as prepare_output reads them
        if f.exists():
            fp = f.read_text().strip() if f.suffix != ".json" else json.loads(f.read_text()).get("fingerprint", "")
            break
    path = run_path(out)
    try:
        rec = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:  # a record cut short: start it again
        rec = {}
    if rec.get("fingerprint") != fp:
        rec = {"fingerprint": fp, "runs": []}
    elif entry is None:
        return rec
    if entry is not None:
        rec["runs"].append(entry)
    rec["seconds"] = round(sum(r["seconds"] for r in rec["runs"]), 3)
    rec["generated"] = sum(r["generated"] or 0 for r in rec["runs"])
    write_json(path, rec)
    return rec


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

    # the per-class counts stay in summary.json: a metric per class and count would swamp `dvc metrics`
    m = numbers({k: v for k, v in summary.items() if k not in ("fingerprint", "generators", "filter_per_class")})
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
    img_dir, lab_dir, _ = plan.output_dirs(kept=True)
    if lab_dir is None:  # the COCO layout: labels from the panoptic annotation
        ds = open_split(plan.out, plan.params.synthesize.split, plan.meta)
        index = {sid: i for i, sid in enumerate(ds.ids)}

    def read(r: ManifestRow) -> tuple[np.ndarray, np.ndarray]:
        if lab_dir is None:
            return ds[index[r.id]]
        # the ADE20K layout: the sample's own files, not an index of the whole split
        return load_rgb(img_dir / f"{r.id}.{plan.params.synthesize.image_format}"), load_label_png(
            lab_dir / f"{r.id}.png"
        )

    colors = plan.meta.palette().colors
    tiles = []
    for r in rows:
        img, lab = read(r)
        img = resize_array(img, (64, 64), Image.BICUBIC)
        tiles.append(np.concatenate([colors[resize_array(lab.astype(np.uint8), (64, 64), Image.NEAREST)], img], 1))
    save_grid(tiles, plan.out / "grid.png", scale=2)
