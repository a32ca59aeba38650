"""wb.evaluate / summarize / run directories / efficiency: protocol rows, resume, config checks, bad inputs."""

from __future__ import annotations

import collections
import json
import math
import mmap
import warnings

import pandas as pd
import pytest
import torch

from workbench.core.interventions import Injection
from workbench.core.testing import tiny_model
from workbench.eval import efficiency
from workbench.eval.efficiency import PeakMemory, efficiency_table
from workbench.eval.evaluate import evaluate, sample_items
from workbench.eval.runs import RunConfigMismatch, finished_tasks, load_run
from workbench.eval.tables import summarize, tables_like_paper
from workbench.methods.prompting import FewShot, ZeroShot
from workbench.tasks.registry import Item, Task

TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
WORDS = ["good fun film", "bad slow film", "great cast", "dull plot", "nice music", "awful ending"]


def toy_task(name: str, category: str = "NLU", in_domain: bool = True) -> Task:
    items = [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(WORDS)]
    return Task(name=name, category=category, domain="NLU", templates=TEMPLATES, labels=("positive", "negative"),
                in_domain=in_domain, train=items, valid=items[:2], test=items)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES)


@pytest.fixture(scope="module")
def tasks():
    return [toy_task("toy_a"), toy_task("toy_b", "Unseen", in_domain=False)]


