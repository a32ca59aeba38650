"""Tables from evaluation results: per-task / per-category / in-domain and unseen summaries, paper layouts.

Module contents: :func:`task_groups` (category and group of every row), :func:`summarize` (mean ± sd over seeds,
macro averages over tasks), :func:`tables_like_paper` (Table 1 / Table 2 layouts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workbench.eval.scoring import consistency_by_task
from workbench.tasks.registry import CATEGORIES, IN_DOMAIN, REGISTRY, UNSEEN


# ----------------------------------------------------------------------------------------------- summarize
def task_groups(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: ``category`` (from the column or the task registry) and ``group`` ("in_domain"/"unseen"/"extra")."""
    if "task" not in df:
        raise ValueError("results need a 'task' column")
    category = df["category"] if "category" in df else df["task"].map(lambda t: REGISTRY.get(t, ("Extra",))[0])
    if "in_domain" in df:
        in_dom = df["in_domain"].astype(bool)
    else:
        in_dom = df["task"].isin(IN_DOMAIN)
    group = np.where(in_dom, "in_domain", np.where(category == "Unseen", "unseen", "extra"))
    return pd.DataFrame({"category": category.to_numpy(), "group": group, "in_domain": in_dom.to_numpy()},
                        index=df.index)


def _mean_sd(values: pd.Series) -> tuple[float, float]:
    arr = values.dropna().to_numpy(dtype=float)
    return (float(arr.mean()), float(arr.std(ddof=0))) if arr.size else (float("nan"), float("nan"))


def summarize(df: pd.DataFrame, loose: bool = False) -> pd.DataFrame:
    """Tidy summary, one row per method x level x name; accuracies and rates in %.

    levels: ``task`` (name = task), ``category`` (NLU, Reasoning, ..., Unseen), ``average`` (``in_domain``,
    ``unseen``, ``extra``, ``all``). For each seed, a task's accuracy is the mean of ``correct`` over its items x
    variants and a group's the unweighted mean over its tasks; ``accuracy`` / ``accuracy_sd`` are the mean and the
    population standard deviation (ddof=0) of those per-seed values over seeds (sd = 0 with one seed). Likewise
    ``n_tokens`` (mean prompt tokens, the paper's "# Tokens"). ``format_adherence`` (share of predictions that are
    a label token, Table 14) and ``consistency`` (SCORE, Table 15) are pooled over seeds per task and averaged over
    tasks for groups. ``loose=True`` scores with ``correct_loose`` / ``in_labels_loose`` instead.
    """
    required = {"task", "seed", "correct"}
    if not required <= set(df.columns):
        raise ValueError(f"summarize needs columns {sorted(required)}; missing {sorted(required - set(df.columns))}")
    d = df.copy()
    if loose:
        missing = {"correct_loose", "in_labels_loose"} - set(d.columns)
        if missing:
            raise ValueError(f"loose=True needs the columns {sorted(missing)} (written by evaluate)")
        d["correct"], d["in_labels"] = d["correct_loose"], d["in_labels_loose"]
    d[["category", "group", "in_domain"]] = task_groups(df)
    if "method" not in d:
        d["method"] = "method"
    d["correct"] = d["correct"].astype(float)
    for col in ("label_correct", "in_labels", "n_prompt_tokens"):
        d[col] = pd.to_numeric(d[col], errors="coerce") if col in d else np.nan
    per_seed = d.groupby(["method", "task", "seed"], sort=False).agg(
        accuracy=("correct", "mean"), label_accuracy=("label_correct", "mean"), n_tokens=("n_prompt_tokens", "mean"),
        category=("category", "first"), group=("group", "first"), n_rows=("correct", "size")).reset_index()
    per_seed[["accuracy", "label_accuracy"]] *= 100
    per_task = d.groupby(["method", "task"], sort=False).agg(format_adherence=("in_labels", "mean")) * 100
    if {"item", "prediction"} <= set(d.columns):
        cons = {m: consistency_by_task(part) * 100 for m, part in d.groupby("method", sort=False)}
        per_task["consistency"] = [cons[m].get(t, np.nan) for m, t in per_task.index]
    else:
        per_task["consistency"] = np.nan
    per_seed = per_seed.join(per_task, on=["method", "task"])

    def rows(level: str, key: str | None, subset: pd.DataFrame) -> list[dict]:
        out = []
        for (method, name), part in subset.groupby(["method", key] if key else ["method", "_all"], sort=False):
            seeds = part.groupby("seed")[["accuracy", "label_accuracy", "n_tokens"]].mean()
            acc, acc_sd = _mean_sd(seeds["accuracy"])
            lab, lab_sd = _mean_sd(seeds["label_accuracy"])
            tok, tok_sd = _mean_sd(seeds["n_tokens"])
            tasks_ = part.drop_duplicates("task")
            out.append({
                "method": method, "level": level, "name": name,
                "category": tasks_["category"].iloc[0] if level == "task" else (name if level == "category" else ""),
                "accuracy": acc, "accuracy_sd": acc_sd, "label_accuracy": lab, "label_accuracy_sd": lab_sd,
                "n_tokens": tok, "n_tokens_sd": tok_sd,
                "format_adherence": tasks_["format_adherence"].mean(), "consistency": tasks_["consistency"].mean(),
                "n_tasks": len(tasks_), "n_seeds": len(seeds), "n_rows": int(part["n_rows"].sum()),
            })
        return out

    result = rows("task", "task", per_seed) + rows("category", "category", per_seed)
    result += rows("average", "group", per_seed) + rows("average", None, per_seed.assign(_all="all"))
    return pd.DataFrame(result)


