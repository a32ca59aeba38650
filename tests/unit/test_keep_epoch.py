"""``TrainConfig(keep_epoch=...)``: the best-validation epoch's weights are what a training returns and records, in
one run and across a resume (its checkpoint is not rotated away); the default keeps the last epoch."""

from __future__ import annotations

import math

import pytest
import torch
from test_training import FAST, TASK, WORDS, generator, weights

from workbench.atv import training
from workbench.atv.checkpoints import complete_checkpoints
from workbench.atv.epoch_choice import best_epoch
from workbench.atv.generator import ATVGenerator
from workbench.atv.training import TrainConfig, train_atv
from workbench.core.testing import tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + ["Review", "Text", "Q"])


def scripted(monkeypatch, losses):
    """Validation reports `losses` in turn (the first is the score before training), accuracy 1 - loss."""
    queue = list(losses)
    monkeypatch.setattr(training, "validation_scores", lambda *a: (queue[0], 1 - queue.pop(0)))


def rows(losses, accs=None):
    return [{"epoch": i + 1, "valid_loss": v, "valid_acc": (accs or [math.nan] * len(losses))[i]}
            for i, v in enumerate(losses)]


def test_best_epoch_choices():
    assert best_epoch(rows([0.9, 0.4, 0.8]), "best_valid_loss") == 2
    assert best_epoch(rows([0.9, 0.4, 0.8], [0.2, 0.6, 0.6]), "best_valid_acc") == 2  # ties: the earliest
    assert best_epoch(rows([0.9, 0.4, 0.8]), "last") == 3
    assert best_epoch(rows([math.nan, math.nan]), "best_valid_loss") == 2 and best_epoch([], "last") is None


@pytest.mark.parametrize("bad, match", [({"keep_epoch": "best"}, "unknown keep_epoch 'best'"),
                                        ({"keep_epoch": "best_valid_loss", "valid_items": 0}, "valid_items=0")])
def test_bad_keep_epoch_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).validate()


def test_the_best_validation_epoch_is_kept_and_recorded(lm, monkeypatch, tmp_path):
    scripted(monkeypatch, [1.0, 0.9, 0.4, 0.8])
    gen = generator(lm)
    df = train_atv(lm, gen, [TASK], TrainConfig(epochs=3, keep_epoch="best_valid_loss", **FAST), progress=False)
    assert df.attrs["kept_epoch"] == 2 and gen.meta["kept_epoch"] == 2
    scripted(monkeypatch, [1.0, 0.9, 0.4])
    two = generator(lm)
    train_atv(lm, two, [TASK], TrainConfig(epochs=2, **FAST), progress=False)
    assert all(torch.equal(weights(gen)[k], v) for k, v in weights(two).items())  # epoch 2's weights, exactly
    gen.save(tmp_path / "g")
    assert ATVGenerator.load(tmp_path / "g", lm).meta["kept_epoch"] == 2
    scripted(monkeypatch, [1.0, 0.9, 0.4, 0.8])
    last = generator(lm)
    assert train_atv(lm, last, [TASK], TrainConfig(epochs=3, **FAST), progress=False).attrs["kept_epoch"] == 3
    assert not all(torch.equal(weights(last)[k], v) for k, v in weights(two).items())


def test_a_best_epoch_before_a_resume_is_read_from_its_checkpoint(lm, monkeypatch, tmp_path):
    config = dict(keep_epoch="best_valid_loss", **FAST)
    scripted(monkeypatch, [1.0, 0.3, 0.9])
    train_atv(lm, generator(lm), [TASK], TrainConfig(epochs=2, **config), checkpoint_dir=tmp_path / "c",
              progress=False)
    assert [e for e, _ in complete_checkpoints(tmp_path / "c")] == [1, 2]  # epoch 1, the best, survives rotation
    scripted(monkeypatch, [0.95])
    resumed = generator(lm)
    df = train_atv(lm, resumed, [TASK], TrainConfig(epochs=3, **config), checkpoint_dir=tmp_path / "c", resume=True,
                   progress=False)
    assert df.attrs["kept_epoch"] == 1 and list(df.epoch) == [1, 2, 3]
    scripted(monkeypatch, [1.0, 0.3])
    one = generator(lm)
    train_atv(lm, one, [TASK], TrainConfig(epochs=1, **config), progress=False)
    assert all(torch.equal(weights(resumed)[k], v) for k, v in weights(one).items())
