"""``python -m workbench study``: the paper's protocol on the embedded default, in one resumable command.

    python -m workbench study [--run-dir runs/study] [--n-test 30] [--n-icl 10] [--k 1] [--lora-n-train 6]
                              [--dtype bfloat16]

1. trains the ATV generator on all 20 in-domain tasks with the ``cpu-full`` preset into ``<run-dir>/train/``
   (:mod:`workbench.cli.train`; resumed from its per-epoch checkpoints);
2. runs notebook 02 headless into ``<run-dir>/`` with ``budget="cpu-demo"``: every baseline fitted on the same
   training items (LoRA on ``--lora-n-train`` items per task; fits saved in ``fitted/`` and reloaded on a rerun),
   all 8 methods evaluated on the 25 tasks × 9 variants on the same ``--n-test`` items per task (``eval/``, finished
   tasks skipped on a rerun); k-shot and BM25 prompts (k = ``--k``) on a seeded subset of ``--n-icl`` of those
   items, as they share no prompt bodies.
   The large model runs in ``--dtype`` for fitting and evaluation (default bfloat16, ~2x faster than float32 on a
   CPU with native bf16 -- on one without, several times slower: :mod:`workbench.core.hardware` warns, use float32
   there --, as the official code runs Llama-3-8B in float16; the cpu presets' injections, λ = 0.05, are far above
   bf16's rounding); the generator is trained with the model in float32 (its own bf16 autocast as the preset says);
3. prints the summary table and the significant paired differences, and appends the wall time of this invocation
   (with the machine's load) to ``study_time.json``.

Under ``accelerate launch --multi_gpu --num_processes N -m workbench study`` (or ``torchrun --nproc_per_node N``)
process 0 trains the generator and fits the baselines while the others wait, then all N processes evaluate their
share of the tasks' batches into ``eval/`` (:mod:`workbench.eval.parallel`: the same rows as one process), and process
0 runs notebook 02 alone, which finds every fit and result in place. Killed, it resumes with any number of processes.

``study.json`` records the configuration; a rerun with another one is refused before anything runs, naming the
setting, and so is a ``--run-dir`` the study did not make, a ``train/generator/`` that is not the one the study trains
(another preset, small model, architecture or TrainConfig field) and a training to resume that the train command
would refuse.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workbench.cli import train as train_cli
from workbench.cli.preflight import check_output_dir
from workbench.core.checks import check_seed
from workbench.core.files import atomic_write_json, package_versions, read_json
from workbench.core.world import World, current_world, outside_world, single_process_env

MARKER = "workbench-study"
PRESET = "cpu-full"
BUDGET = "cpu-demo"
DEFAULTS = {"n_test": 30, "n_icl": 10, "k": 1, "seed": 42, "dtype": "bfloat16", "lora_n_train": 6}
#: Lower bounds of the protocol (issue 14): the vector/fine-tuning methods and ATV need >= 30 items per task for an
#: interval worth reading, the prompt baselines >= 10.
MIN_ITEMS = {"n_test": 30, "n_icl": 10}
NOTEBOOK = "02_static_vs_adaptive.ipynb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/study", help="the study's folder (rerun the same to resume)")
    parser.add_argument("--n-test", type=int, default=DEFAULTS["n_test"], help="test items per task (>= 30)")
    parser.add_argument("--n-icl", type=int, default=DEFAULTS["n_icl"],
                        help="of those, items for k-shot and BM25 (>= 10)")
    parser.add_argument("--k", type=int, default=DEFAULTS["k"], help="demonstrations of k-shot / BM25 (<= 16)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--lora-n-train", type=int, default=DEFAULTS["lora_n_train"],
                        help="LoRA's training items per task (x 3 templates; the cpu-demo budget's is 8)")
    parser.add_argument("--dtype", default=DEFAULTS["dtype"], choices=("float32", "bfloat16"),
                        help="the large model's dtype for fitting and evaluation (training: the preset's float32); "
                             "bfloat16 is fast only on a CPU with native bf16 (avx512_bf16/amx_bf16)")
    parser.add_argument("--small", action="store_true",
                        help="for tests only: 2+1 tasks, 1 epoch, few items (below the protocol's minimums)")


def study_config(args: argparse.Namespace) -> dict[str, Any]:
    """What the study's results depend on; checked against ``study.json`` on a rerun."""
    from workbench.atv.presets import get_preset
    from workbench.tasks.registry import task_names

    if isinstance(args.lora_n_train, bool) or not isinstance(args.lora_n_train, int) or args.lora_n_train < 1:
        raise ValueError(f"--lora-n-train {args.lora_n_train!r}: give an int >= 1")
    for name, low in MIN_ITEMS.items():
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or (value < low and not args.small) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value!r}: the study needs an int >= {low}")
    if args.n_icl > args.n_test:
        raise ValueError(f"--n-icl {args.n_icl} is more than --n-test {args.n_test}: k-shot items are a subset")
    check_seed(args.seed, "--seed")
    if not 1 <= args.k <= 16:
        raise ValueError(f"--k {args.k!r}: use 1..16 demonstrations")
    preset = get_preset(PRESET)
    in_domain, unseen = list(preset.tasks), task_names("unseen")
    if args.small:
        in_domain, unseen = in_domain[:2], unseen[:1]
    return {"format": MARKER, "preset": PRESET, "model": preset.model, "encoder": preset.encoder,
            "budget": BUDGET, "n_test": args.n_test, "n_icl": args.n_icl, "k": args.k, "seed": args.seed,
            "dtype": args.dtype, "lora_n_train": args.lora_n_train,
            "in_domain": in_domain, "unseen": unseen, "small": bool(args.small)}


