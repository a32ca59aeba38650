"""Run directories: the recorded config, per-task result files written atomically, and resuming.

Layout of a run directory::

    config.json            what produced the results (see :func:`run_config`)
    results/<task>.parquet one file per finished task (CSV when pyarrow is missing), written atomically
    efficiency.json        per-task latency / peak-memory records and the method-level summary

A rerun with the same directory skips the tasks whose result file exists. A config.json or efficiency.json that is
not JSON or lacks a key raises :class:`~workbench.core.files.FileFormatError` naming the file and the key; a task
name that is not a plain file name (``a/b``, ``..``) is refused before anything is written. The keys of
:data:`COMPARED_KEYS` must equal the recorded ones, otherwise :class:`RunConfigMismatch` names the first differing
key; the other keys (package versions, git commit, creation time, the task list) are informational, and new tasks may
be added.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.files import (
    DEFAULT_PACKAGES,
    FileFormatError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_json,
    repo_root,
)
from workbench.tasks.registry import check_task_name

#: Config keys that must match for a run directory to be resumed.
COMPARED_KEYS = ("model", "method", "n_test", "templates", "prefixes", "seeds", "batch_size", "data_dir", "split",
                "max_items")
RESULTS = "results"
#: Keys every recorded config.json has (optional compared keys such as "split" are recorded only when not default).
CONFIG_KEYS = ("model", "method", "n_test", "templates", "prefixes", "seeds", "batch_size", "data_dir", "tasks")
#: Keys of efficiency.json and of each of its per-task records.
EFFICIENCY_KEYS = ("tasks", "summary")
MEMORY_KEYS = ("memory_kind", "peak_bytes", "increase_bytes")
CONFIG_WHAT = "the config.json that workbench.evaluate writes into a run directory"
EFFICIENCY_WHAT = "the efficiency.json that workbench.evaluate writes into a run directory"


def label_folder(root: str | os.PathLike, label: str) -> Path:
    """The folder of one method's label under `root` (``"static TV"`` -> ``root/static_TV``): evaluation results
    (``evaluate_many``) and saved fits (``compare(fit_dir=)``) are filed the same way."""
    return Path(root) / label.replace(" ", "_")


class RunConfigMismatch(ValueError):
    """The run directory was created with a different configuration."""


# ----------------------------------------------------------------------------------------------- writing
#: Packages recorded in config.json (reporting's defaults plus what the evaluation itself uses).
PACKAGES = (*DEFAULT_PACKAGES, "bm25s", "pyarrow", "psutil", "atv-workbench")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic JSON (:func:`workbench.core.files.atomic_write_json`)."""
    atomic_write_json(path, obj)


def git_commit() -> str | None:
    """HEAD of the repository holding the package (``+dirty`` when it has uncommitted changes), else None."""
    root = repo_root()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def jsonable(obj: Any) -> Any:
    """What `obj` looks like after a JSON round trip (tuples become lists, unknown objects strings)."""
    return json.loads(json.dumps(obj, default=str))


