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


