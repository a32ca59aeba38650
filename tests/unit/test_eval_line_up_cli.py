"""`python -m workbench eval --methods`: any method of the standard line-up, built and fitted as the study does
(fits saved in --run-dir/fitted and reloaded on a rerun); bad inputs before the model loads; the study's child
processes run outside the launch."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from workbench import cli
from workbench.core.testing import tiny_model
from workbench.core.world import outside_world, single_process_env
from workbench.eval.compare import prompt_item_limits, study_line_up
from workbench.methods import ELICIT, I2CL, LoRA, StaticTaskVector, ZeroShot

RUN = ["--n-test", "2", "--templates", "0", "--prefixes", "A:", "--no-progress", "--batch-size", "2"]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr("workbench.cli.eval.load_model", lambda *a, **k: tiny_model("llama"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_study_line_up_selects_by_name_or_label_in_line_up_order():
    line_up = study_line_up(None, "cpu-demo", ["lora", "static-tv", "zero-shot", "I2CL"], icl_k=1)
    assert list(line_up) == ["zero-shot", "static TV", "I2CL", "LoRA"]
    assert [type(m) for m in line_up.values()] == [ZeroShot, StaticTaskVector, I2CL, LoRA]
    assert line_up["static TV"].k == 4 and line_up["LoRA"].n_train == 8  # the cpu-demo budget, as the study's
    assert prompt_item_limits(study_line_up(None, "cpu-demo", icl_k=1), 10) == {"1-shot": 10, "BM25 1-shot": 10}
    assert isinstance(study_line_up(None, "cpu-demo", ["elicit"])["ELICIT"], ELICIT)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        study_line_up(None, "cpu-demo", ["nope"])
    with pytest.raises(ValueError, match="atv needs a trained generator"):
        study_line_up(None, "cpu-demo", ["atv"])


@pytest.mark.parametrize("argv, message", [
    (["--methods", "zero-shot,nope"], "--methods: unknown method 'nope'"),
    (["--methods", "static-tv", "--tasks", "glue_cola"], "give --fit-tasks"),
    (["--methods", "zero-shot,atv"], "--method atv needs --generator DIR"),
    (["--methods", "zero-shot,lora", "--n-train", "0"], "--n-train must be a positive int"),
])
def test_bad_line_up_inputs_fail_before_the_model_loads(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("workbench.cli.eval.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_several_processes_need_a_run_dir_before_joining(capsys, monkeypatch):
    monkeypatch.setattr("workbench.cli.eval.load_model", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # no rendezvous is set up: joining would fail, the check comes first
    assert cli.main(["eval", "--tasks", "glue_sst2"]) == 2
    assert "with 2 processes, give --run-dir" in capsys.readouterr().err


def test_eval_fits_saves_and_reloads_the_line_up(tiny, tmp_path, capsys):
    argv = ["eval", "--methods", "zero-shot,static-tv", "--tasks", "glue_sst2,glue_cola", "--run-dir",
            str(tmp_path), *RUN]
    assert cli.main(argv) == 0
    assert "results in" in capsys.readouterr().out
    fitted = tmp_path / "fitted" / "static_TV" / "fitted.json"
    saved = fitted.read_bytes()
    first = {m: pd.read_parquet(tmp_path / m / "results" / "glue_cola.parquet") for m in ("zero-shot", "static_TV")}
    assert first["static_TV"]["method"].eq("static-tv").all() and len(first["zero-shot"]) == 2
    for folder in ("zero-shot", "static_TV"):  # a rerun resumes: nothing refitted, nothing recomputed
        (tmp_path / folder / "results" / "glue_cola.parquet").unlink()
    assert cli.main(argv) == 0
    assert fitted.read_bytes() == saved  # reloaded, not refitted
    again = {m: pd.read_parquet(tmp_path / m / "results" / "glue_cola.parquet") for m in ("zero-shot", "static_TV")}
    for m in first:
        pd.testing.assert_frame_equal(again[m].drop(columns="latency"), first[m].drop(columns="latency"))


def test_children_of_a_launched_process_run_alone(monkeypatch):
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(key, value)
    env = single_process_env()
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID"} & set(env) and "PATH" in env
    with outside_world():
        assert "WORLD_SIZE" not in os.environ
    assert os.environ["WORLD_SIZE"] == "2"
