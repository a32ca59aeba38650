"""Side effects of steering (issue 23 §4): what a method fitted on one task does to everything else.

Two measurements, each against the unsteered model, with intervals:

* :func:`perplexity`: the large model's perplexity on held-out text (default: :func:`held_out_texts`, 40 neutral
  sentences shipped in ``workbench/resources/heldout_text.json``, written for the workbench, CC0) under each
  method's steering;
* :func:`off_target`: accuracy on tasks the method was not fitted for (:func:`workbench.evaluate_many` and the
  item-clustered paired statistics of :func:`workbench.eval.stats.paired`).

:func:`side_effects` runs both and returns :class:`SideEffects` (both tables).
Plots: :mod:`workbench.ui.side_effect_plots`.

**What steers the held-out text.** A method's intervention depends on the query (ATV reads it, ELICIT retrieves
with it): text ``i`` is steered with what ``method.prepare`` makes for the target task's test item ``i`` (items
cycled, template 0, answer prefix "A:"), i.e. the vector the method uses on its own task. LoRA has no intervention:
its adapter is active (``method.active(lm)``) for every token in both modes — it is part of the weights.

**Definition of the two modes.** Every text is read after a short instruction prefix,
``lm.render(PREFIX_INSTRUCTION)`` (a newline appended unless it ends in whitespace); the text's own tokens (its
tokenization without special tokens) are the ones scored, the first of them predicted from the prefix's last
position. Perplexity = ``exp(sum NLL / number of scored tokens)`` over the texts.

* ``steps="first"`` (the paper's): the prefix is read with the intervention applied exactly as in evaluation (a
  last-token injection edits the prefix's last token only); the text's tokens are read unedited and feel the
  vector only through the keys and values of the prefix (the KV cache), as :func:`workbench.generate` with
  ``steps="first"``.
* ``steps="all"`` (llama.cpp control vectors, lm-eval's steered model): as "first", and the vector is added at every
  text token too (an additive injection at each text position; I2CL's context vectors at each text position).
  Other interventions (a :class:`~workbench.core.interventions.Replacement`) are refused for "all".

Intervals: a percentile bootstrap over texts (the same draws for steered and unsteered, so the difference is
paired) and a sign-flip test on the per-text NLL differences (:func:`workbench.eval.stats.sign_flip_pvalues`).

**Off-target tasks.** A method is evaluated on the other tasks *as on its target task*: :class:`OnTarget` calls
its ``prepare`` with the target task (static TV and few-shot prompts use the target task's vector / demonstrations;
ATV and ELICIT read the off-target query as always; LoRA keeps its adapter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd
import torch

from workbench.core.checks import check_choice
from workbench.core.inference import batches, check_batch_size, encode
from workbench.core.interventions import ContextInjection, Injection, Intervention, MaskedInjection, as_intervention
from workbench.core.kv_cache import cache_kwarg, output_cache
from workbench.eval.compare import labelled
from workbench.eval.evaluate import check_n_test, check_seeds, evaluate_many, variant_texts
from workbench.eval.stats import bootstrap_weights, check_ci, check_count, interval, paired, rng_for, sign_flip_pvalues
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.prompting import ZeroShot
from workbench.tasks.prompts import TRAIN_PREFIX
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

STEPS = ("first", "all")
#: The instruction every held-out text follows (see the module docstring).
PREFIX_INSTRUCTION = "Write one sentence."
#: Label of the unsteered model in the tables.
UNSTEERED = "unsteered"
HELD_OUT_FILE = "resources/heldout_text.json"


# ----------------------------------------------------------------------------------------------- inputs
def held_out_texts() -> list[str]:
    """The 40 held-out sentences shipped with the package (``workbench/resources/heldout_text.json``, CC0)."""
    doc = json.loads(resources.files("workbench").joinpath(HELD_OUT_FILE).read_text(encoding="utf-8"))
    return list(doc["texts"])


def check_texts(texts: Sequence[str]) -> list[str]:
    """A non-empty list of non-blank strings, else a ValueError naming the bad entry."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty: give at least one held-out text (default: held_out_texts())")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} ({t!r}) is not a non-blank string")
    return list(texts)


