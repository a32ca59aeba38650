"""Every command refuses a bad input in one ``error:`` line (exit code 2, no traceback) before a model loads, a
notebook starts or anything is written; ``train`` never replaces a history.csv it did not write; ``study`` reuses
a trained generator only if it is the one the study trains."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import cli
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder


class Reached(Exception):
    """The command got past its checks (a model, the training or a notebook would start now)."""


@pytest.fixture
def no_work(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached("work started")

    import workbench as wb

    monkeypatch.setattr("workbench.cli.eval.load_model", reached)
    monkeypatch.setattr("workbench.atv.presets.Preset.load", reached)
    monkeypatch.setattr(wb, "load_model", reached)
    monkeypatch.setattr("workbench.ui.notebooks.run_notebook", reached)
    monkeypatch.setattr("workbench.cli.study.subprocess.call", reached)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


CASES = [
    (["train", "--threads", "0"], "--threads must be a positive int, got 0"),
    (["train", "--threads", "-2"], "--threads must be a positive int, got -2"),
    (["train", "--bottleneck", "0"], "--bottleneck must be a positive int, got 0"),
    (["train", "--light", "--bottleneck", "-3"], "--bottleneck must be a positive int, got -3"),
    (["train", "--encoder", "scratch:0x8"], "--encoder 'scratch:0x8': scratch encoder needs >= 1 layer"),
    (["train", "--encoder", "scratch:4by8"], "--encoder 'scratch:4by8': use scratch:<layers>x<width>"),
    (["train", "--encoder", "/nonexistent/encoder"], "--encoder '/nonexistent/encoder'"),
    (["train", "--model", "/nonexistent/model"], "--model: model '/nonexistent/model' is neither"),
    (["train", "--run-dir", "FILE/run"], "--run-dir 'FILE/run': 'FILE' is a file, not a folder"),
    (["eval", "--batch-size", "0"], "--batch-size must be a positive int, got 0"),
    (["eval", "--k", "-1"], "--k (number of demonstrations) must be a positive int, got -1"),
    (["eval", "--model", "/nonexistent/model"], "--model: model '/nonexistent/model' is neither"),
    (["eval", "--method", "atv", "--generator", "/nonexistent/gen"], "--generator '/nonexistent/gen' does not exist"),
    (["eval", "--method", "atv", "--generator", "TMP"], "no generator.json"),
    (["eval", "--generator", "TMP"], "--generator is read only by --method atv, not by --method zero-shot"),
    (["eval", "--run-dir", "FILE"], "--run-dir 'FILE' is a file, not a folder"),
    (["study", "--run-dir", "TMP/study", "--seed", "-5"], "--seed must be a non-negative int, got -5"),
    (["study", "--run-dir", "FILE/study"], "--run-dir 'FILE/study': 'FILE' is a file, not a folder"),
    (["demo", "--runs", "TMP/runs", "--n-test", "0"], "--n-test must be a positive int, got 0"),
    (["demo", "--runs", "TMP/runs", "--seed", "-5"], "--seed must be a non-negative int, got -5"),
    (["demo", "--runs", "TMP/runs", "--model", "/nonexistent/model"], "--model: model '/nonexistent/model'"),
    (["demo", "--runs", "TMP/runs", "--encoder", "scratch:1x4"], "--encoder 'scratch:1x4'"),
    (["demo", "--quick", "--encoder", "scratch:0x8"], "--encoder 'scratch:0x8'"),
    (["demo", "--runs", "FILE/runs"], "'FILE' is a file, not a folder"),
]


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input_is_one_error_line_before_any_work(argv, message, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run folder would appear here
    (tmp_path / "file").write_text("my notes")
    names = {"FILE": str(tmp_path / "file"), "TMP": str(tmp_path)}

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace(key, value)
        return text

    argv = [fill(a) for a in argv]
    if argv[0] == "train" and "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    before = snapshot(tmp_path)
    assert cli.main(argv) == 2
    assert fill(message) in one_error_line(capsys)
    assert snapshot(tmp_path) == before  # nothing written, no run folder created


def test_train_threads_error_in_a_subprocess_has_no_traceback(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "workbench", "train", "--run-dir", str(run), "--threads", "-2"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: --threads must be a positive int, got -2", done.stderr
    assert not run.exists()


# ----------------------------------------------------------------------------------------------- history.csv
def test_train_refuses_a_history_csv_it_did_not_write(tmp_path, capsys, no_work):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,my_measure\n1,0.5\n")
    assert cli.main(["train", "--quiet", "--run-dir", str(run)]) == 2
    assert f"{str(run / 'history.csv')!r} exists and is not the history of a run of this command" in \
        one_error_line(capsys)
    assert (run / "history.csv").read_text() == "epoch,my_measure\n1,0.5\n"
    assert sorted(p.name for p in run.iterdir()) == ["history.csv"]
    # beside the config.json of an earlier run of the command, its own history.csv may be rewritten
    (run / "config.json").write_text(json.dumps({"preset": "cpu-demo", "train_config": {}}))
    with pytest.raises(Reached):
        cli.main(["train", "--quiet", "--run-dir", str(run)])


# ----------------------------------------------------------------------------------------------- study
def small_study(tmp_path: Path, llama_lm, **config_changes) -> tuple[Path, ATVGenerator, dict]:
    """A ``study --small`` folder (its study.json written), a generator whose small model is recorded as the preset's,
    and the TrainConfig (as a dict, with `config_changes`) that the study's training records."""
    import argparse

    from workbench.atv.presets import presets
    from workbench.cli import study

    run = (tmp_path / "study").resolve()
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    config = study.study_config(parser.parse_args(["--run-dir", str(run), "--small"]))
    study.open_study(run, config)
    train_config = dataclasses.replace(presets["cpu-full"].config, tasks=tuple(config["in_domain"]), seed=42,
                                       epochs=1, n_train=4, valid_items=2)  # study --small's training flags
    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=llama_lm.tokenizer, seed=0), llama_lm)
    gen.encoder.name = "minilm-l6"  # what the cpu-full preset's generator records
    return run, gen, dataclasses.replace(train_config, **config_changes).to_dict()


