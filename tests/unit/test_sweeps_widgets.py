"""λ/depth sweeps, the steering panel of notebook 03 (headless), and the comparison helpers of notebook 02."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.analysis.sweeps import accuracy_of, layer_label, sweep
from workbench.core.testing import tiny_model
from workbench.eval import compare as comparison
from workbench.methods.base import PreparedBatch
from workbench.ui.widgets import SteeringPanel, lambda_grid

TASK = "glue_sst2"


class FixedVector(wb.Method):
    """Injects one fixed random vector (a stand-in for ATV in fast tests)."""

    name = "fixed"

    def __init__(self, lm, scale, layers, positions):
        torch.manual_seed(0)
        self.vector = torch.randn(lm.num_layers, lm.hidden_size)
        self.scale, self.layers, self.positions = scale, layers, positions
        self.calls = 0

    def prepare(self, lm, task, items, texts, seed=42):
        self.calls += 1
        inj = wb.Injection(self.vector, scale=self.scale, layers=self.layers, positions=self.positions)
        return PreparedBatch(prompts=[lm.render(t) for t in texts], intervention=inj)


@pytest.fixture(scope="module")
def lm():
    task = wb.load_task(TASK)
    return tiny_model("llama", texts=[i.input for i in task.test[:10]] + ["positive negative"])


EVAL = dict(n_test=2, templates=[0], prefixes=["A:"], progress=False)


def test_sweep_grid_and_zero_scale_equals_clean(lm):
    df = sweep(lm, lambda s, l, p: FixedVector(lm, s, l, p), [TASK], [0.0, 50.0], ("all", "bottom"), ("last",), **EVAL)
    assert len(df) == 4 and set(df.layers) == {"all", "bottom"}
    clean = 100 * wb.evaluate(lm, wb.methods.ZeroShot(), [TASK], **EVAL)["correct"].mean()
    assert (df[df.scale == 0.0].accuracy == clean).all()
    with pytest.raises(ValueError, match="at least one"):
        sweep(lm, lambda s, l, p: FixedVector(lm, s, l, p), [TASK], [], **EVAL)


def test_layer_label():
    assert layer_label("top") == "top" and layer_label(range(2, 5)) == "2–4" and layer_label([1, 3]) == "1,3"


def recording_factory(lm, made):
    def factory(scale, layers, positions):
        made.append((scale, list(layers), positions))
        return FixedVector(lm, scale, layers, positions)
    return factory


def step(slider, by: int = 1):
    """What one arrow key does to a selection slider: the next option."""
    values = [v for _, v in slider.options]
    slider.value = values[values.index(slider.value) + by]


def test_panel_change_reruns_evaluation(lm):
    made = []
    panel = SteeringPanel(lm, recording_factory(lm, made), [TASK], scale=1e-3, debounce=3600, **EVAL)
    assert panel.refresh()["scale"] == pytest.approx(1e-3) and len(panel.history) == 1
    panel.scale.value = panel.scale.options[-1][1]  # the largest λ
    panel.flush()  # a change schedules one evaluation (debounced); flush runs it now
    assert len(panel.history) == 2 and made[-1][0] == pytest.approx(panel.scale.value)
    panel.preset.value = "top"  # presets move the range slider, which schedules a run
    panel.flush()
    lo, hi = panel.layers.value
    assert made[-1][1] == list(range(lo, hi + 1)) == wb.resolve_layers("top", lm.num_layers)
    panel.positions.value = "all"
    panel.flush()
    assert made[-1][2] == "all" and len(panel.history) == 4
    assert panel.flush() is None  # nothing pending


def test_panel_arrow_steps_are_debounced_into_one_evaluation(lm):
    made = []
    panel = SteeringPanel(lm, recording_factory(lm, made), [TASK], scale=1e-3, debounce=3600, **EVAL)
    for _ in range(5):
        step(panel.scale)
    assert made == [] and "waiting" in panel.status.value
    row = panel.flush()
    assert len(made) == 1 and len(panel.history) == 1 and row["scale"] == pytest.approx(panel.scale.value)


def test_panel_timer_runs_in_background_and_prints_nothing(lm, capsys):
    panel = SteeringPanel(lm, recording_factory(lm, []), [TASK, "glue_cola"], scale=1e-3, debounce=0.0, **EVAL)
    step(panel.scale, -1)
    panel.wait(timeout=300)
    assert len(panel.history) == 1 and panel.progress.value == 2 and panel.progress.bar_style == "success"
    assert "accuracy" in panel.status.value and "evaluation 1" in panel.status.value
    captured = capsys.readouterr()
    assert "%|" not in captured.err + captured.out  # no tqdm bars (they went to the Log Console)
    assert panel.output.outputs and "application/vnd.plotly.v1+json" in panel.output.outputs[0]["data"]


def test_panel_new_setting_cancels_a_running_evaluation(lm):
    started, release = threading.Event(), threading.Event()

    class Blocking(FixedVector):
        def prepare(self, *args, **kwargs):
            started.set()
            assert release.wait(300)
            return super().prepare(*args, **kwargs)

    made = []

    def factory(scale, layers, positions):
        made.append(scale)
        cls = Blocking if len(made) == 1 else FixedVector
        return cls(lm, scale, layers, positions)

    panel = SteeringPanel(lm, factory, [TASK, "glue_cola"], scale=1e-3, debounce=3600, **EVAL)
    results = []
    worker = threading.Thread(target=lambda: results.append(panel.refresh()))
    worker.start()
    assert started.wait(300)
    step(panel.scale)  # a new setting while the first is being evaluated
    release.set()
    worker.join(300)
    assert results == [None] and panel.history == []  # cancelled at the next task, not recorded
    row = panel.flush()
    assert row["scale"] == pytest.approx(panel.scale.value) and len(panel.history) == 1


def test_panel_error_is_shown_not_lost(lm):
    def broken(scale, layers, positions):
        raise RuntimeError("no such vector")

    panel = SteeringPanel(lm, broken, [TASK], scale=1e-3, debounce=0.0, **EVAL)
    step(panel.scale)
    panel.wait(timeout=300)
    assert "RuntimeError: no such vector" in panel.status.value and panel.progress.bar_style == "danger"
    with pytest.raises(RuntimeError):
        panel.refresh()  # in the calling thread the error is raised


def test_lambda_slider_reaches_trained_value_in_fine_steps(lm):
    grid = lambda_grid(0.05)
    assert 0.05 in grid and grid == sorted(grid)
    assert min(grid) == pytest.approx(5e-4) and max(grid) == pytest.approx(5.0)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) < 1.4  # one arrow key: ×1.33, not 0.05 -> 0.1
    panel = SteeringPanel(lm, recording_factory(lm, []), [TASK], scale=0.05, debounce=3600, **EVAL)
    assert panel.scale.value == 0.05
    step(panel.scale)
    assert 0.05 < panel.scale.value < 0.07
    other = SteeringPanel(lm, recording_factory(lm, []), [TASK], scale=0.3, scales=lambda_grid(0.05), debounce=3600,
                          **EVAL)
    assert {0.3, 0.05} <= {v for _, v in other.scale.options}
    with pytest.raises(ValueError, match="λ must be > 0"):
        lambda_grid(0.0)


def test_panel_positions_are_told_apart_in_the_plot(lm):
    panel = SteeringPanel(lm, recording_factory(lm, []), [TASK], scale=1e-3, debounce=3600, **EVAL)
    panel.refresh()
    panel.positions.value = "all"
    panel.flush()
    symbols = {t.name: t.marker.symbol for t in panel.figure.data}
    assert len(symbols) == 2 and len(set(symbols.values())) == 2, symbols  # same spot, different markers


def test_panel_show_returns_nothing(lm, capsys):
    panel = SteeringPanel(lm, recording_factory(lm, []), [TASK], scale=1e-3, debounce=3600, **EVAL)
    assert panel.show() is None and len(panel.history) == 1  # no Out[…] dict under the panel


def test_compare_and_category_table(lm, tmp_path):
    methods = {"zero-shot": wb.methods.ZeroShot(), "fixed": FixedVector(lm, 5.0, "all", "last")}
    results, eff = comparison.compare(lm, methods, [wb.load_task(TASK)], [TASK, "glue_cola"], run_dir=tmp_path, **EVAL)
    assert set(results.method) == {"zero-shot", "fixed"} and len(results) == 8
    assert list(eff.method) == ["zero-shot", "fixed"] and (eff["Fit (s)"] >= 0).all()
    table = comparison.category_table(results)
    assert {"NLU", "Unseen", "in_domain", "unseen"} <= set(table.category)
    assert isinstance(table, pd.DataFrame) and table.method.iloc[0] == "zero-shot"
    with pytest.raises(ValueError, match="empty"):
        comparison.compare(lm, {}, [], [TASK])


def test_standard_methods_budgets():
    line_up = comparison.standard_methods(None, budget="cpu-demo")
    assert list(line_up)[:3] == ["zero-shot", "4-shot", "BM25 4-shot"] and "ATV" not in line_up
    assert "16-shot" in comparison.standard_methods(None, budget="paper")
    with pytest.raises(ValueError, match="unknown budget"):
        comparison.standard_methods(None, budget="huge")


def test_sweep_evaluated_together_equals_each_point_alone(lm):
    """The grid runs through evaluate_many (shared bodies and prompts): every point's accuracy is what it has alone."""
    make = lambda s, l, p: FixedVector(lm, s, l, p)  # noqa: E731
    df = sweep(lm, make, [TASK], [0.5, 50.0], ("all", "top"), ("last", "all"), **{**EVAL, "prefixes": "all"})
    for row in df.itertuples():
        alone = accuracy_of(lm, make(row.scale, row.layers, row.positions), [TASK], **{**EVAL, "prefixes": "all"})
        assert (row.accuracy, row.label_accuracy, row.n) == (alone["accuracy"], alone["label_accuracy"], alone["n"])
