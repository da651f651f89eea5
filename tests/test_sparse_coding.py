import numpy as np
import pytest

from weightpress.sparse_coding import dct_dictionary, ksvd, sparse_code


def test_dct_orthonormal_and_overcomplete():
    D = dct_dictionary(16)
    np.testing.assert_allclose(D.T @ D, np.eye(16), atol=1e-12)
    D2 = dct_dictionary(16, 32)
    assert D2.shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(D2, axis=0), 1.0)


def test_rows_sparse_in_dct_are_recovered(dtype):
    rng = np.random.default_rng(0)
    D = dct_dictionary(32)
    C0 = np.zeros((40, 32))
    for i in range(40):
        C0[i, rng.choice(32, 3, replace=False)] = rng.uniform(1, 2, 3) * rng.choice([-1, 1], 3)
    W = (C0 @ D.T).astype(dtype)
    Dd, C = sparse_code(W, 3, dictionary="dct")
    assert C.dtype == dtype and Dd.dtype == dtype
    assert np.all(np.diff(C.indptr) <= 3)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose((C @ Dd.T), W, atol=tol * np.abs(W).max())


def test_ksvd_learns_planted_dictionary():
    rng = np.random.default_rng(1)
    D0 = rng.standard_normal((20, 30))
    D0 /= np.linalg.norm(D0, axis=0)
    X0 = np.zeros((30, 600))
    for s in range(600):
        X0[rng.choice(30, 3, replace=False), s] = rng.standard_normal(3)
    Y = D0 @ X0
    D, X = ksvd(Y, 30, 3, n_iter=30)
    err_learned = np.linalg.norm(Y - D @ X.toarray()) / np.linalg.norm(Y)
    Ddct = dct_dictionary(20, 30)
    _, Cd = sparse_code(Y.T, 3, dictionary=Ddct)
    err_dct = np.linalg.norm(Y.T - Cd @ Ddct.T) / np.linalg.norm(Y)
    assert err_learned < 0.5 * err_dct
    assert err_learned < 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="dictionary must be"):
        sparse_code(np.ones((4, 4)), 2, dictionary="wavelet")
    with pytest.raises(ValueError, match="dictionary: expected shape"):
        sparse_code(np.ones((4, 4)), 2, dictionary=np.ones((5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        sparse_code(np.full((4, 4), np.nan), 2)
    with pytest.raises(ValueError, match="n_nonzero must be >= 1"):
        sparse_code(np.ones((4, 4)), 0, dictionary="dct")
