"""randomized_svd / svt against scipy.linalg.svd (float64 references, fixed seeds)."""

import warnings

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from threadpoolctl import threadpool_limits

import weightpress as wp
from weightpress import _core
from weightpress.linalg.svd import _MODE_RANK, _MODE_SVT, _MODE_TOL, _run

EPS = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@pytest.fixture(autouse=True, scope="module")
def _serial_blas():
    """One BLAS thread while these tests run: they alternate NumPy's and SciPy's OpenBLAS on
    small matrices, and on 2 shared cores the two spinning pools slow each other down many
    times over. Results do not depend on it (weightpress's own thread count is tested below)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def planted(m, n, s, dtype=np.float64, seed=0):
    """U diag(s) V^T with Haar-like random orthonormal U, V (float64, then cast)."""
    rng = np.random.default_rng(seed)
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return ((U * s) @ V.T).astype(dtype)


def spectrum(kind, k):
    i = np.arange(k, dtype=np.float64)
    if kind == "poly":
        return 1.0 / (1.0 + i)
    if kind == "exp":
        return np.exp(-i / 12.0)
    if kind == "gap":  # well separated top values, then a flat floor
        return np.where(i < 12, 10.0 * 0.8**i, 0.05)
    raise ValueError(kind)


def ref_svd(A):
    A64 = A.toarray() if sp.issparse(A) else np.asarray(A)
    return sla.svd(A64.astype(np.float64), full_matrices=False)


def check_factors(U, s, Vt, A, k, dtype):
    m, n = A.shape
    assert U.shape == (m, k) and s.shape == (k,) and Vt.shape == (k, n)
    assert U.dtype == dtype and s.dtype == dtype and Vt.dtype == dtype
    tol = 50 * EPS[np.dtype(dtype)] * max(1, np.sqrt(max(m, n)))
    np.testing.assert_allclose(U.T.astype(float) @ U, np.eye(k), atol=tol)
    np.testing.assert_allclose(Vt.astype(float) @ Vt.T, np.eye(k), atol=tol)
    assert np.all(np.diff(s.astype(float)) <= 0) and np.all(s >= 0)


# ---- agreement with LAPACK ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (200, 200)])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_matches_scipy_on_gapped_spectrum(dtype, shape, order):
    m, n = shape
    A = planted(m, n, spectrum("gap", min(m, n)), dtype, seed=1)
    if order == "F":
        A = np.asfortranarray(A)
    elif order == "strided":
        A = np.repeat(A, 2, axis=1)[:, ::2]
        assert not A.flags.c_contiguous and not A.flags.f_contiguous
    k = 8
    U, s, Vt = wp.randomized_svd(A, k, seed=3)
    check_factors(U, s, Vt, A, k, dtype)
    Ur, sr, Vtr = ref_svd(A)
    rt = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(s, sr[:k], rtol=rt)
    # singular vectors agree up to the sign; our convention fixes the sign
    for c in range(k):
        sign = np.sign(Ur[np.argmax(np.abs(Ur[:, c])), c])
        vt = 2e-3 if dtype == np.float32 else 1e-6  # randomized: ~(s_floor/s_k)^(2q+1)
        np.testing.assert_allclose(U[:, c], sign * Ur[:, c], atol=vt)
        np.testing.assert_allclose(Vt[c], sign * Vtr[c], atol=vt)
    # U^T A V = diag(s)
    np.testing.assert_allclose(U.T.astype(float) @ A.astype(float) @ Vt.T, np.diag(s),
                               atol=50 * rt * s[0])


def test_sign_convention():
    A = planted(80, 60, spectrum("poly", 60), seed=4)
    U, s, Vt = wp.randomized_svd(A, 10, seed=0)
    idx = np.argmax(np.abs(U), axis=0)
    assert np.all(U[idx, np.arange(10)] > 0)


@pytest.mark.parametrize("kind", ["poly", "exp"])
@pytest.mark.parametrize("k", [5, 20])
def test_error_near_optimal_default_settings(dtype, kind, k):
    m, n = 400, 250
    sig = spectrum(kind, n)
    A = planted(m, n, sig, dtype, seed=5)
    sa = ref_svd(A)[1]
    opt_f = np.sqrt(np.sum(sa[k:] ** 2))
    for seed in (0, 1, 2):
        U, s, Vt = wp.randomized_svd(A, k, seed=seed)
        E = A.astype(float) - (U.astype(float) * s) @ Vt
        err_f = np.linalg.norm(E)
        err_2 = np.linalg.norm(E, 2)
        assert err_f <= 1.05 * opt_f
        assert err_f >= opt_f * (1 - 1e-4)  # Eckart-Young: cannot beat the optimum
        assert err_2 <= 2 * sa[k]
        assert np.all(s <= sa[:k] * (1 + 1e-4))  # B = Q^T A: values never exceed A's


def test_auto_power_iters_on_flat_spectrum(dtype):
    """Flat spectra converge slowly: the automatic iteration count keeps the error within 2 %."""
    rng = np.random.default_rng(22)
    G = rng.standard_normal((400, 300))
    A = planted(400, 300, np.linalg.svd(G, compute_uv=False), dtype, seed=22)
    sa = ref_svd(A)[1]
    k = 60
    opt = np.sqrt(np.sum(sa[k:] ** 2))
    U, s, Vt, info = wp.randomized_svd(A, k, seed=0, return_info=True)
    err = np.linalg.norm(A.astype(float) - (U.astype(float) * s) @ Vt)
    assert err <= 1.02 * opt
    assert 2 <= info["power_iters"] <= 10
    U, s, Vt, info = wp.randomized_svd(A, k, seed=0, power_iters=1, return_info=True)
    assert info["power_iters"] == 1
    assert np.linalg.norm(A.astype(float) - (U.astype(float) * s) @ Vt) > err  # fewer is worse


@pytest.mark.parametrize("extra", [0, 3])
def test_exact_low_rank_recovered(dtype, extra):
    r = 6
    A = planted(150, 90, np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5]), dtype, seed=6)
    U, s, Vt = wp.randomized_svd(A, r + extra, seed=1)
    check_factors(U, s, Vt, A, r + extra, dtype)
    rec = (U.astype(float) * s) @ Vt
    scale = np.linalg.norm(A.astype(float))
    assert np.linalg.norm(rec - A) <= 100 * EPS[np.dtype(dtype)] * scale
    assert np.all(s[r:] <= 100 * EPS[np.dtype(dtype)] * s[0])


@pytest.mark.parametrize("shape,k", [((500, 40), 5), ((40, 500), 5), ((1, 30), 1), ((30, 1), 1),
                                     ((1, 1), 1), ((60, 45), 45), ((45, 60), 45), ((70, 70), 70)])
@pytest.mark.parametrize("direct", [-1, 0])
def test_shapes(dtype, shape, k, direct):
    A = planted(*shape, spectrum("gap", min(shape)), dtype, seed=7)
    U, s, Vt, info = _run(A, _MODE_RANK, rank=k, seed=2, direct=direct)
    check_factors(U, s, Vt, A, k, dtype)
    sr = ref_svd(A)[1]
    np.testing.assert_allclose(s, sr[:k], rtol=1e-3 if dtype == np.float32 else 1e-8)
    if k == min(shape):  # full rank: exact factorization
        rec = (U.astype(float) * s) @ Vt
        assert np.linalg.norm(rec - A) <= 100 * EPS[np.dtype(dtype)] * np.linalg.norm(A)


def test_householder_and_cholesky_paths_agree():
    A = planted(300, 200, spectrum("exp", 200), seed=8)
    r0 = _run(A, _MODE_RANK, rank=15, seed=4, orth=0)
    r1 = _run(A, _MODE_RANK, rank=15, seed=4, orth=1)
    np.testing.assert_allclose(r0[1], r1[1], rtol=1e-10)
    np.testing.assert_allclose(np.abs(r0[0].T @ r1[0]), np.eye(15), atol=1e-6)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("sparse", [False, True])
def test_float32_extreme_scales(scale, sparse):
    A64 = planted(200, 120, spectrum("poly", 120), seed=9)
    A = (A64 * scale).astype(np.float32)
    if sparse:
        A = sp.csr_array(A)
    k = 10
    U, s, Vt, info = wp.randomized_svd(A, k, seed=0, return_info=True)
    assert info["scale"] != 1.0  # the power-of-two scaling path ran
    assert np.all(np.isfinite(U)) and np.all(np.isfinite(s)) and np.all(np.isfinite(Vt))
    assert np.all(s > 0)
    sr = ref_svd(A64)[1] * scale
    np.testing.assert_allclose(s.astype(float), sr[:k], rtol=2e-2)
    check_factors(U, s, Vt, A, k, np.float32)
    # tol mode too
    U, s, Vt = wp.randomized_svd(A, tol=0.3, seed=0)
    assert np.all(np.isfinite(s)) and np.all(s > 0)


# ---- CSR -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(400, 150), (150, 400)])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
@pytest.mark.parametrize("cls", [sp.csr_array, sp.csr_matrix])
def test_csr_equals_dense(dtype, shape, idx, cls):
    S = sp.random(*shape, density=0.1, format="csr", dtype=dtype, random_state=11)
    S = cls(S)
    S.indptr, S.indices = S.indptr.astype(idx), S.indices.astype(idx)
    D = S.toarray()
    for mode_kw in ({"rank": 12}, {"tol": 0.5}):
        Us, ss, Vts = wp.randomized_svd(S, **mode_kw, seed=5)
        Ud, sd, Vtd = wp.randomized_svd(D, **mode_kw, seed=5)
        assert Us.shape == Ud.shape and Us.dtype == dtype
        t = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(ss, sd, rtol=t)
        np.testing.assert_allclose(Us, Ud, atol=10 * t)
        np.testing.assert_allclose(Vts, Vtd, atol=10 * t)


def test_csr_duplicates_and_unsorted_indices():
    rng = np.random.default_rng(12)
    D = rng.standard_normal((60, 40)) * (rng.random((60, 40)) < 0.3)
    coo = sp.coo_array(D)
    # split every entry into two halves: duplicates, then shuffle
    r = np.concatenate([coo.row, coo.row])
    c = np.concatenate([coo.col, coo.col])
    v = np.concatenate([coo.data / 2, coo.data / 2])
    perm = rng.permutation(len(v))
    # built from (data, indices, indptr) so that nothing sums the duplicates beforehand
    order = np.argsort(r[perm], kind="stable")
    rows, cols, vals = r[perm][order], c[perm][order], v[perm][order]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=60))]
    S = sp.csr_array((vals, cols, indptr), shape=D.shape)
    assert not S.has_canonical_format
    for kw in ({"rank": 5}, {"tol": 0.2}):
        s1 = wp.randomized_svd(S, **kw, seed=1)[1]
        s2 = wp.randomized_svd(D, **kw, seed=1)[1]
        np.testing.assert_allclose(s1, s2, rtol=1e-10)


def test_csr_malformed_rejected():
    S = sp.csr_array(np.eye(5))
    bad = sp.csr_array((S.data, S.indices.copy(), S.indptr), shape=(5, 5))
    bad.indices[2] = 9
    with pytest.raises(ValueError, match="index"):
        wp.randomized_svd(bad, 2, seed=0)
    with pytest.raises(TypeError, match="CSR|csr"):
        wp.randomized_svd(sp.coo_array(np.eye(5)), 2)


# ---- fixed accuracy ------------------------------------------------------------------------

def minimal_rank(sa, tol):
    tail = np.sqrt(np.concatenate([np.cumsum((sa**2)[::-1])[::-1], [0.0]]) / np.sum(sa**2))
    return int(np.argmax(tail <= tol))


@pytest.mark.parametrize("kind", ["poly", "exp"])
@pytest.mark.parametrize("tol", [0.2, 0.05, 1e-2, 1e-3])
def test_tol_rank_minimal_and_error_bound(dtype, kind, tol):
    sig = spectrum(kind, 180) if kind == "exp" else spectrum(kind, 180) ** 1.5
    A = planted(320, 180, sig, dtype, seed=13)
    sa = ref_svd(A)[1]
    rmin = minimal_rank(sa, tol)
    U, s, Vt, info = wp.randomized_svd(A, tol=tol, seed=0, return_info=True)
    k = U.shape[1]
    check_factors(U, s, Vt, A, k, dtype)
    A64 = A.astype(float)
    err = np.linalg.norm(A64 - (U.astype(float) * s) @ Vt) / np.linalg.norm(A64)
    assert err <= tol * (1 + 1e-6)
    assert rmin <= k <= max(rmin + 3, int(np.ceil(1.1 * rmin)))
    np.testing.assert_allclose(info["rel_err"], err, rtol=1e-3 if info["verified"] else 3e-2)
    if dtype == np.float32 and tol <= 1e-2:
        assert info["verified"]  # the indicator cancels: the residual must have been checked


@pytest.mark.parametrize("layout", ["C", "F", "csr", "csr_wide", "dense_wide"])
def test_tol_verified_residual_all_layouts(layout):
    """float32 at tol=1e-2 needs the residual check: every operator layout computes it."""
    sig = spectrum("poly", 120) ** 1.2
    A = planted(260, 120, sig, np.float32, seed=23)
    if layout in ("csr_wide", "dense_wide"):
        A = np.ascontiguousarray(A.T)
    if layout == "F":
        A = np.asfortranarray(A)
    M = sp.csr_array(A) if layout.startswith("csr") else A
    U, s, Vt, info = wp.randomized_svd(M, tol=1e-2, seed=1, return_info=True)
    assert info["verified"]
    A64 = A.astype(float)
    err = np.linalg.norm(A64 - (U.astype(float) * s) @ Vt) / np.linalg.norm(A64)
    assert err <= 1e-2 * (1 + 1e-6)
    np.testing.assert_allclose(info["rel_err"], err, rtol=1e-3)
    rmin = minimal_rank(ref_svd(A)[1], 1e-2)
    assert rmin <= U.shape[1] <= max(rmin + 3, 1.1 * rmin)


def test_tol_flat_spectrum_and_wide():
    rng = np.random.default_rng(14)
    A = rng.standard_normal((90, 260))
    sa = ref_svd(A)[1]
    for tol in (0.9, 0.5):
        U, s, Vt = wp.randomized_svd(A, tol=tol, seed=2)
        err = np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A)
        rmin = minimal_rank(sa, tol)
        assert err <= tol and rmin <= U.shape[1] <= max(rmin + 3, 1.1 * rmin)


def test_tol_exact_low_rank_and_zero():
    A = planted(200, 100, np.array([3.0, 2.0, 1.0]), seed=15)
    U, s, Vt = wp.randomized_svd(A, tol=1e-6, seed=0)
    assert U.shape[1] == 3
    U, s, Vt = wp.randomized_svd(np.zeros((50, 40)), tol=0.1, seed=0)
    assert U.shape == (50, 0) and s.shape == (0,) and Vt.shape == (0, 40)


def test_tol_below_precision_warns():
    rng = np.random.default_rng(16)
    A = rng.standard_normal((120, 100)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="not reached"):
        U, s, Vt = wp.randomized_svd(A, tol=1e-9, seed=0)
    assert U.shape[1] == 100


@pytest.mark.parametrize("shape", [(300, 200), (2000, 600), (200, 300)])
@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_tol_near_eps_on_exactly_low_rank(shape, kind):
    """float64 rank 10: tol 1e-12 down to about 1e2*eps is reached at rank 10 (the sketch stops
    when it finds only rounding errors outside the basis), not by taking every column."""
    rng = np.random.default_rng(40)
    m, n = shape
    A = rng.standard_normal((m, 10)) @ rng.standard_normal((10, n))
    M = sp.csr_array(A) if kind == "csr" else A
    for tol in (1e-12, 1e-13, 100 * np.finfo(np.float64).eps):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            U, s, Vt, info = wp.randomized_svd(M, tol=tol, seed=0, return_info=True)
        err = np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A)
        assert U.shape[1] == 10 and err <= tol
        assert info["basis"] < min(m, n) / 2
        # the residual measured plus the exact tail; at 1e-15 both sides carry rounding noise
        np.testing.assert_allclose(info["rel_err"], err, rtol=0.1)
    # below what float64 resolves: warns, and still gives the rank-10 answer, not min(m, n)
    with pytest.warns(RuntimeWarning, match="not reached"):
        U, s, Vt = wp.randomized_svd(M, tol=1e-17, seed=0)
    assert U.shape[1] <= 12
    assert np.linalg.norm(A - (U * s) @ Vt) <= 1e-14 * np.linalg.norm(A)


def test_tol_near_eps_decaying_spectrum_several_blocks():
    """A spectrum that needs several blocks to reach 1e-13: every block is re-orthogonalised
    against the basis, so the measured error stays what the basis gives."""
    k = 150
    s0 = np.exp(-np.arange(k) / 5.0)
    A = planted(400, 300, s0, seed=41)
    tol = 1e-13
    U, s, Vt, info = wp.randomized_svd(A, tol=tol, seed=0, return_info=True)
    err = np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A)
    tail = np.sqrt(np.cumsum((s0**2)[::-1])[::-1] / np.sum(s0**2))
    rmin = int(np.argmax(np.append(tail, 0) <= tol))
    assert err <= tol and rmin <= U.shape[1] <= rmin + 3
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-12)


# ---- SVT -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (30, 20)])
def test_svt_is_the_prox(dtype, shape):
    A = planted(*shape, spectrum("exp", min(shape)) * 10, dtype, seed=17)
    Ur, sr, Vtr = ref_svd(A)
    lam = 1.3
    U, s, Vt = wp.svt(A, lam, seed=0)
    r = int(np.sum(sr > lam))
    assert U.shape[1] == r and s.dtype == dtype
    t = 1e-4 if dtype == np.float32 else 1e-7
    np.testing.assert_allclose(s, sr[:r] - lam, rtol=0, atol=t * sr[0])
    X = (U.astype(float) * s) @ Vt
    Xr = (Ur[:, :r] * (sr[:r] - lam)) @ Vtr[:r]
    # randomized: directions with sigma just above lam converge last
    assert np.linalg.norm(X - Xr) <= (1e-3 if dtype == np.float32 else 1e-4) * np.linalg.norm(Xr)


def test_svt_edges():
    A = planted(100, 80, spectrum("poly", 80), seed=18)
    U, s, Vt = wp.svt(A, 10.0, seed=0)  # above every singular value
    assert U.shape == (100, 0) and s.shape == (0,)
    S = sp.csr_array(A)
    s1 = wp.svt(S, 0.05, seed=3)[1]
    s2 = wp.svt(A, 0.05, seed=3)[1]
    np.testing.assert_allclose(s1, s2, rtol=1e-10)
    with pytest.raises(ValueError, match="lam"):
        wp.svt(A, -1.0)


def _exact_prox(A, lam):
    U, s, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    return (U * np.maximum(s - lam, 0)) @ Vt, np.maximum(s - lam, 0)


def _structured(name):
    rng = np.random.default_rng(42)
    if name == "one_row":
        A = np.zeros((300, 200))
        A[7] = rng.standard_normal(200)
    elif name == "one_column":
        A = np.zeros((300, 200))
        A[:, 11] = rng.standard_normal(300)
    elif name == "block_constant":
        A = np.kron(rng.standard_normal((3, 4)), np.ones((100, 50)))
    elif name == "ones":
        A = np.ones((300, 200))
    else:  # a constant block in a zero matrix
        A = np.zeros((300, 200))
        A[50:120, 30:90] = 2.5
    return A


@pytest.mark.parametrize("name", ["one_row", "one_column", "block_constant", "ones", "block"])
@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_svt_on_structured_matrices_is_the_exact_prox(name, kind, dt):
    """Energy in one row, one column or constant blocks (exactly low rank, sparse range):
    the sketch's later blocks are pure rounding; they must not enter the basis."""
    A = _structured(name).astype(dt)
    M = sp.csr_array(A) if kind == "csr" else A
    t = 1e-12 if dt == np.float64 else 1e-4
    for lam in (1.0, 0.1):
        X_ref, s_ref = _exact_prox(A, lam)
        U, s, Vt = wp.svt(M, lam, seed=0)
        assert s.dtype == dt
        np.testing.assert_allclose(s, s_ref[: len(s)], rtol=t, atol=t * s_ref[0])
        assert len(s) == np.count_nonzero(s_ref > t * s_ref[0])
        np.testing.assert_allclose(U.T.astype(float) @ U, np.eye(len(s)), atol=10 * t)
        np.testing.assert_allclose((U.astype(float) * s) @ Vt, X_ref, atol=t * np.abs(A).max() * np.sqrt(A.size))
    if dt == np.float64:
        U, s, Vt = wp.randomized_svd(M, tol=1e-10, seed=0)
        np.testing.assert_allclose((U * s) @ Vt, A, atol=1e-12 * np.abs(A).max() * np.sqrt(A.size))


