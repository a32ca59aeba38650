"""Plotly figures the notebooks show; each takes a tidy DataFrame and returns a `plotly.graph_objects.Figure`."""

from __future__ import annotations

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from workbench.ui.training_report import accuracy_percent, best_epoch

TEMPLATE = "plotly_white"


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {columns}; missing {missing} (has {list(df.columns)})")


def training_curve(history: pd.DataFrame, title: str = "ATV training") -> go.Figure:
    """Train/valid loss per epoch (left axis) and valid accuracy in % (right axis, ticks at 0, 25, …, 100 %).

    ``valid_acc`` may be a fraction (what :func:`workbench.train_atv` records) or in %. The epoch of the lowest
    valid loss is marked with a dotted vertical line (:func:`workbench.ui.training_report.best_epoch`).
    """
    _require(history, ["epoch", "train_loss"], "training_curve")
    fig = go.Figure()
    fig.add_scatter(x=history["epoch"], y=history["train_loss"], name="train loss", mode="lines+markers")
    if "valid_loss" in history:
        fig.add_scatter(x=history["epoch"], y=history["valid_loss"], name="valid loss", mode="lines+markers")
    if "valid_acc" in history:
        fig.add_scatter(x=history["epoch"], y=accuracy_percent(history["valid_acc"]), name="valid accuracy (%)",
                        mode="lines+markers", yaxis="y2", line=dict(dash="dot"))
    best = best_epoch(history)
    if best is not None and len(history) > 1:
        fig.add_vline(x=best, line_dash="dot", line_color="grey",
                      annotation_text=f"lowest valid loss: epoch {best}", annotation_position="top")
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="epoch", yaxis_title="cross-entropy",
                      xaxis=dict(dtick=1), legend=dict(orientation="h", y=-0.2),
                      yaxis2=dict(title="valid accuracy (%)", overlaying="y", side="right", range=[0, 100],
                                  tickmode="array", tickvals=[0, 25, 50, 75, 100], ticksuffix=" %",
                                  showgrid=False))
    return fig


#: how the category table's group averages are shown (the per-category names are shown as they are)
CATEGORY_LABELS = {"in_domain": "in-domain avg.", "unseen": "unseen avg.", "extra": "extra avg.", "all": "all avg."}


def method_label(name: str) -> str:
    """Display label of a method column value: canonical names (``static-tv``) through the label map of
    :mod:`workbench.methods.names`; labels and user-defined names as they are."""
    from workbench.methods.names import METHODS, display_label

    return display_label(name) if name in METHODS else str(name)


def percent_range(values: pd.Series, errors: pd.Series | None = None) -> list[float]:
    """A y range for accuracies in %: from 0 to a little above the highest bar/error (at least 0–10 %), never below 0
    (an all-zero plot otherwise runs from −1 % to 1 %)."""
    top = values.astype(float) + (errors.astype(float).fillna(0) if errors is not None else 0)
    high = float(top.max()) if len(top) and pd.notna(top.max()) else 0.0
    return [0.0, min(100.0, max(10.0, high * 1.1))] if high <= 100 else [0.0, high * 1.05]


