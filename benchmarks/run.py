"""`make bench`: run every benchmark on one core and rewrite its section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.common import one_core, update_section

one_core()

from seggen.data.ade20k import ADE20KDataset  # noqa: E402

REAL = Path(os.environ.get("SEGGEN_REAL_SAMPLES", "."))  # real ADE20K samples: ade20k/ADEChallengeData2016/


def main() -> None:
    from benchmarks import bench_codec, bench_eval

    root = REAL / "ade20k" / "ADEChallengeData2016"
    if not root.is_dir():
        sys.exit(f"error: {root}: no ADE20K validation images (set SEGGEN_REAL_SAMPLES to the samples' directory)")
    ds = ADE20KDataset(root, "validation")
    labels = [ds.load_label(i) for i in range(len(ds))]
    where = "One core (BLAS/OpenMP threads = 1)."
    results = {}
    body, results["codec"] = bench_codec.run(labels[0])
    update_section(
        "codec",
        f"## Colour decode\n\n{where}\n\n{body}\n\nTargets: >= 50 Mpx/s on one core and >= 20x the naive baseline.",
    )
    body, results["eval"] = bench_eval.run(labels)
    update_section(
        "eval",
        f"## Semantic evaluation\n\n{where}\n\n{body}\n\nTarget: >= 100 ADE-size images/s on one core.",
    )
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
