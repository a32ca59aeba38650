"""Data-scaling curves and seed aggregation (workbench.analysis.scaling) on a tiny model and tiny tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toy_synth import TEMPLATES, WORDS, make_task

from workbench.analysis.scaling import (
    BUDGETS,
    CURVE_COLUMNS,
    ScalingBudget,
    as_budget,
    atv_trainer,
    data_scaling,
    lora_trainer,
    seed_rows,
    seed_summary,
    task_scaling,
)
from workbench.atv.generator import ATVGenerator
from workbench.atv.train_config import TrainConfig
from workbench.core.encoders import load_encoder
from workbench.core.interventions import Injection
from workbench.core.testing import tiny_model
from workbench.methods.base import Method, PreparedBatch
from workbench.ui.scaling_plots import scaling_figure



TASKS = [make_task("synth_a", ("positive", "negative"), 3), make_task("synth_b", ("Yes", "No"), 5),
         make_task("synth_c", ("True", "False"), 7)]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES)


class Seeded(Method):
    """A cheap test method: a vector drawn from the training seed, injected at the last token."""

    name = "seeded"

    def __init__(self, lm, seed: int):
        self.v = torch.randn(lm.num_layers, lm.hidden_size, generator=torch.Generator().manual_seed(seed))

    def prepare(self, lm, task, items, texts, seed=42):
        return PreparedBatch([lm.render(t) for t in texts], Injection(self.v, 3.0))


def recording(calls: list):
    def train(lm, tasks, n_train, seed):
        calls.append(([t.name for t in tasks], n_train, seed))
        return Seeded(lm, seed)
    return train


def test_data_scaling_trains_atv_and_lora_per_n_and_gives_intervals(lm):
    def make_generator(lm, seed):
        torch.manual_seed(seed)
        return ATVGenerator(load_encoder("scratch:1x16", tokenizer=lm.tokenizer, seed=seed), lm)

    calls: list = []
    trainers = {"atv": atv_trainer(make_generator, TrainConfig(epochs=1, batch_size=2, scale=1.0, valid_items=0)),
                "lora": lora_trainer(epochs=1, batch_size=2), "probe": recording(calls)}
    curve, rows = data_scaling(lm, trainers, TASKS[:2], "tiny", return_rows=True)
    assert list(curve.columns) == ["method", "n_train", *CURVE_COLUMNS[1:]]
    assert sorted(zip(curve["method"], curve["n_train"])) == sorted(
        [("zero-shot", 0)] + [(m, n) for m in ("atv", "lora", "probe") for n in (2, 4)])
    assert calls == [(["synth_a", "synth_b"], 2, 42), (["synth_a", "synth_b"], 4, 42)]
    assert ((curve["ci_low"] <= curve["accuracy"] + 1e-9) & (curve["accuracy"] <= curve["ci_high"] + 1e-9)).all()
    assert curve[["label_ci_low", "label_ci_high"]].notna().all().all() and (curve["n_tasks"] == 2).all()
    assert set(rows["task"]) == {"synth_a", "synth_b"} and set(rows["seed"]) == {42}
    assert len(scaling_figure(curve).data) == 2 * 3  # three trained methods in two panels


def test_task_scaling_trains_on_the_first_k_tasks_and_scores_unseen_ones(lm):
    calls: list = []
    curve = task_scaling(lm, {"probe": recording(calls)}, TASKS[:2], [TASKS[2]], "tiny", n_train=3)
    assert [c[0] for c in calls] == [["synth_a"], ["synth_a", "synth_b"]] and {c[1] for c in calls} == {3}
    assert sorted(zip(curve["method"], curve["n_train_tasks"])) == [("probe", 1), ("probe", 2), ("zero-shot", 0)]
    with pytest.raises(ValueError, match="unseen_tasks include training tasks"):
        task_scaling(lm, {"probe": recording([])}, TASKS[:2], [TASKS[1]], "tiny")
    with pytest.raises(ValueError, match="n_tasks=2 but train_pool has only 1 tasks"):
        task_scaling(lm, {"probe": recording([])}, TASKS[:1], [TASKS[2]], "tiny")


def test_seed_summary_mean_and_sd_are_numpys_over_per_seed_accuracies(lm):
    budget = ScalingBudget(n_test=6, templates=[0, 1], prefixes=["A:"], n_boot=200)
    rows = seed_rows(lm, {"probe": recording([])}, TASKS[:2], TASKS[:2], seeds=(42, 10, 100), n_train=4,
                     budget=budget)
    table = seed_summary(rows, n_boot=200, n_perm=200)
    for method in ("probe", "zero-shot"):
        for task in ("synth_a", "synth_b"):
            part = rows[(rows["method"] == method) & (rows["task"] == task)]
            per_seed = [100 * part[part["seed"] == s]["correct"].astype(float).mean() for s in (10, 42, 100)]
            got = table[(table["method"] == method) & (table["name"] == task)].iloc[0]
            assert got["mean"] == pytest.approx(np.mean(per_seed)) and got["sd"] == pytest.approx(np.std(per_seed))
            assert got["n_seeds"] == 3 and got["ci_low"] <= got["mean"] <= got["ci_high"]
    probe = table[(table["method"] == "probe") & (table["name"] == "all")].iloc[0]
    assert 0 < probe["p_value"] <= 1 and probe["diff_ci_low"] <= probe["difference"] <= probe["diff_ci_high"]
    assert "label_difference" in table and table.attrs["seeds"] == [10, 42, 100]
    assert table[table["method"] == "zero-shot"]["difference"].isna().all()


def test_bad_inputs_name_the_value(lm):
    with pytest.raises(ValueError, match=r"each of n_trains \(items per task\) must be a positive int, got 0"):
        as_budget(ScalingBudget(n_trains=(8, 0)))
    with pytest.raises(ValueError, match="must be a positive int, got 2.5"):
        as_budget(ScalingBudget(n_tasks=(1, 2.5)))
    with pytest.raises(ValueError, match="seed '42' is not an int"):
        as_budget(ScalingBudget(seeds=("42",)))
    with pytest.raises(ValueError, match="seed 1.5 is not an int"):
        seed_rows(lm, {"probe": recording([])}, TASKS[:1], TASKS[:1], seeds=(42, 1.5))
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        data_scaling(lm, {"probe": recording([])}, TASKS[:1], "huge")
    with pytest.raises(ValueError, match="'zero-shot'"):
        data_scaling(lm, {"zero-shot": recording([])}, TASKS[:1], "tiny")
    with pytest.raises(ValueError, match="do not pass n_train=5"):
        lora_trainer(n_train=5)
    assert all(as_budget(name) is BUDGETS[name] for name in BUDGETS)
