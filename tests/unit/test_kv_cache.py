"""Shared-prefix logits equal the uncached path; bodies are computed once, kept within budget, never crossed between
scopes; the cache argument follows transformers' new name."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from workbench.core.inference import (
    cached_next_token_logits,
    joint_intervention,
    next_token_logits,
    row_body_edits,
    tokenize,
)
from workbench.core.interventions import ContextInjection, Injection, Replacement
from workbench.core.kv_cache import BodyCache, cache_kwarg, shared_bodies
from workbench.core.testing import tiny_model

BODY = "Is the sentence positive or negative ? the cat is good"
TEXTS = [f"{BODY}\nA:", f"{BODY}\nAnswer:", f"{BODY}\nThe answer is", "Question : a b c\nA:",
         "Question : a b c d e f\nAnswer:", "Q", "Question : a b c\nThe answer is"]
ARCHS = ["llama", "gpt2", "qwen2", "gpt_neox", "gemma2", "phi3"]


def interventions(lm, n):
    torch.manual_seed(0)
    L, d = lm.num_layers, lm.hidden_size
    return {
        "none": None,
        "shared": Injection(torch.randn(L, d), scale=0.5, layers="all"),
        "per-prompt": Injection(torch.randn(n, L, d), scale=0.5, layers="middle"),
        "replace": Replacement(torch.randn(L, d), layers=[1, 2]),
        # I2CL: every token edited alike; bodies are computed under the edit
        "context": ContextInjection(torch.randn(L, 2, d), coefs(L)),
        "context, one vector repeated per prompt": ContextInjection(torch.randn(L, 2, d).expand(n, L, 2, d).clone(),
                                                                   coefs(L)),
    }


def coefs(L):
    return torch.stack([torch.full((L, 2), 0.3), torch.full((L, 2), 0.9)], dim=-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_uncached(arch):
    lm = tiny_model(arch, texts=TEXTS)
    cache = BodyCache(16)
    for name, inj in interventions(lm, len(TEXTS)).items():
        plain = next_token_logits(lm, TEXTS, inj, batch_size=4)
        for batch_size, share_tails in itertools.product((3, 8), (False, True)):
            cached = cached_next_token_logits(lm, TEXTS, inj, cache=cache, batch_size=batch_size,
                                              share_tails=share_tails)
            assert torch.allclose(cached, plain, atol=1e-5, rtol=0), (arch, name, (cached - plain).abs().max())
            assert torch.equal(cached.argmax(-1), plain.argmax(-1)), (arch, name, share_tails)
    assert cache.hits > 0 and cache.stats()["tail_tokens_run"] < sum(len(s) for s in tokenize(lm, TEXTS)) * 8


def test_bodies_are_computed_once_and_scopes_never_mix():
    lm = tiny_model("llama", texts=TEXTS)
    cache = BodyCache(16)
    cached_next_token_logits(lm, TEXTS, cache=cache)
    first = cache.stats()
    cached_next_token_logits(lm, TEXTS, cache=cache)
    assert cache.misses == first["misses"] and cache.hits > first["hits"]  # nothing recomputed
    cached_next_token_logits(lm, TEXTS, cache=cache, scope="lora")
    assert cache.misses == 2 * first["misses"]  # another scope never reuses a body


def test_zero_budget_keeps_nothing_and_still_agrees():
    lm = tiny_model("gpt2", texts=TEXTS)
    cache = BodyCache(0)
    out = cached_next_token_logits(lm, TEXTS, cache=cache)
    assert cache.stats()["kept"] == 0 and cache.used == 0
    assert torch.allclose(out, next_token_logits(lm, TEXTS), atol=1e-5, rtol=0)


def test_interventions_on_earlier_positions_are_refused():
    """Only edits that are the same for every prompt at every token can share bodies."""
    lm = tiny_model("llama", texts=TEXTS)
    L, d, n = lm.num_layers, lm.hidden_size, len(TEXTS)
    for inj in (Injection(torch.randn(L, d), positions="all"),
                ContextInjection(torch.randn(n, L, 2, d), coefs(L)),  # one vector per prompt
                ContextInjection(torch.randn(L, 2, d), coefs(L), noise=0.1)):
        with pytest.raises(ValueError, match="only the last prompt token"):
            cached_next_token_logits(lm, TEXTS, inj)


def test_edited_bodies_are_kept_apart_by_the_edit():
    lm = tiny_model("llama", texts=TEXTS)
    L, d = lm.num_layers, lm.hidden_size
    cache = BodyCache(16)
    cached_next_token_logits(lm, TEXTS, cache=cache)
    plain_misses = cache.misses
    a, b = (ContextInjection(torch.randn(L, 2, d), coefs(L)) for _ in range(2))
    for inj in (a, b):
        out = cached_next_token_logits(lm, TEXTS, inj, cache=cache)
        assert torch.allclose(out, next_token_logits(lm, TEXTS, inj), atol=1e-5, rtol=0)
    assert cache.misses == 3 * plain_misses  # neither the plain bodies nor a's were reused for b
    cached_next_token_logits(lm, TEXTS, ContextInjection(a.vectors.clone(), a.coefs.clone()), cache=cache)
    assert cache.misses == 3 * plain_misses  # the same edit (by content) reuses a's bodies


def test_shared_bodies_is_the_longest_prefix_shared_with_another_prompt():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7], [9], [1, 2, 3, 4]]
    want = []
    for i, s in enumerate(seqs):
        best = max(len(list(itertools.takewhile(lambda p: p[0] == p[1], zip(s, t))))
                   for j, t in enumerate(seqs) if j != i)
        want.append(max(0, min(best, len(s) - 1)))
    assert shared_bodies(seqs) == want == [3, 3, 2, 0, 3]


def test_cache_argument_name():
    lm = tiny_model("llama")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    assert cache_kwarg(Old()) == "past_key_values"
    import inspect

    expected = "cache" if "cache" in inspect.signature(type(lm.hf).forward).parameters else "past_key_values"
    assert cache_kwarg(lm.hf) == expected


def test_no_deprecated_cache_argument_is_passed():
    """transformers 5.x warns that `past_key_values` goes away in 5.40: the cached path must not use it."""
    lm = tiny_model("llama", texts=TEXTS)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        cached_next_token_logits(lm, TEXTS, cache=BodyCache(4))


def test_bad_inputs():
    with pytest.raises(ValueError, match="budget_mb"):
        BodyCache(-1)
    with pytest.raises(ValueError, match="batch_tokens"):
        BodyCache(1, batch_tokens=0)
    lm = tiny_model("llama", texts=TEXTS)
    with pytest.raises(ValueError, match="prompts"):
        cached_next_token_logits(lm, [])


def test_shared_tails_run_one_token_per_prompt_once_kept():
    """With share_tails the prompts but their last token are kept: a second method runs one token per prompt."""
    lm = tiny_model("llama", texts=TEXTS)
    cache = BodyCache(16)
    first = cached_next_token_logits(lm, TEXTS, cache=cache, share_tails=True)
    misses, tails = cache.misses, cache.tail_tokens
    inj = Injection(torch.randn(len(TEXTS), lm.num_layers, lm.hidden_size), scale=0.5)
    second = cached_next_token_logits(lm, TEXTS, inj, cache=cache, share_tails=True)
    assert cache.misses == misses and cache.tail_tokens - tails == len(TEXTS)
    assert torch.allclose(first, next_token_logits(lm, TEXTS), atol=1e-5, rtol=0)
    assert torch.allclose(second, next_token_logits(lm, TEXTS, inj), atol=1e-5, rtol=0)


def test_joint_intervention_joins_last_token_edits_and_one_body_edit_only():
    lm = tiny_model("llama", texts=TEXTS)
    L, d, n = lm.num_layers, lm.hidden_size, 2
    a = ContextInjection(torch.randn(L, 2, d), coefs(L))
    same = ContextInjection(a.vectors.clone(), a.coefs.clone())
    joint, edit = joint_intervention([a, same], n, L)
    assert joint and isinstance(edit, ContextInjection) and torch.equal(edit.vectors, a.vectors)
    prompts = TEXTS[:n] * 2
    assert torch.allclose(cached_next_token_logits(lm, prompts, edit, cache=BodyCache(16), batch_size=4),
                          next_token_logits(lm, prompts, a, batch_size=4), atol=1e-5, rtol=0)
    other = ContextInjection(torch.randn(L, 2, d), coefs(L))
    assert joint_intervention([a, other], n, L) == (False, None)  # two different edits
    assert joint_intervention([a, None], n, L) == (False, None)  # an edit and a plain pass
    joint, stacked = joint_intervention([None, Injection(torch.randn(L, d), scale=0.5)], n, L)
    assert joint and isinstance(stacked, Injection) and stacked.vectors.shape == (2 * n, L, d)


def test_row_body_edits_key_each_prompt_by_its_own_vectors():
    lm = tiny_model("llama", texts=TEXTS)
    L, d = lm.num_layers, lm.hidden_size
    a, b = torch.randn(L, 2, d), torch.randn(L, 2, d)
    per_row = ContextInjection(torch.stack([a, b, a.clone(), b]), coefs(L))
    edits = row_body_edits(per_row, 4)
    assert edits is not None and [e[0] for e in edits][:2] != [edits[0][0]] * 2
    assert edits[0][0] == edits[2][0] and edits[1][0] == edits[3][0] and edits[0][0] != edits[1][0]
    # each row's edit gives that row's logits, through the cache too
    prompts = TEXTS[:4]
    plain = next_token_logits(lm, prompts, per_row, batch_size=4)
    for r, (_, edit) in enumerate(edits):
        got = cached_next_token_logits(lm, [prompts[r]], edit, cache=BodyCache(16))
        assert torch.allclose(got[0], plain[r], atol=1e-5, rtol=0), r
    # not a per-prompt body edit: shared vectors, noise, last-token edits, gradients, a count that does not match
    assert row_body_edits(ContextInjection(a, coefs(L)), 4) is None
    assert row_body_edits(ContextInjection(torch.stack([a, b]), coefs(L), noise=0.1), 2) is None
    assert row_body_edits(Injection(torch.randn(2, L, d), scale=0.5), 2) is None
    assert row_body_edits(ContextInjection(torch.stack([a, b]), coefs(L).requires_grad_()), 2) is None
    assert row_body_edits(per_row, 3) is None and row_body_edits(None, 1) is None