# ---- determinism, threads, sketch ------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_threads_identical(sparse):
    A = planted(700, 300, spectrum("poly", 300), np.float32, seed=19)
    if sparse:
        A = sp.random(3000, 400, density=0.05, format="csr", dtype=np.float32, random_state=3)
    for kw in ({"rank": 20}, {"tol": 0.3}):
        r1 = wp.randomized_svd(A, **kw, seed=9, n_threads=1)
        r2 = wp.randomized_svd(A, **kw, seed=9, n_threads=2)
        for a, b in zip(r1, r2):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("order", ["C", "F"])
def test_tiled_products_match_one_gemm_and_give_the_same_bits_on_any_thread_count(order, monkeypatch):
    # From m·n = 2^20 the dense products go by eight row tiles (a function of the shape) on
    # our threads with BLAS on one (linop.cpp, DenseOp::tiled); 1500 and 900 rows make seven
    # full tiles and a partial one. WP_RSVD_TILED=0 runs the one-gemm path for comparison.
    A = np.asarray(planted(1500, 900, spectrum("poly", 900), np.float64, seed=23), order=order)
    for kw in ({"rank": 12}, {"tol": 0.2}):
        r1 = wp.randomized_svd(A, **kw, seed=5, n_threads=1)
        r2 = wp.randomized_svd(A, **kw, seed=5, n_threads=2)
        for a, b in zip(r1, r2):
            np.testing.assert_array_equal(a, b)
        monkeypatch.setenv("WP_RSVD_TILED", "0")
        U, s, Vt = wp.randomized_svd(A, **kw, seed=5, n_threads=2)
        monkeypatch.delenv("WP_RSVD_TILED")
        np.testing.assert_allclose(s, r1[1], rtol=1e-10)
        np.testing.assert_allclose(np.abs(U.T @ r1[0]), np.eye(len(s)), atol=1e-6)


