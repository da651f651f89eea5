import numpy as np
import pytest

from weightpress.compression.sparse_coding import dct_dictionary, ksvd, sparse_code


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


def test_sparse_coded_form_and_method(tmp_path):
    import weightpress.compression.methods as M
    from weightpress.compression.matrices import from_parts
    from weightpress.model.compress import compress_model
    from weightpress.compression.matrices import SparseCoded
    from weightpress.model.container import Container
    from weightpress.io.safetensors import write_safetensors, SafetensorsSource

    rng = np.random.default_rng(3)
    D = dct_dictionary(64)
    C0 = np.zeros((100, 64))
    for i in range(100):
        C0[i, rng.choice(64, 4, replace=False)] = rng.standard_normal(4)
    W = (C0 @ D.T).astype(np.float32)
    m = M.sparse_coded(W, nbytes=W.nbytes / 4)
    assert isinstance(m, SparseCoded) and "dictionary" not in m.parts()  # DCT: no bytes
    assert m.nbytes <= W.nbytes / 4 and m.relative_error(W) < 1e-5
    X = rng.standard_normal((64, 5)).astype(np.float32)
    np.testing.assert_allclose(m.matmul(X), W @ X, atol=1e-4)
    Y = rng.standard_normal((100, 3)).astype(np.float32)
    np.testing.assert_allclose(m.matmul(Y, transpose=True), W.T @ Y, atol=1e-4)
    r = from_parts("sparse-coded", m.parts(), m.shape)
    np.testing.assert_array_equal(r.toarray(), m.toarray())
    few = M.sparse_coded(W, error=0.5)
    assert few.codes.nnz < m.codes.nnz and few.relative_error(W) <= 0.5
    learned = M.sparse_coded(W, n_nonzero=2, dictionary="learned", n_atoms=16)
    assert learned.parts()["dictionary"].shape == (64, 16)
    # through a container
    write_safetensors(tmp_path / "m.safetensors", {"w": W})
    with SafetensorsSource(tmp_path / "m.safetensors") as src:
        compress_model(src, tmp_path / "m.wpz", ratio=3, method="code", min_size=10)
    with Container(str(tmp_path / "m.wpz")) as c:
        assert c.entries["w"]["form"] == "sparse-coded"
        np.testing.assert_allclose(c["w"], W, atol=1e-5)
