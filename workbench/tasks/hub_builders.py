"""Build the canonical task files from the Hugging Face hub, reproducing ELICIT's / ATV's ``process_data.py``.

Each family is a pure function ``build_<family>(dataset_dict, ...) -> {"train","valid","test"}`` (lists of
``{"input","output"}``) taking ``datasets.DatasetDict`` / ``Dataset`` objects (anything indexable by split name
and iterable as dict rows works), so it can be tested offline on small fixtures. ``load_hub_task(name)`` is the
thin loader calling ``datasets.load_dataset`` with the ids in ``HUB_SOURCES`` (not verifiable offline here).

Fixes over the originals (see ``data/SOURCES.md``): GLUE SST-2 / QNLI / CoLA use the labelled validation set as
test (train / valid = 70/30 of GLUE train, rs=42) instead of the unlabelled test split; MathQA options are parsed
on their ``x )`` markers instead of ``split(",")``; BBH rewrites only ``(A)`` option markers; ARC's numeric answer
keys (1-5) become letters; train/valid copies of test inputs are removed. What the hub version cannot match:
the shipped files were built from other raw copies where the hub was not reachable (e.g. boolq, hellaswag,
math_qa, glue_mnli, ethics_commonsense, deepmind use different pools) — the hub build follows ELICIT's pools.

Splits: ``train_test_split`` reproduces scikit-learn's (``np.random.RandomState(seed).permutation``).
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

Splits = dict[str, list[dict[str, str]]]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------------------------------- splitting
def train_test_split(
    rows: Sequence[Any], test_size: float, train_size: float | None = None, random_state: int = 42
) -> tuple[list[Any], list[Any]]:
    """scikit-learn's ``train_test_split(rows, test_size=..., train_size=..., random_state=...)`` (floats only)."""
    n = len(rows)
    n_test = math.ceil(test_size * n)
    n_train = math.floor(train_size * n) if train_size is not None else n - n_test
    if n_train + n_test > n or n_train <= 0:
        raise ValueError(f"cannot split {n} rows into train {n_train} + test {n_test}")
    perm = np.random.RandomState(random_state).permutation(n)
    return [rows[i] for i in perm[n_test:n_test + n_train]], [rows[i] for i in perm[:n_test]]


def split_70_21_9(rows: Sequence[Any], train_size: float | None = 0.7) -> tuple[list, list, list]:
    """ELICIT's single-pool split: ``train, rest = tts(rows, 0.3[, 0.7]); test, valid = tts(rest, 0.3)``."""
    train, rest = train_test_split(rows, 0.3, train_size)
    test, valid = train_test_split(rest, 0.3)
    return train, valid, test


def dedupe(splits: Splits) -> Splits:
    """Drop train/valid items whose input also occurs in test (no input is both in train or valid and in test)."""
    test_inputs = {r["input"] for r in splits["test"]}
    return {k: (v if k == "test" else [r for r in v if r["input"] not in test_inputs]) for k, v in splits.items()}


def _rows(ds: Any) -> list[dict]:
    return [dict(r) for r in ds]


def _pack(train: Iterable, valid: Iterable, test: Iterable, fn: Callable[[dict], dict | None]) -> Splits:
    out = {}
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        out[name] = [x for x in (fn(r) for r in rows) if x is not None]
    return dedupe(out)


def _item(inp: str, out: str) -> dict[str, str]:
    return {"input": inp, "output": out}


def _options(labels: Sequence[str], texts: Sequence[str]) -> str:
    return "\nOptions:" + "".join(f"\n{lab}. {txt}" for lab, txt in zip(labels, texts))


# ----------------------------------------------------------------------------------------------- families
GLUE_TASKS = ("sst2", "qnli", "cola", "mnli")


