"""workbench.eval.tables: summarize's intervals and scores, paper layouts with intervals and significance marks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.eval.stats import bootstrap_replicates, clusters_by, interval, rng_for
from workbench.eval.tables import format_cell, summarize, tables_like_paper

PREFIXES = ("A:", "Answer:", "The answer is")
TASKS = ("glue_sst2", "boolq", "glue_cola")  # NLU, Knowledge, Unseen


def results(n: int = 40, seeds: tuple[int, ...] = (42,), shift: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """Methods x TASKS x seeds x n items x 9 variants; an item's variants share its outcome; correct => in_labels."""
    rng = np.random.default_rng(seed)
    shift = {"zero-shot": 0.0, "ATV": 0.35, "worse": -0.35} if shift is None else shift
    frames = []
    for task in TASKS:
        for s in seeds:
            base = rng.random(n)
            for method, d in shift.items():
                out = base < 0.5 + d
                fmt = out | (rng.random(n) < 0.5)
                frames.append(pd.DataFrame({
                    "method": method, "task": task, "seed": s, "item": np.repeat(np.arange(n), 9),
                    "template": np.tile(np.repeat([0, 1, 2], 3), n), "prefix": np.tile(PREFIXES * 3, n),
                    "correct": np.repeat(out, 9), "correct_loose": np.repeat(out | fmt, 9),
                    "label_correct": np.repeat(out | (rng.random(n) < 0.3), 9), "in_labels": np.repeat(fmt, 9),
                    "in_labels_loose": True, "prediction": np.repeat(np.where(out, " A", " B"), 9),
                    "n_prompt_tokens": 50}))
    return pd.concat(frames, ignore_index=True)


def row(s: pd.DataFrame, method: str, level: str, name: str) -> pd.Series:
    return s[(s["method"] == method) & (s["level"] == level) & (s["name"] == name)].iloc[0]


def test_summarize_reports_intervals_for_every_accuracy():
    s = summarize(results(seeds=(42, 10)), n_boot=300)
    for col in ("ci_low", "ci_high", "label_ci_low", "label_ci_high", "accuracy_in_format", "n_items", "score"):
        assert col in s
    assert (s["score"] == "primary").all() and s.attrs["ci"] == 0.95
    assert (s["ci_low"] <= s["accuracy"]).all() and (s["accuracy"] <= s["ci_high"]).all()
    assert (s["label_ci_low"] <= s["label_accuracy"]).all() and (s["label_accuracy"] <= s["label_ci_high"]).all()
    assert set(s["level"]) == {"task", "category", "average"} and (s["ci_high"] > s["ci_low"]).all()
    assert row(s, "ATV", "average", "in_domain")["n_items"] == 80 and row(s, "ATV", "task", "boolq")["n_seeds"] == 2
    assert summarize(results(), ci=None)["ci_low"].isna().all()  # no intervals asked: the old columns only


def test_task_interval_is_the_item_bootstrap_and_averages_are_macro():
    df = results(n=30)
    s = summarize(df, n_boot=400, seed=5)
    clusters = clusters_by(df, df["correct"].astype(float))
    draws = {t: bootstrap_replicates(clusters[("ATV", t)], 400, rng_for(5, t)) * 100 for t in TASKS}
    low, high = interval(draws["boolq"], 0.95)
    assert row(s, "ATV", "task", "boolq")[["ci_low", "ci_high"]].tolist() == pytest.approx([low, high])
    low, high = interval((draws["glue_sst2"] + draws["boolq"]) / 2, 0.95)  # in-domain: macro over its 2 tasks
    assert row(s, "ATV", "average", "in_domain")[["ci_low", "ci_high"]].tolist() == pytest.approx([low, high])
    pd.testing.assert_frame_equal(s, summarize(df, n_boot=400, seed=5))  # seeded: reruns identical
    assert not s["ci_low"].equals(summarize(df, n_boot=400, seed=6)["ci_low"])


