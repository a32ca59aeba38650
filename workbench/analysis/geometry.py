"""Geometry of injected vectors: per-layer norms (paper Fig. 3) and 2-D maps of per-query vectors (Fig. 4), raw or
centred on the mean over tasks (:func:`vector_map`, :func:`shared_component`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

PROJECTIONS = ("tsne", "umap", "pca")


def layer_norms(vectors: torch.Tensor | np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Mean ℓ2 norm per layer of ``scale * vectors``; vectors ``[L, d]`` or ``[N, L, d]`` -> ``[L]``."""
    v = torch.as_tensor(vectors, dtype=torch.float32)
    if v.dim() == 2:
        v = v[None]
    if v.dim() != 3:
        raise ValueError(f"vectors must be [L, d] or [N, L, d], got shape {tuple(v.shape)}")
    return (abs(scale) * v.norm(dim=-1)).mean(0).numpy()


def norms_frame(named: Mapping[str, tuple[torch.Tensor | np.ndarray, float]]) -> pd.DataFrame:
    """Tidy table (method, layer, norm) from ``{method: (vectors, scale)}``; the scale is what gets injected."""
    rows = []
    for name, (vectors, scale) in named.items():
        for layer, norm in enumerate(layer_norms(vectors, scale)):
            rows.append({"method": name, "layer": layer, "norm": float(norm)})
    return pd.DataFrame(rows)


def project_2d(features: np.ndarray | torch.Tensor, method: str = "tsne", seed: int = 0,
               pca_dims: int = 50) -> np.ndarray:
    """2-D coordinates of rows of `features` ([N, ...], flattened) by t-SNE, UMAP or PCA.

    Rows are first reduced to `pca_dims` by PCA (as is usual before t-SNE/UMAP); perplexity and neighbours are
    clipped for small N so that a handful of points still works.
    """
    from sklearn.decomposition import PCA

    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; use one of {PROJECTIONS}")
    x = np.asarray(torch.as_tensor(features, dtype=torch.float32).reshape(len(features), -1))
    n = len(x)
    if n < 3:
        raise ValueError(f"need at least 3 vectors to project, got {n}")
    x = PCA(n_components=min(pca_dims, n, x.shape[1]), random_state=seed).fit_transform(x)
    if method == "pca":
        return x[:, :2] if x.shape[1] >= 2 else np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, perplexity=float(min(30, max(1, (n - 1) / 3))), random_state=seed,
                    init="pca").fit_transform(x)
    import umap

    # n_jobs=1: what a fixed random_state forces anyway (umap warns when it has to override the default -1)
    return umap.UMAP(n_components=2, n_neighbors=int(min(15, max(2, n - 1))), random_state=seed,
                     n_jobs=1).fit_transform(x)


CENTERS = (None, "tasks")


def _center_on_tasks(x: torch.Tensor, tasks: Sequence[str]) -> torch.Tensor:
    """Rows of `x` minus the mean over tasks (each task's mean row, averaged: tasks weigh alike)."""
    names = list(dict.fromkeys(tasks))
    labels = np.asarray(tasks)
    means = torch.stack([x[torch.as_tensor(labels == t)].mean(0) for t in names])
    return x - means.mean(0)


def shared_component(vectors: Mapping[str, torch.Tensor]) -> float:
    """How much one shared direction dominates per-task vectors: ‖mean over tasks‖ / mean ‖vector‖ (1: identical
    vectors, 0: they cancel out). Flattened over layers."""
    x = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in vectors.values()])
    return float(x.mean(0).norm() / x.norm(dim=1).mean().clamp(min=1e-12))


def vector_map(
    adaptive: torch.Tensor,
    tasks: Sequence[str],
    texts: Sequence[str],
    static: Mapping[str, torch.Tensor] | None = None,
    method: str = "tsne",
    seed: int = 0,
    center: str | None = None,
) -> pd.DataFrame:
    """2-D map of per-query vectors ``[N, L, d]`` next to static per-task vectors ``{task: [L, d]}``.

    ``center="tasks"`` first subtracts, from each kind (adaptive, static) of vectors, its mean over tasks: what all
    tasks share (for the static task vectors of a small model nearly all of each vector, so they land on one spot)
    is removed and what tells the tasks apart is mapped. Returns columns x, y, task, kind ("adaptive"/"static"),
    text (query for hover).
    """
    if len(adaptive) != len(tasks) or len(tasks) != len(texts):
        raise ValueError(f"adaptive ({len(adaptive)}), tasks ({len(tasks)}) and texts ({len(texts)}) "
                         "must have equal length")
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; use one of {CENTERS}")
    feats = [torch.as_tensor(adaptive, dtype=torch.float32).reshape(len(tasks), -1)]
    if center == "tasks":
        feats[0] = _center_on_tasks(feats[0], tasks)
    kinds, task_col, text_col = ["adaptive"] * len(tasks), list(tasks), list(texts)
    if static:
        rows = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in static.values()])
        feats.append(rows - rows.mean(0) if center == "tasks" and len(rows) > 1 else rows)
        for task in static:
            kinds.append("static")
            task_col.append(task)
            text_col.append(f"static vector of {task}")
    x = torch.cat(feats)
    # Rows are scaled to unit norm: static and adaptive vectors live at very different magnitudes.
    xy = project_2d(x / x.norm(dim=1, keepdim=True).clamp(min=1e-12), method=method, seed=seed)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "task": task_col, "kind": kinds, "text": text_col})
