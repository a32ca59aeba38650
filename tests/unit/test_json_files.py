"""JSON files the workbench reads back (run config.json / efficiency.json, generator.json) and task names that are
file names: a malformed file or a path-like name gives one clear error naming the file / value, never a raw
JSONDecodeError / KeyError, and nothing is written outside the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.atv.generator import ATVGenerator
from workbench.core.files import FileFormatError, read_json
from workbench.core.testing import tiny_model
from workbench.eval import runs
from workbench.eval.evaluate import check_seeds, evaluate
from workbench.methods.prompting import ZeroShot
from workbench.tasks.registry import Item, Task

WORDS = ["good fun film", "bad slow film", "great cast", "dull plot"]
TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]


def toy_task(name: str = "toy") -> Task:
    items = [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(WORDS)]
    return Task(name=name, category="NLU", domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=True, train=items, valid=items[:2], test=items)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES)


def run(lm, run_dir: Path, task: Task | None = None) -> pd.DataFrame:
    return evaluate(lm, ZeroShot(), [task or toy_task()], n_test=2, templates=[0], prefixes="A:", run_dir=run_dir,
                    progress=False)


# ----------------------------------------------------------------------------------------------- read_json
@pytest.mark.parametrize("content, pattern", [
    (b'{"a": 1,', r"not valid JSON \(Expecting property name enclosed in double quotes at line 1, column 9\)"),
    (b"", r"not valid JSON \(file is empty\)"),
    (b'{"a": "\xe9"}', r"not UTF-8 text \(byte 0xe9 at offset 7\)"),
    (b"[1, 2]", r"expected a JSON object with keys \['a', 'b'\], got a JSON array"),
    (b'{"a": 1}', r"missing key 'b' \(needs \['a', 'b'\]; found \['a'\]\)"),
])
def test_read_json_names_file_fault_and_expectation(tmp_path, content, pattern):
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=pattern) as e:
        read_json(path, ("a", "b"), what="a test record")
    assert str(e.value).startswith(f"{path}: ") and str(e.value).endswith("; expected a test record")
    assert "\n" not in str(e.value)


def test_read_json_missing_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.json does not exist; expected a test record"):
        read_json(tmp_path / "gone.json", what="a test record")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.json is a folder; expected a test record"):
        read_json(tmp_path / "dir.json", what="a test record")
    (tmp_path / "ok.json").write_text('{"a": [1]}')
    assert read_json(tmp_path / "ok.json", ("a",)) == {"a": [1]}


# ----------------------------------------------------------------------------------------------- run folders
def test_truncated_config_json(lm, tmp_path):
    run(lm, tmp_path)
    config = tmp_path / "config.json"
    config.write_text(config.read_text()[:40])
    for call in (lambda: run(lm, tmp_path), lambda: runs.load_run(tmp_path)):
        with pytest.raises(FileFormatError, match=r"config.json: not valid JSON \(.* at line \d+, column \d+\); "
                                                  r"expected the config.json that workbench.evaluate writes"):
            call()


@pytest.mark.parametrize("key", ["seeds", "tasks"])
def test_config_json_missing_key(lm, tmp_path, key):
    run(lm, tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != key}))
    with pytest.raises(FileFormatError, match=f"config.json: missing key '{key}'"):
        run(lm, tmp_path)
    with pytest.raises(FileFormatError, match=f"missing key '{key}'"):
        runs.load_run(tmp_path)


def test_config_json_not_an_object(lm, tmp_path):
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(FileFormatError, match="config.json: expected a JSON object .* got a JSON array"):
        run(lm, tmp_path)


def test_efficiency_json_malformed(lm, tmp_path):
    run(lm, tmp_path)
    eff = tmp_path / "efficiency.json"
    record = json.loads(eff.read_text())
    (tmp_path / "results" / "toy.parquet").unlink()  # the rerun recomputes the task and rewrites efficiency.json
    eff.write_text("{")
    with pytest.raises(FileFormatError, match=r"efficiency.json: not valid JSON"):
        run(lm, tmp_path)
    eff.write_text(json.dumps({"tasks": record["tasks"]}))
    with pytest.raises(FileFormatError, match=r"efficiency.json: missing key 'summary'"):
        run(lm, tmp_path)
    del record["tasks"]["toy"]["peak_bytes"]
    record["tasks"]["other"] = record["tasks"].pop("toy")
    eff.write_text(json.dumps(record))
    with pytest.raises(FileFormatError, match=r"the record of task 'other' lacks key 'peak_bytes'"):
        run(lm, tmp_path)
    with pytest.raises(FileFormatError, match="lacks key 'peak_bytes'"):
        runs.load_run(tmp_path)


# ----------------------------------------------------------------------------------------------- generator.json
@pytest.mark.parametrize("content, pattern", [
    ('{"encoder": "minilm-l6", ', r"generator.json: not valid JSON"),
    ('{"encoder": "minilm-l6", "pooling": "mean", "lm": "x", "num_layers": 4}', r"missing key 'hidden_size'"),
    ('"minilm-l6"', r"expected a JSON object"),
])
def test_generator_json_malformed(tmp_path, content, pattern):
    (tmp_path / "generator.json").write_text(content)
    with pytest.raises(FileFormatError, match=pattern) as e:
        ATVGenerator.read_meta(tmp_path)
    assert str(tmp_path / "generator.json") in str(e.value) and "ATVGenerator.save" in str(e.value)


# ----------------------------------------------------------------------------------------------- task names
@pytest.mark.parametrize("name", ["../escaped", "a/b", "<tmp>/abs_task", ".."])
def test_task_name_with_a_path_writes_nothing_outside_results(lm, tmp_path, name):
    name = name.replace("<tmp>", str(tmp_path))  # an absolute path inside this test's folder
    run_dir = tmp_path / "run"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="is not a plain name"):
        runs.save_task_results(run_dir, name, pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="is not a plain name"):
        runs.task_results_path(run_dir, name)
    with pytest.raises(ValueError, match="is not a plain name"):
        run(lm, run_dir, toy_task(name))
    after = [p for p in sorted(tmp_path.rglob("*")) if not p.is_relative_to(run_dir)]
    assert after == before


# ----------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seeds", [-1, [42, -3]])
def test_negative_seed(seeds):
    with pytest.raises(ValueError, match=r"seed -\d is negative; seeds must be non-negative ints"):
        check_seeds(seeds)
    assert check_seeds([0, 42, 42]) == [0, 42]
