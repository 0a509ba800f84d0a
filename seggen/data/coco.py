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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seggen.data.images import load_panoptic_png, load_rgb
from seggen.errors import DataError


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
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
        p = self.json_path
        _require(data, ("images", "annotations", "categories"), p, "top level")
        for c in data["categories"]:
            _require(c, ("id", "name", "isthing"), p, "category")
        self.categories = {int(c["id"]): c for c in data["categories"]}
        for im in data["images"]:
            _require(im, ("id", "file_name"), p, "image")
        self.images = {int(im["id"]): im for im in data["images"]}
        self.annotations: list[dict] = []
        for a in data["annotations"]:
            _require(a, ("image_id", "file_name", "segments_info"), p, "annotation")
            if a["image_id"] not in self.images:
                raise DataError(f"{p}: annotation {a['file_name']} references unknown image_id {a['image_id']}")
            seen: set[int] = set()
            for s in a["segments_info"]:
                _require(s, ("id", "category_id"), p, f"segment of {a['file_name']}")
                if s["category_id"] not in self.categories:
                    raise DataError(
                        f"{p}: segment {s['id']} of {a['file_name']} references unknown category_id {s['category_id']}"
                    )
                if s["id"] in seen:
                    raise DataError(f"{p}: segment id {s['id']} appears twice in {a['file_name']}")
                seen.add(s["id"])
            self.annotations.append(a)

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
            raise DataError(f"{png}: segment id(s) {missing[:5]} present in the PNG are absent from {self.json_path.name}")
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
        p = self.json_path
        _require(data, ("images", "annotations", "categories"), p, "top level")
        image_ids = set()
        for im in data["images"]:
            _require(im, ("id", "file_name", "height", "width"), p, "image")
            image_ids.add(im["id"])
        cat_ids = set()
        for c in data["categories"]:
            _require(c, ("id", "name"), p, "category")
            cat_ids.add(c["id"])
        for a in data["annotations"]:
            _require(a, ("id", "image_id", "category_id", "segmentation"), p, "annotation")
            if a["image_id"] not in image_ids:
                raise DataError(f"{p}: annotation {a['id']} references unknown image_id {a['image_id']}")
            if a["category_id"] not in cat_ids:
                raise DataError(f"{p}: annotation {a['id']} references unknown category_id {a['category_id']}")
            seg = a["segmentation"]
            if isinstance(seg, list):
                if not seg or any(not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 for poly in seg):
                    raise DataError(f"{p}: annotation {a['id']} has a polygon with fewer than 3 points")
            elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                raise DataError(f"{p}: annotation {a['id']} segmentation is neither polygons nor RLE")
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
