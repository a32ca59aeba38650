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

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .training import ENCODER_MODES, GENERATOR_PRECISIONS, TrainConfig, train_atv

CHOICES = {"encoder_train_mode": ENCODER_MODES, "generator_precision": GENERATOR_PRECISIONS}


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
        from .encoders import load_encoder
        from .generator import ATVGenerator
        from .models import load_model
        from .tasks import load_task

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
    from .tasks import task_names

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


# --------------------------------------------------------------------------------------------- CLI
OVERRIDES = {  # flag -> (TrainConfig field, type)
    "--epochs": ("epochs", int), "--lr": ("lr", float), "--scale": ("scale", float), "--n-train": ("n_train", int),
    "--batch-size": ("batch_size", int), "--seed": ("seed", int), "--valid-items": ("valid_items", int),
    "--cache-budget-mb": ("cache_budget_mb", float), "--positions": ("positions", str),
    "--generator-input": ("generator_input", str), "--encoder-mode": ("encoder_train_mode", str),
    "--generator-precision": ("generator_precision", str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu-demo", help=f"one of: {', '.join(presets)}")
    parser.add_argument("--run-dir", default="runs/atv", help="where config, history, checkpoints and generator go")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints")
    parser.add_argument("--tasks", nargs="+", help="override the preset's tasks (domain-only training: a subset)")
    parser.add_argument("--model", help="override the preset's large model")
    parser.add_argument("--encoder", help="override the small model (e.g. smollm2-135m, gpt2, scratch:4x256)")
    parser.add_argument("--light", action="store_true", help="ATV-Light: LoRA r=8 on the small model + bottleneck")
    parser.add_argument("--bottleneck", type=int, help="projection bottleneck width (ATV-Light default 64)")
    parser.add_argument("--naive", action="store_true", help="disable the prefix-cached fast path")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, help="torch CPU threads (use 1 when other jobs share the cores)")
    for flag, (name, kind) in OVERRIDES.items():
        extra = {"choices": CHOICES[name]} if name in CHOICES else {}
        parser.add_argument(flag, type=kind, dest=name, help=f"override TrainConfig.{name}", **extra)


def build(args: argparse.Namespace) -> tuple[Preset, TrainConfig]:
    preset = get_preset(args.preset)
    changes = {name: getattr(args, name) for name, _ in OVERRIDES.values() if getattr(args, name, None) is not None}
    if getattr(args, "naive", False):
        changes["fast_path"] = False
    overrides = {k: v for k, v in (("tasks", tuple(args.tasks) if args.tasks else None), ("model", args.model),
                                   ("encoder", args.encoder)) if v}
    preset = dataclasses.replace(preset, **overrides)
    return preset, dataclasses.replace(preset.config, **changes).validate()


def main(args: argparse.Namespace) -> int:
    from .models import load_model  # noqa: F401  (fail early on a broken install)
    from .reporting import atomic_write_json, package_versions, save_table

    preset, config = build(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    lm, generator, tasks = preset.load(config, bottleneck=args.bottleneck, lora_r=8 if args.light else None)
    report = generator.parameter_report(lm)
    record: dict[str, Any] = {"preset": preset.name, "model": lm.describe(), "encoder": generator.encoder.describe(),
                              "tasks": [t.name for t in tasks], "train_config": config.to_dict(),
                              "generator": generator.describe(), "trainable_parameters": report,
                              "package_versions": package_versions()}
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", record)
    print(f"preset {preset.name}: {lm.name} + {generator.encoder.name} on {len(tasks)} tasks; "
          f"trainable parameters {json.dumps(report)}", flush=True)

    def show(df):
        print(df.tail(1).to_string(index=False, header=len(df) == 1, float_format="%.4f"), flush=True)

    df = train_atv(lm, generator, tasks, config, checkpoint_dir=run / "checkpoints", resume=args.resume,
                   callback=show, progress=not args.quiet)
    save_table(df, run, "history")
    generator.save(run / "generator", train_config=config.to_dict(), preset=preset.name)
    print(f"before training: valid_loss {df.attrs['initial']['valid_loss']:.4f}, valid_acc {df.attrs['initial']['valid_acc']:.3f}")
    print(df.to_string(index=False, float_format="%.4f"))
    print(f"prefix cache: {df.attrs['prefix_cache']}; generator saved to {run / 'generator'}")
    return 0
