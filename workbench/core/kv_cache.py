"""Key/value caches of prompt bodies: compute each shared token prefix once, run only the tail tokens.

Module contents:

- :func:`cache_kwarg` / :func:`output_cache`: the name transformers gives the cache argument and output
  (``cache`` from 5.2x on, ``past_key_values`` before; the old name goes away in 5.40).
- :func:`prefix_kvs`: keys/values of token sequences, one right-padded forward pass without autograd (optionally
  after a head they all share, computed before).
- :func:`collate`: per-sequence caches -> one left-padded ``DynamicCache`` and its mask.
- :func:`stacked`, :func:`placed_cache`: a cache's layers gathered on one device, and put back on each decoder
  block's device (``device_map``).
- :func:`shared_bodies`: per prompt, the longest token prefix it shares with another prompt of the same call.
- :func:`tail_inputs`: the left-padded inputs of tail tokens run after their (collated) bodies.
- :func:`extend_kvs`: keys/values of bodies extended by more tokens (the prompt but its last token, from its body).
- :class:`BodyCache`: body caches by token prefix within a memory budget, shareable across methods.

:func:`workbench.core.inference.cached_next_token_logits` uses them: next-token logits equal to
``next_token_logits`` for interventions that edit only the last prompt token, computing each body once.

Why it is exact: a real token attends only to earlier tokens, so the keys and values of a body do not depend on what
follows it; an intervention at the last prompt token changes nothing before it. Tails are left padded after their
(left-padded) bodies, with position ids counting real tokens only, so the last column is every row's last prompt
token, as on the uncached path.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from workbench.core.placement import block_devices

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

KV = torch.Tensor  # one sequence's cache: [layers, 2 (keys, values), kv heads, tokens, head_dim]


def stacked(layers: Sequence[Any], device: torch.device) -> torch.Tensor:
    """``[L, 2, B, heads, T, head_dim]`` on `device` from a cache's layers (a ``device_map`` may hold each layer's
    keys and values on its block's device; on one device nothing moves)."""
    return torch.stack([torch.stack([layer.keys, layer.values]).to(device) for layer in layers])


