"""``python -m workbench data``: prepare and check the task files.

    python -m workbench data prepare --from DIR [--to data/tasks] [--tasks NAME ...] [--overwrite]
    python -m workbench data prepare --hub      [--to data/tasks] [--tasks NAME ...] [--overwrite]
    python -m workbench data check [--dir DIR]

``--from`` validates each ``DIR/<task>.json`` (or ``DIR/tasks/<task>.json``) and copies it byte for byte;
``--hub`` builds the files with :mod:`workbench.tasks.hub_builders` (needs internet and ``datasets``). Every file is
written to a temporary file in the target folder and moved into place with ``os.replace``, so a task file is
either the old one or the complete new one (a symbolic link in its place is replaced, never written through). A
target file that differs from what would be written (an edited task file, a link, a folder) is not replaced
silently: :func:`write_task_files` refuses, naming every such file, before writing any, unless ``overwrite=True``
(``--overwrite``); files already identical are left alone. The default target ``<repo>/data/tasks`` is git-ignored
and is the folder :func:`workbench.tasks.registry.resolve_data_dir` looks in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from workbench.core.files import atomic_write_bytes, repo_root
from workbench.tasks.registry import (
    REGISTRY,
    SPLITS,
    check_task_name,
    read_task_file,
    resolve_data_dir,
    validate_task_data,
)


def default_target() -> Path:
    return repo_root() / "data" / "tasks"


def _source_dir(src: Path) -> Path:
    if not src.is_dir():
        raise FileNotFoundError(f"--from {src} is not a directory")
    if not any(src.glob("*.json")) and any((src / "tasks").glob("*.json")):
        return src / "tasks"
    return src


def _present(p: Path) -> bool:
    return p.exists() or p.is_symlink()  # a folder / broken symlink is reported by read_task_file, naming it


def _task_files(src: Path, tasks: Sequence[str] | None) -> list[Path]:
    if tasks:
        missing = [t for t in tasks if not _present(src / f"{check_task_name(t)}.json")]
        if missing:
            raise FileNotFoundError(f"no task file for {missing} in {src}")
        return [src / f"{t}.json" for t in tasks]
    files = sorted(p for p in src.glob("*.json") if p.name != "templates.json")
    if not files:
        raise FileNotFoundError(f"no task files (*.json) in {src}")
    return files


def _differs(path: Path, data: bytes) -> bool:
    """Whether `path` holds something other than `data` (an absent path does not)."""
    if not _present(path):
        return False
    return path.is_symlink() or not path.is_file() or path.read_bytes() != data


def write_task_files(payloads: Sequence[tuple[Path, bytes]], overwrite: bool = False) -> list[Path]:
    """Write every ``(path, bytes)`` atomically; returns the paths. A path holding anything but those very bytes is
    refused (FileExistsError naming all of them, nothing written) unless `overwrite`; identical files are kept."""
    differing = [path for path, data in payloads if _differs(path, data)]
    if differing and not overwrite:
        names = ", ".join(str(p) for p in differing)
        raise FileExistsError(f"refusing to replace {len(differing)} file(s) that differ from the task files to be "
                              f"written (edited by hand, or links): {names}; pass overwrite=True (CLI: --overwrite) "
                              f"to replace them, or choose another target folder (--to)")
    for path, data in payloads:
        if path in differing or not _present(path):
            atomic_write_bytes(path, data)
    return [path for path, _ in payloads]


def prepare_from(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                 tasks: Sequence[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Validate every task file in `src` (all, or `tasks`) and copy it to `dst`; returns the written paths.

    All files are validated before any is written, so a bad file leaves the target untouched; an existing target file
    that differs is replaced only with `overwrite` (:func:`write_task_files`).
    """
    src_dir = _source_dir(Path(src))
    target = Path(dst) if dst is not None else default_target()
    files = _task_files(src_dir, tasks)
    payloads = []
    for f in files:
        read_task_file(f)  # raises TaskDataError naming file / split / item
        payloads.append((target / f.name, f.read_bytes()))
    if target.resolve() == src_dir.resolve():
        return [p for p, _ in payloads]
    return write_task_files(payloads, overwrite)


def encode_task(splits: dict) -> bytes:
    """Canonical bytes of a task file: keys train, valid, test in order, compact, UTF-8."""
    obj = {s: [{"input": r["input"], "output": r["output"]} for r in splits[s]] for s in SPLITS}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def prepare_hub(dst: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
                loader=None, overwrite: bool = False) -> list[Path]:
    """Build task files from the hub (default: the 25 paper tasks), then write them atomically; an existing target file
    that differs is replaced only with `overwrite` (:func:`write_task_files`: all are built before any is written)."""
    from workbench.tasks import hub_builders

    target = Path(dst) if dst is not None else default_target()
    names = [check_task_name(t) for t in tasks] if tasks else list(REGISTRY)
    payloads = []
    for name in names:
        splits = hub_builders.load_hub_task(name, **({"loader": loader} if loader else {}))
        validate_task_data(splits, f"hub build of {name}")
        payloads.append((target / f"{name}.json", encode_task(splits)))
    return write_task_files(payloads, overwrite)


def check(data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, int]]:
    """Validate every task file of the data folder; returns split sizes per task."""
    d = resolve_data_dir(data_dir)
    return {p.stem: {s: len(v) for s, v in read_task_file(p).items()} for p in sorted(d.glob("*.json"))}

