"""``python -m workbench data``: prepare --from copies and validates atomically; --hub with a fake loader; check."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

from workbench import cli
from workbench.tasks import hub_builders as H
from workbench.tasks import prepare as D
from workbench.tasks.registry import load_task, resolve_data_dir

SMALL = ["glue_mnli", "bbh_boolean_expressions", "deepmind"]


def test_prepare_from_copies_bytes(tmp_path, capsys):
    src = resolve_data_dir()
    dst = tmp_path / "tasks"
    assert cli.main(["data", "prepare", "--from", str(src), "--to", str(dst), "--tasks", *SMALL]) == 0
    assert "3 task file(s) written" in capsys.readouterr().out
    for name in SMALL:
        assert (dst / f"{name}.json").read_bytes() == (src / f"{name}.json").read_bytes()
        assert load_task(name, data_dir=dst).test == load_task(name).test
    assert sorted(p.name for p in dst.iterdir()) == sorted(f"{n}.json" for n in SMALL)  # no temp files left
    assert cli.main(["data", "check", "--dir", str(dst)]) == 0
    assert "3 task files OK" in capsys.readouterr().out


def test_prepare_from_parent_folder(tmp_path):
    src = tmp_path / "data" / "tasks"
    src.mkdir(parents=True)
    (src / "glue_mnli.json").write_bytes((resolve_data_dir() / "glue_mnli.json").read_bytes())
    written = D.prepare_from(tmp_path / "data", tmp_path / "out")
    assert [p.name for p in written] == ["glue_mnli.json"]


def test_prepare_rejects_bad_file_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "glue_mnli.json").write_bytes((resolve_data_dir() / "glue_mnli.json").read_bytes())
    bad = {"train": [{"input": "x", "output": "True"}], "valid": [{"input": "x"}],
           "test": [{"input": "x", "output": "True"}]}
    (src / "glue_qnli.json").write_text(json.dumps(bad))
    dst = tmp_path / "dst"
    assert cli.main(["data", "prepare", "--from", str(src), "--to", str(dst)]) == 2
    err = capsys.readouterr().err
    assert "glue_qnli.json" in err and "split 'valid' item 0: missing key 'output'" in err
    assert not dst.exists()
    assert cli.main(["data", "prepare", "--from", str(src), "--to", str(dst), "--tasks", "boolq"]) == 2
    assert "no task file for ['boolq']" in capsys.readouterr().err


def test_prepare_hub_with_fake_loader(tmp_path):
    import datasets

    rows = [{"question": f"q{i}?", "options": ["A)1", "B)2", "C)3", "D)4", "E)5"], "correct": "ABCDE"[i % 5],
             "rationale": ""} for i in range(40)]
    calls = []

    def loader(path, config, revision):
        calls.append((path, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    written = D.prepare_hub(tmp_path, ["deepmind"], loader=loader)
    assert calls == [("deepmind/aqua_rat", "raw")]
    task = load_task("deepmind", data_dir=tmp_path)
    assert len(task.train) + len(task.valid) + len(task.test) == 40
    assert task.test[0].input.endswith("\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\nE. 5")
    assert written[0].read_bytes().startswith(b'{"train":[{"input":')
    with pytest.raises(NotImplementedError, match="no hub builder for task 'gsm8k'"):
        H.load_hub_task("gsm8k", loader=loader)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_module_entry_point(monkeypatch, capsys):
    """``python -m workbench data`` runs ``main`` (in-process via runpy: a subprocess would re-import torch)."""
    monkeypatch.setattr(sys, "argv", ["workbench", "data", "prepare", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("workbench", run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--hub" in out and "--from" in out
