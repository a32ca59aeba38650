"""LoRA baseline on tiny models: trains, changes the model only inside active(), removal restores it exactly."""

from __future__ import annotations

import pytest
import torch
from test_static_tv import single_thread, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench.eval.evaluate as ev
from workbench.core.inference import next_token_logits
from workbench.methods.lora import LoRA

PROMPTS = ["Review: good movie 1\nA:", "Question: bad film 2\nA:", "Claim: nice cast\nA:"]


@pytest.mark.parametrize("arch, expected", [
    # per layer r * (d_in + d_out) for q (32 -> 32) and v (32 -> 16 with 2 kv heads of 8); 4 layers
    ("llama", 4 * 8 * ((32 + 32) + (32 + 16))),
    ("gpt2", 4 * 8 * (32 + 96)),  # fused c_attn 32 -> 96
])
def test_lora_trains_and_removal_restores_base(arch, expected):
    tasks = toy_tasks()
    lm = toy_lm(arch, tasks)
    params = {n: p.detach().clone() for n, p in lm.hf.named_parameters()}
    base = next_token_logits(lm, PROMPTS)
    method = LoRA(epochs=2, n_train=2, batch_size=4, lr=1e-2).fit(lm, tasks[:2])
    assert method.trainable_parameters == expected
    assert method.losses[-1] < method.losses[0]
    with method.attached(lm):  # the unmerged adapter, as trained
        unmerged = next_token_logits(lm, PROMPTS)
        assert any("lora_" in n for n, _ in lm.hf.named_parameters())
    with method.active(lm):  # merged into the weights: no LoRA module left for nnsight to trace
        adapted = next_token_logits(lm, PROMPTS)
        assert not any("lora_" in n for n, _ in lm.hf.named_parameters())
        assert set(dict(lm.hf.named_parameters())) == set(params)
    torch.testing.assert_close(adapted, unmerged, atol=1e-5, rtol=0)  # merging changes nothing but float noise
    assert not torch.allclose(adapted, base)
    assert torch.equal(next_token_logits(lm, PROMPTS), base)
    after = dict(lm.hf.named_parameters())
    assert set(after) == set(params) and all(torch.equal(after[n], p) for n, p in params.items())
    assert not any(p.requires_grad for p in after.values())
    with method.active(lm):  # re-attaching gives the same adapted model
        torch.testing.assert_close(next_token_logits(lm, PROMPTS), adapted)


def test_lora_evaluates_and_cleans_up_on_error():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    base = next_token_logits(lm, PROMPTS)
    method = LoRA(epochs=1, n_train=2, batch_size=6).fit(lm, tasks[:1])
    df = ev.evaluate(lm, method, tasks[:2], n_test=2, templates=[0], prefixes=["A:"], progress=False)
    assert len(df) == 4 and method.config()["target_modules"] == ["q_proj", "v_proj"]
    with pytest.raises(RuntimeError, match="boom"), method.active(lm):
        raise RuntimeError("boom")
    assert torch.equal(next_token_logits(lm, PROMPTS), base)
    with pytest.raises(RuntimeError, match="not fitted"), LoRA().active(lm):
        pass
