"""Ceilings next to an ATV result (issue 23 §2): is the small model or the injection the limit?

For each task, on the same test items x variants, the label-restricted accuracy (argmax over the task's label
tokens, :mod:`workbench.eval.scoring`'s ``label_correct``) of

* ``zero_shot`` and ``atv``: :func:`workbench.eval.evaluate.evaluate_many` (one body cache for all three);
* ``probe``: how much of the answer the small model sees -- a logistic-regression probe (sklearn, standardised
  features, inverse regularisation `C`; :func:`workbench.atv.diagnostics.probe_predictions`) on the generator's own
  encoder states of what it reads, fit on train-split items (under the task's 3 templates with the training prefix,
  as the generator is trained) and asked for every evaluated row (the text the generator reads in that variant);
* ``oracle``: what last-token injection can do at best for that query -- per query, the ATV vector optimized on the
  gold answer at the same λ, layers and positions (:class:`workbench.analysis.oracle.Oracle`), scored by evaluate;
* ``majority``: the train split's most frequent label, for reference;

and the gaps ``probe_minus_atv`` (large: the generator's input holds more than ATV passes on) and
``oracle_minus_atv`` (small: the injection itself is the limit). Intervals (``*_low`` / ``*_high``) are item-level
percentile bootstraps, all variants and seeds of an item resampled together (:mod:`workbench.eval.stats`); for the
gaps, paired on the same rows (``*_p``: sign-flip permutation p-value).

Module contents: :func:`ceilings` (one call: evaluate, probe, table), :func:`ceiling_rows` (the per-row results),
:func:`probe_rows`, :func:`ceiling_table` (rows -> the table), :data:`METHODS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench.analysis.oracle import LR, STEPS, Oracle, as_atv
from workbench.atv.diagnostics import probe_predictions
from workbench.atv.examples import generator_text, training_examples
from workbench.core.checks import check_number, check_optional_int
from workbench.eval.evaluate import check_n_test, evaluate_many
from workbench.eval.stats import check_ci, check_count, paired
from workbench.eval.tables import summarize
from workbench.methods.prompting import ZeroShot
from workbench.tasks.prompts import build_text
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.atv.generator import ATVGenerator
    from workbench.core.models import LanguageModel
    from workbench.methods.atv import ATV

#: ``method`` labels of the rows -> the table's column names, in the table's order.
METHODS = {"majority": "majority", "zero-shot": "zero_shot", "atv": "atv", "probe": "probe", "oracle": "oracle"}
#: The gaps: (column, method) -- method minus ATV.
GAPS = (("probe_minus_atv", "probe"), ("oracle_minus_atv", "oracle"))
#: The columns of evaluate's rows the probe's rows copy.
ROW_COLUMNS = ("task", "category", "in_domain", "item", "template", "prefix", "seed", "target", "chat")
#: Train items per task of the probe when the generator records none (the paper's 90).
PROBE_ITEMS = 90


def labelled_tasks(tasks: TaskSpec, data_dir: str | os.PathLike | None = None) -> list[Task]:
    """The tasks, each with label words (a label-restricted score needs them), else a ValueError naming it."""
    task_list = resolve_tasks(tasks, data_dir)
    for task in task_list:
        if not task.labels:
            raise ValueError(f"task {task.name!r} has no label words: the ceilings are label-restricted "
                             "accuracies; use tasks with labels (e.g. glue_sst2, boolq, crows_pairs)")
    return task_list


def probe_item_count(generator: ATVGenerator, n_train: int | None) -> int:
    """Train items per task of the probe: `n_train`, else as many as the generator was trained on, else 90."""
    n = check_optional_int(n_train, "probe_items (train items per task of the probe)")
    recorded = (generator.meta.get("train_config") or {}).get("n_train")
    return n or (int(recorded) if isinstance(recorded, int) else PROBE_ITEMS)


def encode(generator: ATVGenerator, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """The generator's encoder states ``[N, d_s]`` of `texts` (eval mode, no grad; each distinct text once)."""
    unique = list(dict.fromkeys(texts))
    encoder, was = generator.encoder, generator.encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            states = torch.cat([encoder.encode(unique[i: i + batch_size]).float()
                                for i in range(0, len(unique), batch_size)])
    finally:
        encoder.train(was)
    where = {t: i for i, t in enumerate(unique)}
    return states[[where[t] for t in texts]]


