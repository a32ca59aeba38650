"""The three vector file formats, byte level: safetensors (+ JSON metadata), llama.cpp control-vector GGUF, lm-eval.

Each format has ``write_<format>(path, ...)`` (atomic: the bytes are made in memory or a private temporary folder,
then :func:`workbench.core.files.atomic_write_bytes`) and ``read_<format>(path) -> (vectors, metadata)``, where
`vectors` is a tensor (safetensors) or ``{layer: [d] float32 tensor}`` (GGUF, lm-eval) and `metadata` the
workbench's JSON record when the file carries one (``{}`` for a file made elsewhere) plus what the format itself says.
Nothing is unpickled: safetensors and GGUF hold raw numbers, and lm-eval's ``.pt`` is read with
``torch.load(weights_only=True)`` only. :mod:`workbench.core.vector_files` is the API on top.

**llama.cpp's layer numbering.** A tensor ``direction.N`` steers the output of the 0-based decoder block ``N``, the
same place as the workbench's layer ``N`` (``h_N <- h_N + scale * v_N`` at the output of block N). Read in
ggml-org/llama.cpp (``common/common.cpp``, ``src/llama-adapter.cpp``, ``src/models/llama.cpp``):

* ``common_control_vector_load_one``: ``layer_idx = std::stoi(name.substr(dotpos + 1))`` of ``direction.<N>``;
  ``layer_idx == 0`` is refused ("invalid (zero) direction tensor layer index"), non-F32 ("invalid (non-F32) direction
  tensor type") and non-1-D tensors too; the data goes to ``result.data.data() + result.n_embd * (layer_idx - 1)``
  ("layer 1 at [0]"), multiplied by the file's strength (``--control-vector-scaled FILE:SCALE``);
* ``llama_adapter_cvec::apply``: ``for (size_t il = 1; il < hparams.n_layer; il++)`` copies
  ``data + n_embd * (il - 1)`` into ``tensors[il]`` ("buffer doesn't have data for layer 0"), and ``init`` pushes
  ``nullptr`` as ``tensors[0]`` ("there's never a tensor for layer 0"); so ``tensors[il]`` holds ``direction.il``;
* the graph (``src/models/llama.cpp``, every architecture alike): inside ``for (int il = 0; il < n_layer; ++il)``,
  after the FFN residual ``cur = ggml_add(ctx0, cur, ffn_inp)``, ``cur = build_cvec(cur, il); cb(cur, "l_out", il)``,
  and ``apply_to`` adds ``tensor_for(il)`` = ``tensors[il]``: the output of block ``il``, which feeds block il + 1.

Hence ``direction.N`` <-> workbench layer ``N`` for N = 1 .. L-1; layer 0 cannot be written (its vector is dropped);
a ``direction.N`` with N >= L is never applied by llama.cpp (``il < n_layer``), and :func:`read_gguf` reports it.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from workbench.core.files import FileFormatError, atomic_write_bytes
from workbench.core.tensorfiles import read_tensors

#: safetensors metadata key / GGUF string key / lm-eval entry key holding the workbench's JSON record.
RECORD_KEY = "workbench.vectors"
#: The tensor of a safetensors vector file.
TENSOR_NAME = "vectors"
GGUF_ARCH = "controlvector"
_DIRECTION = re.compile(r"direction\.(\d+)")
#: lm-eval's keys of one hookpoint entry (lm_eval/models/hf_steered.py), plus ours ("layer", RECORD_KEY).
LM_EVAL_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")


def _record_text(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _record(text: Any, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: its {RECORD_KEY} record is not JSON ({e})") from None
    if not isinstance(record, dict):
        raise FileFormatError(f"{path}: its {RECORD_KEY} record is not a JSON object")
    return record


# ------------------------------------------------------------------------------------------------ safetensors
def write_safetensors(path: Path, vectors: torch.Tensor, record: dict[str, Any]) -> None:
    """One float32 tensor ``vectors`` and the JSON `record` in the safetensors header metadata."""
    data = safetensors.torch.save({TENSOR_NAME: vectors.detach().to("cpu", torch.float32).contiguous()},
                                  metadata={RECORD_KEY: _record_text(record)})
    atomic_write_bytes(path, data)


def read_safetensors(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """(the tensor ``vectors``, the record or ``{}``); any other tensor layout is a FileFormatError naming `path`."""
    tensors = read_tensors(path, "expected a vector file written by wb.save_vectors(..., format='safetensors')")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:  # read_tensors just read it: only a file changed meanwhile gets here
        raise FileFormatError(f"{path}: cannot read its safetensors header ({e})") from None
    if list(tensors) != [TENSOR_NAME]:
        raise FileFormatError(f"{path}: a vector file holds one tensor named {TENSOR_NAME!r}, this one holds "
                              f"{sorted(tensors)[:5]}")
    return tensors[TENSOR_NAME], _record(header[RECORD_KEY], path) if RECORD_KEY in header else {}


# ------------------------------------------------------------------------------------------------------- GGUF
def write_gguf(path: Path, directions: dict[int, torch.Tensor], model_hint: str, record: dict[str, Any]) -> None:
    """A llama.cpp control vector the way repeng's ``export_gguf`` writes one: architecture ``controlvector``,
    ``controlvector.model_hint``, ``controlvector.layer_count`` (the number of directions, as repeng), one 1-D F32
    tensor ``direction.N`` per layer N >= 1 (see the module docstring), plus the workbench's record as a string key
    (llama.cpp reads no key of the file)."""
    import gguf

    bad = [n for n in directions if n < 1]
    if bad:
        raise ValueError(f"llama.cpp cannot steer layer {bad[0]} (direction.0 is refused by its loader)")
    with tempfile.TemporaryDirectory(prefix="wb-gguf-") as tmp:
        part = Path(tmp) / "vectors.gguf"
        writer = gguf.GGUFWriter(str(part), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(directions))
        writer.add_string(RECORD_KEY, _record_text(record))
        for layer in sorted(directions):
            writer.add_tensor(f"direction.{layer}", directions[layer].detach().to("cpu", torch.float32).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        atomic_write_bytes(path, part.read_bytes())


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_gguf(path: Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """``{N: direction.N}`` of a llama.cpp control vector and (record or ``{}``) + ``model_hint`` /
    ``layer_count`` as the file says. Refused, naming `path` and the value: not a GGUF, another architecture than
    ``controlvector``, a tensor not named ``direction.N``, ``direction.0``, a non-F32 or non-1-D tensor, directions of
    different sizes, none at all."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; expected a llama.cpp control vector .gguf")
    try:
        reader = gguf.GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise FileFormatError(f"{path}: not a readable GGUF file ({e})") from None
    if arch != GGUF_ARCH:
        raise FileFormatError(f"{path}: not a llama.cpp control vector: general.architecture is {arch!r}, expected "
                              f"{GGUF_ARCH!r} (a model GGUF is loaded with wb.load_model, not as vectors)")
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        match = _DIRECTION.fullmatch(t.name)
        if match is None:
            raise FileFormatError(f"{path}: tensor {t.name!r} is not a control vector direction (direction.N)")
        layer = int(match.group(1))
        if layer == 0:
            raise FileFormatError(f"{path}: tensor direction.0: llama.cpp refuses layer 0 (its loader starts at "
                                  "direction.1, the output of decoder block 1)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise FileFormatError(f"{path}: tensor {t.name} is {t.tensor_type.name}, expected F32 (llama.cpp "
                                  "reads float32 control vectors only)")
        if len(t.shape) != 1:
            raise FileFormatError(f"{path}: tensor {t.name} has shape {list(t.shape)}, expected 1-D")
        directions[layer] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    sizes = {int(v.numel()) for v in directions.values()}
    if len(sizes) != 1:
        raise FileFormatError(f"{path}: " + ("no direction.N tensors" if not sizes else
                                             f"directions of different sizes {sorted(sizes)}"))
    text = _field(reader, RECORD_KEY)
    meta = _record(text, path) if text is not None else {}
    meta["model_hint"] = _field(reader, f"{GGUF_ARCH}.model_hint")
    meta["layer_count"] = _field(reader, f"{GGUF_ARCH}.layer_count")
    return directions, meta


# ---------------------------------------------------------------------------------------------------- lm-eval
def write_lm_eval(path: Path, directions: dict[int, torch.Tensor], hookpoints: dict[int, str], coefficient: float,
                  record: dict[str, Any]) -> None:
    """lm-evaluation-harness's ``steered`` model file: ``{hookpoint: {"steering_vector", "steering_coefficient",
    "action": "add", "bias": None, "head_index": None}}`` (plus ``"layer"`` and the record, keys it ignores),
    saved with ``torch.save`` of tensors and plain values only."""
    text = _record_text(record)
    config = {hookpoints[layer]: {"steering_vector": directions[layer].detach().to("cpu", torch.float32).clone(),
                                  "steering_coefficient": float(coefficient), "action": "add", "bias": None,
                                  "head_index": None, "layer": int(layer), RECORD_KEY: text}
              for layer in sorted(directions)}
    buffer = io.BytesIO()
    torch.save(config, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _layer_of(hookpoint: str, entry: dict[str, Any], path: Path) -> int:
    layer = entry.get("layer")
    if isinstance(layer, int) and not isinstance(layer, bool):
        return layer
    match = re.search(r"(?:^|\.)(\d+)$", hookpoint)
    if match is None:
        raise FileFormatError(f"{path}: hookpoint {hookpoint!r} does not end in a layer number (e.g. layers.3)")
    return int(match.group(1))


def read_lm_eval(path: Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """``{layer: steering_vector}`` of an lm-eval ``.pt`` steer file (``action`` "add", no bias, no head index) read
    with ``torch.load(weights_only=True)``, and (record or ``{}``) + ``hookpoints`` and ``steering_coefficients``
    (``{layer: coefficient}``: lm-eval adds ``coefficient * steering_vector``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; expected an lm-eval steer file (.pt)")
    try:
        config = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- an UnpicklingError for anything but tensors and plain values
        raise FileFormatError(f"{path}: not an lm-eval steer file of tensors and plain values "
                              f"({' '.join(str(e).split())[:300]}); it is read with torch.load(weights_only=True), "
                              "which runs no code from the file") from None
    if not isinstance(config, dict) or not config:
        raise FileFormatError(f"{path}: an lm-eval steer file is a non-empty {{hookpoint: entry}} dict")
    directions: dict[int, torch.Tensor] = {}
    hookpoints: dict[int, str] = {}
    coefficients: dict[int, float] = {}
    meta: dict[str, Any] = {}
    for hookpoint, entry in config.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("steering_vector"), torch.Tensor):
            raise FileFormatError(f"{path}: entry {hookpoint!r} has no steering_vector tensor")
        if entry.get("action", "add") != "add" or entry.get("bias") is not None or entry.get("head_index") is not None:
            raise FileFormatError(f"{path}: entry {hookpoint!r} is not a plain addition (action="
                                  f"{entry.get('action')!r}, bias, head_index): only action 'add' imports")
        vector = entry["steering_vector"]
        if vector.dim() != 1:
            raise FileFormatError(f"{path}: entry {hookpoint!r} has a steering_vector of shape {list(vector.shape)}, "
                                  "expected 1-D")
        layer = _layer_of(str(hookpoint), entry, path)
        if layer in directions:
            raise FileFormatError(f"{path}: two hookpoints steer layer {layer}")
        directions[layer] = vector.to(torch.float32)
        coefficients[layer] = float(entry.get("steering_coefficient", 1.0))
        hookpoints[layer] = str(hookpoint)
        if RECORD_KEY in entry and not meta:
            meta = _record(entry[RECORD_KEY], path)
    sizes = {int(v.numel()) for v in directions.values()}
    if len(sizes) != 1:
        raise FileFormatError(f"{path}: steering vectors of different sizes {sorted(sizes)}")
    meta["hookpoints"] = dict(sorted(hookpoints.items()))
    meta["steering_coefficients"] = dict(sorted(coefficients.items()))
    return directions, meta


def file_kind(path: str | os.PathLike) -> str | None:
    """The format a file's name suggests (``.safetensors``, ``.gguf``, ``.pt`` / ``.pth``), else None."""
    suffix = Path(path).suffix.lower()
    return {".safetensors": "safetensors", ".gguf": "gguf", ".pt": "lm-eval", ".pth": "lm-eval"}.get(suffix)
