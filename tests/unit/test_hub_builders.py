"""Hub builders on small ``datasets`` fixtures shaped like each hub schema, made from real shipped items.

Each fixture row is the shipped item turned back into the hub's columns; the builder must give the shipped
input text and label word back (so the hub build and the shipped files share one format).
"""

from __future__ import annotations

import re

import pytest

import datasets  # noqa: E402  (a core dependency: never skipped)

from workbench.tasks import hub_builders as H  # noqa: E402
from workbench.tasks.registry import load_task  # noqa: E402

Dataset, DatasetDict = datasets.Dataset, datasets.DatasetDict


def real(name: str, n: int = 30) -> list:
    t = load_task(name)
    return (t.test + t.train + t.valid)[:n]


def all_items(splits: dict) -> set:
    return {(r["input"], r["output"]) for s in ("train", "valid", "test") for r in splits[s]}


def dd(**splits) -> DatasetDict:
    return DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})


def options(inp: str) -> tuple[str, list[str], list[str]]:
    q, opts = inp.split("\nOptions:\n")
    labs, texts = zip(*(re.match(r"([A-Z])\. (.*)", line, re.DOTALL).groups() for line in opts.split("\n")))
    return q, list(labs), list(texts)


@pytest.mark.parametrize("n", [3, 10, 11, 20, 29, 100, 101, 1000, 2490])
@pytest.mark.parametrize("train_size", [None, 0.7])
def test_train_test_split_matches_sklearn(n, train_size):
    sk = pytest.importorskip("sklearn.model_selection")
    rows = list(range(n))
    try:
        want = sk.train_test_split(rows, test_size=0.3, train_size=train_size, random_state=42)
    except ValueError:
        with pytest.raises(ValueError):
            H.train_test_split(rows, 0.3, train_size)
        return
    assert list(H.train_test_split(rows, 0.3, train_size)) == [list(w) for w in want]


def test_glue_uses_labelled_validation_as_test():
    items = real("glue_sst2", 40)
    rows = [{"sentence": i.split("sentence: ", 1)[1] + " ", "label": int(o == "positive"), "idx": k}
            for k, (i, o) in enumerate(items)]
    out = H.build_glue(dd(train=rows[:30], validation=rows[30:], test=[dict(r, label=-1) for r in rows[30:]]), "sst2")
    assert [(r["input"], r["output"]) for r in out["test"]] == [tuple(x) for x in items[30:]]
    assert len(out["train"]) == 21 and len(out["valid"]) == 9
    q = real("glue_qnli", 20)
    rows = [dict(zip(("question", "sentence"), re.match(r"question: (.*)\nresponse: (.*)", i, re.DOTALL).groups()),
                 label=int(o == "No")) for i, o in q]
    assert all_items(H.build_glue(dd(train=rows[:10], validation=rows[10:]), "qnli")) == set(q)
    c = real("glue_cola", 20)
    rows = [{"sentence": " " + i, "label": int(o == "Yes")} for i, o in c]
    assert all_items(H.build_glue(dd(train=rows[:10], validation=rows[10:]), "cola")) == set(c)
    m = real("glue_mnli", 40)
    lab = {"True": 0, "Neither": 1, "False": 2}
    rows = [dict(zip(("premise", "hypothesis"), re.match(r"premise: (.*)\nhypothesis: (.*)", i, re.DOTALL).groups()),
                 label=lab[o]) for i, o in m]
    out = H.build_glue(dd(train=rows), "mnli")
    assert all_items(out) == set(m) and [len(out[s]) for s in ("train", "valid", "test")] == [28, 4, 8]
    with pytest.raises(ValueError, match="unknown GLUE task"):
        H.build_glue(dd(train=rows), "wnli")


def test_superglue_and_boolq():
    r = real("superglue_rte", 20)
    rows = [dict(zip(("premise", "hypothesis"), re.match(r"premise: (.*)\nhypothesis: (.*)", i, re.DOTALL).groups()),
                 label=int(o == "False")) for i, o in r]
    assert all_items(H.build_superglue(dd(train=rows), "rte")) == set(r)
    w = real("superglue_wic", 20)
    rows = [dict(zip(("word", "sentence1", "sentence2"),
                     re.match(r"word: (.*)\nsentence 1: (.*)\nsentence 2: (.*)", i, re.DOTALL).groups()),
                 label=int(o == "Yes")) for i, o in w]
    assert all_items(H.build_superglue(dd(train=rows), "wic")) == set(w)
    b = real("boolq", 20)
    rows = [dict(zip(("passage", "question"), re.match(r"context: (.*)\nquestion: (.*)", i, re.DOTALL).groups()),
                 answer=o == "True") for i, o in b]
    out = H.build_boolq(dd(train=rows[:10], validation=rows[10:]))
    assert all_items(out) == set(b) and [(r["input"], r["output"]) for r in out["test"]] == [tuple(x) for x in b[10:]]


