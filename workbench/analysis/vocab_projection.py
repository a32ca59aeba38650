"""Vocabulary projection (the logit lens) of steering vectors: which tokens each layer's vector promotes.

For a vector ``v_l`` added at the output of block l, :func:`projection_scores` reads it through the model's own final
norm ``N`` and unembedding ``U`` (found per architecture: :attr:`~workbench.core.architectures.Architecture.final_norm`,
``get_output_embeddings()``; Gemma-2's logit soft-capping included), as if nothing came between block l and the
output::

    score_l = U(N(h_l + scale * v_l)) - U(N(h_l))

* ``reference=None`` (default) takes ``h_l = 0``: ``U(N(v_l)) - U(N(0))``, i.e. the vector itself through the norm
  and the unembedding with the norm's and the unembedding's biases removed (they favour the same tokens for every
  vector). This is the usual steering-vector practice; RMSNorm and LayerNorm are scale-invariant, so only the
  direction of ``v_l`` counts (λ does not).
* ``reference=h`` (block outputs ``[L, d]`` at some token, e.g. ``wb.last_token_states(lm, [query])[0]``, or
  ``[N, L, d]`` averaged over N states) gives the change of the logits the vector makes at that state, scale
  included: at the last layer it is exactly the change of the model's next-token logits (the norm is not linear, so
  it depends on the state).

:func:`logit_lens` ranks the top tokens per layer as a table; :func:`lens_table` lays them out layer × vector.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from workbench.core.architectures import architecture_of
from workbench.core.checks import check_int
from workbench.core.interventions import check_scale, resolve_layers

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


def final_norm(lm: LanguageModel) -> torch.nn.Module:
    """The norm the model applies after its last decoder block (a sibling of the blocks' ModuleList)."""
    arch = architecture_of(lm.hf)
    parent = functools.reduce(getattr, lm.layer_path.split(".")[:-1], lm.hf)
    norm = getattr(parent, arch.final_norm, None)
    if not isinstance(norm, torch.nn.Module):
        raise ValueError(f"{lm.name}: no final norm {arch.final_norm!r} next to its blocks ({lm.layer_path}); set "
                         "final_norm in workbench.core.architectures.ARCHITECTURES")
    return norm


def _logits(lm: LanguageModel, states: torch.Tensor) -> torch.Tensor:
    """The model's logits (float32) for block-output states ``[..., d]``: final norm, unembedding, soft-capping."""
    x = final_norm(lm)(states.to(device=lm.device, dtype=lm.dtype))
    logits = lm.hf.get_output_embeddings()(x).float()
    cap = getattr(lm.hf.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def _as_layers(x: Any, lm: LanguageModel, name: str, batched: bool) -> torch.Tensor:
    L, d = lm.num_layers, lm.hidden_size
    dims = (2, 3) if batched else (2,)
    if not isinstance(x, torch.Tensor) or x.dim() not in dims or tuple(x.shape[-2:]) != (L, d):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        want = f"[L, d] = [{L}, {d}]" + (f" or [N, {L}, {d}]" if batched else "")
        raise ValueError(f"{name} must be a tensor {want} for {lm.name}, got {shape}")
    if not torch.isfinite(x.detach()).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x.detach().float()


def projection_scores(lm: LanguageModel, vectors: torch.Tensor, reference: torch.Tensor | None = None,
                      scale: float = 1.0) -> torch.Tensor:
    """``[L, V]``: per layer, how much ``scale * v_l`` raises each token's logit (see the module docstring)."""
    v = _as_layers(vectors, lm, "vectors", batched=False)
    scale = check_scale(scale)
    h = torch.zeros_like(v)[None] if reference is None else _as_layers(reference, lm, "reference", batched=True)
    h = h if h.dim() == 3 else h[None]
    with torch.no_grad():
        return (_logits(lm, h + scale * v) - _logits(lm, h)).mean(0).cpu()


def logit_lens(lm: LanguageModel, vectors: torch.Tensor | Mapping[str, torch.Tensor], top_k: int = 10,
               reference: torch.Tensor | None = None, scale: float = 1.0, layers: Any = None) -> pd.DataFrame:
    """The `top_k` tokens each layer's vector promotes most: columns vector, layer, rank (1 = most), token (decoded),
    token_id, score (the logit change of :func:`projection_scores`).

    `vectors`: one ``[L, d]`` tensor (named "vector") or a mapping name -> ``[L, d]`` (e.g. a query's ATV vector and
    its task's static vector). `layers`: a layer spec; default every layer whose vector is not zero (a layer the
    method does not steer promotes nothing).
    """
    top_k = check_int(top_k, "top_k")
    named = dict(vectors) if isinstance(vectors, Mapping) else {"vector": vectors}
    if not named:
        raise ValueError("vectors is empty: give a tensor or a mapping name -> [L, d] tensor")
    rows = []
    for name, v in named.items():
        scores = projection_scores(lm, v, reference, scale)
        chosen = (resolve_layers(layers, lm.num_layers) if layers is not None
                  else [i for i in range(lm.num_layers) if bool(v[i].abs().sum() > 0)])
        k = min(top_k, scores.shape[-1])
        for layer in chosen:
            values, ids = scores[layer].topk(k)
            for rank, (value, token_id) in enumerate(zip(values.tolist(), ids.tolist()), start=1):
                rows.append({"vector": name, "layer": layer, "rank": rank,
                             "token": lm.tokenizer.decode([token_id]), "token_id": token_id, "score": value})
    return pd.DataFrame(rows, columns=["vector", "layer", "rank", "token", "token_id", "score"])


def lens_table(frame: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """:func:`logit_lens`'s rows as layer × vector, each cell the `top` tokens in rank order (``repr`` of each token,
    so spaces and newlines show)."""
    top = check_int(top, "top")
    best = frame[frame["rank"] <= top].sort_values(["vector", "layer", "rank"])
    cells = best.groupby(["layer", "vector"], sort=False)["token"].agg(lambda t: " ".join(repr(x) for x in t))
    return cells.unstack("vector").reindex(columns=list(dict.fromkeys(frame["vector"])))
