"""One batch of items in every variant with shared prompt bodies (:mod:`workbench.core.kv_cache`): what
:func:`workbench.eval.evaluate.evaluate_task` runs when it has a body cache. The rows are the same as without it."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from workbench.core.inference import (
    body_lengths,
    cached_next_token_logits,
    joint_intervention,
    next_token_logits,
    row_body_edits,
    shares_bodies,
)
from workbench.core.kv_cache import BodyCache
from workbench.core.shared_states import sharing_bodies
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.registry import Task

#: Rows x prompt tokens of one stacked tail pass (the variants of a batch run together; this bounds its keys/values).
STACKED_TOKENS = 32768


def check_batch(batch: Any, n: int, method: Method) -> PreparedBatch:
    """`batch` if `method.prepare` returned a PreparedBatch with one prompt (and info) per item, else ValueError."""
    if not isinstance(batch, PreparedBatch):
        msg = f"{type(method).__name__}.prepare must return a PreparedBatch, got {type(batch).__name__}"
        raise ValueError(msg)
    if len(batch.prompts) != n:
        raise ValueError(f"{type(method).__name__}.prepare returned {len(batch.prompts)} prompts for {n} items")
    if batch.info and len(batch.info) != n:
        raise ValueError(f"{type(method).__name__}.prepare returned {len(batch.info)} info dicts for {n} items")
    return batch


def run_variants_cached(lm: Any, method: Method, task: Task, items: list[Any], texts: list[list[str]], seed: int,
                        cache: BodyCache, share_tails: bool = False, unit: Hashable = None,
                        ) -> list[tuple[PreparedBatch, torch.Tensor, float]]:
    """Every variant of one batch of items with shared bodies: prepare all, find the bodies they share, run each
    body once and only the tails. The variants run in one forward pass when their edits can be joined
    (:func:`~workbench.core.inference.joint_intervention`: the model's weights are then read once for all); a
    variant whose intervention edits earlier positions runs uncached, unless it edits every token alike for every
    prompt (I2CL: :func:`~workbench.core.inference.body_edit`) or alike for the prompts that share its vectors
    (I2CL on an unseen task: :func:`run_row_edits`).
    A ``self:K`` generator's states come from the same bodies (:mod:`workbench.core.shared_states`).
    Latency per row = the group's wall time / its rows, plus the time of the bodies it read that another method
    had computed (so a method's latency does not depend on which method ran first)."""
    start, borrowed = time.perf_counter(), cache.borrowed_seconds
    n = len(items)
    scope = (unit, None if method.shares_model_weights else ("method", id(method)))
    kwargs = dict(cache=cache, scope=scope, owner=id(method), share_tails=share_tails)
    with sharing_bodies(lm, [t for variant in texts for t in variant], batch_size=n, **kwargs):
        prepared = [check_batch(method.prepare(lm, task, items, t, seed), n, method) for t in texts]
    cacheable = [v for v, p in enumerate(prepared) if shares_bodies(p.intervention)]
    seqs, cuts = body_lengths(lm, [q for v in cacheable for q in prepared[v].prompts]) if cacheable else ([], [])
    logits: dict[int, torch.Tensor] = {}
    joint, joined = (joint_intervention([prepared[v].intervention for v in cacheable], n, lm.num_layers)
                     if len(cacheable) > 1 else (False, None))
    if joint:
        every = cached_next_token_logits(lm, [q for v in cacheable for q in prepared[v].prompts], joined,
                                         batch_size=stacked_rows(n, seqs), bodies=cuts, **kwargs)
        logits = {v: every[j * n: (j + 1) * n] for j, v in enumerate(cacheable)}
    else:
        for j, v in enumerate(cacheable):
            logits[v] = cached_next_token_logits(lm, prepared[v].prompts, prepared[v].intervention, batch_size=n,
                                                 bodies=cuts[j * n: (j + 1) * n], **kwargs)
    logits.update(run_row_edits(lm, prepared, [v for v in range(len(prepared)) if v not in logits], n, kwargs))
    for v, p in enumerate(prepared):
        if v not in logits:
            logits[v] = next_token_logits(lm, p.prompts, injection=p.intervention, batch_size=n, warn=False)
    latency = (time.perf_counter() - start + cache.borrowed_seconds - borrowed) / (n * len(texts))
    return [(p, logits[v], latency) for v, p in enumerate(prepared)]


def stacked_rows(n: int, seqs: Sequence[Sequence[int]]) -> int:
    """Rows per pass when variants run together: at least a batch of items, else ~``STACKED_TOKENS`` tokens."""
    return max(n, STACKED_TOKENS // max(len(q) for q in seqs))


def run_row_edits(lm: Any, prepared: list[PreparedBatch], pending: list[int], n: int, kwargs: dict[str, Any],
                  ) -> dict[int, torch.Tensor]:
    """Logits of the `pending` variants whose body edit differs between prompts (I2CL on an unseen task:
    :func:`~workbench.core.inference.row_body_edits`): the prompts of all of them that make the same edit run in one
    cached pass under it, so they share bodies across prefixes and their tails run together."""
    edits = {v: row_body_edits(prepared[v].intervention, n) for v in pending}
    split = [v for v in pending if edits[v] is not None]
    if not split:
        return {}
    seqs, cuts = body_lengths(lm, [q for v in split for q in prepared[v].prompts])
    groups: dict[Any, tuple[Any, list[tuple[int, int, int]]]] = {}
    for j, v in enumerate(split):
        for r, (key, edit) in enumerate(edits[v]):  # type: ignore[union-attr]
            groups.setdefault(key, (edit, []))[1].append((j * n + r, v, r))
    out: dict[int, list[Any]] = {v: [None] * n for v in split}
    for edit, members in groups.values():
        got = cached_next_token_logits(lm, [prepared[v].prompts[r] for _, v, r in members], edit,
                                       batch_size=stacked_rows(n, [seqs[i] for i, _, _ in members]),
                                       bodies=[cuts[i] for i, _, _ in members], **kwargs)
        for k, (_, v, r) in enumerate(members):
            out[v][r] = got[k]
    return {v: torch.stack(rows_) for v, rows_ in out.items()}
