"""Mask colour codec: label maps <-> RGB colour maps (the representation Text2Mask generates).

Decoding maps every RGB value to the nearest palette colour (squared Euclidean distance, ties to
the lowest index), so a noisy generated colour map still decodes to valid labels. It is exact and
fast because the nearest entry of all 2^24 colours is precomputed once per palette into a lookup
table: the RGB cube is cut into 8x8x8 boxes; a palette colour can only be nearest somewhere in a
box if its minimum distance to the box is no more than the smallest maximum distance of any
colour, so most boxes have a single candidate and are filled whole, and only the colours of the
remaining boxes are compared against their few candidates. Decoding is then one table gather.

Instance-aware encoding (panoptic / instance data): a thing pixel whose right or lower neighbour
belongs to another instance of the same class is drawn in a reserved boundary colour. Decoding
takes connected components (4-connectivity) of each thing class outside the boundary, then gives
each boundary pixel the class and instance of its nearest non-boundary pixel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seggen.errors import DataError

_BOX = 8
_GRID = 256 // _BOX
_LUT_CACHE: dict[bytes, np.ndarray] = {}
_LUT_LOCK = threading.Lock()


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.astype(np.int32)[..., None, :] - b.astype(np.int32)
    return (d * d).sum(-1)


def make_distinct(colors: np.ndarray, reserved: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """Replace every repeated colour (and any equal to a reserved one) by a nearby free colour.

    The first occurrence keeps its colour. A replacement is the colour within +-48 per channel
    (step 4) that is farthest from all other colours in use, ties broken by closeness to the
    original, so the result is deterministic.
    """
    colors = np.asarray(colors, dtype=np.int32).reshape(-1, 3).copy()
    used: list[tuple[int, int, int]] = [tuple(map(int, c)) for c in reserved]
    steps = np.arange(-48, 49, 4)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    for i, c in enumerate(colors):
        t = tuple(int(v) for v in c)
        if t in used:
            cand = np.clip(c + offsets, 0, 255)
            others = np.array(used + [tuple(x) for x in colors[i + 1 :]], dtype=np.int32)
            mind = _sqdist(cand, others).min(-1)
            closeness = -((cand - c) ** 2).sum(-1)
            best = np.lexsort((closeness, mind))[-1]
            colors[i] = cand[best]
            t = tuple(int(v) for v in colors[i])
        used.append(t)
    return colors.astype(np.uint8)


def build_nearest_lut(colors: np.ndarray) -> np.ndarray:
    """Nearest palette index for every 24-bit colour, shape (2**24,), indexed by r<<16|g<<8|b."""
    colors = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    k = len(colors)
    if k == 0:
        raise ValueError("empty palette")
    dtype = np.uint8 if k <= 256 else np.uint16
    lo = np.arange(_GRID) * _BOX
    hi = lo + _BOX - 1
    dmin = np.zeros((_GRID,) * 3 + (k,), np.int64)
    dmax = np.zeros_like(dmin)
    for axis in range(3):
        c = colors[:, axis][None, :]
        below = np.maximum(lo[:, None] - c, 0)
        above = np.maximum(c - hi[:, None], 0)
        mn = np.maximum(below, above) ** 2
        mx = np.maximum((c - lo[:, None]) ** 2, (c - hi[:, None]) ** 2)
        shape = [1, 1, 1, k]
        shape[axis] = _GRID
        dmin += mn.reshape(shape)
        dmax += mx.reshape(shape)
    cand = dmin <= dmax.min(-1, keepdims=True)
    ncand = cand.sum(-1)
    first = cand.argmax(-1).astype(dtype)  # the only candidate where ncand == 1
    lut = np.empty((_GRID, _BOX, _GRID, _BOX, _GRID, _BOX), dtype)
    lut[...] = first[:, None, :, None, :, None]

    amb = np.argwhere(ncand > 1)
    if len(amb):
        namb = ncand[amb[:, 0], amb[:, 1], amb[:, 2]]
        amb = amb[np.argsort(namb, kind="stable")]  # similar candidate counts share a chunk
        namb = np.sort(namb, kind="stable")
        cols32 = colors.astype(np.int32)
        box = np.arange(_BOX, dtype=np.int32)
        s = 0
        while s < len(amb):
            kmax = int(namb[min(len(amb) - 1, s + 2047)])
            e = min(len(amb), s + max(1, 2_000_000 // (_BOX**3 * kmax)))
            kmax = int(namb[e - 1])
            cells = amb[s:e]
            c = cand[cells[:, 0], cells[:, 1], cells[:, 2]]
            # candidate indices in ascending order, so argmin's first minimum is the lowest index
            order = np.argsort(~c, axis=-1, kind="stable")[:, :kmax]
            cc = cols32[order]  # (m, kmax, 3)
            # squared distance is separable per channel: (m, 8, kmax) per axis, summed by broadcast
            per_axis = [
                (cells[:, a, None, None].astype(np.int32) * _BOX + box[None, :, None] - cc[:, None, :, a]) ** 2
                for a in range(3)
            ]
            d = per_axis[0][:, :, None, None, :] + per_axis[1][:, None, :, None, :] + per_axis[2][:, None, None, :, :]
            invalid = np.arange(kmax)[None, :] >= namb[s:e, None]
            d[np.broadcast_to(invalid[:, None, None, None, :], d.shape)] = np.iinfo(np.int32).max
            best = np.take_along_axis(order, d.reshape(len(cells), -1, kmax).argmin(-1), axis=1).astype(dtype)
            best = best.reshape(-1, _BOX, _BOX, _BOX)
            for (r, g, b), blk in zip(cells, best):
                lut[r, :, g, :, b, :] = blk
            s = e
    return lut.reshape(-1)


def rgb_keys(rgb: np.ndarray) -> np.ndarray:
    """Pack an (..., 3) uint8 array into r<<16 | g<<8 | b (uint32)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB (..., 3), got {rgb.dtype} {rgb.shape}")
    key = rgb[..., 0].astype(np.uint32)
    key <<= 8
    key |= rgb[..., 1]
    key <<= 8
    key |= rgb[..., 2]
    return key


