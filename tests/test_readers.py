"""Readers on the real samples, and every bad-input case failing with one line naming the file."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from seggen.data.ade20k import ADE20KDataset
from seggen.data.coco import CocoInstances, CocoPanoptic
from seggen.data.meta import ade20k_meta
from seggen.errors import DataError


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- ADE20K ------------------------------------------------------------------------------------


def test_ade20k_reads_real_samples(ade_root):
    ds = ADE20KDataset(ade_root, "validation")
    assert [s.id for s in ds.samples] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    sizes = []
    for img, lab in ds:
        assert img.dtype == np.uint8 and img.shape[2] == 3 and lab.shape == img.shape[:2]
        assert lab.max() <= 150
        sizes.append((img.shape[1], img.shape[0]))
    assert sizes == [(683, 512), (500, 364), (400, 300)]
    assert ds.meta.num_classes == 150 and ds.meta.names[2] == "sky"


def test_ade20k_missing_annotation_partner(ade_copy):
    (ade_copy / "annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")
    assert "ADE_val_00000002.jpg: no annotation partner" in one_line(e)


def test_ade20k_missing_image_partner(ade_copy):
    (ade_copy / "images/validation/ADE_val_00000003.jpg").unlink()
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")
    assert "ADE_val_00000003.png: no image partner" in one_line(e)


def test_ade20k_size_mismatch(ade_copy):
    p = ade_copy / "annotations/validation/ADE_val_00000001.png"
    Image.open(p).resize((100, 80), Image.NEAREST).save(p)
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")[0]
    assert "ADE_val_00000001.png: size 100x80 does not match image ADE_val_00000001.jpg 683x512" in one_line(e)


def test_ade20k_label_out_of_range(ade_copy):
    p = ade_copy / "annotations/validation/ADE_val_00000002.png"
    lab = np.asarray(Image.open(p)).copy()
    lab[0, 0] = 200
    Image.fromarray(lab).save(p)
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")[1]
    assert "ADE_val_00000002.png: label value 200 out of range (0..150" in one_line(e)


def test_ade20k_truncated_image(ade_copy):
    p = ade_copy / "images/validation/ADE_val_00000003.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")[2]
    assert "ADE_val_00000003.jpg: corrupt or truncated image" in one_line(e)


def test_ade20k_corrupt_image(ade_copy):
    p = ade_copy / "images/validation/ADE_val_00000001.jpg"
    p.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")[0]
    assert "ADE_val_00000001.jpg: not a readable image" in one_line(e)


def test_ade20k_missing_split(ade_root):
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_root, "training")
    assert "images/training: directory not found" in one_line(e)


def test_ade20k_rgb_label_rejected(ade_copy):
    p = ade_copy / "annotations/validation/ADE_val_00000001.png"
    Image.open(p).convert("RGB").save(p)
    with pytest.raises(DataError) as e:
        ADE20KDataset(ade_copy, "validation")[0]
    assert "label PNG must be single-channel" in one_line(e)


# -- COCO panoptic -----------------------------------------------------------------------------


@pytest.fixture()
def coco_copy(real, tmp_path):
    dst = tmp_path / "coco"
    shutil.copytree(real / "coco", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_coco_panoptic_reads_real_samples(real):
    ann = real / "coco" / "annotations"
    pan = CocoPanoptic(ann / "panoptic_val2017.json", image_dir=real / "coco" / "val2017")
    assert len(pan) == 2 and len(pan.categories) == 133
    crowd = 0
    for i in range(len(pan)):
        s = pan[i]
        assert s.image.shape[:2] == s.ids.shape
        ids_png = set(np.unique(s.ids).tolist()) - {0}
        assert ids_png == {seg["id"] for seg in s.segments}
        for seg in s.segments:
            assert (s.ids == seg["id"]).sum() == seg["area"]  # id = R + 256 G + 65536 B decodes right
            crowd += seg["iscrowd"]
        sem = pan.semantic(s.ids, s.segments)
        assert set(np.unique(sem).tolist()) - {0} <= set(pan.categories)
    assert crowd == 3
    things = sum(c["isthing"] for c in pan.categories.values())
    assert things == 80


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_coco_panoptic_unknown_image(coco_copy):
    j = coco_copy / "annotations/panoptic_val2017.json"
    _edit_json(j, lambda d: d["annotations"][1].update(image_id=999))
    with pytest.raises(DataError) as e:
        CocoPanoptic(j)
    assert "panoptic_val2017.json: annotation 000000439180.png references unknown image_id 999" in one_line(e)


def test_coco_panoptic_unknown_category(coco_copy):
    j = coco_copy / "annotations/panoptic_val2017.json"
    _edit_json(j, lambda d: d["annotations"][0]["segments_info"][0].update(category_id=4242))
    with pytest.raises(DataError) as e:
        CocoPanoptic(j)
    assert "references unknown category_id 4242" in one_line(e)


def test_coco_panoptic_png_segment_absent_from_json(coco_copy):
    j = coco_copy / "annotations/panoptic_val2017.json"
    removed = {}

    def drop(d):
        removed["id"] = d["annotations"][0]["segments_info"].pop(3)["id"]

    _edit_json(j, drop)
    pan = CocoPanoptic(j)
    with pytest.raises(DataError) as e:
        pan.load_ids(0)
    msg = one_line(e)
    assert (
        "000000142238.png: segment id(s)" in msg
        and str(removed["id"]) in msg
        and "absent from panoptic_val2017.json" in msg
    )


def test_coco_panoptic_size_mismatch(coco_copy):
    p = coco_copy / "annotations/panoptic_val2017/000000142238.png"
    Image.open(p).resize((320, 200), Image.NEAREST).save(p)
    pan = CocoPanoptic(coco_copy / "annotations/panoptic_val2017.json", image_dir=coco_copy / "val2017")
    with pytest.raises(DataError) as e:
        pan[0]
    assert "000000142238.png: size 320x200 does not match 640x427" in one_line(e)


def test_coco_panoptic_truncated_image(coco_copy):
    p = coco_copy / "val2017/000000439180.jpg"
    p.write_bytes(p.read_bytes()[:5000])
    pan = CocoPanoptic(coco_copy / "annotations/panoptic_val2017.json", image_dir=coco_copy / "val2017")
    with pytest.raises(DataError) as e:
        pan[1]
    assert "000000439180.jpg: corrupt or truncated image" in one_line(e)


def test_coco_json_not_json(coco_copy):
    j = coco_copy / "annotations/panoptic_val2017.json"
    j.write_text("{not json")
    with pytest.raises(DataError) as e:
        CocoPanoptic(j)
    assert "panoptic_val2017.json: not valid JSON" in one_line(e)


# -- COCO instances ----------------------------------------------------------------------------


def test_coco_instances_rle_real_samples(real):
    inst = CocoInstances(real / "coco/annotations/instances_val2017.json", image_dir=real / "coco/val2017")
    assert len(inst) == 2
    n = 0
    for i in range(len(inst)):
        image, anns = inst[i]
        for a in anns:
            assert a["mask"].shape == image.shape[:2]
            # the annotation area is the RLE's pixel count
            assert abs(int(a["mask"].sum()) - a["area"]) <= 1
            n += 1
    assert n == 50


def test_coco_instances_polygons(real, tmp_path):
    src = json.loads((real / "coco/annotations/instances_val2017.json").read_text())
    img = src["images"][0]
    d = {
        "images": [img],
        "categories": src["categories"][:2],
        "annotations": [
            {
                "id": 1,
                "image_id": img["id"],
                "category_id": src["categories"][0]["id"],
                "iscrowd": 0,
                "segmentation": [[10, 10, 110, 10, 110, 60, 10, 60]],
                "area": 5000,
                "bbox": [10, 10, 100, 50],
            },
            {
                "id": 2,
                "image_id": img["id"],
                "category_id": src["categories"][1]["id"],
                "iscrowd": 0,
                "segmentation": [[200, 200, 300, 200, 250, 300]],
                "area": 5000,
                "bbox": [200, 200, 100, 100],
            },
        ],
    }
    j = tmp_path / "poly.json"
    j.write_text(json.dumps(d))
    anns = CocoInstances(j).masks(img["id"])
    rect = anns[0]["mask"]
    assert rect.shape == (img["height"], img["width"])
    assert rect[10:60, 10:110].mean() > 0.95 and rect.sum() == pytest.approx(101 * 51, rel=0.05)
    assert anns[1]["mask"].sum() == pytest.approx(5000, rel=0.05)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(image_id=7), "annotation .* references unknown image_id 7"),
        (lambda d: d["annotations"][3].update(category_id=999), "annotation .* references unknown category_id 999"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "polygon with fewer than 3 points"),
        (lambda d: d["annotations"][0].update(segmentation="x"), "neither polygons nor RLE"),
        (lambda d: d.pop("categories"), "top level has no 'categories'"),
    ],
)
def test_coco_instances_bad_json(real, tmp_path, edit, message):
    d = json.loads((real / "coco/annotations/instances_val2017.json").read_text())
    edit(d)
    j = tmp_path / "instances.json"
    j.write_text(json.dumps(d))
    with pytest.raises(DataError, match=message) as e:
        CocoInstances(j)
    assert str(j) in one_line(e)


def test_ade20k_meta_matches_official_csv(real):
    import csv

    rows = list(csv.reader(open(real / "ade20k/objectInfo150.csv")))[1:]
    colours = [tuple(map(int, r)) for r in list(csv.reader(open(real / "ade20k/color150.csv")))[1:]]
    meta = ade20k_meta()
    # mmsegmentation's ADE20KDataset.METAINFO classes = Hugging Face's ADE20K id2label (which writes "bed ")
    expected = (
        "wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, person, earth, "
        "door, "
        "table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, house, sea, mirror, rug, field, "
        "armchair, "
        "seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column, signboard, chest of "
        "drawers, "
        "counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path, stairs, runway, case, pool "
        "table, pillow, "
        "screen door, stairway, river, bridge, bookcase, blind, coffee table, toilet, flower, book, hill, bench, "
        "countertop, "
        "stove, palm, kitchen island, computer, swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, "
        "truck, "
        "tower, chandelier, awning, streetlight, booth, television receiver, airplane, dirt track, apparel, pole, "
        "land, "
        "bannister, escalator, ottoman, bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, "
        "washer, "
        "plaything, swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, "
        "step, "
        "tank, trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, "
        "sconce, vase, "
        "traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, radiator, "
        "glass, clock, "
        "flag"
    ).split(", ")
    assert [c.name for c in meta.classes] == expected and len(expected) == 150
    # objectInfo150 holds every word of each name (';' separates both synonyms and words there)
    assert all(set(n.split()) <= set(r[5].split(";")) for r, n in zip(rows, expected))
    assert [tuple(c.color) for c in meta.classes] == colours
    assert [not c.isthing for c in meta.classes] == [r[4] == "1" for r in rows]


def test_data_check_reads_a_coco_root(real):
    """images + annotations/*.json: panoptic and instances JSON checked fully, every image and mask loaded."""
    from seggen.data.prepare import check_dataset

    counts = check_dataset(real / "coco", progress=False)
    assert counts == {
        "val2017: instance annotations": 50,
        "panoptic_coco_categories.json: categories": 133,
        "val2017: panoptic annotations": 2,
    }
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "check_data", "--root", str(real / "coco")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "val2017: panoptic annotations: 2 ok" in r.stdout, r.stderr


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"].clear(), "'annotations' is empty"),
        (lambda d: d["categories"].append(dict(d["categories"][0])), "category id 1 appears twice"),
        (lambda d: d["annotations"].append({**d["annotations"][0], "file_name": "x.png"}), "annotated twice"),
        (lambda d: d["annotations"][0].update(segments_info=None), "segments_info must be a list"),
        (lambda d: d["annotations"][0]["segments_info"][0].update(id=0), "reserved for void"),
        (lambda d: d["images"].append({**d["images"][0], "file_name": "other.jpg"}), "appears twice"),
    ],
)
def test_panoptic_json_is_checked_fully(real, tmp_path, edit, message):
    d = json.loads((real / "coco/annotations/panoptic_val2017.json").read_text())
    edit(d)
    j = tmp_path / "panoptic_val2017.json"
    j.write_text(json.dumps(d))
    with pytest.raises(DataError, match=message):
        CocoPanoptic(j, real / "coco/annotations/panoptic_val2017")


def _save(path, im, fmt, **kw):
    im.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize(
    "mode, make, fmt, mean",
    [
        ("RGB", lambda: Image.new("RGB", (8, 6), (10, 20, 30)), "PNG", 20),
        ("RGBA", lambda: Image.new("RGBA", (8, 6), (10, 20, 30, 0)), "PNG", 20),  # alpha dropped, not composited
        ("L", lambda: Image.new("L", (8, 6), 100), "PNG", 100),
        ("LA", lambda: Image.new("LA", (8, 6), (100, 7)), "PNG", 100),
        ("1", lambda: Image.new("1", (8, 6), 1), "PNG", 255),
        ("CMYK", lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "TIFF", 85),  # pure red
        ("I;16", lambda: Image.fromarray(np.full((6, 8), 32768, np.uint16)), "PNG", 128),  # 32768 * 255/65535
        ("I;16 dark", lambda: Image.fromarray(np.full((6, 8), 257, np.uint16)), "PNG", 1),
        ("I", lambda: Image.fromarray(np.full((6, 8), 65535, np.int32)), "TIFF", 255),
    ],
)
def test_every_image_mode_decodes_as_the_file_means(tmp_path, mode, make, fmt, mean):
    from seggen.data.images import load_rgb

    rgb = load_rgb(_save(tmp_path / "x.img", make(), fmt))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert abs(float(rgb.mean()) - mean) < 0.5, (mode, rgb.mean())


def test_palette_images_look_their_colours_up(tmp_path):
    from seggen.data.images import load_rgb

    im = Image.new("P", (8, 6), 1)
    im.putpalette([0, 0, 0, 200, 100, 0] + [0] * 762)
    assert load_rgb(_save(tmp_path / "p.png", im, "PNG"))[0, 0].tolist() == [200, 100, 0]
    im.info["transparency"] = 1  # a palette with a transparent entry (PIL reads it as P, or PA in memory)
    assert load_rgb(_save(tmp_path / "pt.png", im, "PNG", transparency=1))[0, 0].tolist() == [200, 100, 0]


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with orientation 6 ("rotate 90 clockwise to view") loads upright."""
    from seggen.data.images import load_rgb

    a = np.zeros((4, 8, 3), np.uint8)
    a[:, :4] = 255  # left half white, stored 8 wide x 4 high
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = load_rgb(_save(tmp_path / "o.jpg", Image.fromarray(a), "JPEG", exif=exif, quality=100))
    assert rgb.shape == (8, 4, 3)  # upright: 4 wide x 8 high
    assert rgb[:3].mean() > 200 and rgb[5:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((6, 8), 0.5, np.float32)),  # F: 0..1 or 0..255? no one meaning
        lambda: Image.fromarray(np.full((6, 8), 70000, np.int32)),  # beyond 16 bits
    ],
    ids=["float", "int32-beyond-16-bit"],
)
def test_images_without_an_8_bit_meaning_are_refused_naming_the_file(tmp_path, make):
    from seggen.data.images import load_rgb

    path = _save(tmp_path / "x.tif", make(), "TIFF")
    with pytest.raises(DataError, match=r"x\.tif: "):
        load_rgb(path)


def test_request_bytes_and_source_sizes_follow_the_file_rules(tmp_path):
    """What a served model receives decodes as files do; a source's size is the oriented one."""
    import io

    from seggen.data.images import decode_rgb, oriented_size

    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8), 32768, np.uint16)).save(buf, format="PNG")
    assert abs(float(decode_rgb(buf.getvalue()).mean()) - 128) < 0.5  # 16-bit scaled, not white
    with pytest.raises(DataError, match="the request: not a readable image"):
        decode_rgb(b"not an image", "the request")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "o.jpg", Image.new("RGB", (8, 4)), "JPEG", exif=exif)
    assert oriented_size(path) == (4, 8)
