"""Side effects of steering (workbench.analysis.side_effects) on a tiny model: perplexity definitions, off-target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toy_synth import TEMPLATES, WORDS, make_task

from workbench.analysis.side_effects import (
    OnTarget,
    held_out_texts,
    off_target,
    perplexity,
    prefix_text,
    side_effects,
    text_ids,
    text_nll,
)
from workbench.core.inference import tokenize
from workbench.core.interventions import Injection, MaskedInjection, Replacement
from workbench.core.testing import tiny_model
from workbench.methods.base import Method, PreparedBatch
from workbench.ui.side_effect_plots import off_target_figure, perplexity_figure



TARGET, OTHER = make_task("synth_a", ("positive", "negative"), 3), make_task("synth_b", ("Yes", "No"), 5)
TEXTS = ["alpha beta gamma delta .", "the sentence is correct .", "zeta eta theta , iota kappa", "mu lambda"]


class Fixed(Method):
    """A test method: one fixed [L, d] vector injected at the last prompt token; records the task it was asked for."""

    name = "fixed"

    def __init__(self, vectors: torch.Tensor, scale: float = 1.0):
        self.vectors, self.scale, self.tasks = vectors, scale, []

    def prepare(self, lm, task, items, texts, seed=42):
        self.tasks.append(task.name)
        return PreparedBatch([lm.render(t) for t in texts], Injection(self.vectors, self.scale, positions="last"))


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES + TEXTS)


def vector(lm, norm: float, seed: int = 0) -> torch.Tensor:
    v = torch.randn(lm.num_layers, lm.hidden_size, generator=torch.Generator().manual_seed(seed))
    return norm * v / v.norm(dim=-1, keepdim=True)


def reference_nll(lm, text: str, edit_at: list[int] | None = None, v: torch.Tensor | None = None) -> float:
    """NLL of `text` after the prefix from one plain forward pass, optionally adding `v` at positions `edit_at`."""
    prefix = tokenize(lm, [prefix_text(lm)])[0]
    ids = prefix + text_ids(lm, [text])[0]
    x = torch.tensor([ids])
    with torch.no_grad():
        if edit_at is None:
            logits = lm.hf(input_ids=x).logits[0]
        else:
            mask = torch.zeros(1, len(ids))
            mask[0, edit_at] = 1
            inj = MaskedInjection(Injection(v, 1.0, positions="last"), mask)
            with lm.nn.trace(input_ids=x, attention_mask=torch.ones_like(x)):
                inj.apply(lm, slice(0, 1), torch.ones_like(x))
                out = lm.nn.output.logits.save()
            logits = out[0]
    logp = logits[len(prefix) - 1:-1].float().log_softmax(-1)
    return float(-logp.gather(-1, x[0, len(prefix):, None]).sum())


def test_unsteered_perplexity_is_exp_mean_nll_of_a_plain_forward_pass(lm):
    nll, counts = text_nll(lm, TEXTS, batch_size=3)  # padding across texts of different lengths
    by_hand = [reference_nll(lm, t) for t in TEXTS]
    assert np.allclose(nll, by_hand, atol=1e-4)
    assert list(counts) == [len(x) for x in text_ids(lm, TEXTS)]
    table = perplexity(lm, {"zero": Fixed(vector(lm, 0.0))}, TARGET, TEXTS, steps="all", n_boot=50, n_perm=50)
    assert table["ppl_unsteered"].iloc[0] == pytest.approx(math.exp(sum(by_hand) / counts.sum()), rel=1e-5)


def test_zero_vector_gives_exactly_the_unsteered_perplexity(lm):
    table = perplexity(lm, {"zero": Fixed(vector(lm, 0.0))}, TARGET, TEXTS, n_boot=50, n_perm=50)
    assert list(table["steps"]) == ["first", "all"]
    assert (table["ppl"] == table["ppl_unsteered"]).all() and (table["difference"] == 0).all()
    assert (table["p_value"] == 1.0).all() and (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()


def test_large_vector_raises_perplexity():
    """A large vector along the output direction of a token the texts never contain makes the model predict that
    token: every text token gets less probability (a sharper head makes the point on a random-init model)."""
    lm = tiny_model("llama", texts=WORDS + TEMPLATES + TEXTS)
    with torch.no_grad():
        lm.hf.lm_head.weight.mul_(20.0)
    w = lm.hf.lm_head.weight[lm.tokenizer.convert_tokens_to_ids("Neither")]
    v = (50.0 * w / w.norm()).expand(lm.num_layers, -1).clone()
    table = perplexity(lm, {"big": Fixed(v)}, TARGET, TEXTS, n_boot=200, n_perm=200)
    everywhere = table.set_index("steps").loc["all"]
    assert everywhere["ppl"] > 2 * everywhere["ppl_unsteered"] and everywhere["ci_low"] > 0
    assert table.set_index("steps").loc["first", "ppl"] != everywhere["ppl_unsteered"]


def test_first_edits_only_the_prefix_last_token_and_all_every_text_token(lm):
    v = vector(lm, 5.0, seed=1)
    n_prefix = len(tokenize(lm, [prefix_text(lm)])[0])
    for steps in ("first", "all"):
        nll, _ = text_nll(lm, TEXTS, Injection(v, 1.0, positions="last"), steps, batch_size=4)
        for t, got in zip(TEXTS, nll):
            n_text = len(text_ids(lm, [t])[0])
            edited = [n_prefix - 1] + (list(range(n_prefix, n_prefix + n_text)) if steps == "all" else [])
            assert got == pytest.approx(reference_nll(lm, t, edited, v), abs=1e-4)
            assert got != pytest.approx(reference_nll(lm, t), abs=1e-3)  # the vector is felt


def test_bad_inputs_name_the_value(lm):
    with pytest.raises(ValueError, match="texts is empty"):
        perplexity(lm, [Fixed(vector(lm, 1.0))], TARGET, [])
    with pytest.raises(ValueError, match=r"text 1 \(' '\)"):
        text_nll(lm, ["alpha", " "])
    with pytest.raises(ValueError, match="unknown steps 'every'"):
        perplexity(lm, [Fixed(vector(lm, 1.0))], TARGET, TEXTS, steps="every")
    with pytest.raises(ValueError, match="Replacement; use steps='first'"):
        text_nll(lm, TEXTS, Replacement(vector(lm, 1.0)), "all")
    with pytest.raises(ValueError, match="seed 'x' is not an int"):
        side_effects(lm, [Fixed(vector(lm, 1.0))], TARGET, [OTHER], TEXTS, seeds=[42, "x"])
    with pytest.raises(ValueError, match="includes the target task 'synth_a'"):
        off_target(lm, [Fixed(vector(lm, 1.0))], TARGET, [OTHER, TARGET])


def test_held_out_texts_ship_with_the_package():
    texts = held_out_texts()
    assert len(texts) == 40 and len(set(texts)) == 40 and all(t.strip() for t in texts)


def test_off_target_difference_is_steered_minus_unsteered_with_its_interval(lm):
    method = Fixed(vector(lm, 3.0, seed=2))
    table = off_target(lm, {"fixed": method}, TARGET, [OTHER], n_test=8, templates=[0], prefixes=["A:"],
                       n_boot=200, n_perm=200)
    assert set(method.tasks) == {"synth_a"}  # prepared as on its target task, scored on the other one
    assert set(table["score"]) == {"primary", "label"} and set(table["task"]) == {"synth_b", "all"}
    assert np.allclose(table["difference"], table["acc_steered"] - table["acc_unsteered"])
    assert ((table["ci_low"] <= table["difference"] + 1e-9) & (table["difference"] <= table["ci_high"] + 1e-9)).all()
    assert table["p_value"].between(0, 1).all() and (table["target_task"] == "synth_a").all()


def test_side_effects_returns_both_tables(lm):
    both = side_effects(lm, {"fixed": Fixed(vector(lm, 3.0))}, TARGET, [OTHER], TEXTS, steps="first", n_test=4,
                        n_boot=50, n_perm=50, templates=[0], prefixes=["A:"])
    ppl, off = both
    assert list(ppl["steps"]) == ["first"] and set(off["task"]) == {"synth_b", "all"}
    assert len(perplexity_figure(ppl).data) == 1 and len(off_target_figure(off).data) == 1
    with pytest.raises(ValueError, match="no score 'strict'"):
        off_target_figure(off, score="strict")


def test_on_target_delegates(lm):
    inner = Fixed(vector(lm, 1.0))
    wrapped = OnTarget(inner, TARGET)
    batch = wrapped.prepare(lm, OTHER, OTHER.test[:2], ["Q alpha\nA:", "Q beta\nA:"])
    assert inner.tasks == ["synth_a"] and len(batch.prompts) == 2 and wrapped.config()["steered_as"] == "synth_a"
    with pytest.raises(ValueError, match="must be a workbench Method"):
        OnTarget("atv", TARGET)
    from workbench.methods.lora import LoRA

    lora = OnTarget(LoRA(), TARGET)  # its own body cache and adapter, as the wrapped LoRA
    assert lora.shares_model_weights is False and lora.name == "lora"
    with pytest.raises(RuntimeError, match="not fitted"), lora.active(lm):
        pass


def test_real_methods_static_tv_and_lora(lm):
    """Static TV steers with its target task's vector everywhere; LoRA's adapter (no intervention) is active for
    every token, so both modes give the same perplexity, different from the unsteered one."""
    from workbench.methods.lora import LoRA
    from workbench.methods.static import StaticTaskVector

    static = StaticTaskVector(k=2, n_prompts=2, scale=2.0).fit(lm, [TARGET])
    lora = LoRA(epochs=1, n_train=4, batch_size=4, lr=5e-2).fit(lm, [TARGET])
    table = perplexity(lm, {"static": static, "lora": lora}, TARGET, TEXTS, n_boot=50, n_perm=50).set_index(
        ["method", "steps"])
    assert table["steered"].all()
    assert table.loc[("lora", "first"), "ppl"] == pytest.approx(table.loc[("lora", "all"), "ppl"], rel=1e-6)
    assert table.loc[("lora", "all"), "ppl"] != pytest.approx(table.loc[("lora", "all"), "ppl_unsteered"], rel=1e-6)
    assert table.loc[("static", "all"), "ppl"] != pytest.approx(table.loc[("static", "all"), "ppl_unsteered"])
    after = perplexity(lm, {"zero": Fixed(vector(lm, 0.0))}, TARGET, TEXTS, steps="first", n_boot=50, n_perm=50)
    assert after["ppl_unsteered"].iloc[0] == table["ppl_unsteered"].iloc[0]  # LoRA left the weights as they were