def _fmt(mean: float, sd: float, digits: int = 1) -> str:
    return "" if pd.isna(mean) else f"{mean:.{digits}f} ± {0.0 if pd.isna(sd) else sd:.{digits}f}"


def tables_like_paper(df: pd.DataFrame, formatted: bool = True, loose: bool = False) -> dict[str, pd.DataFrame]:
    """Paper layouts from results (or from :func:`summarize`'s output), one row per method.

    ``in_domain`` (Table 1: # Tokens, NLU, Reasoning, Knowledge, Math, Safety, Avg.), ``unseen`` (Table 2: # Tokens,
    each unseen task, Avg.), and per task x method ``format_adherence`` (Table 14) and ``consistency`` (Table 15).
    Cells are "mean ± sd" strings when `formatted`, else the means; `loose` as in :func:`summarize`. Tables without
    data are left out.
    """
    s = df if "level" in df.columns else summarize(df, loose=loose)

    def cell(r: pd.Series, col: str) -> Any:
        return _fmt(r[col], r[f"{col}_sd"]) if formatted else r[col]

    def table(avg: str, columns: list[tuple[str, str, str]]) -> pd.DataFrame | None:
        base = s[(s["level"] == "average") & (s["name"] == avg)]
        if base.empty:
            return None
        out = {}
        for method, r in base.set_index("method").iterrows():
            row = {"# Tokens": cell(r, "n_tokens")}
            for level, name, label in columns:
                hit = s[(s["method"] == method) & (s["level"] == level) & (s["name"] == name)]
                if not hit.empty:
                    row[label] = cell(hit.iloc[0], "accuracy")
            row["Avg."] = cell(r, "accuracy")
            out[method] = row
        return pd.DataFrame.from_dict(out, orient="index").rename_axis("method")

    tables: dict[str, pd.DataFrame] = {}
    t1 = table("in_domain", [("category", c, c) for c in CATEGORIES])
    t2 = table("unseen", [("task", t, t) for t in UNSEEN])
    for key, t in (("in_domain", t1), ("unseen", t2)):
        if t is not None:
            tables[key] = t
    tasks_ = s[s["level"] == "task"]
    for metric in ("format_adherence", "consistency"):
        if tasks_[metric].notna().any():
            tables[metric] = tasks_.pivot(index="name", columns="method", values=metric).rename_axis("task")
    return tables
