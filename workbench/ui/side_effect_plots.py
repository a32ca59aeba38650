"""Figures of the side-effect tables (:mod:`workbench.analysis.side_effects`): perplexity and off-target accuracy."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.ui.plots import TEMPLATE, _require


def _bars(fig: go.Figure, table: pd.DataFrame, x: str, group: str, name_of: str) -> None:
    """One bar trace per value of `group`: ``difference`` with its interval as asymmetric error bars."""
    for value, part in table.groupby(group, sort=False):
        fig.add_bar(x=part[x], y=part["difference"], name=f"{name_of}{value}",
                    error_y=dict(type="data", symmetric=False, array=part["ci_high"] - part["difference"],
                                 arrayminus=part["difference"] - part["ci_low"]))


def perplexity_figure(table: pd.DataFrame,
                      title: str = "Perplexity on held-out text: steered − unsteered") -> go.Figure:
    """Bars of the perplexity difference per method, one colour per mode (steps "first" / "all"), with the
    bootstrap interval; the unsteered perplexity is in the title."""
    _require(table, ["method", "steps", "difference", "ci_low", "ci_high", "ppl_unsteered"], "perplexity_figure")
    fig = go.Figure()
    _bars(fig, table, "method", "steps", "steps=")
    base = float(table["ppl_unsteered"].iloc[0]) if len(table) else float("nan")
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title=f"{title} (unsteered: {base:.2f})", template=TEMPLATE, barmode="group",
                      yaxis_title="Δ perplexity", xaxis_title="method")
    return fig


def off_target_figure(table: pd.DataFrame, score: str = "label",
                      title: str = "Accuracy on off-target tasks: steered − unsteered") -> go.Figure:
    """Bars of the accuracy difference (points of %) per off-target task (and their average "all"), one colour per
    method, with the item-clustered paired interval; `score`: ``"label"`` (label-restricted) or the primary score."""
    _require(table, ["method", "task", "score", "difference", "ci_low", "ci_high"], "off_target_figure")
    shown = table[table["score"] == score]
    if shown.empty:
        raise ValueError(f"the table has no score {score!r}; it has {sorted(set(table['score']))}")
    fig = go.Figure()
    _bars(fig, shown, "task", "method", "")
    fig.add_hline(y=0, line_color="grey")
    fig.update_layout(title=f"{title} ({score})", template=TEMPLATE, barmode="group",
                      yaxis_title="Δ accuracy (points)", xaxis_title="task")
    return fig
