"""How :func:`workbench.generate` picks each next token and when a prompt is finished: greedy or sampled, stop strings.

* :class:`Sampling` (checked by :func:`check_sampling`): ``temperature=0`` is greedy (the argmax, exactly as before
  sampling existed); ``temperature > 0`` samples from ``softmax(logits / temperature)`` restricted by ``top_k`` then
  ``top_p`` (:func:`filter_logits`, the order transformers applies them in).
* Reproducible: every prompt draws from its own ``torch.Generator`` seeded from ``(seed, prompt index)``
  (:func:`row_generator`), never the global RNG, so a prompt's continuation does not depend on the batch size or on
  the other prompts. Draws run on the CPU in float32, so a seed gives the same tokens on any device (up to the
  logits' own rounding).
* :class:`Decoder`: the state of one batch while it generates (tokens, log-probabilities, which prompts are finished
  and why: ``"eos"``, ``"stop"`` or ``"length"``); :class:`Generation` is what ``generate(..., return_logprobs=True)``
  returns.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workbench.core.checks import check_number, check_optional_int, check_seed

FINISH_REASONS = ("eos", "stop", "length")


@dataclass(frozen=True)
class Sampling:
    """Next-token choice: greedy (``temperature == 0``) or sampled; see the module docstring."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_sampling(temperature: Any = 0.0, top_p: Any = 1.0, top_k: Any = None, seed: Any = None) -> Sampling:
    """The checked :class:`Sampling`, or a ValueError naming the bad value. ``seed=None`` draws a fresh seed (it is
    recorded in :attr:`Generation.seed`); top-k / top-p with ``temperature=0`` are refused (greedy ignores them)."""
    temperature = check_number(temperature, "temperature", minimum=0.0, strict=False)
    top_p = check_number(top_p, "top_p", minimum=0.0, strict=True, maximum=1.0)
    top_k = check_optional_int(top_k, "top_k", minimum=1)
    seed = secrets.randbits(63) if seed is None else check_seed(seed)
    if temperature == 0.0 and (top_p < 1.0 or top_k is not None):
        given = ", ".join(f"{k}={v!r}" for k, v in (("top_p", top_p), ("top_k", top_k)) if v not in (1.0, None))
        raise ValueError(f"{given} has no effect with temperature=0 (greedy decoding): pass temperature > 0 to sample")
    return Sampling(temperature, top_p, top_k, seed)


