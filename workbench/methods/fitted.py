"""Save and reload what a method learned in ``fit`` (LoRA's adapter, I2CL's context vectors and coefficients, static
and ELICIT vectors and retrieval indexes), so a killed study does not refit it, and nothing read back runs code.

A method lists the attributes ``fit`` sets in ``Method.fitted_attributes``; methods with nothing costly to keep
(zero-shot, k-shot, BM25, ATV whose generator is saved by its training) leave it empty and are simply refitted.
A fit folder holds

* ``fitted.safetensors``: the tensors of those attributes (:mod:`workbench.core.safe_state`);
* the files of attributes with a format of their own (``Method.own_format_attributes``): LoRA writes its adapter as
  peft does (``adapter/adapter_model.safetensors`` + ``adapter/adapter_config.json``);
* ``fitted.json``, the record: marker and version, the method's config, the model, the training tasks, the fit time,
  the other attributes as JSON (referring to the tensors by key) and the SHA-256 of every other file.

Every file is written atomically and the record last (and removed first when a fit is saved again): a folder with a
``fitted.json`` is complete. Reloading checks config, model and tasks (:class:`FittedMismatch` names the difference),
then the files' hashes, then rebuilds the attributes from plain data (retrieval indexes from their saved texts and
embeddings); nothing is unpickled. A damaged or edited file, or a folder of an earlier version (``fitted.pt``, a
pickle, which is never loaded), raises :class:`FittedFileError` naming the file and saying how to refit.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import safetensors.torch
import torch

from workbench.core import safe_state
from workbench.core.fingerprints import comparable_models
from workbench.core.files import FileFormatError, atomic_write_bytes, atomic_write_text, read_json
from workbench.core.tensorfiles import read_tensors
from workbench.methods.base import Method
from workbench.methods.demos import DemoPrompt
from workbench.tasks.registry import Item
from workbench.tasks.retrieval import QueryIndex

MARKER, VERSION = "workbench-fitted-method", 2
META, TENSORS, LEGACY = "fitted.json", "fitted.safetensors", "fitted.pt"


class FittedMismatch(ValueError):
    """A saved fit was made with another method config, model or training tasks."""


class FittedFileError(FileFormatError):
    """A fit folder's file is damaged, edited or of an earlier version; the message names it and how to refit."""


# ---------------------------------------------------------------------------------------- workbench state types
_INDEX_FIELDS = {"encoder", "keys", "texts", "embeddings"}


def _index_state(index: QueryIndex) -> dict[str, Any]:
    if set(vars(index)) != _INDEX_FIELDS or not isinstance(index.encoder, str):
        raise TypeError(f"cannot save a QueryIndex with the attributes {sorted(vars(index))} and encoder "
                        f"{type(index.encoder).__name__} (only {sorted(_INDEX_FIELDS)}, the encoder by name)")
    return dict(vars(index))


def _index_from_state(state: Any) -> QueryIndex:
    """The index rebuilt from its texts and their saved embeddings (not re-embedded: same scores as when fitted)."""
    if not isinstance(state, dict) or set(state) != _INDEX_FIELDS:
        raise ValueError(f"a QueryIndex needs the fields {sorted(_INDEX_FIELDS)}")
    emb, keys, texts = state["embeddings"], state["keys"], state["texts"]
    if not (isinstance(state["encoder"], str) and isinstance(keys, list) and isinstance(texts, list)
            and all(isinstance(t, str) for t in texts) and isinstance(emb, torch.Tensor) and emb.ndim == 2
            and emb.is_floating_point() and len(keys) == len(texts) == emb.shape[0] > 0):
        raise ValueError("a QueryIndex needs an encoder name, as many keys and texts as embedding rows")
    index = QueryIndex.__new__(QueryIndex)
    index.__dict__.update(state)
    return index


safe_state.register_record(Item, "Item")
safe_state.register_record(DemoPrompt, "DemoPrompt")
safe_state.register(QueryIndex, "QueryIndex", _index_state, _index_from_state)


