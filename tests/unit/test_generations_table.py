"""`generations_table`: each method's generations for the same test items, prepared as `evaluate` prepares them."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.analysis.generations import generations_table
from workbench.methods import StaticTaskVector
from workbench.methods.prompting import ZeroShot
from workbench.tasks.prompts import build_text
from workbench.tasks.registry import Item, Task

TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
WORDS = ["good fun film", "bad slow film", "great cast", "dull plot", "nice music", "awful ending"]


@pytest.fixture(scope="module")
def setup():
    from workbench.core.testing import tiny_model

    items = [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(WORDS)]
    task = Task(name="toy", category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=True, train=items, valid=items[:2], test=items)
    lm = tiny_model("llama", texts=[*WORDS, *TEMPLATES])
    static = StaticTaskVector(k=2, n_prompts=2, scale=50.0, layers=[1]).fit(lm, [task])  # strong enough to show
    return lm, task, static


def test_each_column_is_that_methods_generation(setup):
    lm, task, static = setup
    table = generations_table(lm, {"unsteered": ZeroShot(), "static TV": static}, task, n_items=3, max_new_tokens=5)
    assert list(table.columns) == ["query", "target", "unsteered", "static TV"]
    assert table["query"].tolist() == WORDS[:3] and table["target"].tolist() == ["positive", "negative", "positive"]
    texts = [lm.render(build_text(TEMPLATES[0], w, "A:")) for w in WORDS[:3]]
    assert table["unsteered"].tolist() == wb.generate(lm, texts, max_new_tokens=5)
    inj = wb.Injection(static.vectors["toy"], scale=50.0, layers=[1])
    assert table["static TV"].tolist() == wb.generate(lm, texts, inj, max_new_tokens=5)
    assert table["static TV"].tolist() != table["unsteered"].tolist()


def test_sampling_arguments_reach_generate(setup):
    lm, task, static = setup
    kw = dict(max_new_tokens=6, temperature=1.0, seed=3, items=task.test[3:])
    a = generations_table(lm, {"s": static}, task, steps="all", **kw)
    assert a.equals(generations_table(lm, {"s": static}, task, steps="all", **kw))
    assert len(a) == 3 and a["query"].tolist() == WORDS[3:]


def test_bad_arguments(setup):
    lm, task, _ = setup
    with pytest.raises(ValueError, match="methods must be a non-empty mapping"):
        generations_table(lm, {}, task)
    with pytest.raises(ValueError, match="n_items must be a positive int, got 0"):
        generations_table(lm, {"z": ZeroShot()}, task, n_items=0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        generations_table(lm, {"z": ZeroShot()}, task, temperature=-1)
