"""Training checkpoints: ``epoch-NNN/`` folders (generator + optimizer + RNG + history), ``LATEST``, resume checks.

Module contents: :func:`save_checkpoint`, :func:`latest_checkpoint`, :func:`check_resume_config`, and the RNG
snapshot helpers that make a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.core.files import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from workbench.atv.generator import ATVGenerator
    from workbench.atv.training import TrainConfig

STATE, LATEST = "training_state.pt", "LATEST"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(directory: Path, generator: ATVGenerator, optimizer: Any, epoch: int, history: list[dict]) -> Path:
    """Atomically write ``epoch-NNN/`` (generator + optimizer + RNG + history), point ``LATEST`` at it, and remove
    older epoch folders."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"epoch-{epoch:03d}"
    with atomic_dir(target, owned=lambda d: (d / STATE).is_file(), what="checkpoint") as tmp:
        generator.save(tmp / "generator", epoch=epoch)
        torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "rng": rng_state(), "history": history},
                   tmp / STATE)
    atomic_write_text(directory / LATEST, target.name + "\n")
    for old in directory.glob("epoch-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The epoch folder ``LATEST`` names in `directory`, or None."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


def check_resume_config(saved: dict, config: TrainConfig) -> None:
    now = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
             if k not in ("epochs", "checkpoint_dir") and saved.get(k) != now[k]]
    if diffs:
        raise ValueError("cannot resume: the checkpoint was trained with another config (" + "; ".join(diffs) + ")")

