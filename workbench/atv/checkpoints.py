"""Training checkpoints: ``epoch-NNN/`` folders (generator + optimizer + RNG + history), ``LATEST``, a lock, checks.

Module contents:

* :func:`save_checkpoint` writes ``epoch-NNN/`` atomically, points ``LATEST`` at it and then removes only older
  complete epochs; :func:`complete_checkpoints` / :func:`latest_checkpoint` find what is on disk (the newest
  complete epoch folder, whatever ``LATEST`` says or whether it exists).
* :func:`check_checkpoint_dir`: what a run may do with a folder (a file, earlier checkpoints without ``resume``, or
  ``resume`` without a checkpoint are errors) -- called by ``train_atv`` and, before any model is loaded, by the CLI.
* :func:`checkpoint_lock`: an OS lock (``fcntl.flock`` on ``<folder>/.lock``) held for a whole training, so a second
  training on the same folder fails at once, naming the holder (pid, host, start time).
* :func:`check_resume_config` and the RNG snapshot helpers that make a resumed run bit-identical to an
  uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.atv.generator import is_checkpoint
from workbench.core.files import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from workbench.atv.generator import ATVGenerator
    from workbench.atv.training import TrainConfig

STATE, LATEST, LOCK, GENERATOR = "training_state.pt", "LATEST", ".lock", "generator"
EPOCH = re.compile(r"^epoch-(\d{3,})$")


# --------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


# --------------------------------------------------------------------------------------------- what is on disk
def is_complete(folder: Path) -> bool:
    """Whether `folder` is a whole training checkpoint (state file + generator, nothing else)."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / STATE).is_file() or not (folder / GENERATOR).is_dir():
        return False
    return {p.name for p in folder.iterdir()} <= {STATE, GENERATOR} and is_checkpoint(folder / GENERATOR)


def complete_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every complete ``epoch-NNN`` checkpoint in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := EPOCH.match(p.name)) and is_complete(p)]
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete epoch folder in `directory` (``LATEST`` names it after a normal save; a missing or
    stale ``LATEST`` does not matter), or None."""
    found = complete_checkpoints(directory)
    return found[-1][1] if found else None


def check_checkpoint_dir(directory: str | Path | None, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run), after checking what `directory` allows.

    Errors (all OSError or ValueError, so the CLI reports them in one line): `directory` is a file; it already
    holds checkpoints but ``resume`` is False (they are never deleted: resume them or choose another folder);
    ``resume`` is True without a folder or without a complete checkpoint in it.
    """
    if directory is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_dir")
        return None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint folder {str(directory)!r} is a file, not a folder")
    found = complete_checkpoints(directory)
    if found and not resume:
        raise FileExistsError(f"checkpoint folder {str(directory)!r} already holds checkpoints "
                              f"({', '.join(p.name for _, p in found)}); pass resume=True (CLI: --resume) to continue "
                              f"them, or choose another folder")
    if resume and not found:
        raise FileNotFoundError(f"resume=True but {str(directory)!r} holds no complete checkpoint (epoch-NNN/ with "
                                f"{STATE} and {GENERATOR}/); drop resume to start from scratch")
    return found[-1][1] if resume else None


# --------------------------------------------------------------------------------------------- saving
def save_checkpoint(directory: Path, generator: ATVGenerator, optimizer: Any, epoch: int, history: list[dict]) -> Path:
    """Atomically write ``epoch-NNN/`` (generator + optimizer + RNG + history), point ``LATEST`` at it, then remove
    the complete checkpoints of *older* epochs (never a newer one, never a folder it did not write)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"epoch-{epoch:03d}"
    with atomic_dir(target, owned=is_complete, what="checkpoint") as tmp:
        generator.save(tmp / GENERATOR, epoch=epoch)
        torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "rng": rng_state(), "history": history},
                   tmp / STATE)
    atomic_write_text(directory / LATEST, target.name + "\n")
    for old_epoch, old in complete_checkpoints(directory):
        if old_epoch < epoch:
            shutil.rmtree(old, ignore_errors=True)
    return target


def check_resume_config(saved: dict, config: TrainConfig) -> None:
    """ValueError naming every setting (tasks included) where the checkpoint's config differs from `config`;
    only ``epochs`` (and where the checkpoints live) may change on resume."""
    now = config.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
             if k not in ("epochs", "checkpoint_dir") and saved.get(k) != now[k]]
    if diffs:
        raise ValueError("cannot resume: the checkpoint was trained with another config (" + "; ".join(diffs) + ")")


# --------------------------------------------------------------------------------------------- the lock
class CheckpointBusy(OSError):
    """Another training holds the lock of a checkpoint folder."""


_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (thread holding it, depth): re-entrant within one thread
_GUARD = threading.Lock()


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return f"holder unknown ({raw.strip()[:80]!r})"


@contextlib.contextmanager
def checkpoint_lock(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive OS lock on `directory` (created if needed) for the block; a CheckpointBusy naming the
    holder if another process (or thread) holds it. The same thread may nest it (the CLI locks, then train_atv)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield Path(directory)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    key, me = str(path.resolve()), threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            _HELD[key] = (me, held[1] + 1)
    if held is not None and held[0] == me:
        try:
            yield path
        finally:
            with _GUARD:
                _HELD[key] = (me, _HELD[key][1] - 1)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointBusy(f"checkpoint folder {str(directory)!r} is in use by another training "
                                 f"({_holder(fd)}); wait for it to finish or choose another folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        with _GUARD:
            _HELD[key] = (me, 1)
        try:
            yield path
        finally:
            with _GUARD:
                _HELD.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
