"""Checks the commands run on their inputs before any model loads or notebook starts: thread counts, output folders,
model and small-model names, generator folders. Each raises ValueError / OSError naming the flag and the value, which
the dispatcher (:mod:`workbench.cli`) prints as one ``error: …`` line with exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench.core.checks import check_int


def check_threads(threads: int | None) -> int | None:
    """``--threads``: None (torch's default) or a positive int; every command refuses 0 and negative counts."""
    return None if threads is None else check_int(threads, "--threads")


def set_threads(threads: int | None) -> None:
    """Apply a checked ``--threads`` (None: leave torch's default)."""
    if check_threads(threads) is not None:
        torch.set_num_threads(threads)


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """`path` as a folder a command may create or write into: it is a folder or does not exist yet, and its nearest
    existing parent is a folder (not a file)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r} is a file, not a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    return path


def check_model_name(name: str, flag: str = "--model") -> str:
    """A large model `load_model` can look for: an embedded alias, a Hugging Face folder, a .gguf file or something
    shaped like a hub id (whether the hub has it is known only when it loads)."""
    from workbench.core.models import EMBEDDED_MODELS, resolve_source

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{flag} must be a model name, got {name!r}")
    if name not in EMBEDDED_MODELS:
        try:
            resolve_source(name, torch.float32)  # a path is checked; nothing is loaded for a folder or a hub id
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{flag}: {err}") from None
    return name


def check_encoder_name(name: str, flag: str = "--encoder") -> str:
    """A generator source `load_encoder` can build (:func:`workbench.core.encoders.check_source_name`)."""
    from workbench.core.encoders import check_source_name

    return check_source_name(name, flag)


def check_generator_dir(path: str | os.PathLike, flag: str = "--generator") -> Path:
    """A generator folder that training saved (its ``generator.json`` readable); the weights load later."""
    from workbench.atv.generator import ATVGenerator

    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{flag} {str(path)!r} {what}; give the generator/ folder that "
                                "`python -m workbench train` writes")
    try:
        ATVGenerator.read_meta(folder)  # FileNotFoundError / FileFormatError naming generator.json
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag}: {err}; give the generator/ folder that `python -m workbench train` "
                                "writes") from None
    return folder
