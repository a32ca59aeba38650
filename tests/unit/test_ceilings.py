"""The ceilings table on tiny models: the oracle reaches the gold answer where a vector can, the probe reads what the
features hold (and nothing from shuffled labels), the table's columns and gaps, clear errors for bad inputs."""

from __future__ import annotations

import random
import re

import pandas as pd
import pytest
import torch

from test_static_tv import single_thread  # noqa: F401  (autouse: one intra-op thread)

from workbench.analysis.ceilings import METHODS, ceiling_rows, ceiling_table, ceilings, probe_rows
from workbench.analysis.oracle import Oracle, optimize_vectors
from workbench.atv.examples import tokenize_pair
from workbench.atv.fastpath import fast_pair_losses
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.testing import tiny_model
from workbench.methods.atv import ATV
from workbench.tasks.registry import Item, Task

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
ITEMS = [Item(f"{a} {b}", "positive" if i % 2 else "negative")
         for i, (a, b) in enumerate(zip(WORDS, WORDS[3:] + WORDS[:3]))]
TEMPLATES = ["Review: {input}", "Text: {input} ?", "Q {input}"]
TASK = Task(name="synth", category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
            in_domain=True, train=ITEMS, valid=ITEMS[:4], test=ITEMS)
#: large λ at every layer: a per-query vector can then set any answer of the tiny model
STRONG = {"scale": 1.0, "layers": "all"}
SMALL = {"n_test": 8, "templates": [0, 1], "prefixes": ["A:"], "oracle_steps": 20, "oracle_lr": 0.05,
         "probe_items": 12, "progress": False}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + ["Review", "Text", "Q"])


def atv_method(lm, **kwargs) -> ATV:
    torch.manual_seed(0)
    return ATV(ATVGenerator(load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=0), lm), **{**STRONG, **kwargs})


@pytest.fixture(scope="module")
def rows(lm):
    return ceiling_rows(lm, atv_method(lm), [TASK], **SMALL)


def test_oracle_reaches_the_gold_answer_where_zero_shot_does_not(rows):
    table = ceiling_table(rows)
    mean = table.set_index("task").loc["mean"]
    assert mean["oracle"] == 100.0 and mean["zero_shot"] < 100.0
    oracle = rows[rows["method"] == "oracle"]
    assert len(oracle) == 16 and oracle["label_correct"].all()
    assert (oracle["oracle_loss_end"] < oracle["oracle_loss_start"]).all() and (oracle["oracle_shift"] > 0).all()
    # the same items x variants for every method
    keys = ["task", "item", "seed", "template", "prefix"]
    sets = {m: set(map(tuple, part[keys].to_numpy())) for m, part in rows.groupby("method")}
    assert set(sets) == set(METHODS) and len({frozenset(s) for s in sets.values()}) == 1


def test_table_columns_and_gaps_are_the_differences(rows):
    table = ceiling_table(rows)
    accuracy = [c for m in METHODS.values() for c in (m, f"{m}_low", f"{m}_high")]
    gaps = [c for g in ("probe_minus_atv", "oracle_minus_atv") for c in (g, f"{g}_low", f"{g}_high", f"{g}_p")]
    assert list(table.columns) == ["task", "n_items", *accuracy, *gaps]
    assert list(table["task"]) == ["synth", "mean"] and list(table["n_items"]) == [8, 8]
    pd.testing.assert_series_equal(table["probe_minus_atv"], table["probe"] - table["atv"], check_names=False)
    pd.testing.assert_series_equal(table["oracle_minus_atv"], table["oracle"] - table["atv"], check_names=False)
    for col in ("atv", "probe", "oracle_minus_atv"):
        assert (table[f"{col}_low"] <= table[col]).all() and (table[col] <= table[f"{col}_high"]).all()
    # label-restricted accuracy is evaluate's own label_correct
    atv = rows[rows["method"] == "atv"]
    assert table.loc[0, "atv"] == pytest.approx(100 * atv["label_correct"].mean())
    no_ci = ceiling_table(rows, ci=None)
    assert no_ci["oracle_minus_atv_low"].isna().all() and no_ci["oracle"].equals(table["oracle"])


def test_ceilings_is_one_call_with_its_config(lm):
    table = ceilings(lm, atv_method(lm).generator, [TASK], **{**SMALL, "n_test": 4, "templates": [0]}, ci=None)
    assert list(table["task"]) == ["synth", "mean"]
    config = table.attrs["config"]
    assert config["C"] == 0.1 and config["probe_train_items"] == [12] and config["oracle_steps"] == 20


def test_each_query_is_optimized_on_its_own_loss(lm):
    """Two prompts optimized together end where each ends alone (the batch loss is a sum; Adam is per coordinate)."""
    prompts, targets = ["Review: alpha delta\nA:", "Q beta epsilon\nA:"], [" positive", " negative"]
    start = torch.randn(2, lm.num_layers, lm.hidden_size, generator=torch.Generator().manual_seed(1))
    _, before, after = optimize_vectors(lm, prompts, targets, start, scale=1.0, steps=5, lr=0.05)
    for i in range(2):
        _, b, a = optimize_vectors(lm, prompts[i:i + 1], targets[i:i + 1], start[i:i + 1], 1.0, steps=5, lr=0.05)
        torch.testing.assert_close(torch.cat([b, a]), torch.stack([before[i], after[i]]), rtol=1e-4, atol=1e-4)
    assert (after < before).all()


