"""Caption tokenizer + text encoder for the generators.

Pretrained: a CLIP text model (and its tokenizer) from a model id or directory, kept frozen.
Offline default: a small CLIPTextModel initialised from scratch, with a word-level tokenizer trained
(HF `tokenizers`) on our own captions; both are saved with the generator so that sampling needs
nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

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
        single="[BOS] $A [EOS]",
        special_tokens=[("[BOS]", tok.token_to_id("[BOS]")), ("[EOS]", tok.token_to_id("[EOS]"))],
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
    return AutoTokenizer.from_pretrained(model_dir / "tokenizer"), CLIPTextModel.from_pretrained(
        model_dir / "text_encoder"
    )


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def encode(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states (the cross-attention context, as in Stable Diffusion)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


class TextConditioner:
    """Captions -> UNet conditioning: (encoder_hidden_states, added_cond_kwargs or None).

    One tokenizer/encoder pair (the from-scratch encoder, or Stable Diffusion's CLIP), or SDXL's two:
    the penultimate hidden states of both encoders concatenated, plus the second encoder's pooled
    projection and the size/crop time ids as added conditioning, as SDXL was trained.
    """

    def __init__(self, tokenizers: list, encoders: list, trainable: bool, sdxl: bool = False, resolution: int = 0):
        self.tokenizers, self.encoders, self.trainable = tokenizers, encoders, trainable
        self.sdxl, self.resolution = sdxl, resolution

    @classmethod
    def build(
        cls,
        cfg: TextEncoderParams,
        captions: list[str],
        pretrained: str | None = None,
        sdxl: bool = False,
        resolution: int = 0,
    ):
        """`pretrained`: a Stable Diffusion repo whose text encoder(s) to use when text_encoder.pretrained is unset."""
        if sdxl:
            from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

            repo = cfg.pretrained or pretrained
            toks = [AutoTokenizer.from_pretrained(repo, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
            encs = [
                CLIPTextModel.from_pretrained(repo, subfolder="text_encoder"),
                CLIPTextModelWithProjection.from_pretrained(repo, subfolder="text_encoder_2"),
            ]
            for e in encs:
                e.requires_grad_(False)
            return cls(toks, encs, False, True, resolution)
        if pretrained and not cfg.pretrained:
            cfg = cfg.model_copy(update={"pretrained": pretrained, "subfolder": "text_encoder"})
        tok, enc, trainable = build_text_encoder(cfg, captions)
        return cls([tok], [enc], trainable)

    @classmethod
    def load(cls, model_dir: str | Path, resolution: int = 0):
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        model_dir = Path(model_dir)
        if (model_dir / "text_encoder_2").is_dir():
            toks = [AutoTokenizer.from_pretrained(model_dir / s) for s in ("tokenizer", "tokenizer_2")]
            encs = [
                CLIPTextModel.from_pretrained(model_dir / "text_encoder"),
                CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder_2"),
            ]
            return cls(toks, encs, False, True, resolution)
        tok, enc = load_text_encoder(model_dir)
        return cls([tok], [enc], False)

    def save(self, directory: Path) -> None:
        names = ("", "_2")
        for tok, enc, sfx in zip(self.tokenizers, self.encoders, names):
            tok.save_pretrained(directory / f"tokenizer{sfx}")
            enc.save_pretrained(directory / f"text_encoder{sfx}")

    def unwrapped(self, accelerator) -> TextConditioner:
        """The same conditioner with encoders unwrapped from accelerate's distributed wrappers."""
        return TextConditioner(
            [*self.tokenizers],
            [accelerator.unwrap_model(e) for e in self.encoders],
            self.trainable,
            self.sdxl,
            self.resolution,
        )

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        return [tokenize(t, captions) for t in self.tokenizers]

    def to(self, device, dtype: torch.dtype | None = None) -> TextConditioner:
        """dtype: frozen encoders in the mixed-precision dtype (seggen.training.loop)."""
        self.encoders = [e.to(device) if dtype is None else e.to(device, dtype=dtype) for e in self.encoders]
        if not self.trainable:
            for e in self.encoders:
                e.eval()
        return self

    def encode(self, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids per tokenizer -> (per-token hidden states, SDXL's pooled projection or None)."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            if not self.sdxl:
                return encode(self.encoders[0], ids[0]), None
            hidden, pooled = [], None
            for enc, x in zip(self.encoders, ids):
                out = enc(x.to(enc.device), output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0]  # the second encoder's projected pooled output
            return torch.cat(hidden, dim=-1), pooled

    def inputs(self, captions: list[str], cache: str | Path | None = None, accelerator=None) -> list:
        """What a training batch carries per caption, indexable by sample: token ids when the encoder
        trains (it runs on every step), else the frozen encoders' outputs, computed once: cached on
        disk under `cache` (written by the main process, memory-mapped by all) or, without one, in
        memory. Then the encoders need not be on the training device at all (SDXL's two: 1.6 G params)."""
        ids = self.tokenize(captions)
        if self.trainable:
            return ids
        if cache is None:
            with torch.no_grad():
                ctx, pooled = self.encode(ids)
            return [ctx.float().cpu()] + ([pooled.float().cpu()] if self.sdxl else [])
        return self._cached(captions, ids, Path(cache), accelerator)

    def _cached(self, captions: list[str], ids: list[torch.Tensor], root: Path, accelerator, batch: int = 64) -> list:
        """The frozen encoders' fp32 outputs for `captions`, under root/KEY (seggen.generators.cache),
        KEY a digest of the captions and of the encoders' weights and tokenizers."""
        import hashlib

        import numpy as np

        from seggen.generators.cache import cached_arrays, key_of

        digest = hashlib.sha256()
        for enc in self.encoders:
            for name, t in sorted(enc.state_dict().items()):
                digest.update(name.encode())
                digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        for tok in self.tokenizers:
            digest.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
        key = key_of("text", hashlib.sha256("\n".join(captions).encode()).hexdigest(), digest.hexdigest())
        specs = {"hidden": ((ids[0].shape[1], self.context_dim()), np.float32)}
        if self.sdxl:
            specs["pooled"] = ((self.encoders[-1].config.projection_dim,), np.float32)
        device = accelerator.device if accelerator is not None else "cpu"

        def rows():
            homes = [e.device for e in self.encoders]
            self.encoders = [e.to(device) for e in self.encoders]
            with torch.no_grad():
                for i in range(0, len(captions), batch):
                    ctx, pooled = self.encode([x[i : i + batch] for x in ids])
                    yield {"hidden": ctx.float().cpu().numpy()} | (
                        {"pooled": pooled.float().cpu().numpy()} if self.sdxl else {}
                    )
            self.encoders = [e.to(h) for e, h in zip(self.encoders, homes)]  # off the training device again

        arrays = cached_arrays(root, key, len(captions), specs, rows, accelerator)
        return [arrays[name] for name in specs]

    def __call__(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, dict | None]:
        """Captions as token ids (self.tokenize) or as the frozen encoders' outputs (self.inputs) ->
        (encoder_hidden_states, added_cond_kwargs or None)."""
        if x[0].is_floating_point():  # already encoded
            ctx, pooled = x[0], x[1] if self.sdxl else None
        else:
            ctx, pooled = self.encode(x)
        if not self.sdxl:
            return ctx, None
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=ctx.dtype, device=ctx.device).expand(len(ctx), -1)
        return ctx, {"text_embeds": pooled, "time_ids": time_ids}

    def context_dim(self) -> int:
        return sum(e.config.hidden_size for e in self.encoders)
