"""Where does an ATV generator's query-dependent signal go? Measurements with numbers, not assumptions.

* :func:`projection_parts` -- split each generated vector ``v_i = P(s_i)`` (``P`` the affine expansion) into its
  constant part ``P(0)`` (the bias), the part the *mean* query adds ``P(s̄) - P(0)``, and the query-specific part
  ``P(s_i) - P(s̄)`` (exact: ``P`` is affine). A query-specific part much smaller than the rest = a generator that
  has collapsed to one vector.
* :func:`vector_spread` -- per layer: norm of the mean vector and the mean distance of a query's vector from it.
* :func:`edit_ratios` -- per layer: ``‖λ v_l‖`` and ``‖λ (v_l - v̄_l)‖`` against the norm of the unsteered hidden
  state at the edited (last prompt) token: is the edit too small to matter, or large enough to swamp the prompt?
* :func:`gradient_split` -- for one batch: the gradient norm that reaches the projection's weight, its bias and the
  small model, and the loss gradient on the vectors split into its batch mean and the per-query deviation.
* :func:`probe_predictions` / :func:`probe_accuracy` -- a logistic-regression probe (sklearn) on the small model's
  own pooled states: how much of the task a linear read-out of the generator's input could get.
* :func:`paired_bootstrap` -- the difference of two methods' accuracy on the same rows with an item-clustered
  bootstrap interval (each item's variants resampled together).

``benchmarks/atv_learns.py`` uses them on the embedded default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench.core.checks import check_number
from workbench.core.inference import last_token_states
from workbench.core.interventions import Injection, resolve_layers

if TYPE_CHECKING:
    from workbench.atv.generator import ATVGenerator
    from workbench.core.models import LanguageModel

ROW_KEYS = ("task", "item", "seed", "template", "prefix")


def _check_vectors(vectors: torch.Tensor) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 3 or vectors.shape[0] < 2:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must be a tensor [B, L, d] with B >= 2 queries, got {shape}")
    return vectors.detach().float()


def vector_spread(vectors: torch.Tensor) -> pd.DataFrame:
    """Per layer of ``[B, L, d]`` vectors: ``mean_norm`` = ‖v̄_l‖, ``spread`` = mean_i ‖v_il - v̄_l‖ and their ratio
    ``spread_ratio`` (0: every query gets the same vector)."""
    v = _check_vectors(vectors)
    mean = v.mean(0)
    spread = (v - mean).norm(dim=-1).mean(0)
    norm = mean.norm(dim=-1)
    return pd.DataFrame({"layer": range(v.shape[1]), "mean_norm": norm.numpy(), "spread": spread.numpy(),
                         "spread_ratio": (spread / norm.clamp(min=1e-12)).numpy()})


@torch.no_grad()
def projection_parts(generator: ATVGenerator, states: torch.Tensor) -> dict[str, float]:
    """Mean norm over queries (whole ``L*d`` vector) of the bias part ``P(0)``, the mean-query part ``P(s̄) - P(0)``
    and the query-specific part ``P(s_i) - P(s̄)`` of ``v_i = P(s_i)``, for small-model states ``[B, d_s]`` (with
    ``input_norm`` the standardised states are what ``P`` reads); plus ``query_share`` = query-specific / ‖v_i‖
    (mean over queries)."""
    if not isinstance(states, torch.Tensor) or states.dim() != 2 or states.shape[0] < 2:
        raise ValueError(f"states must be a tensor [B, d_s] with B >= 2, got {getattr(states, 'shape', states)!r}")
    proj = generator.projection
    dtype = next(proj.parameters()).dtype
    s = states.to(dtype)
    if getattr(generator, "input_norm", False):  # what the projection reads: the standardised states
        s = (s - generator.input_mean.to(dtype)) / generator.input_scale.to(dtype)
    out = proj(s).float()
    zero = proj(torch.zeros_like(s[:1])).float()
    mean = proj(s.mean(0, keepdim=True)).float()
    query = (out - mean).norm(dim=-1)
    return {"bias": float(zero.norm()), "mean_query": float((mean - zero).norm()),
            "query_specific": float(query.mean()), "vector": float(out.norm(dim=-1).mean()),
            "query_share": float((query / out.norm(dim=-1).clamp(min=1e-12)).mean())}


def edit_ratios(lm: LanguageModel, vectors: torch.Tensor, scale: float, prompts: Sequence[str],
                layers: Any = "all", batch_size: int = 8) -> pd.DataFrame:
    """Per layer: the edit against the unsteered hidden state at the last prompt token of `prompts` (rendered).

    Columns: ``state_norm`` (mean ‖h_l‖), ``edit_ratio`` (mean ‖λ v_l‖ / ‖h_l‖, 0 at layers not edited),
    ``query_ratio`` (mean ‖λ (v_l - v̄_l)‖ / ‖h_l‖: the query-specific part) and ``cumulative_ratio``
    (‖Σ_{k≤l} λ v_k‖ / ‖h_l‖: what the residual stream has received up to layer l if nothing else changed).
    """
    v = _check_vectors(vectors)
    if len(prompts) != v.shape[0]:
        raise ValueError(f"{v.shape[0]} vectors for {len(prompts)} prompts")
    Injection(vectors, scale, layers).check(lm, len(prompts))
    h = last_token_states(lm, list(prompts), batch_size).float()  # [B, L, d]
    edited = torch.zeros(v.shape[1], dtype=torch.bool)
    edited[resolve_layers(layers, lm.num_layers)] = True
    edit = scale * v * edited[None, :, None]
    norm = h.norm(dim=-1).clamp(min=1e-12)
    return pd.DataFrame({
        "layer": range(v.shape[1]), "state_norm": norm.mean(0).numpy(),
        "edit_ratio": (edit.norm(dim=-1) / norm).mean(0).numpy(),
        "query_ratio": ((edit - edit.mean(0)).norm(dim=-1) / norm).mean(0).numpy(),
        "cumulative_ratio": (edit.cumsum(1).norm(dim=-1) / norm).mean(0).numpy(),
    })


def gradient_split(lm: LanguageModel, generator: ATVGenerator, prompts: Sequence[str], targets: Sequence[str],
                   generator_texts: Sequence[str], scale: float, layers: Any = "all") -> dict[str, float]:
    """Gradient norms of one batch's mean answer loss (naive path, generator in its current mode, float32).

    ``weight`` / ``bias`` / ``encoder``: norm of the gradient on the projection's weight(s), bias(es) and the
    small model's parameters. ``vector_mean`` / ``vector_query``: the loss gradient on the vectors ``g_i`` split
    into the batch mean ‖ḡ‖ and the mean per-query deviation mean_i ‖g_i - ḡ‖ (large deviation: the loss asks for
    query-specific vectors). Parameter gradients are cleared afterwards.
    """
    from workbench.atv.loss import answer_losses

    if not (len(prompts) == len(targets) == len(generator_texts)) or len(prompts) < 2:
        raise ValueError(f"need >= 2 prompts with as many targets and generator texts, got {len(prompts)}, "
                         f"{len(targets)}, {len(generator_texts)}")
    generator.zero_grad(set_to_none=True)
    vectors = generator(list(generator_texts))
    vectors.retain_grad()
    losses, _ = answer_losses(lm, [lm.render(p) for p in prompts], list(targets),
                              Injection(vectors.to(lm.dtype), scale, layers))
    losses.mean().backward()
    g = vectors.grad.detach().float().flatten(1) * len(prompts)  # per-query gradient (undo the batch mean)

    def norm(params: list[torch.Tensor]) -> float:
        grads = [p.grad.detach().float().flatten() for p in params if p.grad is not None]
        return float(torch.cat(grads).norm()) if grads else 0.0

    named = list(generator.projection.named_parameters())
    out = {"loss": float(losses.detach().mean()), "weight": norm([p for n, p in named if n.endswith("weight")]),
           "bias": norm([p for n, p in named if n.endswith("bias")]),
           "encoder": norm([p for p in generator.encoder.parameters() if p.requires_grad]),
           "vector_mean": float(g.mean(0).norm()), "vector_query": float((g - g.mean(0)).norm(dim=-1).mean())}
    generator.zero_grad(set_to_none=True)
    return out


def probe_predictions(train_states: torch.Tensor | np.ndarray, train_labels: Sequence[Any],
                      test_states: torch.Tensor | np.ndarray, C: float = 1.0, seed: int = 0) -> np.ndarray:
    """Labels a logistic-regression probe (sklearn, standardised features, inverse regularisation `C`) fit on the
    train states predicts for the test states."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_number(C, "C (the probe's inverse regularisation strength)")
    xtr, xte = (np.asarray(x.detach().float() if isinstance(x, torch.Tensor) else x)
                for x in (train_states, test_states))
    if xtr.ndim != 2 or xte.ndim != 2 or len(xtr) != len(train_labels):
        raise ValueError("states must be [N, d] with one label per train row: "
                         f"train {xtr.shape} / {len(train_labels)} labels, test {xte.shape}")
    if len(set(train_labels)) < 2:
        raise ValueError(f"the probe needs at least 2 classes in the train labels, got {sorted(set(train_labels))}")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    clf.fit(xtr, list(train_labels))
    return clf.predict(xte)


def probe_accuracy(train_states: torch.Tensor | np.ndarray, train_labels: Sequence[Any],
                   test_states: torch.Tensor | np.ndarray, test_labels: Sequence[Any], seed: int = 0,
                   C: float = 1.0) -> float:
    """Test accuracy of :func:`probe_predictions` (standardised features, inverse regularisation `C`)."""
    if len(test_states) != len(test_labels):
        raise ValueError(f"states must be [N, d] with one label per row: test {len(test_states)} rows / "
                         f"{len(test_labels)} labels")
    predicted = probe_predictions(train_states, train_labels, test_states, C=C, seed=seed)
    return float(np.mean(predicted == np.asarray(list(test_labels), dtype=object)))


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, column: str = "label_correct", n_resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of `column` in `a` minus in `b` (percentage points) on the same rows, with an item-clustered percentile
    bootstrap interval: items (task, item, seed) are resampled with replacement, each with all its variants, in both
    methods at once. Rows are matched on (task, item, seed, template, prefix); both frames must hold the same rows.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    for name, df in (("a", a), ("b", b)):
        missing = [c for c in (*ROW_KEYS, column) if c not in df.columns]
        if missing:
            raise ValueError(f"rows {name} lack column(s) {missing}; "
                             f"evaluate() rows have {list(ROW_KEYS)} and {column!r}")
        if df[column].isna().any():
            raise ValueError(f"rows {name} have missing {column!r} values (a task without labels?)")
        if df.duplicated(list(ROW_KEYS)).any():
            raise ValueError(f"rows {name} have duplicate (task, item, seed, template, prefix) rows")
    keys = list(ROW_KEYS)
    merged = a[[*keys, column]].merge(b[[*keys, column]], on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    if (merged["_merge"] != "both").any():
        n = int((merged["_merge"] != "both").sum())
        raise ValueError(f"{n} rows are in only one of the two frames: compare the same items and variants")
    merged["d"] = merged[f"{column}_a"].astype(float) - merged[f"{column}_b"].astype(float)
    per_item = merged.groupby(["task", "item", "seed"])["d"].agg(["sum", "count"])
    sums, counts = per_item["sum"].to_numpy(), per_item["count"].to_numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_resamples, len(sums)))
    stats = sums[idx].sum(1) / counts[idx].sum(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return {"diff": 100 * float(sums.sum() / counts.sum()), "low": 100 * float(low), "high": 100 * float(high),
            "n_items": int(len(sums)), "n_rows": int(counts.sum())}
