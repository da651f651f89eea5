"""CSR products, pruning and thresholding: weightpress vs SciPy/NumPy, side by side.

For the memory-bound kernels the table also shows the achieved fraction of the measured
memory bandwidth (bytes the kernel must move / time / bandwidth).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import weightpress as wp
from _harness import Table, memory_bandwidth, ms, timeit


def _csr_bytes(A, k: int, transpose: bool) -> int:
    it = A.data.itemsize
    rows, cols = A.shape
    xin, yout = (rows, cols) if transpose else (cols, rows)
    return A.nnz * (it + A.indices.itemsize) + (rows + 1) * A.indptr.itemsize + (xin + yout) * k * it


def bench_products(quick: bool) -> None:
    bw = memory_bandwidth()
    cases = [("768x3072 pruned 90%", 768, 3072, 0.10), ("20000x20000 0.1%", 20000, 20000, 0.001),
             ("4096x4096 pruned 50%", 4096, 4096, 0.5)]
    ks = [1, 8, 32, 256]
    if quick:
        cases = [("300x200 10%", 300, 200, 0.1)]
        ks = [1, 8]
    t = Table("CSR products (median ms; ratio = scipy / weightpress, >1 means faster)",
              ["matrix", "dtype", "op", "k", "scipy ms", "wp 1t ms", "wp 2t ms", "ratio 2t", "bw frac 2t"])
    for name, m, n, dens in cases:
        for dt in (np.float32, np.float64):
            A = sp.random_array((m, n), density=dens, format="csr", dtype=dt, rng=0)
            for transpose in (False, True):
                AT = A.T  # scipy's A.T @ X (a CSC view; no conversion)
                for k in ks:
                    rows = m if transpose else n
                    X = np.random.default_rng(1).standard_normal((rows, k) if k > 1 else rows).astype(dt)
                    ref_fn = (lambda: AT @ X) if transpose else (lambda: A @ X)
                    t_ref, ref = timeit(ref_fn)
                    t1, y1 = timeit(lambda: wp.csr_matmul(A, X, transpose=transpose, n_threads=1))
                    t2, y2 = timeit(lambda: wp.csr_matmul(A, X, transpose=transpose, n_threads=2))
                    scale = float(np.abs(ref).max(initial=0)) + 1
                    assert np.abs(y2 - ref).max(initial=0) <= (1e-3 if dt == np.float32 else 1e-10) * scale
                    frac = _csr_bytes(A, k, transpose) / t2 / bw
                    t.add(name, np.dtype(dt).name, "A.T@X" if transpose else "A@X", k, ms(t_ref), ms(t1),
                          ms(t2), t_ref / t2, frac)
    t.print()


def _numpy_prune(W, sparsity):
    """What a NumPy user writes: argpartition on |W|, mask, scipy CSR."""
    keep = W.size - int(round(sparsity * W.size))
    flat = np.abs(W).ravel()
    idx = np.argpartition(flat, W.size - keep)[W.size - keep:]
    mask = np.zeros(W.size, bool)
    mask[idx] = True
    return sp.csr_array(np.where(mask.reshape(W.shape), W, 0))


def bench_prune(quick: bool) -> None:
    shapes = [(768, 3072), (4096, 4096)] if not quick else [(100, 80)]
    t = Table("prune to CSR (median ms; ratio = numpy / weightpress)",
              ["shape", "dtype", "mode", "numpy+scipy ms", "wp 1t ms", "wp 2t ms", "ratio 2t", "bw frac 2t"])
    bw = memory_bandwidth()
    for shape in shapes:
        for dt in (np.float32, np.float64):
            W = np.random.default_rng(2).standard_normal(shape).astype(dt)
            t_ref, ref = timeit(lambda: _numpy_prune(W, 0.9))
            t1, a1 = timeit(lambda: wp.prune(W, sparsity=0.9, n_threads=1))
            t2, a2 = timeit(lambda: wp.prune(W, sparsity=0.9, n_threads=2))
            assert a2.nnz == ref.nnz
            passes = 4 if dt == np.float32 else 6  # nan check + radix passes + count + fill
            t.add(f"{shape[0]}x{shape[1]}", np.dtype(dt).name, "sparsity=0.9", ms(t_ref), ms(t1), ms(t2),
                  t_ref / t2, passes * W.nbytes / t2 / bw)
            thr = float(np.quantile(np.abs(W), 0.9))
            t_ref, ref = timeit(lambda: sp.csr_array(np.where(np.abs(W) >= thr, W, 0)))
            t1, _ = timeit(lambda: wp.prune(W, threshold=thr, n_threads=1))
            t2, a2 = timeit(lambda: wp.prune(W, threshold=thr, n_threads=2))
            assert a2.nnz == ref.nnz
            t.add(f"{shape[0]}x{shape[1]}", np.dtype(dt).name, "threshold", ms(t_ref), ms(t1), ms(t2),
                  t_ref / t2, 3 * W.nbytes / t2 / bw)
    t.print()


def bench_threshold(quick: bool) -> None:
    n = 1 << 24 if not quick else 1 << 12
    t = Table("soft/hard threshold, in place (median ms; ratio = numpy / weightpress)",
              ["n", "dtype", "op", "numpy ms", "wp 1t ms", "wp 2t ms", "ratio 2t", "bw frac 2t"])
    bw = memory_bandwidth()
    for dt in (np.float32, np.float64):
        x = np.random.default_rng(3).standard_normal(n).astype(dt)
        out = np.empty_like(x)
        lam = dt(0.5)

        def np_soft():
            np.abs(x, out=out)
            np.subtract(out, lam, out=out)
            np.maximum(out, 0, out=out)
            return np.copysign(out, x, out=out)

        def np_hard():
            return np.multiply(x, np.abs(x) >= lam, out=out)

        for op, ref_fn, f in (("soft", np_soft, wp.soft_threshold), ("hard", np_hard, wp.hard_threshold)):
            t_ref, _ = timeit(ref_fn)
            t1, _ = timeit(lambda: f(x, 0.5, out=out, n_threads=1))
            t2, _ = timeit(lambda: f(x, 0.5, out=out, n_threads=2))
            t.add(n, np.dtype(dt).name, op, ms(t_ref), ms(t1), ms(t2), t_ref / t2, 2 * x.nbytes / t2 / bw)
    t.print()


def run(quick: bool) -> None:
    bench_products(quick)
    bench_prune(quick)
    bench_threshold(quick)
