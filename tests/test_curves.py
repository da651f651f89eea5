"""One-pass error-vs-size curves (model/curves.py) against the forms they predict, built and
measured; and calibration statistics streamed in chunks."""

from __future__ import annotations

import numpy as np
import pytest

from weightpress.compression.calibration import CalibrationSet, CalibrationStats, output_error
from weightpress.compression.data_aware import lowrank_whitened
from weightpress.compression.methods import low_rank, magnitude_prune
from weightpress.compression.storage import nnz_for_bytes, rank_for_bytes, sparse_nbytes
from weightpress.model import curves
from weightpress.model.compress import layer_curve
from weightpress.model.rules import Decision


@pytest.fixture()
def W() -> np.ndarray:
    rng = np.random.default_rng(1)
    U = rng.standard_normal((72, 40))
    return ((U * np.arange(1, 41) ** -0.7) @ rng.standard_normal((40, 56))
            + 0.05 * rng.standard_normal((72, 56))).astype(np.float32)


@pytest.mark.parametrize("storage", [None, "BF16"])
def test_prune_curve_matches_built_pruning(W, storage):
    pts = curves.prune_curve(W.astype(np.float64), W, storage, W.shape, 2 if storage else 4,
                             W.nbytes)
    assert len(pts) > 30
    for nb, err, budget in pts[::5]:
        m = magnitude_prune(W, nbytes=budget, storage=storage)
        assert m.nbytes == nb
        assert m.relative_error(W) == pytest.approx(err, rel=1e-6, abs=1e-9)


def test_lowrank_curve_is_the_svd_tail(W):
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    pts = curves.lowrank_curve(W.astype(np.float64), W.shape, 4, W.nbytes)
    for nb, err, budget in pts:
        r = rank_for_bytes(W.shape, budget, 4)
        assert err == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s ** 2)), rel=1e-9)
        m = low_rank(W, r)
        assert m.nbytes == nb
        assert m.relative_error(W) == pytest.approx(err, rel=2e-3, abs=1e-6)


def test_whitened_curve_is_the_exact_output_error(W):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 56)) @ rng.standard_normal((56, 56)) * np.linspace(3, 0.1, 56)
    st = CalibrationStats.from_inputs(X)
    Wo = W.astype(np.float64)
    pts = curves.whitened_curve(Wo, st, W.shape, 4, W.nbytes, damp=1e-2)
    for nb, err, budget in pts[::4]:
        r = rank_for_bytes(W.shape, budget, 4)
        A, B, _ = lowrank_whitened(Wo, st, rank=r, damp=1e-2)
        assert output_error(Wo, A @ B, st) == pytest.approx(err, rel=1e-7, abs=1e-10)


def test_layer_curve_labels_rebuild_their_points(W):
    d = Decision("w", W.shape, W.dtype, "auto")
    cands = layer_curve(W, d, W.nbytes, "out_in", None, {}, None, False)
    assert cands[0].label == "dense"
    forms = {c.label.partition("@")[0] for c in cands[1:]}
    assert {"prune", "lowrank"} <= forms  # (auto also measures quantization, by building it)
    for c in [c for c in cands[1:] if c.label.partition("@")[0] in ("prune", "lowrank")][::7]:
        form, _, nb = c.label.partition("@")
        m = (magnitude_prune(W, nbytes=float(nb)) if form == "prune"
             else low_rank(W, rank_for_bytes(W.shape, float(nb), 4)))
        assert m.nbytes == c.nbytes < W.nbytes
        assert nnz_for_bytes(W.shape, float(nb), 4) >= 0


def test_calibration_streams_memory_mapped_chunks(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5000, 24)).astype(np.float16)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    st = CalibrationStats(24).update(mm, chunk=700)
    ref = X.astype(np.float64).T @ X.astype(np.float64)
    tol = 1e-5 * np.abs(ref).max()  # float16 inputs: H in float32
    np.testing.assert_allclose(st.hessian(), ref, rtol=0, atol=tol)
    assert st.n_samples == 5000
    np.savez(tmp_path / "cal.npz", w=X)  # stored uncompressed: read memory-mapped
    cs = CalibrationSet(str(tmp_path / "cal.npz"))
    assert cs.path == str(tmp_path / "cal.npz")
    np.testing.assert_allclose(cs["w"].hessian(), ref, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="NaN"):
        CalibrationStats(24).update(np.full((3, 24), np.nan, np.float16))


@pytest.mark.parametrize("dtype,rel", [(np.float64, 1e-8), (np.float32, 1e-4)])
def test_obs_curve_is_the_output_error_of_the_rebuilt_layer(dtype, rel):
    # one factor, one sweep per level, each sweep's own Σ e² less the dampening's share: the
    # exact output error (undamped H) of what prune_obs builds at that point's budget
    from helpers import correlated_inputs
    from weightpress.compression.data_aware import prune_obs
    rng = np.random.default_rng(5)
    X = correlated_inputs(rng, 400, 48)
    X[:, 7] = 0.0  # a dead input
    W = (rng.standard_normal((40, 48)) / 7).astype(dtype)
    st = CalibrationStats.from_inputs(X.astype(dtype))
    H0 = st.hessian().copy()
    pts = curves.obs_curve(W, st, W.shape, W.itemsize, W.nbytes, (0.8, 0.5, 0.3, 0.1))
    assert np.array_equal(st.hessian(), H0)  # the factor shared H's buffer; H is restored
    assert len(pts) == 4 and all(a[1] < b[1] for a, b in zip(pts, pts[1:]))
    for nb, err, budget in pts:
        k = nnz_for_bytes(W.shape, budget, W.itemsize)
        P = prune_obs(W, st, sparsity=1.0 - k / W.size)
        assert sparse_nbytes(W.shape, P.nnz, W.itemsize) == nb
        assert output_error(W, P, st) == pytest.approx(err, rel=rel)
