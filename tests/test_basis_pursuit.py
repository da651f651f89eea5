"""Basis pursuit, BPDN and LASSO: against linprog (HiGHS) and lars_path, independent duality-gap
certificates, phase-transition recovery, degenerate problems, threads, dtypes and bad input."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linprog

import weightpress as wp
from weightpress import _core

sklm = pytest.importorskip("sklearn.linear_model")


def gauss(m, n, seed):
    return np.random.default_rng(seed).standard_normal((m, n)) / np.sqrt(m)


def sparse_vec(n, k, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    x[rng.choice(n, k, replace=False)] = rng.standard_normal(k)
    return x


def lp_bp(A, y):
    """min ‖x‖₁ s.t. Ax = y as an LP in (u, v) >= 0, x = u − v; HiGHS."""
    n = A.shape[1]
    res = linprog(np.ones(2 * n), A_eq=np.hstack([A, -A]), b_eq=y, bounds=(0, None), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    assert res.status == 0
    return res.x[:n] - res.x[n:], res.fun


def bp_gap(A, y, x):
    """Independent certificate for BP: dual z from the support's equiangular vector."""
    S = np.flatnonzero(x)
    if S.size == 0:
        return 0.0
    w = np.linalg.solve(A[:, S].T @ A[:, S], np.sign(x[S]))
    z = A[:, S] @ w
    z /= max(1.0, np.abs(A.T @ z).max())
    P = np.abs(x).sum()
    return (P - y @ z) / P


def lasso_gap(A, y, x, lam):
    r = y - A @ x
    P = 0.5 * r @ r + lam * np.abs(x).sum()
    th = r * min(1.0, lam / max(np.abs(A.T @ r).max(), 1e-300))
    D = y @ th - 0.5 * th @ th
    return (P - D) / P if P > 0 else 0.0


@pytest.mark.parametrize("shape", [(20, 50), (30, 30), (15, 40)])
@pytest.mark.parametrize("seed", [0, 1])
def test_bp_matches_linprog(shape, seed):
    A = gauss(*shape, seed)
    y = np.random.default_rng(seed + 50).standard_normal(shape[0])
    x, info = wp.basis_pursuit(A, y, return_info=True)
    _, fun = lp_bp(A, y)
    assert info.converged and info.duality_gap <= 1e-6
    np.testing.assert_allclose(np.abs(x).sum(), fun, rtol=1e-8)
    np.testing.assert_allclose(A @ x, y, atol=1e-9 * np.linalg.norm(y))
    assert bp_gap(A, y, x) <= 1e-8


@pytest.mark.parametrize("seed", range(6))
def test_bp_exact_recovery_below_phase_transition(seed):
    n, m = 200, 100                   # m/n = 0.5
    k = 20                            # k/m = 0.2: below the Donoho–Tanner curve (~0.38)
    A = gauss(m, n, seed)
    x0 = sparse_vec(n, k, seed + 10)
    x, info = wp.basis_pursuit(A, A @ x0, return_info=True)
    assert np.linalg.norm(x - x0) <= 1e-8 * np.linalg.norm(x0)
    np.testing.assert_array_equal(np.flatnonzero(x), np.flatnonzero(x0))
    assert info.converged and info.n_active == k


def test_bpdn_certificate_and_residual():
    A = gauss(40, 120, 3)
    rng = np.random.default_rng(4)
    y = A @ sparse_vec(120, 8, 5) + 0.05 * rng.standard_normal(40)
    sigma = 0.4 * np.linalg.norm(y)
    x, info = wp.basis_pursuit(A, y, sigma=sigma, return_info=True)
    r = y - A @ x
    np.testing.assert_allclose(np.linalg.norm(r), sigma, rtol=1e-9)
    z = r / np.abs(A.T @ r).max()                       # dual feasible
    P, D = np.abs(x).sum(), y @ z - sigma * np.linalg.norm(z)
    assert (P - D) / P <= 1e-8
    assert info.converged
    # the same point is the LASSO solution at the final λ
    np.testing.assert_allclose(wp.lasso(A, y, info.lam), x, atol=1e-9)


def test_bpdn_against_bp_limit_and_sigma_large():
    A = gauss(30, 60, 6)
    y = np.random.default_rng(7).standard_normal(30)
    x0 = wp.basis_pursuit(A, y)
    x1 = wp.basis_pursuit(A, y, sigma=1e-10 * np.linalg.norm(y))
    np.testing.assert_allclose(x1, x0, atol=1e-8)
    x, info = wp.basis_pursuit(A, y, sigma=1.01 * np.linalg.norm(y), return_info=True)
    assert not x.any() and info.converged


