"""Every Method.fit, compare and the sweeps accept a task name, a Task or a list mixing both (issue #10)."""

from __future__ import annotations

import json

import pytest
from test_static_tv import single_thread, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench as wb
from workbench.analysis.sweeps import sweep
from workbench.eval.compare import compare
from workbench.methods import ELICIT, I2CL, BM25FewShot, FewShot, LoRA, StaticTaskVector, ZeroShot
from workbench.tasks.registry import load_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The toy tasks as task files (extra tasks of a data folder)."""
    root = tmp_path_factory.mktemp("tasks")
    for task in toy_tasks()[:2]:
        splits = {s: [{"input": i, "output": o} for i, o in getattr(task, s)] for s in ("train", "valid", "test")}
        (root / f"{task.name}.json").write_text(json.dumps(splits), encoding="utf-8")
    return root


@pytest.fixture()
def tasks_env(data_dir, monkeypatch):
    monkeypatch.setenv("ATV_DATA_DIR", str(data_dir))
    return [load_task("toy_sentiment"), load_task("toy_yesno")]


@pytest.fixture(scope="module")
def lm():
    return toy_lm("llama")


FITTED = {  # method factory, and what it learned per task
    "static-tv": (lambda: StaticTaskVector(k=2, n_prompts=2), lambda m: m.fitted),
    "elicit": (lambda: ELICIT(k=2, n_prompts=2, n_valid=2, layer_stride=2, top_k=2), lambda m: list(m.best_layers)),
    "i2cl": (lambda: I2CL(shots_per_class=1, epochs=1), lambda m: list(m.vectors)),
    "bm25": (lambda: BM25FewShot(k=2), lambda m: [name for name, _ in m._indices]),
    "lora": (lambda: LoRA(epochs=1, n_train=1, batch_size=8), lambda m: ["toy_sentiment"] * bool(m.losses)),
}


@pytest.mark.parametrize("name", list(FITTED))
def test_fit_accepts_a_name_a_task_or_a_mixed_list(name, lm, tasks_env):
    make, learned = FITTED[name]
    assert learned(make().fit(lm, "toy_sentiment")) == ["toy_sentiment"]
    assert learned(make().fit(lm, tasks_env[0])) == ["toy_sentiment"]
    if name != "lora":  # LoRA keeps no per-task state
        mixed = ["toy_sentiment", tasks_env[1], "toy_yesno", tasks_env[0]]  # duplicates dropped, order kept
        assert learned(make().fit(lm, mixed)) == ["toy_sentiment", "toy_yesno"]
    with pytest.raises(ValueError, match="unknown task 'no_such_task'"):
        make().fit(lm, ["toy_sentiment", "no_such_task"])


@pytest.mark.parametrize("cls", [ZeroShot, FewShot])
def test_prompt_methods_check_their_tasks_too(cls, lm, tasks_env):
    assert cls().fit(lm, "toy_sentiment").name == cls.name
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        cls().fit(lm, "nope")


def test_compare_takes_names_and_a_list_of_methods(lm, tasks_env):
    methods = [ZeroShot(), StaticTaskVector(k=2, n_prompts=2, scale=0.1)]
    results, eff = compare(lm, methods, "toy_sentiment", ["toy_yesno", tasks_env[0]], n_test=2, templates=[0],
                           prefixes=["A:"], progress=False)
    assert list(eff.method) == ["zero-shot", "static TV"]
    assert methods[1].fitted == ["toy_sentiment"]
    assert list(results.task.unique()) == ["toy_yesno", "toy_sentiment"] and len(results) == 2 * 2 * 2


def test_sweep_resolves_tasks_once_before_building_methods(lm, tasks_env):
    made = []

    def factory(scale, layers, positions):
        made.append(scale)
        return wb.methods.ZeroShot()

    with pytest.raises(ValueError, match="unknown task 'nope'"):
        sweep(lm, factory, ["toy_sentiment", "nope"], [0.0, 1.0], ("all",), progress=False)
    assert made == []  # failed before the first grid point
    df = sweep(lm, factory, tasks_env[0], [0.0], ("all",), n_test=2, templates=[0], prefixes=["A:"], progress=False)
    assert len(df) == 1 and df.n.iloc[0] == 2
