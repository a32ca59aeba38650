"""Fingerprints: short sha256 digests that tell whether a model, a task's data or a generator's weights are the same.

Each is the first :data:`DIGITS` hex digits of a sha256 and is recorded wherever something made from it is kept
(fits, generators, run folders), then compared on use:

* :func:`json_fingerprint` -- canonical JSON (sorted keys), e.g. a task's splits;
* :func:`tensors_fingerprint` -- named tensors (name, shape and values: every value exactly, or an evenly strided
  sample of at most `sample` values per tensor). With ``as_bfloat16=True`` (model fingerprints) floating values are
  hashed rounded to bfloat16, so a model loaded in float32 and in bfloat16 from the same checkpoint fingerprints the
  same (its dtype is recorded separately); a float16 load of a float32 checkpoint rounds differently and does not.

A mismatch raises :class:`FingerprintMismatch` (a ValueError) naming both sides; see :func:`check_fingerprint`.
:func:`comparable_models` is how two recorded ``lm.describe()`` are compared: by fingerprint, not name or path.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

#: Hex digits kept of a sha256 (64 bits: plenty to tell accidental differences apart).
DIGITS = 16


class FingerprintMismatch(ValueError):
    """Something recorded with one fingerprint is used with another (the message names both)."""


def _digest(h: Any) -> str:
    return h.hexdigest()[:DIGITS]


def json_fingerprint(obj: Any) -> str:
    """Fingerprint of a JSON-able object (key order and whitespace do not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return _digest(hashlib.sha256(text.encode("utf-8")))


def _values(tensor: torch.Tensor, sample: int | None, as_bfloat16: bool) -> bytes:
    flat = tensor.detach().reshape(-1)
    if sample is not None and flat.numel() > sample:
        flat = flat[:: math.ceil(flat.numel() / sample)]
    if as_bfloat16 and flat.is_floating_point():
        flat = flat.to(torch.bfloat16)
    return flat.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def tensors_fingerprint(named: Iterable[tuple[str, torch.Tensor]], header: Any = None,
                        sample: int | None = None, as_bfloat16: bool = False) -> str:
    """Fingerprint of named tensors (in the given order) and a JSON-able `header`; `sample` caps the values hashed
    per tensor (an evenly strided subset), None hashes all; `as_bfloat16` hashes floating values rounded to
    bfloat16 (else their dtype and exact bytes). Tensors on the meta device count by name and shape."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in named:
        kind = "float" if as_bfloat16 and tensor.is_floating_point() else str(tensor.dtype)
        h.update(f"\0{name}:{tuple(tensor.shape)}:{kind}\0".encode("utf-8"))
        if not tensor.is_meta:
            h.update(_values(tensor, sample, as_bfloat16))
    return _digest(h)


def check_fingerprint(what: str, recorded: str | None, current: str | None, hint: str,
                      allow_mismatch: bool = False) -> None:
    """Refuse (FingerprintMismatch) when `recorded` and `current` are both known and differ, naming `what`, both
    fingerprints and `hint` (what to do); with ``allow_mismatch=True`` warn instead. A missing side (something
    recorded before fingerprints existed) has nothing to compare and is accepted."""
    if recorded is None or current is None or recorded == current:
        return
    message = f"{what}: recorded fingerprint {recorded}, now {current}; {hint}"
    if not allow_mismatch:
        raise FingerprintMismatch(message)
    warnings.warn(f"{message} (allowed: allow_mismatch=True)", stacklevel=3)


def comparable_models(old: Any, new: Any) -> tuple[Any, Any]:
    """Two recorded model descriptions (``lm.describe()``) as compared: when both carry a fingerprint, without their
    ``name`` and ``source`` (the same model under another path is the same model); a fingerprint only one side
    recorded (an older record) is left out of both."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old, new
    drop = set()
    if old.get("fingerprint") and new.get("fingerprint"):
        drop = {"name", "source"}
    elif "fingerprint" in old or "fingerprint" in new:
        drop = {"fingerprint"}
    return ({k: v for k, v in old.items() if k not in drop}, {k: v for k, v in new.items() if k not in drop})
