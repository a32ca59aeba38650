"""Grids over injection strength λ, depth (bottom/middle/top/all) and positions — paper Table 3 as curves."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import pandas as pd

from workbench.core.interventions import LayerSpec
from workbench.eval.evaluate import evaluate, evaluate_many
from workbench.methods.base import Method
from workbench.tasks.registry import TaskSpec, resolve_tasks

MethodFactory = Callable[[float, LayerSpec, str], Method]


def layer_label(layers: LayerSpec) -> str:
    """Readable name of a layer spec: the preset name, or first–last for a range/list."""
    if isinstance(layers, str):
        return layers
    indices = list(layers)
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}–{indices[-1]}"
    return ",".join(map(str, indices))


def accuracy_of(lm: Any, method: Method, tasks: TaskSpec, **evaluate_kwargs: Any) -> dict:
    """Accuracy (%) of `method` on the primary score (loose on chat prompts, strict on raw ones), the
    label-restricted accuracy (%) and the number of scored rows.

    `tasks`: a task name, a Task or a list mixing both (:func:`workbench.tasks.registry.resolve_tasks`).
    """
    return accuracies(evaluate(lm, method, resolve_tasks(tasks, evaluate_kwargs.pop("data_dir", None)),
                               **evaluate_kwargs))


def accuracies(df: pd.DataFrame) -> dict:
    """Primary and label-restricted accuracy (%) of result rows, and their number."""
    label = df["label_correct"].dropna().astype(float)
    return {"accuracy": 100.0 * float(df["primary_correct"].mean()),
            "label_accuracy": 100.0 * float(label.mean()) if len(label) else float("nan"), "n": len(df)}


def sweep(
    lm: Any,
    make_method: MethodFactory,
    tasks: TaskSpec,
    scales: Sequence[float],
    layer_specs: Sequence[LayerSpec] = ("all", "bottom", "middle", "top"),
    positions: Sequence[str] = ("last",),
    **evaluate_kwargs: Any,
) -> pd.DataFrame:
    """Evaluate ``make_method(scale, layers, positions)`` on every grid point; one row per point.

    `tasks` (a task name, a Task or a list mixing both) are resolved once. The grid points are evaluated together
    (:func:`~workbench.eval.evaluate.evaluate_many`): each prompt body, and each prompt but its last token, is
    computed once for all last-token points; the rows are those :func:`~workbench.eval.evaluate.evaluate` gives.
    """
    if not scales or not layer_specs or not positions:
        raise ValueError("scales, layer_specs and positions must each list at least one value")
    tasks = resolve_tasks(tasks, evaluate_kwargs.pop("data_dir", None))
    grid = list(itertools.product(scales, layer_specs, positions))
    methods = {f"point {i}": make_method(scale, layers, pos) for i, (scale, layers, pos) in enumerate(grid)}
    results = evaluate_many(lm, methods, tasks, **evaluate_kwargs)
    return pd.DataFrame([{"scale": scale, "layers": layer_label(layers), "positions": pos,
                          **accuracies(results[f"point {i}"])} for i, (scale, layers, pos) in enumerate(grid)])
