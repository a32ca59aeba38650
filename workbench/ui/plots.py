"""Plotly figures the notebooks show; each takes a tidy DataFrame and returns a `plotly.graph_objects.Figure`."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {columns}; missing {missing} (has {list(df.columns)})")


def training_curve(history: pd.DataFrame, title: str = "ATV training") -> go.Figure:
    """Train/valid loss per epoch (left axis) and valid accuracy (right axis)."""
    _require(history, ["epoch", "train_loss"], "training_curve")
    fig = go.Figure()
    fig.add_scatter(x=history["epoch"], y=history["train_loss"], name="train loss", mode="lines+markers")
    if "valid_loss" in history:
        fig.add_scatter(x=history["epoch"], y=history["valid_loss"], name="valid loss", mode="lines+markers")
    if "valid_acc" in history:
        fig.add_scatter(x=history["epoch"], y=history["valid_acc"], name="valid accuracy", mode="lines+markers",
                        yaxis="y2", line=dict(dash="dot"))
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="epoch", yaxis_title="cross-entropy",
                      xaxis=dict(dtick=1), legend=dict(orientation="h", y=-0.2),
                      yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1], tickformat=".0%",
                                  showgrid=False))
    return fig


def accuracy_bars(table: pd.DataFrame, group: str = "category", title: str = "Accuracy by category") -> go.Figure:
    """Grouped bars: one bar per method in each `group`; columns method, <group>, accuracy, optional sd."""
    _require(table, ["method", group, "accuracy"], "accuracy_bars")
    fig = px.bar(table, x=group, y="accuracy", color="method", barmode="group",
                 error_y="sd" if "sd" in table else None, title=title, template=TEMPLATE)
    fig.update_layout(yaxis_title="accuracy (%)")
    return fig


def layer_norms_figure(norms: pd.DataFrame, title: str = "ℓ2 norm of injected vectors per layer") -> go.Figure:
    """Lines of per-layer norms (columns method, layer, norm) — paper Fig. 3."""
    _require(norms, ["method", "layer", "norm"], "layer_norms_figure")
    fig = px.line(norms, x="layer", y="norm", color="method", markers=True, title=title, template=TEMPLATE)
    fig.update_layout(yaxis_type="log", yaxis_title="mean ℓ2 norm (log)")
    return fig


def vector_map_figure(points: pd.DataFrame, title: str = "Per-query ATV vectors vs static task vectors") -> go.Figure:
    """Scatter coloured by task, circles for adaptive and crosses for static vectors, query text on hover (Fig. 4)."""
    _require(points, ["x", "y", "task", "kind", "text"], "vector_map_figure")
    shown = points.assign(hover=points["text"].str.slice(0, 200).str.replace("\n", "<br>"))
    fig = px.scatter(shown, x="x", y="y", color="task", symbol="kind", hover_name="task", hover_data={"hover": True, "x": False, "y": False},
                     symbol_map={"adaptive": "circle", "static": "x"}, title=title, template=TEMPLATE)
    fig.update_traces(marker=dict(size=8))
    fig.for_each_trace(lambda t: t.update(marker=dict(size=16, line=dict(width=2))) if "static" in t.name else None)
    return fig


def sweep_figure(results: pd.DataFrame, x: str = "scale", color: str = "layers", title: str = "Accuracy vs λ and depth") -> go.Figure:
    """Accuracy against λ (log axis), one line per layer region (paper Table 3 as curves)."""
    _require(results, [x, color, "accuracy"], "sweep_figure")
    fig = px.line(results.sort_values(x), x=x, y="accuracy", color=color, markers=True, title=title, template=TEMPLATE)
    fig.update_layout(xaxis_type="log", xaxis_title="λ (log scale)", yaxis_title="accuracy (%)")
    return fig