def test_oracle_vectors_are_injected_at_the_atv_settings(lm):
    """What evaluate scores is the optimized vector at ATV's λ and layers: the loss it reports is the loss of that
    injection, and positions 'all' (the naive loss path) optimizes too."""
    atv = atv_method(lm, scale=0.5, layers=[1, 2])
    batch = Oracle(atv, steps=3, lr=0.05).prepare(lm, TASK, ITEMS[:2], ["Review: alpha delta\nA:", "Q beta eta\nA:"])
    injection = batch.intervention
    assert (injection.scale, injection.layers, injection.positions) == (0.5, [1, 2], "last")
    pairs = [tokenize_pair(lm, p, t) for p, t in zip(batch.prompts, [" negative", " positive"])]
    with torch.no_grad():
        losses = fast_pair_losses(lm, [(p, a[:1]) for p, a in pairs], injection)[0]
    torch.testing.assert_close(losses, torch.tensor([r["oracle_loss_end"] for r in batch.info]), rtol=1e-4, atol=1e-5)
    start = torch.zeros(1, lm.num_layers, lm.hidden_size)
    _, before, after = optimize_vectors(lm, batch.prompts[:1], [" negative"], start, 1.0, positions="all", steps=3)
    assert after[0] < before[0]


def synthetic_task(n_train: int = 200, n_test: int = 100, shuffle: bool = False) -> Task:
    """Items ``"item N"`` of class N % 2; with `shuffle`, the train split's labels are permuted."""
    label = lambda i: "positive" if i % 2 else "negative"  # noqa: E731
    train = [Item(f"item {i}", label(i)) for i in range(n_train)]
    if shuffle:
        outputs = [it.output for it in train]
        random.Random(0).shuffle(outputs)
        train = [Item(it.input, out) for it, out in zip(train, outputs)]
    test = [Item(f"item {n_train + i}", label(n_train + i)) for i in range(n_test)]
    return Task(name="synthetic", category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=True, train=train, valid=test[:2], test=test)


def class_features(texts: list[str]) -> torch.Tensor:
    """8 features per text: noise plus ±4 on the first by the class of the item's number (linearly separable)."""
    rows = []
    for text in texts:
        number = int(re.search(r"item (\d+)", text).group(1))
        x = torch.randn(8, generator=torch.Generator().manual_seed(number))
        x[0] += 4.0 if number % 2 else -4.0
        rows.append(x)
    return torch.stack(rows)


def atv_rows_of(task: Task) -> pd.DataFrame:
    return pd.DataFrame([{"task": task.name, "category": task.category, "in_domain": True, "item": i, "template": t,
                          "prefix": "A:", "seed": 42, "target": it.output, "chat": False}
                         for i, it in enumerate(task.test) for t in range(3)])


@pytest.mark.parametrize("shuffle", [False, True])
def test_probe_reads_separable_features_and_nothing_from_shuffled_labels(lm, monkeypatch, shuffle):
    generator = atv_method(lm).generator
    monkeypatch.setattr(generator.encoder, "encode", class_features)
    task = synthetic_task(shuffle=shuffle)
    out = probe_rows(generator, [task], atv_rows_of(task), C=0.1, n_train=200)
    probe = out[out["method"] == "probe"]
    assert len(probe) == 300 and set(probe["probe_train_items"]) == {200}
    accuracy = probe["label_correct"].mean()
    if shuffle:
        assert 0.3 <= accuracy <= 0.7  # chance: the labels it was fit on say nothing about the features
    else:
        assert accuracy == 1.0
    majority = out[out["method"] == "majority"]
    assert majority["label_correct"].mean() == pytest.approx(0.5)  # the test split is balanced


def test_bad_inputs_are_clear_errors(lm):
    atv = atv_method(lm)
    with pytest.raises(ValueError, match="oracle steps"):
        Oracle(atv, steps=0)
    with pytest.raises(ValueError, match="oracle lr"):
        Oracle(atv, lr=0.0)
    with pytest.raises(ValueError, match="answer_tokens"):
        Oracle(atv, answer_tokens=0)
    with pytest.raises(ValueError, match="λ = 0"):
        Oracle(atv_method(lm, scale=0.0))
    with pytest.raises(ValueError, match="wb.methods.ATV"):
        Oracle("atv")
    for C in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="C \\(the probe"):
            ceilings(lm, atv, [TASK], C=C, progress=False)
    unlabelled = Task(name="free_text", category="NLU", domain="NLU", templates=TEMPLATES, labels=(), in_domain=True,
                      train=ITEMS, valid=ITEMS[:2], test=ITEMS)
    with pytest.raises(ValueError, match="'free_text' has no label words"):
        ceilings(lm, atv, [TASK, unlabelled], progress=False)
    with pytest.raises(ValueError, match="probe_items"):
        ceilings(lm, atv, [TASK], probe_items=0, progress=False)
    with pytest.raises(ValueError, match=r"lack the methods \['oracle'\]"):
        ceiling_table(pd.DataFrame({"method": ["majority", "zero-shot", "atv", "probe"]}))
    with pytest.raises(ValueError, match="start vectors"):
        optimize_vectors(lm, ["Q alpha\nA:"], [" positive"], torch.zeros(2, 3), 1.0)
