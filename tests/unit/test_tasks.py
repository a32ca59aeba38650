"""Task registry, data-folder resolution and validation of task files (real files from the shared data folder)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from workbench.tasks import registry as T


def test_registry_matches_paper():
    assert len(T.task_names("all")) == 25
    assert len(T.task_names("in_domain")) == 20 and len(T.task_names("unseen")) == 5
    cats = Counter(T.REGISTRY[n][0] for n in T.task_names("in_domain"))
    assert cats == {"Knowledge": 4, "Reasoning": 5, "Math": 2, "Safety": 4, "NLU": 5}
    assert set(T.task_names("unseen")) == {
        "glue_cola", "bbq_religion", "deepmind", "mmlu_high_school_psychology", "bbh_logical_deduction_five_objects"}
    assert {T.REGISTRY[n][1] for n in T.task_names("unseen")} == {"NLU", "Safety", "Math", "Knowledge", "Reasoning"}
    with pytest.raises(ValueError, match="in_domain"):
        T.task_names("seen")


@pytest.mark.parametrize("name", T.task_names("all"))
def test_load_every_paper_task(name):
    task = T.load_task(name)
    assert task.name == name and task.category == T.REGISTRY[name][0]
    assert task.in_domain == (name in T.IN_DOMAIN)
    assert len(task.templates) == 3 and all(t.count("{input}") == 1 for t in task.templates)
    assert task.templates == T.shipped_templates()[name]
    for split in T.SPLITS:
        items = task.split(split)
        assert items and isinstance(items[0], T.Item)
        assert {it.output for it in items} <= set(task.labels)
    # every label word is used somewhere (the label sets are not too wide), except rare option letters
    used = {it.output for s in T.SPLITS for it in task.split(s)}
    assert used >= set(task.labels[:2])


def test_label_words_examples():
    assert T.load_task("mmlu_pro_math").labels == tuple("ABCDEFGHIJ")
    assert T.load_task("glue_mnli").labels == ("True", "Neither", "False")
    assert T.load_task("glue_sst2").labels == ("positive", "negative")
    assert T.load_task("bbh_reasoning_about_colored_objects").labels[-1] == "R"


def test_extra_tasks_load_with_default_templates():
    extras = T.task_names("extra")
    assert "bbh_word_sorting" in extras and "bbq_nationality" in extras and "gsm8k" not in extras
    for name in extras:
        task = T.load_task(name)
        assert task.category == "Extra" and not task.in_domain and len(task.templates) == 3
        assert all(t.count("{input}") == 1 and t.format(input="x") for t in task.templates)
    assert T.load_task("bbh_word_sorting").labels == ()
    assert "letter choice" in T.load_task("bbh_snarks").templates[0]
    assert "nationality" in T.load_task("bbq_nationality").templates[0]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        T.load_task("no_such_task")
    assert "commonsense_qa" in str(e.value) and "bbh_word_sorting" in str(e.value)


#: sha256 of ELICIT's dataset_files/natural_prompts_manual.json (LINs-lab/ELICIT@aa47dac4d6f9; data/SOURCES.md).
ELICIT_TEMPLATES_SHA256 = "7ac7dcaf3a33bbbf9698aa4b3b04072bae9cbb837c1bfbd7b4545342c051e029"


def test_template_resource_is_a_copy():
    """The packaged templates are ELICIT's file byte for byte (checked by hash: no skip without the shared folder)."""
    packaged = (Path(T.__file__).parents[1] / "resources" / "templates.json").read_bytes()
    assert hashlib.sha256(packaged).hexdigest() == ELICIT_TEMPLATES_SHA256
    shared = Path(T.repo_root()).parent / "shared" / "data" / "templates.json"
    if shared.is_file():
        assert packaged == shared.read_bytes()


def _write(d: Path, name: str, obj) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


