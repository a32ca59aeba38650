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
* Saved fits (:mod:`workbench.methods.fitted`): the adapter is written as ``PeftModel.save_pretrained`` writes it,
  ``adapter/adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight``) and
  ``adapter/adapter_config.json``: ``PeftModel.from_pretrained(base_model, "<fit folder>/adapter")`` loads it too.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from workbench.atv.examples import training_examples
from workbench.atv.loss import answer_loss
from workbench.core.architectures import architecture_of
from workbench.core.checks import check_int, check_number, check_optional_int, check_seed
from workbench.core.files import FileFormatError, atomic_write_bytes, atomic_write_text
from workbench.core.placement import offloaded_blocks
from workbench.core.remote import require_local
from workbench.core.tensorfiles import read_tensors
from workbench.methods.base import Method
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

ADAPTER = "workbench_lora"
#: Subfolder of a fit folder holding the adapter, and the key prefix of ``PeftModel.save_pretrained``'s weights.
ADAPTER_DIR, PEFT_PREFIX = "adapter", "base_model.model."


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

    fitted_attributes = ("state", "peft_config", "targets", "trainable_parameters", "losses")
    own_format_attributes = ("state", "peft_config")  # peft's adapter files
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
        check_number(alpha, "alpha")
        self.r, self.alpha, self.lr = check_int(r, "r (the LoRA rank)"), alpha, check_number(lr, "lr")
        self.dropout = check_number(dropout, "dropout", strict=False, maximum=1.0, strict_max=True)
        self.epochs = default_epochs() if epochs is None else check_optional_int(epochs, "epochs (None: ATV's count)")
        self.n_train, self.batch_size = check_int(n_train, "n_train"), check_int(batch_size, "batch_size")
        self.weight_decay, self.seed = check_number(weight_decay, "weight_decay", strict=False), check_seed(seed)
        self.state: dict[str, torch.Tensor] | None = None  # trained weights (CPU): peft's adapter state dict
        self.peft_config: LoraConfig | None = None  # the configuration they were trained with
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
            if self.state is not None:
                loaded = set_peft_model_state_dict(lm.hf, self.state, adapter_name=ADAPTER)
                missing = [k for k in loaded.missing_keys if "lora_" in k]
                if loaded.unexpected_keys or missing:
                    raise ValueError(f"the LoRA weights do not fit this model: unexpected "
                                     f"{loaded.unexpected_keys[:3]}, missing {missing[:3]}")
            params = {n: p for n, p in lm.hf.named_parameters() if "lora_" in n}
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
        require_local(lm, "LoRA's fit")
        if offloaded_blocks(lm):
            raise ValueError(f"LoRA's fit trains adapters inside decoder blocks {offloaded_blocks(lm)}, which the "
                             "device_map offloaded (cpu/disk next to GPUs: their weights are not resident); give "
                             "every block a GPU (or the CPU alone) in the device_map, or quantize the model")
        examples = training_examples(resolve_tasks(train_tasks), n_train=self.n_train, seed=self.seed)
        prompts = [ex.prompt(lm) for ex in examples]
        targets = [ex.target for ex in examples]
        self.targets = list(architecture_of(lm.hf).lora_targets)
        rng = random.Random(self.seed)
        self.state, self.losses, self.peft_config = None, [], self.lora_config(lm)
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
            self.state = {n: p.detach().cpu().clone()
                          for n, p in get_peft_model_state_dict(lm.hf, adapter_name=ADAPTER).items()}
        return self

    def save_fitted_files(self, folder: Path) -> list[str]:
        """The adapter as peft's files: ``adapter/adapter_model.safetensors`` and ``adapter/adapter_config.json``."""
        if self.state is None or self.peft_config is None:
            raise RuntimeError("LoRA is not fitted: call fit(lm, in_domain_tasks) first")
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in self.peft_config.to_dict().items()}
        weights = {PEFT_PREFIX + k: v.contiguous() for k, v in self.state.items()}
        atomic_write_bytes(folder / ADAPTER_DIR / SAFETENSORS_WEIGHTS_NAME, safetensors.torch.save(weights))
        atomic_write_text(folder / ADAPTER_DIR / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return [f"{ADAPTER_DIR}/{SAFETENSORS_WEIGHTS_NAME}", f"{ADAPTER_DIR}/{CONFIG_NAME}"]

    def load_fitted_files(self, folder: Path, advice: str) -> dict[str, Any]:
        """``state`` and ``peft_config`` from the adapter files :meth:`save_fitted_files` wrote."""
        weights_path, config_dir = folder / ADAPTER_DIR / SAFETENSORS_WEIGHTS_NAME, folder / ADAPTER_DIR
        weights = read_tensors(weights_path, advice)
        foreign = [k for k in weights if not k.startswith(PEFT_PREFIX) or "lora_" not in k]
        if foreign or not weights:
            raise FileFormatError(f"{weights_path}: not LoRA weights as peft saves them (keys {foreign[:3]}); {advice}")
        try:
            config = LoraConfig.from_pretrained(str(config_dir))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise FileFormatError(f"{config_dir / CONFIG_NAME}: not a LoRA adapter configuration ({e}); {advice}") \
                from None
        if not isinstance(config, LoraConfig):
            raise FileFormatError(f"{config_dir / CONFIG_NAME}: a {type(config).__name__}, not a LoraConfig; {advice}")
        return {"state": {k[len(PEFT_PREFIX):]: v for k, v in weights.items()}, "peft_config": config}

    @contextlib.contextmanager
    def active(self, lm: LanguageModel) -> Iterator[None]:
        """The trained adapter merged into the base weights (``W + s·B·A``): evaluation costs what the plain model
        costs (no LoRA modules for nnsight to trace). The original weights are restored exactly on exit. On a
        quantized model the adapter stays unmerged (its modules run beside the 8/4-bit weights)."""
        if self.state is None:
            raise RuntimeError("LoRA is not fitted: call fit(lm, in_domain_tasks) first")
        if getattr(lm.hf, "hf_quantizer", None) is not None:  # 8/4-bit weights cannot hold W + s·B·A exactly
            with self.attached(lm, train=False):
                yield  # the adapter runs beside the quantized weights
            return
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
