"""StaticVectors: a baseline that injects vectors made elsewhere, evaluated on the same items as every other method.

``StaticVectors(source, scale=None, layers=None, positions=None)``: `source` is a vector file (a repeng / llama.cpp
control-vector ``.gguf``, a ``wb.save_vectors`` ``.safetensors``, an lm-eval ``.pt``; read by
:func:`workbench.core.vector_files.load_vectors`, so a bad file fails here, before any model runs), a tensor
``[L, d]`` or :class:`~workbench.core.vector_files.SteeringVectors`. At test time it adds ``scale * v_l`` at `layers`
and `positions` through a :class:`~workbench.Injection`, as static TV does with its own vectors. Defaults come from
the file: its recorded λ (lm-eval: its coefficient; else 1), the layers it steers, and its positions (``"all"`` for
GGUF and lm-eval files, which their consumers apply at every position; a safetensors record's own, else "all").

Per-query vectors ``[n, L, d]`` (ATV vectors of given queries) are looked up by the query text recorded with them;
a text without a vector is a ValueError naming it. Against the model (at ``fit`` or the first ``prepare``): another
hidden size, layer count or a layer beyond its blocks is a ValueError naming the file, another model of the same
shape (a recorded fingerprint) a FingerprintMismatch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.core.fingerprints import tensors_fingerprint
from workbench.core.interventions import Injection, LayerSpec, check_positions, check_scale, layer_spec
from workbench.core.vector_files import SteeringVectors, check_vectors_for, load_vectors
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.registry import TaskSpec

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


def _from_tensor(vectors: torch.Tensor, what: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (2, 3):
        raise ValueError(f"{what} must be [L, d] (or [n, L, d] with queries), got {getattr(vectors, 'shape', vectors)}")
    return vectors.detach().to("cpu", torch.float32), {"source": what, "layers": list(range(vectors.shape[-2]))}


class StaticVectors(Method):
    """Vectors made elsewhere, injected as they are (see the module docstring)."""

    name = "static-vectors"

    def __init__(self, source: str | os.PathLike | torch.Tensor | SteeringVectors, scale: float | None = None,
                 layers: LayerSpec | None = None, positions: str | None = None, format: str | None = None,
                 allow_mismatch: bool = False):
        if isinstance(source, SteeringVectors):
            vectors, meta = _from_tensor(source.vectors, "SteeringVectors")
            meta = {**source.metadata, **meta, "scale": source.scale, "positions": source.positions,
                    "layers": source.layers}
        elif isinstance(source, torch.Tensor):
            vectors, meta = _from_tensor(source, "tensor")
        elif isinstance(source, (str, os.PathLike)):
            vectors, meta = load_vectors(source, format)
        else:
            raise ValueError(f"source must be a vector file path, a tensor or SteeringVectors, got "
                             f"{type(source).__name__}")
        self.vectors, self.metadata, self.allow_mismatch = vectors, meta, bool(allow_mismatch)
        self.source = str(meta.get("source"))
        self.scale = check_scale(meta.get("scale", 1.0) if scale is None else scale)
        self.layers = layer_spec(meta.get("layers", "all") if layers is None else layers)
        self.positions = check_positions(positions or meta.get("positions") or "all")
        self._rows: dict[str, int] | None = None
        if vectors.dim() == 3:
            queries = meta.get("queries")
            if not isinstance(queries, list) or len(queries) != vectors.shape[0]:
                raise ValueError(f"{self.source}: per-query vectors {tuple(vectors.shape)} need their queries "
                                 "recorded (save them with queries=[...] / exports.atv_query_vectors)")
            self._rows = {str(q): i for i, q in enumerate(queries)}
        self._fitted: tuple[str | None, torch.Tensor] | None = None

    def for_model(self, lm: LanguageModel) -> torch.Tensor:
        """The vectors checked against `lm` (once per model), padded to its layers."""
        key = getattr(lm, "fingerprint", None)
        if self._fitted is None or self._fitted[0] != key:
            self._fitted = (key, check_vectors_for(self.vectors, self.metadata, lm, self.allow_mismatch))
        return self._fitted[1]

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec = ()) -> StaticVectors:
        """Nothing to learn: checks the vectors against `lm` (sizes, layers, recorded fingerprint)."""
        self.for_model(lm)
        return self

    def _batch_vectors(self, vectors: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        if self._rows is None:
            return vectors
        missing = [t for t in texts if t not in self._rows]
        if missing:
            raise ValueError(f"{self.source}: no vector for the query {missing[0]!r} ({len(self._rows)} queries have "
                             "one): per-query vectors evaluate only the queries they were made for")
        return vectors[[self._rows[t] for t in texts]]

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        vectors = self._batch_vectors(self.for_model(lm), texts)
        injection = Injection(vectors, scale=self.scale, layers=self.layers, positions=self.positions)
        return PreparedBatch(prompts=[lm.render(t) for t in texts], intervention=injection)

    def config(self) -> dict:
        model = self.metadata.get("model")
        return {"name": self.name, "source": self.source, "format": self.metadata.get("format"),
                "vectors_fingerprint": tensors_fingerprint([("vectors", self.vectors)]),
                "shape": list(self.vectors.shape), "scale": self.scale,
                "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
                "positions": self.positions, "made_by": self.metadata.get("method"),
                "made_on": model.get("name") if isinstance(model, dict) else self.metadata.get("model_hint")}
