"""Image and label-PNG loading that turns every failure into a one-line DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from seggen.errors import DataError, not_found

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(not_found(path))
    try:
        im = Image.open(path)
        im.load()  # decodes fully: a truncated file raises here, not later in a worker
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
    return im


def load_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8."""
    im = _open(Path(path))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def load_label_png(path: str | Path) -> np.ndarray:
    """Single-channel label PNG (mode L, P or I;16) -> HxW integer array, values as stored."""
    path = Path(path)
    im = _open(path)
    if im.mode in ("L", "P"):
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I"):
        return np.asarray(im).astype(np.int32)
    raise DataError(f"{path}: label PNG must be single-channel (L, P or 16-bit), got mode {im.mode}")


def load_panoptic_png(path: str | Path) -> np.ndarray:
    """COCO panoptic PNG -> HxW segment ids (id = R + 256*G + 65536*B), uint32."""
    path = Path(path)
    im = _open(path)
    if im.mode != "RGB":
        raise DataError(f"{path}: panoptic PNG must be RGB, got mode {im.mode}")
    return rgb2id(np.asarray(im))


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.uint32)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], -1).astype(np.uint8)
