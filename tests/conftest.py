"""Shared fixtures: tiny random-init models (fast) and the embedded models (session-scoped, loaded once).

The suite runs in a random order (pytest-randomly, a dev dependency): the seed is printed at the end of every run,
also with ``-q``; ``pytest --randomly-seed=N`` replays that order, ``-p no:randomly`` runs in file order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# before transformers is imported (by workbench below): it reads these once
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from workbench.core.testing import tiny_model

# tests/locks.py and tests/reference_hooks.py serve every tier (tests/unit, tests/integration, ...)
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("ATV_PNG", "0")  # PNG export starts a browser per figure; notebooks in tests write HTML only
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ARCHS = ["llama", "gpt2", "gpt_neox", "qwen2", "gemma2", "phi"]
TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]


@pytest.fixture(params=ARCHS)
def tiny_lm(request):
    return tiny_model(request.param, texts=TEXTS)


@pytest.fixture(scope="session")
def llama_lm():
    return tiny_model("llama", texts=TEXTS)


@pytest.fixture(scope="session")
def smollm():
    import workbench as wb

    return wb.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    import workbench as wb

    return wb.load_encoder("minilm-l6")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the test-order seed even with ``-q`` (pytest-randomly prints it only in the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: pytest-randomly seed {seed}; replay with --randomly-seed={seed}")
