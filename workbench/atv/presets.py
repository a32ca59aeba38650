"""Training presets and ``python -m workbench train``.

``wb.presets["paper"]``: GPT-2 generator, Meta-Llama-3-8B (fp16, as the official code), all 20 in-domain tasks, the
paper's TrainConfig (needs a GPU and the hub). ``wb.presets["cpu-demo"]``: the embedded SmolLM2-135M-Instruct +
MiniLM-L6, four short-prompt in-domain tasks, a few epochs and a λ picked by a sweep, so the demo visibly learns
on 2 CPU cores in a few minutes.

    python -m workbench train --preset cpu-demo --run-dir runs/atv-demo [--epochs 3] [--resume]

writes ``<run-dir>/config.json``, ``history.csv`` (one row per epoch), ``checkpoints/`` (after every epoch; resume
from there) and the final ``generator/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.atv.training import TrainConfig


@dataclass(frozen=True)
class Preset:
    """A model, a small model, tasks and a TrainConfig that go together."""

    name: str
    model: str
    encoder: str
    tasks: tuple[str, ...]
    config: TrainConfig = field(default_factory=TrainConfig)
    dtype: str = "float32"
    description: str = ""

    def load(self, config: TrainConfig | None = None, bottleneck: int | None = None, lora_r: int | None = None) -> tuple:
        """(lm, generator, tasks) ready for :func:`workbench.train_atv` (the projection initialised from the seed)."""
        from workbench.atv.generator import ATVGenerator
        from workbench.core.encoders import load_encoder
        from workbench.core.models import load_model
        from workbench.tasks.registry import load_task

        cfg = config or self.config
        lm = load_model(self.model, dtype=getattr(torch, self.dtype))
        scratch = self.encoder.startswith("scratch:")
        encoder = load_encoder(self.encoder, tokenizer=lm.tokenizer if scratch else None, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        if lora_r:
            generator = ATVGenerator.light(encoder, lm, lora_r=lora_r, bottleneck=bottleneck or 64)
        else:
            generator = ATVGenerator(encoder, lm, bottleneck=bottleneck)
        return lm, generator, [load_task(t) for t in self.tasks]


class Presets(dict):
    """name -> Preset; an unknown name raises a KeyError listing the presets."""

    def __missing__(self, name: str) -> Preset:
        raise KeyError(f"unknown preset {name!r}; available presets: {', '.join(self)}")


def _in_domain() -> tuple[str, ...]:
    from workbench.tasks.registry import task_names

    return tuple(task_names("in_domain"))


#: λ for cpu-demo, from a sweep (2 epochs, 16 items/task: `python -m workbench train --preset cpu-demo --epochs 2
#: --n-train 16 --scale S`): valid loss / first-token acc after 2 epochs (before: 9.63 / 0.00) -- 1e-3: 9.41 / 0.00,
#: 1e-2: 6.92 / 0.00, 5e-2: 1.25 / 0.42, 2e-1: 1.15 / 0.47 (valid loss already rising in epoch 2). The paper's 1e-3
#: is far too small for MiniLM's states on SmolLM2's residual stream within a few epochs.
CPU_DEMO_SCALE = 0.05
#: The generator runs under bf16 autocast on cpu-demo (weights and the LLM stay float32): with the LLM's prefixes
#: cached, MiniLM's forward/backward is most of a step and bf16 halves it. Same curve as float32 (`python -m
#: workbench train --preset cpu-demo --generator-precision float32|bfloat16`): valid loss 1.237/0.882/0.798/0.749
#: vs 1.237/0.883/0.798/0.749, epochs 15.8 s vs 11 s.
presets: Presets = Presets(
    paper=Preset("paper", "meta-llama/Meta-Llama-3-8B", "gpt2", _in_domain(), TrainConfig(), dtype="float16",
                 description="the paper's setting: GPT-2 generator, Llama-3-8B (fp16), 20 in-domain tasks, 15 epochs"),
    **{"cpu-demo": Preset(
        "cpu-demo", "smollm2-135m", "minilm-l6",
        ("glue_sst2", "bbh_boolean_expressions", "ethics_justice", "crows_pairs"),
        TrainConfig(epochs=4, n_train=32, batch_size=8, scale=CPU_DEMO_SCALE, valid_items=8,
                    generator_precision="bfloat16"),
        description="embedded SmolLM2-135M + MiniLM-L6, 4 short-prompt tasks, 32 items each, 4 epochs, batch 8, "
                    "bf16-autocast generator")},
)


def get_preset(name: str) -> Preset:
    """The preset called `name` (ValueError listing the presets otherwise)."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(presets)}")
    return presets[name]

