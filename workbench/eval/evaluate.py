"""`evaluate` a method on tasks (the ELICIT / ATV protocol) and `summarize` the rows like the paper's tables.

Protocol (paper Appendix B, official code): for each task and seed, ``n_test`` items are drawn from the test split
with ``numpy.random.default_rng(seed).choice(len(test), n_test, replace=False)`` (sorted; ``n_test=None`` or
``n_test >= len(test)`` takes the whole split in order). Each item is asked in every variant (3 question templates
x 3 answer prefixes, :func:`workbench.tasks.prompts.variants`), as ``prompts.build_text(template, input, prefix)``; the
method's ``prepare`` turns those texts into what the model reads (zero-shot: ``lm.render``). The score is the
official first-token accuracy (:mod:`workbench.eval.scoring`), with the target token taken in the context of the
final prompt (``get_answer_id``); so are the label tokens (a chat prompt ends with a newline, after which " A"
is tokenized differently than on its own). Everything runs inside ``with method.active(lm):``; :func:`evaluate`
does not call ``method.fit`` (fit first).

Loose scores (``correct_loose``, ``in_labels_loose``): the decoded prediction equals the decoded target / a label
token up to surrounding whitespace. They matter for chat models: after "assistant\n" the official target is " E"
(with a space) while instruct models emit "E". Per row, ``chat`` records whether the prompt was chat-templated
(``lm.chat``: every method renders through ``lm.render``) and ``primary_correct`` is the score to report:
``correct_loose`` for chat rows, the strict official ``correct`` for raw rows.

Garbage logits (NaN/inf, or all equal, e.g. from a far too strong intervention) are flagged per row
(``bad_logits``), scored as wrong with no prediction (:mod:`workbench.eval.scoring`), and reported in one
RuntimeWarning per :func:`evaluate` call naming the number of rows and the tasks.

One row per item x variant x seed. Latency of a row = wall time of its batch (``prepare`` + forward) / batch size.
Steps of one task (:func:`evaluate_task`): :func:`sample_items` per seed, :func:`variant_texts` per variant,
:func:`run_batch` (prepare + forward), :func:`~workbench.eval.scoring.score_row`, :func:`batch_rows` (assemble the
rows).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.core.inference import (
    batches,
    check_batch_size,
    PromptTooLong,
    next_token_logits,
)
from workbench.core.kv_cache import BodyCache
from workbench.core.world import current_world
from workbench.core.tokens import count_tokens
from workbench.eval.cached_variants import check_batch, run_variants_cached
from workbench.eval.efficiency import PeakMemory
from workbench.eval.item_notes import too_long_item, warn_short_splits
from workbench.eval.method_run import MethodRun, warn_bad_logits
from workbench.eval.parallel import Job, evaluate_sharded, is_sharded
from workbench.eval.units import method_batches
from workbench.eval.labels import label_folders
from workbench.eval.run_safety import run_locks
from workbench.eval.scoring import AnswerTokens, score_row
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.answers import label_token_ids
from workbench.tasks.prompts import build_text, variants
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks


def check_n_test(n_test: int | None, name: str = "n_test") -> int | None:
    """`n_test` if it is a positive int or None (the whole test split), else a ValueError naming `name`."""
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"{name} must be a positive int or None (the whole test split), got {n_test!r}")
    return n_test


def check_seeds(seeds: int | Sequence[int]) -> list[int]:
    """`seeds` (one int or a non-empty list) as a de-duplicated list of non-negative ints, else ValueError."""
    vals = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) == 0:
        raise ValueError(f"seeds must be a non-empty list of ints (e.g. (42, 10, 100)), got {seeds!r}")
    bad = [s for s in vals if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise ValueError(f"seed {bad[0]!r} is not an int; seeds must be ints, got {seeds!r}")
    negative = [s for s in vals if s < 0]
    if negative:
        raise ValueError(f"seed {int(negative[0])} is negative; seeds must be non-negative ints (e.g. 42 10 100), "
                         f"got {seeds!r}")
    return list(dict.fromkeys(int(s) for s in vals))


SPLITS = ("test", "valid")
#: Memory for the prompt bodies of one task (``cache=True``; cleared after each task). 30 items x 3 templates of a
#: 250-token task are ~1 GB of SmolLM2 keys/values, and LoRA keeps its own: a smaller budget silently loses the
#: sharing across answer prefixes for the bodies that do not fit. Pass a BodyCache to choose another budget.
TASK_CACHE_MB = 4096.0


def sample_items(task: Task, n_test: int | None, seed: int, split: str = "test") -> list[int]:
    """Indices of the items of `split` evaluated for `seed` (see the module docstring)."""
    n = len(getattr(task, split))
    if n_test is None or n_test >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, n_test, replace=False))


def subsample_items(indices: list[int], max_items: int | None, seed: int) -> list[int]:
    """A seeded subset of `max_items` of `indices` (sorted; all of them when None or not fewer): the items a costly
    method (k-shot, BM25) is evaluated on, a subset of what the other methods see, so paired tests still match."""
    if max_items is None or max_items >= len(indices):
        return list(indices)
    rng = np.random.default_rng([seed, len(indices)])
    return sorted(indices[int(i)] for i in rng.choice(len(indices), max_items, replace=False))


# ----------------------------------------------------------------------------------------------- one task
@dataclass
class BatchResult:
    """One batch of test items in one variant: what the method prepared and the model's next-token logits."""

    seed: int
    template: int
    prefix: str
    indices: list[int]  # test-split indices of the items
    items: list[Any]
    prepared: PreparedBatch
    logits: torch.Tensor  # [n, V]
    latency: float  # seconds per item (prepare + forward)


