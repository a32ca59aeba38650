"""The answer loss on the naive path: teacher-forced cross-entropy on the answer tokens, through nnsight.

Module contents: :func:`answer_loss` / :func:`answer_losses` (texts in), :func:`pair_losses` (tokenized pairs in),
:func:`per_example_ce`. :mod:`workbench.atv.fastpath` computes the same loss with cached prefixes; tests pin the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from workbench.atv.examples import pad_left, tokenize_pair
from workbench.core.interventions import Injection, MaskedInjection
from workbench.core.models import LanguageModel

IGNORE = -100


def per_example_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over each row's labelled positions ([B, K, V] logits, [B, K] labels, IGNORE elsewhere)
    and whether the argmax at each row's first labelled position is right (first-token accuracy)."""
    valid = labels != IGNORE
    # over the last dimension of [B*K, V] rows: ~10x faster than the class dimension of [B, V, K] (a strided
    # log-softmax; benchmarks/train_components.py), the same values up to rounding
    flat = logits.float().reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, labels.clamp(min=0).reshape(-1), reduction="none").view(labels.shape)
    losses = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)
    first = valid.float().argmax(1)
    rows = torch.arange(labels.shape[0])
    correct = logits[rows, first].argmax(-1) == labels[rows, first]
    return losses, correct


def to_injection(injection: Any) -> Injection | None:
    if injection is None or isinstance(injection, Injection):
        return injection
    raise ValueError(f"injection must be a wb.Injection or None, got {type(injection).__name__}")


def pair_losses(
    lm: LanguageModel, pairs: Sequence[tuple[list[int], list[int]]], injection: Injection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive path on tokenized (prompt, answer) pairs: per-example losses [B] and first-token correctness [B]."""
    seqs = [p + a for p, a in pairs]
    ids, mask = pad_left(seqs, lm.tokenizer.pad_token_id)
    B, T = ids.shape
    ans = [len(a) for _, a in pairs]
    K = max(ans) + 1  # logits needed: last prompt token .. second-to-last answer token
    labels = torch.full((B, K), IGNORE, dtype=torch.long)
    last_prompt = torch.zeros((B, T))
    for i, (_, a) in enumerate(pairs):
        labels[i, K - 1 - len(a): K - 1] = torch.tensor(a)
        last_prompt[i, T - 1 - len(a)] = 1
    enc = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device),
           "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(lm.device)}
    if injection is not None:
        injection.check(lm, B)
        if injection.positions == "last":
            injection = MaskedInjection(injection, last_prompt)
    with lm.nn.trace(**enc, logits_to_keep=K):  # autograd follows the caller's grad mode
        if injection is not None:
            injection.apply(lm, slice(None), enc["attention_mask"])
        logits = lm.nn.output.logits.save()
    return per_example_ce(logits[:, -K:], labels.to(logits.device))


def answer_losses(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example answer cross-entropy [B] and first-token correctness [B] (naive path)."""
    if isinstance(prompts, str) or isinstance(targets, str) or len(prompts) != len(targets) or not prompts:
        raise ValueError(f"need equal, non-empty lists of prompts and targets (got {len(prompts)} and {len(targets)})")
    pairs = [tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)]
    return pair_losses(lm, pairs, to_injection(injection))


def answer_loss(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None
) -> torch.Tensor:
    """Teacher-forced cross-entropy on the target tokens only, averaged per example then over the batch.

    `prompts` are what the model reads (already rendered); `targets` are ``" " + output``. With an injection at
    positions "last" the vector goes to the last *prompt* token; "all" edits every real token, answer included
    (the official code under transformers <= 4.53). Gradients reach the injection's vectors (and, for LoRA, any
    trainable weights of the model).
    """
    return answer_losses(lm, prompts, targets, injection)[0].mean()
