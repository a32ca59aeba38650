"""workbench.ui.training_report and the training curve: 01 shows accuracy in % everywhere, round right-axis ticks,
the lowest-valid-loss epoch, which epoch was saved, and a parameter table whose rows say what they count."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.ui import plots, training_report

HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.6, 1.0, 0.13], "valid_loss": [0.78, 0.95, 1.2],
                        "valid_acc": [0.42, 0.54, 0.5], "seconds": [10.0, 11.0, 12.0],
                        "examples_per_s": [3.0, 3.1, 3.2]})


def test_accuracy_is_shown_in_percent():
    assert training_report.accuracy_percent(HISTORY["valid_acc"]).tolist() == pytest.approx([42, 54, 50])
    already = pd.Series([42.0, 54.0])
    assert training_report.accuracy_percent(already).tolist() == [42.0, 54.0]
    table = training_report.history_table(HISTORY)
    assert "valid_acc" not in table and table["valid acc. (%)"].tolist() == [42.0, 54.0, 50.0]
    assert list(table.columns).index("valid acc. (%)") == list(HISTORY.columns).index("valid_acc")


def test_right_axis_has_round_percent_ticks_and_the_best_epoch_is_marked():
    fig = plots.training_curve(HISTORY)
    axis = fig.layout.yaxis2
    assert list(axis.tickvals) == [0, 25, 50, 75, 100] and list(axis.range) == [0, 100]
    acc = next(t for t in fig.data if t.yaxis == "y2")
    assert list(acc.y) == pytest.approx([42, 54, 50])
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].x0 == 1  # lowest valid loss after epoch 1
    assert any("epoch 1" in a.text for a in fig.layout.annotations)


def test_epoch_note_says_which_epoch_is_saved_and_which_was_best():
    assert training_report.best_epoch(HISTORY) == 1
    note = training_report.epoch_note(HISTORY)
    assert "after epoch 3 (the last)" in note and "lowest valid loss was after epoch 1" in note and "rose" in note
    falling = HISTORY.assign(valid_loss=[1.2, 0.9, 0.7])
    assert "which has the lowest valid loss" in training_report.epoch_note(falling)
    assert "no validation loss" in training_report.epoch_note(HISTORY.assign(valid_loss=float("nan")))
    assert training_report.best_epoch(HISTORY.drop(columns="valid_loss")) is None
    kept = HISTORY.copy()
    kept.attrs["kept_epoch"] = 1  # TrainConfig(keep_epoch="best_valid_loss") kept epoch 1
    assert "after epoch 1, which has the lowest valid loss" in training_report.epoch_note(kept)


def test_training_record_sums_epochs_and_prefix_cache():
    history = HISTORY.copy()
    history.attrs["prefix_cache"] = {"seconds": 4.5}
    assert training_report.training_record(history) == {"seconds": 37.5, "epochs": 3, "prefix_seconds": 4.5}


class FakeGenerator:
    """parameter_report as ATVGenerator's: first row "this" (trainable), then full ATV, then LoRA."""

    def __init__(self, trainable: int, frozen: int):
        import torch

        self.weights = [torch.nn.Parameter(torch.zeros(trainable)),
                        torch.nn.Parameter(torch.zeros(frozen), requires_grad=False)]

    def parameters(self):
        return iter(self.weights)

    def parameter_report(self, lm, lora_r=8):
        return {"this": int(self.weights[0].numel()), "ATV": 1000, f"LoRA r={lora_r}": 77}


def test_parameter_table_explains_every_row_and_counts_the_frozen_small_model_apart():
    table = training_report.parameter_table(FakeGenerator(trainable=10, frozen=500), lm=None)
    assert "this" not in table.index
    assert table["count"].to_dict() == {"trained here (this generator)": 10, "small model, frozen": 500,
                                        "full ATV (small model fine-tuned)": 1000, "LoRA r=8": 77}
    assert table["what is counted"].str.len().min() > 20
    unfrozen = training_report.parameter_table(FakeGenerator(trainable=10, frozen=0), lm=None)
    assert "small model, frozen" not in unfrozen.index
