"""Colour-decode throughput: 512x512 colour maps, ADE20K-150 palette, one core, vs the naive broadcast."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from benchmarks.common import measured_row, timeit
from seggen.codec import build_nearest_lut, decode_naive, palette_for_ade20k


def inputs(ade_label: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pal = palette_for_ade20k()
    lab = np.asarray(Image.fromarray(ade_label).resize((512, 512), Image.NEAREST))
    clean = pal.encode(lab)
    noisy = np.clip(clean.astype(np.int16) + rng.normal(0, 8, clean.shape).round().astype(np.int16), 0, 255).astype(
        np.uint8
    )
    uniform = rng.integers(0, 256, clean.shape, dtype=np.uint8)
    return {"clean colour map": clean, "noisy colour map (sigma 8)": noisy, "uniform random RGB": uniform}


def run(ade_label: np.ndarray) -> tuple[str, dict]:
    pal = palette_for_ade20k()
    t = time.perf_counter()
    build_nearest_lut(pal.colors)
    build_s = time.perf_counter() - t
    pal.lut()
    rows, figures = [], {"lut_build_s": build_s}
    for name, rgb in inputs(ade_label, np.random.default_rng(0)).items():
        mpx = rgb.shape[0] * rgb.shape[1] / 1e6
        fast = timeit(lambda rgb=rgb: pal.decode(rgb), repeat=20, warmup=3)
        naive = timeit(lambda rgb=rgb: decode_naive(rgb, pal.colors), repeat=3, warmup=1)
        assert (pal.decode(rgb) == decode_naive(rgb, pal.colors)).all()
        rows.append(f"| {name} | {mpx / fast:.1f} | {mpx / naive:.2f} | {naive / fast:.0f}x |")
        figures[name] = {"mpx_s": mpx / fast, "naive_mpx_s": mpx / naive}
    body = "\n".join(
        [
            "| input (512x512, 151 colours incl. ignore) | seggen decode, Mpx/s | naive broadcast, Mpx/s | speed-up |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            measured_row("make bench", 4, ", one core"),
        ]
    )
    body += f"\n\nOne-off lookup-table build for the palette: {build_s:.2f} s (cached per palette in the process)."
    return body, figures
