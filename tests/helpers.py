"""Helpers shared by test modules: tiny generator params (seconds to train on CPU)."""

from pathlib import Path

import yaml

from seggen.data.captions import caption_dataset

SYN = {"steps": 3, "batch_size": 4, "threads": 1, "text2mask_guidance": 2.0, "mask2img_guidance": 2.0}

TINY_UNET = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "attention_levels": [False, True],
    "attention_head_dim": 4,
    "norm_num_groups": 4,
}


def tiny_params(tmp_path: Path, data_root: Path, steps: int = 4, **extra) -> Path:
    gen = {
        "resolution": 16,
        "unet": TINY_UNET,
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 1e-3,
            "checkpoint_every": 2,
            "keep_checkpoints": 2,
            "threads": 1,
            "warmup_steps": 2,
        },
        "sample": {"steps": 3, "guidance_scale": 2.0, "batch_size": 3},
    }
    doc = {
        "data": {"root": str(data_root)},
        "cache": str(tmp_path / "cache"),  # the generators' inputs, written by the test's first stage
        "caption": {"out": str(tmp_path / "captions.jsonl")},
        "text_encoder": {"vocab_size": 128, "hidden_size": 16, "layers": 1, "heads": 2, "max_length": 40},
        "text2mask": {**gen, "out": str(tmp_path / "t2m")},
        "mask2img": {**gen, "out": str(tmp_path / "m2i"), "controlnet": {"conditioning_embedding_out_channels": [8]}},
        "prior": {"enabled": False},  # the tests that want it pass prior=... (test_prior.py)
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
    doc["synthesize"] = {
        **SYN,
        "out": str(out),
        "text2mask": str(gens / "t2m" / "model"),
        "mask2img": str(gens / "m2i" / "model"),
        **syn,
    }
    f = out.parent / f"params_{out.name}.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(yaml.safe_dump(doc))
    return f


REPO = Path(__file__).resolve().parents[1]
TINY_SEG_MODEL = {
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 4,
    "hidden_dim": 32,
    "num_queries": 8,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "train_num_points": 256,
}


def tiny_pipeline_params() -> dict:
    """params.yaml of a whole pipeline that runs in about a minute (relative paths, dvc.yaml's defaults)."""
    gen = {
        "resolution": 16,
        "unet": TINY_UNET,
        "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "threads": 1, "warmup_steps": 2},
        "sample": {"steps": 3, "guidance_scale": 2.0, "batch_size": 4},
    }
    return {
        "seed": 0,
        "data": {
            "benchmark": {
                "resolution": 32,
                "num_train": 16,
                "num_val": 4,
                "num_tuning": 4,
                "domains": {"unseen": 2, "tuning": 1, "images": 2},
            }
        },
        "text_encoder": {"vocab_size": 128, "hidden_size": 16, "layers": 1, "heads": 2, "max_length": 40},
        "text2mask": gen,
        "mask2img": {**gen, "controlnet": {"conditioning_embedding_out_channels": [8]}},
        "prior": {  # the default pipeline's prior, tiny
            **gen,
            "unet": {**TINY_UNET, "pooled_text": True},
            "corpus": {"num_images": 24, "resolution": 16, "max_things": 3},
        },
        "synthesize": {**SYN, "max_sources": 4, "workers": 1},
        "segmenter": {
            "model": TINY_SEG_MODEL,
            "train": {"steps": 4, "batch_size": 4, "crop": 32, "checkpoint_every": 2, "threads": 1},
        },
        "arms": {"baseline": {"strategy": "real"}, "seggen": {"strategy": "augment"}},
        # the planning split, in-domain and unseen: every kind of split the default evaluates (its
        # tuning_shift is one more matrix column of the same stage, one more process per arm here)
        "evaluate": {"splits": ["tuning", "validation", "validation_shift"]},
        "tracking": {"log_every": 2, "system_metrics_interval": 1.0},
    }


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "arms" else v
    return out


def make_project(root: Path, params: dict | None = None) -> Path:
    """A git + DVC project with the repo's dvc.yaml, code (the stages' deps) and tiny params."""
    import shutil
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("seggen", "flows"):
        shutil.copytree(REPO / d, root / d, ignore=ignore)
    for f in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / f, root / f)
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            merged(yaml.safe_load((REPO / "params.yaml").read_text()), params or tiny_pipeline_params()),
            sort_keys=False,
        )
    )
    run = lambda *a: subprocess.run(a, cwd=root, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(str(Path(shutil.which("dvc") or REPO / ".venv" / "bin" / "dvc")), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / "plots.html", root / ".dvc" / "plots.html")  # its plots page template
    run("git", "add", "-A")
    run("git", "commit", "-qm", "tiny project")
    return root


def tiny_mask2former(path: Path, names: list[str]) -> Path:
    """A random-init Mask2Former checkpoint directory with these label names (id2label), as HF saves one."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    cfg = Mask2FormerConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=1,
        num_attention_heads=2,
        num_queries=8,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    return path


def tiny_stable_diffusion(d: Path, data_root: Path, prediction_type: str = "epsilon") -> Path:
    """A random-init Stable-Diffusion-layout directory (vae, unet, text_encoder, tokenizer, scheduler)
    whose scheduler says `prediction_type`; the tokenizer is trained on the captions of `data_root`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from seggen.data.captions import read_captions
    from seggen.generators.text import train_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    caption_dataset(data_root, "training", d / "caps.jsonl", progress=False)
    tok = train_tokenizer([r.caption for r in read_captions(d / "caps.jsonl").values()], 128, 40)
    tok.save_pretrained(d / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=40,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    ).save_pretrained(d / "text_encoder")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).save_pretrained(d / "vae")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).save_pretrained(d / "unet")
    DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    ).save_pretrained(d / "scheduler")
    return d