def accuracy_bars(table: pd.DataFrame, group: str = "category", title: str = "Accuracy by category") -> go.Figure:
    """Grouped bars: one bar per method in each `group`; columns method, <group>, accuracy, optional sd.

    For the category table of :func:`workbench.eval.compare.category_table`: the ``in_domain`` / ``unseen`` averages
    are labelled "in-domain avg." / "unseen avg."; the ``Unseen`` category is dropped when the ``unseen`` average is
    there (it is the same set of tasks); error bars show the 95 % bootstrap interval (``ci_low`` / ``ci_high``) when
    the table has one, else the sd over seeds where it is positive (one seed has none).
    """
    _require(table, ["method", group, "accuracy"], "accuracy_bars")
    shown = table.copy()
    if group == "category" and "unseen" in set(shown[group]):
        shown = shown[shown[group] != "Unseen"]
    shown[group] = shown[group].map(lambda c: CATEGORY_LABELS.get(c, c))
    shown["method"] = shown["method"].map(method_label)
    errors, minus = None, None
    if {"ci_low", "ci_high"} <= set(shown.columns) and shown["ci_high"].notna().any():
        shown["err_plus"] = (shown["ci_high"] - shown["accuracy"]).clip(lower=0)
        shown["err_minus"] = (shown["accuracy"] - shown["ci_low"]).clip(lower=0)
        errors, minus = "err_plus", "err_minus"  # the 95 % item-level bootstrap interval
    elif "sd" in shown and (shown["sd"].fillna(0) > 0).any():
        errors = "sd"
    fig = px.bar(shown, x=group, y="accuracy", color="method", barmode="group", error_y=errors, error_y_minus=minus,
                 title=title, template=TEMPLATE, labels={group: group.replace("_", " ")})
    fig.update_layout(yaxis_title="accuracy (%)",
                      yaxis_range=percent_range(shown["accuracy"], shown[errors] if errors else None))
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
    fig = px.scatter(shown, x="x", y="y", color="task", symbol="kind", hover_name="task",
                     hover_data={"hover": True, "x": False, "y": False},
                     symbol_map={"adaptive": "circle", "static": "x"}, title=title, template=TEMPLATE)
    fig.update_traces(marker=dict(size=8))
    fig.for_each_trace(lambda t: t.update(marker=dict(size=16, line=dict(width=2))) if "static" in t.name else None)
    return fig


def sweep_figure(results: pd.DataFrame, x: str = "scale", color: str = "layers", title: str = "Accuracy vs λ and depth",
                 symbol: str | None = None, reference: float | None = None,
                 reference_label: str = "zero-shot") -> go.Figure:
    """Accuracy against λ (log axis), one line per layer region (paper Table 3 as curves).

    ``symbol`` (e.g. ``"positions"``) gives each of its values its own marker and dash, so points of two settings
    that land on the same spot stay visible (an open diamond around a filled circle). ``reference`` draws a dashed
    horizontal line (e.g. the zero-shot accuracy) inside the y range.
    """
    _require(results, [x, color, "accuracy"] + ([symbol] if symbol else []), "sweep_figure")
    style: dict = {}
    if symbol:
        values = list(dict.fromkeys(results[symbol]))
        style = dict(symbol=symbol, line_dash=symbol,
                     symbol_sequence=["circle", "diamond-open", "square-open", "x"][: max(1, len(values))])
    fig = px.line(results.sort_values(x), x=x, y="accuracy", color=color, markers=True, title=title, template=TEMPLATE,
                  **style)
    if symbol:
        fig.for_each_trace(lambda t: t.update(marker_size=14, marker_line_width=2)
                           if "open" in str(t.marker.symbol) else t.update(marker_size=8))
    accuracies = results["accuracy"] if reference is None else pd.concat([results["accuracy"], pd.Series([reference])])
    fig.update_layout(xaxis_type="log", xaxis_title="λ (log scale)", yaxis_title="accuracy (%)",
                      yaxis_range=percent_range(accuracies))
    if x == "scale":
        fig.update_xaxes(**log_ticks(results[x]))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", line_color="grey", annotation_text=reference_label)
    return fig


def log_ticks(values: pd.Series, max_ticks: int = 9, pad: float = 1.5) -> dict:
    """Log-axis settings that label the λ values tried (never plotly's minor "2 3 … 0.1 2" labels) over a range
    from min/`pad` to max·`pad`: one point gets a narrow axis around it, not two decades. At most `max_ticks` labels
    (evenly thinned, the smallest and largest always kept)."""
    xs = sorted({float(v) for v in values if pd.notna(v) and float(v) > 0})
    if not xs:
        return {}
    if len(xs) > max_ticks:
        step = (len(xs) - 1) / (max_ticks - 1)
        xs = [xs[round(i * step)] for i in range(max_ticks)]
    return dict(tickmode="array", tickvals=xs, ticktext=[f"{v:.3g}" for v in xs],
                range=[math.log10(xs[0] / pad), math.log10(xs[-1] * pad)], minor=dict(showgrid=False))
