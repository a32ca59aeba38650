"""Prompt-only baselines: zero-shot, k-shot in-context learning with random demonstrations, and BM25-retrieved ICL.

Few-shot prompt format (as ELICIT's ``create_prompt`` with a natural template): every demonstration is written in
the *same* question template and answer prefix as the query, followed by a space and its answer, and the pieces
are joined with blank lines::

    build_text(template, demo_1.input, prefix) + " " + demo_1.output + "\\n\\n" + ... + "\\n\\n"
    + build_text(template, query.input, prefix)

The whole text is then rendered with ``lm.render`` (with a chat template it all sits inside the one user message).
ELICIT itself drops the chat template for few-shot prompts; the workbench keeps it so that zero-shot and few-shot
differ only by the demonstrations.

Demonstrations come from the task's train split (``pool_size=n`` restricts it to a fixed sample of n train items
drawn with ``numpy.random.default_rng(0)``, e.g. 90 like the paper's training data). Random demonstrations:
``numpy.random.default_rng([seed, item_index]).choice(pool, k, replace=False)``, where item_index is the item's
index in the test split, so each item gets its own draw (as ELICIT, which draws anew for every item), independent of
batching, and the same draw in all 9 variants of the item. BM25: the k train items whose inputs score highest
against the query input (bm25s, English stop words, lower-cased; ties broken by train index), placed in *ascending*
similarity so the most similar demonstration is next to the query.

Context overflow: when the rendered prompt has more tokens than ``lm.max_length``, whole demonstrations are dropped
-- the last drawn ones for random demonstrations, the least similar ones for BM25 -- until it fits (possibly down
to zero). Every row's ``info`` records ``n_demos`` (kept), ``dropped_demos`` and ``demo_ids`` (train indices, in
prompt order, space-separated).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.core.tokens import count_tokens
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.prompts import PREFIXES, build_text, target_text
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


class ZeroShot(Method):
    """The templated question alone (rendered with the chat template when the model uses one)."""

    name = "zero-shot"


def fewshot_prompt(lm: LanguageModel, template: str, demos: Sequence[Any], query_input: str, prefix: str) -> str:
    """The rendered k-shot prompt: demonstrations ``(input, output)`` then the query, in the module's format."""
    pieces = [build_text(template, d[0], prefix) + target_text(d[1]) for d in demos]
    return lm.render("\n\n".join([*pieces, build_text(template, query_input, prefix)]))


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of demonstrations) must be a positive int, got {k!r}")
    return k


