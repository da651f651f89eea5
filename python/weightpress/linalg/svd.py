"""Truncated randomized SVD (fixed rank or fixed accuracy) and singular value thresholding."""

from __future__ import annotations

import numbers
import os
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import _core
from .._threads import _resolve, blas_sequential
from .._validation import as_csr, as_float_array, csr_parts, float_dtype, positive_int, real_scalar

__all__ = ["randomized_svd", "svt"]

# m·n from which dense products go by tiles on our threads (below it, asking threadpoolctl
# costs more than the spinning it saves). WP_RSVD_TILED=0: one gemm on BLAS's threads.
_TILED_FROM = 1 << 20

_MODE_RANK, _MODE_TOL, _MODE_SVT = (_core.RsvdParams.Mode.rank, _core.RsvdParams.Mode.tol,
                                    _core.RsvdParams.Mode.svt)


def _seed(seed: Any) -> int:
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63, dtype=np.int64))
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"seed must be None, an int or a numpy Generator, got {type(seed).__name__}")
    s = int(seed)
    if not 0 <= s < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {s}")
    return s


def _nonneg_int(v: Any, name: str) -> int:
    return positive_int(v, name, low=0)


def _prepare(A: Any) -> tuple[str, Any, tuple[int, int]]:
    """('dense', (array, fortran), shape) or ('csr', (data, indices, indptr), shape)."""
    if sp.issparse(A):
        A = as_csr(A, "A")
        dt = float_dtype(A.dtype, name="A")
        m, n = A.shape
        if m == 0 or n == 0:
            raise ValueError(f"A: expected a non-empty matrix, got shape {A.shape}")
        # structure first: SciPy's canonical-format scan below trusts indptr (a decreasing one
        # made it fail inside C++ with "vector::_M_default_append", issue 15 re-probe)
        _, ix, ip = csr_parts(A, dt)
        _core.csr_check(ip, ix, m, n, _resolve(None))
        if not A.has_canonical_format:  # duplicates would spoil ‖A‖_F
            A = A.copy()
            A.sum_duplicates()
        return "csr", csr_parts(A, dt), (m, n)
    a = as_float_array(A, "A")
    if a.ndim != 2:
        raise ValueError(f"A: expected a 2-D array, got {a.ndim}-D with shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"A: expected a non-empty matrix, got shape {a.shape}")
    if a.flags.c_contiguous:
        return "dense", (a, False), a.shape
    if a.flags.f_contiguous:
        return "dense", (a.T, True), a.shape
    return "dense", (np.ascontiguousarray(a), False), a.shape


def _run(A: Any, mode: Any, *, rank: int = 0, tol: float = 0.0, lam: float = 0.0,
         max_rank: int = 0, oversamples: int = 10, power_iters: int | None = None, seed: Any = None,
         n_threads: int | None = None, block: int = 0, orth: int = 0,
         direct: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    kind, parts, (m, n) = _prepare(A)
    if mode == _MODE_RANK and rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)} for A of shape {(m, n)}, got {rank}")
    os_ = _nonneg_int(oversamples, "oversamples")
    pi = -1 if power_iters is None else _nonneg_int(power_iters, "power_iters")
    s = _seed(seed)
    nt = _resolve(n_threads)
    p = _core.RsvdParams()
    p.mode, p.rank, p.tol, p.lam, p.max_rank = mode, rank, tol, lam, max_rank
    p.oversamples, p.power_iters, p.seed = os_, pi, s
    p.block, p.orth, p.direct = block, orth, direct
    if kind == "dense":
        a, fortran = parts
        if os.environ.get("WP_RSVD_TILED", "1") != "0" and m * n >= _TILED_FROM:
            # Products by fixed row tiles on our threads, BLAS on one (DenseOp::tiled):
            # OpenBLAS's pool, woken for each product and spinning through the OpenMP regions
            # between them, held 14% of the samples at 4096², k = 64.
            p.tiled = True
            with blas_sequential():
                return _core.rsvd_dense(a, fortran, p, nt)
        return _core.rsvd_dense(a, fortran, p, nt)
    data, indices, indptr = parts
    return _core.rsvd_csr(indptr, indices, data, m, n, p, nt)


