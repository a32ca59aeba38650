"""The paper's 25 tasks (ELICIT's task files), their categories, templates and label words.

* ``task_names("in_domain" | "unseen" | "all" | "extra")``: the 20 training tasks, the 5 unseen ones, the 25,
  or the other task files present in the data folder (extra BBH / BBQ subsets).
* ``load_task(name)`` reads ``<data_dir>/<name>.json`` (``{"train","valid","test"}`` lists of
  ``{"input","output"}``), validates it, and returns a :class:`Task` whose splits are lists of :class:`Item`.
* Label words: the multiple-choice tasks answer with an option letter (``A`` up to the largest option letter the
  task uses, e.g. ``A``-``R`` for bbh_reasoning_about_colored_objects, ``A``-``J`` for mmlu_pro_math); the others
  with the words listed in ``data/SOURCES.md`` (True/False, Yes/No, positive/negative, True/Neither/False, ...).
  Free-form tasks (a few extra BBH subsets) have no label words (``labels == ()``).
* ``Task.fingerprint()``: a digest of the task's data (its splits), recorded by run folders.
* Task names are plain file stems (:func:`check_task_name`); a ``<name>.json`` that is a folder, a broken symlink
  or not UTF-8 raises :class:`TaskDataError` naming it.
* Data folder: ``resolve_data_dir`` (argument, ``$ATV_DATA_DIR``, ``<repo>/data/tasks``,
  ``<repo>/../shared/data/tasks``).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from workbench.core.files import repo_root
from workbench.core.fingerprints import json_fingerprint
from workbench.tasks.templates import default_templates

SPLITS = ("train", "valid", "test")
CATEGORIES = ("NLU", "Reasoning", "Knowledge", "Math", "Safety")


def _letters(last: str) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[: string.ascii_uppercase.index(last) + 1])


TF, YN = ("True", "False"), ("Yes", "No")

#: name -> (category, domain, label words); paper Appendix B.1 order. The 5 unseen tasks are category "Unseen"
#: with their natural domain as the second field.
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # Knowledge
    "commonsense_qa": ("Knowledge", "Knowledge", _letters("E")),
    "openbookqa": ("Knowledge", "Knowledge", _letters("D")),
    "hellaswag": ("Knowledge", "Knowledge", _letters("D")),
    "boolq": ("Knowledge", "Knowledge", TF),
    # Reasoning
    "bbh_boolean_expressions": ("Reasoning", "Reasoning", TF),
    "bbh_date_understanding": ("Reasoning", "Reasoning", _letters("F")),
    "bbh_reasoning_about_colored_objects": ("Reasoning", "Reasoning", _letters("R")),
    "bbh_temporal_sequences": ("Reasoning", "Reasoning", _letters("D")),
    "arc_challenge": ("Reasoning", "Reasoning", _letters("E")),
    # Math
    "math_qa": ("Math", "Math", _letters("E")),
    "mmlu_pro_math": ("Math", "Math", _letters("J")),
    # Safety
    "crows_pairs": ("Safety", "Safety", ("A", "B")),
    "bbq_age": ("Safety", "Safety", _letters("C")),
    "ethics_commonsense": ("Safety", "Safety", YN),
    "ethics_justice": ("Safety", "Safety", YN),
    # NLU
    "glue_sst2": ("NLU", "NLU", ("positive", "negative")),
    "glue_qnli": ("NLU", "NLU", YN),
    "glue_mnli": ("NLU", "NLU", ("True", "Neither", "False")),
    "superglue_wic": ("NLU", "NLU", YN),
    "superglue_rte": ("NLU", "NLU", TF),
    # Unseen (never trained on)
    "glue_cola": ("Unseen", "NLU", YN),
    "bbq_religion": ("Unseen", "Safety", _letters("C")),
    "deepmind": ("Unseen", "Math", _letters("E")),
    "mmlu_high_school_psychology": ("Unseen", "Knowledge", _letters("D")),
    "bbh_logical_deduction_five_objects": ("Unseen", "Reasoning", _letters("E")),
}
IN_DOMAIN: tuple[str, ...] = tuple(n for n, v in REGISTRY.items() if v[0] != "Unseen")
UNSEEN: tuple[str, ...] = tuple(n for n, v in REGISTRY.items() if v[0] == "Unseen")

#: Label words of the extra task files described in SOURCES.md (category "Extra"); () = free-form answer.
EXTRA_LABELS: dict[str, tuple[str, ...]] = {
    "bbh_causal_judgement": YN,
    "bbh_disambiguation_qa": _letters("D"),
    "bbh_dyck_languages": (),
    "bbh_formal_fallacies": ("valid", "invalid"),
    "bbh_geometric_shapes": _letters("K"),
    "bbh_hyperbaton": _letters("B"),
    "bbh_logical_deduction_seven_objects": _letters("G"),
    "bbh_logical_deduction_three_objects": _letters("C"),
    "bbh_movie_recommendation": _letters("E"),
    "bbh_multistep_arithmetic_two": (),
    "bbh_navigate": YN,
    "bbh_object_counting": (),
    "bbh_penguins_in_a_table": _letters("E"),
    "bbh_ruin_names": _letters("D"),
    "bbh_salient_translation_error_detection": _letters("F"),
    "bbh_snarks": _letters("B"),
    "bbh_sports_understanding": ("yes", "no"),
    "bbh_tracking_shuffled_objects_five_objects": _letters("E"),
    "bbh_tracking_shuffled_objects_seven_objects": _letters("G"),
    "bbh_tracking_shuffled_objects_three_objects": _letters("C"),
    "bbh_web_of_lies": YN,
    "bbh_word_sorting": (),
}


class Item(NamedTuple):
    """One example: the input text (without template) and the gold answer (without leading space)."""

    input: str
    output: str


class TaskDataError(ValueError):
    """A task file is missing, empty or malformed (the message names the file, split and item)."""


@dataclass
class Task:
    """A loaded task: its splits, 3 question templates and label words."""

    name: str
    category: str
    domain: str
    templates: list[str]
    labels: tuple[str, ...]
    in_domain: bool
    train: list[Item] = field(repr=False)
    valid: list[Item] = field(repr=False)
    test: list[Item] = field(repr=False)
    path: Path | None = None

    def split(self, name: str) -> list[Item]:
        """The split called `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """Fingerprint of the task's data: its three splits' items (what the workbench reads from the task file, so
        re-indenting the file changes nothing, while any item changed, added or removed does). Run folders record
        it per task and refuse to resume a task whose data changed. Computed on each call (tens of ms for the
        largest task files), so a Task whose splits were replaced is never taken for the old one."""
        return json_fingerprint({split: getattr(self, split) for split in SPLITS})

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return f"Task({self.name!r}, category={self.category!r}, labels={list(self.labels)}, {sizes})"


def _has_json(d: Path) -> bool:
    return d.is_dir() and any(d.glob("*.json"))


PREPARE_HINT = (
    "prepare it with `python -m workbench data prepare --from DIR` (a folder of canonical task files) or "
    "`python -m workbench data prepare --hub` (build from the Hugging Face hub), or set $ATV_DATA_DIR"
)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding ``<task>.json``: `data_dir`, else ``$ATV_DATA_DIR``, else ``<repo>/data/tasks`` (if it has
    json files), else ``<repo>/../shared/data/tasks``; otherwise a FileNotFoundError saying how to prepare it."""
    for given, what in ((data_dir, "data_dir"), (os.environ.get("ATV_DATA_DIR") or None, "$ATV_DATA_DIR")):
        if given is not None:
            p = Path(given).expanduser()
            if not p.is_dir():
                raise FileNotFoundError(f"{what} {str(p)!r} is not a directory; {PREPARE_HINT}")
            return p.resolve()
    local = repo_root() / "data" / "tasks"
    if _has_json(local):
        return local
    shared = repo_root().parent / "shared" / "data" / "tasks"
    if _has_json(shared):
        return shared.resolve()
    raise FileNotFoundError(f"no task data found (looked in {local} and {shared}); {PREPARE_HINT}")


# ----------------------------------------------------------------------------------------------- validation
def validate_task_data(obj: object, source: str | os.PathLike) -> dict[str, list[Item]]:
    """Check a parsed task file and return its splits; TaskDataError names `source`, the split and the item."""
    if not isinstance(obj, dict):
        raise TaskDataError(f"{source}: expected a JSON object with keys {list(SPLITS)}, got {type(obj).__name__}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise TaskDataError(f"{source}: missing split(s) {missing}; found keys {list(obj)}")
    out: dict[str, list[Item]] = {}
    for split in SPLITS:
        rows = obj[split]
        if not isinstance(rows, list):
            raise TaskDataError(f"{source}: split {split!r} must be a list of items, got {type(rows).__name__}")
        if not rows:
            raise TaskDataError(f"{source}: split {split!r} is empty")
        items = []
        for i, row in enumerate(rows):
            where = f"{source}: split {split!r} item {i}"
            if not isinstance(row, dict):
                raise TaskDataError(f"{where}: expected an object with 'input' and 'output', got {type(row).__name__}")
            for key in ("input", "output"):
                if key not in row:
                    raise TaskDataError(f"{where}: missing key {key!r} (keys: {list(row)})")
                if not isinstance(row[key], str):
                    raise TaskDataError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
                if not row[key].strip():
                    raise TaskDataError(f"{where}: {key!r} is empty")
            items.append(Item(row["input"], row["output"]))
        out[split] = items
    return out


def check_task_name(name: object) -> str:
    """`name` if it is a plain task name (a file stem such as ``glue_sst2``), else ValueError.

    Task names become file names (``<data_dir>/<name>.json``, ``<run>/results/<name>.parquet``), so path separators,
    ``.`` / ``..``, a leading dot, NUL and empty names are refused: a task from another folder is loaded with
    ``data_dir``, not with a path.
    """
    if not isinstance(name, str):
        raise TypeError(f"task name must be a string, got {type(name).__name__}")
    bad = (not name or name in (".", "..") or name.startswith(".") or "\0" in name
           or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/")))
    if bad:
        raise ValueError(f"task name {name!r} is not a plain name: use a file stem of the data folder such as "
                         "'glue_sst2' (no path separators, no '..', no leading '.'); to read tasks from another "
                         "folder pass data_dir / --data-dir")
    return name


def _check_task_path(p: Path) -> None:
    """FileNotFoundError if `p` is absent; TaskDataError if it is a folder, a broken symlink or not a regular file."""
    if p.is_file():
        return
    if p.is_symlink():
        raise TaskDataError(f"{p} is a broken symlink (to {os.readlink(p)!r}, which does not exist); "
                            "a task file must be a readable JSON file")
    if p.is_dir():
        raise TaskDataError(f"{p} is a folder, not a task file; a task file is a JSON file <task>.json")
    if p.exists():
        raise TaskDataError(f"{p} is not a regular file; a task file is a JSON file <task>.json")
    raise FileNotFoundError(f"task file {p} does not exist; {PREPARE_HINT}")


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def read_task_file(path: str | os.PathLike) -> dict[str, list[Item]]:
    """Read and validate one task file (errors name the file)."""
    p = Path(path)
    _check_task_path(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskDataError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            "task files must be UTF-8 encoded JSON") from None
    if not text.strip():
        raise TaskDataError(f"{p}: file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return validate_task_data(obj, p)


@lru_cache(maxsize=64)
def _read_cached(path: str, mtime_ns: int, size: int) -> dict[str, tuple[Item, ...]]:
    return {k: tuple(v) for k, v in read_task_file(path).items()}


# ----------------------------------------------------------------------------------------------- registry
@lru_cache(maxsize=1)
def shipped_templates() -> dict[str, list[str]]:
    """ELICIT's templates (``workbench/resources/templates.json``, a byte copy of ``natural_prompts_manual.json``)."""
    text = resources.files("workbench").joinpath("resources/templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def extra_names(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Task files present in the data folder that are not among the paper's 25 (hidden ``.*.json`` files excluded;
    a ``<name>.json`` that is a folder or a broken symlink is listed, and :func:`load_task` reports it)."""
    d = resolve_data_dir(data_dir)
    return sorted(p.stem for p in d.glob("*.json") if p.stem not in REGISTRY and not p.name.startswith("."))


def task_names(which: str = "all", data_dir: str | os.PathLike | None = None) -> list[str]:
    """"in_domain" (20), "unseen" (5), "all" (the 25, paper order) or "extra" (other files in the data folder)."""
    if which == "in_domain":
        return list(IN_DOMAIN)
    if which == "unseen":
        return list(UNSEEN)
    if which == "all":
        return list(REGISTRY)
    if which == "extra":
        return extra_names(data_dir)
    raise ValueError(f"unknown task group {which!r}; expected 'in_domain', 'unseen', 'all' or 'extra'")


def templates_for(name: str, labels: tuple[str, ...] = ()) -> list[str]:
    """The 3 question templates of `name`: ELICIT's when it has them, else the documented defaults."""
    shipped = shipped_templates().get(name)
    if shipped is not None:
        return list(shipped)
    mc = bool(labels) and all(len(x) == 1 and x.isupper() for x in labels)
    return default_templates(name, mc)


def _derive_labels(items: list[Item]) -> tuple[str, ...]:
    """Label words of an unknown extra file: letters A..max if all outputs are letters, else <= 5 words, else ()."""
    outs = {it.output for it in items}
    if all(len(o) == 1 and o in string.ascii_uppercase for o in outs):
        return _letters(max(outs))
    return tuple(sorted(outs)) if len(outs) <= 5 else ()


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """Load, validate and describe one task (see the module docstring)."""
    check_task_name(name)
    d = resolve_data_dir(data_dir)
    path = d / f"{name}.json"
    if name not in REGISTRY and not _exists(path):
        valid = list(REGISTRY) + [n for n in extra_names(d)]
        raise ValueError(f"unknown task {name!r}; valid names ({len(valid)}): {', '.join(valid)}")
    if not _exists(path):
        raise FileNotFoundError(f"task file {path} does not exist (data folder {d}); {PREPARE_HINT}")
    _check_task_path(path)
    st = path.stat()
    splits = {k: list(v) for k, v in _read_cached(str(path), st.st_mtime_ns, st.st_size).items()}
    if name in REGISTRY:
        category, domain, labels = REGISTRY[name]
    else:
        category = "Extra"
        domain = "Reasoning" if name.startswith("bbh_") else "Safety" if name.startswith("bbq_") else "Other"
        labels = EXTRA_LABELS.get(name) or _derive_labels([it for s in SPLITS for it in splits[s]])
    if labels:
        allowed = set(labels)
        for split in SPLITS:
            for i, it in enumerate(splits[split]):
                if it.output not in allowed:
                    raise TaskDataError(
                        f"{path}: split {split!r} item {i}: output {it.output!r} is not a label word of "
                        f"{name} ({list(labels)})"
                    )
    templates = templates_for(name, labels)
    if len(templates) != 3:
        raise TaskDataError(f"task {name!r} has {len(templates)} templates, expected 3")
    return Task(
        name=name, category=category, domain=domain, templates=templates, labels=tuple(labels),
        in_domain=name in IN_DOMAIN, train=splits["train"], valid=splits["valid"], test=splits["test"], path=path,
    )


# ----------------------------------------------------------------------------------------------- checks
def resolve_tasks(tasks: TaskSpec, data_dir: str | os.PathLike | None = None) -> list[Task]:
    """The one normaliser of task arguments: a group name ("in_domain", "unseen", "all", "extra"), a task name, a
    Task, or a list / tuple mixing those (a bare name or Task is a list of one).

    Returns Task objects, each name once, in first-seen order (a Task object wins over a later name of the same
    task). An element that is neither a name nor a Task is a ValueError naming its position; an unknown name is the
    error of :func:`load_task`.
    """
    if isinstance(tasks, (str, Task)):
        specs: list[Any] = [tasks]
    elif isinstance(tasks, Sequence) and not isinstance(tasks, (bytes, bytearray)):
        specs = list(tasks)
    else:
        msg = f"tasks must be a group name {GROUPS}, a task name, a Task or a list of them; got {tasks!r:.120}"
        raise ValueError(msg)  # the API promises ValueError
    if not specs:
        raise ValueError("tasks is empty: give at least one task name or Task")
    out: dict[str, Task] = {}
    for i, spec in enumerate(specs):
        if isinstance(spec, Task):
            out.setdefault(spec.name, spec)
        elif isinstance(spec, str) and spec in GROUPS:
            for name in task_names(spec, data_dir):
                if name not in out:
                    out[name] = load_task(name, data_dir)
        elif isinstance(spec, str) and spec:
            if spec not in out:
                out[spec] = load_task(spec, data_dir)
        else:
            where = "" if len(specs) == 1 else f"element {i} of tasks, "
            raise ValueError(f"{where}{spec!r:.80} ({type(spec).__name__}) is neither a task name nor a Task "
                             f"(wb.load_task(name)); groups: {GROUPS}")
    return list(out.values())


TaskSpec = str | Task | Sequence[str | Task]


GROUPS = ("in_domain", "unseen", "all", "extra")
