"""Grids over injection strength λ, depth (bottom/middle/top/all) and positions — paper Table 3 as curves."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from workbench.core.interventions import LayerSpec
from workbench.methods.base import Method

MethodFactory = Callable[[float, LayerSpec, str], Method]


def layer_label(layers: LayerSpec) -> str:
    """Readable name of a layer spec: the preset name, or first–last for a range/list."""
    if isinstance(layers, str):
        return layers
    indices = list(layers)
    return f"{indices[0]}–{indices[-1]}" if indices == list(range(indices[0], indices[-1] + 1)) else ",".join(map(str, indices))


def accuracy_of(lm: Any, method: Method, tasks: Any, **evaluate_kwargs: Any) -> dict:
    """Mean first-token accuracy (%) of `method` and the number of scored rows."""
    from workbench.eval.evaluate import evaluate

    df = evaluate(lm, method, tasks, **evaluate_kwargs)
    return {"accuracy": 100.0 * float(df["correct"].mean()), "n": len(df)}


def sweep(
    lm: Any,
    make_method: MethodFactory,
    tasks: Any,
    scales: Sequence[float],
    layer_specs: Sequence[LayerSpec] = ("all", "bottom", "middle", "top"),
    positions: Sequence[str] = ("last",),
    **evaluate_kwargs: Any,
) -> pd.DataFrame:
    """Evaluate ``make_method(scale, layers, positions)`` on every grid point; one row per point."""
    if not scales or not layer_specs or not positions:
        raise ValueError("scales, layer_specs and positions must each list at least one value")
    rows = []
    grid = list(itertools.product(scales, layer_specs, positions))
    for scale, layers, pos in tqdm(grid, desc="sweep"):
        result = accuracy_of(lm, make_method(scale, layers, pos), tasks, **evaluate_kwargs)
        rows.append({"scale": scale, "layers": layer_label(layers), "positions": pos, **result})
    return pd.DataFrame(rows)
