"""The bundled benchmark: deterministic, readable in both layouts, atomic, with a shifted domain."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np

from seggen.config import BenchmarkParams
from seggen.data.ade20k import ADE20KDataset
from seggen.data.benchmark import SPLITS, generate, stale_reason
from seggen.data.coco import CocoPanoptic
from seggen.data.meta import load_meta
from seggen.data.prepare import check_dataset


def few(n: int) -> str:
    """params.yaml lines: a tuning split of n images and one domain of n images per shifted split."""
    return f"    num_tuning: {n}\n    domains: {{unseen: 1, tuning: 1, images: {n}}}\n"


SMALL = BenchmarkParams(
    resolution=64, num_train=12, num_val=4, num_tuning=2, domains={"unseen": 2, "tuning": 1, "images": 2}
)


def digest_tree(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_and_independent_of_workers(tmp_path):
    a = generate(tmp_path / "a", SMALL, seed=3, progress=False)
    b = generate(tmp_path / "b", SMALL.model_copy(update={"workers": 2}), seed=3, progress=False)
    c = generate(tmp_path / "c", SMALL, seed=4, progress=False)
    assert digest_tree(a) == digest_tree(b)  # byte-identical, whatever the number of workers
    for split in SPLITS:
        assert digest_tree(a / "images" / split) != digest_tree(c / "images" / split)


def test_layouts_and_content(small_benchmark):
    meta = load_meta(small_benchmark)
    assert meta.num_classes == 10 and len(meta.thing_ids) == 5
    counts = check_dataset(small_benchmark, progress=False)
    assert counts == {
        f"{s}: {k}": n
        for s, n in (("training", 24), ("validation", 8), ("validation_shift", 8), ("tuning", 4), ("tuning_shift", 4))
        for k in ("samples", "panoptic annotations")
    }
    ds = ADE20KDataset(small_benchmark, "training")
    seen = set()
    for img, lab in ds:
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        seen |= set(np.unique(lab).tolist())
    assert seen <= set(range(1, 11)) and len(seen) >= 8
    pan = CocoPanoptic(
        small_benchmark / "panoptic/panoptic_training.json", image_dir=small_benchmark / "images/training"
    )
    things_per_image = []
    for i in range(len(pan)):
        s = pan[i]
        # panoptic and semantic layouts agree pixel for pixel
        assert (pan.semantic(s.ids, s.segments) == ds[i][1]).all()
        things_per_image.append(sum(pan.categories[x["category_id"]]["isthing"] for x in s.segments))
    assert np.mean(things_per_image) >= 2 and max(things_per_image) >= 4


def test_images_are_not_a_colour_lookup(small_benchmark):
    """Within a class, pixel colours vary (texture, lighting, noise, per-instance colours)."""
    ds = ADE20KDataset(small_benchmark, "training")
    stds = []
    for img, lab in ds:
        for c in (3, 7):  # grass, tree
            m = lab == c
            if m.sum() > 20:
                stds.append(img[m].astype(float).std(0).mean())
    assert np.mean(stds) > 6


def test_shifted_domain_differs_in_appearance(small_benchmark):
    def mean_colour(split, cls):
        ds = ADE20KDataset(small_benchmark, split)
        px = [img[lab == cls] for img, lab in ds]
        return np.concatenate(px).astype(float).mean(0)

    for cls in (1, 3):  # sky, grass
        assert np.abs(mean_colour("validation", cls) - mean_colour("validation_shift", cls)).max() > 15


def test_shifted_splits_hold_drawn_domains_far_from_the_labelled_one(small_benchmark, tmp_path):
    from seggen.data.benchmark import read_domains
    from seggen.data.domains import LABELLED, Domain, domain_distance

    doms = read_domains(small_benchmark, "validation_shift")
    assert [d["name"] for d in doms] == ["unseen-1", "unseen-2"] and [len(d["images"]) for d in doms] == [4, 4]
    assert [d["name"] for d in read_domains(small_benchmark, "tuning_shift")] == ["tuning-1"]
    assert read_domains(small_benchmark, "validation") is None  # one domain: the labelled one
    looks = [Domain.from_record(d["look"]) for d in doms + read_domains(small_benchmark, "tuning_shift")]
    assert len(set(looks)) == 3 and all(domain_distance(lk, LABELLED) >= 0.8 for lk in looks)
    # the domains have their own seed: other domains, the same labelled splits
    other = generate(
        tmp_path / "o",
        SMALL.model_copy(update={"domains": SMALL.domains.model_copy(update={"seed": 9})}),
        0,
        progress=False,
    )
    same = generate(tmp_path / "s", SMALL, 0, progress=False)
    assert read_domains(other, "validation_shift")[0]["look"] != read_domains(same, "validation_shift")[0]["look"]
    for split in ("training", "validation", "tuning"):
        assert digest_tree(other / "images" / split) == digest_tree(same / "images" / split)
    assert digest_tree(other / "images" / "validation_shift") != digest_tree(same / "images" / "validation_shift")


def test_prepare_is_skipped_when_current_and_killed_run_leaves_nothing(tmp_path):
    root = tmp_path / "data" / "benchmark"
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {root}\n  benchmark:\n    num_train: 4000\n    num_val: 4\n" + few(4))
    proc = subprocess.Popen(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "prepare"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "data").glob(".benchmark.*.tmp/images/training/*.jpg")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not root.exists()  # nothing half-written under the real name
    # re-run (smaller, to keep the test quick): completes, and cleans the stale temp dir
    params.write_text(f"data:\n  root: {root}\n  benchmark:\n    num_train: 8\n    num_val: 4\n" + few(4))
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "prepare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "data").glob(".benchmark.*"))
    before = digest_tree(root)
    p = BenchmarkParams(num_train=8, num_val=4, num_tuning=4, domains={"unseen": 1, "tuning": 1, "images": 4})
    assert stale_reason(root, p, 0) is None
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", str(params), "prepare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and digest_tree(root) == before
    assert stale_reason(root, p.model_copy(update={"resolution": 96}), 0) == "rendered with other params"


def _prepare(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "seggen.cli", "--params", "params.yaml", *args, "prepare"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_prepare_checks_every_file_before_up_to_date(tmp_path):
    """A deleted image or an emptied annotation is found (named), and the dataset rendered again;
    a file seggen did not write stops a re-render instead of being deleted."""
    (tmp_path / "params.yaml").write_text("data:\n  benchmark:\n    num_train: 6\n    num_val: 3\n" + few(3))
    assert _prepare(tmp_path).returncode == 0
    root = tmp_path / "data" / "benchmark"
    before = digest_tree(root)
    assert (root / ".seggen").is_file() and (root / "seggen_files.json").is_file()
    img = root / "images" / "training" / "bench_training_000002.jpg"
    img.unlink()
    r = _prepare(tmp_path)
    assert r.returncode == 0 and f"{img.relative_to(tmp_path)}: missing" in r.stderr and digest_tree(root) == before
    ann = root / "annotations" / "validation" / "bench_validation_000001.png"
    ann.write_bytes(b"")
    r = _prepare(tmp_path)
    assert r.returncode == 0 and f"{ann.relative_to(tmp_path)}: changed" in r.stderr and digest_tree(root) == before
    r = _prepare(tmp_path)
    assert r.returncode == 0 and "rendering" not in r.stderr  # intact: up to date
    # a stale temp dir of a killed run (marked from its start) goes even when nothing is to be done;
    # folders of the user's with seggen's temp or old names stay, with everything in them
    stale = tmp_path / "data" / ".benchmark.abc123.tmp"
    (stale / "images").mkdir(parents=True)
    (stale / ".seggen").write_text("Written by seggen (a temporary directory of seggen's).\n")
    mine = [tmp_path / "data" / ".benchmark.old", tmp_path / "data" / ".benchmark.x1.tmp"]
    for d in mine:
        d.mkdir()
        (d / "notes.txt").write_text("mine")
    assert _prepare(tmp_path).returncode == 0 and not stale.exists() and digest_tree(root) == before
    assert _prepare(tmp_path, "--set", "data.benchmark.num_val=4").returncode == 0  # re-rendered: swapped
    assert all((d / "notes.txt").read_text() == "mine" for d in mine)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".benchmark.old", ".benchmark.x1.tmp", "benchmark"]
    assert _prepare(tmp_path, "--set", "data.benchmark.num_val=3").returncode == 0 and digest_tree(root) == before
    # someone else's file in the dataset: reported, never deleted
    (root / "notes.txt").write_text("mine")
    r = _prepare(tmp_path, "--set", "data.benchmark.num_val=4")
    assert r.returncode == 2 and "data/benchmark/notes.txt" in r.stderr and (root / "notes.txt").read_text() == "mine"
    r = _prepare(tmp_path)  # the params it was rendered with: up to date? no -- an unknown file is reported too
    assert r.returncode == 2 and "notes.txt" in r.stderr


def test_prepare_never_replaces_a_real_dataset(ade_root, tmp_path):
    """The critical case: `prepare --root` on a real ADE20K copy with a user's notes."""
    import shutil

    real = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, real)
    (real / "notes.txt").write_text("my notes")
    before = digest_tree(real)
    r = subprocess.run(
        [sys.executable, "-m", "seggen.cli", "prepare", "--root", str(real)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: data.root {real}: the directory exists and was not written by seggen"
    )
    assert digest_tree(real) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ADEChallengeData2016"]


def test_a_symlinked_root_is_followed_and_kept(tmp_path):
    """data.root as a link to another disk: the dataset is rendered and re-rendered at the link's
    target; the link stays a link, and nothing is left beside it."""
    elsewhere = tmp_path / "other_disk" / "bench"
    elsewhere.mkdir(parents=True)
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "benchmark"
    link.symlink_to(elsewhere)
    tiny = "data:\n  benchmark:\n    num_train: 4\n    num_val: 2\n" + few(2)
    (tmp_path / "params.yaml").write_text(tiny)
    assert _prepare(tmp_path).returncode == 0
    r = _prepare(tmp_path, "--set", "data.benchmark.num_val=3")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == elsewhere.resolve()
    assert len(list((elsewhere / "images" / "validation").iterdir())) == 3
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["benchmark"]
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == ["bench"]  # no temp or old dirs left
