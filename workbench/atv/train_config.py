"""``TrainConfig``: every setting a training run depends on, validated, recorded with every checkpoint and generator.

Defaults follow the paper / official code (see :mod:`workbench.atv.training`); ``keep_epoch`` chooses which epoch's
weights are kept (:mod:`workbench.atv.epoch_choice`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from workbench.atv.epoch_choice import check_keep_epoch
from workbench.atv.examples import GENERATOR_INPUTS
from workbench.core.interventions import POSITIONS, Injection, layer_spec
from workbench.tasks.prompts import PREFIXES, TRAIN_PREFIX

ENCODER_MODES = ("train", "eval", "frozen")
GENERATOR_PRECISIONS = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (recorded with every checkpoint)."""

    lr: float = 5e-4
    weight_decay: float = 1e-5
    epochs: int = 15
    scale: float = 1e-3  # λ
    n_train: int = 90  # items per task (each seen under the task's 3 templates)
    batch_size: int = 1  # items per optimizer step (global, over all processes)
    layers: Any = "all"
    positions: str = "last"
    seed: int = 42
    generator_input: str = "prompt"  # "prompt" (paper) or "official" ("Q: {input} \n A: ")
    prefix: str = TRAIN_PREFIX
    fast_path: bool = True  # prefix-cached loss (positions "last" only)
    cache_budget_mb: float = 2048.0  # memory for prefix caches kept across epochs
    valid_items: int = 8  # valid items per task for valid_loss / valid_acc (0: no validation)
    encoder_train_mode: str = "train"  # "train" (dropout on, official), "eval" (dropout off), "frozen"
    generator_precision: str = "float32"  # or mixed precision: the generator runs under autocast ("bfloat16"/"float16")
    keep_epoch: str = "last"  # or "best_valid_loss" / "best_valid_acc" (workbench.atv.epoch_choice)
    checkpoint_dir: str | None = None
    tasks: tuple[str, ...] = ()  # names of the tasks trained on (train_atv sets them)

    def validate(self) -> TrainConfig:
        def positive(name: str, integer: bool = False, zero_ok: bool = False) -> None:
            v = getattr(self, name)
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                kind = "int" if integer else "number"
                raise ValueError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite {kind}, "
                                 f"got {v!r}")

        positive("scale")
        positive("lr")
        positive("weight_decay", zero_ok=True)
        positive("cache_budget_mb", zero_ok=True)
        for name in ("epochs", "n_train", "batch_size"):
            positive(name, integer=True)
        positive("valid_items", integer=True, zero_ok=True)
        choices = {"positions": POSITIONS, "generator_input": GENERATOR_INPUTS, "encoder_train_mode": ENCODER_MODES,
                   "prefix": PREFIXES, "generator_precision": GENERATOR_PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; use one of {allowed}")
        check_keep_epoch(self.keep_epoch, self.valid_items)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        Injection(torch.zeros(1, 1), self.scale, self.layers, self.positions)  # layer-spec checks
        if isinstance(self.tasks, str) or not isinstance(self.tasks, (tuple, list)) or not all(
                isinstance(t, str) and t for t in self.tasks):
            raise ValueError(f"tasks must be a tuple of task names, got {self.tasks!r}")
        self.tasks = tuple(self.tasks)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = layer_spec(self.layers)
        d["tasks"] = list(self.tasks)
        return d