def probe_rows(generator: ATVGenerator, tasks: Sequence[Task], atv_rows: pd.DataFrame, C: float = 0.1,
               n_train: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """Result rows of the probe (``method="probe"``) and of the train-majority label (``method="majority"``) on the
    rows ATV was evaluated on (task, test item, seed, template, prefix), with evaluate's key and score columns.

    The probe's train items: `n_train` per task (:func:`probe_item_count`) drawn with `seed` as training draws them
    (:func:`~workbench.atv.examples.training_examples`; default: the generator's recorded training seed, else 42),
    each under the task's 3 templates, read as the generator reads them (its recorded ``generator_input``)."""
    C = check_number(C, "C (the probe's inverse regularisation strength)")
    n = probe_item_count(generator, n_train)
    recorded = (generator.meta.get("train_config") or {}).get("seed")
    seed = seed if seed is not None else (int(recorded) if isinstance(recorded, int) else 42)
    reads = generator.meta.get("generator_input", "prompt")
    out = []
    for task in tasks:
        part = atv_rows[atv_rows["task"] == task.name].reset_index(drop=True)
        if part.empty:
            continue
        train = training_examples([task], n, seed=seed, generator_input=reads)
        labels = [task.train[e.item].output for e in train]
        texts = []
        for it, t, prefix in zip(part["item"], part["template"], part["prefix"]):
            item = task.test[int(it)]
            texts.append(generator_text(item.input, build_text(task.templates[int(t)], item.input, prefix), reads))
        predicted = probe_predictions(encode(generator, [e.generator_text for e in train]), labels,
                                      encode(generator, texts), C=C, seed=seed)
        majority = max(sorted(set(labels)), key=labels.count)
        for method, guess in (("probe", list(predicted)), ("majority", [majority] * len(part))):
            rows = part[list(ROW_COLUMNS)].copy()
            right = [str(g) == str(y) for g, y in zip(guess, rows["target"])]
            rows.insert(0, "method", method)
            rows["prediction"] = rows["label_prediction"] = [str(g) for g in guess]
            for col in ("correct", "correct_loose", "label_correct", "primary_correct"):
                rows[col] = right
            rows["in_labels"] = rows["in_labels_loose"] = True
            rows["bad_logits"], rows["probe_train_items"] = False, len(set(e.item for e in train))
            out.append(rows)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def ceiling_rows(
    lm: LanguageModel, atv: ATV | ATVGenerator, tasks: TaskSpec, n_test: int | None = 100, templates: Any = "all",
    prefixes: Any = "all", seeds: int | Sequence[int] = (42,), C: float = 0.1, probe_items: int | None = None,
    oracle_steps: int = STEPS, oracle_lr: float = LR, answer_tokens: int | None = 1, batch_size: int = 8,
    data_dir: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None, progress: bool = True,
) -> pd.DataFrame:
    """The per-row results of zero-shot, ATV, oracle (evaluate's rows), probe and majority (:func:`probe_rows`) on
    the same items x variants x seeds; column ``method`` is one of :data:`METHODS`. `run_dir`: evaluate's run folders
    (``run_dir/zero-shot``, ``atv``, ``oracle``; resumable)."""
    atv = as_atv(atv)
    oracle = Oracle(atv, oracle_steps, oracle_lr, answer_tokens)  # checks its settings before any work
    check_number(C, "C (the probe's inverse regularisation strength)")
    probe_n = check_optional_int(probe_items, "probe_items (train items per task of the probe)")
    check_n_test(n_test)
    task_list = labelled_tasks(tasks, data_dir)
    results = evaluate_many(lm, {"zero-shot": ZeroShot(), "atv": atv, "oracle": oracle}, task_list, n_test,
                            templates, prefixes, seeds, batch_size, run_dir, data_dir, progress)
    probe = probe_rows(atv.generator, task_list, results["atv"], C=C, n_train=probe_n)
    parts = [df.assign(method=label) for label, df in results.items()]
    return pd.concat([*parts, probe], ignore_index=True)


def ceiling_table(rows: pd.DataFrame, ci: float | None = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per task plus a ``mean`` row (macro average over the tasks): the label-restricted accuracy (%) of
    every method of :data:`METHODS`, with intervals, and the gaps of :data:`GAPS` (see the module docstring)."""
    missing = [m for m in METHODS if m not in set(rows.get("method", ()))]
    if missing:
        raise ValueError(f"the rows lack the methods {missing}; make them with ceiling_rows")
    if ci is not None:
        ci, n_boot = check_ci(ci), check_count(n_boot, "n_boot")
    summary = summarize(rows, ci=ci, n_boot=n_boot, seed=seed)
    summary = summary[(summary["level"] == "task") | ((summary["level"] == "average") & (summary["name"] == "all"))]
    summary = summary.assign(name=np.where(summary["level"] == "task", summary["name"], "mean"))
    names = list(dict.fromkeys(summary["name"]))
    table = pd.DataFrame({"task": names})
    by = summary.set_index(["method", "name"])
    table["n_items"] = by.loc["atv"].reindex(names)["n_items"].to_numpy()
    for method, col in METHODS.items():
        part = by.loc[method].reindex(names)
        table[col] = part["label_accuracy"].to_numpy()
        table[f"{col}_low"], table[f"{col}_high"] = part["label_ci_low"].to_numpy(), part["label_ci_high"].to_numpy()
    tests = (paired(rows[rows["method"].isin(["atv", "probe", "oracle"])], baseline="atv",
                    methods=["probe", "oracle"], ci=ci, n_boot=n_boot, seed=seed) if ci is not None else None)
    for col, method in GAPS:
        table[col] = table[METHODS[method]] - table["atv"]
        if tests is None:
            table[f"{col}_low"] = table[f"{col}_high"] = table[f"{col}_p"] = np.nan
            continue
        mine = tests[(tests["method"] == method) & (tests["score"] == "label")
                     & ((tests["level"] == "task") | ((tests["level"] == "average") & (tests["name"] == "all")))]
        mine = mine.assign(name=np.where(mine["level"] == "task", mine["name"], "mean")).set_index("name")
        mine = mine.reindex(names)
        table[f"{col}_low"], table[f"{col}_high"] = mine["ci_low"].to_numpy(), mine["ci_high"].to_numpy()
        table[f"{col}_p"] = mine["p_value"].to_numpy()
    table.attrs.update({"score": "label", "ci": ci, "n_boot": n_boot, "seed": seed})
    return table


def ceilings(
    lm: LanguageModel, atv: ATV | ATVGenerator, tasks: TaskSpec, n_test: int | None = 100, templates: Any = "all",
    prefixes: Any = "all", seeds: int | Sequence[int] = (42,), C: float = 0.1, probe_items: int | None = None,
    oracle_steps: int = STEPS, oracle_lr: float = LR, answer_tokens: int | None = 1, batch_size: int = 8,
    ci: float | None = 0.95, n_boot: int = 2000, data_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None, progress: bool = True,
) -> pd.DataFrame:
    """The ceilings table of `atv` on `tasks` in one call (:func:`ceiling_rows` then :func:`ceiling_table`);
    ``attrs["config"]`` records every setting. The per-row results are not kept (a frame in ``attrs`` would be
    copied by every operation on the table): call the two steps to keep them."""
    if ci is not None:
        check_ci(ci)
    rows = ceiling_rows(lm, atv, tasks, n_test, templates, prefixes, seeds, C, probe_items, oracle_steps, oracle_lr,
                        answer_tokens, batch_size, data_dir, run_dir, progress)
    table = ceiling_table(rows, ci, n_boot)
    probe_n = rows.loc[rows["method"] == "probe", "probe_train_items"]
    table.attrs["config"] = {
        "n_test": n_test, "templates": templates, "prefixes": prefixes, "seeds": seeds, "C": C,
        "probe_train_items": sorted(set(int(x) for x in probe_n)), "oracle_steps": oracle_steps,
        "oracle_lr": oracle_lr, "answer_tokens": answer_tokens, "atv": as_atv(atv).config()}
    return table
