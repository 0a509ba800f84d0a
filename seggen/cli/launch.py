"""`train.num_processes`: a training stage run again under `accelerate launch`, N processes on this machine.

The command that asked for N processes becomes the launcher: it starts `accelerate launch -m seggen.cli`
with its own arguments and exits with their status. The processes the launcher starts carry RANK in
their environment and train (seggen.training.loop: each its share of the global batch; the main one
tracks and writes). On CUDA machines a process per GPU (NCCL); elsewhere CPU processes (gloo).
Across machines, run `accelerate launch --config_file ... -m seggen.cli train_...` on each with
accelerate's own config: a command started by a launcher never launches again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from seggen.errors import ConfigError


def launched() -> bool:
    """Whether this process was started by a launcher (accelerate launch, torchrun)."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch(train, key: str) -> None:
    """Return if one process is asked for (or this one was launched); else run this command under
    `accelerate launch` with `train.num_processes` processes and exit with its status."""
    import torch

    n = train.num_processes
    if n <= 1 or launched():
        return
    if train.batch_size % n:  # said here, once, rather than by every launched process
        raise ConfigError(
            f"{key}.batch_size: {train.batch_size} does not divide over {n} processes "
            "(it is the global batch: each process takes batch_size / processes)"
        )
    env = dict(os.environ)
    if torch.cuda.is_available():
        if torch.cuda.device_count() < n:
            raise ConfigError(f"{key}.num_processes: {n}, but this machine has {torch.cuda.device_count()} GPU(s)")
    else:
        env["ACCELERATE_USE_CPU"] = "1"  # gloo between CPU processes
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        train.mixed_precision,
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "seggen.cli",
        *sys.argv[1:],
    ]
    sys.stdout.flush()
    sys.exit(subprocess.call(cmd, env=env))
