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
(with a space) while instruct models emit "E". One row per item x variant x seed. Latency of a row = wall time of
its batch (``prepare`` + forward) / batch size.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.core.inference import batches, check_batch_size, next_token_logits
from workbench.core.tokens import count_tokens
from workbench.eval import runs
from workbench.eval.efficiency import PeakMemory, efficiency_summary
from workbench.eval.scoring import score_logits
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.answers import label_token_ids, target_first_token
from workbench.tasks.prompts import build_text, variants
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks


def check_n_test(n_test: int | None) -> int | None:
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"n_test must be a positive int or None (the whole test split), got {n_test!r}")
    return n_test


def check_seeds(seeds: int | Sequence[int]) -> list[int]:
    vals = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or len(vals) == 0:
        raise ValueError(f"seeds must be a non-empty list of ints (e.g. (42, 10, 100)), got {seeds!r}")
    bad = [s for s in vals if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise ValueError(f"seed {bad[0]!r} is not an int; seeds must be ints, got {seeds!r}")
    return list(dict.fromkeys(int(s) for s in vals))


def sample_items(task: Task, n_test: int | None, seed: int) -> list[int]:
    """Indices of the test items evaluated for `seed` (see the module docstring)."""
    n = len(task.test)
    if n_test is None or n_test >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, n_test, replace=False))


def _check_batch(batch: Any, n: int, method: Method) -> PreparedBatch:
    if not isinstance(batch, PreparedBatch):
        msg = f"{type(method).__name__}.prepare must return a PreparedBatch, got {type(batch).__name__}"
        raise ValueError(msg)  # noqa: TRY004
    if len(batch.prompts) != n:
        raise ValueError(f"{type(method).__name__}.prepare returned {len(batch.prompts)} prompts for {n} items")
    if batch.info and len(batch.info) != n:
        raise ValueError(f"{type(method).__name__}.prepare returned {len(batch.info)} info dicts for {n} items")
    return batch