def build_glue(dd: Any, task: str) -> Splits:
    """GLUE sst2 / qnli / cola (test = labelled validation) and mnli (ELICIT: 70/21/9 of train)."""
    if task == "mnli":
        names = {0: "True", 1: "Neither", 2: "False"}
        train, valid, test = split_70_21_9(_rows(dd["train"]))
        return _pack(train, valid, test, lambda r: _item(
            "premise: " + r["premise"] + "\nhypothesis: " + r["hypothesis"], names[r["label"]]))
    fns: dict[str, Callable[[dict], dict]] = {
        # GLUE's sentences end with a space; the shipped files (and SOURCES.md) drop it.
        "sst2": lambda r: _item("sentence: " + r["sentence"].rstrip(), "negative" if r["label"] == 0 else "positive"),
        "qnli": lambda r: _item("question: " + r["question"] + "\nresponse: " + r["sentence"],
                                "Yes" if r["label"] == 0 else "No"),
        "cola": lambda r: _item(r["sentence"].strip(), "No" if r["label"] == 0 else "Yes"),
    }
    if task not in fns:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {GLUE_TASKS}")
    train, valid = train_test_split(_rows(dd["train"]), 0.3)
    test = [r for r in _rows(dd["validation"]) if r["label"] >= 0]
    return _pack(train, valid, test, fns[task])


def build_superglue(dd: Any, task: str) -> Splits:
    """SuperGLUE rte / wic: ELICIT's 70/21/9 of the train set."""
    if task == "rte":
        def fn(r: dict) -> dict:
            return _item("premise: " + r["premise"].replace("\n", " ") + "\nhypothesis: "
                         + r["hypothesis"].replace("\n", " "), "True" if r["label"] == 0 else "False")
    elif task == "wic":
        def fn(r: dict) -> dict:
            return _item("word: " + r["word"] + "\nsentence 1: " + r["sentence1"] + "\nsentence 2: "
                         + r["sentence2"], "Yes" if r["label"] == 1 else "No")
    else:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected 'rte' or 'wic'")
    train, valid, test = split_70_21_9(_rows(dd["train"]), train_size=None)
    return _pack(train, valid, test, fn)


def build_boolq(dd: Any) -> Splits:
    """BoolQ: train / valid = 70/30 of train, test = validation; outputs "True" / "False"."""
    train, valid = train_test_split(_rows(dd["train"]), 0.3, 0.7)
    return _pack(train, valid, _rows(dd["validation"]), lambda r: _item(
        "context: " + r["passage"] + "\nquestion: " + r["question"], str(bool(r["answer"]))))


def _choice_item(question: str, choices: dict, key: str, force_letters: bool = False) -> dict | None:
    labels = list(choices["label"])
    if force_letters or all(lab.isdigit() for lab in labels):  # ARC's numeric keys 1-5 -> A-E
        key = LETTERS[labels.index(key)] if key in labels else key
        labels = list(LETTERS[: len(labels)])
    if key not in labels:
        return None
    return _item(question + _options(labels, choices["text"]), key)


def build_commonsense_qa(dd: Any) -> Splits:
    """CommonsenseQA: train / test = 70/30 of train, valid = validation."""
    train, test = train_test_split(_rows(dd["train"]), 0.3)
    return _pack(train, _rows(dd["validation"]), test,
                 lambda r: _choice_item(r["question"], r["choices"], r["answerKey"]))


def build_openbookqa(dd: Any) -> Splits:
    """OpenBookQA (main): official splits, choice labels forced to A-D."""
    return _pack(_rows(dd["train"]), _rows(dd["validation"]), _rows(dd["test"]),
                 lambda r: _choice_item(r["question_stem"], r["choices"], r["answerKey"], force_letters=True))


def build_arc(dd: Any) -> Splits:
    """ARC-Challenge: official splits."""
    return _pack(_rows(dd["train"]), _rows(dd["validation"]), _rows(dd["test"]),
                 lambda r: _choice_item(r["question"], r["choices"], r["answerKey"]))


def build_hellaswag(dd: Any) -> Splits:
    """HellaSwag: train = train; test / valid = 70/30 of validation (hub text keeps WikiHow markup)."""
    test, valid = train_test_split(_rows(dd["validation"]), 0.3)
    return _pack(_rows(dd["train"]), valid, test, lambda r: _item(
        r["ctx"] + _options(LETTERS, r["endings"]), LETTERS[int(r["label"])]))


_MATHQA_MARK = re.compile(r"(?:^|,)\s*([a-e])\s*\)\s*")


