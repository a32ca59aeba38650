"""04's centred view: static task vectors that share one dominant component land on one spot in the raw map and
apart once each kind is centred on its mean over tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analysis import geometry


def vectors():
    """Per-task clusters of adaptive vectors; static vectors = one large shared part + a small per-task part."""
    gen = torch.Generator().manual_seed(0)
    names = ("a", "b", "c", "d")
    shared = 100 * torch.randn(3, 8, generator=gen)
    static = {t: shared + 0.1 * torch.randn(3, 8, generator=gen) for t in names}
    centres = {t: torch.randn(3, 8, generator=gen) for t in names}
    tasks = [t for t in names for _ in range(5)]
    adaptive = torch.stack([centres[t] + 0.05 * torch.randn(3, 8, generator=gen) for t in tasks])
    return adaptive, tasks, static


def spread(points, kind: str) -> float:
    part = points[points["kind"] == kind][["x", "y"]].to_numpy()
    return float(np.linalg.norm(part - part.mean(0), axis=1).mean())


def test_centring_separates_the_static_vectors():
    adaptive, tasks, static = vectors()
    assert geometry.shared_component(static) > 0.99
    texts = [f"q{i}" for i in range(len(tasks))]
    raw = geometry.vector_map(adaptive, tasks, texts, static=static, method="pca")
    centred = geometry.vector_map(adaptive, tasks, texts, static=static, method="pca", center="tasks")
    # raw: the four static vectors sit on one spot next to the adaptive clusters; centred: as spread out as those
    assert spread(raw, "static") < 0.01 * spread(raw, "adaptive")
    assert spread(centred, "static") > 0.3 * spread(centred, "adaptive")
    assert list(centred["kind"]).count("static") == 4


def test_unknown_center_is_refused():
    adaptive, tasks, static = vectors()
    with pytest.raises(ValueError, match="unknown center"):
        geometry.vector_map(adaptive, tasks, list(tasks), center="mean")
