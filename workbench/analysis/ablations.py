"""The reviewers' questions in one run (issue 23 §5): which small model, how much data, how many seeds, how close to
the ceiling, at what cost to everything else -- what notebook 06 and ``make ablations`` show.

An :class:`AblationBudget` (:data:`BUDGETS`: ``tiny`` for tests, ``cpu`` for the embedded default on 2 cores,
``paper`` for a GPU with the paper's models) fixes the tasks, generator sources and sizes; every step reuses the
study machinery (:mod:`workbench.analysis.scaling`, :mod:`~workbench.analysis.ceilings`,
:mod:`~workbench.analysis.side_effects`):

1. :func:`compare_sources`: one ATV generator per (source, what it reads) -- ``minilm-l6``, ``self:K``, ... x
   ``prompt`` / ``official`` -- trained on the budget's tasks and evaluated beside zero-shot; :func:`source_table`
   gives the item-clustered interval and the paired test against zero-shot, :func:`best_source` the best
   label-restricted score, and :func:`seed_study` trains and evaluates that one once per seed (mean ± sd over
   seeds, paired tests clustered by (task, item) across seeds).
2. :func:`ceilings` of the best generator (probe and oracle).
3. :func:`data_scaling` of the best source (last and best-validation epoch) next to LoRA.
4. :func:`side_effects` of ATV, static TV, ELICIT and LoRA fitted on the tasks, steering as on ``target_task``.

Trained methods are kept in a :class:`Fits` (keyed by label, items per task and seed), so a generator trained for
step 1 is not trained again for steps 2-3.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.analysis import ceilings as ceiling_module
from workbench.analysis import scaling
from workbench.analysis import side_effects as side_module
from workbench.atv.presets import CPU_DEMO_CONFIG, build_generator
from workbench.atv.train_config import GENERATOR_INPUTS, TrainConfig
from workbench.atv.fastpath import PrefixStore
from workbench.atv.training import train_atv
from workbench.core.checks import check_choice, check_int
from workbench.core.encoders import check_source_name
from workbench.core.kv_cache import BodyCache
from workbench.eval.compare import BUDGETS as LINE_UP_BUDGETS
from workbench.eval.compare import standard_methods
from workbench.eval.evaluate import check_n_test, check_seeds
from workbench.methods.atv import ATV
from workbench.methods.base import Method
from workbench.tasks.prompts import TRAIN_PREFIX

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel
    from workbench.tasks.registry import Task

BASELINE = scaling.BASELINE
LORA = "LoRA"


@dataclasses.dataclass(frozen=True)
class AblationBudget:
    """What an ablation run trains and evaluates; :meth:`validate` names any bad value."""

    tasks: tuple[str, ...]  # trained on and evaluated (clear-label tasks)
    sources: tuple[str, ...]  # generator sources (minilm-l6, scratch:LxW, a HF id, self:K)
    inputs: tuple[str, ...] = ("prompt", "official")  # what the generator reads (TrainConfig.generator_input)
    n_train: int = 32  # items per task for the source comparison
    seeds: tuple[int, ...] = (42, 10, 100)  # the best source's seeds (training = evaluation); the first: all else
    n_trains: tuple[int, ...] = (8, 16)  # items per task of ATV's data-scaling curve (besides n_train)
    lora_n_trains: tuple[int, ...] = (8, 16)  # items per task of LoRA's (its largest: side effects, task scaling)
    n_test: int | None = 60  # test items per task
    templates: Any = "all"
    prefixes: Any = "all"
    ceiling_n_test: int | None = 40  # test items per task for the ceilings (the oracle optimises every row)
    ceiling_templates: Any = (0,)  # variants of the ceilings (default: one, the oracle's cost is per row)
    ceiling_prefixes: Any = (TRAIN_PREFIX,)
    oracle_steps: int = 20
    probe_items: int | None = None  # train items per task of the probe (None: those the generator was trained on)
    target_task: str = "glue_sst2"  # side effects: steering as on this task
    off_target_tasks: tuple[str, ...] = ("glue_cola", "superglue_wic")  # tasks no method was fitted on
    side_n_test: int | None = 40
    #: ATV training (items per task, seed and generator input are set per run)
    config: TrainConfig = dataclasses.field(default_factory=lambda: CPU_DEMO_CONFIG)
    lora_epochs: int = 2
    #: fitting budget of static TV and ELICIT in the side effects (workbench.eval.compare.standard_methods)
    line_up: str = "cpu-demo"
    batch_size: int = 8
    n_boot: int = 2000

    def validate(self) -> AblationBudget:
        if not self.tasks or not self.sources or not self.inputs:
            raise ValueError(f"an AblationBudget needs tasks, sources and inputs; got tasks={self.tasks!r}, "
                             f"sources={self.sources!r}, inputs={self.inputs!r}")
        for source in self.sources:
            check_source_name(source, "source")
        for value in self.inputs:
            check_choice(value, "inputs entry (what the generator reads)", GENERATOR_INPUTS)
        check_int(self.n_train, "n_train (items per task)")
        check_seeds(self.seeds)
        scaling.ScalingBudget(n_trains=self.n_trains, seeds=self.seeds[:1]).validate()
        scaling.ScalingBudget(n_trains=self.lora_n_trains, seeds=self.seeds[:1]).validate()
        for name in ("n_test", "ceiling_n_test", "side_n_test"):
            check_n_test(getattr(self, name), name)
        check_int(self.oracle_steps, "oracle_steps")
        check_int(self.lora_epochs, "lora_epochs")
        check_choice(self.line_up, "line_up (fitting budget of static TV and ELICIT)", LINE_UP_BUDGETS)
        clash = sorted(set(self.off_target_tasks) & set(self.tasks))
        if clash:
            raise ValueError(f"off_target_tasks {clash} are also trained on; off-target tasks must be others")
        if self.target_task not in self.tasks:
            raise ValueError(f"target_task {self.target_task!r} is not one of the tasks {list(self.tasks)}")
        return self

    def scaling_budget(self, cache: Any = True) -> scaling.ScalingBudget:
        """The :class:`~workbench.analysis.scaling.ScalingBudget` of the evaluations (first seed for the curve);
        `cache`: their prompt-body cache (a :class:`Fits`' ``bodies``: shared by the whole run)."""
        return scaling.ScalingBudget(cache=cache, n_trains=self.n_trains, n_tasks=tuple(sorted({1, len(self.tasks)})),
                                     seeds=self.seeds[:1], n_test=self.n_test,
                                     templates=as_variants(self.templates), prefixes=as_variants(self.prefixes),
                                     batch_size=self.batch_size,
                                     n_boot=self.n_boot)


#: two-label tasks with short prompts in every split (47-101 tokens on SmolLM2; boolq's passages, 163, would triple
#: the cost on 2 cores, and ethics_commonsense's train split averages 201 tokens, up to 595) and, for a GPU, the
#: issue's set with boolq
CLEAR_LABEL_TASKS = ("glue_sst2", "glue_qnli", "crows_pairs", "bbh_boolean_expressions", "ethics_justice")
PAPER_TASKS = ("glue_sst2", "boolq", "glue_qnli", "crows_pairs", "bbh_boolean_expressions")
BUDGETS: dict[str, AblationBudget] = {
    "tiny": AblationBudget(tasks=("glue_sst2", "superglue_rte"), sources=("scratch:2x32", "self:1"), n_train=4,
                           seeds=(42, 10), n_trains=(2,), lora_n_trains=(2,), n_test=3, templates=(0,),
                           prefixes=(TRAIN_PREFIX,), ceiling_n_test=2,
                           oracle_steps=2, probe_items=16, off_target_tasks=("glue_cola",), side_n_test=2,
                           config=dataclasses.replace(CPU_DEMO_CONFIG, epochs=1, batch_size=2, valid_items=2),
                           lora_epochs=1, batch_size=4, n_boot=100),
    # one variant per test item (template 0, "A:"; the intervals are item-clustered, so the 9 variants would add
    # little for 9x the frozen model's prompt passes); every training prefix cache kept across epochs
    # 16 items per task (a training of 32 x 5 tasks took ~10 min on the 2 shared cores): ATV's curve 4, 8, 16,
    # LoRA's 4, 8
    "cpu": AblationBudget(tasks=CLEAR_LABEL_TASKS, sources=("minilm-l6", "self:16"), n_train=16, n_trains=(4, 8),
                          lora_n_trains=(4, 8), templates=(0,), prefixes=(TRAIN_PREFIX,),
                          config=dataclasses.replace(CPU_DEMO_CONFIG, cache_budget_mb=4000.0)),
    "paper": AblationBudget(tasks=PAPER_TASKS, sources=("gpt2", "sentence-transformers/all-MiniLM-L6-v2", "self:16"),
                            n_train=90,
                            seeds=(42, 10, 100), n_trains=(8, 16, 32, 64),
                            lora_n_trains=(8, 16, 32, 64, 90), n_test=None, ceiling_n_test=100,
                            ceiling_templates="all", ceiling_prefixes="all",
                            side_n_test=100, config=TrainConfig(), lora_epochs=15, line_up="paper"),
}


def as_budget(budget: str | AblationBudget, **changes: Any) -> AblationBudget:
    """A validated budget: a name of :data:`BUDGETS` or an :class:`AblationBudget`, with `changes` applied (e.g.
    ``tasks=[...]``, ``sources=[...]``; lists become tuples)."""
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; use one of {sorted(BUDGETS)} or an AblationBudget")
        budget = BUDGETS[budget]
    if not isinstance(budget, AblationBudget):
        raise ValueError(f"budget must be an AblationBudget or one of {sorted(BUDGETS)}, got {type(budget).__name__}")
    fields = {f.name for f in dataclasses.fields(AblationBudget)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"unknown budget settings {unknown}; use any of {sorted(fields)}")
    tuples = {k: tuple(v) for k, v in changes.items() if isinstance(v, list)}
    return dataclasses.replace(budget, **{**changes, **tuples}).validate()


def as_variants(value: Any) -> Any:
    """A budget's templates / prefixes as evaluate takes them ("all" or a list)."""
    return value if isinstance(value, str) else list(value)


# ----------------------------------------------------------------------------------------------- trainers
def source_label(source: str, generator_input: str) -> str:
    """The method label of an ATV generator reading `generator_input` through `source`."""
    return f"ATV {source} · {generator_input}"


class Fits(dict):
    """``(label, n_train, seed, task names) -> fitted Method``: what the ablation run has trained, reused by later
    steps; :meth:`costs` lists how long each took. Each training prints one line when it ends."""

    def __init__(self, eval_cache_mb: float = 4500.0, train_cache_mb: float = 6000.0, seed: int = 42) -> None:
        super().__init__()
        self.seconds: dict[tuple, float] = {}
        #: the frozen model's prompt bodies of every evaluation of the run (the same test items are read by
        #: zero-shot and every generator of every step: computed once, within `eval_cache_mb` megabytes)
        self.bodies = BodyCache(eval_cache_mb)
        #: the frozen model's training prefixes of every training with `seed` (the source comparison's generators,
        #: the scaling curves' and LoRA-free steps read the same examples: each prefix computed once)
        self.prefixes, self.seed = PrefixStore(train_cache_mb), seed

    def prefix_store(self, seed: int) -> PrefixStore | None:
        """The shared training prefix store for a training with `seed` (None: a store of its own, freed after)."""
        return self.prefixes if seed == self.seed else None

    def trainer(self, label: str, train: scaling.Trainer) -> scaling.Trainer:
        """`train`, remembered: a second call with the same items per task, seed and tasks returns the first's
        method."""
        def remembered(lm: LanguageModel, tasks: list[Task], n_train: int, seed: int) -> Method:
            key = (label, n_train, seed, tuple(t.name for t in tasks))
            if key not in self:
                start = time.perf_counter()
                self[key] = train(lm, tasks, n_train, seed)
                self.seconds[key] = time.perf_counter() - start
                print(f"trained {label}: {n_train} items x {len(tasks)} tasks, seed {seed}, "
                      f"{self.seconds[key]:.0f} s", flush=True)
            return self[key]

        return remembered

    def costs(self) -> pd.DataFrame:
        """One row per training: method, items per task, seed, number of tasks, seconds."""
        rows = [{"method": k[0], "n_train": k[1], "seed": k[2], "n_tasks": len(k[3]), "seconds": round(v, 1)}
                for k, v in self.seconds.items()]
        return pd.DataFrame(rows, columns=["method", "n_train", "seed", "n_tasks", "seconds"])


def source_trainer(source: str, generator_input: str, config: TrainConfig, fits: Fits | None = None,
                   **atv_kwargs: Any) -> scaling.Trainer:
    """A :data:`~workbench.analysis.scaling.Trainer` of a fresh generator reading `generator_input` through
    `source` (:func:`workbench.atv.presets.build_generator`: frozen, standardised states, projection weight from 0),
    trained with `config` but the call's items per task and seed (with `fits`: its shared prefix store)."""
    check_source_name(source, "source")
    check_choice(generator_input, "generator_input", GENERATOR_INPUTS)

    def train(lm: LanguageModel, tasks: list[Task], n_train: int, seed: int) -> Method:
        cfg = dataclasses.replace(config, n_train=n_train, seed=seed, generator_input=generator_input, tasks=())
        generator = build_generator(lm, source, tasks, cfg)
        train_atv(lm, generator, tasks, cfg, progress=False,
                  prefix_store=None if fits is None else fits.prefix_store(seed))
        return ATV(generator, **atv_kwargs)

    return train


def source_trainers(budget: AblationBudget, fits: Fits) -> dict[str, scaling.Trainer]:
    """One remembered trainer per (source, input) of `budget`."""
    return {source_label(s, i): fits.trainer(source_label(s, i), source_trainer(s, i, budget.config, fits))
            for s in budget.sources for i in budget.inputs}


# ----------------------------------------------------------------------------------------------- steps
def compare_sources(lm: LanguageModel, budget: AblationBudget, fits: Fits) -> pd.DataFrame:
    """The evaluation rows (column ``seed``) of zero-shot and every (source, input) generator, each trained on the
    budget's tasks with ``n_train`` items per task (first seed)."""
    return scaling.seed_rows(lm, source_trainers(budget, fits), budget.tasks, budget.tasks, budget.seeds[:1],
                             budget.n_train, budget.scaling_budget(fits.bodies))


def label_trainer(label: str, budget: AblationBudget, fits: Fits, config: TrainConfig | None = None,
                  name: str | None = None) -> scaling.Trainer:
    """The remembered trainer (under `name`, default `label`) of the generator `label` of `budget`
    (:func:`source_label`), trained with `config` (default the budget's)."""
    source, generator_input = parse_label(label, budget)
    return fits.trainer(name or label, source_trainer(source, generator_input, config or budget.config, fits))


def seed_study(lm: LanguageModel, best: str, budget: AblationBudget, fits: Fits) -> pd.DataFrame:
    """The evaluation rows of zero-shot and the `best` source trained and evaluated once per seed of the budget
    (the first seed's generator is the source comparison's); :func:`source_table` aggregates them."""
    trainers = {best: label_trainer(best, budget, fits)}
    return scaling.seed_rows(lm, trainers, budget.tasks, budget.tasks, budget.seeds, budget.n_train,
                             budget.scaling_budget(fits.bodies))


def source_table(rows: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """One row per method (the average over the tasks): primary and label-restricted accuracy as mean ± sd over
    seeds with the item-clustered 95 % interval, and the paired difference against zero-shot (interval, p)."""
    summary = scaling.seed_summary(rows, n_boot=n_boot)
    summary = summary[(summary["level"] == "average") & (summary["name"] == "all")].drop(columns=["level", "name"])
    return summary.reset_index(drop=True)


def best_source(table: pd.DataFrame) -> str:
    """The label of the method (other than zero-shot) with the highest mean label-restricted accuracy."""
    trained = table[table["method"] != BASELINE]
    if trained.empty:
        raise ValueError("the table holds no trained method; make it with source_table(compare_sources(...))")
    return str(trained.sort_values("label_mean", ascending=False, kind="stable")["method"].iloc[0])


def fitted(fits: Fits, label: str, budget: AblationBudget, seed: int | None = None) -> Method:
    """The method `label` trained for the source comparison (``n_train`` items per task, the first seed)."""
    key = (label, budget.n_train, budget.seeds[0] if seed is None else seed, tuple(budget.tasks))
    if key not in fits:
        raise ValueError(f"{label!r} was not trained with n_train={key[1]}, seed={key[2]}; run compare_sources first")
    return fits[key]


def ceilings(lm: LanguageModel, atv: ATV, budget: AblationBudget, progress: bool = False) -> pd.DataFrame:
    """:func:`workbench.analysis.ceilings.ceilings` of `atv` on the budget's tasks (first seed)."""
    return ceiling_module.ceilings(lm, atv, list(budget.tasks), budget.ceiling_n_test,
                                   as_variants(budget.ceiling_templates), as_variants(budget.ceiling_prefixes),
                                   budget.seeds[:1], probe_items=budget.probe_items, oracle_steps=budget.oracle_steps,
                                   batch_size=budget.batch_size, n_boot=budget.n_boot, progress=progress)


def lora_trainer(budget: AblationBudget, fits: Fits) -> scaling.Trainer:
    """The remembered LoRA trainer of `budget` (``lora_epochs``)."""
    return fits.trainer(LORA, scaling.lora_trainer(epochs=budget.lora_epochs))


def data_scaling(lm: LanguageModel, best: str, budget: AblationBudget, fits: Fits) -> tuple[pd.DataFrame,
                                                                                           pd.DataFrame]:
    """(curve, rows) of :func:`workbench.analysis.scaling.data_scaling` for the `best` source (its generator keeping
    the last epoch, and one keeping the best-validation epoch) over ``n_trains`` and the comparison's ``n_train``,
    next to LoRA over ``lora_n_trains`` (LoRA trains through the whole model: the dearest point on 2 cores)."""
    best_valid = dataclasses.replace(budget.config, keep_epoch="best_valid_loss")
    atv = {best: label_trainer(best, budget, fits),
           f"{best} (best-valid epoch)": label_trainer(best, budget, fits, best_valid, f"{best} (best-valid epoch)")}
    curves, rows = [], []
    for trainers, n_trains in ((atv, tuple(sorted({*budget.n_trains, budget.n_train}))),
                               ({LORA: lora_trainer(budget, fits)}, budget.lora_n_trains)):
        plan = dataclasses.replace(budget.scaling_budget(fits.bodies), n_trains=n_trains)
        curve, part = scaling.data_scaling(lm, trainers, list(budget.tasks), plan, return_rows=True)
        if curves:  # zero-shot once
            curve, part = curve[curve["method"] != BASELINE], part[part["method"] != BASELINE]
        curves.append(curve)
        rows.append(part)
    return pd.concat(curves, ignore_index=True), pd.concat(rows, ignore_index=True)


def task_scaling(lm: LanguageModel, best: str, budget: AblationBudget, fits: Fits) -> tuple[pd.DataFrame,
                                                                                           pd.DataFrame]:
    """(curve, rows) of :func:`workbench.analysis.scaling.task_scaling`: the score on the off-target tasks (never
    trained on) of the `best` source and LoRA trained on the first task alone and on all the budget's tasks, with
    LoRA's largest items per task (``max(lora_n_trains)``; the all-task fits are data_scaling's)."""
    trainers = {best: label_trainer(best, budget, fits), LORA: lora_trainer(budget, fits)}
    return scaling.task_scaling(lm, trainers, list(budget.tasks), list(budget.off_target_tasks),
                                budget.scaling_budget(fits.bodies), n_train=max(budget.lora_n_trains),
                                return_rows=True)


def parse_label(label: str, budget: AblationBudget) -> tuple[str, str]:
    """(source, input) of a :func:`source_label` of `budget`."""
    for s in budget.sources:
        for i in budget.inputs:
            if source_label(s, i) == label:
                return s, i
    raise ValueError(f"{label!r} is not a generator label of this budget; use one of "
                     f"{[source_label(s, i) for s in budget.sources for i in budget.inputs]}")


def side_effect_methods(lm: LanguageModel, best: str, budget: AblationBudget, fits: Fits) -> dict[str, Method]:
    """ATV (the `best` generator), static TV, ELICIT (the study's settings for the budget,
    :func:`workbench.eval.compare.standard_methods`) and LoRA, each fitted on the budget's tasks."""
    from workbench.tasks.registry import resolve_tasks

    tasks, seed = resolve_tasks(list(budget.tasks)), budget.seeds[0]
    study = standard_methods(budget=budget.line_up, seed=seed)
    out = {"ATV": fitted(fits, best, budget)}
    for label in ("static TV", "ELICIT"):
        out[label] = study[label].fit(lm, tasks)
    out[LORA] = lora_trainer(budget, fits)(lm, tasks, max(budget.lora_n_trains), seed)
    return out


def side_effects(lm: LanguageModel, methods: Mapping[str, Method], budget: AblationBudget) -> side_module.SideEffects:
    """:func:`workbench.analysis.side_effects.side_effects` of `methods`, steering as on ``target_task``."""
    return side_module.side_effects(lm, methods, budget.target_task, list(budget.off_target_tasks),
                                    n_test=budget.side_n_test, seeds=budget.seeds[:1], n_boot=budget.n_boot,
                                    batch_size=budget.batch_size, templates=as_variants(budget.templates),
                                    prefixes=as_variants(budget.prefixes))


def run_config(lm: LanguageModel, budget: AblationBudget) -> dict[str, Any]:
    """What an ablation run records next to its tables: the models, the budget, package versions."""
    from pathlib import Path

    from workbench.core.files import package_versions

    return {"model": lm.describe(), "budget": dataclasses.asdict(budget), "versions": package_versions(),
            "package": str(Path(__file__).resolve().parents[1])}