def parse_mathqa_options(options: str) -> list[str]:
    """The 5 option texts of a MathQA ``options`` string ("a ) 1,600 , b ) ..." or a list literal)."""
    s = options.strip()
    if s.startswith("["):
        parts = [str(x) for x in ast.literal_eval(s)]
        return [re.sub(r"^\s*[a-e]\s*\)\s*", "", p).strip() for p in parts]
    marks = list(_MATHQA_MARK.finditer(s))
    # keep the first a, b, c, d, e markers in order (a value may itself contain ", x )" only in theory)
    picked, want = [], iter("abcde")
    nxt = next(want)
    for m in marks:
        if m.group(1) == nxt:
            picked.append(m)
            nxt = next(want, None)
            if nxt is None:
                break
    if len(picked) != 5:
        raise ValueError(f"cannot parse MathQA options {options!r}")
    ends = [m.start() for m in picked[1:]] + [len(s)]
    return [s[m.end():e].strip().rstrip(",").strip() for m, e in zip(picked, ends)]


def build_math_qa(dd: Any) -> Splits:
    """MathQA: official splits; options parsed on their markers (fixes ELICIT's comma split)."""
    return _pack(_rows(dd["train"]), _rows(dd["validation"]), _rows(dd["test"]), lambda r: _item(
        r["Problem"] + _options(LETTERS, parse_mathqa_options(r["options"])), r["correct"].upper()))


def _indexed_choice(question: str, options: Sequence[str], answer: int) -> dict:
    return _item(question + _options(LETTERS, options), LETTERS[int(answer)])


def build_mmlu(dd: Any) -> Splits:
    """MMLU subject (e.g. cais/mmlu high_school_psychology): 70/21/9 of its test split."""
    train, valid, test = split_70_21_9(_rows(dd["test"]), train_size=None)
    return _pack(train, valid, test, lambda r: _indexed_choice(r["question"], r["choices"], r["answer"]))


def build_mmlu_pro(dd: Any, category: str = "math") -> Splits:
    """MMLU-Pro questions of one category from the test split: 70/21/9 (options A-J)."""
    rows = [r for r in _rows(dd["test"]) if r["category"] == category]
    train, valid, test = split_70_21_9(rows, train_size=None)
    return _pack(train, valid, test, lambda r: _indexed_choice(r["question"], r["options"], r["answer_index"]))


def build_bbq(dd: Any) -> Splits:
    """BBQ category (the hub 'test' split): 70/21/9; "context: ...\\nquestion: ...\\nOptions:" A-C."""
    train, valid, test = split_70_21_9(_rows(dd["test"]), train_size=None)
    return _pack(train, valid, test, lambda r: _item(
        "context: " + r["context"] + "\nquestion: " + r["question"]
        + _options("ABC", [r["ans0"], r["ans1"], r["ans2"]]), LETTERS[int(r["label"])]))


def build_crows_pairs(dd: Any, seed: int = 42) -> Splits:
    """CrowS-Pairs: 70/21/9; sentence A is the more stereotypical one when ``np.random.random() > 0.5`` after
    ``np.random.seed(seed)``, drawn over train, then valid, then test (ELICIT's global RNG, here a local one)."""
    train, valid, test = split_70_21_9(_rows(dd["test"]))
    rng = np.random.RandomState(seed)

    def fn(r: dict) -> dict:
        if rng.random_sample() > 0.5:
            return _item("sentence A: " + r["sent_more"] + "\nsentence B: " + r["sent_less"], "A")
        return _item("sentence A: " + r["sent_less"] + "\nsentence B: " + r["sent_more"], "B")

    return _pack(train, valid, test, fn)


def build_ethics(dd: Any, subset: str) -> Splits:
    """ETHICS commonsense / justice (hendrycks/ethics): official train / validation / test; 1 -> Yes, 0 -> No."""
    key = {"commonsense": "input", "justice": "scenario"}.get(subset)
    if key is None:
        raise ValueError(f"unknown ETHICS subset {subset!r}; expected 'commonsense' or 'justice'")
    return _pack(_rows(dd["train"]), _rows(dd["validation"]), _rows(dd["test"]),
                 lambda r: _item(r[key], "Yes" if r["label"] == 1 else "No"))


