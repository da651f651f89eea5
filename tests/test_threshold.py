import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weightpress as wp
from strategies import dense_arrays


def ref_soft(x, lam):
    x64 = x.astype(np.float64)
    return (np.sign(x64) * np.maximum(np.abs(x64) - lam, 0)).astype(x.dtype)


def ref_hard(x, theta):
    return np.where(np.abs(x) >= x.dtype.type(theta), x, 0).astype(x.dtype)


@given(dense_arrays(), st.floats(0, 100))
def test_soft_matches_reference(x, lam):
    y = wp.soft_threshold(x, lam)
    assert y.dtype == x.dtype and y.shape == x.shape
    lam_t = float(x.dtype.type(lam))
    ref = np.sign(x) * np.maximum(np.abs(x) - x.dtype.type(lam_t), 0)
    np.testing.assert_array_equal(y, ref.astype(x.dtype))


@given(dense_arrays(), st.floats(0, 100))
def test_hard_matches_reference(x, theta):
    y = wp.hard_threshold(x, theta)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, ref_hard(x, theta))


@given(dense_arrays(min_dims=1), st.floats(0, 10))
def test_soft_properties(x, lam):
    y = wp.soft_threshold(x, lam)
    # keeps sign, shrinks magnitude, non-expansive
    assert np.all(np.sign(y) * np.sign(x) >= 0)
    assert np.all(np.abs(y) <= np.abs(x))
    if x.size >= 2:
        a, b = x.reshape(-1)[0], x.reshape(-1)[-1]
        ya, yb = y.reshape(-1)[0], y.reshape(-1)[-1]
        assert abs(float(ya) - float(yb)) <= abs(float(a) - float(b)) * (1 + 1e-6) + 1e-30


@given(dense_arrays(min_dims=1), st.floats(0, 10), st.sampled_from(["soft", "hard"]))
def test_in_place_any_layout(x, lam, kind):
    f = wp.soft_threshold if kind == "soft" else wp.hard_threshold
    expected = f(x.copy(), lam)
    x2 = x.copy(order="K") if x.flags.forc else x
    y = f(x2, lam, out=x2)
    assert y is x2
    np.testing.assert_array_equal(x2, expected)


@given(dense_arrays(min_dims=1), st.sampled_from(["C", "F"]))
def test_out_with_other_layout(x, order):
    out = np.empty(x.shape, dtype=x.dtype, order=order)
    r = wp.soft_threshold(x, 0.5, out=out)
    assert r is out
    np.testing.assert_array_equal(out, ref_soft(x, 0.5) if x.dtype == np.float64 else wp.soft_threshold(np.ascontiguousarray(x), 0.5))


def test_overlapping_out_is_safe():
    base = np.arange(-5, 6, dtype=np.float64)
    x = base[:-1]
    out = base[1:]
    expected = wp.soft_threshold(x.copy(), 1.0)
    wp.soft_threshold(x, 1.0, out=out)
    np.testing.assert_array_equal(out, expected)


def test_nan_and_inf_propagate(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.5, -0.5, -3.0], dtype=dtype)
    s = wp.soft_threshold(x, 1.0)
    h = wp.hard_threshold(x, 1.0)
    assert np.isnan(s[0]) and np.isnan(h[0])
    assert s[1] == np.inf and s[2] == -np.inf and h[1] == np.inf and h[2] == -np.inf
    np.testing.assert_array_equal(s[3:], np.array([0, 0, -2.0], dtype=dtype))
    np.testing.assert_array_equal(h[3:], np.array([0, 0, -3.0], dtype=dtype))


def test_dtype_rules():
    assert wp.soft_threshold(np.ones(3, np.float32), 0.5).dtype == np.float32
    assert wp.soft_threshold(np.ones(3, np.float16), 0.5).dtype == np.float32
    assert wp.soft_threshold(np.arange(3), 0.5).dtype == np.float64
    assert wp.soft_threshold([1.0, -2.0], 0.5).tolist() == [0.5, -1.5]
    s = wp.soft_threshold(np.float64(2.0), 0.5)
    assert s.shape == () and float(s) == 1.5


@pytest.mark.parametrize("f", [wp.soft_threshold, wp.hard_threshold])
def test_bad_input(f):
    with pytest.raises(ValueError, match=r"(lam|theta) must be >= 0"):
        f(np.ones(3), -1.0)
    with pytest.raises(ValueError, match="(lam|theta) must be a number"):
        f(np.ones(3), np.nan)
    with pytest.raises(TypeError, match="real number"):
        f(np.ones(3), "1")
    with pytest.raises(TypeError, match="x: expected a real numeric"):
        f(np.ones(3, dtype=complex), 1.0)
    with pytest.raises(TypeError, match="out: expected dtype float64"):
        f(np.ones(3), 1.0, out=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="out: expected shape"):
        f(np.ones(3), 1.0, out=np.ones(4))
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        f(np.ones(3), 1.0, out=ro)
    with pytest.raises(ValueError, match="n_threads=0"):
        f(np.ones(3), 1.0, n_threads=0)


def test_threads_bit_identical(dtype):
    x = np.random.default_rng(0).standard_normal(300_001).astype(dtype)
    for f in (wp.soft_threshold, wp.hard_threshold):
        np.testing.assert_array_equal(f(x, 0.3, n_threads=1), f(x, 0.3, n_threads=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_threshold_is_well_defined(dtype):
    """lam = inf: every finite entry becomes a zero carrying x's sign, as NumPy's formulas
    compute (and PyWavelets' x * max(1 - lam/|x|, 0)); NaN and inf - inf stay NaN."""
    x = np.array([-3.0, -0.0, 0.0, 2.5, 1e30, -1e-30, np.nan, np.inf, -np.inf], dtype=dtype)
    with np.errstate(invalid="ignore"):
        ref_s = np.sign(x) * np.maximum(np.abs(x) - dtype(np.inf), 0)
        ref_h = x * (np.abs(x) >= dtype(np.inf))
    for f, ref in ((wp.soft_threshold, ref_s), (wp.hard_threshold, ref_h)):
        y = f(x, np.inf)
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y, ref)
        np.testing.assert_array_equal(np.signbit(y[:6]), np.signbit(ref[:6]))
        assert not y[:6].any()
    assert np.isnan(wp.soft_threshold(x, float("inf"))[6:8]).all()  # nan, inf - inf
    np.testing.assert_array_equal(wp.hard_threshold(x, np.inf)[7:], [np.inf, -np.inf])


def test_zeros_keep_the_sign_of_x():
    x = np.array([-0.5, 0.5, -2.0, -0.0])
    np.testing.assert_array_equal(np.signbit(wp.soft_threshold(x, 1.0)), [True, False, True, False])
    np.testing.assert_array_equal(np.signbit(wp.hard_threshold(x, 1.0)), [True, False, True, True])
