"""Interactive steering panel for notebook 03: λ slider, layer range with presets, positions, live plot.

A change of a control schedules an evaluation after a short pause (``debounce`` seconds; arrow-key steps in a row
start one evaluation, not one each), in a background thread, so the notebook stays responsive. A newer setting
cancels a running evaluation at its next task boundary. Progress shows in the panel (a bar and the status line);
nothing is printed, so no progress bars end up in JupyterLab's Log Console.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets as w
import pandas as pd

from workbench.analysis.sweeps import MethodFactory, accuracy_of, layer_label
from workbench.core.interventions import thirds

#: steps of the λ slider per decade (λ_train × 10^(k/8): ×1.33 per arrow key, λ_train itself always on the grid)
STEPS_PER_DECADE = 8


def lambda_grid(center: float, decades_below: int = 2, decades_above: int = 2,
                steps_per_decade: int = STEPS_PER_DECADE) -> list[float]:
    """Log-spaced λ values around `center` (which is exactly one of them), from center/10^below to center·10^above."""
    if not center > 0:
        raise ValueError(f"λ must be > 0 for a log-scale slider, got {center!r}")
    ks = range(-decades_below * steps_per_decade, decades_above * steps_per_decade + 1)
    return [center if k == 0 else float(f"{center * 10 ** (k / steps_per_decade):.4g}") for k in ks]


class Cancelled(Exception):
    """A newer setting replaced the one being evaluated."""


class SteeringPanel:
    """Widgets that re-run a small evaluation whenever λ, the layer range or positions change.

    ``panel.show()`` displays it and evaluates the starting setting; ``panel.history`` holds one row per finished
    evaluation, ``panel.figure`` the last plot. ``debounce`` is the pause (s) after the last change before an
    evaluation starts; :meth:`flush` starts a pending one now and :meth:`wait` waits for it (tests, scripts).
    """

    def __init__(self, lm: Any, make_method: MethodFactory, tasks: Any, scale: float = 1e-3,
                 scales: Sequence[float] | None = None, debounce: float = 0.6, **evaluate_kwargs: Any):
        L = lm.num_layers
        self.lm, self.make_method, self.debounce = lm, make_method, float(debounce)
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        self.evaluate_kwargs = {**evaluate_kwargs, "progress": False}  # progress is the panel's own bar
        self.history: list[dict] = []
        self.figure: Any = None
        values = sorted({*(scales or lambda_grid(scale)), float(scale)})
        self.scale = w.SelectionSlider(options=[(f"{v:.3g}", v) for v in values], value=float(scale), description="λ",
                                       continuous_update=False, layout=w.Layout(width="480px"))
        self.layers = w.IntRangeSlider(value=(0, L - 1), min=0, max=L - 1, description="layers",
                                       continuous_update=False)
        self.preset = w.ToggleButtons(options=["all", "bottom", "middle", "top"], value="all", description="preset")
        self.positions = w.ToggleButtons(options=["last", "all"], value="last", description="positions")
        self.progress = w.IntProgress(value=0, min=0, max=len(self.tasks), description="", bar_style="",
                                      layout=w.Layout(width="300px"))
        self.status = w.HTML(value="ready")
        self.output = w.Output()
        self._generation = 0
        self._lock = threading.Lock()        # guards _generation / _timer
        self._run_lock = threading.Lock()    # one evaluation at a time
        self._timer: threading.Timer | None = None
        self.preset.observe(self._on_preset, names="value")
        self.layers.observe(self._sync_preset, names="value")
        for control in (self.scale, self.layers, self.positions):
            control.observe(self._on_change, names="value")
        self.widget = w.VBox([self.scale, self.preset, self.layers, self.positions,
                              w.HBox([self.progress, self.status]), self.output])

    # ------------------------------------------------------------------------------------------------ controls
    def preset_bounds(self) -> dict[str, tuple[int, int]]:
        """The layer range (first, last) of each preset button."""
        L = self.lm.num_layers
        b1, b2 = thirds(L)
        return {"all": (0, L - 1), "bottom": (0, b1 - 1), "middle": (b1, b2 - 1), "top": (b2, L - 1)}

    def _on_preset(self, change: dict) -> None:
        if change["new"] is None:  # deselected because the range slider left every preset (see _sync_preset)
            return
        self.layers.value = self.preset_bounds()[change["new"]]  # schedules an evaluation (if the range changed)

    def _sync_preset(self, change: dict) -> None:
        """The range slider moved: select the preset with that range, or none (a custom range is no preset)."""
        match = [name for name, bounds in self.preset_bounds().items() if tuple(change["new"]) == bounds]
        self.preset.value = match[0] if match else None

    def _on_change(self, change: dict | None = None) -> None:
        """A control moved: cancel what runs, (re)start the debounce timer for the new setting."""
        scale, layers, positions = self.current()
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self._timer is not None:
                self._timer.cancel()
            self._set_status(f"λ={scale:.3g}, layers {layer_label(layers)}, positions={positions}: waiting …")
            self._timer = threading.Timer(self.debounce, self._run, args=(generation,))
            self._timer.daemon = True
            self._timer.start()

    def current(self) -> tuple[float, range, str]:
        lo, hi = self.layers.value
        return float(self.scale.value), range(lo, hi + 1), self.positions.value

    # ------------------------------------------------------------------------------------------------ running
    def show(self) -> None:
        """Display the panel and evaluate the starting setting (in the cell, so a headless run records it)."""
        from IPython.display import display

        display(self.widget)
        self.refresh()

    def refresh(self) -> dict | None:
        """Evaluate the current setting now (in this thread); returns its row, or None if a newer setting came."""
        with self._lock:
            generation = self._generation
        return self._run(generation)

    def flush(self) -> dict | None:
        """Start a pending (debounced) evaluation now, in this thread; None if nothing was pending."""
        with self._lock:
            timer, self._timer = self._timer, None
            generation = self._generation
        if timer is None:
            return None
        timer.cancel()
        return self._run(generation)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the scheduled evaluation (if any) has finished."""
        timer = self._timer
        if timer is not None:
            timer.join(timeout)

    def _run(self, generation: int) -> dict | None:
        with self._run_lock:
            if generation != self._generation:
                return None  # a newer setting is scheduled
            try:
                return self._evaluate(generation)
            except Cancelled:
                return None
            except Exception as err:  # shown in the panel; a background thread would lose it
                self.progress.bar_style = "danger"
                self._set_status(f"<b>error:</b> {html.escape(f'{type(err).__name__}: {err}')}", raw=True)
                if threading.current_thread() is threading.main_thread():
                    raise
                return None

    def _evaluate(self, generation: int) -> dict:
        scale, layers, positions = self.current()
        setting = f"λ={scale:.3g}, layers {layer_label(layers)}, positions={positions}"
        method = self.make_method(scale, layers, positions)
        self.progress.value, self.progress.bar_style = 0, "info"
        total, n = 0.0, 0
        for i, task in enumerate(self.tasks):
            if generation != self._generation:
                raise Cancelled
            name = getattr(task, "name", task)
            self._set_status(f"evaluating {setting}: task {i + 1}/{len(self.tasks)} ({name}) …")
            result = accuracy_of(self.lm, method, [task], **self.evaluate_kwargs)
            total, n = total + result["accuracy"] * result["n"], n + result["n"]
            self.progress.value = i + 1
        if generation != self._generation:
            raise Cancelled
        row = {"scale": scale, "layers": layer_label(layers), "positions": positions,
               "accuracy": total / max(n, 1), "n": n}
        self.history.append(row)
        self.progress.bar_style = "success"
        self._set_status(f"{setting}: accuracy {row['accuracy']:.1f}% (n={n}) — evaluation {len(self.history)}")
        self._draw()
        return row

    def _set_status(self, text: str, raw: bool = False) -> None:
        self.status.value = text if raw else html.escape(text)

    def _draw(self) -> None:
        from workbench.ui.export import figure_bundle
        from workbench.ui.plots import sweep_figure

        frame = pd.DataFrame(self.history)
        self.figure = sweep_figure(frame, title="Accuracy of the settings tried so far", symbol="positions")
        # set the Output's outputs directly: works from the background thread (capturing with `with output:` does not)
        self.output.outputs = ({"output_type": "display_data", "data": figure_bundle(self.figure), "metadata": {}},)