def build_deepmind(dd: Any) -> Splits:
    """AQuA-RAT (deepmind/aqua_rat raw): 70/21/9 of train; options 'A)x' -> 'A. x'."""
    train, valid, test = split_70_21_9(_rows(dd["train"]))
    return _pack(train, valid, test, lambda r: _item(
        r["question"] + "\nOptions:" + "".join("\n" + o.replace(")", ". ", 1) for o in r["options"]), r["correct"]))


ATV_BBH = ("reasoning_about_colored_objects", "boolean_expressions", "date_understanding", "temporal_sequences",
           "logical_deduction_five_objects")
ELICIT_BBH = ("reasoning_about_colored_objects", "object_counting")
_BBH_MARK = re.compile(r"(?m)^\(([A-Z])\)\s?")


def _bbh_item(r: dict, mc: bool) -> dict | None:
    if not mc:
        return _item(r["input"], r["target"])
    m = re.fullmatch(r"\(([A-Z])\)", r["target"].strip())
    return _item(_BBH_MARK.sub(r"\1. ", r["input"]), m.group(1)) if m else None


def _bbh_split(rows: list, rng: random.Random) -> tuple[list, list, list]:
    rows = list(rows)
    rng.shuffle(rows)
    n = len(rows)
    n_train, n_test = (128, 80) if n >= 250 else (round(n * 128 / 250), round(n * 80 / 250))
    return rows[:n_train], rows[n_train + n_test:], rows[n_train:n_train + n_test]


def build_bbh(subsets: dict[str, Any]) -> dict[str, Splits]:
    """BBH (lukaemon/bbh, each subset's 'test' split) -> ``{"bbh_<subset>": splits}``.

    ATV's 5 subsets share one ``random.seed(42)`` stream in ATV's order (all 5 are needed for any of them);
    object_counting follows ELICIT's order (after reasoning_about_colored_objects); any other subset is shuffled
    alone with ``random.Random(42)``. Split: train 128 / test 80 / valid rest (proportional below 250 items).
    Multiple-choice subsets (targets "(X)") get "X. text" option lines and letter outputs; items whose target is
    not a letter are dropped after splitting.
    """
    rows = {k: _rows(v["test"] if _has_split(v, "test") else v) for k, v in subsets.items()}
    atv = [s for s in rows if s in ATV_BBH]
    if atv and set(atv) != set(ATV_BBH):
        raise ValueError(f"ATV's BBH subsets share one random stream: give all of {ATV_BBH}, got {sorted(atv)}")
    if "object_counting" in rows and "reasoning_about_colored_objects" not in rows:
        raise ValueError("object_counting follows ELICIT's stream: also give reasoning_about_colored_objects")
    drawn: dict[str, tuple[list, list, list]] = {}
    if atv:
        rng = random.Random(42)
        for s in ATV_BBH:
            drawn[s] = _bbh_split(rows[s], rng)
    if "object_counting" in rows:
        rng = random.Random(42)
        for s in ELICIT_BBH:
            split = _bbh_split(rows[s], rng)
        drawn["object_counting"] = split
    for s, subset_rows in rows.items():
        if s not in drawn:
            drawn[s] = _bbh_split(subset_rows, random.Random(42))
    out: dict[str, Splits] = {}
    for s, (train, valid, test) in drawn.items():
        mc = sum(bool(re.fullmatch(r"\([A-Z]\)", r["target"].strip())) for r in rows[s]) > len(rows[s]) / 2
        out[f"bbh_{s}"] = _pack(train, valid, test, lambda r, mc=mc: _bbh_item(r, mc))
    return out


def _has_split(ds: Any, name: str) -> bool:
    try:
        return name in ds.keys()  # a Dataset is iterable over rows
    except AttributeError:
        return False


