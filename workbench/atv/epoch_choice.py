"""Which epoch's weights a training keeps: the last one (the paper, the default) or the best on validation.

``TrainConfig(keep_epoch="best_valid_loss" | "best_valid_acc")`` keeps the epoch with the lowest valid loss or the
highest valid first-token accuracy (ties: the earliest such epoch), so a generator whose valid loss rises after a few
epochs (as the CPU presets' does) is not saved past its best. :class:`EpochKeeper` follows the history during a run:
it holds a CPU copy of the best weights seen in this process and, after the last epoch, puts the kept epoch's weights
back into the generator. A resumed run whose best epoch came before the resume reads that epoch's weights from its
checkpoint folder, which :func:`workbench.atv.checkpoints.save_checkpoint` does not rotate away (``keep=``). The
kept epoch is recorded in ``gen.meta["kept_epoch"]`` (saved in ``generator.json``) and ``df.attrs["kept_epoch"]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

KEEP_EPOCHS = ("last", "best_valid_loss", "best_valid_acc")


def check_keep_epoch(keep: str, valid_items: int) -> None:
    """ValueError for an unknown choice, or a best-on-validation choice without validation items."""
    if keep not in KEEP_EPOCHS:
        raise ValueError(f"unknown keep_epoch {keep!r}; use one of {KEEP_EPOCHS}")
    if keep != "last" and not valid_items:
        raise ValueError(f"keep_epoch={keep!r} chooses the epoch on validation, but valid_items=0; "
                         "set valid_items > 0 or keep_epoch='last'")


def best_epoch(history: list[dict[str, Any]], keep: str) -> int | None:
    """The epoch `keep` chooses from per-epoch rows (``epoch``, ``valid_loss``, ``valid_acc``); None for no rows.
    Epochs whose score is NaN never win; if every score is NaN the last epoch is kept."""
    if not history:
        return None
    if keep == "last":
        return int(history[-1]["epoch"])
    column, sign = ("valid_loss", 1.0) if keep == "best_valid_loss" else ("valid_acc", -1.0)
    scored = [(sign * float(row[column]), int(row["epoch"])) for row in history
              if row.get(column) is not None and not math.isnan(float(row[column]))]
    return min(scored)[1] if scored else int(history[-1]["epoch"])


class EpochKeeper:
    """Follows a training's epochs and restores the kept one's weights at the end (see the module docstring)."""

    def __init__(self, keep: str, checkpoint_dir: Path | None) -> None:
        self.keep, self.checkpoint_dir = keep, checkpoint_dir
        self.epoch: int | None = None  # the epoch whose weights are held in `state`
        self.state: dict[str, torch.Tensor] | None = None

    def protected(self, history: list[dict[str, Any]]) -> int | None:
        """The epoch whose checkpoint folder must survive rotation (the best so far), or None for "last"."""
        return None if self.keep == "last" else best_epoch(history, self.keep)

    def after_epoch(self, generator: torch.nn.Module, history: list[dict[str, Any]]) -> None:
        """Copy the weights when the epoch just finished is the best so far."""
        if self.keep == "last":
            return
        best, latest = best_epoch(history, self.keep), int(history[-1]["epoch"])
        if best == latest:
            self.epoch = latest
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()}

    def restore(self, generator: torch.nn.Module, history: list[dict[str, Any]]) -> int | None:
        """Load the kept epoch's weights into `generator` (nothing to do for the last epoch); returns that epoch."""
        kept = best_epoch(history, self.keep)
        if kept is None or kept == int(history[-1]["epoch"]):
            return kept
        if self.epoch == kept and self.state is not None:
            generator.load_state_dict(self.state)
            return kept
        from workbench.atv.checkpoints import GENERATOR
        from workbench.core.tensorfiles import load_weights

        folder = None if self.checkpoint_dir is None else self.checkpoint_dir / f"epoch-{kept:03d}" / GENERATOR
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"keep_epoch={self.keep!r} keeps epoch {kept}, trained before this resume, but "
                                    f"its checkpoint {folder} is gone; resume into the folder that holds it or "
                                    "retrain")
        load_weights(generator, folder / "generator.safetensors",
                     "resume into a checkpoint folder whose epochs are intact, or retrain")
        return kept
