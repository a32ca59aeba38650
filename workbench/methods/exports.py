"""The vectors of fitted methods as :class:`~workbench.core.vector_files.SteeringVectors`, ready for
``wb.save_vectors``; each export is one line::

    wb.save_vectors(exports.static_task_vector(static_tv, "glue_sst2"), "sst2.gguf", lm=lm)   # per task
    wb.save_vectors(exports.elicit_entry(elicit, 3), "entry3.safetensors", lm=lm)              # a library entry
    wb.save_vectors(exports.atv_task_vector(atv, "glue_sst2"), "atv-sst2.gguf", lm=lm)         # mean ATV vector
    wb.save_vectors(exports.atv_query_vectors(atv, texts), "atv-queries.safetensors", lm=lm)   # [n, L, d]
    wb.save_vectors(wb.Injection(v, scale=1e-3, positions="all"), "v.gguf", lm=lm)             # any Injection

Each carries the scale, layers and positions its method injects with and records the method's name and config,
the tasks and (per-query vectors) the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workbench.core.checks import check_int
from workbench.core.interventions import resolve_layers
from workbench.core.vector_files import SteeringVectors
from workbench.methods.atv import ATV
from workbench.methods.elicit import ELICIT
from workbench.methods.static import StaticTaskVector
from workbench.tasks.prompts import TRAIN_PREFIX, build_text
from workbench.tasks.registry import resolve_tasks

__all__ = ["atv_query_vectors", "atv_task_vector", "elicit_entry", "static_task_vector"]


def _about(method: Any, tasks: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {"method": method.name, "method_config": method.config(), "tasks": list(tasks), **extra}


def _task_name(task: Any) -> str:
    return task if isinstance(task, str) else getattr(task, "name", str(task))


def static_task_vector(method: StaticTaskVector, task: Any) -> SteeringVectors:
    """The static task vector of `task` (a name or Task the method has a vector for), injected as static TV does
    (``scale``, ``layers``, the last prompt token)."""
    name = _task_name(task)
    if method.mode != "add":
        raise ValueError(f"static TV with mode={method.mode!r} replaces hidden states; only mode='add' vectors are "
                         "steering vectors that can be exported")
    if name not in method.vectors:
        raise ValueError(f"static TV has no vector for task {name!r}; it has {sorted(method.vectors)} (fit it first)")
    return SteeringVectors(method.vectors[name], method.scale, method.layers, "last", _about(method, [name]))


def elicit_entry(method: ELICIT, entry: int | str) -> SteeringVectors:
    """One ELICIT library entry (its index) or a task's mean library vector (its name), at the layer ELICIT injects
    it (the task's best layer, or ``inject_layers``) with ``strength``, at the last prompt token."""
    if method.library is None:
        raise RuntimeError("ELICIT is not fitted: call fit(lm, in_domain_tasks) first")
    if isinstance(entry, str):
        if entry not in method.vectors:
            raise ValueError(f"ELICIT has no entry for task {entry!r}; it has {sorted(method.vectors)}")
        task, mean, extra = entry, method.vectors[entry], {}
    else:
        index = check_int(entry, "entry (a library index)", minimum=0)
        if index >= len(method.entry_tasks):
            raise ValueError(f"entry {index} is beyond ELICIT's library of {len(method.entry_tasks)} entries")
        task, mean = method.entry_tasks[index], method.library[index]
        extra = {"entry": index, "queries_of_entry": method.entry_queries[index]}
    layers = ([method.best_layers[task]] if method.inject_layers is None
              else resolve_layers(method.inject_layers, mean.shape[0]))
    v = torch.zeros_like(mean)
    v[layers] = mean[layers]
    return SteeringVectors(v, method.strength, layers, "last", _about(method, [task], **extra))


def atv_query_vectors(method: ATV, texts: Sequence[str], tasks: Sequence[str] = ()) -> SteeringVectors:
    """The ATV vectors ``[n, L, d]`` of the templated queries `texts` (what the generator reads at evaluation)."""
    return SteeringVectors(method.vectors(list(texts)), method.scale, method.layers, method.positions,
                           _about(method, list(tasks), queries=list(texts)))


def atv_task_vector(method: ATV, task: Any, split: str = "valid", n: int | None = None, template: int = 0,
                    prefix: str = TRAIN_PREFIX) -> SteeringVectors:
    """The mean ATV vector ``[L, d]`` of `task`: the generator's vectors of the first `n` (None: all) queries of its
    `split`, asked with `template` and answer `prefix`, averaged."""
    resolved = resolve_tasks(task)[0]
    items = list(getattr(resolved, split))
    items = items if n is None else items[: check_int(n, "n")]
    if not items:
        raise ValueError(f"task {resolved.name!r} has no {split} items to average ATV vectors over")
    texts = [build_text(resolved.templates[template], it.input, prefix) for it in items]
    return SteeringVectors(method.vectors(texts).mean(0), method.scale, method.layers, method.positions,
                           _about(method, [resolved.name], split=split, n_queries=len(texts), template=template,
                                  prefix=prefix))
