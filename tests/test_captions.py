"""Captioning: label captioner content, the JSONL cache, and the BLIP path with a tiny random model."""

import shutil

import numpy as np
import pytest

from seggen.data.captions import caption_dataset, label_caption, plural, read_captions
from seggen.data.meta import load_meta
from seggen.errors import DataError


def test_label_caption_names_counts_and_positions(small_benchmark):
    meta = load_meta(small_benchmark)
    lab = np.full((64, 64), 1, np.uint8)  # sky
    lab[40:, :] = 3  # grass
    lab[45:55, 2:12] = 8  # a car on the left
    lab[45:55, 40:46] = 9  # two people on the right
    lab[45:55, 50:56] = 9
    cap, classes = label_caption(lab, meta)
    assert "a car on the left" in cap and "two people on the right" in cap
    assert "under the sky" in cap and "on grass" in cap
    assert set(classes) == {"sky", "grass", "car", "person"}
    # instance counts from the panoptic layout win over connected components
    cap2, _ = label_caption(lab, meta, {9: 3, 8: 1})
    assert "three people" in cap2


def test_plural():
    assert [plural(w) for w in ["car", "person", "bus", "bookcase", "sky", "box", "baby"]] == [
        "cars",
        "people",
        "buses",
        "bookcases",
        "sky",
        "boxes",
        "babies",
    ]


def test_cache_skips_and_recaptions_changed_images(small_benchmark, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(small_benchmark, root)
    out = tmp_path / "captions.jsonl"
    first = caption_dataset(root, "training", out, progress=False)
    assert first == {"captioned": 24, "skipped": 0, "total": 24}
    rows = read_captions(out)
    assert len(rows) == 24 and all(r.captioner == "label" and len(r.image_sha256) == 64 for r in rows.values())
    before = out.read_bytes()
    assert caption_dataset(root, "training", out, progress=False) == {"captioned": 0, "skipped": 24, "total": 24}
    assert out.read_bytes() == before  # a re-run changes nothing
    # an image whose bytes changed is captioned again
    img = sorted((root / "images/training").iterdir())[3]
    img.write_bytes(img.read_bytes() + b"\0")
    assert caption_dataset(root, "training", out, progress=False)["captioned"] == 1


def test_malformed_cache_is_an_error(small_benchmark, tmp_path):
    out = tmp_path / "captions.jsonl"
    caption_dataset(small_benchmark, "training", out, progress=False)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:5] + [lines[5][:20]] + lines[6:]) + "\n")  # truncated row
    with pytest.raises(DataError, match=r"captions.jsonl:6: not a caption row"):
        read_captions(out)


def test_blip_requires_model(small_benchmark, tmp_path):
    with pytest.raises(DataError, match="caption.model: required for captioner 'blip'"):
        caption_dataset(small_benchmark, "training", tmp_path / "c.jsonl", captioner="blip", progress=False)


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A random-init BLIP captioning model with a BERT tokenizer over a small vocabulary, saved to disk."""
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    d = tmp_path_factory.mktemp("tiny_blip")
    words = "a the car cars house tree trees person people road sky grass water boat on in of with".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True)
    tok.bos_token = "[CLS]"
    image_proc = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_proc, tokenizer=tok)
    cfg = BlipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=40,
            bos_token_id=2,
            sep_token_id=3,
            pad_token_id=0,
        ),
        projection_dim=32,
    )
    import torch

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(cfg)
    model.save_pretrained(d / "model")
    processor.save_pretrained(d / "model")
    return d / "model"


def test_blip_captioner_batched_from_local_dir(small_benchmark, tiny_blip, tmp_path):
    out = tmp_path / "blip.jsonl"
    stats = caption_dataset(
        small_benchmark,
        "training",
        out,
        captioner="blip",
        model=str(tiny_blip),
        batch_size=5,
        max_new_tokens=6,
        progress=False,
    )
    assert stats["captioned"] == 24
    rows = read_captions(out)
    assert all(r.captioner == f"blip:{tiny_blip}" and isinstance(r.caption, str) for r in rows.values())
    # switching captioner recaptions everything; the same captioner again skips everything
    assert (
        caption_dataset(small_benchmark, "training", out, captioner="blip", model=str(tiny_blip), progress=False)[
            "skipped"
        ]
        == 24
    )
    assert caption_dataset(small_benchmark, "training", out, progress=False)["captioned"] == 24
