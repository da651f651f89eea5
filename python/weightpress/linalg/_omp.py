"""Orthogonal matching pursuit: :func:`omp` and the cached-Gram :class:`OMPDictionary`."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import _core
from .._threads import _resolve, blas_sequential
from .._validation import as_float_array, check_finite, float_dtype, positive_int, real_scalar

__all__ = ["omp", "OMPDictionary"]


def _check_dictionary(D: Any, dtype: np.dtype | None = None, finite: bool = True) -> np.ndarray:
    Da = as_float_array(D, "D", dtype)
    if Da.ndim != 2:
        raise ValueError(f"D: expected a 2-D array (n_features, n_atoms), got {Da.ndim}-D "
                         f"with shape {Da.shape}")
    Da = np.ascontiguousarray(Da)
    if finite:
        check_finite(Da, "D")
    return Da


def _check_signals(Y: Any, m: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    Ya = as_float_array(Y, "Y", dtype)
    if Ya.ndim not in (1, 2):
        raise ValueError(f"Y: expected a 1-D signal or a 2-D array of signals (columns), got "
                         f"{Ya.ndim}-D")
    if Ya.shape[0] != m:
        raise ValueError(f"Y: has {Ya.shape[0]} rows but D has {m} (n_features); "
                         "signals are the columns of Y")
    one = Ya.ndim == 1
    Y2 = np.ascontiguousarray(Ya.reshape(m, 1) if one else Ya)
    check_finite(Y2, "Y")
    return Y2, one


def _stopping(n_nonzero: Any, tol: Any, m: int, n: int) -> tuple[int, float]:
    """(kmax, tol) for the engine; tol < 0 means no residual criterion."""
    t = -1.0 if tol is None else real_scalar(tol, "tol", low=0.0)
    if n_nonzero is None:
        k = max(1, int(0.1 * n)) if tol is None else max(1, min(m, n))
    else:
        k = positive_int(n_nonzero, "n_nonzero")
        if k > n:
            warnings.warn(f"omp: n_nonzero={k} is more than the {n} atoms of D; at most {n} "
                          "atoms can be chosen", UserWarning, stacklevel=4)
    return max(1, min(k, m, n)), t


# Up to this many signals the engine checks D for NaN/Inf through DᵀY (OmpParams.check_finite):
# a separate pass over D cost as much as the correlations themselves for one signal.
_FUSED_CHECK = 8


def _lazy_blas(m: int, n: int, N: int, kmax: int) -> bool:
    """True when the engine's lazy path (pursuit.cpp, omp_encode: few signals, no Gram matrix,
    ``_core.omp_lazy_path``) calls BLAS. Its gemms are short and come between OpenMP regions:
    OpenBLAS's pool, woken for each and spinning after, stalled them on a loaded 2-core machine
    (one signal at 512x2048, k = 32, two threads: wall medians 13-67 ms against 2.6-3.5 ms of
    CPU work), so they run on one BLAS thread (~30 µs to set). With AVX2 or AVX-512 the blocks
    of Gram columns are our own register tiles (pursuit.cpp, wide_tiles) and DᵀY too for up to
    8 signals: no BLAS call is left there, and nothing is set."""
    if N * kmax <= 8:
        return False
    return not (N <= 8 and _core.isa_level() >= 1)  # pursuit.cpp: kSmallBlock


def _run(Da: np.ndarray, G: np.ndarray | None, Y: Any, n_nonzero: Any, tol: Any,
         return_sparse: bool, n_threads: int | None, d_checked: bool = True) -> Any:
    m, n = Da.shape
    Y2, one = _check_signals(Y, m, Da.dtype)
    kmax, t = _stopping(n_nonzero, tol, m, n)
    nt = _resolve(n_threads)
    N = Y2.shape[1]
    if not d_checked and (N > _FUSED_CHECK or m == 0 or n == 0 or N == 0):
        check_finite(Da, "D")
        d_checked = True
    if m == 0 or n == 0 or N == 0:
        supp = np.zeros((N, 0), dtype=np.int64)
        coef = np.zeros((N, 0), dtype=Da.dtype)
    else:
        p = _core.OmpParams()
        p.kmax, p.tol = kmax, t
        p.check_finite = not d_checked
        if _core.omp_lazy_path(n, N, kmax, G is not None):
            seq = _lazy_blas(m, n, N, kmax)
        else:
            # Past a few signals the engine's gemms (the Gram matrix in strips, DᵀY in blocks
            # of 256 signals) run on its own threads with BLAS on one (pursuit.cpp,
            # correlate_blocks): OpenBLAS's pool spinning after one gemm of the whole chunk
            # took 20% of the samples of the pursuit that followed on the same cores.
            seq = N > _FUSED_CHECK
        try:
            with blas_sequential() if seq else contextlib.nullcontext():
                supp, coef, _count, _r2 = _core.omp(Da, Y2, G, p, nt)
        except _core.NonFinite:
            check_finite(Da, "D")  # Y is finite: then D is not, or DᵀY overflows
            raise ValueError("D/Y: D.T @ Y overflows the floating-point range") from None
    mask = supp >= 0
    if return_sparse and not one:
        indptr = np.zeros(N + 1, dtype=np.int64)
        np.cumsum(mask.sum(axis=1), out=indptr[1:])
        idx_t = np.int32 if max(n, indptr[-1]) < 2**31 else np.int64
        X = sp.csc_array((coef[mask], supp[mask].astype(idx_t), indptr.astype(idx_t)), shape=(n, N))
        X.has_sorted_indices = True
        return X
    X = np.zeros((n, N), dtype=Da.dtype)
    X[supp[mask], np.nonzero(mask)[0]] = coef[mask]
    return X[:, 0] if one else X


def omp(D: Any, Y: Any, n_nonzero: int | None = None, tol: float | None = None, *,
        return_sparse: bool = False, n_threads: int | None = None) -> Any:
    """Orthogonal matching pursuit: sparse codes of the columns of ``Y`` in the dictionary ``D``.

    Solves, greedily and for each signal ``y`` (a column of ``Y``),
    ``min ‖x‖₀ s.t. ‖y − D x‖² <= tol`` or ``min ‖y − D x‖² s.t. ‖x‖₀ <= n_nonzero``,
    with the exact OMP rule: at each step the atom most correlated with the residual,
    ``argmax_j |d_jᵀ r| / ‖d_j‖``, joins the support and ``x`` is the least-squares fit on it.

    Parameters
    ----------
    D : array_like, shape (n_features, n_atoms)
        Dictionary; the atoms (columns) need not have unit norm, and zero atoms are never
        chosen. float32 stays float32 (when ``Y`` is float32 too), anything else is float64.
    Y : array_like, shape (n_features,) or (n_features, n_signals)
        One signal or a batch of signals (columns).
    n_nonzero : int >= 1, optional
        Most atoms per signal. Default: 10% of the atoms when ``tol`` is None, else
        ``min(n_features, n_atoms)``. Values above the dictionary's rank are allowed: the
        pursuit stops when the next atom is linearly dependent on the chosen ones. A value
        above the number of atoms is clipped to it with a ``UserWarning``.
    tol : float >= 0, optional
        Stop as soon as the squared residual ``‖y − D x‖²`` is at most ``tol`` (``x = 0``
        when ``‖y‖² <= tol``). With both ``n_nonzero`` and ``tol``, the first one reached stops.
    return_sparse : bool
        For a batch, return a ``scipy.sparse.csc_array`` (column ``s`` is the code of signal
        ``s``, sorted indices) instead of a dense array.
    n_threads : int, optional
        Threads (signals are shared among them). Results are identical for every count.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csc_array
        Shape (n_atoms,) for a 1-D ``Y``, else (n_atoms, n_signals).

    Raises
    ------
    ValueError
        Shape mismatch, NaN/Inf, ``n_nonzero < 1`` or ``tol < 0``.
    TypeError
        Non-numeric input or a non-integer ``n_nonzero``.

    See Also
    --------
    OMPDictionary : keeps ``DᵀD`` between calls (streaming one signal at a time).

    Notes
    -----
    Batch-OMP (Rubinstein, Zibulevsky and Elad, 2008): ``G = DᵀD`` (one BLAS ``syrk``) and
    ``DᵀY`` (one ``gemm``), then, per signal, a progressively grown Cholesky factor of the
    chosen atoms' Gram matrix. Each step costs ``O(n_atoms · k)``; signals run in parallel
    (OpenMP) with one workspace per thread. Numerically dependent atoms (duplicates,
    ``k > rank``) are caught by the pivot test of the Cholesky update and end the pursuit.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> D = np.eye(3)
    >>> wp.omp(D, np.array([0.0, 2.0, 0.5]), n_nonzero=1)
    array([0., 2., 0.])
    """
    if sp.issparse(D):
        raise TypeError("D: expected a dense array, got a sparse matrix")
    if sp.issparse(Y):
        raise TypeError("Y: expected a dense array, got a sparse matrix")
    Dt, Yt = np.asarray(D), np.asarray(Y)
    dt = float_dtype(Dt.dtype, Yt.dtype, name="D/Y")
    Da = _check_dictionary(Dt, dt, finite=False)
    return _run(Da, None, Yt, n_nonzero, tol, return_sparse, n_threads, d_checked=False)


class OMPDictionary:
    """A dictionary prepared for repeated OMP calls: ``G = DᵀD`` is computed once.

    Parameters
    ----------
    D : array_like, shape (n_features, n_atoms)
        The dictionary (float32 kept, else float64). It is copied.

    Attributes
    ----------
    D : numpy.ndarray
        The dictionary (C-contiguous, read-only).
    gram : numpy.ndarray
        ``D.T @ D`` (read-only).

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> d = wp.OMPDictionary(np.eye(3))
    >>> d.encode(np.array([0.0, 2.0, 0.5]), n_nonzero=1)
    array([0., 2., 0.])
    """

    def __init__(self, D: Any):
        if sp.issparse(D):
            raise TypeError("D: expected a dense array, got a sparse matrix")
        Da = _check_dictionary(D).copy()
        self.D = Da
        self.gram = _core.omp_gram(Da) if Da.size else np.zeros((Da.shape[1],) * 2, Da.dtype)
        self.D.flags.writeable = False
        self.gram.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.D.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.D.dtype

    def encode(self, Y: Any, n_nonzero: int | None = None, tol: float | None = None, *,
               return_sparse: bool = False, n_threads: int | None = None) -> Any:
        """Sparse codes of ``Y``; the same as :func:`omp` with this dictionary.

        ``Y`` is cast to the dictionary's dtype. See :func:`omp` for the parameters.
        """
        if sp.issparse(Y):
            raise TypeError("Y: expected a dense array, got a sparse matrix")
        return _run(self.D, self.gram, Y, n_nonzero, tol, return_sparse, n_threads)

    def __repr__(self) -> str:
        return f"OMPDictionary(n_features={self.D.shape[0]}, n_atoms={self.D.shape[1]}, dtype={self.D.dtype})"
