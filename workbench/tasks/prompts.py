"""Prompt text for the 3 question templates x 3 answer prefixes, and chat rendering as the official ATV code does.

The text a model reads for an item (before any chat template) is::

    template.format(input=input.strip()) + "\\n" + prefix          e.g. "...Question: <input>\\nA:"

and the answer it is scored on is ``" " + output``. Notes:

* ELICIT's ``create_prompt`` (used by ATV's evaluation) fills the template with the *stripped* input; 1,434 items in
  the shipped files have surrounding whitespace (ethics_justice, ethics_commonsense, glue_mnli, some BBQ and
  mmlu_pro_math), so ``build_text`` strips by default (``strip=False`` keeps the input as is).
* ``templates.json`` holds real newlines (no literal backslash-n) and no braces besides ``{input}``; inputs may
  contain braces (mmlu_pro_math LaTeX), which ``str.format`` leaves alone since they are substituted values.
* Official ATV evaluation (``ATV_evaluate.py``): ``answer_templates = ["Answer:", "The answer is", "A:"]`` and
  ``template + "\\n" + answer_template`` for each prefix and each of the task's 3 templates; training uses ``"A:"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PREFIXES: tuple[str, ...] = ("A:", "Answer:", "The answer is")
TRAIN_PREFIX = "A:"


def build_text(template: str, input: str, prefix: str = TRAIN_PREFIX, strip: bool = True) -> str:
    """``template.format(input=input) + "\\n" + prefix`` (input stripped first, as the official code does)."""
    if "{input}" not in template:
        raise ValueError(f"template has no '{{input}}' placeholder: {template!r}")
    try:
        filled = template.format(input=input.strip() if strip else input)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"template cannot be filled with str.format ({e!r}); literal braces must be doubled: {template!r}"
        ) from None
    return filled + "\n" + prefix


def target_text(output: str) -> str:
    """The scored continuation: a space then the answer."""
    return " " + output


def _indices(templates: Any, n_templates: int) -> list[int]:
    if isinstance(templates, str):
        if templates == "all":
            return list(range(n_templates))
        raise ValueError(f"templates={templates!r} not understood; use 'all', an index 0-{n_templates - 1} or a list")
    vals = [templates] if isinstance(templates, int) else list(templates) if isinstance(templates, Sequence) else None
    if vals is None or not vals:
        raise ValueError(f"templates={templates!r} not understood; use 'all', an index 0-{n_templates - 1} or a list")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_templates:
            raise ValueError(f"template index {v!r} is invalid; accepted: integers 0-{n_templates - 1} or 'all'")
    return list(dict.fromkeys(vals))


def _prefixes(prefixes: Any) -> list[str]:
    if prefixes == "all":
        return list(PREFIXES)
    vals = [prefixes] if isinstance(prefixes, str) else list(prefixes) if isinstance(prefixes, Sequence) else None
    if vals is None or not vals:
        raise ValueError(f"prefixes={prefixes!r} not understood; use 'all', one of {PREFIXES} or a list of them")
    for v in vals:
        if v not in PREFIXES:
            raise ValueError(f"answer prefix {v!r} is invalid; accepted: {list(PREFIXES)} or 'all'")
    return list(dict.fromkeys(vals))


def variants(templates: Any = "all", prefixes: Any = "all", n_templates: int = 3) -> list[tuple[int, str]]:
    """The (template_index, prefix) pairs to evaluate, prefix-major like the official loop (9 for "all", "all").

    `templates`: "all", an index or a list of indices; `prefixes`: "all", a prefix or a list of prefixes.
    """
    t = _indices(templates, n_templates)
    return [(i, p) for p in _prefixes(prefixes) for i in t]


def task_texts(task: Any, items: Sequence[Any], template_index: int, prefix: str) -> list[str]:
    """``build_text`` for each item (``Item`` or ``(input, output)``) with one of `task`'s templates."""
    template = task.templates[_indices(template_index, len(task.templates))[0]]
    _prefixes(prefix)
    return [build_text(template, it[0], prefix) for it in items]

