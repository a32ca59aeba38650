"""Fit and evaluate several methods on the same items — what notebook 02 (paper Tables 1, 2, 5, 14, 15) runs.

``standard_methods(generator, budget)`` builds the paper's line-up with settings for a budget: ``"paper"`` (the
paper's settings, Appendix B.2) or ``"cpu-demo"`` (the same methods with smaller fitting budgets, so the whole
comparison runs in minutes on 2 CPU cores: fewer demonstrations and prompts, a coarse ELICIT layer sweep, fewer
I2CL/LoRA epochs and items). ``compare`` fits each method once on the training tasks, evaluates it on the test
tasks and records fit time next to evaluation latency and memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from workbench.methods.base import Method

BUDGETS = ("paper", "cpu-demo")


def standard_methods(generator: Any = None, budget: str = "paper", k: int | None = None, seed: int = 42,
                     light_generator: Any = None, epochs: int | None = None, n_train: int | None = None) -> dict[str, Method]:
    """The baselines of the paper (+ ATV when a trained generator is given), configured for `budget`."""
    from workbench.methods import ATV, ELICIT, I2CL, BM25FewShot, FewShot, LoRA, StaticTaskVector, ZeroShot

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {BUDGETS}")
    small = budget == "cpu-demo"
    k = k or (4 if small else 16)
    epochs = epochs or (1 if small else 15)
    n_train = n_train or (8 if small else 90)
    methods: dict[str, Method] = {
        "zero-shot": ZeroShot(),
        f"{k}-shot": FewShot(k=k),
        f"BM25 {k}-shot": BM25FewShot(k=k),
        "static TV": StaticTaskVector(k=k, n_prompts=3 if small else 10, seed=seed, scale=0.1 if small else 1.0),
        "ELICIT": ELICIT(k=k, n_prompts=3 if small else 10, n_valid=6 if small else 100, layer_stride=6 if small else 1,
                         top_k=3 if small else 10, seed=seed),
        "I2CL": I2CL(shots_per_class=2 if small else 5, epochs=epochs, seed=seed),
        "LoRA": LoRA(epochs=epochs, n_train=n_train, batch_size=4 if small else 1, seed=seed),
    }
    if generator is not None:
        methods["ATV"] = ATV(generator)
    if light_generator is not None:
        methods["ATV-Light"] = ATV(light_generator)
    return methods


def compare(
    lm: Any,
    methods: Mapping[str, Method],
    train_tasks: Sequence[Any],
    eval_tasks: Sequence[Any],
    run_dir: str | Path | None = None,
    **evaluate_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit every method on `train_tasks` and evaluate it on `eval_tasks` (same items for all: same seeds/n_test).

    Returns (results: one row per item × variant × seed × method, efficiency: Table 5 layout plus fit seconds).
    With `run_dir`, each method's results go to ``run_dir/<method>/`` (resumable, see :func:`workbench.evaluate`).
    """
    from workbench.eval.efficiency import efficiency_table
    from workbench.eval.evaluate import evaluate

    if not methods:
        raise ValueError("methods is empty: give at least one method")
    frames: dict[str, pd.DataFrame] = {}
    fit_seconds: dict[str, float] = {}
    for name, method in methods.items():
        start = time.perf_counter()
        method.fit(lm, train_tasks)
        fit_seconds[name] = time.perf_counter() - start
        sub_dir = Path(run_dir) / name.replace(" ", "_") if run_dir is not None else None
        df = evaluate(lm, method, eval_tasks, run_dir=sub_dir, **evaluate_kwargs)
        frames[name] = df.assign(method=name)
        frames[name].attrs = df.attrs
    results = pd.concat(frames.values(), ignore_index=True)
    efficiency = efficiency_table(frames).reset_index()
    efficiency["Fit (s)"] = efficiency["method"].map(fit_seconds)
    return results, efficiency


def category_table(results: pd.DataFrame, loose: bool = False) -> pd.DataFrame:
    """Accuracy per method and category plus in-domain / unseen averages (tidy: method, category, accuracy, sd)."""
    from workbench.eval.tables import summarize

    s = summarize(results, loose=loose)
    keep = s[(s["level"] == "category") | ((s["level"] == "average") & s["name"].isin(["in_domain", "unseen"]))]
    out = keep.drop(columns="category").rename(columns={"name": "category", "accuracy_sd": "sd"})[["method", "category", "accuracy", "sd", "label_accuracy"]]
    order = {m: i for i, m in enumerate(results["method"].unique())} if "method" in results else {}
    rank = out["method"].map(order).fillna(len(order))
    return out.assign(_rank=rank).sort_values(["category", "_rank"]).drop(columns="_rank").reset_index(drop=True)
