"""Readers for COCO panoptic (JSON + PNG) and COCO instances (JSON via pycocotools).

Panoptic: segment id = R + 256*G + 65536*B in the PNG, 0 = void; each id in the PNG must be
described in the JSON's `segments_info` with a known category (isthing marks things vs stuff;
iscrowd marks crowd regions). Instances: polygons and RLE, decoded by pycocotools.
Structural problems (unknown image or category ids, missing files) are reported when the JSON is
opened; pixel-level ones (PNG ids absent from the JSON, size mismatch) when a sample is loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from seggen.data.images import load_panoptic_png, load_rgb
from seggen.errors import DataError, not_found


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(not_found(path, "file", "JSON"))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None


def _require(d: Any, keys: tuple[str, ...], path: Path, what: str) -> None:
    if not isinstance(d, dict):
        raise DataError(f"{path}: {what} must be an object")
    for k in keys:
        if k not in d:
            raise DataError(f"{path}: {what} has no '{k}'")


def _member(name: Any, path: Path, what: str) -> str:
    """A file name from a dataset's JSON: relative, inside its folder (no absolute path, no `..`, no
    drive or backslash), so that a JSON can never make seggen read outside the dataset."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{path}: {what} file_name must be a non-empty string, got {name!r}"[:300])
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or (len(name) > 1 and name[1] == ":") or "\0" in name:
        raise DataError(f"{path}: {what} file_name {name!r} points outside the dataset (absolute, or with ..)"[:300])
    return name


def _int(v: Any, path: Path, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"{path}: {what} must be an integer, got {v!r}"[:300])
    return v


def _list(data: dict, key: str, path: Path, what: str, nonempty: bool = True) -> list:
    if key not in data:
        raise DataError(f"{path}: {what} has no '{key}'")
    v = data[key]
    if not isinstance(v, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(v).__name__}")
    if nonempty and not v:
        raise DataError(f"{path}: '{key}' is empty")
    return v


def validate_categories(data: dict, path: Path, need_isthing: bool) -> dict[int, dict]:
    """categories -> {id: category}; duplicate or malformed ids are errors."""
    out: dict[int, dict] = {}
    for c in _list(data, "categories", path, "top level"):
        _require(c, ("id", "name") + (("isthing",) if need_isthing else ()), path, "category")
        cid = _int(c["id"], path, f"category {c.get('name')!r} id")
        if cid in out:
            raise DataError(f"{path}: category id {cid} appears twice ({out[cid]['name']!r} and {c['name']!r})")
        if need_isthing and c["isthing"] not in (0, 1):
            raise DataError(f"{path}: category {cid} isthing must be 0 or 1, got {c['isthing']!r}")
        out[cid] = c
    return out


def validate_images(data: dict, path: Path, sizes: bool) -> dict[int, dict]:
    """images -> {id: image}; duplicate ids or file names are errors."""
    out: dict[int, dict] = {}
    names: set[str] = set()
    for im in _list(data, "images", path, "top level"):
        _require(im, ("id", "file_name") + (("height", "width") if sizes else ()), path, "image")
        iid = _int(im["id"], path, f"image {im.get('file_name')!r} id")
        _member(im["file_name"], path, f"image {iid}")
        if iid in out:
            raise DataError(f"{path}: image id {iid} appears twice")
        if im["file_name"] in names:
            raise DataError(f"{path}: image file {im['file_name']} is listed twice")
        if sizes and (
            _int(im["height"], path, f"image {iid} height") < 1 or _int(im["width"], path, f"image {iid} width") < 1
        ):
            raise DataError(f"{path}: image {iid} has a size below 1x1")
        names.add(im["file_name"])
        out[iid] = im
    return out


