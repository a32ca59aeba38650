"""ELICIT (Wang et al., 2025): a capability library of task vectors, retrieved per query.

fit (per in-domain task):

1. library: `n_prompts` prompts of `k` demonstrations (demos from train, queries from valid) and their last-token
   states at every layer, ``[n_prompts, L, d]``;
2. best layer: zero-shot sweep on `n_valid` valid items, ``h + strength * v`` at the last token of one layer,
   ``v`` = the mean library state of the task at that layer (every `layer_stride`-th layer); the most accurate
   layer wins, ties broken by the mean log-probability of the target token (the official code takes the first);
3. retriever: the library prompts' queries embedded with MiniLM (:mod:`workbench.tasks.retrieval`; the official
   SimCSE-RoBERTa pair classifier is not available). ``threshold="auto"`` sets the threshold from a recall target
   (default 0.8, as ELICIT) on held-out valid queries of the same tasks.

prepare (per query, ELICIT's ``--soft --k 10``): if the best cosine score is below the threshold the query runs
zero-shot; otherwise the `top_k` entries are retrieved, the injection layer is the majority vote of their tasks'
best layers, and ``h + strength * mean(states at that layer)`` is applied at the last token. ``PreparedBatch.info``
records per query the retrieved task (majority), the top similarity, the layer and whether it fell back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.inference import next_token_logits
from workbench.core.checks import check_int, check_number, check_seed, check_template
from workbench.core.interventions import Injection, LayerSpec, layer_spec, resolve_layers
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.demos import demo_prompts, prompt_states, task_rng, zero_shot_texts
from workbench.tasks.answers import target_first_token
from workbench.tasks.prompts import TRAIN_PREFIX, build_text
from workbench.tasks.registry import TaskSpec, resolve_tasks
from workbench.tasks.retrieval import DEFAULT_RETRIEVER, QueryIndex, recall_threshold

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

#: Held-out valid queries per task used to calibrate ``threshold="auto"``.
N_HELD_OUT = 20


class ELICIT(Method):
    """Retrieval from a library of task vectors with a per-task best layer (see the module docstring)."""

    fitted_attributes = ("vectors", "sweeps", "best_layers", "entry_tasks", "entry_queries", "library", "index",
                         "threshold")
    fitted_config_keys = ("threshold_value",)

    name = "elicit"

    def __init__(
        self,
        k: int = 16,
        n_prompts: int = 10,
        n_valid: int = 100,
        layer_stride: int = 1,
        top_k: int = 10,
        threshold: float | str = "auto",
        recall: float = 0.8,
        strength: float = 2.0,
        inject_layers: LayerSpec | None = None,
        template: int = 0,
        seed: int = 42,
        batch_size: int = 4,
        retriever: str = DEFAULT_RETRIEVER,
    ):
        if threshold != "auto":
            check_number(threshold, "threshold (a cosine score, or 'auto')", minimum=None)
        if inject_layers is not None:
            layer_spec(inject_layers)  # the form of the spec now; its range at fit, once the model is known
        self.k, self.n_prompts = check_int(k, "k", minimum=0), check_int(n_prompts, "n_prompts")
        self.n_valid, self.layer_stride = check_int(n_valid, "n_valid"), check_int(layer_stride, "layer_stride")
        self.top_k, self.threshold_spec = check_int(top_k, "top_k"), threshold
        self.recall = check_number(recall, "recall", maximum=1.0)
        self.strength = check_number(strength, "strength", minimum=None)
        self.inject_layers, self.template, self.seed = inject_layers, check_template(template), check_seed(seed)
        self.batch_size = check_int(batch_size, "batch_size")
        self.retriever = retriever
        self.library: torch.Tensor | None = None  # [N, L, d]
        self.entry_tasks: list[str] = []
        self.entry_queries: list[str] = []
        self.vectors: dict[str, torch.Tensor] = {}  # task -> mean library state [L, d]
        self.best_layers: dict[str, int] = {}
        self.sweeps: dict[str, dict] = {}  # task -> {"zero_shot": acc, "layers": {layer: acc}}
        self.threshold: float | None = None
        self.index: QueryIndex | None = None

    # ------------------------------------------------------------------ fitting
    def sweep_layers(self, lm: LanguageModel, task: Any, vector: torch.Tensor) -> dict:
        """Zero-shot valid accuracy (and mean target log-probability) without and with ``h + strength * v_l`` at
        each candidate layer."""
        rng = task_rng(self.seed + 1, task.name)
        items = rng.sample(list(task.valid), min(self.n_valid, len(task.valid)))
        prompts = zero_shot_texts(lm, task, items, self.template)
        targets = torch.tensor([target_first_token(lm.tokenizer, it.output, prompt=p) for it, p in zip(items, prompts)])

        def score(injection: Injection | None) -> tuple[float, float]:
            logits = next_token_logits(lm, prompts, injection, batch_size=self.batch_size)
            logprob = logits.log_softmax(-1).gather(1, targets[:, None]).mean()
            return float((logits.argmax(-1) == targets).float().mean()), float(logprob)

        layers = list(range(0, lm.num_layers, self.layer_stride))
        per_layer = {l: score(Injection(vector, self.strength, layers=[l], positions="last")) for l in layers}
        return {"zero_shot": score(None)[0], "layers": {l: acc for l, (acc, _) in per_layer.items()},
                "logprob": {l: lp for l, (_, lp) in per_layer.items()}, "n_valid": len(items)}

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec) -> ELICIT:
        """Library, best layers and retriever of `train_tasks` (names, Tasks or a list of them)."""
        tasks = resolve_tasks(train_tasks)
        states, held_out, held_keys = [], [], []
        self.entry_tasks, self.entry_queries = [], []
        for task in tasks:
            prompts = demo_prompts(lm, task, self.k, self.n_prompts, self.seed, template=self.template)
            task_states = prompt_states(lm, prompts, self.batch_size)
            states.append(task_states)
            self.entry_tasks += [task.name] * len(prompts)
            self.entry_queries += [p.query_text for p in prompts]
            self.vectors[task.name] = task_states.mean(0)
            sweep = self.sweep_layers(lm, task, self.vectors[task.name])
            self.sweeps[task.name] = sweep
            self.best_layers[task.name] = max(sweep["layers"], key=lambda l: (sweep["layers"][l], sweep["logprob"][l]))
            used = {p.query_text for p in prompts}  # held-out valid queries calibrate the threshold
            queries = dict.fromkeys(build_text(task.templates[self.template], it.input, TRAIN_PREFIX)
                                    for it in task.valid)
            spare = [q for q in queries if q not in used][:N_HELD_OUT]
            held_out += spare
            held_keys += [task.name] * len(spare)
        self.library = torch.cat(states)
        self.index = QueryIndex(self.entry_tasks, self.entry_queries, self.retriever)
        if self.threshold_spec == "auto":
            self.threshold = recall_threshold(self.index, held_out, held_keys, self.recall) if held_out else -1.0
        else:
            self.threshold = float(self.threshold_spec)
        return self

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, texts: Sequence[str]) -> tuple[list[torch.Tensor | None], list[dict], list[int]]:
        """Per query the ``[L, d]`` vector to inject (zero outside its layer) or None (fallback) and its info;
        plus the sorted layers any query injects at."""
        if self.index is None or self.library is None:
            raise RuntimeError("ELICIT is not fitted: call fit(lm, in_domain_tasks) first")
        scores, indices = self.index.top_k(texts, self.top_k)
        vectors: list[torch.Tensor | None] = []
        info: list[dict] = []
        layers_used: set[int] = set()
        for row_scores, row_idx in zip(scores, indices):
            top = float(row_scores[0])
            if top < self.threshold:
                vectors.append(None)
                info.append({"retrieved_task": None, "similarity": top, "layer": None, "fallback": True,
                             "retrieved": ""})
                continue
            chosen = [int(i) for i in row_idx]
            tasks = [self.entry_tasks[i] for i in chosen]
            layer = Counter(self.best_layers[t] for t in tasks).most_common(1)[0][0]
            v = torch.zeros_like(self.library[0])
            mean = self.library[chosen].mean(0)
            targets = [layer] if self.inject_layers is None else resolve_layers(self.inject_layers, v.shape[0])
            v[targets] = mean[layer] if self.inject_layers is None else mean[targets]
            vectors.append(v)
            counts = Counter(tasks)
            info.append({"retrieved_task": counts.most_common(1)[0][0], "similarity": top, "layer": layer,
                         "fallback": False, "retrieved": " ".join(f"{t}:{n}" for t, n in counts.most_common())})
            layers_used.update(targets)
        return vectors, info, sorted(layers_used)

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        vectors, info, layers = self.retrieve(texts)
        prompts = [lm.render(t) for t in texts]
        if all(v is None for v in vectors):
            return PreparedBatch(prompts=prompts, intervention=None, info=info)
        zero = torch.zeros_like(self.library[0])
        stacked = torch.stack([zero if v is None else v for v in vectors])
        injection = Injection(stacked, scale=self.strength, layers=layers, positions="last")
        return PreparedBatch(prompts=prompts, intervention=injection, info=info)

    def config(self) -> dict:
        return {"name": self.name, "k": self.k, "n_prompts": self.n_prompts, "n_valid": self.n_valid,
                "layer_stride": self.layer_stride, "top_k": self.top_k, "threshold": self.threshold_spec,
                "threshold_value": self.threshold, "recall": self.recall, "strength": self.strength,
                "inject_layers": self.inject_layers if self.inject_layers is None or isinstance(self.inject_layers, str)
                else list(self.inject_layers), "template": self.template, "seed": self.seed,
                "retriever": f"{self.retriever} cosine (query vs library-prompt queries)", "positions": "last"}
