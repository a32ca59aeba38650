"""Steering vectors in and out of the workbench: ``wb.save_vectors`` in three formats, ``wb.load_vectors`` back.

``save_vectors(vectors, path, format=None, lm=None, scale=None, **metadata)`` takes a tensor ``[L, d]`` (or
``[n, L, d]``, one per query: safetensors only), a :class:`~workbench.Injection` or a :class:`SteeringVectors` (a
tensor with the scale, layers and positions the workbench applies it with, and what made it:
:mod:`workbench.methods.exports` makes one from a fitted method in one line). Formats (default: from the suffix):

* ``"safetensors"`` (``.safetensors``): the tensor as given plus a JSON record in the safetensors metadata: model
  (``lm.describe()``: name, fingerprint, sizes), hidden size, number of layers, layers, λ (``scale``), positions,
  the method and its config, tasks, queries (per-query vectors), package versions, and any other JSON-able
  ``**metadata``. Reloading one checks hidden size, layer count and, when recorded, the model fingerprint.
* ``"gguf"`` (``.gguf``): a llama.cpp control vector (:func:`workbench.core.vector_formats.write_gguf`): one F32
  tensor ``direction.N`` per steered layer, **N = the workbench layer** (the 0-based decoder block whose output the
  vector is added to; the llama.cpp source lines are cited in :mod:`workbench.core.vector_formats`). llama.cpp cannot
  steer layer 0: its vector is dropped, with a warning giving its norm. llama.cpp adds the vector at **every
  position** (prompt and generated tokens) times the file's scale, so with the vectors as given (λ folded in only
  when ``scale=`` is passed) ``llama-cli -m MODEL.gguf --control-vector-scaled FILE:λ`` reproduces the
  workbench's ``positions="all"`` injection at λ (older llama.cpp builds take ``--control-vector-scaled FILE λ``).
  A vector trained for ``positions="last"`` is exported with a warning: llama.cpp applies it everywhere.
* ``"lm-eval"`` (``.pt``): lm-evaluation-harness's ``steered`` model file (``lm_eval --model steered --model_args
  pretrained=...,steer_path=FILE``): ``{hookpoint: {"steering_vector": v_l, "steering_coefficient": λ, "action":
  "add", "bias": None, "head_index": None}}``, hookpoints named like the model's decoder blocks under
  ``model.base_model`` (where lm-eval looks them up: ``layers.N`` for Llama-style models), so ``lm=`` is needed.
  lm-eval also adds at every position (same warning for ``positions="last"``).

``scale=λ`` folds λ into the file (it holds ``λ * vectors`` and records scale 1). The return value,
:class:`SavedVectors`, gives the layers written, the λ to apply, the warnings (also issued with
:func:`warnings.warn`) and the command that uses the file. ``load_vectors(path)`` returns ``(tensor, metadata)``:
``[L, d]`` (``[n, L, d]`` for per-query safetensors), zero at layers a GGUF / lm-eval file does not steer. Nothing
is unpickled: safetensors, GGUF, and lm-eval's ``.pt`` through ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.core import vector_formats as fmt
from workbench.core.files import package_versions
from workbench.core.fingerprints import check_fingerprint
from workbench.core.interventions import (Injection, LayerSpec, check_positions, check_scale, layer_spec,
                                          resolve_layers)

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

FORMATS = ("safetensors", "gguf", "lm-eval")
#: Formats whose consumer (llama.cpp, lm-eval) adds the vectors at every position.
EVERYWHERE = ("gguf", "lm-eval")
RECORD_VERSION = 1
#: Record keys the workbench fills in; ``**metadata`` may not set them.
RESERVED = ("format_version", "format", "shape", "num_layers", "hidden_size", "layers", "scale", "folded_scale",
            "positions", "package_versions")
VERSIONED = ("torch", "transformers", "safetensors", "gguf", "numpy")


@dataclass
class SteeringVectors:
    """Vectors ``[L, d]`` or ``[n, L, d]`` and how the workbench injects them (``h_l <- h_l + scale * v_l`` at
    `layers`, `positions`; None = not known), with JSON-able `metadata` (method, method_config, tasks, queries...)."""

    vectors: torch.Tensor
    scale: float = 1.0
    layers: LayerSpec = "all"
    positions: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Injection(self.vectors, self.scale, self.layers, self.positions or "all")  # checks shape, scale, layers
        self.scale = float(self.scale)

    def injection(self, positions: str | None = None) -> Injection:
        """The :class:`~workbench.Injection` these vectors are applied with (`positions` overrides; default "all")."""
        return Injection(self.vectors, self.scale, self.layers, positions or self.positions or "all")


@dataclass(frozen=True)
class SavedVectors:
    """What :func:`save_vectors` wrote: the file, its format, the layers it steers, the λ to apply to the file's
    vectors, the warnings, and the command that uses it."""

    path: Path
    format: str
    layers: list[int]
    scale: float
    warnings: tuple[str, ...]
    usage: str


def check_format(format: str | None, path: str | os.PathLike) -> str:
    """`format`, or the one `path`'s suffix names when None; ValueError naming the value and the formats."""
    chosen = fmt.file_kind(path) if format is None else format
    if chosen not in FORMATS:
        what = f"format {format!r}" if format is not None else f"the suffix of {os.fspath(path)!r}"
        raise ValueError(f"unknown vector file format: {what}; use one of {FORMATS} (or the suffixes .safetensors, "
                         ".gguf, .pt)")
    return chosen


