"""Units of evaluation work and their share-out over processes (pure functions; :mod:`workbench.eval.parallel` runs
them).

A **unit** is one task's batch of items for one seed — ``(task, seed, start)``, ``start`` being the position of the
batch's first item in the task's sampled items (:func:`~workbench.eval.evaluate.sample_items`). Units do not depend
on the number of processes, so a run killed under N processes resumes under any other number: the same units, the
finished ones reused. A unit holds every method's rows of its items: the methods that read those items share
their prompt bodies inside it, as in a single process. A method evaluated on a subset of the items
(``max_items``) keeps its own batches (so its numbers are the single-process ones); each of them belongs to the
unit holding its first item (:func:`method_batches`).

:func:`share_out` gives each process a list of units, longest first to the least loaded process (greedy
longest-processing-time; the cost of a unit is the length of the prompts it evaluates, :func:`unit_costs`), and
refuses more processes than units, naming both numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Unit(NamedTuple):
    """One task's batch of items for one seed (``start``: the batch's first position in the sampled items)."""

    task: str
    seed: int
    start: int


class Batch(NamedTuple):
    """One method's batch: seed, its first and one-past-last position in that method's own items."""

    seed: int
    start: int
    stop: int


def base_units(task: str, item_sets: Mapping[int, Sequence[int]], batch_size: int) -> list[Unit]:
    """The units of one task: one per batch of `batch_size` of each seed's sampled items (in seed, then item order)."""
    return [Unit(task, seed, start) for seed, items in item_sets.items() for start in range(0, len(items), batch_size)]


def method_batches(task: str, base: Mapping[int, Sequence[int]], own: Mapping[int, Sequence[int]],
                   batch_size: int) -> dict[Batch, Unit]:
    """A method's batches of `own` items (a subset of `base` for each seed) and the unit each belongs to: the one
    whose base batch holds the batch's first item. ValueError naming an item of `own` that is not in `base`."""
    out: dict[Batch, Unit] = {}
    for seed, items in own.items():
        where = {item: pos for pos, item in enumerate(base[seed])}
        missing = [i for i in items if i not in where]
        if missing:
            raise ValueError(f"task {task!r}, seed {seed}: item {missing[0]} is not among the sampled items")
        for start in range(0, len(items), batch_size):
            first = where[items[start]]
            out[Batch(seed, start, min(start + batch_size, len(items)))] = Unit(task, seed,
                                                                                first - first % batch_size)
    return out


def unit_costs(batches: Mapping[Batch, Unit], items: Mapping[int, Sequence[int]], lengths: Mapping[int, int],
               costs: dict[Unit, float] | None = None) -> dict[Unit, float]:
    """Add to `costs` (per unit) the prompt lengths of a method's `batches` (`lengths`: item -> prompt length)."""
    costs = {} if costs is None else costs
    for batch, unit in batches.items():
        span = items[batch.seed][batch.start:batch.stop]
        costs[unit] = costs.get(unit, 0.0) + float(sum(lengths[i] for i in span))
    return costs


def check_world_size(n_units: int, world_size: int) -> None:
    """ValueError when there are more processes than units of work (naming both numbers)."""
    if world_size > n_units:
        raise ValueError(f"{world_size} processes for {n_units} units of work (a unit is one task's batch of "
                         f"items for one seed): launch at most {n_units} processes, or evaluate more tasks or items "
                         "or use a smaller --batch-size")


def share_out(costs: Mapping[Unit, float], world_size: int) -> list[list[Unit]]:
    """Units per process: the costliest unit first, each to the process with the least cost so far (ties: the
    lower rank; equal costs keep the units' order). Each process's units come back in their original order."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    order = {unit: i for i, unit in enumerate(costs)}
    loads = [0.0] * world_size
    shares: list[list[Unit]] = [[] for _ in range(world_size)]
    for unit in sorted(costs, key=lambda u: (-costs[u], order[u])):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[unit]
        shares[rank].append(unit)
    return [sorted(share, key=order.__getitem__) for share in shares]
