"""Run directories: the recorded config, per-task result files written atomically, and resuming.

Layout of a run directory::

    config.json            what produced the results (see :func:`run_config`); written first
    results/<task>.parquet one file per finished task (CSV when pyarrow is missing), written atomically
    efficiency.json        per-task latency / peak-memory records (each naming its result file and its SHA-256)
                           and the method-level summary
    .lock                  held by the evaluation writing into it (:func:`~workbench.eval.run_safety.run_lock`)

A task is finished when its result file is the one its efficiency.json record names (same SHA-256; a record written
before digests were kept trusts the file); a rerun with the same directory skips the finished tasks. A result file
without its record (an evaluation killed between the two writes) or changed since is not read: a warning names it
and the task is recomputed. Nothing is written where it must not be (:mod:`workbench.eval.run_safety`, checked
before anything is written): a symbolic link in place of config.json, efficiency.json, results/ or a result file is
refused, and so is a folder without config.json that holds efficiency.json or results/ (the workbench did not write
them); a second evaluation into a folder in use fails at once, naming the holder. A config.json or efficiency.json
that is not JSON or lacks a key raises :class:`~workbench.core.files.FileFormatError` naming the file and the key; a
task name that is not a plain file name (``a/b``, ``..``) is refused before anything is written. The keys of
:data:`COMPARED_KEYS` must equal the recorded ones, otherwise :class:`RunConfigMismatch` names the first differing
key; the other keys (package versions, git commit, creation time, the task list) are informational, and new tasks may
be added. Fingerprints are compared the same way: the model's (by it, not by its name or path, so the same model under
another path resumes), an ATV method's generator's (``ATV(gen2)`` does not resume ``gen1``'s folder) and each task's
data (``task_data``: a task whose file changed is refused, naming both fingerprints); a folder that recorded none (made
before they were kept) is compared without them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.fingerprints import comparable_models
from workbench.core.files import (
    DEFAULT_PACKAGES,
    FileFormatError,
    atomic_write_bytes,
    atomic_write_json,
    package_versions,
    read_json,
    repo_root,
)
from workbench.eval.run_safety import RESULTS, check_run_folder, remove_debris
from workbench.tasks.registry import Task, check_task_name

#: Config keys that must match for a run directory to be resumed.
COMPARED_KEYS = ("model", "method", "n_test", "templates", "prefixes", "seeds", "batch_size", "data_dir", "split",
                "max_items")
#: Keys every recorded config.json has (optional compared keys such as "split" are recorded only when not default).
CONFIG_KEYS = ("model", "method", "n_test", "templates", "prefixes", "seeds", "batch_size", "data_dir", "tasks")
#: Keys of efficiency.json and of each of its per-task records.
EFFICIENCY_KEYS = ("tasks", "summary")
MEMORY_KEYS = ("memory_kind", "peak_bytes", "increase_bytes")
CONFIG_WHAT = "the config.json that workbench.evaluate writes into a run directory"
EFFICIENCY_WHAT = "the efficiency.json that workbench.evaluate writes into a run directory"


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
    lm: Any, method: Any, tasks: Sequence[str | Task], n_test: int | None, templates: Any, prefixes: Any,
    seeds: Sequence[int], batch_size: int, data_dir: str | os.PathLike | None,
) -> dict[str, Any]:
    """Everything needed to reproduce an evaluation, JSON-ready. The model's record carries its fingerprint, an ATV
    method's its generator's; for the Task objects among `tasks`, ``task_data`` records each one's data
    fingerprint (:meth:`~workbench.tasks.registry.Task.fingerprint`), compared on resume (:func:`check_config`)."""
    task_data = {t.name: t.fingerprint() for t in tasks if isinstance(t, Task)}
    return jsonable({
        "model": lm.describe(),
        "method": method.config(),
        "n_test": n_test,
        "templates": templates,
        "prefixes": prefixes,
        "seeds": list(seeds),
        "batch_size": batch_size,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "tasks": [t.name if isinstance(t, Task) else t for t in tasks],
        **({"task_data": task_data} if task_data else {}),
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


#: (compared key, entry): fingerprints compared only when the run folder recorded them (an older folder resumes).
FINGERPRINTS = (("model", "fingerprint"), ("method", "generator_fingerprint"))
NEW_RUN_DIR = "Use a new run_dir, or delete the old one to start over."


def _comparable(key: str, old: Any, new: Any) -> tuple[Any, Any]:
    """The recorded and the new value of `key` as compared: a fingerprint the folder did not record is left out,
    and a model fingerprinted on both sides is compared by its fingerprint, not by its name or path."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old, new
    if key == "model":
        return comparable_models(old, new)
    drop = {entry for k, entry in FINGERPRINTS if k == key and entry not in old}
    return ({k: v for k, v in old.items() if k not in drop}, {k: v for k, v in new.items() if k not in drop})


def check_config(recorded: dict, config: dict) -> None:
    """Raise :class:`RunConfigMismatch` naming the first key of :data:`COMPARED_KEYS` that differs (fingerprints:
    :func:`_comparable`), or a task whose data fingerprint is not the recorded one (both fingerprints named)."""
    for key in COMPARED_KEYS:
        diff = _first_difference(*_comparable(key, recorded.get(key), config.get(key)), key)
        if diff:
            raise RunConfigMismatch(f"run directory was created with a different configuration: {diff}. {NEW_RUN_DIR}")
    old = recorded.get("task_data") or {}
    for task, fingerprint in (config.get("task_data") or {}).items():
        if old.get(task) not in (None, fingerprint):
            raise RunConfigMismatch(
                f"task {task!r}: its data changed since the run directory was created (data fingerprint recorded "
                f"{old[task]}, now {fingerprint}), so the rows recorded for it are not this data's. {NEW_RUN_DIR}")


