"""Training checkpoints: ``epoch-NNN/`` folders (generator + optimizer + RNG + history), ``LATEST``, a lock, checks.

Module contents:

* :func:`save_checkpoint` writes ``epoch-NNN/`` atomically (``generator/`` plus the training state of
  :mod:`workbench.atv.training_state`: safetensors + JSON, no pickle), points ``LATEST`` at it and then removes only
  older complete epochs; :func:`complete_checkpoints` / :func:`latest_checkpoint` find what is on disk (the newest
  complete epoch folder, whatever ``LATEST`` says or whether it exists).
* :func:`check_checkpoint_dir`: what a run may do with a folder (a file, earlier checkpoints without ``resume``, or
  ``resume`` without a checkpoint, a checkpoint of the older pickle format, a ``LATEST`` the workbench did not write
  are errors) -- called by ``train_atv`` and, before any model is loaded, by the CLI. It first undoes what a killed
  save left (:func:`workbench.core.files.recover_folder`).
* :func:`check_epochs_free` / :func:`check_resume`: before any training, the ``epoch-NNN`` names a run will write
  are free, and a resume fits its checkpoint (config, epochs, the generator's architecture, readable state files).
* :func:`checkpoint_lock`: an OS lock (:func:`workbench.core.locks.folder_lock` on ``<folder>/.lock``) held for a
  whole training, so a second training on the same folder fails at once, naming the holder (pid, host, start time).
* :func:`check_resume_config`: the settings that must not change on resume; :func:`resume_from` loads a
  checkpoint into a generator and its optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.atv.generator import WEIGHTS, ATVGenerator, is_checkpoint
from workbench.atv.training_state import (  # noqa: F401  (rng_state / set_rng_state: re-exported)
    ADVICE,
    OLD_STATE,
    RECORD,
    TENSORS,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from workbench.core.files import FileFormatError, atomic_dir, atomic_write_text, recover_folder, remove_dir
from workbench.core.fingerprints import check_fingerprint
from workbench.core.locks import LOCK, FolderBusy, folder_lock  # noqa: F401  (LOCK: the lock file name)
from workbench.core.tensorfiles import check_weights, load_weights

if TYPE_CHECKING:
    from workbench.atv.training import TrainConfig

LATEST, GENERATOR = "LATEST", "generator"
#: What a complete ``epoch-NNN/`` folder holds, and nothing else.
CONTENTS = frozenset({TENSORS, RECORD, GENERATOR})
EPOCH = re.compile(r"^epoch-(\d{3,})$")
#: What ``generator.json`` records of a generator's architecture: a resume must build the same one.
ARCHITECTURE = ("encoder", "pooling", "encoder_max_length", "encoder_dim", "bottleneck", "lora", "input_norm", "dtype")


# --------------------------------------------------------------------------------------------- what is on disk
def is_complete(folder: Path) -> bool:
    """Whether `folder` is a whole training checkpoint (state files + generator, nothing else)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink() or not all((folder / n).exists() for n in CONTENTS):
        return False
    return {p.name for p in folder.iterdir()} <= CONTENTS and is_checkpoint(folder / GENERATOR)


