"""Fit and evaluate several methods on the same items — what notebook 02 (paper Tables 1, 2, 5, 14, 15) runs.

``standard_methods(generator, budget)`` builds the paper's line-up with settings for a budget: ``"paper"`` (the
paper's settings, Appendix B.2) or ``"cpu-demo"`` (the same methods with smaller fitting budgets, so the whole
comparison runs in minutes on 2 CPU cores: fewer demonstrations and prompts, a coarse ELICIT layer sweep, fewer
I2CL/LoRA epochs and items). ``compare`` fits each method once on the training tasks, evaluates it on the test
tasks and records fit time next to evaluation latency and memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from workbench.eval.efficiency import efficiency_table
from workbench.eval.evaluate import evaluate_many
from workbench.eval.labels import label_folders
from workbench.eval.parallel import fit_once
from workbench.eval.run_safety import check_run_folder
from workbench.eval.tables import summarize
from workbench.methods import ATV, ELICIT, I2CL, BM25FewShot, FewShot, LoRA, StaticTaskVector, ZeroShot
from workbench.methods.base import Method
from workbench.methods.names import METHODS, display_label
from workbench.tasks.registry import TaskSpec, resolve_tasks

BUDGETS = ("paper", "cpu-demo")


def standard_methods(generator: Any = None, budget: str = "paper", k: int | None = None, seed: int = 42,
                     light_generator: Any = None, epochs: int | None = None,
                     n_train: int | None = None, icl_k: int | None = None) -> dict[str, Method]:
    """The baselines of the paper (+ ATV when a trained generator is given), configured for `budget`.

    `k`: demonstrations of every method that uses them (k-shot, BM25, static TV and ELICIT prompts; default 16, 4 on
    cpu-demo); `icl_k` overrides it for the k-shot and BM25 prompts alone (the study's cheaper prompt baselines).

    Keys are the display labels of :mod:`workbench.methods.names` ("zero-shot", "16-shot", "static TV", ...).
    """
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {BUDGETS}")
    small = budget == "cpu-demo"
    k = k or (4 if small else 16)
    epochs = epochs or (1 if small else 15)
    n_train = n_train or (8 if small else 90)
    line_up: list[Method] = [
        ZeroShot(),
        FewShot(k=icl_k or k),
        BM25FewShot(k=icl_k or k),
        StaticTaskVector(k=k, n_prompts=3 if small else 10, seed=seed, scale=0.1 if small else 1.0),
        ELICIT(k=k, n_prompts=3 if small else 10, n_valid=6 if small else 100, layer_stride=6 if small else 1,
               top_k=3 if small else 10, seed=seed),
        I2CL(shots_per_class=2 if small else 5, epochs=epochs, seed=seed),
        LoRA(epochs=epochs, n_train=n_train, batch_size=4 if small else 1, seed=seed),
    ]
    line_up += [ATV(g) for g in (generator, light_generator) if g is not None]
    return labelled(line_up)


#: the methods a line-up can be chosen from, by canonical name (:mod:`workbench.methods.names`)
LINE_UP_NAMES = ("zero-shot", "few-shot", "bm25", "static-tv", "elicit", "i2cl", "lora", "atv")
#: the prompt baselines that may run on a subset of the items (they share no prompt bodies)
PROMPT_BASELINES = ("few-shot", "bm25")


def study_line_up(generator: Any = None, budget: str = "paper", methods: Sequence[str] | None = None,
                  icl_k: int | None = None, seed: int = 42, epochs: int | None = None, n_train: int | None = None,
                  lam: float | None = None) -> dict[str, Method]:
    """The line-up the study (notebook 02) and ``eval --methods`` build: :func:`standard_methods` for `budget`,
    ATV at λ = `lam` when given, restricted to `methods` (canonical names or display labels, in the line-up's
    order; None: all). ValueError naming an unknown one, or ``atv`` without a generator."""
    line_up = standard_methods(generator, budget=budget, icl_k=icl_k, seed=seed, epochs=epochs, n_train=n_train)
    if lam is not None and "ATV" in line_up:
        line_up["ATV"] = ATV(generator, scale=lam)
    if not methods:
        return line_up
    wanted = list(methods)
    known = {*LINE_UP_NAMES, *line_up}
    bad = [m for m in wanted if m not in known]
    if bad:
        raise ValueError(f"unknown method {bad[0]!r}; use canonical names {', '.join(LINE_UP_NAMES)} "
                         f"(or the labels {', '.join(line_up)})")
    if generator is None and any(m in ("atv", "ATV", "ATV-Light") for m in wanted):
        raise ValueError("method atv needs a trained generator (--generator DIR, a folder saved by training)")
    return {label: m for label, m in line_up.items() if label in wanted or m.name in wanted}


def prompt_item_limits(line_up: Mapping[str, Method], n_icl: int | None) -> dict[str, int]:
    """``max_items`` for the prompt baselines of `line_up` (k-shot, BM25: `n_icl` of the items; None: all)."""
    return {label: n_icl for label, m in line_up.items() if n_icl and m.name in PROMPT_BASELINES}


def labelled(methods: Mapping[str, Method] | Sequence[Method]) -> dict[str, Method]:
    """``{display label: method}`` for a list of methods (a mapping is returned as a dict, its keys kept)."""
    if isinstance(methods, Mapping):
        return dict(methods)
    out: dict[str, Method] = {}
    for method in methods:
        if not isinstance(method, Method):
            raise ValueError(f"methods must be workbench Methods, got {type(method).__name__}")
        label = display_label(method)
        if label in out:
            raise ValueError(f"two methods have the label {label!r}; pass a dict {{label: method}} to name them")
        out[label] = method
    return out


def compare(
    lm: Any,
    methods: Mapping[str, Method] | Sequence[Method],
    train_tasks: TaskSpec,
    eval_tasks: TaskSpec,
    run_dir: str | Path | None = None,
    fit_dir: str | Path | None = None,
    **evaluate_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit every method on `train_tasks` and evaluate it on `eval_tasks` (same items for all: same seeds/n_test).

    `methods`: ``{label: method}`` or a list of methods (labelled by :func:`workbench.methods.names.display_label`).
    Tasks: a task name, a Task or a list mixing both (:func:`workbench.tasks.registry.resolve_tasks`; both are
    resolved once, before any fitting). Returns (results: one row per item × variant × seed × method, efficiency:
    Table 5 layout plus fit seconds). With `run_dir`, each method's results go to ``run_dir/<method>/`` (resumable, see
    :func:`workbench.evaluate`; labels must be plain folder names, :mod:`workbench.eval.labels`, checked with the run
    folders before any fitting). Evaluation goes through :func:`~workbench.eval.evaluate.evaluate_many`: task by task,
    prompt bodies are computed once for every method that leaves the model's weights alone; a method's latency still
    counts the bodies it read (their measured time), as if it had run alone with the cache.
    With `fit_dir`, what each method learned is saved in ``fit_dir/<label>/`` and reloaded by a rerun instead of
    refitting (:mod:`workbench.methods.fitted`; the efficiency table then shows the original fit time and
    ``Reloaded`` True). ``max_items={label: m}`` evaluates those methods on a subset of m of the items
    (:func:`~workbench.eval.evaluate.evaluate_many`).
    """
    methods = labelled(methods)
    if not methods:
        raise ValueError("methods is empty: give at least one method")
    data_dir = evaluate_kwargs.pop("data_dir", None)
    train_list, eval_list = resolve_tasks(train_tasks, data_dir), resolve_tasks(eval_tasks, data_dir)
    fit_folders = label_folders(fit_dir, methods) if fit_dir is not None else dict.fromkeys(methods)
    for folder in (label_folders(run_dir, methods).values() if run_dir is not None else ()):
        check_run_folder(folder)  # a refused results folder stops the comparison before any fitting
    # once: under a launch of several processes, process 0 fits and saves, the others reload (eval.parallel)
    fit_seconds, reloaded = fit_once(methods, lm, train_list, fit_folders)
    # task by task, every method on the same items; prompt bodies shared across methods (workbench.eval.evaluate)
    evaluated = evaluate_many(lm, methods, eval_list, run_dir=run_dir, data_dir=data_dir, **evaluate_kwargs)
    frames: dict[str, pd.DataFrame] = {}
    for name, df in evaluated.items():
        frames[name] = df.assign(method=name)
        frames[name].attrs = df.attrs
    results = pd.concat(frames.values(), ignore_index=True)
    efficiency = efficiency_table(frames).reset_index()
    efficiency["Fit (s)"] = efficiency["method"].map(fit_seconds)
    if fit_dir is not None:
        efficiency["Reloaded"] = efficiency["method"].map(reloaded)
    return results, efficiency


def category_table(results: pd.DataFrame, loose: bool = False) -> pd.DataFrame:
    """Accuracy per method and category plus in-domain / unseen averages (tidy: method, category, accuracy, sd,
    the 95 % item-level bootstrap interval ci_low / ci_high, the label-restricted accuracy with its interval, and
    which score `accuracy` is).

    A method column holding canonical names (``wb.evaluate`` output) is shown with the display labels of
    :mod:`workbench.methods.names`; other values (e.g. the labels :func:`compare` writes) are kept.
    """
    if "method" in results:
        results = results.assign(method=results["method"].map(lambda m: display_label(m) if m in METHODS else m))
    s = summarize(results, loose=loose)
    keep = s[(s["level"] == "category") | ((s["level"] == "average") & s["name"].isin(["in_domain", "unseen"]))]
    columns = ["method", "category", "accuracy", "sd", "ci_low", "ci_high", "label_accuracy", "label_ci_low",
               "label_ci_high", "score"]
    out = keep.drop(columns="category").rename(columns={"name": "category", "accuracy_sd": "sd"})
    out = out[[c for c in columns if c in out.columns]]
    order = {m: i for i, m in enumerate(results["method"].unique())} if "method" in results else {}
    rank = out["method"].map(order).fillna(len(order))
    return out.assign(_rank=rank).sort_values(["category", "_rank"]).drop(columns="_rank").reset_index(drop=True)
