"""Synthesis: layout, manifest, determinism, kill-and-resume, shards, Dask, filters, bad input.

Tiny generators (16 px, 4 training steps) keep this to seconds per run; what is tested is the
machinery, not image quality.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import params_file
from seggen.config import load_params
from seggen.errors import ConfigError, DataError
from seggen.synthesis.manifest import read_manifest
from seggen.synthesis.synthesize import make_plan, run_shard, sample_seeds, synthesize
from seggen.training import seed_for


@pytest.fixture(scope="module")
def gens(tiny_gens):
    return tiny_gens


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(gens, tmp_path_factory):
    """Uninterrupted single-process MaskSyn run (24 sources x 2 = 48 samples, 12 batches)."""
    out = tmp_path_factory.mktemp("ref") / "syn"
    p = load_params(params_file(gens, out, masksyn_per_source=2))
    res = synthesize(p, "masksyn", progress=False)
    return {"out": out / "masksyn", "tree": tree(out / "masksyn"), "result": res}


def test_masksyn_dataset_reads_like_real_data(reference, small_benchmark):
    from seggen.data.prepare import check_dataset

    out = reference["out"]
    counts = check_dataset(out, ["training"])  # ADE20K layout and the panoptic layout, every sample loaded
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 48 and counts["training: samples"] == counts["training: panoptic annotations"] == sum(
        r.kept for r in rows
    )
    assert reference["result"]["samples"] == 48
    pan = json.loads((out / "panoptic" / "panoptic_training.json").read_text())
    assert len(pan["annotations"]) == counts["training: samples"]
    assert (
        json.loads((out / "seggen_meta.json").read_text())["classes"]
        == json.loads((small_benchmark / "seggen_meta.json").read_text())["classes"]
    )
    assert (out / "grid.png").stat().st_size > 0 and not (out / ".work").exists()
    # the DVC metrics file beside the dataset: the summary's numbers, no timings or digests
    metrics = json.loads((out.parent / "masksyn.metrics.json").read_text())
    assert metrics["samples"] == 48 and metrics["kept"] + metrics["dropped"] == 48
    assert metrics["kept_fraction"] == round(metrics["kept"] / 48, 6) and "fingerprint" not in metrics
    assert all(isinstance(v, (int, float, dict)) for v in metrics.values())
    # provenance: seeds derive from (global seed, strategy, source id, index); digests name the models
    r = rows[3]
    assert r.seed == seed_for(0, "masksyn", r.source_id, r.index) and r.id == f"masksyn_{r.source_id}_{r.index:03d}"
    assert set(r.generators) == {"text2mask", "mask2img"} and all(
        v.startswith("sha256:") for v in r.generators.values()
    )
    assert sample_seeds(r.seed)[0] != sample_seeds(r.seed)[1]
    from PIL import Image

    with Image.open(out / "images" / "training" / f"{r.id}.png") as im:
        assert im.size == (64, 64)  # the source image's size, not the generator's 16 px


def test_same_params_give_byte_identical_dataset(reference, gens, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("syn")  # relative, as params.yaml names it
    synthesize(load_params(params_file(gens, out, masksyn_per_source=2)), "masksyn", progress=False)
    assert tree(out / "masksyn") == reference["tree"]
    metrics = "masksyn.metrics.json"
    assert (out / metrics).read_bytes() == (reference["out"].parent / metrics).read_bytes()


def test_rerun_of_complete_dataset_is_a_no_op(reference, gens):
    p = load_params(params_file(gens, reference["out"].parent, masksyn_per_source=2))
    res = synthesize(p, "masksyn", progress=False)
    assert res["generated"] == 0 and tree(reference["out"]) == reference["tree"]


def written(out: Path) -> int:
    """Samples of the batches a run has recorded so far (.work/batches/B.jsonl: the batch's columns,
    then a row per sample)."""
    batches = out / "masksyn" / ".work" / "batches"
    records = batches.glob("*.jsonl") if batches.is_dir() else []
    return sum(len(p.read_text().splitlines()) - 1 for p in records if p.stem.isdigit())


def _run_cli_and_kill(params: Path, out: Path, after_records: int) -> int:
    cmd = [sys.executable, "-m", "seggen.cli", "--params", str(params), "synthesize", "--strategy", "masksyn"]
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if written(out) >= after_records:
            break
        time.sleep(0.005)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its worker processes end with it, not go on writing beside the next run
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [w.cmdline() for w in alive]
    return len(workers)


def test_kill_and_resume_gives_the_uninterrupted_dataset(reference, gens, tmp_path):
    out = tmp_path / "syn"
    params = params_file(gens, out, masksyn_per_source=2)
    workers = 0
    for after in (1, 9, 30):  # killed three times at different points, resumed each time
        workers += _run_cli_and_kill(params, out, after)  # each kill checks that its workers ended with it
        done = written(out)
        assert after <= done < 48 and not (out / "masksyn" / "manifest.jsonl").exists()
    assert workers >= 2  # some kill caught the worker processes (and the pools' resource tracker) running
    done = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "synthesize", "--strategy", "masksyn"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert tree(out / "masksyn") == reference["tree"]


def test_shards_write_disjoint_samples_and_merge_to_the_single_run(reference, gens, tmp_path):
    out = tmp_path / "syn"
    p = load_params(params_file(gens, out, masksyn_per_source=2))
    plan = make_plan(p, "masksyn")
    a, b = ({j.id for batch in plan.shard_batches(i, 2) for j in batch} for i in (0, 1))
    assert not a & b and len(a | b) == 48
    r1 = run_shard(p, "masksyn", 1, 2, progress=False)
    assert "kept" not in r1 and not (out / "masksyn" / "manifest.jsonl").exists()  # not merged while shard 0 is missing
    r0 = run_shard(p, "masksyn", 0, 2, progress=False)
    assert r0["generated"] + r1["generated"] == 48 and r0["kept"] == reference["result"]["kept"]
    assert tree(out / "masksyn") == reference["tree"]


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two worker processes started with Dask's own CLIs on 127.0.0.1 (no nanny: a
    killed worker stays dead); yields (address, {worker address: its process})."""
    from distributed import Client

    from conftest import free_port

    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = open(tmp_path / "dask.log", "w")
    flags = ["--no-dashboard"]
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], *flags],
            stdout=logs,
            stderr=subprocess.STDOUT,
        )
    ]
    worker = [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", *flags]
    procs += [subprocess.Popen([*worker, "--name", f"w{i}"], stdout=logs, stderr=subprocess.STDOUT) for i in range(2)]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(lambda: __import__("os").getpid())
        by_pid = {p.pid: p for p in procs[1:]}
        yield address, {addr: by_pid[pid] for addr, pid in pids.items()}
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
        logs.close()


def test_a_dask_cluster_loses_a_worker_and_still_makes_the_dataset(reference, gens, tmp_path, dask_cluster):
    """`synthesize.dask.address` names the cluster; one worker is killed (SIGKILL) while it runs its
    shard: the scheduler runs the shard again on the other worker, which resumes it, and the one
    merge gives the single process's dataset, byte for byte."""
    import threading

    from distributed import Client

    from seggen.synthesis.dask import synthesize_on_dask

    address, workers = dask_cluster
    out = tmp_path / "syn"
    p = load_params(params_file(gens, out, masksyn_per_source=2, dask={"address": address}))
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(synthesize_on_dask(p, "masksyn", progress=False)))
    run.start()
    victim = None
    with Client(address, timeout=60) as client:
        deadline = time.time() + 300
        while victim is None and run.is_alive() and time.time() < deadline:
            busy = [a for a, keys in client.processing().items() if keys]
            if written(out) >= 4 and busy:
                victim = busy[0]
                workers[victim].send_signal(signal.SIGKILL)
            time.sleep(0.01)
    run.join(600)
    assert victim is not None, "the run ended before a worker could be killed"
    assert workers[victim].wait(30) == -signal.SIGKILL
    assert result["samples"] == 48 and len(result["shards"]) == 2
    assert tree(out / "masksyn") == reference["tree"]


