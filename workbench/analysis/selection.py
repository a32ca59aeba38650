"""Choosing λ (and the injected layers) on the validation split, never on test (issue: comparisons to trust).

Module contents:

- :func:`select_on_valid`: evaluates ``make_method(scale, layers, "last")`` on each grid point on the **valid** split
  of the tasks, picks the point with the best validation score (ties: the smaller λ, then the first layer spec),
  and returns the chosen method wrapped in :class:`Selected` together with the validation curve.
- :class:`Selected`: a :class:`~workbench.methods.base.Method` that behaves as the chosen one, records the choice in
  its ``config()`` (so in every run config and results folder), and, with ``fallback=True``, answers zero-shot on
  the tasks where validation showed the chosen method below zero-shot (rows carry ``selection``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.analysis.sweeps import MethodFactory, layer_label
from workbench.core.interventions import LayerSpec
from workbench.eval.evaluate import evaluate
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.prompting import ZeroShot
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

SCORES = ("primary_correct", "label_correct")


class Selected(Method):
    """The method chosen on validation; zero-shot on `fallback_tasks` (see the module docstring)."""

    def __init__(self, inner: Method, choice: dict[str, Any], fallback_tasks: Sequence[str] = ()):
        self.inner, self.choice, self.fallback_tasks = inner, dict(choice), tuple(fallback_tasks)
        self.name = inner.name
        self.shares_model_weights = inner.shares_model_weights
        self.reads_plain_queries = inner.reads_plain_queries
        self._zero_shot = ZeroShot()

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        if task.name in self.fallback_tasks:
            batch = self._zero_shot.prepare(lm, task, items, texts, seed)
            return PreparedBatch(batch.prompts, None, [{"selection": "zero-shot fallback"} for _ in items])
        batch = self.inner.prepare(lm, task, items, texts, seed)
        info = batch.info or [{} for _ in items]
        return PreparedBatch(batch.prompts, batch.intervention, [{**row, "selection": "chosen"} for row in info])

    @contextlib.contextmanager
    def active(self, lm: LanguageModel) -> Iterator[None]:
        with self.inner.active(lm):
            yield

    def config(self) -> dict:
        return {**self.inner.config(), "selected_on_valid": self.choice, "fallback_tasks": list(self.fallback_tasks)}


def best_point(curve: pd.DataFrame, score: str = "accuracy") -> Any:
    """Index of the row of a sweep curve (``scale``, `score`) with the best score; ties: the smaller λ, then the
    earlier row. The rule :func:`select_on_valid` applies, for curves computed elsewhere (notebook 03)."""
    if curve.empty or not {"scale", score} <= set(curve.columns):
        raise ValueError(f"need a non-empty curve with the columns 'scale' and {score!r}, got {list(curve.columns)}")
    return curve.sort_values([score, "scale"], ascending=[False, True], kind="stable").index[0]


def select_on_valid(
    lm: Any,
    make_method: MethodFactory,
    tasks: TaskSpec,
    scales: Sequence[float],
    layer_specs: Sequence[LayerSpec] = ("all",),
    n_valid: int = 20,
    score: str = "primary_correct",
    fallback: bool = False,
    **evaluate_kwargs: Any,
) -> tuple[Selected, pd.DataFrame]:
    """Pick λ and the layers of ``make_method(scale, layers, "last")`` on the valid split of `tasks`.

    Returns (the chosen method as :class:`Selected`, the validation curve: one row per grid point with the pooled
    score, the label-restricted accuracy and ``chosen``). With ``fallback=True`` zero-shot is also evaluated on the
    valid split, and the chosen method answers zero-shot on every task where its validation score is below
    zero-shot's. `score`: ``"primary_correct"`` (the lead's primary score) or ``"label_correct"``.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use one of {SCORES}")
    if not scales or not layer_specs:
        raise ValueError("scales and layer_specs must each list at least one value")
    task_list = resolve_tasks(tasks, evaluate_kwargs.pop("data_dir", None))
    kwargs = {"n_test": n_valid, "progress": False, **evaluate_kwargs, "split": "valid"}
    rows, per_task = [], {}
    for scale, layers in itertools.product(scales, layer_specs):
        df = evaluate(lm, make_method(scale, layers, "last"), task_list, **kwargs)
        key = (scale, layer_label(layers))
        per_task[key] = df.groupby("task")[score].mean()
        rows.append({"scale": scale, "layers": key[1], "accuracy": 100 * float(df[score].mean()),
                     "label_accuracy": 100 * float(df["label_correct"].astype(float).mean()), "n": len(df)})
    curve = pd.DataFrame(rows)
    best = best_point(curve)
    curve["chosen"] = curve.index == best
    scale, layers = scales[best // len(layer_specs)], layer_specs[best % len(layer_specs)]
    choice = {"scale": scale, "layers": layer_label(layers), "score": score, "n_valid": n_valid,
              "valid_accuracy": float(curve.loc[best, "accuracy"])}
    fallback_tasks: list[str] = []
    if fallback:
        zero = evaluate(lm, ZeroShot(), task_list, **kwargs).groupby("task")[score].mean()
        chosen = per_task[(scale, layer_label(layers))]
        fallback_tasks = [t for t in chosen.index if chosen[t] < zero.get(t, 0.0)]
        choice["zero_shot_valid"] = {t: float(v) for t, v in zero.items()}
    return Selected(make_method(scale, layers, "last"), choice, fallback_tasks), curve
