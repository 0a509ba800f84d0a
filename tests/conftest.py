"""Shared fixtures. Real dataset samples are read from ../shared/real-samples (never copied)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("SEGGEN_REAL_SAMPLES", REPO.parent / "shared" / "real-samples"))

# CPU-only and quiet, whatever the machine has
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def real() -> Path:
    if not (REAL / "ade20k").is_dir():
        pytest.fail(f"real samples not found at {REAL} (set SEGGEN_REAL_SAMPLES)")
    return REAL


@pytest.fixture(scope="session")
def ade_root(real: Path) -> Path:
    return real / "ade20k" / "ADEChallengeData2016"


@pytest.fixture()
def ade_copy(ade_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the ADE samples in a temp dir, for planting bad input."""
    dst = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="session")
def small_benchmark(tmp_path_factory) -> Path:
    """A small bundled-benchmark dataset shared by the tests that only read it."""
    from seggen.config import BenchmarkParams
    from seggen.data.benchmark import generate

    root = tmp_path_factory.mktemp("bench") / "benchmark"
    generate(root, BenchmarkParams(resolution=64, num_train=24, num_val=8, num_val_shift=8), seed=0, progress=False)
    return root
