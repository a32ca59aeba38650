"""Figures of the scaling curves (:mod:`workbench.analysis.scaling`): accuracy against training data."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.plots import TEMPLATE, _require

#: the two panels: (column, interval columns, panel title)
PANELS = (("accuracy", "ci_low", "ci_high", "primary score"),
          ("label_accuracy", "label_ci_low", "label_ci_high", "label-restricted"))
X_TITLES = {"n_train": "training items per task", "n_train_tasks": "number of training tasks"}


def scaling_figure(curve: pd.DataFrame, x: str = "n_train", baseline: str = "zero-shot",
                   title: str = "Accuracy against training data") -> go.Figure:
    """Two panels (primary, label-restricted): one line per method with its bootstrap interval as error bars
    against `x` (log axis); the `baseline` rows (x = 0) are a dashed horizontal line in each panel."""
    _require(curve, ["method", x, *(c for panel in PANELS for c in panel[:3])], "scaling_figure")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[p[3] for p in PANELS], shared_yaxes=True)
    base = curve[curve["method"] == baseline]
    trained = curve[curve["method"] != baseline]
    for col, (value, low, high, _) in enumerate(PANELS, start=1):
        for i, (method, part) in enumerate(trained.groupby("method", sort=False)):
            part = part.sort_values(x)
            fig.add_scatter(x=part[x], y=part[value], name=str(method), legendgroup=str(method), showlegend=col == 1,
                            mode="lines+markers", line=dict(color=f"hsl({(i * 67) % 360}, 60%, 45%)"),
                            error_y=dict(type="data", symmetric=False, array=part[high] - part[value],
                                         arrayminus=part[value] - part[low]), row=1, col=col)
        if not base.empty:
            fig.add_hline(y=float(base[value].iloc[0]), line_dash="dash", line_color="grey",
                          annotation_text=baseline, row=1, col=col)
    fig.update_xaxes(type="log", title_text=X_TITLES.get(x, x))
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(title=title, template=TEMPLATE, legend=dict(orientation="h", y=-0.25))
    return fig
