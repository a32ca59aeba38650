"""Fits know the model and data they were made on: a copy of the model elsewhere reloads a saved fit, changed task
data does not, and an in-memory fit of one model is refused on another of the same shape before any work."""

from __future__ import annotations

import json
import shutil

import pytest
from test_fingerprints import EVAL, lm_of, saved_model, toy_task

import workbench as wb
from workbench.core.fingerprints import FingerprintMismatch
from workbench.eval.evaluate import evaluate
from workbench.methods import LoRA, StaticTaskVector, ZeroShot
from workbench.methods.fitted import FittedMismatch, fit_or_load
from workbench.tasks.registry import Item


def static() -> StaticTaskVector:
    return StaticTaskVector(k=2, n_prompts=2, scale=0.5)


def test_a_saved_fit_reloads_for_a_copy_of_the_model_in_another_folder(tmp_path):
    saved_model(tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    lm, copy = wb.load_model(str(tmp_path / "m")), wb.load_model(str(tmp_path / "copy"))
    assert lm.name != copy.name and lm.fingerprint == copy.fingerprint
    assert fit_or_load(static(), lm, [toy_task()], tmp_path / "fit")[1] is False
    assert fit_or_load(static(), copy, [toy_task()], tmp_path / "fit")[1] is True  # same weights: reloaded


def test_a_saved_fit_is_not_reloaded_after_its_task_data_changed(tmp_path):
    lm = lm_of()
    fit_or_load(static(), lm, [toy_task()], tmp_path / "fit")
    record = json.loads((tmp_path / "fit" / "fitted.json").read_text())
    assert record["task_data"] == {"toy_sentiment": toy_task().fingerprint()}
    changed = toy_task()
    changed.train = [Item("an edited sentence", "positive"), *changed.train[1:]]
    with pytest.raises(FittedMismatch, match=r"task 'toy_sentiment' changed since the fit was made") as err:
        fit_or_load(static(), lm, [changed], tmp_path / "fit")
    assert toy_task().fingerprint() in str(err.value) and changed.fingerprint() in str(err.value)


@pytest.mark.parametrize("make", [static, lambda: LoRA(epochs=1, n_train=2, batch_size=4, lr=1e-2)],
                         ids=["static", "lora"])
def test_an_in_memory_fit_is_refused_on_another_model_of_the_same_shape(make, tmp_path):
    a, b = lm_of(seed=0), lm_of(seed=1)
    method = make().fit(a, [toy_task()])
    assert method.fitted_for == a.fingerprint
    with pytest.raises(FingerprintMismatch, match="fitted on another model") as err:
        evaluate(b, method, [toy_task()], run_dir=tmp_path / "run", **EVAL)
    assert a.fingerprint in str(err.value) and b.fingerprint in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    evaluate(lm_of(seed=0), method, [toy_task()], **EVAL)  # the model it was fitted on (rebuilt): accepted


def test_a_reloaded_fit_records_the_model_it_serves_and_unfitted_methods_pass(tmp_path):
    lm = lm_of()
    fit_or_load(static(), lm, [toy_task()], tmp_path / "fit")
    again = static()
    assert fit_or_load(again, lm, [toy_task()], tmp_path / "fit")[1] and again.fitted_for == lm.fingerprint
    with pytest.raises(FingerprintMismatch):
        again.check_fitted_for(lm_of(seed=1))
    ZeroShot().fit(lm, [toy_task()]).check_fitted_for(lm_of(seed=1))  # nothing learned: nothing to refuse
