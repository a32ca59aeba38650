"""Additive steering: ``h_l <- h_l + scale * v_l`` at the output of decoder block l, through nnsight.

An :class:`Injection` holds the vectors and where they go (layers, positions); the forward functions in
:mod:`workbench.core.inference` call :meth:`Injection.apply` inside an nnsight trace.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol, Sequence, Union

import torch

from workbench.core.architectures import architecture_of

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

LayerSpec = Union[str, range, Sequence[int]]
LAYER_PRESETS = ("all", "bottom", "middle", "top")
POSITIONS = ("last", "all")


def thirds(num_layers: int) -> tuple[int, int]:
    """Boundaries (b1, b2) of the bottom/middle/top thirds: bottom = [0, b1), middle = [b1, b2), top = [b2, L).

    b1 = round(L/3), b2 = round(2L/3) with Python's round (half to even), so for L = 30 the thirds are 10/10/10,
    for L = 32 they are 11/10/11 (layers 0–10, 11–20, 21–31), for L = 4 they are 1/2/1.
    """
    return round(num_layers / 3), round(2 * num_layers / 3)


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Sorted layer indices for `spec`: "all", "bottom", "middle", "top", a range, or a list of ints."""
    if isinstance(spec, str):
        b1, b2 = thirds(num_layers)
        table = {"all": range(num_layers), "bottom": range(0, b1), "middle": range(b1, b2), "top": range(b2, num_layers)}
        if spec not in table:
            raise ValueError(f"unknown layer spec {spec!r}; use one of {LAYER_PRESETS}, a range or a list of ints")
        return list(table[spec])
    if isinstance(spec, (range, list, tuple)):
        indices = list(spec)
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)]
        if bad or not indices:
            raise ValueError(f"layer list must be non-empty ints, got {spec!r}")
        out_of_range = [i for i in indices if not 0 <= i < num_layers]
        if out_of_range:
            raise ValueError(f"layer index {out_of_range[0]} out of range: this model has layers 0..{num_layers - 1}")
        if len(set(indices)) != len(indices):
            raise ValueError(f"layer list {spec!r} repeats an index")
        return sorted(indices)
    raise ValueError(f"unknown layer spec {spec!r}; use one of {LAYER_PRESETS}, a range or a list of ints")


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; use 'last' (the paper) or 'all' (official code, transformers<=4.53)")
    return positions


def position_mask(attention_mask: torch.Tensor, positions: str, dtype: torch.dtype) -> torch.Tensor:
    """[b, T, 1] mask of the edited positions: "last" is column T-1 (prompts are left padded), "all" the real tokens."""
    if positions == "all":
        return attention_mask.to(dtype).unsqueeze(-1)
    mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    mask[:, -1] = 1
    return mask.unsqueeze(-1)


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


