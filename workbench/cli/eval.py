"""`python -m workbench eval`: evaluate a prompting baseline on tasks, write a run directory, print the tables.

    python -m workbench eval --method zero-shot --tasks in_domain --n-test 20 --run-dir runs/x
    python -m workbench eval --method bm25 --k 16 --tasks glue_sst2,glue_cola --seeds 42 10 100
    python -m workbench eval --methods zero-shot,static-tv,lora --tasks glue_sst2,glue_cola --run-dir runs/y
    accelerate launch --multi_gpu --num_processes 2 -m workbench eval --methods ... --run-dir runs/y

Any method of the standard line-up (:mod:`workbench.cli.eval_methods`: fitted as the study fits them); one method
writes its run folder into ``--run-dir``, several ``--run-dir/<label>/`` each. Under a launcher the processes share
the work and process 0 merges it into the same folders (:mod:`workbench.eval.parallel`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd
import torch

from workbench.cli import eval_methods
from workbench.cli.preflight import check_generator_dir, check_model_name, check_output_dir, check_threads, set_threads
from workbench.core.checks import check_int
from workbench.core.models import load_model
from workbench.core.placement import check_placement, parse_device_map
from workbench.core.remote import preflight
from workbench.eval.efficiency import efficiency_table
from workbench.eval.evaluate import check_n_test, check_seeds, evaluate
from workbench.eval.tables import summarize, tables_like_paper
from workbench.methods.base import Method
from workbench.methods.names import method_class
from workbench.methods.prompting import FewShot
from workbench.tasks.prompts import variants
from workbench.tasks.registry import resolve_tasks

#: canonical names (workbench.methods.names) of the methods this command builds without fitting
METHODS = ("zero-shot", "few-shot", "bm25", "atv")


def make_method(name: str, k: int = 16) -> Method:
    """The prompting baseline called `name` (one of :data:`METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {METHODS}")
    if name == "atv":
        raise ValueError("--method atv needs --generator DIR (a checkpoint saved by training)")
    cls = method_class(name)
    return cls(k=k) if issubclass(cls, FewShot) else cls()


def _split(values: list[str]) -> list[str]:
    return [v.strip() for chunk in values for v in chunk.split(",") if v.strip()]


def parse_tasks(values: list[str]) -> Any:
    """A group name ("in_domain", "unseen", "all", "extra") or a list of task names (comma or space separated)."""
    names = _split(values)
    return names[0] if len(names) == 1 else names


def parse_n_test(value: str) -> int | None:
    if value.lower() in ("all", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--n-test must be a positive int or 'all', got {value!r}") from None


def parse_templates(values: list[str]) -> Any:
    items = _split(values)
    if items == ["all"]:
        return "all"
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ValueError(f"--templates must be 'all' or template indices 0-2, got {' '.join(values)!r}") from None


def parse_prefixes(values: list[str]) -> Any:
    items = _split(values)
    return "all" if items == ["all"] else items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=eval_methods.LINE_UP_NAMES, default="zero-shot",
                        help="one method of the standard line-up (several: --methods)")
    eval_methods.add_arguments(parser)
    parser.add_argument("--generator", default=None, help="with --method atv: a generator folder (train's generator/)")
    parser.add_argument("--allow-fingerprint-mismatch", action="store_true",
                        help="with --generator: use it although it was made for a large model of the same shape with "
                             "other weights (by default refused, naming both fingerprints)")
    parser.add_argument("--k", type=int, default=16, help="demonstrations for few-shot / bm25 (default 16)")
    parser.add_argument("--tasks", nargs="+", default=["in_domain"],
                        help="in_domain | unseen | all | extra, or task names (comma/space separated)")
    parser.add_argument("--n-test", type=parse_n_test, default=100, help="test items per task and seed, or 'all'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="evaluation seeds (paper: 42 10 100)")
    parser.add_argument("--templates", nargs="+", default=["all"], help="'all' or template indices, e.g. 0 or 0,1")
    parser.add_argument("--prefixes", nargs="+", default=["all"],
                        help="'all' or answer prefixes, comma separated, e.g. 'A:,The answer is'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m", help="embedded alias, HF id, folder or .gguf")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the model loads)")
    parser.add_argument("--remote", action="store_true",
                        help="run the model on NDIF (a hub id NDIF hosts; key: --ndif-api-key or $NDIF_API_KEY)")
    parser.add_argument("--ndif-api-key", default=None,
                        help="with --remote (default: $NDIF_API_KEY or nnsight's config)")
    parser.add_argument("--device-map", default=None, help="auto, balanced, sequential or a JSON {module: device}")
    parser.add_argument("--quantization", default=None, help="8bit or 4bit (bitsandbytes, CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (use 1 on a busy machine: oversubscribed threads slow CPU runs badly)")
    parser.add_argument("--data-dir", default=None, help="task folder (default: $ATV_DATA_DIR or the repo's data)")
    parser.add_argument("--run-dir", default=None, help="write results/config here; rerunning resumes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-cache", action="store_true",
                        help="run every variant as a whole forward pass (default: shared prompt bodies computed once)")


def print_tables(df: pd.DataFrame, out: Any = None) -> None:
    """The paper-style tables and the efficiency row of a result (to `out`, default stdout)."""
    out = sys.stdout if out is None else out
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        tables = tables_like_paper(summarize(df))
        if "correct_loose" in df:
            loose = tables_like_paper(summarize(df, loose=True))
            tables.update({f"{k} (loose: whitespace-insensitive)": v for k, v in loose.items()})
        for name, table in tables.items():
            print(f"\n== {name} ==", file=out)
            print(table.to_string(), file=out)
        print("\n== efficiency ==", file=out)
        print(efficiency_table(df).to_string(), file=out)


def available_devices() -> list[str]:
    """Devices torch can use in this process: ``cpu``, then ``cuda:i`` / ``xpu:i`` / ``mps`` when present."""
    out = ["cpu"]
    for kind in ("cuda", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            out += [f"{kind}:{i}" for i in range(backend.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def check_device(name: str | None) -> str | None:
    """`name` if torch can place a model there (None = where the model loads), else ValueError listing what can."""
    if name is None:
        return None
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device name; available here: {', '.join(available)}") from None
    if device.type == "cpu":
        return name
    present = [d for d in available if d.split(":")[0] == device.type]
    if not present:
        raise ValueError(f"--device {name!r}: torch {torch.__version__} sees no {device.type} device on this machine; "
                         f"available here: {', '.join(available)}")
    if device.index is not None and f"{device.type}:{device.index}" not in present:
        raise ValueError(f"--device {name!r}: there is no {device.type} device {device.index}; "
                         f"available here: {', '.join(available)}")
    return name


def main(args: argparse.Namespace) -> int:
    """Check every input before loading the model; bad input raises ValueError (the dispatcher prints ``error:``)."""
    names = eval_methods.method_names(args)
    check_int(args.k, "--k (number of demonstrations)")
    if "atv" in names:
        check_generator_dir(args.generator)
    templates, prefixes = parse_templates(args.templates), parse_prefixes(args.prefixes)
    variants(templates, prefixes)  # fail on bad inputs before loading the model
    check_n_test(args.n_test)
    check_seeds(args.seeds)
    check_int(args.batch_size, "--batch-size")
    check_device(args.device)
    check_threads(args.threads)
    check_model_name(args.model)
    device_map = parse_device_map(args.device_map)
    check_placement(args.remote, args.device, device_map, args.quantization)
    if args.remote:
        preflight(args.model, args.ndif_api_key)  # no key, offline, not hosted: said before any work
    if args.run_dir is not None:
        check_output_dir(args.run_dir, "--run-dir")
    if args.fit_dir is not None:
        check_output_dir(args.fit_dir, "--fit-dir")
    tasks = resolve_tasks(parse_tasks(args.tasks), args.data_dir)
    plan = eval_methods.plan(args, names, tasks, parse_tasks)
    set_threads(args.threads)
    # under a launch each process takes its own GPU, unless the model is remote or placed by a device_map
    placed = args.remote or device_map is not None
    lm = load_model(args.model, device=args.device or (None if placed else plan.world.device()), remote=args.remote,
                    api_key=args.ndif_api_key, device_map=device_map, quantization=args.quantization)
    line_up = eval_methods.ready_line_up(plan, lm, args.generator, args.allow_fingerprint_mismatch)
    common = dict(n_test=args.n_test, templates=templates, prefixes=prefixes, seeds=args.seeds,
                  batch_size=args.batch_size, run_dir=args.run_dir, data_dir=args.data_dir,
                  progress=not args.no_progress and plan.world.main, cache=not args.no_cache)
    if len(line_up) == 1:
        df = evaluate(lm, next(iter(line_up.values())), tasks, **common)
    else:
        df = eval_methods.evaluate_line_up(lm, line_up, tasks, args.n_icl, common)
    if plan.world.main:
        print_tables(df)
        if args.run_dir:
            print(f"\nresults in {args.run_dir}")
    return 0