def open_study(run: Path, config: dict[str, Any]) -> None:
    """Create the study folder or check that it holds this configuration (before anything runs)."""
    record = run / "study.json"
    check_output_dir(run, "--run-dir")
    if record.exists():
        old = read_json(record, required=("format",), what="the study.json that `python -m workbench study` writes")
        diffs = [f"{key}={old.get(key)!r} (this run: {value!r})" for key, value in config.items()
                 if old.get(key) != value]
        if diffs:
            raise ValueError(f"--run-dir {str(run)!r} holds a study made with {', '.join(diffs)}; use another "
                             "--run-dir, or rerun with the same settings")
    elif run.exists() and any(run.iterdir()):
        raise FileExistsError(f"--run-dir {str(run)!r} exists and is not a study folder (no study.json); "
                              "choose another --run-dir")
    else:
        atomic_write_json(record, {**config, "packages": package_versions()})


def train_argv(folder: Path, config: dict[str, Any]) -> list[str]:
    """The flags of the ``python -m workbench train`` run that trains the study's generator into `folder`."""
    argv = ["--preset", PRESET, "--run-dir", str(folder), "--seed", str(config["seed"]), "--quiet"]
    if config["small"]:
        argv += ["--tasks", *config["in_domain"], "--epochs", "1", "--n-train", "4", "--valid-items", "2"]
    if (folder / train_cli.CHECKPOINTS).exists() and any((folder / train_cli.CHECKPOINTS).glob("epoch-*")):
        argv.append("--resume")
    return argv


def check_training(run: Path, config: dict[str, Any]) -> list[str] | None:
    """Before the long work: a generator already in ``run/train/generator`` must be the one this study trains
    (preset, small model, architecture and every TrainConfig field; ValueError naming what differs), and a training
    still to run must pass the train command's checks. Returns that training's flags (None: reuse the generator)."""
    import argparse

    from workbench.atv.generator import ATVGenerator, is_checkpoint

    folder = run / "train"
    parser = argparse.ArgumentParser(prog="python -m workbench train")
    train_cli.add_arguments(parser)
    argv = train_argv(folder, config)
    args = parser.parse_args(argv)
    if not is_checkpoint(folder / "generator"):
        train_cli.preflight(args)
        return argv
    preset, train_config = train_cli.planned(args)
    meta = ATVGenerator.read_meta(folder / "generator")
    want = {"preset": preset.name, "encoder": preset.encoder, "bottleneck": None, "lora": None,
            **{f"train_config.{k}": v for k, v in train_config.to_dict().items() if k != "checkpoint_dir"}}
    have = {**meta, **{f"train_config.{k}": v for k, v in (meta.get("train_config") or {}).items()}}
    diffs = [f"{key}: generator {have.get(key)!r}, study {value!r}" for key, value in want.items()
             if have.get(key) != value]
    if diffs:
        raise ValueError(f"{str(folder / 'generator')!r} is not the generator this study trains ({'; '.join(diffs)})"
                         f"; move {str(folder)!r} away to train it anew, or use another --run-dir")
    return None


def train_generator(run: Path, argv: list[str] | None) -> Path:
    """The cpu-full generator in ``run/train/generator``: trained (or resumed from its checkpoints) with `argv`,
    or reused when `argv` is None (:func:`check_training`)."""
    folder = run / "train"
    if argv is None:
        print(f"study: generator already trained ({folder / 'generator'})", flush=True)
        return folder / "generator"
    from workbench.atv.generator import is_checkpoint

    # a child process, so the memory of the training's prefix cache (~13 GB) is returned before notebook 02 runs
    code = subprocess.call([sys.executable, "-m", "workbench", "train", *argv], env=single_process_env())
    if code != 0 or not is_checkpoint(folder / "generator"):
        raise ChildProcessError(f"training the generator failed (exit code {code}); rerun the same command to "
                                f"resume from {folder / train_cli.CHECKPOINTS}")
    return folder / "generator"


