"""ImgSyn diversity: do the images Mask2Img draws for one mask vary as much as real images do?

For every class c: the mean colour (RGB, 0-255) of its pixels in an image. The spread of a set of
images is the root-mean-square distance of those colours from their mean (over the images that
show c), averaged over classes:

- generated: per source mask, the spread over the images generated for that mask (ImgSyn with
  imgsyn_per_source >= 2), averaged over masks;
- real: the spread over the real training images (one colour per image per class).

ratio = generated / real. Above 1, one mask's images differ more than the real images do (the
style prompts widen the appearance); near 0, Mask2Img paints each mask the same way every time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MIN_PIXELS = 16  # a class must cover this many pixels of an image to give it a colour


def class_colours(image: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[int, np.ndarray]:
    """class id (1..N; 0 = other, ignored) -> mean RGB of its pixels."""
    out = {}
    flat, img = labels.ravel(), image.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(flat, minlength=num_classes + 1)
    for c in np.nonzero(counts >= MIN_PIXELS)[0]:
        if c:
            out[int(c)] = img[flat == c].mean(0)
    return out


def spread(colours: list[np.ndarray]) -> float | None:
    """RMS distance of RGB colours from their mean; None for fewer than two."""
    if len(colours) < 2:
        return None
    x = np.asarray(colours, np.float64)  # colours: arrays or [r, g, b] lists (as a merge reads them)
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


def _by_class(colours) -> dict[int, list[np.ndarray]]:
    """[class id -> colour] per image -> class id -> the colours of the images that show it."""
    per: dict[int, list[np.ndarray]] = {}
    for image in colours:
        for c, col in image.items():
            per.setdefault(c, []).append(col)
    return per


def _mean_spread(per: dict[int, list[np.ndarray]]) -> dict[int, float]:
    return {c: s for c, cols in per.items() if (s := spread(cols)) is not None}


class Spreads:
    """The generated side of the measure as sums that merge in any grouping: per source mask, its
    kept images and, per class, n, the sum of the class's mean colours and the sum of their squared
    norms -- the spread is sqrt(E|x|^2 - |E x|^2). Each shard sums its batches' images (add), the
    merge adds the batches' sums (update): no colour list is kept, no image read again."""

    def __init__(self):
        self.sources: dict[str, list] = {}  # source -> [images, {class: [n, sum r, sum g, sum b, sum |x|^2]}]

    def add(self, source: str, colours: dict[int, np.ndarray]) -> None:
        """One kept image of `source`: class id -> its mean colour."""
        entry = self.sources.setdefault(source, [0, {}])
        entry[0] += 1
        for c, v in colours.items():
            r, g, b = (float(x) for x in v)
            a = entry[1].setdefault(int(c), [0, 0.0, 0.0, 0.0, 0.0])
            a[0] += 1
            a[1] += r
            a[2] += g
            a[3] += b
            a[4] += r * r + g * g + b * b

    def to_json(self) -> dict:
        return {s: [n, {str(c): a for c, a in per.items()}] for s, (n, per) in self.sources.items()}

    def update(self, sums: dict) -> None:
        """Add another set of sums (to_json's form), e.g. a batch's."""
        for source, (n, per) in sums.items():
            entry = self.sources.setdefault(source, [0, {}])
            entry[0] += n
            for c, a in per.items():
                mine = entry[1].setdefault(int(c), [0, 0.0, 0.0, 0.0, 0.0])
                for k in range(5):
                    mine[k] += a[k]

    def _spreads(self) -> tuple[dict[int, list[float]], list[int]]:
        """Per class, the spread of every source mask with 2+ images showing it; the image count of
        every source mask with 2+ images."""
        per_class: dict[int, list[float]] = {}
        sizes = []
        for images, per in self.sources.values():
            if images < 2:
                continue
            sizes.append(images)
            for c, (n, r, g, b, sq) in sorted(per.items()):
                if n >= 2:
                    per_class.setdefault(c, []).append(
                        float(np.sqrt(max(sq / n - (r * r + g * g + b * b) / n**2, 0.0)))
                    )
        return per_class, sizes

    def result(self, real_root: str | Path, split: str, max_real: int = 500) -> dict | None:
        """The measure against `max_real` real images of `split`; None when no source mask has two."""
        from seggen.data.layout import open_split

        gen_per_class, sizes = self._spreads()
        if not sizes:
            return None
        real = open_split(real_root, split)
        n, names = len(real.meta.names), real.meta.names
        pick = np.linspace(0, len(real) - 1, min(max_real, len(real))).round().astype(int)
        real_per_class = _mean_spread(_by_class(class_colours(*real[int(i)], n) for i in pick))
        classes = sorted(c for c in gen_per_class if c in real_per_class and real_per_class[c] > 0)
        if not classes:
            return None
        gen = float(np.mean([np.mean(gen_per_class[c]) for c in classes]))
        ref = float(np.mean([real_per_class[c] for c in classes]))
        return {
            "masks": len(sizes),
            "images_per_mask": float(np.mean(sizes)),
            "generated_spread": gen,
            "real_spread": ref,
            "ratio": gen / ref,
            "per_class_ratio": {names[c - 1]: float(np.mean(gen_per_class[c]) / real_per_class[c]) for c in classes},
        }


def imgsyn_diversity(
    groups: dict[str, list[dict[int, np.ndarray]]], real_root: str | Path, split: str, max_real: int = 500
) -> dict | None:
    """The measure above from the class colours of each source mask's kept images (in sample
    order); None when no source mask has two."""
    spreads = Spreads()
    for source, cols in groups.items():
        for colours in cols:
            spreads.add(source, colours)
    return spreads.result(real_root, split, max_real)
