"""Bad input a user can fix, through the real `seggen` command: exit 2, one `error:` line on its own
line naming the culprit (file, key or option), no traceback, and the whole workspace -- inputs and
outputs, files and folders -- byte-identical before and after (nothing deleted, nothing half-written).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REAL
from helpers import merged, tiny_pipeline_params

REPO = Path(__file__).resolve().parents[1]
SEGGEN = [sys.executable, "-m", "seggen.cli"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A small project: the bundled benchmark, captions, Text2Mask, Mask2Img and a segmenter (tiny),
    the metrics CLIs' inputs, and a copy of the real ADE20K and COCO samples."""
    from seggen.config import load_params
    from seggen.pipeline import stages

    root = tmp_path_factory.mktemp("bad_input")
    params = merged(yaml.safe_load((REPO / "params.yaml").read_text()), tiny_pipeline_params())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    old = Path.cwd()
    os.chdir(root)
    try:
        p = load_params("params.yaml")
        stages.prepare(p)
        stages.caption(p)
        stages.train_text2mask(p)
        stages.prepare_corpus(p)  # the default Mask2Img is a ControlNet over the prior
        stages.train_prior(p)
        stages.train_mask2img(p)
        stages.train_segmenter(p, "baseline")
    finally:
        os.chdir(old)
    bench = root / "data" / "benchmark"
    # eval semantic: GT = the validation annotations (0 = ignore, 1..10); predictions 0..9
    sem = root / "sem"
    (sem / "gt").mkdir(parents=True)
    (sem / "pred").mkdir()
    for f in sorted((bench / "annotations" / "validation").glob("*.png")):
        shutil.copy(f, sem / "gt" / f.name)
        lab = np.asarray(Image.open(f)).astype(np.int64)
        Image.fromarray(np.clip(lab - 1, 0, 9).astype(np.uint8)).save(sem / "pred" / f.name)
    # eval panoptic: the GT itself as a (perfect) prediction
    pan = root / "pan"
    pan.mkdir()
    shutil.copy(bench / "panoptic" / "panoptic_validation.json", pan / "gt.json")
    shutil.copytree(bench / "panoptic" / "panoptic_validation", pan / "gt")
    shutil.copytree(bench / "panoptic" / "panoptic_validation", pan / "pred")
    gt = json.loads((pan / "gt.json").read_text())
    (pan / "pred.json").write_text(json.dumps({"annotations": gt["annotations"]}))
    if not (REAL / "coco").is_dir():  # the cases that need the real samples skip (test_bad_input)
        return root
    # eval instance: the real COCO sample, its GT masks as detections
    inst = root / "inst"
    inst.mkdir()
    shutil.copy(REAL / "coco" / "annotations" / "instances_val2017.json", inst / "gt.json")
    gi = json.loads((inst / "gt.json").read_text())
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9}
        for a in gi["annotations"]
        if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
    ]
    (inst / "dt.json").write_text(json.dumps(dets))
    shutil.copytree(REAL / "ade20k" / "ADEChallengeData2016", root / "real" / "ADEChallengeData2016")
    shutil.copytree(REAL / "coco", root / "real" / "coco")
    for p in (root / "real").rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: folders, files (size, sha256, mode) and links."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = ("dir", oct(p.stat().st_mode))
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
            else:
                out[str(p.relative_to(root))] = (
                    "file",
                    p.stat().st_size,
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                    oct(p.stat().st_mode),
                )
    return out


# -- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    argv: list[str]  # seggen's arguments; a case dir `c` is created for each case's planted input
    names: list[str]  # what the error line must name
    setup: Callable[[Path, Path], None] = lambda ws, c: None  # (workspace, case dir)
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    python: str | None = None  # run this Python code (fault injection) before seggen's main instead
    forbidden: list[str] = field(default_factory=list)  # what no output line may hold (a password)


def _user_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my notes, not seggen's\n")


