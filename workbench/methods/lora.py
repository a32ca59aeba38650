"""LoRA baseline (paper §4.5 / B.2, the I2CL paper's setup): rank-8 adapters on the attention query and value
projections, trained on the same examples and loss as ATV.

* Targets (``lora_targets`` in :data:`workbench.core.architectures.ARCHITECTURES`): ``q_proj``/``v_proj`` where the
  architecture has separate projections (llama, mistral, qwen, gemma, phi); architectures with a fused projection
  get it whole (``c_attn`` for gpt2, ``query_key_value`` for gpt_neox, ``qkv_proj`` for phi3), which adapts the
  keys too.
* Training: :func:`workbench.atv.examples.training_examples` (90 train items per task x 3 templates, the same sample
  as ATV) and :func:`workbench.atv.examples.answer_loss` (teacher-forced cross-entropy on the answer tokens); AdamW,
  lr 4e-4 (the paper's change from 1e-3), r=8, alpha=32, dropout 0.05; epochs as ATV.
* The adapter is attached only during ``fit`` (peft's LoRA layers injected into ``lm.hf``) and, merged into the
  base weights, inside ``active(lm)``: evaluation then runs the plain model at the plain model's cost (an unmerged
  peft wrapper traced by nnsight made it ~7x slower than zero-shot). On exit every LoRA layer is replaced by its
  base module and the original weights are copied back, so the parameters and logits are exactly what they were.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from workbench.atv.examples import training_examples
from workbench.atv.loss import answer_loss
from workbench.core.architectures import architecture_of
from workbench.methods.base import Method
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

ADAPTER = "workbench_lora"


def default_epochs() -> int:
    """ATV's epoch count (``workbench.atv.training.TrainConfig().epochs`` when available, else the paper's 15)."""
    try:
        from workbench.atv.training import TrainConfig  # type: ignore[attr-defined]

        return int(TrainConfig().epochs)
    except (ImportError, AttributeError, TypeError):
        return 15


def remove_lora(model: torch.nn.Module) -> int:
    """Replace every peft LoRA layer of `model` by its base module; returns how many were removed."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    return len(found)


class LoRA(Method):
    """peft LoRA on the query/value projections, attached only inside ``active(lm)`` (see the module docstring)."""

    fitted_attributes = ("state", "targets", "trainable_parameters", "losses")
    fitted_config_keys = ("target_modules", "trainable_parameters")

    name = "lora"
    shares_model_weights = False  # the adapter changes the model: prompt bodies are cached per LoRA instance

    def __init__(
        self,
        r: int = 8,
        alpha: int = 32,
        dropout: float = 0.05,
        lr: float = 4e-4,
        epochs: int | None = None,
        n_train: int = 90,
        batch_size: int = 1,
        weight_decay: float = 1e-3,
        seed: int = 42,
    ):
        self.r, self.alpha, self.dropout, self.lr = r, alpha, dropout, lr
        self.epochs = default_epochs() if epochs is None else epochs
        self.n_train, self.batch_size, self.weight_decay, self.seed = n_train, batch_size, weight_decay, seed
        self.state: dict[str, torch.Tensor] | None = None  # trained LoRA weights (CPU), by parameter name
        self.targets: list[str] = []
        self.trainable_parameters = 0
        self.losses: list[float] = []  # mean training loss per epoch

    def lora_config(self, lm: LanguageModel) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(architecture_of(lm.hf).lora_targets), bias="none",
                          fan_in_fan_out=lm.hf.config.model_type == "gpt2")  # gpt2 uses Conv1D

    @contextlib.contextmanager
    def attached(self, lm: LanguageModel, train: bool = False) -> Iterator[list[torch.nn.Parameter]]:
        """Inject the adapter into ``lm.hf`` (loading trained weights if any); removed on exit, whatever happens."""
        torch.manual_seed(self.seed)  # reproducible initialisation of lora_A
        inject_adapter_in_model(self.lora_config(lm), lm.hf, adapter_name=ADAPTER)
        try:
            params = {n: p for n, p in lm.hf.named_parameters() if "lora_" in n}
            if self.state is not None:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(self.state[n].to(p.device, p.dtype))
            for p in params.values():
                p.requires_grad_(train)
            layers = [m for m in lm.hf.modules() if isinstance(m, LoraLayer)]
            for m in layers:
                m.train(train)  # LoRA dropout only while training; the base model stays in eval mode
            yield list(params.values())
        finally:
            remove_lora(lm.hf)
            lm.hf.eval()

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec) -> LoRA:
        """Train the adapter on `train_tasks` (names, Tasks or a list of them)."""
        examples = training_examples(resolve_tasks(train_tasks), n_train=self.n_train, seed=self.seed)
        prompts = [ex.prompt(lm) for ex in examples]
        targets = [ex.target for ex in examples]
        self.targets = list(architecture_of(lm.hf).lora_targets)
        rng = random.Random(self.seed)
        self.state, self.losses = None, []
        with self.attached(lm, train=True) as params:
            self.trainable_parameters = sum(p.numel() for p in params)
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            with torch.enable_grad():
                for _ in range(self.epochs):
                    order = rng.sample(range(len(examples)), len(examples))
                    losses = []
                    for start in range(0, len(order), self.batch_size):
                        rows = order[start:start + self.batch_size]
                        loss = answer_loss(lm, [prompts[i] for i in rows], [targets[i] for i in rows])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        losses.append(float(loss.detach()))
                    self.losses.append(sum(losses) / len(losses))
            self.state = {n: p.detach().cpu().clone() for n, p in lm.hf.named_parameters() if "lora_" in n}
        return self

    @contextlib.contextmanager
    def active(self, lm: LanguageModel) -> Iterator[None]:
        """The trained adapter merged into the base weights (``W + s·B·A``): evaluation costs what the plain model
        costs (no LoRA modules for nnsight to trace). The original weights are restored exactly on exit."""
        if self.state is None:
            raise RuntimeError("LoRA is not fitted: call fit(lm, in_domain_tasks) first")
        originals: list[tuple[torch.nn.Module, torch.Tensor]] = []
        try:
            with self.attached(lm, train=False):
                for layer in [m for m in lm.hf.modules() if isinstance(m, LoraLayer)]:
                    base = layer.get_base_layer()
                    originals.append((base, base.weight.detach().clone()))
                    layer.merge(adapter_names=[ADAPTER])
            yield  # the LoRA layers are gone; their base modules hold the merged weights
        finally:
            with torch.no_grad():
                for base, weight in originals:
                    base.weight.copy_(weight)

    def config(self) -> dict:
        return {"name": self.name, "r": self.r, "alpha": self.alpha, "dropout": self.dropout, "lr": self.lr,
                "epochs": self.epochs, "n_train": self.n_train, "batch_size": self.batch_size,
                "weight_decay": self.weight_decay, "optimizer": "AdamW", "seed": self.seed,
                "target_modules": self.targets, "trainable_parameters": self.trainable_parameters}
