"""Interventions: edits of the large model's activations inside an nnsight trace, behind one protocol.

Contents:

* Layer / position / scale specs: :func:`thirds`, :func:`layer_spec` (checked without a model),
  :func:`resolve_layers` (checked against the model's real range), :func:`check_positions`, :func:`position_mask`,
  :func:`check_scale`.
* :class:`Intervention`, the protocol :mod:`workbench.core.inference` (and the training losses) rely on:
  ``requires_grad``, ``check(lm, n_prompts)``, ``apply(lm, rows, attention_mask)``, ``describe()``;
  :func:`as_intervention` rejects an object missing a member, naming it.
* The four interventions: :class:`Injection` (additive ``h_l <- h_l + scale * v_l`` at decoder-block outputs),
  :class:`MaskedInjection` (the same at an explicit [B, T] mask), :class:`Replacement` (``h_l <- v_l``) and
  :class:`ContextInjection` (I2CL's ``out <- b * out + a * cv`` on attention and MLP outputs), with the helpers
  :func:`sublayers` and :func:`first_output`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from workbench.core.architectures import architecture_of
from workbench.core.placement import to_block

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

LayerSpec = Union[str, range, Sequence[int], np.ndarray]
LAYER_PRESETS = ("all", "bottom", "middle", "top")
POSITIONS = ("last", "all")
MODULES = ("attn", "mlp")


# --------------------------------------------------------------------------------------------- specs
def thirds(num_layers: int) -> tuple[int, int]:
    """Boundaries (b1, b2) of the bottom/middle/top thirds: bottom = [0, b1), middle = [b1, b2), top = [b2, L).

    b1 = round(L/3), b2 = round(2L/3) with Python's round (half to even), so for L = 30 the thirds are 10/10/10,
    for L = 32 they are 11/10/11 (layers 0–10, 11–20, 21–31), for L = 4 they are 1/2/1.
    """
    return round(num_layers / 3), round(2 * num_layers / 3)


def _bad_spec(spec: Any) -> ValueError:
    return ValueError(f"unknown layer spec {spec!r}; use one of {LAYER_PRESETS}, a range or a list of ints")


def layer_spec(spec: LayerSpec) -> str | list[int]:
    """`spec` checked without a model: a preset name as is, else its indices as a sorted list of Python ints.

    Accepts a range, a list / tuple / 1-D numpy array of ints (numpy integers included); refuses bools, floats,
    an empty list and repeated indices. The range of the indices is checked by :func:`resolve_layers`.
    """
    if isinstance(spec, str):
        if spec not in LAYER_PRESETS:
            raise _bad_spec(spec)
        return spec
    if isinstance(spec, np.ndarray):
        if spec.ndim != 1:
            raise ValueError(f"a layer array must be 1-D, got shape {spec.shape}")
        spec = list(spec)
    if not isinstance(spec, (range, list, tuple)):
        raise _bad_spec(spec)
    items = list(spec)
    bad = [i for i in items if isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral)]
    if bad or not items:
        raise ValueError(f"layer list must be non-empty ints, got {spec!r}")
    indices = [int(i) for i in items]
    if len(set(indices)) != len(indices):
        raise ValueError(f"layer list {indices} repeats an index")
    return sorted(indices)


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Sorted layer indices for `spec` ("all", "bottom", "middle", "top", a range, or a list of ints) on a model
    with `num_layers` blocks; an index outside ``0..num_layers-1`` (negative ones too) is a ValueError naming it
    and the model's range."""
    spec = layer_spec(spec)
    if isinstance(spec, str):
        b1, b2 = thirds(num_layers)
        table = {"all": range(num_layers), "bottom": range(0, b1), "middle": range(b1, b2),
                 "top": range(b2, num_layers)}
        return list(table[spec])
    out_of_range = [i for i in spec if not 0 <= i < num_layers]
    if out_of_range:
        hint = " (negative indices do not count from the end)" if out_of_range[0] < 0 else ""
        raise ValueError(f"layer index {out_of_range[0]} out of range: this model has layers 0..{num_layers - 1}{hint}")
    return spec


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; use 'last' (the paper) "
                         "or 'all' (official code, transformers<=4.53)")
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


def _check_vectors(vectors: Any, dims: tuple[int, ...], shapes: str) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in dims:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must be a tensor {shapes}, got {shape}")
    if not torch.isfinite(vectors.detach()).all():
        raise ValueError("vectors contain NaN or inf")
    return vectors


