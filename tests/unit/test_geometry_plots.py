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
    df = geometry.vector_map(vectors, tasks, [f"q{i}" for i in range(24)], static={"a": a.mean(0), "b": b.mean(0)},
                             method=method)
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
    table = pd.DataFrame({"method": ["zero-shot", "ATV"], "category": ["NLU", "NLU"], "accuracy": [40.0, 60.0],
                          "sd": [1.0, 2.0]})
    assert len(plots.accuracy_bars(table).data) == 2
    norms = geometry.norms_frame({"ATV": (torch.ones(5, 4, 3), 1e-3), "ELICIT": (torch.ones(4, 3), 2.0)})
    assert len(plots.layer_norms_figure(norms).data) == 2
    sweep = pd.DataFrame({"scale": [1e-3, 1e-2, 1e-3, 1e-2], "layers": ["all", "all", "top", "top"],
                          "accuracy": [1, 2, 3, 4]})
    assert len(plots.sweep_figure(sweep).data) == 2
    with pytest.raises(ValueError, match="missing"):
        plots.accuracy_bars(table.drop(columns="accuracy"))


def test_umap_map_prints_no_warning():
    """Notebook 04 showed umap's 'n_jobs value 1 overridden' UserWarning in red above the t-SNE figure."""
    import warnings

    x = np.random.default_rng(0).standard_normal((20, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert geometry.project_2d(x, method="umap", seed=0).shape == (20, 2)


def category_table_like(sd: float) -> pd.DataFrame:
    """What compare.category_table returns: categories, the Unseen category and the two group averages."""
    rows = []
    for method in ("zero-shot", "static-tv"):
        for cat, acc in (("NLU", 50.0), ("Unseen", 40.0), ("in_domain", 50.0), ("unseen", 40.0)):
            rows.append({"method": method, "category": cat, "accuracy": acc, "sd": sd})
    return pd.DataFrame(rows)


def test_accuracy_bars_labels_and_error_bars():
    fig = plots.accuracy_bars(category_table_like(sd=0.0))
    xs = {x for t in fig.data for x in t.x}
    assert xs == {"NLU", "in-domain avg.", "unseen avg."}, xs  # one unseen group, readable names
    assert {t.name for t in fig.data} == {"zero-shot", "static TV"}  # canonical names through the label map
    assert all(t.error_y.array is None for t in fig.data)  # one seed: no zero-height error bars
    with_sd = plots.accuracy_bars(category_table_like(sd=3.0))
    assert all(t.error_y.array is not None for t in with_sd.data)
    nan_sd = plots.accuracy_bars(category_table_like(sd=float("nan")))
    assert all(t.error_y.array is None for t in nan_sd.data)


def test_all_zero_accuracies_start_at_zero():
    zero = category_table_like(sd=0.0).assign(accuracy=0.0)
    assert tuple(plots.accuracy_bars(zero).layout.yaxis.range) == (0.0, 10.0)
    sweep = pd.DataFrame({"scale": [1e-3, 1e-2], "layers": ["all", "all"], "accuracy": [0.0, 0.0]})
    fig = plots.sweep_figure(sweep, reference=30.0)
    assert fig.layout.yaxis.range[0] == 0.0 and fig.layout.yaxis.range[1] > 30.0  # the zero-shot line is inside


def test_sweep_figure_marks_positions_apart():
    same = pd.DataFrame({"scale": [0.1, 0.1], "layers": ["all", "all"], "positions": ["last", "all"],
                         "accuracy": [50.0, 50.0]})
    fig = plots.sweep_figure(same, symbol="positions")
    symbols = [t.marker.symbol for t in fig.data]
    assert len(fig.data) == 2 and len(set(symbols)) == 2 and any("open" in s for s in symbols)


def test_accuracy_bars_draw_the_bootstrap_interval():
    table = pd.DataFrame({"method": ["zero-shot", "ATV"], "category": ["NLU", "NLU"], "accuracy": [40.0, 60.0],
                          "sd": [0.0, 0.0], "ci_low": [30.0, 45.0], "ci_high": [52.0, 70.0]})
    fig = plots.accuracy_bars(table)
    bars = {trace.name: trace for trace in fig.data}
    assert list(bars["ATV"].error_y.array) == [10.0] and list(bars["ATV"].error_y.arrayminus) == [15.0]
    assert list(bars["zero-shot"].error_y.array) == [12.0] and list(bars["zero-shot"].error_y.arrayminus) == [10.0]
