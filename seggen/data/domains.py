"""Looks: the benchmark's appearance space, and the distribution its unseen domains are drawn from.

A `Domain` is how the renderer turns a scene into pixels: class hues, saturation, brightness, a
colour cast, haze, sensor noise, texture (scale, amplitude, kind) and the side the light comes from.
The labelled data (`training`, `validation`, `tuning`) is rendered in one fixed domain, `LABELLED`.

Robustness is measured on many domains, not one: `validation_shift` holds K domains and
`tuning_shift` K_t others, each drawn from `sample_domain` -- the distribution below, written
once and never adjusted to a score -- with their own seed (`data.benchmark.domains.seed`), and
redrawn while nearer than `min_distance` to the labelled domain. The captioned corpus the prior
learns from (seggen.data.corpus) draws its looks from the same distribution with another stream:
nothing about any evaluation domain is read to draw it (the report shows how near the corpus came
to each one, and never filters by it).

The distribution, per axis (independent):

| axis            | draw                                                          |
|-----------------|---------------------------------------------------------------|
| hue_shift       | uniform(-0.5, 0.5) turns with p 0.5, else normal(0, 0.05)     |
| sat_scale       | uniform(0.4, 1.25)                                            |
| brightness      | uniform(0.45, 1.15)                                           |
| cast (r, g, b)  | uniform(0.8, 1.2) each                                        |
| haze            | uniform(0.0, 0.5)                                             |
| noise_sigma     | uniform(0, 14) grey levels                                    |
| texture_scale   | uniform(0.03, 0.2) of the image side                          |
| texture_amp     | uniform(0.04, 0.3)                                            |
| texture         | blotches, stripes or speckle, 1/3 each                        |
| light_direction | uniform(-1, 1): which side is lit (0: either, per image)      |

`domain_distance` puts every axis on the scale of its range (a full-range difference counts 1;
hue on the circle, a half turn counts 1; another texture kind 0.5), so distances read the same
on every axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

TEXTURES = ("blotches", "stripes", "speckle")


@dataclass(frozen=True)
class Domain:
    hue_shift: float  # added to every class hue (turns)
    sat_scale: float
    brightness: float
    cast: tuple[float, float, float]  # multiplicative colour cast
    haze: float  # blend towards the haze colour with distance
    noise_sigma: float
    texture_scale: float  # value-noise cell size, as a fraction of the image
    texture_amp: float
    texture: str = "blotches"  # stuff textures: blotches | stripes (ploughed, tiled) | speckle (fine grain)
    light_direction: float = 0.0  # added to each image's random light direction in [-1, 1]

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @staticmethod
    def from_record(r: dict) -> Domain:
        return Domain(**{**r, "cast": tuple(r["cast"])})


# the labelled data's look: daylight, mild haze, light noise, blotchy textures
LABELLED = Domain(0.0, 1.0, 1.0, (1.0, 1.0, 1.0), 0.10, 5.0, 0.12, 0.10, "blotches", 0.0)

# per-axis ranges of the distribution: the unit of `domain_distance`
_RANGES = {
    "sat_scale": 0.85,
    "brightness": 0.7,
    "cast": 0.4,
    "haze": 0.5,
    "noise_sigma": 14.0,
    "texture_scale": 0.17,
    "texture_amp": 0.26,
    "light_direction": 2.0,
}


def sample_domain(rng: np.random.Generator) -> Domain:
    """One draw of the documented look distribution (module docstring)."""
    hue = float(rng.uniform(-0.5, 0.5)) if rng.random() < 0.5 else float(rng.normal(0, 0.05))
    return Domain(
        hue_shift=hue,
        sat_scale=float(rng.uniform(0.4, 1.25)),
        brightness=float(rng.uniform(0.45, 1.15)),
        cast=tuple(float(c) for c in rng.uniform(0.8, 1.2, 3)),
        haze=float(rng.uniform(0.0, 0.5)),
        noise_sigma=float(rng.uniform(0.0, 14.0)),
        texture_scale=float(rng.uniform(0.03, 0.2)),
        texture_amp=float(rng.uniform(0.04, 0.3)),
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        light_direction=float(rng.uniform(-1.0, 1.0)),
    )


def domain_vector(d: Domain) -> np.ndarray:
    """The continuous axes (not hue, not texture kind), each in units of its range."""
    r = _RANGES
    return np.array(
        [
            d.sat_scale / r["sat_scale"],
            d.brightness / r["brightness"],
            *(np.asarray(d.cast) / r["cast"]),
            d.haze / r["haze"],
            d.noise_sigma / r["noise_sigma"],
            d.texture_scale / r["texture_scale"],
            d.texture_amp / r["texture_amp"],
            d.light_direction / r["light_direction"],
        ],
        np.float64,
    )


def domain_distance(a: Domain, b: Domain) -> float:
    dh = abs(a.hue_shift - b.hue_shift) % 1.0
    dh = min(dh, 1.0 - dh) / 0.5
    kind = 0.0 if a.texture == b.texture else 0.5
    return float(math.sqrt(dh**2 + kind**2 + float(np.sum((domain_vector(a) - domain_vector(b)) ** 2))))


def draw_domains(seed: int, stream: int, k: int, min_distance: float) -> list[Domain]:
    """`k` domains of the distribution from the stream (seed, stream), each at least `min_distance`
    from the labelled domain (nearer draws are redrawn). Depends on nothing else."""
    rng = np.random.default_rng([seed, 1000 + stream])
    out: list[Domain] = []
    for _ in range(100_000 * max(k, 1)):
        if len(out) == k:
            return out
        d = sample_domain(rng)
        if domain_distance(d, LABELLED) >= min_distance:
            out.append(d)
    raise ValueError(f"min_distance {min_distance}: too few draws of the look distribution are that far")
