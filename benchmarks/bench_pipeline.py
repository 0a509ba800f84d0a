"""The default pipeline's wall time from a fresh clone: `dvc repro`, a no-op `dvc repro`, and the
same pipeline as the Prefect flow (orchestration overhead). Writes the `pipeline` section of
docs/benchmarks.md. About 35 min on 2 cores (two full pipelines).

    python -m benchmarks.bench_pipeline [--skip-prefect]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import measured_row, update_section

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def fresh_clone(where: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    return where


def env() -> dict:
    e = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for k in ("SEGGEN_TRACKING", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        e.pop(k, None)  # as a new user runs it: MLflow into the clone's mlflow.db, Prefect's own server
    return e


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{(r.stdout + r.stderr)[-3000:]}")
    return time.perf_counter() - t, r.stdout + r.stderr


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="seggen-ablation-pipeline-"))
    try:
        a = fresh_clone(tmp / "dvc")
        repro, _ = timed([str(BIN / "dvc"), "repro"], a)
        noop, out = timed([str(BIN / "dvc"), "repro"], a)
        assert "up to date" in out, out[-500:]
        summary = json.loads((a / "reports" / "summary.json").read_text())
        prefect = None
        if "--skip-prefect" not in sys.argv:
            b = fresh_clone(tmp / "prefect")
            code = (
                "from flows.pipeline import pipeline, PipelineRequest; "
                f"pipeline(PipelineRequest(project_dir={str(b)!r}))"
            )
            prefect, _ = timed([sys.executable, "-c", code], REPO)
            same = json.loads((b / "reports" / "summary.json").read_text()) == summary
        print(json.dumps({"dvc_repro_s": repro, "noop_s": noop, "prefect_s": prefect}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        f"| `dvc repro`, whole default pipeline from a fresh clone | {repro / 60:.1f} min | <= 15 min |",
        f"| `dvc repro` again (no-op) | {noop:.1f} s | <= 10 s |",
    ]
    if prefect is not None:
        rows.append(
            f"| Prefect flow `seggen-pipeline`, same pipeline from a fresh clone | {prefect / 60:.1f} min "
            f"({prefect / repro:.2f}x `dvc repro`) | <= 1.15x |"
        )
    arms = summary["arms"]
    scores = "; ".join(
        f"{arm}: " + ", ".join(f"{s} mIoU {v['mIoU']:.1f}" for s, v in splits.items()) for arm, splits in arms.items()
    )
    prefect_note = (
        ""
        if prefect is None
        else (
            " The Prefect run produced the same scores."
            if same
            else " The Prefect run gave different scores (not expected: report it)."
        )
    )
    body = f"""## Pipeline

Default `params.yaml`, MLflow tracking into the clone's `mlflow.db`
(`make run` = `dvc repro`); the Prefect flow runs in-process against Prefect's temporary local server,
each task a `dvc repro --single-item STAGE`.

| measure | value | target |
| --- | ---: | ---: |
{chr(10).join(rows)}
{measured_row("make bench-pipeline", 3)}

Scores of that run ({scores}).{prefect_note}
"""
    update_section("pipeline", body)


if __name__ == "__main__":
    main()
