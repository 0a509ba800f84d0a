"""Panoptic quality against an independent mask-by-mask restatement of pq_compute, on real COCO samples."""

import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from seggen.data.images import id2rgb, load_panoptic_png
from seggen.errors import DataError
from seggen.metrics.panoptic import evaluate_panoptic


def reference_pq(gt_json, gt_dir, pred_json, pred_dir):
    """Boolean masks per segment, every GT/pred pair compared explicitly."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    st = defaultdict(lambda: [0.0, 0, 0, 0])  # iou, tp, fp, fn
    for ga in gt["annotations"]:
        pa = preds[ga["image_id"]]
        g_ids = load_panoptic_png(gt_dir / ga["file_name"])
        p_ids = load_panoptic_png(pred_dir / pa["file_name"])
        void = g_ids == 0
        gm = {s["id"]: (s, g_ids == s["id"]) for s in ga["segments_info"]}
        pm = {s["id"]: (s, p_ids == s["id"]) for s in pa["segments_info"]}
        g_done, p_done = set(), set()
        for gid, (gs, gmask) in gm.items():
            if gs["iscrowd"]:
                continue
            for pid, (ps, pmask) in pm.items():
                if ps["category_id"] != gs["category_id"]:
                    continue
                inter = np.logical_and(gmask, pmask).sum()
                union = pmask.sum() + gs["area"] - inter - np.logical_and(pmask, void).sum()
                if inter / union > 0.5:
                    st[gs["category_id"]][0] += inter / union
                    st[gs["category_id"]][1] += 1
                    g_done.add(gid)
                    p_done.add(pid)
        for gid, (gs, _) in gm.items():
            if gid not in g_done and not gs["iscrowd"]:
                st[gs["category_id"]][3] += 1
        for pid, (ps, pmask) in pm.items():
            if pid in p_done:
                continue
            crowd = np.zeros_like(void)
            for gs, gmask in gm.values():
                if gs["iscrowd"] and gs["category_id"] == ps["category_id"]:
                    crowd |= gmask
            if np.logical_and(pmask, void | crowd).sum() / pmask.sum() > 0.5:
                continue
            st[ps["category_id"]][2] += 1
    out = {}
    for key, want in (("PQ", None), ("PQ_th", True), ("PQ_st", False)):
        vals = []
        for cid, c in cats.items():
            if want is not None and bool(c["isthing"]) != want:
                continue
            iou, tp, fp, fn = st[cid] if cid in st else (0.0, 0, 0, 0)
            if tp + fp + fn == 0:
                continue
            d = tp + 0.5 * fp + 0.5 * fn
            vals.append((iou / d, iou / tp if tp else 0.0, tp / d))
        arr = np.array(vals).mean(0) * 100 if vals else [None] * 3
        sfx = key[2:]
        out["PQ" + sfx], out["SQ" + sfx], out["RQ" + sfx] = arr
    return out


@pytest.fixture(scope="module")
def coco(real):
    ann = real / "coco" / "annotations"
    return ann / "panoptic_val2017.json", ann / "panoptic_val2017"


def make_prediction(coco, tmp_path, rng, kind):
    gt_json, gt_dir = coco
    gt = json.loads(gt_json.read_text())
    cat_ids = [c["id"] for c in gt["categories"]]
    out_dir = tmp_path / f"pred_{kind}"
    out_dir.mkdir()
    anns = []
    for ga in gt["annotations"]:
        ids = load_panoptic_png(gt_dir / ga["file_name"]).astype(np.int64)
        segs = [dict(id=s["id"], category_id=s["category_id"]) for s in ga["segments_info"]]
        if kind == "drop":
            for s in list(segs):
                if rng.random() < 0.3:
                    ids[ids == s["id"]] = 0
                    segs.remove(s)
        elif kind == "shift":
            ids = np.roll(ids, (int(rng.integers(3, 25)), int(rng.integers(-25, -3))), axis=(0, 1))
        elif kind == "recategorise":
            for s in segs:
                if rng.random() < 0.3:
                    s["category_id"] = int(rng.choice(cat_ids))
        elif kind == "merge":
            by_cat = defaultdict(list)
            for s in segs:
                by_cat[s["category_id"]].append(s)
            for group in by_cat.values():
                for s in group[1:]:
                    ids[ids == s["id"]] = group[0]["id"]
                    segs.remove(s)
        elif kind == "split":
            new = []
            for s in segs:
                m = ids == s["id"]
                ys, xs = np.nonzero(m)
                if len(xs) > 50 and rng.random() < 0.5:
                    cut = np.median(xs) + rng.integers(-10, 10)
                    half = m & (np.arange(ids.shape[1])[None, :] > cut)
                    nid = int(s["id"]) + 1 + int(rng.integers(1, 1000))
                    while nid in np.unique(ids):
                        nid += 1
                    ids[half] = nid
                    new.append(dict(id=nid, category_id=s["category_id"]))
            segs += new
        elif kind == "blobs":  # random false positives, partly on void and crowd regions
            for _ in range(6):
                y, x = int(rng.integers(0, ids.shape[0] - 60)), int(rng.integers(0, ids.shape[1] - 60))
                nid = 10_000_000 + int(rng.integers(1, 1_000_000))
                ids[y : y + int(rng.integers(10, 60)), x : x + int(rng.integers(10, 60))] = nid
                segs.append(dict(id=nid, category_id=int(rng.choice([1, 1, *cat_ids]))))
        elif kind != "identity":
            raise ValueError(kind)
        present = set(np.unique(ids).tolist())
        segs = [s for s in segs if s["id"] in present]
        Image.fromarray(id2rgb(ids)).save(out_dir / ga["file_name"])
        anns.append({"image_id": ga["image_id"], "file_name": ga["file_name"], "segments_info": segs})
    pj = tmp_path / f"pred_{kind}.json"
    pj.write_text(json.dumps({"annotations": anns}))
    return pj, out_dir


def test_gt_against_itself_is_100(coco, tmp_path):
    pj, pd = make_prediction(coco, tmp_path, np.random.default_rng(0), "identity")
    m = evaluate_panoptic(coco[0], coco[1], pj, pd)
    for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert m[k] == pytest.approx(100.0), k
    assert m["per_class"]["person"]["PQ"] == pytest.approx(100.0)
    assert m["per_class"]["airplane"] is None


@pytest.mark.parametrize("kind", ["drop", "shift", "recategorise", "merge", "split", "blobs"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_on_perturbations(coco, tmp_path, kind, seed):
    pj, pd = make_prediction(coco, tmp_path, np.random.default_rng(seed), kind)
    ours = evaluate_panoptic(coco[0], coco[1], pj, pd)
    ref = reference_pq(coco[0], coco[1], pj, pd)
    for k, v in ref.items():
        if v is None:
            assert ours[k] is None
        else:
            assert ours[k] == pytest.approx(v, abs=1e-4), k
    assert ours["PQ"] < 100.0 or kind == "split"


def _png(path, ids):
    Image.fromarray(id2rgb(np.asarray(ids))).save(path)


def test_hand_checked_example(tmp_path):
    # 4x6 image. GT: stuff 'sky'(cat 2) id 1 top row; thing 'car'(cat 1) ids 2 and 3; a crowd car id 4; void 0.
    gt = np.array([[1, 1, 1, 1, 1, 1], [2, 2, 2, 3, 3, 0], [2, 2, 2, 3, 3, 0], [4, 4, 4, 4, 0, 0]])
    # pred: sky exact; car A (id 7) covers id 2 plus one extra pixel; car B (id 8) covers half of id 3
    # plus two void pixels; car C (id 9) lies on the crowd region -> ignored, not a false positive.
    pred = np.array([[5, 5, 5, 5, 5, 5], [7, 7, 7, 7, 8, 8], [7, 7, 7, 0, 8, 8], [9, 9, 9, 9, 0, 0]])
    (tmp_path / "gt").mkdir()
    (tmp_path / "pr").mkdir()
    _png(tmp_path / "gt/a.png", gt)
    _png(tmp_path / "pr/a.png", pred)
    cats = [{"id": 1, "name": "car", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}]

    def area(i):
        return int((gt == i).sum())

    g = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "categories": cats,
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 1, "category_id": 2, "iscrowd": 0, "area": area(1)},
                    {"id": 2, "category_id": 1, "iscrowd": 0, "area": area(2)},
                    {"id": 3, "category_id": 1, "iscrowd": 0, "area": area(3)},
                    {"id": 4, "category_id": 1, "iscrowd": 1, "area": area(4)},
                ],
            }
        ],
    }
    p = {
        "annotations": [
            {
                "image_id": 1,
                "file_name": "a.png",
                "segments_info": [
                    {"id": 5, "category_id": 2},
                    {"id": 7, "category_id": 1},
                    {"id": 8, "category_id": 1},
                    {"id": 9, "category_id": 1},
                ],
            }
        ]
    }
    (tmp_path / "g.json").write_text(json.dumps(g))
    (tmp_path / "p.json").write_text(json.dumps(p))
    m = evaluate_panoptic(tmp_path / "g.json", tmp_path / "gt", tmp_path / "p.json", tmp_path / "pr")
    # car: id2 vs id7: I=6, U=7+6-6-0=7 -> 6/7 TP. id3 vs id8: I=2, U=4+4-2-2=4 -> 0.5, not > 0.5: FN + FP.
    car_pq = (6 / 7) / (1 + 0.5 * 1 + 0.5 * 1)
    assert m["per_class"]["car"]["PQ"] == pytest.approx(car_pq * 100)
    assert (m["per_class"]["car"]["TP"], m["per_class"]["car"]["FP"], m["per_class"]["car"]["FN"]) == (1, 1, 1)
    assert m["PQ_st"] == pytest.approx(100.0)
    assert m["PQ"] == pytest.approx((car_pq * 100 + 100) / 2)
    assert m["SQ_th"] == pytest.approx(6 / 7 * 100) and m["RQ_th"] == pytest.approx(50.0)


def test_bad_predictions_are_errors(coco, tmp_path):
    pj, pd = make_prediction(coco, tmp_path, np.random.default_rng(0), "identity")
    d = json.loads(pj.read_text())
    dropped = d["annotations"][0]["segments_info"].pop(0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(
        DataError, match=f"predicted segment id {dropped['id']} is in the PNG but not in the prediction JSON"
    ):
        evaluate_panoptic(coco[0], coco[1], bad, pd)
    d = json.loads(pj.read_text())
    d["annotations"] = d["annotations"][:1]
    bad.write_text(json.dumps(d))
    with pytest.raises(DataError, match="no prediction for image_id 439180"):
        evaluate_panoptic(coco[0], coco[1], bad, pd)
    d = json.loads(pj.read_text())
    d["annotations"][1]["segments_info"][0]["category_id"] = 9999
    bad.write_text(json.dumps(d))
    with pytest.raises(DataError, match="unknown category_id 9999"):
        evaluate_panoptic(coco[0], coco[1], bad, pd)


def test_cli_panoptic_keys(coco, tmp_path):
    pj, pd = make_prediction(coco, tmp_path, np.random.default_rng(0), "drop")
    out = tmp_path / "pq.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "seggen.cli",
            "eval",
            "panoptic",
            "--gt-json",
            str(coco[0]),
            "--gt-dir",
            str(coco[1]),
            "--pred-json",
            str(pj),
            "--pred-dir",
            str(pd),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    assert {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "per_class"} <= set(m)
    assert m["PQ"] == pytest.approx(reference_pq(coco[0], coco[1], pj, pd)["PQ"], abs=1e-4)
    # the category set it scored against is recorded (the GT JSON's, as pq_compute uses)
    cats = json.loads(coco[0].read_text())["categories"]
    assert m["settings"]["categories"] == [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in cats]
