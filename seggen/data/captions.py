"""Stage `caption`: one caption per training image, cached in a JSONL file keyed by image id.

Captioners:
- `label` (offline default): a fluent caption built from the annotation -- the classes present,
  instance counts (from the panoptic layout where the dataset has one, else connected components),
  rough position and size -- e.g. "two cars on the right and a large house on the left, on a road,
  under the sky". Deterministic, and it names exactly the classes it saw, which the Text2Mask
  prompt-consistency measure relies on.
- `blip`: transformers' BLIP or BLIP-2 from a model id or a local directory (the paper uses BLIP-2),
  batched.

Each row records the captioner and the image's SHA-256, so a re-run skips images already captioned
by the same captioner, and recaptions images whose bytes changed. The file is rewritten atomically
after every batch: a kill loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from seggen.data.layout import open_split
from seggen.data.meta import DatasetMeta
from seggen.errors import DataError
from seggen.io import write_text
from seggen.progress import tqdm

log = logging.getLogger(__name__)

NUMBERS = ["no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
PLURALS = {
    "person": "people",
    "grass": "grass",
    "sky": "sky",
    "water": "water",
    "glass": "glasses",
    "bus": "buses",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "knife": "knives",
    "mouse": "mice",
    "shelf": "shelves",
}
STUFF_PHRASES = {
    "sky": "under the sky",
    "mountain": "with mountains in the background",
    "grass": "on grass",
    "water": "by the water",
    "road": "on a road",
}


class CaptionRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    caption: str
    classes: list[str]  # classes present in the annotation (for prompt-consistency checks)
    captioner: str
    image_sha256: str


def plural(name: str) -> str:
    if name in PLURALS:
        return PLURALS[name]
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def _position(cx: float) -> str:
    return "on the left" if cx < 0.36 else "on the right" if cx > 0.64 else "in the middle"


def label_caption(
    labels: np.ndarray, meta: DatasetMeta, instance_counts: dict[int, int] | None = None
) -> tuple[str, list[str]]:
    """Caption from a label map (values 1..N; 0 ignored) -> (caption, class names present)."""
    from scipy import ndimage

    h, w = labels.shape
    ids, areas = np.unique(labels, return_counts=True)
    present = [(int(c), int(a)) for c, a in zip(ids, areas) if c != 0 and c <= meta.num_classes]
    present.sort(key=lambda t: -t[1])
    things, stuff = [], []
    xs = np.arange(w)[None, :] / max(w - 1, 1)
    for cls, area in present:
        info = meta.classes[cls - 1]
        word = info.phrase  # COCO's "sky-other-merged" reads "sky"
        mask = labels == cls
        frac = area / (h * w)
        if info.isthing:
            n = (instance_counts or {}).get(cls)
            if n is None:
                n = int(ndimage.label(mask)[1])
            n = max(n, 1)
            cx = float((mask * xs).sum() / area)
            count = NUMBERS[n] if n < len(NUMBERS) else "many"
            name = word if n == 1 else plural(word)
            size = "large " if frac / n > 0.08 else "small " if frac / n < 0.004 else ""
            things.append(f"{count} {size if n == 1 else ''}{name} {_position(cx)}".replace("  ", " "))
        else:
            stuff.append(STUFF_PHRASES.get(word, f"with {word}"))
    names = [meta.classes[c - 1].name for c, _ in present]
    if things:
        head = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    else:
        head = "a landscape"
    caption = head + (", " + ", ".join(stuff) if stuff else "")
    return caption, names


def image_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_captions(path: str | Path) -> dict[str, CaptionRow]:
    """Rows by image id; a truncated or malformed line is an error naming the line."""
    path = Path(path)
    rows: dict[str, CaptionRow] = {}
    if not path.exists():
        return rows
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected the captions JSONL file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); not a captions file") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = CaptionRow.model_validate_json(line)
        except Exception as e:
            raise DataError(f"{path}:{i}: not a caption row ({str(e).splitlines()[0]})") from None
        rows[row.id] = row
    return rows


def write_captions(path: str | Path, rows: Iterable[CaptionRow]) -> None:
    write_text(path, "".join(r.model_dump_json() + "\n" for r in sorted(rows, key=lambda r: r.id)))


def _instance_counts(ds, i: int) -> dict[int, int] | None:
    """{class: number of thing instances} of sample i, from its panoptic annotation where it has one."""
    if not ds.has_panoptic:
        return None
    counts: dict[int, int] = {}
    things = set(ds.meta.thing_ids)
    for s in ds.segments(i):
        if s["category_id"] in things:
            counts[s["category_id"]] = counts.get(s["category_id"], 0) + 1
    return counts


class BlipCaptioner:
    """BLIP / BLIP-2 image captioning through transformers, from a model id or a local directory."""

    def __init__(self, model: str, max_new_tokens: int = 30, device: str | None = None, prompt: str | None = None):
        import torch
        from transformers import AutoConfig, AutoProcessor

        cfg = AutoConfig.from_pretrained(model)
        if cfg.model_type == "blip-2":
            from transformers import Blip2ForConditionalGeneration as cls
        elif cfg.model_type == "blip":
            from transformers import BlipForConditionalGeneration as cls
        else:
            raise DataError(f"caption.model: {model} is a '{cfg.model_type}' model, expected blip or blip-2")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = cls.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.name = f"blip:{model}"

    def __call__(self, images: list[np.ndarray]) -> list[str]:
        import torch

        kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=images, return_tensors="pt", **kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


def caption_dataset(
    root: str | Path,
    split: str,
    out: str | Path,
    captioner: str = "label",
    model: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 30,
    progress: bool = True,
) -> dict[str, int]:
    """Caption every image of `split` not yet captioned (by this captioner, with these bytes)."""
    from seggen.io import check_file

    root, out = Path(root), check_file(out, "caption.out")
    existing = read_captions(out)  # a file that is not ours stops here: it is never overwritten
    ds = open_split(root, split)
    if captioner == "label":
        name = "label"
        blip = None
    elif captioner == "blip":
        if not model:
            raise DataError("caption.model: required for captioner 'blip' (a BLIP/BLIP-2 model id or directory)")
        blip = BlipCaptioner(model, max_new_tokens)
        name = blip.name
    else:
        raise DataError(f"caption.captioner: unknown captioner '{captioner}'")

    todo = []
    rows = {}
    for i, s in enumerate(ds.samples):
        digest = image_digest(s.image_path)
        old = existing.get(s.id)
        if old is not None and old.captioner == name and old.image_sha256 == digest:
            rows[s.id] = old
        else:
            todo.append((i, digest))
    skipped = len(rows)
    bar = tqdm(total=len(todo), desc=f"caption ({name})", unit="img", disable=not progress, dynamic_ncols=True)
    for b in range(0, len(todo), batch_size):
        batch = todo[b : b + batch_size]
        loaded = [ds[i] for i, _ in batch]
        if blip is not None:
            texts = blip([img for img, _ in loaded])
        for k, ((i, digest), (_, lab)) in enumerate(zip(batch, loaded)):
            sid = ds.samples[i].id
            cap, classes = label_caption(lab, ds.meta, _instance_counts(ds, i) if blip is None else None)
            if blip is not None:
                cap = texts[k]
            rows[sid] = CaptionRow(id=sid, caption=cap, classes=classes, captioner=name, image_sha256=digest)
        # keep rows of other images already in the file (e.g. another split) untouched
        write_captions(out, list({**existing, **rows}.values()))
        bar.update(len(batch))
    bar.close()
    if not todo and not out.exists():
        write_captions(out, rows.values())
    return {"captioned": len(todo), "skipped": skipped, "total": len(ds)}
