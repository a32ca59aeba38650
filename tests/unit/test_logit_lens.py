"""The vocabulary projection (logit lens) of steering vectors reads them through the model's own final norm and
unembedding: a vector pointing at a token's unembedding row promotes that token first, and at the last layer the
projection at a reference state is exactly the change of the model's next-token logits."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.analysis.vocab_projection import final_norm, lens_table, logit_lens, projection_scores


def _gain(lm):
    """The final norm's per-dimension gain (Gemma's RMSNorm multiplies by 1 + weight)."""
    norm = final_norm(lm)
    w = norm.weight.detach().float()
    return 1 + w if "Gemma" in type(norm).__name__ else w


def test_a_vector_along_a_tokens_unembedding_row_after_the_norm_ranks_it_first(tiny_lm):
    lm, L = tiny_lm, tiny_lm.num_layers
    with torch.no_grad():  # a non-uniform gain: the lens must divide it out, i.e. really apply the norm
        g = torch.linspace(0.5, 2.0, lm.hidden_size)
        norm = final_norm(lm)
        norm.weight.copy_(g - 1 if "Gemma" in type(norm).__name__ else g)
    W = lm.hf.get_output_embeddings().weight.detach().float()
    tokens = [5, 17, 30, 41]
    vectors = torch.zeros(L, lm.hidden_size)
    for layer, t in zip(range(L), tokens):
        row = W[t] / _gain(lm)
        vectors[layer] = (3.0 + layer) * (row - row.mean())  # LayerNorm centres: give it a centred vector
    frame = logit_lens(lm, vectors, top_k=3)
    first = frame[frame["rank"] == 1].set_index("layer")["token_id"]
    assert first.to_dict() == dict(zip(range(L), tokens[:L])), lm.name
    assert list(frame.columns) == ["vector", "layer", "rank", "token", "token_id", "score"]
    assert (frame.groupby("layer")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_at_the_last_layer_the_projection_at_a_state_is_the_change_of_the_logits(tiny_lm):
    lm, L, d = tiny_lm, tiny_lm.num_layers, tiny_lm.hidden_size
    prompt = ["the movie was great"]
    v = torch.randn(L, d, generator=torch.Generator().manual_seed(1))
    h = wb.last_token_states(lm, prompt)[0]
    lens = projection_scores(lm, v, reference=h, scale=0.7)[L - 1]
    steered = wb.next_token_logits(lm, prompt, wb.Injection(v, scale=0.7, layers=[L - 1]))[0]
    assert torch.allclose(lens, steered - wb.next_token_logits(lm, prompt)[0], atol=1e-4), lm.name


def test_default_projection_ignores_scale_and_skips_unsteered_layers(llama_lm):
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    v = torch.zeros(L, d)
    v[1] = torch.randn(d, generator=torch.Generator().manual_seed(2))
    a = logit_lens(llama_lm, {"a": v, "b": 10 * v}, top_k=4)
    assert set(a["layer"]) == {1}
    assert a[a.vector == "a"]["token_id"].tolist() == a[a.vector == "b"]["token_id"].tolist()
    table = lens_table(a, top=2)
    assert list(table.columns) == ["a", "b"] and list(table.index) == [1]
    assert table.loc[1, "a"] == " ".join(repr(t) for t in a[a.vector == "a"]["token"][:2])
    assert set(logit_lens(llama_lm, v, top_k=2, layers=[0, 1])["layer"]) == {0, 1}


def test_bad_vectors_are_clear_errors(llama_lm):
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    want = rf"vectors must be a tensor \[L, d\] = \[{L}, {d}\] for tiny-llama, got \(3,\)"
    with pytest.raises(ValueError, match=want):
        logit_lens(llama_lm, torch.zeros(3))
    with pytest.raises(ValueError, match=r"reference must be a tensor .* or \[N,"):
        logit_lens(llama_lm, torch.ones(L, d), reference=torch.zeros(L, d + 1))
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        logit_lens(llama_lm, torch.ones(L, d), top_k=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        logit_lens(llama_lm, torch.full((L, d), float("nan")))


def test_heatmap_has_one_panel_per_vector_labelled_with_the_tokens(llama_lm):
    from workbench.ui.lens_plots import logit_lens_figure

    L, d = llama_lm.num_layers, llama_lm.hidden_size
    v = torch.randn(L, d, generator=torch.Generator().manual_seed(4))
    frame = logit_lens(llama_lm, {"ATV": v, "static": -v}, top_k=3)
    fig = logit_lens_figure(frame)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    first = frame[(frame.vector == "ATV") & (frame.layer == 0)].sort_values("rank")["token"].map(repr).tolist()
    assert list(fig.data[0].text[0]) == first
    assert [a.text for a in fig.layout.annotations] == ["ATV", "static"]
    assert abs(fig.data[0].z).max() == pytest.approx(1.0)
