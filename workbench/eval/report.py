"""What notebook 02 says around its tables: whether the run can tell the methods apart, and a rounded efficiency
table whose ATV fit time is the generator's training.

Module contents: :func:`resolution_note` (a plain sentence when no paired difference is significant, with
roughly how many items per task would resolve a given difference), :func:`generator_fit_seconds` (the seconds a
saved generator took to train, from its ``generator.json`` or the history its training wrote next to it),
:func:`efficiency_view` (Table 5 rounded, fit times from such records where given, a column saying what each fit
time counts), :func:`ordered` (rows in the order of a method list).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.core.files import read_json

#: the difference (points of accuracy) :func:`resolution_note` sizes the needed number of items for
TARGET_DIFFERENCE = 5.0
#: per-item sd (points) of a paired difference of two 0/1 scores assumed at least (:func:`resolution_note`)
ITEM_SD = 50.0
#: history files a generator's training writes beside the generator folder (notebook 01, `python -m workbench train`)
HISTORY_FILES = ("01_training_history.csv", "history.csv")


def resolution_note(tests: pd.DataFrame, target: float = TARGET_DIFFERENCE, name: str = "in_domain") -> str | None:
    """A sentence saying the run cannot separate the methods, or None when it can.

    `tests`: :func:`workbench.eval.stats.paired` against one baseline. "Cannot separate": on the averages
    (level ``average``) of the tested score, no difference is significant after Holm. The number of items needed
    scales the items per task of the `name` average (in-domain) by (median half-width / `target`)² (intervals
    shrink as 1/√items), and is at least what a per-item sd of :data:`ITEM_SD` points implies for a macro average
    over that many tasks (a run of 2 items per task can show intervals of ±0 that say nothing).
    """
    if tests.empty:
        return None
    score = tests.attrs.get("score") or tests["score"].iloc[0]
    rows = tests[(tests["level"] == "average") & (tests["score"] == score)]
    if rows.empty or rows["significant"].any():
        return None
    focus = rows[rows["name"] == name]
    focus = focus if not focus.empty else rows
    half = ((focus["ci_high"] - focus["ci_low"]) / 2).astype(float)
    per_task = float((focus["n_items"] / focus["n_tasks"]).median())
    n_tasks = int(focus["n_tasks"].median())
    observed = per_task * (float(half.median()) / target) ** 2
    floor = (1.96 * ITEM_SD / target) ** 2 / max(n_tasks, 1)  # tiny runs can show near-zero intervals
    needed = max(int(math.ceil(max(observed, floor))), int(per_task) + 1)
    spans = int(((rows["ci_low"] <= 0) & (rows["ci_high"] >= 0)).sum())
    baseline = tests.attrs.get("baseline") or tests["baseline"].iloc[0]
    label = {"in_domain": "in-domain", "unseen": "unseen", "all": "overall"}.get(str(focus["name"].iloc[0]),
                                                                                 str(focus["name"].iloc[0]))
    spanning = ("every one of them spans 0" if spans == len(rows)
                else f"{spans} of the {len(rows)} span 0")
    return (f"This run is too small to tell the methods apart: with {per_task:g} test items per task, no method's "
            f"difference to {baseline} on the averages is significant after Holm, so no ▲/▼ appears below. The "
            f"{tests.attrs.get('ci', 0.95):.0%} intervals of those differences are ±{half.min():.0f} to "
            f"±{half.max():.0f} points wide on the {label} average ({spanning}). Resolving a {target:g}-point "
            f"difference needs about {needed} items per task (intervals shrink as 1/√items); `make study` runs "
            "every method on 30 items per task on all 25 tasks.")


def generator_fit_seconds(generator_dir: str | os.PathLike | None) -> tuple[float | None, str]:
    """(seconds, where they come from) of a saved generator's training, or (None, why not).

    Looked up in order: ``training.seconds`` in ``generator.json`` (notebook 01 records it), then the ``seconds``
    column of the history its training wrote beside the generator folder (:data:`HISTORY_FILES`: the epochs only,
    without the prefix cache's warm-up).
    """
    if generator_dir is None:
        return None, "no generator"
    folder = Path(generator_dir)
    meta_file = folder / "generator.json"
    meta = read_json(meta_file) if meta_file.is_file() else {}
    training = meta.get("training") if isinstance(meta, dict) else None
    seconds = training.get("seconds") if isinstance(training, dict) else None
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        return float(seconds), f"training, from {meta_file.name}"
    for name in HISTORY_FILES:
        path = folder.parent / name
        if path.is_file():
            history = pd.read_csv(path)
            if "seconds" in history and history["seconds"].notna().any():
                return float(history["seconds"].sum()), f"training epochs, from {name}"
    return None, f"no training record ({meta_file.name}, {' or '.join(HISTORY_FILES)})"


def _round_significant(value: float, digits: int = 3) -> float:
    if value is None or not np.isfinite(value) or value == 0:
        return value
    return round(float(value), digits - 1 - int(math.floor(math.log10(abs(value)))))


def efficiency_view(efficiency: pd.DataFrame, fit_records: Mapping[str, tuple[float | None, str]] | None = None,
                    order: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 5 for reading: latency to 3 significant digits, memory to 0.01 GiB, accuracies and fit seconds to 0.1.

    `fit_records`: ``{method: (seconds, source)}`` replacing the measured fit time (e.g. ATV's, whose ``fit`` only
    loads a generator trained elsewhere: :func:`generator_fit_seconds`); a None seconds leaves the cell empty.
    Column ``Fit (what)`` says what each fit time counts. `order`: methods' row order (others follow).
    """
    view = efficiency.copy()
    if "method" not in view:
        view = view.reset_index()
    if "Fit (s)" in view:
        what = np.where(view.get("Reloaded", pd.Series(False, index=view.index)).fillna(False).astype(bool),
                        "fit of the saved baseline (reloaded)", "fit in this run")
        view["Fit (what)"] = what
        for method, (seconds, source) in (fit_records or {}).items():
            hit = view["method"] == method
            view.loc[hit, "Fit (s)"] = np.nan if seconds is None else seconds
            view.loc[hit, "Fit (what)"] = source
    for col in view.columns:
        if not pd.api.types.is_numeric_dtype(view[col]) or pd.api.types.is_bool_dtype(view[col]):
            continue
        if col.startswith("Latency"):
            view[col] = view[col].map(_round_significant)
        elif "GiB" in col:
            view[col] = view[col].round(2)
        else:
            view[col] = view[col].round(1)
    return ordered(view, order) if order else view


def ordered(frame: pd.DataFrame, order: Sequence[str], column: str = "method") -> pd.DataFrame:
    """`frame`'s rows sorted by the position of `column` in `order` (values not in it last, in their order)."""
    rank = {m: i for i, m in enumerate(order)}
    key = frame[column].map(lambda m: rank.get(m, len(rank)))
    return frame.assign(_rank=key).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)
