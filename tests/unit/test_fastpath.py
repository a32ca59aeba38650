"""The prefix-cached loss equals the naive whole-sequence loss (values and gradients); the naive loss is right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.atv.examples import tokenize_pair
from workbench.atv.fastpath import PrefixStore, fast_answer_loss
from workbench.atv.loss import answer_loss, answer_losses
from workbench.core.interventions import Injection
from workbench.core.testing import tiny_model

TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]
PROMPTS = ["the movie was great . A:", "the hello world is this sentence positive or negative ? A:", "the a"]
TARGETS = [" positive", " negative negative", " No"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def loss_and_grad(fn, lm, prompts, targets, v, scale, **kw):
    loss = fn(lm, prompts, targets, Injection(v, scale=scale), **kw)
    return loss.detach(), torch.autograd.grad(loss, v)[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_fast_equals_naive_tiny(arch):
    lm = tiny_model(arch, texts=TEXTS)
    torch.manual_seed(0)
    v = torch.randn(len(PROMPTS), lm.num_layers, lm.hidden_size, requires_grad=True)
    l1, g1 = loss_and_grad(answer_loss, lm, PROMPTS, TARGETS, v, 0.5)
    store = PrefixStore()
    l2, g2 = loss_and_grad(fast_answer_loss, lm, PROMPTS, TARGETS, v, 0.5, store=store)
    l3, g3 = loss_and_grad(fast_answer_loss, lm, PROMPTS, TARGETS, v, 0.5, store=store)  # from the store
    assert store.hits == 3 and len(store) == 3 and store.stats()["heads"] == 1
    for loss, grad in ((l2, g2), (l3, g3)):
        assert abs(float(loss - l1)) <= 1e-4 * abs(float(l1))
        assert rel(grad, g1) <= 1e-4


def test_fast_path_generator_gradients_and_budget(llama_lm):
    from workbench.atv.generator import ATVGenerator
    from workbench.core.encoders import load_encoder

    gen = ATVGenerator(load_encoder("scratch:1x32", tokenizer=llama_lm.tokenizer, seed=0), llama_lm).eval()
    grads = []
    for fn, kw in ((answer_loss, {}), (fast_answer_loss, {"store": PrefixStore(0)})):
        gen.zero_grad()
        fn(llama_lm, PROMPTS, TARGETS, Injection(gen.vectors(PROMPTS), scale=0.5), **kw).backward()
        grads.append(torch.cat([p.grad.flatten() for p in gen.parameters() if p.grad is not None]))
    assert rel(grads[1], grads[0]) <= 1e-4


def test_naive_loss_is_masked_mean_ce(llama_lm):
    """answer_loss = mean over examples of the mean CE over each example's answer tokens (no injection)."""
    lm = llama_lm
    expected = []
    for p, t in zip(PROMPTS, TARGETS):
        prompt_ids, answer_ids = tokenize_pair(lm, p, t)
        ids = torch.tensor([prompt_ids + answer_ids])
        logits = lm.hf(input_ids=ids).logits[0, len(prompt_ids) - 1: -1]
        expected.append(F.cross_entropy(logits, torch.tensor(answer_ids)))
    with torch.no_grad():
        got = answer_loss(lm, PROMPTS, TARGETS)
    assert torch.allclose(got, torch.stack(expected).mean(), rtol=1e-5)


def test_zero_vector_changes_nothing_and_positions_all(llama_lm):
    lm = llama_lm
    with torch.no_grad():
        clean, _ = answer_losses(lm, PROMPTS, TARGETS)
        zero = torch.zeros(len(PROMPTS), lm.num_layers, lm.hidden_size)
        assert torch.equal(answer_losses(lm, PROMPTS, TARGETS, Injection(zero, scale=1.0))[0], clean)
        v = torch.randn_like(zero)
        last = answer_losses(lm, PROMPTS, TARGETS, Injection(v, scale=1.0))[0]
        every = answer_losses(lm, PROMPTS, TARGETS, Injection(v, scale=1.0, positions="all"))[0]
    assert not torch.allclose(last, clean) and not torch.allclose(every, last)
    with pytest.raises(ValueError, match="positions='last'"):
        fast_answer_loss(lm, PROMPTS, TARGETS, Injection(v, positions="all"))


def test_bad_inputs(llama_lm):
    with pytest.raises(ValueError, match="equal, non-empty"):
        answer_loss(llama_lm, PROMPTS, TARGETS[:2])
    with pytest.raises(ValueError, match="wb.Injection"):
        answer_loss(llama_lm, PROMPTS, TARGETS, injection="nope")


def test_batched_prefixes_equal_one_by_one(llama_lm):
    """Right-padded batches (with and without a shared head) give each sequence's keys/values computed alone."""
    from workbench.atv.fastpath import prefix_kvs

    tok = llama_lm.tokenizer
    head = tok("the movie was")["input_ids"]
    seqs = [head + tok(t, add_special_tokens=False)["input_ids"]
            for t in ("great", "a sad and slow film", "hello world is")]
    alone = [prefix_kvs(llama_lm, [s])[0] for s in seqs]
    head_kv = prefix_kvs(llama_lm, [head])[0]
    for batch in (prefix_kvs(llama_lm, seqs), prefix_kvs(llama_lm, seqs, (len(head), head_kv))):
        for got, ref, s in zip(batch, alone, seqs):
            assert got.shape[:2] == (llama_lm.num_layers, 2) and got.shape[3] == len(s)
            assert torch.allclose(got, ref, atol=1e-5)
    empty, same = prefix_kvs(llama_lm, [[], head], (len(head), head_kv))
    assert empty.numel() == 0 and same is head_kv


def test_store_fill_stops_at_the_budget(llama_lm):
    tok = llama_lm.tokenizer
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    one = PrefixStore().prefixes(llama_lm, [0], seqs[:1])[0].nbytes
    store = PrefixStore(budget_mb=2.5 * one / 2**20, batch_tokens=len(max(seqs, key=len)))  # one row per batch
    assert store.fill(llama_lm, list(range(4)), seqs) == 2 and store.used <= store.budget
    full = PrefixStore().prefixes(llama_lm, list(range(4)), seqs)
    for got, ref in zip(store.prefixes(llama_lm, list(range(4)), seqs), full):  # the rest recomputed on demand
        assert torch.allclose(got, ref, atol=1e-5)
    with pytest.raises(ValueError, match="batch_tokens"):
        PrefixStore(batch_tokens=0)


def test_reused_workspace_keeps_earlier_graphs_intact(llama_lm):
    """Two forward passes share the store's collate workspace before either backward: gradients stay right."""
    torch.manual_seed(0)
    v = torch.randn(len(PROMPTS), llama_lm.num_layers, llama_lm.hidden_size, requires_grad=True)
    ref = [loss_and_grad(fast_answer_loss, llama_lm, PROMPTS[::k], TARGETS[::k], v[::k], 0.5, store=PrefixStore())
           for k in (1, 2)]
    store = PrefixStore()
    losses = [fast_answer_loss(llama_lm, PROMPTS[::k], TARGETS[::k], Injection(v[::k], scale=0.5), store=store)
              for k in (1, 2)]
    assert store.stats()["stored"] == 3
    for k, loss, (ref_loss, ref_grad) in zip((1, 2), losses, ref):
        assert torch.equal(loss.detach(), ref_loss)
        assert torch.allclose(torch.autograd.grad(loss, v)[0][::k], ref_grad, atol=1e-7)