def run_config(
    lm: Any, method: Any, tasks: Sequence[str], n_test: int | None, templates: Any, prefixes: Any,
    seeds: Sequence[int], batch_size: int, data_dir: str | os.PathLike | None,
) -> dict[str, Any]:
    """Everything needed to reproduce an evaluation, JSON-ready."""
    return jsonable({
        "model": lm.describe(),
        "method": method.config(),
        "n_test": n_test,
        "templates": templates,
        "prefixes": prefixes,
        "seeds": list(seeds),
        "batch_size": batch_size,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "tasks": list(tasks),
        "packages": package_versions(PACKAGES),
        "git_commit": git_commit(),
        "device": str(lm.device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def _first_difference(old: Any, new: Any, path: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=lambda k: (k != "name", str(k))):
            diff = _first_difference(old.get(key), new.get(key), f"{path}.{key}")
            if diff:
                return diff
        return None
    return None if old == new else f"{path}: recorded {old!r}, now {new!r}"


def check_config(recorded: dict, config: dict) -> None:
    """Raise :class:`RunConfigMismatch` naming the first key of :data:`COMPARED_KEYS` that differs."""
    for key in COMPARED_KEYS:
        diff = _first_difference(recorded.get(key), config.get(key), key)
        if diff:
            raise RunConfigMismatch(
                f"run directory was created with a different configuration: {diff}. "
                "Use a new run_dir, or delete the old one to start over."
            )


def open_run(run_dir: str | os.PathLike, config: dict) -> Path:
    """Create `run_dir` or check its recorded config against `config`; record the (union of) tasks.

    Every task name must be a plain name (it becomes ``results/<task>.parquet``); checked before anything is written.
    """
    for task in config.get("tasks", []):
        check_task_name(task)
    root = Path(run_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"run_dir {str(root)!r} exists and is not a directory")
    path = root / "config.json"
    if path.exists():
        recorded = read_config(root)
        check_config(recorded, config)
        if recorded.get("packages") != config.get("packages"):
            warnings.warn(f"{path}: package versions differ from the ones recorded; resuming anyway", stacklevel=3)
        tasks = list(dict.fromkeys([*recorded.get("tasks", []), *config.get("tasks", [])]))
        if tasks != recorded.get("tasks"):
            write_json(path, {**recorded, "tasks": tasks})
    else:
        root.mkdir(parents=True, exist_ok=True)
        write_json(path, config)
    return root


# ----------------------------------------------------------------------------------------------- results
def _parquet_ok() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The recorded config.json of `run_dir` (FileFormatError naming the file if it is not JSON or lacks a key)."""
    return read_json(Path(run_dir) / "config.json", CONFIG_KEYS, CONFIG_WHAT)


def _results_file(run_dir: str | os.PathLike, task: str, ext: str) -> Path:
    return Path(run_dir) / RESULTS / f"{check_task_name(task)}{ext}"


def task_results_path(run_dir: str | os.PathLike, task: str) -> Path | None:
    """The result file of `task` if it exists (parquet or CSV), else None."""
    for ext in (".parquet", ".csv"):
        p = _results_file(run_dir, task, ext)
        if p.is_file():
            return p
    return None


def save_task_results(run_dir: str | os.PathLike, task: str, df: pd.DataFrame) -> Path:
    """Write one task's rows atomically (parquet, or CSV without pyarrow); returns the path."""
    if _parquet_ok():
        return atomic_write_bytes(_results_file(run_dir, task, ".parquet"), df.to_parquet(index=False))
    return atomic_write_text(_results_file(run_dir, task, ".csv"), df.to_csv(index=False))


def load_task_results(run_dir: str | os.PathLike, task: str) -> pd.DataFrame | None:
    """One finished task's rows, or None if the task has no result file yet."""
    path = task_results_path(run_dir, task)
    if path is None:
        return None
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def finished_tasks(run_dir: str | os.PathLike) -> list[str]:
    """Tasks with a result file in `run_dir`."""
    folder = Path(run_dir) / RESULTS
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in (".parquet", ".csv") and not p.name.startswith(".")})


def read_efficiency(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The efficiency.json of `run_dir` ({} if absent); FileFormatError naming the file and key if it is malformed."""
    path = Path(run_dir) / "efficiency.json"
    if not (path.exists() or path.is_symlink()):
        return {}
    record = read_json(path, EFFICIENCY_KEYS, EFFICIENCY_WHAT)
    tasks = record["tasks"]
    if not isinstance(tasks, dict) or not isinstance(record["summary"], dict):
        raise FileFormatError(f"{path}: 'tasks' and 'summary' must be JSON objects; expected {EFFICIENCY_WHAT}")
    for task, rec in tasks.items():
        missing = [k for k in MEMORY_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise FileFormatError(f"{path}: the record of task {task!r} lacks key {missing[0]!r} (needs "
                                  f"{list(MEMORY_KEYS)}); expected {EFFICIENCY_WHAT}")
    return record


def write_efficiency(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    write_json(Path(run_dir) / "efficiency.json", record)


def load_run(run_dir: str | os.PathLike) -> pd.DataFrame:
    """All finished tasks of a run as one DataFrame; ``attrs`` carry ``config`` and ``efficiency``."""
    root = Path(run_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{str(root)!r} is not a run directory (no config.json)")
    parts = [load_task_results(root, t) for t in finished_tasks(root)]
    df = pd.concat([p for p in parts if p is not None], ignore_index=True) if parts else pd.DataFrame()
    df.attrs["config"] = read_config(root)
    df.attrs["efficiency"] = read_efficiency(root).get("summary", {})
    return df
