"""Evaluation run folders: nothing read that an evaluation did not write, nothing written through a planted link or
into a folder in use, nothing lost to a kill between a task's result file and its efficiency.json record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from locks import lock_held_by_a_thread
from test_evaluation import Counting
from toy_runs import PROTOCOL, toy_lm, toy_tasks

from workbench.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from workbench.core.locks import FolderBusy
from workbench.eval import runs
from workbench.eval.evaluate import evaluate, evaluate_many
from workbench.methods.prompting import ZeroShot
from workbench.ui.export import save_table


@pytest.fixture(scope="module")
def lm():
    return toy_lm()


@pytest.fixture(scope="module")
def tasks():
    return toy_tasks()


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "latency"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True), check_dtype=False)


# ----------------------------------------------------------------------------------------------- files not ours
def test_results_in_a_folder_without_config_are_refused_not_taken(lm, tasks, tmp_path):
    """A user's results/toy_a.csv (or efficiency.json) where no evaluation wrote a config.json: refused, naming it,
    before anything is written."""
    mine = tmp_path / "results" / "toy_a.csv"
    mine.parent.mkdir()
    mine.write_text("method,task,correct\nmine,toy_a,True\n")
    with pytest.raises(FileExistsError, match=r"no config.json, so its 'results/toy_a.csv' were not written by an "
                                              r"evaluation"):
        evaluate(lm, ZeroShot(), tasks, run_dir=tmp_path, **PROTOCOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no config.json, no lock file
    assert mine.read_text() == "method,task,correct\nmine,toy_a,True\n"
    mine.unlink()
    (tmp_path / "efficiency.json").write_text('{"tasks": {}, "summary": {}}')
    with pytest.raises(FileExistsError, match=r"'efficiency.json' were not written by an evaluation"):
        evaluate(lm, ZeroShot(), tasks, run_dir=tmp_path, **PROTOCOL)
    assert not (tmp_path / "config.json").exists()


def test_a_result_file_changed_by_hand_is_recomputed_not_taken(lm, tasks, tmp_path):
    fresh = evaluate(lm, ZeroShot(), tasks, run_dir=tmp_path, **PROTOCOL)
    path = tmp_path / "results" / "toy_a.parquet"
    pd.read_parquet(path).assign(correct=True, prediction="forged").to_parquet(path)
    method = Counting()
    with pytest.warns(UserWarning, match=r"toy_a.parquet is not the result file recorded for task 'toy_a'"):
        again = evaluate(lm, method, tasks, run_dir=tmp_path, **PROTOCOL)
    assert set(method.calls) == {"toy_a"}  # toy_b is taken from the folder, toy_a recomputed
    same_rows(again, fresh)
    same_rows(runs.load_run(tmp_path), fresh)
    assert runs.finished_tasks(tmp_path) == ["toy_a", "toy_b"]


# ----------------------------------------------------------------------------------------------- planted links
@pytest.mark.parametrize("entry", ["results", "efficiency.json", "config.json", "results/toy_a.parquet"])
def test_a_planted_link_in_a_run_folder_is_refused(lm, tasks, tmp_path, entry):
    """A symbolic link in place of any file of a run folder: refused before anything is written; its target (the
    user's file or folder) is untouched."""
    run = tmp_path / "run"
    evaluate(lm, ZeroShot(), tasks[:1], run_dir=run, **PROTOCOL)
    victim = tmp_path / ("victim_dir" if entry == "results" else "victim.json")
    if entry == "results":
        victim.mkdir()
        (victim / "keep.txt").write_text("mine")
    else:
        victim.write_text('{"mine": 1}')
    link = run / entry
    if link.is_dir():
        for p in link.iterdir():
            p.unlink()
        link.rmdir()
    else:
        link.unlink()
    link.symlink_to(victim)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(FileExistsError, match=rf"{entry}' is a symbolic link"):
        evaluate(lm, ZeroShot(), tasks, run_dir=run, **PROTOCOL)
    if entry == "results":
        assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    else:
        assert victim.read_text() == '{"mine": 1}'
    assert sorted(p.name for p in run.iterdir()) == before and link.is_symlink()


def test_atomic_writes_replace_a_planted_link_and_leave_its_target(tmp_path):
    """atomic_write_* (and so every table and record the workbench writes) replace a link at the destination with
    the new file: os.replace renames onto the link itself, it never writes through it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    writes = [lambda p: atomic_write_text(p, "new"), lambda p: atomic_write_bytes(p, b"new"),
              lambda p: atomic_write_json(p, {"new": 1}), lambda p: save_table(pd.DataFrame({"a": [1]}), p.parent,
                                                                              p.stem)]
    for i, write in enumerate(writes):
        link = tmp_path / f"out{i}.csv"
        link.symlink_to(victim)
        write(link)
        assert not link.is_symlink() and link.is_file() and victim.read_text() == "mine"


# ----------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("label", ["../escaped", "TV/λ=0.1", "", " ", ".", "..", ".hidden", "a\\b", "x\0y", 7])
def test_labels_that_are_not_folder_names_are_refused(lm, tasks, tmp_path, label):
    root = tmp_path / "eval"
    with pytest.raises(ValueError, match=r"method label .* a label that names a results or fit folder must be a "
                                         r"plain folder name"):
        evaluate_many(lm, {label: ZeroShot()}, tasks[:1], run_dir=root, **PROTOCOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, inside root or beside it


def test_unicode_labels_are_kept_and_clashing_ones_refused(lm, tasks, tmp_path):
    out = evaluate_many(lm, {"TV λ=0.1": ZeroShot()}, tasks[:1], run_dir=tmp_path, **PROTOCOL)
    assert (tmp_path / "TV_λ=0.1" / "config.json").is_file() and len(out["TV λ=0.1"]) == 2
    with pytest.raises(ValueError, match=r"method labels 'static TV' and 'static_TV' would share the folder"):
        evaluate_many(lm, {"static TV": ZeroShot(), "static_TV": ZeroShot()}, tasks[:1], run_dir=tmp_path / "b",
                      **PROTOCOL)
    with pytest.raises(ValueError, match=r"'LoRA' and 'lora' would share"):
        evaluate_many(lm, {"LoRA": ZeroShot(), "lora": ZeroShot()}, tasks[:1], run_dir=tmp_path / "b", **PROTOCOL)
    assert not (tmp_path / "b").exists()
    assert evaluate_many(lm, {"../x": ZeroShot()}, tasks[:1], **PROTOCOL)["../x"]["method"].eq("zero-shot").all()


class CountingFit(ZeroShot):
    fits = 0

    def fit(self, lm, train_tasks):
        type(self).fits += 1
        return self


@pytest.mark.parametrize("where", ["fit_dir", "run_dir"])
def test_compare_refuses_a_bad_label_before_fitting(lm, tasks, tmp_path, where):
    from workbench.eval.compare import compare

    CountingFit.fits = 0
    with pytest.raises(ValueError, match=r"method label '\.\./escaped' starts with '\.'"):
        compare(lm, {"../escaped": CountingFit()}, tasks[:1], tasks[:1], **{where: tmp_path / "root"}, **PROTOCOL)
    assert CountingFit.fits == 0 and sorted(tmp_path.iterdir()) == []


def test_compare_refuses_a_foreign_results_folder_before_fitting(lm, tasks, tmp_path):
    from workbench.eval.compare import compare

    CountingFit.fits = 0
    (tmp_path / "zero-shot" / "results").mkdir(parents=True)
    (tmp_path / "zero-shot" / "results" / "toy_a.csv").write_text("a\n1\n")
    with pytest.raises(FileExistsError, match="toy_a.csv"):
        compare(lm, {"zero-shot": CountingFit()}, tasks[:1], tasks[:1], run_dir=tmp_path, **PROTOCOL)
    assert CountingFit.fits == 0


# ----------------------------------------------------------------------------------------------- two at once
def test_a_second_evaluation_into_a_folder_in_use_fails_at_once(lm, tasks, tmp_path):
    run = tmp_path / "run"
    with lock_held_by_a_thread(run):
        with pytest.raises(FolderBusy, match=rf"run folder '{run}' is in use by another evaluation \(pid "
                                             rf"{os.getpid()} on host .*, started .*\)"):
            evaluate(lm, Counting(), tasks, run_dir=run, **PROTOCOL)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no config.json, no results
    with lock_held_by_a_thread(tmp_path / "many" / "b"):  # one busy folder: none of the methods starts
        with pytest.raises(FolderBusy, match="in use by another evaluation"):
            evaluate_many(lm, {"a": ZeroShot(), "b": ZeroShot()}, tasks, run_dir=tmp_path / "many", **PROTOCOL)
    assert not (tmp_path / "many" / "a" / "config.json").exists()
    evaluate(lm, ZeroShot(), tasks, run_dir=run, **PROTOCOL)  # free again
    assert set(runs.read_efficiency(run)["tasks"]) == {"toy_a", "toy_b"}


def test_a_planted_lock_link_is_refused_and_its_target_untouched(lm, tasks, tmp_path):
    from workbench.core.locks import LockFileRefused

    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("mine")
    (run / ".lock").symlink_to(victim)
    with pytest.raises(LockFileRefused, match=r"\.lock' as a lock file: it is a symbolic link"):
        evaluate(lm, ZeroShot(), tasks, run_dir=run, **PROTOCOL)
    assert victim.read_text() == "mine"
    (run / ".lock").unlink()
    os.link(victim, run / ".lock")  # a hard link would have the lock record truncate the user's file
    with pytest.raises(LockFileRefused, match="a hard link shared with 1 other name"):
        evaluate(lm, ZeroShot(), tasks, run_dir=run, **PROTOCOL)
    assert victim.read_text() == "mine"


# ----------------------------------------------------------------------------------------------- a kill
CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from toy_runs import PROTOCOL, toy_lm, toy_tasks
from workbench.eval import runs
from workbench.eval.evaluate import evaluate
from workbench.methods.prompting import ZeroShot

def killed(*args, **kwargs):  # the first efficiency.json write: toy_a's result file is written, its record not
    os.kill(os.getpid(), signal.SIGKILL)

runs.write_efficiency = killed
evaluate(toy_lm(), ZeroShot(), toy_tasks(), run_dir=sys.argv[1], **PROTOCOL)
"""


def test_a_kill_between_result_and_efficiency_record_loses_nothing(lm, tasks, tmp_path):
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", CHILD, str(run), str(Path(__file__).parent)], capture_output=True,
                           text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert (run / "results" / "toy_a.parquet").is_file() and not (run / "efficiency.json").exists()
    method = Counting()
    with pytest.warns(UserWarning, match="toy_a.parquet is not the result file recorded"):
        again = evaluate(lm, method, tasks, run_dir=run, **PROTOCOL)
    assert set(method.calls) == {"toy_a", "toy_b"}  # the orphan result is recomputed, not taken
    record = json.loads((run / "efficiency.json").read_text())
    assert set(record["tasks"]) == {"toy_a", "toy_b"} and record["summary"]["tasks_measured"] == ["toy_a", "toy_b"]
    same_rows(again, evaluate(lm, ZeroShot(), tasks, **PROTOCOL))
    assert sorted(p.name for p in (run / "results").iterdir()) == ["toy_a.parquet", "toy_b.parquet"]
