"""Files the workbench writes: atomic writes (text, bytes, JSON, whole folders), package versions, run folders.

Module contents: :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_write_json` go through a
temporary file in the destination folder and :func:`os.replace`, so a crash mid-write leaves either the old file or
the new one, never a truncated one, and no temporary file behind; :func:`replace_dir` does the same for a finished
folder. None of them writes through a symbolic link planted under the name (:func:`os.replace` replaces the link).
Every temporary name carries the writer's pid (``.<name>.<pid>-<random>.tmp``, ``.<name>.old-<pid>``), so what a
killed writer left is told apart from a live writer's work: :func:`recover_dir` (run by every atomic write and
folder swap, and by loaders) puts back a folder whose swap was cut and removes the debris of dead writers.
:func:`read_json` reads a JSON file the workbench wrote back, with errors naming the file and what is wrong.
:func:`package_versions` is what every run records; :func:`new_run_dir` makes a timestamped run folder;
:func:`repo_root` is the one place the checkout is located from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_PACKAGES", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "new_run_dir",
    "package_versions", "atomic_dir", "replace_dir", "repo_root", "FileFormatError", "read_json", "recover_dir",
    "recover_folder", "remove_dir",
]

#: Distributions reported by :func:`package_versions` by default (plus ``python`` and ``platform``).
DEFAULT_PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "nnsight", "peft", "accelerate", "datasets", "numpy", "pandas",
)

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp uses 0o600)


@contextmanager
def _atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success fsync and ``os.replace`` it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding, newline=None if "b" in mode else "") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same directory + ``os.replace``); returns the path.

    Parent directories are created. Newlines are written as given (no platform translation).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    with _atomic_open(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with _atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def _json_default(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths, sets, dataclasses and datetimes to JSON types."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    mod = type(obj).__module__.split(".")[0]
    if mod in ("numpy", "torch"):
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        if hasattr(obj, "tolist"):
            return obj.tolist()  # numpy/torch scalars -> Python scalars, arrays/tensors -> nested lists
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)  # e.g. numpy/torch dtypes
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline) to ``path`` atomically; returns the path.

    numpy / torch scalars and arrays, :class:`~pathlib.Path`, sets, dataclasses and datetimes are converted.
    The object is serialized completely before the file is touched, so a serialization error leaves an
    existing file unchanged.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, default=_json_default, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


class FileFormatError(ValueError):
    """A file the workbench reads is not what it expects; the message names the file, the fault and what is expected."""


def read_json(path: str | os.PathLike, required: Iterable[str] = (), what: str = "JSON file") -> Any:
    """Parse the UTF-8 JSON file `path`; with `required` it must be an object holding those keys.

    `what` describes the expected file (e.g. "a run config written by workbench.evaluate") and ends every message.
    A missing path raises FileNotFoundError, a folder IsADirectoryError; undecodable bytes, invalid JSON, a non-object
    (when keys are required) and a missing key raise :class:`FileFormatError` (a ValueError) naming the file.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder; expected {what}")
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; expected {what}")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                              f"expected {what}") from None
    except json.JSONDecodeError as e:
        fault = "file is empty" if not e.doc.strip() else f"{e.msg} at line {e.lineno}, column {e.colno}"
        raise FileFormatError(f"{p}: not valid JSON ({fault}); expected {what}") from None
    keys = list(required)
    if keys:
        if not isinstance(obj, dict):
            raise FileFormatError(f"{p}: expected a JSON object with keys {keys}, got a JSON {_json_kind(obj)}; "
                                  f"expected {what}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise FileFormatError(f"{p}: missing key {missing[0]!r} (needs {keys}; found {list(obj)}); "
                                  f"expected {what}")
    return obj


def _json_kind(obj: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(obj), "number")


