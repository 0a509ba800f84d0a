"""Helpers shared by the benchmarks: timing, machine description, and updating docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def fail(message: str) -> None:
    """Bad input: one line, exit 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_core() -> None:
    """Pin BLAS/OpenMP pools to one thread: the targets are per core."""
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> str:
    """The CPU, its visible cores and the Python/numpy versions a figure was measured with."""
    import numpy

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, numpy {numpy.__version__}"


def measured_row(command: str, columns: int = 2, extra: str = "") -> str:
    """The last row of a benchmark's table: machine, date and the command that measured it."""
    cell = f"{machine()}{extra}; {time.strftime('%Y-%m-%d')}; `{command}`"
    return "| measured on | " + cell + " |" + " |" * (columns - 2)


def update_section(name: str, body: str) -> None:
    """Replace the block between `<!-- bench:NAME -->` markers in docs/benchmarks.md (append if absent)."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
