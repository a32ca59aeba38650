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
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from workbench.core.fingerprints import check_fingerprint
from workbench.core.interventions import Intervention
from workbench.tasks.registry import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from pathlib import Path

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
    #: instead of refitting); empty for methods whose fit is cheap or saved elsewhere. Their values must be what
    #: :mod:`workbench.core.safe_state` keeps (plain Python values, tensors, numpy arrays, registered records such
    #: as ``DemoPrompt`` and ``QueryIndex``): anything else is a TypeError when the fit is saved, never a pickle.
    fitted_attributes: tuple[str, ...] = ()
    #: Those of ``fitted_attributes`` written in a file format of their own by :meth:`save_fitted_files` and read
    #: back by :meth:`load_fitted_files` (LoRA: its adapter, as peft's adapter files).
    own_format_attributes: tuple[str, ...] = ()
    #: Entries of ``config()`` that report what ``fit`` learned (e.g. LoRA's trainable-parameter count), not a setting:
    #: a saved fit is matched on the other entries, so it is found again before and after fitting alike.
    fitted_config_keys: tuple[str, ...] = ()

    #: Fingerprint of the model the last ``fit`` (or reloaded fit) was made on (:attr:`LanguageModel.fingerprint`);
    #: set by every subclass's ``fit`` (wrapped in :meth:`__init_subclass__`) and checked by :meth:`check_fitted_for`.
    fitted_for: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a subclass's own ``fit`` so that a successful fit records the model it was made on."""
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is None or getattr(fit, "_records_model", False):
            return

        @functools.wraps(fit)
        def recorded(self: "Method", lm: "LanguageModel", *args: Any, **kw: Any) -> Any:
            out = fit(self, lm, *args, **kw)
            self.fitted_for = getattr(lm, "fingerprint", None)
            return out

        recorded._records_model = True  # type: ignore[attr-defined]
        cls.fit = recorded  # type: ignore[method-assign]

    def check_fitted_for(self, lm: "LanguageModel") -> None:
        """FingerprintMismatch when what ``fit`` learned (``fitted_attributes``) was learned on another model than
        `lm` (same shape or not): a static vector or a LoRA adapter of model A says nothing about model B. Methods
        without fitted attributes, or never fitted, pass."""
        if self.fitted_attributes and self.fitted_for is not None:
            check_fingerprint(f"{self.name}: fitted on another model than {getattr(lm, 'name', lm)!r}",
                              self.fitted_for, getattr(lm, "fingerprint", None),
                              "fit it again on this model (method.fit(lm, tasks)) or use the model it was fitted on")

    def fit(self, lm: "LanguageModel", train_tasks: TaskSpec) -> "Method":
        """Learn whatever the method needs from the train splits (no-op by default).

        `train_tasks` is anything :func:`workbench.tasks.registry.resolve_tasks` accepts: a task name, a Task, a
        group name or a list mixing names and Tasks (duplicates removed, order kept).
        """
        resolve_tasks(train_tasks)
        return self

    def save_fitted_files(self, folder: Path) -> list[str]:
        """Write ``own_format_attributes`` into `folder`, each file atomically; return the files' paths relative to
        `folder` (``/``-separated). Only called for methods that have such attributes."""
        raise NotImplementedError(f"{type(self).__name__} lists own_format_attributes but does not save them")

    def load_fitted_files(self, folder: Path, advice: str) -> dict[str, Any]:
        """``{name: value}`` of ``own_format_attributes`` read back from what :meth:`save_fitted_files` wrote (the
        files' hashes are checked before); a file that cannot be read raises
        :class:`~workbench.core.files.FileFormatError` naming it and ending with `advice`. Nothing is unpickled."""
        raise NotImplementedError(f"{type(self).__name__} lists own_format_attributes but does not load them")

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
