"""Python values saved as JSON plus one safetensors file and read back without unpickling anything.

:func:`encode` turns ``{name: value}`` into a JSON-able structure and a flat ``{key: tensor}`` dict (for
:func:`workbench.core.tensorfiles.write_tensors` or ``safetensors.torch.save``); :func:`decode` reverses it from that
structure and the tensors read back (:func:`workbench.core.tensorfiles.read_tensors`). What it
keeps exactly: ``None``, ``bool``, ``int``, ``float`` (non-finite ones too), ``str``, lists, tuples, dicts in their
order and with any such keys, torch tensors (dtype and shape; read back on the CPU, without autograd history),
numpy arrays and scalars of bool / integer / float dtypes, and the types registered with :func:`register_record` or
:func:`register` (records are rebuilt from their fields, never by importing a name stored in the file).
Anything else raises a TypeError at save time naming where it sits (``prompts['sst2'][0].meta``) and its type.

In the JSON, values that are not plain JSON are objects with one ``$``-key: ``{"$tensor": key}``, ``{"$ndarray":
key}``, ``{"$np": dtype, "value": v}``, ``{"$tuple": [...]}``, ``{"$dict": [[k, v], ...]}`` (a dict with a key that
is not a string or starts with ``$``), ``{"$type": tag, "state": ...}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench.core.files import FileFormatError

__all__ = ["decode", "encode", "file_sha256", "register", "register_record"]

_SCALARS = (type(None), bool, int, float, str)
_NP_KINDS = "biuf"  # numpy dtype kinds kept: bool, signed / unsigned integer, float


@dataclass(frozen=True)
class _Type:
    tag: str
    cls: type
    to_plain: Callable[[Any], Any]
    from_plain: Callable[[Any], Any]


_BY_TAG: dict[str, _Type] = {}
_BY_CLASS: dict[type, _Type] = {}


def register(cls: type, tag: str, to_plain: Callable[[Any], Any], from_plain: Callable[[Any], Any]) -> None:
    """Save instances of exactly `cls` as ``to_plain(obj)`` (any value :func:`encode` takes) and rebuild them with
    ``from_plain``, which must check what it is given (raise ValueError / TypeError on bad input)."""
    known = _BY_TAG.get(tag)
    if known is not None and known.cls is not cls:
        raise ValueError(f"state type tag {tag!r} is already registered for {known.cls.__qualname__}")
    _BY_TAG[tag] = _BY_CLASS[cls] = _Type(tag, cls, to_plain, from_plain)


def register_record(cls: type, tag: str | None = None) -> None:
    """Register a dataclass or NamedTuple: saved as its fields, rebuilt as ``cls(**fields)``."""
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls))
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        names = tuple(cls._fields)
    else:
        raise TypeError(f"{cls.__qualname__} is neither a dataclass nor a NamedTuple")

    def from_plain(state: Any) -> Any:
        if not isinstance(state, dict) or set(state) != set(names):
            raise ValueError(f"expected the fields {list(names)} of {cls.__qualname__}")
        return cls(**state)

    register(cls, tag or cls.__qualname__, lambda obj: {n: getattr(obj, n) for n in names}, from_plain)


# ------------------------------------------------------------------------------------------------------ encode
def encode(values: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``{name: value}`` -> (JSON-able ``{name: plain}``, ``{key: tensor}``); `prefix` starts the paths in errors."""
    tensors: dict[str, torch.Tensor] = {}
    return {name: _encode(value, f"{prefix}{name}", tensors) for name, value in values.items()}, tensors