def epoch_folders(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every ``epoch-NNN`` entry of `directory`, complete or not, oldest first."""
    if not directory.is_dir():
        return []
    return sorted((int(m[1]), p) for p in directory.iterdir() if (m := EPOCH.match(p.name)))


def complete_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of every complete ``epoch-NNN`` checkpoint in `directory`, oldest first."""
    return [(e, p) for e, p in epoch_folders(Path(directory)) if is_complete(p)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete epoch folder in `directory` (``LATEST`` names it after a normal save; a missing or
    stale ``LATEST`` does not matter), or None."""
    found = complete_checkpoints(directory)
    return found[-1][1] if found else None


def check_checkpoint_dir(directory: str | Path | None, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run), after checking what `directory` allows.

    Errors (all OSError or ValueError, so the CLI reports them in one line): `directory` is a file; it holds a
    checkpoint of the older pickle format (``training_state.pt``, never loaded: it could run code); its ``LATEST``
    is not one the workbench wrote; it already holds checkpoints but ``resume`` is False (they are never deleted:
    resume them or choose another folder); ``resume`` is True without a folder or without a complete checkpoint.
    """
    if directory is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_dir")
        return None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint folder {str(directory)!r} is a file, not a folder")
    recover_folder(directory)
    old = [p for _, p in epoch_folders(directory) if (p / OLD_STATE).exists() or (p / OLD_STATE).is_symlink()]
    if old:
        raise FileFormatError(f"{old[0] / OLD_STATE} is a training checkpoint of the older pickle format: it is not "
                              f"loaded, for safety (unpickling a file can run code). Retrain without resume into "
                              f"another checkpoint folder (CLI: another --run-dir), or move {str(directory)!r} away; "
                              f"its generator/ folders still load with ATVGenerator.load")
    check_latest(directory)
    found = complete_checkpoints(directory)
    if found and not resume:
        raise FileExistsError(f"checkpoint folder {str(directory)!r} already holds checkpoints "
                              f"({', '.join(p.name for _, p in found)}); pass resume=True (CLI: --resume) to continue "
                              f"them, or choose another folder")
    if resume and not found:
        raise FileNotFoundError(f"resume=True but {str(directory)!r} holds no complete checkpoint (epoch-NNN/ with "
                                f"{TENSORS}, {RECORD} and {GENERATOR}/); drop resume to start from scratch")
    return found[-1][1] if resume else None


def check_latest(directory: Path) -> None:
    """FileExistsError if ``<directory>/LATEST`` exists and is not a pointer the workbench wrote (a plain file
    holding one ``epoch-NNN`` name): it would be replaced by the next checkpoint. A symbolic link planted there is
    replaced, never written through."""
    path = directory / LATEST
    if path.is_symlink() or not path.exists():
        return
    ours = False
    if path.is_file():
        with open(path, "rb") as f:
            ours = EPOCH.match(f.read(64).decode("ascii", "replace").strip()) is not None
    if not ours:
        raise FileExistsError(f"{str(path)!r} is not the pointer to the newest checkpoint that the workbench writes "
                              f"(one line 'epoch-NNN'); move it away or choose another checkpoint folder")


def _blocking(folder: Path) -> str | None:
    """What stops ``epoch-NNN`` `folder` from being written (None: absent, empty or a complete checkpoint)."""
    if folder.is_symlink():
        return "a symbolic link"
    if not folder.exists() or is_complete(folder):
        return None
    if not folder.is_dir():
        return "a file"
    names = sorted(p.name for p in folder.iterdir())
    return f"an incomplete checkpoint (it holds {names})" if names else None


def check_epochs_free(directory: Path | None, first: int, last: int) -> None:
    """FileExistsError, before any training, if an ``epoch-NNN`` entry that the epochs `first`..`last` would write
    is not a complete checkpoint of the workbench (a partial copy, a user's folder, a file or a link): training a
    whole epoch and then failing to save it helps nobody."""
    if directory is None:
        return
    for epoch, folder in epoch_folders(Path(directory)):
        fault = _blocking(folder) if first <= epoch <= last else None
        if fault:
            raise FileExistsError(f"{str(folder)!r} is {fault}, and epoch {epoch} of this run would be saved there; "
                                  f"move it out of {str(directory)!r} (or delete it), then run again")


def check_resume(checkpoint: Path, config: TrainConfig, generator: ATVGenerator) -> None:
    """Before any training: a resume from `checkpoint` must fit it. ValueError naming what differs if the config
    (:func:`check_resume_config`) or the generator's architecture (:data:`ARCHITECTURE`, from its
    ``generator.json``) is another; ValueError naming both numbers if ``config.epochs`` is below the epochs already
    trained (equal is allowed: nothing is trained and the checkpoint's history is returned); FileFormatError naming
    the file if a state file or the weights file is damaged (truncated, foreign, other names or shapes)."""
    saved = ATVGenerator.read_meta(checkpoint / GENERATOR)
    check_resume_config(saved.get("train_config", {}), config)
    now = generator.describe()
    diffs = [f"{k}: checkpoint {saved[k]!r}, now {now.get(k)!r}" for k in ARCHITECTURE
             if k in saved and saved[k] != now.get(k)]
    if diffs:
        raise ValueError(f"cannot resume from {checkpoint}: its generator has another architecture ("
                         + "; ".join(diffs) + "); build the generator as its generator.json says, or choose another "
                         "checkpoint folder")
    check_weights(generator, checkpoint / GENERATOR / WEIGHTS, ADVICE)
    done = load_training_state(checkpoint).epoch
    if done != int(EPOCH.match(checkpoint.name)[1]):
        raise FileFormatError(f"{checkpoint / RECORD}: epoch {done} is not the folder's ({checkpoint.name}); the "
                              f"checkpoint was edited: resume from another one or retrain")
    if config.epochs < done:
        raise ValueError(f"cannot resume: {checkpoint} already holds {done} trained epochs but epochs="
                         f"{config.epochs}; pass epochs >= {done} (epochs={done} returns its history without "
                         f"training), or load its generator with ATVGenerator.load({str(checkpoint / GENERATOR)!r})")


def resume_from(checkpoint: Path, generator: ATVGenerator, optimizer: Any) -> tuple[list[dict], int]:
    """Load weights, optimizer and RNG state from `checkpoint` (safetensors + JSON, nothing unpickled); returns
    (history so far, first epoch to run). A damaged file raises FileFormatError naming it, weights other than the
    ones its generator.json records a FingerprintMismatch."""
    state = load_training_state(checkpoint)
    weights = checkpoint / GENERATOR / WEIGHTS
    load_weights(generator, weights, ADVICE)
    recorded = ATVGenerator.read_meta(checkpoint / GENERATOR).get("fingerprint")
    check_fingerprint(f"{weights}: the weights are not the ones its generator.json was saved with", recorded,
                      generator.fingerprint(), ADVICE)
    state.apply(optimizer)
    return state.history, state.epoch + 1


# --------------------------------------------------------------------------------------------- saving
def save_checkpoint(directory: Path, generator: ATVGenerator, optimizer: Any, epoch: int, history: list[dict],
                    keep: int | None = None) -> Path:
    """Atomically write ``epoch-NNN/`` (generator + optimizer + RNG + history), point ``LATEST`` at it, then remove
    the complete checkpoints of *older* epochs (never a newer one, never a folder it did not write), except epoch
    `keep` (the best-validation epoch a ``keep_epoch`` training will restore)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"epoch-{epoch:03d}"
    with atomic_dir(target, owned=is_complete, what="checkpoint") as tmp:
        generator.save(tmp / GENERATOR, epoch=epoch)
        save_training_state(tmp, optimizer, epoch, history)
    check_latest(directory)
    atomic_write_text(directory / LATEST, target.name + "\n")
    for old_epoch, old in complete_checkpoints(directory):
        if old_epoch < epoch and old_epoch != keep:
            remove_dir(old)
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
class CheckpointBusy(FolderBusy):
    """Another training holds the lock of a checkpoint folder."""


def checkpoint_lock(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive OS lock on `directory` (created if needed) for the block; a CheckpointBusy naming the
    holder if another process (or thread) holds it. The same thread may nest it (the CLI locks, then train_atv).
    A thin wrapper of :func:`workbench.core.locks.folder_lock` (``O_NOFOLLOW``: a planted link is refused)."""
    return folder_lock(directory, what="checkpoint folder", by="training", busy=CheckpointBusy)