def test_each_worker_sees_one_gpu_of_its_own(tmp_path, monkeypatch):
    """`synthesize.devices` names GPUs by their index among the visible ones; a local worker is
    pinned to its GPU (CUDA_VISIBLE_DEVICES) before torch initialises CUDA; Dask workers of one node
    each claim a different GPU while they live."""
    import torch

    from seggen.errors import ConfigError
    from seggen.synthesis import devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert devices.resolve("auto") == ([0, 1] if torch.cuda.is_available() else [])  # a CPU build sees none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with those two GPUs
    assert devices.resolve("auto") == [0, 1] and devices.resolve([1]) == [1] and devices.resolve("cpu") == []
    for bad, says in (([2], "GPU 2 is not one of the 2"), ([1, 1], "listed twice")):
        with pytest.raises(ConfigError, match=rf"synthesize.devices: .*{says}"):
            devices.resolve(bad)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.resolve("auto") == []  # no GPU visible: the CPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    claim = (
        "import sys; from seggen.synthesis import devices; "
        f"print(devices.claim_gpu({str(tmp_path)!r}), flush=True); sys.stdin.read()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", claim], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        claimed = [p.stdout.readline().strip() for p in procs]  # all three alive, holding their claims
    finally:
        for p in procs:
            p.communicate("")
    assert sorted(claimed) == ["3", "5", "None"]  # two GPUs, two workers; the third is told it shares
    again = subprocess.run([sys.executable, "-c", claim], input="", capture_output=True, text=True)
    assert again.stdout.strip() == "3"  # a dead worker's GPU is free again


