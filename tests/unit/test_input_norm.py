"""ATVGenerator(input_norm=True): standardised small-model states before the projection, fit, save/load, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.atv import diagnostics as dg
from workbench.atv.generator import ATVGenerator
from workbench.atv.presets import get_preset, presets
from workbench.core.encoders import load_encoder

TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]


def make(lm, input_norm: bool) -> ATVGenerator:
    torch.manual_seed(0)
    return ATVGenerator(load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=0), lm, input_norm=input_norm)


def test_fit_input_norm_standardises_the_states_the_projection_reads(llama_lm):
    gen = make(llama_lm, True).eval()
    assert torch.equal(gen.input_mean, torch.zeros(32)) and torch.equal(gen.input_scale, torch.ones(32))
    gen.fit_input_norm(TEXTS)
    with torch.no_grad():
        states = gen.encoder.encode(TEXTS)
        z = (states - gen.input_mean) / gen.input_scale
        assert torch.allclose(z.mean(0), torch.zeros(32), atol=1e-5)
        assert torch.allclose(gen(TEXTS), gen.projection(z).view(4, llama_lm.num_layers, llama_lm.hidden_size),
                              atol=1e-5)
        assert torch.allclose(gen(states), gen(TEXTS), atol=1e-5)  # precomputed states are standardised too
    assert gen.describe()["input_norm"] is True
    with pytest.raises(ValueError, match="input_norm=False"):
        make(llama_lm, False).fit_input_norm(TEXTS)
    with pytest.raises(ValueError, match="at least 2 texts"):
        gen.fit_input_norm(TEXTS[:1])
    with pytest.raises(ValueError, match="input_norm must be True or False"):
        ATVGenerator(gen.encoder, llama_lm, input_norm="yes")


def test_centring_removes_the_common_component_from_the_query_share(llama_lm):
    """States with a large shared offset: un-centred, the projection's output is mostly W s̄ (one vector for every
    query); centred, the query-specific part is the whole of W z."""
    torch.manual_seed(1)
    states = 10 + 0.1 * torch.randn(16, 32)
    plain, normed = make(llama_lm, False), make(llama_lm, True)
    with torch.no_grad():
        for g in (plain, normed):
            g.projection.bias.zero_()
        normed.input_mean.copy_(states.mean(0))
        normed.input_scale.copy_(states.std(0))
    assert dg.projection_parts(plain, states)["query_share"] < 0.05
    assert dg.projection_parts(normed, states)["query_share"] > 0.95


def test_input_norm_round_trips_through_save_and_load(llama_lm, tmp_path):
    gen = make(llama_lm, True).eval()
    gen.fit_input_norm(TEXTS)
    gen.save(tmp_path / "g")
    back = ATVGenerator.load(tmp_path / "g", llama_lm,
                             encoder=load_encoder("scratch:1x32", tokenizer=llama_lm.tokenizer))
    assert back.input_norm and torch.equal(back.input_mean, gen.input_mean)
    with torch.no_grad():
        assert torch.allclose(back.eval()(TEXTS), gen(TEXTS), atol=1e-6)
    plain = make(llama_lm, False)
    plain.save(tmp_path / "p")
    assert not ATVGenerator.load(tmp_path / "p", llama_lm,
                                 encoder=load_encoder("scratch:1x32", tokenizer=llama_lm.tokenizer)).input_norm


def test_paper_preset_unchanged_and_cpu_presets_standardise():
    paper = get_preset("paper")
    assert not paper.input_norm and paper.config.lr == 5e-4 and paper.config.scale == 1e-3 and paper.config.epochs == 15
    assert paper.config.encoder_train_mode == "train" and paper.config.batch_size == 1
    for name in ("cpu-demo", "cpu-full"):
        p = presets[name]
        assert p.input_norm and p.config.encoder_train_mode == "frozen", name
    assert dataclasses.replace(presets["cpu-demo"], tasks=("glue_sst2",)).input_norm


def test_a_constant_feature_is_not_amplified(llama_lm):
    gen = make(llama_lm, True).eval()
    real_encode = gen.encoder.encode

    def encode(texts):  # feature 0 constant over the fit texts
        states = real_encode(texts)
        return torch.cat([torch.full_like(states[:, :1], 3.0), states[:, 1:]], 1)

    gen.encoder.encode = encode
    gen.fit_input_norm(TEXTS)
    with torch.no_grad():
        median = float(encode(TEXTS).std(0).median())
    assert float(gen.input_scale[0]) == pytest.approx(0.01 * median, rel=1e-4)  # the floor, not ~0
    assert torch.isfinite(gen(TEXTS)).all()


def test_zero_query_weights_starts_from_one_static_vector(llama_lm):
    gen = make(llama_lm, False).eval()
    gen.zero_query_weights()
    with torch.no_grad():
        v = gen(TEXTS)
    assert torch.allclose(v, v[:1].expand_as(v)) and v.abs().sum() > 0  # the bias, the same for every query
    light = ATVGenerator(load_encoder("scratch:1x32", tokenizer=llama_lm.tokenizer, seed=0), llama_lm, bottleneck=4)
    light.zero_query_weights()
    assert light.projection[-1].weight.abs().sum() == 0 and light.projection[0].weight.abs().sum() > 0
    assert presets["cpu-demo"].zero_query_weights and not get_preset("paper").zero_query_weights