def check_steps(steps: str | Sequence[str]) -> list[str]:
    """`steps` ("first", "all" or a list of them) as a list, else a ValueError naming it."""
    values = [steps] if isinstance(steps, str) else list(steps)
    if not values:
        raise ValueError(f"steps must name at least one of {STEPS}")
    return [check_choice(s, "steps", STEPS) for s in values]


def prefix_text(lm: LanguageModel, instruction: str = PREFIX_INSTRUCTION) -> str:
    """What the model reads before each held-out text: the rendered instruction, ending in whitespace."""
    rendered = lm.render(instruction)
    return rendered if rendered[-1:].isspace() else rendered + "\n"


# ----------------------------------------------------------------------------------------------- steering
class OnTarget(Method):
    """`method` used on any task as on `target`: its ``prepare`` is called with the target task (see the module
    docstring); everything else (``active``, its settings) is the wrapped method's."""

    def __init__(self, method: Method, target: Task):
        if not isinstance(method, Method):
            raise ValueError(f"method must be a workbench Method, got {type(method).__name__}")
        self.method, self.target = method, target
        self.name = method.name
        self.shares_model_weights = method.shares_model_weights
        self.reads_plain_queries = method.reads_plain_queries

    def check_fitted_for(self, lm: LanguageModel) -> None:
        self.method.check_fitted_for(lm)

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        return self.method.prepare(lm, self.target, items, texts, seed)

    def active(self, lm: LanguageModel) -> Any:
        return self.method.active(lm)

    def config(self) -> dict:
        return {**self.method.config(), "steered_as": self.target.name}


def steering(lm: LanguageModel, method: Method, task: Task, n: int, seed: int = 42) -> Intervention | None:
    """The intervention `method` makes for the first `n` test items of `task` (cycled), one row each."""
    pool = list(task.test) or list(task.valid)
    if not pool:
        raise ValueError(f"task {task.name!r} has no test or valid items to make the steering from")
    items = [pool[i % len(pool)] for i in range(n)]
    batch = method.prepare(lm, task, items, variant_texts(task, items, 0, TRAIN_PREFIX), seed)
    return None if batch.intervention is None else as_intervention(batch.intervention)


def every_token(intervention: Intervention, rows: slice, mask: torch.Tensor) -> tuple[Intervention, slice]:
    """(edit, rows) applying `intervention` at every position of `mask` (``[b, T]``) of one sub-batch."""
    if isinstance(intervention, Injection):
        vectors = intervention.vectors[rows] if intervention.batched else intervention.vectors
        base = Injection(vectors, intervention.scale, intervention.layers, "all")
        return MaskedInjection(base, mask), slice(0, mask.shape[0])
    if isinstance(intervention, ContextInjection) and intervention.positions == "all":
        return intervention, rows
    raise ValueError(f"steps='all' adds the vector at every token: it needs an additive Injection or I2CL context "
                     f"vectors with positions='all', got {type(intervention).__name__}; use steps='first'")


