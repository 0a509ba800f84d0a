"""Helpers shared by test modules: tiny generator params (seconds to train on CPU)."""

from pathlib import Path

import yaml

from seggen.captions import caption_dataset

SYN = {"steps": 3, "batch_size": 4, "threads": 1, "text2mask_guidance": 2.0, "mask2img_guidance": 2.0}

TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, True], "attention_head_dim": 4, "norm_num_groups": 4}


def tiny_params(tmp_path: Path, data_root: Path, steps: int = 4, **extra) -> Path:
    gen = {
        "resolution": 16,
        "unet": TINY_UNET,
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 2, "keep_checkpoints": 2, "threads": 1, "warmup_steps": 2},
        "sample": {"steps": 3, "guidance_scale": 2.0, "batch_size": 3},
    }
    doc = {
        "data": {"root": str(data_root)},
        "caption": {"out": str(tmp_path / "captions.jsonl")},
        "text_encoder": {"vocab_size": 128, "hidden_size": 16, "layers": 1, "heads": 2, "max_length": 40},
        "text2mask": {**gen, "out": str(tmp_path / "t2m")},
        "mask2img": {**gen, "out": str(tmp_path / "m2i"), "controlnet": {"conditioning_embedding_out_channels": [8]}},
    }
    for key, value in extra.items():
        node = doc
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(doc))
    if not (tmp_path / "captions.jsonl").exists():
        caption_dataset(data_root, "training", tmp_path / "captions.jsonl", progress=False)
    return f


def params_file(gens: Path, out: Path, **syn) -> Path:
    doc = yaml.safe_load((gens / "params.yaml").read_text())
    doc["synthesize"] = {**SYN, "out": str(out), "text2mask": str(gens / "t2m" / "model"), "mask2img": str(gens / "m2i" / "model"), **syn}
    f = out.parent / f"params_{out.name}.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(yaml.safe_dump(doc))
    return f
