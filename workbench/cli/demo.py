"""`python -m workbench demo`: the main job — notebooks 01→04 headless on the `cpu-demo` preset.

Writes `runs/<timestamp>/`: the executed notebooks and an HTML export of each, figures (HTML, and PNG when a
Chromium is available), tables (CSV) and the trained generator; prints where they are and the summary table.
``--quick`` only loads the embedded models and prints an unsteered vs steered answer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from workbench.cli.preflight import check_encoder_name, check_model_name, check_output_dir
from workbench.core.checks import check_int, check_seed

DEMO_PARAMETERS = {"model": "smollm2-135m", "encoder": "minilm-l6", "preset": "cpu-demo", "seed": 42}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_PARAMETERS["model"])
    parser.add_argument("--encoder", default=DEMO_PARAMETERS["encoder"])
    parser.add_argument("--seed", type=int, default=DEMO_PARAMETERS["seed"])
    parser.add_argument("--runs", default="runs", help="parent folder of the timestamped run directory")
    parser.add_argument("--n-test", type=int, default=None, help="test items per task (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="only print an unsteered vs steered answer")


def quick(model: str, encoder_name: str, seed: int) -> None:
    """Load the two models and show what a (random, untrained) generator's vectors do at three strengths."""
    import workbench as wb

    lm = wb.load_model(model)
    encoder = wb.load_encoder(encoder_name, lm=lm)
    print(f"large model: {lm.name} (L={lm.num_layers}, d={lm.hidden_size}); "
          f"small model: {encoder.name} (d_s={encoder.dim})")
    text = ("The movie was a delight from start to finish.\n"
            "Question: Is this sentence positive or negative? Answer positive or negative.\nA:")
    torch.manual_seed(seed)
    with torch.no_grad():
        expand = torch.nn.Linear(encoder.dim, lm.num_layers * lm.hidden_size)
        vectors = expand(encoder.encode([text])).view(1, lm.num_layers, lm.hidden_size)
    for scale in (0.0, 1.0, 5.0):
        answer = wb.generate(lm, [lm.render(text)], wb.Injection(vectors, scale=scale), max_new_tokens=12)[0]
        print(f"lambda={scale:<4} -> {answer!r}")


def summary_frame(tidy: pd.DataFrame) -> pd.DataFrame:
    """Methods x (category, score): the primary (loose first-token) accuracy and, next to it, the label-restricted
    accuracy (argmax over the task's label tokens: the skill once the answer format is forced), each as
    ``acc ±h`` with h the half-width of its 95 % item-level bootstrap interval when the table has one, from the tidy
    table notebook 02 writes (``method, category, accuracy, sd, label_accuracy`` [+ ``ci_low`` ...])."""
    order = list(tidy["method"].unique())
    tidy = tidy[tidy["category"] != "Unseen"].copy()  # the same as the unseen average
    for value, low, high in (("accuracy", "ci_low", "ci_high"), ("label_accuracy", "label_ci_low", "label_ci_high")):
        if value in tidy and {low, high} <= set(tidy.columns):
            half = (tidy[high] - tidy[low]) / 2
            tidy[value] = [f"{v:.1f} ±{h:.1f}" if pd.notna(h) else f"{v:.1f}" for v, h in zip(tidy[value], half)]
    values = {"accuracy": "primary", "label_accuracy": "label"}
    present = [c for c in values if c in tidy.columns]
    wide = tidy.pivot(index="method", columns="category", values=present).reindex(order)
    wide = wide.rename(columns=values, level=0).swaplevel(0, 1, axis=1)
    categories = list(dict.fromkeys(tidy["category"]))
    return wide.reindex(columns=[(c, v) for c in categories for v in ("primary", "label") if (c, v) in wide.columns])


def print_summary(run_dir: Path) -> None:
    """Print the accuracy table notebook 02 wrote (if it did): per category, the primary score and the
    label-restricted one side by side."""
    table = run_dir / "summary_categories.csv"
    if table.exists():
        wide = summary_frame(pd.read_csv(table))
        print("\naccuracy (%) on the same items, seed 42, ± half-width of the 95 % item-level bootstrap interval -- "
              "primary: loose first-token score (format and skill); label: argmax over the label tokens "
              "(skill alone); see README:")
        with pd.option_context("display.width", 200, "display.max_columns", 40, "display.precision", 1):
            print(wide.to_string())


def check_inputs(args: argparse.Namespace) -> None:
    """The flags, before a model loads or a notebook starts (ValueError / OSError: ``error: …``, exit code 2)."""
    check_model_name(args.model)
    check_encoder_name(args.encoder)
    check_seed(args.seed, "--seed")
    if args.n_test is not None:
        check_int(args.n_test, "--n-test")
    check_output_dir(args.runs, "--runs")


def main(args: argparse.Namespace) -> int:
    check_inputs(args)
    if args.quick:
        quick(args.model, args.encoder, args.seed)
        return 0
    from workbench.core.files import new_run_dir
    from workbench.ui.notebooks import DEMO_NOTEBOOKS, run_notebook

    run_dir = new_run_dir(args.runs)
    params = {"model": args.model, "encoder": args.encoder, "seed": args.seed}
    if args.n_test is not None:
        params["n_test"] = args.n_test
    print(f"demo: running notebooks 01-04 on the cpu-demo preset into {run_dir}")
    start = time.perf_counter()
    for name in DEMO_NOTEBOOKS:
        info = run_notebook(name, run_dir, params)
        print(f"  {info['notebook']}: {info['seconds']:.0f} s -> {info['html']}", flush=True)
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Everything is in {run_dir}/ "
          f"(executed notebooks + .html, figures, tables, generator/)")
    print_summary(run_dir)
    return 0
