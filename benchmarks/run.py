"""`make bench`: run every benchmark on one core and rewrite its section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.common import machine, one_core, update_section

one_core()

from seggen.data.ade20k import ADE20KDataset  # noqa: E402

REAL = Path(os.environ.get("SEGGEN_REAL_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "real-samples"))


def main() -> None:
    from benchmarks import bench_codec, bench_eval

    ds = ADE20KDataset(REAL / "ade20k" / "ADEChallengeData2016", "validation")
    labels = [ds.load_label(i) for i in range(len(ds))]
    where = f"Machine: {machine()}. One core (BLAS/OpenMP threads = 1). Reproduce with `make bench`."
    results = {}
    body, results["codec"] = bench_codec.run(labels[0])
    update_section(
        "codec",
        f"## Colour decode (issue 2)\n\n{where}\n\n{body}\n\nTargets: >= 50 Mpx/s on one core and >= 20x the naive "
        "baseline.",
    )
    body, results["eval"] = bench_eval.run(labels)
    update_section(
        "eval",
        f"## Semantic evaluation (issue 2)\n\n{where}\n\n{body}\n\nTarget: >= 100 ADE-size images/s on one core.",
    )
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