@pytest.mark.parametrize("frac", [0.5, 0.1, 0.01])
def test_lasso_matches_lars_path(frac):
    A = gauss(50, 80, 8)
    y = np.random.default_rng(9).standard_normal(50)
    lam = frac * np.abs(A.T @ y).max()
    x, info = wp.lasso(A, y, lam, return_info=True)
    _, _, coefs = sklm.lars_path(A, y, method="lasso", alpha_min=lam / A.shape[0])
    np.testing.assert_allclose(x, coefs[:, -1], atol=1e-8)
    assert info.converged and lasso_gap(A, y, x, lam) <= 1e-10


def test_lasso_kkt_and_edges():
    A = gauss(25, 40, 10)
    y = np.random.default_rng(11).standard_normal(25)
    lam0 = np.abs(A.T @ y).max()
    assert not wp.lasso(A, y, lam0).any()
    assert not wp.lasso(A, y, 2 * lam0).any()
    x = wp.lasso(A, y, 0.2 * lam0)
    c = A.T @ (y - A @ x)
    S = x != 0
    np.testing.assert_allclose(c[S], 0.2 * lam0 * np.sign(x[S]), rtol=1e-9)
    assert np.all(np.abs(c[~S]) <= 0.2 * lam0 * (1 + 1e-9))


def test_zero_y():
    A = gauss(10, 20, 0)
    for f in (lambda: wp.basis_pursuit(A, np.zeros(10), return_info=True),
              lambda: wp.basis_pursuit(A, np.zeros(10), sigma=1.0, return_info=True),
              lambda: wp.lasso(A, np.zeros(10), 0.5, return_info=True)):
        x, info = f()
        assert not x.any() and info.converged


def test_tall_full_rank_recovers():
    A = gauss(60, 20, 12)
    x0 = np.random.default_rng(13).standard_normal(20)      # dense: the unique solution
    x, info = wp.basis_pursuit(A, A @ x0, return_info=True)
    np.testing.assert_allclose(x, x0, atol=1e-9)
    assert info.converged


def test_tall_infeasible_warns():
    A = gauss(60, 20, 12)
    y = np.random.default_rng(14).standard_normal(60)
    with pytest.warns(wp.ConvergenceWarning, match="range"):
        x, info = wp.basis_pursuit(A, y, return_info=True)
    assert not info.converged and np.isfinite(x).all()


def test_rank_deficient_and_duplicate_columns_match_linprog():
    rng = np.random.default_rng(15)
    B = rng.standard_normal((30, 6)) @ rng.standard_normal((6, 50))    # rank 6
    y = B @ rng.standard_normal(50)
    x, info = wp.basis_pursuit(B, y, return_info=True)
    _, fun = lp_bp(B, y)
    np.testing.assert_allclose(np.abs(x).sum(), fun, rtol=1e-7)
    assert info.converged
    A = gauss(20, 40, 16)
    Ad = np.hstack([A, A[:, :10], 2 * A[:, 5:8]])                  # duplicates and multiples
    yd = np.random.default_rng(17).standard_normal(20)
    xd, infod = wp.basis_pursuit(Ad, yd, return_info=True)
    _, fund = lp_bp(Ad, yd)
    assert np.isfinite(xd).all() and infod.converged
    np.testing.assert_allclose(np.abs(xd).sum(), fund, rtol=1e-8)


@pytest.mark.parametrize("s", [1e-4, 1e4])
def test_scaling(s):
    A = gauss(30, 70, 18)
    x0 = sparse_vec(70, 5, 19)
    y = A @ x0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x1 = wp.basis_pursuit(s * A, y)           # x scales by 1/s
        x2 = wp.basis_pursuit(A, s * y)           # x scales by s
        x3 = wp.lasso(A, s * y, s * 0.1)          # lasso is homogeneous in (y, lam)
        x4 = wp.basis_pursuit(A, s * y, sigma=s * 0.1)
    np.testing.assert_allclose(x1 * s, x0, atol=1e-9)
    np.testing.assert_allclose(x2 / s, x0, atol=1e-9)
    np.testing.assert_allclose(x3 / s, wp.lasso(A, y, 0.1), atol=1e-9)
    np.testing.assert_allclose(x4 / s, wp.basis_pursuit(A, y, sigma=0.1), atol=1e-9)


