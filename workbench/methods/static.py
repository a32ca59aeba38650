"""Static task vectors (paper §3.1, Hendel et al.): one vector per task from k-shot demonstration prompts.

``v_task[l]`` is the last-token output of block l on a k-shot prompt, averaged over `n_prompts` prompts (demos from
the task's train split, queries from its valid split). At test time it is injected at the last prompt token:

* ``mode="add"``: ``h_l <- h_l + scale * v_l`` (paper eq. 5) at `layers`, through :class:`~workbench.Injection`;
* ``mode="replace"``: ``h_l <- v_l`` at `layers` (Hendel et al. patch one layer), a :class:`Replacement`.

Unseen tasks (not among the fitted ones): ``unseen="own"`` (default, what the paper's static baseline does) builds
the vector from the unseen task's own train demonstrations at first use; ``unseen="retrieve"`` uses the vector of
the in-domain task whose prompts' queries are most similar (MiniLM cosine, :mod:`workbench.tasks.retrieval`) to the
batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.checks import check_int, check_seed, check_template
from workbench.core.interventions import Injection, LayerSpec, Replacement, check_scale, layer_spec, resolve_layers
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.demos import DemoPrompt, demo_prompts, prompt_states
from workbench.tasks.registry import TaskSpec, resolve_tasks
from workbench.tasks.retrieval import QueryIndex

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

MODES = ("add", "replace")
UNSEEN_POLICIES = ("own", "retrieve")


class StaticTaskVector(Method):
    """Mean last-token states of k-shot prompts per task, injected at the last token (see the module docstring)."""

    fitted_attributes = ("vectors", "prompts", "fitted", "_index")

    name = "static-tv"

    def __init__(
        self,
        k: int = 16,
        n_prompts: int = 10,
        layers: LayerSpec = "all",
        scale: float = 1.0,
        mode: str = "add",
        unseen: str = "own",
        template: int = 0,
        seed: int = 42,
        batch_size: int = 4,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        if unseen not in UNSEEN_POLICIES:
            raise ValueError(f"unknown unseen policy {unseen!r}; use one of {UNSEEN_POLICIES}")
        layer_spec(layers)  # the form of the spec now; its range at fit, once the model is known
        self.k, self.n_prompts = check_int(k, "k", minimum=0), check_int(n_prompts, "n_prompts")
        self.layers, self.scale, self.mode, self.unseen = layers, check_scale(scale), mode, unseen
        self.template, self.seed = check_template(template), check_seed(seed)
        self.batch_size = check_int(batch_size, "batch_size")
        self.vectors: dict[str, torch.Tensor] = {}
        self.prompts: dict[str, list[DemoPrompt]] = {}
        self.fitted: list[str] = []
        self._index: QueryIndex | None = None

    # ------------------------------------------------------------------ vectors
    def task_vector(self, lm: LanguageModel, task: Any) -> torch.Tensor:
        """Compute (and cache) ``[L, d]`` for `task` from its own demonstrations."""
        if task.name not in self.vectors:
            prompts = demo_prompts(lm, task, self.k, self.n_prompts, self.seed, template=self.template)
            self.prompts[task.name] = prompts
            self.vectors[task.name] = prompt_states(lm, prompts, self.batch_size).mean(0)
        return self.vectors[task.name]

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec) -> StaticTaskVector:
        """Vectors of `train_tasks` (names, Tasks or a list of them); they become the in-domain tasks."""
        tasks = resolve_tasks(train_tasks)
        resolve_layers(self.layers, lm.num_layers)
        for task in tasks:
            self.task_vector(lm, task)
        self.fitted = [t.name for t in tasks]
        self._index = None
        return self

    def _retrieved(self, texts: Sequence[str]) -> tuple[str, float]:
        if not self.fitted:
            raise RuntimeError("StaticTaskVector(unseen='retrieve') needs fit() on in-domain tasks first")
        if self._index is None:
            keys = [name for name in self.fitted for _ in self.prompts[name]]
            self._index = QueryIndex(keys, [p.query_text for name in self.fitted for p in self.prompts[name]])
        votes = self._index.nearest_keys(texts)
        name = Counter(k for k, _ in votes).most_common(1)[0][0]
        return str(name), max(s for k, s in votes if k == name)

    # ------------------------------------------------------------------ Method
    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        source, sim = task.name, None
        if task.name in self.fitted or self.unseen == "own":
            vector = self.task_vector(lm, task)
        else:
            source, sim = self._retrieved(texts)
            vector = self.vectors[source]
        if self.mode == "add":
            intervention: Any = Injection(vector, scale=self.scale, layers=self.layers, positions="last")
        else:
            intervention = Replacement(vector, layers=self.layers)
        info = [{"vector_task": source, "similarity": sim} for _ in texts]
        return PreparedBatch(prompts=[lm.render(t) for t in texts], intervention=intervention, info=info)

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "n_prompts": self.n_prompts, "scale": self.scale, "mode": self.mode,
                "layers": self.layers if isinstance(self.layers, str) else list(self.layers), "unseen": self.unseen,
                "template": self.template, "seed": self.seed, "query_split": "valid", "positions": "last"}