def validate_panoptic(
    data: Any, path: Path, categories: dict[int, dict] | None = None, images: bool = True
) -> tuple[dict[int, dict], dict[int, dict], list[dict]]:
    """A COCO panoptic JSON, checked fully -> (categories, images, annotations). `categories`: those
    of the ground truth when `data` is a prediction (which need not list its own). Errors name the
    file, the annotation and the segment: an empty or malformed list, duplicate category, image or
    segment ids, segment id 0 (void), an image annotated twice, unknown image or category ids."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object with 'annotations'")
    cats = categories if categories is not None else validate_categories(data, path, need_isthing=True)
    imgs = validate_images(data, path, sizes=False) if images or "images" in data else {}
    anns = _list(data, "annotations", path, "top level")
    seen_images: dict[int, str] = {}
    seen_files: set[str] = set()
    for a in anns:
        _require(a, ("image_id", "file_name", "segments_info"), path, "annotation")
        name = _member(a["file_name"], path, "annotation")
        iid = _int(a["image_id"], path, f"annotation {name} image_id")
        if imgs and iid not in imgs:
            raise DataError(f"{path}: annotation {name} references unknown image_id {iid}")
        if iid in seen_images:
            raise DataError(f"{path}: image_id {iid} is annotated twice ({seen_images[iid]} and {name})")
        if name in seen_files:
            raise DataError(f"{path}: annotation file {name} is used twice")
        seen_images[iid] = name
        seen_files.add(name)
        if not isinstance(a["segments_info"], list):
            raise DataError(
                f"{path}: annotation {name} segments_info must be a list, got {type(a['segments_info']).__name__}"
            )
        seg_ids: set[int] = set()
        for s in a["segments_info"]:
            _require(s, ("id", "category_id"), path, f"segment of {name}")
            sid = _int(s["id"], path, f"segment id in {name}")
            cid = _int(s["category_id"], path, f"category_id of segment {sid} in {name}")
            if sid == 0:
                raise DataError(f"{path}: segment id 0 in {name} is reserved for void")
            if cid not in cats:
                raise DataError(f"{path}: segment {sid} of {name} references unknown category_id {cid}")
            if sid in seg_ids:
                raise DataError(f"{path}: segment id {sid} appears twice in {name}")
            if s.get("iscrowd", 0) not in (0, 1):
                raise DataError(f"{path}: segment {sid} of {name} iscrowd must be 0 or 1, got {s['iscrowd']!r}")
            seg_ids.add(sid)
    return cats, imgs, anns


def _polygons_ok(seg: Any) -> bool:
    return (
        isinstance(seg, list)
        and bool(seg)
        and all(
            isinstance(poly, list)
            and len(poly) >= 6
            and len(poly) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly)
            for poly in seg
        )
    )


def to_rle(seg: Any, height: int, width: int, path: Path, what: str) -> dict:
    """A segmentation as pycocotools reads it (polygons, uncompressed or compressed RLE) -> compressed
    RLE, the conversion COCO.annToRLE makes; a size other than the image's is an error."""
    from pycocotools import mask as mask_utils

    if _polygons_ok(seg):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise DataError(f"{path}: {what} RLE size must be [height, width], got {size!r}")
        if size != [height, width]:
            raise DataError(f"{path}: {what} mask is {size[1]}x{size[0]} but its image is {width}x{height}")
        try:
            if isinstance(seg["counts"], list):  # uncompressed RLE
                return mask_utils.frPyObjects(seg, height, width)
            if isinstance(seg["counts"], (str, bytes)):
                rle = {
                    "size": size,
                    "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"],
                }
                mask_utils.area(rle)  # decodes the counts: malformed ones fail here
                return rle
        except Exception as e:  # pycocotools raises bare TypeErrors / ValueErrors on malformed RLE
            raise DataError(f"{path}: {what} RLE could not be decoded ({e})") from None
        raise DataError(f"{path}: {what} RLE counts must be a string or a list of integers")
    raise DataError(f"{path}: {what} segmentation is neither polygons nor RLE (polygons: lists of >= 3 x,y points)")


def validate_instances(data: Any, path: Path) -> tuple[dict[int, dict], dict[int, dict], list[dict]]:
    """A COCO instances JSON, checked fully -> (categories, images, annotations): empty or malformed
    lists, duplicate category, image or annotation ids, unknown references, masks of another size
    than their image, bad polygons or RLE, iscrowd other than 0/1, a negative area."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object with images, annotations and categories")
    cats = validate_categories(data, path, need_isthing=False)
    imgs = validate_images(data, path, sizes=True)
    seen: set[int] = set()
    for a in _list(data, "annotations", path, "top level"):
        _require(a, ("id", "image_id", "category_id", "segmentation"), path, "annotation")
        aid = _int(a["id"], path, "annotation id")
        if aid in seen:
            raise DataError(f"{path}: annotation id {aid} appears twice")
        seen.add(aid)
        iid = _int(a["image_id"], path, f"annotation {aid} image_id")
        if iid not in imgs:
            raise DataError(f"{path}: annotation {aid} references unknown image_id {iid}")
        cid = _int(a["category_id"], path, f"annotation {aid} category_id")
        if cid not in cats:
            raise DataError(f"{path}: annotation {aid} references unknown category_id {cid}")
        if a.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{path}: annotation {aid} iscrowd must be 0 or 1, got {a['iscrowd']!r}")
        area = a.get("area", 0)
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) or area < 0:
            raise DataError(f"{path}: annotation {aid} area must be a number >= 0, got {area!r}")
        seg = a["segmentation"]
        if isinstance(seg, list) and not _polygons_ok(seg):
            raise DataError(
                f"{path}: annotation {aid} has a polygon with fewer than 3 points or non-numeric coordinates"
            )
        to_rle(seg, imgs[iid]["height"], imgs[iid]["width"], path, f"annotation {aid}")
    return cats, imgs, data["annotations"]


@dataclass
class PanopticSample:
    image_id: int
    image: np.ndarray  # HxWx3 uint8
    ids: np.ndarray  # HxW uint32 segment ids, 0 = void
    segments: list[dict]  # segments_info, each with id, category_id, iscrowd


def segment_info(sid: int, cls: int, mask: np.ndarray, iscrowd: int = 0) -> dict:
    """A COCO panoptic `segments_info` entry for a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": int(sid),
        "category_id": int(cls),
        "iscrowd": int(iscrowd),
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
    }