# ----------------------------------------------------------------------------------------------- hub loading
#: task -> (hub id, config, revision or None, builder taking the DatasetDict). Ids follow ELICIT's, with the
#: current namespaced names; script-only datasets are read from their parquet conversion branch.
HUB_SOURCES: dict[str, tuple[str, str | None, str | None, Callable[[Any], Splits]]] = {
    "glue_sst2": ("nyu-mll/glue", "sst2", None, lambda d: build_glue(d, "sst2")),
    "glue_qnli": ("nyu-mll/glue", "qnli", None, lambda d: build_glue(d, "qnli")),
    "glue_cola": ("nyu-mll/glue", "cola", None, lambda d: build_glue(d, "cola")),
    "glue_mnli": ("nyu-mll/glue", "mnli", None, lambda d: build_glue(d, "mnli")),
    "superglue_rte": ("aps/super_glue", "rte", None, lambda d: build_superglue(d, "rte")),
    "superglue_wic": ("aps/super_glue", "wic", None, lambda d: build_superglue(d, "wic")),
    "boolq": ("google/boolq", None, None, build_boolq),
    "commonsense_qa": ("tau/commonsense_qa", None, None, build_commonsense_qa),
    "openbookqa": ("allenai/openbookqa", "main", None, build_openbookqa),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", None, build_arc),
    "hellaswag": ("Rowan/hellaswag", None, None, build_hellaswag),
    "math_qa": ("allenai/math_qa", None, "refs/convert/parquet", build_math_qa),
    "mmlu_pro_math": ("TIGER-Lab/MMLU-Pro", None, None, build_mmlu_pro),
    "mmlu_high_school_psychology": ("cais/mmlu", "high_school_psychology", None, build_mmlu),
    "crows_pairs": ("nyu-mll/crows_pairs", None, "refs/convert/parquet", build_crows_pairs),
    "bbq_age": ("oskarvanderwal/bbq", "Age", "refs/convert/parquet", build_bbq),
    "bbq_religion": ("oskarvanderwal/bbq", "Religion", "refs/convert/parquet", build_bbq),
    "ethics_commonsense": ("hendrycks/ethics", "commonsense", None, lambda d: build_ethics(d, "commonsense")),
    "ethics_justice": ("hendrycks/ethics", "justice", None, lambda d: build_ethics(d, "justice")),
    "deepmind": ("deepmind/aqua_rat", "raw", None, build_deepmind),
}
BBH_HUB = "lukaemon/bbh"
#: Other BBQ categories: oskarvanderwal/bbq config names.
BBQ_CONFIGS = {"disability_status": "Disability_status", "nationality": "Nationality",
               "physical_appearance": "Physical_appearance", "sexual_orientation": "Sexual_orientation",
               "gender_identity": "Gender_identity", "race_ethnicity": "Race_ethnicity", "ses": "SES"}


def _load(path: str, config: str | None, revision: str | None) -> Any:
    import datasets

    kwargs = {"revision": revision} if revision else {}
    return datasets.load_dataset(path, config, **kwargs)


def hub_task_names() -> list[str]:
    """Tasks ``load_hub_task`` knows (the 25 plus BBQ categories; any ``bbh_<subset>`` also works)."""
    return sorted(set(HUB_SOURCES) | {f"bbh_{s}" for s in ATV_BBH + ELICIT_BBH} | {f"bbq_{c}" for c in BBQ_CONFIGS})


def load_hub_task(name: str, loader: Callable[[str, str | None, str | None], Any] = _load) -> Splits:
    """Download (via `loader`, default ``datasets.load_dataset``) and build one task."""
    if name in HUB_SOURCES:
        path, config, revision, build = HUB_SOURCES[name]
        return build(loader(path, config, revision))
    if name.startswith("bbq_") and name[4:] in BBQ_CONFIGS:
        return build_bbq(loader("oskarvanderwal/bbq", BBQ_CONFIGS[name[4:]], "refs/convert/parquet"))
    if name.startswith("bbh_"):
        sub = name[4:]
        need = ATV_BBH if sub in ATV_BBH else ELICIT_BBH if sub == "object_counting" else (sub,)
        built = build_bbh({s: loader(BBH_HUB, s, None) for s in need})
        return built[name]
    raise NotImplementedError(
        f"no hub builder for task {name!r}: ELICIT's process_data.py has no recipe for it. Known: "
        + ", ".join(hub_task_names())
    )