@pytest.mark.parametrize("name, builder, qkey", [
    ("commonsense_qa", H.build_commonsense_qa, "question"),
    ("openbookqa", H.build_openbookqa, "question_stem"),
    ("arc_challenge", H.build_arc, "question"),
])
def test_choice_tasks(name, builder, qkey):
    items = real(name, 30)
    rows = []
    for i, o in items:
        q, labs, texts = options(i)
        rows.append({qkey: q, "choices": {"label": labs, "text": texts}, "answerKey": o})
    splits = {"train": rows[:10], "validation": rows[10:20], "test": rows[20:]}
    used = items[:20] if name == "commonsense_qa" else items  # CSQA's hub test split is unlabelled, unused
    assert all_items(builder(dd(**splits))) == set(used)


def test_arc_numeric_keys_become_letters():
    row = {"question": "Q?", "choices": {"label": ["1", "2", "3", "4"], "text": list("wxyz")}, "answerKey": "3"}
    out = H.build_arc(dd(train=[row], validation=[row], test=[row]))
    assert out["test"][0] == {"input": "Q?\nOptions:\nA. w\nB. x\nC. y\nD. z", "output": "C"}


def test_hellaswag():
    items = real("hellaswag", 30)
    rows = [{"ctx": q, "endings": texts, "label": str("ABCD".index(o)), "activity_label": "x"}
            for (i, o) in items for q, _, texts in [options(i)]]
    out = H.build_hellaswag(dd(train=rows[:10], validation=rows[10:]))
    assert all_items(out) == set(items) and len(out["test"]) == 14 and len(out["train"]) == 10


def test_math_qa_options_with_commas():
    items = real("math_qa", 60)
    rows, lists = [], 0
    for i, o in items:
        q, _, texts = options(i)
        s = " , ".join(f"{c} ) {t}" for c, t in zip("abcde", texts))
        if lists < 5 and all("'" not in t for t in texts):  # some hub rows are list literals
            s, lists = str([f"{c} ) {t}" for c, t in zip("abcde", texts)]), lists + 1
        rows.append({"Problem": q, "options": s, "correct": o.lower(), "Rationale": ""})
    assert any("," in t for i, _ in items for t in options(i)[2])
    out = H.build_math_qa(dd(train=rows[:20], validation=rows[20:40], test=rows[40:]))
    assert all_items(out) == set(items)
    assert H.parse_mathqa_options("a ) rs . 1,600 , b ) 2 , c ) 3,5 , d ) 4 , e ) none") == [
        "rs . 1,600", "2", "3,5", "4", "none"]
    with pytest.raises(ValueError, match="cannot parse"):
        H.parse_mathqa_options("a ) 1 , b ) 2")


def test_mmlu_and_mmlu_pro():
    m = real("mmlu_high_school_psychology", 20)
    rows = [{"question": q, "choices": t, "answer": "ABCD".index(o), "subject": "hsp"}
            for (i, o) in m for q, _, t in [options(i)]]
    assert all_items(H.build_mmlu(dd(test=rows))) == set(m)
    p = real("mmlu_pro_math", 20)
    rows = [{"question": q, "options": t, "answer_index": "ABCDEFGHIJ".index(o), "category": "math", "question_id": k}
            for k, (i, o) in enumerate(p) for q, _, t in [options(i)]]
    rows.append(dict(rows[0], category="law", question="other"))
    assert all_items(H.build_mmlu_pro(dd(test=rows))) == set(p)


def test_bbq():
    items = real("bbq_age", 30)
    rows = []
    for i, o in items:
        q, _, t = options(i)
        c, qq = re.match(r"context: (.*)\nquestion: (.*)", q, re.DOTALL).groups()
        rows.append({"context": c, "question": qq, "ans0": t[0], "ans1": t[1], "ans2": t[2], "label": "ABC".index(o)})
    assert all_items(H.build_bbq(dd(test=rows))) == set(items)


