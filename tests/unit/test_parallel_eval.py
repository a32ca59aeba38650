"""Data-parallel evaluation (workbench.eval.parallel): 2-3 CPU processes (gloo, started by torchrun as in
test_distributed.py) give the single-process run folders — same rows, same order, the same float32 logits — each
process computing only its share; a failing or killed process fails the launch with its error; a launch killed
under 2 processes resumes under 3 reusing the units already written. Plus the pure unit splitting and balancing.

This file is also the worker: ``torchrun --standalone --nproc_per_node N tests/unit/test_parallel_eval.py OUT MODE``
(MODE: ok, crash, kill). Every row carries the SHA-256 of its logits (``logits_sha``, added by a patched
``batch_rows``), so equal rows mean bit-identical logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import workbench.eval.evaluate as ev
from workbench.eval.units import Batch, Unit, base_units, check_world_size, method_batches, share_out, unit_costs

HERE = Path(__file__).parent
LABELS = ("zero-shot", "1-shot", "static TV")
PROTOCOL = {"n_test": 6, "batch_size": 2, "seeds": (42,), "progress": False, "max_items": {"1-shot": 3}}
UNITS = 6  # 2 tasks x 3 batches of 2 items


def instrument(out: Path | None, rank: int) -> None:
    """Rows get the SHA-256 of their logits; with `out`, each evaluated batch is logged per process."""
    rows_of = ev.batch_rows

    def batch_rows(lm, method, task, batch, answers):
        rows = rows_of(lm, method, task, batch, answers)
        for j, row in enumerate(rows):
            row["logits_sha"] = hashlib.sha256(batch.logits[j].float().numpy().tobytes()).hexdigest()
        if out is not None:
            with open(out / f"computed-r{rank}.jsonl", "a") as f:
                for row in rows:
                    f.write(json.dumps([method.name, task.name, row["item"], row["template"], row["prefix"]]) + "\n")
        return rows

    ev.batch_rows = batch_rows


def run(out: Path, mode: str = "ok") -> None:
    """Fit (static TV: once, process 0) and evaluate three methods on two toy tasks into `out`."""
    from toy_runs import toy_lm, toy_tasks

    from workbench.eval.compare import compare
    from workbench.methods import FewShot, StaticTaskVector, ZeroShot

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))

    class Fragile(FewShot):  # the config of FewShot: its units are reused by a plain FewShot run
        def prepare(self, lm, task, items, texts, seed=42):
            if rank == 1:  # after process 1 wrote its zero-shot units (methods run in order within a task)
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("process 1 failed on purpose")
            return super().prepare(lm, task, items, texts, seed)

    instrument(out, rank)
    lm, tasks = toy_lm(), toy_tasks()
    methods = {"zero-shot": ZeroShot(), "1-shot": Fragile(k=1) if mode != "ok" else FewShot(k=1),
               "static TV": StaticTaskVector(k=2, n_prompts=2, scale=0.5)}
    compare(lm, methods, tasks, tasks, run_dir=out / "eval", fit_dir=out / "fitted", **PROTOCOL)


def launch(out: Path, n: int, mode: str = "ok") -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE),
           "WORKBENCH_DIST_TIMEOUT": "240"}
    # --standalone: the OS picks a free port for the rendezvous
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__,
           str(out), mode]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)


def rows(root: Path, label: str) -> pd.DataFrame:
    from workbench.eval.runs import load_run

    return load_run(folder(root, label)).drop(columns="latency")


def folder(root: Path, label: str) -> Path:
    from workbench.eval.labels import label_folder

    return label_folder(root / "eval", label)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run (in this process, instrumented the same way)."""
    out = tmp_path_factory.mktemp("one")
    original = ev.batch_rows
    try:
        run(out)
    finally:
        ev.batch_rows = original
    return out


