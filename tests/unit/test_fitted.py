"""Fitted methods saved and reloaded (what a resumed study relies on), and the k-shot item subset."""

from __future__ import annotations

import json

import pytest
import torch
from test_static_tv import single_thread, texts_for, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench.eval.evaluate as ev
from workbench.eval.compare import compare
from workbench.eval.runs import RunConfigMismatch
from workbench.methods import ELICIT, I2CL, FewShot, LoRA, StaticTaskVector, ZeroShot
from workbench.methods.fitted import FittedMismatch, fit_or_load

FACTORIES = {
    "static": lambda: StaticTaskVector(k=2, n_prompts=2, scale=0.5),
    "elicit": lambda: ELICIT(k=2, n_prompts=2, n_valid=2, layer_stride=2, top_k=2),
    "i2cl": lambda: I2CL(shots_per_class=1, epochs=1),
    "lora": lambda: LoRA(epochs=1, n_train=2, batch_size=4, lr=1e-2),
}


def logits_of(lm, method, task):
    rows = ev.evaluate(lm, method, [task], n_test=3, templates=[0], prefixes=["A:"], progress=False, cache=False)
    return rows["prediction"].tolist()


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_reloaded_fit_predicts_exactly_like_the_fitted_one(kind, tmp_path):
    tasks = toy_tasks()
    lm = toy_lm()
    fitted = FACTORIES[kind]()
    seconds, reloaded = fit_or_load(fitted, lm, tasks[:2], tmp_path / "m")
    assert not reloaded and seconds > 0 and (tmp_path / "m" / "fitted.json").exists()
    again = FACTORIES[kind]()
    assert fit_or_load(again, lm, tasks[:2], tmp_path / "m") == (pytest.approx(seconds), True)
    for task in tasks:  # in-domain and unseen (retrieval) alike
        assert logits_of(lm, again, task) == logits_of(lm, fitted, task)


def test_a_fit_for_other_settings_or_tasks_is_refused(tmp_path):
    tasks, lm = toy_tasks(), toy_lm()
    fit_or_load(StaticTaskVector(k=2, n_prompts=2), lm, tasks[:2], tmp_path / "m")
    with pytest.raises(FittedMismatch, match="n_prompts"):
        fit_or_load(StaticTaskVector(k=2, n_prompts=3), lm, tasks[:2], tmp_path / "m")
    with pytest.raises(FittedMismatch, match="tasks"):
        fit_or_load(StaticTaskVector(k=2, n_prompts=2), lm, tasks[:1], tmp_path / "m")


def test_a_folder_the_workbench_did_not_write_is_left_alone(tmp_path):
    mine = tmp_path / "m"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a fitted-method folder"):
        fit_or_load(StaticTaskVector(k=2, n_prompts=2), toy_lm(), toy_tasks()[:1], mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_methods_without_fitted_state_write_nothing(tmp_path):
    assert fit_or_load(ZeroShot(), toy_lm(), toy_tasks()[:1], tmp_path / "z")[1] is False
    assert not (tmp_path / "z").exists()


def test_compare_reloads_instead_of_refitting(tmp_path, monkeypatch):
    tasks, lm = toy_tasks(), toy_lm()
    kwargs = dict(fit_dir=tmp_path / "fitted", n_test=2, templates=[0], prefixes=["A:"], progress=False)
    first, eff = compare(lm, [ZeroShot(), StaticTaskVector(k=2, n_prompts=2)], tasks[:2], tasks, **kwargs)
    assert not eff["Reloaded"].any()
    monkeypatch.setattr(StaticTaskVector, "fit", lambda *a, **k: pytest.fail("refitted"))
    second, eff2 = compare(lm, [ZeroShot(), StaticTaskVector(k=2, n_prompts=2)], tasks[:2], tasks, **kwargs)
    assert eff2.set_index("method")["Reloaded"].to_dict() == {"zero-shot": False, "static TV": True}
    assert second["prediction"].tolist() == first["prediction"].tolist()


@pytest.mark.parametrize("kind", ["elicit", "lora"])
def test_a_method_already_fitted_finds_its_saved_fit(kind, tmp_path):
    """Rerunning notebook 02's compare cell with the same (now fitted) method objects reloads instead of failing:
    config entries that report what fit learned (LoRA's parameter count, ELICIT's threshold) are not settings."""
    tasks, lm = toy_tasks(), toy_lm()
    method = FACTORIES[kind]()
    assert fit_or_load(method, lm, tasks[:2], tmp_path / "m")[1] is False
    assert fit_or_load(method, lm, tasks[:2], tmp_path / "m")[1] is True  # config now holds fitted values
    assert fit_or_load(FACTORIES[kind](), lm, tasks[:2], tmp_path / "m")[1] is True


def test_subsample_items_is_a_seeded_subset():
    indices = [1, 4, 7, 9, 12, 20, 33]
    sub = ev.subsample_items(indices, 3, seed=42)
    assert len(sub) == 3 and set(sub) <= set(indices) and sub == sorted(sub)
    assert sub == ev.subsample_items(indices, 3, seed=42)
    assert ev.subsample_items(indices, None, 42) == indices == ev.subsample_items(indices, 10, 42)


def test_max_items_runs_a_method_on_a_subset_of_the_others_items(tmp_path):
    tasks, lm = toy_tasks(), toy_lm()
    methods = {"zero-shot": ZeroShot(), "2-shot": FewShot(k=2)}
    out = ev.evaluate_many(lm, methods, tasks[:2], n_test=6, templates=[0], prefixes=["A:"], progress=False,
                           max_items={"2-shot": 3}, run_dir=tmp_path)
    for task in ("toy_sentiment", "toy_yesno"):
        zs = set(out["zero-shot"].query("task == @task")["item"])
        few = set(out["2-shot"].query("task == @task")["item"])
        assert len(zs) == 6 and len(few) == 3 and few <= zs
    assert json.loads((tmp_path / "2-shot" / "config.json").read_text())["max_items"] == 3
    assert "max_items" not in json.loads((tmp_path / "zero-shot" / "config.json").read_text())
    with pytest.raises(ValueError, match="max_items names 'BM25'"):
        ev.evaluate_many(lm, methods, tasks[:1], n_test=2, max_items={"BM25": 3}, progress=False)
    with pytest.raises(RunConfigMismatch, match="max_items"):
        ev.evaluate_many(lm, methods, tasks[:2], n_test=6, templates=[0], prefixes=["A:"], progress=False,
                         max_items={"2-shot": 4}, run_dir=tmp_path)


def test_as_dtype_names_the_choices():
    from workbench.core.models import as_dtype

    assert as_dtype("bfloat16") is torch.bfloat16 and as_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="'fp8'.*float32"):
        as_dtype("fp8")
