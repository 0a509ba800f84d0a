"""The generators' training inputs on disk: written once, read a batch at a time by every process and run.

Each array is one `.npy` file under `cache/KEY/` (params `cache`), KEY a digest of what shapes it: the
dataset (its params, split, sample ids and file sizes, or the corpus's captions file), the resolution,
instance coding, and for latents the VAE. Pixels are kept as uint8 (colour maps, images: H x W x 3),
latents as the VAE's float32 posterior mean, scaled (encoded in fp32, as training read them before).
Training memory-maps them: host memory grows with the batch, not with the dataset.

The main process writes a missing array (under a temporary name, renamed when complete: a killed run
leaves nothing half-written); the others wait for it. `Rows` reads them back, converting a batch of
uint8 pixels to [-1, 1] exactly as seggen.training.to_tensor does one image.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

CACHE_VERSION = 1  # the layout of the files below; another value is another key


class Rows:
    """N samples of a cached array, read as float tensors: `rows[idx]` -> len(idx) x C x H x W."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r")
        self.pixels = self.array.dtype == np.uint8  # N x H x W x 3 -> 3 x H x W in [-1, 1]

    def __getstate__(self) -> dict:  # a DataLoader worker opens its own memory map
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        n, *rest = self.array.shape
        return (n, rest[2], rest[0], rest[1]) if self.pixels else (n, *rest)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        x = torch.from_numpy(np.array(self.array[idx], copy=True))
        if x.ndim == len(self.array.shape) - 1:
            x = x[None]
        if self.pixels:
            # contiguous N x C x H x W (a permuted view would take other, channels-last kernels)
            return x.permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1.0)
        return x

    def uint8(self, idx) -> np.ndarray:
        """The rows as stored, for pixel arrays: len(idx) x H x W x 3 uint8."""
        return np.array(self.array[idx], copy=True)


def key_of(*parts) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def dataset_identity(ds, extra: dict) -> dict:
    """What names a split's content without reading it: its sample ids and file sizes (+ `extra`)."""
    files = []
    for s in ds.samples:
        paths = [p for p in (getattr(s, "image_path", None), getattr(s, "label_path", None)) if p is not None]
        files.append([s.id, *[os.stat(p).st_size for p in paths]])
    return {**extra, "files": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


class _OneProcess:
    """The accelerator's part in caching, for a caller without one (a sampler, a test)."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def cached_arrays(
    root: Path,
    key: str,
    n: int,
    specs: dict[str, tuple[tuple, type]],
    rows: Callable[[], Iterator[dict[str, np.ndarray]]],
    accelerator=None,
) -> dict[str, Rows]:
    """The arrays `root/key/NAME.npy` (n rows each, of specs[NAME] = (row shape, dtype)), written by
    the main process from the batches rows() yields ({NAME: batch}) where any is missing; every
    process returns their memory maps."""
    accelerator = accelerator or _OneProcess()
    d = Path(root) / key
    paths = {name: d / f"{name}.npy" for name in specs}
    if accelerator.is_main_process and not all(p.exists() for p in paths.values()):
        d.mkdir(parents=True, exist_ok=True)
        tmps = {}
        try:
            for name in specs:
                fd, tmps[name] = tempfile.mkstemp(prefix=f".{name}.", suffix=".npy.tmp", dir=d)
                os.close(fd)
                os.chmod(tmps[name], 0o644)  # readable by every user of a shared cache (mkstemp: 0600)
            out = {
                name: np.lib.format.open_memmap(tmps[name], mode="w+", dtype=dtype, shape=(n, *shape))
                for name, (shape, dtype) in specs.items()
            }
            i = 0
            for batch in rows():
                k = len(next(iter(batch.values())))
                for name, values in batch.items():
                    out[name][i : i + k] = values
                i += k
            if i != n:
                raise RuntimeError(f"{d}: {i} rows written, {n} expected")
            for array in out.values():
                array.flush()
            del out, array  # closes the memory maps before the rename
            for name, tmp in tmps.items():
                os.replace(tmp, paths[name])
        finally:
            for tmp in tmps.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
    accelerator.wait_for_everyone()
    return {name: Rows(p) for name, p in paths.items()}


@torch.no_grad()
def encode_latents(vae, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Deterministic latents (the posterior mean), scaled as the UNet expects."""
    out = []
    for i in range(0, len(x), batch):
        out.append(vae.encode(x[i : i + batch].to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out).float().cpu()


def cached_latents(params, vae, pixels: Rows, pretrained: str, accelerator, batch: int = 16) -> Rows:
    """The latents of cached pixel rows through the frozen VAE (encode_latents, in chunks of
    `batch`), cached beside them: encoded once, by the main process, on its device."""
    key = key_of("latents", pixels.path.parent.name, pixels.path.stem, pretrained, vae.config)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    _, _, h, w = pixels.shape
    shape = (vae.config.latent_channels, h // f, w // f)

    def rows():
        vae.to(accelerator.device)
        for i in range(0, len(pixels), batch):
            yield {"latents": encode_latents(vae, pixels[i : i + batch], batch).numpy()}

    return cached_arrays(params.cache, key, len(pixels), {"latents": (shape, np.float32)}, rows, accelerator)["latents"]
