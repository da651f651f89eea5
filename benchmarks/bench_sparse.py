"""CSR products, pruning and thresholding: weightpress beside its peers, side by side.

Peers: scipy.sparse ``A @ X``; ``sparse_dot_mkl`` (optional: ``pip install sparse-dot-mkl mkl``
and ``MKL_RT`` pointing at the environment's ``lib/libmkl_rt.so.*``, which this module sets
when it finds one); dense ``W @ X``; the NumPy soft-threshold expression and its
no-temporary ``out=`` form; ``pywt.threshold`` (optional: ``pip install PyWavelets``);
``np.argpartition`` + SciPy CSR construction for pruning. Memory-bound kernels also show the
fraction of the 2-thread copy bandwidth measured in the same run.

``WP_BENCH_SPARSE=spmm,spmv`` runs only the named sections (spmv, spmm, products, crossover,
prune, threshold, grain, small); ``WP_BENCH_LARGE=1`` (``run.py --large``) adds SpMV shapes
larger than the last-level cache (32768² at 90 %: about 0.9 GB of CSR, 3 GB of memory while
it is built), which CI's quick mode never runs.
"""

from __future__ import annotations

import glob
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

import weightpress as wp
from _harness import (QUICK, Table, interleaved_best, last_level_cache, memory_bandwidth, ms,
                      read_bandwidth, timeit)

# the 50 % rows compare CSR with dense on purpose: the library's advice to go dense is known here
warnings.simplefilter("ignore", wp.DenseFasterWarning)

LARGE = os.environ.get("WP_BENCH_LARGE", "") not in ("", "0")


def _mkl_dot():
    if "MKL_RT" not in os.environ:
        libs = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
        if libs:
            os.environ["MKL_RT"] = libs[0]
    try:
        from sparse_dot_mkl import dot_product_mkl
    except Exception as e:  # not installed, or MKL not found
        print(f"(sparse_dot_mkl unavailable: {type(e).__name__}: {str(e)[:80]}; column left empty)")
        return None
    return dot_product_mkl


def _csr_bytes(A, k: int) -> int:
    it = A.data.itemsize
    rows, cols = A.shape
    return A.nnz * (it + A.indices.itemsize) + (rows + 1) * A.indptr.itemsize + (rows + cols) * k * it


def _close(y, ref, dt) -> None:
    scale = float(np.abs(ref).max(initial=0)) + 1
    assert np.abs(y - ref).max(initial=0) <= (2e-3 if dt == np.float32 else 1e-10) * scale


def bench_products(quick: bool) -> None:
    mkl = _mkl_dot()
    bw = memory_bandwidth()
    shapes = [(768, 3072), (1536, 384), (4096, 4096)]
    sparsities, batches = [0.5, 0.9, 0.99], [1, 32, 256]
    dtypes = [np.float32]
    if quick:
        shapes, sparsities, batches = [(96, 64)], [0.9], [1, 8]
    t = Table("CSR products, A @ X and A.T @ X (median ms; 'x scipy' = scipy ms / wp 2-thread ms, "
              "'x mkl' likewise; bw = wp 2-thread bytes moved / time / 2-thread copy bandwidth)",
              ["shape", "dtype", "sparsity", "op", "k", "scipy", "mkl", "dense", "wp 1t", "wp 2t",
               "x scipy", "x mkl", "x dense", "bw"])
    for dt in dtypes + ([] if quick else [np.float64]):
        for shape in (shapes if dt == np.float32 else [(4096, 4096)]):
            for s in (sparsities if dt == np.float32 else [0.9]):
                A = sp.random_array(shape, density=1 - s, format="csr", dtype=dt, rng=0)
                A.data = (A.data - 0.5).astype(dt)
                Wd = A.toarray()
                for transpose in (False, True):
                    B, Bd = (A.T, Wd.T) if transpose else (A, Wd)
                    for k in batches:
                        rows = shape[0] if transpose else shape[1]
                        X = np.random.default_rng(1).standard_normal((rows, k) if k > 1 else rows).astype(dt)
                        t_ref, ref = timeit(lambda: B @ X)
                        t_dense, _ = timeit(lambda: Bd @ X)
                        t_mkl = None
                        if mkl is not None:
                            t_mkl, ym = timeit(lambda: mkl(B, X))
                            _close(ym, ref, dt)
                        t1, y1 = timeit(lambda: wp.csr_matmul(A, X, transpose=transpose, n_threads=1))
                        t2, y2 = timeit(lambda: wp.csr_matmul(A, X, transpose=transpose, n_threads=2))
                        _close(y2, ref, dt)
                        t.add(f"{shape[0]}x{shape[1]}", np.dtype(dt).name, s, "A.T@X" if transpose else "A@X", k,
                              ms(t_ref), "-" if t_mkl is None else ms(t_mkl), ms(t_dense), ms(t1), ms(t2),
                              t_ref / t2, "-" if t_mkl is None else t_mkl / t2, t_dense / t2,
                              _csr_bytes(A, k) / t2 / bw)
    t.print()