def _as_steering(vectors: Any, scale: float | None, metadata: dict[str, Any]) -> SteeringVectors:
    given = {k: metadata.pop(k) for k in ("layers", "positions") if k in metadata}
    if isinstance(vectors, (Injection, SteeringVectors)):
        if given:
            raise ValueError(f"{', '.join(given)} come from the {type(vectors).__name__}; do not pass them again")
        if type(vectors) is not Injection and isinstance(vectors, Injection):  # MaskedInjection: its mask is lost
            raise ValueError(f"a {type(vectors).__name__} edits an explicit mask and cannot be saved; save an "
                             "Injection")
        extra = dict(vectors.metadata) if isinstance(vectors, SteeringVectors) else {}
        steering = SteeringVectors(vectors.vectors, vectors.scale, vectors.layers, vectors.positions, extra)
        if scale is not None and check_scale(scale) != steering.scale:
            raise ValueError(f"scale={scale!r}: the {type(vectors).__name__} is applied with scale {steering.scale}; "
                             f"pass scale={steering.scale} to fold it into the file, or nothing to record it")
        return steering
    if not isinstance(vectors, torch.Tensor):
        raise ValueError(f"vectors must be a tensor [L, d] / [n, L, d], a wb.Injection or SteeringVectors, got "
                         f"{type(vectors).__name__}")
    positions = given.get("positions")
    return SteeringVectors(vectors, 1.0 if scale is None else scale, given.get("layers", "all"),
                           None if positions is None else check_positions(positions))


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(set(metadata) & set(RESERVED))
    if clash:
        raise ValueError(f"metadata {clash} is filled in by save_vectors; reserved keys: {list(RESERVED)}")
    for key, value in metadata.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metadata {key!r} is not JSON-able ({e}); pass plain values (str, numbers, lists, "
                            "dicts)") from None
    return metadata


def hookpoints_of(lm: LanguageModel) -> list[str]:
    """lm-eval hookpoint of each decoder block: its module name under ``lm.hf.base_model`` (lm-eval's
    ``steer`` hooks ``model.base_model.named_modules()``), e.g. ``layers.3`` for Llama, ``h.3`` for GPT-2."""
    names = {id(module): name for name, module in lm.hf.base_model.named_modules()}
    found = [names.get(id(block)) for block in lm.layers]
    if any(n is None for n in found):
        raise ValueError(f"{lm.name}: its decoder blocks ({lm.layer_path}) are not under its base model, so lm-eval "
                         "cannot hook them")
    return found  # type: ignore[return-value]


def _record(steering: SteeringVectors, layers: list[int], lm: LanguageModel | None, kind: str,
            folded: float | None, metadata: dict[str, Any]) -> dict[str, Any]:
    v = steering.vectors
    record: dict[str, Any] = {"format_version": RECORD_VERSION, "format": kind, "shape": list(v.shape),
                              "num_layers": int(v.shape[-2]), "hidden_size": int(v.shape[-1]), "layers": layers,
                              "scale": steering.scale, "folded_scale": folded, "positions": steering.positions,
                              "package_versions": package_versions(VERSIONED)}
    extra = _jsonable({**steering.metadata, **metadata})
    if lm is not None:
        if "model" in extra:
            raise ValueError("metadata 'model' is lm.describe() when lm= is given; do not pass both")
        record["model"] = lm.describe()
    return {**record, **extra}


