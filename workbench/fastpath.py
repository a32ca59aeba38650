"""The prefix-cached answer loss: same loss and gradients as :func:`workbench.examples.answer_loss`, much faster.

With positions "last" the vector edits only the last prompt token, so the keys/values of every earlier prompt
token do not depend on the generator. They are computed once per example without autograd (batch 1, so they do
not depend on which batch the example lands in; the token prefix shared by all examples of a task template -- chat
header and instruction -- is computed once and extended) and kept in a :class:`PrefixStore` across epochs within a
memory budget (past it, they are recomputed when needed). Each training step then collates the batch's prefixes into one
left-padded ``DynamicCache`` and runs only ``[last prompt token, answer tokens...]`` (right padded) through the
LLM with autograd, the vector injected at the first suffix column through nnsight; position ids continue from each
row's real prefix length. The collated cache is built fresh per step (one memcpy of the batch's prefixes) and
dropped afterwards: ``DynamicCache.crop`` would leave views of autograd-tracked tensors in the cache, while the
stored prefixes are never mutated, so neither a deep copy nor a crop is needed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from .examples import IGNORE, MaskedInjection, pad_left, per_example_ce
from .injection import Injection

if TYPE_CHECKING:
    from .models import LanguageModel

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [heads, tokens, head_dim]


class PrefixStore:
    """Per-example prefix caches kept within `budget_mb` megabytes (0 disables storing)."""

    def __init__(self, budget_mb: float = 2048):
        if not budget_mb >= 0:
            raise ValueError(f"cache_budget_mb must be >= 0, got {budget_mb!r}")
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self.hits = self.misses = 0
        self._data: dict[Hashable, KV] = {}
        self._heads: dict[Hashable, KV] = {}

    def get(self, key: Hashable) -> KV | None:
        kv = self._data.get(key)
        self.hits += kv is not None
        self.misses += kv is None
        return kv

    def put(self, key: Hashable, kv: KV) -> bool:
        """Store `kv` under `key` if it fits in the budget; returns whether it was stored."""
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        if key in self._data or self.used + size > self.budget:
            return False
        self._data[key] = kv
        self.used += size
        return True

    def prefix(self, lm: LanguageModel, key: Hashable, ids: Sequence[int], head_len: int = 0) -> KV:
        """The stored prefix of `key`, else computed (on top of the shared ``ids[:head_len]``, itself computed once
        and kept, keyed by its tokens) and stored if it fits."""
        kv = self.get(key)
        if kv is None:
            head = None
            if head_len > 0:
                head_key = ("head", tuple(ids[:head_len]))
                if head_key not in self._heads:
                    self._heads[head_key] = prefix_kv(lm, ids[:head_len])
                head = (head_len, self._heads[head_key])
            kv = prefix_kv(lm, ids, head)
            self.put(key, kv)
        return kv

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict:
        return {"stored": len(self), "heads": len(self._heads), "used_mb": round(self.used / 2**20, 1),
                "budget_mb": self.budget / 2**20,
                "hits": self.hits, "misses": self.misses}


@torch.no_grad()
def prefix_kv(lm: LanguageModel, ids: Sequence[int], head: tuple[int, KV] | None = None) -> KV:
    """Keys/values of `ids` at every layer (plain forward, batch 1, no autograd). `head` = (n, kv of ids[:n])
    computed before: only ``ids[n:]`` is run, on top of it."""
    if not ids:
        return []
    n, cache = 0, None
    if head is not None and head[0] > 0:
        n = head[0]
        if n >= len(ids):
            return head[1]
        cache = DynamicCache([(k[None], v[None]) for k, v in head[1]], config=lm.hf.config)
    out = lm.hf(input_ids=torch.tensor([list(ids[n:])], device=lm.device), past_key_values=cache, use_cache=True,
                position_ids=torch.arange(n, len(ids), device=lm.device)[None], logits_to_keep=1)
    return [(layer.keys[0].detach(), layer.values[0].detach()) for layer in out.past_key_values.layers]


def head_lengths(prefixes: Sequence[Sequence[int]], groups: Sequence[Hashable]) -> list[int]:
    """Per prefix, the length of the token prefix it shares with every prefix of its group (e.g. the chat header
    and instruction of one task template): computed once and reused (0 for groups of one)."""
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0] * len(prefixes)
    for idx in members.values():
        if len(idx) < 2:
            continue
        first, n = prefixes[idx[0]], min(len(prefixes[i]) for i in idx)
        for i in idx[1:]:
            n = next((j for j in range(n) if prefixes[i][j] != first[j]), n)
        for i in idx:
            out[i] = n
    return out


def collate(lm: LanguageModel, kvs: Sequence[KV], lengths: Sequence[int]) -> tuple[DynamicCache | None, torch.Tensor]:
    """One left-padded cache [B, heads, Tp, head_dim] per layer from per-example prefixes, and its mask [B, Tp]."""
    Tp = max(lengths)
    mask = pad_left([[1] * n for n in lengths], 0)[1] if Tp else torch.zeros((len(lengths), 0), dtype=torch.long)
    if Tp == 0:
        return None, mask
    ref = next(kv for kv in kvs if kv)
    data = []
    for layer, (k0, v0) in enumerate(ref):
        keys = k0.new_zeros((len(kvs), k0.shape[0], Tp, k0.shape[-1]))
        values = v0.new_zeros((len(kvs), v0.shape[0], Tp, v0.shape[-1]))
        for i, kv in enumerate(kvs):
            if lengths[i]:
                keys[i, :, Tp - lengths[i]:] = kv[layer][0]
                values[i, :, Tp - lengths[i]:] = kv[layer][1]
        data.append((keys, values))
    return DynamicCache(data, config=lm.hf.config), mask


def fast_pair_losses(
    lm: LanguageModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    injection: Injection | None,
    store: PrefixStore | None = None,
    keys: Sequence[Hashable] | None = None,
    heads: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example answer losses [B] and first-token correctness [B], prefix cached (positions "last" only).

    `keys` name the examples in `store`; `heads` (see :func:`head_lengths`) are shared token prefixes."""
    if injection is not None and injection.positions != "last":
        raise ValueError("the fast path needs positions='last'; positions='all' uses the naive path")
    if keys is not None and len(keys) != len(pairs):
        raise ValueError(f"{len(keys)} cache keys for {len(pairs)} examples")
    if store is not None and keys is not None:
        kvs = [store.prefix(lm, keys[i], p[:-1], heads[i] if heads else 0) for i, (p, _) in enumerate(pairs)]
    else:
        kvs = [prefix_kv(lm, p[:-1]) for p, _ in pairs]
    lengths = [len(p) - 1 for p, _ in pairs]
    cache, prefix_mask = collate(lm, kvs, lengths)
    suffixes = [[p[-1], *a] for p, a in pairs]
    S = max(len(s) for s in suffixes)
    ids = torch.full((len(pairs), S), lm.tokenizer.pad_token_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(pairs), S), dtype=torch.long)
    labels = torch.full((len(pairs), S), IGNORE, dtype=torch.long)
    for i, s in enumerate(suffixes):
        ids[i, : len(s)] = torch.tensor(s)
        suffix_mask[i, : len(s)] = 1
        labels[i, : len(s) - 1] = torch.tensor(s[1:])
    position_ids = torch.tensor(lengths)[:, None] + torch.arange(S)[None, :]
    attention_mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(lm.device)
    first = torch.zeros((len(pairs), S))
    first[:, 0] = 1
    if injection is not None:
        injection.check(lm, len(pairs))
        injection = MaskedInjection(injection, first)
    with lm.nn.trace(input_ids=ids.to(lm.device), attention_mask=attention_mask, position_ids=position_ids.to(lm.device),
                     past_key_values=cache, use_cache=True):
        if injection is not None:
            injection.apply(lm, slice(None), attention_mask)
        logits = lm.nn.output.logits.save()
    return per_example_ce(logits, labels.to(logits.device))


def fast_answer_loss(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None,
    store: PrefixStore | None = None,
) -> torch.Tensor:
    """Drop-in for :func:`workbench.examples.answer_loss` (positions "last"); `store` caches prefixes by prompt
    (and the token prefix all prompts share, e.g. a chat header, once)."""
    from .examples import tokenize_pair

    pairs = [tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)]
    heads = head_lengths([p[:-1] for p, _ in pairs], [0] * len(pairs))
    return fast_pair_losses(lm, pairs, injection, store, keys=list(prompts), heads=heads)[0].mean()
