"""Checkpoint folders: newest complete checkpoint found whatever LATEST says, rotation never removes a newer epoch,
the folder checks of a run, the training lock (held by another thread or process), atomic folder replacement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from locks import lock_held_by_a_thread
import torch

from workbench.atv.checkpoints import (
    LATEST,
    CheckpointBusy,
    check_checkpoint_dir,
    checkpoint_lock,
    complete_checkpoints,
    latest_checkpoint,
    save_checkpoint,
)
from workbench.atv.generator import ATVGenerator
from workbench.core.encoders import load_encoder
from workbench.core.files import atomic_dir


@pytest.fixture(scope="module")
def gen_opt(llama_lm):
    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=llama_lm.tokenizer, seed=0), llama_lm)
    return gen, torch.optim.Adam(gen.parameters())


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_rotation_removes_only_older_epochs(tmp_path, gen_opt):
    gen, opt = gen_opt
    save_checkpoint(tmp_path, gen, opt, 5, [])
    save_checkpoint(tmp_path, gen, opt, 2, [])  # e.g. a run restarted from an older epoch: epoch 5 must survive
    assert names(tmp_path) == [LATEST, "epoch-002", "epoch-005"]
    save_checkpoint(tmp_path, gen, opt, 6, [])
    assert names(tmp_path) == [LATEST, "epoch-006"]


def test_newest_complete_checkpoint_whatever_latest_says(tmp_path, gen_opt):
    gen, opt = gen_opt
    save_checkpoint(tmp_path, gen, opt, 3, [])
    (tmp_path / "epoch-007").mkdir()  # incomplete (no state, no generator): ignored and kept
    (tmp_path / "epoch-007" / "notes.txt").write_text("mine")
    (tmp_path / LATEST).write_text("epoch-004\n")  # points to a missing folder
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-003"
    (tmp_path / LATEST).unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-003" == check_checkpoint_dir(tmp_path, resume=True)
    assert [e for e, _ in complete_checkpoints(tmp_path)] == [3]
    save_checkpoint(tmp_path, gen, opt, 4, [])
    assert names(tmp_path) == [LATEST, "epoch-004", "epoch-007"] and (tmp_path / "epoch-007" / "notes.txt").exists()


def test_checkpoint_dir_checks(tmp_path, gen_opt):
    gen, opt = gen_opt
    assert check_checkpoint_dir(None, resume=False) is None and check_checkpoint_dir(tmp_path / "new", False) is None
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        check_checkpoint_dir(None, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_checkpoint_dir(tmp_path / "file", resume=False)
    with pytest.raises(FileNotFoundError, match="resume=True but .* holds no complete checkpoint"):
        check_checkpoint_dir(tmp_path / "new", resume=True)
    save_checkpoint(tmp_path / "c", gen, opt, 1, [])
    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(epoch-001\); pass resume=True"):
        check_checkpoint_dir(tmp_path / "c", resume=False)


def test_lock_held_by_another_thread_refuses_at_once(tmp_path):
    with lock_held_by_a_thread(tmp_path):
        with pytest.raises(CheckpointBusy, match=rf"in use by another training \(pid {os.getpid()} on host .*started"):
            with checkpoint_lock(tmp_path):
                pass
    with checkpoint_lock(tmp_path), checkpoint_lock(tmp_path):  # free again; the same thread may nest it
        pass


def test_lock_held_by_another_process(tmp_path):
    code = ("import sys; from workbench.atv.checkpoints import checkpoint_lock\n"
            "with checkpoint_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointBusy, match=f"pid {child.pid} on host"):
            with checkpoint_lock(tmp_path):
                pass
    finally:
        child.communicate("\n", timeout=120)
    with checkpoint_lock(tmp_path):
        pass


def test_atomic_dir_puts_the_original_back_when_the_move_fails(tmp_path, monkeypatch):
    target = tmp_path / "g"
    target.mkdir()
    (target / "a.txt").write_text("old")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the move of the new folder onto the target
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(target, owned=lambda d: True) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert names(tmp_path) == ["g"] and (target / "a.txt").read_text() == "old"