def randomized_svd(A: Any, rank: int | None = None, *, tol: float | None = None,
                   max_rank: int | None = None, oversamples: int = 10,
                   power_iters: int | None = None, seed: Any = None,
                   n_threads: int | None = None, return_info: bool = False):
    """Truncated SVD ``A ≈ U diag(s) Vt`` by randomized subspace iteration.

    Give exactly one of ``rank`` (fixed rank) and ``tol`` (fixed accuracy: the smallest rank
    whose relative Frobenius error is at most ``tol``).

    Parameters
    ----------
    A : array_like (2-D) or scipy.sparse CSR matrix/array, shape (m, n)
        float32 or float64 (integers are computed in float64). Dense input may have any layout:
        C- and Fortran-ordered arrays are read in place, other strides are copied once. CSR
        input (int32 or int64 indices) is only used through sparse products.
    rank : int, optional
        Number of singular triplets, ``1 <= rank <= min(m, n)``.
    tol : float in (0, 1), optional
        Target ``||A - U diag(s) Vt||_F / ||A||_F``.
    max_rank : int, optional
        Fixed accuracy only: the basis grows to at most this many columns (memory and time
        bounded by it). Where ``tol`` needs more, no triplets are returned (``U``, ``s``,
        ``Vt`` empty), ``info["rel_err"]`` says the error the capped basis reaches and nothing
        is warned: a caller that sets a cap has no use for a result above it.
    oversamples : int, default 10
        Extra sketch columns (fixed rank).
    power_iters : int or None, default None
        Subspace iterations; each costs one product with ``A`` and one with ``A.T``. ``None``
        (fixed rank): at least 2, then more while the captured energy of the top ``rank``
        singular values still grows by more than about 0.6 % of the error (flat spectra
        converge slowly), at most 10. In the fixed-accuracy mode they are applied to every
        block (``None``: 2).
    seed : int, numpy.random.Generator or None
        Seed of the counter-based Gaussian sketch. The same seed gives the same result for
        every thread count. ``None`` draws fresh entropy.
    n_threads : int, optional
        Threads for weightpress's own loops (sketch generation, input scan, CSR products).
        Dense products and factorizations run in SciPy's BLAS with its own thread setting
        (see ``threadpoolctl``).
    return_info : bool, default False
        Also return a dict: ``rank``, ``basis`` (columns of the range basis), ``n_blocks``,
        ``rel_err`` (fixed accuracy: the relative error, an estimate unless ``verified``),
        ``verified``, ``direct`` (a full LAPACK SVD was cheaper and used instead),
        ``power_iters`` (iterations done, fixed rank).

    Returns
    -------
    U : numpy.ndarray, shape (m, k)
        Orthonormal columns. dtype is float32 for float32 input, else float64.
    s : numpy.ndarray, shape (k,)
        Singular values, descending.
    Vt : numpy.ndarray, shape (k, n)
        Orthonormal rows.
    info : dict
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Not exactly one of ``rank``/``tol``; ``rank`` outside ``[1, min(m, n)]``; ``tol``
        outside (0, 1); A empty, not 2-D, or containing NaN/Inf; malformed CSR.
    TypeError
        Non-numeric ``A``, a sparse format other than CSR, or wrong argument types.

    Warns
    -----
    RuntimeWarning
        Fixed accuracy: ``tol`` was not reached (below the working precision of the dtype).

    Notes
    -----
    Fixed rank (Halko, Martinsson & Tropp 2011, Alg. 4.4): ``l = rank + oversamples`` Gaussian
    columns, ``power_iters`` subspace iterations, each product re-orthonormalised by
    Cholesky-QR with the Gram matrix in float64 (Householder QR when that is ill-conditioned
    or rank-deficient), then an SVD of the small ``l x n`` matrix in float64. float32 input
    keeps its products in float32 (BLAS ``sgemm``) and stays accurate. The sketch is taken on
    the longer side (``A.T`` for wide input). When ``l >= min(m, n) / 2`` a dense ``A`` is
    factorized exactly instead, which is then cheaper: tall ones (``max >= 2 min``) by
    Cholesky-QR in float64 and a ``min(m, n)``-square SVD, others by LAPACK ``gesdd``.

    Fixed accuracy: a blocked adaptive QB (Yu, Gu & Li 2018, randQB_EI) grows the basis by
    blocks until ``||A||_F^2 - ||B||_F^2 <= tol^2 ||A||_F^2``; the rank is then the smallest
    that meets ``tol`` according to the SVD of ``B``. When ``tol^2`` is close to the
    dtype's precision that indicator is unreliable (cancellation), so the residual
    ``||A - U diag(s) Vt||_F`` is computed directly and the basis extended if needed; a sketch
    that finds only rounding errors outside the basis (an exactly low-rank ``A``) ends the
    growth, so tolerances down to about ``100·eps`` are met at the true rank. Each new block
    is orthogonalised against the basis twice (block Gram-Schmidt, "twice is enough").

    Sign convention: in each column of ``U`` the entry of largest magnitude (the first one on
    ties) is positive; ``Vt`` rows are flipped with it. With a fixed seed the result is
    reproducible and independent of ``n_threads``.

    Input is scanned once for NaN/Inf and range; float32 input with very large or very small
    magnitudes (e.g. 1e30, 1e-30) is scaled internally by a power of two.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> A = np.outer(np.arange(1.0, 5.0), np.arange(1.0, 4.0))
    >>> U, s, Vt = wp.randomized_svd(A, 1, seed=0)
    >>> np.allclose((U * s) @ Vt, A)
    True
    """
    if (rank is None) == (tol is None):
        raise ValueError("randomized_svd: give exactly one of rank and tol")
    if rank is not None and max_rank is not None:
        raise ValueError("randomized_svd: max_rank goes with tol (fixed accuracy), not rank")
    if rank is not None:
        r = positive_int(rank, "rank")
        U, s, Vt, info = _run(A, _MODE_RANK, rank=r, oversamples=oversamples,
                              power_iters=power_iters, seed=seed, n_threads=n_threads)
    else:
        t = real_scalar(tol, "tol", low=0.0, low_open=True, high=1.0, high_open=True)
        mr = 0 if max_rank is None else positive_int(max_rank, "max_rank")
        U, s, Vt, info = _run(A, _MODE_TOL, tol=t, max_rank=mr, oversamples=oversamples,
                              power_iters=power_iters, seed=seed, n_threads=n_threads)
        capped = mr > 0 and info["basis"] >= mr
        if info["rel_err"] > t * (1 + 1e-6) and not capped:
            warnings.warn(f"randomized_svd: tol={t:g} not reached (relative error "
                          f"{info['rel_err']:.3g} at rank {info['rank']}); it is below the "
                          f"precision of {U.dtype}", RuntimeWarning, stacklevel=2)
    return (U, s, Vt, info) if return_info else (U, s, Vt)


