"""Method labels as folder names: ``evaluate_many`` files each method's results under ``run_dir/<label>/`` and
``compare(fit_dir=)`` its fit under ``fit_dir/<label>/`` (:func:`label_folder`, spaces become ``_``).

A label that is not a plain folder name is refused with a ValueError saying why (:func:`check_label`): ``""``,
``"."``, ``".."``, a leading ``.``, a path separator (``"../escaped"``, ``"TV/λ=0.1"``), NUL, or more than 255 bytes;
unicode, spaces and ``=`` are kept. Two labels that would share a folder (``"static TV"`` and ``"static_TV"``, or
labels differing only in case) are refused by :func:`label_folders`. Labels only matter where they name folders: an
evaluation without ``run_dir`` takes any string.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_SEPARATORS = ("/", "\\", "\0")


def check_label(label: object) -> str:
    """`label` if it can name a folder of its own (:func:`label_folder`), else ValueError saying why.

    Refused: a non-string, an empty label, one starting with ``.`` (``.``, ``..``, a hidden folder), one holding a
    path separator (``/``, ``\\``) or NUL, one longer than a folder name may be. Anything else (unicode, ``=``...) is
    kept as given.
    """
    if not isinstance(label, str):
        fault = f"is a {type(label).__name__}, not a string"
    elif not label.strip():
        fault = "is empty"
    elif label.startswith("."):
        fault = "starts with '.' (it would be '.', '..' or a hidden folder)"
    elif any(c in label for c in _SEPARATORS):
        fault = f"contains {next(c for c in _SEPARATORS if c in label)!r}, a path separator"
    elif len(label.replace(" ", "_").encode("utf-8")) > 255:
        fault = "is longer than a folder name may be (255 bytes)"
    else:
        return label
    raise ValueError(f"method label {label!r} {fault}; a label that names a results or fit folder must be a plain "
                     f"folder name (unicode, spaces and '=' are fine: e.g. 'TV λ=0.1' rather than 'TV/λ=0.1')")


def label_folder(root: str | os.PathLike, label: str) -> Path:
    """The folder of one method's label under `root` (``"static TV"`` -> ``root/static_TV``): evaluation results
    (``evaluate_many``) and saved fits (``compare(fit_dir=)``) are filed the same way. A label that is not a plain
    folder name (``"../x"``, ``"TV/λ=0.1"``, ``""``) raises ValueError (:func:`check_label`)."""
    return Path(root) / check_label(label).replace(" ", "_")


def label_folders(root: str | os.PathLike, labels: Iterable[str]) -> dict[str, Path]:
    """``{label: label_folder(root, label)}``; ValueError if two labels would share a folder (``"static TV"`` and
    ``"static_TV"``, or names that differ only in case: one folder on macOS and Windows)."""
    out: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for label in labels:
        path = label_folder(root, label)
        other = seen.setdefault(path.name.casefold(), label)
        if other != label:
            raise ValueError(f"method labels {other!r} and {label!r} would share the folder {str(path)!r}; "
                             f"rename one of them")
        out[label] = path
    return out
