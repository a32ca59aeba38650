"""λ / depth are chosen on the valid split only; the choice is recorded; a harmful method falls back to zero-shot."""

from __future__ import annotations

import pytest
import torch
from test_static_tv import single_thread, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

from workbench.analysis.selection import Selected, select_on_valid
from workbench.eval.evaluate import evaluate
from workbench.methods import StaticTaskVector, ZeroShot
from workbench.methods.base import PreparedBatch


class Spy(ZeroShot):
    """Zero-shot that remembers which inputs it was asked about."""

    seen: list[str] = []

    def __init__(self, scale: float, layers, positions: str) -> None:
        self.scale, self.layers = scale, layers

    def prepare(self, lm, task, items, texts, seed=42) -> PreparedBatch:
        Spy.seen += [it.input for it in items]
        return super().prepare(lm, task, items, texts, seed)


def test_selection_reads_only_the_valid_split_and_records_the_choice():
    tasks = toy_tasks()[:2]
    lm = toy_lm("llama", toy_tasks())
    Spy.seen = []
    chosen, curve = select_on_valid(lm, Spy, tasks, scales=[0.1, 1.0], layer_specs=["all", "top"], n_valid=4,
                                    templates=[0], prefixes=["A:"])
    valid = {it.input for t in tasks for it in t.valid}
    test = {it.input for t in tasks for it in t.test}
    assert Spy.seen and set(Spy.seen) <= valid and not set(Spy.seen) & test
    assert len(curve) == 4 and curve["chosen"].sum() == 1
    assert chosen.choice["scale"] == 0.1  # every point ties: the smallest λ wins
    assert chosen.config()["selected_on_valid"]["layers"] == "all"
    df = evaluate(lm, chosen, tasks, n_test=2, templates=[0], prefixes=["A:"], progress=False)
    assert set(df["selection"]) == {"chosen"}
    assert evaluate(lm, chosen, tasks, n_test=2, templates=[0], prefixes=["A:"], progress=False).attrs[
        "config"]["method"]["selected_on_valid"]["scale"] == 0.1


def test_harmful_setting_falls_back_to_zero_shot():
    tasks = toy_tasks()[:2]
    lm = toy_lm("llama", toy_tasks())
    static = StaticTaskVector(k=2, n_prompts=2).fit(lm, tasks)

    def make(scale, layers, positions):
        method = StaticTaskVector(k=2, n_prompts=2, scale=scale, layers=layers)
        method.__dict__.update({k: v for k, v in static.__dict__.items() if k not in ("scale", "layers")})
        return method

    chosen, _ = select_on_valid(lm, make, tasks, scales=[1e6], n_valid=4, fallback=True, templates=[0],
                                prefixes=["A:"], score="label_correct")
    assert isinstance(chosen, Selected) and chosen.fallback_tasks  # λ = 1e6 wrecks the model: zero-shot is better
    df = evaluate(lm, chosen, tasks, n_test=2, templates=[0], prefixes=["A:"], progress=False)
    fell_back = df[df["task"].isin(chosen.fallback_tasks)]
    assert set(fell_back["selection"]) == {"zero-shot fallback"}
    plain = evaluate(lm, ZeroShot(), [t for t in tasks if t.name in chosen.fallback_tasks], n_test=2, templates=[0],
                     prefixes=["A:"], progress=False)
    assert list(fell_back["prediction"]) == list(plain["prediction"])
    assert torch.isfinite(torch.tensor(df["label_correct"].astype(float).values)).all()


def test_bad_inputs():
    lm = toy_lm("llama", toy_tasks())
    with pytest.raises(ValueError, match="unknown score"):
        select_on_valid(lm, Spy, toy_tasks()[:1], scales=[1.0], score="accuracy")
    with pytest.raises(ValueError, match="at least one value"):
        select_on_valid(lm, Spy, toy_tasks()[:1], scales=[])
    with pytest.raises(ValueError, match="unknown split"):
        evaluate(lm, ZeroShot(), toy_tasks()[:1], split="train")
