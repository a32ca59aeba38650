"""The rows of one unit of work (:mod:`workbench.eval.units`) as one process computed them, kept in the method's run
folder until process 0 merges them into ``results/<task>.parquet`` (:mod:`workbench.eval.parallel`).

Layout inside a run folder (:mod:`workbench.eval.runs`)::

    parts/<fingerprint>/<task>/s<seed>-i<start>.r<rank>of<N>.parquet   the unit's rows, written atomically
    parts/<fingerprint>/<task>/s<seed>-i<start>.r<rank>of<N>.json      its record, written after the rows: the
                                                                       unit, rank, N, peak memory, SHA-256 of the rows

``<fingerprint>`` hashes what the rows depend on (the compared keys of the run's config, the task's data
fingerprint, the unit scheme), so units of another configuration are never read; ``r<rank>of<N>`` says which
process of how many made it. A unit is finished when its record exists and names rows with its SHA-256; which process,
or how many, made it does not matter (a resume under another number of processes reuses it). Nothing is read
through a symbolic link; the parts of a task are removed once it is merged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.files import FileFormatError, atomic_write_bytes, atomic_write_json, read_json
from workbench.core.world import World
from workbench.eval.runs import COMPARED_KEYS
from workbench.eval.units import Unit

PARTS = "parts"
MARKER, SCHEME = "workbench-eval-unit", "task-seed-batch-v1"


def fingerprint(config: Mapping[str, Any], task: str) -> str:
    """What a unit's rows depend on, hashed: the compared keys of `config` (the model by its fingerprint), the
    task's data fingerprint and the unit scheme."""
    key: dict[str, Any] = {k: config.get(k) for k in COMPARED_KEYS}
    model = key["model"]
    if isinstance(model, Mapping) and model.get("fingerprint"):
        key["model"] = model["fingerprint"]
    key["task_data"] = (config.get("task_data") or {}).get(task)
    key["scheme"] = SCHEME
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_folder(root: str | os.PathLike, config: Mapping[str, Any], task: str) -> Path:
    return Path(root) / PARTS / fingerprint(config, task) / task


def _stem(unit: Unit) -> str:
    return f"s{unit.seed}-i{unit.start}"


def _encode(df: pd.DataFrame) -> tuple[str, bytes]:
    try:
        return ".parquet", df.to_parquet(index=False)
    except ImportError:  # no pyarrow: CSV, as results/ then holds
        return ".csv", df.to_csv(index=False).encode("utf-8")


def write_unit(root: str | os.PathLike, config: Mapping[str, Any], unit: Unit, rows: pd.DataFrame,
               memory: Mapping[str, Any], world: World) -> Path:
    """Write one unit's rows, then its record (both atomically); returns the record's path."""
    folder = task_folder(root, config, unit.task)
    name = f"{_stem(unit)}.r{world.rank}of{world.size}"
    ext, data = _encode(rows)
    atomic_write_bytes(folder / f"{name}{ext}", data)
    record = {"format": MARKER, "unit": list(unit), "rank": world.rank, "world_size": world.size,
              "memory": dict(memory), "file": f"{name}{ext}", "sha256": hashlib.sha256(data).hexdigest()}
    return atomic_write_json(folder / f"{name}.json", record)


def _rows_of(record_path: Path, unit: Unit) -> tuple[Path, dict[str, Any]] | None:
    """(rows file, record) when `record_path` is a complete record of `unit`, else None."""
    if record_path.is_symlink():
        return None
    try:
        record = read_json(record_path, ("format", "unit", "file", "sha256", "memory"), "a unit record")
    except FileFormatError:
        return None
    rows = record_path.parent / str(record["file"])
    if (record["format"] != MARKER or record["unit"] != list(unit) or rows.parent != record_path.parent
            or not rows.is_file() or rows.is_symlink()
            or hashlib.sha256(rows.read_bytes()).hexdigest() != record["sha256"]):
        return None
    return rows, record


def find_unit(root: str | os.PathLike, config: Mapping[str, Any], unit: Unit) -> tuple[Path, dict] | None:
    """The finished rows of `unit` (whichever process made them), or None."""
    folder = task_folder(root, config, unit.task)
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f"{_stem(unit)}.r*of*.json")):
        found = _rows_of(path, unit)
        if found is not None:
            return found
    return None


def read_unit(root: str | os.PathLike, config: Mapping[str, Any], unit: Unit) -> tuple[pd.DataFrame, dict]:
    """(rows, peak-memory record) of a finished unit; FileNotFoundError naming it when there is none."""
    found = find_unit(root, config, unit)
    if found is None:
        raise FileNotFoundError(f"{task_folder(root, config, unit.task)}: no finished rows of unit {tuple(unit)}")
    path, record = found
    rows = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return rows, record["memory"]


def has_parts(folders: Iterable[str | os.PathLike | None]) -> bool:
    """Whether a run folder holds units not merged yet (then even one process resumes from them)."""
    return any(f is not None and (Path(f) / PARTS).is_dir() for f in folders)


def remove_task(root: str | os.PathLike, config: Mapping[str, Any], task: str) -> None:
    """Delete a merged task's unit files (only the files this module names), then the folders left empty."""
    folder = task_folder(root, config, task)
    if folder.is_dir() and not folder.is_symlink():
        for path in folder.glob("s*-i*.r*of*.*"):
            if path.suffix in (".json", ".parquet", ".csv") and path.is_file():
                path.unlink(missing_ok=True)
    for empty in (folder, folder.parent, folder.parent.parent):
        try:
            empty.rmdir()
        except OSError:  # not empty (other tasks, other files) or gone
            break
