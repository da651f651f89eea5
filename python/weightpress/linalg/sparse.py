"""Magnitude pruning to CSR and CSR products."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import _core
from .._threads import _resolve
from .._validation import as_csr, as_float_array, csr_parts, float_dtype, real_scalar

__all__ = ["prune", "csr_matmul", "dense_product_pays", "DenseFasterWarning"]

# csr_matmul says so (DenseFasterWarning) only from this many matrix elements up: below it a
# product takes microseconds either way.
_WARN_ELEMENTS = 1 << 20


class DenseFasterWarning(UserWarning):
    """A CSR product on a matrix whose CSR arrays are no smaller than the dense matrix: a
    dense product (BLAS) reads no more memory and is as fast or faster."""


def dense_product_pays(nnz: int, shape: tuple[int, int], dtype: Any, index_dtype: Any) -> bool:
    """True when a dense ``W @ X`` reads no more memory than the CSR product of the same matrix.

    The CSR kernel reads ``nnz * (value + index) + (rows + 1) * index`` bytes of the matrix, the
    dense one ``rows * cols * value``: at or above that density (50 % for float32 values with
    int32 indices, 67 % for float64) a dense product is as fast at batch 1, where both are
    bound by memory reads, and faster at larger batches, where BLAS's GEMM runs near peak
    arithmetic and the CSR kernel does not. Measured (benchmarks/bench_sparse.py crossover,
    4096² float32, 1 thread each, called in turn): the CSR product took 1.06x the dense time
    at 50 % sparsity, 1.18x at 30 %; issue 14 measured 1.6x at 50 % on an AMD EPYC.
    """
    m, n = shape
    v, i = np.dtype(dtype).itemsize, np.dtype(index_dtype).itemsize
    return m * n * v <= nnz * (v + i) + (m + 1) * i



def _parse_pattern(pattern: Any) -> tuple[int, int]:
    if isinstance(pattern, str):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
        if not m:
            raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}")
        n, mm = int(m.group(1)), int(m.group(2))
    elif isinstance(pattern, tuple) and len(pattern) == 2 and all(isinstance(v, (int, np.integer)) for v in pattern):
        n, mm = int(pattern[0]), int(pattern[1])
    else:
        raise TypeError(f"pattern must be a string 'N:M' or a tuple (N, M), got {pattern!r}")
    if mm < 1 or n < 1 or n > mm:
        raise ValueError(f"pattern N:M needs 1 <= N <= M, got {n}:{mm}")
    return n, mm


def prune_row_counts(W: np.ndarray, keep: int, n_threads: int | None = None) -> np.ndarray:
    """Each row's count of the ``keep`` largest magnitudes of ``W`` (2-D float, ties in
    row-major order, zeros never kept), as a CSR ``indptr`` (int64): :func:`prune`'s first
    pass without its arrays. Pruning a block of rows to its share of this (:func:`prune_keep`)
    keeps exactly the entries :func:`prune` keeps there."""
    spec = _core.PruneSpec()
    spec.mode, spec.keep = _core.PruneSpec.Mode.keep, int(keep)
    return _core.prune_row_counts(_strided_float(W), spec, _resolve(n_threads))


def prune_keep(W: np.ndarray, keep: int, n_threads: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR arrays ``(data, indices, indptr)`` of the ``keep`` largest magnitudes of ``W``
    (as :func:`prune` with that count, without the scipy wrapper)."""
    spec = _core.PruneSpec()
    spec.mode, spec.keep = _core.PruneSpec.Mode.keep, int(keep)
    return _core.prune(_strided_float(W), spec, _resolve(n_threads))


def _strided_float(W: Any) -> np.ndarray:
    Wa = as_float_array(W, "W")
    if Wa.ndim != 2:
        raise ValueError(f"W: expected a 2-D array, got {Wa.ndim}-D with shape {Wa.shape}")
    if any(s % Wa.itemsize for s in Wa.strides):
        Wa = np.ascontiguousarray(Wa)
    return Wa