class Counting(ZeroShot):
    """Zero-shot that counts prepare calls per task."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()

    def prepare(self, lm, task, items, texts, seed=42):
        self.calls[task.name] += 1
        return super().prepare(lm, task, items, texts, seed)


# ----------------------------------------------------------------------------------------------- protocol


def test_rows_info_columns_and_efficiency(lm, tasks):
    df = evaluate(lm, FewShot(k=2), tasks, n_test=3, templates=[0, 2], prefixes="A:", seeds=(42, 7),
                  batch_size=2, progress=False)
    assert len(df) == 2 * 3 * 2 * 2
    assert {"n_demos", "dropped_demos", "demo_ids"} <= set(df.columns) and (df["n_demos"] == 2).all()
    assert set(df["template"]) == {0, 2} and set(df["prefix"]) == {"A:"} and set(df["seed"]) == {42, 7}
    for seed in (42, 7):
        assert sorted(df[(df.task == "toy_a") & (df.seed == seed)]["item"].unique()) == sample_items(tasks[0], 3, seed)
    eff = df.attrs["efficiency"]
    assert eff["latency_s"] == pytest.approx(df["latency"].mean()) and eff["n_items"] == len(df)
    table = efficiency_table(df)
    assert list(table.index) == ["few-shot"] and table.loc["few-shot", "Memory (GiB)"] > 0


def test_sample_items():
    task = toy_task("t")
    assert sample_items(task, None, 1) == list(range(6)) == sample_items(task, 60, 1)
    picked = sample_items(task, 3, 42)
    assert picked == sorted(picked) and len(set(picked)) == 3 and picked == sample_items(task, 3, 42)


# ----------------------------------------------------------------------------------------------- run dirs
def test_resume_skips_finished_tasks(lm, tasks, tmp_path):
    first = Counting()
    df1 = evaluate(lm, first, tasks, n_test=2, run_dir=tmp_path, progress=False)
    assert first.calls == {"toy_a": 9, "toy_b": 9}  # 9 variants x 1 batch
    assert finished_tasks(tmp_path) == ["toy_a", "toy_b"]
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("model", "method", "n_test", "templates", "prefixes", "seeds", "batch_size", "packages", "git_commit"):
        assert key in config
    (tmp_path / "results" / "toy_b.parquet").unlink()
    second = Counting()
    df2 = evaluate(lm, second, tasks, n_test=2, run_dir=tmp_path, progress=False)
    assert second.calls == {"toy_b": 9}
    cols = [c for c in df1.columns if c != "latency"]
    pd.testing.assert_frame_equal(df1[cols], df2[cols], check_dtype=False)
    third = Counting()
    evaluate(lm, third, tasks, n_test=2, run_dir=tmp_path, progress=False)
    assert not third.calls
    loaded = load_run(tmp_path)
    assert len(loaded) == len(df1) and loaded.attrs["efficiency"]["n_items"] == len(df1)
    assert set(json.loads((tmp_path / "efficiency.json").read_text())["tasks"]) == {"toy_a", "toy_b"}


def test_config_mismatch_raises(lm, tasks, tmp_path):
    evaluate(lm, ZeroShot(), tasks[:1], n_test=2, templates=[0], prefixes="A:", run_dir=tmp_path, progress=False)
    with pytest.raises(RunConfigMismatch, match="n_test"):
        evaluate(lm, ZeroShot(), tasks[:1], n_test=3, templates=[0], prefixes="A:", run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"method\.name"):
        evaluate(lm, FewShot(k=2), tasks[:1], n_test=2, templates=[0], prefixes="A:", run_dir=tmp_path,
                 progress=False)
    with pytest.raises(ValueError, match="seeds"):
        evaluate(lm, ZeroShot(), tasks[:1], n_test=2, templates=[0], prefixes="A:", seeds=(1,), run_dir=tmp_path,
                 progress=False)
    # more tasks with the same settings are fine
    evaluate(lm, ZeroShot(), tasks, n_test=2, templates=[0], prefixes="A:", run_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["tasks"] == ["toy_a", "toy_b"]


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": "no_such_task"}, "no_such_task"),
    ({"tasks": []}, "empty"),
    ({"tasks": [3]}, "3"),
    ({"n_test": 0}, "n_test"),
    ({"n_test": -2}, "n_test"),
    ({"n_test": 2.5}, "n_test"),
    ({"templates": [3]}, "template index 3"),
    ({"templates": "first"}, "first"),
    ({"prefixes": "Q:"}, "Q:"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": ("a",)}, "seed"),
    ({"method": "zero-shot"}, "Method"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_inputs_raise(lm, tasks, kwargs, match):
    args = {"method": ZeroShot(), "tasks": tasks, "n_test": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(lm, progress=False, **args)


# ----------------------------------------------------------------------------------------------- summarize
def hand_made() -> pd.DataFrame:
    """2 seeds x (glue_sst2: NLU, boolq: Knowledge, glue_cola: unseen) x 2 items x 2 variants."""
    acc = {("glue_sst2", 42): [1, 1, 1, 0], ("glue_sst2", 10): [1, 0, 0, 0],
           ("boolq", 42): [0, 0, 0, 0], ("boolq", 10): [1, 1, 0, 0],
           ("glue_cola", 42): [1, 1, 1, 1], ("glue_cola", 10): [0, 1, 1, 1]}
    rows = []
    for (task, seed), correct in acc.items():
        for j, c in enumerate(correct):
            rows.append({"method": "m", "task": task, "seed": seed, "item": j // 2, "template": j % 2,
                         "prefix": "A:", "correct": bool(c), "prediction": " A" if j % 2 else " B",
                         "in_labels": j != 0, "n_prompt_tokens": 100 if seed == 42 else 110})
    return pd.DataFrame(rows)


def test_summarize_means_and_sds():
    s = summarize(hand_made()).set_index(["level", "name"])
    sst2 = s.loc[("task", "glue_sst2")]
    assert sst2["accuracy"] == pytest.approx(50.0) and sst2["accuracy_sd"] == pytest.approx(25.0)  # 75, 25
    assert s.loc[("task", "boolq"), "accuracy"] == pytest.approx(25.0)  # 0, 50
    assert s.loc[("task", "boolq"), "accuracy_sd"] == pytest.approx(25.0)
    assert s.loc[("category", "NLU"), "accuracy"] == pytest.approx(50.0)
    ind = s.loc[("average", "in_domain")]  # per seed: (75+0)/2 = 37.5, (25+50)/2 = 37.5
    assert ind["accuracy"] == pytest.approx(37.5) and ind["accuracy_sd"] == pytest.approx(0.0)
    unseen = s.loc[("average", "unseen")]  # 100, 75
    assert unseen["accuracy"] == pytest.approx(87.5) and unseen["accuracy_sd"] == pytest.approx(12.5)
    assert ind["n_tokens"] == pytest.approx(105.0) and ind["n_tokens_sd"] == pytest.approx(5.0)
    assert sst2["format_adherence"] == pytest.approx(75.0)
    assert sst2["consistency"] == pytest.approx(0.0)  # the two variants always disagree
    assert s.loc[("average", "all"), "n_tasks"] == 3 and sst2["n_seeds"] == 2


def test_tables_like_paper():
    tables = tables_like_paper(hand_made())
    assert list(tables["in_domain"].columns) == ["# Tokens", "NLU", "Knowledge", "Avg."]
    assert tables["in_domain"].loc["m", "Avg."] == "37.5 ± 0.0"
    assert tables["unseen"].loc["m", "glue_cola"] == "87.5 ± 12.5"
    assert tables["format_adherence"].loc["boolq", "m"] == pytest.approx(75.0)
    assert math.isclose(tables_like_paper(hand_made(), formatted=False)["unseen"].loc["m", "Avg."], 87.5)


def test_summarize_needs_columns():
    with pytest.raises(ValueError, match="correct"):
        summarize(pd.DataFrame({"task": ["a"], "seed": [1]}))


def _touch_fresh_pages(nbytes: int) -> mmap.mmap:
    """An anonymous mapping of `nbytes` with every page written: pages that were not resident before (no allocator)."""
    block = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as mem:
        block = _touch_fresh_pages(64 << 20)  # still mapped when the block ends: both measurements must see it
    block.close()
    assert mem.result["memory_kind"] in ("cpu_peak_rss", "cpu_peak_rss_sampled")
    assert mem.result["increase_bytes"] >= 48 << 20
    assert mem.result["peak_bytes"] >= mem.result["start_bytes"] + (48 << 20)


def test_peak_memory_sees_a_freed_spike_and_nests():
    """A spike freed inside the block counts (the kernel's high-water mark, not a sample); so does an inner block's."""
    if not efficiency._reset_hwm():
        pytest.skip("/proc/self/clear_refs is not writable here: PeakMemory falls back to sampling RSS")
    with PeakMemory("cpu", interval=3600) as outer:  # the sampler (if it ran) would only look at start and end
        with PeakMemory("cpu", interval=3600) as inner:
            _touch_fresh_pages(64 << 20).close()
        _touch_fresh_pages(16 << 20).close()
    assert inner.result["memory_kind"] == outer.result["memory_kind"] == "cpu_peak_rss"
    assert inner.result["increase_bytes"] >= 48 << 20 and outer.result["increase_bytes"] >= 48 << 20


def test_peak_memory_falls_back_to_sampling(monkeypatch):
    monkeypatch.setattr(efficiency, "_CLEAR_REFS", "/nonexistent/clear_refs")
    with PeakMemory("cpu") as mem:
        block = _touch_fresh_pages(16 << 20)
    block.close()
    assert mem.result["memory_kind"] == "cpu_peak_rss_sampled" and mem.result["increase_bytes"] >= 12 << 20


# ----------------------------------------------------------------------------------------------- garbage logits
class Blowup(ZeroShot):
    """Zero-shot, but on `task_name` a vector of norm ~1e38 is added at every layer: the logits become NaN."""

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name

    def prepare(self, lm, task, items, texts, seed=42):
        batch = super().prepare(lm, task, items, texts, seed)
        if task.name == self.task_name:
            batch.intervention = Injection(torch.ones(lm.num_layers, lm.hidden_size), scale=3e38)
        return batch


def test_garbage_logits_flagged_scored_wrong_and_warned_once(lm, tasks):
    kwargs = dict(n_test=2, templates=[0], prefixes=["A:", "Answer:"], progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = evaluate(lm, Blowup("toy_b"), tasks, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "4 of 8 rows" in messages[0] and "toy_b (4)" in messages[0]
    assert "toy_a" not in messages[0]
    bad, good = df[df.task == "toy_b"], df[df.task == "toy_a"]
    assert bad["bad_logits"].all() and not good["bad_logits"].any()
    assert not bad[["correct", "correct_loose", "label_correct", "primary_correct", "in_labels"]].any().any()
    assert bad["prediction"].isna().all() and bad["label_prediction"].isna().all()
    assert good["prediction"].notna().all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean logits: no warning
        assert not evaluate(lm, ZeroShot(), tasks, **kwargs)["bad_logits"].any()


# ----------------------------------------------------------------------------------------------- chat flag
def test_chat_and_primary_correct_columns(lm, tasks):
    df = evaluate(lm, ZeroShot(), tasks[:1], n_test=3, progress=False)
    assert df["chat"].dtype == bool and not df["chat"].any()
    assert df["primary_correct"].equals(df["correct"])  # raw prompts: the strict official score
    chat_lm = tiny_model("llama", texts=WORDS + TEMPLATES + ["assistant"])
    chat_lm.tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                                       "{% if add_generation_prompt %}assistant\n{% endif %}")
    chat_lm.chat = True
    df = evaluate(chat_lm, ZeroShot(), tasks[:1], n_test=3, progress=False)
    assert df["chat"].all() and df["primary_correct"].equals(df["correct_loose"])


def test_resumed_rows_without_chat_columns_get_them(lm, tasks, tmp_path):
    first = evaluate(lm, ZeroShot(), tasks[:1], n_test=2, run_dir=tmp_path, progress=False)
    path = tmp_path / "results" / "toy_a.parquet"
    pd.read_parquet(path).drop(columns=["chat", "primary_correct"]).to_parquet(path)
    eff = tmp_path / "efficiency.json"  # a folder of that time: its records did not name their result files yet
    record = json.loads(eff.read_text())
    for rec in record["tasks"].values():
        del rec["sha256"], rec["result_file"]
    eff.write_text(json.dumps(record))
    method = Counting()
    again = evaluate(lm, method, tasks[:1], n_test=2, run_dir=tmp_path, progress=False)
    assert not method.calls  # taken from the folder, not recomputed
    assert again["primary_correct"].equals(first["primary_correct"]) and not again["chat"].any()


def test_evaluate_task_steps_compose_to_the_rows(lm, tasks):
    """The named steps of evaluate_task (sample, variant texts, run one batch, score, assemble) give its rows."""
    from workbench.eval.evaluate import BatchResult, batch_rows, run_batch, variant_texts
    from workbench.eval.scoring import AnswerTokens, score_row

    task, method = tasks[0], FewShot(k=2)
    df = evaluate(lm, method, [task], n_test=3, templates=[1], prefixes=["A:"], seeds=(7,), progress=False)
    indices = sample_items(task, 3, 7)
    items = [task.test[i] for i in indices]
    texts = variant_texts(task, items, 1, "A:")
    prepared, logits, latency = run_batch(lm, method, task, items, texts, 7)
    answers = AnswerTokens(lm.tokenizer)
    assert [score_row(answers, task, it, p, logits[j])["prediction"] for j, (it, p) in
            enumerate(zip(items, prepared.prompts))] == df["prediction"].tolist()
    rows = pd.DataFrame(batch_rows(lm, method, task, BatchResult(7, 1, "A:", indices, items, prepared, logits, latency),
                                   answers))
    cols = [c for c in df.columns if c != "latency"]
    pd.testing.assert_frame_equal(rows[cols], df[cols], check_dtype=False)


def test_efficiency_table_uses_the_primary_score_and_splits_format(lm, tasks):
    """Table 5's accuracy is the primary score, like every other table, and splits into format x accuracy-in-format."""
    df = evaluate(lm, ZeroShot(), tasks, n_test=3, templates=[0], prefixes=["A:"], progress=False)
    df = df.assign(primary_correct=True, correct=False)  # a table on `correct` would show 0
    table = efficiency_table({"zero-shot": df})
    assert table.attrs["score"] == "primary" and table.loc["zero-shot", "ID Acc."] == 100.0
    assert efficiency_table({"zero-shot": df}, loose=False).loc["zero-shot", "ID Acc."] == 0.0
    fmt, in_fmt = table.loc["zero-shot", ["ID format (%)", "ID acc. in format (%)"]]
    assert 0 <= fmt <= 100 and (in_fmt == 100.0 or fmt == 0)