# ----------------------------------------------------------------------------------------------- NLL
def text_ids(lm: LanguageModel, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text scored (no special tokens); a text of zero tokens is a ValueError naming it."""
    ids = [list(x) for x in lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"text {i} ({texts[i]!r}) tokenizes to zero tokens")
    return ids


def text_nll(lm: LanguageModel, texts: Sequence[str], intervention: Intervention | None = None,
             steps: str = "first", prefix: str | None = None, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL in nats, number of scored tokens) per text, read after `prefix` (default :func:`prefix_text`)
    under `intervention` (rows = texts) in mode `steps` (see the module docstring). No autograd."""
    texts = check_texts(texts)
    check_choice(steps, "steps", STEPS)
    check_batch_size(batch_size)
    prefix = prefix_text(lm) if prefix is None else prefix
    ids = text_ids(lm, texts)
    if intervention is not None:
        intervention = as_intervention(intervention)
        intervention.check(lm, len(texts))
    nll, counts = [], []
    with torch.no_grad():
        for rows in batches(len(texts), batch_size):
            nll.append(_batch_nll(lm, [prefix] * (rows.stop - rows.start), ids[rows], intervention, rows, steps))
            counts += [len(x) for x in ids[rows]]
    return np.concatenate(nll), np.asarray(counts, dtype=float)


def _batch_nll(lm: LanguageModel, prefixes: list[str], ids: list[list[int]], intervention: Intervention | None,
               rows: slice, steps: str) -> np.ndarray:
    """Prefix pass (edited as in evaluation), then the text pass on its KV cache (edited at every token for "all")."""
    enc = encode(lm, prefixes, reserve=max(len(x) for x in ids))
    with lm.nn.trace(**enc, use_cache=True, logits_to_keep=1):
        if intervention is not None:
            intervention.apply(lm, rows, enc["attention_mask"])
        out = lm.nn.output.save()
    width = max(len(x) for x in ids)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    text = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=lm.device)
    text_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=lm.device)
    start = enc["attention_mask"].sum(1, keepdim=True)
    inputs = {"input_ids": text, "attention_mask": torch.cat([enc["attention_mask"], text_mask], dim=1),
              "position_ids": start + torch.arange(width, device=lm.device)[None]}
    with lm.nn.trace(**inputs, use_cache=True, **{cache_kwarg(lm.hf): output_cache(out)}):
        if intervention is not None and steps == "all":
            edit, edit_rows = every_token(intervention, rows, text_mask)
            edit.apply(lm, edit_rows, text_mask)
        logits = lm.nn.output.logits.save()
    predicting = torch.cat([out.logits[:, -1:], logits[:, :-1]], dim=1).float()  # position j predicts text token j
    logp = predicting.log_softmax(-1).gather(-1, text[..., None])[..., 0]
    return (-(logp * text_mask).sum(1)).double().cpu().numpy()


# ----------------------------------------------------------------------------------------------- perplexity
def perplexity(
    lm: LanguageModel, methods: Mapping[str, Method] | Sequence[Method], task: Task | str,
    texts: Sequence[str] | None = None, steps: str | Sequence[str] = STEPS, prefix: str | None = None,
    ci: float = 0.95, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0, batch_size: int = 8,
) -> pd.DataFrame:
    """Perplexity of held-out `texts` (default :func:`held_out_texts`) unsteered and under each method's steering
    for `task`, one row per method x steps: ``ppl_unsteered``, ``ppl``, ``difference`` (ppl − unsteered) with its
    paired bootstrap interval over texts (``ci_low``/``ci_high``), ``ratio`` (ppl / unsteered) and ``p_value``
    (sign-flip test on the per-text NLL differences). See the module docstring for what is measured."""
    methods = labelled(methods)
    texts = check_texts(held_out_texts() if texts is None else texts)
    modes = check_steps(steps)
    check_ci(ci)
    n_boot, n_perm = check_count(n_boot, "n_boot"), check_count(n_perm, "n_perm")
    target = resolve_tasks(task)[0]
    base_nll, counts = text_nll(lm, texts, None, "first", prefix, batch_size)
    weights = bootstrap_weights(len(texts), n_boot, rng_for(seed, "perplexity"))
    base_reps = np.exp(weights @ base_nll / (weights @ counts))
    rows = []
    for label, method in methods.items():
        method.check_fitted_for(lm)
        with method.active(lm):
            intervention = steering(lm, method, target, len(texts), seed=42)
            for mode in modes:
                nll, _ = text_nll(lm, texts, intervention, mode, prefix, batch_size)
                reps = np.exp(weights @ nll / (weights @ counts)) - base_reps
                low, high = interval(reps, ci)
                per_text = (nll - base_nll) / counts.sum()
                p = sign_flip_pvalues(per_text[:, None], n_perm, rng_for(seed, "ppl-sign-flip", label, mode))[0]
                ppl, ppl_base = math.exp(nll.sum() / counts.sum()), math.exp(base_nll.sum() / counts.sum())
                rows.append({"method": label, "task": target.name, "steps": mode, "ppl_unsteered": ppl_base,
                             "ppl": ppl, "difference": ppl - ppl_base, "ci_low": low, "ci_high": high,
                             "ratio": ppl / ppl_base, "p_value": float(p), "n_texts": len(texts),
                             "n_tokens": int(counts.sum()), "steered": intervention is not None or
                             not method.shares_model_weights})
    out = pd.DataFrame(rows)
    out.attrs.update({"ci": ci, "n_boot": n_boot, "prefix": prefix_text(lm) if prefix is None else prefix})
    return out


