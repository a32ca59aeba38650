"""Interactive steering panel for notebook 03: λ (log slider), layer range with presets, positions, live plot."""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import pandas as pd

from workbench.analysis.sweeps import MethodFactory, accuracy_of, layer_label
from workbench.core.interventions import thirds


class SteeringPanel:
    """Widgets that re-run a small evaluation whenever λ, the layer range or positions change.

    ``panel.widget`` is what the notebook displays; ``panel.history`` holds one row per evaluation.
    """

    def __init__(self, lm: Any, make_method: MethodFactory, tasks: Any, scale: float = 1e-3, **evaluate_kwargs: Any):
        L = lm.num_layers
        self.lm, self.make_method, self.tasks, self.evaluate_kwargs = lm, make_method, tasks, evaluate_kwargs
        self.history: list[dict] = []
        self.scale = w.FloatLogSlider(value=scale, base=10, min=-5, max=1, step=0.25, description="λ", continuous_update=False)
        self.layers = w.IntRangeSlider(value=(0, L - 1), min=0, max=L - 1, description="layers", continuous_update=False)
        self.preset = w.ToggleButtons(options=["all", "bottom", "middle", "top"], value="all", description="preset")
        self.positions = w.ToggleButtons(options=["last", "all"], value="last", description="positions")
        self.status = w.HTML()
        self.output = w.Output()
        self.preset.observe(self._on_preset, names="value")
        for control in (self.scale, self.layers, self.positions):
            control.observe(lambda change: self.refresh(), names="value")
        self.widget = w.VBox([self.scale, self.preset, self.layers, self.positions, self.status, self.output])

    def _on_preset(self, change: dict) -> None:
        L = self.lm.num_layers
        b1, b2 = thirds(L)
        bounds = {"all": (0, L - 1), "bottom": (0, b1 - 1), "middle": (b1, b2 - 1), "top": (b2, L - 1)}[change["new"]]
        self.layers.value = bounds  # triggers refresh

    def current(self) -> tuple[float, range, str]:
        lo, hi = self.layers.value
        return float(self.scale.value), range(lo, hi + 1), self.positions.value

    def refresh(self) -> dict:
        """Evaluate with the current settings, append to history and redraw the plot."""
        scale, layers, positions = self.current()
        self.status.value = f"evaluating λ={scale:.2g}, layers {layer_label(layers)}, positions={positions} …"
        result = accuracy_of(self.lm, self.make_method(scale, layers, positions), self.tasks, **self.evaluate_kwargs)
        row = {"scale": scale, "layers": layer_label(layers), "positions": positions, **result}
        self.history.append(row)
        self.status.value = f"λ={scale:.2g}, layers {row['layers']}, positions={positions}: accuracy {row['accuracy']:.1f}% (n={row['n']})"
        self._draw()
        return row

    def _draw(self) -> None:
        from workbench.ui.plots import sweep_figure

        frame = pd.DataFrame(self.history)
        self.output.clear_output(wait=True)
        with self.output:
            sweep_figure(frame, title="Accuracy of the settings tried so far").show()
