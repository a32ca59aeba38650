"""ATV as a :class:`~workbench.methods.base.Method`: per query, the trained generator's vectors are injected.

At evaluation the generator reads what it read in training (``gen.generator_input``, recorded in its checkpoint): the
templated prompt text (the paper's and the official evaluation's input), i.e. the ``texts`` the evaluator passes
(template + "\\n" + prefix, before the chat template), or the official training input ``"Q: {input} \\n A: "``
built from each item's input; the large model reads ``lm.render(text)``. Vectors are computed under
``torch.no_grad`` with the generator in eval mode (dropout off).
``config()`` records the generator's weight fingerprint, so a run folder of one generator is not resumed with another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.atv.generator import ATVGenerator, check_compatible
from workbench.core.checks import check_int
from workbench.core.interventions import Injection, LayerSpec, check_positions, check_scale, layer_spec
from workbench.methods.base import Method, PreparedBatch

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel


class ATV(Method):
    """Adaptive task vectors from a trained :class:`~workbench.atv.generator.ATVGenerator`.

    ``scale``, ``layers`` and ``positions`` default to what the generator was trained with (recorded in its
    checkpoint), else the paper's λ = 1e-3, all layers, last token.
    """

    name = "atv"

    def __init__(self, generator: ATVGenerator, scale: float | None = None, layers: LayerSpec | None = None,
                 positions: str | None = None, batch_size: int = 16):
        if not isinstance(generator, ATVGenerator):
            raise ValueError(f"generator must be a wb.ATVGenerator, got {type(generator).__name__}")
        meta = generator.meta
        self.generator = generator
        self.scale = check_scale(meta.get("scale", 1e-3) if scale is None else scale)
        self.layers = meta.get("layers", "all") if layers is None else layers
        layer_spec(self.layers)  # the form of the spec now; its range once the model is known
        self.positions = check_positions(meta.get("positions", "last") if positions is None else positions)
        self.batch_size = check_int(batch_size, "batch_size (queries per pass of the generator)")

    @classmethod
    def load(cls, directory: str, lm: LanguageModel, allow_mismatch: bool = False, **kwargs: Any) -> ATV:
        """ATV from a saved generator checkpoint (``allow_mismatch``: see :meth:`ATVGenerator.load`)."""
        return cls(ATVGenerator.load(directory, lm, allow_mismatch=allow_mismatch), **kwargs)

    def vectors(self, texts: Sequence[str]) -> torch.Tensor:
        """Per-query vectors ``[B, L, d]`` (no grad, eval mode; the generator's mode is restored afterwards)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                chunks = [self.generator(list(texts[i: i + self.batch_size]))
                          for i in range(0, len(texts), self.batch_size)]
        finally:
            self.generator.train(was_training)
        return torch.cat(chunks)

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        check_compatible(self.generator.describe(), lm, "for this ATV method")
        reads = (texts if self.generator.generator_input == "prompt"
                 else self.generator.input_texts([it.input for it in items], texts))
        vectors = self.vectors(reads)
        injection = Injection(vectors, scale=self.scale, layers=self.layers, positions=self.positions)
        return PreparedBatch(prompts=[lm.render(t) for t in texts], intervention=injection)

    def config(self) -> dict:
        g = self.generator.describe()
        return {"name": self.name, "scale": self.scale, "layers": self.layers, "positions": self.positions,
                "generator_input_eval": self.generator.generator_input, "encoder": g["encoder"],
                "bottleneck": g["bottleneck"],
                "lora": g["lora"], "trainable_parameters": g["trainable_parameters"],
                "train_config": g.get("train_config"), "generator_fingerprint": self.generator.fingerprint()}
