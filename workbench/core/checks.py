"""Checks of scalar arguments (counts, rates, indices, choices): a ValueError naming the argument, the value given and
what is accepted, raised by constructors and commands before any model runs.

``check_int(0, "batch_size")`` -> ``batch_size must be a positive int, got 0``; bools are never numbers, NaN and
inf never finite numbers; numpy integers and floats count as ints and floats.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

#: Question templates per task (every task file has 3: :func:`workbench.tasks.registry.load_task`).
N_TEMPLATES = 3


def _int_kind(minimum: int) -> str:
    return {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """`value` as an int ``>= minimum``, else ValueError (``name must be a positive int, got 0``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {_int_kind(minimum)}, got {value!r}")
    return int(value)


def check_optional_int(value: Any, name: str, minimum: int = 1) -> int | None:
    """None, or `value` checked by :func:`check_int` (the message says None is accepted too)."""
    if value is None:
        return None
    try:
        return check_int(value, name, minimum)
    except ValueError:
        raise ValueError(f"{name} must be {_int_kind(minimum)} or None, got {value!r}") from None


def check_number(value: Any, name: str, minimum: float | None = 0.0, strict: bool = True,
                 maximum: float | None = None, strict_max: bool = False) -> float:
    """`value` as a finite float within the bounds (``minimum`` excluded when `strict`, ``maximum`` excluded when
    `strict_max`; None: no bound), else ValueError naming the accepted range."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if strict_max else value <= maximum
    if not ok:
        bounds = [f"{'>' if strict else '>='} {minimum:g}" if minimum is not None else "",
                  f"{'<' if strict_max else '<='} {maximum:g}" if maximum is not None else ""]
        where = " and ".join(b for b in bounds if b)
        raise ValueError(f"{name} must be a finite number{' ' + where if where else ''}, got {value!r}")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: a non-negative int (what numpy's generators, hence :func:`workbench.evaluate`, accept)."""
    return check_int(value, name, minimum=0)


def check_template(value: Any, name: str = "template") -> int:
    """A question-template index: an int in ``0..N_TEMPLATES-1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < N_TEMPLATES:
        raise ValueError(f"{name} must be a template index 0-{N_TEMPLATES - 1} (every task has {N_TEMPLATES} "
                         f"question templates), got {value!r}")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """`value` if it is one of `choices`, else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {tuple(choices)}")
    return value