def _check_model(steering: SteeringVectors, lm: LanguageModel | None) -> None:
    if lm is not None and tuple(steering.vectors.shape[-2:]) != (lm.num_layers, lm.hidden_size):
        raise ValueError(f"vectors have shape {tuple(steering.vectors.shape)}, but {lm.name} has [L, d] = "
                         f"[{lm.num_layers}, {lm.hidden_size}]")


def _warn(notes: list[str]) -> tuple[str, ...]:
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return tuple(notes)


def save_vectors(vectors: torch.Tensor | Injection | SteeringVectors, path: str | os.PathLike,
                 format: str | None = None, lm: LanguageModel | None = None, scale: float | None = None,
                 **metadata: Any) -> SavedVectors:
    """Write `vectors` to `path` in `format` (see the module docstring); returns a :class:`SavedVectors`.

    `lm`: the model they are for (recorded: name, fingerprint, sizes; needed for ``"lm-eval"``). `scale`: fold λ
    into the file (see the module docstring). For a plain tensor, ``layers=`` and ``positions=`` may be passed here
    (default: all layers, positions unknown); other ``**metadata`` must be JSON-able (method, method_config, tasks,
    queries for ``[n, L, d]``...)."""
    kind = check_format(format, path)
    if kind == "lm-eval" and lm is None:
        raise ValueError("format 'lm-eval' needs lm= (its hookpoints are the model's module names)")
    path = Path(path)
    metadata = dict(metadata)
    steering = _as_steering(vectors, scale, metadata)
    _check_model(steering, lm)
    data = steering.vectors.detach().to("cpu", torch.float32)
    layers = resolve_layers(steering.layers, data.shape[-2])
    queries = metadata.get("queries", steering.metadata.get("queries"))
    if queries is not None and (data.dim() != 3 or len(queries) != data.shape[0]):
        raise ValueError(f"queries has {len(queries)} entries for vectors of shape {tuple(data.shape)}: one query "
                         "per row of [n, L, d] vectors")
    folded = None
    if scale is not None:
        folded, data = steering.scale, data * steering.scale
        steering = SteeringVectors(data, 1.0, steering.layers, steering.positions, steering.metadata)
    if kind != "safetensors" and data.dim() != 2:
        raise ValueError(f"vectors of shape {tuple(data.shape)} are one per query ([n, L, d]): only format "
                         f"'safetensors' keeps them; {kind} files hold one vector per layer [L, d]")
    notes: list[str] = []
    if kind in EVERYWHERE and steering.positions == "last":
        consumer = "llama.cpp" if kind == "gguf" else "lm-eval"
        notes.append(f"{path}: these vectors were made for positions='last' (the last prompt token), but {consumer} "
                     "adds them at every position, prompt and generated tokens (the workbench's positions='all'): "
                     "expect other results than the workbench's last-token injection")
    if kind == "gguf" and 0 in layers:
        norm = float(data[0].norm())
        layers = [l for l in layers if l != 0]
        if norm > 0:
            notes.append(f"{path}: layer 0 carries a vector of norm {norm:.6g}, dropped: llama.cpp cannot steer the "
                         "output of decoder block 0 (its loader refuses direction.0)")
        if not layers:
            raise ValueError("llama.cpp cannot steer layer 0, and no other layer is selected: nothing to write")
    record = _record(steering, layers, lm, kind, folded, metadata)
    lam = steering.scale
    if kind == "safetensors":
        fmt.write_safetensors(path, data, record)
        usage = f"wb.methods.StaticVectors({str(path)!r})"
    elif kind == "gguf":
        hint = (getattr(lm.hf.config, "model_type", None) if lm is not None else None) or metadata.get(
            "model_hint", "unknown")
        fmt.write_gguf(path, {l: data[l] for l in layers}, str(hint), record)
        usage = f"llama-cli -m MODEL.gguf --control-vector-scaled {path}:{lam!r}"
    else:
        names = hookpoints_of(lm)  # type: ignore[arg-type]
        fmt.write_lm_eval(path, {l: data[l] for l in layers}, {l: names[l] for l in layers}, lam, record)
        usage = f"lm_eval --model steered --model_args pretrained={lm.name},steer_path={path} --tasks TASK"
    return SavedVectors(path, kind, layers, lam, _warn(notes), usage)


