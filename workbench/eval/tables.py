"""Tables from evaluation results: per-task / per-category / in-domain and unseen summaries, paper layouts.

Module contents: :func:`summarize` (mean ± sd over seeds, bootstrap intervals over items, macro averages over tasks),
:func:`format_cell` (a "62.3 ± 2.1▲" cell), :func:`tables_like_paper` (Table 1 / Table 2 / 14 / 15 layouts, with
significance marks against one or two baselines: ▲/▼ and △/▽ in the same cells). :func:`task_groups` lives in
:mod:`workbench.eval.stats` (re-exported). Every summary row and table names the score it shows
(:data:`workbench.eval.stats.SCORES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.eval.scoring import consistency_by_task
from workbench.eval.stats import (
    bootstrap_replicates,
    check_ci,
    check_count,
    check_score,
    clusters_by,
    interval,
    levels,
    paired,
    rng_for,
    score_columns,
    task_groups,
)
from workbench.tasks.registry import CATEGORIES, UNSEEN

__all__ = ["format_cell", "summarize", "tables_like_paper", "task_groups"]

#: significance marks of :func:`format_cell` / :func:`tables_like_paper`: significantly above / below the baseline
MARKS = {1: "▲", -1: "▼"}
#: the marks against a second baseline (e.g. ATV next to zero-shot), so one table carries both comparisons
SECOND_MARKS = {1: "△", -1: "▽"}


# ----------------------------------------------------------------------------------------------- summarize
def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return (float(arr.mean()), float(arr.std(ddof=0))) if arr.size else (float("nan"), float("nan"))


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray | float:
    """Mean over `axis` skipping NaN; NaN (no warning) where nothing is finite."""
    arr = np.asarray(values, dtype=float)
    ok = np.isfinite(arr)
    n = ok.sum(axis)
    total = np.where(ok, arr, 0.0).sum(axis)
    out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def _bounds(reps: dict, method: str, tasks: list[str], ci: float | None) -> tuple[float, float]:
    """Interval of the macro average over `tasks` from each task's bootstrap draws (NaN without draws)."""
    draws = [reps[(method, t)] for t in tasks if (method, t) in reps]
    return interval(np.mean(draws, axis=0), ci) if draws and ci is not None else (float("nan"), float("nan"))


def _resolve_score(score: str | None, loose: bool) -> str:
    if score is None:
        return "loose" if loose else "primary"
    if loose and score != "loose":
        raise ValueError(f"loose=True conflicts with score={score!r}; pass only one of them")
    return check_score(score)


