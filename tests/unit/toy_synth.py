"""Synthetic two-label tasks over made-up words, shared by the analysis tests (side effects, scaling)."""

from __future__ import annotations

from workbench.tasks.registry import Item, Task

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
TEMPLATES = ["Review: {input}", "Text: {input} ?", "Q {input}"]


def make_task(name: str, labels: tuple[str, str], shift: int) -> Task:
    """A task whose inputs pair each word with the word `shift` places on, labels alternating."""
    items = [Item(f"{a} {b}", labels[i % 2]) for i, (a, b) in enumerate(zip(WORDS, WORDS[shift:] + WORDS[:shift]))]
    return Task(name=name, category="NLU", domain="NLU", templates=TEMPLATES, labels=labels, in_domain=True,
                train=items, valid=items[:4], test=items)
