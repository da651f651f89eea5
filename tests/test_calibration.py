"""Calibration statistics (weightpress.compression.calibration): streamed H = XᵀX, output
errors from H alone, bad inputs."""

import numpy as np
import pytest

from weightpress.compression.calibration import CalibrationStats, output_error
from weightpress.compression.data_aware import prune_obs


def test_stats_stream_and_error(layer):
    W, X, st = layer
    st2 = CalibrationStats(64, dtype=np.float64)
    for c in np.array_split(X, 7):
        st2.update(c)
    np.testing.assert_allclose(st2.hessian(), X.T @ X, rtol=1e-12)
    st32 = CalibrationStats(64)  # float32 by default: H is as large as a square weight
    for c in np.array_split(X, 7):
        st32.update(c)
    H32 = st32.hessian()
    assert H32.dtype == np.float32 and np.array_equal(H32, H32.T)
    np.testing.assert_allclose(H32, X.T @ X, rtol=0, atol=1e-5 * np.abs(X.T @ X).max())
    Wh = W + np.random.default_rng(1).standard_normal(W.shape) * 0.01
    direct = np.linalg.norm(X @ (W - Wh).T) / np.linalg.norm(X @ W.T)
    assert output_error(W, Wh, st) == pytest.approx(direct, rel=1e-9)
    st3 = CalibrationStats.from_inputs(X.reshape(10, 100, 64))  # (batch, tokens, features)
    np.testing.assert_allclose(st3.hessian(), X.T @ X, rtol=1e-12)


def test_stats_bad_input():
    st = CalibrationStats(8)
    with pytest.raises(ValueError, match="9 features, the layer takes 8"):
        st.update(np.ones((20, 9)))
    with pytest.raises(ValueError, match="NaN"):
        st.update(np.full((20, 8), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        st.update(np.ones(8))
    st.update(np.ones((5, 8)))
    with pytest.raises(ValueError, match="too few calibration samples"):
        st.hessian()
    with pytest.raises(ValueError, match="stats describe 8"):
        prune_obs(np.ones((3, 5)), CalibrationStats.from_inputs(np.ones((30, 8))), sparsity=0.5)


@pytest.mark.parametrize("shape,block", [((37, 203), 512), ((90, 31), 1 << 17), ((5, 1), 64)])
def test_quadratic_forms_over_half_of_h_are_the_full_products(shape, block):
    """The exact passes take H's symmetry (each column block meets the inputs from its own on,
    the ones below twice): the same numbers as the full products, for uneven blocks, a
    quantized Ŵ decoded by rows, and tr(W H Wᵀ) of the float32 statistics."""
    from weightpress.compression.calibration import _quadratic_forms
    from weightpress.compression.data_aware import quadratic_total
    from weightpress.compression.quant import quantize

    rng = np.random.default_rng(shape[1])
    W = rng.standard_normal(shape).astype(np.float32)
    X = rng.standard_normal((300, shape[1])).astype(np.float32) * np.linspace(0.2, 3, shape[1])
    st = CalibrationStats.from_inputs(X.astype(np.float32))
    H = st.hessian().astype(np.float64)
    Wh = quantize(W, bits=4)
    D = W.astype(np.float64) - Wh.toarray().astype(np.float64)
    num, den = _quadratic_forms(W, Wh, st.hessian(), True, block)
    assert num == pytest.approx(np.einsum("ij,ij->", D @ H, D), rel=1e-12)
    assert den == pytest.approx(np.einsum("ij,ij->", W @ H, W), rel=1e-12)
    assert quadratic_total(W, st) == pytest.approx(den, rel=1e-5)  # float32 products
