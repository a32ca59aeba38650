"""`python -m workbench ablations`: the reviewers' questions -- notebook 06 headless on an ablation budget.

Writes `runs/<timestamp>/`: the executed notebook and its HTML export, figures, tables (CSV) and `06_config.json`;
prints the tables' headline rows. The budget's settings are checked before the notebook starts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from workbench.cli.preflight import check_model_name, check_output_dir

NOTEBOOK = "06_ablations.ipynb"
#: (table, columns printed) of the run's headline rows
HEADLINES = {
    "06_sources": ["method", "mean", "ci_low", "ci_high", "label_mean", "label_sd", "label_ci_low", "label_ci_high",
                   "label_difference", "label_diff_ci_low", "label_diff_ci_high", "label_p_value"],
    "06_seeds": ["method", "mean", "sd", "ci_low", "ci_high", "label_mean", "label_sd", "label_ci_low",
                 "label_ci_high", "label_difference", "label_diff_ci_low", "label_diff_ci_high", "label_p_value"],
    "06_ceilings": ["task", "n_items", "majority", "zero_shot", "atv", "probe", "oracle", "probe_minus_atv",
                    "probe_minus_atv_low", "probe_minus_atv_high", "oracle_minus_atv", "oracle_minus_atv_low",
                    "oracle_minus_atv_high"],
    "06_data_scaling": ["method", "n_train", "accuracy", "ci_low", "ci_high", "label_accuracy", "label_ci_low",
                        "label_ci_high"],
    "06_task_scaling": ["method", "n_train_tasks", "accuracy", "ci_low", "ci_high", "label_accuracy",
                        "label_ci_low", "label_ci_high"],
    "06_perplexity": ["method", "steps", "ppl_unsteered", "ppl", "difference", "ci_low", "ci_high",
                      "p_value"],
    "06_off_target": ["method", "task", "score", "acc_unsteered", "acc_steered", "difference", "ci_low", "ci_high",
                      "p_value"],
    "06_training_costs": ["method", "n_train", "seed", "n_tasks", "seconds"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", default="cpu", help="tiny | cpu (the embedded default, 2 cores) | paper")
    parser.add_argument("--runs", default="runs", help="parent folder of the timestamped run directory")


def print_headlines(run_dir: Path) -> None:
    """The tables' headline columns, as written by the notebook."""
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 1):
        for name, columns in HEADLINES.items():
            path = run_dir / f"{name}.csv"
            if path.exists():
                table = pd.read_csv(path)
                print(f"\n{name}:\n{table[[c for c in columns if c in table.columns]].to_string(index=False)}")


def main(args: argparse.Namespace) -> int:
    from workbench.analysis.ablations import as_budget

    check_model_name(args.model)
    as_budget(args.budget)
    check_output_dir(args.runs, "--runs")
    from workbench.core.files import new_run_dir
    from workbench.ui.notebooks import run_notebook

    run_dir = new_run_dir(args.runs)
    print(f"ablations: running {NOTEBOOK} on the {args.budget!r} budget into {run_dir}", flush=True)
    start = time.perf_counter()
    info = run_notebook(NOTEBOOK, run_dir, {"model": args.model, "budget": args.budget})
    print(f"done in {time.perf_counter() - start:.0f} s -> {info['html']}")
    print_headlines(run_dir)
    return 0