def _tensor_key(path: str, tensors: dict[str, torch.Tensor]) -> str:
    key, n = path, 1
    while key in tensors:
        key, n = f"{path}#{n}", n + 1
    return key


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    kind = type(value)
    if kind in _BY_CLASS:
        spec = _BY_CLASS[kind]
        return {"$type": spec.tag, "state": _encode(spec.to_plain(value), path, tensors)}
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(value)]
    if kind is tuple:
        return {"$tuple": [_encode(v, f"{path}[{i}]", tensors) for i, v in enumerate(value)]}
    if kind is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{path}[{k!r}]", tensors) for k, v in value.items()}
        return {"$dict": [[_encode(k, f"{path} (key {k!r})", tensors), _encode(v, f"{path}[{k!r}]", tensors)]
                          for k, v in value.items()]}
    if kind is torch.Tensor:
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"cannot save {path}: a {value.layout} / quantized tensor (only dense tensors)")
        key = _tensor_key(path, tensors)
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if kind is np.ndarray and value.dtype.kind in _NP_KINDS:
        key = _tensor_key(path, tensors)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"$ndarray": key}
    if isinstance(value, np.generic) and value.dtype.kind in _NP_KINDS:
        return {"$np": value.dtype.name, "value": value.item()}
    raise TypeError(f"cannot save {path}: its type {kind.__module__}.{kind.__qualname__} is not one the safe state "
                    f"format keeps (None, bool, int, float, str, list, tuple, dict, torch tensors, numpy bool / "
                    f"integer / float arrays, {', '.join(sorted(_BY_TAG)) or 'no registered types'})")


# ------------------------------------------------------------------------------------------------------ decode
def decode(plain: Any, tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> dict[str, Any]:
    """Rebuild what :func:`encode` saved; every tensor must be used once. Raises
    :class:`~workbench.core.files.FileFormatError` naming `source` (the JSON file) for anything :func:`encode` would
    not have written."""
    used: set[str] = set()
    try:
        if not isinstance(plain, dict):
            raise ValueError("expected a JSON object of saved values")
        out = {name: _decode(v, tensors, used) for name, v in plain.items()}
    except RecursionError:
        raise FileFormatError(f"{source}: the saved values are nested too deeply") from None
    except (ValueError, TypeError, KeyError) as e:
        raise FileFormatError(f"{source}: not a state the workbench wrote ({e})") from None
    unused = sorted(set(tensors) - used)
    if unused:
        raise FileFormatError(f"{source}: the tensor file holds tensors the record does not use: {unused[:5]}")
    return out


def _tensor(key: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> torch.Tensor:
    if type(key) is not str or key not in tensors:
        raise ValueError(f"tensor {key!r} is not in the tensor file")
    if key in used:
        raise ValueError(f"tensor {key!r} is used twice")
    used.add(key)
    return tensors[key]


def _decode(plain: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if type(plain) in _SCALARS:
        return plain
    if type(plain) is list:
        return [_decode(v, tensors, used) for v in plain]
    if type(plain) is not dict:
        raise ValueError(f"unexpected JSON value {plain!r}")
    tag = next((k for k in plain if k.startswith("$")), None)
    if tag is None:
        return {k: _decode(v, tensors, used) for k, v in plain.items()}
    body = plain[tag]
    expected = {"$type": {"$type", "state"}, "$np": {"$np", "value"}}.get(tag, {tag})
    if set(plain) != expected:
        raise ValueError(f"a {tag} entry has the keys {sorted(plain)}, expected {sorted(expected)}")
    if tag == "$tensor":
        return _tensor(body, tensors, used)
    if tag == "$ndarray":
        return _tensor(body, tensors, used).numpy()
    if tag == "$np":
        dtype = np.dtype(body) if type(body) is str and body.isidentifier() else None
        if dtype is None or dtype.kind not in _NP_KINDS or type(plain["value"]) not in (bool, int, float):
            raise ValueError(f"bad numpy scalar {plain!r}")
        return dtype.type(plain["value"])
    if tag == "$tuple" and type(body) is list:
        return tuple(_decode(v, tensors, used) for v in body)
    if tag == "$dict" and type(body) is list:
        if not all(type(p) is list and len(p) == 2 for p in body):
            raise ValueError("a $dict entry must be a list of [key, value] pairs")
        return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in body}
    if tag == "$type" and body in _BY_TAG:
        return _BY_TAG[body].from_plain(_decode(plain["state"], tensors, used))
    raise ValueError(f"unknown entry {tag}: {body!r}"[:200])


# ------------------------------------------------------------------------------------------------------- files
def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