def check_stop(stop: Any) -> tuple[str, ...]:
    """Stop strings: None (none) or a list/tuple of non-empty strings, else a ValueError naming the bad entry."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        raise ValueError(f"stop must be a list of strings, got the string {stop!r}: write stop=[{stop!r}]")
    if not isinstance(stop, Sequence):
        raise ValueError(f"stop must be a list of non-empty strings, got {type(stop).__name__}")
    for i, s in enumerate(stop):
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop[{i}] must be a non-empty string, got {s!r}")
    return tuple(stop)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """``[B, V]`` logits with every token outside the top `top_k` (ties with the k-th kept) and outside the smallest
    set whose probability reaches `top_p` (the most likely token always kept) set to ``-inf``."""
    out = logits.clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def row_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of prompt `index` (its place in the caller's list) under `seed`: seeds mixed by numpy's
    SeedSequence, so (seed, index) pairs never share a stream the way ``seed + index`` would."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def pick_tokens(logits: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``[B]`` next tokens (on the logits' device): the argmax when greedy, else one draw per row from its generator.
    A row with NaN/inf logits (warned about by the caller) takes the argmax of its finite values."""
    if sampling.greedy:
        return logits.argmax(-1)
    x = filter_logits(logits.detach().float().cpu() / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = x.softmax(dim=-1)
    picks = []
    for row, generator in zip(probs, generators):
        if torch.isfinite(row).all() and row.sum() > 0:
            picks.append(torch.multinomial(row, 1, generator=generator)[0])
        else:
            picks.append(torch.nan_to_num(x[len(picks)], nan=float("-inf")).argmax())
    return torch.stack(picks).to(logits.device)


@dataclass
class Generation:
    """Continuations with what produced them; ``token_ids[i]`` / ``logprobs[i]`` cover the tokens generated for prompt
    i up to and including the one that ended it (EOS, or the token completing a stop string: ``texts[i]`` is cut
    before the stop string). ``logprobs`` are the (steered) model's own ``log_softmax(logits)`` of each token, before
    temperature and top-k/top-p."""

    texts: list[str]
    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  #: per prompt: "eos", "stop" or "length"
    seed: int | None = None  #: the seed the draws used (None when greedy)


class Decoder:
    """One batch's decoding state: call :meth:`step` with each step's ``[b, V]`` logits, then :meth:`result`."""

    def __init__(self, tokenizer: Any, sampling: Sampling, stop: tuple[str, ...], first_index: int, b: int,
                 device: torch.device, logprobs: bool = False):
        self.tokenizer, self.sampling, self.stop, self.want_logprobs = tokenizer, sampling, stop, logprobs
        self.eos = tokenizer.eos_token_id
        self.done = torch.zeros(b, dtype=torch.bool, device=device)
        self.lengths = [0] * b
        self.reasons = ["length"] * b
        self.cuts: list[int | None] = [None] * b
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.generators = [] if sampling.greedy else [row_generator(sampling.seed, first_index + i) for i in range(b)]

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick the next ``[b]`` tokens (finished prompts are fed EOS), record them, and mark finished prompts."""
        token = pick_tokens(logits, self.sampling, self.generators)
        active = (~self.done).tolist()
        if self.eos is not None:
            token = torch.where(self.done, torch.full_like(token, self.eos), token)
        if self.want_logprobs:
            self.logprobs.append(logits.float().log_softmax(-1).gather(-1, token[:, None])[:, 0].cpu())
        self.tokens.append(token)
        hit_eos = (token == self.eos).tolist() if self.eos is not None else [False] * len(active)
        ids = torch.stack(self.tokens, dim=1) if self.stop else None
        for i, alive in enumerate(active):
            if not alive:
                continue
            self.lengths[i] += 1
            if hit_eos[i]:
                self.reasons[i] = "eos"
            elif ids is not None and self._stop_at(i, ids) is not None:
                self.reasons[i] = "stop"
        if self.eos is not None:
            self.done |= token == self.eos
        stopped = [i for i, r in enumerate(self.reasons) if r == "stop"]
        if stopped:
            self.done[stopped] = True
        return token

    def _text(self, i: int, ids: torch.Tensor) -> str:
        return self.tokenizer.decode(ids[i, : self.lengths[i]], skip_special_tokens=True)

    def _stop_at(self, i: int, ids: torch.Tensor) -> int | None:
        """Where the first stop string starts in prompt i's text so far (recorded), or None."""
        text = self._text(i, ids)
        found = [p for p in (text.find(s) for s in self.stop) if p >= 0]
        self.cuts[i] = min(found) if found else None
        return self.cuts[i]

    def result(self) -> Generation:
        generated = torch.stack(self.tokens, dim=1)
        texts = [self._text(i, generated) for i in range(len(self.lengths))]
        texts = [t[:c] if c is not None else t for t, c in zip(texts, self.cuts)]
        ids = generated.tolist()
        lps = torch.stack(self.logprobs, dim=1).tolist() if self.logprobs else []
        return Generation(texts, [row[:n] for row, n in zip(ids, self.lengths)],
                          [row[:n] for row, n in zip(lps, self.lengths)], list(self.reasons),
                          None if self.sampling.greedy else self.sampling.seed)


def join(parts: Sequence[Generation]) -> Generation:
    """The batches' results as one :class:`Generation`, in order."""
    return Generation([t for p in parts for t in p.texts], [t for p in parts for t in p.token_ids],
                      [x for p in parts for x in p.logprobs], [r for p in parts for r in p.finish_reasons],
                      parts[0].seed if parts else None)
