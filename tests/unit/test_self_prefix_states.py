"""A ``self:K`` generator on the fast path reads its states from the prefix pass (issue 23 §6): exactly the clean
state after block K at each prompt's last token, the prefix caches unchanged, and no second pass through blocks 0..K."""

from __future__ import annotations

import pytest
import torch

from workbench.atv import fastpath
from workbench.atv.examples import tokenize_pair
from workbench.atv.fastpath import PrefixStore, head_lengths
from workbench.atv.generator import ATVGenerator
from workbench.atv.training import TrainConfig, build_batchers, build_examples, checked_config, train_atv
from workbench.core.encoders import load_encoder
from workbench.core.kv_cache import prefix_kvs
from workbench.core.testing import tiny_model
from workbench.tasks.registry import Task

from test_generator_sources import toy_task as sources_toy_task

WORDS = ["good fun film", "bad slow film that drags", "great cast", "dull plot", "nice music", "awful ending"]
# all start with the input: an item's prompts share it (PrefixStore bodies)
TEMPLATES = ["{input}\nQuestion: is it positive or negative?", "{input}\nQuestion: sentiment?", "{input}\nText?"]


def toy_task() -> Task:
    return sources_toy_task(WORDS, TEMPLATES)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES)


def no_own_pass(texts):
    raise AssertionError("the self:K encoder ran its own pass through blocks 0..K")


def prompts_and_heads(lm) -> tuple[list[str], list[list[int]], list[int], list[int]]:
    """Texts, prompt ids, heads per template and bodies per item (an item's templates share its input)."""
    texts = [t.format(input=w) + "\nA:" for t in TEMPLATES for w in WORDS]
    prompts = [tokenize_pair(lm, lm.render(t), " positive")[0] for t in texts]
    heads = head_lengths([p[:-1] for p in prompts], [k // len(WORDS) for k in range(len(texts))])
    bodies = head_lengths([p[:-1] for p in prompts], [k % len(WORDS) for k in range(len(texts))])
    return texts, prompts, heads, bodies


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shared_bodies", [False, True])
def test_prefix_pass_yields_the_clean_state_after_block_k(arch, shared_bodies):
    lm = tiny_model(arch, texts=WORDS + TEMPLATES)
    texts, prompts, heads, bodies = prompts_and_heads(lm)
    assert all(b > h for b, h in zip(bodies, heads))  # the input is shared beyond the head
    for k in range(lm.num_layers):
        store = PrefixStore(batch_tokens=40)  # several length buckets per template
        states = store.fill_with_states(lm, list(range(len(prompts))), prompts, k, heads,
                                        bodies=bodies if shared_bodies else None)
        want = load_encoder(f"self:{k}", lm=lm).encode(texts)  # the encoder's own clean pass
        assert states.shape == want.shape and states.dtype == torch.float32
        torch.testing.assert_close(states, want)
        assert len(store) == len(prompts)
    for i, p in enumerate(prompts):  # what is stored is the prefix cache of the prompt but its last token
        torch.testing.assert_close(store.get(i), prefix_kvs(lm, [p[:-1]])[0])


def test_shared_bodies_give_the_same_prefix_caches_with_fewer_tokens(lm, monkeypatch):
    """An item's templates that start with its input: the body is run once, the caches equal those run whole."""
    monkeypatch.setattr(fastpath, "BODIES_AT_ONCE", 4)  # bodies in several rounds
    _, prompts, heads, bodies = prompts_and_heads(lm)
    prefixes, keys = [p[:-1] for p in prompts], list(range(len(prompts)))
    ran = []
    hook = lm.layers[0].register_forward_hook(lambda m, a, out: ran.append((out[0] if isinstance(out, tuple)
                                                                             else out).shape[:2].numel()))
    try:
        whole, shared = PrefixStore(), PrefixStore()
        whole.fill(lm, keys, prefixes, heads)
        tokens_whole = sum(ran)
        ran.clear()
        shared.fill(lm, keys, prefixes, heads, bodies=bodies)
    finally:
        hook.remove()
    assert sum(ran) < tokens_whole  # fewer (padded) tokens run through the model
    for i in keys:
        torch.testing.assert_close(shared.get(i), whole.get(i))


def test_training_reads_self_states_from_the_prefix_pass(lm):
    gen = ATVGenerator("self:1", lm)
    want_states = {}
    config = checked_config(TrainConfig(n_train=4, batch_size=2, valid_items=2), [toy_task()])
    train, _, valid = build_examples([toy_task()], config)
    for name, examples in (("train", train), ("valid", valid)):
        want_states[name] = gen.encoder.encode([ex.generator_text for ex in examples])
    gen.encoder.encode = no_own_pass
    batcher, valid_batcher, store, seconds = build_batchers(lm, gen, train, valid, config, progress=False)
    torch.testing.assert_close(batcher.states, want_states["train"])
    torch.testing.assert_close(valid_batcher.states, want_states["valid"])
    assert seconds > 0 and len(store) >= len(train)  # the prefix caches were filled by the same pass
    df = train_atv(lm, gen, [toy_task()], TrainConfig(epochs=1, n_train=4, batch_size=2, scale=1.0, lr=1e-2,
                                                        valid_items=2), progress=False)
    assert torch.isfinite(torch.tensor(df["train_loss"].tolist())).all()


@pytest.mark.parametrize("setting", [{"generator_input": "official"}, {"fast_path": False}])
def test_self_states_fall_back_to_their_own_pass(lm, setting):
    """Reading the official input (other tokens than the prompt) or off the fast path: the encoder's own pass."""
    gen = ATVGenerator("self:1", lm)
    calls = []
    encode = gen.encoder.encode
    gen.encoder.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    config = checked_config(TrainConfig(n_train=2, batch_size=2, valid_items=0, **setting), [toy_task()])
    train, _, _ = build_examples([toy_task()], config)
    batcher = build_batchers(lm, gen, train, [], config, progress=False)[0]
    assert calls and batcher.states.shape == (len(train), lm.hidden_size)
    torch.testing.assert_close(batcher.states, encode([ex.generator_text for ex in train]))


def test_losses_and_gradients_from_shared_bodies_equal_the_naive_path(lm):
    """The loss on prefixes filled through shared bodies: the naive whole-sequence loss, values and gradients."""
    from workbench.atv.fastpath import fast_pair_losses
    from workbench.atv.loss import pair_losses
    from workbench.core.interventions import Injection

    _, prompts, heads, bodies = prompts_and_heads(lm)
    pairs = [(p, [p[-1], p[0]]) for p in prompts]  # any answer tokens: two, so that later positions count too
    keys = list(range(len(pairs)))
    store = PrefixStore()
    store.fill(lm, keys, [p[:-1] for p, _ in pairs], heads, bodies=bodies)
    torch.manual_seed(0)
    v = torch.randn(len(pairs), lm.num_layers, lm.hidden_size, requires_grad=True)
    naive = pair_losses(lm, pairs, Injection(v, 0.5))[0]
    fast = fast_pair_losses(lm, pairs, Injection(v, 0.5), store, keys, heads)[0]
    assert store.misses == 0
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-5)
    g_naive, = torch.autograd.grad(naive.mean(), v)
    g_fast, = torch.autograd.grad(fast.mean(), v)
    assert float((g_fast - g_naive).norm() / g_naive.norm()) <= 1e-4