def variant_texts(task: Task, items: Sequence[Any], template: int, prefix: str) -> list[str]:
    """The texts the method receives for `items` in one variant (template index, answer prefix)."""
    return [build_text(task.templates[template], it.input, prefix) for it in items]


def run_batch(lm: Any, method: Method, task: Task, items: list[Any], texts: list[str], seed: int) -> tuple[
        PreparedBatch, torch.Tensor, float]:
    """``method.prepare`` then the forward pass; returns (prepared batch, logits ``[n, V]``, latency per item)."""
    n = len(items)
    start = time.perf_counter()
    prepared = check_batch(method.prepare(lm, task, items, texts, seed), n, method)
    logits = next_token_logits(lm, prepared.prompts, injection=prepared.intervention, batch_size=n, warn=False)
    return prepared, logits, (time.perf_counter() - start) / n


def batch_rows(lm: Any, method: Method, task: Task, batch: BatchResult, answers: AnswerTokens) -> list[dict[str, Any]]:
    """The result rows of one batch (see the module docstring for the columns)."""
    prompts = batch.prepared.prompts
    n_tokens = count_tokens(lm.tokenizer, prompts)
    chat = bool(getattr(lm, "chat", False))
    rows = []
    for j, (index, item) in enumerate(zip(batch.indices, batch.items)):
        scores = score_row(answers, task, item, prompts[j], batch.logits[j])
        row = {
            "method": method.name, "task": task.name, "category": task.category, "in_domain": task.in_domain,
            "item": index, "template": batch.template, "prefix": batch.prefix, "seed": batch.seed,
            "target": item.output, **scores, "chat": chat,
            "primary_correct": scores["correct_loose"] if chat else scores["correct"],
            "n_prompt_tokens": n_tokens[j], "latency": batch.latency,
        }
        for key, value in (batch.prepared.info[j] if batch.prepared.info else {}).items():
            row[f"info_{key}" if key in row else key] = value
        rows.append(row)
    return rows


