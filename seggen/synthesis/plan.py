"""A synthesis run planned up front: every sample of every source in a fixed order with its seed and
style, the generators checked against the source's classes and palette, the output claimed."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seggen.config import Params
from seggen.data.captions import read_captions
from seggen.data.layout import open_split
from seggen.data.meta import META_FILE, DatasetMeta
from seggen.errors import DataError
from seggen.generators.diffusion import MODEL_META, read_model_meta
from seggen.io import MARKER, check_dir, claim, digest_tree
from seggen.training import seed_for

log = logging.getLogger(__name__)

STRATEGIES = ("masksyn", "imgsyn")
WORK = ".work"


@dataclass(frozen=True)
class Job:
    index: int  # position in the plan
    source: str  # source sample id
    k: int  # copy number for this source
    prompt: str  # the source's caption: Text2Mask's prompt
    id: str
    seed: int
    style: str | None = None  # the style phrase drawn from synthesize.styles (or the model's caption style)
    why: dict | None = None  # with synthesize.plan: the source's weight and its classes' (the manifest's `plan`)

    @property
    def image_prompt(self) -> str:
        """Mask2Img's prompt: the caption plus the style phrase."""
        return f"{self.prompt}, {self.style}" if self.style else self.prompt


@dataclass
class Plan:
    params: Params
    strategy: str
    out: Path
    jobs: list[Job]
    batches: list[list[Job]]
    meta: DatasetMeta
    dataset: object  # the source split (seggen.data.layout.open_split): its layout is the output's
    generators: dict[str, str]  # kind -> model directory digest
    fingerprint: str
    source_index: dict[str, int] = field(default_factory=dict)  # source id -> dataset index
    copies: int = 1  # the most samples of one source (ImgSyn's diversity needs 2)

    @property
    def layout(self):
        return self.dataset.layout

    @property
    def panoptic(self) -> bool:
        """The output has a panoptic annotation (the source has one; the COCO layout always does)."""
        return self.dataset.has_panoptic

    @property
    def work(self) -> Path:
        return self.out / WORK

    def record(self, batch: list[Job]) -> Path:
        """The batch's record, written after every file of the batch: that it exists says the batch is
        complete. Its first line: the batch's columns, what the merge reads (ids, sizes, scores,
        panoptic segments, diversity sums); then its manifest rows, one JSON line per sample."""
        return self._records / f"{batch[0].index // self.params.synthesize.batch_size:07d}.jsonl"

    @functools.cached_property
    def _records(self) -> Path:
        return self.work / "batches"

    def done(self, batch: list[Job]) -> bool:
        return self.record(batch).exists()

    def written(self) -> int:
        """Samples of the batches recorded so far (a progress count)."""
        records = (self.work / "batches").glob("*.jsonl")
        return sum(len(self.batches[int(p.stem)]) for p in records if p.stem.isdigit())

    def shard_batches(self, shard: int, num_shards: int) -> list[list[Job]]:
        return [b for i, b in enumerate(self.batches) if i % num_shards == shard]

    def output_dirs(self, kept: bool) -> tuple[Path, Path | None, Path | None]:
        """(images, label PNGs or None, panoptic PNGs or None) for kept or dropped samples, in the
        source's layout; dropped samples keep image and label PNG under dropped/ for auditing."""
        split = self.params.synthesize.split
        if not kept:
            return self.out / "dropped" / "images", self.out / "dropped" / "annotations", None
        return (
            self.layout.images(self.out, split),
            self.layout.labels(self.out, split),
            self.layout.panoptic_pngs(self.out, split) if self.panoptic else None,
        )


def draw_style(styles: dict[str, float], seed: int) -> str | None:
    """The style phrase of the sample with manifest seed `seed`: drawn with the weights of
    synthesize.styles (in their order), from the seed alone, so that a plan never depends on batching."""
    if not styles:
        return None
    names = list(styles)
    w = np.asarray([styles[n] for n in names], np.float64)
    u = np.random.default_rng(seed_for(seed, "style")).random()
    return names[min(int(np.searchsorted(np.cumsum(w / w.sum()), u, side="right")), len(names) - 1)]


def sample_seeds(seed: int) -> tuple[int, int]:
    """The Text2Mask and Mask2Img noise seeds of a sample with manifest seed `seed`."""
    return seed_for(seed, "text2mask"), seed_for(seed, "mask2img")


