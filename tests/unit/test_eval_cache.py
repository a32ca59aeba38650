"""`wb.evaluate` with the shared-prefix cache gives the rows of the uncached protocol, for every method of the
standard line-up, on tiny float32 models of several architectures; `evaluate_many` shares bodies across methods."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_static_tv import single_thread, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.kv_cache import BodyCache
from workbench.eval.evaluate import evaluate, evaluate_many
from workbench.methods import ATV, ELICIT, I2CL, BM25FewShot, FewShot, LoRA, StaticTaskVector, ZeroShot

#: columns that differ between runs for reasons other than the logits
VOLATILE = ["latency"]


def line_up(lm):
    torch.manual_seed(0)
    gen = ATVGenerator(load_encoder("scratch:2x32", tokenizer=lm.tokenizer, seed=0), lm)
    torch.nn.init.normal_(gen.projection.weight, std=0.5)  # vectors large enough to move the logits
    return {
        "zero-shot": ZeroShot(), "few-shot": FewShot(k=2), "bm25": BM25FewShot(k=2),
        "static-tv": StaticTaskVector(k=2, n_prompts=2, scale=0.5),
        "elicit": ELICIT(k=2, n_prompts=2, n_valid=2, layer_stride=2, top_k=2),
        "i2cl": I2CL(shots_per_class=1, epochs=1), "lora": LoRA(epochs=1, n_train=2, batch_size=4),
        "atv": ATV(gen, scale=0.5),
    }


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=VOLATILE), b.drop(columns=VOLATILE))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_cache_gives_the_uncached_rows_for_the_standard_line_up(arch):
    tasks = toy_tasks()
    lm = toy_lm(arch, tasks)
    for name, method in line_up(lm).items():
        method.fit(lm, tasks[:2])
        kwargs = dict(n_test=4, templates=[0, 2], seeds=[42, 7], batch_size=3, progress=False)
        cached = evaluate(lm, method, tasks, cache=True, **kwargs)
        plain = evaluate(lm, method, tasks, cache=False, **kwargs)
        same_rows(cached, plain)
        assert len(cached) == 3 * 4 * 2 * 3 * 2, name


def test_evaluate_many_shares_bodies_across_methods_but_not_with_lora():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    methods = line_up(lm)
    chosen = {k: methods[k] for k in ("zero-shot", "static-tv", "atv", "lora")}
    for m in chosen.values():
        m.fit(lm, tasks[:2])
    cache = BodyCache(64)
    kwargs = dict(n_test=3, templates=[0], seeds=[42], batch_size=3, progress=False)
    many = evaluate_many(lm, chosen, tasks[:1], cache=cache, **kwargs)
    alone = {k: evaluate(lm, m, tasks[:1], cache=False, **kwargs) for k, m in chosen.items()}
    for k in chosen:
        same_rows(many[k], alone[k])
    # zero-shot computed the 3 bodies and the 9 prompts but their last token; static TV and ATV reused them and ran
    # one token per prompt; LoRA (other weights) computed its own 3 bodies and ran its whole tails
    assert cache.misses == 3 + 9 + 3 and cache.hits >= 2 * 9
    alone_cache = BodyCache(64)
    evaluate(lm, chosen["atv"], tasks[:1], cache=alone_cache, **kwargs)
    assert alone_cache.misses == 3  # one method alone keeps only bodies: no other method would read the rest


def test_i2cl_on_an_unseen_task_shares_bodies_by_retrieved_task():
    """Unseen task: each prompt gets its nearest task's context vectors; prompts with the same vectors share bodies
    (cached) and the rows are the uncached ones."""
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    i2cl = I2CL(shots_per_class=1, epochs=1).fit(lm, tasks[:2])
    cache = BodyCache(64)
    kwargs = dict(n_test=4, templates=[0, 1], seeds=[42], batch_size=4, progress=False)
    cached = evaluate(lm, i2cl, tasks[2:], cache=cache, **kwargs)
    same_rows(cached, evaluate(lm, i2cl, tasks[2:], cache=False, **kwargs))
    # one body per (item, template, retrieved task), shared by the prefixes that retrieved it: not one per prompt
    bodies = int(cached.groupby(["item", "template"])["cv_task"].nunique().sum())
    assert cache.misses == bodies < len(cached)


def test_cache_argument_is_checked():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    with pytest.raises(ValueError, match="cache must be True, False or a BodyCache"):
        evaluate(lm, ZeroShot(), tasks[:1], n_test=2, cache="yes", progress=False)