def evaluate_task(
    lm: Any, method: Method, task: Task, item_sets: dict[int, list[int]], variant_list: list[tuple[int, str]],
    batch_size: int = 8, progress: bool = True, cache: BodyCache | None = None, split: str = "test",
    share_tails: bool = False, only: Collection[tuple[int, int]] | None = None,
    units: Mapping[tuple[int, int], Hashable] | None = None,
) -> pd.DataFrame:
    """Rows for one task (call inside ``method.active(lm)``); `item_sets` maps seed -> indices into `split`.

    With a `cache`, the variants of each batch of items are prepared together and every shared prompt body runs
    once (:mod:`workbench.core.kv_cache`); the rows are the same as without it, in the same order. `share_tails`:
    also keep each prompt but its last token for other methods that read the same prompts (see
    :func:`~workbench.core.inference.cached_next_token_logits`). `only`: the batches to run, as (seed, position of
    the batch's first item); None: all (:mod:`workbench.eval.parallel` gives each process its own). `units`: per
    batch, the unit of work it belongs to (:mod:`workbench.eval.units`); bodies are shared within a unit only, so a
    unit's numbers do not depend on which other units the process ran.
    """
    if task.labels:
        label_token_ids(lm.tokenizer, task.labels)  # clear error if two labels share their first token
    answers = AnswerTokens(lm.tokenizer)
    split_items = getattr(task, split)
    groups = [(seed, rows) for seed, indices in item_sets.items() for rows in batches(len(indices), batch_size)
              if only is None or (seed, rows.start) in only]
    keyed: list[tuple[tuple[int, int, int], list[dict[str, Any]]]] = []
    seed_order = {seed: i for i, seed in enumerate(item_sets)}
    with tqdm(total=len(groups) * len(variant_list), desc=task.name, leave=False, disable=not progress) as bar:
        for seed, rows in groups:
            indices = item_sets[seed][rows]
            items = [split_items[i] for i in indices]
            texts = [variant_texts(task, items, t_idx, prefix) for t_idx, prefix in variant_list]
            try:
                runs_ = (run_variants_cached(lm, method, task, items, texts, seed, cache, share_tails,
                                             (units or {}).get((seed, rows.start)))
                         if cache is not None else [run_batch(lm, method, task, items, t, seed) for t in texts])
            except PromptTooLong as err:  # named by task, item and variant rather than "prompt 0"
                raise too_long_item(err, lm, method, task, items, indices, texts, variant_list, seed, split) from None
            for v, (prepared, logits, latency) in enumerate(runs_):
                t_idx, prefix = variant_list[v]
                batch = BatchResult(seed, t_idx, prefix, indices, items, prepared, logits, latency)
                keyed.append(((seed_order[seed], v, rows.start), batch_rows(lm, method, task, batch, answers)))
                bar.update(1)
    keyed.sort(key=lambda kv: kv[0])  # seed, then variant, then items: the order of the uncached protocol
    return pd.DataFrame.from_records([row for _, rows_ in keyed for row in rows_])


def _tail_sharing(methods: Mapping[str, Method]) -> dict[str, bool]:
    """Per label, whether another method reads the same prompts under the same weights (frozen model, plain
    queries): then each prompt but its last token is kept for all of them."""
    plain = [k for k, m in methods.items() if m.shares_model_weights and m.reads_plain_queries]
    return {k: len(plain) > 1 and k in plain for k in methods}


def evaluate(
    lm: Any,
    method: Method,
    tasks: TaskSpec,
    n_test: int | None = 100,
    templates: Any = "all",
    prefixes: Any = "all",
    seeds: int | Sequence[int] = (42,),
    batch_size: int = 8,
    run_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    cache: bool | BodyCache = True,
    split: str = "test",
) -> pd.DataFrame:
    """Evaluate `method` on `tasks`; one row per item x variant x seed (see the module docstring).

    ``templates``: "all" or template indices (0-2); ``prefixes``: "all" or answer prefixes of
    :data:`workbench.tasks.prompts.PREFIXES`. With ``run_dir`` the config, each finished task's rows and efficiency.json
    are written atomically, and a rerun skips finished tasks (:mod:`workbench.eval.runs`: a folder holding files an
    evaluation did not write is refused before any work, naming them; a second evaluation into a folder in use fails
    at once, naming the holder). The result carries
    ``attrs["efficiency"]`` (mean latency per item, peak memory; :mod:`workbench.eval.efficiency`) and
    ``attrs["config"]``.
    ``cache=True`` (default) computes every prompt body the variants of an item share once
    (:mod:`workbench.core.kv_cache`; the same rows as ``cache=False``, logits equal up to float32 noise); pass a
    :class:`~workbench.core.kv_cache.BodyCache` to choose its memory budget or to share it across calls.
    ``split="valid"`` evaluates on the validation split instead (for choosing settings:
    :mod:`workbench.analysis.selection`).
    """
    if not isinstance(method, Method):
        msg = f"method must be a workbench Method (e.g. wb.ZeroShot()), got {type(method).__name__}"
        raise ValueError(msg)
    return evaluate_many(lm, {method.name: method}, tasks, n_test, templates, prefixes, seeds, batch_size,
                         run_dir, data_dir, progress, cache, split, _own_folder=True)[method.name]


