"""The one interface every approach (prompting baselines, vector baselines, LoRA, ATV) implements.

`wb.evaluate` and the notebooks only talk to this interface:

1. ``method.fit(lm, train_tasks)`` once (a no-op for prompt methods); ``train_tasks`` is a task name, a Task or a
   list mixing both (:func:`workbench.tasks.registry.resolve_tasks`);
2. per batch of test items, ``method.prepare(lm, task, items, texts, seed)`` returns a :class:`PreparedBatch`:
   the final strings the large model reads, an optional intervention applied during the forward pass, and
   optional per-row info (e.g. dropped demonstrations, which task ELICIT retrieved);
3. everything runs inside ``with method.active(lm):`` (LoRA attaches its adapter there).

``texts`` are the templated questions with their answer prefix (``template.format(input=...) + "\\n" + prefix``),
before any chat template; ``lm.render(text)`` turns one into what the model reads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from workbench.core.interventions import Intervention
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


@dataclass
class PreparedBatch:
    """What a method hands to the evaluator for one batch of items."""

    prompts: list[str]
    intervention: Intervention | None = None
    info: list[dict] = field(default_factory=list)


class Method:
    """Base class: zero-shot behaviour; subclasses override what they change."""

    name: str = "method"
    #: Whether the large model keeps its frozen weights while the method is active (LoRA: False). Then the keys and
    #: values of a prompt body are the same for this method as for any other (shared-prefix evaluation).
    shares_model_weights: bool = True
    #: Whether ``prepare``'s prompts are the rendered queries alone (no demonstrations), the texts every such method
    #: reads: shared-prefix evaluation of several methods then computes each prompt but its last token once for all.
    reads_plain_queries: bool = True
    #: The attributes ``fit`` sets that are worth saving (:mod:`workbench.methods.fitted`: a study reloads them
    #: instead of refitting); empty for methods whose fit is cheap or saved elsewhere.
    fitted_attributes: tuple[str, ...] = ()
    #: Entries of ``config()`` that report what ``fit`` learned (e.g. LoRA's trainable-parameter count), not a setting:
    #: a saved fit is matched on the other entries, so it is found again before and after fitting alike.
    fitted_config_keys: tuple[str, ...] = ()

    def fit(self, lm: "LanguageModel", train_tasks: TaskSpec) -> "Method":
        """Learn whatever the method needs from the train splits (no-op by default).

        `train_tasks` is anything :func:`workbench.tasks.registry.resolve_tasks` accepts: a task name, a Task, a
        group name or a list mixing names and Tasks (duplicates removed, order kept).
        """
        resolve_tasks(train_tasks)
        return self

    def prepare(
        self, lm: "LanguageModel", task: Any, items: Sequence[Any], texts: Sequence[str], seed: int = 42
    ) -> PreparedBatch:
        """Build the batch the large model reads for these test items (default: the plain rendered prompts).

        ``seed`` is the evaluation seed (methods that sample, e.g. few-shot demonstrations, derive their RNG from it).
        """
        return PreparedBatch(prompts=[lm.render(t) for t in texts])

    @contextlib.contextmanager
    def active(self, lm: "LanguageModel") -> Iterator[None]:
        """Context in which the method's forward passes run (LoRA attaches its adapter here)."""
        yield

    def config(self) -> dict:
        """Every setting needed to reproduce this method; recorded next to results."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"
