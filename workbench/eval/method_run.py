"""One method's evaluation across tasks (:func:`workbench.eval.evaluate.evaluate_many` keeps one per method): its run
folder (config checked, finished tasks reloaded), its rows and its efficiency records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from workbench.eval import runs
from workbench.eval.efficiency import efficiency_summary
from workbench.methods.base import Method
from workbench.tasks.registry import Task


class MethodRun:
    """One method's evaluation across tasks: its run folder (config checked, finished tasks reloaded), its rows and
    its efficiency records."""

    def __init__(self, lm: Any, method: Method, task_names: list[str], protocol: tuple, data_path: str | None,
                 run_dir: str | os.PathLike | None) -> None:
        n_test, templates, prefixes, seed_list, batch_size, split, max_items = protocol
        self.config = runs.run_config(lm, method, task_names, n_test, templates, prefixes, seed_list, batch_size,
                                      data_path)
        if split != "test":  # recorded (and compared on resume) only when it is not the default
            self.config["split"] = split
        if max_items is not None:
            self.config["max_items"] = max_items
        self.root = runs.open_run(run_dir, self.config) if run_dir is not None else None
        eff = runs.read_efficiency(self.root) if self.root is not None else {}
        self.records: dict[str, dict] = dict(eff.get("tasks", {}))
        self.parts: list[pd.DataFrame] = []

    def resume(self, task: Task, lm: Any) -> bool:
        """Whether `task` was finished in the run folder (its rows are then taken from there)."""
        done = runs.load_task_results(self.root, task.name) if self.root is not None else None
        if done is not None:
            self.parts.append(_with_chat_columns(done, lm))
        return done is not None

    def add(self, task: Task, part: pd.DataFrame, memory: dict) -> None:
        self.parts.append(part)
        self.records[task.name] = {**memory, **efficiency_summary(part)}
        if self.root is not None:
            runs.save_task_results(self.root, task.name, part)
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