def test_csr_equals_dense():
    rng = np.random.default_rng(20)
    A = sp.random(40, 90, density=0.2, format="csr", random_state=21) + sp.eye(40, 90, format="csr")
    A = sp.csr_array(A)
    y = rng.standard_normal(40)
    Ad = A.toarray()
    np.testing.assert_allclose(wp.basis_pursuit(A, y), wp.basis_pursuit(Ad, y), atol=1e-10)
    np.testing.assert_allclose(wp.lasso(A, y, 0.3), wp.lasso(Ad, y, 0.3), atol=1e-10)
    A64 = A.copy()
    A64.indptr, A64.indices = A64.indptr.astype(np.int64), A64.indices.astype(np.int64)
    np.testing.assert_allclose(wp.basis_pursuit(A64, y, sigma=0.5), wp.basis_pursuit(Ad, y, sigma=0.5), atol=1e-10)
    np.testing.assert_allclose(wp.lasso(A.tocsc(), y, 0.3), wp.lasso(Ad, y, 0.3), atol=1e-10)


def test_threads_identical_and_dtypes(dtype):
    A = gauss(200, 600, 22).astype(dtype)
    y = (A.astype(np.float64) @ sparse_vec(600, 30, 23)).astype(dtype)
    a = wp.basis_pursuit(A, y, n_threads=1)
    b = wp.basis_pursuit(A, y, n_threads=2)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(wp.lasso(A, y, 0.05, n_threads=1), wp.lasso(A, y, 0.05, n_threads=2))


# entries 0 or of magnitude >= 1e-3, so that HiGHS (the reference) is well-scaled
ELEMS = st.floats(-10, 10, width=32).filter(lambda v: v == 0 or abs(v) >= 1e-3)


@given(data=st.data())
def test_property_bp_objective_le_linprog(data):
    m = data.draw(st.integers(1, 8))
    n = data.draw(st.integers(m, 16))
    A = data.draw(hnp.arrays(np.float64, (m, n), elements=ELEMS))
    y = data.draw(hnp.arrays(np.float64, (m,), elements=ELEMS))
    if np.linalg.matrix_rank(A) < m or np.linalg.cond(A) > 1e6:
        return
    x, info = wp.basis_pursuit(A, y, return_info=True)
    _, fun = lp_bp(A, y)
    assert np.abs(x).sum() <= fun * (1 + 1e-7) + 1e-9
    np.testing.assert_allclose(A @ x, y, atol=1e-7 * (np.linalg.norm(y) + 1))


@given(data=st.data())
def test_property_lasso_kkt(data):
    m = data.draw(st.integers(1, 10))
    n = data.draw(st.integers(1, 12))
    A = data.draw(hnp.arrays(np.float64, (m, n), elements=st.floats(-10, 10, width=32)))
    y = data.draw(hnp.arrays(np.float64, (m,), elements=st.floats(-10, 10, width=32)))
    lam = data.draw(st.floats(0.01, 2.0)) * (np.abs(A.T @ y).max() + 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.ConvergenceWarning)   # degenerate draws: checked below
        x, info = wp.lasso(A, y, lam, return_info=True)
    assert np.isfinite(x).all()
    c = A.T @ (y - A @ x)
    scale = lam + np.abs(A).sum() * (np.abs(x).sum() + 1) * 1e-9
    assert np.all(np.abs(c) <= lam * (1 + 1e-6) + scale * 1e-6)
    if info.converged:
        assert lasso_gap(A, y, x, lam) <= 1e-6 or np.abs(x).sum() == 0


def test_bad_input():
    A = gauss(5, 8, 0)
    y = np.ones(5)
    with pytest.raises(ValueError, match="y"):
        wp.basis_pursuit(A, np.ones(4))
    with pytest.raises(ValueError, match="sigma"):
        wp.basis_pursuit(A, y, sigma=-1.0)
    with pytest.raises(ValueError, match="lam"):
        wp.lasso(A, y, -0.1)
    with pytest.raises(ValueError, match="tol"):
        wp.basis_pursuit(A, y, tol=0.0)
    with pytest.raises(ValueError, match="NaN"):
        wp.basis_pursuit(A, np.array([1, np.nan, 0, 0, 0.0]))
    An = A.copy()
    An[1, 1] = np.nan
    with pytest.raises(ValueError, match="A"):
        wp.lasso(An, y, 0.1)
    with pytest.raises(ValueError, match="A"):
        wp.basis_pursuit(np.ones(5), y)
    with pytest.raises(ValueError, match="max_iter"):
        wp.basis_pursuit(A, y, max_iter=-1)
    bad = sp.csr_array(A)
    bad.indices[0] = 99
    with pytest.raises(ValueError, match="CSR|index"):
        wp.basis_pursuit(bad, y)
    with pytest.raises(TypeError):
        wp.lasso(A, y, "big")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(5, 8), (40, 300)])  # the small and the BLAS-sized call
