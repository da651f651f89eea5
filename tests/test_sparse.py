import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import weightpress as wp
from conftest import EPS
from strategies import csr_matrices, dense_arrays

# ----------------------------------------------------------------------------- prune


def ref_prune_keep(W, keep):
    """Reference: stable sort by (-|w|, row-major index), keep the first `keep` nonzeros."""
    flat = np.ascontiguousarray(W).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -np.abs(flat.astype(np.float64))))
    mask = np.zeros(flat.size, bool)
    mask[order[:keep]] = True
    mask &= flat != 0
    return np.where(mask.reshape(W.shape), W, 0)


def ref_prune_nm(W, n, m):
    out = np.zeros_like(W)
    for i in range(W.shape[0]):
        for g in range(0, W.shape[1], m):
            grp = W[i, g:g + m]
            order = np.lexsort((np.arange(grp.size), -np.abs(grp.astype(np.float64))))
            for j in order[:n]:
                if grp[j] != 0:
                    out[i, g + j] = grp[j]
    return out


def check_csr(A, W):
    assert isinstance(A, sp.csr_array)
    assert A.shape == W.shape and A.dtype == W.dtype
    assert A.indices.dtype == A.indptr.dtype == np.int32
    assert np.all(A.data != 0)
    # sorted, canonical
    for i in range(A.shape[0]):
        cols = A.indices[A.indptr[i]:A.indptr[i + 1]]
        assert np.all(np.diff(cols) > 0)


@st.composite
def matrices(draw, ties=False):
    a = draw(dense_arrays(min_dims=2, max_dims=2, max_side=20))
    if ties and a.size:
        # few distinct magnitudes -> many ties, plus zeros
        a = (np.round(a / 300.0) * 0.5).astype(a.dtype)
    return a


@given(matrices(ties=True), st.floats(0, 1))
def test_prune_sparsity_exact_count_and_ties(W, s):
    A = wp.prune(W, sparsity=s)
    check_csr(A, W)
    keep = W.size - int(round(s * W.size))
    expected = ref_prune_keep(W, keep)
    np.testing.assert_array_equal(A.toarray(), expected)
    assert A.nnz == min(keep, np.count_nonzero(W))


@given(matrices(), st.floats(0, 1000))
def test_prune_threshold(W, t):
    A = wp.prune(W, threshold=t)
    check_csr(A, W)
    np.testing.assert_array_equal(A.toarray(), np.where((np.abs(W) >= t) & (W != 0), W, 0))


@given(matrices(ties=True), st.integers(1, 8), st.integers(1, 8))
def test_prune_n_of_m(W, n, m):
    n = min(n, m)
    A = wp.prune(W, pattern=f"{n}:{m}")
    check_csr(A, W)
    np.testing.assert_array_equal(A.toarray(), ref_prune_nm(W, n, m))


def test_prune_2_4_keeps_half():
    W = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    A = wp.prune(W, pattern="2:4")
    assert A.nnz == W.size // 2
    dense = A.toarray().reshape(64, 32, 4)
    assert np.all((dense != 0).sum(axis=2) == 2)


