"""Injection core on tiny random-init models of several architectures: exactness, equivalence, isolation, grads."""

from __future__ import annotations

import math

import pytest
import torch
from reference_hooks import hook_logits

import workbench as wb
from workbench.core.inference import encode
from workbench.core.interventions import thirds

PROMPTS = ["the movie was great", "hello", "a sad and slow film is this sentence positive or negative"]


def test_zero_vectors_reproduce_clean_logits_exactly(tiny_lm):
    clean = wb.next_token_logits(tiny_lm, PROMPTS)
    for positions in ("last", "all"):
        zero = torch.zeros(tiny_lm.num_layers, tiny_lm.hidden_size)
        steered = wb.next_token_logits(tiny_lm, PROMPTS, wb.Injection(zero, scale=1.0, positions=positions))
        assert torch.equal(clean, steered)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_nnsight_equals_plain_hooks(tiny_lm, positions):
    torch.manual_seed(1)
    vectors = torch.randn(len(PROMPTS), tiny_lm.num_layers, tiny_lm.hidden_size)
    layers = [0, 2, 3]
    inj = wb.Injection(vectors, scale=0.5, layers=layers, positions=positions)
    ours = wb.next_token_logits(tiny_lm, PROMPTS, inj)
    with torch.no_grad():
        ref = hook_logits(tiny_lm, PROMPTS, vectors, 0.5, layers, positions)
    assert (ours - ref).abs().max() <= 1e-6
    assert (ours - wb.next_token_logits(tiny_lm, PROMPTS)).abs().max() > 1e-3  # the injection did something


def test_left_padded_batch_equals_each_prompt_alone(tiny_lm):
    torch.manual_seed(2)
    vectors = torch.randn(len(PROMPTS), tiny_lm.num_layers, tiny_lm.hidden_size)
    for inj_of in (lambda v: None, lambda v: wb.Injection(v, scale=0.3)):
        batch = wb.next_token_logits(tiny_lm, PROMPTS, inj_of(vectors), batch_size=8)
        for i, p in enumerate(PROMPTS):
            inj = inj_of(vectors[i : i + 1])
            alone = wb.next_token_logits(tiny_lm, [p], inj)
            assert (batch[i] - alone[0]).abs().max() <= 1e-5


def _capture(lm, prompts, inj):
    """Block outputs at every layer with the injection applied by plain hooks (capture hooks run after edits)."""
    import contextlib

    from reference_hooks import hooked

    enc = encode(lm, prompts)
    outs = {}
    if inj is None:
        editing = contextlib.nullcontext()
    else:
        layer_ids = wb.resolve_layers(inj.layers, lm.num_layers)
        editing = hooked(lm.layers, {i: inj.scale * inj.vectors[i] for i in layer_ids}, inj.positions,
                         enc["attention_mask"])
    with editing:
        handles = [
            block.register_forward_hook(
                lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach())
            )
            for i, block in enumerate(lm.layers)
        ]
        try:
            with torch.no_grad():
                lm.hf(**enc)
        finally:
            for h in handles:
                h.remove()
    return outs, enc["attention_mask"]


def test_only_chosen_layers_and_positions_change(llama_lm):
    """Nothing before the first injected layer changes; with positions='last', earlier tokens never change."""
    lm = llama_lm
    torch.manual_seed(3)
    vectors = torch.randn(lm.num_layers, lm.hidden_size)
    clean, mask = _capture(lm, PROMPTS, None)
    steered, _ = _capture(lm, PROMPTS, wb.Injection(vectors, scale=1.0, layers=[2], positions="last"))
    for i in (0, 1):
        assert torch.equal(clean[i], steered[i])
    assert torch.allclose(clean[2][:, :-1], steered[2][:, :-1], atol=0)
    assert torch.allclose(clean[3][:, :-1], steered[3][:, :-1], atol=0)
    assert (clean[2][:, -1] - steered[2][:, -1]).abs().max() > 0.5
    # nnsight path applies the same edit: logits agree with the hook path
    logits = wb.next_token_logits(lm, PROMPTS, wb.Injection(vectors, scale=1.0, layers=[2]))
    assert torch.allclose(logits, lm.hf.lm_head(lm.hf.model.norm(steered[3][:, -1])), atol=1e-5)
    # positions="all": pad positions of the left-padded batch stay untouched
    allpos, _ = _capture(lm, PROMPTS, wb.Injection(vectors, scale=1.0, layers=[2], positions="all"))
    pads = mask == 0
    assert pads.any()
    assert torch.equal(allpos[2][pads], clean[2][pads])
    assert (allpos[2][~pads] - clean[2][~pads]).abs().min() > 0


