"""What :func:`workbench.evaluate` says about the items it reads: how many it used when ``n_test`` is above a split's
size (:func:`warn_short_splits`), and which task, item and variant a too-long prompt belongs to
(:func:`too_long_item`, instead of the forward pass's "prompt 0").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from workbench.core.inference import PromptTooLong, tokenize
from workbench.methods.base import Method
from workbench.tasks.registry import Task


class SplitSmallerThanNTest(UserWarning):
    """``n_test`` asked for more items than a task's split holds: all of them were used."""


def short_splits(tasks: Sequence[Task], n_test: int | None, split: str = "test") -> dict[str, int]:
    """``{task: items used}`` for the tasks whose `split` holds fewer than `n_test` items (all of them are used)."""
    if n_test is None:
        return {}
    return {t.name: len(getattr(t, split)) for t in tasks if len(getattr(t, split)) < n_test}


def warn_short_splits(tasks: Sequence[Task], n_test: int | None, split: str = "test", stacklevel: int = 3) -> None:
    """One :class:`SplitSmallerThanNTest` naming, per task whose split is smaller than `n_test`, how many items
    are used (the whole split, in order)."""
    short = short_splits(tasks, n_test, split)
    if short:
        used = ", ".join(f"{name} {n}" for name, n in short.items())
        warnings.warn(f"n_test={n_test} is more than the {split} split of {len(short)} task(s) holds; all their items "
                      f"are used ({used})", SplitSmallerThanNTest, stacklevel=stacklevel)


def too_long_item(err: PromptTooLong, lm: Any, method: Method, task: Task, items: Sequence[Any],
                  indices: Sequence[int], texts: Sequence[Sequence[str]], variant_list: Sequence[tuple[int, str]],
                  seed: int, split: str = "test") -> Exception:
    """The error to raise for `err` (a prompt of one batch of `items` too long for `lm`): a ValueError naming the
    task, the item's index in `split` and the variant (template, prefix), found by preparing the batch's variants
    again (only on this error path) and measuring them; `err` itself if none is found too long."""
    for (template, prefix), variant in zip(variant_list, texts):
        prompts = method.prepare(lm, task, items, variant, seed).prompts
        for j, ids in enumerate(tokenize(lm, prompts)):
            if len(ids) > err.limit:
                return ValueError(
                    f"task {task.name!r}, {split} item {indices[j]} (template {template}, prefix {prefix!r}): the "
                    f"prompt {method.name} makes of it has {len(ids)} tokens, more than {lm.name}'s {err.limit} "
                    "positions; shorten or remove that item in the task file, or use a model with more positions")
    return err