# ---------------------------------------------------------------------------------------------------- folders
def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def fit_key(method: Method, lm: Any, tasks: Sequence[str], task_data: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """What a saved fit must match to be reused: the method's settings (its config without the entries that report
    what fit learned, ``Method.fitted_config_keys``), the model (compared by fingerprint, not path:
    :func:`~workbench.core.fingerprints.comparable_models`), the training tasks and, when given, their data
    fingerprints (``{task: Task.fingerprint()}``)."""
    settings = {k: v for k, v in method.config().items() if k not in method.fitted_config_keys}
    key = {"method": settings, "model": lm.describe(), "tasks": list(tasks)}
    return _plain({**key, "task_data": dict(task_data)} if task_data else key)


def _check_key(folder: Path, meta: dict[str, Any], key: dict[str, Any]) -> None:
    """FittedMismatch naming the first of settings, model, tasks or task data that differs from the saved fit."""
    for field in ("method", "model", "tasks"):
        saved, now = ((meta[field], key[field]) if field != "model"
                      else comparable_models(meta["model"], key["model"]))
        if saved != now:
            raise FittedMismatch(f"{folder}: the saved fit has {field} {saved!r}, this run has {now!r}; "
                                 "use another fit folder (or delete this one to refit)")
    saved_data = meta.get("task_data") or {}
    for task, fingerprint in (key.get("task_data") or {}).items():
        if saved_data.get(task) not in (None, fingerprint):
            raise FittedMismatch(f"{folder}: task {task!r} changed since the fit was made (data fingerprint saved "
                                 f"{saved_data[task]}, now {fingerprint}); use another fit folder (or delete this "
                                 "one to refit)")


def _advice(folder: Path) -> str:
    return f"delete the folder {str(folder)!r} to refit (or choose another fit folder)"


def _check_folder(folder: Path) -> None:
    """Refuse a path that is not a fit folder the workbench wrote (or an empty / missing one), and an old one."""
    if (folder / LEGACY).exists() or (folder / LEGACY).is_symlink():
        raise FittedFileError(f"{str(folder)!r} holds a fit saved by an earlier workbench version ({LEGACY}, a "
                              f"pickle, which is not loaded for safety: it could run code); {_advice(folder)}")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / META).exists()
                                                     and not (folder / TENSORS).exists())):
        raise ValueError(f"{str(folder)!r} exists and is not a fitted-method folder the workbench wrote; "
                         "choose another fit folder")


def _split(method: Method) -> tuple[list[str], list[str]]:
    own = [n for n in method.fitted_attributes if n in method.own_format_attributes]
    return [n for n in method.fitted_attributes if n not in own], own


def save_fitted(method: Method, folder: str | os.PathLike, key: dict[str, Any], seconds: float) -> Path:
    """Write the method's fitted attributes and `key` (see :func:`fit_key`) into `folder`.

    Raises TypeError naming the attribute (and where inside it) when a value has a type the format does not keep,
    before anything is written."""
    folder = Path(folder)
    generic, own = _split(method)
    plain, tensors = safe_state.encode({n: getattr(method, n) for n in generic}, prefix=f"{type(method).__name__}.")
    _check_folder(folder)
    (folder / META).unlink(missing_ok=True)  # without its record the folder is incomplete until the end
    atomic_write_bytes(folder / TENSORS, safetensors.torch.save(tensors))
    files = [TENSORS, *(method.save_fitted_files(folder) if own else [])]
    record = {"format": MARKER, "version": VERSION, **key, "fit_seconds": seconds,
              "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attributes": plain, "own_format": own,
              "files": {name: safe_state.file_sha256(folder / name) for name in files}}
    atomic_write_text(folder / META, json.dumps(record, indent=2, ensure_ascii=False) + "\n")  # dict order kept
    return folder


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = read_json(path, required=("format", "method", "model", "tasks"), what="a fitted-method record")
    except FileFormatError as e:
        raise FittedFileError(f"{e}; {_advice(folder)}") from None
    if meta["format"] != MARKER:
        raise FittedFileError(f"{path}: not a fitted-method record (format {meta['format']!r}); {_advice(folder)}")
    if "version" not in meta:
        raise FittedFileError(f"{path}: a record of an earlier workbench version, whose fits are pickles (not "
                              f"loaded for safety); {_advice(folder)}")
    if meta["version"] != VERSION:
        raise FittedFileError(f"{path}: fit format version {meta['version']!r}, this workbench reads version "
                              f"{VERSION}; {_advice(folder)}")
    missing = [k for k in ("attributes", "own_format", "files", "fit_seconds") if k not in meta]
    if missing or not isinstance(meta["files"], dict) or not isinstance(meta["own_format"], list) \
            or type(meta["fit_seconds"]) not in (int, float):
        raise FittedFileError(f"{path}: incomplete record (needs 'attributes', 'own_format', 'files' and a numeric "
                              f"'fit_seconds'); {_advice(folder)}")
    return meta


