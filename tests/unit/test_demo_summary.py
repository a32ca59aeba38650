"""The demo's summary table: the label-restricted score next to the primary one, per category."""

from __future__ import annotations

import pandas as pd

from workbench.cli.demo import print_summary, summary_frame


def tidy() -> pd.DataFrame:
    return pd.DataFrame({"method": ["Zero-shot", "ATV"] * 3, "category": ["NLU", "NLU", "in_domain", "in_domain",
                                                                        "Unseen", "Unseen"],
                         "accuracy": [3.7, 53.0, 3.7, 53.0, 1.0, 2.0], "sd": 0.0,
                         "label_accuracy": [61.1, 68.5, 61.1, 68.5, 1.0, 2.0]})


def test_summary_shows_label_accuracy_next_to_the_primary_score(tmp_path, capsys):
    wide = summary_frame(tidy())
    assert list(wide.columns) == [("NLU", "primary"), ("NLU", "label"),
                                  ("in_domain", "primary"), ("in_domain", "label")]
    assert list(wide.index) == ["Zero-shot", "ATV"]
    assert wide.loc["ATV", ("NLU", "label")] == 68.5 and wide.loc["Zero-shot", ("NLU", "primary")] == 3.7
    tidy().to_csv(tmp_path / "summary_categories.csv", index=False)
    print_summary(tmp_path)
    out = capsys.readouterr().out
    assert "label" in out and "68.5" in out and "61.1" in out and "Unseen" not in out


def test_summary_of_an_older_table_without_label_accuracy():
    wide = summary_frame(tidy().drop(columns="label_accuracy"))
    assert list(wide.columns) == [("NLU", "primary"), ("in_domain", "primary")]


def test_summary_shows_interval_half_widths_when_the_table_has_them():
    table = tidy().assign(ci_low=lambda d: d["accuracy"] - 2.0, ci_high=lambda d: d["accuracy"] + 2.0,
                          label_ci_low=lambda d: d["label_accuracy"] - 5.0,
                          label_ci_high=lambda d: d["label_accuracy"] + 5.0)
    wide = summary_frame(table)
    assert wide.loc["ATV", ("NLU", "primary")] == "53.0 ±2.0" and wide.loc["ATV", ("NLU", "label")] == "68.5 ±5.0"
