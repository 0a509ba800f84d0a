"""A small fully-convolutional segmenter trained on real data, used to score synthetic pairs.

It serves two jobs that need "a segmenter trained on real data" without waiting for Mask2Former:
the Mask2Img alignment measure (generators/quality.py) and the synthesis quality filters
(synthesis/filters.py). Saved as safetensors + JSON; never pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from seggen.data.layout import open_split
from seggen.progress import tqdm
from seggen.training import to_tensor


class ProbeSegmenter(nn.Module):
    """Five dilated 3x3 conv layers and a 1x1 head; outputs logits for labels 0..N (0 = other)."""

    def __init__(self, num_classes: int, width: int = 48):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        layers, c = [], 3
        for d in (1, 1, 2, 4, 1):
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.GroupNorm(8, width), nn.SiLU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes + 1, 1)

    def forward(self, x):
        return self.head(self.body(x))

    def save(self, directory: Path, extra: dict) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "probe.json").write_text(
            json.dumps({"num_classes": self.num_classes, "width": self.width, **extra}, indent=2)
        )

    @classmethod
    def load(cls, directory: Path) -> tuple[ProbeSegmenter, dict]:
        from safetensors.torch import load_file

        from seggen.errors import DataError
        from seggen.training.checkpoint import tree_problem

        problem = tree_problem(directory)
        if problem:
            raise DataError(problem)
        info = json.loads((directory / "probe.json").read_text())
        model = cls(info["num_classes"], info["width"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval(), info


def load_resized(root: Path, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x R x R in [-1, 1]) and labels (N x R x R int64) of a split, resized to R."""
    imgs, labs = [], []
    for img, lab in open_split(root, split):
        imgs.append(to_tensor(np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BOX))))
        labs.append(
            torch.from_numpy(
                np.asarray(Image.fromarray(lab).resize((resolution, resolution), Image.NEAREST)).astype(np.int64)
            )
        )
    return torch.stack(imgs), torch.stack(labs)


def train_probe(
    root: str | Path,
    resolution: int,
    seed: int,
    steps: int = 400,
    batch: int = 32,
    split: str = "training",
    progress: bool = True,
    subset=None,
) -> tuple[ProbeSegmenter, torch.Tensor, torch.Tensor]:
    """-> (model, images, labels); label 0 (other) is not a training target. `subset`: indices of the
    images to use (the low-data regime), default all."""
    from seggen.training import batch_indices, seed_for

    root = Path(root)
    meta = open_split(root, split).meta
    x_all, y_all = load_resized(root, split, resolution)
    if subset is not None:
        keep = torch.as_tensor(subset, dtype=torch.long)
        x_all, y_all = x_all[keep], y_all[keep]
    torch.manual_seed(seed_for(seed, "probe"))
    model = ProbeSegmenter(meta.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in tqdm(range(steps), desc="train probe segmenter", unit="step", disable=not progress, dynamic_ncols=True):
        idx = torch.from_numpy(batch_indices(seed, step, len(x_all), batch))
        x, y = x_all[idx], y_all[idx]
        if step % 2:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y, ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x_all, y_all


@torch.no_grad()
def predict(model: ProbeSegmenter, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Labels 1..N (never 0: `other` is not predicted) for N x 3 x H x W inputs."""
    out = [model(x[i : i + batch])[:, 1:].argmax(1) + 1 for i in range(0, len(x), batch)]
    return torch.cat(out)


@torch.no_grad()
def pixel_losses(model: ProbeSegmenter, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Per-pixel cross-entropy over classes 1..N against labels y (0 pixels get 0 loss)."""
    out = []
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])[:, 1:]
        yy = y[i : i + batch]
        loss = F.cross_entropy(logits, (yy - 1).clamp(min=0), reduction="none")
        out.append(torch.where(yy > 0, loss, torch.zeros_like(loss)))
    return torch.cat(out)


def class_mean_losses(model: ProbeSegmenter, x: torch.Tensor, y: torch.Tensor) -> list[float | None]:
    """Mean per-pixel loss of each class 1..N over a (real) set; None for classes absent from it."""
    loss = pixel_losses(model, x, y)
    n = model.num_classes
    sums = torch.bincount(y.ravel(), weights=loss.ravel().double(), minlength=n + 1)
    counts = torch.bincount(y.ravel(), minlength=n + 1)
    return [float(sums[c] / counts[c]) if counts[c] else None for c in range(1, n + 1)]
