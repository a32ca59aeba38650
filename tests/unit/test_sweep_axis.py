"""The λ axis of sweep plots (03's grid and panel): labels at the λ values tried, a narrow range for one point."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench.ui import plots


def test_one_point_gets_a_narrow_axis_labelled_with_its_lambda():
    fig = plots.sweep_figure(pd.DataFrame({"scale": [0.05], "layers": ["all"], "accuracy": [40.0],
                                           "positions": ["last"]}), symbol="positions")
    axis = fig.layout.xaxis
    assert axis.type == "log" and list(axis.tickvals) == [0.05] and list(axis.ticktext) == ["0.05"]
    low, high = (10 ** v for v in axis.range)
    assert low == pytest.approx(0.05 / 1.5) and high == pytest.approx(0.05 * 1.5)  # not 0.005-0.5


def test_many_lambdas_are_thinned_but_keep_both_ends():
    scales = [0.05 * 10 ** (k / 8) for k in range(-8, 9)]
    ticks = plots.log_ticks(pd.Series(scales), max_ticks=5)
    assert len(ticks["tickvals"]) == 5 and ticks["tickvals"][0] == min(scales) and ticks["tickvals"][-1] == max(scales)
    assert ticks["ticktext"][2] == f"{0.05:.3g}"
    assert ticks["range"][0] == pytest.approx(math.log10(min(scales) / 1.5))
    assert plots.log_ticks(pd.Series([], dtype=float)) == {}
