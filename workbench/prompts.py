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
#: System message ELICIT's / ATV's ``create_prompt`` puts before the user turn when a chat template is used.
OFFICIAL_SYSTEM_PROMPT = "You are a helpful chatbot."


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


def apply_chat_template(tokenizer: Any, text: str, system: str | None = OFFICIAL_SYSTEM_PROMPT) -> str:
    """Render `text` (template + "\\n" + prefix) as a chat prompt the way the official code does.

    ELICIT's ``utils/data_utils.create_prompt`` (imported by ``doongsae/ATV``'s ``ATV_evaluate.py``) builds, for a
    templated prompt, ``[{"role": "system", "content": "You are a helpful chatbot."}, {"role": "user", "content":
    template.format(input=...)}]`` and calls ``tokenizer.apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)``. The answer prefix is part of the template string there, so it sits *inside* the user
    message and the assistant turn starts empty. (The official code then tokenizes that string with special
    tokens, so Llama-3 gets two BOS tokens; ``workbench.inference.encode`` avoids this.) If the chat template
    rejects a system role, the system text is dropped and only the user turn is rendered.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{type(tokenizer).__name__} has no chat_template; cannot render a chat prompt")
    user = [{"role": "user", "content": text}]
    messages = ([{"role": "system", "content": system}] if system else []) + user
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja TemplateError ("System role not supported") and similar
        if not system or "system" not in str(e).lower():
            raise
        return tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)


def uses_chat_template(model_name: str, tokenizer: Any) -> bool:
    """Official rule: "instruct" in the lower-cased model name, and the tokenizer has a chat template."""
    return "instruct" in str(model_name).lower() and bool(getattr(tokenizer, "chat_template", None))


def count_tokens(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool | None = None) -> list[int]:
    """Number of tokens of each prompt as the model reads it.

    By default special tokens (BOS) are added unless the prompt already starts with the BOS token (a rendered
    chat prompt), matching ``workbench.inference.encode``. The official code logs ``len(ids) - 1``.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    bos = getattr(tokenizer, "bos_token", None)
    out = []
    for p in prompts:
        add = add_special_tokens if add_special_tokens is not None else not (bos and p.startswith(bos))
        out.append(len(tokenizer(p, add_special_tokens=add)["input_ids"]))
    return out