def test_gradients_reach_vectors_not_model(llama_lm):
    vectors = torch.randn(len(PROMPTS), llama_lm.num_layers, llama_lm.hidden_size, requires_grad=True)
    logits = wb.next_token_logits(llama_lm, PROMPTS, wb.Injection(vectors, scale=0.1, layers="bottom"), batch_size=2)
    logits.logsumexp(-1).sum().backward()
    assert vectors.grad is not None
    bottom = wb.resolve_layers("bottom", llama_lm.num_layers)
    assert vectors.grad[:, bottom].abs().sum() > 0
    others = [i for i in range(llama_lm.num_layers) if i not in bottom]
    assert torch.equal(vectors.grad[:, others], torch.zeros_like(vectors.grad[:, others]))
    assert all(p.grad is None and not p.requires_grad for p in llama_lm.hf.parameters())


def test_gradients_match_hook_reference(llama_lm):
    torch.manual_seed(4)
    base = torch.randn(len(PROMPTS), llama_lm.num_layers, llama_lm.hidden_size)
    v1 = base.clone().requires_grad_(True)
    wb.next_token_logits(llama_lm, PROMPTS, wb.Injection(v1, scale=0.2))[:, 5].sum().backward()
    v2 = base.clone().requires_grad_(True)
    hook_logits(llama_lm, PROMPTS, v2, 0.2, range(llama_lm.num_layers))[:, 5].sum().backward()
    assert torch.allclose(v1.grad, v2.grad, atol=1e-6)


@pytest.mark.parametrize("L,expected", [(30, (10, 20)), (32, (11, 21)), (4, (1, 3)), (3, (1, 2))])
def test_thirds_rounding(L, expected):
    assert thirds(L) == expected
    parts = [wb.resolve_layers(s, L) for s in ("bottom", "middle", "top")]
    assert sum(parts, []) == list(range(L))


def test_layer_specs():
    assert wb.resolve_layers(range(2, 4), 6) == [2, 3]
    assert wb.resolve_layers([5, 1], 6) == [1, 5]
    assert wb.resolve_layers("all", 3) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(vectors=torch.zeros(4)), r"\[L, d\]"),
        (dict(vectors=[[0.0]]), r"\[L, d\]"),
        (dict(vectors=torch.full((4, 32), math.nan)), "NaN"),
        (dict(vectors=torch.zeros(4, 32), scale=math.inf), "finite"),
        (dict(vectors=torch.zeros(4, 32), scale="big"), "finite"),
        (dict(vectors=torch.zeros(4, 32), layers="upper"), "unknown layer spec 'upper'"),
        (dict(vectors=torch.zeros(4, 32), layers=[1, 1]), "repeats"),
        (dict(vectors=torch.zeros(4, 32), layers=[1.5]), "ints"),
        (dict(vectors=torch.zeros(4, 32), positions="first"), "unknown positions 'first'"),
    ],
)
def test_bad_injection_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wb.Injection(**kwargs)


