"""workbench.ui.session.LiveFigure: every update reaches JupyterLab as a fresh plotly renderer (issue 21, point 1)."""

from __future__ import annotations

import base64

import IPython.display
import numpy as np
import pandas as pd

from workbench.ui import plots, session

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def values(x) -> list:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"} (plotly >= 6)."""
    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]).tolist()
    return list(x)


class Handle:
    def __init__(self):
        self.updates: list[dict] = []

    def update(self, obj, raw=False):
        assert raw
        self.updates.append(dict(obj))


def test_each_update_passes_through_a_placeholder_of_another_mimetype(monkeypatch):
    handle = Handle()
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: handle)
    live = session.LiveFigure(lambda h: plots.training_curve(h), "waiting")
    for epoch in (1, 2, 3):
        live(pd.DataFrame({"epoch": range(1, epoch + 1), "train_loss": [1.0] * epoch}))
    kinds = [PLOTLY_MIME in u for u in handle.updates]
    # JupyterLab's plotly renderer ignores a second model: each figure must follow an update without the plotly
    # mimetype, so that JupyterLab replaces the renderer instead of reusing it
    assert kinds == [False, True] * 3
    assert all(set(u) == {"text/plain"} for u in handle.updates[::2])
    points = [len(values(u[PLOTLY_MIME]["data"][0]["x"])) for u in handle.updates[1::2]]
    assert points == [1, 2, 3] and live.updates == 3
    assert len(str(handle.updates[-1])) < 100_000  # the figure's JSON only, no plotly.js bundle