def decode_naive(rgb: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Reference nearest-colour decode by broadcasting: O(pixels x palette). Benchmarks/tests only."""
    px = rgb.reshape(-1, 3).astype(np.int32)
    d = ((px[:, None, :] - np.asarray(colors, np.int32)[None]) ** 2).sum(-1)
    return d.argmin(-1).reshape(rgb.shape[:-1])


@dataclass(frozen=True)
class Palette:
    """Colour of every label value 0..K-1 (index 0 is usually "ignore/other").

    With `boundary=True` one more colour, at index `boundary_index` (= K), marks instance
    boundaries for the instance-aware encoding.
    """

    colors: np.ndarray
    names: tuple[str, ...] = ()
    things: frozenset[int] = frozenset()
    boundary: bool = False
    _lut: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        class_colors: Sequence[Sequence[int]],
        names: Sequence[str] = (),
        ignore_color: Sequence[int] = (0, 0, 0),
        things: Sequence[int] = (),
        boundary: bool = False,
        boundary_color: Sequence[int] = (255, 255, 255),
    ) -> Palette:
        """Palette for labels 0 = ignore and 1..N = classes (the ADE20K convention).

        Repeated colours are made distinct; `things` are label values (1..N) that have instances.
        """
        raw = np.concatenate([np.asarray([ignore_color]), np.asarray(class_colors)]).astype(np.int32)
        if boundary:
            raw = np.concatenate([raw, np.asarray([boundary_color], np.int32)])
        colors = make_distinct(raw)
        names = tuple(names)
        if names and len(names) != len(class_colors):
            raise ValueError(f"{len(names)} names for {len(class_colors)} colours")
        return cls(
            colors=colors, names=("ignore",) + names if names else (), things=frozenset(things), boundary=boundary
        )

    @property
    def num_labels(self) -> int:
        """Label values 0..num_labels-1 (ignore + classes), boundary excluded."""
        return len(self.colors) - int(self.boundary)

    @property
    def boundary_index(self) -> int:
        if not self.boundary:
            raise ValueError("palette has no boundary colour")
        return len(self.colors) - 1

    def lut(self) -> np.ndarray:
        if not self._lut:
            key = self.colors.tobytes()
            with _LUT_LOCK:
                if key not in _LUT_CACHE:
                    _LUT_CACHE[key] = build_nearest_lut(self.colors)
                self._lut.append(_LUT_CACHE[key])
        return self._lut[0]

    # -- semantic -----------------------------------------------------------------------------
    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Label map (H, W) -> RGB colour map (H, W, 3) uint8."""
        labels = np.asarray(labels)
        if labels.size and int(labels.max()) >= self.num_labels:
            bad = int(labels.max())
            raise DataError(f"label value {bad} has no colour (palette covers 0..{self.num_labels - 1})")
        return self.colors[labels]

    def decode(self, rgb: np.ndarray, strict: bool = False) -> np.ndarray:
        """RGB colour map -> label map by nearest palette colour (boundary pixels -> boundary_index).

        strict=True raises if any pixel is not exactly a palette colour (for clean label maps).
        """
        idx = self.lut()[rgb_keys(rgb)]
        if strict:
            exact = (self.colors[idx] == rgb).all(-1)
            if not exact.all():
                y, x = np.argwhere(~exact)[0]
                raise DataError(f"colour {tuple(int(v) for v in rgb[y, x])} at ({y}, {x}) is not in the palette")
        return idx

    # -- instances ----------------------------------------------------------------------------
    def encode_instances(self, labels: np.ndarray, instances: np.ndarray) -> np.ndarray:
        """Colour map with boundary colour between touching instances of the same thing class.

        `instances`: int map, one id per thing instance (0 or any value for stuff pixels).
        """
        rgb = self.encode(labels).copy()
        rgb[instance_boundaries(labels, instances, self.things)] = self.colors[self.boundary_index]
        return rgb

    def decode_instances(self, rgb: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Colour map -> (labels, instance ids). Instance ids are 1.. per thing instance, 0 elsewhere.

        Components smaller than `min_area` pixels are dropped from the instance map (their
        pixels keep their class label, instance id 0).
        """
        from scipy import ndimage

        lab = self.decode(rgb).astype(np.int32)
        is_b = lab == self.boundary_index
        inst = np.zeros(lab.shape, np.int32)
        four = ndimage.generate_binary_structure(2, 1)
        next_id = 1
        for c in sorted(self.things):
            comp, n = ndimage.label((lab == c) & ~is_b, structure=four)
            if n == 0:
                continue
            if min_area > 1:
                sizes = np.bincount(comp.ravel(), minlength=n + 1)
                keep = sizes >= min_area
                keep[0] = False
                remap = np.zeros(n + 1, np.int32)
                remap[keep] = np.arange(next_id, next_id + int(keep.sum()))
                next_id += int(keep.sum())
            else:
                remap = np.arange(next_id - 1, next_id + n, dtype=np.int32)
                remap[0] = 0
                next_id += n
            inst = np.where(comp > 0, remap[comp], inst)
        if is_b.any():
            if is_b.all():
                return np.zeros(lab.shape, np.int32), inst
            iy, ix = ndimage.distance_transform_edt(is_b, return_distances=False, return_indices=True)
            lab = lab[iy, ix]
            inst = inst[iy, ix]
        return lab, inst


def instance_boundaries(labels: np.ndarray, instances: np.ndarray, things: frozenset[int] | set[int]) -> np.ndarray:
    """Pixels of a thing instance whose right or lower neighbour is another instance of its class."""
    labels = np.asarray(labels)
    instances = np.asarray(instances)
    is_thing = np.isin(labels, list(things)) if things else np.zeros(labels.shape, bool)
    out = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis] = slice(None, -1)
        b[axis] = slice(1, None)
        a, b = tuple(a), tuple(b)
        touch = is_thing[a] & is_thing[b] & (labels[a] == labels[b]) & (instances[a] != instances[b])
        out[a] |= touch
    return out


def palette_for_ade20k(boundary: bool = False) -> Palette:
    """The official ADE20K-150 palette (index 0 = other, black), repeats made distinct."""
    from seggen.data.ade20k_meta import ADE20K_CLASSES, ADE20K_IS_STUFF, ADE20K_PALETTE

    things = [i + 1 for i, stuff in enumerate(ADE20K_IS_STUFF) if not stuff]
    return Palette.create(ADE20K_PALETTE, ADE20K_CLASSES, things=things, boundary=boundary)
