"""``python -m workbench train``: train an ATV generator with a preset (:mod:`workbench.atv.presets`).

    python -m workbench train --preset cpu-demo --run-dir runs/atv-demo [--epochs 3] [--resume]

writes ``<run-dir>/config.json``, ``history.csv`` (one row per epoch), ``checkpoints/`` (after every epoch; resume
from there) and the final ``generator/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from workbench.atv.presets import Preset, get_preset, presets
from workbench.atv.training import ENCODER_MODES, GENERATOR_PRECISIONS, TrainConfig, train_atv

CHOICES = {"encoder_train_mode": ENCODER_MODES, "generator_precision": GENERATOR_PRECISIONS}


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
    from workbench.core.files import atomic_write_json, package_versions
    from workbench.core.models import load_model  # noqa: F401  (fail early on a broken install)
    from workbench.ui.export import save_table

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
