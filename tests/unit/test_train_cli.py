"""`python -m workbench train`: the run folder is checked before any model is loaded; errors are `error: …`, exit 2."""

from __future__ import annotations

import pytest

from workbench.atv.presets import Preset
from workbench.cli import main


@pytest.fixture
def no_model(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the run folder was checked")

    monkeypatch.setattr(Preset, "load", load)


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["train", "--quiet", *argv])
    return code, capsys.readouterr().err


def test_run_dir_that_is_a_file(tmp_path, capsys, no_model):
    (tmp_path / "run").write_text("my notes")
    code, err = run(capsys, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.startswith("error: ") and "is a file" in err
    assert (tmp_path / "run").read_text() == "my notes"


def test_checkpoints_without_resume_and_resume_without_checkpoints(tmp_path, capsys, no_model, llama_lm):
    import torch

    from workbench.atv.checkpoints import save_checkpoint
    from workbench.atv.generator import ATVGenerator
    from workbench.core.encoders import load_encoder

    code, err = run(capsys, "--run-dir", str(tmp_path / "fresh"), "--resume")
    assert code == 2 and "holds no complete checkpoint" in err
    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=llama_lm.tokenizer, seed=0), llama_lm)
    save_checkpoint(tmp_path / "old" / "checkpoints", gen, torch.optim.Adam(gen.parameters()), 2, [])
    code, err = run(capsys, "--run-dir", str(tmp_path / "old"))
    assert code == 2 and "already holds checkpoints (epoch-002)" in err and "--resume" in err
    assert (tmp_path / "old" / "checkpoints" / "epoch-002").is_dir()


def test_run_dir_with_files_of_the_user(tmp_path, capsys, no_model):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"mine": 1}')
    code, err = run(capsys, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "config.json" in err and "not a record of this command" in err
    (tmp_path / "run" / "config.json").unlink()
    (tmp_path / "run" / "generator").mkdir()
    (tmp_path / "run" / "generator" / "weights.bin").write_text("x")
    code, err = run(capsys, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "is not a generator this command wrote" in err


def test_locked_run_dir(tmp_path, capsys, no_model):
    from locks import lock_held_by_a_thread

    with lock_held_by_a_thread(tmp_path / "run" / "checkpoints"):
        code, err = run(capsys, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "in use by another training" in err


def test_resume_with_other_tasks_fails_before_loading(tmp_path, capsys, no_model, llama_lm):
    import dataclasses

    import torch

    from workbench.atv.checkpoints import save_checkpoint
    from workbench.atv.generator import ATVGenerator
    from workbench.atv.presets import presets
    from workbench.core.encoders import load_encoder

    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=llama_lm.tokenizer, seed=0), llama_lm)
    gen.meta = {"train_config": dataclasses.replace(presets["cpu-demo"].config, tasks=("glue_sst2",)).to_dict()}
    save_checkpoint(tmp_path / "run" / "checkpoints", gen, torch.optim.Adam(gen.parameters()), 1, [])
    code, err = run(capsys, "--run-dir", str(tmp_path / "run"), "--resume", "--tasks", "glue_sst2", "crows_pairs")
    assert code == 2 and "tasks: checkpoint ['glue_sst2'], now ['glue_sst2', 'crows_pairs']" in err
    assert ";" not in err  # nothing else differs
