"""Token-level rules shared by every module: the chat template, the BOS rule, token counts.

Module contents: :data:`OFFICIAL_SYSTEM_PROMPT`, :func:`apply_chat_template`, :func:`uses_chat_template`,
:func:`add_bos` (whether a rendered prompt still needs the tokenizer's BOS token) and :func:`count_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: System message ELICIT's / ATV's ``create_prompt`` puts before the user turn when a chat template is used.
OFFICIAL_SYSTEM_PROMPT = "You are a helpful chatbot."


def apply_chat_template(tokenizer: Any, text: str, system: str | None = OFFICIAL_SYSTEM_PROMPT) -> str:
    """Render `text` (template + "\\n" + prefix) as a chat prompt the way the official code does.

    ELICIT's ``utils/data_utils.create_prompt`` (imported by ``doongsae/ATV``'s ``ATV_evaluate.py``) builds, for a
    templated prompt, ``[{"role": "system", "content": "You are a helpful chatbot."}, {"role": "user", "content":
    template.format(input=...)}]`` and calls ``tokenizer.apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)``. The answer prefix is part of the template string there, so it sits *inside* the user
    message and the assistant turn starts empty. (The official code then tokenizes that string with special
    tokens, so Llama-3 gets two BOS tokens; ``workbench.core.inference.encode`` avoids this.) If the chat template
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


def check_text(text: object, index: int, what: str = "prompt") -> str:
    """`text` if it is a string the tokenizers can encode, else a ValueError naming `what` `index` and the fault
    (not a string; a lone surrogate, which is not encodable as UTF-8)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} {index} is {type(text).__name__} ({text!r:.80}), not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} {index} is not valid text: {err.object[err.start:err.end]!r} at character "
                         f"{err.start} is a lone surrogate (not encodable as UTF-8)") from None
    return text


def add_bos(tokenizer: Any, prompt: str) -> bool:
    """The BOS rule: the tokenizer's special tokens are added unless `prompt` already starts with the BOS token (a
    rendered chat prompt). The official code adds them regardless, so Llama-3 chat prompts get two BOS tokens."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def count_tokens(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool | None = None) -> list[int]:
    """Number of tokens of each prompt as the model reads it.

    By default special tokens (BOS) are added unless the prompt already starts with the BOS token (a rendered
    chat prompt), matching ``workbench.core.inference.encode``. The official code logs ``len(ids) - 1``.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    out = []
    for p in prompts:
        add = add_special_tokens if add_special_tokens is not None else add_bos(tokenizer, p)
        out.append(len(tokenizer(p, add_special_tokens=add)["input_ids"]))
    return out
