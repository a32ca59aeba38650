"""Forward passes of the large model through nnsight: next-token logits, generation, hidden states.

Prompts are checked (:func:`check_prompts`: strings, valid Unicode), left padded and batched (:func:`encode`: every
prompt must have at least one token and fit the model's position limit ``lm.max_length``, or be cut from the left
with ``truncate="left"``); an optional :class:`~workbench.core.interventions.Intervention` edits activations inside
the trace. Functions: :func:`next_token_logits`, :func:`last_token_states`, :func:`generate` (greedy or sampled,
stop strings, log-probabilities: the decoding policy is :mod:`workbench.core.sampling`). A too-long prompt is a
:class:`PromptTooLong` carrying its index; NaN/inf or constant logits (an intervention far too strong) give one
:class:`BadLogitsWarning` per call of :func:`next_token_logits` / :func:`generate`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from workbench.core.checks import check_choice, check_int
from workbench.core.interventions import Intervention, as_intervention, stack_injections, stackable
from workbench.core.kv_cache import KV, BodyCache, cache_kwarg, output_cache, shared_bodies, tail_inputs
from workbench.core.remote import remote_logits, remote_states, require_local
from workbench.core.sampling import Decoder, Generation, check_sampling, check_stop, join
from workbench.core.tokens import add_bos
from workbench.core.tokens import check_text

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

TRUNCATE = (None, "left")


class PromptTooLong(ValueError):
    """A prompt with more tokens than the model's positions allow; ``index`` is its place in the caller's list (so a
    caller that knows what the prompt is, e.g. :func:`workbench.evaluate`, can name it)."""

    def __init__(self, message: str, index: int, tokens: int, limit: int):
        super().__init__(message)
        self.index, self.tokens, self.limit = index, tokens, limit


class BadLogitsWarning(RuntimeWarning):
    """A forward pass gave logits with NaN/inf, or all equal (usually an intervention far too strong)."""


def warn_bad_logit_rows(bad: torch.Tensor, where: str, stacklevel: int = 3) -> None:
    """One :class:`BadLogitsWarning` when any entry of the ``[B]`` bool `bad` is set (rows flagged by
    :func:`bad_logit_rows`, the test :func:`workbench.evaluate` reports too)."""
    n = int(bad.sum())
    if n:
        warnings.warn(f"{where}: {n} of {bad.numel()} prompts had non-finite or constant logits, so their "
                      "predictions are meaningless. The intervention is probably far too strong.", BadLogitsWarning,
                      stacklevel=stacklevel)


def bad_logit_rows(logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the row of ``[B, V]`` logits has a NaN/inf or all its values are equal (nothing to rank); the
    one test :func:`generate`, :func:`next_token_logits` and :func:`workbench.evaluate` (its scoring) apply."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    x = logits.detach()
    return ~torch.isfinite(x).all(dim=-1) | (x.amax(dim=-1) == x.amin(dim=-1))


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """A non-empty list of valid strings, else a ValueError naming the bad prompt."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    return [check_text(p, i) for i, p in enumerate(prompts)]


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_truncate(truncate: str | None) -> str | None:
    if truncate not in TRUNCATE:
        raise ValueError(f"unknown truncate {truncate!r}; use None (a too long prompt raises) or 'left'")
    return truncate