def test_imgsyn_diversity_is_merged_from_the_shards_statistics(gens, tmp_path, small_benchmark):
    """The shards record each kept image's class colours as they write it; the merge's diversity
    from those records is the measure over the images as written, read back."""
    from seggen.data.layout import open_split
    from seggen.synthesis.diversity import class_colours, imgsyn_diversity

    out = tmp_path / "syn"
    res = synthesize(load_params(params_file(gens, out, imgsyn_per_source=2, max_sources=4)), "imgsyn", progress=False)
    syn = open_split(out / "imgsyn", "training")
    index = {sid: i for i, sid in enumerate(syn.ids)}
    groups: dict = {}
    for r in read_manifest(out / "imgsyn" / "manifest.jsonl"):
        if r.kept:
            groups.setdefault(r.source_id, []).append(class_colours(*syn[index[r.id]], len(syn.meta.names)))
    assert res["diversity"]["masks"] == 4 and res["diversity"]["images_per_mask"] == 2
    # the same sums in another grouping (per batch, then merged): equal to float rounding
    got, ref = dict(res["diversity"]), imgsyn_diversity(groups, small_benchmark, "training")
    assert got.pop("per_class_ratio") == pytest.approx(ref.pop("per_class_ratio"), rel=1e-12)
    assert got == pytest.approx(ref, rel=1e-12)


def test_the_solver_is_a_param_of_the_dataset(gens, tmp_path):
    """synthesize.solver: UniPC or DPM-Solver++ (2M), each deterministic; another solver is another dataset."""
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    unipc = make_plan(load_params(params_file(gens, tmp_path / "u", solver="unipc")), "imgsyn")
    dpm = make_plan(load_params(params_file(gens, tmp_path / "d")), "imgsyn")
    assert unipc.fingerprint != dpm.fingerprint
    pipe = SegGenMask2ImgPipeline.from_model_dir(gens / "m2i" / "model")
    maps = np.tile(np.asarray(pipe.palette[1:3], np.uint8)[:, None, None], (1, 16, 16, 1))

    def draw(solver: str) -> np.ndarray:
        return pipe(maps, ["a car", "a road"], 1, 4, 2.0, seeded([0, 1]), solver, output_type="uint8").images

    a, b, c = draw("unipc"), draw("unipc"), draw("dpmsolver++")
    assert a.shape == (2, 16, 16, 3) and (a == b).all() and (a != c).any()


def test_imgsyn_strength_redraws_the_source_image_itself(gens, tmp_path):
    """synthesize.imgsyn_strength < 1: ImgSyn starts from each source's own image (img2img); another
    ImgSyn dataset, the same MaskSyn one; 1 (the default) leaves the dataset's identity as it was."""
    from seggen.data.images import load_rgb
    from seggen.generators.pipelines import seeded
    from seggen.synthesis.synthesize import _generate_batch, generators_for

    blind = load_params(params_file(gens, tmp_path / "d"))
    sde = load_params(params_file(gens, tmp_path / "s", imgsyn_strength=0.5))
    assert make_plan(sde, "imgsyn").fingerprint != make_plan(blind, "imgsyn").fingerprint
    assert make_plan(sde, "masksyn").fingerprint == make_plan(blind, "masksyn").fingerprint
    same = load_params(params_file(gens, tmp_path / "d", imgsyn_strength=1.0))
    assert make_plan(same, "imgsyn").fingerprint == make_plan(blind, "imgsyn").fingerprint
    with pytest.raises(ConfigError, match="imgsyn_strength 0.1: of 4 steps it runs none"):
        load_params(params_file(gens, tmp_path / "z", imgsyn_strength=0.1, steps=4))

    plan = make_plan(sde, "imgsyn")
    batch = plan.batches[0][:2]
    gen = generators_for(plan)
    got = [s["image"] for s in _generate_batch(plan, gen, batch)]
    # by hand: the sources' images and masks, their seeds, strength 0.5
    r, cfg = gen.m2i.resolution, sde.synthesize
    labels = [plan.dataset.load_label(plan.source_index[j.source]) for j in batch]
    init = [load_rgb(plan.dataset.samples[plan.source_index[j.source]].image_path) for j in batch]
    cmaps = np.stack([gen.plain[np.asarray(Image.fromarray(lab).resize((r, r), Image.NEAREST))] for lab in labels])
    kw = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.mask2img_guidance, "output_type": "uint8"}
    seeds = [sample_seeds(j.seed)[1] for j in batch]
    want = gen.m2i(cmaps, [j.image_prompt for j in batch], init_image=init, strength=0.5, generator=seeded(seeds), **kw)
    other = gen.m2i(
        cmaps, [j.image_prompt for j in batch], init_image=init[::-1], strength=0.5, generator=seeded(seeds), **kw
    )
    blind_imgs = [s["image"] for s in _generate_batch(make_plan(blind, "imgsyn"), gen, batch)]
    assert all(not np.array_equal(a, b) for a, b in zip(got, blind_imgs))
    for img, w, o, im in zip(got, want.images, other.images, init):
        size = (im.shape[1], im.shape[0])
        assert np.array_equal(img, np.asarray(Image.fromarray(w).resize(size, Image.BICUBIC)))
        assert not np.array_equal(img, np.asarray(Image.fromarray(o).resize(size, Image.BICUBIC)))