class Injection:
    """Vectors ``[L, d]`` (shared by the batch) or ``[B, L, d]`` (one per prompt), scaled and added at `layers`.

    positions: ``"last"`` edits the last real prompt token of each row (the paper); ``"all"`` edits every real,
    non-pad token (what the official code does under transformers <= 4.53).
    """

    def __init__(self, vectors: torch.Tensor, scale: float = 1e-3, layers: LayerSpec = "all", positions: str = "last"):
        if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (2, 3):
            shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise ValueError(f"vectors must be a tensor [L, d] or [B, L, d], got {shape}")
        if not torch.isfinite(vectors.detach()).all():
            raise ValueError("vectors contain NaN or inf")
        self.vectors = vectors
        self.scale = check_scale(scale)
        self.layers = layers
        self.positions = check_positions(positions)
        if isinstance(layers, str):
            if layers not in LAYER_PRESETS:
                raise ValueError(f"unknown layer spec {layers!r}; use one of {LAYER_PRESETS}, a range or a list of ints")
        else:
            resolve_layers(layers, 1 << 30)  # type and duplicate checks now; range checked against the model

    @property
    def batched(self) -> bool:
        return self.vectors.dim() == 3

    def check(self, lm: "LanguageModel", n_prompts: int) -> list[int]:
        """Validate against the model and the number of prompts; returns the resolved layer indices."""
        L, d = lm.num_layers, lm.hidden_size
        if tuple(self.vectors.shape[-2:]) != (L, d):
            raise ValueError(
                f"vectors have shape {tuple(self.vectors.shape)}, but {lm.name} needs [L, d] = [{L}, {d}] "
                f"or [B, {L}, {d}]"
            )
        if self.batched and self.vectors.shape[0] != n_prompts:
            raise ValueError(f"vectors are for B={self.vectors.shape[0]} prompts but {n_prompts} prompts were given")
        return resolve_layers(self.layers, L)

    def deltas(self, rows: slice, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``scale * v`` for the rows of one sub-batch: [L, d] or [b, L, d]."""
        v = self.vectors[rows] if self.batched else self.vectors
        return (self.scale * v).to(device=device, dtype=dtype)

    def position_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[b, T, 1] mask of the positions edited (see :func:`position_mask`)."""
        return position_mask(attention_mask, self.positions, dtype)

    def apply(self, lm: "LanguageModel", rows: slice, attention_mask: torch.Tensor) -> None:
        """Edit the decoder-block outputs inside an nnsight trace of `lm` (blocks touched in forward order)."""
        deltas = self.deltas(rows, lm.dtype, lm.device)
        mask = self.position_mask(attention_mask, lm.dtype)
        for layer in resolve_layers(self.layers, lm.num_layers):
            block = lm.nn_layer(layer)
            delta = deltas[..., layer, :]
            delta = delta[:, None, :] if delta.dim() == 2 else delta
            block.output = block.output + mask * delta

    def describe(self) -> dict:
        return {
            "kind": "additive",
            "scale": self.scale,
            "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
            "positions": self.positions,
            "vectors_shape": list(self.vectors.shape),
        }

    def __repr__(self) -> str:
        return f"Injection(shape={tuple(self.vectors.shape)}, scale={self.scale}, layers={self.layers!r}, positions={self.positions!r})"


class Intervention(Protocol):
    """Something that edits activations inside an nnsight trace of ``lm``.

    ``apply`` is called inside ``lm.nn.trace(...)`` for the rows ``rows`` of the prepared batch, with the
    left-padded ``attention_mask`` [b, T] of that sub-batch. It must touch modules in forward order.
    """

    def apply(self, lm: "LanguageModel", rows: slice, attention_mask: Any) -> None: ...

    def describe(self) -> dict: ...


# --------------------------------------------------------------------------------------------- injection + loss
class MaskedInjection(Injection):
    """An :class:`Injection` whose edited positions are an explicit [B, T] mask (e.g. the last *prompt* token of
    a prompt + answer sequence, or the first token of a suffix pass)."""

    def __init__(self, base: Injection, mask: torch.Tensor):
        super().__init__(base.vectors, base.scale, base.layers, base.positions)
        self.mask = mask

    def position_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mask.to(device=attention_mask.device, dtype=dtype).unsqueeze(-1)


class Replacement:
    """``h_l <- v_l`` at the last prompt token of the blocks in `layers` (an :class:`Intervention`)."""

    def __init__(self, vectors: torch.Tensor, layers: LayerSpec = "all"):
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be [L, d], got {tuple(vectors.shape)}")
        self.vectors = vectors
        self.layers = layers

    def check(self, lm: LanguageModel, n_prompts: int) -> list[int]:
        if tuple(self.vectors.shape) != (lm.num_layers, lm.hidden_size):
            raise ValueError(f"vectors {tuple(self.vectors.shape)} do not match [L, d] = [{lm.num_layers}, {lm.hidden_size}]")
        return resolve_layers(self.layers, lm.num_layers)

    def apply(self, lm: LanguageModel, rows: slice, attention_mask: torch.Tensor) -> None:
        v = self.vectors.to(device=lm.device, dtype=lm.dtype)
        mask = position_mask(attention_mask.to(lm.device), "last", lm.dtype)
        for layer in resolve_layers(self.layers, lm.num_layers):
            block = lm.nn_layer(layer)
            out = block.output
            block.output = out + mask * (v[layer] - out)

    def describe(self) -> dict:
        return {"kind": "replace", "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
                "positions": "last", "vectors_shape": list(self.vectors.shape)}


def sublayers(lm: LanguageModel, layer: int) -> tuple[Any, Any]:
    """(attention, MLP) nnsight envoys of decoder block `layer`.

    Inside a trace, ``attention.output`` is a tuple ``(attn_output, weights)`` on every supported architecture and
    ``mlp.output`` a tensor ``[B, T, d]`` (checked on the tiny models, nnsight 0.8 + transformers 5).
    """
    arch = architecture_of(lm.hf)
    block = lm.layers[layer]
    if not hasattr(block, arch.attention) or not hasattr(block, arch.mlp):
        raise ValueError(f"{type(block).__name__} has no {arch.attention!r} / {arch.mlp!r} submodule "
                         f"(see workbench.core.architectures)")
    envoy = lm.nn_layer(layer)
    return getattr(envoy, arch.attention), getattr(envoy, arch.mlp)


def first_output(value: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (first element of a tuple output)."""
    return value[0] if isinstance(value, tuple) else value


MODULES = ("attn", "mlp")


class ContextInjection:
    """``out <- b * out + a * cv`` on the attention and MLP outputs of every layer (an :class:`Intervention`).

    vectors: ``[L, 2, d]`` (shared by the batch) or ``[B, L, 2, d]`` (one per prompt); coefs: ``[L, 2, 2]`` with
    ``coefs[..., 0] = a`` and ``coefs[..., 1] = b``; gradients reach `coefs` when it requires grad.
    """

    def __init__(self, vectors: torch.Tensor, coefs: torch.Tensor, positions: str = "all", noise: float = 0.0):
        if vectors.dim() not in (3, 4) or vectors.shape[-2] != 2:
            raise ValueError(f"context vectors must be [L, 2, d] or [B, L, 2, d], got {tuple(vectors.shape)}")
        if tuple(coefs.shape) != (vectors.shape[-3], 2, 2):
            raise ValueError(f"coefs must be [L, 2, 2] = [{vectors.shape[-3]}, 2, 2], got {tuple(coefs.shape)}")
        self.vectors, self.coefs, self.positions, self.noise = vectors, coefs, check_positions(positions), noise

    @property
    def requires_grad(self) -> bool:
        return bool(self.coefs.requires_grad)

    def check(self, lm: LanguageModel, n_prompts: int) -> None:
        if tuple(self.vectors.shape[-3:]) != (lm.num_layers, 2, lm.hidden_size):
            raise ValueError(f"context vectors {tuple(self.vectors.shape)} do not match L={lm.num_layers}, d={lm.hidden_size}")
        if self.vectors.dim() == 4 and self.vectors.shape[0] != n_prompts:
            raise ValueError(f"context vectors are for {self.vectors.shape[0]} prompts, got {n_prompts}")

    def apply(self, lm: LanguageModel, rows: slice, attention_mask: torch.Tensor) -> None:
        cv = (self.vectors[rows] if self.vectors.dim() == 4 else self.vectors[None]).to(lm.device, lm.dtype)
        coefs = self.coefs.to(lm.device)
        mask = position_mask(attention_mask.to(lm.device), self.positions, lm.dtype)
        for layer in range(lm.num_layers):
            for j, module in enumerate(sublayers(lm, layer)):
                out = module.output
                h = first_output(out)
                a, b = coefs[layer, j, 0].to(h.dtype), coefs[layer, j, 1].to(h.dtype)
                new = b * h + a * cv[:, None, layer, j, :]
                if self.noise:
                    new = new + torch.randn_like(new) * new.detach().norm(dim=-1, keepdim=True) * self.noise
                new = h + mask * (new - h)
                module.output = (new, *out[1:]) if isinstance(out, tuple) else new

    def describe(self) -> dict:
        return {"kind": "i2cl_linear", "modules": list(MODULES), "positions": self.positions,
                "vectors_shape": list(self.vectors.shape), "coefs_shape": list(self.coefs.shape)}
