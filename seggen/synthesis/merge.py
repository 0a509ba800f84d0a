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
from seggen.data.layout import open_split
from seggen.data.meta import META_FILE
from seggen.errors import DataError
from seggen.io import save_grid, write_json, write_text
from seggen.synthesis.manifest import ManifestRow
from seggen.synthesis.plan import Plan

log = logging.getLogger(__name__)


def merge_dataset(plan: Plan) -> dict:
    """Manifest, panoptic JSON, meta, summary and grid from the batches' records; stray files
    (of interrupted writes or earlier runs) removed; `.work/` deleted last. Linear in the samples,
    reading no image but the grid's 8."""
    cfg = plan.params.synthesize
    split, fmt = cfg.split, cfg.image_format
    lines: list[str] = []  # the manifest, as the shards wrote its rows (validated then)
    for b in plan.batches:
        record = plan.record(b)
        if not record.exists():
            raise DataError(f"{plan.out}: the batch of {b[0].id} is missing; run the remaining shards")
        lines += record.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    kept = [r for r in rows if r["kept"]]
    img_dir, lab_dir, pan_dir = plan.output_dirs(kept=True)
    expected = {
        img_dir: {f"{r['id']}.{fmt}" for r in kept},
        plan.out / "dropped" / "images": {f"{r['id']}.{fmt}" for r in rows if not r["kept"]},
        plan.out / "dropped" / "annotations": {f"{r['id']}.png" for r in rows if not r["kept"]},
    }
    if lab_dir is not None:
        expected[lab_dir] = {f"{r['id']}.png" for r in kept}
    if pan_dir is not None:
        expected[pan_dir] = {f"{r['id']}.png" for r in kept}
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
            if name.endswith(".tmp"):
                (d / name).unlink()
    extras = None  # each sample's segments and class colours, read where needed
    if plan.panoptic or (plan.strategy == "imgsyn" and cfg.imgsyn_per_source >= 2):
        extras = [json.loads(e) for b in plan.batches for e in plan.record(b).with_suffix(".extra.jsonl").open()]
        extras = [e for r, e in zip(rows, extras) if r["kept"]]

    if plan.panoptic:
        category = {c.id: c.category_id for c in plan.meta.classes}  # COCO layout: the source's own category ids
        images, anns = [], []
        for n, (r, e) in enumerate(zip(kept, extras), 1):
            images.append({"id": n, "file_name": f"{r['id']}.{fmt}", "height": r["height"], "width": r["width"]})
            segments = [{**seg, "category_id": category[int(seg["category_id"])]} for seg in e["segments"]]
            anns.append({"image_id": n, "file_name": f"{r['id']}.png", "segments_info": segments})
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
    write_text(plan.out / "manifest.jsonl", "".join(line + "\n" for line in lines))
    miou = [r["scores"]["sample_miou"] for r in rows if r["scores"]["sample_miou"] is not None]
    ign = [r["scores"]["ignored_fraction"] for r in rows if r["scores"]["ignored_fraction"] is not None]
    reasons: dict[str, int] = {}
    for r in rows:
        if r["drop_reason"]:
            reasons[r["drop_reason"]] = reasons.get(r["drop_reason"], 0) + 1
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

        groups: dict[str, list[dict]] = {}
        for r, e in zip(kept, extras):
            colours = {int(c): np.asarray(v) for c, v in e["colours"].items()}
            groups.setdefault(r["source_id"], []).append(colours)
        summary["diversity"] = imgsyn_diversity(groups, plan.params.data.root, split)
    summary["styles"] = _count([r["style"] for r in rows])
    _write_grid(plan, [ManifestRow.model_validate(r) for r in kept[:8]])
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
