"""Shared helpers of the demonstration-based vector methods (static task vectors, ELICIT, I2CL).

* :func:`demo_prompts` — k-shot prompts built from a task's train items, each ending with a query (from the valid
  split by default, as ELICIT's library does), oldest demonstrations dropped if the prompt would not fit;
* :func:`prompt_states` — their last-token block outputs ``[n, L, d]`` (Hendel et al.'s task-vector states);
* :func:`single_demos` / :func:`sublayer_outputs` — I2CL's "each demonstration separately": one prompt per
  demonstration (question + answer) and the last-token outputs of every layer's attention and MLP modules;
* :func:`sublayers` — the nnsight envoys of a block's attention and MLP modules for every supported architecture.

Texts follow :mod:`workbench.tasks.prompts` (a question is ``template.format(input) + "\\n" + prefix``, its answer
``" " + output``); k-shot prompts are :func:`workbench.methods.prompting.fewshot_prompt`, the FewShot baseline's
format (demonstrations and query joined by blank lines, the whole rendered with ``lm.render``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.inference import batches, encode, last_token_states
from workbench.core.interventions import first_output, sublayers
from workbench.methods.prompting import fewshot_prompt
from workbench.tasks.prompts import TRAIN_PREFIX, build_text, target_text

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

def task_rng(seed: int, name: str) -> random.Random:
    """A per-task RNG derived from `seed` and the task name (stable across processes)."""
    return random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))


@dataclass
class DemoPrompt:
    """One k-shot prompt: the string the model reads, its query and which train items were used."""

    text: str
    query: Any
    query_text: str
    demo_indices: list[int]
    dropped: int = 0
    meta: dict = field(default_factory=dict)


def _n_tokens(lm: LanguageModel, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=True)["input_ids"])


def demo_prompts(
    lm: LanguageModel,
    task: Any,
    k: int = 16,
    n_prompts: int = 10,
    seed: int = 42,
    query_split: str = "valid",
    template: int = 0,
    prefix: str = TRAIN_PREFIX,
    max_tokens: int | None = None,
) -> list[DemoPrompt]:
    """`n_prompts` prompts of `k` demonstrations sampled from ``task.train`` plus a query from `query_split`.

    Queries are drawn without replacement while possible; demonstrations never include the query itself. If a
    prompt exceeds `max_tokens` (default: the model's context length) the oldest demonstrations are dropped and
    counted in ``DemoPrompt.dropped``.
    """
    if k < 0 or n_prompts < 1:
        raise ValueError(f"need k >= 0 and n_prompts >= 1, got k={k}, n_prompts={n_prompts}")
    rng = task_rng(seed, task.name)
    pool, queries = list(task.train), list(task.split(query_split))
    if not pool and k:
        raise ValueError(f"task {task.name!r} has no train items to draw demonstrations from")
    query_order = rng.sample(range(len(queries)), len(queries))
    limit = max_tokens or lm.max_length
    tpl = task.templates[template]
    out = []
    for p in range(n_prompts):
        query = queries[query_order[p % len(queries)]]
        candidates = [i for i in range(len(pool)) if pool[i] != query]
        chosen = rng.sample(candidates, min(k, len(candidates)))
        dropped = 0
        while True:
            text = fewshot_prompt(lm, tpl, [pool[i] for i in chosen[dropped:]], query.input, prefix)
            if dropped >= len(chosen) or _n_tokens(lm, text) <= limit:
                break
            dropped += 1
        out.append(DemoPrompt(text, query, build_text(tpl, query.input, prefix), chosen[dropped:], dropped))
    return out


def prompt_states(lm: LanguageModel, prompts: Sequence[DemoPrompt], batch_size: int = 4) -> torch.Tensor:
    """Last-token block outputs ``[n, L, d]`` of the prompts (float32, CPU)."""
    return last_token_states(lm, [p.text for p in prompts], batch_size=batch_size)


def per_class_demos(task: Any, shots_per_class: int, seed: int = 42, max_total: int | None = None) -> list[Any]:
    """I2CL's demonstration set: `shots_per_class` train items per label word (k random items for free-form tasks).

    `max_total` caps the set (classes visited round-robin so every class keeps the same share).
    """
    rng = task_rng(seed, task.name)
    labels = list(getattr(task, "labels", ()) or ())
    if not labels:
        n = shots_per_class if max_total is None else min(shots_per_class, max_total)
        return rng.sample(list(task.train), min(n, len(task.train)))
    by_class = {lab: [it for it in task.train if it.output == lab] for lab in labels}
    picked = {lab: rng.sample(items, min(shots_per_class, len(items))) for lab, items in by_class.items()}
    out: list[Any] = []
    for round_ in range(shots_per_class):
        out.extend(picked[lab][round_] for lab in labels if round_ < len(picked[lab]))
    if not out:
        raise ValueError(f"task {task.name!r}: no train item has one of the label words {labels}")
    return out[:max_total] if max_total is not None else out


def single_demos(lm: LanguageModel, task: Any, items: Sequence[Any], template: int = 0,
                 prefix: str = TRAIN_PREFIX) -> list[str]:
    """One prompt per demonstration: the rendered question followed by its answer (I2CL's split demonstrations)."""
    tpl = task.templates[template]
    return [lm.render(build_text(tpl, it.input, prefix)) + target_text(it.output) for it in items]


def sublayer_outputs(lm: LanguageModel, texts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """Last-token outputs of every layer's attention and MLP modules, ``[N, L, 2, d]`` (float32, CPU)."""
    chunks = []
    with torch.no_grad():
        for rows in batches(len(texts), batch_size):
            enc = encode(lm, list(texts[rows]))
            saved: list[torch.Tensor] = []
            with lm.nn.trace(**enc):
                for layer in range(lm.num_layers):
                    attn, mlp = sublayers(lm, layer)
                    saved.append(first_output(attn.output)[:, -1].save())
                    saved.append(mlp.output[:, -1].save())
            stacked = torch.stack([s.float() for s in saved], dim=1)  # [b, 2L, d]
            chunks.append(stacked.view(stacked.shape[0], lm.num_layers, 2, -1))
    return torch.cat(chunks).cpu()


def zero_shot_texts(lm: LanguageModel, task: Any, items: Sequence[Any], template: int = 0,
                    prefix: str = TRAIN_PREFIX) -> list[str]:
    """Rendered zero-shot prompts of `items` with one of the task's templates."""
    tpl = task.templates[template]
    return [lm.render(build_text(tpl, it.input, prefix)) for it in items]
