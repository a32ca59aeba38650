"""The resumable state of a training -- optimizer, random number generators, epoch, history -- without pickle.

A checkpoint's ``training_state.safetensors`` holds every tensor (the optimizer's per-parameter state, torch's RNG
state, numpy's Mersenne-Twister key, CUDA's RNG states where CUDA is in use) and ``training_state.json`` the rest
(the optimizer's param groups and any plain-number state, Python's RNG state as ints, the epoch and the history).
Reading either never runs code. Both are checked before anything is applied: a truncated or edited file raises
:class:`~workbench.core.files.FileFormatError` naming it. Restoring the state makes a resumed run bit-identical to an
uninterrupted one. :data:`OLD_STATE` (``training_state.pt``, a pickle of earlier versions) is never read.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.core.files import FileFormatError, atomic_write_json, read_json
from workbench.core.tensorfiles import read_tensors, write_tensors

TENSORS, RECORD = "training_state.safetensors", "training_state.json"
#: The pickle earlier versions wrote; a folder holding one is refused, never loaded.
OLD_STATE = "training_state.pt"
FORMAT = 1
ADVICE = ("the checkpoint is damaged or was edited: resume from another checkpoint folder or retrain "
          "without resume into a new one")


# --------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The state of torch's, Python's and numpy's generators (and CUDA's, where CUDA is in use)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_record(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    version, internal, gauss = state["python"]
    algorithm, key, pos, has_gauss, cached = state["numpy"]
    tensors["rng.torch"] = state["torch"]
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(key, dtype=np.int64))  # uint32 values, exactly
    for i, cuda in enumerate(state.get("cuda", [])):
        tensors[f"rng.cuda.{i}"] = cuda
    return {"python": [version, list(internal), gauss],
            "numpy": {"algorithm": algorithm, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "cuda": len(state.get("cuda", []))}


def _rng_from(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    python, numpy = record["python"], record["numpy"]
    version, internal, gauss = python
    if not (isinstance(internal, list) and all(isinstance(i, int) for i in internal)):
        raise ValueError("rng.python is not a list of ints")
    key = tensors["rng.numpy"].numpy()
    if key.min() < 0 or key.max() >= 2 ** 32:
        raise ValueError("rng.numpy holds values outside uint32")
    torch_state = tensors["rng.torch"]
    if torch_state.dtype != torch.uint8:
        raise ValueError(f"rng.torch is {torch_state.dtype}, not uint8")
    return {"torch": torch_state, "python": (version, tuple(internal), gauss),
            "numpy": (numpy["algorithm"], key.astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]),
            "cuda": [tensors[f"rng.cuda.{i}"] for i in range(int(record.get("cuda", 0)))]}


# --------------------------------------------------------------------------------------------- save
def save_training_state(folder: Path, optimizer: Any, epoch: int, history: list[dict]) -> None:
    """Write ``training_state.safetensors`` + ``training_state.json`` into `folder` (a folder being built by
    :func:`workbench.core.files.atomic_dir`): `optimizer`'s state, the RNG state now, `epoch` and `history`."""
    saved = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for pid, entries in saved["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{pid}.{name}"] = value
            else:
                state.setdefault(str(pid), {})[name] = value
    groups = []
    for i, group in enumerate(saved["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.param_groups.{i}.{key}"] = value
            else:
                plain[key] = value
        groups.append(plain)
    record = {"format": FORMAT, "epoch": epoch, "history": history, "rng": _rng_record(rng_state(), tensors),
              "optimizer": {"param_groups": groups, "state": state, "with_state": sorted(saved["state"])}}
    record["tensors"] = sorted(tensors)
    write_tensors(folder / TENSORS, tensors)
    atomic_write_json(folder / RECORD, record)


# --------------------------------------------------------------------------------------------- load
@dataclasses.dataclass
class TrainingState:
    """What :func:`load_training_state` read: the epoch done, the history so far, an optimizer state_dict, RNG."""

    folder: Path
    epoch: int
    history: list[dict]
    optimizer: dict[str, Any]
    rng: dict[str, Any]

    def apply(self, optimizer: Any) -> None:
        """Load the optimizer state into `optimizer` (built for the same parameters), then restore the RNG state."""
        where = f"{self.folder / TENSORS} and {self.folder / RECORD}"
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for pid, entries in self.optimizer["state"].items():
            for name, value in entries.items():
                fits = 0 <= pid < len(params) and (not isinstance(value, torch.Tensor) or value.dim() == 0
                                                   or value.shape == params[pid].shape)
                if not fits:
                    raise FileFormatError(f"{where}: optimizer state {pid}.{name} does not fit this generator's "
                                          f"parameters; {ADVICE}")
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
            raise FileFormatError(f"{where}: the optimizer state does not fit this generator's optimizer ({e}); "
                                  f"{ADVICE}") from None
        try:
            set_rng_state(self.rng)
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            raise FileFormatError(f"{where}: the random number generator state is damaged ({e}); {ADVICE}") from None


def _group(group: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}  # e.g. betas


def load_training_state(folder: str | Path) -> TrainingState:
    """Read and check the training state in `folder` (nothing is applied yet). A missing file raises
    FileNotFoundError; a truncated, edited or foreign one FileFormatError naming it."""
    folder = Path(folder)
    record_path = folder / RECORD
    record = read_json(record_path, ("format", "epoch", "history", "rng", "optimizer", "tensors"),
                       f"the {RECORD} that workbench.atv.checkpoints writes ({ADVICE})")
    tensors = read_tensors(folder / TENSORS, ADVICE)

    def bad(fault: str) -> FileFormatError:
        return FileFormatError(f"{record_path}: {fault}; {ADVICE}")

    if record["format"] != FORMAT:
        raise bad(f"format {record['format']!r} is not {FORMAT}, the one this version reads")
    epoch, history = record["epoch"], record["history"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise bad(f"epoch must be a positive int, got {epoch!r}")
    if not (isinstance(history, list) and len(history) <= epoch and all(isinstance(h, dict) for h in history)):
        raise bad(f"history must be a list of at most {epoch} rows (one per epoch), got {str(history)[:80]}")
    listed = record["tensors"]
    if not isinstance(listed, list) or sorted(tensors) != sorted(listed):
        missing = sorted(set(listed if isinstance(listed, list) else []) - set(tensors))
        extra = sorted(set(tensors) - set(listed if isinstance(listed, list) else []))
        raise FileFormatError(f"{folder / TENSORS} does not hold the tensors {RECORD} lists (missing {missing[:5]}, "
                              f"unexpected {extra[:5]}); the two files do not belong together; {ADVICE}")
    try:
        optimizer = _optimizer_from(record["optimizer"], tensors)
        rng = _rng_from(record["rng"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad(f"the optimizer or RNG record is damaged ({e!r})") from None
    return TrainingState(folder, epoch, history, optimizer, rng)


def _optimizer_from(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): {} for pid in record["with_state"]}
    for pid, entries in record["state"].items():
        state[int(pid)].update(entries)
    groups = [_group(g) for g in record["param_groups"]]
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind != "optimizer":
            continue
        part, index, name = rest.split(".", 2)
        if part == "state":
            state[int(index)][name] = value
        elif part == "param_groups":
            groups[int(index)][name] = value
        else:
            raise ValueError(f"unknown tensor {key!r}")
    return {"state": state, "param_groups": groups}
