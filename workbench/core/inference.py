"""Forward passes of the large model through nnsight: next-token logits, greedy generation, hidden states.

Prompts are left padded and batched; an optional intervention (an :class:`~workbench.core.interventions.Injection` or any
object with the same ``apply(lm, rows, attention_mask)``) edits activations inside the trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from workbench.core.tokens import add_bos

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """A non-empty list of strings, else a ValueError naming the bad value."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is {type(p).__name__} ({p!r}), not a string")
    return list(prompts)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def encode(lm: "LanguageModel", prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids`, `attention_mask` and matching `position_ids` (counting real tokens only).

    The tokenizer's special tokens (BOS) are added unless a prompt already starts with the BOS token
    (chat-rendered prompts).
    """
    tok = lm.tokenizer
    add_special = any(add_bos(tok, p) for p in prompts)
    enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special)
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    if ids.shape[1] == 0:
        raise ValueError("prompts tokenize to zero tokens")
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _needs_grad(intervention: Any) -> bool:
    vectors = getattr(intervention, "vectors", None)
    if isinstance(vectors, torch.Tensor) and vectors.requires_grad:
        return True
    return bool(getattr(intervention, "requires_grad", False))


def _check_intervention(lm: "LanguageModel", intervention: Any, n: int) -> None:
    if intervention is None:
        return
    if not callable(getattr(intervention, "apply", None)):
        raise ValueError(f"injection must be a wb.Injection (or have .apply(lm, rows, mask)), got {type(intervention).__name__}")
    check = getattr(intervention, "check", None)
    if callable(check):
        check(lm, n)


def next_token_logits(
    lm: "LanguageModel",
    prompts: Sequence[str],
    injection: Any = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Logits ``[B, V]`` at the last prompt token (float32 on CPU).

    If the injection's vectors require grad, the result keeps the graph so gradients reach them (the model's
    weights are frozen and get none); otherwise the pass runs without autograd.
    """
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    _check_intervention(lm, injection, len(prompts))
    outputs = []
    with torch.set_grad_enabled(_needs_grad(injection)):
        for rows in batches(len(prompts), batch_size):
            enc = encode(lm, prompts[rows])
            last = torch.tensor([enc["input_ids"].shape[1] - 1])
            with lm.nn.trace(**enc, logits_to_keep=last):
                if injection is not None:
                    injection.apply(lm, rows, enc["attention_mask"])
                logits = lm.nn.output.logits.save()
            outputs.append(logits[:, -1].float())
    return torch.cat(outputs).cpu()


def last_token_states(lm: "LanguageModel", prompts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """Decoder-block outputs at the last prompt token, ``[B, L, d]`` (the Hendel et al. task-vector states)."""
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    chunks = []
    with torch.no_grad():
        for rows in batches(len(prompts), batch_size):
            enc = encode(lm, prompts[rows])
            states: list[torch.Tensor] = []
            with lm.nn.trace(**enc, logits_to_keep=torch.tensor([enc["input_ids"].shape[1] - 1])):
                for i in range(lm.num_layers):
                    states.append(lm.nn_layer(i).output[:, -1].save())
            chunks.append(torch.stack([s.float() for s in states], dim=1))
    return torch.cat(chunks).cpu()


def generate(
    lm: "LanguageModel",
    prompts: Sequence[str],
    injection: Any = None,
    max_new_tokens: int = 16,
    steps: str = "first",
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of `prompts`.

    ``steps="first"`` injects only while reading the prompt (the KV cache carries the effect forward);
    ``steps="all"`` also injects at every generated token.
    """
    prompts = check_prompts(prompts)
    check_batch_size(batch_size)
    if steps not in ("first", "all"):
        raise ValueError(f"unknown steps {steps!r}; use 'first' or 'all'")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    _check_intervention(lm, injection, len(prompts))
    texts: list[str] = []
    with torch.no_grad():
        for rows in batches(len(prompts), batch_size):
            texts.extend(_generate_batch(lm, prompts[rows], rows, injection, max_new_tokens, steps))
    return texts


def _generate_batch(lm, prompts, rows, injection, max_new_tokens, steps) -> list[str]:
    enc = encode(lm, prompts)
    mask, positions = enc["attention_mask"], enc["position_ids"]
    eos = lm.tokenizer.eos_token_id
    new_tokens: list[torch.Tensor] = []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=lm.device)
    inputs: dict[str, Any] = dict(enc)
    cache = None
    for step in range(max_new_tokens):
        if cache is not None:
            inputs = {"input_ids": new_tokens[-1][:, None], "attention_mask": mask, "position_ids": positions[:, -1:] + 1}
            positions = torch.cat([positions, inputs["position_ids"]], dim=1)
        with lm.nn.trace(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1):
            if injection is not None and (step == 0 or steps == "all"):
                step_mask = mask if step == 0 else torch.ones_like(mask[:, -1:])
                injection.apply(lm, rows, step_mask)
            out = lm.nn.output.save()
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1)
        if eos is not None:
            token = torch.where(done, torch.full_like(token, eos), token)
            done |= token == eos
        new_tokens.append(token)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if bool(done.all()):
            break
    generated = torch.stack(new_tokens, dim=1)
    return lm.tokenizer.batch_decode(generated, skip_special_tokens=True)