def package_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Installed versions of ``names`` (default :data:`DEFAULT_PACKAGES`) plus ``python`` and ``platform``.

    Looked up from package metadata (nothing is imported); a missing package maps to None.
    """
    out: dict[str, str | None] = {}
    for name in DEFAULT_PACKAGES if names is None else names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out


def new_run_dir(root: str | os.PathLike = "runs", prefix: str = "",
                clock: Callable[[], _dt.datetime] = _dt.datetime.now) -> Path:
    """Create and return a fresh ``root/[prefix-]YYYYmmdd-HHMMSS`` directory (``-1``, ``-2``… appended on clashes)."""
    if prefix and Path(prefix).name != prefix:
        raise ValueError(f"prefix must not contain path separators, got {prefix!r}")
    stamp = clock().strftime("%Y%m%d-%H%M%S")
    base = f"{prefix}-{stamp}" if prefix else stamp
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = Path(root) / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new run directory under {root!r} for {base!r}")


# ----------------------------------------------------------------------------------------------- folder swaps
#: What the workbench's writers leave while they work: a temporary copy (``.<name>.<pid>-<random>.tmp``), the old
#: folder during a swap (``.<name>.old-<pid>``) and a folder being removed (``.<name>.del-<pid>``).
_DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-[a-z0-9_]+\.tmp|(?P<kind>old|del)-(?P<opid>\d+))$")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Whether process `pid` (on this host) may still be working on its temporary files."""
    if pid == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) would not be a harmless probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _recover(folder: Path, name: str | None) -> None:
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    found: dict[str, list[tuple[str, Path]]] = {}  # target name -> [(kind, debris path)], dead writers only
    for entry in entries:
        m = _DEBRIS.match(entry)
        if m is None or (name is not None and m["name"] != name) or _alive(int(m["pid"] or m["opid"])):
            continue
        found.setdefault(m["name"], []).append((m["kind"] or "tmp", folder / entry))
    for target_name, debris in found.items():
        target = folder / target_name
        olds = [p for kind, p in debris if kind == "old"]
        if olds and not _exists(target):  # a swap was cut between its two renames: the old folder goes back
            back = max(olds, key=lambda p: p.lstat().st_mtime_ns)
            os.replace(back, target)
            debris = [(k, p) for k, p in debris if p != back]
        for _, p in debris:
            _remove(p)


def recover_dir(target: str | os.PathLike) -> None:
    """Undo what a killed writer of `target` left: if `target` is missing and a folder swap of it was cut, the old
    folder is put back under its name; temporary copies and old folders of writers that are no longer running are
    removed (a running writer's are left alone). Only names the workbench's writers use are touched."""
    target = Path(target)
    _recover(target.parent, target.name)


def recover_folder(folder: str | os.PathLike) -> None:
    """:func:`recover_dir` for every entry of `folder` that a killed writer left debris of."""
    _recover(Path(folder), None)


def replace_dir(src: Path, target: Path) -> None:
    """Move the finished folder `src` onto `target`; an existing `target` is renamed away first, then removed.

    A kill between the two renames leaves the old folder as ``.<name>.old-<pid>``, which :func:`recover_dir` (run by
    the next save or load of `target`) puts back. Callers decide whether `target` may be replaced
    (:func:`atomic_dir` refuses what the workbench did not write).
    """
    old = None
    if _exists(target):
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(target, old)
    try:
        os.replace(src, target)
    except BaseException:
        if old is not None:  # put the original back rather than leave it under the hidden name
            os.replace(old, target)
        raise
    if old is not None:
        _remove(old)


def remove_dir(path: str | os.PathLike) -> None:
    """Remove a folder the workbench wrote so that a kill midway never leaves a partial copy under its name: it is
    renamed to ``.<name>.del-<pid>`` first (removed by the next :func:`recover_dir`/:func:`recover_folder`)."""
    path = Path(path)
    if not _exists(path):
        return
    doomed = path.with_name(f".{path.name}.del-{os.getpid()}")
    _remove(doomed)
    os.replace(path, doomed)
    _remove(doomed)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | os.PathLike, owned: Callable[[Path], bool] | None = None,
               overwrite: bool = False, what: str = "folder") -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it onto `target` when the block finishes without error.

    An existing `target` is replaced only when it is an empty folder, when ``owned(target)`` says the workbench wrote
    it (e.g. an earlier checkpoint of the same kind), or with ``overwrite=True``; anything else (a file, a folder of
    the user's) raises FileExistsError naming it, before anything is written. On error nothing is left behind; after
    a kill, the next call (or :func:`recover_dir`) restores `target` and removes the debris.
    """
    target = Path(target)
    recover_dir(target)
    if _exists(target) and not overwrite:
        empty = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
        if not (empty or (target.is_dir() and owned is not None and owned(target))):
            kind = "a file" if not target.is_dir() else "a folder the workbench did not write"
            raise FileExistsError(f"refusing to write the {what} to {str(target)!r}: it is {kind}; choose a new path "
                                  f"or pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        _remove(tmp)


# ----------------------------------------------------------------------------------------------- data folder
def repo_root() -> Path:
    """The checkout (or install prefix) that holds the ``workbench`` package folder: one definition for every module."""
    return Path(__file__).resolve().parents[2]
