"""ELICIT on a tiny model: library, layer sweep, retrieval with threshold fallback, evaluation."""

from __future__ import annotations

import pytest
import torch
from test_static_tv import single_thread, texts_for, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench.eval.evaluate as ev
from workbench.core.inference import next_token_logits
from workbench.methods.elicit import ELICIT


@pytest.fixture(scope="module")
def fitted():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    method = ELICIT(k=3, n_prompts=4, n_valid=4, layer_stride=2, top_k=3).fit(lm, tasks[:2])
    return lm, tasks, method


def test_library_and_best_layer(fitted):
    lm, _, method = fitted
    assert method.library.shape == (8, lm.num_layers, lm.hidden_size)
    assert method.entry_tasks == ["toy_sentiment"] * 4 + ["toy_yesno"] * 4
    for name in ("toy_sentiment", "toy_yesno"):
        sweep = method.sweeps[name]
        assert list(sweep["layers"]) == [0, 2] and sweep["n_valid"] == 4
        best = max(sweep["layers"], key=lambda l: (sweep["layers"][l], sweep["logprob"][l]))
        assert method.best_layers[name] == best and set(sweep["logprob"]) == {0, 2}
        torch.testing.assert_close(method.vectors[name], method.library[[i for i, t in enumerate(method.entry_tasks)
                                                                         if t == name]].mean(0))
    assert method.vectors["toy_yesno"].shape == (lm.num_layers, lm.hidden_size)
    assert -1 <= method.threshold <= 1


def test_retrieval_injects_mean_of_top_k_at_majority_layer(fitted, monkeypatch):
    lm, tasks, method = fitted
    monkeypatch.setattr(method, "threshold", -1.0)  # the fixture is shared: never leave it changed
    texts = texts_for(tasks[0])
    batch = method.prepare(lm, tasks[0], tasks[0].test, texts)
    assert not any(row["fallback"] for row in batch.info)
    scores, idx = method.index.top_k(texts, 3)
    layer = batch.info[0]["layer"]
    assert layer in method.best_layers.values()
    v = batch.intervention.vectors[0]
    torch.testing.assert_close(v[layer], method.library[idx[0]].mean(0)[layer])
    assert v.abs().sum() == v[layer].abs().sum()  # nothing at other layers
    assert batch.info[0]["similarity"] == pytest.approx(float(scores[0, 0]))
    assert batch.info[0]["retrieved_task"] in {"toy_sentiment", "toy_yesno"}
    assert not torch.allclose(next_token_logits(lm, batch.prompts, batch.intervention),
                              next_token_logits(lm, batch.prompts))


def test_falls_back_below_threshold(fitted, monkeypatch):
    lm, tasks, method = fitted
    texts = texts_for(tasks[2])
    sims = method.index.top_k(texts, 1)[0][:, 0]
    monkeypatch.setattr(method, "threshold", float(sims.median()))
    batch = method.prepare(lm, tasks[2], tasks[2].test, texts)
    assert [row["fallback"] for row in batch.info] == (sims < method.threshold).tolist()
    zero = next_token_logits(lm, batch.prompts)
    with_vec = next_token_logits(lm, batch.prompts, batch.intervention)
    for j, row in enumerate(batch.info):
        assert torch.equal(with_vec[j], zero[j]) == row["fallback"]
    monkeypatch.setattr(method, "threshold", 1.01)
    batch = method.prepare(lm, tasks[2], tasks[2].test, texts)
    assert batch.intervention is None and all(row["fallback"] and row["retrieved_task"] is None for row in batch.info)


def test_evaluate_records_retrieval(fitted, monkeypatch):
    lm, tasks, method = fitted
    monkeypatch.setattr(method, "threshold", -1.0)
    df = ev.evaluate(lm, method, tasks, n_test=2, templates=[1], prefixes=["A:"], progress=False)
    assert len(df) == 6 and {"retrieved_task", "similarity", "fallback", "layer"} <= set(df.columns)
    assert not df["fallback"].any()
