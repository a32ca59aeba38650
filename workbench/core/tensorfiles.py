"""Named tensors on disk as safetensors, read back with errors that name the file and say what to do.

safetensors holds raw tensors and a JSON header, so reading one never runs code (unlike a pickle). What can go wrong
is a truncated, edited or foreign file, or tensors that do not fit the module they are loaded into: both raise
:class:`~workbench.core.files.FileFormatError` (a ValueError) naming the file, the fault and `advice`, instead of a bare
``SafetensorError`` or a state_dict ``RuntimeError``.
"""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from workbench.core.files import FileFormatError

__all__ = ["check_weights", "load_weights", "read_tensors", "write_tensors"]


def _fault(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; expected a safetensors file")


def read_tensors(path: str | os.PathLike, advice: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path` (on the CPU). A missing file raises FileNotFoundError; a truncated
    or foreign one (a pickle, say) a FileFormatError naming it and ending with `advice`."""
    path = Path(path)
    _check_exists(path)
    try:
        return safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{path}: not a complete safetensors file ({_fault(e)}); {advice}") from None


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `tensors` (moved to the CPU, made contiguous) to the safetensors file `path`; returns the path. Callers
    write into a folder that :func:`workbench.core.files.atomic_dir` moves into place."""
    path = Path(path)
    safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return path


def load_weights(module: torch.nn.Module, path: str | os.PathLike, advice: str) -> None:
    """Load the weights in `path` into `module` (strict: the same names and shapes). A truncated file, a foreign one
    or tensors that do not fit raise FileFormatError naming `path` and ending with `advice`."""
    path = Path(path)
    _check_exists(path)
    try:
        safetensors.torch.load_model(module, str(path))
    except (SafetensorError, OSError) as e:
        raise FileFormatError(f"{path}: not a complete safetensors file ({_fault(e)}); {advice}") from None
    except (RuntimeError, ValueError, KeyError) as e:  # missing / unexpected names, shape mismatches
        raise FileFormatError(f"{path}: its tensors do not fit the {type(module).__name__} they are loaded into "
                              f"({_fault(e)}); {advice}") from None


def check_weights(module: torch.nn.Module, path: str | os.PathLike, advice: str) -> None:
    """Check, without loading any values, that `path` is a complete safetensors file holding exactly `module`'s
    tensors (names and shapes; a tensor shared under two names may be stored once): FileFormatError naming `path`
    and ending with `advice` otherwise. For checks before any work; :func:`load_weights` loads."""
    path = Path(path)
    _check_exists(path)
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{path}: not a complete safetensors file ({_fault(e)}); {advice}") from None
    expected = module.state_dict()
    stored = {(t.data_ptr(), tuple(t.shape)) for n, t in expected.items() if n in shapes}
    wrong = [f"{n} {shapes[n]} (expected {tuple(expected[n].shape)})" for n in shapes
             if n in expected and shapes[n] != tuple(expected[n].shape)]
    unexpected = sorted(set(shapes) - set(expected))
    missing = [n for n, t in expected.items() if n not in shapes and (t.data_ptr(), tuple(t.shape)) not in stored]
    if wrong or unexpected or missing:
        faults = [f"{what} {items[:3]}" for what, items in (("wrong shapes", wrong), ("unexpected", unexpected),
                                                             ("missing", missing)) if items]
        raise FileFormatError(f"{path}: its tensors do not fit the {type(module).__name__} they are for "
                              f"({'; '.join(faults)}); {advice}")
