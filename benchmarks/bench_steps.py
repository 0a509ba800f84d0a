"""Sampling steps against quality: the generators' alignment and diversity measures at 10 / 15 / 20 /
30 / 50 steps, for DPM-Solver++ (2M) and UniPC, on the `tuning` split (what choices read; never
`validation`), with the synthesis guidance and style prompts of params.yaml.

- Text2Mask (tuning captions -> masks): valid-class rate, total-variation distance of the class
  frequencies to the real masks', prompt recall (classes the caption names that appear);
- Mask2Img alignment (tuning masks -> images): a probe segmenter trained on the real training images
  scores the generated images against their masks (mIoU), as a share of its score on the real images;
- ImgSyn diversity: 4 images per tuning mask, each with its own seed and drawn style; the spread of
  per-class colours across one mask's images over the real images' (seggen.synthesis.diversity).

Same seeds in every cell, so the cells differ by the solver and the steps only.

    python -m benchmarks.bench_steps      (docs/img/synthesis_steps.png and the `steps` section of docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import measured_row, update_section

STEPS = (10, 15, 20, 30, 50)
SOLVERS = ("dpmsolver++", "unipc")
DOCS = Path(__file__).resolve().parents[1] / "docs"


def measure(params, n: int, masks: int, per_mask: int) -> list[dict]:
    from seggen import training
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, SegGenText2MaskPipeline, seeded
    from seggen.generators.quality import held_out, probe_miou, train_probe
    from seggen.generators.text2mask import mask_quality
    from seggen.synthesis.diversity import class_colours, imgsyn_diversity
    from seggen.synthesis.plan import draw_style

    syn = params.synthesize
    t2m = SegGenText2MaskPipeline.from_model_dir(syn.text2mask, precision=syn.precision)
    m2i = SegGenMask2ImgPipeline.from_model_dir(syn.mask2img, precision=syn.precision)
    caps, classes, labs_t, _, meta = held_out(params, t2m.resolution, "tuning", n)
    _, _, labs, imgs, _ = held_out(params, m2i.resolution, "tuning", n)
    palette = meta.palette().colors
    probe = train_probe(params, m2i.resolution, progress=False)
    real = probe_miou(probe, imgs, labs, meta.names)

    def seed(*key) -> int:
        return training.seed_for(params.seed, "bench-steps", *key)

    def styled(caption: str, *key) -> str:  # Mask2Img's prompt as synthesis draws it
        style = draw_style(syn.styles, seed("style", *key))
        return f"{caption}, {style}" if style else caption

    def draw(maps, prompts, seeds, steps, solver) -> np.ndarray:
        g = seeded(seeds)
        return m2i(maps, prompts, 1, steps, syn.mask2img_guidance, g, solver, output_type="uint8").images

    bs = syn.batch_size
    rows = []
    for solver in SOLVERS:
        for steps in STEPS:
            t0 = time.perf_counter()
            labels = np.concatenate(
                [
                    t2m(
                        caps[b : b + bs],
                        1,
                        steps,
                        syn.text2mask_guidance,
                        seeded(seed("t2m", i) for i in range(b, min(n, b + bs))),
                        solver,
                        output_type="uint8",
                    ).labels
                    for b in range(0, n, bs)
                ]
            )
            q = mask_quality(labels, labs_t, classes, meta.names, int(t2m.info.get("min_class_pixels", 16)))
            gen = np.concatenate(
                [
                    draw(
                        palette[labs[b : b + bs]],
                        [styled(c, i) for i, c in enumerate(caps[b : b + bs], b)],
                        [seed("m2i", i) for i in range(b, min(n, b + bs))],
                        steps,
                        solver,
                    )
                    for b in range(0, n, bs)
                ]
            )
            fake = probe_miou(probe, gen, labs, meta.names)
            groups = {}
            for i in range(masks):
                jobs = [(i, k) for k in range(per_mask)]
                out = draw(
                    palette[labs[[i] * per_mask]],
                    [styled(caps[i], i, k) for _, k in jobs],
                    [seed("div", i, k) for _, k in jobs],
                    steps,
                    solver,
                )
                groups[str(i)] = [class_colours(o, labs[i], len(meta.names)) for o in out]
            div = imgsyn_diversity(groups, params.data.root, "tuning")
            rows.append(
                {
                    "solver": solver,
                    "steps": steps,
                    "valid_class_rate": q["valid_class_rate"],
                    "tv_distance": q["tv_distance"],
                    "prompt_recall": q["prompt_recall"],
                    "alignment": fake / real,
                    "diversity": div["ratio"] if div else None,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def chart(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    measures = [
        ("alignment", "Mask2Img alignment (probe mIoU / real)"),
        ("diversity", "ImgSyn diversity (spread / real)"),
        ("prompt_recall", "Text2Mask prompt recall"),
        ("tv_distance", "Text2Mask class-frequency TV distance (lower: closer)"),
    ]
    fig = Figure(figsize=(10, 6.4), dpi=100)
    for k, (key, title) in enumerate(measures):
        ax = fig.add_subplot(2, 2, k + 1)
        for solver, style in zip(SOLVERS, ("o-", "s--")):
            pts = [(r["steps"], r[key]) for r in rows if r["solver"] == solver and r[key] is not None]
            ax.plot(*zip(*pts), style, label=solver)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("steps", fontsize=8)
        ax.set_xticks(STEPS)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    from seggen.config import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-n", type=int, default=64, help="tuning captions / masks per cell")
    ap.add_argument("--masks", type=int, default=16, help="tuning masks of the diversity measure")
    ap.add_argument("--per-mask", type=int, default=4)
    args = ap.parse_args()
    params = load_params(args.params)
    rows = measure(params, args.n, args.masks, args.per_mask)
    (DOCS / "img").mkdir(parents=True, exist_ok=True)
    chart(rows, DOCS / "img" / "synthesis_steps.png")
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    table = [
        "| solver | steps | alignment | diversity | prompt recall | TV distance | valid rate | s per cell |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(
            f"| {r['solver']} | {r['steps']} | {fmt(r['alignment'])} | {fmt(r['diversity'])} | "
            f"{fmt(r['prompt_recall'])} | {fmt(r['tv_distance'])} | {fmt(r['valid_class_rate'])} | {r['seconds']:.0f} |"
        )
    cmd = f"python -m benchmarks.bench_steps -n {args.n} --masks {args.masks} --per-mask {args.per_mask}"
    body = "\n".join(
        [
            "## Sampling steps against quality",
            "",
            f"The bundled generators on the `tuning` split ({args.n} captions and masks; diversity: {args.masks} "
            f"masks x {args.per_mask} images), synthesis guidance and styles of params.yaml, the same seeds in every "
            "cell (`benchmarks/bench_steps.py`; chart: docs/img/synthesis_steps.png).",
            "",
            *table,
            measured_row(cmd, 8),
        ]
    )
    update_section("steps", body)


if __name__ == "__main__":
    sys.exit(main())