def svt(A: Any, lam: float, *, max_rank: int | None = None, power_iters: int | None = None,
        seed: Any = None, n_threads: int | None = None):
    """Singular value thresholding: the proximal operator of ``lam * ||.||_*``.

    Returns the factors of ``U diag(max(s - lam, 0)) Vt`` restricted to the singular values
    above ``lam``.

    Parameters
    ----------
    A : array_like (2-D) or scipy.sparse CSR matrix/array
        As in :func:`randomized_svd`.
    lam : float >= 0
        Threshold.
    max_rank : int, optional
        Upper bound on the number of singular values examined (default ``min(m, n)``).
    power_iters : int or None, default None
        Subspace iterations per block (``None``: 2).
    seed : int, numpy.random.Generator or None
        Seed of the sketch.
    n_threads : int, optional
        Threads for weightpress's own loops.

    Returns
    -------
    U : numpy.ndarray, shape (m, r)
    s : numpy.ndarray, shape (r,)
        ``sigma_i - lam`` for the ``r`` singular values ``sigma_i > lam``, descending.
    Vt : numpy.ndarray, shape (r, n)

    Raises
    ------
    ValueError
        ``lam`` negative or not finite, ``max_rank`` < 1, A empty or with NaN/Inf.
    TypeError
        As in :func:`randomized_svd`.

    Notes
    -----
    Built on the adaptive QB of :func:`randomized_svd`: the basis grows by blocks until the
    newest block's largest singular value, which after the power iterations estimates
    ``||(I - QQ^T) A||_2`` (a bound on every singular value not captured yet), falls to
    ``lam`` or below. The result is then thresholded exactly on the SVD of the small ``B``.
    Like every randomized method this is approximate; singular values close to ``lam`` may
    be missed by a small margin. Small dense inputs use LAPACK directly.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> U, s, Vt = wp.svt(np.diag([3.0, 2.0, 0.5]), 1.0, seed=0)
    >>> s
    array([2., 1.])
    """
    lv = real_scalar(lam, "lam", low=0.0)
    mr = 0 if max_rank is None else positive_int(max_rank, "max_rank")
    U, s, Vt, _ = _run(A, _MODE_SVT, lam=lv, max_rank=mr, power_iters=power_iters, seed=seed,
                       n_threads=n_threads)
    return U, s, Vt
