"""A ``self:K`` generator in cached evaluation reads its states from the evaluation's prompt bodies (issue 23 §1, §6):
the same states and rows as its own pass, no pass of its own from token 0, and the bare input still runs its own."""

from __future__ import annotations

import pytest
import torch

from workbench.atv.generator import ATVGenerator
from workbench.core import encoders
from workbench.core.encoders import load_encoder
from workbench.core.kv_cache import BodyCache
from workbench.core.shared_states import sharing_bodies
from workbench.core.testing import tiny_model
from workbench.eval.evaluate import evaluate, evaluate_many
from workbench.methods.atv import ATV
from workbench.methods.prompting import ZeroShot

from test_generator_sources import TEMPLATES, WORDS, toy_task

PREFIXES = ["A:", "Answer:", "The answer is"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES + PREFIXES)


def texts_of(items: list[str]) -> list[str]:
    return [t.format(input=w) + "\n" + p for w in items for t in TEMPLATES for p in PREFIXES]


def no_own_pass(self, input_ids, attention_mask):
    raise AssertionError("the self:K encoder ran its own pass from token 0")


@pytest.mark.parametrize("share_tails", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_states_from_the_bodies_equal_the_encoders_own_pass(arch, share_tails, monkeypatch):
    lm = tiny_model(arch, texts=WORDS + TEMPLATES + PREFIXES)
    texts = texts_of(WORDS[:4])
    for k in (0, lm.num_layers - 1):
        enc = load_encoder(f"self:{k}", lm=lm)
        want = enc.encode(texts[::2])
        cache = BodyCache()
        with monkeypatch.context() as m, sharing_bodies(lm, texts, cache, batch_size=5,
                                                        share_tails=share_tails) as shared:
            m.setattr(encoders.SelfEncoder, "block_output", no_own_pass)
            got = enc.encode(texts[::2])
        torch.testing.assert_close(got, want)
        assert shared.computed == len(texts[::2])
        assert cache.stats()["misses"] > 0 and cache.stats()["kept"] > 0  # the bodies are kept for the evaluation


def test_texts_the_evaluation_does_not_hold_run_their_own_pass(lm):
    texts = texts_of(WORDS[:2])
    enc = load_encoder("self:1", lm=lm)
    bare = [f"Q: {w} \n A: " for w in WORDS[:2]]
    with sharing_bodies(lm, texts, BodyCache()) as shared:
        got = enc.encode(bare)
        other = tiny_model("llama", texts=WORDS + TEMPLATES, seed=5)  # another model: not its bodies
        assert shared.states(other, 1, [[1, 2, 3]]) is None
    torch.testing.assert_close(got, enc.encode(bare))
    assert shared.computed == 0


@pytest.mark.parametrize("generator_input", ["prompt", "official"])
def test_cached_evaluation_of_a_self_generator_equals_uncached(lm, generator_input, monkeypatch):
    torch.manual_seed(0)
    gen = ATVGenerator("self:1", lm)
    gen.meta["generator_input"] = generator_input  # what training records
    method = ATV(gen, scale=0.5)
    kw = dict(n_test=4, templates=[0, 1], prefixes=PREFIXES[:2], progress=False)
    plain = evaluate(lm, method, [toy_task()], cache=False, **kw)
    if generator_input == "prompt":  # every state comes from the evaluation's bodies
        monkeypatch.setattr(encoders.SelfEncoder, "block_output", no_own_pass)
    cached = evaluate(lm, method, [toy_task()], cache=True, **kw)
    cols = ["item", "template", "prefix", "prediction", "correct"]
    assert cached[cols].equals(plain[cols])


def test_with_other_methods_the_bodies_run_once_for_all(lm, monkeypatch):
    """In ``evaluate_many`` (tails shared), the ATV rows equal uncached ones and a ``self:K`` generator adds no body
    token to what the line-up runs with a generator that reads its own model (``scratch``)."""
    torch.manual_seed(0)
    method = ATV(ATVGenerator("self:1", lm), scale=0.5)
    scratch = ATV(ATVGenerator(load_encoder("scratch:1x32", lm=lm, seed=0), lm), scale=0.5)
    kw = dict(n_test=4, templates=[0, 1], prefixes=PREFIXES, progress=False)
    alone = evaluate(lm, method, [toy_task()], cache=False, **kw)
    caches = {"self": BodyCache(), "scratch": BodyCache()}
    evaluate_many(lm, {"atv": scratch, "zero-shot": ZeroShot()}, [toy_task()], cache=caches["scratch"], **kw)
    monkeypatch.setattr(encoders.SelfEncoder, "block_output", no_own_pass)
    both = evaluate_many(lm, {"atv": method, "zero-shot": ZeroShot()}, [toy_task()], cache=caches["self"], **kw)
    cols = ["item", "template", "prefix", "prediction"]
    assert both["atv"][cols].reset_index(drop=True).equals(alone[cols].reset_index(drop=True))
    ran = {k: c.stats()["body_tokens_run"] for k, c in caches.items()}
    assert ran["self"] == ran["scratch"] > 0
