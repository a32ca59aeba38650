"""Length buckets: an optimal partition within a token cap; bucketed encoding equals one padded batch."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from workbench.core.batching import length_buckets
from workbench.core.encoders import load_encoder

TEXTS = ["hello", "the movie was great and long and slow and sad, a film of many many words indeed",
         "a sad film", "world", "is this sentence positive or negative", "great"] * 2


def brute_force_cost(lengths, overhead):
    order = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([0, 1], repeat=len(order) - 1):
        cost, start = 0, 0
        for i, cut in enumerate([*cuts, 1]):
            if cut:
                cost += (i + 1 - start) * order[i] + overhead
                start = i + 1
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_partition_and_optimal(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 120) for _ in range(9)]
    buckets = length_buckets(lengths, overhead_tokens=20)
    assert sorted(i for b in buckets for i in b) == list(range(9))
    cost = sum(len(b) * max(lengths[i] for i in b) + 20 for b in buckets)
    assert cost == brute_force_cost(lengths, 20)
    assert length_buckets([7] * 5) == [[0, 1, 2, 3, 4]] and length_buckets([]) == []
    capped = length_buckets(lengths, overhead_tokens=1000, max_tokens=150)
    assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 150 for b in capped)
    assert sorted(i for b in capped for i in b) == list(range(9))


def encode_once(enc, texts):
    return enc(**enc.tokenize(texts))


def test_bucketed_encode_equals_one_batch(llama_lm, name="scratch:2x64"):
    """Values and gradients (token embeddings included) of the bucketed pass match one right-padded batch."""
    enc = load_encoder(name, tokenizer=llama_lm.tokenizer if name.startswith("scratch") else None, seed=0).eval()
    assert len(length_buckets(enc.tokenize(TEXTS)["attention_mask"].sum(1).tolist())) > 1
    grads = []
    for fn in (enc.encode, lambda t: encode_once(enc, t)):
        enc.zero_grad()
        out = fn(TEXTS)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append((out.detach(), torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert float((grads[0][1] - grads[1][1]).norm() / grads[1][1].norm()) < 1e-4


def test_scratch_encoder_empty_or_invalid_text_is_a_clear_error():
    """An empty text used to give a reshape RuntimeError (alone) or pool padding (in a batch)."""
    from workbench.core.testing import tiny_model

    lm = tiny_model("llama", texts=TEXTS)
    enc = load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=0)
    for texts, index in (([""], 0), (["hello", "", "world"], 1)):
        with pytest.raises(ValueError, match=f"text {index} .*tokenizes to zero tokens.*scratch:1x32"):
            enc.encode(texts)
    with pytest.raises(ValueError, match="text 1 is not valid text"):
        enc.encode(["hello", "\ud800"])
    with pytest.raises(ValueError, match="text 0 is int"):
        enc.encode([3])
    assert enc.encode(["hello", "world"]).shape == (2, 32)