def _verify_files(folder: Path, files: dict[str, Any]) -> None:
    """Every file the record lists exists inside `folder` with the bytes it was written with."""
    for name, digest in files.items():
        rel = PurePosixPath(name)
        path = folder / rel
        if rel.is_absolute() or ".." in rel.parts or not isinstance(digest, str):
            raise FittedFileError(f"{folder / META}: lists the file {name!r} outside the folder; {_advice(folder)}")
        if not path.is_file() or path.is_symlink():
            raise FittedFileError(f"{path}: missing (or not a plain file); the fit is incomplete; {_advice(folder)}")
        if safe_state.file_sha256(path) != digest:
            raise FittedFileError(f"{path}: changed since the fit was saved (damaged, truncated or replaced)"
                                  f"; {_advice(folder)}")


def load_fitted(method: Method, folder: str | os.PathLike, key: dict[str, Any]) -> float | None:
    """Restore a fit saved in `folder` into `method` and return its fit seconds; None when there is none.
    Raises :class:`FittedMismatch` naming the difference when it was made for another config, model or tasks, and
    :class:`FittedFileError` naming the file when one is damaged, edited or of an earlier version."""
    folder = Path(folder)
    _check_folder(folder)
    if not (folder / META).exists():
        return None
    meta = _read_record(folder)
    _check_key(folder, meta, key)
    _verify_files(folder, meta["files"])
    generic, own = _split(method)
    if meta["own_format"] != own or TENSORS not in meta["files"]:
        raise FittedFileError(f"{folder / META}: lists the attributes with files {meta['own_format']}, "
                              f"{type(method).__name__} writes {own}; {_advice(folder)}")
    advice = _advice(folder)
    try:
        state = safe_state.decode(meta["attributes"], read_tensors(folder / TENSORS, advice), folder / META)
        if own:
            state.update(method.load_fitted_files(folder, advice))
    except FileFormatError as e:
        raise FittedFileError(f"{e}{'' if advice in str(e) else '; ' + advice}") from None
    if sorted(state) != sorted(method.fitted_attributes):
        raise FittedFileError(f"{folder / META}: holds the attributes {sorted(state)}, {type(method).__name__} needs "
                              f"{sorted(method.fitted_attributes)}; {_advice(folder)}")
    for name in method.fitted_attributes:
        setattr(method, name, state[name])
    return float(meta["fit_seconds"])


def fit_or_load(method: Method, lm: Any, tasks: Sequence[Any], folder: str | os.PathLike | None
                ) -> tuple[float, bool]:
    """Fit `method` on `tasks` (Task objects) or, with `folder` holding a matching saved fit, reload it.
    Returns (fit seconds — of the original fit when reloaded, whether it was reloaded). Methods without
    ``fitted_attributes`` are always fitted and nothing is written."""
    key = fit_key(method, lm, [t.name for t in tasks], {t.name: t.fingerprint() for t in tasks})
    keep = folder is not None and bool(method.fitted_attributes)
    if keep:
        seconds = load_fitted(method, folder, key)
        if seconds is not None:
            method.fitted_for = getattr(lm, "fingerprint", None)  # the saved fit's model matched this one
            return seconds, True
    start = time.perf_counter()
    method.fit(lm, list(tasks))
    seconds = time.perf_counter() - start
    if keep:
        save_fitted(method, folder, key, seconds)
    return seconds, False
