"""workbench.eval.stats: item-level bootstrap intervals, sign-flip paired tests, Holm, the primary score.

The simulations follow the issue: an item's 9 prompt variants share one outcome, so the item (not the row) is the
unit of information. Numbers were chosen so that the acceptance windows are comfortable (1000 simulations: the
Monte-Carlo sd of a 95 % coverage is 0.69 points, of a 5 % rejection rate 0.69 points; windows 93-97 % / 3-7 % are
about 3 sd wide on each side) and the whole file stays fast:

* Coverage: 200 items per task and a true accuracy drawn from U(0.3, 0.8) per simulation. With few items the
  percentile interval of a proportion is discrete and its coverage oscillates with p (exact computation with the
  binomial quantiles: 93.0-96.5 % at 100 items, 93.8-96.3 % at 200; 95.0 % on average over p); drawing p averages
  that out. Measured with this code: 94.96 % over 5000 simulations at 200 items, n_boot=500 (at 100 items: 94.0 %,
  too close to 93 %). The macro average of tasks is nearly continuous and has no such conservative discreteness:
  its percentile interval undercovers like a Wald interval unless the tasks are large (measured over 8000
  simulations: 94.1 % for tasks of 120/160/200 items, 94.9 % for 300/500 items with n_boot=600, used here).
* Paired test: a sign test on items whose outcomes are shared by 9 variants is lattice-valued and conservative on a
  single task (exact size 4.2 % at 400 items). The macro average over tasks of unequal size (40...100 items) has
  distinct item weights and is nearly continuous: measured 4.9-5.2 % rejections over 10000 simulations
  (n_perm=1000). A McNemar test on rows would count each item 9 times and reject far more often.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.eval.stats import (
    Clusters,
    bootstrap_replicates,
    bootstrap_weights,
    chat_rows,
    clusters_by,
    holm,
    interval,
    paired,
    primary_correct,
    score_columns,
    sign_flip_pvalues,
)

PREFIXES = ("A:", "Answer:", "The answer is")


def results(outcomes: dict[tuple[str, str, int], np.ndarray], items: dict | None = None) -> pd.DataFrame:
    """Rows for {(method, task, seed): per-item outcomes}; every item asked in 9 variants with the same outcome."""
    frames = []
    for (method, task, seed), out in outcomes.items():
        out = np.asarray(out, dtype=bool)
        ids = np.arange(len(out)) if items is None else np.asarray(items[(method, task, seed)])
        frames.append(pd.DataFrame({
            "method": method, "task": task, "seed": seed, "item": np.repeat(ids, 9),
            "template": np.tile(np.repeat([0, 1, 2], 3), len(out)), "prefix": np.tile(PREFIXES * 3, len(out)),
            "correct": np.repeat(out, 9), "label_correct": np.repeat(out, 9), "in_labels": True,
        }))
    return pd.concat(frames, ignore_index=True)


def one_task(outcomes: np.ndarray) -> Clusters:
    """Clusters of one task, one seed, 9 variants per item sharing `outcomes`."""
    n = len(outcomes)
    return Clusters(np.arange(n), 9.0 * np.asarray(outcomes, dtype=float)[:, None], np.full((n, 1), 9.0))


# ----------------------------------------------------------------------------------------------- simulations
def test_interval_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    hits = []
    for _ in range(1000):
        p = rng.uniform(0.3, 0.8)
        low, high = interval(bootstrap_replicates(one_task(rng.random(200) < p), 500, rng), 0.95)
        hits.append(low <= p <= high)
    assert 0.93 <= np.mean(hits) <= 0.97


def test_macro_interval_covers_the_true_macro_accuracy():
    """Stratified by task: each task's items are drawn within the task; the interval is the macro average's."""
    rng = np.random.default_rng(7)
    hits = []
    for _ in range(1000):
        ps = rng.uniform(0.3, 0.8, size=2)
        draws = [bootstrap_replicates(one_task(rng.random(n) < p), 600, rng) for n, p in zip((300, 500), ps)]
        low, high = interval(np.mean(draws, axis=0), 0.95)
        hits.append(low <= ps.mean() <= high)
    assert 0.93 <= np.mean(hits) <= 0.97


def test_paired_test_of_equal_methods_rejects_5_percent_of_the_time():
    rng = np.random.default_rng(11)
    sizes = (40, 55, 70, 85, 100)
    rejected = []
    for _ in range(1000):
        weights = []
        for n in sizes:
            p = rng.uniform(0.3, 0.8)
            a, b = rng.random(n) < p, rng.random(n) < p  # two methods with the same accuracy
            weights.append(one_task(a.astype(float) - b).item_weights() / len(sizes))
        rejected.append(sign_flip_pvalues(np.concatenate(weights)[:, None], 1000, rng)[0] <= 0.05)
    assert 0.03 <= np.mean(rejected) <= 0.07


# ----------------------------------------------------------------------------------------------- clusters
def test_bootstrap_never_splits_an_item_across_variants():
    """All 9 variants of an item share its outcome: a draw of items gives accuracies k / n_items; drawing rows
    (variants) would give k / (9 n_items)."""
    rng = np.random.default_rng(0)
    df = results({("m", "t", 42): rng.random(37) < 0.6})
    (key, cl), = clusters_by(df, df["correct"]).items()
    assert key == ("m", "t") and cl.counts.tolist() == [[9.0]] * 37
    reps = bootstrap_replicates(cl, 300, rng) * 37
    assert np.allclose(reps, np.round(reps)) and reps.std() > 0


def test_an_item_is_one_cluster_across_seeds():
    """Item i is correct in seed 42 iff it is wrong in seed 10: resampling (task, item) across seeds keeps every
    replicate at exactly 50 %; resampling per seed would not."""
    a = np.random.default_rng(1).random(30) < 0.5
    df = results({("m", "t", 42): a, ("m", "t", 10): ~a})
    (_, cl), = clusters_by(df, df["correct"]).items()
    assert cl.sums.shape == (30, 2)
    reps = bootstrap_replicates(cl, 200, np.random.default_rng(0))
    assert np.allclose(reps, 0.5) and cl.estimate == pytest.approx(0.5)


def test_bootstrap_weights_and_estimate():
    w = bootstrap_weights(12, 50, np.random.default_rng(3))
    assert w.shape == (50, 12) and (w.sum(1) == 12).all() and (w >= 0).all()
    cl = Clusters(np.arange(3), np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 0.0]]), np.array([[2.0, 0], [2, 4], [2, 0]]))
    # seed 0: 3 / 6; seed 1: 3 / 4; mean over seeds
    assert cl.estimate == pytest.approx((0.5 + 0.75) / 2) and cl.item_weights().sum() == pytest.approx(cl.estimate)


def test_missing_values_are_not_scored():
    df = pd.DataFrame({"task": "t", "item": [0, 0, 1, 1], "seed": 1, "v": [1.0, np.nan, np.nan, np.nan]})
    (_, cl), = clusters_by(df, df["v"], by=("task",)).items()
    assert cl.items.tolist() == [0] and cl.counts.tolist() == [[1.0]]


# ----------------------------------------------------------------------------------------------- tests
def test_sign_flip_exact_for_few_items():
    # three items, all +1: of the 8 sign patterns, 2 reach |T| = 3
    assert sign_flip_pvalues(np.ones((3, 1)), 1000, np.random.default_rng(0))[0] == pytest.approx(0.25)
    assert sign_flip_pvalues(np.zeros((5, 1)), 100, np.random.default_rng(0))[0] == 1.0


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.2, np.nan, 0.5])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.4, 0.5])


def two_methods(shift: float = 0.0, n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    outcomes = {}
    for task in ("glue_sst2", "boolq", "glue_cola"):
        base = rng.random(n) < 0.6
        outcomes[("zero-shot", task, 42)] = base
        better = base | (rng.random(n) < shift)
        outcomes[("better", task, 42)] = better
        outcomes[("worse", task, 42)] = base & (rng.random(n) > 2 * shift)
    return results(outcomes)


def test_paired_differences_intervals_and_flags():
    df = two_methods(shift=0.3)
    out = paired(df, baseline="zero-shot", n_boot=500, n_perm=2000)
    assert set(out["method"]) == {"better", "worse"} and set(out["score"]) == {"primary", "label"}
    avg = out[(out["level"] == "average") & (out["name"] == "all") & (out["score"] == "primary")].set_index("method")
    assert avg.loc["better", "difference"] > 0 and avg.loc["better", "significant"]
    assert avg.loc["worse", "harmful"] and not avg.loc["better", "harmful"]
    assert (avg["ci_low"] <= avg["difference"]).all() and (avg["difference"] <= avg["ci_high"]).all()
    assert (out["p_holm"] >= out["p_value"] - 1e-12).all()
    tasks = out[(out["level"] == "task") & (out["method"] == "worse") & (out["score"] == "primary")]
    assert tasks["harmful"].all()
    assert np.allclose(tasks["difference"], tasks["accuracy"] - tasks["baseline_accuracy"])
    assert out.equals(paired(df, baseline="zero-shot", n_boot=500, n_perm=2000))  # seeded: reruns are identical


def test_paired_counts_items_not_rows():
    """The same outcomes asked in 1 or in 9 variants carry the same evidence: identical p-values and intervals
    (a test on rows would see 9 times as many observations)."""
    df = two_methods(shift=0.1)
    single = df[(df["template"] == 0) & (df["prefix"] == "A:")]
    cols = ["difference", "ci_low", "ci_high", "p_value"]
    a = paired(df, n_boot=300, n_perm=500)[cols]
    b = paired(single, n_boot=300, n_perm=500)[cols]
    pd.testing.assert_frame_equal(a, b)


def test_paired_bad_inputs():
    df = two_methods()
    with pytest.raises(ValueError, match="unknown baseline 'few-shot'.*zero-shot"):
        paired(df, baseline="few-shot")
    with pytest.raises(ValueError, match="ci must be .* got 1.5"):
        paired(df, ci=1.5)
    with pytest.raises(ValueError, match="'nope'"):
        paired(df, methods=["nope"])
    with pytest.raises(ValueError, match="n_perm must be a positive int, got 0"):
        paired(df, n_perm=0)
    with pytest.raises(ValueError, match="unknown score 'fuzzy'"):
        paired(df, score="fuzzy")
    with pytest.raises(ValueError, match="repeat a method"):
        paired(pd.concat([df, df.iloc[:1]]))


# ----------------------------------------------------------------------------------------------- scores
def test_primary_score_per_row():
    df = pd.DataFrame({"correct": [False, False], "correct_loose": [True, True], "in_labels": [False, False],
                       "in_labels_loose": [True, True]})
    assert primary_correct(df).tolist() == [False, False]  # no chat information: strict
    assert primary_correct(df.assign(chat=[True, False])).tolist() == [True, False]
    chat = df.copy()
    chat.attrs["config"] = {"model": {"chat_template": True}}
    assert chat_rows(chat).all() and primary_correct(chat).tolist() == [True, True]
    assert primary_correct(df.assign(primary_correct=[True, False], chat=False)).tolist() == [True, False]
    correct, fmt = score_columns(df.assign(chat=[True, False]))
    assert correct.tolist() == [1.0, 0.0] and fmt.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="correct_loose"):
        primary_correct(pd.DataFrame({"correct": [True], "chat": [True]}))
