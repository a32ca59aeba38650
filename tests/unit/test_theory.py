"""Theorem 1 (ATV <=> LoRA at equal rank), Appendix A.1: both constructions, their preconditions, and the sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analysis.theory import (
    atv_increment,
    atv_to_lora,
    equivalence_sweep,
    input_dependence,
    lora_increment,
    lora_to_atv,
    rank_conditions,
    reconstruction_error,
    static_lora_fit,
)

TOL = {"float64": 1e-10, "float32": 1e-4}
D, DS = 48, 6


def _atv(rng, dtype, n=None, d=D, ds=DS):
    shape = (ds,) if n is None else (n, ds)
    x = rng.standard_normal(d if n is None else (n, d)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal((ds, d)).astype(dtype), 1.7, x


def _lora(rng, dtype, n=None, d=D, r=DS):
    x = rng.standard_normal(d if n is None else (n, d)).astype(dtype)
    return rng.standard_normal((d, r)).astype(dtype), rng.standard_normal((r, d)).astype(dtype), x


def _rel(a, b):
    return reconstruction_error(a, b)["rel_err"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [None, 1, 5])
def test_atv_to_lora_reproduces_update(dtype, n):
    v, a, lam, x = _atv(np.random.default_rng(0), dtype, n)
    w_down, w_up = atv_to_lora(v, a, lam, x)
    assert w_down.shape == (D, DS) and w_up.shape == (DS, D) and w_down.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(w_up, a)  # Step 3: W_up := A
    got, want = lora_increment(w_down, w_up, x), atv_increment(v, a, lam)
    assert got.shape == want.shape
    assert _rel(want, got) <= TOL[dtype]
    # x @ W_down = lambda v (eq. 9)
    assert _rel(lam * np.atleast_2d(v), np.atleast_2d(x) @ w_down) <= TOL[dtype]


def test_atv_to_lora_single_row_is_paper_formula():
    v, a, lam, x = _atv(np.random.default_rng(1), "float64")
    w_down, _ = atv_to_lora(v, a, lam, x)
    np.testing.assert_allclose(w_down, np.outer(x / (x @ x), lam * v), rtol=1e-12)  # M = x^{+T}(lambda v)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [None, 1, 5])
def test_lora_to_atv_reproduces_update(dtype, n):
    wd, wu, x = _lora(np.random.default_rng(2), dtype, n)
    lam, v, a = lora_to_atv(wd, wu, x)
    assert isinstance(lam, float) and lam > 0
    assert a.shape == (DS, D) and v.shape == ((DS,) if n is None else (n, DS))
    assert _rel(lora_increment(wd, wu, x), atv_increment(v, a, lam)) <= TOL[dtype]
    if n is None:
        assert abs(np.linalg.norm(v) - 1) <= TOL[dtype]  # Step 4: v has unit norm
        assert lam == pytest.approx(np.linalg.norm(x @ wd), rel=TOL[dtype])


def test_perturbed_factors_do_not_reproduce():
    rng = np.random.default_rng(3)
    v, a, lam, x = _atv(rng, "float64")
    w_down, w_up = atv_to_lora(v, a, lam, x)
    want = atv_increment(v, a, lam)
    bad_up = w_up + 1e-3 * rng.standard_normal(w_up.shape)
    assert _rel(want, lora_increment(w_down, bad_up, x)) > 1e-6
    assert _rel(want, lora_increment(w_down, w_up, x + 1e-3)) > 1e-6  # W_down is specific to this x
    wd, wu, x = _lora(rng, "float64")
    lam2, v2, a2 = lora_to_atv(wd, wu, x)
    assert _rel(lora_increment(wd, wu, x), atv_increment(v2, a2 * 1.001, lam2)) > 1e-6


def test_round_trip_lora_atv_lora():
    rng = np.random.default_rng(4)
    wd, wu, x = _lora(rng, "float64")
    lam, v, a = lora_to_atv(wd, wu, x)
    wd2, wu2 = atv_to_lora(v, a, lam, x)
    assert _rel(lora_increment(wd, wu, x), lora_increment(wd2, wu2, x)) <= 1e-10


def test_torch_and_int_inputs_accepted():
    rng = np.random.default_rng(5)
    v, a, lam, x = _atv(rng, "float64")
    w_down, w_up = atv_to_lora(torch.from_numpy(v), torch.from_numpy(a), lam, torch.from_numpy(x))
    assert _rel(atv_increment(v, a, lam), lora_increment(w_down, w_up, x)) <= 1e-10
    w_down, _ = atv_to_lora(np.array([1, 2]), np.eye(2, 3, dtype=int), 1.0, np.array([0, 0, 3]))
    assert w_down.dtype == np.float64


def test_zero_activation_raises_and_is_reported():
    v, a, lam, _ = _atv(np.random.default_rng(6), "float64")
    x = np.zeros(D)
    cond = rank_conditions(x, v, a, lam)
    assert cond["x_nonzero"] is False and cond["rank_x"] == 0 and cond["exact"] is False
    with pytest.raises(ValueError, match=r"x = 0.*x\^T != 0"):
        atv_to_lora(v, a, lam, x)
    w_down, w_up = atv_to_lora(v, a, lam, x, strict=False)  # least squares: gives the zero update
    assert not np.any(lora_increment(w_down, w_up, x))
    # a zero ATV vector needs nothing from x
    assert rank_conditions(x, np.zeros(DS), a, lam)["exact"] is True


def test_lora_to_atv_zero_row_gives_zero_scale():
    wd, wu, _ = _lora(np.random.default_rng(7), "float64")
    lam, v, a = lora_to_atv(wd, wu, np.zeros(D))
    assert lam == 0.0 and np.linalg.norm(v) == 1.0
    assert not np.any(atv_increment(v, a, lam))


def test_rank_deficient_tokens():
    rng = np.random.default_rng(8)
    v, a, lam, x = _atv(rng, "float64", n=4)
    x[3] = x[0] + x[1]  # rank(x) = 3 < 4 rows
    cond = rank_conditions(x, v, a, lam)
    assert cond["rank_x"] == 3 and not cond["x_full_row_rank"] and not cond["consistent"]
    with pytest.raises(ValueError, match=r"x \(shape \(4, 48\)\) has rank 3 < 4 rows"):
        atv_to_lora(v, a, lam, x)
    v[3] = v[0] + v[1]  # targets now consistent with the dependency: exact again
    assert rank_conditions(x, v, a, lam)["exact"]
    w_down, w_up = atv_to_lora(v, a, lam, x)
    assert _rel(atv_increment(v, a, lam), lora_increment(w_down, w_up, x)) <= 1e-10


def test_rank_budget_lora_smaller_than_d_s():
    """A.1.4, d_s > r: ATV moves in directions a rank-r LoRA cannot, unless A (hence the update) is low-rank."""
    rng = np.random.default_rng(9)
    v, a, lam, x = _atv(rng, "float64", n=10)
    cond = rank_conditions(x, v, a, lam, rank=3)
    assert cond["rank_update"] == DS and not cond["rank_budget_ok"] and not cond["matched_rank"]
    with pytest.raises(ValueError, match=r"rank of the update is 6 > target bottleneck 3"):
        atv_to_lora(v, a, lam, x, rank=3)
    w_down, w_up = atv_to_lora(v, a, lam, x, rank=3, strict=False)  # rank-3 projection: not exact
    assert w_up.shape == (3, D) and _rel(atv_increment(v, a, lam), lora_increment(w_down, w_up, x)) > 1e-3
    a_low = rng.standard_normal((DS, 3)) @ rng.standard_normal((3, D))  # rank(A) = 3
    assert rank_conditions(x, v, a_low, lam)["rank_A"] == 3
    w_down, w_up = atv_to_lora(v, a_low, lam, x, rank=3)
    assert _rel(atv_increment(v, a_low, lam), lora_increment(w_down, w_up, x)) <= 1e-10


def test_surplus_channels_are_zero_padded():
    """A.1.4, d_s < r: LoRA switches the surplus channels off; ATV does the same with d_s > r."""
    rng = np.random.default_rng(10)
    v, a, lam, x = _atv(rng, "float64", n=3)
    w_down, w_up = atv_to_lora(v, a, lam, x, rank=DS + 2)
    assert w_down.shape == (D, DS + 2) and not np.any(w_down[:, DS:]) and not np.any(w_up[DS:])
    assert _rel(atv_increment(v, a, lam), lora_increment(w_down, w_up, x)) <= 1e-10
    wd, wu, x = _lora(rng, "float64", n=3)
    lam, v2, a2 = lora_to_atv(wd, wu, x, d_s=DS + 2)
    assert a2.shape == (DS + 2, D) and _rel(lora_increment(wd, wu, x), atv_increment(v2, a2, lam)) <= 1e-10


def test_lora_to_atv_smaller_width():
    rng = np.random.default_rng(11)
    wd, wu, x = _lora(rng, "float64")
    lam, v, a = lora_to_atv(wd, wu, x, d_s=1)  # one token: the update has rank 1, so d_s = 1 suffices
    assert a.shape == (1, D) and _rel(lora_increment(wd, wu, x), atv_increment(v, a, lam)) <= 1e-10
    wd, wu, x = _lora(rng, "float64", n=8)
    assert rank_conditions(x, W_down=wd, W_up=wu, d_s=2)["rank_update"] == DS
    with pytest.raises(ValueError, match=r"W_down \(48, 6\).*d_s=2.*rank of the update is 6 > target bottleneck 2"):
        lora_to_atv(wd, wu, x, d_s=2)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: atv_to_lora(np.ones(5), np.ones((6, 48)), 1.0, np.ones(48)),
         r"v_small has shape \(5,\).*A has shape \(6, 48\)"),
        (lambda: atv_to_lora(np.ones((3, 6)), np.ones((6, 48)), 1.0, np.ones((4, 48))), r"\(3, 6\).*\(4, 48\)"),
        (lambda: atv_to_lora(np.ones(6), np.ones(6), 1.0, np.ones(48)),
         r"A must have 2 dimension\(s\), got shape \(6,\)"),
        (lambda: lora_to_atv(np.ones((48, 6)), np.ones((5, 48)), np.ones(48)),
         r"W_down has shape \(48, 6\).*W_up.*\(5, 48\)"),
        (lambda: lora_to_atv(np.ones((48, 6)), np.ones((6, 48)), np.ones(47)),
         r"x has shape \(47,\).*W_down.*\(48, 6\)"),
        (lambda: lora_to_atv(np.ones((48, 6)), np.ones((6, 48)), np.ones((2, 2, 48))),
         r"x must have 1 or 2.*\(2, 2, 48\)"),
        (lambda: atv_to_lora(np.ones(6), np.ones((6, 48)), 1.0, np.ones(48), rank=0), r"rank must be >= 1"),
        (lambda: rank_conditions(np.ones(48)), r"either \(v_small, A\)"),
        (lambda: reconstruction_error(np.ones(3), np.ones(4)), r"\(3,\).*\(4,\)"),
    ],
)
def test_bad_shapes_raise_with_shapes(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_input_and_output_widths_may_differ():
    """LoRA on a projection whose d_in != d_out (e.g. a GQA v_proj): x has d_in columns, A has d_out."""
    rng = np.random.default_rng(12)
    v, a, lam, x = rng.standard_normal(DS), rng.standard_normal((DS, 20)), 0.5, rng.standard_normal(D)
    w_down, w_up = atv_to_lora(v, a, lam, x)
    assert w_down.shape == (D, DS) and w_up.shape == (DS, 20)
    assert _rel(atv_increment(v, a, lam), lora_increment(w_down, w_up, x)) <= 1e-10


def test_equivalence_sweep_within_tolerance():
    df = equivalence_sweep(d=32, d_s_values=[2, 4, 8], n_trials=3, seed=0)
    assert len(df) == 2 * 2 * 3 * 3
    assert set(df.direction) == {"atv_to_lora", "lora_to_atv"} and df.exact.all()
    worst = df.groupby("dtype").rel_err.max()
    assert worst["float64"] <= 1e-10 and worst["float32"] <= 1e-4
    assert worst["float32"] > worst["float64"]  # float32 really computed in float32
    multi = equivalence_sweep(d=32, d_s_values=[4], n_trials=2, n_tokens=8, dtypes=["float64"])
    assert multi.rel_err.max() <= 1e-10 and (multi.n_tokens == 8).all()


def test_input_dependence_and_static_fit():
    dep = input_dependence(d=32, d_s=4, n_queries=5, seed=0)
    assert dep.err_own.max() <= 1e-10
    assert dep.w_down_rel_change.iloc[0] == 0 and (dep.w_down_rel_change.iloc[1:] > 0.1).all()
    assert (dep.err_reuse_q0.iloc[1:] > 0.1).all()  # a W_down frozen at query 0 fails on the others
    fit = static_lora_fit(d=16, d_s=4, n_values=[8, 64], seed=0, n_test=32)
    small, big = fit.set_index("n_queries").loc[8], fit.set_index("n_queries").loc[64]
    assert small.exact and small.train_rel_err <= 1e-10 and small.test_rel_err > 0.1
    assert not big.exact and big.train_rel_err > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_in_torch_out(dtype):
    import workbench as wb  # the facade exposes the analysis modules

    assert wb.theory.atv_to_lora is atv_to_lora and {"theory", "geometry", "sweeps"} <= set(wb.__all__)
    g = torch.Generator().manual_seed(0)
    v, a, x = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype) for shape in ((3, DS), (DS, D), (3, D)))
    w_down, w_up = wb.theory.atv_to_lora(v, a, 0.5, x)
    assert all(isinstance(w, torch.Tensor) and w.dtype == dtype and w.device == x.device for w in (w_down, w_up))
    assert w_down.shape == (D, DS) and w_up.shape == (DS, D)
    delta = lora_increment(w_down, w_up, x)
    assert isinstance(delta, torch.Tensor) and delta.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    assert reconstruction_error(atv_increment(v, a, 0.5), delta)["rel_err"] <= tol
    scale, v2, a2 = lora_to_atv(w_down, w_up, x)
    assert isinstance(scale, float) and isinstance(v2, torch.Tensor) and v2.dtype == a2.dtype == dtype
    assert isinstance(rank_conditions(x, v, a, 0.5)["exact"], bool)
    mixed = atv_increment(v.double().numpy(), a, 0.5)  # any tensor argument -> a tensor result
    assert isinstance(mixed, torch.Tensor) and mixed.dtype == dtype
    assert isinstance(atv_increment(v.double().numpy(), a.double().numpy()), np.ndarray)  # numpy in -> numpy out