def bench_spmm(quick: bool) -> None:
    """A @ X against sparse_dot_mkl (MKL's mkl_sparse_?_mm, row-major X) with the same thread
    count, the contestants called in turn and the least time kept (interleaved_best: a busy
    spell of the shared machine hits both alike). 2 threads pause 0.25 s before each call so
    MKL's spinning OpenMP threads go idle first."""
    mkl = _mkl_dot()
    set_mkl = None
    if mkl is not None:
        import sparse_dot_mkl

        set_mkl = sparse_dot_mkl.mkl_set_num_threads
    n = 4096 if not quick else 128
    t = Table(f"SpMM A @ X, {n}x{n} (least ms of interleaved calls; 'x mkl' = mkl ms / wp ms, "
              "> 1: weightpress faster; scipy: median ms, one thread)",
              ["dtype", "sparsity", "k", "scipy", "mkl 1t", "wp 1t", "x mkl 1t", "mkl 2t", "wp 2t",
               "x mkl 2t", "load"])
    cases = [(np.float32, s, k) for s in (0.9, 0.5) for k in (8, 32, 256)] + \
        [(np.float64, 0.9, k) for k in (32, 256)]
    if quick:
        cases = [(np.float32, 0.9, 8), (np.float64, 0.9, 32)]
    for dt, s, k in cases:
        A = sp.random_array((n, n), density=1 - s, format="csr", dtype=dt, rng=0)
        A.data = (A.data - 0.5).astype(dt)
        X = np.random.default_rng(1).standard_normal((n, k)).astype(dt)
        t_ref, ref = timeit(lambda: A @ X, repeat=3, min_time=0.1)
        row = [np.dtype(dt).name, s, k, ms(t_ref)]
        for nt in (1, 2):
            fns = [lambda: wp.csr_matmul(A, X, n_threads=nt)]
            if mkl is not None:
                set_mkl(nt)
                fns.append(lambda: mkl(A, X))
            best = interleaved_best(fns, budget=1.5 if nt == 1 else 3.0, pause=0.25 if nt == 2 else 0.0)
            _close(fns[0](), ref, dt)
            if mkl is not None:
                _close(fns[1](), ref, dt)
                row += [ms(best[1]), ms(best[0]), best[1] / best[0]]
            else:
                row += ["-", ms(best[0]), "-"]
        row.append(f"{os.getloadavg()[0]:.1f}")
        t.add(*row)
    if set_mkl is not None:
        set_mkl(2)
    t.print()


def _csr_random_rows(n: int, density: float, dt, rng) -> sp.csr_array:
    """n x n CSR with exactly round(density * n) entries per row, one drawn uniformly from each
    run of n / nnz_row columns (sorted, no duplicates): a random pattern built in O(nnz)."""
    per = max(1, round(density * n))
    edges = np.linspace(0, n, per + 1).astype(np.int64)
    lo, width = edges[:-1], np.diff(edges)
    idx = (lo + (rng.random((n, per)) * width).astype(np.int64)).astype(np.int32)
    data = (rng.random(n * per, dtype=np.float32) - 0.5).astype(dt)
    indptr = np.arange(0, n * per + 1, per, dtype=np.int32 if n * per < 2**31 else np.int64)
    return sp.csr_array((data, idx.reshape(-1), indptr), shape=(n, n))