def test_a_plan_spends_the_blind_budget_on_the_weak_classes_sources(gens, tmp_path):
    """synthesize.plan: ImgSyn repeats each source in proportion to its planned weight (the blind
    budget exactly, by largest remainder); every row says why it was drawn; copy k of a source keeps
    the blind run's seed; a blind run's rows have no `plan` key."""
    from seggen.data.captions import read_captions
    from seggen.synthesis.targeting import allocate, source_weights

    blind_p = load_params(params_file(gens, tmp_path / "blind", imgsyn_per_source=2, max_sources=6))
    blind = make_plan(blind_p, "imgsyn")
    ids = list(dict.fromkeys(j.source for j in blind.jobs))
    caps = read_captions(blind_p.caption.out)
    names = list(blind.meta.names)
    weak = next(c for c in names if 0 < sum(c in caps[s].classes for s in ids) < len(ids))  # some sources name it
    cw = {c: (8.0 if c == weak else 0.5) for c in names}
    doc = {"class_weights": cw, "source_weights": source_weights({s: caps[s].classes for s in caps}, cw)}
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    p = load_params(
        params_file(gens, tmp_path / "syn", imgsyn_per_source=2, max_sources=6, plan=str(tmp_path / "plan.json"))
    )
    plan = make_plan(p, "imgsyn")
    counts = {s: sum(j.source == s for j in plan.jobs) for s in ids}
    assert list(counts.values()) == allocate([doc["source_weights"][s] for s in ids], 2 * len(ids))
    assert sum(counts.values()) == len(blind.jobs) and plan.fingerprint != blind.fingerprint
    naming = [counts[s] for s in ids if weak in caps[s].classes]
    assert min(naming) > max(counts[s] for s in ids if weak not in caps[s].classes)
    seeds = {(j.source, j.k): j.seed for j in blind.jobs}
    assert all(seeds[(j.source, j.k)] == j.seed for j in plan.jobs if (j.source, j.k) in seeds)

    res = synthesize(p, "imgsyn", progress=False)
    assert res["plan"] == {
        "file": str(tmp_path / "plan.json"),
        "sources": sum(c > 0 for c in counts.values()),
        "max_copies": max(counts.values()),
    }
    for r in read_manifest(tmp_path / "syn" / "imgsyn" / "manifest.jsonl"):
        assert r.plan.source_weight == doc["source_weights"][r.source_id] and r.plan.round == 1
        assert r.plan.class_weights == {c: cw[c] for c in caps[r.source_id].classes}
    synthesize(blind_p, "imgsyn", progress=False)
    assert '"plan"' not in (tmp_path / "blind" / "imgsyn" / "manifest.jsonl").read_text()
    # what it cost, beside the dataset; a run that finds the dataset complete adds nothing
    record = json.loads((tmp_path / "blind" / "imgsyn.run.json").read_text())
    fingerprint = json.loads((tmp_path / "blind" / "imgsyn" / "summary.json").read_text())["fingerprint"]
    assert record["fingerprint"] == fingerprint and record["generated"] == len(blind.jobs) == 12
    assert [r["generated"] for r in record["runs"]] == [12] and 0 < record["seconds"] == record["runs"][0]["seconds"]
    assert record["runs"][0]["device"].startswith("CPU (")
    synthesize(blind_p, "imgsyn", progress=False)
    assert json.loads((tmp_path / "blind" / "imgsyn.run.json").read_text()) == record
    # a fresh clone: the record (git) without its dataset (DVC, not pulled); made again, the record is that run's
    shutil.rmtree(tmp_path / "blind" / "imgsyn")
    again = synthesize(blind_p, "imgsyn", progress=False)["compute"]
    assert [r["generated"] for r in again["runs"]] == [12] and again["generated"] == 12

    # a later round of a loop spends its budget the same way on new draws: its arm pools every round's data,
    # and round 1's seeds again would add the same pairs twice
    (tmp_path / "round2.json").write_text(json.dumps({**doc, "round": 2}))
    q = load_params(
        params_file(gens, tmp_path / "r2", imgsyn_per_source=2, max_sources=6, plan=str(tmp_path / "round2.json"))
    )
    again = make_plan(q, "imgsyn")
    assert [(j.source, j.k) for j in again.jobs] == [(j.source, j.k) for j in plan.jobs]
    assert not {j.seed for j in again.jobs} & {j.seed for j in plan.jobs} and again.fingerprint != plan.fingerprint

    # a plan whose loop ended spends nothing: an empty dataset, which a later round's arm pools as nothing
    from seggen.segmenter.train import Mixture

    (tmp_path / "stopped.json").write_text(json.dumps({**doc, "round": 2, "stopped": "round 1 did not help"}))
    q = load_params(params_file(gens, tmp_path / "stop", imgsyn_per_source=2, plan=str(tmp_path / "stopped.json")))
    assert make_plan(q, "imgsyn").jobs == []
    assert synthesize(q, "imgsyn", progress=False)["samples"] == 0
    # and so does a plan that finds nothing worth drawing (every weight 0: plan_synthesis.drawability)
    zero = {"class_weights": dict.fromkeys(names, 0.0), "source_weights": dict.fromkeys(doc["source_weights"], 0.0)}
    (tmp_path / "zero.json").write_text(json.dumps(zero))
    q = load_params(params_file(gens, tmp_path / "zero", imgsyn_per_source=2, plan=str(tmp_path / "zero.json")))
    assert make_plan(q, "imgsyn").jobs == []

    def mixture(roots):
        seg = {"strategy": "augment", "synthetic": ("imgsyn",), "synthetic_root": roots}
        return Mixture(blind_p.model_copy(update={"segmenter": blind_p.segmenter.model_copy(update=seg)}))

    one, rounds = mixture(tmp_path / "blind"), mixture([tmp_path / "blind", tmp_path / "stop"])
    assert rounds.syn_pool == one.syn_pool and rounds.by_source == one.by_source and len(one.syn_pool) == 12
    assert list(rounds.syn_fingerprints) == [f"{tmp_path / r}/imgsyn" for r in ("blind", "stop")]
    both = mixture([tmp_path / "blind", tmp_path / "syn"])  # two rounds with data: pooled
    assert len(both.syn_pool) == len(one.syn_pool) + len(plan.jobs) and len(both.syn) == 2

    # a plan of other data: one error naming the file, before any image
    (tmp_path / "other.json").write_text(json.dumps({**doc, "class_weights": {"cow": 1.0}}))
    for bad, says in (("other.json", "not those of the data"), ("none.json", "plan file not found")):
        q = load_params(params_file(gens, tmp_path / "bad", plan=str(tmp_path / bad)))
        with pytest.raises(DataError, match=f"{bad}: .*{says}"):
            make_plan(q, "imgsyn")


