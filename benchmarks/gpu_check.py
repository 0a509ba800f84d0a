"""The real-size path on one GPU, measured in minutes: SD-1.5 and SDXL generators, a ControlNet and
Mask2Former (Swin-T), built from their published architecture configs with random weights (speed and
memory do not depend on the values of the weights), saved as Hugging Face directories and run through
seggen's own stage functions with `pretrained` / `backbone` pointing at them, tracking off.

Parts, each in its own subprocess with a time limit (a crash is reported in one line and the next
part runs):

    text2mask    SD-1.5 UNet fine-tune in latent space, 512 px, batch 16, EMA, bf16, 20 steps
    mask2img     ControlNet over the frozen SD-1.5 UNet, 512 px, batch 16, bf16, 20 steps
    synthesis    ImgSyn and MaskSyn (`synthesize` stage) against diffusers' stock pipelines on the same
                 weights in bf16: batch 16, 20 DPM-Solver++ steps, guidance 7.5
    sdxl         one SDXL Text2Mask step at 1024 px, batch 1, with the memory savers seggen has
    mask2former  Swin-T Mask2Former, 512 px crops, batch 16, bf16, 20 steps; then evaluation images/s

The parts take the real ADE20K profile (profiles/real-ade20k.yaml) and change only sizes, steps and
paths (`check_params`). Data: the bundled benchmark rendered at 512 px, captioned by the label
captioner; text encoders get a tokenizer trained on those captions.

    python -m benchmarks.gpu_check                  the real sizes (needs CUDA); writes gpu-check/
    python -m benchmarks.gpu_check --tiny           the same code paths at tiny sizes, on any device
    python -m benchmarks.gpu_check --record gpu-check/gpu_check.json   its table into docs/benchmarks.md

The architectures, weights, data and params: benchmarks/gpu_models.py; the parts: benchmarks/gpu_parts.py.

Outputs (--out): gpu_check.json (every figure, and each failure's one-line error), gpu_check.md (the
table of docs/benchmarks.md) and gpu_check.log (all the parts' output). MLflow, Prefect and DVC are
not needed: the parts run with them hidden, as on a GPU machine that lacks them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import gpu_parts
from benchmarks.common import fail
from benchmarks.gpu_models import REPO, check_params, finish, one_line, prepare_data
from benchmarks.gpu_parts import GiB, gpu_peak_gib, host_rss_gib

PARTS = ("text2mask", "mask2img", "synthesis", "sdxl", "mask2former")
NEEDS = {"synthesis": ("text2mask", "mask2img")}
# seconds per part (real sizes); the whole run also stops at --budget
LIMITS = {"text2mask": 150, "mask2img": 120, "synthesis": 150, "sdxl": 150, "mask2former": 120}
ABSENT = ("mlflow", "prefect", "dvc")  # hidden from the parts: tracking is off


# -- running --------------------------------------------------------------------------------------


def run_part(part: str, work: Path, tiny: bool) -> None:
    """The child: one part, its figures (or its one-line error) in WORK/results/PART.json."""
    import traceback

    for name in ABSENT:  # as on a GPU machine without them: import fails, find_spec finds nothing
        sys.modules.setdefault(name, None)
    os.environ["SEGGEN_TRACKING"] = "off"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t = time.perf_counter()
    try:
        result = {"ok": True, **getattr(gpu_parts, f"part_{part}")(work, tiny)}
    except BaseException as e:  # noqa: BLE001 -- every failure is a finding, reported in one line
        traceback.print_exc()
        partial = work / "results" / f"{part}.json"  # what the part measured before it failed
        result = {**(json.loads(partial.read_text()) if partial.exists() else {}), "ok": False, "error": one_line(e)}
    result["seconds"] = time.perf_counter() - t
    result.setdefault("peak_host_rss_gib", host_rss_gib())
    if "peak_gpu_gib" not in result:
        try:
            result["peak_gpu_gib"] = gpu_peak_gib()
        except Exception:  # noqa: BLE001 -- a broken CUDA context: the error above says why
            result["peak_gpu_gib"] = None
    finish(work, part, result)


def _pump(stream, sinks, tail: list) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        for s in sinks:
            s.write(chunk)
            s.flush()
        tail.append(chunk)
        del tail[:-64]


def spawn(part: str, work: Path, tiny: bool, limit: float, log) -> dict:
    """Run a part in a subprocess (its own process group), stream its output, kill it at `limit`."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--part", part, "--work", str(work)]
    cmd += ["--tiny"] if tiny else []
    result_path = work / "results" / f"{part}.json"
    result_path.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: list[bytes] = []
    pump = threading.Thread(target=_pump, args=(proc.stdout, [sys.stdout.buffer, log], tail), daemon=True)
    pump.start()
    rc, error = None, None
    try:
        rc = proc.wait(timeout=max(1.0, limit))
    except subprocess.TimeoutExpired:
        error = f"timed out after {limit:.0f} s"
    finally:
        try:  # the part and anything it started; also when this process is being stopped
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
        pump.join()  # the pipe closes with the last process of the group
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if error is None and result.get("error") != "incomplete" and result:
        return result
    if error is None:
        last = [ln for ln in b"".join(tail).decode(errors="replace").splitlines() if ln.strip()]
        error = f"exit code {rc}: {last[-1].strip()[:300] if last else 'no output'}"
    return {**result, "ok": False, "error": error, "seconds": time.perf_counter() - t}