# ----------------------------------------------------------------------------------------------- off-target
OFF_TARGET_COLUMNS = ("method", "task", "score", "level", "acc_unsteered", "acc_steered", "difference", "ci_low",
                      "ci_high", "p_value", "p_holm", "significant", "harmful", "n_items")


def off_target(
    lm: LanguageModel, methods: Mapping[str, Method] | Sequence[Method], target_task: Task | str,
    other_tasks: TaskSpec, n_test: int | None = 60, templates: Any = "all", prefixes: Any = "all",
    seeds: int | Sequence[int] = (42,), score: str = "primary", ci: float = 0.95, n_boot: int = 2000,
    n_perm: int = 5000, seed: int = 0, batch_size: int = 8, progress: bool = False,
) -> pd.DataFrame:
    """Accuracy of each method (used as on `target_task`, :class:`OnTarget`) on `other_tasks` against the unsteered
    model on the same items: one row per method x score (`score` and ``label``, the label-restricted accuracy) x task
    (plus ``level="average"``, task ``all``): ``acc_unsteered``, ``acc_steered``, ``difference`` (steered −
    unsteered) with the item-clustered paired bootstrap interval and sign-flip p-value of
    :func:`workbench.eval.stats.paired` (units: %)."""
    methods = labelled(methods)
    if UNSTEERED in methods:
        raise ValueError(f"{UNSTEERED!r} labels the unsteered model; give the method another label")
    check_n_test(n_test)
    check_seeds(seeds)
    target = resolve_tasks(target_task)[0]
    others = resolve_tasks(other_tasks)
    if target.name in [t.name for t in others]:
        raise ValueError(f"other_tasks includes the target task {target.name!r}; off-target tasks are the others")
    line_up = {UNSTEERED: ZeroShot(), **{k: OnTarget(m, target) for k, m in methods.items()}}
    results = evaluate_many(lm, line_up, others, n_test, templates, prefixes, seeds, batch_size, progress=progress)
    rows = pd.concat([df.assign(method=label) for label, df in results.items()], ignore_index=True)
    tests = paired(rows, baseline=UNSTEERED, score=score, ci=ci, n_boot=n_boot, n_perm=n_perm, seed=seed)
    keep = (tests["level"] == "task") | (tests["name"] == "all")
    out = tests[keep].rename(columns={"name": "task", "accuracy": "acc_steered", "baseline_accuracy": "acc_unsteered"})
    out = out.assign(target_task=target.name)[[*OFF_TARGET_COLUMNS, "target_task"]].reset_index(drop=True)
    out.attrs.update(tests.attrs)
    return out


# ----------------------------------------------------------------------------------------------- both
@dataclass
class SideEffects:
    """Both side-effect tables of one target task (see :func:`side_effects`)."""

    perplexity: pd.DataFrame
    off_target: pd.DataFrame

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.perplexity, self.off_target))


def side_effects(
    lm: LanguageModel, methods: Mapping[str, Method] | Sequence[Method], target_task: Task | str,
    other_tasks: TaskSpec, texts: Sequence[str] | None = None, steps: str | Sequence[str] = STEPS,
    n_test: int | None = 60, seeds: int | Sequence[int] = (42,), ci: float = 0.95, n_boot: int = 2000,
    n_perm: int = 5000, seed: int = 0, batch_size: int = 8, **eval_kwargs: Any,
) -> SideEffects:
    """:func:`perplexity` and :func:`off_target` of `methods` fitted on `target_task`, in one call (inputs are
    checked before any model work). `eval_kwargs` go to :func:`off_target` (templates, prefixes, score, progress)."""
    methods = labelled(methods)
    check_texts(held_out_texts() if texts is None else texts)
    check_steps(steps)
    check_n_test(n_test)
    check_seeds(seeds)
    common = {"ci": ci, "n_boot": n_boot, "n_perm": n_perm, "seed": seed, "batch_size": batch_size}
    ppl = perplexity(lm, methods, target_task, texts, steps, **common)
    off = off_target(lm, methods, target_task, other_tasks, n_test, seeds=seeds, **common, **eval_kwargs)
    return SideEffects(ppl, off)
