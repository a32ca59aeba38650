"""The logit-lens heatmap: per vector, layers × rank coloured by score, each cell labelled with its token."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.ui.plots import TEMPLATE, _require


def logit_lens_figure(frame: pd.DataFrame, title: str = "Tokens each layer's vector promotes (logit lens)"
                      ) -> go.Figure:
    """One heatmap per vector of :func:`workbench.analysis.vocab_projection.logit_lens`'s rows: y = layer,
    x = rank, colour = score (the logit change, normalised per vector so vectors of any norm compare), text = token."""
    _require(frame, ["vector", "layer", "rank", "token", "score"], "logit_lens_figure")
    names = list(dict.fromkeys(frame["vector"]))
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.04)
    for col, name in enumerate(names, start=1):
        part = frame[frame["vector"] == name]
        score = part.pivot(index="layer", columns="rank", values="score")
        tokens = part.pivot(index="layer", columns="rank", values="token").map(repr)
        peak = float(score.abs().max().max()) or 1.0
        fig.add_trace(go.Heatmap(z=(score / peak).values, x=list(score.columns), y=list(score.index),
                                 text=tokens.values, texttemplate="%{text}", zmin=-1, zmax=1, colorscale="RdBu_r",
                                 showscale=col == len(names), customdata=score.values,
                                 hovertemplate="layer %{y}, rank %{x}: %{text}<br>score %{customdata:.3g}"
                                               "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="rank", row=1, col=col)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=title, template=TEMPLATE, height=max(300, 28 * frame["layer"].nunique() + 150))
    return fig