def prune(W: Any, sparsity: float | None = None, threshold: float | None = None,
          pattern: str | tuple[int, int] | None = None, *, n_threads: int | None = None) -> sp.csr_array:
    """Magnitude pruning of a 2-D array straight to a CSR array.

    Exactly one of ``sparsity``, ``threshold`` and ``pattern`` selects what is kept.

    Parameters
    ----------
    W : array_like, 2-D
        Dense weights in any layout or strides (read in place, never copied when float32 or
        float64). float32 stays float32; integers are computed in float64.
    sparsity : float in [0, 1], optional
        Fraction of entries removed: the ``W.size - round(sparsity * W.size)`` entries of
        largest magnitude are kept, exactly; ties at the cut are broken in row-major order
        (earlier entries win). Zeros are never stored, so ``nnz`` is smaller when ``W`` has
        fewer nonzeros than that.
    threshold : float >= 0, optional
        Keep the nonzero entries with ``|w| >= threshold``, compared in ``W``'s precision
        (the threshold is rounded to ``W.dtype`` first, as NumPy and :func:`hard_threshold` do).
    pattern : str or (int, int), optional
        ``"N:M"``: in each group of ``M`` consecutive entries of a row keep the ``N`` largest in
        magnitude (ties: lower column wins). A last, shorter group keeps at most ``N``.
    n_threads : int, optional
        Threads to use.

    Returns
    -------
    scipy.sparse.csr_array
        Canonical CSR (sorted column indices, no duplicates), int32 indices when they fit,
        else int64.

    Raises
    ------
    ValueError
        If ``W`` is not 2-D or contains NaN, or an argument is out of range, or not exactly one
        of ``sparsity``/``threshold``/``pattern`` is given.
    TypeError
        If ``W`` is sparse or not real numeric.

    Notes
    -----
    Selection and CSR construction run in C++ in two passes over ``W``: the first counts
    each row's entries above a bracket around the cut (checking for NaN on the way) and
    collects the entries inside it, the second writes the CSR arrays (vectorized compaction
    on AVX2/AVX-512 CPUs). For ``sparsity`` the bracket comes from a fixed sample of ``W``
    (about 1 % of the entries fall inside it for Gaussian weights) and the exact cut is chosen
    among the collected entries; should the sample miss, an exact radix select and one more
    counting pass take over (same result, slower). Memory is the output plus O(rows) plus the
    bracket's entries; no dense temporary of ``W``'s size.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> wp.prune(np.array([[1.0, -3.0], [0.5, 2.0]]), sparsity=0.5).toarray()
    array([[ 0., -3.],
           [ 0.,  2.]])
    """
    given = [v is not None for v in (sparsity, threshold, pattern)]
    if sum(given) != 1:
        raise ValueError("prune: give exactly one of sparsity, threshold and pattern")
    Wa = _strided_float(W)
    n = _resolve(n_threads)
    spec = _core.PruneSpec()
    if sparsity is not None:
        s = real_scalar(sparsity, "sparsity", low=0.0, high=1.0)
        spec.keep = Wa.size - int(round(s * Wa.size))
        spec.mode = _core.PruneSpec.Mode.keep
    elif threshold is not None:
        spec.threshold = real_scalar(threshold, "threshold", low=0.0)
        spec.mode = _core.PruneSpec.Mode.threshold
    else:
        spec.n, spec.m = _parse_pattern(pattern)
        spec.mode = _core.PruneSpec.Mode.nm
    data, indices, indptr = _core.prune(Wa, spec, n)
    A = sp.csr_array((data, indices, indptr), shape=Wa.shape)
    A.has_sorted_indices = True
    A.has_canonical_format = True
    return A


