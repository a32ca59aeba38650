"""``python -m workbench study``: bad inputs refused before anything runs, and a small study that resumes.

The end-to-end test runs the real command on the embedded models with ``--small`` (2 + 1 tasks, 1 epoch, 2 items):
the same code path as ``make study``, in about a minute.
"""

from __future__ import annotations

import json

import pytest

from workbench import cli


def no_models(monkeypatch):
    fail = lambda *a, **k: pytest.fail("something ran before the bad input was reported")  # noqa: E731
    monkeypatch.setattr("workbench.cli.study.train_generator", fail)
    monkeypatch.setattr("workbench.ui.notebooks.run_notebook", fail)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, message", [
    (["--n-test", "20"], "--n-test 20: the study needs an int >= 30"),
    (["--n-icl", "5"], "--n-icl 5: the study needs an int >= 10"),
    (["--n-test", "30", "--n-icl", "40"], "--n-icl 40 is more than --n-test 30"),
    (["--k", "32"], "--k 32: use 1..16 demonstrations"),
])
def test_bad_settings_are_refused(argv, message, tmp_path, capsys, monkeypatch):
    no_models(monkeypatch)
    assert cli.main(["study", "--run-dir", str(tmp_path / "s"), *argv]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "s").exists()


def test_a_folder_of_another_configuration_or_not_a_study_is_refused(tmp_path, capsys, monkeypatch):
    no_models(monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("x")
    assert cli.main(["study", "--run-dir", str(mine)]) == 2
    assert "is not a study folder" in error_line(capsys)
    assert [p.name for p in mine.iterdir()] == ["data.csv"]
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"format": "workbench-study", "n_test": 40}))
    assert cli.main(["study", "--run-dir", str(study)]) == 2
    assert "n_test=40 (this run: 30)" in error_line(capsys)


def test_small_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    run = tmp_path / "study"
    # float32: the same code path as the bf16 default, at a speed that does not depend on the CPU having native bf16
    argv = ["study", "--small", "--n-test", "2", "--n-icl", "1", "--dtype", "float32", "--run-dir", str(run)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "study done" in out and "BM25 1-shot" in out
    results = __import__("pandas").read_csv(run / "02_results.csv")
    assert results["method"].nunique() == 8 and results["task"].nunique() == 3
    per_item = results.groupby("method")["item"].nunique()
    assert per_item["1-shot"] < per_item["zero-shot"]  # k-shot on the subset
    fitted = sorted(p.name for p in (run / "fitted").iterdir())
    assert fitted == ["ELICIT", "I2CL", "LoRA", "static_TV"]
    assert cli.main(argv) == 0  # resumed: nothing refitted or re-evaluated
    out = capsys.readouterr().out
    assert "generator already trained" in out
    efficiency = __import__("pandas").read_csv(run / "02_efficiency.csv").set_index("method")
    assert efficiency.loc[["static TV", "ELICIT", "I2CL", "LoRA"], "Reloaded"].all()
    times = json.loads((run / "study_time.json").read_text())
    assert len(times) == 2 and all(set(t["seconds"]) == {"train_generator", "notebook_02"} for t in times)
