"""Training checkpoints without pickle: a crafted file in place of any checkpoint file never runs, an older-format
(pickle) folder is refused with advice, damaged files are named, and a resume that cannot fit its checkpoint (fewer
epochs, another architecture, a partial epoch folder in the way) is refused before any training."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from workbench.atv.checkpoints import LATEST, check_checkpoint_dir, save_checkpoint
from workbench.atv.generator import ATVGenerator
from workbench.atv.training import TrainConfig, train_atv
from workbench.core.encoders import load_encoder
from workbench.core.files import FileFormatError
from workbench.core.testing import tiny_model
from workbench.tasks.registry import Item, Task

WORDS = ["red", "green", "blue", "cyan", "pink", "gold"]
TASK = Task(name="colours", category="NLU", domain="NLU", templates=["Colour: {input}", "{input} ?", "C {input}"],
            labels=("positive", "negative"), in_domain=True,
            train=[Item(w, "positive" if i % 2 else "negative") for i, w in enumerate(WORDS)],
            valid=[Item(w, "positive") for w in WORDS[:2]], test=[Item(w, "negative") for w in WORDS])
ONE = {"n_train": 2, "batch_size": 1, "scale": 1.0, "lr": 1e-2, "valid_items": 0, "epochs": 1}


class Payload:
    """Unpickling this creates `marker`: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + ["Colour", "C"])


def generator(lm, seed: int = 0, **kwargs) -> ATVGenerator:
    torch.manual_seed(seed)
    return ATVGenerator(load_encoder(kwargs.pop("encoder", "scratch:1x16"), tokenizer=lm.tokenizer, seed=seed), lm,
                        **kwargs)


def train(lm, folder: Path, epochs: int = 1, resume: bool = False, gen: ATVGenerator | None = None, seen=None):
    return train_atv(lm, gen or generator(lm), [TASK], TrainConfig(**{**ONE, "epochs": epochs}),
                     checkpoint_dir=folder, resume=resume, progress=False,
                     callback=None if seen is None else seen.append)


def test_a_checkpoint_holds_safetensors_and_json_only(lm, tmp_path):
    train(lm, tmp_path, epochs=1)
    folder = tmp_path / "epoch-001"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["generator/generator.json", "generator/generator.safetensors", "training_state.json",
                     "training_state.safetensors"]
    state = json.loads((folder / "training_state.json").read_text())
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1]
    assert len(state["rng"]["python"][1]) == 625  # Python's Mersenne Twister, as ints


def test_optimizer_and_rng_state_come_back_exactly(lm, tmp_path):
    import random

    import numpy as np

    from workbench.atv.checkpoints import resume_from

    gen = generator(lm)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.8, 0.99))
    for _ in range(2):
        gen(torch.ones(2, gen.encoder.dim)).square().mean().backward()
        opt.step()
    save_checkpoint(tmp_path, gen, opt, 1, [{"epoch": 1, "train_loss": 0.5, "valid_loss": float("nan")}])
    draws = (torch.rand(3), random.random(), np.random.rand(3))
    again = generator(lm, seed=1)
    opt2 = torch.optim.Adam(again.parameters(), lr=1e-3, betas=(0.8, 0.99))
    history, start = resume_from(tmp_path / "epoch-001", again, opt2)
    assert start == 2 and history[0]["train_loss"] == 0.5 and np.isnan(history[0]["valid_loss"])
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]
    assert np.array_equal(np.random.rand(3), draws[2])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in gen.state_dict().items())


@pytest.mark.parametrize("name", ["training_state.safetensors", "generator/generator.safetensors", LATEST,
                                  "training_state.json", "generator/generator.json"])
def test_a_crafted_pickle_in_place_of_a_checkpoint_file_never_runs(lm, tmp_path, name):
    train(lm, tmp_path / "run", epochs=1)
    marker = tmp_path / "ran"
    (tmp_path / "run" / "epoch-001" / name if name != LATEST else tmp_path / "run" / LATEST).write_bytes(
        pickle.dumps(Payload(marker)))
    seen = []
    with pytest.raises((FileFormatError, FileExistsError), match=Path(name).name):
        train(lm, tmp_path / "run", epochs=2, resume=True, seen=seen)
    assert not marker.exists() and seen == []


@pytest.mark.parametrize("beside_new_files", [False, True])
def test_an_older_pickle_checkpoint_is_refused_and_never_loaded(lm, tmp_path, beside_new_files):
    train(lm, tmp_path, epochs=1)
    folder = tmp_path / "epoch-001"
    if not beside_new_files:  # the layout of earlier versions: training_state.pt + generator/
        for name in ("training_state.safetensors", "training_state.json"):
            (folder / name).unlink()
    marker = tmp_path / "ran"
    torch.save({"epoch": 1, "history": [], "payload": Payload(marker)}, folder / "training_state.pt")
    for resume in (True, False):
        with pytest.raises(FileFormatError, match=r"training_state\.pt is a training checkpoint of the older pickle "
                                                  r"format: it is not loaded, for safety.*Retrain"):
            train(lm, tmp_path, epochs=2, resume=resume)
    assert not marker.exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(key: str, value):
    def edit(path: Path) -> None:
        record = json.loads(path.read_text())
        record[key] = value
        path.write_text(json.dumps(record))
    return edit