def test_nonfinite_A_found_by_the_solver(bad, shape):
    # A is checked by the solver's own pass for the column norms (no separate NumPy pass):
    # every mode must still name A, whichever column holds the bad value.
    m, n = shape
    A = gauss(m, n, 3)
    y = A[:, 1] + 0.01
    for j in (0, n // 2, n - 1):
        Ab = A.copy()
        Ab[m - 1, j] = bad
        for f in (lambda: wp.lasso(Ab, y, 0.1), lambda: wp.basis_pursuit(Ab, y),
                  lambda: wp.basis_pursuit(Ab, y, sigma=0.1)):
            with pytest.raises(ValueError, match="A"):
                f()


def test_finite_A_whose_squares_overflow_is_not_rejected():
    # Column norms overflow to inf for entries near 1e160, though A is finite: that is no input
    # error (the full check runs and passes), the solve goes ahead as before the fused check.
    A = gauss(5, 8, 0) * 1e160
    y = A[:, 2] * 1e-160
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = wp.lasso(A, y, 0.1)
    assert x.shape == (8,)


def test_max_iter_warns():
    A = gauss(30, 60, 1)
    y = np.random.default_rng(2).standard_normal(30)
    with pytest.warns(wp.ConvergenceWarning, match="max_iter"):
        wp.basis_pursuit(A, y, max_iter=3)


@pytest.mark.parametrize("scale", [1e3, 1e7, 1e8, 1e10])
def test_bp_robust_to_column_scale(scale):
    """Columns 1e7+ apart in scale: the small column's atom enters at a lambda 1e7 times
    smaller than the first; it is not a rounding tie with the path's end."""
    A = np.array([[scale, 0.0], [1.0, 1.0]])
    y = np.array([10.0, 1.0])
    for M in (A, sp.csr_array(A)):
        x, info = wp.basis_pursuit(M, y, return_info=True)
        np.testing.assert_allclose(x, [10 / scale, 1 - 10 / scale], rtol=1e-12)
        assert info.converged and info.residual <= 1e-12 * np.linalg.norm(y)
    # BPDN: the short column still carries the second measurement
    x, info = wp.basis_pursuit(A, y, sigma=0.1, return_info=True)
    assert info.converged and x[1] > 0.85 and abs(info.residual - 0.1) <= 1e-9


@pytest.mark.parametrize("scale", [1e4, 1e7, 1e10])
def test_lasso_robust_to_column_scale_vs_lars(scale):
    rng = np.random.default_rng(int(np.log10(scale)))
    m, n = 30, 60
    sc = np.logspace(0, np.log10(scale), n)
    rng.shuffle(sc)
    A = rng.standard_normal((m, n)) * sc
    x0 = np.zeros(n)
    idx = rng.choice(n, 6, replace=False)
    x0[idx] = rng.standard_normal(6) / sc[idx]
    y = A @ x0 + 1e-3 * rng.standard_normal(m)
    lam = 0.01 * np.abs(A.T @ y).max()
    x, info = wp.lasso(A, y, lam, return_info=True)
    _, _, coefs = sklm.lars_path(A, y, alpha_min=lam / m, method="lasso")
    ref = coefs[:, -1]
    assert info.converged
    # coefficients compared in column-normalised units (x_j * |a_j| is A x's share)
    cn = np.linalg.norm(A, axis=0)
    np.testing.assert_allclose(x * cn, ref * cn, atol=1e-7 * np.abs(ref * cn).max())
    # the 2x2 case at a small lam: the short column is in the support
    A2 = np.array([[scale, 0.0], [1.0, 1.0]])
    x2 = wp.lasso(A2, np.array([10.0, 1.0]), 1e-3)
    c2 = A2.T @ (np.array([10.0, 1.0]) - A2 @ x2)
    np.testing.assert_allclose(c2, 1e-3 * np.sign(x2), rtol=1e-6)
    assert (x2 != 0).all()


def test_lasso_lambda_zero_is_least_squares_and_converged():
    rng = np.random.default_rng(31)
    A = rng.standard_normal((20, 10))
    y = rng.standard_normal(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, info = wp.lasso(A, y, 0.0, return_info=True)
    np.testing.assert_allclose(x, np.linalg.lstsq(A, y, rcond=None)[0], rtol=1e-10)
    assert info.converged and info.duality_gap <= 1e-10
    r = np.linalg.norm(A @ x - y)
    np.testing.assert_allclose(info.primal, 0.5 * r**2, rtol=1e-10)
    np.testing.assert_allclose(info.dual, 0.5 * r**2, rtol=1e-10)


def test_lasso_at_lambda_max_is_exactly_zero_however_computed():
    """x = 0 iff lam >= ‖Aᵀy‖∞; any summation order of Aᵀy gives the same answer (the
    solver decides with a rounding bound, not with its own rounded lambda_max)."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        m, n = int(rng.integers(5, 60)), int(rng.integers(5, 80))
        A, y = rng.standard_normal((m, n)), rng.standard_normal(m)
        for lam0 in (np.abs(A.T @ y).max(), np.abs(y @ A).max(),
                     max(abs(float(np.dot(A[:, j], y))) for j in range(n)),
                     np.abs(np.einsum("ij,i->j", A, y)).max()):
            x, info = wp.lasso(A, y, lam0, return_info=True)
            assert not x.any() and not np.signbit(x).any()
            assert info.converged and info.n_active == 0
    A = sp.random(40, 70, density=0.2, format="csr", random_state=3)
    y = np.random.default_rng(3).standard_normal(40)
    assert not wp.lasso(A, y, np.abs(A.T @ y).max()).any()


@pytest.mark.parametrize("sc", [1e-6, 1e-10])
def test_full_support_path_with_extreme_column_scales(sc):
    """A generic y (every atom of a 60-atom support enters, BP interpolates) with one column
    shrunk by sc and another grown by 1/sc: column norms 1/sc² apart (up to 1e20)."""
    rng = np.random.default_rng(6)
    A = rng.standard_normal((60, 200))
    A[:, 3] *= sc
    A[:, 50] /= sc
    y = rng.standard_normal(60)
    x, info = wp.basis_pursuit(A, y, return_info=True)
    assert info.converged and info.residual <= 1e-9 * np.linalg.norm(y)
    # Aᵀr can only be computed to about eps·‖a_j‖·‖y‖ per column (1e-5 for the 1e10 column)
    slack = 1e-12 * np.linalg.norm(A, axis=0) * np.linalg.norm(y)
    for lam in (1e-2, 1e-6):
        x, info = wp.lasso(A, y, lam, return_info=True)
        c = A.T @ (y - A @ x)
        S = x != 0
        assert info.converged
        assert np.all(np.abs(c[S] - lam * np.sign(x[S])) <= 1e-6 * lam + slack[S])
        assert np.all(np.abs(c[~S]) <= lam * (1 + 1e-6) + slack[~S])


# Wide LASSO problems (n >= 4·max(64, m/4)) are solved on working sets of columns; these reach
# every exit of that loop: optimal on the first set (frac 0.3), violators added (0.05, 0.01),
# fallback to the homotopy on A once the set passes 3m/4 columns (0.002), and a CSR operator.
# Reference: coordinate descent run to 1e-14 (lars_path itself is off by 7e-4 in duality gap
# at frac 0.01 here).
@pytest.mark.parametrize("frac", [0.3, 0.05, 0.01, 0.002])
def test_lasso_working_sets_match_coordinate_descent(frac):
    m, n = 160, 900
    rng = np.random.default_rng(40)
    A = rng.standard_normal((m, n)) / np.sqrt(m)
    y = A @ sparse_vec(n, 12, 41) + 0.05 * rng.standard_normal(m)
    lam = frac * np.abs(A.T @ y).max()
    x, info = wp.lasso(A, y, lam, return_info=True)
    ref = sklm.Lasso(alpha=lam / m, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(A, y).coef_
    assert lasso_gap(A, y, ref, lam) <= 1e-11
    np.testing.assert_allclose(x, ref, atol=1e-9)
    assert info.converged and lasso_gap(A, y, x, lam) <= 1e-12
    c = A.T @ (y - A @ x)  # KKT on every column, not only the working set's
    assert np.all(np.abs(c) <= lam * (1 + 1e-9))


def test_lasso_working_sets_csr_scaled_columns_and_threads():
    m, n = 120, 700
    rng = np.random.default_rng(42)
    A = sp.random(m, n, density=0.3, format="csr", random_state=43, dtype=np.float64)
    sc = np.logspace(-3, 3, n)
    rng.shuffle(sc)
    A = sp.csr_array(A @ sp.diags(sc))
    Ad = A.toarray()
    x0 = np.zeros(n)
    idx = rng.choice(n, 10, replace=False)
    x0[idx] = rng.standard_normal(10) / sc[idx]
    y = Ad @ x0 + 1e-3 * rng.standard_normal(m)
    lam = 0.02 * np.abs(Ad.T @ y).max()
    x, info = wp.lasso(A, y, lam, return_info=True)
    _, _, coefs = sklm.lars_path(Ad, y, alpha_min=lam / m, method="lasso")
    cn = np.linalg.norm(Ad, axis=0)
    ref = coefs[:, -1]
    np.testing.assert_allclose(x * cn, ref * cn, atol=1e-7 * np.abs(ref * cn).max())
    assert info.converged
    np.testing.assert_allclose(wp.lasso(Ad, y, lam), x, atol=1e-10)
    np.testing.assert_array_equal(wp.lasso(A, y, lam, n_threads=1), wp.lasso(A, y, lam, n_threads=2))


def _wide_lasso(m, n, k, frac, seed):
    """Unit-norm Gaussian columns, k-sparse truth, 1 % noise, lam = frac·‖Aᵀy‖∞."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    A /= np.linalg.norm(A, axis=0)
    y = A @ sparse_vec(n, k, seed + 1)
    y += 0.01 * np.linalg.norm(y) / np.sqrt(m) * rng.standard_normal(m)
    return A, y, frac * np.abs(A.T @ y).max()


def _raw_lasso(A, y, lam, n_threads=1):
    return _core.l1_dense(np.ascontiguousarray(A), y, _core.L1Mode.lasso, lam, 20_000, n_threads,
                          check_finite=True)


# After the first block, the block's support and the largest violators are solved on exactly
# and revised (an active-set method, one product with A per solve) instead of growing the
# block: the answer must be the same optimum as the blocks alone (WP_L1_REVISIONS=0) and as
# coordinate descent run to 1e-14, certified on every column; the blocks' later events are
# skipped, and a revision budget that runs out hands over to the blocks, still exact. Supports
# past 0.6m (the last case: 0.98m) skip the revisions.
@pytest.mark.parametrize("m,n,k,frac,revised", [(200, 1200, 20, 0.05, True), (256, 1536, 30, 0.01, True),
                                                 (128, 768, 40, 0.003, False)])
def test_lasso_revised_support_is_the_optimum_of_the_blocks_and_of_cd(m, n, k, frac, revised, monkeypatch):
    A, y, lam = _wide_lasso(m, n, k, frac, 60 + m)
    x, raw = _raw_lasso(A, y, lam)
    assert raw["finished"] and (raw["support_solves"] >= 1) == revised
    ref = sklm.Lasso(alpha=lam / m, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(A, y).coef_
    assert lasso_gap(A, y, ref, lam) <= 1e-11
    np.testing.assert_allclose(x, ref, atol=1e-9)
    assert lasso_gap(A, y, x, lam) <= 1e-12
    c = A.T @ (y - A @ x)
    S = x != 0
    np.testing.assert_allclose(c[S], lam * np.sign(x[S]), rtol=0, atol=1e-9 * lam)
    assert np.all(np.abs(c) <= lam * (1 + 1e-9))
    monkeypatch.setenv("WP_L1_REVISIONS", "0")
    xb, rawb = _raw_lasso(A, y, lam)
    assert rawb["support_solves"] == 0
    np.testing.assert_allclose(xb, x, atol=1e-10)
    if raw["support_solves"] > 1:
        monkeypatch.setenv("WP_L1_REVISIONS", "1")  # runs out: the blocks take over
        x1, raw1 = _raw_lasso(A, y, lam)
        assert raw1["support_solves"] == 1 and raw1["finished"]
        assert raw1["iterations"] > raw["iterations"]
        np.testing.assert_allclose(x1, x, atol=1e-10)
    monkeypatch.delenv("WP_L1_REVISIONS")
    wx, info = wp.lasso(A, y, lam, return_info=True)
    assert info.converged
    np.testing.assert_array_equal(wx, x)


def test_lasso_revisions_repeat_bit_for_bit_across_calls_threads_and_problems():
    """The solver keeps its largest buffers between calls (scratch.hpp, Lent): a solve after
    other problems, of other sizes, must give the same bits as the first one."""
    A, y, lam = _wide_lasso(200, 1200, 20, 0.02, 5)
    first, raw = _raw_lasso(A, y, lam)
    assert raw["support_solves"] >= 1
    for m, n in [(300, 2000), (64, 400), (200, 1200)]:
        B, z, mu = _wide_lasso(m, n, 10, 0.01, m)
        _raw_lasso(B, z, mu)
    np.testing.assert_array_equal(_raw_lasso(A, y, lam)[0], first)
    np.testing.assert_array_equal(_raw_lasso(A, y, lam, n_threads=2)[0], first)


def test_lasso_revision_budget_env_is_read_strictly(monkeypatch):
    A, y, lam = _wide_lasso(200, 1200, 20, 0.05, 7)
    default = _raw_lasso(A, y, lam)[1]["support_solves"]
    assert default >= 1
    for junk in ["", "x", "1.5", "-1", "3 "]:  # not an integer in range: the default budget
        monkeypatch.setenv("WP_L1_REVISIONS", junk)
        assert _raw_lasso(A, y, lam)[1]["support_solves"] == default


def bpdn_kkt(A, y, x, sigma, lam, rtol=1e-8):
    """Independent optimality check of BPDN: ‖r‖ = sigma, A_Sᵀr = λ sign(x_S), |A_jᵀr| <= λ."""
    r = y - A @ x
    c = A.T @ r
    S = np.flatnonzero(x)
    np.testing.assert_allclose(np.linalg.norm(r), sigma, rtol=1e-9)
    np.testing.assert_allclose(c[S], lam * np.sign(x[S]), rtol=rtol, atol=rtol * lam)
    assert np.abs(c).max() <= lam * (1 + rtol)
    z = r / np.abs(c).max()
    P, D = np.abs(x).sum(), y @ z - sigma * np.linalg.norm(z)
    assert (P - D) / P <= 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_bpdn_large_dense_support_guess_is_optimal(seed):
    # 512×2048 takes the float32 support guess and the exact solve on that support
    m, n = 512, 2048
    A = gauss(m, n, 40 + seed)
    rng = np.random.default_rng(50 + seed)
    y0 = A @ sparse_vec(n, 64, 60 + seed)
    e = 0.01 * np.linalg.norm(y0) / np.sqrt(m) * rng.standard_normal(m)
    y, sigma = y0 + e, float(np.linalg.norm(e))
    x, info = wp.basis_pursuit(A, y, sigma=sigma, return_info=True)
    assert info.converged and info.n_active > 64
    bpdn_kkt(A, y, x, sigma, info.lam)
    # the LASSO at the final λ (working sets, no guess) is the same point
    np.testing.assert_allclose(wp.lasso(A, y, info.lam), x, atol=1e-9)
    np.testing.assert_array_equal(wp.basis_pursuit(A, y, sigma=sigma, n_threads=2),
                                  wp.basis_pursuit(A, y, sigma=sigma, n_threads=1))


def test_bpdn_large_dense_guess_repaired_or_redone():
    # columns float32 cannot tell apart (a near-duplicate pair) and column scales 1e3 apart:
    # whatever the float32 solve guesses, the answer is the double problem's optimum
    m, n = 512, 2048
    A = gauss(m, n, 70)
    A[:, 1] = A[:, 0] * (1 + 1e-9) + 1e-10 * np.random.default_rng(71).standard_normal(m)
    A[:, 2:200] *= 1e3
    rng = np.random.default_rng(72)
    xt = sparse_vec(n, 60, 73)
    xt[:2] = [1.0, 0.5]
    y0 = A @ xt
    e = 0.01 * np.linalg.norm(y0) / np.sqrt(m) * rng.standard_normal(m)
    y, sigma = y0 + e, float(np.linalg.norm(e))
    x, info = wp.basis_pursuit(A, y, sigma=sigma, return_info=True)
    assert info.converged
    bpdn_kkt(A, y, x, sigma, info.lam, rtol=1e-7)