def test_prune_large_float64_and_threads():
    W = np.random.default_rng(2).standard_normal((700, 500))
    W[::7, ::3] = 0.25  # ties
    a1 = wp.prune(W, sparsity=0.83, n_threads=1)
    a2 = wp.prune(W, sparsity=0.83, n_threads=2)
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(a1, name), getattr(a2, name))
    np.testing.assert_array_equal(a1.toarray(), ref_prune_keep(W, W.size - round(0.83 * W.size)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prune_sampled_cut_large(dtype):
    # above 2^16 entries the cut is bracketed from a sample and chosen among the entries in the
    # bracket: exact count, row-major ties, every thread count, any layout
    rng = np.random.default_rng(5)
    W = rng.standard_normal((300, 700)).astype(dtype)
    W[::5, ::2] = 1.25  # a block of ties straddling the cut
    keep = W.size - round(0.7 * W.size)
    ref = ref_prune_keep(W, keep)
    for n in (1, 2):
        A = wp.prune(W, sparsity=0.7, n_threads=n)
        check_csr(A, W)
        np.testing.assert_array_equal(A.toarray(), ref)
    np.testing.assert_array_equal(wp.prune(np.asfortranarray(W), sparsity=0.7).toarray(), ref)


def test_prune_sample_miss_falls_back():
    # 256 x 520: the sample covers the first 131072 entries only, and the largest entries all
    # sit in the last 4 rows, so the sample's bracket misses the cut: the exact fallback runs
    W = np.random.default_rng(6).standard_normal((256, 520))
    W[-4:] += np.sign(W[-4:]) * 100
    W[-1, ::2] = 100.5  # ties at the cut
    keep = 2048 - 100
    s = 1 - keep / W.size
    for n in (1, 2):
        A = wp.prune(W, sparsity=s, n_threads=n)
        check_csr(A, W)
        np.testing.assert_array_equal(A.toarray(), ref_prune_keep(W, W.size - round(s * W.size)))


def test_prune_layouts_read_in_place():
    W = np.random.default_rng(3).standard_normal((40, 30))
    ref = wp.prune(W, sparsity=0.5).toarray()
    np.testing.assert_array_equal(wp.prune(np.asfortranarray(W), sparsity=0.5).toarray(), ref)
    big = np.zeros((80, 90))
    big[::2, ::3] = W
    np.testing.assert_array_equal(wp.prune(big[::2, ::3], sparsity=0.5).toarray(), ref)
    np.testing.assert_array_equal(wp.prune(W[::-1, ::-1], sparsity=0.5).toarray(),
                                  ref_prune_keep(W[::-1, ::-1], 600))


def test_prune_edge_shapes(dtype):
    for shape in [(0, 5), (5, 0), (0, 0), (1, 1)]:
        W = np.ones(shape, dtype)
        for kw in [dict(sparsity=0.5), dict(threshold=0.1), dict(pattern="2:4")]:
            A = wp.prune(W, **kw)
            assert A.shape == shape and A.dtype == dtype
    assert wp.prune(np.ones((3, 3)), sparsity=0.0).nnz == 9
    assert wp.prune(np.ones((3, 3)), sparsity=1.0).nnz == 0
    inf = np.array([[np.inf, -1.0], [0.5, -np.inf]])
    np.testing.assert_array_equal(wp.prune(inf, sparsity=0.5).toarray(), [[np.inf, 0], [0, -np.inf]])


def test_prune_bad_input():
    W = np.ones((4, 4))
    with pytest.raises(ValueError, match="exactly one"):
        wp.prune(W)
    with pytest.raises(ValueError, match="exactly one"):
        wp.prune(W, sparsity=0.5, threshold=1.0)
    with pytest.raises(ValueError, match="sparsity must be <= 1"):
        wp.prune(W, sparsity=1.5)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        wp.prune(W, threshold=-1)
    with pytest.raises(ValueError, match="pattern"):
        wp.prune(W, pattern="4:2")
    with pytest.raises(ValueError, match="pattern"):
        wp.prune(W, pattern="two:four")
    with pytest.raises(ValueError, match="2-D"):
        wp.prune(np.ones(5), sparsity=0.5)
    with pytest.raises(TypeError, match="dense"):
        wp.prune(sp.csr_array(W), sparsity=0.5)
    Wn = W.copy()
    Wn[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        wp.prune(Wn, sparsity=0.5)


# ----------------------------------------------------------------------------- csr_matmul


def assert_product_close(y, A, X, transpose=False):
    Ad = A.toarray().astype(np.float64)
    if transpose:
        Ad = Ad.T
    X64 = np.asarray(X, dtype=np.float64)
    ref = Ad @ X64
    bound = (np.abs(Ad) @ np.abs(X64)).max(initial=0) + 1
    np.testing.assert_allclose(y, ref, rtol=0, atol=EPS[y.dtype] * bound)


@st.composite
def product_case(draw):
    A = draw(csr_matrices())
    transpose = draw(st.booleans())
    rows = A.shape[0] if transpose else A.shape[1]
    one_d = draw(st.booleans())
    # batch widths around the SpMM tiles: lockstep row blocks (8-32 columns), wide rows
    # (64+ float32 columns), and ragged tails that halve down to one column
    k = draw(st.one_of(st.integers(0, 9), st.sampled_from([15, 17, 31, 33, 63, 65, 70]))) if not one_d else None
    shape = (rows,) if one_d else (rows, k)
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    X = rng.uniform(-5, 5, shape).astype(A.dtype)
    layout = draw(st.sampled_from(["C", "F", "strided", "column-strided"]))
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "strided":
        X = np.repeat(X, 2, axis=0)[::2]
    elif layout == "column-strided" and X.ndim == 2:
        X = np.repeat(X, 3, axis=1)[:, ::3]
    return A, X, transpose


@given(product_case())
def test_csr_matmul_matches_dense(case):
    A, X, transpose = case
    y = wp.csr_matmul(A, X, transpose=transpose)
    assert y.dtype == A.dtype
    assert y.shape == ((A.shape[1] if transpose else A.shape[0]),) + X.shape[1:]
    assert_product_close(y, A, X, transpose)


@pytest.mark.parametrize("index", [np.int32, np.int64])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("k", [1, 3, 7, 17, 33, 64, 100, 256])
def test_csr_matmul_threads_bit_identical(k, transpose, dtype, index):
    A = sp.random_array((2000, 1500), density=0.02, format="csr", dtype=dtype, rng=4)
    A.indptr, A.indices = A.indptr.astype(index), A.indices.astype(index)
    rows = A.shape[0] if transpose else A.shape[1]
    X = np.random.default_rng(5).standard_normal((rows, k)).astype(dtype)
    y1 = wp.csr_matmul(A, X, transpose=transpose, n_threads=1)
    y2 = wp.csr_matmul(A, X, transpose=transpose, n_threads=2)
    np.testing.assert_array_equal(y1, y2)
    if index == np.int32:  # (the int64 kernels are checked against the int32 ones: cheaper)
        assert_product_close(y1, A, X, transpose)
    else:
        A32 = A.copy()
        A32.indptr, A32.indices = A.indptr.astype(np.int32), A.indices.astype(np.int32)
        np.testing.assert_allclose(y1, wp.csr_matmul(A32, X, transpose=transpose, n_threads=1),
                                   rtol=0, atol=EPS[np.dtype(dtype)] * (np.abs(y1).max(initial=0) + 1))


def test_csr_matmul_matrix_and_int64_and_out(dtype):
    A = sp.csr_matrix(sp.random(50, 40, density=0.3, dtype=dtype, random_state=6))
    A.indptr = A.indptr.astype(np.int64)
    A.indices = A.indices.astype(np.int64)
    X = np.random.default_rng(7).standard_normal((40, 3)).astype(dtype)
    out = np.empty((50, 3), dtype)
    r = wp.csr_matmul(A, X, out=out)
    assert r is out
    assert_product_close(out, A, X)
    outF = np.empty((50, 3), dtype, order="F")
    wp.csr_matmul(A, X, out=outF)
    np.testing.assert_array_equal(outF, out)
    v = np.empty(40, dtype)
    wp.csr_matmul(A, np.ones(50, dtype), transpose=True, out=v)
    assert_product_close(v, A, np.ones(50), transpose=True)


def test_csr_matmul_dtype_promotion():
    A = sp.random_array((5, 4), density=0.5, format="csr", dtype=np.float32, rng=1)
    assert wp.csr_matmul(A, np.ones(4, np.float32)).dtype == np.float32
    assert wp.csr_matmul(A, np.ones(4, np.float64)).dtype == np.float64
    assert wp.csr_matmul(A, np.ones(4, np.int64)).dtype == np.float64
    Ai = sp.csr_array(np.array([[1, 0], [0, 2]]))
    np.testing.assert_array_equal(wp.csr_matmul(Ai, [1, 1]), [1.0, 2.0])


def test_csr_matmul_duplicates_summed_unsorted():
    indptr = np.array([0, 3, 3, 5], np.int32)
    indices = np.array([2, 0, 2, 1, 1], np.int32)
    data = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    A = sp.csr_array((data, indices, indptr), shape=(3, 3))
    x = np.array([1.0, 10.0, 100.0])
    np.testing.assert_array_equal(wp.csr_matmul(A, x), [402.0, 0.0, 90.0])
    np.testing.assert_array_equal(wp.csr_matmul(A, x, transpose=True), [2.0, 900.0, 4.0])


def _raw_csr(indptr, indices, data, shape):
    A = sp.csr_array((np.array([1.0]), np.array([0]), np.array([0, 1])), shape=(1, 1))
    A.indptr, A.indices, A.data = (np.asarray(indptr, np.int32), np.asarray(indices, np.int32),
                                   np.asarray(data, np.float64))
    A._shape = shape
    return A


@pytest.mark.parametrize("transpose", [False, True])
def test_csr_matmul_malformed(transpose):
    x = np.ones(3)
    bad = {
        "not monotone": _raw_csr([0, 2, 1, 3], [0, 1, 2], [1, 1, 1], (3, 3)),
        "out of range": _raw_csr([0, 1, 2, 3], [0, 3, 1], [1, 1, 1], (3, 3)),
        "out of range ": _raw_csr([0, 1, 2, 3], [0, -1, 1], [1, 1, 1], (3, 3)),
        "indptr\\[0\\]": _raw_csr([1, 1, 2, 3], [0, 1, 1], [1, 1, 1], (3, 3)),
        "indptr has length": _raw_csr([0, 1, 3], [0, 1, 1], [1, 1, 1], (3, 3)),
        "indices has length": _raw_csr([0, 1, 2, 3], [0, 1, 1], [1, 1], (3, 3)),
        "indptr\\[-1\\]": _raw_csr([0, 1, 2, 2], [0, 1, 1], [1, 1, 1], (3, 3)),
    }
    for msg, A in bad.items():
        with pytest.raises(ValueError, match=msg.strip()):
            wp.csr_matmul(A, x, transpose=transpose)


def test_csr_matmul_bad_input():
    A = sp.random_array((5, 4), density=0.5, format="csr", rng=1)
    with pytest.raises(TypeError, match="CSR"):
        wp.csr_matmul(A.tocoo(), np.ones(4))
    with pytest.raises(TypeError, match="CSR"):
        wp.csr_matmul(A.toarray(), np.ones(4))
    with pytest.raises(ValueError, match="X: has 5 rows, expected 4"):
        wp.csr_matmul(A, np.ones(5))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        wp.csr_matmul(A, np.ones((4, 1, 1)))
    with pytest.raises(TypeError, match="real numeric"):
        wp.csr_matmul(A, np.ones(4, complex))
    with pytest.raises(ValueError, match="overlap"):
        X = np.ones((5, 5))
        wp.csr_matmul(A, X[:4, :], out=X[:5, :])
    with pytest.raises(ValueError, match="out: expected shape"):
        wp.csr_matmul(A, np.ones(4), out=np.ones(4))


def test_empty_shapes(dtype):
    for m, n, k in [(0, 3, 2), (3, 0, 2), (0, 0, 1), (1, 1, 1), (4, 4, 0)]:
        A = sp.csr_array((m, n), dtype=dtype)
        y = wp.csr_matmul(A, np.ones((n, k), dtype))
        assert y.shape == (m, k)
        assert not y.any()
        yt = wp.csr_matmul(A, np.ones((m, k), dtype), transpose=True)
        assert yt.shape == (n, k) and not yt.any()


@pytest.mark.parametrize("k", [1, 8])
@pytest.mark.parametrize("transpose", [False, True])
def test_csr_matmul_malformed_large(k, transpose):
    # large enough for every code path (blocked scatter, internal transpose, row-parallel)
    A = sp.random_array((3000, 2000), density=0.01, format="csr", rng=8)
    A.indices[A.nnz // 2] = 2000
    X = np.ones((3000 if transpose else 2000, k))
    with pytest.raises(ValueError, match="column index 2000 .* out of range"):
        wp.csr_matmul(A, X, transpose=transpose)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_spmm_paths_sum_alike(dtype, index):
    # X of 3000 rows x 128 float64 (or 256 float32) columns is larger than any L2 budget
    # (<= 2 MiB): the product streams X in blocks of its rows (sorted indices), while narrower
    # slices of X go through the one-pass wide rows and the lockstep row blocks. Every path
    # sums each output element over the row in index order with one accumulator, so the
    # columns agree exactly; unsorted rows fall back to one pass and still match.
    rng = np.random.default_rng(12)
    A = sp.random_array((700, 3000), density=0.05, format="csr", dtype=dtype, rng=rng)
    A.data -= dtype(0.5)
    A.indptr, A.indices = A.indptr.astype(index), A.indices.astype(index)
    k = 1024 // np.dtype(dtype).itemsize
    X = rng.standard_normal((3000, k)).astype(dtype)
    Y1 = wp.csr_matmul(A, X, n_threads=1)
    np.testing.assert_array_equal(Y1, wp.csr_matmul(A, X, n_threads=2))
    assert_product_close(Y1, A, X)
    for w in (100, 64, 33, 32, 16, 8):
        np.testing.assert_array_equal(wp.csr_matmul(A, X[:, :w], n_threads=2), Y1[:, :w])
    B = A.copy()  # every 7th row reversed: not sorted
    for i in range(0, 700, 7):
        s0, s1 = B.indptr[i], B.indptr[i + 1]
        B.indices[s0:s1], B.data[s0:s1] = B.indices[s0:s1][::-1].copy(), B.data[s0:s1][::-1].copy()
    B.has_sorted_indices = False
    Yb = wp.csr_matmul(B, X, n_threads=2)
    np.testing.assert_array_equal(Yb, wp.csr_matmul(B, X, n_threads=1))
    assert_product_close(Yb, B, X)
    keep = np.ones(700, bool)
    keep[::7] = False
    np.testing.assert_array_equal(Yb[keep], Y1[keep])
    bad = A.copy()
    bad.indices[bad.indptr[350] + 3] = 3000
    with pytest.raises(ValueError, match="column index 3000 .* out of range"):
        wp.csr_matmul(bad, X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_spmv_long_rows_every_isa_path(dtype, index):
    # rows long enough for the gathered vector loops (32+ entries) plus ragged tails, and
    # short rows; int32 and int64 indices; bit-identical for 1 and 2 threads
    rng = np.random.default_rng(11)
    A = sp.random_array((300, 500), density=0.3, format="csr", dtype=dtype, rng=rng)
    A.data -= dtype(0.5)
    A.indptr, A.indices = A.indptr.astype(index), A.indices.astype(index)
    x = rng.standard_normal(500).astype(dtype)
    y1 = wp.csr_matmul(A, x, n_threads=1)
    y2 = wp.csr_matmul(A, x, n_threads=2)
    np.testing.assert_array_equal(y1, y2)
    ref = A.astype(np.float64) @ x.astype(np.float64)
    bound = abs(A).astype(np.float64) @ np.abs(x.astype(np.float64))
    assert np.all(np.abs(y1 - ref) <= EPS[np.dtype(dtype)] * (bound + 1))
    for pos, val in ((bad_p, v) for bad_p in (A.indptr[150] + 40, A.indptr[151] - 1) for v in (500, -1)):
        bad = A.copy()
        bad.indices[pos] = val  # in a gathered vector, or the row's scalar tail
        with pytest.raises(ValueError, match=f"column index {val} at position {pos} is out of range"):
            wp.csr_matmul(bad, x)


_ISA_CHECK = """
import hashlib, os
import numpy as np, scipy.sparse as sp, weightpress as wp
from weightpress import _core
assert _core.isa_level() <= LEVEL, _core.isa_level()
if _core.isa_level() > 0 and os.environ.get("WP_SPMV_X"):
    isa = "avx512-" if _core.isa_level() == 2 else "avx2-"
    assert _core.spmv_x_path() == isa + os.environ["WP_SPMV_X"], _core.spmv_x_path()
digest = hashlib.sha256()
rng = np.random.default_rng(13)
for dt in (np.float32, np.float64):
    for ix in (np.int32, np.int64):
        A = sp.random_array((300, 500), density=0.3, format="csr", dtype=dt, rng=rng)
        A.data -= dt(0.5)
        A.indptr, A.indices = A.indptr.astype(ix), A.indices.astype(ix)
        for k in (1, 3, 32, 100):
            X = rng.standard_normal((500, k) if k > 1 else 500).astype(dt)
            y = wp.csr_matmul(A, X, n_threads=1)
            assert np.array_equal(y, wp.csr_matmul(A, X, n_threads=2))
            digest.update(y.tobytes())
            ref = A.astype(np.float64) @ X.astype(np.float64)
            bound = abs(A).astype(np.float64) @ np.abs(X.astype(np.float64))
            assert np.all(np.abs(y - ref) <= (1e-4 if dt == np.float32 else 1e-10) * (bound + 1))
        x = X[:, 0].copy()
        for where, val in ((40, 500), (41, -1), (-1, 500)):  # vector body, negative, row tail
            bad = A.copy()
            row = 150
            pos = (bad.indptr[row] if where >= 0 else bad.indptr[row + 1]) + where
            bad.indices[pos] = val
            try:
                wp.csr_matmul(bad, x)
            except ValueError as e:
                assert f"column index {val} at position {pos} is out of range" in str(e), e
            else:
                raise AssertionError(("no error", dt, ix, where))
print("ok", digest.hexdigest())
"""


@pytest.mark.parametrize("level", [0, 1])
def test_products_on_capped_isa(level):
    # WP_MAX_ISA caps the run-time dispatch: the AVX2 and baseline row loops (SpMV gathers
    # with the range check in the loop, SpMM blocks) checked on any x86-64 CPU
    import os
    import subprocess
    import sys

    env = dict(os.environ, WP_MAX_ISA=str(level))
    r = subprocess.run([sys.executable, "-c", _ISA_CHECK.replace("LEVEL", str(level))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[0] == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("level", [1, 2])
def test_spmv_reads_x_by_gather_or_loads_with_the_same_bits(level):
    # the AVX2 and AVX-512 SpMVs read x with a gather or entry by entry, whichever a one-time
    # measurement finds faster (cpp/csr.cpp loads_faster); WP_SPMV_X forces either: both must
    # give the same bits, range errors at the same positions, and the library must report the
    # path it took
    import os
    import subprocess
    import sys

    from weightpress import _core

    if _core.isa_level() < level:
        pytest.skip(f"this CPU runs ISA level {_core.isa_level()} (2 = AVX-512), not {level}")
    out = {}
    for mode in ("gather", "loads"):
        env = dict(os.environ, WP_MAX_ISA=str(level), WP_SPMV_X=mode)
        r = subprocess.run([sys.executable, "-c", _ISA_CHECK.replace("LEVEL", str(level))], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.split()[0] == "ok", r.stderr[-2000:]
        out[mode] = r.stdout.split()[1]
    assert out["gather"] == out["loads"], out


_LARGE_SPMV = """
import numpy as np, scipy.sparse as sp, weightpress as wp
from weightpress import _core
rng = np.random.default_rng(5)
A = sp.random_array((700, 900), density=0.2, format="csr", dtype=np.float32, rng=rng)
A.indptr, A.indices = A.indptr.astype(np.int32), A.indices.astype(np.int32)
x = rng.standard_normal(900).astype(np.float32)
before = _core.spmv_x_path()
ys = [wp.csr_matmul(A, x, n_threads=1) for i in range(4)] + [wp.csr_matmul(A, x, n_threads=2) for i in range(4)]
print(before.split("LLC: ")[1], _core.spmv_x_path().split("LLC: ")[1].replace(" ", "_"),
      all(np.array_equal(ys[0], y) for y in ys), ys[0].tobytes().hex()[:64])
"""


def test_spmv_larger_than_the_cache_chooses_how_to_read_x_by_timing_its_first_calls():
    # out of the last-level cache the first 3 SpMVs per size of x and thread class compute
    # their rows in slices alternately by gathers and loads, and the faster serves later
    # calls (cpp/csr.cpp x_read); WP_LLC_BYTES shrinks the cache so that
    # a small matrix counts as large. Every call gives the same bits as a forced path.
    import os
    import subprocess
    import sys

    from weightpress import _core

    if _core.isa_level() == 0:
        pytest.skip("the baseline SpMV has one way to read x")
    env = dict(os.environ, WP_LLC_BYTES="4096")
    env.pop("WP_SPMV_X", None)
    r = subprocess.run([sys.executable, "-c", _LARGE_SPMV], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after, same, head = r.stdout.split()
    # x: 900 float32 entries, 3.6 kB: the 4 KiB class, decided for one thread after 3 calls
    # (and for 2 threads where the product is large enough to take them)
    assert before == "measuring" and same == "True", r.stdout
    assert re.fullmatch(r"x_4_KiB_1t_(gather|loads)(,_x_4_KiB_2\+t_(gather|loads))?", after), r.stdout
    env["WP_SPMV_X"] = "gather"
    forced = subprocess.run([sys.executable, "-c", _LARGE_SPMV.replace('.split("LLC: ")[1]', "")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert forced.stdout.split()[-1] == head


def test_read_probe_is_xor_of_words():
    from weightpress import _core

    a = np.random.default_rng(1).integers(0, 2**63, 100_003, dtype=np.uint64)
    assert _core.read_probe(a, 1) == _core.read_probe(a, 2) == int(np.bitwise_xor.reduce(a))
    assert 0 <= _core.isa_level() <= 2


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(0, 3),
       st.sampled_from([np.float32, np.float64]), st.data())
def test_prune_by_row_blocks_keeps_what_prune_keeps(rows, cols, block, levels, dt, data):
    # prune_row_counts (the count pass alone) then each block of rows pruned to its share:
    # the same entries as one prune of the whole matrix, ties (few distinct magnitudes, signs,
    # zeros) in row-major order included - what sparse_quantize relies on to hold one block
    from weightpress.linalg.sparse import prune, prune_keep, prune_row_counts

    vals = data.draw(st.lists(st.integers(-levels, levels), min_size=rows * cols,
                              max_size=rows * cols))
    W = np.array(vals, dtype=dt).reshape(rows, cols)
    keep = data.draw(st.integers(0, rows * cols))
    ref = prune(W, sparsity=(W.size - keep) / W.size).toarray()
    ptr = prune_row_counts(W, keep)
    assert ptr.dtype == np.int64 and ptr[0] == 0 and ptr[-1] == np.count_nonzero(ref)
    got = np.zeros_like(W)
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        d, i, p = prune_keep(W[r0:r1], int(ptr[r1] - ptr[r0]))
        np.testing.assert_array_equal(np.asarray(p), ptr[r0:r1 + 1] - ptr[r0])
        got[r0:r1] = sp.csr_array((d, i, p), shape=(r1 - r0, cols)).toarray()
    np.testing.assert_array_equal(got, ref)


def _sysfs_caches():
    """{level: bytes} of cpu0's data and unified caches, read here from sysfs."""
    import glob
    import os

    def read(d, name):
        with open(os.path.join(d, name)) as f:
            return f.read().strip()

    out = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            level, kind, txt = int(read(d, "level")), read(d, "type"), read(d, "size")
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        size = int(txt.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
        out[level] = max(out.get(level, 0), size)
    return out


def test_cache_sizes_come_from_sysfs_where_linux_has_it():
    from weightpress import _core

    # The SpMV's column blocks (L2) and its larger-than-cache choice (the largest cache) use
    # one lookup; in a VM sysconf may report the host's L3 (320 MiB on a Zen 4 guest of 32).
    caches = _sysfs_caches()
    if not caches:
        pytest.skip("no /sys/devices/system/cpu/cpu0/cache on this system")
    for level, size in caches.items():
        assert _core.cache_bytes(level) == size
    assert _core.cache_bytes(0) == max(caches.values())
    assert _core.cache_bytes(9) == 0 or 9 in caches