def merged_record(recorded: dict, config: dict) -> dict:
    """`recorded` with the tasks (and task-data fingerprints) of `config` added: what a resumed run records."""
    tasks = list(dict.fromkeys([*recorded.get("tasks", []), *config.get("tasks", [])]))
    task_data = {**(config.get("task_data") or {}), **(recorded.get("task_data") or {})}
    return {**recorded, "tasks": tasks, **({"task_data": task_data} if task_data else {})}


def check_run(run_dir: str | os.PathLike, config: dict) -> dict[str, Any] | None:
    """Check, reading only, that `config` may be evaluated into `run_dir`: task names, :func:`check_run_folder`, the
    recorded config (:func:`check_config`) and efficiency.json. Returns the recorded config, or None for a new
    run folder."""
    for task in config.get("tasks", []):
        check_task_name(task)
    root = check_run_folder(run_dir)
    if not (root / "config.json").exists():
        return None
    recorded = read_config(root)
    check_config(recorded, config)
    read_efficiency(root)
    return recorded


def open_run(run_dir: str | os.PathLike, config: dict) -> Path:
    """Create `run_dir` or check its recorded config against `config` (:func:`check_run`, before anything is
    written); record the (union of) tasks and remove the temporary files of an evaluation killed mid-write.
    Call it holding :func:`~workbench.eval.run_safety.run_lock`.

    Every task name must be a plain name (it becomes ``results/<task>.parquet``); checked before anything is written.
    """
    recorded = check_run(run_dir, config)
    root = Path(run_dir).expanduser()
    path = root / "config.json"
    if recorded is not None:
        if recorded.get("packages") != config.get("packages"):
            warnings.warn(f"{path}: package versions differ from the ones recorded; resuming anyway", stacklevel=3)
        merged = merged_record(recorded, config)
        if merged != recorded:
            write_json(path, merged)
    else:
        root.mkdir(parents=True, exist_ok=True)
        write_json(path, config)
    remove_debris(root)
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


def save_task_results(run_dir: str | os.PathLike, task: str, df: pd.DataFrame) -> dict[str, str]:
    """Write one task's rows atomically (parquet, or CSV without pyarrow); returns what the task's efficiency.json
    record keeps of the file (``result_file``, ``sha256``), by which a rerun knows the file as its own."""
    if _parquet_ok():
        path, data = _results_file(run_dir, task, ".parquet"), df.to_parquet(index=False)
    else:
        path, data = _results_file(run_dir, task, ".csv"), df.to_csv(index=False).encode("utf-8")
    atomic_write_bytes(path, data)
    return {"result_file": f"{RESULTS}/{path.name}", "sha256": hashlib.sha256(data).hexdigest()}


def recorded_result(run_dir: str | os.PathLike, task: str, record: Mapping[str, Any] | None) -> Path | None:
    """The result file of `task` if it is the one `record` (the task's efficiency.json record) names, with the same
    SHA-256 (a record written before digests were kept trusts the file); else None: the task is unfinished.

    A result file present without its record (an evaluation killed between writing it and efficiency.json) or
    changed since is not read: a warning names it.
    """
    path = task_results_path(run_dir, task)
    if path is None:
        return None
    if record is not None and "sha256" not in record:  # recorded before digests were kept
        return path
    name = record.get("result_file") if record is not None else None
    mine = Path(run_dir) / name if name in (f"{RESULTS}/{task}.parquet", f"{RESULTS}/{task}.csv") else None
    if mine is not None and mine.is_file() and not mine.is_symlink() and (
            hashlib.sha256(mine.read_bytes()).hexdigest() == record["sha256"]):
        return mine
    warnings.warn(f"{path} is not the result file recorded for task {task!r} in "
                  f"{Path(run_dir) / 'efficiency.json'} (an evaluation killed before recording it, or a file changed "
                  f"or put there by hand): it is not read, and the task counts as unfinished", stacklevel=3)
    return None


def _read_results(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_task_results(run_dir: str | os.PathLike, task: str,
                      records: Mapping[str, Any] | None = None) -> pd.DataFrame | None:
    """One finished task's rows (:func:`recorded_result`), or None while the task is unfinished. `records`: the
    per-task records of efficiency.json (read from `run_dir` when not given)."""
    records = read_efficiency(run_dir).get("tasks", {}) if records is None else records
    path = recorded_result(run_dir, task, records.get(task))
    return None if path is None else _read_results(path)


def _finished(run_dir: str | os.PathLike) -> dict[str, Path]:
    folder = Path(run_dir) / RESULTS
    if not folder.is_dir():
        return {}
    records = read_efficiency(run_dir).get("tasks", {})
    stems = {p.stem for p in folder.iterdir() if p.suffix in (".parquet", ".csv") and not p.name.startswith(".")}
    found = {t: recorded_result(run_dir, t, records.get(t)) for t in sorted(stems)}
    return {t: p for t, p in found.items() if p is not None}


def finished_tasks(run_dir: str | os.PathLike) -> list[str]:
    """The finished tasks of `run_dir`: those whose result file is the one efficiency.json records
    (:func:`recorded_result`; the others are named in a warning)."""
    return list(_finished(run_dir))


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
    """All finished tasks of a run (:func:`finished_tasks`) as one DataFrame; ``attrs`` carry ``config`` and
    ``efficiency``."""
    root = Path(run_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{str(root)!r} is not a run directory (no config.json)")
    parts = [_read_results(path) for path in _finished(root).values()]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    df.attrs["config"] = read_config(root)
    df.attrs["efficiency"] = read_efficiency(root).get("summary", {})
    return df
