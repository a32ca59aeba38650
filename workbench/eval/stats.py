"""Uncertainty for evaluation results: which score a row counts, item-level bootstrap intervals, paired tests.

An item is asked in 9 prompt variants (3 templates x 3 answer prefixes) and, with several seeds, possibly in several
seeds' draws; those rows are not independent. Everything here resamples or permutes *clusters*: a cluster is one
(task, item), i.e. all rows of an item over its variants and seeds, which always move together. Resampling is
stratified by task (each task's items are drawn within the task) and averages over tasks are macro averages
(unweighted mean over tasks, as in the paper). A task's statistic is, as in :func:`workbench.eval.tables.summarize`,
the mean over seeds of the per-seed share of correct rows, so a replicate with all weights 1 reproduces it exactly.

Module contents:

* Scores: :data:`SCORES`, :func:`chat_rows`, :func:`primary_correct`, :func:`score_columns` (the primary score is
  ``correct_loose`` on chat-templated rows and the official strict ``correct`` on raw rows).
* Levels: :func:`task_groups` (category / group of every row), :func:`levels` (the task, category and average rows
  of a summary with the tasks each averages).
* Clusters and bootstrap: :class:`Clusters`, :func:`clusters_by`, :func:`bootstrap_weights`,
  :func:`bootstrap_replicates`, :func:`interval`.
* Tests: :func:`sign_flip_pvalues` (two-sided sign-flip permutation test on per-item differences), :func:`holm`, and
  :func:`paired` (every method against a baseline: difference, interval, p-value, Holm, ``harmful`` flag).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.tasks.registry import IN_DOMAIN, REGISTRY

#: ``primary``: loose on chat-templated rows, strict elsewhere; ``strict``: the official first-token ``correct``;
#: ``loose``: ``correct_loose`` (prediction equals the target up to surrounding whitespace) on every row.
SCORES = ("primary", "strict", "loose")
_COLUMNS = {"strict": ("correct", "in_labels"), "loose": ("correct_loose", "in_labels_loose")}


# ----------------------------------------------------------------------------------------------- checks
def check_ci(ci: float) -> float:
    """`ci` as a float in (0, 1), else a ValueError naming it."""
    if isinstance(ci, bool) or not isinstance(ci, (int, float, np.floating)) or not 0 < float(ci) < 1:
        raise ValueError(f"ci must be a confidence level in (0, 1), e.g. 0.95, got {ci!r}")
    return float(ci)


def check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use one of {SCORES}")
    return score


# ----------------------------------------------------------------------------------------------- scores
def chat_rows(df: pd.DataFrame) -> pd.Series:
    """Per row: was the prompt chat-templated? The ``chat`` column, else ``attrs`` (``chat`` or the recorded
    model's ``chat_template``), else False."""
    if "chat" in df:
        return df["chat"].fillna(False).astype(bool)
    config = df.attrs.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    chat = df.attrs.get("chat", model.get("chat_template", False) if isinstance(model, dict) else False)
    return pd.Series(bool(chat), index=df.index)


def _need(df: pd.DataFrame, columns: Sequence[str], why: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{why} needs the columns {missing} (written by evaluate)")


def primary_correct(df: pd.DataFrame) -> pd.Series:
    """The primary score per row: the ``primary_correct`` column if present, else ``correct_loose`` on chat rows
    (:func:`chat_rows`) and ``correct`` on the others."""
    if "primary_correct" in df:
        return df["primary_correct"]
    chat = chat_rows(df)
    if not chat.any():
        return df["correct"]
    _need(df, ["correct", "correct_loose"], "the primary score of chat-templated rows")
    return df["correct_loose"].where(chat, df["correct"])


def score_columns(df: pd.DataFrame, score: str = "primary") -> tuple[pd.Series, pd.Series]:
    """(correct, in_format) per row as floats (NaN = not scored, e.g. no label words) for a score of :data:`SCORES`.

    ``in_format``: the prediction is a label token (``in_labels``; ``in_labels_loose`` for the loose score and for
    the primary score on chat rows).
    """
    check_score(score)
    if score == "primary":
        correct = primary_correct(df)
        chat = chat_rows(df)
        fmt_col = df["in_labels"] if "in_labels" in df else pd.Series(np.nan, index=df.index)
        if chat.any():
            _need(df, ["in_labels_loose"], "the format adherence of chat-templated rows")
            fmt_col = df["in_labels_loose"].where(chat, fmt_col)
    else:
        corr_name, fmt_name = _COLUMNS[score]
        _need(df, [corr_name], f"score={score!r}")
        if score == "loose":
            _need(df, [fmt_name], f"score={score!r}")
        correct = df[corr_name]
        fmt_col = df[fmt_name] if fmt_name in df else pd.Series(np.nan, index=df.index)
    return pd.to_numeric(correct, errors="coerce").astype(float), pd.to_numeric(fmt_col, errors="coerce").astype(float)


# ----------------------------------------------------------------------------------------------- levels
def task_groups(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: ``category`` (from the column or the task registry) and ``group`` ("in_domain"/"unseen"/"extra")."""
    if "task" not in df:
        raise ValueError("results need a 'task' column")
    if "category" in df:
        category = df["category"]
    else:
        category = df["task"].map({t: REGISTRY.get(t, ("Extra",))[0] for t in df["task"].unique()})
    in_dom = df["in_domain"].astype(bool) if "in_domain" in df else df["task"].isin(IN_DOMAIN)
    group = np.where(in_dom, "in_domain", np.where(category == "Unseen", "unseen", "extra"))
    return pd.DataFrame({"category": category.to_numpy(), "group": group, "in_domain": in_dom.to_numpy()},
                        index=df.index)


def levels(tasks: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(level, name, tasks averaged) for a frame with one row per task (columns task, category, group): every task,
    every category, every group (in_domain / unseen / extra) and ``all``, in order of appearance."""
    out = [("task", t, [t]) for t in tasks["task"]]
    for level, key in (("category", "category"), ("average", "group")):
        out += [(level, name, list(part["task"])) for name, part in tasks.groupby(key, sort=False)]
    return [*out, ("average", "all", list(tasks["task"]))]


# ----------------------------------------------------------------------------------------------- clusters
@dataclass(frozen=True)
class Clusters:
    """One task's rows grouped by item (rows of the arrays) and seed (columns): sum and number of scored values."""

    items: np.ndarray
    sums: np.ndarray
    counts: np.ndarray

    @property
    def estimate(self) -> float:
        """Mean over seeds of the per-seed mean (the summary's task accuracy, as a share)."""
        return float(_seed_mean(self.sums.sum(0), self.counts.sum(0)))

    def item_weights(self) -> np.ndarray:
        """Per item: its contribution to :attr:`estimate` (they sum to it); flipping its sign = swapping methods."""
        totals = self.counts.sum(0)
        seeds = totals > 0
        if not seeds.any():
            return np.zeros(len(self.items))
        return (self.sums[:, seeds] / totals[seeds]).mean(1)


def _seed_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over the last axis (seeds) of sums / counts, skipping seeds without values (NaN if none has any)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = sums / counts
    seen = counts > 0
    n = seen.sum(-1)
    total = np.where(seen, ratio, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def clusters_by(df: pd.DataFrame, values: pd.Series | np.ndarray, by: Sequence[str] = ("method", "task")) -> dict:
    """``{key: Clusters}`` per combination of the `by` columns (key = tuple); `values` are per-row floats (NaN =
    not scored). Items without any scored value are left out."""
    _need(df, [*by, "item", "seed"], "clusters")
    v = np.asarray(values, dtype=float)
    scored = ~np.isnan(v)
    frame = df.loc[scored, [*by, "item"]]
    if frame.empty:
        return {}
    cluster = frame.groupby([*by, "item"], sort=True, observed=True, dropna=False).ngroup().to_numpy()
    seed, seeds = pd.factorize(df.loc[scored, "seed"], sort=True)
    n_c, n_s = int(cluster.max()) + 1, len(seeds)
    flat = cluster * n_s + seed
    sums = np.bincount(flat, weights=v[scored], minlength=n_c * n_s).reshape(n_c, n_s)
    counts = np.bincount(flat, minlength=n_c * n_s).reshape(n_c, n_s).astype(float)
    first = np.zeros(n_c, dtype=int)
    first[cluster[::-1]] = np.arange(len(cluster))[::-1]  # first row of every cluster
    heads = frame.iloc[first]
    # clusters are sorted by `by`
    group = heads.groupby(list(by), sort=False, observed=True, dropna=False).ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    stops = np.r_[starts[1:], n_c]
    keys = heads[list(by)].iloc[starts].itertuples(index=False, name=None)
    items = heads["item"].to_numpy()
    return {key: Clusters(items[a:b], sums[a:b], counts[a:b]) for key, a, b in zip(keys, starts, stops)}


def bootstrap_weights(n_items: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n_items] how often each item is drawn in each of `n_boot` draws of `n_items` with replacement."""
    draws = rng.integers(0, n_items, size=(n_boot, n_items)) + (np.arange(n_boot) * n_items)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n_items).reshape(n_boot, n_items).astype(float)


def rng_for(seed: int, *names: Hashable) -> np.random.Generator:
    """A generator seeded by `seed` and `names` (e.g. the task), independent of what else is being computed."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(n).encode()) for n in names)])


def bootstrap_replicates(clusters: Clusters, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot] replicates of :attr:`Clusters.estimate`, drawing the task's items with replacement (each draw
    takes every row of an item: its weight multiplies the item's sums and counts over all variants and seeds)."""
    weights = bootstrap_weights(len(clusters.items), n_boot, rng)
    return _seed_mean(weights @ clusters.sums, weights @ clusters.counts)


def interval(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates skipped; NaN bounds if none is finite)."""
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2], method="inverted_cdf")
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------- tests
def sign_flip_pvalues(weights: np.ndarray, n_perm: int, rng: np.random.Generator, chunk: int = 1000) -> np.ndarray:
    """Two-sided p-values of ``T = sum(weights[:, j])`` for every column j under random sign flips of the rows.

    Rows are items (their per-item differences, weighted into each statistic), columns the statistics that share the
    flips (a task and the averages containing it). Null hypothesis: for every item the two methods' outcomes are
    exchangeable. Exact (all 2^k sign patterns) when a column has k <= log2(n_perm) non-zero rows, else Monte Carlo
    with ``(1 + #{|T*| >= |T|}) / (1 + n_perm)``.
    """
    w = np.asarray(weights, dtype=float).reshape(len(weights), -1)
    obs = np.abs(w.sum(0))
    tol = 1e-9 * np.maximum(np.abs(w).sum(0), 1e-300)
    exceed = np.zeros(w.shape[1])
    total = w.sum(0)
    for start in range(0, n_perm, chunk):
        size = (min(chunk, n_perm - start), -(-w.shape[0] // 8))
        bits = np.unpackbits(rng.integers(0, 256, size=size, dtype=np.uint8), axis=1, count=w.shape[0])
        exceed += (np.abs(2.0 * (bits.astype(float) @ w) - total) >= obs - tol).sum(0)  # sum(s*w), s = 2*bit - 1
    p = (1 + exceed) / (1 + n_perm)
    for j in range(w.shape[1]):
        nz = w[:, j][w[:, j] != 0]
        if nz.size == 0:
            p[j] = 1.0
        elif 2 ** nz.size <= n_perm:
            patterns = ((np.arange(2 ** nz.size)[:, None] >> np.arange(nz.size)) & 1) * 2.0 - 1.0
            p[j] = float(np.mean(np.abs(patterns @ nz) >= obs[j] - tol[j]))
    return p


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


# ----------------------------------------------------------------------------------------------- paired
_KEYS = ("task", "item", "seed", "template", "prefix")


def paired(
    df: pd.DataFrame, baseline: str = "zero-shot", score: str = "primary", ci: float = 0.95, alpha: float = 0.05,
    methods: Sequence[str] | None = None, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0,
) -> pd.DataFrame:
    """Every method against `baseline` on the same rows, one row per method x score x level x name (units: %).

    Rows of a method and the baseline are matched on (task, item, seed, template, prefix); ``difference`` = method
    minus baseline accuracy on the matched rows (task: mean over seeds; groups: macro average over tasks). Both the
    chosen `score` (see :data:`SCORES`) and ``label`` (``label_correct``, the label-restricted accuracy) are tested.
    ``ci_low`` / ``ci_high``: paired percentile bootstrap over items, stratified by task (same draws for both methods).
    ``p_value``: two-sided sign-flip permutation test swapping the two methods' outcomes item by item (all variants
    and seeds of an item together; :func:`sign_flip_pvalues`); ``p_holm``: Holm-corrected over the methods compared
    (per score, level and name); ``significant`` = ``p_holm < alpha``; ``harmful`` = significantly below the
    baseline (on a task row, the official ATV/ELICIT "harm" flag). Seeded by `seed`: reruns are identical.
    """
    check_ci(ci)
    check_score(score)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    n_boot, n_perm = check_count(n_boot, "n_boot"), check_count(n_perm, "n_perm")
    _need(df, ["method", "task", "item", "seed"], "paired")
    names = list(dict.fromkeys(df["method"]))
    if baseline not in names:
        raise ValueError(f"unknown baseline {baseline!r}; the results have the methods {names}")
    compared = [m for m in names if m != baseline] if methods is None else list(methods)
    for m in compared:
        if m not in names or m == baseline:
            raise ValueError(f"cannot compare method {m!r} with baseline {baseline!r}; use methods from {names}")
    if not compared:
        raise ValueError(f"the results have no method besides the baseline {baseline!r}")
    keys = [k for k in _KEYS if k in df]
    d = df[["method", *keys]].copy()
    d["_score"] = score_columns(df, score)[0].to_numpy()
    d["_label"] = (pd.to_numeric(df["label_correct"], errors="coerce").to_numpy(dtype=float)
                   if "label_correct" in df else np.nan)
    d[["category", "group"]] = task_groups(df)[["category", "group"]].to_numpy()
    dup = d.duplicated(["method", *keys])
    if dup.any():
        first = d.loc[dup.idxmax(), ["method", *keys]].to_dict()
        raise ValueError(f"{int(dup.sum())} rows repeat a method and {keys} (e.g. {first}); cannot pair them")
    base = d[d["method"] == baseline].set_index(keys)[["_score", "_label"]]
    rows: list[dict] = []
    for method in compared:
        joined = d[d["method"] == method].set_index(keys).join(base, how="inner", rsuffix="_base").reset_index()
        if joined.empty:
            raise ValueError(f"method {method!r} and baseline {baseline!r} share no rows (tasks, items, seeds, "
                             "variants); evaluate them on the same items")
        for name, col in ((score, "_score"), ("label", "_label")):
            rows += _paired_rows(joined, col, method, baseline, name, ci, n_boot, n_perm, seed)
    out = pd.DataFrame(rows)
    out["p_holm"] = out.groupby(["score", "level", "name"], sort=False)["p_value"].transform(lambda p: holm(p))
    out["significant"] = out["p_holm"] < alpha
    out["harmful"] = out["significant"] & (out["difference"] < 0)
    out.attrs.update({"baseline": baseline, "score": score, "ci": ci, "alpha": alpha})
    return out


def _paired_rows(joined: pd.DataFrame, col: str, method: str, baseline: str, score: str, ci: float, n_boot: int,
                 n_perm: int, seed: int) -> list[dict]:
    diff = joined[col] - joined[f"{col}_base"]
    both = diff.notna()
    cl = clusters_by(joined, diff, by=("task",))
    if not cl:
        return []
    acc = clusters_by(joined, joined[col].where(both), by=("task",))
    acc_base = clusters_by(joined, joined[f"{col}_base"].where(both), by=("task",))
    tasks = joined.loc[both].drop_duplicates("task")[["task", "category", "group"]]
    tasks = tasks[tasks["task"].map(lambda t: (t,) in cl)]
    reps = {t: bootstrap_replicates(cl[(t,)], n_boot, rng_for(seed, t)) for t in tasks["task"]}
    offsets = np.cumsum([0] + [len(cl[(t,)].items) for t in tasks["task"]])
    where = dict(zip(tasks["task"], zip(offsets[:-1], offsets[1:])))
    lvls = levels(tasks)
    weights = np.zeros((offsets[-1], len(lvls)))
    for j, (_, _, members) in enumerate(lvls):
        for t in members:
            weights[slice(*where[t]), j] = cl[(t,)].item_weights() / len(members)
    pvalues = sign_flip_pvalues(weights, n_perm, rng_for(seed, "sign-flip", method, baseline, score))
    category = dict(zip(tasks["task"], tasks["category"]))
    out = []
    for (level, name, members), p in zip(lvls, pvalues):
        low, high = interval(np.mean([reps[t] for t in members], axis=0), ci)
        out.append({
            "method": method, "baseline": baseline, "score": score, "level": level, "name": name,
            "category": category[name] if level == "task" else (name if level == "category" else ""),
            "difference": 100 * float(np.mean([cl[(t,)].estimate for t in members])),
            "ci_low": 100 * low, "ci_high": 100 * high, "p_value": float(p),
            "accuracy": 100 * float(np.mean([acc[(t,)].estimate for t in members])),
            "baseline_accuracy": 100 * float(np.mean([acc_base[(t,)].estimate for t in members])),
            "n_tasks": len(members), "n_items": int(sum(len(cl[(t,)].items) for t in members)),
        })
    return out
