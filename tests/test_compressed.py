"""Compressed matrices against dense NumPy, and the methods' budgets."""

import numpy as np
import pytest
import scipy.sparse as sp

import weightpress as wp
from weightpress.compression import methods as M
from weightpress.compression.matrices import from_parts
from weightpress.compression.matrices import Dense, LowRank, Sparse, SparsePlusLowRank

RNG = np.random.default_rng(42)


def _planted(m=48, n=40, r=6, noise=0.05, dtype=np.float32, seed=0):
    g = np.random.default_rng(seed)
    W = g.standard_normal((m, r)) @ g.standard_normal((r, n)) + noise * g.standard_normal((m, n))
    return W.astype(dtype)


def _forms(W, layout):
    U, s, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    low = LowRank.from_svd(U[:, :5], s[:5], Vt[:5], layout, dtype=W.dtype)
    spm = Sparse(wp.prune(W, sparsity=0.7), layout)
    return [Dense(W, layout), spm, low,
            SparsePlusLowRank(Sparse(wp.prune(W - low.toarray(), sparsity=0.9), layout), low)]


def _close(got, ref, dtype):
    tol = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]
    scale = np.abs(ref).max(initial=0) + 1
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * scale * 10)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_matmul_apply_toarray_match_dense(dtype, layout):
    W = _planted(dtype=dtype)
    X = RNG.standard_normal((W.shape[1], 7)).astype(dtype)
    Y = RNG.standard_normal((W.shape[0], 3)).astype(dtype)
    for m in _forms(W, layout):
        D = m.toarray().astype(np.float64)
        assert m.toarray().dtype == dtype and m.shape == W.shape and m.dtype == dtype
        out = m.matmul(X)
        assert out.dtype == dtype
        _close(out, D @ X, dtype)
        _close(m.matmul(Y, transpose=True), D.T @ Y, dtype)
        _close(m.matmul(X[:, 0]), D @ X[:, 0], dtype)
        # the layer: y = x W^T ([out, in]) or y = x W ([in, out])
        x = RNG.standard_normal((5, m.in_features)).astype(dtype)
        ref = x @ D.T if layout == "out_in" else x @ D
        assert m.out_features == ref.shape[1]
        _close(m.apply(x), ref, dtype)


def test_layout_decides_features():
    W = _planted(30, 20)
    a, b = Dense(W, "out_in"), Dense(W, "in_out")
    assert (a.in_features, a.out_features) == (20, 30)
    assert (b.in_features, b.out_features) == (30, 20)
    with pytest.raises(ValueError, match="features"):
        a.apply(np.ones((2, 30)))
    with pytest.raises(ValueError, match="layout"):
        Dense(W, "rows")


def test_nbytes_arithmetic():
    W = _planted(300, 70)  # 70 columns: uint8 column indices
    s = Sparse(wp.prune(W, sparsity=0.8), "out_in")
    nnz = round(0.2 * W.size)
    assert s.nnz == nnz and s.n_params == nnz
    assert s.nbytes == nnz * (4 + 1) + 301 * 4 == M.sparse_nbytes(W.shape, nnz, 4)
    mid = Sparse(wp.prune(_planted(20, 300), sparsity=0.5))  # 300 columns: uint16
    assert mid.indices.dtype == np.uint16
    low = M.low_rank(W, 7)
    assert low.nbytes == 7 * (300 + 70) * 4 == M.lowrank_nbytes(W.shape, 7, 4)
    assert low.n_params == 7 * 370
    slr = SparsePlusLowRank(s, low)
    assert slr.nbytes == s.nbytes + low.nbytes and slr.n_params == s.n_params + low.n_params
    assert Dense(W).nbytes == W.nbytes
    wide = Sparse(sp.csr_array(np.eye(3, 70000, dtype=np.float64)))
    assert wide.indices.dtype == np.int32 and wide.nbytes == 3 * (8 + 4) + 4 * 4


def test_relative_error_and_parts_round_trip():
    W = _planted()
    for m in _forms(W, "out_in"):
        err = np.linalg.norm(W.astype(np.float64) - m.toarray()) / np.linalg.norm(W)
        assert m.relative_error(W) == pytest.approx(err, rel=1e-6, abs=1e-12)
        again = from_parts(m.form, m.parts(), m.shape, m.layout)
        np.testing.assert_array_equal(again.toarray(), m.toarray())


def test_bad_inputs():
    W = _planted()
    s = Sparse(wp.prune(W, sparsity=0.5))
    with pytest.raises(ValueError, match="rows"):
        s.matmul(np.ones((3, 2)))
    with pytest.raises(TypeError, match="CSR"):
        Sparse(W)
    with pytest.raises(ValueError, match="factors"):
        LowRank(np.ones((3, 2)), np.ones((3, 4)))
    p = s.parts()
    bad = dict(p, indices=p["indices"].copy())
    bad["indices"][0] = s.shape[1]  # one past the last column
    with pytest.raises(ValueError, match="out of range"):
        from_parts("sparse", bad, s.shape)
    with pytest.raises(ValueError, match="missing"):
        from_parts("lowrank", {"left": np.ones((2, 1))}, (2, 2))
    with pytest.raises(ValueError, match="NaN"):
        M.low_rank(np.full((3, 3), np.nan), 1)


# -- methods and their budgets ---------------------------------------------------------------

