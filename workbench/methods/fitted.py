"""Save and reload what a method learned in ``fit`` (LoRA weights, I2CL's context vectors and coefficients, static
and ELICIT vectors), so a killed study does not refit it.

A method lists the attributes ``fit`` sets in ``Method.fitted_attributes``; methods with nothing costly to keep
(zero-shot, k-shot, BM25, ATV whose generator is saved by its training) leave it empty and are simply refitted.
A folder holds ``fitted.pt`` (those attributes, ``torch.save``) and ``fitted.json`` (marker, the method's config,
the model, the training tasks, the fit time), both written atomically, ``fitted.pt`` first: a folder with a
``fitted.json`` is complete. Reloading checks config, model and tasks and refuses a folder written for other ones.
``fitted.pt`` is a pickle the workbench wrote itself; do not load one from elsewhere.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from workbench.core.files import atomic_write_bytes, atomic_write_json, read_json
from workbench.methods.base import Method

MARKER = "workbench-fitted-method"
STATE, META = "fitted.pt", "fitted.json"


class FittedMismatch(ValueError):
    """A saved fit was made with another method config, model or training tasks."""


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def fit_key(method: Method, lm: Any, tasks: Sequence[str]) -> dict[str, Any]:
    """What a saved fit must match to be reused: the method's settings (its config without the entries that report
    what fit learned, ``Method.fitted_config_keys``), the model, the training tasks."""
    settings = {k: v for k, v in method.config().items() if k not in method.fitted_config_keys}
    return _plain({"method": settings, "model": lm.describe(), "tasks": list(tasks)})


def _check_folder(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / META).exists()
                                                     and not (folder / STATE).exists())):
        raise ValueError(f"{str(folder)!r} exists and is not a fitted-method folder the workbench wrote; "
                         "choose another fit folder")


def save_fitted(method: Method, folder: str | os.PathLike, key: dict[str, Any], seconds: float) -> Path:
    """Write the method's fitted attributes and `key` (see :func:`fit_key`) into `folder`."""
    folder = Path(folder)
    _check_folder(folder)
    buffer = io.BytesIO()
    torch.save({name: getattr(method, name) for name in method.fitted_attributes}, buffer)
    atomic_write_bytes(folder / STATE, buffer.getvalue())
    atomic_write_json(folder / META, {"format": MARKER, **key, "fit_seconds": seconds,
                                      "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return folder


def load_fitted(method: Method, folder: str | os.PathLike, key: dict[str, Any]) -> float | None:
    """Restore a fit saved in `folder` into `method` and return its fit seconds; None when there is none.
    Raises :class:`FittedMismatch` naming the difference when it was made for another config, model or tasks."""
    folder = Path(folder)
    _check_folder(folder)
    if not (folder / META).exists():
        return None
    meta = read_json(folder / META, required=("format", "method", "model", "tasks"), what="fitted-method record")
    if meta["format"] != MARKER:
        raise ValueError(f"{folder / META}: not a fitted-method record (format {meta['format']!r})")
    for field in ("method", "model", "tasks"):
        if meta[field] != key[field]:
            raise FittedMismatch(f"{folder}: the saved fit has {field} {meta[field]!r}, this run has {key[field]!r}; "
                                 "use another fit folder (or delete this one to refit)")
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    missing = [name for name in method.fitted_attributes if name not in state]
    if missing:
        raise ValueError(f"{folder / STATE} lacks the fitted attributes {missing}; delete the folder to refit")
    for name in method.fitted_attributes:
        setattr(method, name, state[name])
    return float(meta.get("fit_seconds", 0.0))


def fit_or_load(method: Method, lm: Any, tasks: Sequence[Any], folder: str | os.PathLike | None
                ) -> tuple[float, bool]:
    """Fit `method` on `tasks` (Task objects) or, with `folder` holding a matching saved fit, reload it.
    Returns (fit seconds — of the original fit when reloaded, whether it was reloaded). Methods without
    ``fitted_attributes`` are always fitted and nothing is written."""
    key = fit_key(method, lm, [t.name for t in tasks])
    keep = folder is not None and bool(method.fitted_attributes)
    if keep:
        seconds = load_fitted(method, folder, key)
        if seconds is not None:
            return seconds, True
    start = time.perf_counter()
    method.fit(lm, list(tasks))
    seconds = time.perf_counter() - start
    if keep:
        save_fitted(method, folder, key, seconds)
    return seconds, False