def test_seed_reproducible():
    A = planted(200, 100, spectrum("poly", 100), seed=20)
    a = wp.randomized_svd(A, 10, seed=42)
    b = wp.randomized_svd(A, 10, seed=42)
    c = wp.randomized_svd(A, 10, seed=43)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    g = wp.randomized_svd(A, 10, seed=np.random.default_rng(0))
    assert g[0].shape == (200, 10)
    assert wp.randomized_svd(A, 10)[0].shape == (200, 10)  # seed=None


def test_gaussian_sketch_counter_based():
    x1 = _core.gaussian_sketch(np.dtype(np.float64), 5000, 8, 0, 123, 1)
    x2 = _core.gaussian_sketch(np.dtype(np.float64), 5000, 8, 0, 123, 2)
    np.testing.assert_array_equal(x1, x2)
    # column blocks are slices of one fixed infinite matrix
    x3 = _core.gaussian_sketch(np.dtype(np.float64), 5000, 3, 5, 123, 2)
    np.testing.assert_array_equal(x1[:, 5:], x3)
    z = x1.ravel()
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.02
    assert abs(np.mean(z**4) - 3) < 0.15  # Gaussian kurtosis
    assert abs(np.corrcoef(x1[:, 0], x1[:, 1])[0, 1]) < 0.05
    xf = _core.gaussian_sketch(np.dtype(np.float32), 5000, 8, 0, 123, 1)
    np.testing.assert_allclose(xf, x1, rtol=1e-6)


