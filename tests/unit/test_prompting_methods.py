"""Prompt baselines: demonstration count and format, determinism, BM25 retrieval, dropping on context overflow."""

from __future__ import annotations

import pytest

from workbench.core.testing import tiny_model
from workbench.methods.prompting import BM25FewShot, FewShot, ZeroShot, fewshot_prompt
from workbench.tasks.prompts import build_text
from workbench.tasks.registry import Item, Task

TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
TRAIN = [
    Item("the movie was great fun", "positive"),
    Item("a sad and slow film", "negative"),
    Item("purple elephants dance on the moon tonight", "positive"),
    Item("boring plot and bad acting", "negative"),
    Item("lovely music and great cast", "positive"),
    Item("the worst film of the year", "negative"),
    Item("an average story", "negative"),
    Item("wonderful and moving", "positive"),
]
TEST = [Item("elephants dance on the moon", "positive"), Item("a boring plot indeed", "negative")]


def make_task() -> Task:
    return Task(name="toy_sentiment", category="NLU", domain="NLU", templates=TEMPLATES,
                labels=("positive", "negative"), in_domain=True, train=TRAIN, valid=TRAIN[:2], test=TEST)


@pytest.fixture(scope="module")
def toy():
    task = make_task()
    texts = [it.input for it in TRAIN + TEST] + TEMPLATES
    return task, tiny_model("llama", texts=texts)


def texts_for(task: Task, items, t: int = 0, prefix: str = "A:") -> list[str]:
    return [build_text(task.templates[t], it.input, prefix) for it in items]


def test_zero_shot_is_the_rendered_text(toy):
    task, lm = toy
    batch = ZeroShot().prepare(lm, task, TEST, texts_for(task, TEST))
    assert batch.prompts == texts_for(task, TEST) and batch.intervention is None


def test_few_shot_format_count_and_determinism(toy):
    task, lm = toy
    method = FewShot(k=3)
    texts = texts_for(task, TEST, t=1, prefix="The answer is")
    a = method.prepare(lm, task, TEST, texts, seed=42)
    b = FewShot(k=3).prepare(lm, task, TEST[::-1], texts[::-1], seed=42)  # other order, other instance
    assert a.prompts == b.prompts[::-1]
    for prompt, info, text in zip(a.prompts, a.info, texts):
        assert info["n_demos"] == 3 and info["dropped_demos"] == 0
        ids = [int(i) for i in info["demo_ids"].split()]
        demos = [build_text(TEMPLATES[1], TRAIN[i].input, "The answer is") + " " + TRAIN[i].output for i in ids]
        assert prompt == "\n\n".join([*demos, text])
        assert len(set(ids)) == 3
    assert a.info[0]["demo_ids"] != a.info[1]["demo_ids"]  # each item its own draw
    c = method.prepare(lm, task, TEST, texts, seed=7)
    assert [i["demo_ids"] for i in c.info] != [i["demo_ids"] for i in a.info]
    # the same draw in every variant of an item
    other = method.prepare(lm, task, TEST, texts_for(task, TEST, t=2, prefix="Answer:"), seed=42)
    assert [i["demo_ids"] for i in other.info] == [i["demo_ids"] for i in a.info]


def test_few_shot_k_larger_than_pool_and_bad_k(toy):
    task, lm = toy
    batch = FewShot(k=50).prepare(lm, task, TEST[:1], texts_for(task, TEST[:1]))
    assert batch.info[0]["n_demos"] == len(TRAIN)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k"):
            FewShot(k=bad)


def test_few_shot_rejects_foreign_text(toy):
    task, lm = toy
    with pytest.raises(ValueError, match="build_text"):
        FewShot(k=2).prepare(lm, task, TEST[:1], ["something else\nA:"])


def test_bm25_retrieves_most_similar_last(toy):
    task, lm = toy
    method = BM25FewShot(k=3).fit(lm, [task])
    batch = method.prepare(lm, task, TEST, texts_for(task, TEST))
    first = [int(i) for i in batch.info[0]["demo_ids"].split()]
    assert first[-1] == 2  # "purple elephants dance on the moon tonight" is next to the query
    second = [int(i) for i in batch.info[1]["demo_ids"].split()]
    assert second[-1] == 3  # "boring plot and bad acting"
    assert method.prepare(lm, task, TEST, texts_for(task, TEST), seed=1).prompts == batch.prompts
    assert method.config() == {"name": "bm25", "k": 3, "pool_size": None, "drop_from": "first"}


def test_demos_dropped_when_context_is_exceeded():
    task = make_task()
    texts = [it.input for it in TRAIN + TEST] + TEMPLATES
    lm = tiny_model("llama", texts=texts, max_position_embeddings=48)
    query = texts_for(task, TEST[:1])
    n_query = len(lm.tokenizer(query[0])["input_ids"])
    assert n_query < 48
    for method, kept_end in ((FewShot(k=6), "first"), (BM25FewShot(k=6), "last")):
        batch = method.prepare(lm, task, TEST[:1], query)
        info = batch.info[0]
        assert 0 < info["dropped_demos"] < 6 and info["n_demos"] == 6 - info["dropped_demos"]
        assert len(lm.tokenizer(batch.prompts[0])["input_ids"]) <= 48
        full = method.select(task, TEST[0], 42)
        kept = [int(i) for i in info["demo_ids"].split()]
        assert kept == (full[: len(kept)] if kept_end == "first" else full[len(full) - len(kept):])
        # one more demonstration would not fit
        more = full[: len(kept) + 1] if kept_end == "first" else full[len(full) - len(kept) - 1:]
        longer = fewshot_prompt(lm, TEMPLATES[0], [TRAIN[i] for i in more], TEST[0].input, "A:")
        assert len(lm.tokenizer(longer)["input_ids"]) > 48