def csr_matmul(A: Any, X: Any, transpose: bool = False, out: np.ndarray | None = None, *,
               n_threads: int | None = None, check_dense: bool = True) -> np.ndarray:
    """Sparse-dense product ``A @ X`` (or ``A.T @ X``) for a CSR matrix ``A``.

    Parameters
    ----------
    A : scipy.sparse.csr_array or csr_matrix
        float32 or float64 data (integers are computed in float64); int32 or int64 indices;
        canonical or not (duplicates are summed, indices may be unsorted).
    X : array_like, 1-D or 2-D
        Dense operand in any layout; cast to the result dtype and copied only if not
        C-contiguous.
    transpose : bool
        Compute ``A.T @ X`` without forming ``A.T``.
    out : numpy.ndarray, optional
        Output of the exact result shape and dtype; must not overlap ``X``.
    n_threads : int, optional
        Threads to use. Results are identical for every thread count.
    check_dense : bool
        Warn (:class:`DenseFasterWarning`) when ``A`` has at least a million elements and is
        dense enough that a dense product would read no more memory
        (:func:`dense_product_pays`: 50 % nonzeros for float32 with int32 indices). False for
        callers that keep CSR on purpose. The product is computed either way.

    Returns
    -------
    numpy.ndarray
        1-D when ``X`` is 1-D. dtype is float32 when both ``A`` and ``X`` are float32, else
        float64.

    Raises
    ------
    ValueError
        Malformed CSR (``indptr`` not monotone, an index out of range, wrong lengths), or
        mismatched shapes.
    TypeError
        ``A`` not CSR, or non-numeric data.

    Notes
    -----
    Row-parallel for ``A @ X``; ``A.T @ X`` scatters rows in blocks whose number depends
    only on the problem, summed in a fixed order. Column indices are range-checked inside the
    product loop, at no extra pass over memory. Products too small to pay for a second thread
    (under about 14 µs by a measured cost model) run on one. The row loops are compiled for
    AVX-512, AVX2 and the baseline and chosen per CPU at run time (``A @ x`` uses hardware
    gathers); results are identical for any thread count on one machine, and may differ in
    the last bits between instruction sets (FMA, lane count).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, weightpress as wp
    >>> A = sp.csr_array(np.array([[1.0, 0.0], [0.0, 2.0]]))
    >>> wp.csr_matmul(A, np.array([3.0, 4.0]))
    array([3., 8.])
    """
    A = as_csr(A, "A")
    if not isinstance(X, np.ndarray) and sp.issparse(X):
        raise TypeError("X: expected a dense array, got a sparse matrix")
    Xa = np.asarray(X)
    dt = float_dtype(A.dtype, Xa.dtype, name="A/X")
    if Xa.ndim not in (1, 2):
        raise ValueError(f"X: expected a 1-D or 2-D array, got {Xa.ndim}-D")
    m, ncol = A.shape
    need = m if transpose else ncol
    if Xa.shape[0] != need:
        raise ValueError(f"X: has {Xa.shape[0]} rows, expected {need} "
                         f"(A is {m}x{ncol}{', transposed' if transpose else ''})")
    k = 1 if Xa.ndim == 1 else Xa.shape[1]
    res_rows = ncol if transpose else m
    res_shape = (res_rows,) if Xa.ndim == 1 else (res_rows, k)
    X2 = np.ascontiguousarray(Xa, dtype=dt).reshape(need, k)
    data, indices, indptr = csr_parts(A, dt)
    if check_dense and m * ncol >= _WARN_ELEMENTS and dense_product_pays(data.size, (m, ncol), dt, indices.dtype):
        warnings.warn(f"A: {data.size / (m * ncol):.0%} of its {m}x{ncol} entries are stored, so its CSR "
                      f"arrays are no smaller than the dense matrix and a dense product (A.toarray() "
                      f"@ X, BLAS) is as fast or faster", DenseFasterWarning, stacklevel=2)
    n = _resolve(n_threads)
    direct = None
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy array, got {type(out).__name__}")
        if out.dtype != dt:
            raise TypeError(f"out: expected dtype {dt}, got {out.dtype}")
        if out.shape != res_shape:
            raise ValueError(f"out: expected shape {res_shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
        if np.may_share_memory(out, Xa) or np.may_share_memory(out, X2):
            raise ValueError("out: must not overlap X")
        if out.flags.c_contiguous:
            direct = out.reshape(res_rows, k)
    target = direct if direct is not None else np.empty((res_rows, k), dtype=dt)
    _core.csr_matmat(indptr, indices, data, m, ncol, X2, target, bool(transpose), n)
    if out is None:
        return target.reshape(res_shape)
    if direct is None:
        out[...] = target.reshape(res_shape)
    return out
