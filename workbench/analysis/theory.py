"""Theorem 1 of the ATV paper (§3.3, proof in Appendix A.1), checked numerically: ATV ⇔ LoRA at equal rank.

Notation (paper → code). Arrays are NumPy arrays or torch tensors: NumPy in -> NumPy out; when any argument is a
torch tensor the results are torch tensors with the inputs' (promoted) floating dtype on the first tensor's device
(the arithmetic runs in NumPy on the CPU; float16 / bfloat16 inputs are computed in float32 and cast back):

======================  ==============  =============================================================
paper                   code            shape
======================  ==============  =============================================================
λ (ATV scale)           ``scale``       float
v_small ∈ R^{d_s}       ``v_small``     ``(d_s,)`` or ``(n, d_s)`` (one vector per token / query row)
A_ℓ ∈ R^{d_s×d}         ``A``           ``(d_s, d_out)``
xᵀ ∈ R^{1×d}            ``x``           ``(d_in,)`` or ``(n, d_in)`` (one activation per row)
W_down ∈ R^{d×r}        ``W_down``      ``(d_in, r)``
W_up ∈ R^{r×d}          ``W_up``        ``(r, d_out)``
s (LoRA scale)          —               fixed to 1, as in Step 3 of the proof
======================  ==============  =============================================================

ATV increment ``Δ_ATV = scale * v_small @ A`` (Step 1); LoRA increment ``Δ_LoRA = x @ W_down @ W_up`` (Step 2).
The paper uses d_in = d_out = d_ℓ; the code allows them to differ. A 1-D ``x`` gives 1-D increments.

* :func:`atv_to_lora` (Step 3): ``W_up = A``, ``W_down = M = pinv(x) @ (scale * v_small)`` — for one row this is the
  paper's ``M = x^{+⊤}(λ v)``; it depends on ``x`` (the input dependence of §3.3).
* :func:`lora_to_atv` (Step 4): row SVD ``x @ W_down = U Σ Vᵀ``; ``scale = ‖UΣ‖₂``, ``v_small = UΣ / scale``,
  ``A = Vᵀ @ W_up``.
* :func:`rank_conditions` (A.1.4): ``x ≠ 0`` (for n rows: the targets lie in the column space of ``x``, guaranteed
  when ``x`` has full row rank) and the rank budget (``rank(Δ) ≤ min(r, d_s)``; with one token ``rank(Δ) ≤ 1``, so
  the budget only binds across several tokens).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd
import torch

__all__ = [
    "atv_increment", "atv_to_lora", "equivalence_sweep", "input_dependence", "lora_increment", "lora_to_atv",
    "rank_conditions", "reconstruction_error", "static_lora_fit",
]


F = TypeVar("F", bound=Callable[..., Any])
#: NumPy array or torch tensor (the public functions return the kind they are given)
Array = np.ndarray | torch.Tensor


def _to_numpy(a: Any) -> Any:
    if not isinstance(a, torch.Tensor):
        return a
    a = a.detach().cpu()
    return (a.float() if a.dtype in (torch.float16, torch.bfloat16) else a).numpy()


def _torch_io(fn: F) -> F:
    """Run `fn` on NumPy arrays; if any argument is a torch tensor, return its arrays as torch tensors (dtype
    promoted over the tensor arguments' floating dtypes, device of the first tensor argument)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        result = fn(*(_to_numpy(a) for a in args), **{k: _to_numpy(v) for k, v in kwargs.items()})
        if not tensors:
            return result
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = functools.reduce(torch.promote_types, floats) if floats else None
        device = tensors[0].device

        def back(x: Any) -> Any:
            if isinstance(x, np.ndarray):
                t = torch.from_numpy(np.ascontiguousarray(x))
                return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
            return tuple(back(v) for v in x) if isinstance(x, tuple) else x

        return back(result)

    return wrapper  # type: ignore[return-value]


def _arr(name: str, a: Any, ndims: tuple[int, ...] = (1, 2)) -> np.ndarray:
    a = _to_numpy(a)
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimension(s), got shape {a.shape}")
    return a


def _common(*arrays: np.ndarray) -> list[np.ndarray]:
    dt = np.result_type(*arrays)
    return [a.astype(dt, copy=False) for a in arrays]


def _rank(m: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(m)) if m.size else 0


def _out(delta: np.ndarray, one_row: bool) -> np.ndarray:
    return delta[0] if one_row else delta


@_torch_io
def atv_increment(v_small: Any, A: Any, scale: float = 1.0) -> Array:
    """ATV's additive update ``scale * v_small @ A``: shape ``(d_out,)`` for 1-D ``v_small``, else ``(n, d_out)``."""
    v, a = _common(_arr("v_small", v_small), _arr("A", A, (2,)))
    if v.shape[-1] != a.shape[0]:
        raise ValueError(f"v_small has shape {v.shape} and A has shape {a.shape}: "
                         "need v_small[..., d_s] with A (d_s, d)")
    return v.dtype.type(scale) * v @ a


@_torch_io
def lora_increment(W_down: Any, W_up: Any, x: Any, s: float = 1.0) -> Array:
    """LoRA's additive update ``s * x @ W_down @ W_up``: shape ``(d_out,)`` for 1-D ``x``, else ``(n, d_out)``."""
    wd, wu, xx = _common(_arr("W_down", W_down, (2,)), _arr("W_up", W_up, (2,)), _arr("x", x))
    if wd.shape[1] != wu.shape[0] or xx.shape[-1] != wd.shape[0]:
        raise ValueError(
            f"shapes x {xx.shape}, W_down {wd.shape}, W_up {wu.shape} do not chain: "
            "need x (.., d_in), W_down (d_in, r), W_up (r, d_out)"
        )
    return wd.dtype.type(s) * (xx @ wd) @ wu


def _check_atv(v_small: Any, A: Any, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    v, a, xx = _common(_arr("v_small", v_small), _arr("A", A, (2,)), _arr("x", x))
    one_row = xx.ndim == 1 and v.ndim == 1
    x2, v2 = np.atleast_2d(xx), np.atleast_2d(v)
    if v2.shape[1] != a.shape[0]:
        raise ValueError(f"v_small has shape {v.shape} but A has shape {a.shape}: "
                         "need v_small (.., d_s), A (d_s, d_out)")
    if v2.shape[0] not in (1, x2.shape[0]):
        raise ValueError(
            f"v_small has shape {v.shape} but x has shape {xx.shape}: give one v_small row per x row, or a single one"
        )
    return np.broadcast_to(v2, (x2.shape[0], v2.shape[1])), a, x2, one_row


def _check_lora(W_down: Any, W_up: Any, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    wd, wu, xx = _common(_arr("W_down", W_down, (2,)), _arr("W_up", W_up, (2,)), _arr("x", x))
    if wd.shape[1] != wu.shape[0]:
        raise ValueError(f"W_down has shape {wd.shape} but W_up has shape {wu.shape}: "
                         "need W_down (d_in, r), W_up (r, d_out)")
    if xx.shape[-1] != wd.shape[0]:
        raise ValueError(f"x has shape {xx.shape} but W_down has shape {wd.shape}: need x (.., d_in), W_down (d_in, r)")
    return wd, wu, np.atleast_2d(xx), xx.ndim == 1


def _in_colspace(x2: np.ndarray, t: np.ndarray) -> tuple[bool, float]:
    """Is ``x2 @ M = t`` solvable? Returns (solvable, relative residual of the least-squares solution)."""
    if not np.any(t):
        return True, 0.0
    resid = x2 @ (np.linalg.pinv(x2) @ t) - t
    rel = float(np.linalg.norm(resid) / np.linalg.norm(t))
    return bool(rel <= np.sqrt(np.finfo(t.dtype).eps)), rel


@_torch_io
def rank_conditions(
    x: Any, v_small: Any = None, A: Any = None, scale: float = 1.0, *,
    W_down: Any = None, W_up: Any = None, rank: int | None = None, d_s: int | None = None,
) -> dict[str, Any]:
    """The conditions of Appendix A.1.4 for one construction, and whether it is exact.

    Give ``(v_small, A, scale)`` for ATV → LoRA (optionally the LoRA ``rank`` r, default d_s), or
    ``(W_down, W_up)`` for LoRA → ATV (optionally the ATV width ``d_s``, default r).
    Returns a dict with ``direction, n_tokens, d_in, d_out, d_s, r, rank_x, x_nonzero, x_full_row_rank,
    rank_update, matched_rank, rank_budget_ok, consistent, residual, exact, reason`` (plus ``rank_A`` or
    ``rank_W_down``/``rank_W_up``). ``exact`` is True when the construction reproduces the update exactly.
    """
    atv, lora = v_small is not None and A is not None, W_down is not None and W_up is not None
    if atv == lora:
        raise ValueError("give either (v_small, A) for ATV -> LoRA or (W_down, W_up) for LoRA -> ATV, not both/neither")
    if atv:
        v2, a, x2, _ = _check_atv(v_small, A, x)
        ds, r = a.shape[0], rank if rank is not None else a.shape[0]
        delta = a.dtype.type(scale) * v2 @ a
        extra = {"direction": "atv_to_lora", "rank_A": _rank(a)}
        width = r
    else:
        wd, wu, x2, _ = _check_lora(W_down, W_up, x)
        r, ds = wd.shape[1], d_s if d_s is not None else wd.shape[1]
        delta = (x2 @ wd) @ wu
        extra = {"direction": "lora_to_atv", "rank_W_down": _rank(wd), "rank_W_up": _rank(wu)}
        width = ds
    if width < 1:
        raise ValueError(f"the target bottleneck width must be >= 1, got {width}")
    n = x2.shape[0]
    rank_x, rank_upd = _rank(x2), _rank(delta)
    budget_ok = bool(rank_upd <= width)
    consistent, resid = True, 0.0
    if atv:  # Step 3 solves x @ W_down = (left factor of the update); needs it in the column space of x
        consistent, resid = _in_colspace(x2, a.dtype.type(scale) * v2 if r >= ds else delta)
    reasons = []
    if not consistent:
        reasons.append(
            f"x (shape {x2.shape}) has rank {rank_x} < {n} rows and the ATV targets are not in its column space"
            + (" (x = 0: Step 3 needs x^T != 0)" if rank_x == 0 else "") + f"; relative residual {resid:.3g}"
        )
    if not budget_ok:
        reasons.append(f"rank of the update is {rank_upd} > target bottleneck {width} (A.1.4: only a rank-{width} "
                       "projection is representable)")
    return {
        **extra, "n_tokens": n, "d_in": x2.shape[1], "d_out": delta.shape[1], "d_s": ds, "r": r,
        "rank_x": rank_x, "x_nonzero": bool(np.any(x2)), "x_full_row_rank": rank_x == n, "rank_update": rank_upd,
        "matched_rank": r == ds, "rank_budget_ok": budget_ok, "consistent": consistent, "residual": resid,
        "exact": consistent and budget_ok, "reason": "; ".join(reasons) or "ok",
    }


def _truncate(delta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-k factors ``(left (n, k), right (k, d))`` of ``delta`` by SVD (exact if rank(delta) <= k), zero-padded."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    m = min(k, s.size)
    left, right = np.zeros((delta.shape[0], k), delta.dtype), np.zeros((k, delta.shape[1]), delta.dtype)
    left[:, :m], right[:m] = u[:, :m] * s[:m], vt[:m]
    return left, right


@_torch_io
def atv_to_lora(
    v_small: Any, A: Any, scale: float, x: Any, *, rank: int | None = None, strict: bool = True
) -> tuple[Array, Array]:
    """Step 3 (ATV ⇒ LoRA): ``(W_down, W_up)`` with ``x @ W_down @ W_up == scale * v_small @ A`` (LoRA scale s = 1).

    Shapes: ``v_small (d_s,)`` or ``(n, d_s)``; ``A (d_s, d_out)``; ``x (d_in,)`` or ``(n, d_in)`` (a single
    ``v_small`` is applied to every row of ``x``). Returns ``W_down (d_in, r)``, ``W_up (r, d_out)``, r = ``rank``
    (default d_s). With r = d_s this is the paper's construction ``W_up = A``, ``W_down = pinv(x) @ (scale *
    v_small)``; r > d_s zero-pads the surplus LoRA channels; r < d_s factors the update by SVD (exact only if its
    rank is <= r). ``W_down`` depends on ``x``.

    Raises ValueError (``strict=True``) if the construction cannot be exact: ``x = 0`` (or, for several rows, the
    targets are outside the column space of ``x``), or the update's rank exceeds r. With ``strict=False`` the
    least-squares / rank-r-projection answer is returned instead.
    """
    v2, a, x2, _ = _check_atv(v_small, A, x)
    ds = a.shape[0]
    r = ds if rank is None else int(rank)
    if r < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if strict:
        cond = rank_conditions(x2, v2, a, scale, rank=r)
        if not cond["exact"]:
            raise ValueError(f"ATV -> LoRA with x {x2.shape}, v_small {v2.shape}, A {a.shape}, r={r}: {cond['reason']}")
    target = a.dtype.type(scale) * v2  # (n, d_s): the row x @ W_down must equal lambda * v
    if r >= ds:
        m = np.linalg.pinv(x2) @ target  # M = x^{+T} (lambda v)
        w_down = np.zeros((x2.shape[1], r), a.dtype)
        w_up = np.zeros((r, a.shape[1]), a.dtype)
        w_down[:, :ds], w_up[:ds] = m, a
        return w_down, w_up
    left, w_up = _truncate(target @ a, r)
    return np.linalg.pinv(x2) @ left, w_up


@_torch_io
def lora_to_atv(
    W_down: Any, W_up: Any, x: Any, *, d_s: int | None = None, strict: bool = True
) -> tuple[float, Array, Array]:
    """Step 4 (LoRA ⇒ ATV): ``(scale, v_small, A)`` with ``scale * v_small @ A == x @ W_down @ W_up``.

    Shapes: ``W_down (d_in, r)``, ``W_up (r, d_out)``, ``x (d_in,)`` or ``(n, d_in)``. Returns a float ``scale``,
    ``v_small (d_s,)`` (or ``(n, d_s)``), ``A (d_s, d_out)`` with d_s = ``d_s`` (default r). With d_s = r this is the
    paper's row SVD ``x @ W_down = U Σ Vᵀ``: ``scale = ‖UΣ‖₂`` (largest singular value), ``v_small = UΣ / scale``
    (unit norm for one row), ``A = Vᵀ @ W_up``. d_s > r zero-pads; d_s < r factors the update by SVD (exact only if
    its rank is <= d_s; always true for one row). If ``x @ W_down == 0``, ``scale = 0`` and ``v_small = e_1``.
    Raises ValueError (``strict=True``) when the rank budget is violated; ``strict=False`` returns the projection.
    """
    wd, wu, x2, one_row = _check_lora(W_down, W_up, x)
    r = wd.shape[1]
    ds = r if d_s is None else int(d_s)
    if ds < 1:
        raise ValueError(f"d_s must be >= 1, got {d_s}")
    y = x2 @ wd  # (n, r)
    if ds >= r:
        vt = np.linalg.svd(y, full_matrices=True)[2]  # vt: (r, r) orthogonal
        u_sigma = y @ vt.T  # = U Σ
        a = np.zeros((ds, wu.shape[1]), wu.dtype)
        a[:r] = vt @ wu
        left = np.zeros((y.shape[0], ds), y.dtype)
        left[:, :r] = u_sigma
    else:
        if strict:
            cond = rank_conditions(x2, W_down=wd, W_up=wu, d_s=ds)
            if not cond["exact"]:
                raise ValueError(f"LoRA -> ATV with x {x2.shape}, W_down {wd.shape}, W_up {wu.shape}, d_s={ds}: "
                                 f"{cond['reason']}")
        left, a = _truncate(y @ wu, ds)
    scale = float(np.linalg.norm(left, 2)) if left.size else 0.0
    if scale == 0.0:
        v = np.zeros_like(left)
        v[:, 0] = 1.0
    else:
        v = left / left.dtype.type(scale)
    return scale, _out(v, one_row), a


@_torch_io
def reconstruction_error(target: Any, approx: Any) -> dict[str, float]:
    """``{"max_abs_err": max |approx - target|, "rel_err": ‖approx - target‖_F / ‖target‖_F}`` (in float64)."""
    t, a = np.asarray(_to_numpy(target), np.float64), np.asarray(_to_numpy(approx), np.float64)
    if t.shape != a.shape:
        raise ValueError(f"target has shape {t.shape} but approx has shape {a.shape}")
    diff = a - t
    norm = np.linalg.norm(t)
    return {"max_abs_err": float(np.max(np.abs(diff))) if diff.size else 0.0,
            "rel_err": float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))}


def equivalence_sweep(
    d: int = 64, d_s_values: Sequence[int] = (2, 4, 8, 16), n_trials: int = 5, seed: int = 0, *,
    n_tokens: int = 1, dtypes: Sequence[str] = ("float64", "float32"),
) -> pd.DataFrame:
    """Both constructions on random Gaussian instances; one row per (direction, dtype, d_s, trial).

    Each instance is drawn in float64, cast to ``dtype``, converted, and the reconstructed update is compared with
    the float64 update of the cast inputs. Columns: ``direction, dtype, d, d_s, n_tokens, trial, max_abs_err,
    rel_err, exact`` (``exact`` from :func:`rank_conditions`).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for trial in range(n_trials):
        for ds in d_s_values:
            x = rng.standard_normal((n_tokens, d))
            v, a, scale = (rng.standard_normal((n_tokens, ds)), rng.standard_normal((ds, d)) / np.sqrt(ds),
                           rng.uniform(0.5, 2))
            wd, wu = rng.standard_normal((d, ds)) / np.sqrt(d), rng.standard_normal((ds, d)) / np.sqrt(ds)
            for dt in dtypes:
                xc, vc, ac, wdc, wuc = (m.astype(dt) for m in (x, v, a, wd, wu))
                ref = atv_increment(vc.astype(np.float64), ac.astype(np.float64), float(scale))
                w_down, w_up = atv_to_lora(vc, ac, float(scale), xc)
                err = reconstruction_error(ref, lora_increment(w_down, w_up, xc))
                exact = rank_conditions(xc, vc, ac, float(scale))["exact"]
                rows.append({"direction": "atv_to_lora", "dtype": dt, "d": d, "d_s": ds, "n_tokens": n_tokens,
                             "trial": trial, **err, "exact": exact})
                ref = lora_increment(wdc.astype(np.float64), wuc.astype(np.float64), xc.astype(np.float64))
                s, v2, a2 = lora_to_atv(wdc, wuc, xc)
                err = reconstruction_error(ref, atv_increment(v2, a2, s))
                exact = rank_conditions(xc, W_down=wdc, W_up=wuc)["exact"]
                rows.append({"direction": "lora_to_atv", "dtype": dt, "d": d, "d_s": ds, "n_tokens": n_tokens,
                             "trial": trial, **err, "exact": exact})
    return pd.DataFrame(rows)


def _queries(rng: np.random.Generator, n: int, d: int, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, d))
    return x, np.tanh(x @ p)  # v_small = a nonlinear function of the query, standing in for M_small(x)


def input_dependence(
    d: int = 64, d_s: int = 8, n_queries: int = 8, seed: int = 0, scale: float = 1.0
) -> pd.DataFrame:
    """How the Step-3 ``W_down`` (``M = x^{+⊤}(λ v)``) changes from query to query, for a fixed ``A``.

    Queries are Gaussian activations ``x_i`` with ``v_i = tanh(x_i @ P)``. One row per query: ``w_down_norm``,
    ``w_down_rel_change`` = ‖W_i − W_0‖_F / ‖W_0‖_F, ``err_own`` (rel. error of query i's update using its own
    ``W_down``) and ``err_reuse_q0`` (using query 0's ``W_down``, i.e. a LoRA frozen at one query).
    """
    rng = np.random.default_rng(seed)
    p, a = rng.standard_normal((d, d_s)) / np.sqrt(d), rng.standard_normal((d_s, d)) / np.sqrt(d_s)
    x, v = _queries(rng, n_queries, d, p)
    w0 = atv_to_lora(v[0], a, scale, x[0])[0]
    rows = []
    for i in range(n_queries):
        wi, wu = atv_to_lora(v[i], a, scale, x[i])
        ref = atv_increment(v[i], a, scale)
        rows.append({
            "query": i, "w_down_norm": float(np.linalg.norm(wi)),
            "w_down_rel_change": float(np.linalg.norm(wi - w0) / np.linalg.norm(w0)),
            "err_own": reconstruction_error(ref, lora_increment(wi, wu, x[i]))["rel_err"],
            "err_reuse_q0": reconstruction_error(ref, lora_increment(w0, wu, x[i]))["rel_err"],
        })
    return pd.DataFrame(rows)


def static_lora_fit(
    d: int = 64, d_s: int = 8, n_values: Sequence[int] = (8, 16, 32, 64, 128, 256), seed: int = 0,
    n_test: int = 256, scale: float = 1.0,
) -> pd.DataFrame:
    """One static LoRA (r = d_s) fitted by Step 3 on n queries at once vs the per-query ATV updates.

    With ``v_i = tanh(x_i @ P)``, the batch construction is exact on the n fitted queries while they are linearly
    independent (n <= d), and only least-squares beyond that; ``test_rel_err`` is on ``n_test`` unseen queries.
    Columns: ``n_queries, train_rel_err, test_rel_err, exact``.
    """
    rng = np.random.default_rng(seed)
    p, a = rng.standard_normal((d, d_s)) / np.sqrt(d), rng.standard_normal((d_s, d)) / np.sqrt(d_s)
    x_test, v_test = _queries(rng, n_test, d, p)
    rows = []
    for n in n_values:
        x, v = _queries(rng, n, d, p)
        wd, wu = atv_to_lora(v, a, scale, x, strict=False)
        rows.append({
            "n_queries": n,
            "train_rel_err": reconstruction_error(atv_increment(v, a, scale), lora_increment(wd, wu, x))["rel_err"],
            "test_rel_err": reconstruction_error(atv_increment(v_test, a, scale),
                                                 lora_increment(wd, wu, x_test))["rel_err"],
            "exact": rank_conditions(x, v, a, scale)["exact"],
        })
    return pd.DataFrame(rows)
