"""Per-architecture facts as data, one entry per ``model_type``: adding an architecture is one edit here.

Module contents:

- :class:`Architecture`: where the decoder blocks and the final norm are, what the attention/MLP submodules are
  called, which projections LoRA adapts (as the frozen large model, and as the trainable small model of
  ATV-Light), and a tiny config for tests built in code (:mod:`workbench.core.testing`).
- :data:`ARCHITECTURES`: ``model_type -> Architecture``; :func:`architecture_of` looks one up with a clear error.
- :func:`lora_parameter_count`: LoRA's trainable parameters on a large model, counted from module shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

_KV = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


@dataclass(frozen=True)
class Architecture:
    """What the workbench needs to know about one transformers ``model_type``."""

    layers: str  #: attribute path of the decoder-block ModuleList from the *ForCausalLM model
    attention: str = "self_attn"  #: attention submodule of a block
    mlp: str = "mlp"  #: MLP submodule of a block
    final_norm: str = "norm"  #: the norm before the unembedding, an attribute of the module holding the blocks
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  #: LoRA baseline targets (query/value projections)
    encoder_lora_targets: tuple[str, ...] | None = None  #: ATV-Light targets when used as the small model
    fan_in_fan_out: bool = False  #: Conv1D weights (GPT-2): peft needs fan_in_fan_out=True
    tiny: dict[str, Any] | None = field(default=None, hash=False)  #: config overrides for a tiny test model


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("model.layers", encoder_lora_targets=("q_proj", "v_proj"), tiny=_KV),
    "mistral": Architecture("model.layers", tiny=_KV),
    "mixtral": Architecture("model.layers"),
    "qwen2": Architecture("model.layers", tiny=_KV),
    "qwen3": Architecture("model.layers"),
    "gemma": Architecture("model.layers", tiny={**_KV, "head_dim": 8}),
    "gemma2": Architecture("model.layers", tiny={**_KV, "head_dim": 8}),
    "gemma3_text": Architecture("model.layers", tiny={**_KV, "head_dim": 8}),
    "gemma3": Architecture("model.language_model.layers"),
    "phi": Architecture("model.layers", final_norm="final_layernorm",
                        tiny=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)),
    "phi3": Architecture("model.layers", lora_targets=("qkv_proj",), tiny=_KV),
    "gpt2": Architecture("transformer.h", attention="attn", final_norm="ln_f", lora_targets=("c_attn",),
                         encoder_lora_targets=("c_attn",), fan_in_fan_out=True,
                         tiny=dict(n_embd=32, n_layer=4, n_head=4)),
    "gpt_neox": Architecture("gpt_neox.layers", attention="attention", final_norm="final_layer_norm",
                             lora_targets=("query_key_value",), encoder_lora_targets=("query_key_value",),
                             tiny=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=4)),
    # encoder-only small models (ATV's generator); no decoder blocks to steer
    "bert": Architecture("", encoder_lora_targets=("query", "value")),
    "roberta": Architecture("", encoder_lora_targets=("query", "value")),
}


def architecture_of(model_or_config: Any, role: str = "large model") -> Architecture:
    """The :class:`Architecture` of a model (or its config); ValueError naming the type and the known ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    known = sorted(k for k, a in ARCHITECTURES.items() if a.layers or role != "large model")
    if arch is None or (role == "large model" and not arch.layers):
        raise ValueError(
            f"unsupported {role} architecture {type(model_or_config).__name__} (model_type={model_type!r}); "
            f"known: {', '.join(known)}. Add an entry to workbench.core.architectures.ARCHITECTURES."
        )
    return arch


def hidden_size_of(config: Any) -> int:
    """The width of a model from its config (``hidden_size``, or GPT-2's ``n_embd``)."""
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))


def lora_parameter_count(lm: LanguageModel, r: int = 8) -> int:
    """Trainable parameters of rank-`r` LoRA on the large model's query/value projections (the LoRA baseline's
    targets), computed from the module shapes without touching the model."""
    targets = set(architecture_of(lm.hf).lora_targets)
    total = 0
    for name, module in lm.hf.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "weight"):
            w = module.weight
            total += r * (w.shape[0] + w.shape[1])
    return total