def environment() -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for mod in ("diffusers", "transformers", "accelerate"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        env.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / GiB, 1), cuda=torch.version.cuda)
    else:
        env["gpu"] = None
    return env


def check(out: Path, tiny: bool, parts: tuple[str, ...], budget: float, work: Path | None, keep: bool) -> dict:
    """Every part in turn, within `budget` seconds in all; -> the results, also written to
    out/gpu_check.json and .md after each part (a run stopped from outside keeps what it measured)."""
    import signal

    from seggen.io import claim

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="seggen-gpu-check-")) if own_work else work
    claim(work, "--work", "gpu check")  # a folder of the user's is refused: the check replaces what it names
    report: dict = {"tiny": tiny, "parts": {}}
    os.environ["SEGGEN_TRACKING"] = "off"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: clean up and write what was measured

    def write() -> None:
        report["wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu_check.md").write_text(table(report))

    try:
        with open(out / "gpu_check.log", "wb") as log:
            t = time.perf_counter()
            prepare_data(work, tiny)
            report["data_s"] = time.perf_counter() - t
            report["environment"] = environment()  # after the data's worker processes: CUDA starts here
            report["settings"] = settings(check_params(work, tiny))
            for i, part in enumerate(parts):
                left = budget - (time.perf_counter() - t0)
                missing = [n for n in NEEDS.get(part, ()) if not report["parts"].get(n, {}).get("ok")]
                if missing:
                    res = {"ok": False, "error": f"not run: needs {' and '.join(missing)}", "seconds": 0.0}
                elif left < 10:
                    res = {"ok": False, "error": f"not run: the {budget:.0f} s budget was spent", "seconds": 0.0}
                else:
                    banner = f"\n=== gpu_check [{i + 1}/{len(parts)}] {part}\n"
                    sys.stdout.write(banner)
                    sys.stdout.flush()
                    log.write(banner.encode())
                    res = spawn(part, work, tiny, min(left, LIMITS[part] * (2 if tiny else 1)), log)
                report["parts"][part] = res
                write()
                status = "ok" if res["ok"] else res["error"]
                print(f"=== gpu_check {part}: {status} ({res.get('seconds', 0):.0f} s)", flush=True)
                if part in ("text2mask", "mask2img") and not keep:  # 14 GB of resumable state at SD-1.5 size
                    shutil.rmtree(work / part / "checkpoints", ignore_errors=True)
                if part == "synthesis" and not keep:  # the SD-1.5 directories are no longer needed
                    for d in ("sd15", "text2mask", "mask2img", "synthetic"):
                        shutil.rmtree(work / d, ignore_errors=True)
    finally:
        report.setdefault("environment", environment())
        write()
        if own_work and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