def test_the_plans_reference_segmenter_filters_with_its_own_losses(gens, tmp_path, small_benchmark):
    """filter.scorer: plan -- the segmenter the plan scored filters the samples; its per-pixel losses are
    on the scale of the plan's class losses (the same arithmetic: on the planning split they average to
    them), and a plan whose reference has changed since is refused before any image."""
    import torch
    import yaml

    from helpers import TINY_SEG_MODEL
    from seggen.data.layout import open_split
    from seggen.segmenter.train import train_segmenter
    from seggen.synthesis.filters import load_filter
    from seggen.synthesis.targeting import plan_synthesis

    filt = {"sample": True, "min_miou": 0.0, "pixel": True, "margin": 1.5, "scorer": "plan"}
    f = params_file(gens, tmp_path / "syn", max_sources=4, plan=str(tmp_path / "plan" / "plan.json"), filter=filt)
    doc = yaml.safe_load(f.read_text())
    doc["arms_root"] = str(tmp_path / "arms")
    doc["segmenter"] = {
        "out": str(tmp_path / "arms" / "baseline"),
        "model": TINY_SEG_MODEL,
        "train": {"steps": 4, "batch_size": 4, "crop": 32, "threads": 1},
    }
    doc["plan_synthesis"] = {"out": str(tmp_path / "plan")}
    f.write_text(yaml.safe_dump(doc))
    p = load_params(f)
    train_segmenter(p, progress=False)
    plan = plan_synthesis(p, progress=False)

    scorer = load_filter(p)
    tuning = open_split(small_benchmark, "tuning")
    sums, counts = {}, {}
    for i in range(len(tuning)):
        image, labels = tuning[i]
        _, nll = scorer.model(image, labels)
        for c in np.unique(labels[labels > 0]):
            sums[c] = sums.get(c, 0.0) + float(nll[torch.from_numpy(labels == c)].double().sum())
            counts[c] = counts.get(c, 0) + int((labels == c).sum())
    names = list(tuning.meta.names)
    for c in sums:
        assert np.isclose(sums[c] / counts[c], plan["class_loss"][names[c - 1]], rtol=1e-4)

    res = synthesize(p, "imgsyn", progress=False)
    rows = read_manifest(tmp_path / "syn" / "imgsyn" / "manifest.jsonl")
    assert len(rows) == 4 and all(
        r.scores.sample_miou is not None and r.scores.ignored_fraction is not None for r in rows
    )
    assert res["mean_ignored_fraction"] is not None

    # a class the plan found undrawable (plan_synthesis.drawability): every synthetic pixel of it is ignored
    from seggen.data.images import load_label_png

    labels = sorted((tmp_path / "syn" / "imgsyn" / "annotations" / "training").glob("*.png"))
    counts = np.bincount(np.concatenate([load_label_png(x).ravel() for x in labels]), minlength=len(names) + 1)
    gone = int(np.argmax(counts[1:])) + 1  # the class with the most kept pixels
    (tmp_path / "plan" / "plan.json").write_text(json.dumps({**plan, "undrawable": [names[gone - 1]]}))
    again = synthesize(p, "imgsyn", progress=False)
    assert again["fingerprint"] != res["fingerprint"]  # a new dataset, not the filtered one reused
    kept = [load_label_png(x) for x in sorted((tmp_path / "syn" / "imgsyn" / "annotations" / "training").glob("*.png"))]
    assert len(kept) == 4 and not any((x == gone).any() for x in kept) and again["mean_ignored_fraction"] > 0

    (tmp_path / "arms" / "baseline" / "model" / "extra.txt").write_text("retrained")
    with pytest.raises(DataError, match="plan.json: its reference segmenter is not .* as scored"):
        make_plan(p, "imgsyn")


