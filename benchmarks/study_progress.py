"""What a (running or stopped) study folder has measured so far: accuracy with intervals and paired tests on the
tasks every method finished, and each method's wall time from its result files.

    .venv/bin/python benchmarks/study_progress.py [runs/study]

Reads ``<run>/eval/<method>/results/*.parquet`` (written by notebook 02 through ``evaluate_many``); prints the
category table (primary and label-restricted score, ± half-width of the 95 % item-level bootstrap interval), the
paired differences to zero-shot on the averages and categories, the significant per-task differences, and the wall
time per method (difference between consecutive result files in line-up order, from the last saved fit on).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pandas as pd

import workbench as wb
from workbench.cli.demo import summary_frame
from workbench.eval.compare import category_table

#: the line-up's folder names in its order (k-shot and BM25 carry their k)
LINE_UP = [r"zero-shot", r"\d+-shot", r"BM25_\d+-shot", r"static_TV", r"ELICIT", r"I2CL", r"LoRA", r"ATV"]


def line_up_folders(run: Path) -> list[str]:
    """The method folders of `run/eval` that hold results, in the line-up's order."""
    found = [p.name for p in (run / "eval").iterdir() if (p / "results").is_dir()] if (run / "eval").is_dir() else []
    return [f for pattern in LINE_UP for f in sorted(found) if re.fullmatch(pattern, f)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", default="runs/study")
    run = Path(parser.parse_args().run)
    folders = line_up_folders(run)
    if not folders:
        raise SystemExit(f"error: {run}/eval has no method results yet")
    files = {f: {p.stem: p for p in (run / "eval" / f / "results").glob("*.parquet")} for f in folders}
    finished = set.intersection(*(set(v) for v in files.values()))
    done = sorted(finished, key=lambda t: files[folders[-1]][t].stat().st_mtime)
    df = pd.concat([pd.read_parquet(files[f][t]).assign(method=f.replace("_", " ")) for f in folders for t in done],
                   ignore_index=True)
    print(f"{len(done)} tasks finished by all {len(folders)} methods: {done}")
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(summary_frame(category_table(df)).to_string())
    tests = wb.paired(df, baseline="zero-shot", n_perm=2000, n_boot=1000)
    cols = ["method", "score", "name", "difference", "ci_low", "ci_high", "p_holm", "significant"]
    print(tests[tests.level != "task"][cols].round(2).to_string(index=False))
    print(tests[(tests.level == "task") & tests.significant][cols[:-1] + ["harmful"]].round(1).to_string(index=False))
    fits = list((run / "fitted").glob("*/fitted.json"))  # a fit's record, written last
    prev = max(p.stat().st_mtime for p in fits) if fits else None
    wall = dict.fromkeys(folders, 0.0)
    for task in done:
        for f in folders:
            t = files[f][task].stat().st_mtime
            if prev is not None:
                wall[f] += t - prev
            prev = t
    print("wall time per method (min):", {f: round(s / 60, 1) for f, s in wall.items()},
          f"total {sum(wall.values()) / 60:.1f} min; cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
