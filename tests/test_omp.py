"""Batch OMP: against scikit-learn's orthogonal_mp, exact recovery, stopping rules, degenerate
dictionaries, threads, dtypes and bad input."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weightpress as wp

sklm = pytest.importorskip("sklearn.linear_model")


def unit_dict(m, n, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, n))
    return (D / np.linalg.norm(D, axis=0)).astype(dtype)


def sparse_codes(n, N, k, seed):
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N))
    for s in range(N):
        idx = rng.choice(n, k, replace=False)
        X[idx, s] = rng.choice([-1, 1], k) * rng.uniform(0.5, 2.0, k)
    return X


def margins_ok(D, y, support_order, margin=1e-6):
    """True when every greedy choice along the path wins by a clear margin (no near-ties)."""
    chosen = []
    for j in support_order:
        if chosen:
            Ds = D[:, chosen]
            r = y - Ds @ np.linalg.lstsq(Ds, y, rcond=None)[0]
        else:
            r = y
        c = np.abs(D.T @ r) / np.linalg.norm(D, axis=0)
        c[chosen] = -1
        top = np.sort(c)[-2:]
        if top[1] - top[0] < margin * top[1]:
            return False
        chosen.append(int(np.argmax(c)))
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_orthogonal_mp(seed):
    m, n, N, k = 48, 120, 30, 6
    D = unit_dict(m, n, seed)
    rng = np.random.default_rng(100 + seed)
    Y = D @ sparse_codes(n, N, k, seed) + 0.05 * rng.standard_normal((m, N))
    X = wp.omp(D, Y, n_nonzero=k)
    Xs = sklm.orthogonal_mp(D, Y, n_nonzero_coefs=k)
    checked = 0
    for s in range(N):
        supp_s = np.flatnonzero(Xs[:, s])
        if not margins_ok(D, Y[:, s], supp_s):
            continue
        checked += 1
        np.testing.assert_array_equal(np.flatnonzero(X[:, s]), supp_s)
        np.testing.assert_allclose(X[:, s], Xs[:, s], rtol=0, atol=1e-8)
    assert checked >= N // 2


def test_exact_recovery_incoherent():
    m, n, N, k = 128, 256, 50, 8
    D = unit_dict(m, n, 7)
    X0 = sparse_codes(n, N, k, 8)
    X = wp.omp(D, D @ X0, n_nonzero=k)
    np.testing.assert_array_equal(X != 0, X0 != 0)
    np.testing.assert_allclose(X, X0, rtol=0, atol=1e-10)


def test_tol_stopping_matches_sklearn():
    m, n, N = 40, 100, 20
    D = unit_dict(m, n, 3)
    Y = np.random.default_rng(4).standard_normal((m, N))
    tol = 0.3 * float(np.min(np.sum(Y**2, axis=0)))
    X = wp.omp(D, Y, tol=tol)
    R2 = np.sum((Y - D @ X) ** 2, axis=0)
    assert np.all(R2 <= tol * (1 + 1e-10))
    Xs = sklm.orthogonal_mp(D, Y, tol=tol)
    np.testing.assert_array_equal((X != 0).sum(axis=0), (Xs != 0).sum(axis=0))
    # the pursuit stops at the first k that meets tol: k - 1 atoms did not
    for s in range(N):
        k = np.count_nonzero(X[:, s])
        if k > 1:
            Xk = wp.omp(D, Y[:, s], n_nonzero=k - 1)
            assert np.sum((Y[:, s] - D @ Xk) ** 2) > tol


def test_tol_zero_signal_and_small_norm():
    D = unit_dict(10, 20, 0)
    y = 0.1 * D[:, 3]
    assert not wp.omp(D, y, tol=0.011).any()          # ‖y‖² = 0.01 <= tol: x = 0
    assert not wp.omp(D, np.zeros(10), n_nonzero=3).any()
    assert not wp.omp(D, np.zeros((10, 4)), tol=0.0).any()


def test_both_criteria_first_wins():
    D = unit_dict(30, 60, 5)
    y = D @ sparse_codes(60, 1, 6, 6)[:, 0]
    assert np.count_nonzero(wp.omp(D, y, n_nonzero=3, tol=1e-12)) == 3
    assert np.count_nonzero(wp.omp(D, y, n_nonzero=50, tol=1e-20)) == 6


def test_n_nonzero_above_rank_stops_cleanly():
    rng = np.random.default_rng(0)
    D = rng.standard_normal((20, 4)) @ rng.standard_normal((4, 50))   # rank 4
    y = rng.standard_normal(20)
    x = wp.omp(D, y, n_nonzero=30)
    assert np.isfinite(x).all()
    assert 1 <= np.count_nonzero(x) <= 4
    # the fit is the projection onto range(D)
    P = D @ np.linalg.pinv(D)
    np.testing.assert_allclose(D @ x, P @ y, atol=1e-8)


def test_duplicated_atoms():
    D0 = unit_dict(16, 40, 1)
    D = np.hstack([D0, D0[:, :10]])            # atoms 40..49 duplicate 0..9
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((16, 25))
    X = wp.omp(D, Y, n_nonzero=16)
    assert np.isfinite(X).all()
    X0 = wp.omp(D0, Y, n_nonzero=16)
    folded = X[:40].copy()
    folded[:10] += X[40:]
    np.testing.assert_allclose(folded, X0, atol=1e-8)
    assert not np.any((X[:10] != 0) & (X[40:] != 0))


def test_non_unit_atoms_scale_invariance():
    m, n, N, k = 30, 70, 12, 5
    D = unit_dict(m, n, 9)
    Y = np.random.default_rng(10).standard_normal((m, N))
    scale = np.random.default_rng(11).uniform(0.01, 100.0, n)
    X = wp.omp(D, Y, n_nonzero=k)
    Xs = wp.omp(D * scale, Y, n_nonzero=k)
    np.testing.assert_array_equal(X != 0, Xs != 0)
    np.testing.assert_allclose(Xs * scale[:, None], X, atol=1e-9)


def test_zero_atom_never_chosen():
    D = unit_dict(8, 12, 2)
    D[:, 4] = 0
    X = wp.omp(D, np.random.default_rng(0).standard_normal((8, 10)), n_nonzero=8)
    assert not X[4].any()
    assert np.isfinite(X).all()


def test_batch_equals_one_by_one_and_dictionary():
    D = unit_dict(24, 64, 12)
    Y = np.random.default_rng(13).standard_normal((24, 17))
    X = wp.omp(D, Y, n_nonzero=5)
    d = wp.OMPDictionary(D)
    for s in range(Y.shape[1]):
        # one signal takes other kernels (lazy Gram columns, a hand-written Dᵀy instead of
        # gemm): the same support, coefficients equal up to rounding
        for xs in (wp.omp(D, Y[:, s], n_nonzero=5), d.encode(Y[:, s], n_nonzero=5)):
            np.testing.assert_array_equal(xs != 0, X[:, s] != 0)
            np.testing.assert_allclose(xs, X[:, s], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d.encode(Y, n_nonzero=5), X)


@pytest.mark.parametrize("tol", [None, 20.0])
def test_lazy_gram_path_matches_full(tol):
    # 2·N·k <= n_atoms: wp.omp computes only the Gram columns it needs, in lockstep rounds
    D = unit_dict(60, 400, 20)
    Y = np.random.default_rng(21).standard_normal((60, 7))
    X = wp.omp(D, Y, n_nonzero=20, tol=tol)
    Xf = wp.OMPDictionary(D).encode(Y, n_nonzero=20, tol=tol)
    np.testing.assert_array_equal(X != 0, Xf != 0)
    np.testing.assert_allclose(X, Xf, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(X, wp.omp(D, Y, n_nonzero=20, tol=tol, n_threads=1))
    Xs = sklm.orthogonal_mp(D, Y, n_nonzero_coefs=20 if tol is None else None, tol=tol)
    assert ((X != 0).sum(axis=0) < 20).all() or tol is None   # tol=20 stops before 20 atoms
    np.testing.assert_array_equal((X != 0).sum(axis=0), (Xs != 0).sum(axis=0))


@pytest.mark.parametrize("n_atoms", [30, 400])       # full-Gram and lazy paths
def test_chunked_batches_identical(n_atoms):
    from weightpress import _core
    D = unit_dict(20, n_atoms, 22)
    Y = np.ascontiguousarray(np.random.default_rng(23).standard_normal((20, 23)))
    p = _core.OmpParams()
    p.kmax, p.tol = 5, -1.0
    ref = _core.omp(D, Y, None, p, 2)
    for chunk in (1, 7, 23):
        p.chunk = chunk
        out = _core.omp(D, Y, None, p, 2)
        for a, b in zip(ref, out):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_threads_identical():
    D = unit_dict(64, 256, 14)
    Y = np.random.default_rng(15).standard_normal((64, 300))
    a = wp.omp(D, Y, n_nonzero=12, n_threads=1)
    b = wp.omp(D, Y, n_nonzero=12, n_threads=2)
    np.testing.assert_array_equal(a, b)


def test_correlation_blocks_match_sklearn_threads_and_the_cached_gram():
    # Past a few signals DᵀY is computed in gemms of 256 signals on weightpress's threads, BLAS
    # on one (pursuit.cpp, correlate_blocks); 517 = 2·256 + 5 also sends a last block of at
    # most 8 signals to the hand-written product.
    D = unit_dict(40, 120, 30)
    Y = np.random.default_rng(31).standard_normal((40, 517))
    X = wp.omp(D, Y, n_nonzero=6)
    Xs = sklm.orthogonal_mp(D, Y, n_nonzero_coefs=6)
    np.testing.assert_array_equal(X != 0, Xs != 0)
    np.testing.assert_allclose(X, Xs, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(X, wp.omp(D, Y, n_nonzero=6, n_threads=1))
    np.testing.assert_array_equal(X, wp.OMPDictionary(D).encode(Y, n_nonzero=6, n_threads=2))


def test_sparse_result():
    D = unit_dict(20, 50, 16)
    Y = np.random.default_rng(17).standard_normal((20, 9))
    X = wp.omp(D, Y, n_nonzero=4)
    Xs = wp.omp(D, Y, n_nonzero=4, return_sparse=True)
    assert isinstance(Xs, sp.csc_array) and Xs.shape == X.shape
    assert Xs.has_canonical_format
    np.testing.assert_array_equal(Xs.toarray(), X)
    assert Xs.nnz == np.count_nonzero(X)


def test_float32(dtype):
    D = unit_dict(32, 80, 18, dtype)
    X0 = sparse_codes(80, 10, 4, 19).astype(dtype)
    X = wp.omp(D, D @ X0, n_nonzero=4)
    assert X.dtype == dtype
    np.testing.assert_array_equal(X != 0, X0 != 0)
    np.testing.assert_allclose(X, X0, atol=1e-4 if dtype == np.float32 else 1e-10)


def test_mixed_dtype_promotes():
    D = unit_dict(8, 16, 0, np.float32)
    assert wp.omp(D, np.ones(8), n_nonzero=2).dtype == np.float64
    assert wp.OMPDictionary(D).encode(np.ones(8), n_nonzero=2).dtype == np.float32


def test_empty_shapes():
    D = unit_dict(6, 9, 0)
    assert wp.omp(D, np.zeros((6, 0)), n_nonzero=2).shape == (9, 0)
    assert wp.omp(np.zeros((0, 5)), np.zeros(0), n_nonzero=2).shape == (5,)
    with pytest.warns(UserWarning, match="n_nonzero=1"):
        assert wp.omp(np.zeros((3, 0)), np.ones(3), n_nonzero=1).shape == (0,)


@given(data=st.data())
def test_property_least_squares_on_support(data):
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    m = data.draw(st.integers(1, 12))
    n = data.draw(st.integers(1, 20))
    N = data.draw(st.integers(1, 4))
    el = st.floats(-10, 10, width=32)
    # (float32 atoms whose squared norms fall below float32's normal range, entries under
    # ~1e-19, are solved with subnormal precision: a 9.4e-23 atom's coefficient erred 5 %, on
    # the code before and after issue 14's OMP changes alike; outside what float32 promises)
    D = data.draw(hnp.arrays(dt, (m, n), elements=el if dt == np.float64
                             else el.filter(lambda v: v == 0 or abs(v) >= 1e-15)))
    Y = data.draw(hnp.arrays(dt, (m, N), elements=el))
    if data.draw(st.booleans()):
        D, Y = np.asfortranarray(D), np.asfortranarray(Y)
    k = data.draw(st.integers(1, 25))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        X = wp.omp(D, Y, n_nonzero=k)
    assert any("n_nonzero" in str(r.message) for r in w) == (k > n)
    assert X.dtype == dt and X.shape == (n, N)
    assert np.isfinite(X).all()
    assert ((X != 0).sum(axis=0) <= min(k, m, n)).all()
    D64, Y64 = D.astype(np.float64), Y.astype(np.float64)
    for s in range(N):
        S = np.flatnonzero(X[:, s])
        if S.size == 0:
            continue
        # x_S is the least-squares fit on its support: residual orthogonal to the chosen atoms
        r = Y64[:, s] - D64[:, S] @ X[S, s].astype(np.float64)
        scale = np.linalg.norm(D64[:, S], axis=0) * (np.linalg.norm(Y64[:, s]) + 1)
        assert np.all(np.abs(D64[:, S].T @ r) <= (1e-2 if dt == np.float32 else 1e-6) * scale)


def test_bad_input():
    D = unit_dict(5, 8, 0)
    with pytest.raises(ValueError, match="Y"):
        wp.omp(D, np.ones(4))
    with pytest.raises(ValueError, match="n_nonzero"):
        wp.omp(D, np.ones(5), n_nonzero=0)
    with pytest.raises(TypeError, match="n_nonzero"):
        wp.omp(D, np.ones(5), n_nonzero=2.5)
    with pytest.raises(ValueError, match="tol"):
        wp.omp(D, np.ones(5), tol=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        wp.omp(D, np.array([1, np.nan, 0, 0, 0.0]))
    Dn = D.copy()
    Dn[0, 0] = np.inf
    with pytest.raises(ValueError, match="D"):
        wp.omp(Dn, np.ones(5))
    with pytest.raises(ValueError, match="D"):
        wp.omp(np.ones(5), np.ones(5))
    with pytest.raises(TypeError):
        wp.omp(D.astype(complex), np.ones(5))
    with pytest.raises(TypeError, match="sparse"):
        wp.omp(sp.csr_array(D), np.ones(5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("N", [1, 8, 9])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_non_finite_dictionary_found_through_the_correlations(bad, N, dt):
    # up to 8 signals the engine finds a bad D through DᵀY, where 0·Inf is NaN: the entry sits
    # on a row where every signal is 0, so only that product can reveal it
    D = unit_dict(6, 10, 1).astype(dt)
    D[2, 4] = bad
    Y = np.random.default_rng(2).standard_normal((6, N)).astype(dt)
    Y[2] = 0
    with pytest.raises(ValueError, match="D contains NaN or Inf"):
        wp.omp(D, Y if N > 1 else Y[:, 0], n_nonzero=2)
    D[2, 4] = 1.0
    wp.omp(D, Y, n_nonzero=2)  # and a finite D passes


def test_overflowing_correlations_are_an_error_not_garbage():
    D = unit_dict(6, 10, 1) * 1e200
    with pytest.raises(ValueError, match="overflow"):
        wp.omp(D, np.full(6, 1e200), n_nonzero=2)


def test_n_nonzero_above_the_atoms_warns_and_clips():
    D = unit_dict(20, 8, 3)
    y = D @ np.arange(1.0, 9.0)
    with pytest.warns(UserWarning, match="n_nonzero=12"):
        x = wp.omp(D, y, n_nonzero=12)
    np.testing.assert_allclose(x, np.arange(1.0, 9.0), atol=1e-10)  # all 8 atoms used
    with pytest.warns(UserWarning, match="n_nonzero=9"):
        wp.OMPDictionary(D).encode(y, n_nonzero=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wp.omp(D, y, n_nonzero=8)  # exactly the number of atoms: no warning


@pytest.mark.parametrize("N", [1, 3])
def test_few_signals_predicted_gram_columns_match_sklearn(N):
    # Few signals (2·N·k <= n_atoms) compute only the Gram columns they touch; with k >= 16 the
    # likeliest next atoms' columns come along in one gemm (hits and misses both happen here).
    m, n, k = 96, 800, 20
    D = unit_dict(m, n, 7)
    rng = np.random.default_rng(8)
    Y = D @ sparse_codes(n, N, k, 9) + 0.01 * rng.standard_normal((m, N))
    X = wp.omp(D, Y, n_nonzero=k)
    Xs = sklm.orthogonal_mp(D, Y, n_nonzero_coefs=k).reshape(n, N)
    for s in range(N):
        supp_s = np.flatnonzero(Xs[:, s])
        assert margins_ok(D, Y[:, s], supp_s)
        np.testing.assert_array_equal(np.flatnonzero(X[:, s]), supp_s)
        np.testing.assert_allclose(X[:, s], Xs[:, s], rtol=0, atol=1e-8)
    # the full-Gram path (syrk instead of gemm columns: equal up to rounding)
    np.testing.assert_allclose(X, wp.OMPDictionary(D).encode(Y, n_nonzero=k), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(X, wp.omp(D, Y, n_nonzero=k, n_threads=1))


@pytest.mark.parametrize("N", [1, 2])
def test_few_signals_gram_columns_in_strips_on_two_threads_match_one_and_sklearn(N):
    # Blocks of Gram columns of at least 1M multiply-adds go in strips of 384 atoms over the
    # threads (pursuit.cpp, small_atb): 2000 atoms make five strips and a partial sixth.
    m, n, k = 160, 2000, 24
    D = unit_dict(m, n, 41)
    Y = D @ sparse_codes(n, N, k, 42) + 0.01 * np.random.default_rng(43).standard_normal((m, N))
    X = wp.omp(D, Y, n_nonzero=k, n_threads=2)
    np.testing.assert_array_equal(X, wp.omp(D, Y, n_nonzero=k, n_threads=1))
    Xs = sklm.orthogonal_mp(D, Y, n_nonzero_coefs=k).reshape(n, N)
    np.testing.assert_array_equal(X.reshape(n, N) != 0, Xs != 0)
    np.testing.assert_allclose(X.reshape(n, N), Xs, rtol=0, atol=1e-8)


def test_few_signal_calls_reuse_their_buffers_safely():
    """The lazy path keeps its buffers per calling thread between calls (small ones): calls of
    other sizes in between, and calls from several Python threads at once, give exactly what
    each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    cases = []
    for m, n, k, dt in ((64, 256, 8, np.float64), (40, 97, 5, np.float32), (128, 512, 16, np.float64),
                        (64, 256, 3, np.float64)):
        D = rng.standard_normal((m, n)).astype(dt)
        Y = rng.standard_normal((m, 2)).astype(dt)
        cases.append((D, Y, k))
    alone = [wp.omp(D, Y, n_nonzero=k) for D, Y, k in cases]
    for _ in range(2):   # sizes alternating on one thread: the reused buffers shrink and grow
        for (D, Y, k), want in zip(cases[::-1], alone[::-1]):
            np.testing.assert_array_equal(wp.omp(D, Y, n_nonzero=k), want)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: [wp.omp(c[0], c[1], n_nonzero=c[2]) for _ in range(20)], cases))
    for g, want in zip(got, alone):
        for x in g:
            np.testing.assert_array_equal(x, want)