def model_digest(directory: Path) -> str:
    """sha256 over a model directory's files (relative path + bytes), in sorted order."""
    return digest_tree(directory)


def _check_generator(directory: Path, kind: str, meta: DatasetMeta, root: Path, boundary: bool | None = None) -> dict:
    if not (directory / MODEL_META).exists():
        hint = f"run `seggen train_{kind}` first" if not directory.exists() else f"not a seggen {kind} model directory"
        raise DataError(f"{directory}: {hint} (synthesize.{kind})")
    info = read_model_meta(directory, kind)
    want = meta.palette(boundary=bool(info.get("instances")) if boundary is None else boundary).colors
    got = np.asarray(info["palette"], np.uint8)
    if got.shape != want.shape or (got != want).any():
        raise DataError(
            f"{directory}: palette of this {kind} model does not match the palette of {root} ({len(got)} vs "
            f"{len(want)} colours or different colours)"
        )
    return info


def make_plan(params: Params, strategy: str, digests: dict[str, str] | None = None) -> Plan:
    """Every check that can fail on bad input, before any image is generated. `digests`: the
    generators' digests as the run's planning process computed them (a worker of the run need not
    read tens of GB of weights again)."""
    import torch

    from seggen.training import autocast_dtype

    if strategy not in STRATEGIES:
        raise DataError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    cfg = params.synthesize
    check_dir(Path(cfg.out) / strategy, "synthesize.out")  # never cleared unless seggen wrote it
    scorer = None
    if cfg.filter.sample or cfg.filter.pixel:
        check_dir(cfg.filter.out, "synthesize.filter.out")
        if cfg.filter.scorer == "plan":  # the plan's reference segmenter, checked before any image
            from seggen.synthesis.filters import plan_scorer

            scorer = plan_scorer(params)[0]
    root = Path(params.data.root)
    ds = open_split(root, cfg.split)
    meta = ds.meta
    generators = {}
    if strategy == "masksyn":
        _check_generator(Path(cfg.text2mask), "text2mask", meta, root)
        generators["text2mask"] = (digests or {}).get("text2mask") or model_digest(Path(cfg.text2mask))
    _check_generator(Path(cfg.mask2img), "mask2img", meta, root, boundary=False)
    generators["mask2img"] = (digests or {}).get("mask2img") or model_digest(Path(cfg.mask2img))

    ids = [s.id for s in ds.samples]
    if cfg.real_subset:
        from seggen.segmenter.data import real_subset

        ids = [ids[i] for i in real_subset(params.seed, len(ids), cfg.real_subset)]
    if cfg.max_sources and cfg.max_sources < len(ids):
        rng = np.random.default_rng(seed_for(params.seed, "synthesize", "sources"))
        ids = [ids[i] for i in sorted(rng.choice(len(ids), cfg.max_sources, replace=False))]
    caps_path = Path(params.caption.out)
    if not caps_path.exists():
        raise DataError(f"{caps_path}: captions not found (run `seggen caption` first)")
    caps = read_captions(caps_path)
    missing = [i for i in ids if i not in caps]
    if missing:
        raise DataError(f"{caps_path}: no caption for {len(missing)} source image(s) of {cfg.split}, e.g. {missing[0]}")

    per = cfg.masksyn_per_source if strategy == "masksyn" else cfg.imgsyn_per_source
    counts, why, planned = {s: per for s in ids}, {}, None
    if cfg.plan:  # the same budget, by source weight: MaskSyn's captions drawn, ImgSyn's masks repeated
        from seggen.synthesis.targeting import allocate, read_plan

        planned = read_plan(Path(cfg.plan), list(meta.names))
        w = [float(planned["source_weights"].get(s, 1.0)) for s in ids]
        # a plan that ended its loop, or that finds nothing worth drawing (every weight 0), spends nothing: an
        # empty dataset, so the round's arms train on the rounds before
        spend = 0 if planned.get("stopped") or not any(w) else per * len(ids)
        counts = dict(zip(ids, allocate(w, spend)))
        cw, rnd = planned["class_weights"], int(planned.get("round", 1))
        for s, ws in zip(ids, w):
            why[s] = {
                "source_weight": ws,
                "class_weights": {c: cw[c] for c in caps[s].classes if c in cw},
                "round": rnd,
            }
    m2i_info = read_model_meta(Path(cfg.mask2img), "mask2img")
    jobs = []
    # copy k of a source has the same seed, planned or not; a later round of a loop draws new ones (its
    # arm pools every round's data: the same seeds would add the same pairs again)
    rnd = int(planned.get("round", 1)) if planned is not None else 1
    for s in ids:
        for k in range(counts[s]):
            seed = seed_for(params.seed, strategy, s, k) if rnd == 1 else seed_for(params.seed, strategy, s, k, rnd)
            style = draw_style(cfg.styles, seed) or m2i_info.get("caption_style")
            jobs.append(Job(len(jobs), s, k, caps[s].caption, f"{strategy}_{s}_{k:03d}", seed, style, why.get(s)))
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]

    if ds.has_panoptic and strategy == "imgsyn":
        ds.segments(0)  # indexes the source's panoptic annotation: a missing one is named here

    where = {"out", "threads", "workers", "devices", "dask", "text2mask", "mask2img", "plan"}  # not what is drawn
    # compile and solver enter the fingerprint only where they are not the default
    unset = ({"compile"} if not cfg.compile else set()) | ({"solver"} if cfg.solver == "dpmsolver++" else set())
    if strategy != "imgsyn" or cfg.imgsyn_strength == 1.0:  # the default, and MaskSyn never reads it
        unset.add("imgsyn_strength")
    identity = cfg.model_dump(mode="json", exclude=where | unset)
    identity["filter"].pop("out")
    if identity["filter"]["scorer"] == "probe":  # the default: absent, as before there was a choice
        identity["filter"].pop("scorer")

    device = torch.device("cuda" if cfg.devices != "cpu" and torch.cuda.is_available() else "cpu")
    identity["precision"] = str(autocast_dtype(cfg.precision, device))  # what `auto` resolves to here
    what = [
        params.seed,
        strategy,
        str(root),
        params.data.model_dump(mode="json"),
        identity,
        generators,
        [(j.id, j.prompt, j.seed, j.style) for j in jobs],
    ]
    if planned is not None:  # what the rows record of the plan (a blind run's identity is unchanged)
        what.append([j.why for j in jobs])
    if scorer is not None:  # the segmenter that filters (checked to be the one the plan scored)
        what.append(planned["model"])
        if cfg.filter.pixel and planned.get("undrawable"):  # and the classes whose pixels it ignores
            what.append(sorted(planned["undrawable"]))
    blob = json.dumps(what, sort_keys=True)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Plan(
        params,
        strategy,
        Path(cfg.out) / strategy,
        jobs,
        batches,
        meta,
        ds,
        generators,
        fingerprint,
        {s.id: i for i, s in enumerate(ds.samples)},
        max(counts.values(), default=0),
    )