def test_study_reuses_only_the_generator_it_trains(tmp_path, capsys, no_work, llama_lm):
    run, gen, train_config = small_study(tmp_path, llama_lm)
    other = {**train_config, "epochs": 7}
    gen.save(run / "train" / "generator", train_config=other, preset="cpu-demo")
    assert cli.main(["study", "--run-dir", str(run), "--small"]) == 2
    line = one_error_line(capsys)
    assert "is not the generator this study trains" in line
    assert "preset: generator 'cpu-demo', study 'cpu-full'" in line
    assert "train_config.epochs: generator 7, study 1" in line
    gen.save(run / "train" / "generator", train_config=train_config, preset="cpu-full")
    with pytest.raises(Reached):  # the study's own generator passes the check: notebook 02 would start now
        cli.main(["study", "--run-dir", str(run), "--small"])
    assert "generator already trained" in capsys.readouterr().out


def test_study_checks_the_training_to_resume_before_it_starts(tmp_path, capsys, no_work, llama_lm):
    from workbench.atv.checkpoints import save_checkpoint

    run, gen, train_config = small_study(tmp_path, llama_lm, seed=7)
    gen.meta = {"train_config": train_config}  # a training of another seed, cut after epoch 1
    save_checkpoint(run / "train" / "checkpoints", gen, torch.optim.Adam(gen.parameters()), 1, [])
    assert cli.main(["study", "--run-dir", str(run), "--small"]) == 2
    assert "cannot resume: the checkpoint was trained with another config (seed: checkpoint 7, now 42)" in \
        one_error_line(capsys)
