"""tables_like_paper: one Table 1/2 layout carries both comparisons (▲/▼ against zero-shot, △/▽ against ATV), and
every table lists the methods in the results' order (Tables 14-15 were alphabetical)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.eval.tables import MARKS, SECOND_MARKS, tables_like_paper

TASKS = ("glue_sst2", "boolq", "glue_cola")  # NLU, Knowledge, Unseen
PREFIXES = ("A:", "Answer:", "The answer is")


def results(shift: dict[str, float], n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Methods x TASKS x n items x 9 variants; an item's variants share its outcome."""
    rng = np.random.default_rng(seed)
    frames = []
    for task in TASKS:
        base = rng.random(n)
        for method, d in shift.items():
            out = base < 0.5 + d
            frames.append(pd.DataFrame({
                "method": method, "task": task, "seed": 42, "item": np.repeat(np.arange(n), 9),
                "template": np.tile(np.repeat([0, 1, 2], 3), n), "prefix": np.tile(PREFIXES * 3, n),
                "correct": np.repeat(out, 9), "correct_loose": np.repeat(out, 9), "label_correct": np.repeat(out, 9),
                "in_labels": True, "in_labels_loose": True, "prediction": np.repeat(np.where(out, " A", " B"), 9),
                "n_prompt_tokens": 50}))
    return pd.concat(frames, ignore_index=True)


SHIFT = {"zero-shot": 0.0, "worse": -0.4, "ATV": 0.4}  # not alphabetical on purpose


def test_both_baselines_mark_the_same_cells():
    tables = tables_like_paper(results(SHIFT), cell="ci", baseline=["zero-shot", "ATV"], n_boot=300)
    t = tables["in_domain"]
    avg = t["Avg."]
    assert avg["ATV"].endswith(MARKS[1])                          # above zero-shot, itself no ATV mark
    assert avg["worse"].endswith(MARKS[-1] + SECOND_MARKS[-1])     # below zero-shot and below ATV
    assert avg["zero-shot"].endswith(SECOND_MARKS[-1])             # the baseline itself is marked against ATV
    assert MARKS[1] in t.attrs["score"] and SECOND_MARKS[1] in t.attrs["score"] and "ATV" in t.attrs["marks"]
    assert list(t.index) == list(SHIFT)


def test_a_missing_second_baseline_is_skipped():
    shift = {"zero-shot": 0.0, "worse": -0.4}
    t = tables_like_paper(results(shift), cell="ci", baseline=["zero-shot", "ATV"], n_boot=300)["in_domain"]
    assert t.loc["worse", "Avg."].endswith(MARKS[-1]) and "ATV" not in t.attrs["marks"]


def test_tables_14_and_15_keep_the_results_method_order():
    tables = tables_like_paper(results(SHIFT), n_boot=300)
    for key in ("format_adherence", "accuracy_in_format", "consistency"):
        assert list(tables[key].columns) == list(SHIFT), key
    assert list(tables["in_domain"].index) == list(SHIFT)


def test_a_single_method_gets_no_marks_instead_of_an_error():
    t = tables_like_paper(results({"ATV": 0.0}), cell="ci", baseline=["zero-shot", "ATV"], n_boot=100)["in_domain"]
    assert list(t.index) == ["ATV"] and t.attrs["marks"] == ""
