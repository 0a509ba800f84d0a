"""One GPU per synthesis worker.

A worker sees one GPU: its process's CUDA_VISIBLE_DEVICES names it, set before torch initialises
CUDA there (torch reads the variable once, at initialisation), so the worker's "cuda" is its own GPU
and nothing else is allocated on GPU 0. Local workers are given theirs by the parent
(`synthesize.devices`, one worker per GPU); a Dask worker claims the first free GPU of its node
through a lock file held for the life of its process (released by the OS when it dies), as
dask-cuda's `dask cuda worker` would pin it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path

from seggen.errors import ConfigError

log = logging.getLogger(__name__)

_claim = None  # this process's lock file, held open while it lives


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (ordinals or UUIDs), else the driver's
    0..count-1. Counted without CUDA (the driver reads CUDA_VISIBLE_DEVICES once, at its first call)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return [str(i) for i in range(len(list(gpus.iterdir())))]
    return []


def resolve(devices) -> list[int]:
    """`synthesize.devices` -> indices into visible_gpus(), one worker each; [] for the CPU. In the
    parent of the workers (spawned: its CUDA state is not theirs)."""
    import torch

    if devices == "cpu":
        return []
    n = len(visible_gpus()) if torch.cuda.is_available() else 0  # a CPU build of torch sees none
    if devices == "auto":
        return list(range(n))
    wrong = [d for d in devices if not 0 <= d < n]
    if wrong:
        raise ConfigError(f"synthesize.devices: GPU {wrong[0]} is not one of the {n} visible here")
    if len(set(devices)) != len(devices):
        raise ConfigError("synthesize.devices: a GPU listed twice (one worker per GPU)")
    return list(devices)


def pin(index: int | None) -> None:
    """Make visible GPU `index` this process's only CUDA device: a spawned worker's first act,
    before torch touches CUDA (ProcessPoolExecutor's initializer). The worker also ends with its
    parent: a `seggen synthesize` killed with SIGKILL cannot stop its pool, and an orphaned worker
    would go on generating into the output beside the re-run and hold its GPU."""
    if index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus()[index]
    exit_with_parent()


def exit_with_parent(poll: float = 0.5) -> None:
    """End this process with its parent: on Linux the kernel kills it at once (PR_SET_PDEATHSIG), so an
    orphan writes nothing after its parent is gone; elsewhere a daemon thread notices within `poll`
    seconds (the process is re-parented, so its parent pid changes)."""
    import multiprocessing
    import signal
    import threading
    import time

    spawner = multiprocessing.parent_process()  # the pid this worker was started by, even if it is gone by now
    parent = spawner.pid if spawner is not None else os.getppid()
    linux = sys.platform.startswith("linux")
    if linux:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before this process got here
        os._exit(1)
    if linux:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="seggen-exit-with-parent", daemon=True).start()


def claim_gpu(lock_dir: str | Path | None = None) -> str | None:
    """For a worker started without a device of its own (a Dask worker on a node of several GPUs):
    the first GPU no other worker process of the node holds becomes this process's only one, for
    its life. None where there is nothing to choose (a CPU node, one GPU) or it is too late (CUDA
    already initialised here); a warning when every GPU is taken (more workers than GPUs)."""
    global _claim
    if _claim is not None:
        return _claim[1]
    torch = sys.modules.get("torch")  # not imported yet: CUDA cannot be initialised either
    gpus = visible_gpus()
    if len(gpus) <= 1 or (torch is not None and torch.cuda.is_initialized()):
        return None
    root = Path(lock_dir or tempfile.gettempdir()) / f"seggen-gpus-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        fh = open(root / f"{gpu}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _claim = (fh, gpu)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        return gpu
    log.warning("all %d GPUs of this node are held by other workers: this one shares GPU %s", len(gpus), gpus[0])
    return None