def _layers_for_record(layers: str | list[int]) -> str | list[int]:
    return layers if isinstance(layers, str) else list(layers)


# --------------------------------------------------------------------------------------------- the protocol
@runtime_checkable
class Intervention(Protocol):
    """Something that edits activations inside an nnsight trace of ``lm``; everything inference uses.

    * ``requires_grad``: whether the forward pass must keep the graph (its tensors require grad).
    * ``check(lm, n_prompts)``: ValueError, naming what is wrong, when it does not fit `lm` or `n_prompts` prompts.
    * ``apply(lm, rows, attention_mask)``: called inside ``lm.nn.trace(...)`` for the rows ``rows`` of the prepared
      batch, with the left-padded ``attention_mask`` [b, T] of that sub-batch; it must touch modules in forward order.
    * ``describe()``: a JSON-able dict of what it does (recorded with results).
    * ``positions``: which prompt positions it edits: ``"last"`` (only the last prompt token: shared-prefix
      evaluation may reuse the keys and values of everything before it), ``"all"`` or ``"mask"`` (explicit).
    """

    positions: str

    @property
    def requires_grad(self) -> bool: ...

    def check(self, lm: LanguageModel, n_prompts: int) -> None: ...

    def apply(self, lm: LanguageModel, rows: slice, attention_mask: torch.Tensor) -> None: ...

    def describe(self) -> dict: ...


INTERVENTION_MEMBERS = ("requires_grad", "check", "apply", "describe", "positions")


def as_intervention(obj: Any, what: str = "injection") -> Intervention:
    """`obj` if it implements every member of :class:`Intervention`, else a ValueError naming the missing ones."""
    missing = [m for m in INTERVENTION_MEMBERS if not hasattr(obj, m)]
    missing += [m for m in ("check", "apply", "describe") if m not in missing and not callable(getattr(obj, m))]
    if missing:
        raise ValueError(f"{what} must be an Intervention (wb.Injection, MaskedInjection, Replacement or "
                         f"ContextInjection); {type(obj).__name__} lacks {', '.join(missing)}")
    return obj


