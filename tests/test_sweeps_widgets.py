"""λ/depth sweeps, the steering panel of notebook 03 (headless), and the comparison helpers of notebook 02."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.analysis.sweeps import layer_label, sweep
from workbench.core.testing import tiny_model
from workbench.eval import compare as comparison
from workbench.methods.base import PreparedBatch
from workbench.ui.widgets import SteeringPanel

TASK = "glue_sst2"


class FixedVector(wb.Method):
    """Injects one fixed random vector (a stand-in for ATV in fast tests)."""

    name = "fixed"

    def __init__(self, lm, scale, layers, positions):
        torch.manual_seed(0)
        self.vector, self.scale, self.layers, self.positions = torch.randn(lm.num_layers, lm.hidden_size), scale, layers, positions
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


def test_panel_slider_change_reruns_evaluation(lm):
    made = []

    def factory(scale, layers, positions):
        made.append((scale, list(layers), positions))
        return FixedVector(lm, scale, layers, positions)

    panel = SteeringPanel(lm, factory, [TASK], scale=1e-3, **EVAL)
    panel.refresh()
    assert len(panel.history) == 1
    panel.scale.value = 10.0  # a slider change re-runs the evaluation
    assert len(panel.history) == 2 and made[-1][0] == pytest.approx(10.0)
    panel.preset.value = "top"  # presets move the range slider, which re-runs
    lo, hi = panel.layers.value
    assert made[-1][1] == list(range(lo, hi + 1)) == wb.resolve_layers("top", lm.num_layers)
    panel.positions.value = "all"
    assert made[-1][2] == "all" and len(panel.history) == 4


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
