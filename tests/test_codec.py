import numpy as np
import pytest
from scipy import ndimage

from seggen.codec import (
    Palette,
    build_nearest_lut,
    decode_naive,
    instance_boundaries,
    make_distinct,
    palette_for_ade20k,
)
from seggen.data.ade20k import ADE20KDataset
from seggen.data.coco import CocoPanoptic
from seggen.data.meta import load_meta
from seggen.errors import DataError


@pytest.fixture(scope="module")
def ade_palette():
    return palette_for_ade20k()


def test_ade_palette_repeated_colour_made_distinct(ade_palette):
    cols = [tuple(c) for c in ade_palette.colors]
    assert len(set(cols)) == len(cols) == 151
    # road (7) keeps the official colour; skyscraper (49), its duplicate, gets another
    assert cols[7] == (140, 140, 140) and cols[49] != (140, 140, 140)
    assert cols[0] == (0, 0, 0)


def test_make_distinct_is_deterministic_and_keeps_unique_colours():
    cols = np.array([[10, 10, 10], [10, 10, 10], [200, 0, 0], [10, 10, 10]])
    a, b = make_distinct(cols), make_distinct(cols)
    assert (a == b).all()
    assert len({tuple(c) for c in a}) == 4
    assert tuple(a[0]) == (10, 10, 10) and tuple(a[2]) == (200, 0, 0)


def test_roundtrip_on_real_ade_labels(ade_root, ade_palette):
    ds = ADE20KDataset(ade_root, "validation")
    for i in range(len(ds)):
        label = ds.load_label(i)
        rgb = ade_palette.encode(label)
        assert rgb.shape == label.shape + (3,)
        assert (ade_palette.decode(rgb, strict=True) == label).all()


def test_noisy_decode_matches_naive_nearest(ade_root, ade_palette):
    rng = np.random.default_rng(0)
    label = ADE20KDataset(ade_root, "validation").load_label(0)
    rgb = ade_palette.encode(label).astype(np.int16) + rng.normal(0, 8, label.shape + (3,)).astype(np.int16)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    fast = ade_palette.decode(rgb)
    assert (fast == decode_naive(rgb, ade_palette.colors)).all()
    # noise below half the smallest palette distance (7.07 in ADE-150) must decode exactly
    small = np.clip(ade_palette.encode(label).astype(np.int16) + rng.integers(-2, 3, label.shape + (3,)), 0, 255)
    assert (ade_palette.decode(small.astype(np.uint8)) == label).all()


def test_lut_matches_naive_on_random_colours_and_ties():
    rng = np.random.default_rng(1)
    # equidistant colours force ties: the lowest index must win, as in argmin
    cols = np.array(
        [[0, 0, 0], [10, 0, 0], [0, 10, 0], [5, 5, 0], [255, 255, 255], [128, 128, 128], [120, 136, 128]], np.uint8
    )
    lut = build_nearest_lut(cols)
    keys = rng.integers(0, 2**24, 400_000)
    near = np.concatenate([keys, np.arange(0, 40 * 65536, 257)])  # dense region around the tied colours
    rgb = np.stack([(near >> 16) & 255, (near >> 8) & 255, near & 255], -1).astype(np.uint8)
    assert (lut[near] == decode_naive(rgb, cols)).all()
    assert lut[5 << 16] == 0  # (5,0,0) is equidistant from index 0 and 1: lowest index


def test_strict_decode_rejects_off_palette(ade_palette):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 2] = (1, 2, 3)
    with pytest.raises(DataError, match=r"colour \(1, 2, 3\) at \(1, 2\) is not in the palette"):
        ade_palette.decode(rgb, strict=True)


def test_encode_rejects_unknown_label(ade_palette):
    with pytest.raises(DataError, match="label value 151 has no colour"):
        ade_palette.encode(np.full((2, 2), 151, np.uint8))


def _same_partition(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> bool:
    """Instance maps equal up to renaming, on the pixels `where`."""
    pairs = set(zip(a[where].tolist(), b[where].tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def test_instance_codec_separates_touching_instances():
    pal = Palette.create([(0, 200, 0), (255, 0, 0)], ["grass", "car"], things=[2], boundary=True)
    labels = np.ones((10, 12), np.uint8)
    inst = np.zeros((10, 12), np.int32)
    labels[2:8, 1:6] = 2
    inst[2:8, 1:6] = 1
    labels[2:8, 6:11] = 2  # touches instance 1, same class
    inst[2:8, 6:11] = 2
    rgb = pal.encode_instances(labels, inst)
    assert (rgb == pal.colors[pal.boundary_index]).all(-1).sum() == 6  # one boundary column
    lab, got = pal.decode_instances(rgb)
    assert (lab == labels).all()
    assert len(np.unique(got[labels == 2])) == 2
    assert _same_partition(inst, got, labels == 2)
    assert (got[labels == 1] == 0).all()


def test_instance_codec_roundtrip_on_benchmark(small_benchmark):
    meta = load_meta(small_benchmark)
    pal = meta.palette(boundary=True)
    pan = CocoPanoptic(small_benchmark / "panoptic" / "panoptic_training.json")
    total = exact = 0
    for i in range(len(pan)):
        ids, segs = pan.load_ids(i)
        labels = pan.semantic(ids, segs)
        things = np.isin(labels, meta.thing_ids)
        inst = np.where(things, ids, 0).astype(np.int64)
        lab, got = pal.decode_instances(pal.encode_instances(labels, inst))
        assert (lab == labels).mean() > 0.995
        total += 1
        exact += _same_partition(inst, got, things & (lab == labels))
    # occlusion can split one instance into two visible parts; that is the only expected loss
    assert exact / total >= 0.8


def test_instance_codec_on_real_coco_panoptic(real):
    ann = real / "coco" / "annotations"
    pan = CocoPanoptic(ann / "panoptic_val2017.json")
    cats = pan.categories
    colours = [cats[c]["color"] for c in sorted(cats)]
    index = {c: i + 1 for i, c in enumerate(sorted(cats))}
    things = [index[c] for c in cats if cats[c]["isthing"]]
    pal = Palette.create(colours, [cats[c]["name"] for c in sorted(cats)], things=things, boundary=True)
    for i in range(len(pan)):
        ids, segs = pan.load_ids(i)
        labels = np.zeros(ids.shape, np.int32)
        for s in segs:
            labels[ids == s["id"]] = index[s["category_id"]]
        inst = np.where(np.isin(labels, things), ids, 0)
        b = instance_boundaries(labels, inst, set(things))
        lab, got = pal.decode_instances(pal.encode_instances(labels, inst))
        assert (lab == labels).mean() > 0.99
        # each connected part of a non-crowd thing instance decodes to one instance of its own
        owner = {}
        for s in segs:
            if index[s["category_id"]] not in things or s["iscrowd"]:
                continue
            parts, n = ndimage.label((ids == s["id"]) & ~b)
            for k in range(1, n + 1):
                vals = np.unique(got[parts == k])
                assert len(vals) == 1 and vals[0] > 0
                assert owner.setdefault(int(vals[0]), s["id"]) == s["id"]