def placed_cache(lm: LanguageModel, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` of per-layer (keys, values), each moved to its decoder block's device."""
    devices = block_devices(lm)
    if pairs and all(d == pairs[0][0].device for d in devices):  # one device (the default): nothing moves
        return DynamicCache(list(pairs), config=lm.hf.config)
    return DynamicCache([(k.to(d), v.to(d)) for (k, v), d in zip(pairs, devices)], config=lm.hf.config)


@functools.lru_cache(maxsize=None)
def _forward_takes_cache(forward: Any) -> bool:
    return "cache" in inspect.signature(forward).parameters


def cache_kwarg(model: torch.nn.Module) -> str:
    """``"cache"`` where the model's forward takes it (transformers >= 5.2x), else ``"past_key_values"``."""
    return "cache" if _forward_takes_cache(type(model).forward) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache of a model output, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@torch.no_grad()
def prefix_kvs(lm: LanguageModel, seqs: Sequence[Sequence[int]], head: tuple[int, KV] | None = None,
               edit: Any = None) -> list[KV]:
    """Keys/values of each of `seqs` at every layer: one right-padded forward pass without autograd (a real token
    attends only to earlier tokens, so the padding after it changes nothing). `head` = (n, kv of the first n
    tokens, which every sequence shares), computed before: only the tokens after it are run. `edit`: an
    intervention applied to every real token of the pass (the ``body_edit`` of an intervention that edits all
    positions the same way for every row, e.g. I2CL's context vectors; it cannot be combined with `head`)."""
    if edit is not None and head is not None:
        raise ValueError("prefix_kvs: an edited pass cannot start from a shared head")
    n, head_kv = head if head is not None and head[0] > 0 else (0, None)
    out: list[KV | None] = [torch.empty(0) if not s else head_kv if len(s) == n else None for s in seqs]
    rows = [i for i, kv in enumerate(out) if kv is None]
    if not rows:
        return out
    B, T = len(rows), max(len(seqs[i]) for i in rows)
    ids = torch.full((B, T - n), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    mask[:, :n] = 1
    for r, i in enumerate(rows):
        ids[r, : len(seqs[i]) - n] = torch.tensor(list(seqs[i][n:]))
        mask[r, n: len(seqs[i])] = 1
    extra = {}
    if head_kv is not None:
        extra[cache_kwarg(lm.hf.base_model)] = placed_cache(
            lm, [(kv[0][None].expand(B, -1, -1, -1), kv[1][None].expand(B, -1, -1, -1)) for kv in head_kv])
    position_ids = torch.arange(n, T, device=lm.device).repeat(B, 1)
    if edit is None:  # the decoder without its LM head: only keys/values are wanted
        res = lm.hf.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=True,
                               position_ids=position_ids, **extra)
    else:  # through nnsight, the edit at every real token (right padding: the mask says which)
        with lm.nn.trace(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=True,
                         position_ids=position_ids, logits_to_keep=torch.tensor([T - 1])):
            edit.apply(lm, slice(0, B), mask.to(lm.device))
            res = lm.nn.output.save()
    layers = output_cache(res).layers
    if len({(layer.keys.shape, layer.values.shape) for layer in layers}) > 1:
        raise ValueError(f"{lm.name}: its layers cache keys/values of different shapes (e.g. sliding-window layers), "
                         "which prefix caching does not support (training: TrainConfig(fast_path=False); "
                         "evaluation: cache=False)")
    full = stacked(layers, lm.device)  # [L, 2, B, h, T, hd]
    for r, i in enumerate(rows):
        out[i] = full[:, :, r, :, : len(seqs[i])].clone()
    return out


def collate(lm: LanguageModel, kvs: Sequence[KV | None], workspace: Callable[..., torch.Tensor] | None = None,
            ) -> tuple[DynamicCache | None, torch.Tensor]:
    """One left-padded cache ``[B, heads, T, head_dim]`` per layer from per-sequence caches (None or empty: no
    tokens), and its mask ``[B, T]``; no cache when every entry is empty.

    `workspace(shape, like)` may hand out a reusable buffer (training reuses one per step: a fresh buffer costs more
    in page faults than the copy). That is safe because the cache's first update replaces each layer's tensors by
    ``torch.cat(old, new)``, which autograd does not keep."""
    lengths = [0 if kv is None or not kv.numel() else kv.shape[3] for kv in kvs]
    T = max(lengths)
    mask = torch.zeros((len(kvs), T), dtype=torch.long)
    if T == 0:
        return None, mask
    ref = next(kv for kv, n in zip(kvs, lengths) if n)
    L, _, heads, _, dim = ref.shape
    shape = (L, 2, len(kvs), heads, T, dim)  # one copy per sequence, then a view per layer
    buf = ref.new_empty(shape) if workspace is None else workspace(shape, ref)
    for i, (kv, n) in enumerate(zip(kvs, lengths)):
        buf[:, :, i, :, : T - n] = 0  # masked, but must be finite (0 * inf would leak NaN through attention)
        if n:
            buf[:, :, i, :, T - n:] = kv
            mask[i, T - n:] = 1
    return placed_cache(lm, [(buf[layer, 0], buf[layer, 1]) for layer in range(L)]), mask


def shared_bodies(seqs: Sequence[Sequence[int]], min_tail: int = 1) -> list[int]:
    """Per sequence, the length of the longest prefix it shares with another sequence of `seqs`, leaving at least
    `min_tail` tokens (0 when it shares nothing). The 3 answer prefixes of one (item, template) share the prompt
    body."""
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    common = [0] * len(seqs)
    for a, b in zip(order, order[1:]):
        x, y = seqs[a], seqs[b]
        n = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), min(len(x), len(y)))
        common[a], common[b] = max(common[a], n), max(common[b], n)
    return [max(0, min(c, len(s) - min_tail)) for c, s in zip(common, seqs)]


def tail_inputs(lm: LanguageModel, kvs: Sequence[KV | None], tails: Sequence[Sequence[int]],
                ) -> tuple[DynamicCache | None, dict[str, torch.Tensor], torch.Tensor]:
    """(collated body cache, model inputs, tail mask ``[B, Tt]``) for running `tails` after their bodies: tails left
    padded after the left-padded bodies, position ids counting each row's real tokens, so the last column is every
    row's last token."""
    body_cache, body_mask = collate(lm, kvs)
    lengths = [0 if kv is None or not kv.numel() else kv.shape[3] for kv in kvs]
    Tt = max(len(t) for t in tails)
    ids = torch.full((len(tails), Tt), lm.tokenizer.pad_token_id, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), Tt), dtype=torch.long)
    position_ids = torch.zeros((len(tails), Tt), dtype=torch.long)
    for r, tail in enumerate(tails):
        ids[r, Tt - len(tail):] = torch.tensor(list(tail))
        tail_mask[r, Tt - len(tail):] = 1
        position_ids[r, Tt - len(tail):] = torch.arange(lengths[r], lengths[r] + len(tail))
    inputs = {"input_ids": ids.to(lm.device), "attention_mask": torch.cat([body_mask, tail_mask], dim=1).to(lm.device),
              "position_ids": position_ids.to(lm.device)}
    return body_cache, inputs, tail_mask


@torch.no_grad()
def extend_kvs(lm: LanguageModel, kvs: Sequence[KV | None], tails: Sequence[Sequence[int]]) -> list[KV]:
    """Keys/values of each body (`kvs`, None: no tokens) followed by its tail: one forward pass of the tails on the
    decoder without its LM head and without autograd (an intervention at a later token cannot change them)."""
    body_cache, inputs, _ = tail_inputs(lm, kvs, tails)
    extra = {cache_kwarg(lm.hf.base_model): body_cache} if body_cache is not None else {}
    res = lm.hf.base_model(**inputs, use_cache=True, **extra)
    full = stacked(output_cache(res).layers, lm.device)
    real = inputs["attention_mask"].bool().to(full.device)  # [B, T]: each row's real tokens, in order
    return [full[:, :, r, :, real[r]].clone() for r in range(len(tails))]


def check_budget(budget_mb: float, batch_tokens: int, name: str = "budget_mb") -> tuple[int, int]:
    """(budget in bytes, batch_tokens) after checking both; ValueError naming the bad value otherwise."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not budget_mb >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {budget_mb!r}")
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    return int(budget_mb * 2**20), batch_tokens


class BodyCache:
    """Body caches keyed by (scope, token prefix), kept within `budget_mb` megabytes (0: nothing kept).

    `scope` separates models whose weights differ (e.g. a LoRA adapter attached): bodies computed under one scope
    are never used under another. Each kept body remembers who computed it (`owner`) and how long it took, so a
    caller that reads a body another owner computed can count that time as its own (``borrowed_seconds``): the
    latency of a method then does not depend on which method ran first. Counts what it saves: ``stats()``."""

    def __init__(self, budget_mb: float = 1024.0, batch_tokens: int = 4096):
        self.budget, self.batch_tokens = check_budget(budget_mb, batch_tokens)
        self.used = 0
        self.hits = self.misses = self.body_tokens = self.tail_tokens = 0
        self.body_seconds = 0.0  # wall time spent computing bodies (what sharing saves is this, times the reuses)
        self.borrowed_seconds = 0.0
        self._data: dict[tuple[Hashable, tuple[int, ...]], tuple[KV, float, Hashable]] = {}
        self._heads: dict[tuple[Hashable, tuple[int, ...]], KV] = {}

    def bodies(self, lm: LanguageModel, bodies: Sequence[tuple[int, ...]], scope: Hashable = None,
               owner: Hashable = None, edit: tuple[Hashable, Any] | None = None) -> list[KV | None]:
        """The caches of `bodies` (distinct or not): kept ones, the others computed in length-sorted batches of at
        most `batch_tokens` tokens and kept while they fit; None for an empty body. `edit` = (key, intervention):
        bodies computed with that intervention at every token (:func:`prefix_kvs`), kept apart under `key`."""
        if edit is not None:
            scope = (scope, "edit", edit[0])
        out: dict[tuple[int, ...], KV] = {}
        todo = []
        for body in dict.fromkeys(b for b in bodies if b):
            kept = self._kept(scope, body, owner)
            if kept is None:
                todo.append(body)
            else:
                out[body] = kept
        self.misses += len(todo)
        todo.sort(key=len)
        start = 0
        while start < len(todo):
            end = start + 1
            while end < len(todo) and len(todo[end]) * (end + 1 - start) <= self.batch_tokens:
                end += 1
            chunk = todo[start:end]
            began = time.perf_counter()
            kvs = (prefix_kvs(lm, chunk, self._head(lm, chunk, scope)) if edit is None else
                   prefix_kvs(lm, chunk, edit=edit[1]))
            elapsed = time.perf_counter() - began
            self.body_seconds += elapsed
            seconds = elapsed / sum(len(b) for b in chunk)  # per token of the batch
            for body, kv in zip(chunk, kvs):
                out[body] = kv
                self.body_tokens += len(body)
                self._keep(scope, body, kv, seconds * len(body), owner)
            start = end
        return [out[b] if b else None for b in bodies]

    def extend(self, lm: LanguageModel, bodies: Sequence[tuple[int, ...]], kvs: Sequence[KV | None],
               targets: Sequence[tuple[int, ...]], scope: Hashable = None, owner: Hashable = None) -> list[KV | None]:
        """The caches of `targets`, each its body (of `bodies`, whose caches are `kvs`) followed by more tokens: kept
        ones, the others run from their bodies (:func:`extend_kvs`, batches of at most `batch_tokens` tail tokens)
        and kept while they fit. A target equal to its body is its body's cache."""
        out: list[KV | None] = [kv if t == b else None for b, kv, t in zip(bodies, kvs, targets)]
        todo: dict[tuple[int, ...], int] = {}  # target -> the first row that needs it
        for r, (kv, target) in enumerate(zip(out, targets)):
            if kv is not None or not target:
                continue
            out[r] = self._kept(scope, target, owner)
            if out[r] is None and target not in todo:
                todo[target] = r
        self.misses += len(todo)
        rows = list(todo.values())
        step = max(1, self.batch_tokens // max([len(targets[r]) - len(bodies[r]) for r in rows] or [1]))
        for start in range(0, len(rows), step):
            chunk = rows[start: start + step]
            began = time.perf_counter()
            new = extend_kvs(lm, [kvs[r] for r in chunk], [targets[r][len(bodies[r]):] for r in chunk])
            elapsed = time.perf_counter() - began
            self.body_seconds += elapsed
            for r, kv in zip(chunk, new):
                out[r] = kv
                self.body_tokens += len(targets[r]) - len(bodies[r])
                self._keep(scope, targets[r], kv, elapsed / len(chunk), owner)
        for r, target in enumerate(targets):  # a target repeated in this call
            if out[r] is None and target:
                out[r] = out[todo[target]]
        return out

    def _kept(self, scope: Hashable, key: tuple[int, ...], owner: Hashable) -> KV | None:
        """The kept cache of `key` (a hit; its compute time is borrowed when another owner computed it), or None."""
        kept = self._data.get((scope, key))
        if kept is None:
            return None
        self.hits += 1
        if kept[2] != owner:
            self.borrowed_seconds += kept[1]
        return kept[0]

    def _keep(self, scope: Hashable, key: tuple[int, ...], kv: KV, seconds: float, owner: Hashable) -> None:
        """Keep `kv` under `key` if it fits the budget (`seconds`: what computing it took, for borrowers)."""
        if self.used + kv.nbytes <= self.budget:
            self._data[(scope, key)] = (kv, seconds, owner)
            self.used += kv.nbytes

    def _head(self, lm: LanguageModel, chunk: Sequence[tuple[int, ...]], scope: Hashable) -> tuple[int, KV] | None:
        """The token prefix every body of `chunk` shares (e.g. the chat header and the template's instruction), run
        once and kept for the chunks after it; None when they share fewer than 4 tokens."""
        n = min(len(b) for b in chunk)
        first = chunk[0]
        for b in chunk[1:]:
            n = next((j for j in range(n) if b[j] != first[j]), n)
        n = min(n, min(len(b) for b in chunk) - 1)  # every body keeps at least one token of its own
        if n < 4 or len(chunk) < 2:
            return None
        key = (scope, first[:n])
        if key not in self._heads:
            self._heads = {key: prefix_kvs(lm, [first[:n]])[0]}  # the last head only: chunks come in order
        return n, self._heads[key]

    def clear(self) -> None:
        self._data.clear()
        self._heads.clear()
        self.used = 0

    def stats(self) -> dict[str, Any]:
        return {"kept": len(self._data), "used_mb": round(self.used / 2**20, 1), "budget_mb": self.budget / 2**20,
                "hits": self.hits, "misses": self.misses, "body_tokens_run": self.body_tokens,
                "tail_tokens_run": self.tail_tokens, "body_seconds": round(self.body_seconds, 3),
                "borrowed_seconds": round(self.borrowed_seconds, 3)}