def evaluate_many(
    lm: Any,
    methods: Mapping[str, Method],
    tasks: TaskSpec,
    n_test: int | None = 100,
    templates: Any = "all",
    prefixes: Any = "all",
    seeds: int | Sequence[int] = (42,),
    batch_size: int = 8,
    run_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    cache: bool | BodyCache = True,
    split: str = "test",
    max_items: Mapping[str, int] | None = None,
    _own_folder: bool = False,
) -> dict[str, pd.DataFrame]:
    """Evaluate several fitted methods on the same items, task by task: ``{label: rows}`` as :func:`evaluate` gives.

    The methods of one task share one body cache, so a prompt body zero-shot, ATV, static TV and ELICIT all read is
    computed once for all of them (a method that changes the model's weights, LoRA, keeps its own bodies). With
    `run_dir`, each method's results go to ``run_dir/<label>/`` (resumable; a label must be a plain folder name,
    :mod:`workbench.eval.labels`; each folder is locked for the call). A method's latency rows count the bodies
    it read even when an earlier method computed them (their measured time), so latencies compare as if each
    method had run alone with the cache. ``max_items`` (``{label: m}``) evaluates those methods on a seeded subset of
    m of each task's sampled items (:func:`subsample_items`; recorded in their config), e.g. k-shot prompts, which
    share no bodies and cost most. Under a launch of several processes (``accelerate launch``, ``torchrun``) the
    tasks' batches are shared out and merged into the same run folders (:mod:`workbench.eval.parallel`).
    """
    methods = dict(methods)
    bad = [k for k, m in methods.items() if not isinstance(m, Method)]
    if not methods or bad:
        raise ValueError(f"methods must be a non-empty {{label: Method}} mapping, got {bad or 'nothing'}")
    check_batch_size(batch_size)
    n_test = check_n_test(n_test)
    seed_list = check_seeds(seeds)
    variant_list = variants(templates, prefixes, n_templates=3)
    task_list = resolve_tasks(tasks, data_dir)
    for task in task_list:
        if len(task.templates) != 3:
            raise ValueError(f"task {task.name!r} has {len(task.templates)} templates; the protocol needs 3")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    warn_short_splits(task_list, n_test, split)  # how many items a split smaller than n_test gives
    limits = dict(max_items or {})
    for label, m in limits.items():
        if label not in methods:
            raise ValueError(f"max_items names {label!r}, which is not one of the methods {list(methods)}")
        check_n_test(m, f"max_items[{label!r}]")
    if not (cache is True or cache is False or isinstance(cache, BodyCache)):
        raise ValueError(f"cache must be True, False or a BodyCache, got {cache!r}")
    body_cache = BodyCache(TASK_CACHE_MB) if cache is True else (cache or None)
    data_path = next((str(t.path.parent) for t in task_list if t.path is not None), None)
    root = Path(run_dir).expanduser() if run_dir is not None else None
    folders = ({k: root for k in methods} if _own_folder else label_folders(root, methods)) \
        if root is not None else dict.fromkeys(methods)
    state = {k: MethodRun(lm, m, task_list,
                          (n_test, templates, prefixes, seed_list, batch_size, split, limits.get(k)), data_path,
                          folders[k])
             for k, m in methods.items()}  # each checks its run folder, reading only: refusals before any work
    share_tails = _tail_sharing(methods)

    def items_of(task: Task, label: str | None) -> dict[int, list[int]]:
        """The sampled items per seed (label None), or those `label` is evaluated on."""
        base = {s: sample_items(task, n_test, s, split) for s in seed_list}
        return base if label is None else {s: subsample_items(ix, limits.get(label), s) for s, ix in base.items()}

    def compute(task: Task, label: str, items: dict[int, list[int]], only: Any = None) -> tuple[pd.DataFrame, dict]:
        units = {b[:2]: u for b, u in method_batches(task.name, items_of(task, None), items, batch_size).items()}
        with methods[label].active(lm), PeakMemory(lm.device) as mem:
            part = evaluate_task(lm, methods[label], task, items, variant_list, batch_size, progress, body_cache,
                                 split, share_tails[label], only, units)
        return part, mem.result

    def end_task() -> None:
        if cache is True:
            body_cache.clear()  # a task's bodies are not reused by the next task

    world = current_world()
    if is_sharded(state, world):  # several processes, or units an earlier launch left (workbench.eval.parallel)
        return evaluate_sharded(Job(lm, task_list, state, items_of, compute, end_task, batch_size, variant_list),
                                world)
    with run_locks(f for f in folders.values() if f is not None), \
            tqdm(total=len(task_list) * len(methods), desc=" + ".join(m.name for m in methods.values()),
                 disable=not progress) as bar:
        for run in state.values():
            run.open()
        for task in task_list:
            for label in methods:
                run = state[label]
                if not run.resume(task, lm):
                    run.add(task, *compute(task, label, items_of(task, label)))
                bar.update(1)
            end_task()
    out = {}
    for label, method in methods.items():
        warn_bad_logits(state[label].parts, method)
        out[label] = state[label].frame([t.name for t in task_list])
    return out
