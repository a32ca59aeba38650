"""workbench.atv.diagnostics: spread, projection parts, edit ratios, gradient split, probe, paired bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.atv import diagnostics as dg
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.inference import last_token_states

TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]


def make(lm, width: int = 32) -> ATVGenerator:
    torch.manual_seed(0)
    return ATVGenerator(load_encoder(f"scratch:1x{width}", tokenizer=lm.tokenizer, seed=0), lm)


def test_vector_spread_is_zero_for_identical_vectors_and_exact_otherwise():
    same = torch.randn(1, 3, 4).expand(5, 3, 4)
    spread = dg.vector_spread(same)
    assert list(spread.columns) == ["layer", "mean_norm", "spread", "spread_ratio"]
    assert np.allclose(spread["spread_ratio"], 0, atol=1e-6)
    v = torch.zeros(2, 1, 2)
    v[0, 0] = torch.tensor([1.0, 1.0])
    v[1, 0] = torch.tensor([3.0, 1.0])  # mean (2, 1), each 1 away
    row = dg.vector_spread(v).iloc[0]
    assert row["spread"] == pytest.approx(1.0) and row["mean_norm"] == pytest.approx(5 ** 0.5)
    with pytest.raises(ValueError, match=r"\[B, L, d\] with B >= 2"):
        dg.vector_spread(torch.randn(1, 3, 4))


def test_projection_parts_decompose_the_affine_map(llama_lm):
    gen = make(llama_lm)
    states = torch.randn(6, 32)
    with torch.no_grad():
        gen.projection.bias.zero_()
    parts = dg.projection_parts(gen, states)
    assert parts["bias"] == 0.0 and 0 < parts["query_share"] <= 1
    with torch.no_grad():  # a bias far larger than W s: the query-specific share collapses
        gen.projection.bias.fill_(1e4)
    big = dg.projection_parts(gen, states)
    assert big["bias"] > 1e5 and big["query_share"] < 1e-3
    assert big["query_specific"] == pytest.approx(parts["query_specific"], rel=1e-3)  # bias does not change it
    with torch.no_grad():
        gen.projection.weight.zero_()
    assert dg.projection_parts(gen, states)["query_specific"] == 0.0


def test_edit_ratios_against_the_hidden_state(llama_lm):
    lm = llama_lm
    prompts = [lm.render(t) for t in TEXTS[:3]]
    h = last_token_states(lm, prompts)
    vectors = torch.ones(3, lm.num_layers, lm.hidden_size)
    er = dg.edit_ratios(lm, vectors, 0.5, prompts, layers=[1])
    assert list(er["layer"]) == list(range(lm.num_layers))
    expected = (0.5 * lm.hidden_size ** 0.5 / h[:, 1].norm(dim=-1)).mean()
    assert er.loc[1, "edit_ratio"] == pytest.approx(float(expected), rel=1e-5)
    assert er.loc[0, "edit_ratio"] == 0 and er["query_ratio"].max() == pytest.approx(0, abs=1e-6)  # same vector
    assert er.loc[0, "cumulative_ratio"] == 0 and er.loc[lm.num_layers - 1, "cumulative_ratio"] > 0
    with pytest.raises(ValueError, match="3 vectors for 2 prompts"):
        dg.edit_ratios(lm, vectors, 0.5, prompts[:2])


def test_gradient_split_reaches_weight_bias_and_encoder(llama_lm):
    lm = llama_lm
    gen = make(lm).eval()  # no dropout: the two calls see the same vectors
    texts = TEXTS[:3]
    out = dg.gradient_split(lm, gen, texts, [" positive", " negative", " positive"], texts, scale=1.0)
    assert out["weight"] > 0 and out["bias"] > 0 and out["encoder"] > 0 and out["vector_query"] > 0
    assert all(p.grad is None for p in gen.parameters())  # cleared afterwards
    gen.encoder.requires_grad_(False)
    frozen = dg.gradient_split(lm, gen, texts, [" positive", " negative", " positive"], texts, scale=1.0)
    assert frozen["encoder"] == 0.0 and frozen["bias"] == pytest.approx(out["bias"], rel=1e-4)
    with pytest.raises(ValueError, match=">= 2 prompts"):
        dg.gradient_split(lm, gen, texts[:1], [" A"], texts[:1], scale=1.0)


def test_probe_accuracy_separates_separable_states_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    x = rng.normal(size=(100, 5))
    x[:, 0] += 4 * y
    assert dg.probe_accuracy(x[:60], y[:60], x[60:], y[60:]) > 0.95
    noise, labels = rng.normal(size=(400, 5)), np.tile(y, 4)
    assert dg.probe_accuracy(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.7
    with pytest.raises(ValueError, match="at least 2 classes"):
        dg.probe_accuracy(x[:10], [1] * 10, x[10:], [1] * 90)


def rows(correct: np.ndarray, item_ids: list[int]) -> pd.DataFrame:
    """One row per (item, variant): `correct` is [items, variants]."""
    recs = [{"task": "t", "item": it, "seed": 42, "template": v % 3,
             "prefix": ["A:", "Answer:", "The answer is"][v // 3], "label_correct": bool(correct[i, v])}
            for i, it in enumerate(item_ids) for v in range(correct.shape[1])]
    return pd.DataFrame(recs)


def test_paired_bootstrap_difference_and_clustered_interval():
    rng = np.random.default_rng(1)
    items = list(range(30))
    b = rng.random((30, 9)) < 0.5
    a = b.copy()
    a[:6] = True  # 6 items fixed in all 9 variants
    res = dg.paired_bootstrap(rows(a, items), rows(b, items).sample(frac=1, random_state=0))  # row order irrelevant
    assert res["diff"] == pytest.approx(100 * (a.mean() - b.mean()))
    assert res["n_items"] == 30 and res["n_rows"] == 270 and res["low"] <= res["diff"] <= res["high"]
    assert dg.paired_bootstrap(rows(b, items), rows(b, items)) == {"diff": 0.0, "low": 0.0, "high": 0.0,
                                                                   "n_items": 30, "n_rows": 270}
    # clustering: the same 270 differences, once as 30 items of 9 identical variants, once spread over 270 items
    clustered = np.zeros((30, 9), dtype=bool)
    clustered[:10] = True
    spread = clustered.reshape(270, 1)
    wide = dg.paired_bootstrap(rows(clustered, items), rows(np.zeros((30, 9), bool), items))
    narrow = dg.paired_bootstrap(rows(spread, list(range(270))), rows(np.zeros((270, 1), bool), list(range(270))))
    assert wide["diff"] == pytest.approx(narrow["diff"])
    assert wide["high"] - wide["low"] > 2 * (narrow["high"] - narrow["low"])  # item-level resampling is wider


def test_paired_bootstrap_refuses_unmatched_rows():
    a = rows(np.ones((3, 9), bool), [0, 1, 2])
    with pytest.raises(ValueError, match="only one of the two frames"):
        dg.paired_bootstrap(a, rows(np.ones((3, 9), bool), [0, 1, 5]))
    with pytest.raises(ValueError, match="lack column"):
        dg.paired_bootstrap(a.drop(columns="prefix"), a)
    with pytest.raises(ValueError, match="duplicate"):
        dg.paired_bootstrap(pd.concat([a, a]), a)
    with pytest.raises(ValueError, match="n_resamples"):
        dg.paired_bootstrap(a, a, n_resamples=5)