def computed(out: Path, rank: int) -> list[tuple]:
    path = out / f"computed-r{rank}.jsonl"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_give_the_single_process_folders(reference, tmp_path):
    proc = launch(tmp_path, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in LABELS:
        pd.testing.assert_frame_equal(rows(tmp_path, label), rows(reference, label), check_exact=True)
        config = json.loads((folder(tmp_path, label) / "config.json").read_text())
        assert config["num_processes"] == 2
        assert not (folder(tmp_path, label) / "parts").exists()  # merged, then removed
        assert sorted(p.name for p in (folder(tmp_path, label) / "results").iterdir()) == ["toy_a.parquet",
                                                                                            "toy_b.parquet"]
    shares = [computed(tmp_path, r) for r in (0, 1)]
    assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1])  # each its own share
    assert sorted(shares[0] + shares[1]) == sorted(computed(reference, 0))  # together: everything, once
    fitted = json.loads((tmp_path / "fitted" / "static_TV" / "fitted.json").read_text())
    assert fitted["format"] == "workbench-fitted-method"  # fitted once (process 0), reloaded by process 1


@pytest.mark.parametrize("mode, message", [("crash", "process 1 failed on purpose"), ("kill", "SIGKILL")])
def test_a_failing_process_fails_the_launch_with_its_error(tmp_path, mode, message):
    proc = launch(tmp_path, 2, mode)  # the timeout of `launch` bounds the time: no hang
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_resume_under_another_number_of_processes_reuses_units(reference, tmp_path):
    first = launch(tmp_path, 2, "crash")
    assert first.returncode != 0
    before = set(computed(tmp_path, 0)) | set(computed(tmp_path, 1))
    for r in (0, 1):
        (tmp_path / f"computed-r{r}.jsonl").unlink(missing_ok=True)
    written = [json.loads(p.read_text()) for p in (folder(tmp_path, "zero-shot") / "parts").rglob("*.json")]
    assert any(w["rank"] == 1 and w["world_size"] == 2 for w in written)  # process 1's units, before it failed
    second = launch(tmp_path, 3)
    assert second.returncode == 0, second.stderr[-3000:]
    again = [c for r in range(3) for c in computed(tmp_path, r)]
    everything = computed(reference, 0)
    assert len(again) < len(everything) and set(again) | before >= set(everything)
    for label in LABELS:
        pd.testing.assert_frame_equal(rows(tmp_path, label), rows(reference, label), check_exact=True)


# ------------------------------------------------------------------------------------------- pure functions
def test_units_do_not_depend_on_the_number_of_processes():
    units = base_units("t", {42: list(range(5)), 7: [1, 3]}, 2)
    assert units == [Unit("t", 42, 0), Unit("t", 42, 2), Unit("t", 42, 4), Unit("t", 7, 0)]
    for n in (1, 2, 3, 4):
        shares = share_out(dict.fromkeys(units, 1.0), n)
        assert sorted(u for s in shares for u in s) == sorted(units) and len(shares) == n


def test_a_subset_method_keeps_its_own_batches_in_the_unit_of_their_first_item():
    base = {42: [0, 2, 4, 6, 8, 10]}
    got = method_batches("t", base, {42: [2, 6, 8, 10]}, 2)
    assert got == {Batch(42, 0, 2): Unit("t", 42, 0), Batch(42, 2, 4): Unit("t", 42, 4)}
    with pytest.raises(ValueError, match="item 5 is not among the sampled items"):
        method_batches("t", base, {42: [5]}, 2)


def test_share_out_balances_longest_first():
    costs = {Unit("t", 0, i): c for i, c in enumerate([1, 9, 3, 8, 2, 7])}
    shares = share_out(costs, 2)
    loads = [sum(costs[u] for u in s) for s in shares]
    assert loads == [15, 15]  # 9+3+2+1 | 8+7
    assert all(s == sorted(s, key=list(costs).index) for s in shares)  # each share in the units' order
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        share_out(costs, 0)


def test_unit_costs_are_prompt_lengths():
    batches = {Batch(1, 0, 2): Unit("t", 1, 0), Batch(1, 2, 3): Unit("t", 1, 2)}
    costs = unit_costs(batches, {1: [5, 6, 7]}, {5: 10, 6: 20, 7: 5})
    assert costs == {Unit("t", 1, 0): 30.0, Unit("t", 1, 2): 5.0}


def test_more_processes_than_units_is_refused_naming_both():
    check_world_size(6, 6)
    with pytest.raises(ValueError, match="7 processes for 6 units of work"):
        check_world_size(6, 7)


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2])