GOOD = {s: [{"input": "q?", "output": "Yes"}] for s in T.SPLITS}


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    monkeypatch.setattr(T, "repo_root", lambda: repo)
    monkeypatch.delenv("ATV_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="python -m workbench data prepare"):
        T.resolve_data_dir()
    _write(tmp_path / "shared" / "data" / "tasks", "glue_qnli", GOOD)
    assert T.resolve_data_dir() == (tmp_path / "shared" / "data" / "tasks").resolve()
    (repo / "data" / "tasks").mkdir(parents=True)
    assert T.resolve_data_dir().parts[-3] == "shared"  # empty local folder is skipped
    _write(repo / "data" / "tasks", "glue_qnli", GOOD)
    assert T.resolve_data_dir() == repo / "data" / "tasks"
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("ATV_DATA_DIR", str(env))
    assert T.resolve_data_dir() == env.resolve()
    assert T.resolve_data_dir(tmp_path) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        T.resolve_data_dir(tmp_path / "missing")


def test_load_from_explicit_dir(tmp_path):
    _write(tmp_path, "glue_qnli", GOOD)
    task = T.load_task("glue_qnli", data_dir=tmp_path)
    assert task.train == [T.Item("q?", "Yes")] and task.path == tmp_path / "glue_qnli.json"
    with pytest.raises(FileNotFoundError, match="boolq.json"):
        T.load_task("boolq", data_dir=tmp_path)


def _bad(split: str, index: int, item) -> dict:
    obj = {s: [{"input": "q", "output": "Yes"}] * 3 for s in T.SPLITS}
    obj[split] = list(obj[split])
    obj[split][index] = item
    return obj


@pytest.mark.parametrize(
    "obj, pattern",
    [
        (_bad("valid", 2, {"input": "q"}), r"split 'valid' item 2: missing key 'output'"),
        (_bad("train", 1, {"input": 3, "output": "Yes"}), r"split 'train' item 1: 'input' must be a string, got int"),
        (_bad("test", 0, {"input": "q", "output": "  "}), r"split 'test' item 0: 'output' is empty"),
        (_bad("test", 2, ["q", "Yes"]), r"split 'test' item 2: expected an object"),
        (_bad("test", 1, {"input": "q", "output": "Maybe"}), r"split 'test' item 1: output 'Maybe' is not a label"),
        ({"train": [], "valid": [1], "test": [1]}, r"split 'train' is empty"),
        ({"train": [], "test": []}, r"missing split\(s\) \['valid'\]"),
        ({"train": {}, "valid": [], "test": []}, r"split 'train' must be a list"),
        ([1, 2], r"expected a JSON object"),
        ("{not json", r"not valid JSON"),
        ("", r"file is empty"),
    ],
)
def test_malformed_files_name_file_split_item(tmp_path, obj, pattern):
    path = _write(tmp_path, "glue_qnli", obj)
    with pytest.raises(T.TaskDataError, match=pattern) as e:
        T.load_task("glue_qnli", data_dir=tmp_path)
    assert str(path) in str(e.value)


def test_non_utf8_task_file_names_the_file(tmp_path):
    path = tmp_path / "glue_qnli.json"
    path.write_bytes(json.dumps(GOOD).replace("q?", "caf\u00e9?").encode("latin-1"))  # \xe9: not UTF-8
    with pytest.raises(T.TaskDataError, match=r"not UTF-8 text \(byte 0xe9 at offset \d+\); task files must be UTF-8"
                       ) as e:
        T.load_task("glue_qnli", data_dir=tmp_path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kind", ["folder", "broken symlink"])
@pytest.mark.parametrize("name", ["glue_qnli", "my_extra"])
def test_task_path_that_is_not_a_file(tmp_path, kind, name):
    path = tmp_path / f"{name}.json"
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.json")
    _write(tmp_path, "other_extra", GOOD)
    with pytest.raises(T.TaskDataError, match="is a folder, not a task file" if kind == "folder"
                       else r"is a broken symlink \(to .*gone.json.*which does not exist\)") as e:
        T.load_task(name, data_dir=tmp_path)
    assert str(path) in str(e.value)
    with pytest.raises(T.TaskDataError, match=str(path)):  # `data check` reports it too, instead of "does not exist"
        T.read_task_file(path)


@pytest.mark.parametrize("name", ["../data/glue_sst2", "a/b", "/abs/glue_sst2", "..", ".", "", ".hidden", "a\\b",
                                  "x\0y"])
def test_task_names_must_be_plain(tmp_path, name):
    _write(tmp_path, "glue_qnli", GOOD)
    with pytest.raises(ValueError, match="is not a plain name.*no path separators, no '..'"):
        T.load_task(name, data_dir=tmp_path)
    assert T.check_task_name("glue_qnli") == "glue_qnli"


def test_task_name_with_path_reaching_a_real_file_is_refused(tmp_path):
    """``../x/glue_qnli`` resolves to a real file outside the data folder; it is refused, not loaded."""
    (tmp_path / "data").mkdir()
    _write(tmp_path / "x", "glue_qnli", GOOD)
    with pytest.raises(ValueError, match="not a plain name"):
        T.load_task("../x/glue_qnli", data_dir=tmp_path / "data")