def segments_info(ids: np.ndarray, segments: list[tuple[int, int, int]]) -> list[dict]:
    """`segment_info` of many segments of one panoptic id map, in one pass over the pixels (not one per
    segment: a noisy generated mask has tens of thousands of segments). segments: (id, category_id,
    iscrowd), in the order wanted; those with no pixel in `ids` are left out."""
    from scipy import ndimage

    uniq, inv = np.unique(ids, return_inverse=True)
    inv = inv.reshape(ids.shape) + 1  # 1..len(uniq): find_objects' labels
    areas = np.bincount(inv.ravel(), minlength=len(uniq) + 1)
    boxes = ndimage.find_objects(inv)
    index = {int(u): k for k, u in enumerate(uniq)}
    out = []
    for sid, cls, crowd in segments:
        k = index.get(int(sid))
        if k is None:
            continue
        ys, xs = boxes[k]
        out.append(
            {
                "id": int(sid),
                "category_id": int(cls),
                "iscrowd": int(crowd),
                "area": int(areas[k + 1]),
                "bbox": [int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)],
            }
        )
    return out


def rle_encode(mask: np.ndarray) -> dict:
    """A boolean HxW mask as COCO compressed RLE with a JSON-ready `counts` string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


class CocoPanoptic:
    def __init__(self, json_path: str | Path, png_dir: str | Path | None = None, image_dir: str | Path | None = None):
        self.json_path = Path(json_path)
        self.png_dir = Path(png_dir) if png_dir else self.json_path.with_suffix("")
        self.image_dir = Path(image_dir) if image_dir else None
        data = read_json(self.json_path)
        self.categories, self.images, annotations = validate_panoptic(data, self.json_path)
        self.annotations: list[dict] = list(annotations)

    def __len__(self) -> int:
        return len(self.annotations)

    def load_ids(self, i: int) -> tuple[np.ndarray, list[dict]]:
        a = self.annotations[i]
        png = self.png_dir / a["file_name"]
        ids = load_panoptic_png(png)
        present = np.unique(ids)
        known = {int(s["id"]) for s in a["segments_info"]}
        missing = [int(v) for v in present if v != 0 and int(v) not in known]
        if missing:
            raise DataError(
                f"{png}: segment id(s) {missing[:5]} present in the PNG are absent from {self.json_path.name}"
            )
        im = self.images[a["image_id"]]
        if "height" in im and "width" in im and ids.shape != (im["height"], im["width"]):
            raise DataError(
                f"{png}: size {ids.shape[1]}x{ids.shape[0]} does not match {im['width']}x{im['height']} "
                f"given for image {im['id']} in {self.json_path.name}"
            )
        return ids, a["segments_info"]

    def __getitem__(self, i: int) -> PanopticSample:
        a = self.annotations[i]
        ids, segments = self.load_ids(i)
        if self.image_dir is None:
            raise DataError(f"{self.json_path}: no image directory given")
        img_path = self.image_dir / self.images[a["image_id"]]["file_name"]
        image = load_rgb(img_path)
        if image.shape[:2] != ids.shape:
            raise DataError(
                f"{self.png_dir / a['file_name']}: size {ids.shape[1]}x{ids.shape[0]} does not match image "
                f"{img_path.name} {image.shape[1]}x{image.shape[0]}"
            )
        return PanopticSample(int(a["image_id"]), image, ids, segments)

    def semantic(self, ids: np.ndarray, segments: list[dict], void: int = 0) -> np.ndarray:
        """Panoptic ids -> semantic map of category ids (crowd regions keep their category)."""
        out = np.full(ids.shape, void, np.int32)
        for s in segments:
            out[ids == s["id"]] = s["category_id"]
        return out


class CocoInstances:
    """COCO detection/instances JSON through pycocotools (polygons, uncompressed and compressed RLE)."""

    def __init__(self, json_path: str | Path, image_dir: str | Path | None = None):
        from pycocotools.coco import COCO

        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir) if image_dir else None
        data = read_json(self.json_path)
        _, images, _ = validate_instances(data, self.json_path)
        image_ids = set(images)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.image_ids = sorted(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def masks(self, image_id: int) -> list[dict]:
        """Each annotation of the image with its decoded HxW uint8 `mask`."""
        out = []
        info = self.coco.imgs[image_id]
        for a in self.coco.imgToAnns.get(image_id, []):
            seg = a["segmentation"]
            if isinstance(seg, dict) and list(seg["size"]) != [info["height"], info["width"]]:
                raise DataError(
                    f"{self.json_path}: annotation {a['id']} RLE size {seg['size']} does not match image "
                    f"{image_id} {info['height']}x{info['width']}"
                )
            try:
                mask = self.coco.annToMask(a)
            except Exception as e:  # pycocotools raises bare TypeErrors on malformed RLE
                raise DataError(f"{self.json_path}: annotation {a['id']} could not be decoded ({e})") from None
            out.append({**a, "mask": mask})
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[dict]]:
        image_id = self.image_ids[i]
        info = self.coco.imgs[image_id]
        if self.image_dir is None:
            raise DataError(f"{self.json_path}: no image directory given")
        image = load_rgb(self.image_dir / info["file_name"])
        if image.shape[:2] != (info["height"], info["width"]):
            raise DataError(
                f"{self.image_dir / info['file_name']}: size {image.shape[1]}x{image.shape[0]} does not match "
                f"{info['width']}x{info['height']} in {self.json_path.name}"
            )
        return image, self.masks(image_id)


class CocoSplit:
    """A split in the COCO panoptic layout (seggen.data.layout): ROOT/SPLIT/*.jpg and
    ROOT/annotations/panoptic_SPLIT.json + PNGs, read as the ADE20K reader reads its layout. Classes
    are the JSON's categories in id order, numbered 1..N (meta.classes[k].source_id keeps the COCO id);
    semantic labels come from the panoptic annotation (void -> 0, crowd regions keep their class)."""

    def __init__(self, root: str | Path, split: str):
        from seggen.data.ade20k import SemanticSample
        from seggen.data.layout import COCO
        from seggen.data.meta import coco_meta

        self.layout = COCO
        self.root, self.split = Path(root), split
        self.panoptic_json = COCO.panoptic_json(self.root, split)
        self.image_dir = COCO.images(self.root, split)
        if not self.image_dir.is_dir():
            raise DataError(
                not_found(self.image_dir, "directory", "image") + f" (the images of {self.panoptic_json.name})"
            )
        self.pan = CocoPanoptic(self.panoptic_json, image_dir=self.image_dir)
        self.meta = coco_meta(list(self.pan.categories.values()), name=f"coco:{self.root.name}")
        self._class = self.meta.class_of_category()

        order = sorted(range(len(self.pan.annotations)), key=lambda k: Path(self.pan.annotations[k]["file_name"]).stem)
        self._ann = order
        self.samples = []
        for k in order:
            a = self.pan.annotations[k]
            image = self.image_dir / self.pan.images[a["image_id"]]["file_name"]
            if not image.is_file():
                raise DataError(not_found(image) + f" (image {a['image_id']} of {self.panoptic_json.name})")
            self.samples.append(SemanticSample(Path(a["file_name"]).stem, image, None))
        if not self.samples:
            raise DataError(f"{self.panoptic_json}: no annotations")

    has_panoptic = True

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def segments(self, i: int) -> list[dict]:
        """segments_info of sample i with category_id = class id 1..N."""
        a = self.pan.annotations[self._ann[i]]
        return [{**s, "category_id": self._class[int(s["category_id"])]} for s in a["segments_info"]]

    def load_panoptic(self, i: int) -> tuple[np.ndarray, list[dict]]:
        ids, _ = self.pan.load_ids(self._ann[i])
        return ids, self.segments(i)

    def panoptic_png(self, i: int) -> Path:
        return self.pan.png_dir / self.pan.annotations[self._ann[i]]["file_name"]

    def load_label(self, i: int) -> np.ndarray:
        ids, segments = self.load_panoptic(i)
        lut_ids = np.array([0] + [int(s["id"]) for s in segments], np.int64)
        lut_cls = np.array([0] + [int(s["category_id"]) for s in segments], np.int64)
        order = np.argsort(lut_ids)
        pos = np.searchsorted(lut_ids[order], ids.astype(np.int64))
        labels = lut_cls[order][np.clip(pos, 0, len(order) - 1)]  # every id in the PNG is in the JSON (load_ids checks)
        return labels.astype(np.uint8 if self.meta.num_classes < 256 else np.uint16)

    def load_image(self, i: int) -> np.ndarray:
        return load_rgb(self.samples[i].image_path)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.load_image(i)
        label = self.load_label(i)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{self.panoptic_png(i)}: size {label.shape[1]}x{label.shape[0]} does not match image "
                f"{self.samples[i].image_path.name} {image.shape[1]}x{image.shape[0]}"
            )
        return image, label

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
