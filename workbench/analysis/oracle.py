"""The oracle of the ceilings table: per-query vectors optimized on the gold answer (issue 23 §2).

What can last-token injection do at best for one query? Start from the ATV vector of that query and take `steps`
Adam steps on the teacher-forced cross-entropy of the gold answer's first `answer_tokens` tokens through the frozen
LLM, injected at the ATV method's own λ, layers and positions. The loss is the training loss of the workbench:
:func:`workbench.atv.fastpath.fast_pair_losses` for positions "last" (the prompt's keys and values are computed once
and reused by every step), :func:`workbench.atv.loss.pair_losses` for "all". The optimized variable is the edit
``λ·v`` the hidden state receives, so `lr` is in hidden-state units whatever λ is (Adam on ``v`` with ``lr / λ``);
each prompt's vector only sees its own loss (the batch loss is a sum, and Adam is per coordinate).

Module contents: :func:`optimize_vectors` (prompts + gold answers -> optimized vectors), :class:`Oracle` (the same
as a :class:`~workbench.methods.base.Method`, so :func:`workbench.evaluate` scores it like any other method; it
reads the gold answer: a ceiling, never a result to report as a method).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.atv.examples import tokenize_pair
from workbench.atv.fastpath import PrefixStore, fast_pair_losses, head_lengths
from workbench.atv.generator import ATVGenerator
from workbench.atv.loss import pair_losses
from workbench.core.checks import check_int, check_number, check_optional_int
from workbench.core.interventions import Injection, LayerSpec, check_positions, check_scale
from workbench.methods.atv import ATV
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.prompts import target_text

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

#: Default Adam steps and learning rate (on the edit λ·v, hidden-state units) of the oracle.
STEPS, LR = 20, 0.05


def check_oracle_settings(steps: int, lr: float, answer_tokens: int | None) -> tuple[int, float, int | None]:
    """(steps, lr, answer_tokens) checked: a positive int, a positive finite number, None or a positive int."""
    return (check_int(steps, "oracle steps (Adam steps per query)"),
            check_number(lr, "oracle lr (Adam learning rate on the edit λ·v)"),
            check_optional_int(answer_tokens, "answer_tokens (gold-answer tokens in the oracle's loss)"))


def optimize_vectors(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], start: torch.Tensor, scale: float,
    layers: LayerSpec = "all", positions: str = "last", steps: int = STEPS, lr: float = LR,
    answer_tokens: int | None = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt vectors ``[B, L, d]`` (float32) that lower the cross-entropy of each gold answer, from `start`.

    `prompts` are what the model reads (rendered), `targets` the answers ``" " + output``; the loss covers the first
    `answer_tokens` answer tokens (None: all). Returns (vectors, loss per prompt before, loss per prompt after).
    """
    steps, lr, answer_tokens = check_oracle_settings(steps, lr, answer_tokens)
    scale, positions = check_scale(scale), check_positions(positions)
    if scale == 0:
        raise ValueError("scale λ = 0 injects nothing: the oracle needs the λ the ATV vectors are injected at")
    if isinstance(prompts, str) or isinstance(targets, str) or len(prompts) != len(targets) or not prompts:
        raise ValueError(f"need equal, non-empty lists of prompts and targets (got {len(prompts)} and {len(targets)})")
    if not isinstance(start, torch.Tensor) or tuple(start.shape) != (len(prompts), lm.num_layers, lm.hidden_size):
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise ValueError(f"start vectors must be [B, L, d] = [{len(prompts)}, {lm.num_layers}, {lm.hidden_size}], "
                         f"got {shape}")
    pairs = [tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)]
    pairs = [(p, a[:answer_tokens] if answer_tokens else a) for p, a in pairs]
    edit = (scale * start.detach().float()).clone().requires_grad_(True)
    injection = Injection(edit, scale=1.0, layers=layers, positions=positions)
    if positions == "last":
        store, keys = PrefixStore(), list(range(len(pairs)))
        heads = head_lengths([p[:-1] for p, _ in pairs], [0] * len(pairs))

        def losses() -> torch.Tensor:
            return fast_pair_losses(lm, pairs, injection, store, keys, heads)[0]
    else:
        def losses() -> torch.Tensor:
            return pair_losses(lm, pairs, injection)[0]

    optimizer = torch.optim.Adam([edit], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = losses()
            if step == 0:
                before = loss.detach().float().cpu()
            loss.sum().backward()
            optimizer.step()
    with torch.no_grad():
        after = losses().float().cpu()
    return edit.detach() / scale, before, after


class Oracle(Method):
    """Per query, the ATV vector optimized on the gold answer (:func:`optimize_vectors`), injected as ATV injects.

    ``atv``: a :class:`~workbench.methods.ATV` method (or a generator, wrapped with its recorded settings); λ, layers
    and positions are its own. Rows carry ``oracle_loss_start`` / ``oracle_loss_end`` (the loss before and after)
    and ``oracle_shift`` (how far the vector moved: ``‖v_oracle - v_ATV‖ / ‖v_ATV‖``, inf from a zero ATV vector).
    """

    name = "oracle"

    def __init__(self, atv: ATV | ATVGenerator, steps: int = STEPS, lr: float = LR, answer_tokens: int | None = 1):
        self.atv = as_atv(atv)
        self.steps, self.lr, self.answer_tokens = check_oracle_settings(steps, lr, answer_tokens)
        if self.atv.scale == 0:
            raise ValueError("the ATV method injects at λ = 0: the oracle's vectors would change nothing")

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        base = self.atv.prepare(lm, task, items, texts, seed)
        start = base.intervention.vectors  # type: ignore[union-attr]
        targets = [target_text(it.output) for it in items]
        vectors, before, after = optimize_vectors(lm, base.prompts, targets, start, self.atv.scale, self.atv.layers,
                                                  self.atv.positions, self.steps, self.lr, self.answer_tokens)
        injection = Injection(vectors, scale=self.atv.scale, layers=self.atv.layers, positions=self.atv.positions)
        shift = ((vectors - start.float()).flatten(1).norm(dim=1) / start.float().flatten(1).norm(dim=1)).tolist()
        info = [{"oracle_loss_start": float(b), "oracle_loss_end": float(a), "oracle_shift": r}
                for b, a, r in zip(before, after, shift)]
        return PreparedBatch(prompts=base.prompts, intervention=injection, info=info)

    def config(self) -> dict:
        return {"name": self.name, "steps": self.steps, "lr": self.lr, "answer_tokens": self.answer_tokens,
                "atv": self.atv.config()}


def as_atv(atv: ATV | ATVGenerator) -> ATV:
    """`atv` as an ATV method (a generator is wrapped with the settings it was trained with), else ValueError."""
    if isinstance(atv, ATVGenerator):
        return ATV(atv)
    if not isinstance(atv, ATV):
        raise ValueError(f"atv must be a wb.methods.ATV method or a wb.ATVGenerator, got {type(atv).__name__}")
    return atv
