"""Issue 20 §3, nothing foreign loads without a word: models, task data and generators are fingerprinted, recorded
with every fit, generator and run folder, and compared on use (refused naming both sides; the same model under
another path is accepted)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import workbench as wb
from workbench.atv.generator import META, WEIGHTS, ATVGenerator, CheckpointMismatch
from workbench.core.encoders import load_encoder
from workbench.core.fingerprints import FingerprintMismatch
from workbench.core.testing import tiny_model
from workbench.eval.evaluate import evaluate
from workbench.eval.runs import RunConfigMismatch
from workbench.methods import LoRA, StaticTaskVector, ZeroShot
from workbench.methods.atv import ATV
from workbench.methods.fitted import FittedMismatch, fit_or_load
from workbench.tasks.registry import Item, Task

WORDS = ["great", "sad", "slow", "fine", "bad", "good", "dull", "fun"]
LABELS = ("positive", "negative")
EVAL = dict(n_test=2, templates=[0], prefixes=["A:"], progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one intra-op thread; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def task_rows(n: int = 12) -> list[dict]:
    return [{"input": f"the film was {WORDS[i % len(WORDS)]} {i}", "output": LABELS[i % 2]} for i in range(n)]


def toy_task(name: str = "toy_sentiment") -> Task:
    items = [Item(r["input"], r["output"]) for r in task_rows()]
    return Task(name=name, category="NLU", domain="NLU", labels=LABELS, in_domain=True,
                templates=["Review: {input}", "Review sentence: {input}", "Review text : {input} ?"],
                train=items, valid=items[:6], test=items[6:])


def lm_of(seed: int = 0):
    task = toy_task()
    return tiny_model("llama", texts=[t for it in task.train for t in it] + task.templates, seed=seed)


def saved_model(folder, seed: int = 0):
    """A tiny model written as a Hugging Face folder (what a local model path is)."""
    lm = lm_of(seed)
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return lm


def generator(lm, seed: int = 0) -> ATVGenerator:
    torch.manual_seed(seed)
    return ATVGenerator(load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=seed), lm)


def zero_shot(lm, run_dir):
    return evaluate(lm, ZeroShot(), [toy_task()], run_dir=run_dir, **EVAL)


def edit_config(run_dir, change) -> None:
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------------- the model
def test_tiny_models_of_one_shape_but_other_seeds_are_told_apart():
    a, b = lm_of(seed=0), lm_of(seed=1)
    with pytest.raises(CheckpointMismatch, match="fingerprints") as err:
        ATV(generator(a)).prepare(b, None, [], ["the film was great"])
    assert f"fingerprints: checkpoint {a.fingerprint}, model {b.fingerprint}" in str(err.value)
    assert a.fingerprint == lm_of(seed=0).fingerprint != b.fingerprint
    described = [{k: v for k, v in m.describe().items() if k != "fingerprint"} for m in (a, b)]
    assert described[0] == described[1]  # name, architecture, L, d, dtype: nothing else tells them apart


def test_fingerprint_is_stable_across_reloads_and_dtypes(tmp_path):
    lm = saved_model(tmp_path / "m")
    first, second = wb.load_model(str(tmp_path / "m")), wb.load_model(str(tmp_path / "m"))
    assert first.fingerprint == second.fingerprint == lm.fingerprint
    assert wb.load_model(str(tmp_path / "m"), dtype="bfloat16").fingerprint == lm.fingerprint


def test_same_model_by_relative_absolute_trailing_slash_or_symlink_path_is_accepted(tmp_path, monkeypatch):
    saved_model(tmp_path / "m")
    (tmp_path / "link").symlink_to(tmp_path / "m", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    rel = wb.load_model("m")
    others = [wb.load_model(str(tmp_path / "m") + "/"), wb.load_model("./link")]
    assert all(o.describe() == rel.describe() for o in others)
    generator(rel).save(tmp_path / "g")
    first = zero_shot(rel, tmp_path / "run")
    fit_or_load(StaticTaskVector(k=2, n_prompts=2), rel, [toy_task()], tmp_path / "fit")
    for other in others:
        ATVGenerator.load(tmp_path / "g", other)  # not "another large model"
        assert zero_shot(other, tmp_path / "run")["prediction"].tolist() == first["prediction"].tolist()
        assert fit_or_load(StaticTaskVector(k=2, n_prompts=2), other, [toy_task()], tmp_path / "fit")[1]


def test_a_copy_of_the_model_elsewhere_is_compared_by_fingerprint_not_path(tmp_path):
    saved_model(tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    lm, copy = wb.load_model(str(tmp_path / "m")), wb.load_model(str(tmp_path / "copy"))
    generator(lm).save(tmp_path / "g")
    ATVGenerator.load(tmp_path / "g", copy)
    first = zero_shot(lm, tmp_path / "run")
    assert zero_shot(copy, tmp_path / "run")["prediction"].tolist() == first["prediction"].tolist()
    assert lm.name != copy.name and lm.fingerprint == copy.fingerprint


def test_a_model_rebuilt_at_the_same_path_is_refused_by_generators_and_run_folders(tmp_path):
    saved_model(tmp_path / "m", seed=0)
    old = wb.load_model(str(tmp_path / "m"))
    generator(old).save(tmp_path / "g")
    zero_shot(old, tmp_path / "run")
    saved_model(tmp_path / "m", seed=1)  # same path, same shape, other weights
    new = wb.load_model(str(tmp_path / "m"))
    with pytest.raises(CheckpointMismatch, match="allow_mismatch=True") as err:
        ATVGenerator.load(tmp_path / "g", new)
    with pytest.raises(RunConfigMismatch, match="new run_dir") as run_err:
        zero_shot(new, tmp_path / "run")
    assert new.name == old.name and new.fingerprint != old.fingerprint
    assert f"fingerprints: checkpoint {old.fingerprint}, model {new.fingerprint}" in str(err.value)
    assert f"model.fingerprint: recorded '{old.fingerprint}', now '{new.fingerprint}'" in str(run_err.value)
    with pytest.warns(UserWarning, match="allow_mismatch=True"):
        ATVGenerator.load(tmp_path / "g", new, allow_mismatch=True)  # "I know, use it anyway"
    edit_config(tmp_path / "run", lambda c: c["model"].pop("fingerprint"))  # a folder made before fingerprints
    zero_shot(new, tmp_path / "run")  # nothing to compare: resumed


@pytest.mark.parametrize("make", [lambda: StaticTaskVector(k=2, n_prompts=2, scale=0.5),
                                  lambda: LoRA(epochs=1, n_train=2, batch_size=4, lr=1e-2)], ids=["static", "lora"])
def test_a_fit_made_on_one_model_is_not_reloaded_for_another_of_the_same_shape(make, tmp_path):
    a, b = lm_of(seed=0), lm_of(seed=1)
    assert not fit_or_load(make(), a, [toy_task()], tmp_path / "fit")[1]
    assert fit_or_load(make(), lm_of(seed=0), [toy_task()], tmp_path / "fit")[1]  # the same model: reloaded
    with pytest.raises(FittedMismatch, match="model") as err:
        fit_or_load(make(), b, [toy_task()], tmp_path / "fit")
    assert a.fingerprint in str(err.value) and b.fingerprint in str(err.value)


def test_cli_eval_allows_a_fingerprint_mismatch_only_when_asked(tmp_path, monkeypatch, capsys):
    from workbench import cli
    from workbench.cli import eval as eval_cli

    a, b = lm_of(seed=0), lm_of(seed=1)
    generator(a).save(tmp_path / "g")
    used = []

    class Stop(Exception):
        pass

    def fake_evaluate(lm, method, *args, **kwargs):
        used.append(method)
        raise Stop

    monkeypatch.setattr(eval_cli, "evaluate", fake_evaluate)
    monkeypatch.setattr(eval_cli, "load_model", lambda *args, **kwargs: b)
    argv = ["eval", "--method", "atv", "--generator", str(tmp_path / "g"), "--tasks", "glue_sst2", "--n-test", "1"]
    assert cli.main(argv) == 2
    assert "allow-fingerprint-mismatch" in capsys.readouterr().err and not used
    with pytest.raises(Stop), pytest.warns(UserWarning, match="fingerprint"):
        cli.main([*argv, "--allow-fingerprint-mismatch"])
    assert isinstance(used[0], ATV)


# ----------------------------------------------------------------------------------------------- task data
def test_a_rerun_after_the_task_file_changed_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = task_rows()
    path = data / "toy_sentiment.json"
    path.write_text(json.dumps({"train": rows, "valid": rows[:6], "test": rows[6:]}))
    lm, run = lm_of(), tmp_path / "run"
    kwargs = dict(run_dir=run, data_dir=data, **EVAL)
    first = evaluate(lm, ZeroShot(), "toy_sentiment", **kwargs)
    assert evaluate(lm, ZeroShot(), "toy_sentiment", **kwargs).equals(first)  # unchanged: resumed
    before = wb.load_task("toy_sentiment", data)
    rows[6]["input"] = "the film was good after all"
    path.write_text(json.dumps({"train": rows, "valid": rows[:6], "test": rows[6:]}, indent=1))
    with pytest.raises(RunConfigMismatch, match="task 'toy_sentiment'.*new run_dir") as err:
        evaluate(lm, ZeroShot(), "toy_sentiment", **kwargs)
    after = wb.load_task("toy_sentiment", data).fingerprint()
    assert before.fingerprint() != after and f"recorded {before.fingerprint()}, now {after}" in str(err.value)
    assert json.loads((run / "config.json").read_text())["task_data"] == {"toy_sentiment": before.fingerprint()}


def test_task_fingerprint_is_of_the_data_not_the_file_layout(tmp_path):
    rows = task_rows()
    for name, indent in (("a", None), ("b", 4)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"train": rows, "valid": rows[:6], "test": rows[6:]},
                                                          indent=indent))
    a, b = wb.load_task("a", tmp_path), wb.load_task("b", tmp_path)
    assert a.fingerprint() == b.fingerprint() == toy_task().fingerprint()
    edited = toy_task()
    edited.test = edited.test[:-1]
    assert edited.fingerprint() != a.fingerprint()


# ----------------------------------------------------------------------------------------------- generators
def test_a_swapped_generator_weights_file_is_refused(tmp_path):
    lm = lm_of()
    one, two = generator(lm, seed=0), generator(lm, seed=1)
    one.save(tmp_path / "one")
    two.save(tmp_path / "two")
    shutil.copyfile(tmp_path / "two" / WEIGHTS, tmp_path / "one" / WEIGHTS)
    with pytest.raises(ValueError, match=WEIGHTS) as err:
        ATVGenerator.load(tmp_path / "one", lm)
    assert isinstance(err.value, FingerprintMismatch)
    assert f"recorded fingerprint {one.fingerprint()}, now {two.fingerprint()}" in str(err.value)
    meta = json.loads((tmp_path / "one" / META).read_text())
    assert meta["fingerprint"] == one.fingerprint() != two.fingerprint() and meta["lm_fingerprint"] == lm.fingerprint
    assert ATVGenerator.load(tmp_path / "two", lm).fingerprint() == two.fingerprint()  # stable through save/load
    for key in ("fingerprint", "lm_fingerprint"):  # saved before fingerprints were recorded: nothing to compare
        meta.pop(key)
    (tmp_path / "one" / META).write_text(json.dumps(meta))
    assert ATVGenerator.load(tmp_path / "one", lm).fingerprint() == two.fingerprint()


def test_atv_of_another_generator_does_not_resume_a_run_folder(tmp_path):
    lm = lm_of()
    one, two = generator(lm, seed=0), generator(lm, seed=1)
    run = tmp_path / "run"
    first = evaluate(lm, ATV(one, scale=0.5), [toy_task()], run_dir=run, **EVAL)
    assert evaluate(lm, ATV(one, scale=0.5), [toy_task()], run_dir=run, **EVAL).equals(first)
    with pytest.raises(RunConfigMismatch, match="generator_fingerprint") as err:
        evaluate(lm, ATV(two, scale=0.5), [toy_task()], run_dir=run, **EVAL)
    assert f"recorded '{one.fingerprint()}', now '{two.fingerprint()}'" in str(err.value)
