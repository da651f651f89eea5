"""Compressed matrices (weightpress.compression.matrices) against dense NumPy."""

import numpy as np
import pytest
import scipy.sparse as sp

import weightpress as wp
from helpers import assert_close as _close
from weightpress.compression import methods as M
from helpers import planted_lowrank as _planted
from weightpress.compression.matrices import from_parts
from weightpress.compression.matrices import Dense, LowRank, Sparse, SparsePlusLowRank

RNG = np.random.default_rng(42)


def _forms(W, layout):
    U, s, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    low = LowRank.from_svd(U[:, :5], s[:5], Vt[:5], layout, dtype=W.dtype)
    spm = Sparse(wp.prune(W, sparsity=0.7), layout)
    return [Dense(W, layout), spm, low,
            SparsePlusLowRank(Sparse(wp.prune(W - low.toarray(), sparsity=0.9), layout), low)]


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




@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_sparse_dense_enough_multiplies_dense(layout):
    # at or above the density where the CSR kernel's arrays are no smaller than the dense
    # matrix (50 % for float32 values with int32 indices), products go through a cached dense
    # copy (BLAS) that replaces the CSR cache; below it, through the CSR kernel
    rng = np.random.default_rng(21)
    W = rng.standard_normal((64, 48)).astype(np.float32)
    x = rng.standard_normal((5, 64 if layout == "in_out" else 48)).astype(np.float32)
    for sparsity, dense in ((0.4, True), (0.5, True), (0.55, False)):
        A = wp.prune(W, sparsity=sparsity)
        s = Sparse(A, layout)
        Wl = A.toarray() if layout == "out_in" else A.toarray().T
        y = s.apply(x)
        ref = x.astype(np.float64) @ Wl.astype(np.float64).T
        _close(y, ref, np.float32)
        assert (s._dense is not None) == dense and (s._csr is None) == dense
        _close(s.matmul(x.T[:, :1] if layout == "out_in" else x[:1].T.copy(), transpose=layout == "in_out"),
               ref[:1].T, np.float32)
    s = Sparse(wp.prune(W, sparsity=0.3))  # dense enough for float64 too (67 %)
    s.matmul(np.ones(48, np.float32))
    s.matmul(np.ones(48))  # float64: a float64 copy replaces the float32 one
    assert s._dense.dtype == np.float64


def test_csr_matmul_says_when_dense_is_faster():
    from weightpress.linalg import DenseFasterWarning, dense_product_pays

    assert dense_product_pays(500, (10, 100), np.float32, np.int32)
    assert not dense_product_pays(494, (10, 100), np.float32, np.int32)
    assert dense_product_pays(667, (10, 100), np.float64, np.int32)
    assert not dense_product_pays(660, (10, 100), np.float64, np.int32)
    assert dense_product_pays(334, (10, 100), np.float32, np.int64)
    rng = np.random.default_rng(22)
    W = rng.standard_normal((1024, 1024)).astype(np.float32)
    x = np.ones(1024, np.float32)
    with pytest.warns(DenseFasterWarning, match="50% of its 1024x1024 entries"):
        y = wp.csr_matmul(wp.prune(W, sparsity=0.5), x)
    _close(y, W.astype(np.float64) * (np.abs(W) >= np.median(np.abs(W))) @ x, np.float32)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wp.csr_matmul(wp.prune(W, sparsity=0.6), x)  # CSR smaller than dense: silent
        wp.csr_matmul(wp.prune(W, sparsity=0.5), x, check_dense=False)
        wp.csr_matmul(wp.prune(W[:512, :512], sparsity=0.1), x[:512])  # too small to matter
