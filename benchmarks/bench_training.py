"""The training stages on the CPU: steps/s of each on the default config, and peak host memory of the
generator and the segmenter at 1 k and 8 k training images (the loop's claim: memory grows with the
batch, not the dataset).

    python -m benchmarks.bench_training            (after `make run`: its data, captions, corpus, prior
                                                    and synthetic data; ~25 min on 2 cores)
    python -m benchmarks.bench_training --code DIR (the same measurements with another checkout's seggen)

Every run is a `seggen` command in a process of its own (tracking off), in a scratch project under
outputs/bench_training that links the pipeline's inputs; steps/s is over the steps after the first
(the first carries the set-up), peak RSS is the process's maximum resident set (getrusage), cache
building included. Writes the `training` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import measured_row, update_section

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "outputs" / "bench_training"

# the clock a stage's training runs under: per-step times, printed as JSON when the training ends
PROBE = r"""
import json, sys, time
from seggen.training import observe_steps
from seggen.cli import main

class Clock:
    def start(self): self.t = [time.perf_counter()]
    def step(self, done, total, loss): self.t.append(time.perf_counter())

clock = Clock()
try:
    with observe_steps(clock):
        main()
except SystemExit as e:
    d = [b - a for a, b in zip(clock.t, clock.t[1:])]
    print("BENCH " + json.dumps({"steps": len(d), "later_s": sum(d[1:]), "first_s": d[0] if d else None}))
    raise
"""


def run(project: Path, code: Path, args: list[str]) -> dict:
    """One `seggen` command in project, with code's seggen: its step times and peak RSS (GiB)."""
    import tempfile

    env = {**os.environ, "SEGGEN_TRACKING": "off", "PYTHONPATH": str(code)}
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", PROBE, *args], cwd=project, env=env, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own rusage, not the largest child's so far
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        so.seek(0), se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}\n{stderr[-3000:]}")
    line = next(ln for ln in stdout.splitlines() if ln.startswith("BENCH "))
    out = json.loads(line[6:])
    n = out["steps"] - 1
    out.update(steps_per_s=n / out["later_s"] if n > 0 else None, wall_s=wall, peak_rss_gib=usage.ru_maxrss / 2**20)
    return out


def project(name: str, params: dict, links: dict[str, Path]) -> Path:
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for rel, target in links.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).symlink_to(target.resolve())
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (d / "params.yaml").write_text(yaml.safe_dump({**base, **params}, sort_keys=False))
    return d


def speeds(code: Path, steps: int) -> dict:
    """steps/s of each training stage on the default config, from the pipeline's inputs."""
    links = {
        "data/benchmark": REPO / "data/benchmark",
        "data/captions.jsonl": REPO / "data/captions.jsonl",
        "data/corpus": REPO / "data/corpus",
        "data/synthetic": REPO / "data/synthetic",
        "models/prior": REPO / "models/prior",
    }
    p = project("speed", {}, links)
    out = {}
    for stage, args in (
        ("train_text2mask", ["--set", "text2mask.out=out/t2m", "train_text2mask", "--steps", str(steps)]),
        ("train_prior", ["--set", "prior.out=out/prior", "train_prior", "--steps", str(steps)]),
        ("train_mask2img", ["--set", "mask2img.out=out/m2i", "train_mask2img", "--steps", str(steps)]),
        (
            "train_segmenter (seggen arm)",
            ["--set", "arms_root=out/seg", "train_segmenter", "--arm", "seggen", "--steps", str(steps)],
        ),
    ):
        out[stage] = run(p, code, args)
        print(stage, out[stage], flush=True)
    return out