def test_bad_inputs_against_model_raise(llama_lm):
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    with pytest.raises(ValueError, match=rf"\[{L}, {d}\]"):
        wb.next_token_logits(llama_lm, ["hello"], wb.Injection(torch.zeros(L + 1, d)))
    with pytest.raises(ValueError, match="B=2 prompts but 3"):
        wb.next_token_logits(llama_lm, PROMPTS, wb.Injection(torch.zeros(2, L, d)))
    with pytest.raises(ValueError, match=f"layer index {L} out of range"):
        wb.next_token_logits(llama_lm, ["hello"], wb.Injection(torch.zeros(L, d), layers=[0, L]))
    with pytest.raises(ValueError, match="empty"):
        wb.next_token_logits(llama_lm, [])
    with pytest.raises(ValueError, match="prompt 1 is int"):
        wb.next_token_logits(llama_lm, ["a", 3])
    with pytest.raises(ValueError, match="list of strings"):
        wb.next_token_logits(llama_lm, "hello")
    with pytest.raises(ValueError, match="batch_size"):
        wb.next_token_logits(llama_lm, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        wb.generate(llama_lm, ["a"], steps="every")
    with pytest.raises(ValueError, match="injection must be"):
        wb.next_token_logits(llama_lm, ["a"], injection=torch.zeros(L, d))


def test_generate_matches_hf_greedy(tiny_lm):
    prompts = ["hello world", "the movie was great is this"]
    ours = wb.generate(tiny_lm, prompts, max_new_tokens=4)
    enc = encode(tiny_lm, prompts)
    with torch.no_grad():
        ids = tiny_lm.hf.generate(**{k: v for k, v in enc.items() if k != "position_ids"}, max_new_tokens=4,
                                  do_sample=False, pad_token_id=tiny_lm.tokenizer.pad_token_id)
    hf = tiny_lm.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours == hf


def test_generate_steps_first_vs_all(llama_lm):
    torch.manual_seed(5)
    inj = wb.Injection(torch.randn(llama_lm.num_layers, llama_lm.hidden_size), scale=3.0)
    first = wb.generate(llama_lm, ["hello world"], inj, max_new_tokens=6, steps="first")
    every = wb.generate(llama_lm, ["hello world"], inj, max_new_tokens=6, steps="all")
    clean = wb.generate(llama_lm, ["hello world"], max_new_tokens=6)
    assert len({first[0], every[0], clean[0]}) >= 2


# --------------------------------------------------------------------------------------------- the protocol
def _all_interventions(lm):
    from workbench.core.interventions import ContextInjection, MaskedInjection, Replacement

    L, d = lm.num_layers, lm.hidden_size
    inj = wb.Injection(torch.zeros(L, d))
    return [inj, MaskedInjection(inj, torch.ones(1, 3)), Replacement(torch.zeros(L, d)),
            ContextInjection(torch.zeros(L, 2, d), torch.zeros(L, 2, 2))]


def test_every_intervention_implements_the_whole_protocol(llama_lm):
    from workbench.core.interventions import INTERVENTION_MEMBERS, Intervention, as_intervention

    assert set(INTERVENTION_MEMBERS) == {"requires_grad", "check", "apply", "describe", "positions"}
    for obj in _all_interventions(llama_lm):
        assert isinstance(obj, Intervention) and as_intervention(obj) is obj
        assert obj.positions in ("last", "all", "mask")
        assert obj.requires_grad is False and isinstance(obj.describe(), dict)
        assert obj.check(llama_lm, 1) is None
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    assert wb.Injection(torch.zeros(L, d, requires_grad=True)).requires_grad


def test_object_missing_a_protocol_member_is_rejected(llama_lm):
    """The old inference took anything with an `apply` (no check, no requires_grad): now every member is needed."""
    inj = wb.Injection(torch.zeros(llama_lm.num_layers, llama_lm.hidden_size))

    class OnlyApply:
        def apply(self, lm, rows, attention_mask):
            inj.apply(lm, rows, attention_mask)

        def describe(self):
            return {}

    with pytest.raises(ValueError, match="must be an Intervention.*OnlyApply lacks requires_grad, check, positions"):
        wb.next_token_logits(llama_lm, ["hello"], OnlyApply())
    with pytest.raises(ValueError, match="OnlyApply lacks requires_grad, check, positions"):
        wb.generate(llama_lm, ["hello"], OnlyApply(), max_new_tokens=1)


# --------------------------------------------------------------------------------------------- layer specs
def test_layers_accept_numpy_integers(llama_lm):
    import numpy as np

    L, d = llama_lm.num_layers, llama_lm.hidden_size
    assert wb.resolve_layers([np.int64(2), np.int32(0)], L) == [0, 2]
    assert wb.resolve_layers(np.array([3, 1]), L) == [1, 3]
    inj = wb.Injection(torch.ones(L, d), scale=0.5, layers=[np.int64(1), np.int64(2)])
    assert inj.describe()["layers"] == [1, 2] and all(type(i) is int for i in inj.describe()["layers"])
    plain = wb.Injection(torch.ones(L, d), scale=0.5, layers=[1, 2])
    assert torch.equal(wb.next_token_logits(llama_lm, PROMPTS, inj), wb.next_token_logits(llama_lm, PROMPTS, plain))
    with pytest.raises(ValueError, match="non-empty ints"):
        wb.resolve_layers([np.float64(1.0)], L)


def test_negative_layer_names_the_real_range(llama_lm):
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    with pytest.raises(ValueError, match=rf"layer index -1 out of range: this model has layers 0\.\.{L - 1}"):
        wb.resolve_layers([-1], L)
    inj = wb.Injection(torch.zeros(L, d), layers=[-1])  # range unknown until the model is: checked in check()
    with pytest.raises(ValueError, match=rf"layer index -1 out of range: this model has layers 0\.\.{L - 1} "):
        wb.next_token_logits(llama_lm, ["hello"], inj)


# --------------------------------------------------------------------------------------------- bad prompts
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_longer_than_the_model_raises_or_truncates(arch):
    """gpt2 (learned positions) used to raise IndexError, llama (RoPE) silently ran past its positions."""
    from workbench.core.testing import tiny_model

    lm = tiny_model(arch, texts=["hello world"],
                    **({"n_positions": 16} if arch == "gpt2" else {"max_position_embeddings": 16}))
    long = " ".join(["hello"] * 30)
    prompts = ["hello world", long]
    with pytest.raises(ValueError, match=r"prompt 1 has (30|31) tokens, more than the limit of 16.*truncate='left'"):
        wb.next_token_logits(lm, prompts)
    with pytest.raises(ValueError, match="prompt 1 has"):
        wb.last_token_states(lm, prompts)
    with pytest.raises(ValueError, match="prompt 3 has"):  # its index in the whole list, not in its sub-batch
        wb.next_token_logits(lm, ["hello"] * 3 + [long], batch_size=2)
    cut = wb.next_token_logits(lm, prompts, truncate="left")
    ids = lm.tokenizer(long)["input_ids"][-16:]
    assert torch.allclose(cut[1], wb.next_token_logits(lm, [lm.tokenizer.decode(ids)])[0], atol=1e-5)
    assert torch.allclose(cut[0], wb.next_token_logits(lm, ["hello world"])[0], atol=1e-5)
    assert wb.last_token_states(lm, prompts, truncate="left").shape[0] == 2
    with pytest.raises(ValueError, match="minus 4 new tokens"):
        wb.generate(lm, [" ".join(["hello"] * 14)], max_new_tokens=4)
    with pytest.raises(ValueError, match="unknown truncate 'right'"):
        wb.next_token_logits(lm, prompts, truncate="right")


def test_empty_prompt_raises_alone_and_in_a_batch(llama_lm):
    """Alone it raised; inside a batch its row was all padding and got garbage logits."""
    for prompts, index in ((["   "], 0), (["hello", "   ", "world"], 1)):
        with pytest.raises(ValueError, match=f"prompt {index} .* tokenizes to zero tokens"):
            wb.next_token_logits(llama_lm, prompts)


def test_lone_surrogate_is_a_clear_error(llama_lm):
    with pytest.raises(ValueError, match=r"prompt 1 is not valid text.*surrogate"):
        wb.next_token_logits(llama_lm, ["hello", "bad \ud800 text"])
    with pytest.raises(ValueError, match="prompt 0 is not valid text"):
        wb.last_token_states(llama_lm, ["\udfff"])


def test_stacked_injections_edit_every_row_exactly_as_alone(tiny_lm):
    """Variants joined into one pass (shared-prefix evaluation): each row's logits are bit-identical to its part's."""
    from workbench.core.interventions import Replacement, stack_injections, stackable
    torch.manual_seed(2)
    L, d, n = tiny_lm.num_layers, tiny_lm.hidden_size, len(PROMPTS)
    parts = [None, wb.Injection(torch.randn(L, d), scale=0.7, layers=[1]),
             wb.Injection(torch.randn(n, L, d), scale=0.2, layers="top"), None]
    joined = stack_injections([(x, n) for x in parts], L)
    every = wb.next_token_logits(tiny_lm, PROMPTS * len(parts), joined, batch_size=n)
    for j, x in enumerate(parts):
        assert torch.equal(every[j * n: (j + 1) * n], wb.next_token_logits(tiny_lm, PROMPTS, x, batch_size=n)), j
    assert stack_injections([(None, n)] * 2, L) is None
    refused = [Replacement(torch.randn(L, d)), wb.Injection(torch.randn(L, d), positions="all")]
    for x in refused:
        assert not stackable([None, x])
        with pytest.raises(ValueError, match="only None and last-token Injections"):
            stack_injections([(x, n)], L)
