"""Toy tasks and the tiny model the run-folder tests evaluate on, shared with the child processes they kill."""

from __future__ import annotations

from workbench.core.testing import tiny_model
from workbench.tasks.registry import Item, Task

TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
WORDS = ["good fun film", "bad slow film", "great cast", "dull plot", "nice music", "awful ending"]
#: What every evaluation of these tests runs: 2 items, one variant (cheap).
PROTOCOL = {"n_test": 2, "templates": [0], "prefixes": "A:", "progress": False}


def toy_task(name: str) -> Task:
    items = [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(WORDS)]
    return Task(name=name, category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=True, train=items, valid=items[:2], test=items)


def toy_tasks() -> list[Task]:
    return [toy_task("toy_a"), toy_task("toy_b")]


def toy_lm():
    """The same seeded random-init model in every process."""
    return tiny_model("llama", texts=WORDS + TEMPLATES)
