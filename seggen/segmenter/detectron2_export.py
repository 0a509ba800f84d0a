"""`seggen export detectron2`: real + synthetic datasets as detectron2 standard dataset dicts, for
users of the official Mask2Former code (detectron2 is not installable from the package registry here,
so seggen trains with transformers; the export lets the same data drive the official trainer).

Written to OUT/:
    NAME_sem_seg.json     [{file_name, height, width, image_id, sem_seg_file_name}]
    NAME_panoptic.json    [{file_name, height, width, image_id, pan_seg_file_name, sem_seg_file_name,
                            segments_info: [{id, category_id (contiguous, 0-based), iscrowd, isthing, area, bbox}]}]
    NAME_instance.json    [{file_name, height, width, image_id,
                            annotations: [{bbox (XYWH abs), bbox_mode: 1, category_id (0-based thing index),
                                           segmentation (RLE), iscrowd}]}]
    sem_seg/NAME/*.png    labels as detectron2's ADE20K loader expects them: 0 -> 255 (ignore), c -> c-1
                          (what Mask2Former's datasets/prepare_ade20k_sem_seg.py writes)
    metadata.json         classes, thing/stuff ids, colours, ignore label
    register.py           registers every exported set with detectron2 (imported only when available)
NAME is `real_<split>` and `<strategy>` for each synthetic dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seggen.data.coco import rle_encode
from seggen.data.layout import detect_layout, open_split
from seggen.data.meta import label_mismatch
from seggen.errors import DataError
from seggen.io import write_json, write_png, write_text
from seggen.progress import tqdm

BOXMODE_XYWH_ABS = 1  # detectron2.structures.BoxMode.XYWH_ABS

REGISTER = '''"""Register the datasets exported by `seggen export detectron2` with detectron2.

    from register import register_all; register_all()
    # then e.g. DATASETS.TRAIN ("real_training_sem_seg", "masksyn_sem_seg")
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def register_all(root=HERE):
    try:
        from detectron2.data import DatasetCatalog, MetadataCatalog
    except ImportError as e:
        raise ImportError("detectron2 is needed to register the datasets; the JSON files can be read without it") from e
    root = Path(root)
    meta = json.loads((root / "metadata.json").read_text())
    names = []
    for path in sorted(root.glob("*_*.json")):
        if path.name == "metadata.json":
            continue
        name = path.stem
        kind = name.rsplit("_", 1)[-1] if not name.endswith("sem_seg") else "sem_seg"
        DatasetCatalog.register(name, lambda p=path: json.loads(p.read_text()))
        md = MetadataCatalog.get(name)
        ids = {k: {int(c): v for c, v in meta[f"{k}_dataset_id_to_contiguous_id"].items()} for k in ("thing", "stuff")}
        md.set(stuff_classes=meta["stuff_classes"], stuff_colors=meta["stuff_colors"],
               ignore_label=meta["ignore_label"],
               thing_classes=meta["thing_classes"], thing_colors=meta["thing_colors"],
               thing_dataset_id_to_contiguous_id=ids["thing"], stuff_dataset_id_to_contiguous_id=ids["stuff"],
               evaluator_type={"sem_seg": "sem_seg", "panoptic": "ade20k_panoptic_seg", "instance": "coco"}[kind])
        names.append(name)
    return names
