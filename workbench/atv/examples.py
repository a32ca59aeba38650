"""Training examples (shared by ATV and the LoRA baseline) and the naive teacher-forced answer loss.

An :class:`Example` is one train item under one of its task's 3 templates with the answer prefix ``"A:"``; the
large model reads ``lm.render(example.text)`` and is trained on the tokens of ``example.target`` (``" " + output``).

:func:`answer_loss` is the *naive* path: the whole prompt + answer goes through the LLM (under autograd when the
injection's vectors require grad), prompt positions masked, cross-entropy averaged per example then over the batch.
:mod:`workbench.atv.fastpath` computes the same numbers from a cached prompt prefix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.tokens import add_bos
from workbench.tasks.prompts import TRAIN_PREFIX, build_text, target_text

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

GENERATOR_INPUTS = ("prompt", "official")
#: The official code skips prompts longer than this many characters.
MAX_PROMPT_CHARS = 3500


@dataclass(frozen=True)
class Example:
    """One (item, template) pair: what the LLM reads, what it must answer, what the generator reads."""

    task: str
    item: int
    template: int
    text: str  # templated question + "\n" + prefix, before any chat template
    target: str  # " " + output
    generator_text: str
    split: str = "train"

    def prompt(self, lm: LanguageModel) -> str:
        """The string the large model reads (chat template applied when ``lm.chat``)."""
        return lm.render(self.text)

    @property
    def group(self) -> tuple[str, int]:
        """The item this example belongs to (its 3 templates share it)."""
        return (self.task, self.item)


def generator_text(input: str, text: str, generator_input: str) -> str:
    """What the generator reads: the templated prompt (paper) or ``"Q: {input} \\n A: "`` (official training)."""
    if generator_input == "prompt":
        return text
    if generator_input == "official":
        return f"Q: {input} \n A: "
    raise ValueError(f"unknown generator_input {generator_input!r}; use one of {GENERATOR_INPUTS}")


def training_examples(
    tasks: Sequence[Any],
    n_train: int = 90,
    seed: int = 42,
    prefix: str = TRAIN_PREFIX,
    generator_input: str = "prompt",
    split: str = "train",
    max_chars: int = MAX_PROMPT_CHARS,
) -> list[Example]:
    """``n_train`` items per task (sampled with `seed`, the same for every method) x each of its 3 templates.

    Items whose templated text is longer than `max_chars` are skipped (as the official code does). `tasks`: a task
    name, a Task or a list mixing both (:func:`workbench.tasks.registry.resolve_tasks`), or a list of Task-like
    objects with ``.name``, ``.templates`` and the `split` list of ``(input, output)`` items.
    """
    from workbench.tasks.registry import Task, resolve_tasks

    if isinstance(tasks, (str, Task)) or (isinstance(tasks, Sequence) and any(isinstance(t, (str, Task))
                                                                             for t in tasks)):
        tasks = resolve_tasks(tasks)
    if isinstance(tasks, bytes) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError("tasks is empty: give at least one task (e.g. [wb.load_task('glue_sst2')])")
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be a positive int, got {n_train!r}")
    generator_text("", "", generator_input)  # validates the option
    out: list[Example] = []
    for task in tasks:
        items = list(getattr(task, split))
        if not items:
            raise ValueError(f"task {task.name!r} has no {split} items")
        picked = sorted(random.Random(f"{seed}/{task.name}").sample(range(len(items)), min(n_train, len(items))))
        for index in picked:
            inp, output = items[index][0], items[index][1]
            texts = [build_text(t, inp, prefix) for t in task.templates]
            if max(len(t) for t in texts) > max_chars:
                continue
            for k, text in enumerate(texts):
                gen = generator_text(inp, text, generator_input)
                out.append(Example(task.name, index, k, text, target_text(output), gen, split))
    if not out:
        raise ValueError(f"no {split} examples left (all prompts longer than {max_chars} characters?)")
    return out


# --------------------------------------------------------------------------------------------- tokenization
def tokenize_pair(lm: LanguageModel, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids). Prompt ids as :func:`workbench.core.inference.encode` makes them (BOS unless the
    rendered prompt starts with it); answer ids are the tokens ``prompt + target`` has beyond ``prompt``, the
    official ``get_answer_id`` rule, so the first one is the token :mod:`workbench.eval.scoring` scores."""
    tok = lm.tokenizer
    add = add_bos(tok, prompt)
    prompt_ids = list(tok(prompt, add_special_tokens=add)["input_ids"])
    bare = len(tok(prompt, add_special_tokens=False)["input_ids"])
    answer_ids = list(tok(prompt + target, add_special_tokens=False)["input_ids"])[bare:]
    if not answer_ids:
        raise ValueError(f"target {target!r} adds no tokens after prompt {prompt[-40:]!r}")
    if not prompt_ids:
        raise ValueError("prompt tokenizes to zero tokens")
    return prompt_ids, answer_ids


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, T] and attention mask."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.tensor(list(r))
            mask[i, T - len(r):] = 1
    return ids, mask

