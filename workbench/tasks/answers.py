"""Answer tokens: which token id an answer starts with, and the token ids of a task's labels.

Module contents: :func:`target_first_token` (the official ``get_answer_id`` rule: the first token that
``prompt + " " + output`` has beyond ``prompt``) and :func:`label_token_ids` (one id per label, for label-restricted
scoring and for the baselines that need the answer token: ELICIT, I2CL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.tasks.prompts import TRAIN_PREFIX, target_text


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _in_context(tokenizer: Any, prompt: str, output: str) -> list[int]:
    # positional, exactly like the official get_answer_id
    return _encode(tokenizer, prompt + target_text(output))[len(_encode(tokenizer, prompt)):]


def target_first_token(tokenizer: Any, output: str, prompt: str | None = None) -> int:
    """First token id of the answer ``" " + output`` (see the module docstring for the context rule)."""
    if prompt is not None:
        ids = _in_context(tokenizer, prompt, output)
    else:
        ids = _encode(tokenizer, target_text(output))
        if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
            ids = _in_context(tokenizer, TRAIN_PREFIX, output)
    if not ids:
        raise ValueError(f"answer {output!r} encodes to no tokens")
    return int(ids[0])


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """First token of ``" " + label`` for each label word; error if two labels share a first token."""
    ids = [target_first_token(tokenizer, lab) for lab in labels]
    seen: dict[int, str] = {}
    for lab, i in zip(labels, ids):
        if i in seen:
            raise ValueError(
                f"labels {seen[i]!r} and {lab!r} share their first token {i} ({tokenizer.decode([i])!r}); "
                "label-restricted scoring cannot tell them apart"
            )
        seen[i] = lab
    return ids