def bench_spmv_bandwidth(quick: bool) -> None:
    """SpMV (batch 1) on matrices at and above the last-level cache: fraction of the measured
    read bandwidth, side by side with SciPy, sparse_dot_mkl and dense GEMV."""
    from weightpress import _core

    mkl = _mkl_dot()
    llc = last_level_cache()
    bw1, bw2 = read_bandwidth(1), read_bandwidth(2)
    sizes = [4096, 8192] if not quick else [256]
    if LARGE and not quick:
        sizes.append(32768)  # 90 %: 107M entries, ~0.86 GB of CSR (> any LLC here)
    t = Table(f"SpMV A @ x float32 (median ms; bytes = CSR (values + int32 indices + indptr) + x + y; "
              f"'rd bw' = bytes / time / read bandwidth with as many threads ({bw1 / 1e9:.1f} GB/s 1t, "
              f"{bw2 / 1e9:.1f} GB/s 2t); LLC {llc >> 20} MiB; dense = NumPy W @ x, its own threads; "
              f"'vs read' = least time reading the CSR's arrays / least time of wp, called in turn)",
              ["n", "sparsity", "CSR MB", "> LLC", "scipy", "mkl", "dense", "wp 1t", "wp 2t", "x scipy",
               "x mkl", "x dense", "rd bw 1t", "rd bw 2t", "dense rd bw", "vs read 1t", "vs read 2t",
               "load"])
    rng = np.random.default_rng(0)
    for n in sizes:
        for s in ((0.5, 0.9) if n <= 8192 else (0.9,)):
            A = _csr_random_rows(n, 1 - s, np.float32, rng)
            x = rng.standard_normal(n).astype(np.float32)
            by = _csr_bytes(A, 1)
            Wd = A.toarray() if n * n * 4 <= (1 << 30) else None
            t_ref, ref = timeit(lambda: A @ x)
            t_dense = timeit(lambda: Wd @ x)[0] if Wd is not None else None
            Wd = None  # the dense copy (up to 1 GiB) is freed before the next shape
            t_mkl = timeit(lambda: mkl(A, x))[0] if mkl is not None else None
            t1, _ = timeit(lambda: wp.csr_matmul(A, x, n_threads=1))
            t2, y2 = timeit(lambda: wp.csr_matmul(A, x, n_threads=2))
            _close(y2, ref, np.float32)
            # robust under load: reading the CSR's own arrays (read_probe) and the SpMV called
            # in turn, least times: the fraction of the attainable read rate, same moment
            words = [a[: a.nbytes // 8 * 8 // a.itemsize].view(np.uint64) for a in (A.data, A.indices, A.indptr)]
            vs_read = []
            for nt in (1, 2):
                tr, tw = interleaved_best([lambda: [_core.read_probe(w, nt) for w in words],
                                           lambda: wp.csr_matmul(A, x, n_threads=nt)], budget=3.0, max_rounds=12)
                vs_read.append(tr / tw)
            t.add(n, s, by / 1e6, by > llc, ms(t_ref), "-" if t_mkl is None else ms(t_mkl),
                  "-" if t_dense is None else ms(t_dense), ms(t1), ms(t2), t_ref / t2,
                  "-" if t_mkl is None else t_mkl / t2, "-" if t_dense is None else t_dense / t2,
                  by / t1 / bw1, by / t2 / bw2, "-" if t_dense is None else n * n * 4 / t_dense / bw2,
                  vs_read[0], vs_read[1], f"{os.getloadavg()[0]:.1f}")
    t.print()
    # out of the LLC the way x is read is chosen by timing the first calls (cpp/csr.cpp x_read)
    print(f"SpMV reads x by {_core.spmv_x_path()}")


def _best(fn, n: int) -> float:
    """Least time of n calls (serial cost on a shared machine: the minimum filters preemption)."""
    fn()
    best = float("inf")
    for _ in range(1 if QUICK else n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_grain(quick: bool) -> None:
    """The CSR products' serial cost per entry (what cpp/csr.cpp's cost model is fitted to) and
    1 vs 2 threads (the model sends a product to threads above 14 µs of predicted serial work)."""
    t = Table("thread grain: CSR product serial ns per entry, 1 thread, in cache (best of 200), "
              "against csr.cpp's model (pred = model x nnz: 2 threads pay off above ~14 µs)",
              ["n", "density", "k", "op", "ns/entry", "model", "pred µs", "wp 1t µs", "wp 2t µs", "2t/1t"])
    rng = np.random.default_rng(0)
    A0 = sp.csr_array((np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(2, np.int32)), shape=(1, 8))
    x0 = np.ones(8, np.float32)
    t_call = _best(lambda: wp.csr_matmul(A0, x0, n_threads=1), 2000)
    for n, d in ([(1024, 0.1), (1024, 0.5)] if not quick else [(64, 0.3)]):
        A = sp.random_array((n, n), density=d, format="csr", dtype=np.float32, rng=0)
        for k in (1, 8, 32):
            X = rng.standard_normal((n, k) if k > 1 else n).astype(np.float32)
            for tr in (False, True):
                t1 = _best(lambda: wp.csr_matmul(A, X, transpose=tr, n_threads=1), 200)
                model = 0.025 * ((28 + 2.6 * k) if tr else (12 + k))
                t2 = _best(lambda: wp.csr_matmul(A, X, transpose=tr, n_threads=2), 200)
                t.add(n, d, k, "A.T@X" if tr else "A@X", (t1 - t_call) / A.nnz * 1e9, model,
                      model * A.nnz / 1e3, t1 * 1e6, t2 * 1e6, t2 / t1)
    t.print()


def bench_small_products(quick: bool) -> None:
    """cpp/include/weightpress/blas.hpp kSmallProduct: a single vector against an m x n matrix
    through our loop or BLAS gemv (median of 100: BLAS's threads show in the median)."""
    from weightpress import _core

    t = Table("small products: y = A x through our loop vs BLAS gemv (median µs of 100); "
              "kSmallProduct = 2^18 entries", ["dtype", "entries", "own µs", "blas µs", "own/blas"])
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for e in (range(12, 23, 2) if not quick else [10]):
            m = n = int(2 ** (e / 2))
            A = rng.standard_normal((m, n)).astype(dt)
            x = rng.standard_normal(n).astype(dt)
            y0, y1 = _core.dense_matvec(A, x, False), _core.dense_matvec(A, x, True)
            _close(y0, y1, dt)
            ts = {}
            for use in (False, True):
                fn = (lambda u=use: _core.dense_matvec(A, x, u))
                fn()
                v = []
                for _ in range(1 if QUICK else 100):
                    t0 = time.perf_counter()
                    fn()
                    v.append(time.perf_counter() - t0)
                ts[use] = float(np.median(v))
            t.add(np.dtype(dt).name, f"2^{e}", ts[False] * 1e6, ts[True] * 1e6, ts[False] / ts[True])
    t.print()


def bench_crossover(quick: bool) -> None:
    """At which sparsity does sparse start to beat dense W @ X?"""
    shape = (4096, 4096) if not quick else (128, 128)
    t = Table(f"sparse vs dense {shape[0]}x{shape[1]} float32, A @ X (median ms)",
              ["k", "sparsity", "dense", "scipy", "wp 2t", "wp beats dense", "scipy beats dense"])
    Wfull = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    for k in ([1, 32] if not quick else [1]):
        X = np.random.default_rng(3).standard_normal((shape[1], k) if k > 1 else shape[1]).astype(np.float32)
        t_dense, _ = timeit(lambda: Wfull @ X)
        for s in ([0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] if not quick else [0.5]):
            A = wp.prune(Wfull, sparsity=s)
            t_ref, _ = timeit(lambda: A @ X)
            t2, _ = timeit(lambda: wp.csr_matmul(A, X, n_threads=2))
            t.add(k, s, ms(t_dense), ms(t_ref), ms(t2), t2 < t_dense, t_ref < t_dense)
    t.print()


def _numpy_prune(W, sparsity):
    """What a NumPy user writes: argpartition on |W|, a mask, SciPy CSR construction."""
    keep = W.size - int(round(sparsity * W.size))
    flat = np.abs(W).ravel()
    idx = np.argpartition(flat, W.size - keep)[W.size - keep:]
    mask = np.zeros(W.size, bool)
    mask[idx] = True
    return sp.csr_array(np.where(mask.reshape(W.shape), W, 0))


def bench_prune(quick: bool) -> None:
    shapes = [(768, 3072), (1536, 384), (4096, 4096)] if not quick else [(100, 80)]
    t = Table("prune to CSR, sparsity=0.9 and threshold (median ms; x = numpy path / wp 2t; "
              "GB/s = bytes of W / time)",
              ["shape", "dtype", "mode", "numpy+scipy", "wp 1t", "wp 2t", "x numpy", "numpy GB/s", "wp GB/s"])
    for shape in shapes:
        for dt in (np.float32, np.float64):
            W = np.random.default_rng(2).standard_normal(shape).astype(dt)
            t_ref, ref = timeit(lambda: _numpy_prune(W, 0.9))
            t1, _ = timeit(lambda: wp.prune(W, sparsity=0.9, n_threads=1))
            t2, a2 = timeit(lambda: wp.prune(W, sparsity=0.9, n_threads=2))
            assert a2.nnz == ref.nnz
            t.add(f"{shape[0]}x{shape[1]}", np.dtype(dt).name, "sparsity=0.9", ms(t_ref), ms(t1), ms(t2),
                  t_ref / t2, W.nbytes / t_ref / 1e9, W.nbytes / t2 / 1e9)
            thr = float(np.quantile(np.abs(W), 0.9))
            t_ref, ref = timeit(lambda: sp.csr_array(np.where(np.abs(W) >= thr, W, 0)))
            t1, _ = timeit(lambda: wp.prune(W, threshold=thr, n_threads=1))
            t2, a2 = timeit(lambda: wp.prune(W, threshold=thr, n_threads=2))
            assert a2.nnz == ref.nnz
            t.add(f"{shape[0]}x{shape[1]}", np.dtype(dt).name, "threshold", ms(t_ref), ms(t1), ms(t2),
                  t_ref / t2, W.nbytes / t_ref / 1e9, W.nbytes / t2 / 1e9)
    t.print()


def bench_threshold(quick: bool) -> None:
    try:
        import pywt
    except ImportError:
        pywt = None
        print("(PyWavelets not installed: pywt.threshold column left empty)")
    shape = (4096, 4096) if not quick else (64, 64)
    bw, bw_fresh = memory_bandwidth(), memory_bandwidth("fresh")
    t = Table(f"soft/hard threshold {shape[0]}x{shape[1]} (median ms; x = best numpy form / wp 2t; "
              "bw = 2 streams / time / copy bandwidth, fresh-array bandwidth for the no-out= rows)",
              ["dtype", "op", "numpy expr", "numpy out=", "pywt", "wp 1t", "wp 2t", "x numpy", "bw"])
    for dt in (np.float32, np.float64):
        x = np.random.default_rng(3).standard_normal(shape).astype(dt)
        out = np.empty_like(x)
        lam = dt(0.5)

        def soft_expr():
            return np.sign(x) * np.maximum(np.abs(x) - lam, 0)

        def soft_out():
            np.abs(x, out=out)
            np.subtract(out, lam, out=out)
            np.maximum(out, 0, out=out)
            return np.copysign(out, x, out=out)

        def hard_expr():
            return x * (np.abs(x) >= lam)

        def hard_out():
            np.abs(x, out=out)
            np.greater_equal(out, lam, out=out)
            return np.multiply(x, out, out=out)

        for op, expr, outf, f in (("soft", soft_expr, soft_out, wp.soft_threshold),
                                  ("hard", hard_expr, hard_out, wp.hard_threshold)):
            t_e, _ = timeit(expr)
            t_o, _ = timeit(outf)
            t_p = None
            if pywt is not None:
                t_p, _ = timeit(lambda: pywt.threshold(x, 0.5, op))
            best = min(t_e, t_o, t_p or np.inf)
            ref = expr()  # a fresh array: outf() writes into `out`, which f may be given too
            for with_out in (True, False):
                kw = {"out": out} if with_out else {}
                t1, _ = timeit(lambda: f(x, 0.5, n_threads=1, **kw))
                t2, y = timeit(lambda: f(x, 0.5, n_threads=2, **kw))
                assert np.array_equal(y, ref), f"{op} threshold differs from NumPy"
                t.add(np.dtype(dt).name, f"{op}{' out=' if with_out else ''}", ms(t_e), ms(t_o),
                      "-" if t_p is None else ms(t_p), ms(t1), ms(t2), best / t2,
                      2 * x.nbytes / t2 / (bw if with_out else bw_fresh))
    t.print()


SECTIONS = {"spmv": bench_spmv_bandwidth, "spmm": bench_spmm, "products": bench_products,
            "crossover": bench_crossover, "prune": bench_prune, "threshold": bench_threshold,
            "grain": bench_grain, "small": bench_small_products}


def run(quick: bool) -> None:
    only = [v for v in os.environ.get("WP_BENCH_SPARSE", "").split(",") if v]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"WP_BENCH_SPARSE: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    for name, fn in SECTIONS.items():
        if not only or name in only:
            fn(quick)