# ---- dtypes and bad input ----------------------------------------------------------------------

def test_dtypes():
    A = np.arange(60).reshape(10, 6) % 7
    assert wp.randomized_svd(A, 2, seed=0)[0].dtype == np.float64
    assert wp.randomized_svd(A.astype(np.float16), 2, seed=0)[0].dtype == np.float32
    with pytest.raises(TypeError, match="A"):
        wp.randomized_svd(A.astype(complex), 2)


@pytest.mark.parametrize("kw,exc,match", [
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": -2}, ValueError, "rank"),
    ({"rank": 7}, ValueError, "rank"),
    ({"rank": 2.5}, TypeError, "rank"),
    ({}, ValueError, "exactly one"),
    ({"rank": 2, "tol": 0.1}, ValueError, "exactly one"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"tol": 1.0}, ValueError, "tol"),
    ({"tol": -0.5}, ValueError, "tol"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"rank": 2, "oversamples": -1}, ValueError, "oversamples"),
    ({"rank": 2, "power_iters": -1}, ValueError, "power_iters"),
    ({"rank": 2, "seed": -1}, ValueError, "seed"),
    ({"rank": 2, "seed": "x"}, TypeError, "seed"),
    ({"rank": 2, "n_threads": 0}, ValueError, "n_threads"),
])
def test_bad_arguments(kw, exc, match):
    A = np.ones((6, 8))
    with pytest.raises(exc, match=match):
        wp.randomized_svd(A, **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_nonfinite_rejected(bad, sparse):
    A = np.ones((20, 10))
    A[3, 4] = bad
    if sparse:
        A = sp.csr_array(A)
    with pytest.raises(ValueError, match="NaN or Inf"):
        wp.randomized_svd(A, 2, seed=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        wp.randomized_svd(A, tol=0.1, seed=0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        wp.randomized_svd(np.ones(5), 1)
    with pytest.raises(ValueError, match="non-empty"):
        wp.randomized_svd(np.ones((0, 5)), 1)
    with pytest.raises(ValueError, match="non-empty"):
        wp.randomized_svd(sp.csr_array((0, 5)), tol=0.1)


# ---- properties ----------------------------------------------------------------------------------

@st.composite
def small_matrices(draw):
    dt = draw(st.sampled_from([np.float32, np.float64]))
    m, n = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    A = draw(hnp.arrays(dt, (m, n), elements=st.floats(-100, 100, width=32)))
    if draw(st.booleans()):
        A = np.asfortranarray(A)
    return A


@given(A=small_matrices(), data=st.data())
def test_property_factors(A, data):
    m, n = A.shape
    k = data.draw(st.integers(1, min(m, n)))
    direct = data.draw(st.sampled_from([-1, 0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        U, s, Vt, _ = _run(A, _MODE_RANK, rank=k, seed=data.draw(st.integers(0, 2**64 - 1)),
                           direct=direct)
    dtype = A.dtype
    assert U.shape == (m, k) and U.dtype == dtype
    sr = ref_svd(A)[1]
    scale = max(sr[0], 1e-30) if sr.size else 1.0
    tol = (1e-3 if dtype == np.float32 else 1e-9) * scale
    assert np.all(s >= 0) and np.all(np.diff(s.astype(float)) <= tol)
    assert np.all(s <= sr[:k] + tol)  # never above the true singular values
    E = A.astype(float) - (U.astype(float) * s) @ Vt
    if k < min(m, n):
        assert np.linalg.norm(E, 2) >= sr[k] - tol  # Eckart-Young
    # columns with nonzero s are orthonormal
    nz = s > tol
    if nz.any():
        Un = U[:, nz].astype(float)
        np.testing.assert_allclose(Un.T @ Un, np.eye(nz.sum()), atol=1e-3 if dtype == np.float32 else 1e-9)
    if k == min(m, n):
        assert np.linalg.norm(E) <= 10 * tol * np.sqrt(m * n)


def test_private_modes_smoke():
    A = planted(50, 40, spectrum("poly", 40), seed=21)
    assert _run(A, _MODE_TOL, tol=0.5, seed=0)[0].shape[0] == 50
    assert _run(A, _MODE_SVT, lam=0.1, seed=0, direct=0)[0].shape[0] == 50