def prepare_output(plan: Plan) -> bool:
    """-> True when the dataset for this plan is already complete. Output of other params is removed."""
    out, work = plan.out, plan.work
    summary = out / "summary.json"
    current = None
    if (work / "fingerprint").exists():
        current = (work / "fingerprint").read_text().strip()
    elif summary.exists():
        try:
            current = json.loads(summary.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            current = None
    if current == plan.fingerprint:
        return not work.exists()
    claim(out, "synthesize.out", f"synthesize {plan.strategy}")  # raises unless seggen wrote it
    split = plan.params.synthesize.split
    ours = {MARKER, WORK, ".merge.lock", "manifest.jsonl", "summary.json", "grid.png", META_FILE, "dropped", "ignore"}
    ours |= {"images", "annotations", "panoptic", split}  # the ADE20K and COCO layouts' folders
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if foreign:  # starting over removes the folder's content: never a file of someone else's
        raise DataError(
            f"{out / foreign[0]}: not written by seggen, and starting this dataset over would delete it; move it away"
        )
    if any(p.name != MARKER for p in out.iterdir()):
        log.warning("%s holds a dataset made with other params or generators: starting over", out)
        for p in out.iterdir():
            if p.name != MARKER:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    # a dataset started over starts its compute record over: one left beside it (by git in a fresh clone,
    # its dataset not pulled) would count this generation as a resumed run of the old one
    run_path(out).unlink(missing_ok=True)
    (work / "rows").mkdir(parents=True, exist_ok=True)
    (work / "fingerprint").write_text(plan.fingerprint + "\n")
    return False


def run_path(out: Path) -> Path:
    """The dataset's compute record (STRATEGY.run.json, beside the metrics file): what generating it cost."""
    return out.parent / f"{out.name}.run.json"