def summarize(df: pd.DataFrame, loose: bool = False, ci: float | None = 0.95, score: str | None = None,
              n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Tidy summary, one row per method x level x name; accuracies and rates in %.

    levels: ``task`` (name = task), ``category`` (NLU, Reasoning, ..., Unseen), ``average`` (``in_domain``,
    ``unseen``, ``extra``, ``all``). `score` (column ``score``): ``"primary"`` (default: ``correct_loose`` on
    chat-templated rows, the official ``correct`` on raw rows), ``"strict"`` or ``"loose"``; ``loose=True`` is
    ``score="loose"``. For each seed, a task's accuracy is the mean of the score over its items x variants and a
    group's the unweighted mean over its tasks; ``accuracy`` / ``accuracy_sd`` are the mean and the population
    standard deviation (ddof=0) of those per-seed values over seeds (sd = 0 with one seed, the paper's "mean ± sd").
    ``label_accuracy`` (``label_correct``: argmax over the label tokens) likewise. Likewise ``n_tokens`` (mean prompt
    tokens, the paper's "# Tokens"). ``format_adherence`` (share of predictions that are a label token, Table 14),
    ``accuracy_in_format`` (accuracy on those rows; accuracy = adherence x accuracy-in-format per task) and
    ``consistency`` (SCORE, Table 15) are pooled over seeds per task and averaged over tasks for groups.

    With `ci` (default 0.95; None skips): ``ci_low`` / ``ci_high`` and ``label_ci_low`` / ``label_ci_high``, the
    percentile bootstrap interval (`n_boot` draws, seeded by `seed`) of accuracy and label accuracy. The resampling
    unit is the test item - all its variants and seeds move together - drawn within each task; group intervals
    come from the macro average of the tasks' draws (:mod:`workbench.eval.stats`). ``n_items``: items per row.
    """
    required = {"task", "seed", "correct"}
    if not required <= set(df.columns):
        raise ValueError(f"summarize needs columns {sorted(required)}; missing {sorted(required - set(df.columns))}")
    score = _resolve_score(score, loose)
    if ci is not None:
        check_ci(ci)
        n_boot = check_count(n_boot, "n_boot")
        if "item" not in df:
            raise ValueError("bootstrap intervals resample items: the results need an 'item' column "
                             "(or pass ci=None)")
    d = df.copy()
    d["correct"], d["in_labels"] = score_columns(df, score)
    d[["category", "group", "in_domain"]] = task_groups(df)
    if "method" not in d:
        d["method"] = "method"
    for col in ("label_correct", "n_prompt_tokens"):
        d[col] = pd.to_numeric(d[col], errors="coerce") if col in d else np.nan
    d["correct_in_format"] = d["correct"].where(d["in_labels"] == 1)
    n_items = d.groupby(["method", "task"], sort=False)["item"].nunique() if "item" in d else None
    per_seed = d.groupby(["method", "task", "seed"], sort=False).agg(
        accuracy=("correct", "mean"), label_accuracy=("label_correct", "mean"), n_tokens=("n_prompt_tokens", "mean"),
        category=("category", "first"), group=("group", "first"), n_rows=("correct", "size")).reset_index()
    per_seed[["accuracy", "label_accuracy"]] *= 100
    per_task = d.groupby(["method", "task"], sort=False).agg(
        format_adherence=("in_labels", "mean"), accuracy_in_format=("correct_in_format", "mean")) * 100
    if {"item", "prediction"} <= set(d.columns):
        cons = {m: consistency_by_task(part) * 100 for m, part in d.groupby("method", sort=False)}
        per_task["consistency"] = [cons[m].get(t, np.nan) for m, t in per_task.index]
    else:
        per_task["consistency"] = np.nan
    per_task["n_items"] = n_items if n_items is not None else np.nan
    per_seed = per_seed.join(per_task, on=["method", "task"])
    reps = {}
    if ci is not None:
        for key, col in (("accuracy", "correct"), ("label_accuracy", "label_correct")):
            cl = clusters_by(d, d[col], by=("method", "task"))
            reps[key] = {k: bootstrap_replicates(c, n_boot, rng_for(seed, k[1])) * 100 for k, c in cl.items()}

    out = []
    for method, part in per_seed.groupby("method", sort=False):
        tasks_ = part.drop_duplicates("task").reset_index(drop=True)
        names = tasks_["task"]
        pos = {t: i for i, t in enumerate(names)}
        grid = {c: part.pivot(index="task", columns="seed", values=c).reindex(names).to_numpy(float)
                for c in ("accuracy", "label_accuracy", "n_tokens")}  # tasks x seeds
        n_rows = part.groupby("task", sort=False)["n_rows"].sum().reindex(names).to_numpy()
        per = {c: tasks_[c].to_numpy(float)
               for c in ("format_adherence", "accuracy_in_format", "consistency", "n_items")}
        for level, name, members in levels(tasks_):
            ix = [pos[t] for t in members]
            stats = {c: _mean_sd(_nanmean(grid[c][ix], 0)) for c in grid}
            bounds = {key: _bounds(reps.get(key, {}), method, members, ci) for key in ("accuracy", "label_accuracy")}
            n_items_ = per["n_items"][ix]
            out.append({
                "method": method, "level": level, "name": name, "score": score,
                "category": tasks_["category"].iloc[ix[0]] if level == "task" else (
                    name if level == "category" else ""),
                "accuracy": stats["accuracy"][0], "ci_low": bounds["accuracy"][0], "ci_high": bounds["accuracy"][1],
                "accuracy_sd": stats["accuracy"][1], "label_accuracy": stats["label_accuracy"][0],
                "label_ci_low": bounds["label_accuracy"][0], "label_ci_high": bounds["label_accuracy"][1],
                "label_accuracy_sd": stats["label_accuracy"][1],
                "n_tokens": stats["n_tokens"][0], "n_tokens_sd": stats["n_tokens"][1],
                "format_adherence": _nanmean(per["format_adherence"][ix], 0),
                "accuracy_in_format": _nanmean(per["accuracy_in_format"][ix], 0),
                "consistency": _nanmean(per["consistency"][ix], 0),
                "n_tasks": len(ix), "n_seeds": int(np.isfinite(grid["accuracy"][ix]).any(0).sum()),
                "n_rows": int(n_rows[ix].sum()),
                "n_items": float(np.nansum(n_items_)) if np.isfinite(n_items_).any() else np.nan,
            })
    order = {"task": 0, "category": 1, "average": 2}
    result = pd.DataFrame(out)
    result = result.iloc[np.argsort(result["level"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    result.attrs.update({"score": score, "ci": ci, "n_boot": n_boot if ci is not None else None, "seed": seed})
    return result


# ----------------------------------------------------------------------------------------------- paper tables
def format_cell(value: float, spread: float | None = None, mark: str = "", digits: int = 1) -> str:
    """A paper-style cell: "62.3 ± 2.1" (`spread`: an sd or an interval's half-width; None: no "±") + `mark`
    (e.g. :data:`MARKS`); "" when `value` is NaN, a NaN `spread` prints as 0."""
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.{digits}f}"
    if spread is not None:
        text += f" ± {0.0 if pd.isna(spread) else spread:.{digits}f}"
    return text + mark


CELLS = ("sd", "ci")
_COLS = {"accuracy": ("ci_low", "ci_high"), "label_accuracy": ("label_ci_low", "label_ci_high")}


def tables_like_paper(
    df: pd.DataFrame, formatted: bool = True, loose: bool = False, score: str | None = None, cell: str = "sd",
    baseline: str | Sequence[str] | None = None, ci: float = 0.95, alpha: float = 0.05, n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Paper layouts from results (or from :func:`summarize`'s output), one row per method.

    ``in_domain`` (Table 1: # Tokens, NLU, Reasoning, Knowledge, Math, Safety, Avg.) and ``unseen`` (Table 2:
    # Tokens, each unseen task, Avg.) with the `score` (see :func:`summarize`), ``in_domain_label`` /
    ``unseen_label`` the same with the label-restricted accuracy, and per task x method ``format_adherence``
    (Table 14), ``accuracy_in_format`` and ``consistency`` (Table 15). Cells: `cell` = "sd" gives "mean ± sd over
    seeds" (the paper's format), "ci" gives "mean ± half-width of the `ci` bootstrap interval"; plain means when
    not `formatted`. With `baseline` (needs results, not a summary), cells of other methods get ▲ / ▼ when
    :func:`workbench.eval.stats.paired` finds them significantly above / below the baseline (Holm, `alpha`); with
    two baselines (e.g. ``("zero-shot", "ATV")``) the second one's marks are △ / ▽, in the same cells. Baselines
    missing from the results are skipped. Methods keep the order of the results in every table (rows of Tables 1/2,
    columns of Tables 14/15). Each table's ``attrs["score"]`` says what it shows (its column-axis name, briefly;
    ``attrs["marks"]`` the marks' meaning). Tables without data are left out.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; use one of {CELLS}")
    summary_given = "level" in df.columns
    if summary_given and baseline:
        raise ValueError("significance marks need the results (one row per item x variant), not a summary")
    s = df if summary_given else summarize(df, loose=loose, ci=ci, score=score, n_boot=n_boot, seed=seed)
    name = s["score"].iloc[0] if "score" in s and len(s) else _resolve_score(score, loose)
    bases = _baselines(baseline, df if not summary_given else None)
    if len(bases) > len((MARKS, SECOND_MARKS)):
        raise ValueError(f"at most two baselines can be marked, got {bases}")
    marks: dict[tuple, str] = {}
    for base, symbols in zip(bases, (MARKS, SECOND_MARKS)):
        tests = paired(df, baseline=base, score=name, ci=ci, alpha=alpha, n_boot=n_boot, seed=seed)
        for r in tests[tests["significant"]].itertuples():
            key = (r.method, r.score, r.level, r.name)
            marks[key] = marks.get(key, "") + symbols[1 if r.difference > 0 else -1]
    spread = "± sd over seeds" if cell == "sd" else f"± half-width of the {ci:.0%} bootstrap interval"
    meaning = "; ".join(f"{symbols[1]}/{symbols[-1]} significantly above/below {base}"
                        for base, symbols in zip(bases, (MARKS, SECOND_MARKS)))
    sig = f"; {meaning} (paired, Holm, α={alpha})" if bases else ""
    order = list(dict.fromkeys(s["method"]))

    def value(r: pd.Series, col: str, mark: str = "") -> Any:
        if not formatted:
            return r[col]
        if col == "n_tokens" and cell == "ci":
            return format_cell(r[col], None, mark)
        if cell == "sd":
            return format_cell(r[col], r.get(f"{col}_sd"), mark)
        low, high = (r.get(c, np.nan) for c in _COLS[col])
        return format_cell(r[col], (high - low) / 2, mark)

    def table(avg: str, columns: list[tuple[str, str, str]], col: str) -> pd.DataFrame | None:
        base = s[(s["level"] == "average") & (s["name"] == avg)]
        if base.empty or base[col].isna().all():
            return None
        kind = name if col == "accuracy" else "label"
        out = {}
        for method, r in base.set_index("method").iterrows():
            row = {"# Tokens": value(r, "n_tokens")}
            for level, nm, label in [*columns, ("average", avg, "Avg.")]:
                hit = s[(s["method"] == method) & (s["level"] == level) & (s["name"] == nm)]
                if not hit.empty:
                    row[label] = value(hit.iloc[0], col, marks.get((method, kind, level, nm), ""))
            out[method] = row
        t = pd.DataFrame.from_dict(out, orient="index").rename_axis("method")
        what = f"{name} accuracy" if col == "accuracy" else "label accuracy (label_correct)"
        t.attrs["score"] = f"{what}, %" + (f", {spread}{sig}" if formatted else ", mean over seeds")
        t.attrs["marks"] = meaning
        t.columns.name = f"{kind} acc. %" + ("" if not formatted else " ± sd" if cell == "sd" else f" ± {ci:.0%} CI")
        return t

    tables: dict[str, pd.DataFrame] = {}
    for col, suffix in (("accuracy", ""), ("label_accuracy", "_label")):
        for key, t in (("in_domain", table("in_domain", [("category", c, c) for c in CATEGORIES], col)),
                       ("unseen", table("unseen", [("task", u, u) for u in UNSEEN], col))):
            if t is not None:
                tables[key + suffix] = t
    tasks_ = s[s["level"] == "task"]
    for metric in ("format_adherence", "accuracy_in_format", "consistency"):
        if metric in tasks_ and tasks_[metric].notna().any():
            t = tasks_.pivot(index="name", columns="method", values=metric).rename_axis("task")
            t = t[[m for m in order if m in t.columns]]  # pivot sorts the methods; keep the results' order
            t.attrs["score"] = f"{metric.replace('_', ' ')} ({name} score), %, pooled over seeds"
            tables[metric] = t
    return tables


def _baselines(baseline: str | Sequence[str] | None, results: pd.DataFrame | None) -> list[str]:
    """`baseline` as a list; with several, those missing from `results` are dropped, and all of them when the results
    hold a single method (one given as a string is kept: :func:`workbench.eval.stats.paired` then names the error)."""
    if baseline is None:
        return []
    if isinstance(baseline, str):
        return [baseline]
    names = list(baseline)
    if results is not None and "method" in results:
        present = set(results["method"])
        names = [b for b in names if b in present] if len(present) > 1 else []
    return names