def _stack(directions: dict[int, torch.Tensor], num_layers: int | None, path: Path) -> torch.Tensor:
    top = max(directions)
    L = num_layers if num_layers is not None else top + 1
    if top >= L:
        raise ValueError(f"{path}: it steers layer {top} (direction.{top}), beyond the {L} decoder blocks "
                         f"(0..{L - 1}) its record names")
    out = torch.zeros(L, next(iter(directions.values())).numel(), dtype=torch.float32)
    for layer, v in directions.items():
        out[layer] = v
    return out


def load_vectors(path: str | os.PathLike, format: str | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(vectors, metadata)`` of a vector file: ``[L, d]`` (``[n, L, d]`` for per-query safetensors) and its
    record plus ``format``, ``source``, ``layers`` (those it steers), ``scale`` (λ to apply: recorded, or the file's
    own coefficient, 1.0 when unknown) and ``positions`` (``"all"`` for GGUF and lm-eval: how their consumers apply
    them; a safetensors record's own, None when unknown). ``L`` of a file made elsewhere is its last steered layer
    + 1 (:class:`~workbench.methods.StaticVectors` pads to the model's blocks)."""
    kind = check_format(format, path)
    path = Path(path)
    if kind == "safetensors":
        vectors, meta = fmt.read_safetensors(path)
        if vectors.dim() not in (2, 3):
            raise ValueError(f"{path}: vectors of shape {tuple(vectors.shape)}, expected [L, d] or [n, L, d]")
        meta.setdefault("layers", list(range(vectors.shape[-2])))
    else:
        directions, meta = fmt.read_gguf(path) if kind == "gguf" else fmt.read_lm_eval(path)
        if kind == "lm-eval":
            coefficients = meta["steering_coefficients"]
            if len(set(coefficients.values())) == 1:
                meta["scale"] = next(iter(coefficients.values()))
            else:  # per-layer coefficients: folded into the vectors
                directions = {l: v * coefficients[l] for l, v in directions.items()}
                meta["scale"] = 1.0
        vectors = _stack(directions, meta.get("num_layers"), path)
        meta["trained_positions"] = meta.get("positions")
        meta["positions"], meta["layers"] = "all", sorted(directions)
    meta.setdefault("scale", 1.0)
    meta.setdefault("positions", None)
    meta.update(format=kind, source=str(path))
    if not math.isfinite(float(meta["scale"])) or not torch.isfinite(vectors).all():
        raise ValueError(f"{path}: its vectors or scale are not finite")
    return vectors, meta


def check_vectors_for(vectors: torch.Tensor, metadata: dict[str, Any], lm: LanguageModel,
                      allow_mismatch: bool = False) -> torch.Tensor:
    """`vectors` checked against `lm` (padded with zero layers up to its blocks when the file does not record its
    layer count): ValueError naming the file and the value for another hidden size, layer count or a layer beyond
    the model's blocks; FingerprintMismatch for another model of the same shape when a fingerprint is recorded."""
    source = metadata.get("source", "vectors")
    d, L = int(vectors.shape[-1]), int(vectors.shape[-2])
    if d != lm.hidden_size:
        raise ValueError(f"{source}: vectors of hidden size {d}, but {lm.name} has hidden size {lm.hidden_size}")
    recorded = metadata.get("num_layers")
    if recorded is not None and recorded != lm.num_layers:
        raise ValueError(f"{source}: made for a model with {recorded} layers, but {lm.name} has {lm.num_layers}")
    layers = metadata.get("layers", "all")
    steered = range(L) if isinstance(layers, str) else layer_spec(layers)  # a preset names layers of L blocks
    beyond = [l for l in steered if l >= lm.num_layers]
    if beyond:
        name = "direction." if metadata.get("format") == "gguf" else "layer "
        raise ValueError(f"{source}: steers {name}{beyond[0]}, beyond {lm.name}'s decoder blocks "
                         f"0..{lm.num_layers - 1}")
    model = metadata.get("model")
    if isinstance(model, dict):
        check_fingerprint(f"{source}: vectors made on another model ({model.get('name')!r}) than {lm.name!r}",
                          model.get("fingerprint"), getattr(lm, "fingerprint", None),
                          "use the model they were made on, or allow_mismatch=True", allow_mismatch)
    if L < lm.num_layers:
        pad = torch.zeros(*vectors.shape[:-2], lm.num_layers - L, d, dtype=vectors.dtype)
        vectors = torch.cat([vectors, pad], dim=-2)
    return vectors
