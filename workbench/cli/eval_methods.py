"""The methods of ``python -m workbench eval``: any of the standard line-up, built as the study builds them.

``--method NAME`` or ``--methods a,b,...`` (canonical names, :data:`~workbench.eval.compare.LINE_UP_NAMES`). The
line-up is :func:`workbench.eval.compare.study_line_up` (the study's and notebook 02's construction) for
``--budget``; static TV, ELICIT, I2CL and LoRA are fitted on ``--fit-tasks`` (default: the in-domain tasks among
``--tasks``) through :func:`workbench.eval.parallel.fit_once` — once, in process 0 of a launch — and saved in
``--fit-dir/<label>/`` (default ``--run-dir/fitted``), reloaded rather than refitted on a rerun
(:mod:`workbench.methods.fitted`). Everything but the generator and the fits is built and checked before the model
loads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.checks import check_int
from workbench.core.world import World, current_world, world_size
from workbench.eval.compare import LINE_UP_NAMES, prompt_item_limits, study_line_up
from workbench.eval.evaluate import evaluate_many
from workbench.eval.labels import label_folders
from workbench.eval.parallel import fit_once
from workbench.methods.base import Method
from workbench.tasks.registry import Task, resolve_tasks

#: the methods fitted on training tasks before evaluation (saved in --fit-dir)
FITTED = ("static-tv", "elicit", "i2cl", "lora")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=None,
                        help=f"several, comma separated ({','.join(LINE_UP_NAMES)}); results in --run-dir/<label>/")
    parser.add_argument("--budget", choices=("cpu-demo", "paper"), default="cpu-demo",
                        help="fitting budgets of static-tv, elicit, i2cl, lora, as the study's (default cpu-demo)")
    parser.add_argument("--fit-tasks", nargs="+", default=None,
                        help="tasks the fitted methods learn from (default: the in-domain tasks among --tasks)")
    parser.add_argument("--fit-dir", default=None, help="saved fits (default --run-dir/fitted; reloaded on a rerun)")
    parser.add_argument("--n-train", type=int, default=None, help="LoRA's training items per task (default: budget)")
    parser.add_argument("--epochs", type=int, default=None, help="I2CL / LoRA epochs (default: the budget's)")
    parser.add_argument("--n-icl", type=int, default=None,
                        help="with several methods: few-shot / bm25 on a seeded subset of this many of the items")


def _split(values: list[str]) -> list[str]:
    return [v.strip() for chunk in values for v in chunk.split(",") if v.strip()]


def method_names(args: argparse.Namespace) -> list[str]:
    """The canonical names asked for (``--methods``, else ``--method``), checked, duplicates removed."""
    names = list(dict.fromkeys(_split([args.methods]))) if args.methods else [args.method]
    bad = [n for n in names if n not in LINE_UP_NAMES]
    if bad or not names:
        raise ValueError(f"--methods: unknown method {(bad or [''])[0]!r}; use {','.join(LINE_UP_NAMES)}")
    generator = getattr(args, "generator", None)
    flag = f"--methods {args.methods}" if args.methods else f"--method {args.method}"
    if generator is not None and "atv" not in names:
        raise ValueError(f"--generator is read only by --method atv, not by {flag}")
    if "atv" in names and not generator:
        raise ValueError("--method atv needs --generator DIR (a checkpoint saved by training)")
    for name in ("n_train", "epochs", "n_icl"):
        if getattr(args, name, None) is not None:
            check_int(getattr(args, name), f"--{name.replace('_', '-')}")
    return names


@dataclass
class Plan:
    """What ``eval`` runs, checked before the model loads: the line-up without ATV (added once the model is
    loaded), the training tasks of the fitted methods, the fit folder and this process's world."""

    names: list[str]
    line_up: dict[str, Method]
    train: list[Task]
    fit_dir: Path | None
    world: World


def plan(args: argparse.Namespace, names: list[str], tasks: list[Task], parse_tasks: Any) -> Plan:
    """The :class:`Plan` of `args` (ValueError for fitted methods without training tasks, or several processes
    without ``--run-dir``). `parse_tasks` reads a ``--tasks``-style list."""
    train: list[Task] = []
    if any(n in FITTED for n in names):
        train = (resolve_tasks(parse_tasks(args.fit_tasks), args.data_dir) if args.fit_tasks
                 else [t for t in tasks if t.in_domain])
        if not train:
            raise ValueError(f"{', '.join(n for n in names if n in FITTED)} learn from training tasks and none of "
                             "--tasks is in-domain: give --fit-tasks (e.g. in_domain)")
    others = [n for n in names if n != "atv"]
    line_up = study_line_up(None, args.budget, others, icl_k=args.k, seed=args.seeds[0], epochs=args.epochs,
                            n_train=args.n_train) if others else {}
    fit_dir = args.fit_dir or (str(Path(args.run_dir) / "fitted") if args.run_dir else None)
    if world_size() > 1 and args.run_dir is None:
        raise ValueError(f"with {world_size()} processes, give --run-dir: each process writes its share there")
    return Plan(names, line_up, train, Path(fit_dir).expanduser() if fit_dir else None, current_world())


def ready_line_up(plan_: Plan, lm: Any, generator: str | None, allow_mismatch: bool) -> dict[str, Method]:
    """The line-up with ATV loaded and the fitted methods fitted (or reloaded from the fit folder)."""
    line_up = dict(plan_.line_up)
    if "atv" in plan_.names:
        from workbench.methods.atv import ATV

        line_up["ATV"] = ATV.load(generator, lm, allow_mismatch=allow_mismatch)
    if plan_.train:
        fit_once(line_up, lm, plan_.train, label_folders(plan_.fit_dir, line_up) if plan_.fit_dir else {})
    return line_up


def evaluate_line_up(lm: Any, line_up: dict[str, Method], tasks: list[Task], n_icl: int | None,
                     common: dict[str, Any]) -> pd.DataFrame:
    """Several methods on the same items (:func:`~workbench.eval.evaluate.evaluate_many`), their rows together."""
    frames = evaluate_many(lm, line_up, tasks, max_items=prompt_item_limits(line_up, n_icl), **common)
    return pd.concat(frames.values(), ignore_index=True)