def memory(code: Path, sizes: list[int], steps: int) -> dict:
    """Peak RSS of Text2Mask and Mask2Former training (`steps` steps) at each training-set size."""
    out = {}
    for n in sizes:
        data = WORK / f"data-{n}"
        if not (data / "benchmark").is_dir():  # rendered once, reused by later runs
            prep = project(f"prepare-{n}", {}, {})
            sets = ["--set", f"data.benchmark.num_train={n}", "--set", "data.benchmark.workers=2"]
            subprocess.run(
                [sys.executable, "-m", "seggen.cli", *sets, "prepare"],
                cwd=prep,
                check=True,
                env={**os.environ, "SEGGEN_TRACKING": "off"},
                capture_output=True,
            )
            subprocess.run(
                [sys.executable, "-m", "seggen.cli", "caption"],
                cwd=prep,
                check=True,
                env={**os.environ, "SEGGEN_TRACKING": "off"},
                capture_output=True,
            )
            data.mkdir(parents=True, exist_ok=True)
            shutil.move(str(prep / "data" / "benchmark"), data / "benchmark")
            shutil.move(str(prep / "data" / "captions.jsonl"), data / "captions.jsonl")
        links = {"data/benchmark": data / "benchmark", "data/captions.jsonl": data / "captions.jsonl"}
        p = project(
            f"memory-{n}",
            {
                "data": {
                    "root": "data/benchmark",
                    "benchmark": {
                        **yaml.safe_load((REPO / "params.yaml").read_text())["data"]["benchmark"],
                        "num_train": n,
                    },
                }
            },
            links,
        )
        out[n] = {
            "train_text2mask": run(
                p, code, ["--set", "text2mask.out=out/t2m", "train_text2mask", "--steps", str(steps)]
            ),
            "train_segmenter": run(
                p, code, ["--set", "arms_root=out/seg", "train_segmenter", "--arm", "baseline", "--steps", str(steps)]
            ),
        }
        print(n, out[n], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another checkout measured in the same run, e.g. the previous commit's")
    ap.add_argument("--steps", type=int, default=60, help="steps per stage for steps/s")
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--part", choices=["all", "speed", "memory"], default="all")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    a = ap.parse_args()
    codes = {"this": REPO} | ({"before": a.before} if a.before else {})
    figures = {name: {"code": str(code)} for name, code in codes.items()}
    for name, code in codes.items():  # the checkouts one after the other, each stage in turn
        if a.part in ("all", "speed"):
            figures[name]["speed"] = speeds(code, a.steps)
        if a.part in ("all", "memory"):
            figures[name]["memory"] = memory(code, a.sizes, a.memory_steps)
    if a.out:
        a.out.write_text(json.dumps(figures, indent=2))
    if a.no_doc:
        return
    this, before = figures["this"], figures.get("before")
    rows = []
    if "speed" in this:
        head = "| stage (default config) | steps/s |" + (" steps/s, before | ratio |" if before else "")
        rows += [head, "| --- |" + " ---: |" * (3 if before else 1)]
        for k, v in this["speed"].items():
            row = f"| {k} | {v['steps_per_s']:.2f} |"
            if before:
                b = before["speed"][k]["steps_per_s"]
                row += f" {b:.2f} | {v['steps_per_s'] / b:.2f} |"
            rows.append(row)
        rows.append("")
    if "memory" in this:
        sizes = list(this["memory"])
        rows += [
            "| peak host RSS, GiB | " + " | ".join(f"{n} images" for n in sizes) + " | ratio |",
            "| --- |" + " ---: |" * (len(sizes) + 1),
        ]
        for label, fig in (("", this), (", before", before)):
            if fig is None:
                continue
            for stage in ("train_text2mask", "train_segmenter"):
                vals = [fig["memory"][n][stage]["peak_rss_gib"] for n in sizes]
                rows.append(
                    f"| {stage}{label} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {vals[-1] / vals[0]:.2f} |"
                )
    cmd = "python -m benchmarks.bench_training" + (" --before DIR" if before else "") + f" --steps {a.steps}"
    rows.append(measured_row(cmd, 4 if before else 2, extra=", torch threads: the default"))
    update_section("training", "\n".join(rows))


if __name__ == "__main__":
    main()
