"""Data-parallel evaluation: the processes of one launch (``accelerate launch --num_processes N`` / ``torchrun``)
share the units of work (:mod:`workbench.eval.units`) and process 0 merges them into the run folders a single
process would have written — the same rows in the same order with the same numbers, one ``config.json`` (which
records ``num_processes``), one ``results/<task>.parquet`` per task.

Steps of :func:`evaluate_sharded` (every process, in step: :meth:`~workbench.core.world.World.step`):

1. process 0 takes the run folders' locks and opens them (the others read them);
2. every process lists the units not finished yet — a task merged, or a unit whose rows are in ``parts/``
   (:mod:`workbench.eval.parts`, whichever process or number of processes made them) is not redone — and takes its
   share (:func:`~workbench.eval.units.share_out`, balanced by prompt length);
3. each process evaluates its units task by task, every method of a unit on the same items (prompt bodies shared as
   in one process; the shared-prefix cache is its own), and writes each unit's rows atomically;
4. process 0 merges each task's units in the single-process order into ``results/``, then removes them; the others
   then read the merged results, so every process returns the same frames.

:func:`fit_once` fits the baselines in process 0 (saved in their fit folders) while the others wait, then the
others reload the saved fits. In a world of one, without units left by an earlier launch, none of this runs
(:func:`is_sharded`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workbench.core.world import World, current_world
from workbench.eval import parts, runs
from workbench.eval.method_run import MethodRun, warn_bad_logits
from workbench.eval.run_safety import run_locks
from workbench.eval.units import Batch, Unit, base_units, check_world_size, method_batches, share_out, unit_costs
from workbench.methods.base import Method
from workbench.methods.fitted import fit_or_load
from workbench.tasks.registry import Task

ItemSets = dict[int, list[int]]


@dataclass
class Job:
    """What :func:`workbench.eval.evaluate.evaluate_many` hands over: the tasks, one :class:`MethodRun` per label,
    the items (``items(task, None)``: the sampled ones; ``items(task, label)``: those that label is evaluated on),
    ``compute(task, label, items, only)`` -> (rows, peak memory) for the batches `only`, and ``end_task()``
    (clears the task's body cache)."""

    lm: Any
    tasks: list[Task]
    runs: dict[str, MethodRun]
    items: Callable[[Task, str | None], ItemSets]
    compute: Callable[[Task, str, ItemSets, set[tuple[int, int]]], tuple[pd.DataFrame, dict]]
    end_task: Callable[[], None]
    batch_size: int
    variants: list[tuple[int, str]]


@dataclass
class TaskPlan:
    """One task's items per label, its units and each label's batches with the unit they belong to."""

    task: Task
    base: ItemSets
    own: dict[str, ItemSets]
    units: list[Unit]
    batches: dict[str, dict[Batch, Unit]]


def is_sharded(runs_: Mapping[str, MethodRun], world: World) -> bool:
    """Whether the evaluation runs in units: several processes, or units an earlier launch left to resume."""
    return world.size > 1 or parts.has_parts(r.run_dir for r in runs_.values())


def plan(job: Job) -> list[TaskPlan]:
    out = []
    for task in job.tasks:
        base = job.items(task, None)
        own = {label: job.items(task, label) for label in job.runs}
        batches = {label: method_batches(task.name, base, own[label], job.batch_size) for label in job.runs}
        out.append(TaskPlan(task, base, own, base_units(task.name, base, job.batch_size), batches))
    return out


def _finished(run: MethodRun, task: Task) -> bool:
    with warnings.catch_warnings():  # an unrecorded result file is named once, when process 0 merges
        warnings.simplefilter("ignore")
        return runs.recorded_result(run.root, task.name, run.records.get(task.name)) is not None


def pending_work(job: Job, plans: list[TaskPlan]) -> dict[Unit, dict[str, float]]:
    """Per unit still to do, the cost (prompt characters) of each label it evaluates. A unit is redone for every
    label whose task is not merged as soon as one of them lacks its rows: within a unit the methods share prompt
    bodies in order, so its numbers are those of one process only when all its methods run together."""
    out: dict[Unit, dict[str, float]] = {}
    for tp in plans:
        costs: dict[str, dict[Unit, float]] = {}
        for label, run in job.runs.items():
            if not _finished(run, tp.task):
                pool = getattr(tp.task, run.config.get("split", "test"))
                lengths = {i: len(pool[i].input) + 1 for items in tp.own[label].values() for i in items}
                costs[label] = unit_costs(tp.batches[label], tp.own[label], lengths)
        for unit in tp.units:
            mine = {label: c[unit] for label, c in costs.items() if unit in c}
            if any(parts.find_unit(job.runs[label].root, job.runs[label].config, unit) is None for label in mine):
                out[unit] = mine
    return out


def _split_rows(df: pd.DataFrame, own: ItemSets, batches: Mapping[Batch, Unit], batch_size: int
                ) -> dict[Unit, pd.DataFrame]:
    """The rows of one label's evaluation grouped by the unit of their batch."""
    where = {(s, i): pos for s, items in own.items() for pos, i in enumerate(items)}
    unit_of = {(b.seed, b.start): u for b, u in batches.items()}
    keys = [unit_of[(s, where[(s, i)] - where[(s, i)] % batch_size)] for s, i in zip(df["seed"], df["item"])]
    return {unit: df[[k == unit for k in keys]].reset_index(drop=True) for unit in dict.fromkeys(keys)}


def evaluate_units(job: Job, plans: list[TaskPlan], mine: set[Unit], todo: Mapping[Unit, Mapping[str, float]],
                   world: World) -> None:
    """Evaluate this process's units, task by task, and write each unit's rows (:func:`parts.write_unit`)."""
    for tp in plans:
        if not mine.intersection(tp.units):
            continue
        for label, run in job.runs.items():
            only = {(b.seed, b.start) for b, u in tp.batches[label].items() if u in mine and label in todo.get(u, {})}
            if not only:
                continue
            rows, memory = job.compute(tp.task, label, tp.own[label], only)
            for unit, unit_rows in _split_rows(rows, tp.own[label], tp.batches[label], job.batch_size).items():
                parts.write_unit(run.root, run.config, unit, unit_rows, memory, world)
        job.end_task()


def single_process_order(df: pd.DataFrame, own: ItemSets, variants: Sequence[tuple[int, str]]) -> pd.DataFrame:
    """`df` sorted as one process orders a task's rows: seed, then variant, then item (stable)."""
    seeds = {s: k for k, s in enumerate(own)}
    variant = {(int(t), str(p)): k for k, (t, p) in enumerate(variants)}
    where = {(s, i): pos for s, items in own.items() for pos, i in enumerate(items)}
    key = pd.DataFrame({"s": [seeds[s] for s in df["seed"]],
                        "v": [variant[(int(t), str(p))] for t, p in zip(df["template"], df["prefix"])],
                        "i": [where[(s, i)] for s, i in zip(df["seed"], df["item"])]})
    order = key.sort_values(["s", "v", "i"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _peak(memories: list[Mapping[str, Any]], world: World) -> dict[str, Any]:
    """The peak-memory record of a merged task: the largest over its units (each measured in its process)."""
    memories = [m for m in memories if m]
    if not memories:
        return {"num_processes": world.size}
    out = {"memory_kind": memories[0].get("memory_kind"), "peak_bytes": max(m["peak_bytes"] for m in memories),
           "increase_bytes": max(m["increase_bytes"] for m in memories), "num_processes": world.size}
    starts = [m["start_bytes"] for m in memories if m.get("start_bytes") is not None]
    return {**out, "start_bytes": min(starts)} if starts else out


def merge(job: Job, plans: list[TaskPlan], world: World) -> None:
    """Process 0: every task's rows into its run folder, in the single-process order (merged tasks reloaded)."""
    for tp in plans:
        for label, run in job.runs.items():
            if run.resume(tp.task, job.lm):
                continue
            units = list(dict.fromkeys(tp.batches[label].values()))
            found = [parts.read_unit(run.root, run.config, u) for u in units]
            rows = single_process_order(pd.concat([r for r, _ in found], ignore_index=True), tp.own[label],
                                        job.variants)
            run.add(tp.task, rows, _peak([m for _, m in found], world))
        for run in job.runs.values():  # once every label is merged: a unit is redone with all its labels
            parts.remove_task(run.root, run.config, tp.task.name)


def evaluate_sharded(job: Job, world: World) -> dict[str, pd.DataFrame]:
    """Run `job` in units over the processes of `world` (see the module docstring); ``{label: rows}`` on every
    process. ValueError before any work: no run folder, or more processes than units."""
    if any(r.run_dir is None for r in job.runs.values()):
        raise ValueError(f"evaluating with {world.size} processes needs a run_dir (--run-dir): each process writes "
                         "its units there and process 0 merges them")
    plans = plan(job)
    check_world_size(sum(len(tp.units) for tp in plans), world.size)
    with contextlib.ExitStack() as locks:
        with world.step("open the run folders"):
            if world.main:
                locks.enter_context(run_locks(r.run_dir for r in job.runs.values()))
                for run in job.runs.values():
                    run.config["num_processes"] = world.size
                    run.open()
        if not world.main:
            for run in job.runs.values():
                run.attach()
        with world.step("list the units to do"):
            todo = pending_work(job, plans)
            shares = share_out({u: sum(c.values()) for u, c in todo.items()}, world.size) if todo else []
        with world.step("evaluate the units"):
            evaluate_units(job, plans, set(shares[world.rank]) if shares else set(), todo, world)
        with world.step("merge the units"):
            if world.main:
                merge(job, plans, world)
    if not world.main:
        for run in job.runs.values():
            run.attach()
            for tp in plans:
                run.resume(tp.task, job.lm)
    names = [t.name for t in job.tasks]
    if world.main:
        for label, run in job.runs.items():
            warn_bad_logits(run.parts, run.method)
    return {label: run.frame(names) for label, run in job.runs.items()}


def fit_once(methods: Mapping[str, Method], lm: Any, tasks: Sequence[Task],
             folders: Mapping[str, str | os.PathLike | None]) -> tuple[dict[str, float], dict[str, bool]]:
    """:func:`~workbench.methods.fitted.fit_or_load` for every method: in a launch of several processes, process 0
    fits and saves while the others wait, then they reload its fits (ValueError before any work when a method with
    something to save has no fit folder). Returns (fit seconds, reloaded) per label."""
    world = current_world()
    missing = [k for k, m in methods.items() if m.fitted_attributes and folders.get(k) is None]
    if world.size > 1 and missing:
        raise ValueError(f"fitting {missing} once for {world.size} processes needs a fit folder (fit_dir, "
                         "--fit-dir): process 0 saves the fits there and the others reload them")
    seconds: dict[str, float] = {}
    reloaded: dict[str, bool] = {}

    def fit_all() -> None:
        for name, method in methods.items():
            seconds[name], reloaded[name] = fit_or_load(method, lm, tasks, folders.get(name))

    with world.step("fit the methods in process 0"):
        if world.main:
            fit_all()
    if not world.main:
        fit_all()
    return seconds, reloaded