def _variant_of(task: Any, item: Any, text: str) -> tuple[str, str]:
    """(template, prefix) that produced `text` for `item`; ValueError if `text` is no variant of the item."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if text.endswith("\n" + prefix):
            for template in task.templates:
                if build_text(template, item[0], prefix) == text:
                    return template, prefix
    raise ValueError(
        f"text {text[:80]!r}... is not prompts.build_text(template, input, prefix) for a template of task "
        f"{getattr(task, 'name', task)!r} and a prefix of {PREFIXES}; few-shot methods need the evaluator's texts"
    )


class FewShot(Method):
    """k random demonstrations from the task's train split before the query (see the module docstring)."""

    name = "few-shot"
    reads_plain_queries = False  # its demonstrations make every prompt its own
    #: which end of the demonstration list is dropped first on overflow: "last" (random) or "first" (BM25)
    drop_from = "last"

    def __init__(self, k: int = 16, pool_size: int | None = None):
        self.k = _check_k(k)
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"pool_size must be a positive int or None (the whole train split), got {pool_size!r}")
        self.pool_size = pool_size
        self._test_index: dict[str, dict[Any, int]] = {}

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "pool_size": self.pool_size, "drop_from": self.drop_from}

    def pool(self, task: Any) -> list[int]:
        """Train indices demonstrations are drawn from."""
        n = len(task.train)
        if self.pool_size is None or self.pool_size >= n:
            return list(range(n))
        return sorted(int(i) for i in np.random.default_rng(0).choice(n, self.pool_size, replace=False))

    def item_index(self, task: Any, item: Any) -> int:
        """Index of `item` in the test split (a CRC32 of its input when it is not a test item)."""
        key = (task.name, len(task.test))
        index = self._test_index.get(key)
        if index is None:
            index = self._test_index[key] = {}
            for i, it in enumerate(task.test):
                index.setdefault(tuple(it), i)
        found = index.get(tuple(item))
        return found if found is not None else zlib.crc32(item[0].encode("utf-8"))

    def select(self, task: Any, item: Any, seed: int) -> list[int]:
        """Train indices of the demonstrations for `item`, in prompt order."""
        pool = self.pool(task)
        rng = np.random.default_rng([int(seed), self.item_index(task, item)])
        return [pool[i] for i in rng.choice(len(pool), min(self.k, len(pool)), replace=False)]

    def build(self, lm: LanguageModel, task: Any, item: Any, text: str, seed: int) -> tuple[str, dict]:
        """Rendered prompt for one item and its info (demonstrations dropped from `drop_from` to fit)."""
        template, prefix = _variant_of(task, item, text)
        ids = self.select(task, item, seed)

        def kept(n: int) -> list[int]:
            return ids[:n] if self.drop_from == "last" else ids[len(ids) - n:]

        def render(n: int) -> str:
            return fewshot_prompt(lm, template, [task.train[i] for i in kept(n)], item[0], prefix)

        n = len(ids)
        if count_tokens(lm.tokenizer, [render(n)])[0] > lm.max_length:
            lo, hi = 0, n - 1  # largest n that fits, by bisection (token count grows with n)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if count_tokens(lm.tokenizer, [render(mid)])[0] <= lm.max_length:
                    lo = mid
                else:
                    hi = mid - 1
            n = lo
        info = {"n_demos": n, "dropped_demos": len(ids) - n, "demo_ids": " ".join(map(str, kept(n)))}
        return render(n), info

    def prepare(
        self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str], seed: int = 42
    ) -> PreparedBatch:
        built = [self.build(lm, task, item, text, seed) for item, text in zip(items, texts)]
        return PreparedBatch(prompts=[p for p, _ in built], info=[i for _, i in built])


class BM25FewShot(FewShot):
    """The k train items most similar to the query input by BM25, most similar last (see the module docstring)."""

    name = "bm25"
    drop_from = "first"

    def __init__(self, k: int = 16, pool_size: int | None = None):
        super().__init__(k, pool_size)
        self._indices: dict[tuple[str, int], tuple[Any, list[int]]] = {}

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec) -> BM25FewShot:
        """Build the BM25 index of every task (names, Tasks or a list of them) now (otherwise built on first use)."""
        for task in resolve_tasks(train_tasks):
            self.bm25_index(task)
        return self

    def bm25_index(self, task: Any) -> tuple[Any, list[int]]:
        """(bm25s retriever over the pool's inputs, pool train indices), cached per task."""
        import bm25s

        key = (task.name, len(task.train))
        if key not in self._indices:
            pool = self.pool(task)
            tokens = bm25s.tokenize([task.train[i][0] for i in pool], stopwords="en", show_progress=False)
            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            self._indices[key] = (retriever, pool)
        return self._indices[key]

    def scores(self, task: Any, query: str) -> np.ndarray:
        """BM25 score of every pool item for `query` (zeros when the query has no indexed word)."""
        import bm25s

        retriever, pool = self.bm25_index(task)
        words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        return retriever.get_scores(words) if words else np.zeros(len(pool), dtype=np.float32)

    def select(self, task: Any, item: Any, seed: int) -> list[int]:
        """Top-k train indices, least similar first (ties: lower train index counts as more similar)."""
        _, pool = self.bm25_index(task)
        order = np.argsort(-self.scores(task, item[0]), kind="stable")[: self.k]
        return [pool[i] for i in order[::-1]]
