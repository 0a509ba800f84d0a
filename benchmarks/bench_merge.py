"""Merging a synthetic dataset at the real ADE20K profile's scale: 1 M ImgSyn samples (20 k source
masks x 50), merged from their batches' records as `seggen synthesize` leaves them.

The records are synthetic (valid manifest rows, 16 per batch, class colours for the diversity
measure) and so are the files the merge checks for (empty image and label files: the merge lists
them, it does not read them). Measured: the merge alone (manifest, summary, diversity, metrics,
grid, stray-file sweep), wall seconds and peak RSS growth.

    python -m benchmarks.bench_merge [--rows 1000000]   (writes the `merge` section of docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import measured_row, update_section

PER_SOURCE = 50  # the real ADE20K profile's imgsyn_per_source
BATCH = 16


def build(root: Path, rows: int):
    """A benchmark dataset of the sources, and a plan whose every batch is recorded."""
    from seggen.config import BenchmarkParams, load_params
    from seggen.data.benchmark import generate
    from seggen.data.layout import open_split
    from seggen.synthesis.manifest import ManifestRow, Scores
    from seggen.synthesis.merge import batch_columns
    from seggen.synthesis.plan import Job, Plan

    data = root / "benchmark"
    bench = {"resolution": 64, "num_train": 64, "num_val": 4, "num_tuning": 4}
    generate(data, BenchmarkParams(**bench, domains={"unseen": 1, "tuning": 1, "images": 2}), seed=0, progress=False)
    shutil.rmtree(data / "panoptic")  # as ADEChallengeData2016: label PNGs only
    ds = open_split(data, "training")
    (root / "params.yaml").write_text("{}\n")  # the defaults, and:
    params = load_params(
        root / "params.yaml",
        {
            "data.root": str(data),
            "synthesize.out": str(root / "synthetic"),
            "synthesize.imgsyn_per_source": PER_SOURCE,
            "synthesize.batch_size": BATCH,
        },
    )
    sources = [f"ADE_train_{i:08d}" for i in range(-(-rows // PER_SOURCE))]
    jobs = [
        Job(n, sources[n // PER_SOURCE], n % PER_SOURCE, "a kitchen with a table and two chairs", f"imgsyn_{n:09d}", n)
        for n in range(rows)
    ]
    batches = [jobs[i : i + BATCH] for i in range(0, rows, BATCH)]
    digest = {"mask2img": "sha256:" + "0" * 64}
    out = root / "synthetic" / "imgsyn"
    plan = Plan(params, "imgsyn", out, jobs, batches, ds.meta, ds, digest, "0" * 16, copies=PER_SOURCE)
    img_dir, lab_dir, _ = plan.output_dirs(kept=True)
    for d in (img_dir, lab_dir, plan.record(batches[0]).parent):
        d.mkdir(parents=True, exist_ok=True)
    tile = np.zeros((64, 64, 3), np.uint8)  # the grid's 8 samples are read: real PNGs for those
    rng = np.random.default_rng(0)
    for b in batches:
        rows, extras = [], []
        for j in b:
            row = ManifestRow(
                id=j.id,
                strategy="imgsyn",
                source_id=j.source,
                index=j.k,
                prompt=j.prompt,
                image_prompt=j.prompt,
                seed=j.seed,
                generators=digest,
                scores=Scores(),
                kept=True,
                width=683,
                height=512,
            )
            rows.append(row)
            colours = {str(c): (rng.random(3) * 255).tolist() for c in rng.choice(np.arange(1, 11), 6, replace=False)}
            extras.append({"segments": None, "colours": colours})
            if j.index < 8:
                Image.fromarray(tile).save(img_dir / f"{j.id}.png")
                Image.fromarray(tile[..., 0]).save(lab_dir / f"{j.id}.png")
            else:
                for d in (img_dir, lab_dir):
                    os.close(os.open(d / f"{j.id}.png", os.O_CREAT | os.O_WRONLY, 0o644))
        record = plan.record(b)
        # as a shard writes it: the batch's columns, then its manifest rows
        columns = json.dumps(batch_columns(rows, extras, diversity=True))
        record.write_text(columns + "\n" + "".join(r.line() + "\n" for r in rows))
    return plan


def main() -> None:
    from seggen.synthesis.merge import merge_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        t0 = time.perf_counter()
        plan = build(Path(tmp), args.rows)
        setup = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        t0 = time.perf_counter()
        summary = merge_dataset(plan)
        seconds = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        manifest = plan.out / "manifest.jsonl"
        lines = sum(1 for _ in manifest.open())
    assert lines == args.rows and summary["samples"] == args.rows and summary["diversity"]["masks"] > 0
    print(f"{args.rows} rows: merged in {seconds:.1f} s (set up in {setup:.0f} s), peak RSS {rss:.2f} GiB")
    if args.no_doc:
        return
    body = "\n".join(
        [
            "## Merging a synthetic dataset",
            "",
            "Merging an ImgSyn dataset of the real ADE20K profile's size from its batches' records:",
            f"{args.rows:,} samples, 50 per source mask, batches of 16 (synthetic records and empty files,",
            "so only the merge is timed): the manifest, summary, ImgSyn diversity (from the batches'",
            "colour sums), metrics, grid, the stray-file sweep and deleting the records.",
            "",
            "| rows | merge | peak RSS of the process |",
            "| ---: | ---: | ---: |",
            f"| {args.rows:,} | {seconds:.1f} s | {rss:.2f} GiB (before the merge: {rss0:.2f}) |",
            measured_row(f"python -m benchmarks.bench_merge --rows {args.rows}", 3),
        ]
    )
    update_section("merge", body)


if __name__ == "__main__":
    sys.exit(main())
