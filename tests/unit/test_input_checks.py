"""Bad arguments of the methods' constructors are refused at construction (naming the value and what is accepted),
garbage logits warn outside `evaluate` too, and `evaluate` names what it did with the items it was given."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.inference import BadLogitsWarning, generate, next_token_logits
from workbench.core.interventions import Injection
from workbench.eval.evaluate import evaluate
from workbench.eval.item_notes import SplitSmallerThanNTest
from workbench.methods import ELICIT, I2CL, LoRA, StaticTaskVector
from workbench.methods.atv import ATV
from workbench.methods.prompting import ZeroShot
from workbench.tasks.registry import Item, Task

TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
WORDS = ["good fun film", "bad slow film", "great cast", "dull plot", "nice music", "awful ending"]


def toy_task(name: str, items: list[Item] | None = None) -> Task:
    items = items or [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(WORDS)]
    return Task(name=name, category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=True, train=items, valid=items[:2], test=items)


@pytest.mark.parametrize("make, message", [
    (lambda: StaticTaskVector(template=3), "template must be a template index 0-2"),
    (lambda: StaticTaskVector(template=-1), "template must be a template index 0-2"),
    (lambda: StaticTaskVector(n_prompts=0), "n_prompts must be a positive int, got 0"),
    (lambda: StaticTaskVector(batch_size=0), "batch_size must be a positive int, got 0"),
    (lambda: StaticTaskVector(k=-1), "k must be a non-negative int, got -1"),
    (lambda: StaticTaskVector(layers="middle-ish"), "unknown layer spec 'middle-ish'"),
    (lambda: I2CL(template=5), "template must be a template index 0-2 (every task has 3"),
    (lambda: I2CL(epochs=0), "epochs must be a positive int, got 0"),
    (lambda: I2CL(lr=-0.01), "lr must be a finite number > 0, got -0.01"),
    (lambda: I2CL(batch_size=0), "batch_size must be a positive int, got 0"),
    (lambda: I2CL(init=(0.1,)), "init must be the pair (a, b)"),
    (lambda: I2CL(warmup=2.0), "warmup (a share of the steps) must be a finite number >= 0 and <= 1, got 2.0"),
    (lambda: LoRA(r=0), "r (the LoRA rank) must be a positive int, got 0"),
    (lambda: LoRA(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (lambda: LoRA(lr=0), "lr must be a finite number > 0, got 0"),
    (lambda: LoRA(epochs=0), "epochs (None: ATV's count) must be a positive int or None, got 0"),
    (lambda: LoRA(dropout=1.0), "dropout must be a finite number >= 0 and < 1, got 1.0"),
    (lambda: LoRA(n_train=0), "n_train must be a positive int, got 0"),
    (lambda: LoRA(seed=-5), "seed must be a non-negative int, got -5"),
    (lambda: ELICIT(top_k="3"), "top_k must be a positive int, got '3'"),
    (lambda: ELICIT(recall=0.0), "recall must be a finite number > 0 and <= 1, got 0.0"),
    (lambda: ELICIT(threshold=math.inf), "threshold (a cosine score, or 'auto') must be a finite number, got inf"),
    (lambda: ELICIT(template=3), "template must be a template index 0-2"),
    (lambda: ELICIT(batch_size=0), "batch_size must be a positive int, got 0"),
])
def test_constructors_refuse_bad_arguments(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_atv_refuses_a_zero_batch_size_and_good_arguments_pass(llama_lm):
    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=llama_lm.tokenizer, seed=0), llama_lm)
    with pytest.raises(ValueError, match=r"batch_size \(queries per pass of the generator\) must be a positive int, "
                                         "got 0"):
        ATV(gen, batch_size=0)
    with pytest.raises(ValueError, match="unknown layer spec 'bogus'"):
        ATV(gen, layers="bogus")
    assert ATV(gen, batch_size=3).batch_size == 3
    assert StaticTaskVector(k=0, template=2, layers=[0, 1]).template == 2
    assert LoRA(epochs=None).epochs >= 1 and LoRA(alpha=32).alpha == 32
    assert ELICIT(threshold=0.5, inject_layers="top").threshold_spec == 0.5
    assert I2CL(init=(0, 1), max_demos=None).init == (0.0, 1.0)


# ----------------------------------------------------------------------------------------------- garbage logits
def blowup(lm) -> Injection:
    return Injection(torch.ones(lm.num_layers, lm.hidden_size), scale=3e38)  # logits become NaN


class Blowup(ZeroShot):
    def prepare(self, lm, task, items, texts, seed=42):
        batch = super().prepare(lm, task, items, texts, seed)
        batch.intervention = blowup(lm)
        return batch


def test_garbage_logits_warn_in_generate_and_next_token_logits_and_once_in_evaluate(llama_lm):
    with pytest.warns(BadLogitsWarning, match=r"generate: 1 of 2 prompts had non-finite or constant logits"):
        generate(llama_lm, ["hello world", "the movie was great"],
                 Injection(torch.stack([torch.ones(llama_lm.num_layers, llama_lm.hidden_size),
                                        torch.zeros(llama_lm.num_layers, llama_lm.hidden_size)]), scale=3e38),
                 max_new_tokens=2)
    with pytest.warns(BadLogitsWarning, match=r"next_token_logits: 2 of 2 prompts"):
        next_token_logits(llama_lm, ["hello world", "a sad and slow film"], blowup(llama_lm))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean logits: no warning
        generate(llama_lm, ["hello world"], max_new_tokens=2)
        next_token_logits(llama_lm, ["hello world"])
    with warnings.catch_warnings(record=True) as caught:  # evaluate (uncached too) reports its rows once, itself
        warnings.simplefilter("always")
        evaluate(llama_lm, Blowup(), [toy_task("toy_a")], n_test=2, templates=[0], prefixes=["A:"], cache=False,
                 progress=False)
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "2 of 2 rows" in runtime[0], runtime


# ----------------------------------------------------------------------------------------------- items
def test_n_test_above_the_split_says_how_many_items_were_used(llama_lm):
    with pytest.warns(SplitSmallerThanNTest, match=r"n_test=10 is more than the test split of 1 task\(s\) holds; "
                                                   r"all their items are used \(toy_a 6\)"):
        df = evaluate(llama_lm, ZeroShot(), [toy_task("toy_a")], n_test=10, templates=[0], prefixes=["A:"],
                      progress=False)
    assert sorted(df["item"].unique()) == list(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitSmallerThanNTest)
        evaluate(llama_lm, ZeroShot(), [toy_task("toy_a")], n_test=6, templates=[0], prefixes=["A:"], progress=False)


@pytest.mark.parametrize("cache", [True, False])
def test_a_too_long_item_is_named_by_task_item_and_variant(llama_lm, cache):
    items = [Item(w, "positive") for w in WORDS[:3]] + [Item(" ".join(["good"] * 600), "positive")]
    task = toy_task("toy_long", items)
    with pytest.raises(ValueError) as info:
        evaluate(llama_lm, ZeroShot(), [task], n_test=None, templates=[1], prefixes=["Answer:"], cache=cache,
                 batch_size=4, progress=False)
    message = str(info.value)
    assert "task 'toy_long', test item 3 (template 1, prefix 'Answer:')" in message, message
    assert "more than" in message and "512 positions" in message and "prompt 0" not in message