def test_crows_pairs_order_is_seeded():
    items = real("crows_pairs", 30)
    rows = []
    for i, o in items:
        a, b = re.match(r"sentence A: (.*)\nsentence B: (.*)", i, re.DOTALL).groups()
        rows.append({"sent_more": a if o == "A" else b, "sent_less": b if o == "A" else a})
    out = H.build_crows_pairs(dd(test=rows))
    swapped = {(re.sub(r"sentence A: (.*)\nsentence B: (.*)", r"sentence A: \2\nsentence B: \1", i, flags=re.DOTALL),
                "B" if o == "A" else "A") for i, o in items}
    assert all(x in set(items) | swapped for x in all_items(out))
    assert out == H.build_crows_pairs(dd(test=rows)) and {r["output"] for r in out["train"]} == {"A", "B"}


def test_ethics_and_deepmind():
    c = real("ethics_commonsense", 9)
    rows = [{"input": i, "label": int(o == "Yes"), "is_short": True, "edited": False} for i, o in c]
    assert all_items(H.build_ethics(dd(train=rows[:3], validation=rows[3:6], test=rows[6:]), "commonsense")) == set(c)
    j = real("ethics_justice", 9)
    rows = [{"scenario": i, "label": int(o == "Yes")} for i, o in j]
    assert all_items(H.build_ethics(dd(train=rows[:3], validation=rows[3:6], test=rows[6:]), "justice")) == set(j)
    d = real("deepmind", 30)
    rows = [{"question": q, "options": [f"{lab}){t}" for lab, t in zip(labs, texts)], "rationale": "", "correct": o}
            for (i, o) in d for q, labs, texts in [options(i)]]
    assert all_items(H.build_deepmind(dd(train=rows))) == set(d)


def to_bbh(inp: str, out: str, mc: bool) -> dict:
    if not mc:
        return {"input": inp, "target": out}
    q, labs, texts = options(inp)
    return {"input": q + "\nOptions:\n" + "\n".join(f"({lab}) {t}" for lab, t in zip(labs, texts)),
            "target": f"({out})"}


def test_bbh_atv_stream_and_format():
    subsets = {}
    for s in H.ATV_BBH:
        mc = s != "boolean_expressions"
        subsets[s] = dd(test=[to_bbh(i, o, mc) for i, o in real(f"bbh_{s}", 40)])
    out = H.build_bbh(subsets)
    for s in H.ATV_BBH:
        assert all_items(out[f"bbh_{s}"]) == set(real(f"bbh_{s}", 40))
        assert [len(out[f"bbh_{s}"][k]) for k in ("train", "valid", "test")] == [20, 7, 13]
    with pytest.raises(ValueError, match="share one random stream"):
        H.build_bbh({"date_understanding": subsets["date_understanding"]})
    # only option markers are rewritten; other parentheses stay
    row = {"input": "Today (a Monday) is 01/01/2000.\nOptions:\n(A) 01/02/2000\n(B) 01/03/2000", "target": "(A)"}
    bad = {"input": "Pick.\nOptions:\n(A) x\n(B) y", "target": "Monty Python"}
    extra = H.build_bbh({"ruin_names": dd(test=[row] * 9 + [bad])})["bbh_ruin_names"]
    items = all_items(extra)
    assert items == {("Today (a Monday) is 01/01/2000.\nOptions:\nA. 01/02/2000\nB. 01/03/2000", "A")}


def test_dedupe_and_loader_dispatch():
    splits = {"train": [{"input": "x", "output": "A"}, {"input": "y", "output": "A"}],
              "valid": [{"input": "x", "output": "A"}], "test": [{"input": "x", "output": "B"}]}
    assert H.dedupe(splits) == {"train": [{"input": "y", "output": "A"}], "valid": [], "test": splits["test"]}
    seen = []

    def loader(path, config, revision):
        seen.append((path, config, revision))
        return dd(test=[{"context": "c", "question": "q", "ans0": "a", "ans1": "b", "ans2": "u", "label": k % 3}
                        for k in range(20)])

    H.load_hub_task("bbq_nationality", loader=loader)
    assert seen == [("oskarvanderwal/bbq", "Nationality", "refs/convert/parquet")]
    assert "bbh_object_counting" in H.hub_task_names() and set(H.HUB_SOURCES) <= set(H.hub_task_names())