# --------------------------------------------------------------------------------------------- additive
class Injection:
    """Vectors ``[L, d]`` (shared by the batch) or ``[B, L, d]`` (one per prompt), scaled and added at `layers`.

    positions: ``"last"`` edits the last real prompt token of each row (the paper); ``"all"`` edits every real,
    non-pad token (what the official code does under transformers <= 4.53).
    """

    def __init__(self, vectors: torch.Tensor, scale: float = 1e-3, layers: LayerSpec = "all", positions: str = "last"):
        self.vectors = _check_vectors(vectors, (2, 3), "[L, d] or [B, L, d]")
        self.scale = check_scale(scale)
        self.layers = layer_spec(layers)  # the range is checked against the model in check()
        self.positions = check_positions(positions)

    @property
    def batched(self) -> bool:
        return self.vectors.dim() == 3

    @property
    def requires_grad(self) -> bool:
        return bool(self.vectors.requires_grad)

    def check(self, lm: LanguageModel, n_prompts: int) -> None:
        """ValueError unless the vectors fit the model ([L, d]) and the prompts (B), and the layers exist."""
        L, d = lm.num_layers, lm.hidden_size
        if tuple(self.vectors.shape[-2:]) != (L, d):
            raise ValueError(
                f"vectors have shape {tuple(self.vectors.shape)}, but {lm.name} needs [L, d] = [{L}, {d}] "
                f"or [B, {L}, {d}]"
            )
        if self.batched and self.vectors.shape[0] != n_prompts:
            raise ValueError(f"vectors are for B={self.vectors.shape[0]} prompts but {n_prompts} prompts were given")
        resolve_layers(self.layers, L)

    def deltas(self, rows: slice, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``scale * v`` for the rows of one sub-batch: [L, d] or [b, L, d]."""
        v = self.vectors[rows] if self.batched else self.vectors
        return (self.scale * v).to(device=device, dtype=dtype)

    def position_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[b, T, 1] mask of the positions edited (see :func:`position_mask`)."""
        return position_mask(attention_mask, self.positions, dtype)

    def apply(self, lm: LanguageModel, rows: slice, attention_mask: torch.Tensor) -> None:
        """Edit the decoder-block outputs inside an nnsight trace of `lm` (blocks touched in forward order); each
        block's addition goes to that block's device (a ``device_map`` may spread the blocks over several)."""
        deltas = self.deltas(rows, lm.dtype, lm.device)
        mask = self.position_mask(attention_mask, lm.dtype)
        for layer in resolve_layers(self.layers, lm.num_layers):
            block = lm.nn_layer(layer)
            delta = deltas[..., layer, :]
            delta = delta[:, None, :] if delta.dim() == 2 else delta
            out = block.output
            block.output = out + to_block(mask * delta, out)

    def describe(self) -> dict:
        return {"kind": "additive", "scale": self.scale, "layers": _layers_for_record(self.layers),
                "positions": self.positions, "vectors_shape": list(self.vectors.shape)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={tuple(self.vectors.shape)}, scale={self.scale}, layers={self.layers!r}, "
                f"positions={self.positions!r})")


class MaskedInjection(Injection):
    """An :class:`Injection` whose edited positions are an explicit [B, T] mask (e.g. the last *prompt* token of
    a prompt + answer sequence, or the first token of a suffix pass)."""

    def __init__(self, base: Injection, mask: torch.Tensor):
        super().__init__(base.vectors, base.scale, base.layers, base.positions)
        self.positions = "mask"  # whatever `mask` says: not only the last prompt token
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise ValueError(f"mask must be a [B, T] tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
        self.mask = mask

    def check(self, lm: LanguageModel, n_prompts: int) -> None:
        super().check(lm, n_prompts)
        if self.mask.shape[0] != n_prompts:
            raise ValueError(f"mask is for {self.mask.shape[0]} rows but {n_prompts} prompts were given")

    def position_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mask.to(device=attention_mask.device, dtype=dtype).unsqueeze(-1)

    def describe(self) -> dict:
        return {**super().describe(), "positions": "mask"}


def stackable(interventions: Sequence[Any]) -> bool:
    """Whether :func:`stack_injections` can join these (each None or a plain last-token :class:`Injection`)."""
    return all(x is None or (type(x) is Injection and x.positions == "last") for x in interventions)


def stack_injections(parts: Sequence[tuple[Injection | None, int]], num_layers: int) -> Injection | None:
    """One last-token Injection for the prompts of several (intervention, number of prompts) parts, in order: each
    row gets its part's ``scale * v``, zero at the layers its part does not edit (adding zero changes nothing, so
    every row is edited exactly as alone); None when no part edits. Lets one forward pass run several variants."""
    if not stackable([x for x, _ in parts]):
        raise ValueError("stack_injections joins only None and last-token Injections")
    if all(x is None for x, _ in parts):
        return None
    ref = next(x for x, _ in parts if x is not None).vectors
    rows, layers = [], set()
    for x, n in parts:
        v = torch.zeros((n, *ref.shape[-2:]), dtype=torch.float32)
        if x is not None:
            used = resolve_layers(x.layers, num_layers)
            layers.update(used)
            v[:, used] = (x.scale * (x.vectors if x.batched else x.vectors.expand(n, -1, -1))[:, used]).float()
        rows.append(v)
    return Injection(torch.cat(rows), scale=1.0, layers=sorted(layers), positions="last")


# --------------------------------------------------------------------------------------------- replacement
class Replacement:
    """``h_l <- v_l`` at the last prompt token of the blocks in `layers` (vectors ``[L, d]``)."""

    positions = "last"  #: what it edits (shared-prefix evaluation needs "last")

    def __init__(self, vectors: torch.Tensor, layers: LayerSpec = "all"):
        self.vectors = _check_vectors(vectors, (2,), "[L, d]")
        self.layers = layer_spec(layers)

    @property
    def requires_grad(self) -> bool:
        return bool(self.vectors.requires_grad)

    def check(self, lm: LanguageModel, n_prompts: int) -> None:
        if tuple(self.vectors.shape) != (lm.num_layers, lm.hidden_size):
            raise ValueError(f"vectors {tuple(self.vectors.shape)} do not match "
                             f"[L, d] = [{lm.num_layers}, {lm.hidden_size}]")
        resolve_layers(self.layers, lm.num_layers)

    def apply(self, lm: LanguageModel, rows: slice, attention_mask: torch.Tensor) -> None:
        v = self.vectors.to(device=lm.device, dtype=lm.dtype)
        mask = position_mask(attention_mask.to(lm.device), "last", lm.dtype)
        for layer in resolve_layers(self.layers, lm.num_layers):
            block = lm.nn_layer(layer)
            out = block.output
            block.output = out + to_block(mask, out) * (to_block(v[layer], out) - out)

    def describe(self) -> dict:
        return {"kind": "replace", "layers": _layers_for_record(self.layers), "positions": "last",
                "vectors_shape": list(self.vectors.shape)}


# --------------------------------------------------------------------------------------------- I2CL context
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


class ContextInjection:
    """``out <- b * out + a * cv`` on the attention and MLP outputs of every layer.

    vectors: ``[L, 2, d]`` (shared by the batch) or ``[B, L, 2, d]`` (one per prompt); coefs: ``[L, 2, 2]`` with
    ``coefs[..., 0] = a`` and ``coefs[..., 1] = b``; gradients reach `coefs` when it requires grad.
    """

    def __init__(self, vectors: torch.Tensor, coefs: torch.Tensor, positions: str = "all", noise: float = 0.0):
        _check_vectors(vectors, (3, 4), "[L, 2, d] or [B, L, 2, d]")
        if vectors.shape[-2] != 2:
            raise ValueError(f"context vectors must be [L, 2, d] or [B, L, 2, d], got {tuple(vectors.shape)}")
        if not isinstance(coefs, torch.Tensor) or tuple(coefs.shape) != (vectors.shape[-3], 2, 2):
            shape = tuple(coefs.shape) if isinstance(coefs, torch.Tensor) else type(coefs).__name__
            raise ValueError(f"coefs must be [L, 2, 2] = [{vectors.shape[-3]}, 2, 2], got {shape}")
        self.vectors, self.coefs, self.positions, self.noise = vectors, coefs, check_positions(positions), noise

    @property
    def requires_grad(self) -> bool:
        return bool(self.coefs.requires_grad or self.vectors.requires_grad)

    def check(self, lm: LanguageModel, n_prompts: int) -> None:
        if tuple(self.vectors.shape[-3:]) != (lm.num_layers, 2, lm.hidden_size):
            raise ValueError(f"context vectors {tuple(self.vectors.shape)} do not match "
                             f"L={lm.num_layers}, d={lm.hidden_size}")
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
                c = to_block(coefs[layer, j], h)  # on this sublayer's device (a device_map may spread them)
                a, b = c[0], c[1]
                new = b * h + a * to_block(cv[:, None, layer, j, :], h)
                if self.noise:
                    new = new + torch.randn_like(new) * new.detach().norm(dim=-1, keepdim=True) * self.noise
                new = h + to_block(mask, h) * (new - h)
                module.output = (new, *out[1:]) if isinstance(out, tuple) else new

    def body_edit(self) -> tuple[Hashable, ContextInjection] | None:
        """(key, the same edit for one row) when this edits every real token identically for every row (positions
        "all", no noise, no gradients, one vector for the batch): then prompt bodies computed under that edit can be
        shared across prompts (shared-prefix evaluation). The key is the content of vectors and coefficients."""
        if self.positions != "all" or self.noise or self.requires_grad:
            return None
        cv = self.vectors if self.vectors.dim() == 3 else self.vectors[0]
        if self.vectors.dim() == 4 and not bool((self.vectors == cv).all()):
            return None
        digest = hashlib.sha1()
        for t in (cv, self.coefs):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return ("i2cl_linear", digest.hexdigest()), ContextInjection(cv, self.coefs, "all")

    def row_edits(self) -> list[tuple[Hashable, ContextInjection]] | None:
        """Per prompt, :meth:`body_edit` of its own vectors when each prompt has its own (I2CL on an unseen task: the
        nearest task's vectors): prompts making the same edit can then share bodies. None otherwise."""
        if self.vectors.dim() != 4:
            return None
        edits = [ContextInjection(v, self.coefs, self.positions, self.noise).body_edit() for v in self.vectors]
        return None if any(e is None for e in edits) else edits  # type: ignore[return-value]

    def describe(self) -> dict:
        return {"kind": "i2cl_linear", "modules": list(MODULES), "positions": self.positions,
                "vectors_shape": list(self.vectors.shape), "coefs_shape": list(self.coefs.shape)}