def notebook_parameters(run: Path, config: dict[str, Any], generator: Path) -> dict[str, Any]:
    params = {"model": config["model"], "encoder": config["encoder"], "tasks": config["in_domain"],
              "unseen_tasks": config["unseen"], "n_test": config["n_test"], "n_icl": config["n_icl"],
              "k": config["k"], "seed": config["seed"], "budget": config["budget"], "generator_dir": str(generator),
              "dtype": config["dtype"], "n_train": config["lora_n_train"]}
    if config["small"]:
        params.update(epochs=1, n_train=2)
    return params


def evaluate_in_world(run: Path, config: dict[str, Any], generator: Path, world: World) -> None:
    """Every process of a launch: fit the line-up once (process 0) and evaluate it in shares into ``run/eval``,
    exactly as notebook 02 then asks for it (same line-up, tasks, items and folders), so the notebook only reloads."""
    import workbench as wb
    from workbench.eval.compare import compare, prompt_item_limits, study_line_up

    params = notebook_parameters(run, config, generator)
    lm = wb.load_model(params["model"], dtype=params["dtype"], device=world.device())
    line_up = study_line_up(wb.ATVGenerator.load(str(generator), lm), params["budget"], icl_k=params["k"],
                            seed=params["seed"], epochs=params.get("epochs"), n_train=params["n_train"])
    train_tasks = [wb.load_task(t) for t in params["tasks"]]
    eval_tasks = [*train_tasks, *[wb.load_task(t) for t in params["unseen_tasks"]]]
    compare(lm, line_up, train_tasks, eval_tasks, run_dir=run / "eval", fit_dir=run / "fitted",
            n_test=params["n_test"], seeds=(params["seed"],), max_items=prompt_item_limits(line_up, params["n_icl"]),
            progress=world.main)


def record_time(run: Path, stages: dict[str, float]) -> dict[str, Any]:
    """Append this invocation's wall time per stage (and the machine's state) to ``study_time.json``."""
    path = run / "study_time.json"
    history = read_json(path, what="study_time.json") if path.exists() else []
    entry = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": stages,
             "total_seconds": round(sum(stages.values()), 1), "cpus": os.cpu_count(),
             "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    atomic_write_json(path, [*history, entry])
    return entry


def print_summary(run: Path) -> None:
    import pandas as pd

    from workbench.cli.demo import print_summary as print_table

    print_table(run)
    tests = run / "02_paired_vs_zero_shot.csv"
    if tests.exists():
        df = pd.read_csv(tests)
        keep = df[df["significant"] & (df["level"] == "average")]
        print("\nsignificant paired differences to zero-shot (Holm, α = 0.05; in-domain / unseen averages):")
        cols = ["method", "score", "name", "difference", "ci_low", "ci_high", "p_holm"]
        print(keep[cols].round(3).to_string(index=False) if len(keep) else "  none")


def main(args: argparse.Namespace) -> int:
    from workbench.ui.notebooks import run_notebook

    config = study_config(args)
    run = Path(args.run_dir).expanduser().resolve()
    world = current_world()
    with world.step("open the study (process 0)"):
        if world.main:
            open_study(run, config)
            training = check_training(run, config)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    with world.step("train the generator (process 0)"):
        if world.main:
            train_generator(run, training)
    generator = run / "train" / "generator"
    stages["train_generator"] = round(time.perf_counter() - start, 1)
    if world.size > 1:
        start = time.perf_counter()
        evaluate_in_world(run, config, generator, world)
        stages[f"fit_and_evaluate_{world.size}_processes"] = round(time.perf_counter() - start, 1)
        if not world.main:
            return 0
    print(f"study: generator ready after {stages['train_generator']:.0f} s; running {NOTEBOOK} "
          f"({len(config['in_domain'])} + {len(config['unseen'])} tasks, {config['n_test']} items × 9 variants)",
          flush=True)
    start = time.perf_counter()
    with outside_world():  # the kernel runs alone (under a launch it finds every fit and result in place)
        info = run_notebook(NOTEBOOK, run, notebook_parameters(run, config, generator))
    stages["notebook_02"] = round(time.perf_counter() - start, 1)
    entry = record_time(run, stages)
    print(f"\nstudy done in {entry['total_seconds']:.0f} s ({stages}); notebook: {info.get('html')}")
    print_summary(run)
    return 0