# -- the table ------------------------------------------------------------------------------------


def settings(p) -> dict:
    """What the table states of the synthesis measurement, from the check's params."""
    syn = p.synthesize
    return {
        "synthesis": {
            "resolution": p.mask2img.resolution,
            "batch": syn.batch_size,
            "steps": syn.steps,
            "guidance": [syn.text2mask_guidance, syn.mask2img_guidance],
            "images": [
                syn.imgsyn_per_source * p.data.benchmark.num_train,
                syn.masksyn_per_source * p.data.benchmark.num_train,
            ],
        }
    }


def _f(v, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def table(report: dict) -> str:
    """docs/benchmarks.md's GPU-check section, from a gpu_check.json."""
    env, parts = report["environment"], report["parts"]
    where = f"{env.get('gpu') or 'no GPU (CPU)'}" + (
        f" ({env['gpu_memory_gib']} GiB), CUDA {env['cuda']}" if env.get("gpu") else ""
    )
    lines = [
        "## Real-size path on one GPU" + (" (tiny configs)" if report.get("tiny") else ""),
        "",
        f"`make gpu-check` on {where}, {env.get('cpu_cores')} CPU cores, Python {env['python']}, torch "
        f"{env['torch']}, diffusers {env.get('diffusers')}, transformers {env.get('transformers')}, "
        f"accelerate {env.get('accelerate')}; measured {env['date']}; {report['wall_s'] / 60:.1f} min in all "
        f"(data {report.get('data_s', 0):.0f} s). Random weights of the published configs; step rates "
        "leave out the first steps (warm-up); peak memory is the allocator's (`max_memory_allocated`).",
        "",
        "| part | setting | result | step/s | samples/s | peak GPU GiB | peak host RSS GiB | part s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(name: str, setting: str, res: dict, result: str | None = None) -> None:
        ok = res.get("ok")
        result = result or ("ok" if ok else f"**failed**: `{res.get('error', '?')}`")
        if res.get("steps") and res.get("steps_timed", 0) >= res["steps"]:  # no step but warm-up ones: no rate
            res = {k: v for k, v in res.items() if k not in ("step_per_s", "samples_per_s")}
        lines.append(
            f"| {name} | {setting} | {result} | {_f(res.get('step_per_s'))} | {_f(res.get('samples_per_s'), '{:.1f}')} "
            f"| {_f(res.get('peak_gpu_gib'), '{:.1f}')} | {_f(res.get('peak_host_rss_gib'), '{:.1f}')} "
            f"| {_f(res.get('seconds'), '{:.0f}')} |"
        )

    def gen(res: dict) -> str:
        return f"{res.get('resolution', '?')} px, batch {res.get('batch', '?')}, {res.get('mixed_precision', '?')}"

    if "text2mask" in parts:
        r = parts["text2mask"]
        extra = f", loss finite: {r.get('loss_finite')}" if r.get("ok") else ""
        row("Text2Mask (SD-1.5 UNet fine-tune)", gen(r) + f", EMA {r.get('ema')}", r, "ok" + extra if r["ok"] else None)
    if "mask2img" in parts:
        r = parts["mask2img"]
        extra = f", loss finite: {r.get('loss_finite')}" if r.get("ok") else ""
        row("Mask2Img (ControlNet, frozen SD-1.5)", gen(r), r, "ok" + extra if r["ok"] else None)
    if "sdxl" in parts:
        r = parts["sdxl"]
        savers = ", ".join(r.get("memory_savers") or []) or "none"
        result = None
        if r.get("ok"):
            result = (
                f"ok: the step took {_f(r.get('first_step_s'))} s (the first: with warm-up); "
                f"{_f(r.get('peak_gpu_gib_before_step'), '{:.1f}')} GiB peak before it "
                "(its set-up: the models, the split's VAE latents)"
            )
        row("SDXL Text2Mask, one step", gen(r) + f", EMA {r.get('ema')}; savers: {savers}", r, result)
    if "mask2former" in parts:
        r = parts["mask2former"]
        row(
            "Mask2Former Swin-T train",
            f"{r.get('crop', '?')} px crops, batch {r.get('batch', '?')}, {r.get('mixed_precision', '?')}",
            r,
        )
        if r.get("ok"):
            lines.append(
                f"| Mask2Former Swin-T evaluate | {r.get('eval_images')} images, short side {r.get('eval_size')}, fp32 "
                f"| {_f(r.get('eval_images_per_s'))} images/s | | | {_f(r.get('eval_peak_gpu_gib'), '{:.1f}')} | | |"
            )
    lines.append(f"| measured on | {where}; {env['date']}; `make gpu-check` |" + " |" * 6)
    if "synthesis" in parts:
        r = parts["synthesis"]
        st = report.get("settings", {}).get("synthesis", {})
        lines += [
            "",
            f"Synthesis, SD-1.5 size at {st.get('resolution', '?')} px, batch {st.get('batch', '?')}, "
            f"{st.get('steps', '?')} DPM-Solver++ steps, "
            f"guidance {' / '.join(map(str, st.get('guidance', [])))}, bf16, "
            f"{' and '.join(str(n) for n in st.get('images', []))} images (ImgSyn and MaskSyn) "
            "(ours: the synthesize stage, fp32 weights under bf16 autocast, images/s over generation with its first "
            "batch, files written; stock: diffusers' pipelines with bf16 weights, two batches after a warm-up call):",
            "",
            "| strategy | ours images/s | stock images/s | ours / stock |",
            "| --- | --- | --- | --- |",
        ]
        for s in ("imgsyn", "masksyn"):
            if f"{s}_ours_images_per_s" in r or r.get("ok"):
                lines.append(
                    f"| {s} | {_f(r.get(f'{s}_ours_images_per_s'))} | {_f(r.get(f'{s}_stock_images_per_s'))} "
                    f"| {_f(r.get(f'{s}_ratio'))}x |"
                )
        if not r.get("ok"):
            lines.append(f"| | **failed**: `{r.get('error')}` | | |")
    failed = [f"{k}: {v.get('error')}" for k, v in parts.items() if not v.get("ok")]
    lines += ["", "Failures: " + ("; ".join(failed) if failed else "none."), ""]
    return "\n".join(lines)


def main() -> None:
    import torch

    from benchmarks.common import DOC, update_section
    from seggen.errors import SeggenError

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (the CPU check of the same code paths)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu-check", help="where gpu_check.json/.md/.log go")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all parts (default 420)")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory's models")
    ap.add_argument("--record", type=Path, help="write this gpu_check.json's table into docs/benchmarks.md")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # the child process of one part
    a = ap.parse_args()
    if a.part:
        run_part(a.part, a.work, a.tiny)
        return
    if a.record:
        try:
            report = json.loads(a.record.read_text())
            text = table(report)
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"--record {a.record}: not a gpu_check.json ({type(e).__name__}: {e})")
        update_section("gpu", text)
        print(f"wrote the GPU check section of {DOC}")
        return
    parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        fail(f"--parts {a.parts}: expected some of {', '.join(PARTS)}, comma-separated")
    if a.budget <= 0:
        fail(f"--budget {a.budget:g}: seconds, more than 0")
    if not a.tiny and not torch.cuda.is_available():
        fail("the real-size check needs a CUDA GPU (torch sees none); --tiny runs the same code on any device")
    try:
        report = check(a.out, a.tiny, parts, a.budget, a.work, a.keep)
    except SeggenError as e:  # a --work or --out that is someone else's
        fail(str(e))
    print(table(report))
    failed = [k for k, v in report["parts"].items() if not v.get("ok")]
    print(f"wrote {a.out}/gpu_check.json, gpu_check.md, gpu_check.log; {len(failed)} part(s) failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
