"""A ``self:K`` generator's states during cached evaluation, from the prompt bodies the evaluation runs anyway.

Cached evaluation (:func:`workbench.eval.cached_variants.run_variants_cached`) computes, per batch of items, the
keys/values of every shared prompt body once (:class:`~workbench.core.kv_cache.BodyCache`) and runs only the tails.
A ``self:K`` generator (:class:`~workbench.core.encoders.SelfEncoder`) reads the large model's clean state of the same
rendered prompt after block K, which its own pass would recompute from token 0. Inside :func:`sharing_bodies` the
encoder asks :func:`shared_states` first: for prompts the evaluation holds, the states come from those bodies (the
same cache keys, scope and owner as the evaluation's, so the bodies run once for both) plus the tail tokens through
blocks 0..K only. Prompts it does not hold (the bare input ``"Q: {input}\\nA:"``, a truncated prompt, another model)
return None and the encoder runs its own pass, as outside the context.

Why it is exact: a real token's keys/values do not depend on later tokens, and the clean pass of a tail after its
body's cache is the clean pass of the whole prompt (the equality the evaluation's cache rests on); the evaluation's
steered pass reads the same bodies, which no last-token injection changes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from workbench.core.kv_cache import BodyCache
    from workbench.core.models import LanguageModel


class _Stop(Exception):
    """Ends a forward pass after block K, carrying the block's output."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


def run_to_block(lm: LanguageModel, block: int, **inputs: Any) -> torch.Tensor:
    """Output ``[B, T, d]`` of decoder block `block` for ``lm.hf(**inputs)``, without autograd or autocast; the
    blocks after it do not run (a forward hook on it ends the pass)."""
    def stop(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    handle = lm.layers[block].register_forward_hook(stop)
    try:
        with torch.no_grad(), torch.autocast(device_type=lm.device.type, enabled=False):
            lm.hf(**inputs)
    except _Stop as done:
        return done.output
    finally:
        handle.remove()
    raise RuntimeError(f"block {block} of {lm.name} did not run")  # pragma: no cover


class SharedBodies:
    """The prompts of one cached evaluation batch (all its variants; templated `texts`, rendered by ``lm.render``
    when a ``self:K`` encoder first asks), their bodies in `cache`."""

    def __init__(self, lm: LanguageModel, texts: Sequence[str], cache: BodyCache, scope: Hashable = None,
                 owner: Hashable = None, batch_size: int = 16, share_tails: bool = False):
        self.lm, self.texts, self.cache = lm, list(texts), cache
        self.scope, self.owner, self.batch_size, self.share_tails = scope, owner, batch_size, share_tails
        self._seqs: list[list[int]] | None = None
        self._cuts: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self._states: dict[int, dict[int, torch.Tensor]] = {}  # block -> prompt index -> state
        self.computed = 0  # prompts whose states came from the bodies (for tests and the efficiency notes)

    def _tokens(self) -> None:
        from workbench.core.inference import body_lengths  # inference imports this module's users: import late

        if self._seqs is None:
            self._seqs, self._cuts = body_lengths(self.lm, [self.lm.render(t) for t in self.texts])
            self._index = {tuple(s): i for i, s in enumerate(self._seqs)}

    def states(self, lm: LanguageModel, block: int, seqs: Sequence[Sequence[int]]) -> torch.Tensor | None:
        """``[B, d]`` float32 clean states after `block` at the last token of each of `seqs` (token ids as the
        encoder makes them), or None unless this is the evaluation's model and it holds every one of `seqs`."""
        if lm is not self.lm or not seqs:
            return None
        self._tokens()
        rows = [self._index.get(tuple(s)) for s in seqs]
        if any(r is None for r in rows):
            return None
        done = self._states.setdefault(block, {})
        todo = sorted({r for r in rows if r not in done})
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start: start + self.batch_size]
            done.update(zip(chunk, self._run(block, chunk)))
        return torch.stack([done[r] for r in rows])

    def _run(self, block: int, rows: Sequence[int]) -> torch.Tensor:
        """States of `rows`: their bodies from the cache (kept or computed and kept, as the evaluation would), then
        the rest of each prompt through blocks 0..`block` (with ``share_tails``, the prompt but its last token is
        kept too, as the evaluation keeps it, and only the last token runs)."""
        from workbench.core.kv_cache import cache_kwarg, tail_inputs

        lm, seqs = self.lm, self._seqs
        assert seqs is not None
        bodies = [tuple(seqs[r][: self._cuts[r]]) for r in rows]
        kvs = self.cache.bodies(lm, bodies, self.scope, self.owner)
        tails = [seqs[r][self._cuts[r]:] for r in rows]
        if self.share_tails:
            kvs = self.cache.extend(lm, bodies, kvs, [tuple(seqs[r][:-1]) for r in rows], self.scope, self.owner)
            tails = [seqs[r][-1:] for r in rows]
        body_cache, inputs, _ = tail_inputs(lm, kvs, tails)
        extra = {cache_kwarg(lm.hf): body_cache} if body_cache is not None else {}
        out = run_to_block(lm, block, **inputs, use_cache=True, **extra)
        self.computed += len(rows)
        return out[:, -1].float()  # left-padded tails: the last column is every row's last token


_ACTIVE: ContextVar[SharedBodies | None] = ContextVar("workbench_shared_bodies", default=None)


@contextmanager
def sharing_bodies(lm: LanguageModel, texts: Sequence[str], cache: BodyCache, **kwargs: Any,
                   ) -> Iterator[SharedBodies]:
    """Within the block, ``self:K`` encoders read the states of `texts`' prompts from `cache`'s bodies (`kwargs`:
    scope, owner, batch_size, share_tails as the evaluation uses them)."""
    shared = SharedBodies(lm, texts, cache, **kwargs)
    token = _ACTIVE.set(shared)
    try:
        yield shared
    finally:
        _ACTIVE.reset(token)


def shared_states(lm: LanguageModel, block: int, seqs: Sequence[Sequence[int]]) -> torch.Tensor | None:
    """The active :class:`SharedBodies`' states of `seqs` after `block`, or None (no context, or prompts it lacks)."""
    shared = _ACTIVE.get()
    return None if shared is None else shared.states(lm, block, seqs)