def encode(lm: LanguageModel, prompts: Sequence[str], truncate: str | None = None, first_index: int = 0,
           reserve: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`, `attention_mask` and matching `position_ids` (counting real tokens only).

    The tokenizer's special tokens (BOS) are added unless a prompt already starts with the BOS token
    (chat-rendered prompts). A prompt of zero tokens is a ValueError; so is one longer than
    ``lm.max_length - reserve`` positions (`reserve`: tokens still to be generated), unless ``truncate="left"``
    keeps its last tokens. Errors name the prompt by its index plus `first_index` (its place in the caller's list).
    """
    check_truncate(truncate)
    tok = lm.tokenizer
    add_special = any(add_bos(tok, p) for p in prompts)
    enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1).tolist() if ids.shape[1] else [0] * len(prompts)
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"prompt {first_index + i} ({prompts[i]!r}) tokenizes to zero tokens: give it some text")
    limit = lm.max_length - reserve
    if max(lengths) > limit:
        if truncate == "left":
            ids, mask = ids[:, -limit:], mask[:, -limit:]  # left padded: the last columns hold every row's end
        else:
            i = max(range(len(lengths)), key=lengths.__getitem__)
            room = f" minus {reserve} new tokens" if reserve else ""
            raise PromptTooLong(f"prompt {first_index + i} has {lengths[i]} tokens, more than the limit of {limit} "
                                f"({lm.name} has {lm.max_length} positions{room}); shorten it or pass "
                                "truncate='left'", first_index + i, lengths[i], limit)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _prepare(lm: LanguageModel, intervention: Intervention | None, n: int) -> Intervention | None:
    """The intervention checked against the protocol, the model and the number of prompts (None stays None)."""
    if intervention is None:
        return None
    intervention = as_intervention(intervention)
    intervention.check(lm, n)
    return intervention


def next_token_logits(
    lm: LanguageModel,
    prompts: Sequence[str],
    injection: Intervention | None = None,
    batch_size: int = 8,
    truncate: str | None = None,
    warn: bool = True,
) -> torch.Tensor:
    """Logits ``[B, V]`` at the last prompt token (float32 on CPU).

    If the intervention requires grad, the result keeps the graph so gradients reach it (the model's weights are
    frozen and get none); otherwise the pass runs without autograd. A prompt longer than ``lm.max_length`` tokens
    raises (:class:`PromptTooLong`) unless ``truncate="left"`` (keep its last tokens). Rows with NaN/inf or constant
    logits give one :class:`BadLogitsWarning` (``warn=False``: the caller reports them, as :func:`workbench.evaluate`
    does).
    """
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    check_truncate(truncate)
    injection = _prepare(lm, injection, len(prompts))
    outputs = []
    with torch.set_grad_enabled(injection is not None and injection.requires_grad):
        for rows in batches(len(prompts), batch_size):
            enc = encode(lm, prompts[rows], truncate, first_index=rows.start)
            if lm.remote is not None:  # sent to NDIF (an additive injection only)
                outputs.append(remote_logits(lm, enc, injection, rows))
                continue
            last = torch.tensor([enc["input_ids"].shape[1] - 1])
            with lm.nn.trace(**enc, logits_to_keep=last):
                if injection is not None:
                    injection.apply(lm, rows, enc["attention_mask"])
                logits = lm.nn.output.logits.save()
            outputs.append(logits[:, -1].float())
    out = torch.cat(outputs).cpu()
    if warn:
        warn_bad_logit_rows(bad_logit_rows(out), "next_token_logits")
    return out


def last_token_states(lm: LanguageModel, prompts: Sequence[str], batch_size: int = 8,
                      truncate: str | None = None) -> torch.Tensor:
    """Decoder-block outputs at the last prompt token, ``[B, L, d]`` (the Hendel et al. task-vector states)."""
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    check_truncate(truncate)
    chunks = []
    with torch.no_grad():
        for rows in batches(len(prompts), batch_size):
            enc = encode(lm, prompts[rows], truncate, first_index=rows.start)
            if lm.remote is not None:
                chunks.append(remote_states(lm, enc))
                continue
            states: list[torch.Tensor] = []
            with lm.nn.trace(**enc, logits_to_keep=torch.tensor([enc["input_ids"].shape[1] - 1])):
                for i in range(lm.num_layers):
                    states.append(lm.nn_layer(i).output[:, -1].save())
            chunks.append(torch.stack([s.float() for s in states], dim=1))
    return torch.cat(chunks).cpu()


def generate(
    lm: LanguageModel,
    prompts: Sequence[str],
    injection: Intervention | None = None,
    max_new_tokens: int = 16,
    steps: str = "first",
    batch_size: int = 8,
    truncate: str | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    return_logprobs: bool = False,
) -> list[str] | Generation:
    """Continuations of `prompts`: greedy (``temperature=0``, the default) or sampled.

    ``steps="first"`` injects only while reading the prompt (the KV cache carries the effect forward: the paper);
    ``steps="all"`` also injects at every generated token (what llama.cpp's control vectors and lm-eval's ``steered``
    model do). An :class:`~workbench.Injection` with ``[n, L, d]`` vectors steers each prompt with its own.
    Sampling (:mod:`workbench.core.sampling`): ``softmax(logits / temperature)`` restricted to the `top_k` most likely
    tokens, then to the smallest set of probability `top_p`; each prompt draws from its own generator seeded from
    (`seed`, its index), so a seed reproduces the texts whatever the batch size (``seed=None``: a fresh one, recorded
    in the result). A prompt stops at EOS, after `max_new_tokens`, or once its text contains one of the `stop`
    strings (its text is cut before the first one). Prompt + `max_new_tokens` must fit ``lm.max_length``
    (``truncate="left"`` cuts the prompt's start to make room). Returns the texts, or with ``return_logprobs=True`` a
    :class:`~workbench.core.sampling.Generation` (texts, token ids, the model's log-probability of each token, why
    each prompt stopped, the seed). Prompts whose logits were NaN/inf or constant at some step (their continuation is
    garbage) give one :class:`BadLogitsWarning`.
    """
    require_local(lm, "generation")
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    check_truncate(truncate)
    check_choice(steps, "steps", ("first", "all"))
    check_int(max_new_tokens, "max_new_tokens")
    if max_new_tokens >= lm.max_length:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {lm.name}'s "
                         f"{lm.max_length} positions")
    sampling = check_sampling(temperature, top_p, top_k, seed)
    stop = check_stop(stop)
    if not isinstance(return_logprobs, bool):
        raise ValueError(f"return_logprobs must be True or False, got {return_logprobs!r}")
    injection = _prepare(lm, injection, len(prompts))
    parts: list[Generation] = []
    bad: list[torch.Tensor] = []
    with torch.no_grad():
        for rows in batches(len(prompts), batch_size):
            enc = encode(lm, prompts[rows], truncate, first_index=rows.start, reserve=max_new_tokens)
            decoder = Decoder(lm.tokenizer, sampling, stop, rows.start, len(prompts[rows]), lm.device,
                              return_logprobs)
            bad.append(_generate_batch(lm, enc, rows, injection, max_new_tokens, steps, decoder))
            parts.append(decoder.result())
    warn_bad_logit_rows(torch.cat(bad), "generate")
    result = join(parts)
    return result if return_logprobs else result.texts


def _generate_batch(lm: LanguageModel, enc: dict[str, torch.Tensor], rows: slice, injection: Intervention | None,
                    max_new_tokens: int, steps: str, decoder: Decoder) -> torch.Tensor:
    """Run one batch through `decoder`; ``[b]`` bool: the prompt's logits were NaN/inf or constant at a step before
    it ended."""
    mask, positions = enc["attention_mask"], enc["position_ids"]
    bad = torch.zeros(mask.shape[0], dtype=torch.bool)
    inputs: dict[str, Any] = dict(enc)
    cache, token = None, None
    for step in range(max_new_tokens):
        if cache is not None:
            inputs = {"input_ids": token[:, None], "attention_mask": mask, "position_ids": positions[:, -1:] + 1}
            positions = torch.cat([positions, inputs["position_ids"]], dim=1)
        extra = {cache_kwarg(lm.hf): cache} if cache is not None else {}
        with lm.nn.trace(**inputs, use_cache=True, logits_to_keep=1, **extra):
            if injection is not None and (step == 0 or steps == "all"):
                step_mask = mask if step == 0 else torch.ones_like(mask[:, -1:])
                injection.apply(lm, rows, step_mask)
            out = lm.nn.output.save()
        cache = output_cache(out)
        bad |= (bad_logit_rows(out.logits[:, -1]) & ~decoder.done).cpu()  # a finished prompt's later logits: no
        token = decoder.step(out.logits[:, -1])
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if decoder.finished:
            break
    return bad


def edits_last_token_only(intervention: Intervention | None) -> bool:
    """Whether `intervention` leaves every position before the last prompt token untouched (so bodies can be shared)."""
    return intervention is None or as_intervention(intervention).positions == "last"


def body_edit(intervention: Intervention | None) -> tuple[Hashable, Intervention] | None:
    """(key, edit) when `intervention` edits every token identically for every prompt (I2CL's context vectors):
    bodies computed under the edit are shared too, kept apart by the key; None otherwise."""
    if intervention is None or edits_last_token_only(intervention):
        return None
    method = getattr(intervention, "body_edit", None)
    return method() if callable(method) else None


def row_body_edits(intervention: Intervention | None, n: int) -> list[tuple[Hashable, Intervention]] | None:
    """Per prompt, the (key, edit) of a body edit that differs between the `n` prompts (I2CL's context vectors on an
    unseen task, one task's per prompt): prompts with the same key share bodies computed under that edit. None when
    `intervention` is not such an edit."""
    if intervention is None or edits_last_token_only(intervention):
        return None
    method = getattr(intervention, "row_edits", None)
    edits = method() if callable(method) else None
    return edits if edits is not None and len(edits) == n else None


def joint_intervention(parts: Sequence[Intervention | None], n: int, num_layers: int,
                       ) -> tuple[bool, Intervention | None]:
    """(True, one intervention) editing the prompts of several parts (`n` prompts each, in order) in one pass exactly
    as each part alone: last-token injections or none are stacked row by row (:func:`stack_injections`); parts that
    all make the same body edit (I2CL's context vectors of one task) are that edit. (False, None) otherwise."""
    if stackable(parts):
        return True, stack_injections([(p, n) for p in parts], num_layers)
    edits = [body_edit(p) for p in parts]
    if all(e is not None for e in edits) and len({e[0] for e in edits}) == 1:
        return True, edits[0][1]
    return False, None


def shares_bodies(intervention: Intervention | None) -> bool:
    """Whether shared-prefix evaluation can run `intervention` (last-token edits, or a shareable body edit)."""
    return edits_last_token_only(intervention) or body_edit(intervention) is not None


def tokenize(lm: LanguageModel, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of `prompts` exactly as :func:`workbench.core.inference.encode` makes them (same BOS rule)."""
    add = any(add_bos(lm.tokenizer, p) for p in prompts)
    return [list(ids) for ids in lm.tokenizer(list(prompts), add_special_tokens=add)["input_ids"]]


def body_lengths(lm: LanguageModel, prompts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """(token ids of `prompts`, per prompt the length of its shared body): pass all prompts that may share bodies.

    The same checks as :func:`encode`: every prompt has a token and fits ``lm.max_length`` (no truncation here)."""
    seqs = tokenize(lm, prompts)
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) tokenizes to zero tokens: give it some text")
        if len(s) > lm.max_length:
            raise PromptTooLong(f"prompt {i} has {len(s)} tokens, more than the limit of {lm.max_length} "
                                f"({lm.name} has {lm.max_length} positions); shorten it (or evaluate with cache=False "
                                "and truncate='left')", i, len(s), lm.max_length)
    return seqs, shared_bodies(seqs)


def cached_next_token_logits(
    lm: LanguageModel,
    prompts: Sequence[str],
    intervention: Any = None,
    cache: BodyCache | None = None,
    scope: Hashable = None,
    batch_size: int = 8,
    bodies: Sequence[int] | None = None,
    owner: Hashable = None,
    share_tails: bool = False,
) -> torch.Tensor:
    """Logits ``[B, V]`` at the last prompt token, like ``next_token_logits``, with every shared body run once.

    Bodies are the longest token prefixes the prompts of this call share (:func:`shared_bodies`), or the lengths
    `bodies` computed by :func:`body_lengths` over a larger group (e.g. all variants of a batch of items). The
    intervention must edit only the last prompt token (``positions="last"``), or every token alike for every prompt
    (:func:`body_edit`: bodies are then computed under the edit, kept apart by its key, and the tail is edited at
    every token); its rows are the prompts' indices.
    Runs without autograd. `scope` keeps bodies of models whose weights differ apart; `owner` names the caller (see
    :class:`~workbench.core.kv_cache.BodyCache`). ``share_tails=True`` (last-token interventions only) also keeps
    each whole prompt but its last token, computed from its body: other methods that read the same prompts then run
    one token per prompt (:func:`evaluate_many` sets it when several methods read the same queries). A remote
    (NDIF) model runs the prompts uncached (:func:`next_token_logits`).
    """
    prompts = check_prompts(prompts)
    if lm.remote is not None:  # keys and values would travel both ways: NDIF runs each prompt whole (same logits)
        return next_token_logits(lm, prompts, intervention, batch_size=batch_size, warn=False)
    edit = body_edit(intervention)
    if not edits_last_token_only(intervention) and edit is None:
        raise ValueError("cached logits need an intervention that edits only the last prompt token "
                         f"(positions='last') or every token alike for every prompt; got {type(intervention).__name__}"
                         f" with positions={intervention.positions!r}: use cache=False")
    if intervention is not None:
        intervention.check(lm, len(prompts))
    cache = cache if cache is not None else BodyCache(0)
    seqs, cut = body_lengths(lm, prompts)
    if bodies is not None:
        if len(bodies) != len(prompts) or any(not 0 <= b < len(s) for b, s in zip(bodies, seqs)):
            raise ValueError("bodies must give, per prompt, a body length shorter than the prompt")
        cut = list(bodies)
    outputs = []
    with torch.no_grad():
        for rows in batches(len(prompts), batch_size):
            idx = range(rows.start, rows.stop)
            body_ids = [tuple(seqs[i][: cut[i]]) for i in idx]
            kvs = cache.bodies(lm, body_ids, scope, owner, edit)
            tails = [seqs[i][cut[i]:] for i in idx]
            if share_tails and edit is None:  # everything but the last token does not depend on the intervention
                kvs = cache.extend(lm, body_ids, kvs, [tuple(seqs[i][:-1]) for i in idx], scope, owner)
                tails = [seqs[i][-1:] for i in idx]
            outputs.append(_tail_logits(lm, kvs, tails, intervention, rows, cache))
    return torch.cat(outputs).cpu()


def _tail_logits(lm: LanguageModel, kvs: list[KV | None], tails: list[list[int]], intervention: Any, rows: slice,
                 cache: BodyCache) -> torch.Tensor:
    body_cache, inputs, tail_mask = tail_inputs(lm, kvs, tails)
    cache.tail_tokens += sum(len(t) for t in tails)
    kwargs = {cache_kwarg(lm.hf): body_cache} if body_cache is not None else {}
    with lm.nn.trace(**inputs, use_cache=True, logits_to_keep=torch.tensor([tail_mask.shape[1] - 1]), **kwargs):
        if intervention is not None:  # the trace sees only the tail tokens: their mask says where "last" is
            intervention.apply(lm, rows, tail_mask.to(lm.device))
        logits = lm.nn.output.logits.save()
    return logits[:, -1].float()
