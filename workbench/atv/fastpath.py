"""The prefix-cached answer loss: same loss and gradients as :func:`workbench.atv.examples.answer_loss`, much faster.

With positions "last" the vector edits only the last prompt token, so the keys/values of every earlier prompt
token do not depend on the generator. They are computed without autograd, in right-padded batches of examples
that share a token prefix (chat header and instruction of a task template, computed once and extended), and kept
in a :class:`PrefixStore` across epochs within a memory budget (past it, they are recomputed when needed;
:meth:`PrefixStore.fill` computes them all before training). Each training step collates the batch's prefixes
into one left-padded ``DynamicCache`` and runs only ``[last prompt token, answer tokens except the last]`` (right
padded) through the LLM with autograd, the vector injected at the first suffix column through nnsight; position
ids continue from each row's real prefix length. The collated cache is copied per step into the store's reusable
workspace (one copy per example; see :func:`collate`): the stored prefixes are never mutated, so neither a deep
copy nor ``DynamicCache.crop`` (which would leave views of autograd-tracked tensors in the cache) is needed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from workbench.atv.loss import IGNORE, per_example_ce
from workbench.core.batching import length_buckets
from workbench.core.interventions import Injection, MaskedInjection
from workbench.core.kv_cache import KV, cache_kwarg, check_budget, collate, extend_kvs, prefix_kvs

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


#: Shared bodies (e.g. an item's input, read by its 3 templates) computed and held at a time by the prefix pass.
BODIES_AT_ONCE = 64


class PrefixStore:
    """Per-example prefix caches kept within `budget_mb` megabytes (0 disables storing).

    Missing prefixes are computed in right-padded batches of at most `batch_tokens` tokens, grouped by the token
    prefix they share (computed once and kept) and bucketed by length so that little padding is run."""

    def __init__(self, budget_mb: float = 2048, batch_tokens: int = 2048):
        self.budget, self.batch_tokens = check_budget(budget_mb, batch_tokens, "cache_budget_mb")
        self.used = 0
        self.hits = self.misses = 0
        self._data: dict[Hashable, KV] = {}
        self._heads: dict[tuple[int, ...], KV] = {}
        self._workspace: torch.Tensor | None = None
        self.model: str | None = None  # the fingerprint of the model whose caches these are (see bind)

    def bind(self, lm: LanguageModel) -> PrefixStore:
        """This store, for `lm`: the first model it serves is recorded; another model is a ValueError (its caches
        would be the wrong model's)."""
        if self.model is None:
            self.model = lm.fingerprint
        elif self.model != lm.fingerprint:
            raise ValueError(f"this prefix store holds caches of model {self.model[:12]}, not of {lm.name} "
                             f"({lm.fingerprint[:12]}); use a new PrefixStore for another model")
        return self

    def get(self, key: Hashable) -> KV | None:
        kv = self._data.get(key)
        self.hits += kv is not None
        self.misses += kv is None
        return kv

    def put(self, key: Hashable, kv: KV) -> bool:
        """Store `kv` under `key` if it fits in the budget; returns whether it was stored."""
        size = kv.nbytes
        if key in self._data or self.used + size > self.budget:
            return False
        self._data[key] = kv
        self.used += size
        return True

    def prefixes(self, lm: LanguageModel, keys: Sequence[Hashable], seqs: Sequence[Sequence[int]],
                 heads: Sequence[int] | None = None) -> list[KV]:
        """The prefix caches of `seqs` (named `keys`): stored ones, the others computed (batched; `heads[i]` =
        how many leading tokens `seqs[i]` shares with others, see :func:`head_lengths`) and stored if they fit."""
        out = [self.get(k) for k in keys]
        missing = [i for i, kv in enumerate(out) if kv is None]
        for chunk, kvs in self._compute(lm, seqs, heads, missing):
            for i, kv in zip(chunk, kvs):
                out[i] = kv
                self.put(keys[i], kv)
        return out

    def fill(self, lm: LanguageModel, keys: Sequence[Hashable], seqs: Sequence[Sequence[int]],
             heads: Sequence[int] | None = None, progress: bool = False, bodies: Sequence[int] | None = None) -> int:
        """Compute and store the prefixes of `seqs` ahead of training, until the budget is full; returns how
        many are stored. `bodies[i]`: leading tokens `seqs[i]` shares with another group (e.g. an item's other
        templates, which start with the same input): each such body is run once, the rest of each sequence from it."""
        from tqdm.auto import tqdm

        todo = [i for i, k in enumerate(keys) if k not in self._data] if self.budget > 0 else []
        bar = tqdm(total=len(todo), desc="prefix cache", leave=False, disable=not progress)
        with bar:
            for chunk, kvs in self._compute(lm, seqs, heads, todo, bodies=bodies):
                stored = [self.put(keys[i], kv) for i, kv in zip(chunk, kvs)]
                bar.update(len(chunk))
                if not all(stored):
                    break
        return sum(k in self._data for k in keys)

    def fill_with_states(self, lm: LanguageModel, keys: Sequence[Hashable], prompts: Sequence[Sequence[int]],
                         block: int, heads: Sequence[int] | None = None, progress: bool = False,
                         bodies: Sequence[int] | None = None) -> torch.Tensor:
        """Block `block`'s clean output at the last token of each of `prompts` ``[N, d]`` (float32), from the pass
        that computes their prefix caches (each prompt but its last token; stored while they fit, under `keys`):
        the ``self:K`` generator's states at the cost of one more token per prompt. `heads` as in :meth:`prefixes`
        and `bodies` as in :meth:`fill` (shared tokens of the prefixes)."""
        from tqdm.auto import tqdm

        states: list[torch.Tensor | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="prefix cache + self states", leave=False, disable=not progress)
        with bar:
            for chunk, kvs, rows in self._compute(lm, prompts, heads, range(len(prompts)), block, bodies):
                for i, kv, row in zip(chunk, kvs, rows):
                    states[i] = row
                    self.put(keys[i], kv[:, :, :, :-1].clone())
                bar.update(len(chunk))
        return torch.stack(states)

    def _compute(self, lm: LanguageModel, seqs: Sequence[Sequence[int]], heads: Sequence[int] | None,
                 todo: Sequence[int], block: int | None = None,
                 bodies: Sequence[int] | None = None) -> Iterator[tuple]:
        """(indices, their prefix caches) in batches: grouped by shared head, then length-bucketed. With `block`,
        (indices, caches, block `block`'s output at each sequence's last token) (see :meth:`fill_with_states`).
        Sequences with a shared body longer than their head (`bodies`, see :meth:`fill`) come first, from it."""
        if bodies is not None:
            deep = [i for i in todo if (heads[i] if heads else 0) < bodies[i] < len(seqs[i])]
            yield from self._from_bodies(lm, seqs, heads, deep, block, bodies)
            todo = [i for i in todo if not (heads[i] if heads else 0) < bodies[i] < len(seqs[i])]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in todo:
            groups.setdefault(tuple(seqs[i][: heads[i] if heads else 0]), []).append(i)
        for head_ids, idx in groups.items():
            head = None
            if head_ids:
                if head_ids not in self._heads:
                    self._heads[head_ids] = prefix_kvs(lm, [head_ids])[0]
                head = (len(head_ids), self._heads[head_ids])
            rest = [len(seqs[i]) - len(head_ids) for i in idx]
            for bucket in length_buckets(rest, max_tokens=self.batch_tokens):
                chunk = [idx[b] for b in bucket]
                if block is None:
                    yield chunk, prefix_kvs(lm, [seqs[i] for i in chunk], head)
                    continue
                with block_output(lm, block) as out:
                    kvs = prefix_kvs(lm, [seqs[i] for i in chunk], head)
                last = torch.tensor([len(seqs[i]) - len(head_ids) - 1 for i in chunk], device=out[0].device)
                yield chunk, kvs, out[0][torch.arange(len(chunk), device=last.device), last].float()

    def _from_bodies(self, lm: LanguageModel, seqs: Sequence[Sequence[int]], heads: Sequence[int] | None,
                     idx: Sequence[int], block: int | None, bodies: Sequence[int]) -> Iterator[tuple]:
        """As :meth:`_compute` for sequences `idx` that share their first ``bodies[i]`` tokens with others: each
        distinct body computed once (after its head), then every sequence's rest run from its body's cache
        (:func:`extend_kvs`; the last column of its left-padded tails is each sequence's last token)."""
        body_of = {i: tuple(seqs[i][: bodies[i]]) for i in idx}
        head_of = {b: (heads[i] if heads else 0) for i, b in body_of.items()}
        distinct = list(head_of)
        for start in range(0, len(distinct), BODIES_AT_ONCE):  # bounds the memory the bodies' caches take
            some = distinct[start: start + BODIES_AT_ONCE]
            body_kv: dict[tuple[int, ...], KV] = {}
            for chunk, kvs in self._compute(lm, some, [head_of[b] for b in some], range(len(some))):
                body_kv.update((some[j], kv) for j, kv in zip(chunk, kvs))
            rows = [i for i in idx if body_of[i] in body_kv]
            for bucket in length_buckets([len(seqs[i]) - bodies[i] for i in rows], max_tokens=self.batch_tokens):
                chunk = [rows[b] for b in bucket]
                tails = [seqs[i][bodies[i]:] for i in chunk]
                with block_output(lm, block) if block is not None else contextlib.nullcontext([]) as out:
                    kvs = extend_kvs(lm, [body_kv[body_of[i]] for i in chunk], tails)
                yield (chunk, kvs) if block is None else (chunk, kvs, out[0][:, -1].float())

    def workspace(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of `shape` that reuses one growing buffer (see :func:`collate`)."""
        n = math.prod(shape)
        ws = self._workspace
        if ws is None or ws.numel() < n or ws.dtype != like.dtype or ws.device != like.device:
            ws = self._workspace = like.new_empty(n)
        return ws[:n].view(shape)

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict:
        return {"stored": len(self), "heads": len(self._heads), "used_mb": round(self.used / 2**20, 1),
                "budget_mb": self.budget / 2**20,
                "hits": self.hits, "misses": self.misses}


@contextlib.contextmanager
def block_output(lm: LanguageModel, block: int) -> Iterator[list[torch.Tensor]]:
    """A list that receives decoder block `block`'s output hidden states ``[B, T, d]`` during the ``with`` body."""
    seen: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)

    handle = lm.layers[block].register_forward_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


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
    prefixes = [p[:-1] for p, _ in pairs]
    if store is None or keys is None:
        store, keys = PrefixStore(0), list(range(len(pairs)))
    kvs = store.prefixes(lm, keys, prefixes, heads)
    lengths = [len(p) for p in prefixes]
    cache, prefix_mask = collate(lm, kvs, store.workspace)
    # the last answer token predicts nothing that is scored, so it is not run
    suffixes = [[p[-1], *a[:-1]] for p, a in pairs]
    S = max(len(s) for s in suffixes)
    ids = torch.full((len(pairs), S), lm.tokenizer.pad_token_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(pairs), S), dtype=torch.long)
    labels = torch.full((len(pairs), S), IGNORE, dtype=torch.long)
    for i, (s, (_, a)) in enumerate(zip(suffixes, pairs)):
        ids[i, : len(s)] = torch.tensor(s)
        suffix_mask[i, : len(s)] = 1
        labels[i, : len(a)] = torch.tensor(a)
    position_ids = torch.tensor(lengths)[:, None] + torch.arange(S)[None, :]
    attention_mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(lm.device)
    first = torch.zeros((len(pairs), S))
    first[:, 0] = 1
    if injection is not None:
        injection.check(lm, len(pairs))
        injection = MaskedInjection(injection, first)
    extra = {cache_kwarg(lm.hf): cache} if cache is not None else {}
    with lm.nn.trace(input_ids=ids.to(lm.device), attention_mask=attention_mask,
                     position_ids=position_ids.to(lm.device), use_cache=True, **extra):
        if injection is not None:
            injection.apply(lm, slice(None), attention_mask)
        logits = lm.nn.output.logits.save()
    return per_example_ce(logits, labels.to(logits.device))


def fast_answer_loss(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None,
    store: PrefixStore | None = None,
) -> torch.Tensor:
    """Drop-in for :func:`workbench.atv.examples.answer_loss` (positions "last"); `store` caches prefixes by prompt
    (and the token prefix all prompts share, e.g. a chat header, once)."""
    from workbench.atv.examples import tokenize_pair

    pairs = [tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)]
    heads = head_lengths([p[:-1] for p, _ in pairs], [0] * len(pairs))
    return fast_pair_losses(lm, pairs, injection, store, keys=list(prompts), heads=heads)[0].mean()
