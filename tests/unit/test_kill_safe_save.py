"""A SIGKILL at any rename of a folder swap loses nothing: a child process saves a generator (or a training
checkpoint) over an existing one and kills itself at the N-th ``os.replace``; the path then loads the old or the new
one, and the next save leaves no debris. Plus the recovery rules themselves (a live writer's files are left alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.atv.checkpoints import LATEST, check_checkpoint_dir, latest_checkpoint, save_checkpoint
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.files import atomic_write_text, recover_dir
from workbench.core.testing import tiny_model

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import os, signal, sys
from pathlib import Path
import torch
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.testing import tiny_model

where, kill_at, when, what = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
lm = tiny_model("llama")
gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=lm.tokenizer, seed=1), lm)
real, calls = os.replace, [0]

def replace(src, dst):
    calls[0] += 1
    if calls[0] == kill_at and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
    if calls[0] == kill_at and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
if what == "generator":
    gen.save(where)
else:
    from workbench.atv.checkpoints import save_checkpoint
    save_checkpoint(where, gen, torch.optim.Adam(gen.parameters()), 2, [])
print("finished without being killed")
"""


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def generator(lm, seed: int) -> ATVGenerator:
    return ATVGenerator(load_encoder("scratch:1x8", tokenizer=lm.tokenizer, seed=seed), lm)


def kill_a_save(where: Path, kill_at: int, when: str, what: str) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, str(where), str(kill_at), when, what], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, f"the child was not killed at replace {kill_at}: {child.stdout}{child.stderr}"


def same(a: ATVGenerator, b: ATVGenerator) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# a save over an existing generator replaces: (1) generator.json in the new copy, (2) the old folder away, (3) the
# new copy in; "after 3" is a kill before the old copy is removed
@pytest.mark.parametrize("kill_at, when, expect", [(1, "before", "old"), (2, "before", "old"), (3, "before", "old"),
                                                   (3, "after", "new")])
def test_a_kill_at_each_rename_of_a_generator_save_leaves_one_loadable(lm, tmp_path, kill_at, when, expect):
    old, new = generator(lm, seed=0), generator(lm, seed=1)
    old.save(tmp_path / "g")
    kill_a_save(tmp_path / "g", kill_at, when, "generator")
    assert sorted(os.listdir(tmp_path)) != ["g"]  # the kill left debris
    back = ATVGenerator.load(tmp_path / "g", lm)
    assert same(back, old if expect == "old" else new) and not same(old, new)
    old.save(tmp_path / "g")
    assert sorted(os.listdir(tmp_path)) == ["g"]  # the next save leaves no debris
    assert same(ATVGenerator.load(tmp_path / "g", lm), old)


# a checkpoint save of epoch 2 beside epoch 1: (1) generator.json, (2) generator/ into the new copy,
# (3) training_state.json, (4) the copy onto epoch-002, (5) LATEST, (6) epoch-001 renamed for removal
@pytest.mark.parametrize("kill_at, when, expect", [(5, "before", "epoch-002"), (6, "after", "epoch-002")])
def test_a_kill_inside_a_checkpoint_save_resumes_from_a_complete_one(lm, tmp_path, kill_at, when, expect):
    gen = generator(lm, seed=0)
    save_checkpoint(tmp_path, gen, torch.optim.Adam(gen.parameters()), 1, [])
    kill_a_save(tmp_path, kill_at, when, "checkpoint")
    assert check_checkpoint_dir(tmp_path, resume=True) == tmp_path / expect == latest_checkpoint(tmp_path)
    assert not any(name.startswith(".epoch") for name in os.listdir(tmp_path))  # debris of the kill removed
    save_checkpoint(tmp_path, gen, torch.optim.Adam(gen.parameters()), 3, [])
    assert sorted(os.listdir(tmp_path)) == [LATEST, "epoch-003"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_recovery_restores_a_cut_swap_and_leaves_live_writers_alone(tmp_path):
    dead, me = dead_pid(), os.getpid()
    (tmp_path / ".g.old-{}".format(dead)).mkdir()  # a swap cut between its two renames
    (tmp_path / f".g.old-{dead}" / "generator.json").write_text("old")
    (tmp_path / f".g.{dead}-abcd1234.tmp").mkdir()  # the new copy the killed writer was building
    (tmp_path / f".g.{me}-live0000.tmp").mkdir()  # a live writer's copy (this process)
    (tmp_path / f".LATEST.{dead}-x1y2z3w4.tmp").write_text("epoch-0")  # a killed atomic write
    (tmp_path / ".g.notes").write_text("the user's")  # not a name the workbench writes
    recover_dir(tmp_path / "g")
    assert (tmp_path / "g" / "generator.json").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == [f".LATEST.{dead}-x1y2z3w4.tmp", f".g.{me}-live0000.tmp", ".g.notes", "g"]
    atomic_write_text(tmp_path / LATEST, "epoch-001\n")
    assert sorted(os.listdir(tmp_path)) == [f".g.{me}-live0000.tmp", ".g.notes", LATEST, "g"]


def test_atomic_writes_replace_a_planted_link_never_write_through_it(tmp_path):
    from workbench.core.files import atomic_write_bytes, atomic_write_json

    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    dead = dead_pid()
    (tmp_path / f".out.{dead}-abcdefgh.tmp").write_text("debris")  # left by a killed write of `out`
    for write, data in ((atomic_write_text, "text"), (atomic_write_bytes, b"bytes"), (atomic_write_json, {"a": 1})):
        (tmp_path / "out").unlink(missing_ok=True)
        (tmp_path / "out").symlink_to(mine)
        write(tmp_path / "out", data)
        assert not (tmp_path / "out").is_symlink() and mine.read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["mine.txt", "out"]