# ----------------------------------------------------------------------------------------------- evaluate
def _decode(tokenizer: Any, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.decode([int(token_id)])


def evaluate_task(
    lm: Any, method: Method, task: Task, item_sets: dict[int, list[int]], variant_list: list[tuple[int, str]],
    batch_size: int = 8, progress: bool = True,
) -> pd.DataFrame:
    """Rows for one task (call inside ``method.active(lm)``); `item_sets` maps seed -> test indices."""
    tok = lm.tokenizer
    if task.labels:
        label_token_ids(tok, task.labels)  # clear error if two labels share their first token
    cache: dict[tuple[str, str], int] = {}

    def answer_token(output: str, prompt: str) -> int:
        # first token of " " + output after this prompt; it only depends on the prompt's end (cached on it)
        key = (prompt[-64:], output)
        if key not in cache:
            cache[key] = target_first_token(tok, output, prompt=prompt)
        return cache[key]

    n_batches = sum(math.ceil(len(ix) / batch_size) for ix in item_sets.values()) * len(variant_list)
    records: list[dict[str, Any]] = []
    with tqdm(total=n_batches, desc=task.name, leave=False, disable=not progress) as bar:
        for seed, indices in item_sets.items():
            items = [task.test[i] for i in indices]
            for t_idx, prefix in variant_list:
                texts = [build_text(task.templates[t_idx], it.input, prefix) for it in items]
                for rows in batches(len(items), batch_size):
                    n = rows.stop - rows.start
                    start = time.perf_counter()
                    batch = _check_batch(method.prepare(lm, task, items[rows], texts[rows], seed), n, method)
                    logits = next_token_logits(lm, batch.prompts, injection=batch.intervention, batch_size=n)
                    latency = (time.perf_counter() - start) / n
                    targets = [answer_token(it.output, p) for it, p in zip(items[rows], batch.prompts)]
                    per_row = [score_logits(logits[j: j + 1], targets[j: j + 1],
                                            [answer_token(lab, batch.prompts[j]) for lab in task.labels] or None)
                               for j in range(n)]
                    scores = {key: [r[key][0] for r in per_row] for key in per_row[0]}
                    n_tokens = count_tokens(tok, batch.prompts)
                    for j in range(n):
                        pred, target = _decode(tok, scores["prediction"][j]), _decode(tok, targets[j])
                        label_words = {_decode(tok, answer_token(lab, batch.prompts[j])).strip() for lab in task.labels}
                        rec = {
                            "method": method.name, "task": task.name, "category": task.category,
                            "in_domain": task.in_domain, "item": indices[rows.start + j], "template": t_idx,
                            "prefix": prefix, "seed": seed, "target": items[rows.start + j].output,
                            "target_token": target, "prediction": pred, "correct": bool(scores["correct"][j]),
                            "label_prediction": _decode(tok, scores["label_prediction"][j]),
                            "label_correct": scores["label_correct"][j], "in_labels": scores["in_labels"][j],
                            "correct_loose": bool(pred.strip()) and pred.strip() == target.strip(),
                            "in_labels_loose": pred.strip() in label_words if task.labels else None,
                            "n_prompt_tokens": n_tokens[j], "latency": latency,
                        }
                        for key, value in (batch.info[j] if batch.info else {}).items():
                            rec[f"info_{key}" if key in rec else key] = value
                        records.append(rec)
                    bar.update(1)
    return pd.DataFrame.from_records(records)


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
) -> pd.DataFrame:
    """Evaluate `method` on `tasks`; one row per item x variant x seed (see the module docstring).

    ``templates``: "all" or template indices (0-2); ``prefixes``: "all" or answer prefixes of
    :data:`workbench.tasks.prompts.PREFIXES`. With ``run_dir`` the config, each finished task's rows and efficiency.json
    are written atomically, and a rerun skips finished tasks (:mod:`workbench.eval.runs`). The result carries
    ``attrs["efficiency"]`` (mean latency per item, peak memory; :mod:`workbench.eval.efficiency`) and ``attrs["config"]``.
    """
    if not isinstance(method, Method):
        msg = f"method must be a workbench Method (e.g. wb.ZeroShot()), got {type(method).__name__}"
        raise ValueError(msg)  # noqa: TRY004
    check_batch_size(batch_size)
    n_test = check_n_test(n_test)
    seed_list = check_seeds(seeds)
    variant_list = variants(templates, prefixes, n_templates=3)
    task_list = resolve_tasks(tasks, data_dir)
    for task in task_list:
        if len(task.templates) != 3:
            raise ValueError(f"task {task.name!r} has {len(task.templates)} templates; the protocol needs 3")
    data_path = next((str(t.path.parent) for t in task_list if t.path is not None), None)
    config = runs.run_config(lm, method, [t.name for t in task_list], n_test, templates, prefixes, seed_list,
                             batch_size, data_path)
    root = runs.open_run(run_dir, config) if run_dir is not None else None
    eff = runs.read_efficiency(root) if root is not None else {}
    task_records: dict[str, dict] = dict(eff.get("tasks", {}))
    parts = []
    with method.active(lm):
        for task in tqdm(task_list, desc=method.name, disable=not progress):
            done = runs.load_task_results(root, task.name) if root is not None else None
            if done is not None:
                parts.append(done)
                continue
            item_sets = {s: sample_items(task, n_test, s) for s in seed_list}
            with PeakMemory(lm.device) as mem:
                part = evaluate_task(lm, method, task, item_sets, variant_list, batch_size, progress)
            parts.append(part)
            task_records[task.name] = {**mem.result, **efficiency_summary(part)}
            if root is not None:
                runs.save_task_results(root, task.name, part)
                runs.write_efficiency(root, {"tasks": task_records, "summary": _summary(parts, task_records)})
    df = pd.concat(parts, ignore_index=True)
    df.attrs["efficiency"] = _summary(parts, task_records, [t.name for t in task_list])
    df.attrs["config"] = config
    return df


def _summary(parts: list[pd.DataFrame], records: dict[str, dict], names: Sequence[str] | None = None) -> dict:
    names = list(records) if names is None else names
    out = efficiency_summary(pd.concat(parts, ignore_index=True), [records[n] for n in names if n in records])
    out["tasks_measured"] = [n for n in names if n in records]
    return out