'''


def export_dataset(
    root: Path, split: str, name: str, out: Path, meta, progress: bool = True, final: Path | None = None
) -> dict[str, int]:
    """Writes under `out`; the JSON records paths under `final` (where `out` is moved when complete)."""
    final = Path(final or out)
    ds = open_split(root, split)
    thing_index = {cid: k for k, cid in enumerate(meta.thing_ids)}
    sem, panoptic, instance = [], [], []
    for i, s in enumerate(
        tqdm(ds.samples, desc=f"export {name}", unit="img", disable=not progress, dynamic_ncols=True)
    ):
        lab = ds.load_label(i).astype(np.int64)
        h, w = lab.shape
        d2 = np.where(lab == 0, 255, lab - 1).astype(np.uint8)
        write_png(out / "sem_seg" / name / f"{s.id}.png", d2)
        sem_path = final / "sem_seg" / name / f"{s.id}.png"
        base = {"file_name": str(s.image_path.resolve()), "height": h, "width": w, "image_id": s.id}
        sem.append({**base, "sem_seg_file_name": str(sem_path)})
        if not ds.has_panoptic:
            continue
        ids, segs = ds.load_panoptic(i)  # category_id: class id 1..N in either layout
        segments, anns = [], []
        for g in segs:
            m = ids == g["id"]
            if not m.any():
                continue
            cat = int(g["category_id"])
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            isthing = cat in thing_index
            segments.append(
                {
                    "id": int(g["id"]),
                    "category_id": cat - 1,
                    "iscrowd": int(g.get("iscrowd", 0)),
                    "isthing": isthing,
                    "area": int(m.sum()),
                    "bbox": bbox,
                }
            )
            if isthing:
                anns.append(
                    {
                        "bbox": [float(v) for v in bbox],
                        "bbox_mode": BOXMODE_XYWH_ABS,
                        "category_id": thing_index[cat],
                        "segmentation": rle_encode(m),
                        "iscrowd": int(g.get("iscrowd", 0)),
                    }
                )
        panoptic.append(
            {
                **base,
                "pan_seg_file_name": str(ds.panoptic_png(i).resolve()),
                "sem_seg_file_name": str(sem_path),
                "segments_info": segments,
            }
        )
        instance.append({**base, "annotations": anns})
    write_json(out / f"{name}_sem_seg.json", sem, indent=None)
    counts = {f"{name}_sem_seg": len(sem)}
    if ds.has_panoptic:
        write_json(out / f"{name}_panoptic.json", panoptic, indent=None)
        write_json(out / f"{name}_instance.json", instance, indent=None)
        counts.update({f"{name}_panoptic": len(panoptic), f"{name}_instance": len(instance)})
    return counts


def export_detectron2(
    params, out: str | Path, splits: list[str] | None = None, synthetic: bool = True, progress: bool = True
) -> dict[str, int]:
    """The export is built under a temporary name and swapped in whole; an existing `out` is replaced
    only if seggen wrote it."""
    from seggen.io import atomic_dir

    with atomic_dir(Path(out), "export detectron2", "--out") as tmp:
        return _export(params, tmp, Path(out).resolve(), splits, synthetic, progress)


def _export(
    params, out: Path, final: Path, splits: list[str] | None, synthetic: bool, progress: bool
) -> dict[str, int]:
    root = Path(params.data.root)
    splits = splits or list(dict.fromkeys([params.segmenter.split, *params.evaluate.splits[:1]]))
    meta = open_split(root, splits[0]).meta
    counts: dict[str, int] = {}
    for split in splits:
        counts.update(export_dataset(root, split, f"real_{split}", out, meta, progress, final))
    if synthetic:
        for strategy in ("masksyn", "imgsyn"):
            d = Path(params.synthesize.out) / strategy
            if detect_layout(d, params.synthesize.split) is not None:
                differ = label_mismatch(open_split(d, params.synthesize.split).meta.names, meta.names)
                if differ:
                    raise DataError(f"{d}: its classes are not those of {root}: {differ}")
                counts.update(export_dataset(d, params.synthesize.split, strategy, out, meta, progress, final))
    stuff_colors = [list(c.color) for c in meta.classes]
    write_json(
        out / "metadata.json",
        {
            "stuff_classes": meta.names,  # detectron2's semantic convention: every class is a "stuff" class
            "stuff_colors": stuff_colors,
            "thing_classes": [c.name for c in meta.classes if c.isthing],
            "thing_colors": [list(c.color) for c in meta.classes if c.isthing],
            "thing_dataset_id_to_contiguous_id": {str(c): k for k, c in enumerate(meta.thing_ids)},
            "stuff_dataset_id_to_contiguous_id": {str(c.id): c.id - 1 for c in meta.classes},
            "ignore_label": 255,
        },
    )
    write_text(out / "register.py", REGISTER)
    return counts
