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


# modes whose meaning as an 8-bit RGB image is defined: PIL converts them (alpha dropped, as OpenCV's
# IMREAD_COLOR, which mmsegmentation and detectron2-style loaders use, does; palettes looked up)
_RGB_CONVERTIBLE = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8, as the file means it: the EXIF orientation applied (as OpenCV and detectron2 do),
    alpha dropped, palettes looked up, 16-bit grey scaled to 8 bits (v * 255 / 65535, rounded: not
    clipped, which would make most of a 16-bit image white). Modes without one meaning as an 8-bit
    image (32-bit float, integers beyond 16 bits, LAB, HSV) are refused naming the file."""
    path = Path(path)
    return rgb_of(_open(path), path)


def decode_rgb(data: bytes, name: str = "the image") -> np.ndarray:
    """load_rgb for encoded bytes (a request's image); errors name `name`."""
    import io

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__})") from None
    return rgb_of(im, name)


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as load_rgb returns the image (EXIF orientations 5-8 swap them), from the header."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if (im.getexif() or {}).get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def rgb_of(im: Image.Image, path) -> np.ndarray:
    """An opened image as HxWx3 uint8 (load_rgb's rules); `path` names it in errors."""
    from PIL import ImageOps

    if (im.getexif() or {}).get(0x0112, 1) != 1:  # the orientation tag: rotate or flip as a viewer shows it
        im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"{path}: a {im.mode} image with values outside 0..65535: not an image seggen can read")
        grey = np.rint(a * (255 / 65535)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode not in _RGB_CONVERTIBLE:
        raise DataError(f"{path}: image mode {im.mode} has no defined 8-bit RGB meaning (save it as 8-bit RGB)")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


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


def resize_array(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """An image or label array resized to size = (width, height) with PIL's `resample` (as is if it fits)."""
    if a.shape[1] == size[0] and a.shape[0] == size[1]:
        return a
    return np.asarray(Image.fromarray(a).resize(size, resample))
