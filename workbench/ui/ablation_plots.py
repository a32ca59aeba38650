"""Figures of the ablation tables (:mod:`workbench.analysis.ablations`): generator sources and ceilings."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis.ceilings import METHODS as CEILING_METHODS
from workbench.ui.plots import TEMPLATE, _require

#: (mean column, interval columns, panel title) of the source comparison's two panels
SOURCE_PANELS = (("mean", "ci_low", "ci_high", "primary score"),
                 ("label_mean", "label_ci_low", "label_ci_high", "label-restricted"))


def _errors(part: pd.DataFrame, value: str, low: str, high: str) -> dict:
    return dict(type="data", symmetric=False, array=part[high] - part[value], arrayminus=part[value] - part[low])


def source_figure(table: pd.DataFrame, title: str = "Which small model reads the query") -> go.Figure:
    """Two panels (primary, label-restricted): one bar per method of :func:`~workbench.analysis.ablations.
    source_table` (mean over seeds, the item-clustered 95 % interval as error bars)."""
    _require(table, ["method", *(c for panel in SOURCE_PANELS for c in panel[:3])], "source_figure")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[p[3] for p in SOURCE_PANELS], shared_yaxes=True)
    for col, (value, low, high, _) in enumerate(SOURCE_PANELS, start=1):
        fig.add_bar(x=table["method"], y=table[value], error_y=_errors(table, value, low, high), showlegend=False,
                    marker_color=["grey" if m == "zero-shot" else "hsl(210, 60%, 45%)" for m in table["method"]],
                    row=1, col=col)
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(title=title, template=TEMPLATE)
    return fig


def ceilings_figure(table: pd.DataFrame, title: str = "How far from the ceiling (label-restricted)") -> go.Figure:
    """Grouped bars per task (and the mean): majority, zero-shot, ATV, probe and oracle of
    :func:`workbench.analysis.ceilings.ceiling_table`, with their bootstrap intervals."""
    columns = list(CEILING_METHODS.values())
    _require(table, ["task", *columns, *(f"{c}_{s}" for c in columns for s in ("low", "high"))], "ceilings_figure")
    fig = go.Figure()
    for label, col in CEILING_METHODS.items():
        fig.add_bar(x=table["task"], y=table[col], name=label, error_y=_errors(table, col, f"{col}_low", f"{col}_high"))
    fig.update_layout(title=title, template=TEMPLATE, barmode="group", yaxis_title="accuracy (%)",
                      xaxis_title="task")
    return fig
