"""Integration on the embedded models from the wheels (offline): SmolLM2-135M-Instruct and all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch
from reference_hooks import hook_logits

import workbench as wb

pytestmark = pytest.mark.embedded
PROMPTS = ["What is the capital of France?\nA:",
           "The movie was wonderful. Is this sentence positive or negative?\nAnswer:"]


def test_smollm_loads_from_wheel(smollm):
    assert smollm.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (smollm.num_layers, smollm.hidden_size) == (30, 576)
    assert smollm.dtype == torch.float32
    logits = wb.next_token_logits(smollm, PROMPTS)
    assert logits.shape == (2, smollm.hf.config.vocab_size) and torch.isfinite(logits).all()


def test_large_random_vector_changes_argmax_and_zero_does_not(smollm):
    clean = wb.next_token_logits(smollm, PROMPTS)
    zero = wb.next_token_logits(smollm, PROMPTS, wb.Injection(torch.zeros(30, 576)))
    assert torch.equal(clean, zero)
    torch.manual_seed(0)
    loud = wb.next_token_logits(smollm, PROMPTS, wb.Injection(torch.randn(30, 576), scale=20.0))
    assert (loud.argmax(-1) != clean.argmax(-1)).any()


def test_nnsight_equals_hooks_on_smollm(smollm):
    torch.manual_seed(1)
    vectors = torch.randn(2, 30, 576)
    ours = wb.next_token_logits(smollm, PROMPTS, wb.Injection(vectors, scale=0.5))
    with torch.no_grad():
        ref = hook_logits(smollm, PROMPTS, vectors, 0.5, range(30))
    assert (ours - ref).abs().max() <= 1e-4


def test_minilm_encoder(minilm):
    out = minilm.encode(["a happy sentence", "a sad one about a dog"])
    assert out.shape == (2, 384) and torch.isfinite(out).all()
    assert minilm.dim == 384
