"""Static task vectors on tiny models; `toy_tasks` / `toy_lm` are shared with the other baseline tests."""

from __future__ import annotations

import pytest
import torch

import workbench.eval.evaluate as ev
from workbench.core.inference import last_token_states, next_token_logits
from workbench.core.interventions import Injection
from workbench.core.testing import tiny_model
from workbench.methods.static import StaticTaskVector
from workbench.tasks.prompts import build_text
from workbench.tasks.registry import Item, Task

WORDS = ["good movie", "bad film", "great plot", "slow story", "nice cast", "dull scene", "fine song", "weak end"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one intra-op thread (2 threads thrash when the CPU is shared); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_task(name: str, labels: tuple[str, ...], in_domain: bool = True, n: int = 16, lead: str = "Review") -> Task:
    items = [Item(f"{WORDS[i % len(WORDS)]} {i}", labels[i % len(labels)]) for i in range(n)]
    templates = [f"{lead}: {{input}}", f"{lead} sentence: {{input}}", f"{lead} text : {{input}} ?"]
    return Task(name=name, category="NLU" if in_domain else "Unseen", domain="NLU", templates=templates,
                labels=labels, in_domain=in_domain, train=items, valid=items[:8], test=items[8:])


def toy_tasks() -> list[Task]:
    """Two in-domain tasks and one unseen task with disjoint label words."""
    return [toy_task("toy_sentiment", ("positive", "negative")), toy_task("toy_yesno", ("Yes", "No"), lead="Question"),
            toy_task("toy_unseen", ("True", "False"), in_domain=False, lead="Claim")]


def toy_lm(arch: str = "llama", tasks: list[Task] | None = None):
    tasks = tasks or toy_tasks()
    texts = [t for task in tasks for it in task.train for t in it] + [t for task in tasks for t in task.templates]
    return tiny_model(arch, texts=texts)


def texts_for(task: Task, template: int = 1, prefix: str = "A:") -> list[str]:
    return [build_text(task.templates[template], it.input, prefix) for it in task.test]


@pytest.fixture(scope="module")
def setup():
    tasks = toy_tasks()
    lm = toy_lm("llama", tasks)
    method = StaticTaskVector(k=3, n_prompts=4, scale=0.5).fit(lm, tasks[:2])
    return lm, tasks, method


def test_vector_is_mean_of_prompt_states(setup):
    lm, tasks, method = setup
    for task in tasks[:2]:
        prompts = [p.text for p in method.prompts[task.name]]
        assert len(prompts) == 4 and all(p.count("\n\n") == 3 for p in prompts)  # 3 demos + query
        expected = last_token_states(lm, prompts).mean(0)
        assert method.vectors[task.name].shape == (lm.num_layers, lm.hidden_size)
        torch.testing.assert_close(method.vectors[task.name], expected, rtol=1e-5, atol=1e-6)
    assert method.fitted == ["toy_sentiment", "toy_yesno"] and {"toy_sentiment", "toy_yesno"} <= set(method.vectors)


def test_add_mode_injects_scaled_vector_at_last_token(setup):
    lm, tasks, method = setup
    batch = method.prepare(lm, tasks[0], tasks[0].test, texts_for(tasks[0]))
    expected = next_token_logits(lm, batch.prompts, Injection(method.vectors["toy_sentiment"], 0.5, "all", "last"))
    torch.testing.assert_close(next_token_logits(lm, batch.prompts, batch.intervention), expected)
    assert not torch.allclose(expected, next_token_logits(lm, batch.prompts))


def test_replace_mode_sets_last_token_state(setup):
    lm, tasks, _ = setup
    method = StaticTaskVector(k=3, n_prompts=2, mode="replace", layers=[1]).fit(lm, tasks[:1])
    batch = method.prepare(lm, tasks[0], tasks[0].test[:3], texts_for(tasks[0])[:3])
    from workbench.core.inference import encode

    enc = encode(lm, batch.prompts)
    saved = []
    with lm.nn.trace(**enc):
        batch.intervention.apply(lm, slice(None), enc["attention_mask"])
        saved.append(lm.nn_layer(1).output.save())
    out = saved[0]
    v = method.vectors["toy_sentiment"][1]
    torch.testing.assert_close(out[:, -1], v.expand(3, -1))
    assert not torch.allclose(out[:, -2], v.expand(3, -1))


def test_unseen_policies(setup):
    lm, tasks, _ = setup
    own = StaticTaskVector(k=3, n_prompts=2).fit(lm, tasks[:2])
    batch = own.prepare(lm, tasks[2], tasks[2].test, texts_for(tasks[2]))
    assert batch.info[0]["vector_task"] == "toy_unseen" and "toy_unseen" in own.vectors
    retrieve = StaticTaskVector(k=3, n_prompts=2, unseen="retrieve").fit(lm, tasks[:2])
    batch = retrieve.prepare(lm, tasks[2], tasks[2].test, texts_for(tasks[2]))
    assert batch.info[0]["vector_task"] in {"toy_sentiment", "toy_yesno"} and "toy_unseen" not in retrieve.vectors
    assert -1 <= batch.info[0]["similarity"] <= 1


def test_evaluate_runs(setup):
    lm, tasks, method = setup
    df = ev.evaluate(lm, method, tasks, n_test=2, templates=[0], prefixes=["A:"], progress=False)
    assert len(df) == 6 and set(df["vector_task"]) == {"toy_sentiment", "toy_yesno", "toy_unseen"}
    assert method.config()["mode"] == "add"
