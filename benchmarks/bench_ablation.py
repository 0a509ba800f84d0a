"""The ablation's cost: wall time of `dvc repro ablation/dvc.yaml` and where it goes, per stage kind.

    python -m benchmarks.bench_ablation --run   runs `dvc repro ablation/dvc.yaml` (timed), then summarises
    python -m benchmarks.bench_ablation --wall-seconds S
                                                summarises the latest ablation execution in MLflow, with
                                                the wall time S measured around it (`time make bench-ablation`)

The breakdown comes from the MLflow stage runs of that execution (their start and end times); the
difference to the wall time is DVC's own work and process start-up. Writes the `ablation` section
of docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import measured_row, update_section


def stage_runs(project: Path = Path(".")) -> list:
    """The stage runs of the latest execution that evaluated an ablation arm."""
    from seggen.config import load_params
    from seggen.pipeline import tracking

    arm = next(iter(load_params("ablation/params.yaml").arms))
    client, _ = tracking.open_client(project)
    exp = client.get_experiment_by_name(tracking.experiment_name())
    last = client.search_runs(
        [exp.experiment_id],
        f"tags.`{tracking.STAGE}` = 'evaluate@{arm}-validation'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not last:
        sys.exit("no ablation evaluation in MLflow: run `dvc repro ablation/dvc.yaml` (or --run)")
    key = last[0].data.tags[tracking.EXECUTION]
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`{tracking.EXECUTION}` = '{key}' and tags.`{tracking.KIND}` = 'stage'",
        max_results=5000,
    )
    return [r for r in runs if r.info.end_time]


def main() -> None:
    from seggen.pipeline import tracking

    wall = float(sys.argv[sys.argv.index("--wall-seconds") + 1]) if "--wall-seconds" in sys.argv else None
    note = sys.argv[sys.argv.index("--note") + 1] if "--note" in sys.argv else ""
    if "--run" in sys.argv:
        t = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "ablation/dvc.yaml"], check=True)
        wall = time.perf_counter() - t
    runs = stage_runs()

    kinds: dict[str, list[float]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.info.start_time):  # pipeline order
        stage = r.data.tags[tracking.STAGE]
        kinds[stage.split("@")[0]].append((r.info.end_time - r.info.start_time) / 1000)
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    rows = "\n".join(f"| {k} | {len(v)} | {sum(v) / 60:.1f} | {sum(v) / len(v):.0f} |" for k, v in kinds.items())
    total = sum(sum(v) for v in kinds.values())
    stages = len({r.data.tags[tracking.STAGE] for r in runs})
    body = f"""## Ablation

`dvc repro ablation/dvc.yaml` from no ablation outputs (the main pipeline's data,
captions and generators up to date), MLflow on (local SQLite). Target: <= 90 min on 2 CPU cores.
{note}

| measure | value |
| --- | ---: |
| wall time of `dvc repro ablation/dvc.yaml` | {f"{wall / 60:.1f} min" if wall else "not measured"} |
| first stage start to last stage end (MLflow) | {span / 60:.1f} min |
| inside the stage functions | {total / 60:.1f} min |
{measured_row("make bench-ablation")}

| stage | runs | minutes | seconds each |
| --- | ---: | ---: | ---: |
{rows}

`evaluate` counts one run per arm and split (one process per arm scores all its splits). The rest of
the wall time is DVC (hashing, locking) and starting a `seggen` process per stage ({stages} stage runs).
"""
    print(body)
    update_section("ablation", body)


if __name__ == "__main__":
    main()
