"""Training examples (shared by ATV and the LoRA baseline) and the naive teacher-forced answer loss.

An :class:`Example` is one train item under one of its task's 3 templates with the answer prefix ``"A:"``; the
large model reads ``lm.render(example.text)`` and is trained on the tokens of ``example.target`` (``" " + output``).

:func:`answer_loss` is the *naive* path: the whole prompt + answer goes through the LLM (under autograd when the
injection's vectors require grad), prompt positions masked, cross-entropy averaged per example then over the batch.
:mod:`workbench.fastpath` computes the same numbers from a cached prompt prefix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .injection import Injection
from .prompts import TRAIN_PREFIX, build_text, target_text

if TYPE_CHECKING:
    from .models import LanguageModel

GENERATOR_INPUTS = ("prompt", "official")
#: The official code skips prompts longer than this many characters.
MAX_PROMPT_CHARS = 3500
IGNORE = -100


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

    Items whose templated text is longer than `max_chars` are skipped (as the official code does). Tasks are
    Task-like objects with ``.name``, ``.templates`` and the `split` list of ``(input, output)`` items.
    """
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
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
    """(prompt ids, answer ids). Prompt ids as :func:`workbench.inference.encode` makes them (BOS unless the
    rendered prompt starts with it); answer ids are the tokens ``prompt + target`` has beyond ``prompt``, the
    official ``get_answer_id`` rule, so the first one is the token :mod:`workbench.scoring` scores."""
    tok = lm.tokenizer
    add = not (tok.bos_token and prompt.startswith(tok.bos_token))
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


# --------------------------------------------------------------------------------------------- injection + loss
class MaskedInjection(Injection):
    """An :class:`Injection` whose edited positions are an explicit [B, T] mask (e.g. the last *prompt* token of
    a prompt + answer sequence, or the first token of a suffix pass)."""

    def __init__(self, base: Injection, mask: torch.Tensor):
        super().__init__(base.vectors, base.scale, base.layers, base.positions)
        self.mask = mask

    def position_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mask.to(device=attention_mask.device, dtype=dtype).unsqueeze(-1)


def per_example_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over each row's labelled positions ([B, K, V] logits, [B, K] labels, IGNORE elsewhere)
    and whether the argmax at each row's first labelled position is right (first-token accuracy)."""
    valid = labels != IGNORE
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    losses = (ce * valid).sum(1) / valid.sum(1).clamp(min=1)
    first = valid.float().argmax(1)
    rows = torch.arange(labels.shape[0])
    correct = logits[rows, first].argmax(-1) == labels[rows, first]
    return losses, correct


def to_injection(injection: Any) -> Injection | None:
    if injection is None or isinstance(injection, Injection):
        return injection
    raise ValueError(f"injection must be a wb.Injection or None, got {type(injection).__name__}")


def pair_losses(
    lm: LanguageModel, pairs: Sequence[tuple[list[int], list[int]]], injection: Injection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive path on tokenized (prompt, answer) pairs: per-example losses [B] and first-token correctness [B]."""
    seqs = [p + a for p, a in pairs]
    ids, mask = pad_left(seqs, lm.tokenizer.pad_token_id)
    B, T = ids.shape
    ans = [len(a) for _, a in pairs]
    K = max(ans) + 1  # logits needed: last prompt token .. second-to-last answer token
    labels = torch.full((B, K), IGNORE, dtype=torch.long)
    last_prompt = torch.zeros((B, T))
    for i, (_, a) in enumerate(pairs):
        labels[i, K - 1 - len(a): K - 1] = torch.tensor(a)
        last_prompt[i, T - 1 - len(a)] = 1
    enc = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device),
           "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(lm.device)}
    if injection is not None:
        injection.check(lm, B)
        if injection.positions == "last":
            injection = MaskedInjection(injection, last_prompt)
    with lm.nn.trace(**enc, logits_to_keep=K):  # autograd follows the caller's grad mode
        if injection is not None:
            injection.apply(lm, slice(None), enc["attention_mask"])
        logits = lm.nn.output.logits.save()
    return per_example_ce(logits[:, -K:], labels.to(logits.device))


def answer_losses(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example answer cross-entropy [B] and first-token correctness [B] (naive path)."""
    if isinstance(prompts, str) or isinstance(targets, str) or len(prompts) != len(targets) or not prompts:
        raise ValueError(f"need equal, non-empty lists of prompts and targets (got {len(prompts)} and {len(targets)})")
    pairs = [tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)]
    return pair_losses(lm, pairs, to_injection(injection))


def answer_loss(
    lm: LanguageModel, prompts: Sequence[str], targets: Sequence[str], injection: Injection | None = None
) -> torch.Tensor:
    """Teacher-forced cross-entropy on the target tokens only, averaged per example then over the batch.

    `prompts` are what the model reads (already rendered); `targets` are ``" " + output``. With an injection at
    positions "last" the vector goes to the last *prompt* token; "all" edits every real token, answer included
    (the official code under transformers <= 4.53). Gradients reach the injection's vectors (and, for LoRA, any
    trainable weights of the model).
    """
    return answer_losses(lm, prompts, targets, injection)[0].mean()
