"""Training checkpoints without pickle: weights via save_pretrained (safetensors), optimizer state
flattened into safetensors + JSON, written under a temporary name and renamed when complete.

Batches, noise and timesteps are drawn from generators keyed on the step number, so the only
state a resumed run needs is the weights, the optimizer moments and the step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d{7})$")
STATE = "trainer_state.json"


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors, str(directory / "optimizer.safetensors"))
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / STATE).exists())
    return steps[-1] if steps else None


def safetensors_problem(path: Path) -> str | None:
    """None if the file is a complete safetensors file (header parses, data as long as it says)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            if size < 8:
                return "truncated (shorter than the 8-byte header length)"
            n = int.from_bytes(f.read(8), "little")
            if 8 + n > size:
                return f"truncated ({size} bytes, the header alone needs {8 + n})"
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "corrupt header (not a safetensors file)"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"truncated ({size} bytes, its header describes {need})"
    if size > need:
        return f"corrupt ({size - need} bytes more than its header describes)"
    return None


def tree_problem(directory: Path) -> str | None:
    """The first unreadable file of a model or checkpoint directory (safetensors and JSON), named, or None."""
    for f in sorted(directory.rglob("*")):
        if f.suffix == ".safetensors" and f.is_file():
            problem = safetensors_problem(f)
        elif f.suffix == ".json" and f.is_file():
            try:
                json.loads(f.read_text())
                problem = None
            except (ValueError, UnicodeDecodeError):
                problem = "truncated or corrupt JSON"
        else:
            continue
        if problem:
            return f"{f}: {problem}"
    return None


def checkpoint_problem(directory: Path) -> str | None:
    """None if every file trainer_state.json lists is there with its size and sha256 (checkpoints of
    earlier versions, which list none: if every safetensors and JSON file is readable)."""
    from seggen.io import sha256_file

    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{directory / STATE}: missing, truncated or corrupt JSON"
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict):
        return tree_problem(directory)
    for rel, (size, digest) in files.items():
        f = directory / rel
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != size or sha256_file(f) != digest:
            return f"{f}: {'truncated' if f.stat().st_size < size else 'changed'} since it was written"
    return None


def write_checkpoint(
    root: Path, step: int, modules: dict, optimizer: torch.optim.Optimizer, state: dict, keep: int
) -> Path:
    """modules: name -> model with save_pretrained. Keeps the newest `keep` checkpoints. trainer_state.json
    records every file's size and sha256, so that a damaged checkpoint is recognised before resuming."""
    from seggen.errors import TrainingError
    from seggen.io import default_modes, file_digests

    for name, m in modules.items():  # a diverged step is never saved, not even as a checkpoint
        module = m.module if isinstance(m, RawStateDict) else m
        bad = next(
            (k for k, v in module.state_dict().items() if v.is_floating_point() and not v.isfinite().all()), None
        )
        if bad is not None:
            raise TrainingError(
                f"{root.parent}: the weights hold NaN or inf after step {step} ({name}: {bad}); no checkpoint written "
                "-- lower the learning rate or add warm-up steps, and run again"
            )
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        for name, m in modules.items():
            m.save_pretrained(tmp / name, safe_serialization=True)
        save_optimizer(optimizer, tmp)
        files = file_digests(tmp)
        (tmp / STATE).write_text(json.dumps({**state, "step": step, "files": files}))
        default_modes(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    done = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_weights(module: torch.nn.Module, directory: Path) -> None:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no safetensors weights")
    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{directory}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


class RawStateDict:
    """Checkpoint adapter: saves a module's state_dict under its own key names. (transformers 5's
    save_pretrained may rewrite keys to the hub layout, which plain load_state_dict then rejects.)"""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def save_pretrained(self, directory: Path, safe_serialization: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        save_file(sd, str(directory / "model.safetensors"))


def resumable_checkpoint(root: Path, fingerprint: str, code: str | None = None) -> Path | None:
    """The newest intact checkpoint made with the same params (`fingerprint`) by the same code (`code`,
    the training stage's code fingerprint). A damaged one (a file missing, truncated or changed) is
    moved aside to `step_XXXXXXX.corrupt` with a warning naming the file, and the previous one is used.
    Checkpoints made with other params or other code are moved aside (to `checkpoints.stale/`) with a
    warning, and training starts over."""
    from seggen.io import OutputError

    if root.exists() and not root.is_dir():
        raise OutputError(f"{root}: is a file; seggen keeps its checkpoints in a directory there -- move it away")
    while (last := latest_checkpoint(root)) is not None:
        problem = checkpoint_problem(last)
        if problem is None:
            break
        aside = last.with_name(last.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        last.rename(aside)
        log.warning(
            "checkpoint %s is damaged (%s): moved to %s; resuming from the one before", last, problem, aside.name
        )
    if last is None:
        return None
    saved = json.loads((last / STATE).read_text())
    if saved.get("fingerprint") == fingerprint and saved.get("code") == code:
        return last
    why = "other params" if saved.get("fingerprint") != fingerprint else "other code"
    stale = root.with_name(root.name + ".stale")
    shutil.rmtree(stale, ignore_errors=True)
    root.rename(stale)
    log.warning("%s was trained with %s: moved to %s, starting over", root, why, stale)
    return None