def test_seeds_of_an_item_move_together():
    """Seed 10 asks the same items with the opposite outcomes: every draw of (task, item) clusters is 50 %."""
    df = results(n=30, seeds=(42,), shift={"m": 0.0})
    flipped = df.assign(seed=10, correct=~df["correct"])
    s = summarize(pd.concat([df, flipped], ignore_index=True), score="strict", n_boot=200)
    r = row(s, "m", "task", "boolq")
    assert r["accuracy"] == pytest.approx(50) and r["ci_low"] == pytest.approx(50) and r["ci_high"] == pytest.approx(50)


def test_summarize_scores():
    df = results()
    strict, primary = summarize(df, ci=None, score="strict"), summarize(df, ci=None)
    assert np.allclose(strict["accuracy"], primary["accuracy"])  # no chat information: primary = strict
    chat = summarize(df.assign(chat=True), ci=None)
    loose = summarize(df, ci=None, loose=True)
    assert np.allclose(chat["accuracy"], loose["accuracy"]) and (loose["score"] == "loose").all()
    assert (chat["accuracy"] > strict["accuracy"]).any()
    # accuracy = format adherence x accuracy when in format (correct implies in format)
    t = strict[strict["level"] == "task"]
    assert np.allclose(t["accuracy"], t["format_adherence"] * t["accuracy_in_format"] / 100)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ci": 1.0}, "ci must be a confidence level in \\(0, 1\\).*got 1.0"),
    ({"ci": 0}, "got 0"),
    ({"ci": "95%"}, "got '95%'"),
    ({"score": "fuzzy"}, "unknown score 'fuzzy'"),
    ({"loose": True, "score": "strict"}, "conflicts with score='strict'"),
    ({"n_boot": 0}, "n_boot must be a positive int, got 0"),
])
def test_summarize_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        summarize(results(n=5), **kwargs)


def test_summarize_needs_items_for_intervals():
    df = results(n=5).drop(columns="item")
    with pytest.raises(ValueError, match="'item' column"):
        summarize(df)
    assert len(summarize(df, ci=None))


def test_format_cell():
    assert format_cell(62.345, 2.06, "▲") == "62.3 ± 2.1▲"
    assert format_cell(50.0) == "50.0" and format_cell(float("nan"), 1.0) == ""
    assert format_cell(50.0, float("nan"), digits=2) == "50.00 ± 0.00"


def test_tables_with_intervals_marks_and_label_accuracy():
    df = results(n=60)
    tables = tables_like_paper(df, cell="ci", baseline="zero-shot", n_boot=300)
    assert {"in_domain", "unseen", "in_domain_label", "unseen_label", "format_adherence",
            "accuracy_in_format", "consistency"} <= set(tables)
    t1 = tables["in_domain"]
    assert "primary accuracy" in t1.attrs["score"] and "zero-shot" in t1.attrs["score"]
    assert "label accuracy" in tables["in_domain_label"].attrs["score"]
    assert t1.loc["ATV", "Avg."].endswith("▲") and t1.loc["worse", "Avg."].endswith("▼")
    assert not t1.loc["zero-shot", "Avg."].endswith(("▲", "▼"))
    s = summarize(df, n_boot=300)
    r = row(s, "ATV", "average", "in_domain")
    assert t1.loc["ATV", "Avg."] == format_cell(r["accuracy"], (r["ci_high"] - r["ci_low"]) / 2, "▲")
    assert tables_like_paper(s)["in_domain"].loc["ATV", "Avg."] == format_cell(r["accuracy"], r["accuracy_sd"])


def test_tables_bad_inputs():
    df = results(n=5)
    with pytest.raises(ValueError, match="unknown cell 'iqr'"):
        tables_like_paper(df, cell="iqr")
    with pytest.raises(ValueError, match="not a summary"):
        tables_like_paper(summarize(df, ci=None), baseline="zero-shot")
    with pytest.raises(ValueError, match="unknown baseline 'LoRA'"):
        tables_like_paper(df, baseline="LoRA")
