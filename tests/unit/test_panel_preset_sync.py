"""03's steering panel: the depth preset follows the layer range slider (no "all" after a move to 0–2)."""

from __future__ import annotations

import pytest

from workbench.ui.widgets import SteeringPanel


class FakeLM:
    num_layers = 6


@pytest.fixture
def panel():
    p = SteeringPanel(FakeLM(), lambda *a: None, ["glue_sst2"], scale=0.05, debounce=3600)
    yield p
    if p._timer is not None:
        p._timer.cancel()


def test_moving_the_range_clears_or_selects_the_preset(panel):
    assert panel.preset.value == "all"
    panel.layers.value = (0, 2)
    assert panel.preset.value is None  # a custom range: no preset button stays selected
    panel.layers.value = panel.preset_bounds()["top"]
    assert panel.preset.value == "top"


def test_a_preset_sets_the_range(panel):
    panel.preset.value = "bottom"
    assert panel.layers.value == panel.preset_bounds()["bottom"] and panel.preset.value == "bottom"
