"""benchmarks/gpu_smoke.py without a GPU: it says so and exits 0; its checks run (and can fail) on tiny CPU models;
a missing requirement is named."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_without_cuda_it_says_so_and_exits_zero(smoke, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert smoke.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_every_check_passes_on_tiny_cpu_models(smoke, capsys):
    assert smoke.main(["--device", "cpu", "--tiny"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert [line.split(":")[0][5:] for line in lines] == ["load", "injection", "train", "cache", "offload", "memory"]
    assert all(line.startswith("ok  ") for line in lines), lines


def test_a_broken_injection_fails_its_check(smoke, monkeypatch):
    from workbench.core.interventions import Injection
    from workbench.core.testing import tiny_model

    prompts = smoke.long_prompts(2, 10)
    lm = tiny_model("llama", texts=prompts)
    assert smoke.check_injection(lm, prompts, "float32").ok
    monkeypatch.setattr(Injection, "apply", lambda self, lm, rows, mask: None)  # an injection that does nothing
    check = smoke.check_injection(lm, prompts, "float32")
    assert not check.ok and "max rel diff" in check.detail


def test_a_crashing_check_is_a_failure_and_exit_one(smoke, monkeypatch, capsys):
    def boom(*args):
        raise RuntimeError("cache exploded")

    monkeypatch.setattr(smoke, "check_cache", boom)
    assert smoke.main(["--device", "cpu", "--tiny"]) == 1
    out = capsys.readouterr().out
    assert "FAIL cache: RuntimeError: cache exploded" in out and "FAILED: cache" in out


def test_agree_uses_the_dtype_tolerance(smoke):
    a = torch.tensor([1.0, 2.0])
    assert smoke.agree(a, a + 1e-6, "float32")[0]
    assert not smoke.agree(a, a + 0.1, "float32")[0]
    assert smoke.agree(a, a + 0.01, "bfloat16")[0]
    assert not smoke.agree(a, torch.tensor([float("nan"), 2.0]), "bfloat16")[0]


def test_a_missing_requirement_is_named(smoke, monkeypatch, capsys):
    monkeypatch.setitem(smoke.REQUIRED, "no_such_module_xyz", "no-such-dist")
    assert smoke.main(["--device", "cpu", "--tiny"]) == 1
    assert "missing no_such_module_xyz (pip install no-such-dist)" in capsys.readouterr().out
