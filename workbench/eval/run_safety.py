"""Where an evaluation may write: the checks on a run folder before anything is written, its lock, and the cleanup of
what a killed write left (the run folder's layout and records: :mod:`workbench.eval.runs`).

* :func:`check_run_folder` (reads only): a symbolic link in place of ``config.json``, ``efficiency.json``,
  ``results/`` or a result file is refused (nothing is read or written through a link), and so is a folder without
  ``config.json`` that holds ``efficiency.json`` or anything under ``results/`` (an evaluation writes ``config.json``
  first, so they are not its own and would be taken for results); each error names the entry.
* :func:`run_lock` / :func:`run_locks`: :func:`workbench.core.locks.folder_lock` on ``<run folder>/.lock``, so a
  second evaluation into a folder in use fails at once, naming the holder (pid, host, start).
* :func:`remove_debris`: the temporary files of an atomic write killed mid-way (called under the lock).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from workbench.core.locks import folder_lock

RESULTS = "results"


def check_run_folder(run_dir: str | os.PathLike) -> Path:
    """`run_dir` as a Path if an evaluation may write into it; reads only, so call it before any work.

    Refused (FileExistsError naming the entry; ValueError for a file given as the folder): a symbolic link in place
    of config.json, efficiency.json, results/ or a file in it (nothing is read or written through a link); a results
    entry that is not a folder; a folder without config.json holding efficiency.json or anything under results/
    (an evaluation writes config.json first, so they are not its own and would be taken for results).
    """
    root = Path(run_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"run_dir {str(root)!r} exists and is not a directory")
    results = root / RESULTS
    entries = [root / "config.json", root / "efficiency.json", results]
    inside = sorted(results.iterdir()) if results.is_dir() and not results.is_symlink() else []
    link = next((p for p in [*entries, *inside] if p.is_symlink()), None)
    if link is not None:
        raise FileExistsError(f"refusing to use run folder {str(root)!r}: {str(link)!r} is a symbolic link, and an "
                              f"evaluation never reads or writes its files through links; remove it or choose "
                              f"another run_dir")
    if results.exists() and not results.is_dir():
        raise FileExistsError(f"refusing to use run folder {str(root)!r}: {str(results)!r} is a file, where an "
                              f"evaluation keeps its results folder; move it away or choose another run_dir")
    if not (root / "config.json").exists():
        foreign = [p for p in (root / "efficiency.json",) if p.exists()] + inside
        if foreign:
            names = ", ".join(repr(str(p.relative_to(root))) for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise FileExistsError(f"refusing to use {str(root)!r} as a run folder: it has no config.json, so its "
                                  f"{names}{more} were not written by an evaluation and would be taken for results; "
                                  f"move them away or choose another run_dir")
    return root


#: The temporary files an atomic write leaves when it is killed (``.<name>.<random>.tmp``, workbench.core.files).
_DEBRIS = (".config.json.*.tmp", ".efficiency.json.*.tmp", f"{RESULTS}/.*.parquet.*.tmp", f"{RESULTS}/.*.csv.*.tmp")


def remove_debris(root: Path) -> None:
    """Delete what the atomic writes of an evaluation killed mid-write left in `root` (under its lock)."""
    for pattern in _DEBRIS:
        for p in root.glob(pattern):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)


def run_lock(run_dir: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """The lock an evaluation holds on its run folder (:func:`workbench.core.locks.folder_lock`): a second evaluation
    into the folder raises :class:`~workbench.core.locks.FolderBusy` at once, naming the holder (pid, host, start)."""
    return folder_lock(run_dir, what="run folder", by="evaluation")


@contextlib.contextmanager
def run_locks(run_dirs: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Hold :func:`run_lock` on every folder of `run_dirs` for the block (all or none)."""
    with contextlib.ExitStack() as stack:
        for run_dir in run_dirs:
            stack.enter_context(run_lock(run_dir))
        yield
