"""A half precision the CPU emulates is said before a long job: load_model and train_atv warn (SlowOnThisCPU) on a CPU
without native bf16 / fp16 instructions, never on one with them, in float32 or where the flags are unknown."""

from __future__ import annotations

import warnings

import pytest
import torch

import workbench as wb
from workbench.atv.generator import ATVGenerator
from workbench.atv.training import TrainConfig, train_atv
from workbench.core import hardware
from workbench.core.encoders import load_encoder
from workbench.core.hardware import SlowOnThisCPU, native_on_cpu, warn_if_emulated
from workbench.core.testing import tiny_model

from test_generator_sources import TEXTS, toy_task


def flags(monkeypatch, value):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: value)


def test_native_support_is_read_from_the_cpu_flags(monkeypatch):
    flags(monkeypatch, frozenset({"sse", "avx2"}))
    assert not native_on_cpu(torch.bfloat16) and not native_on_cpu(torch.float16) and native_on_cpu(torch.float32)
    flags(monkeypatch, frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert native_on_cpu(torch.bfloat16) and not native_on_cpu(torch.float16)
    flags(monkeypatch, frozenset({"fp", "asimd", "bf16"}))  # Arm's Features line
    assert native_on_cpu(torch.bfloat16)
    flags(monkeypatch, None)  # unknown: no warning
    assert native_on_cpu(torch.bfloat16)
    flags(monkeypatch, frozenset({"avx2"}))
    assert not warn_if_emulated(torch.bfloat16, "meta", "x")  # only the CPU is judged


def test_the_real_flags_are_parsed():
    got = hardware.cpu_flags()
    assert got is None or (isinstance(got, frozenset) and got)


def test_load_model_in_bf16_warns_on_an_emulating_cpu_only(monkeypatch, tmp_path):
    small = tiny_model("llama", texts=TEXTS)
    small.hf.save_pretrained(tmp_path / "m")
    small.tokenizer.save_pretrained(tmp_path / "m")
    flags(monkeypatch, frozenset({"avx2"}))
    with pytest.warns(SlowOnThisCPU, match=r"bfloat16 on a CPU without native bfloat16.*use float32"):
        wb.load_model(str(tmp_path / "m"), dtype="bfloat16")
    flags(monkeypatch, frozenset({"avx2", "amx_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowOnThisCPU)
        wb.load_model(str(tmp_path / "m"), dtype="bfloat16")
    flags(monkeypatch, frozenset({"avx2"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowOnThisCPU)
        wb.load_model(str(tmp_path / "m"), dtype="float32")


def test_training_in_bf16_mixed_precision_warns_on_an_emulating_cpu(monkeypatch):
    lm = tiny_model("llama", texts=TEXTS)
    flags(monkeypatch, frozenset({"avx2"}))
    gen = ATVGenerator(load_encoder("scratch:1x32", lm=lm, seed=0), lm)
    with pytest.warns(SlowOnThisCPU, match="generator_precision"):
        train_atv(lm, gen, [toy_task()], TrainConfig(epochs=1, n_train=2, batch_size=2, valid_items=0,
                                                     generator_precision="bfloat16"), progress=False)
