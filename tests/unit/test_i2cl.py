"""I2CL on tiny models: context vectors from attention/MLP outputs, calibrated coefficients, unseen retrieval."""

from __future__ import annotations

import pytest
import torch
from test_static_tv import single_thread, texts_for, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench.eval.evaluate as ev
from workbench.core.inference import encode, next_token_logits
from workbench.core.interventions import ContextInjection, first_output
from workbench.methods.demos import per_class_demos, single_demos
from workbench.methods.i2cl import I2CL, warmup_cosine


@pytest.fixture(scope="module")
def fitted():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    method = I2CL(shots_per_class=2, epochs=2).fit(lm, tasks[:2])
    return lm, tasks, method


def test_context_vectors_are_mean_module_outputs(fitted):
    """Independent check with plain PyTorch forward hooks (no nnsight), one demonstration per forward pass."""
    lm, tasks, method = fitted
    demos = per_class_demos(tasks[0], 2)
    assert [d.output for d in demos] == ["positive", "negative"] * 2
    texts = single_demos(lm, tasks[0], demos)
    assert texts[0].endswith("\nA: positive")
    captured: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    block = lm.layers[2]
    hooks = [module.register_forward_hook(lambda m, i, o, j=j: captured[j].append(first_output(o)[0, -1].detach()))
             for j, module in enumerate((block.self_attn, block.mlp))]
    try:
        for text in texts:
            with torch.no_grad():
                lm.hf(**{k: v for k, v in encode(lm, [text]).items()})
    finally:
        for h in hooks:
            h.remove()
    expected = torch.stack([torch.stack(captured[j]).mean(0) for j in (0, 1)])
    cv = method.vectors["toy_sentiment"]
    assert cv.shape == (lm.num_layers, 2, lm.hidden_size)
    torch.testing.assert_close(cv[2], expected, rtol=1e-5, atol=1e-6)
    assert method.vectors["toy_yesno"].shape == (lm.num_layers, 2, lm.hidden_size)


def test_coefficients_move_during_calibration(fitted):
    _, _, method = fitted
    assert method.initial_coefs[..., 0].eq(0.1).all() and method.initial_coefs[..., 1].eq(1.0).all()
    assert (method.coefs - method.initial_coefs).abs().max() > 1e-4
    assert len(method.losses) == 2


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_gradients_reach_coefficients_and_identity_is_exact(arch):
    lm = toy_lm(arch)
    L, d = lm.num_layers, lm.hidden_size
    prompts = ["Review: good movie 1\nA:", "Claim: bad film\nA:"]
    identity = ContextInjection(torch.randn(L, 2, d), torch.tensor([0.0, 1.0]).repeat(L, 2, 1))
    assert torch.equal(next_token_logits(lm, prompts, identity), next_token_logits(lm, prompts))
    coefs = torch.tensor([0.1, 1.0]).repeat(L, 2, 1).requires_grad_(True)
    logits = next_token_logits(lm, prompts, ContextInjection(torch.randn(2, L, 2, d), coefs, noise=1e-3))
    logits.logsumexp(-1).sum().backward()
    assert coefs.grad is not None and coefs.grad.abs().sum() > 0


def test_unseen_uses_nearest_task_and_evaluates(fitted):
    lm, tasks, method = fitted
    batch = method.prepare(lm, tasks[2], tasks[2].test, texts_for(tasks[2]))
    assert batch.intervention.vectors.shape[0] == len(tasks[2].test)
    assert all(row["cv_task"] in {"toy_sentiment", "toy_yesno"} for row in batch.info)
    seen = method.prepare(lm, tasks[0], tasks[0].test, texts_for(tasks[0]))
    assert seen.info[0]["cv_task"] == "toy_sentiment" and seen.intervention.vectors.dim() == 3
    df = ev.evaluate(lm, method, tasks, n_test=2, templates=[0], prefixes=["A:"], progress=False)
    assert len(df) == 6 and "cv_task" in df.columns


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 5) == pytest.approx(0.2)
    assert warmup_cosine(5, 100, 5) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 5) == pytest.approx(0.0)
