"""One method's evaluation across tasks (:func:`workbench.eval.evaluate.evaluate_many` keeps one per method): its run
folder (checked when made, opened under the folder's lock, finished tasks reloaded), its rows and its efficiency
records (each written after the task's result file and naming it: :mod:`workbench.eval.runs`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.eval import runs
from workbench.eval.efficiency import efficiency_summary
from workbench.methods.base import Method
from workbench.tasks.registry import Task


class MethodRun:
    """One method's evaluation across tasks: its run folder (checked, reading only, when made: a refused folder
    stops the evaluation before any work; :meth:`open` creates or resumes it), its rows and its efficiency records."""

    def __init__(self, lm: Any, method: Method, task_names: Sequence[str | Task], protocol: tuple,
                 data_path: str | None, run_dir: str | os.PathLike | None) -> None:
        n_test, templates, prefixes, seed_list, batch_size, split, max_items = protocol
        method.check_fitted_for(lm)  # a fit learned on another model is refused before any work
        self.config = runs.run_config(lm, method, task_names, n_test, templates, prefixes, seed_list, batch_size,
                                      data_path)
        if split != "test":  # recorded (and compared on resume) only when it is not the default
            self.config["split"] = split
        if max_items is not None:
            self.config["max_items"] = max_items
        self.method, self.run_dir = method, run_dir
        if run_dir is not None:
            runs.check_run(run_dir, self.config)
        self.root: Path | None = None
        self.records: dict[str, dict] = {}
        self.parts: list[pd.DataFrame] = []

    def open(self) -> None:
        """Create or resume the run folder (call holding its :func:`~workbench.eval.run_safety.run_lock`)."""
        if self.run_dir is not None:
            self.root = runs.open_run(self.run_dir, self.config)
            self.records = dict(runs.read_efficiency(self.root).get("tasks", {}))

    def attach(self) -> None:
        """Read the run folder another process opened (a launch's other processes: :mod:`workbench.eval.parallel`)."""
        if self.run_dir is not None:
            self.root = Path(self.run_dir).expanduser()
            self.records = dict(runs.read_efficiency(self.root).get("tasks", {}))

    def resume(self, task: Task, lm: Any) -> bool:
        """Whether `task` was finished in the run folder (its rows are then taken from there)."""
        done = runs.load_task_results(self.root, task.name, self.records) if self.root is not None else None
        if done is not None:
            self.parts.append(_with_chat_columns(done, lm))
        return done is not None

    def add(self, task: Task, part: pd.DataFrame, memory: dict) -> None:
        """Keep one task's rows; with a run folder write them, then the task's efficiency record naming them (a kill
        in between leaves a result without its record, which the next run recomputes)."""
        self.parts.append(part)
        record = {**memory, **efficiency_summary(part)}
        if self.root is not None:
            record.update(runs.save_task_results(self.root, task.name, part))
        self.records[task.name] = record
        if self.root is not None:
            runs.write_efficiency(self.root, {"tasks": self.records, "summary": _summary(self.parts, self.records)})

    def frame(self, task_names: list[str]) -> pd.DataFrame:
        df = pd.concat(self.parts, ignore_index=True)
        df.attrs["efficiency"] = _summary(self.parts, self.records, task_names)
        df.attrs["config"] = self.config
        return df


def _with_chat_columns(df: pd.DataFrame, lm: Any) -> pd.DataFrame:
    """Rows saved before the per-row ``chat`` / ``primary_correct`` columns existed get them (from ``lm.chat``)."""
    if "chat" not in df:
        df = df.assign(chat=bool(getattr(lm, "chat", False)))
    if "primary_correct" not in df and {"correct", "correct_loose"} <= set(df.columns):
        df = df.assign(primary_correct=df["correct_loose"].where(df["chat"], df["correct"]).astype(bool))
    return df


def _summary(parts: list[pd.DataFrame], records: dict[str, dict], names: Sequence[str] | None = None) -> dict:
    names = list(records) if names is None else names
    out = efficiency_summary(pd.concat(parts, ignore_index=True), [records[n] for n in names if n in records])
    out["tasks_measured"] = [n for n in names if n in records]
    return out


def warn_bad_logits(parts: Sequence[pd.DataFrame], method: Method) -> None:
    """One warning naming how many rows had garbage logits (NaN/inf or constant) and in which tasks."""
    df = pd.concat([p for p in parts if "bad_logits" in p], ignore_index=True) if parts else pd.DataFrame()
    if df.empty or not df["bad_logits"].any():
        return
    bad = df[df["bad_logits"].astype(bool)]
    per_task = bad.groupby("task", sort=False).size()
    tasks = ", ".join(f"{t} ({n})" for t, n in per_task.items())
    warnings.warn(f"{method.name}: {len(bad)} of {len(df)} rows had non-finite or constant logits (tasks: {tasks}); "
                  "they are scored as wrong (column bad_logits). The intervention is probably far too strong.",
                  RuntimeWarning, stacklevel=3)
