"""Vector geometry (norms, 2-D maps) and the plotly figure builders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.analysis import geometry
from workbench.ui import plots


def test_layer_norms_match_manual():
    v = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 3.0]]])  # [N=2, L=2, d=2]
    assert np.allclose(geometry.layer_norms(v), [2.5, 2.0])
    assert np.allclose(geometry.layer_norms(v[0], scale=-2.0), [10.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        geometry.layer_norms(torch.zeros(3))


@pytest.mark.parametrize("method", ["tsne", "umap", "pca"])
def test_vector_map_separates_tasks(method):
    torch.manual_seed(0)
    a = torch.randn(1, 3, 8) * 5 + torch.randn(12, 3, 8) * 0.1
    b = -a.mean(0, keepdim=True) + torch.randn(12, 3, 8) * 0.1
    vectors = torch.cat([a, b])
    tasks = ["a"] * 12 + ["b"] * 12
    df = geometry.vector_map(vectors, tasks, [f"q{i}" for i in range(24)], static={"a": a.mean(0), "b": b.mean(0)}, method=method)
    assert len(df) == 26 and set(df.kind) == {"adaptive", "static"}
    centers = df[df.kind == "adaptive"].groupby("task")[["x", "y"]].mean()
    spread = df[df.kind == "adaptive"].groupby("task")[["x", "y"]].std().to_numpy().max()
    assert np.linalg.norm(centers.loc["a"] - centers.loc["b"]) > spread


def test_vector_map_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        geometry.vector_map(torch.zeros(3, 2, 2), ["a"], ["x"])
    with pytest.raises(ValueError, match="unknown projection"):
        geometry.project_2d(np.zeros((4, 3)), method="mds")


def test_figures_build():
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "valid_loss": [2.1, 1.2], "valid_acc": [0.3, 0.5]})
    assert len(plots.training_curve(hist).data) == 3
    table = pd.DataFrame({"method": ["zero-shot", "ATV"], "category": ["NLU", "NLU"], "accuracy": [40.0, 60.0], "sd": [1.0, 2.0]})
    assert len(plots.accuracy_bars(table).data) == 2
    norms = geometry.norms_frame({"ATV": (torch.ones(5, 4, 3), 1e-3), "ELICIT": (torch.ones(4, 3), 2.0)})
    assert len(plots.layer_norms_figure(norms).data) == 2
    sweep = pd.DataFrame({"scale": [1e-3, 1e-2, 1e-3, 1e-2], "layers": ["all", "all", "top", "top"], "accuracy": [1, 2, 3, 4]})
    assert len(plots.sweep_figure(sweep).data) == 2
    with pytest.raises(ValueError, match="missing"):
        plots.accuracy_bars(table.drop(columns="accuracy"))
