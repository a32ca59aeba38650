"""Data scaling and seeds (issue 23 §3): how accuracy grows with training data, and how much it varies over seeds.

Module contents:

* Trainers: a :data:`Trainer` is ``(lm, train_tasks, n_train, seed) -> fitted Method``; :func:`atv_trainer` (a fresh
  generator from a factory, :func:`workbench.train_atv` with ``TrainConfig(n_train=..., seed=...)``) and
  :func:`lora_trainer` (:class:`~workbench.methods.lora.LoRA` with ``n_train`` and ``seed``). Two ATV trainers
  differing only in ``TrainConfig.keep_epoch`` ("last" / "best_valid_loss") show whether the kept epoch matters.
* :class:`ScalingBudget` (items per task, numbers of training tasks, seeds, test items, variants, bootstrap draws)
  and :data:`BUDGETS` (``tiny`` for tests, ``cpu`` for the embedded default, ``paper``).
* :func:`data_scaling`: accuracy against items per task on the training tasks' test items; :func:`task_scaling`:
  the unseen-task score against the number of training tasks. Both return one row per (method, x) — x = 0 is
  zero-shot — with the primary and the label-restricted accuracy, their item-clustered bootstrap intervals and their
  sd over seeds (:func:`workbench.summarize`).
* :func:`seed_rows` (train and evaluate every method once per seed: training seed = evaluation seed) and
  :func:`seed_summary`: mean ± sd over seeds beside the bootstrap interval, and the paired difference against a
  baseline with the sign-flip test clustered by (task, item) across seeds (:func:`workbench.eval.stats.paired`).

Plots: :mod:`workbench.ui.scaling_plots`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workbench.atv.train_config import TrainConfig
from workbench.atv.training import train_atv
from workbench.core.checks import check_int
from workbench.eval.evaluate import check_n_test, check_seeds, evaluate_many
from workbench.eval.stats import check_ci, check_count, paired
from workbench.eval.tables import summarize
from workbench.methods.atv import ATV
from workbench.methods.base import Method
from workbench.methods.lora import LoRA
from workbench.methods.prompting import ZeroShot
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.atv.generator import ATVGenerator
    from workbench.core.models import LanguageModel

#: ``(lm, train_tasks, n_train, seed) -> a Method fitted on n_train items per task of train_tasks``
Trainer = Callable[["LanguageModel", list[Task], int, int], Method]
BASELINE = "zero-shot"
CURVE_COLUMNS = ("method", "accuracy", "ci_low", "ci_high", "accuracy_sd", "label_accuracy", "label_ci_low",
                 "label_ci_high", "label_accuracy_sd", "n_seeds", "n_tasks", "n_items")


# ----------------------------------------------------------------------------------------------- trainers
def atv_trainer(make_generator: Callable[["LanguageModel", int], "ATVGenerator"], config: TrainConfig | None = None,
                **atv_kwargs: Any) -> Trainer:
    """A :data:`Trainer`: ``make_generator(lm, seed)`` (a fresh generator) trained by :func:`workbench.train_atv`
    with `config` (default ``TrainConfig()``) but ``n_train`` and ``seed`` of the call, wrapped in ``ATV``."""
    base = config or TrainConfig()

    def train(lm: LanguageModel, tasks: list[Task], n_train: int, seed: int) -> Method:
        generator = make_generator(lm, seed)
        train_atv(lm, generator, tasks, dataclasses.replace(base, n_train=n_train, seed=seed, tasks=()),
                  progress=False)
        return ATV(generator, **atv_kwargs)

    return train


def lora_trainer(**lora_kwargs: Any) -> Trainer:
    """A :data:`Trainer` fitting ``LoRA(n_train=n_train, seed=seed, **lora_kwargs)``."""
    for key in ("n_train", "seed"):
        if key in lora_kwargs:
            raise ValueError(f"lora_trainer sets {key} per run; do not pass {key}={lora_kwargs[key]!r}")

    def train(lm: LanguageModel, tasks: list[Task], n_train: int, seed: int) -> Method:
        return LoRA(n_train=n_train, seed=seed, **lora_kwargs).fit(lm, tasks)

    return train


# ----------------------------------------------------------------------------------------------- budget
def _positive_ints(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values!r}")
    for v in values:
        check_int(v, f"each of {name}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} repeats a value: {list(values)}")
    return tuple(sorted(int(v) for v in values))


@dataclasses.dataclass(frozen=True)
class ScalingBudget:
    """How much a scaling study runs (see :data:`BUDGETS`); :meth:`validate` names any bad value."""

    n_trains: tuple[int, ...] = (8, 16, 32, 64, 90)  # items per task
    n_tasks: tuple[int, ...] = (1, 2, 4)  # numbers of training tasks (task_scaling)
    seeds: tuple[int, ...] = (42,)  # training and evaluation seeds (the paper: 42, 10, 100)
    n_test: int | None = 60  # test items per task and seed
    templates: Any = "all"
    prefixes: Any = "all"
    batch_size: int = 8
    n_boot: int = 2000
    ci: float = 0.95
    #: True: every evaluation its own prompt-body cache; a BodyCache: one for all the evaluations made with this
    #: budget, so the frozen model's bodies of the same test items are computed once (workbench.core.kv_cache)
    cache: Any = dataclasses.field(default=True, compare=False, repr=False)

    def validate(self) -> ScalingBudget:
        _positive_ints(self.n_trains, "n_trains (items per task)")
        _positive_ints(self.n_tasks, "n_tasks (numbers of training tasks)")
        check_seeds(self.seeds)
        check_n_test(self.n_test)
        check_int(self.batch_size, "batch_size")
        check_count(self.n_boot, "n_boot")
        check_ci(self.ci)
        return self


BUDGETS: dict[str, ScalingBudget] = {
    "tiny": ScalingBudget(n_trains=(2, 4), n_tasks=(1, 2), n_test=4, templates=[0], prefixes=["A:"], n_boot=200),
    "cpu": ScalingBudget(n_trains=(8, 16, 32), n_tasks=(1, 2, 4), n_test=60),
    "paper": ScalingBudget(seeds=(42, 10, 100), n_test=None),
}


def as_budget(budget: str | ScalingBudget) -> ScalingBudget:
    """A validated budget: a :class:`ScalingBudget` or a name of :data:`BUDGETS`."""
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; use one of {sorted(BUDGETS)} or a ScalingBudget")
        return BUDGETS[budget]
    if not isinstance(budget, ScalingBudget):
        raise ValueError(f"budget must be a ScalingBudget or one of {sorted(BUDGETS)}, got {type(budget).__name__}")
    return budget.validate()


def check_trainers(trainers: Mapping[str, Trainer]) -> dict[str, Trainer]:
    """A non-empty ``{label: callable}``; the label :data:`BASELINE` is the zero-shot reference."""
    out = dict(trainers) if isinstance(trainers, Mapping) else None
    if not out:
        raise ValueError(f"trainers must be a non-empty {{label: trainer}} mapping, got {trainers!r}")
    bad = [k for k, t in out.items() if not callable(t) or k == BASELINE or not isinstance(k, str)]
    if bad:
        raise ValueError(f"trainer {bad[0]!r}: labels must be strings other than {BASELINE!r} and trainers callable")
    return out


# ----------------------------------------------------------------------------------------------- runs
def evaluate_rows(lm: LanguageModel, methods: Mapping[str, Method], tasks: Sequence[Task], seed: int,
                  budget: ScalingBudget, **columns: Any) -> pd.DataFrame:
    """Rows of `methods` on `tasks` for one seed (labels in ``method``), with the extra `columns`."""
    results = evaluate_many(lm, methods, list(tasks), budget.n_test, budget.templates, budget.prefixes, (seed,),
                            budget.batch_size, progress=False, cache=budget.cache)
    return pd.concat([df.assign(method=label, **columns) for label, df in results.items()], ignore_index=True)


def fitted_rows(lm: LanguageModel, trainers: Mapping[str, Trainer], train_tasks: list[Task],
                eval_tasks: Sequence[Task], n_train: int, seed: int, budget: ScalingBudget,
                **columns: Any) -> pd.DataFrame:
    """Fit every trainer on `train_tasks` (`n_train` items per task, `seed`), then evaluate all on `eval_tasks`."""
    methods = {label: train(lm, train_tasks, n_train, seed) for label, train in trainers.items()}
    bad = [k for k, m in methods.items() if not isinstance(m, Method)]
    if bad:
        raise ValueError(f"trainer {bad[0]!r} returned {type(methods[bad[0]]).__name__}, not a workbench Method")
    return evaluate_rows(lm, methods, eval_tasks, seed, budget, n_train=n_train, **columns)


def curve(rows: pd.DataFrame, x: str, ci: float = 0.95, n_boot: int = 2000, name: str = "all") -> pd.DataFrame:
    """One row per (method, `x`) of the summary row `name` (default: the average over all evaluated tasks)."""
    parts = []
    for value, part in rows.groupby(x, sort=True):
        table = summarize(part, ci=ci, n_boot=n_boot)
        chosen = table[(table["level"] == "average") & (table["name"] == name)]
        parts.append(chosen[list(CURVE_COLUMNS)].assign(**{x: value}))
    out = pd.concat(parts, ignore_index=True)
    return out[["method", x, *CURVE_COLUMNS[1:]]]


def data_scaling(lm: LanguageModel, trainers: Mapping[str, Trainer], tasks: TaskSpec,
                 budget: str | ScalingBudget = "cpu", return_rows: bool = False) -> Any:
    """Accuracy against items per task (``budget.n_trains``) of every trainer's method, fitted on `tasks` and
    evaluated on their test items, per seed of ``budget.seeds``: one row per (method, n_train) (zero-shot:
    n_train = 0) with columns :data:`CURVE_COLUMNS`. ``return_rows=True``: (curve, the evaluation rows)."""
    budget, trainers = as_budget(budget), check_trainers(trainers)
    task_list = resolve_tasks(tasks)
    parts = []
    for seed in budget.seeds:
        parts.append(evaluate_rows(lm, {BASELINE: ZeroShot()}, task_list, seed, budget, n_train=0))
        for n in budget.n_trains:
            parts.append(fitted_rows(lm, trainers, task_list, task_list, n, seed, budget))
    rows = pd.concat(parts, ignore_index=True)
    out = curve(rows, "n_train", budget.ci, budget.n_boot)
    return (out, rows) if return_rows else out


def task_scaling(lm: LanguageModel, trainers: Mapping[str, Trainer], train_pool: TaskSpec, unseen_tasks: TaskSpec,
                 budget: str | ScalingBudget = "cpu", n_train: int | None = None, return_rows: bool = False) -> Any:
    """The score on `unseen_tasks` against the number of training tasks (``budget.n_tasks``: the first k tasks of
    `train_pool`, `n_train` items each, default the budget's largest): one row per (method, n_tasks), zero-shot at
    n_tasks = 0, columns :data:`CURVE_COLUMNS`."""
    budget, trainers = as_budget(budget), check_trainers(trainers)
    pool, unseen = resolve_tasks(train_pool), resolve_tasks(unseen_tasks)
    n_train = budget.n_trains[-1] if n_train is None else check_int(n_train, "n_train (items per task)")
    too_many = [k for k in budget.n_tasks if k > len(pool)]
    if too_many:
        raise ValueError(f"n_tasks={too_many[0]} but train_pool has only {len(pool)} tasks")
    overlap = sorted({t.name for t in pool[: max(budget.n_tasks)]} & {t.name for t in unseen})
    if overlap:
        raise ValueError(f"unseen_tasks include training tasks {overlap}; the unseen score needs tasks not trained on")
    parts = []
    for seed in budget.seeds:
        parts.append(evaluate_rows(lm, {BASELINE: ZeroShot()}, unseen, seed, budget, n_tasks=0))
        for k in budget.n_tasks:
            parts.append(fitted_rows(lm, trainers, pool[:k], unseen, n_train, seed, budget, n_tasks=k))
    rows = pd.concat(parts, ignore_index=True)
    out = curve(rows.rename(columns={"n_tasks": "n_train_tasks"}), "n_train_tasks", budget.ci, budget.n_boot)
    return (out, rows) if return_rows else out


# ----------------------------------------------------------------------------------------------- seeds
def seed_rows(lm: LanguageModel, trainers: Mapping[str, Trainer], train_tasks: TaskSpec, eval_tasks: TaskSpec,
              seeds: Sequence[int] = (42, 10, 100), n_train: int = 90,
              budget: str | ScalingBudget = "cpu") -> pd.DataFrame:
    """Every trainer fitted and evaluated once per seed (training seed = evaluation seed), plus zero-shot: the rows
    (column ``seed``) that :func:`seed_summary` aggregates. `budget` gives n_test, variants and batch size."""
    seed_list = check_seeds(seeds)
    budget, trainers = as_budget(budget), check_trainers(trainers)
    check_int(n_train, "n_train (items per task)")
    train, evaluated = resolve_tasks(train_tasks), resolve_tasks(eval_tasks)
    parts = []
    for seed in seed_list:
        parts.append(evaluate_rows(lm, {BASELINE: ZeroShot()}, evaluated, seed, budget))
        parts.append(fitted_rows(lm, trainers, train, evaluated, n_train, seed, budget))
    return pd.concat(parts, ignore_index=True)


def per_seed_accuracy(rows: pd.DataFrame, score: str = "primary") -> pd.DataFrame:
    """Accuracy and label accuracy (%) of every method x level x name for each seed alone (one column per seed)."""
    if "seed" not in rows:
        raise ValueError("seed aggregation needs a 'seed' column (rows of workbench.evaluate)")
    parts = [summarize(part, ci=None, score=score).assign(seed=s) for s, part in rows.groupby("seed", sort=True)]
    return pd.concat(parts, ignore_index=True)[["method", "level", "name", "seed", "accuracy", "label_accuracy"]]


def seed_summary(rows: pd.DataFrame, baseline: str = BASELINE, score: str = "primary", ci: float = 0.95,
                 n_boot: int = 2000, n_perm: int = 5000, seed: int = 0) -> pd.DataFrame:
    """One row per method x level x name: ``mean`` and ``sd`` (numpy, ddof=0, the paper's mean ± sd) over seeds of
    the per-seed accuracy and label accuracy, ``n_seeds``, the item bootstrap interval over all seeds
    (``ci_low``/``ci_high``, ``label_ci_low``/``label_ci_high``), and for methods other than `baseline` the paired
    difference (``difference``, ``diff_ci_low``/``diff_ci_high``, ``p_value``, ``p_holm``; ``label_*`` likewise)
    from :func:`workbench.eval.stats.paired`, its clusters the (task, item) pairs across seeds."""
    per = per_seed_accuracy(rows, score)
    keys = ["method", "level", "name"]
    spread = per.groupby(keys, sort=False).agg(
        mean=("accuracy", lambda v: float(np.mean(v))), sd=("accuracy", lambda v: float(np.std(v))),
        label_mean=("label_accuracy", lambda v: float(np.mean(v))),
        label_sd=("label_accuracy", lambda v: float(np.std(v))), n_seeds=("seed", "nunique")).reset_index()
    bounds = summarize(rows, ci=ci, score=score, n_boot=n_boot, seed=seed)
    out = spread.merge(bounds[[*keys, "ci_low", "ci_high", "label_ci_low", "label_ci_high"]], on=keys, how="left")
    if rows["method"].nunique() > 1:
        tests = paired(rows, baseline=baseline, score=score, ci=ci, n_boot=n_boot, n_perm=n_perm, seed=seed)
        cols = {"difference": "difference", "ci_low": "diff_ci_low", "ci_high": "diff_ci_high", "p_value": "p_value",
                "p_holm": "p_holm"}
        for which, prefix in ((score, ""), ("label", "label_")):
            part = tests[tests["score"] == which].rename(columns={k: prefix + v for k, v in cols.items()})
            part = part.rename(columns={"name": "name"})[[*keys, *(prefix + v for v in cols.values())]]
            out = out.merge(part, on=keys, how="left")
    out.attrs.update({"score": score, "ci": ci, "baseline": baseline, "seeds": sorted(rows["seed"].unique().tolist())})
    return out