def _drop_tensor(path: Path) -> None:
    record = json.loads(path.read_text())
    record["tensors"] = record["tensors"][1:]
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("name, damage, match", [
    ("training_state.safetensors", _truncate, "not a complete safetensors file"),
    ("training_state.json", _truncate, "not valid JSON"),
    ("training_state.json", _edit_json("epoch", 7), "epoch 7 is not the folder's"),
    ("training_state.json", _edit_json("history", "lost"), "history must be a list"),
    ("training_state.json", _drop_tensor, "does not hold the tensors training_state.json lists"),
    ("generator/generator.safetensors", _truncate, "not a complete safetensors file"),
    ("generator/generator.json", _truncate, "not valid JSON"),
])
def test_a_damaged_checkpoint_file_is_named_before_any_training(lm, tmp_path, name, damage, match):
    train(lm, tmp_path, epochs=1)
    damage(tmp_path / "epoch-001" / name)
    seen = []
    with pytest.raises(FileFormatError, match=match) as err:
        train(lm, tmp_path, epochs=2, resume=True, seen=seen)
    assert Path(name).name in str(err.value) and "retrain" in str(err.value) and seen == []


def test_resume_with_fewer_epochs_than_trained_is_refused_naming_both(lm, tmp_path):
    gen = generator(lm)
    df = train(lm, tmp_path, epochs=2, gen=gen)
    seen = []
    with pytest.raises(ValueError, match=r"already holds 2 trained epochs but epochs=1; pass epochs >= 2"):
        train(lm, tmp_path, epochs=1, resume=True, seen=seen)
    assert seen == []
    again = generator(lm, seed=1)
    same = train(lm, tmp_path, epochs=2, resume=True, gen=again)  # nothing left to train: history and weights back
    assert same.train_loss.tolist() == df.train_loss.tolist() and again.meta["train_config"]["epochs"] == 2
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in gen.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    ({"bottleneck": 4}, r"bottleneck: checkpoint None, now 4"),
    ({"input_norm": True}, r"input_norm: checkpoint False, now True"),
    ({"encoder": "scratch:1x8"}, r"encoder: checkpoint 'scratch:1x16', now 'scratch:1x8'; encoder_dim"),
])
def test_resume_with_another_generator_architecture_names_the_difference(lm, tmp_path, kwargs, match):
    train(lm, tmp_path, epochs=1)
    seen = []
    with pytest.raises(ValueError, match=r"its generator has another architecture \(" + match):
        train(lm, tmp_path, epochs=2, resume=True, gen=generator(lm, **kwargs), seen=seen)
    assert seen == []


def test_a_partial_epoch_folder_in_the_way_is_refused_before_training(lm, tmp_path):
    train(lm, tmp_path, epochs=1)
    partial = tmp_path / "epoch-002"
    partial.mkdir()
    (partial / "training_state.json").write_text("{}")  # e.g. an interrupted copy
    seen = []
    with pytest.raises(FileExistsError, match=r"epoch-002.* is an incomplete checkpoint .*epoch 2 of this run would "
                                              r"be saved there; move it out"):
        train(lm, tmp_path, epochs=3, resume=True, seen=seen)
    assert seen == [] and (partial / "training_state.json").read_text() == "{}"
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "epoch-001").mkdir()
    (tmp_path / "later" / "epoch-001" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="epoch-001.* is an incomplete checkpoint"):
        train(lm, tmp_path / "later", epochs=1, seen=seen)  # a fresh run too
    assert seen == []
    partial.rename(tmp_path / "epoch-009")  # beyond the epochs of the run: kept, not in the way
    assert list(train(lm, tmp_path, epochs=2, resume=True).epoch) == [1, 2]
    assert (tmp_path / "epoch-009" / "training_state.json").exists()


def test_latest_and_lock_never_write_into_a_file_of_the_user(lm, tmp_path):
    gen = generator(lm)
    opt = torch.optim.Adam(gen.parameters())
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LATEST).symlink_to(mine)  # a planted link is replaced, never written through
    save_checkpoint(tmp_path / "run", gen, opt, 1, [])
    assert mine.read_text() == "my notes" and not (tmp_path / "run" / LATEST).is_symlink()
    assert (tmp_path / "run" / LATEST).read_text() == "epoch-001\n"
    (tmp_path / "run" / LATEST).write_text("my list of things\n")  # a user's file under the name: refused
    with pytest.raises(FileExistsError, match=r"LATEST' is not the pointer .*move it away"):
        check_checkpoint_dir(tmp_path / "run", resume=True)
    assert (tmp_path / "run" / LATEST).read_text() == "my list of things\n"
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").symlink_to(mine)
    with pytest.raises(OSError, match=r"\.lock.*symbolic link"):
        train(lm, tmp_path / "locked", epochs=1)
    assert mine.read_text() == "my notes"


# --------------------------------------------------------------------------------------------- generator folders
def _set_bottleneck(path: Path) -> None:
    _edit_json("bottleneck", 3)(path)


@pytest.mark.parametrize("name, damage, match", [
    ("generator.safetensors", _truncate, r"generator\.safetensors: not a complete safetensors file"),
    ("generator.safetensors", lambda p: p.write_bytes(pickle.dumps(Payload(p.parent.parent / "ran"))),
     r"generator\.safetensors: not a complete safetensors file"),
    ("generator.json", _truncate, r"generator\.json: not valid JSON"),
    ("generator.json", _set_bottleneck, r"generator\.safetensors: its tensors do not fit the ATVGenerator"),
    ("generator.json", _edit_json("bottleneck", "wide"), r"generator\.json: cannot rebuild the generator.*bottleneck"),
])
def test_a_damaged_generator_file_is_named(lm, tmp_path, name, damage, match):
    generator(lm).save(tmp_path / "g")
    damage(tmp_path / "g" / name)
    with pytest.raises(FileFormatError, match=match + ".*save the generator again"):
        ATVGenerator.load(tmp_path / "g", lm)
    assert not (tmp_path / "ran").exists()