def _copy_benchmark_with_note(ws: Path, c: Path) -> None:
    shutil.copytree(ws / "data" / "benchmark", c / "benchmark")
    (c / "benchmark" / "notes.txt").write_text("mine\n")


def _real_ade_with_note(ws: Path, c: Path) -> None:
    shutil.copytree(ws / "real" / "ADEChallengeData2016", c / "ADEChallengeData2016")
    (c / "ADEChallengeData2016" / "notes.txt").write_text("my annotation notes\n")


def _json_edit(src: str, dst: str, edit: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(ws: Path, c: Path) -> None:
        d = json.loads((ws / src).read_text())
        edit(d)
        (c / dst).write_text(json.dumps(d))

    return setup


def _truncate(src: str, pattern: str, keep: float = 0.5) -> Callable[[Path, Path], None]:
    """Copy the model dir `src` to c/model and cut the first file matching `pattern` to `keep` of its size."""

    def setup(ws: Path, c: Path) -> None:
        shutil.copytree(ws / src, c / "model")
        f = sorted((c / "model").rglob(pattern))[0]
        data = f.read_bytes()
        f.write_bytes(data[: int(len(data) * keep)])

    return setup


def _ade_with_panoptic(edit: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    """A copy of the benchmark (ADE layout + panoptic JSON) with its validation panoptic JSON edited."""

    def setup(ws: Path, c: Path) -> None:
        shutil.copytree(ws / "data" / "benchmark", c / "ds")
        j = c / "ds" / "panoptic" / "panoptic_validation.json"
        d = json.loads(j.read_text())
        edit(d)
        j.write_text(json.dumps(d))

    return setup


def _coco_root(edit: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(ws: Path, c: Path) -> None:
        shutil.copytree(ws / "real" / "coco", c / "coco")
        j = c / "coco" / "annotations" / "instances_val2017.json"
        d = json.loads(j.read_text())
        edit(d)
        j.write_text(json.dumps(d))

    return setup


def _dup_first(key: str) -> Callable[[dict], object]:
    return lambda d: d[key].append(dict(d[key][0]))


def _set_first_det(field_: str, value) -> Callable[[list], object]:
    def edit(d):
        d[0][field_] = value

    return edit


def _wrong_size_mask(d):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    d[0]["segmentation"] = {"size": [10, 10], "counts": rle["counts"].decode()}


def _drop_key_of_first_segment(key: str):
    def edit(d):
        del d["annotations"][0]["segments_info"][0][key]

    return edit


def _write(name: str, text: str | bytes) -> Callable[[Path, Path], None]:
    def setup(ws: Path, c: Path) -> None:
        (c / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


T2M, M2I, SEG = "models/text2mask/model", "models/mask2img/model", "models/segmenter/baseline/model"
SEM = ["eval", "semantic", "--pred", "sem/pred", "--gt", "sem/gt", "--num-classes", "10", "--reduce-zero-label"]
PAN = ["eval", "panoptic", "--gt-json", "pan/gt.json", "--gt-dir", "pan/gt", "--pred-dir", "pan/pred"]
INST = ["eval", "instance", "--gt-json", "inst/gt.json"]
ENOSPC = (
    "import errno, sys, PIL.Image\n"
    "def full(self, *a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
    "PIL.Image.Image.save = full\n"
    "from seggen.cli import main; sys.argv[0] = 'seggen'; main()\n"
)


def _float_image(ws: Path, c: Path) -> None:
    """The benchmark with one training image replaced by a 32-bit float TIFF (same name and size)."""
    shutil.copytree(ws / "data" / "benchmark", c / "ds")
    img = sorted((c / "ds" / "images" / "training").glob("*.jpg"))[0]
    w, h = Image.open(img).size
    Image.fromarray(np.full((h, w), 0.5, np.float32)).save(img, format="TIFF")


def _unknown_backbone(ws: Path, c: Path) -> None:
    shutil.copytree(ws / SEG, c / "model")
    cfg = json.loads((c / "model" / "config.json").read_text())
    cfg["backbone_config"]["model_type"] = "nosuchbackbone"
    (c / "model" / "config.json").write_text(json.dumps(cfg))


def _checkpoints_file(ws: Path, c: Path) -> None:
    from seggen.io import _marker_text

    (c / "seg").mkdir()
    (c / "seg" / ".seggen").write_text(_marker_text("train_segmenter"))  # seggen's own output folder
    (c / "seg" / "checkpoints").write_text("not a directory\n")


CASES = [
    # -- never replace what seggen did not write ----------------------------------------------------
    Case(
        "prepare-real-ade20k",
        ["prepare", "--root", "{c}/ADEChallengeData2016"],
        ["{c}/ADEChallengeData2016", "not written by seggen"],
        _real_ade_with_note,
    ),
    Case(
        "prepare-user-folder",
        ["--set", "data.root={c}/mine", "prepare"],
        ["{c}/mine", "data.root"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case("prepare-root-is-file", ["prepare", "--root", "{c}/f"], ["{c}/f", "is a file"], _write("f", "x")),
    Case(
        "prepare-rerender-would-delete-user-file",
        ["--set", "data.root={c}/benchmark", "--set", "data.benchmark.num_val=5", "prepare"],
        ["{c}/benchmark/notes.txt", "not written by seggen"],
        _copy_benchmark_with_note,
    ),
    Case(
        "train-text2mask-user-folder",
        ["train_text2mask", "--out", "{c}/mine"],
        ["{c}/mine", "text2mask.out"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case("train-mask2img-out-is-file", ["train_mask2img", "--out", "{c}/f"], ["{c}/f", "is a file"], _write("f", "x")),
    Case(
        "train-segmenter-user-folder",
        ["--set", "segmenter.out={c}/mine", "train_segmenter"],
        ["{c}/mine", "segmenter.out"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case(
        "synthesize-user-folder",
        ["--set", "synthesize.out={c}/syn", "synthesize", "--strategy", "imgsyn"],
        ["{c}/syn/imgsyn", "synthesize.out"],
        lambda ws, c: _user_dir(c / "syn" / "imgsyn"),
    ),
    Case(
        "evaluate-user-folder",
        ["evaluate", "--model", SEG, "--out", "{c}/mine"],
        ["{c}/mine", "--out"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case(
        "evaluate-out-is-file", ["evaluate", "--model", SEG, "--out", "{c}/f"], ["{c}/f", "is a file"], _write("f", "x")
    ),
    Case(
        "export-user-folder",
        ["export", "detectron2", "--out", "{c}/mine"],
        ["{c}/mine", "--out"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case(
        "sample-text2mask-user-folder",
        ["sample", "text2mask", "--prompt", "a car", "--out", "{c}/mine"],
        ["{c}/mine", "--out"],
        lambda ws, c: _user_dir(c / "mine"),
    ),
    Case(
        "sample-text2mask-out-is-file",
        ["sample", "text2mask", "--prompt", "a car", "--out", "{c}/f"],
        ["{c}/f", "is a file"],
        _write("f", "x"),
    ),
    Case(
        "sample-mask2img-out-is-file",
        [
            "sample",
            "mask2img",
            "--mask",
            "sem/gt/bench_validation_000000.png",
            "--labels",
            "--prompt",
            "a car",
            "--out",
            "{c}/f",
        ],
        ["{c}/f", "is a file"],
        _write("f", "x"),
    ),
    Case("caption-out-is-directory", ["--set", "caption.out={c}", "caption"], ["{c}", "is a directory"]),
    Case(
        "caption-out-is-not-captions",
        ["--set", "caption.out={c}/notes.jsonl", "caption"],
        ["{c}/notes.jsonl", "not a caption row"],
        _write("notes.jsonl", '{"my": "data"}\n'),
    ),
    # -- metrics CLIs --------------------------------------------------------------------------------
    Case(
        "semantic-num-classes-0",
        ["eval", "semantic", "--pred", "sem/pred", "--gt", "sem/gt", "--num-classes", "0"],
        ["--num-classes"],
    ),
    Case("semantic-json-is-directory", SEM + ["--json", "{c}"], ["--json", "{c}", "is a directory"]),
    Case(
        "semantic-pred-is-file",
        ["eval", "semantic", "--pred", "{c}/f", "--gt", "sem/gt", "--num-classes", "10"],
        ["{c}/f", "is a file"],
        _write("f", "x"),
    ),
    Case(
        "semantic-label-out-of-range",
        ["eval", "semantic", "--pred", "sem/pred", "--gt", "sem/gt", "--num-classes", "5"],
        ["sem/gt/", "out of range"],
    ),
    Case(
        "semantic-size-mismatch",
        ["eval", "semantic", "--pred", "{c}/pred", "--gt", "sem/gt", "--num-classes", "10", "--reduce-zero-label"],
        ["{c}/pred/bench_validation_000002.png", "does not match"],
        lambda ws, c: (
            shutil.copytree(ws / "sem" / "pred", c / "pred"),
            Image.fromarray(np.zeros((7, 9), np.uint8)).save(c / "pred" / "bench_validation_000002.png"),
        ),
    ),
    Case(
        "semantic-flag-typo",
        ["eval", "semantic", "--pred", "sem/pred", "--gt", "sem/gt", "--num-clases", "10"],
        ["--num-clases"],
    ),
    Case(
        "panoptic-segments-info-null",
        PAN + ["--pred-json", "{c}/p.json"],
        ["{c}/p.json", "segments_info"],
        _json_edit("pan/pred.json", "p.json", lambda d: d["annotations"][0].update(segments_info=None)),
    ),
    Case(
        "panoptic-pred-segment-without-id",
        PAN + ["--pred-json", "{c}/p.json"],
        ["{c}/p.json", "'id'"],
        _json_edit("pan/pred.json", "p.json", _drop_key_of_first_segment("id")),
    ),
    Case(
        "panoptic-gt-category-without-id",
        [
            "eval",
            "panoptic",
            "--gt-json",
            "{c}/g.json",
            "--gt-dir",
            "pan/gt",
            "--pred-json",
            "pan/pred.json",
            "--pred-dir",
            "pan/pred",
        ],
        ["{c}/g.json", "category has no 'id'"],
        _json_edit("pan/gt.json", "g.json", lambda d: d["categories"][0].pop("id")),
    ),
    Case(
        "panoptic-gt-duplicate-category",
        [
            "eval",
            "panoptic",
            "--gt-json",
            "{c}/g.json",
            "--gt-dir",
            "pan/gt",
            "--pred-json",
            "pan/pred.json",
            "--pred-dir",
            "pan/pred",
        ],
        ["{c}/g.json", "category id 1 appears twice"],
        _json_edit("pan/gt.json", "g.json", _dup_first("categories")),
    ),
    Case(
        "panoptic-pred-image-twice",
        PAN + ["--pred-json", "{c}/p.json"],
        ["{c}/p.json", "annotated twice"],
        _json_edit("pan/pred.json", "p.json", _dup_first("annotations")),
    ),
    Case(
        "panoptic-gt-empty-annotations",
        [
            "eval",
            "panoptic",
            "--gt-json",
            "{c}/g.json",
            "--gt-dir",
            "pan/gt",
            "--pred-json",
            "pan/pred.json",
            "--pred-dir",
            "pan/pred",
        ],
        ["{c}/g.json", "'annotations' is empty"],
        _json_edit("pan/gt.json", "g.json", lambda d: d.update(annotations=[])),
    ),
    Case("panoptic-json-is-directory", PAN + ["--pred-json", "{c}"], ["{c}", "is a directory"]),
    Case(
        "instance-wrong-size-mask",
        INST + ["--dt-json", "{c}/d.json"],
        ["{c}/d.json", "detection 0", "10x10"],
        _json_edit("inst/dt.json", "d.json", _wrong_size_mask),
    ),
    Case(
        "instance-nan-score",
        INST + ["--dt-json", "{c}/d.json"],
        ["{c}/d.json", "detection 0", "finite"],
        _write("d.json", ""),
    ),  # written below (JSON has no NaN literal in json.dumps' strict mode)
    Case(
        "instance-infinite-score",
        INST + ["--dt-json", "{c}/d.json"],
        ["{c}/d.json", "detection 0", "finite"],
        _write("d.json", ""),
    ),
    Case(
        "instance-string-score",
        INST + ["--dt-json", "{c}/d.json"],
        ["{c}/d.json", "detection 0", "must be a number"],
        _json_edit("inst/dt.json", "d.json", _set_first_det("score", "0.9")),
    ),
    Case(
        "instance-unknown-image",
        INST + ["--dt-json", "{c}/d.json"],
        ["{c}/d.json", "detection 0", "unknown image_id"],
        _json_edit("inst/dt.json", "d.json", _set_first_det("image_id", 123456789)),
    ),
    Case(
        "instance-gt-duplicate-annotation-id",
        ["eval", "instance", "--gt-json", "{c}/g.json", "--dt-json", "inst/dt.json"],
        ["{c}/g.json", "annotation id", "twice"],
        _json_edit("inst/gt.json", "g.json", _dup_first("annotations")),
    ),
    Case("instance-dt-is-directory", INST + ["--dt-json", "{c}"], ["{c}", "is a directory"]),
    # -- data check -----------------------------------------------------------------------------------
    Case(
        "check-panoptic-empty-annotations",
        ["check_data", "--root", "{c}/ds"],
        ["{c}/ds/panoptic/panoptic_validation.json", "empty"],
        _ade_with_panoptic(lambda d: d.update(annotations=[])),
    ),
    Case(
        "check-panoptic-duplicate-category",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "category id 1 appears twice"],
        _ade_with_panoptic(_dup_first("categories")),
    ),
    Case(
        "check-panoptic-image-twice",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "annotated twice"],
        _ade_with_panoptic(lambda d: d["annotations"].append({**d["annotations"][0], "file_name": "other.png"})),
    ),
    Case(
        "check-panoptic-duplicate-image-id",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "image id 1 appears twice"],
        _ade_with_panoptic(lambda d: d["images"].append({**d["images"][0], "file_name": "x.jpg"})),
    ),
    Case(
        "check-panoptic-duplicate-segment-id",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "appears twice in"],
        _ade_with_panoptic(
            lambda d: d["annotations"][0]["segments_info"].append(dict(d["annotations"][0]["segments_info"][0]))
        ),
    ),
    Case(
        "check-coco-unknown-category",
        ["check_data", "--root", "{c}/coco"],
        ["{c}/coco/annotations/instances_val2017.json", "unknown category_id"],
        _coco_root(lambda d: d["annotations"][0].update(category_id=999)),
    ),
    Case(
        "check-coco-empty-annotations",
        ["check_data", "--root", "{c}/coco"],
        ["instances_val2017.json", "'annotations' is empty"],
        _coco_root(lambda d: d.update(annotations=[])),
    ),
    Case("check-root-is-file", ["check_data", "--root", "{c}/f"], ["{c}/f", "is a file"], _write("f", "x")),
    # -- params ---------------------------------------------------------------------------------------
    Case("params-is-directory", ["--params", "{c}", "prepare"], ["{c}", "is a directory"]),
    Case(
        "params-not-utf8",
        ["--params", "{c}/p.yaml", "prepare"],
        ["{c}/p.yaml", "UTF-8"],
        _write("p.yaml", b"seed: \xff\xfe\n"),
    ),
    Case(
        "params-bad-yaml",
        ["--params", "{c}/p.yaml", "prepare"],
        ["{c}/p.yaml", "line 2"],
        _write("p.yaml", "seed: 0\n  x: 1\n"),
    ),
    Case("set-bad-value", ["--set", "segmenter.train.steps=-5", "train_segmenter"], ["--set segmenter.train.steps"]),
    Case(
        "set-unknown-key",
        ["--set", "segmenter.train.stepz=5", "prepare"],
        ["--set segmenter.train.stepz", "unknown key"],
    ),
    # -- models ---------------------------------------------------------------------------------------
    Case("sample-n-0", ["sample", "text2mask", "--prompt", "a car", "--n", "0", "--out", "{c}/o"], ["--n"]),
    Case(
        "sample-mask2img-n-0",
        [
            "sample",
            "mask2img",
            "--mask",
            "sem/gt/bench_validation_000000.png",
            "--labels",
            "--prompt",
            "x",
            "--n",
            "0",
            "--out",
            "{c}/o",
        ],
        ["--n"],
    ),
    Case(
        "sample-mask2img-mask-missing",
        ["sample", "mask2img", "--mask", "{c}/nope.png", "--prompt", "x", "--out", "{c}/o"],
        ["{c}/nope.png", "not found"],
    ),
    Case(
        "sample-truncated-safetensors",
        ["sample", "text2mask", "--prompt", "a car", "--model", "{c}/model", "--out", "{c}/o"],
        ["{c}/model/", ".safetensors", "truncated"],
        _truncate(T2M, "diffusion_pytorch_model.safetensors"),
    ),
    Case(
        "sample-truncated-model-meta",
        ["sample", "text2mask", "--prompt", "a car", "--model", "{c}/model", "--out", "{c}/o"],
        ["{c}/model/seggen_model.json", "corrupt JSON"],
        _truncate(T2M, "seggen_model.json"),
    ),
    Case(
        "sample-model-is-file",
        [
            "sample",
            "mask2img",
            "--mask",
            "sem/gt/bench_validation_000000.png",
            "--labels",
            "--prompt",
            "x",
            "--model",
            "{c}/f",
            "--out",
            "{c}/o",
        ],
        ["{c}/f", "is a file"],
        _write("f", "x"),
    ),
    Case(
        "evaluate-truncated-weights",
        ["evaluate", "--model", "{c}/model", "--out", "{c}/o"],
        ["{c}/model/model.safetensors", "truncated"],
        _truncate(SEG, "model.safetensors"),
    ),
    Case("evaluate-unknown-split", ["evaluate", "--model", SEG, "--split", "nosuch", "--out", "{c}/o"], ["nosuch"]),
    # -- environment ----------------------------------------------------------------------------------
    Case(
        "tracking-uri-bad-scheme",
        ["prepare"],
        ["MLFLOW_TRACKING_URI=foo://bar"],
        env={"SEGGEN_TRACKING": "on", "MLFLOW_TRACKING_URI": "foo://bar"},
    ),
    Case(
        "tracking-server-unreachable",
        ["prepare"],
        ["MLFLOW_TRACKING_URI=http://127.0.0.1:9", "unreachable"],
        env={"SEGGEN_TRACKING": "on", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    ),
    Case(
        "disk-full-during-evaluate",
        ["evaluate", "--model", SEG, "--out", "{c}/o"],
        ["{c}/o", "No space left on device"],
        python=ENOSPC,
    ),
    Case(
        "disk-full-during-sample",
        ["sample", "text2mask", "--prompt", "a car", "--n", "2", "--out", "{c}/o"],
        ["{c}/o", "No space left on device"],
        python=ENOSPC,
    ),
    # -- no params value runs, no value that is no value, no secret shown --------------------------------
    Case("set-root-command-substitution", ["--set", "data.root=data/b$(touch PWNED)", "prepare"], ["--set data.root"]),
    Case("set-split-shell-separator", ["--set", "caption.split=a;touch PWNED", "caption"], ["--set caption.split"]),
    Case(
        "set-arm-name-backticks",
        ["--set", 'arms={"a`touch PWNED`": {strategy: real}}', "train_segmenter"],
        ["arms.a`touch PWNED`"],
    ),
    Case("set-seed-boolean", ["--set", "seed=true", "prepare"], ["--set seed", "valid integer"]),
    Case("set-empty-key", ["--set", "=5", "prepare"], ["--set =5", "KEY=VALUE"]),
    Case("set-lr-infinite", ["--set", "text2mask.train.lr=.inf", "train_text2mask"], ["text2mask.train.lr", "finite"]),
    Case(
        "set-steps-beyond-bound",
        ["--set", "segmenter.train.steps=100000000", "train_segmenter"],
        ["segmenter.train.steps", "10000000"],
    ),
    Case(
        "set-crop-one-value-per-group",
        [
            "--set",
            "segmenter.train.crop=32",
            "--set",
            "segmenter.train.batch_size=1",
            "--set",
            "segmenter.model.hidden_dim=32",
            "train_segmenter",
        ],
        ["segmenter.train.crop", "batch_size 1"],
    ),
    Case("semantic-num-classes-huge", SEM[:-2] + ["100000", "--reduce-zero-label"], ["--num-classes", "4096"]),
    Case(
        "check-panoptic-file-name-escapes",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "../../../x.png", "outside the dataset"],
        _ade_with_panoptic(lambda d: d["annotations"][0].update(file_name="../../../x.png")),
    ),
    Case(
        "check-panoptic-absolute-image-name",
        ["check_data", "--root", "{c}/ds"],
        ["panoptic_validation.json", "/etc/hosts", "outside the dataset"],
        _ade_with_panoptic(lambda d: d["images"][0].update(file_name="/etc/hosts")),
    ),
    Case(
        "check-image-float-mode",
        ["check_data", "--root", "{c}/ds"],
        ["{c}/ds/images/training/bench_training_000000.jpg", "mode F"],
        _float_image,
    ),
    Case(
        "evaluate-unknown-backbone",
        ["evaluate", "--model", "{c}/model", "--out", "{c}/o"],
        ["{c}/model", "cannot be loaded"],
        _unknown_backbone,
    ),
    Case(
        "train-checkpoints-is-a-file",
        ["--set", "segmenter.out={c}/seg", "train_segmenter"],
        ["{c}/seg/checkpoints", "is a file"],
        _checkpoints_file,
    ),
    Case(
        "tracking-uri-with-password-unreachable",
        ["prepare"],
        ["MLFLOW_TRACKING_URI=http://alice:***@127.0.0.1:9", "unreachable"],
        env={"MLFLOW_TRACKING_URI": "http://alice:S3cret@127.0.0.1:9", "SEGGEN_TRACKING": "on"},
        forbidden=["S3cret"],
    ),
]


def _nan_scores(ws: Path, c: Path, value: str) -> None:
    text = (ws / "inst" / "dt.json").read_text()
    (c / "d.json").write_text(text.replace('"score": 0.9', f'"score": {value}', 1))


def test_enough_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def _needs_real(case: Case) -> bool:
    import inspect

    try:
        src = inspect.getsource(case.setup)
    except (OSError, TypeError):
        src = ""
    text = " ".join([*case.argv, case.python or "", src])
    return "real" in text or "inst" in text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(ws: Path, case: Case):
    if not (ws / "real").is_dir() and _needs_real(case):
        pytest.skip(f"real ADE20K/COCO samples not found at {REAL} (set SEGGEN_REAL_SAMPLES)")
    c = ws / "cases" / case.id
    c.mkdir(parents=True)
    case.setup(ws, c)
    if case.id == "instance-nan-score":
        _nan_scores(ws, c, "NaN")
    if case.id == "instance-infinite-score":
        _nan_scores(ws, c, "Infinity")
    rel = str(c.relative_to(ws))
    argv = [a.replace("{c}", rel) for a in case.argv]
    names = [n.replace("{c}", rel) for n in case.names]
    before = snapshot(ws)
    cmd = ([sys.executable, "-c", case.python] if case.python else SEGGEN) + argv
    env = {**os.environ, **case.env}
    r = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, env=env, timeout=300)
    err = r.stderr
    assert r.returncode == case.code, f"exit {r.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = re.findall(r"(?:^|\n|\r)(error: [^\n]*)", err)
    assert len(errors) == 1, f"expected one error line:\n{err[-3000:]}"
    assert re.search(r"(^|\n)error: ", err), f"the error line must start a line of its own:\n{err[-2000:]}"
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    for secret in case.forbidden:
        assert secret not in r.stdout + err, f"{secret!r} in the output"
    assert snapshot(ws) == before, "the workspace changed"
    assert not list(ws.rglob("PWNED")), "a params value ran as a command"


def test_debug_shows_the_traceback(ws: Path):
    r = subprocess.run(
        SEGGEN + ["--debug", "eval", "semantic", "--pred", "sem/pred", "--gt", "nope", "--num-classes", "10"],
        cwd=ws,
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2 and "Traceback" in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("error: nope")
    )


def _run_training(tmp_path: Path, ws: Path, python: str | None, *sets: str) -> subprocess.CompletedProcess:
    argv = [a for kv in sets for a in ("--set", kv)] + [
        "--set",
        f"segmenter.out={tmp_path / 'seg'}",
        "train_segmenter",
    ]
    cmd = ([sys.executable, "-c", python] if python else SEGGEN) + argv
    return subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=300)


def _one_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = re.findall(r"(?:^|\n|\r)(error: [^\n]*)", r.stderr)
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def test_a_full_disk_while_saving_weights_is_one_line(ws: Path, tmp_path: Path):
    """safetensors reports a full disk as its own SafetensorError: still one line and exit 2, no model."""
    full = (
        "import sys, safetensors, safetensors.torch\n"
        "def full(*a, **k): raise safetensors.SafetensorError('Error while serializing: "
        'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })\')\n'
        "safetensors.torch.save_file = full\n"
        "from seggen.cli import main; sys.argv[0] = 'seggen'; main()\n"
    )
    line = _one_error(_run_training(tmp_path, ws, full, "segmenter.train.steps=2"))
    assert "No space left on device" in line
    assert not (tmp_path / "seg" / "model").exists() and not list((tmp_path / "seg").glob(".*.tmp"))


def test_a_diverging_training_stops_at_the_step_naming_it_and_saves_nothing_of_it(ws: Path, tmp_path: Path):
    r = _run_training(tmp_path, ws, None, "segmenter.train.lr=1.0e+12", "segmenter.train.steps=6")
    line = _one_error(r)
    # the step, and the poly schedule's rate at that step, named
    assert re.search(r"train_segmenter: the loss is (nan|inf) at step \d \(lr [0-9.]+e\+1[12]\)", line), line
    assert not (tmp_path / "seg" / "model").exists()
    from safetensors.torch import load_file

    for f in (tmp_path / "seg" / "checkpoints").rglob("*.safetensors"):  # what was saved is finite
        assert all(v.isfinite().all() for k, v in load_file(str(f)).items() if v.is_floating_point()), f


def test_a_server_that_dies_while_answering_is_a_lost_server():
    """A tracking server killed mid-response breaks the read (IncompleteRead) rather than the connect:
    that too is the one-line "stopped answering" error, not an unexpected exception."""
    from seggen.errors import server_lost

    text = (
        "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with exception "
        "('Connection broken: IncompleteRead(0 bytes read, 2 more expected)', IncompleteRead(0 bytes read))"
    )
    assert server_lost(RuntimeError(text)) and not server_lost(RuntimeError("RESOURCE_DOES_NOT_EXIST"))
