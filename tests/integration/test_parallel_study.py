"""``python -m workbench study`` under ``torchrun --nproc_per_node 2`` (issue 24 §1): the small study on the embedded
models, run once in one process and once in two (gloo, one thread each, so the arithmetic is the same), gives the
same rows in every method's run folder and the same tables; the launch records its 2 processes and its stage time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.eval.runs import load_run

ARGV = ["study", "--small", "--n-test", "2", "--n-icl", "1", "--dtype", "float32"]  # float32: see test_study.py


def study(run: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "WORKBENCH_DIST_TIMEOUT": "600",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # --standalone: the OS picks a free port for the rendezvous
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [sys.executable])
    return subprocess.run([*launch, "-m", "workbench", *ARGV, "--run-dir", str(run)], env=env, capture_output=True,
                          text=True, timeout=1200, check=False)


def method_rows(run: Path) -> dict[str, pd.DataFrame]:
    folders = sorted(p for p in (run / "eval").iterdir() if (p / "config.json").is_file())
    return {p.name: load_run(p).drop(columns="latency") for p in folders}


@pytest.mark.embedded
def test_two_processes_give_the_single_process_study(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for run, n in ((one, 1), (two, 2)):
        done = study(run, n)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "study done" in done.stdout
    rows_one, rows_two = method_rows(one), method_rows(two)
    assert len(rows_one) == 8 and rows_one.keys() == rows_two.keys()
    for label, df in rows_one.items():
        pd.testing.assert_frame_equal(rows_two[label], df, obj=label)
        assert json.loads((two / "eval" / label / "config.json").read_text())["num_processes"] == 2
    for table in ("02_results.csv", "02_paired_vs_zero_shot.csv"):
        a, b = pd.read_csv(one / table), pd.read_csv(two / table)
        pd.testing.assert_frame_equal(b[[c for c in b if "latency" not in c.lower()]],
                                      a[[c for c in a if "latency" not in c.lower()]], obj=table)
    times = json.loads((two / "study_time.json").read_text())
    assert "fit_and_evaluate_2_processes" in times[-1]["seconds"]