@pytest.mark.slow
def test_compiled_networks_draw_what_eager_ones_draw(gens):
    """synthesize.compile: the UNet and ControlNet under torch.compile (inductor: fused kernels, so
    equal up to rounding, not bit for bit)."""
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, seeded

    eager = SegGenMask2ImgPipeline.from_model_dir(gens / "m2i" / "model")
    compiled = SegGenMask2ImgPipeline.from_model_dir(gens / "m2i" / "model", compile=True)
    assert type(compiled.unet).__name__ == type(compiled.controlnet).__name__ == "OptimizedModule"
    maps = np.tile(np.asarray(eager.palette[1:3], np.uint8)[:, None, None], (1, 16, 16, 1))
    a, b = (
        p(maps, ["a car", "a road"], 1, 2, 2.0, seeded([0, 1]), output_type="uint8").images for p in (eager, compiled)
    )
    diff = np.abs(a.astype(int) - b)
    assert a.std() > 0 and diff.max() <= 2 and diff.mean() < 0.05


def test_imgsyn_filters_mark_pixels_and_drop_samples(gens, tmp_path, small_benchmark):
    from seggen.data.ade20k import ADE20KDataset
    from seggen.data.images import load_label_png
    from seggen.data.prepare import check_dataset

    filt = {
        "sample": True,
        "min_miou": 0.0,
        "pixel": True,
        "margin": 1.0,
        "out": str(tmp_path / "filter"),
        "steps": 30,
        "resolution": 32,
    }
    synthesize(load_params(params_file(gens, tmp_path / "all", filter=filt)), "imgsyn", progress=False)
    scores = {r.id: r.scores.sample_miou for r in read_manifest(tmp_path / "all" / "imgsyn" / "manifest.jsonl")}
    assert all(v is not None for v in scores.values())
    threshold = float(np.median(list(scores.values())))
    out = tmp_path / "syn"
    res = synthesize(
        load_params(params_file(gens, out, filter={**filt, "min_miou": threshold})), "imgsyn", progress=False
    )
    d = out / "imgsyn"
    rows = read_manifest(d / "manifest.jsonl")
    assert all(r.scores.ignored_fraction is not None for r in rows)
    kept = [r for r in rows if r.kept]
    dropped = [r for r in rows if not r.kept]
    assert {r.id for r in dropped} == {k for k, v in scores.items() if v < threshold} and dropped and kept
    assert all(r.drop_reason == f"sample_miou below {threshold:g}" for r in dropped) and res["dropped"] == len(dropped)
    for r in dropped:
        assert (d / "dropped" / "images" / f"{r.id}.png").exists() and not (
            d / "images" / "training" / f"{r.id}.png"
        ).exists()
    # pixel filter: ignored pixels are 0 (other -> 255 under reduce_zero_label) where the real mask had a class
    src = ADE20KDataset(small_benchmark, "training")
    real = {s.id: load_label_png(s.label_path) for s in src.samples}
    marked = [r for r in kept if r.scores.ignored_fraction > 0]
    assert marked
    for r in marked:
        syn = load_label_png(d / "annotations" / "training" / f"{r.id}.png")
        changed = syn != real[r.source_id]
        assert (syn[changed] == 0).all() and abs(
            changed[real[r.source_id] > 0].mean() - r.scores.ignored_fraction
        ) < 1e-6
        # and the ignore mask beside it names exactly those pixels, for the segmenter's loss to leave out
        ignore = np.asarray(Image.open(d / "ignore" / "training" / f"{r.id}.png")) > 0
        assert np.array_equal(ignore, changed)
    # one mask per kept sample with ignored pixels, none for the others (nor for dropped samples)
    assert sorted(p.stem for p in (d / "ignore" / "training").iterdir()) == sorted(r.id for r in marked)
    check_dataset(d, ["training"])  # panoptic segments were recomputed around the ignored pixels
    # per class, what the filters kept and dropped, recounted from the real masks (ImgSyn's labels) and
    # the written ones: a dropped sample drops every pixel, a kept one those set to 0
    expect: dict = {}
    names = json.loads((small_benchmark / "seggen_meta.json").read_text())["classes"]
    for r in rows:
        lab = real[r.source_id]
        syn = load_label_png(d / "annotations" / "training" / f"{r.id}.png") if r.kept else None
        for c in np.unique(lab[lab > 0]):
            n = expect.setdefault(names[c - 1]["name"], [0, 0, 0, 0])
            total = int((lab == c).sum())
            drop = int(((lab == c) & (syn == 0)).sum()) if r.kept else total
            n[0 if r.kept else 1] += 1
            n[2] += total - drop
            n[3] += drop
    got = json.loads((d / "summary.json").read_text())["filter_per_class"]
    assert {c: list(v.values()) for c, v in got.items()} == expect
    assert sum(v["pixels_dropped"] for v in got.values()) > 0 and "filter_per_class" not in json.dumps(
        json.loads((out / "imgsyn.metrics.json").read_text())
    )
    # other params start the dataset over: its ignore masks are seggen's own folder, not a user's
    synthesize(load_params(params_file(gens, out, filter={**filt, "margin": 3.0})), "imgsyn", progress=False)
    rows = read_manifest(d / "manifest.jsonl")
    masks = sorted(p.stem for p in (d / "ignore" / "training").glob("*.png"))
    assert masks == sorted(r.id for r in rows if r.kept and r.scores.ignored_fraction)


