"""Caption tokenizer + text encoder for the generators.

Pretrained: a CLIP text model (and its tokenizer) from a model id or directory, kept frozen.
Offline default: a small CLIPTextModel initialised from scratch, with a word-level tokenizer trained
(HF `tokenizers`) on our own captions; both are saved with the generator so that sampling needs
nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from seggen.config import TextEncoderParams

SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def train_tokenizer(captions: Iterable[str], vocab_size: int, max_length: int):
    """Word-level tokenizer over lower-cased captions; deterministic for the same caption set."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, min_frequency=1)
    tok.train_from_iterator(sorted(set(captions)), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", tok.token_to_id("[BOS]")), ("[EOS]", tok.token_to_id("[EOS]"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def build_text_encoder(cfg: TextEncoderParams, captions: Iterable[str]):
    """-> (tokenizer, text encoder, trainable). Random init is seeded by the caller."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    if cfg.pretrained:
        kw = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
        model = CLIPTextModel.from_pretrained(cfg.pretrained, **kw)
        tok_kw = {"subfolder": "tokenizer"} if cfg.subfolder else {}
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained, **tok_kw)
        model.requires_grad_(False)
        return tokenizer, model, False
    tokenizer = train_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = CLIPTextModel(config)
    model.requires_grad_(cfg.train)
    return tokenizer, model, cfg.train


def load_text_encoder(model_dir: str | Path):
    from transformers import AutoTokenizer, CLIPTextModel

    model_dir = Path(model_dir)
    return AutoTokenizer.from_pretrained(model_dir / "tokenizer"), CLIPTextModel.from_pretrained(model_dir / "text_encoder")


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def encode(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states (the cross-attention context, as in Stable Diffusion)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]
