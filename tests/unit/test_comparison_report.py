"""workbench.eval.report: the "too small to tell the methods apart" sentence, the rounded efficiency table with
ATV's fit time read from its generator's training record (issue 21, point 4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.eval import report
from workbench.eval.stats import paired

TASKS = ("glue_sst2", "boolq", "glue_cola")


def results(shift: dict[str, float], n: int, seed: int = 0, independent: bool = False) -> pd.DataFrame:
    """Methods x TASKS x n items; `independent`: each method's outcomes drawn apart (else from shared draws)."""
    rng = np.random.default_rng(seed)
    frames = []
    for task in TASKS:
        base = rng.random(n)
        for method, d in shift.items():
            out = (rng.random(n) if independent else base) < 0.5 + d
            frames.append(pd.DataFrame({"method": method, "task": task, "seed": 42, "item": np.arange(n),
                                        "correct": out, "correct_loose": out, "label_correct": out}))
    return pd.concat(frames, ignore_index=True)


def test_a_tiny_run_says_it_cannot_separate_the_methods():
    same = results({"zero-shot": 0.0, "ATV": 0.0, "other": 0.0}, n=3, seed=1, independent=True)
    tests = paired(same, n_boot=300, n_perm=300)
    note = report.resolution_note(tests)
    assert note is not None and "too small to tell the methods apart" in note
    assert "3 test items per task" in note and "make study" in note
    needed = int(note.split("needs about ")[1].split()[0])
    assert needed > 3 * 10  # ±tens of points at 3 items: hundreds of items for a 5-point difference


def test_a_run_that_separates_them_says_nothing():
    tests = paired(results({"zero-shot": 0.0, "ATV": 0.45}, n=60), n_boot=300, n_perm=300)
    assert tests["significant"].any()
    assert report.resolution_note(tests) is None


EFFICIENCY = pd.DataFrame({"method": ["zero-shot", "ATV", "LoRA"], "Latency (s)": [0.066076, 0.0712345, 0.1234],
                           "Memory (GiB)": [1.234567, 1.3, 1.5], "ID Acc.": [12.962963, 40.0, 33.33333],
                           "Fit (s)": [0.0, 0.00002, 12.3456], "Reloaded": [False, False, True]})


def test_efficiency_is_rounded_and_atv_fit_time_is_its_training(tmp_path):
    gen = tmp_path / "generator"
    gen.mkdir()
    (gen / "generator.json").write_text(json.dumps({"training": {"seconds": 153.25, "epochs": 6}}))
    record = report.generator_fit_seconds(gen)
    assert record == (153.25, "training, from generator.json")
    view = report.efficiency_view(EFFICIENCY, {"ATV": record}, order=["zero-shot", "LoRA", "ATV"])
    assert list(view["method"]) == ["zero-shot", "LoRA", "ATV"]
    row = view.set_index("method")
    assert row.loc["ATV", "Fit (s)"] == pytest.approx(153.2, abs=0.051)
    assert "generator.json" in row.loc["ATV", "Fit (what)"]
    assert row.loc["zero-shot", "Latency (s)"] == 0.0661 and row.loc["zero-shot", "ID Acc."] == 13.0
    assert row.loc["zero-shot", "Memory (GiB)"] == 1.23 and row.loc["LoRA", "Fit (what)"].endswith("(reloaded)")


def test_fit_time_falls_back_to_the_history_beside_the_generator(tmp_path):
    gen = tmp_path / "generator"
    gen.mkdir()
    (gen / "generator.json").write_text(json.dumps({"tasks": ["glue_sst2"]}))
    seconds, why = report.generator_fit_seconds(gen)
    assert seconds is None and "no training record" in why
    pd.DataFrame({"epoch": [1, 2], "seconds": [10.0, 12.5]}).to_csv(tmp_path / "history.csv", index=False)
    assert report.generator_fit_seconds(gen) == (22.5, "training epochs, from history.csv")
    view = report.efficiency_view(EFFICIENCY, {"ATV": (None, "no record")})
    assert pd.isna(view.set_index("method").loc["ATV", "Fit (s)"])


def test_intervals_of_zero_width_still_ask_for_enough_items():
    """All methods answer alike on 2 items: intervals ±0, nothing significant; the estimate must not say 3 items."""
    tests = paired(results({"zero-shot": 0.0, "ATV": 0.0}, n=2), n_boot=200, n_perm=200)
    note = report.resolution_note(tests)
    needed = int(note.split("needs about ")[1].split()[0])
    floor = (1.96 * report.ITEM_SD / report.TARGET_DIFFERENCE) ** 2 / 2  # 2 in-domain tasks
    assert needed >= floor > 100