def test_changed_params_start_over(gens, tmp_path):
    out = tmp_path / "syn"
    synthesize(load_params(params_file(gens, out, max_sources=4)), "imgsyn", progress=False)
    first = set(tree(out / "imgsyn"))
    res = synthesize(load_params(params_file(gens, out, max_sources=4, steps=2)), "imgsyn", progress=False)
    assert res["generated"] == 4 and set(tree(out / "imgsyn")) == first  # same files, regenerated
    # a file of the user's put into the dataset: starting over would delete it, so it refuses
    (out / "imgsyn" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"imgsyn/notes\.txt: not written by seggen"):
        synthesize(load_params(params_file(gens, out, max_sources=4, steps=3)), "imgsyn", progress=False)
    assert (out / "imgsyn" / "notes.txt").read_text() == "mine" and set(tree(out / "imgsyn")) == first | {"notes.txt"}


def _no_images(out: Path) -> bool:
    return not any(out.rglob("*.png"))


def test_bad_input_fails_before_any_image(gens, tmp_path, small_benchmark):
    out = tmp_path / "syn"
    # missing captions
    p = load_params(params_file(gens, out), {"caption.out": str(tmp_path / "none.jsonl")})
    with pytest.raises(DataError, match=r"none\.jsonl: captions not found"):
        synthesize(p, "masksyn", progress=False)
    # a checkpoint of the wrong model type
    p = load_params(params_file(gens, out, mask2img=str(gens / "t2m" / "model")))
    with pytest.raises(DataError, match=r"is a text2mask model, expected mask2img"):
        synthesize(p, "imgsyn", progress=False)
    # palette mismatch between generator and dataset
    bad = tmp_path / "m2i_other_palette"
    shutil.copytree(gens / "m2i" / "model", bad)
    info = json.loads((bad / "seggen_model.json").read_text())
    info["palette"][3] = [1, 2, 3]
    (bad / "seggen_model.json").write_text(json.dumps(info))
    p = load_params(params_file(gens, out, mask2img=str(bad)))
    with pytest.raises(DataError, match=r"palette of this mask2img model does not match"):
        synthesize(p, "imgsyn", progress=False)
    # a model directory that does not exist
    p = load_params(params_file(gens, out, text2mask=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"nope: run `seggen train_text2mask` first"):
        synthesize(p, "masksyn", progress=False)
    assert _no_images(tmp_path)


def test_cli_errors_are_one_line(gens, tmp_path):
    params = params_file(gens, tmp_path / "syn")
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "synthesize", "--strategy", "both"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: --strategy both: expected one of masksyn, imgsyn"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "--params",
            str(params),
            "synthesize",
            "--strategy",
            "imgsyn",
            "--shard",
            "2",
            "--num-shards",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--shard 2: must be in 0..1" in r.stderr


def test_manifest_rows_are_validated(tmp_path):
    bad = tmp_path / "manifest.jsonl"
    bad.write_text('{"id": "x", "strategy": "other"}\n')
    with pytest.raises(DataError, match=r"manifest.jsonl: line 1: "):
        read_manifest(bad)


def test_local_workers_equal_single_process(reference, gens, tmp_path):
    out = tmp_path / "syn"
    res = synthesize(load_params(params_file(gens, out, masksyn_per_source=2, workers=2)), "masksyn", progress=False)
    assert res["workers"] == 2 and res["generated"] == 48
    assert tree(out / "masksyn") == reference["tree"]


def test_low_data_regime_synthesizes_from_the_segmenters_subset_only(gens, tmp_path):
    """synthesize.real_subset = N: the sources are exactly the N real images segmenter.real_subset = N
    trains on, and the quality filter's segmenter is trained on those images only."""
    from seggen.segmenter.train import Mixture

    p = load_params(params_file(gens, tmp_path / "syn", real_subset=5))
    plan = make_plan(p, "imgsyn")
    sources = sorted({j.source for j in plan.jobs})
    seg = load_params(params_file(gens, tmp_path / "syn"), {"segmenter.real_subset": 5, "segmenter.seed": 7})
    mix = Mixture(seg)
    assert sources == sorted(mix.real.ids[i] for i in mix.real_idx) and len(sources) == 5
    # the training seed does not move the subset
    assert list(
        Mixture(load_params(params_file(gens, tmp_path / "syn"), {"segmenter.real_subset": 5})).real_idx
    ) == list(mix.real_idx)


def test_filter_segmenter_of_the_low_data_regime_sees_the_subset_only(small_benchmark):
    from seggen.synthesis import probe

    x_all, y_all = probe.load_resized(small_benchmark, "training", 16)
    _, x, y = probe.train_probe(small_benchmark, 16, 0, steps=1, batch=2, progress=False, subset=[0, 3])
    assert x.equal(x_all[[0, 3]]) and y.equal(y_all[[0, 3]])


def test_the_cli_honours_workers(gens, tmp_path):
    """`seggen synthesize` (what dvc.yaml runs) makes the dataset with synthesize.workers processes --
    the same bytes as one process."""
    import subprocess
    import sys

    from seggen.io import digest_tree

    one = params_file(gens, tmp_path / "one", max_sources=8, workers=1)
    two = params_file(gens, tmp_path / "two", max_sources=8, workers=2)
    outs = []
    for f in (one, two):
        r = subprocess.run(
            [sys.executable, "-m", "seggen.cli", "--offline", "-p", str(f), "synthesize", "--strategy", "imgsyn"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout)
    assert "with 2 worker processes" in outs[1] and "worker processes" not in outs[0]
    a, b = tmp_path / "one" / "imgsyn", tmp_path / "two" / "imgsyn"
    assert (
        digest_tree(a / "images") == digest_tree(b / "images")
        and (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    )


def _reference_panoptic(labels, instances, things):
    """The per-segment construction (one full-image mask per segment): what panoptic_from_labels must equal."""
    from scipy import ndimage

    from seggen.data.coco import segment_info

    ids, segments = np.zeros(labels.shape, np.uint32), []
    for cls in (int(c) for c in np.unique(labels) if c != 0):
        region = labels == cls
        if cls in things and instances is not None:
            comp = np.where(region, instances, 0)
            parts = [comp == v for v in np.unique(comp) if v != 0]
        elif cls in things:
            comp, n = ndimage.label(region, structure=np.ones((3, 3), bool))
            parts = [comp == v for v in range(1, n + 1)]
        else:
            parts = [region]
        for m in parts:
            segments.append(segment_info(len(segments) + 1, cls, m))
            ids[m] = len(segments)
    return ids, segments


@pytest.mark.parametrize("kind", ["noise", "blocks", "instances"])
def test_panoptic_of_a_generated_mask_equals_the_per_segment_construction(kind):
    """Same ids and segments_info (ids, areas, boxes, order) as one mask per segment, in one pass: a noisy
    mask from an untrained Text2Mask has thousands of segments (84k at 512 px took 92 s per image)."""
    from types import SimpleNamespace

    from seggen.data.coco import segment_info, segments_info
    from seggen.synthesis.synthesize import panoptic_from_labels

    rng = np.random.default_rng(7)
    things = (3, 4)
    meta = SimpleNamespace(thing_ids=list(things))  # all panoptic_from_labels reads of the dataset
    if kind == "noise":
        labels, inst = rng.integers(0, 6, (48, 40)).astype(np.uint8), None
    else:
        labels = np.kron(rng.integers(0, 6, (6, 5)), np.ones((8, 8), np.int64)).astype(np.uint8)
        inst = np.kron(rng.integers(0, 4, (12, 10)), np.ones((4, 4), np.int64)).astype(np.int32)
        inst = inst if kind == "instances" else None
    ids, segs = panoptic_from_labels(labels, inst, meta)
    ref_ids, ref_segs = _reference_panoptic(labels, inst, set(things))
    assert np.array_equal(ids, ref_ids) and segs == ref_segs and len(segs) > 5
    # the pixel filter's recount after ignoring pixels: the surviving segments, each recomputed, in order
    ignore = rng.random(labels.shape) < 0.5
    cut = ids.copy()
    cut[ignore] = 0
    want = [segment_info(s["id"], s["category_id"], cut == s["id"]) for s in reversed(segs) if (cut == s["id"]).any()]
    assert segments_info(cut, [(s["id"], s["category_id"], 0) for s in reversed(segs)]) == want


def test_the_compute_record_sums_the_runs_of_one_dataset(tmp_path):
    """A run that resumes a killed one adds its entry; a dataset of other params starts a new record; a
    run that generated nothing writes the record only if it is missing."""
    from seggen.synthesis.merge import record_run, run_path

    out = tmp_path / "imgsyn"
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "fingerprint").write_text("aaa\n")
    assert record_run(out, None) == {"fingerprint": "aaa", "runs": [], "seconds": 0, "generated": 0}
    first = {"generated": 16, "seconds": 10.0, "processes": 2, "device": "CPU (2 cores)", "date": "2026-12-06"}
    record_run(out, first)
    (out / "summary.json").write_text(json.dumps({"fingerprint": "aaa"}))  # merged: the same dataset
    rec = record_run(out, {**first, "generated": 8, "seconds": 5.5})
    assert rec["generated"] == 24 and rec["seconds"] == 15.5 and len(rec["runs"]) == 2
    assert record_run(out, None) == rec == json.loads(run_path(out).read_text())
    interrupted = record_run(out, {**first, "generated": None, "seconds": 2.0})  # Ctrl-C: its images unknown
    assert interrupted["generated"] == 24 and interrupted["seconds"] == 17.5 and len(interrupted["runs"]) == 3
    (out / ".work" / "fingerprint").unlink()
    (out / "summary.json").write_text(json.dumps({"fingerprint": "bbb"}))  # other params
    assert record_run(out, first)["runs"] == [first] and run_path(out) == tmp_path / "imgsyn.run.json"
