"""``python -m workbench train``: train an ATV generator with a preset (:mod:`workbench.atv.presets`).

    python -m workbench train --preset cpu-demo --run-dir runs/atv-demo [--epochs 3] [--resume]

writes ``<run-dir>/config.json``, ``history.csv`` (one row per epoch), ``checkpoints/`` (after every epoch; resume
from there) and the final ``generator/``. Before any model is loaded the flags (threads, bottleneck, model and
small-model names, the TrainConfig fields) and the run folder are checked (not a file; earlier checkpoints need
``--resume``; ``--resume`` needs a checkpoint; a ``config.json``, ``history.csv`` or ``generator/`` another program
wrote is never replaced) and the folder is locked for the whole run (a second training on it fails at once, naming
the holder); problems are reported as ``error: …`` with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from workbench.atv.checkpoints import check_checkpoint_dir, check_resume_config, checkpoint_lock
from workbench.atv.epoch_choice import KEEP_EPOCHS
from workbench.atv.generator import ATVGenerator, is_checkpoint
from workbench.atv.presets import Preset, get_preset, presets
from workbench.atv.training import ENCODER_MODES, GENERATOR_PRECISIONS, TrainConfig, train_atv
from workbench.cli.preflight import check_encoder_name, check_model_name, check_output_dir, check_threads, set_threads
from workbench.core.checks import check_int
from workbench.tasks.registry import resolve_tasks

CHOICES = {"encoder_train_mode": ENCODER_MODES, "generator_precision": GENERATOR_PRECISIONS, "keep_epoch": KEEP_EPOCHS}
CHECKPOINTS = "checkpoints"
HISTORY = "history"  # <run-dir>/history.csv, one row per epoch


# --------------------------------------------------------------------------------------------- CLI
OVERRIDES = {  # flag -> (TrainConfig field, type)
    "--epochs": ("epochs", int), "--lr": ("lr", float), "--scale": ("scale", float), "--n-train": ("n_train", int),
    "--batch-size": ("batch_size", int), "--seed": ("seed", int), "--valid-items": ("valid_items", int),
    "--cache-budget-mb": ("cache_budget_mb", float), "--positions": ("positions", str),
    "--generator-input": ("generator_input", str), "--encoder-mode": ("encoder_train_mode", str),
    "--generator-precision": ("generator_precision", str), "--keep-epoch": ("keep_epoch", str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu-demo", help=f"one of: {', '.join(presets)}")
    parser.add_argument("--run-dir", default="runs/atv", help="where config, history, checkpoints and generator go")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints")
    parser.add_argument("--tasks", nargs="+", help="override the preset's tasks (domain-only training: a subset)")
    parser.add_argument("--model", help="override the preset's large model")
    parser.add_argument("--encoder", help="override the generator's source: a small model (e.g. minilm-l6, gpt2, "
                        "scratch:4x256) or self:K (the large model's own state after block K)")
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


def check_run_dir(run: Path, resume: bool) -> Path | None:
    """Before any model is loaded: `run` must be a folder (or not exist yet) whose checkpoints fit `resume`
    (:func:`workbench.atv.checkpoints.check_checkpoint_dir`), and whose ``config.json`` / ``generator/`` (if any)
    were written by an earlier run of this command. Returns the checkpoint to resume from (None for a fresh run).
    Errors are OSError / ValueError (``error: …``, exit code 2)."""
    check_output_dir(run, "--run-dir")
    last = check_checkpoint_dir(run / CHECKPOINTS, resume)
    if (run / "generator").exists() and not is_checkpoint(run / "generator"):
        raise FileExistsError(f"{str(run / 'generator')!r} exists and is not a generator this command wrote; "
                              f"choose another --run-dir")
    record = run / "config.json"
    ours = False
    if record.exists():
        try:
            ours = record.is_file() and "train_config" in json.loads(record.read_text())
        except (ValueError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{str(record)!r} exists and is not a record of this command; "
                                  "choose another --run-dir")
    history = run / f"{HISTORY}.csv"  # rewritten only in a folder of this command (its config.json beside it)
    if (history.exists() or history.is_symlink()) and not (ours and history.is_file()):
        raise FileExistsError(f"{str(history)!r} exists and is not the history of a run of this command (no "
                              "config.json of this command beside it); choose another --run-dir")
    return last


def check_inputs(args: argparse.Namespace, preset: Preset) -> None:
    """The flags that are not TrainConfig fields (those: ``TrainConfig.validate``), before any model loads."""
    check_threads(args.threads)
    if args.bottleneck is not None:
        check_int(args.bottleneck, "--bottleneck")
    check_model_name(preset.model, "--model" if args.model else f"the model of preset {preset.name!r}")
    check_encoder_name(preset.encoder, "--encoder" if args.encoder else f"the encoder of preset {preset.name!r}")


def planned(args: argparse.Namespace) -> tuple[Preset, TrainConfig]:
    """The preset and the checked TrainConfig (its tasks resolved to names) that these flags train with."""
    preset, config = build(args)
    return preset, dataclasses.replace(config, tasks=tuple(t.name for t in resolve_tasks(list(preset.tasks))))


def preflight(args: argparse.Namespace) -> tuple[Preset, TrainConfig, Path]:
    """Every check of a run of these flags that needs no model: the flags, the run folder, a resume's config."""
    preset, config = planned(args)
    check_inputs(args, preset)
    run = Path(args.run_dir)
    last = check_run_dir(run, args.resume)
    if last is not None:  # a resume with other settings fails before the models are loaded
        check_resume_config(ATVGenerator.read_meta(last / "generator").get("train_config", {}), config)
    return preset, config, run


def main(args: argparse.Namespace) -> int:
    preset, config, run = preflight(args)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch: one lock holder
    with checkpoint_lock(run / CHECKPOINTS) if main_process else contextlib.nullcontext():
        check_run_dir(run, args.resume)  # again, now that the folder is ours
        return train(args, preset, config, run)


def train(args: argparse.Namespace, preset: Preset, config: TrainConfig, run: Path) -> int:
    """Load the preset's models, train, write the run folder (its checks done by :func:`main`)."""
    from workbench.core.files import atomic_write_json, package_versions
    from workbench.ui.export import save_table

    set_threads(args.threads)
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

    try:
        df = train_atv(lm, generator, tasks, config, checkpoint_dir=run / CHECKPOINTS, resume=args.resume,
                       callback=show, progress=not args.quiet)
    except FloatingPointError as err:  # a diverging run (λ / lr too large): reported like any bad setting
        raise ValueError(str(err)) from err
    save_table(df, run, HISTORY)
    generator.save(run / "generator", train_config=config.to_dict(), preset=preset.name)
    print(f"before training: valid_loss {df.attrs['initial']['valid_loss']:.4f}, "
          f"valid_acc {df.attrs['initial']['valid_acc']:.3f}")
    print(df.to_string(index=False, float_format="%.4f"))
    print(f"prefix cache: {df.attrs['prefix_cache']}; generator saved to {run / 'generator'}")
    return 0
