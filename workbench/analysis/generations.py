"""Side-by-side generations of several methods on the same test queries (notebook 03: unsteered vs ATV vs static TV).

Every method prepares the items exactly as :func:`workbench.evaluate` makes it (``method.prepare`` on the same
templated texts, inside ``method.active``), then :func:`workbench.generate` continues its prompts with its
intervention, so the table reads what the scores of notebook 02 are about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.core.checks import check_int, check_seed, check_template
from workbench.core.inference import generate
from workbench.tasks.prompts import TRAIN_PREFIX, build_text
from workbench.tasks.registry import Task, load_task

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel
    from workbench.methods.base import Method


def generations_table(lm: LanguageModel, methods: Mapping[str, Method], task: Task | str,
                      items: Sequence[Any] | None = None, n_items: int = 3, template: int = 0,
                      prefix: str = TRAIN_PREFIX, seed: int = 42, max_new_tokens: int = 24,
                      **generate_kwargs: Any) -> pd.DataFrame:
    """One row per item (columns query, target), one column per method (its name -> generated text).

    `methods`: name -> a fitted method (e.g. ``{"unsteered": ZeroShot(), "ATV (λ=…)": ATV(generator, scale=λ)}``);
    `items`: the task's items, default its first `n_items` test items. `seed` is the seed of ``prepare`` (which
    demonstrations) and of sampling; `generate_kwargs` go to :func:`workbench.generate` (``steps``, ``temperature``,
    ``top_p``, ``top_k``, ``stop``, ``batch_size``).
    """
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must be a non-empty mapping name -> Method, e.g. {'unsteered': ZeroShot()}")
    task = load_task(task) if isinstance(task, str) else task
    check_template(template)
    seed = check_seed(seed)
    items = list(task.test[: check_int(n_items, "n_items")] if items is None else items)
    if not items:
        raise ValueError(f"no items to generate for: task {task.name!r} has no test items, or items is empty")
    texts = [build_text(task.templates[template], item.input, prefix) for item in items]
    table = pd.DataFrame({"query": [item.input for item in items], "target": [item.output for item in items]})
    for name, method in methods.items():
        with method.active(lm):
            batch = method.prepare(lm, task, items, texts, seed)
            table[name] = generate(lm, batch.prompts, batch.intervention, max_new_tokens=max_new_tokens,
                                   seed=seed, **generate_kwargs)
    return table