@pytest.mark.parametrize("err", [0.05, 0.2, 0.5])
def test_error_budgets_are_met_and_tight(err):
    W = _planted()
    p = M.magnitude_prune(W, error=err)
    assert p.relative_error(W) <= err
    # one entry fewer would break the budget: the fewest entries were kept
    fewer = M.magnitude_prune(W, sparsity=1 - (p.nnz - 1) / W.size)
    assert fewer.relative_error(W) > err
    lr = M.low_rank(W, error=err)
    assert lr.relative_error(W) <= err * (1 + 1e-5)
    if lr.rank > 0:
        assert M.low_rank(W, lr.rank - 1).relative_error(W) > err
    slr = M.sparse_plus_low_rank(W, 2, error=err)
    assert slr.relative_error(W) <= err * (1 + 1e-5)


@pytest.mark.parametrize("ratio", [2, 4, 10])
def test_byte_budgets_are_met(ratio):
    W = _planted(64, 96)
    nb = W.nbytes / ratio
    for m in (M.magnitude_prune(W, nbytes=nb), M.low_rank(W, nbytes=nb),
              M.nm_prune(W, nbytes=nb), M.auto(W, nbytes=nb),
              M.sparse_plus_low_rank(W, 2, nbytes=nb)):
        if m.form == "sparse" and m.nnz in (0, W.size // 8):  # nothing, or 1:8, the least N:M
            continue
        assert m.nbytes <= nb, (m, nb)


def test_auto_picks_the_right_form_and_never_grows():
    W_low = _planted(80, 80, r=4, noise=1e-4)
    assert M.auto(W_low, error=0.01).form == "lowrank"
    W_sparse = np.zeros((80, 80), np.float32)
    W_sparse[RNG.integers(0, 80, 60), RNG.integers(0, 80, 60)] = 1.0
    assert M.auto(W_sparse, error=0.01).form == "sparse"
    noise = RNG.standard_normal((40, 40)).astype(np.float32)
    for err in (0.0, 1e-3, 0.01):
        m = M.auto(noise, error=err)
        assert m.nbytes <= noise.nbytes
        assert m.relative_error(noise) <= err + 1e-6
    assert M.auto(noise, error=0.0).form == "dense"
    assert M.auto(noise, nbytes=noise.nbytes * 2).form == "dense"
    tiny = np.ones((1, 1), np.float32)
    assert M.auto(tiny, nbytes=1).nbytes <= tiny.nbytes


def test_sparse_plus_low_rank_recovers_planted():
    g = np.random.default_rng(3)
    L = g.standard_normal((60, 3)) @ g.standard_normal((3, 50))
    S = np.zeros((60, 50))
    S.flat[g.choice(S.size, 40, replace=False)] = 20 * g.choice([-1, 1], 40)
    m = M.sparse_plus_low_rank(L + S, 3, error=0.01, iterations=10)
    assert m.relative_error(L + S) <= 0.01
    assert m.sparse.nnz <= 2 * 40  # alternation finds the spikes
    one_shot = M.sparse_plus_low_rank(L + S, 3, error=0.01, iterations=0)
    assert one_shot.sparse.nnz > 2 * m.sparse.nnz


def test_nm_pattern_and_method_checks():
    W = _planted(16, 32)
    m = M.nm_prune(W, "2:4")
    dense = m.toarray().reshape(16, 8, 4)
    assert ((dense != 0).sum(axis=2) <= 2).all() and m.nnz == 16 * 16
    with pytest.raises(ValueError, match="exactly one"):
        M.magnitude_prune(W, sparsity=0.5, error=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        M.low_rank(W)


@pytest.mark.parametrize("fn", [lambda W: M.magnitude_prune(W, sparsity=0.5),
                                lambda W: M.low_rank(W, 3), lambda W: M.nm_prune(W, "2:4"),
                                lambda W: M.auto(W, nbytes=W.nbytes / 3),
                                lambda W: M.sparse_plus_low_rank(W, 2, error=0.5)])
def test_float16_stays_float16(fn):
    W = _planted(32, 32).astype(np.float16)
    m = fn(W)
    assert m.dtype == np.float16 and m.toarray().dtype == np.float16
    assert all(p.dtype in (np.float16, np.uint8, np.uint16, np.int32) for p in m.parts().values())
    assert m.matmul(np.ones((32, 2), np.float32)).dtype == np.float32


def test_uses_randomized_svd_when_available(monkeypatch):
    calls = []

    def fake(A, rank=None, *, tol=None, seed=None, **kw):  # exact, truncated like the real one
        calls.append((rank, tol))
        if tol is not None and tol < 1e-3:
            import warnings
            warnings.warn("tol not reached", RuntimeWarning)
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        r = rank if rank is not None else M._rank_for_error(s, float(np.sum(s**2)), tol)
        return U[:, :r].astype(A.dtype), s[:r].astype(A.dtype), Vt[:r].astype(A.dtype)
    monkeypatch.setattr(M, "randomized_svd", fake)
    W = _planted(60, 50)
    assert M.low_rank(W, 4).rank == 4 and calls[-1] == (4, None)
    m = M.low_rank(W, error=0.1)
    assert calls[-1] == (None, 0.1) and m.relative_error(W) <= 0.1 * (1 + 1e-5)
    assert M.low_rank(W, error=1e-4).relative_error(W) <= 1e-4  # warned -> exact SVD instead
    assert M.auto(W, error=0.1).relative_error(W) <= 0.1 * (1 + 1e-5)
    assert M.low_rank(W, 0).rank == 0 and M.low_rank(W, error=1.0).rank == 0
