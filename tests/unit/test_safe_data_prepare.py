"""``data prepare --to DST`` never replaces an edited task file (or a link) silently: it refuses, naming the files and
writing none, unless the files are identical or ``--overwrite`` is given; a link is then replaced, not written
through."""

from __future__ import annotations

import json

import pytest

from workbench import cli
from workbench.tasks import prepare as D

ROWS = [{"input": f"q{i}?", "output": "True" if i % 2 else "False"} for i in range(4)]
TASKS = ("glue_mnli", "boolq")


def task_bytes(tag: str = "") -> bytes:
    splits = {s: [{**r, "input": r["input"] + tag} for r in ROWS] for s in ("train", "valid", "test")}
    return json.dumps(splits).encode()


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in TASKS:
        (folder / f"{name}.json").write_bytes(task_bytes())
    return folder


def test_an_edited_task_file_is_refused_naming_it(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    edited = dst / "boolq.json"
    edited.write_bytes(task_bytes(" (my edit)"))
    code = cli.main(["data", "prepare", "--from", str(src), "--to", str(dst)])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to replace 1 file(s)" in err and str(edited) in err and "--overwrite" in err
    assert edited.read_bytes() == task_bytes(" (my edit)")
    assert sorted(p.name for p in dst.iterdir()) == ["boolq.json"]  # nothing written, not even the new glue_mnli
    with pytest.raises(FileExistsError, match="boolq.json"):
        D.prepare_from(src, dst)
    assert cli.main(["data", "prepare", "--from", str(src), "--to", str(dst), "--overwrite"]) == 0
    assert all((dst / f"{n}.json").read_bytes() == task_bytes() for n in TASKS)


def test_identical_files_are_fine_and_kept(src, tmp_path):
    dst = tmp_path / "dst"
    D.prepare_from(src, dst)
    inode = (dst / "boolq.json").stat().st_ino
    assert [p.name for p in D.prepare_from(src, dst)] == ["boolq.json", "glue_mnli.json"]  # a rerun is harmless
    assert (dst / "boolq.json").stat().st_ino == inode  # not rewritten


def test_a_planted_link_is_refused_then_replaced_not_written_through(src, tmp_path):
    dst, victim = tmp_path / "dst", tmp_path / "victim.json"
    dst.mkdir()
    victim.write_text("mine")
    (dst / "boolq.json").symlink_to(victim)
    with pytest.raises(FileExistsError, match="boolq.json"):
        D.prepare_from(src, dst, ["boolq"])
    D.prepare_from(src, dst, ["boolq"], overwrite=True)
    assert not (dst / "boolq.json").is_symlink() and (dst / "boolq.json").read_bytes() == task_bytes()
    assert victim.read_text() == "mine"


def test_hub_build_refuses_an_edited_file(tmp_path):
    import datasets

    rows = [{"question": f"q{i}?", "options": ["A)1", "B)2", "C)3", "D)4", "E)5"], "correct": "ABCDE"[i % 5],
             "rationale": ""} for i in range(40)]

    def loader(path, config, revision):
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})

    built = D.prepare_hub(tmp_path, ["deepmind"], loader=loader)[0]
    original = built.read_bytes()
    assert D.prepare_hub(tmp_path, ["deepmind"], loader=loader) == [built]  # identical: fine
    built.write_bytes(original.replace(b"q1?", b"my own question?"))
    with pytest.raises(FileExistsError, match="deepmind.json"):
        D.prepare_hub(tmp_path, ["deepmind"], loader=loader)
    assert b"my own question?" in built.read_bytes()
    D.prepare_hub(tmp_path, ["deepmind"], loader=loader, overwrite=True)
    assert built.read_bytes() == original
