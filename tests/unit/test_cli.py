"""The dispatcher ``workbench.cli.main``: every command reports bad input as one ``error: …`` line with exit code 2
(before any model is loaded), and a command whose module is missing fails loudly instead of being skipped."""

from __future__ import annotations

import pytest
import torch

from workbench import cli


def no_models(monkeypatch):
    fail = lambda *a, **k: pytest.fail("a model was loaded before the bad input was reported")  # noqa: E731
    monkeypatch.setattr("workbench.cli.eval.load_model", fail)
    monkeypatch.setattr("workbench.atv.presets.Preset.load", fail)
    import workbench as wb

    monkeypatch.setattr(wb, "load_model", fail)


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "epochs must be a positive finite int, got 0"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["eval", "--seeds", "-1"], "seed -1 is negative; seeds must be non-negative ints"),
    (["eval", "--seeds", "42", "-7"], "seed -7 is negative"),
    (["eval", "--tasks", "../data/glue_sst2"], "task name '../data/glue_sst2' is not a plain name"),
    (["eval", "--tasks", "/abs/glue_sst2"], "task name '/abs/glue_sst2' is not a plain name"),
    (["eval", "--device", "nonsense"], "--device 'nonsense' is not a device name; available here: cpu"),
    (["eval", "--threads", "0"], "--threads must be a positive int"),
    (["data", "check", "--dir", "/nonexistent/tasks"], "data_dir '/nonexistent/tasks' is not a directory"),
    (["data", "prepare", "--from", "/nonexistent/src"], "--from /nonexistent/src is not a directory"),
    (["demo", "--runs", __file__], "is a file, not a folder"),
    (["ablations", "--budget", "huge"], "unknown budget 'huge'; use one of ['cpu', 'paper', 'tiny']"),
    (["ablations", "--runs", __file__], "is a file, not a folder"),
    (["ablations", "--model", "./no-such-model"], "./no-such-model"),
])
def test_bad_input_is_one_error_line_exit_2(argv, message, capsys, monkeypatch):
    no_models(monkeypatch)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_eval_device_without_cuda(capsys, monkeypatch):
    """``--device cuda`` without CUDA: an ``error:`` naming the device and what is available (was an AssertionError)."""
    no_models(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["eval", "--device", "cuda", "--tasks", "glue_sst2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device 'cuda':") and "sees no cuda device" in err
    assert err.endswith("available here: cpu")


def test_data_bad_task_file_exits_2(tmp_path, capsys):
    (tmp_path / "glue_qnli.json").write_bytes(b'{"train": "\xff"}')
    (tmp_path / "my_extra.json").mkdir()
    assert cli.main(["data", "check", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "glue_qnli.json: not UTF-8 text (byte 0xff" in err
    (tmp_path / "glue_qnli.json").unlink()
    assert cli.main(["data", "check", "--dir", str(tmp_path)]) == 2
    assert "my_extra.json is a folder, not a task file" in capsys.readouterr().err
    assert cli.main(["data", "prepare", "--from", str(tmp_path), "--to", str(tmp_path / "o"), "--tasks", "../x"]) == 2
    assert "task name '../x' is not a plain name" in capsys.readouterr().err


def test_a_bug_is_not_reported_as_bad_input(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("workbench.cli.data.main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["data", "check"])


def test_missing_command_module_fails_loudly(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("workbench.cli.no_such_module", "a command whose module is missing"))
    with pytest.raises(ModuleNotFoundError, match="workbench.cli.no_such_module") as e:
        cli.main(["data", "check"])  # any command: the dispatcher imports all of them before parsing
    assert any("command 'ghost'" in note for note in getattr(e.value, "__notes__", []))
