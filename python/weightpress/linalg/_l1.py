"""Basis pursuit, BPDN and LASSO by the homotopy method (exact, with a duality certificate)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from .. import _core
from .._threads import _resolve, blas_sequential
from .._validation import as_csr, as_float_array, check_finite, csr_parts, float_dtype, positive_int, real_scalar

__all__ = ["basis_pursuit", "lasso", "SolverInfo", "ConvergenceWarning"]

_LASSO, _BPDN, _BP = _core.L1Mode.lasso, _core.L1Mode.bpdn, _core.L1Mode.bp


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver stopped without certifying its tolerance."""


@dataclass(frozen=True)
class SolverInfo:
    """What an l1 solver did and how good its answer is.

    Attributes
    ----------
    iterations : int
        Homotopy events (an atom entering or leaving the active set).
    residual : float
        ``‖A x − y‖₂`` of the returned ``x`` (computed from ``A``, not tracked).
    duality_gap : float
        Relative duality gap ``(primal − dual) / max(|primal|, |dual|)`` of the certificate
        (0 when both are 0).
    converged : bool
        True when the gap is at most ``tol`` and ``x`` is feasible (``‖Ax − y‖ <= tol·‖y‖``
        for basis pursuit, ``<= sigma·(1 + tol)`` for BPDN).
    primal, dual : float
        The primal objective of ``x`` and the dual objective of the certificate.
    n_active : int
        Nonzeros of ``x``.
    lam : float
        The path parameter λ at the end (0 for basis pursuit, ``lam`` for LASSO, the λ of
        the BPDN solution otherwise).
    """

    iterations: int
    residual: float
    duality_gap: float
    converged: bool
    primal: float
    dual: float
    n_active: int
    lam: float


def _prepare(A: Any, y: Any) -> tuple[Any, np.ndarray, np.dtype, int, int]:
    """(operator parts, y as float64, output dtype, m, n)."""
    if sp.issparse(A):
        if A.format != "csr":
            A = sp.csr_array(A)
        A = as_csr(A, "A")
        if A.dtype.kind not in "fiub":
            raise TypeError(f"A: expected real numeric data, got dtype {A.dtype}")
        m, n = A.shape
        ya = as_float_array(y, "y")
        out_dt = float_dtype(A.dtype, ya.dtype, name="A/y")
        data, indices, indptr = csr_parts(A, np.dtype(np.float64))
        check_finite(data, "A")
        _core.csr_check(indptr, indices, m, n, _resolve(None))
        op: Any = ("csr", indptr, indices, data)
    else:
        Aa = as_float_array(A, "A")
        if Aa.ndim != 2:
            raise ValueError(f"A: expected a 2-D array, got {Aa.ndim}-D with shape {Aa.shape}")
        m, n = Aa.shape
        ya = as_float_array(y, "y")
        out_dt = float_dtype(Aa.dtype, ya.dtype, name="A/y")
        Ad = np.ascontiguousarray(Aa, dtype=np.float64)
        op = ("dense", Ad)  # checked for NaN/Inf by the solver's pass for the column norms
    if ya.ndim != 1:
        raise ValueError(f"y: expected a 1-D array, got {ya.ndim}-D with shape {ya.shape}")
    if ya.shape[0] != m:
        raise ValueError(f"y: has length {ya.shape[0]} but A has {m} rows")
    yd = np.ascontiguousarray(ya, dtype=np.float64)
    check_finite(yd, "y")
    return op, yd, out_dt, m, n


_BLAS_ONE_THREAD_FROM = 1 << 20  # m·n of a dense A


def _solve(op: Any, y: np.ndarray, m: int, n: int, mode: Any, target: float, max_iter: Any,
           n_threads: int | None, tol: float) -> tuple[np.ndarray, dict]:
    it = 10 * min(m, n) + 100 if max_iter is None else positive_int(max_iter, "max_iter", low=0)
    nt = _resolve(n_threads)

    def dense(Ad: np.ndarray) -> tuple[np.ndarray, dict]:
        # The engine checks A for NaN/Inf through the column norms it computes anyway (the
        # separate isfinite pass was 5% of a LASSO solve at 1024x4096); when it objects, the
        # full check names the problem, or (squares that overflow, A finite) it runs unchecked.
        try:
            return _core.l1_dense(Ad, y, mode, target, it, nt, check_finite=True)
        except _core.NonFinite:
            check_finite(Ad, "A")
            return _core.l1_dense(Ad, y, mode, target, it, nt, check_finite=False)

    def run(o: Any) -> tuple[np.ndarray, dict]:
        if o[0] == "dense":
            if m * n < _BLAS_ONE_THREAD_FROM:
                return dense(o[1])
            # The solver's BLAS calls are many panel products between its own OpenMP loops:
            # OpenBLAS's pool, woken for each and spinning after, fights our threads for the
            # cores (BPDN 1024x4096 on 2 threads: 513-529 ms with it, 213-226 ms without;
            # spgl1 155-200 ms). Below this size, asking threadpoolctl costs more than it saves.
            with blas_sequential():
                return dense(o[1])
        _, indptr, indices, data = o
        return _core.l1_csr(indptr, indices, data, m, n, y, mode, target, it, nt)

    x, raw = run(op)
    if raw["finished"] and _rel_gap(raw) > tol and n > 0:
        # Degenerate ties (equal correlations, repeated columns) can lead the homotopy off the
        # optimal path. Retry on the column weights 1 + 1e-9·u (fixed u): the weighted problem is
        # in general position, its solution is within 1e-9 of optimal for this one, and its dual
        # point divided by max(weights) is feasible here, so the certificate carries over.
        eps = 1e-9
        wts = 1.0 + eps * np.random.default_rng(20080101).random(n)
        if op[0] == "dense":
            op2: Any = ("dense", np.ascontiguousarray(op[1] / wts))
        else:
            op2 = ("csr", op[1], op[2], np.ascontiguousarray(op[3] / wts[op[2]]))
        x2, raw2 = run(op2)
        x2 = x2 / wts
        raw2 = dict(raw2)
        l1 = float(np.abs(x2).sum())
        raw2["primal"] = 0.5 * raw2["resid_norm"] ** 2 + target * l1 if mode == _LASSO else l1
        raw2["dual"] = raw2["dual"] / (1.0 + eps)
        if raw2["finished"] and _rel_gap(raw2) < _rel_gap(raw):
            return x2, raw2
    return x, raw


def _rel_gap(raw: dict) -> float:
    P, D = raw["primal"], raw["dual"]
    scale = max(abs(P), abs(D))
    return abs(P - D) / scale if scale > 0 else 0.0


def _finish(name: str, x: np.ndarray, raw: dict, y: np.ndarray, tol: float, feasible: bool,
            out_dt: np.dtype, return_info: bool, why: str) -> Any:
    P, D = raw["primal"], raw["dual"]
    rel = _rel_gap(raw)
    ok = bool(raw["finished"]) and rel <= tol and feasible
    info = SolverInfo(iterations=int(raw["iterations"]), residual=float(raw["resid_norm"]),
                      duality_gap=float(rel), converged=ok, primal=float(P), dual=float(D),
                      n_active=int(np.count_nonzero(x)), lam=float(raw["lambda"]))
    if not ok:
        if not raw["finished"]:
            why = "the homotopy stopped at max_iter; increase max_iter"
        warnings.warn(f"{name}: not converged (relative duality gap {rel:.3g}, tol {tol:g}, "
                      f"residual {info.residual:.3g}): {why}", ConvergenceWarning, stacklevel=3)
    xo = x.astype(out_dt, copy=False)
    return (xo, info) if return_info else xo


def basis_pursuit(A: Any, y: Any, sigma: float = 0.0, *, tol: float = 1e-6,
                  max_iter: int | None = None, return_info: bool = False,
                  n_threads: int | None = None) -> Any:
    """Basis pursuit ``min ‖x‖₁ s.t. Ax = y``, or BPDN ``min ‖x‖₁ s.t. ‖Ax − y‖₂ <= sigma``.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix, shape (m, n)
        Dense (any layout) or sparse (CSR used as is; other formats are converted). Wide,
        square or tall; rank-deficient and duplicate columns are allowed.
    y : array_like, shape (m,)
        Measurements.
    sigma : float >= 0
        Noise level: 0 for exact basis pursuit. ``sigma >= ‖y‖`` gives ``x = 0``.
    tol : float > 0
        Relative duality gap (and, for ``sigma = 0``, relative residual) that counts as
        converged. The solver is exact; ``tol`` only decides whether to warn.
    max_iter : int, optional
        Most homotopy events (default ``10·min(m, n) + 100``).
    return_info : bool
        Also return a :class:`SolverInfo`.
    n_threads : int, optional
        Threads for the O(n·|support|) updates and sparse products. Results are identical for
        every count.

    Returns
    -------
    x : numpy.ndarray, shape (n,)
        float32 when ``A`` and ``y`` are both float32, else float64 (the solve runs in float64).
    info : SolverInfo
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Shape mismatch, NaN/Inf, ``sigma < 0``, ``tol <= 0``, a malformed CSR matrix.
    TypeError
        Non-numeric input.

    Warns
    -----
    ConvergenceWarning
        When the certificate does not reach ``tol`` (e.g. ``y`` not in the range of ``A`` for
        ``sigma = 0``, ``sigma`` below the least-squares residual, or ``max_iter`` reached).

    Notes
    -----
    Homotopy (LARS-lasso) on ``½‖Ax − y‖² + λ‖x‖₁`` from ``λ = ‖Aᵀy‖∞`` down to 0 (BP) or to
    the λ whose residual is ``sigma`` (BPDN; the residual along each linear piece is a
    quadratic in λ, so the stop is exact). Each event costs ``O(n·|S|)`` with Gram columns
    ``AᵀA[:, j]`` computed in blocks by BLAS for the atoms that would enter soonest; a
    k-sparse solution takes about k events. The answer is polished on the true residual and
    certified by a dual point. Ties and the path's end are judged relative to each column's
    own scale, so columns whose norms differ by 1e10 or more are handled exactly. Dual point: for BP ``z = A_S (A_SᵀA_S)⁻¹ sign(x_S)`` scaled so that
    ``‖Aᵀz‖∞ <= 1`` (dual: ``max yᵀz``); for BPDN ``z = r / ‖Aᵀr‖∞`` (dual:
    ``max yᵀz − sigma‖z‖``).

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> A = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    >>> wp.basis_pursuit(A, np.array([1.0, 1.0]))
    array([0., 0., 1.])
    """
    s = real_scalar(sigma, "sigma", low=0.0)
    t = real_scalar(tol, "tol", low=0.0, low_open=True)
    op, yd, out_dt, m, n = _prepare(A, y)
    x, raw = _solve(op, yd, m, n, _BPDN if s > 0 else _BP, s, max_iter, n_threads, t)
    ynorm = float(np.linalg.norm(yd))
    if s > 0:
        feasible = raw["resid_norm"] <= s * (1 + t) + 1e-14 * ynorm
        why = "sigma is below the smallest residual ‖Ax − y‖ reachable"
        name = "basis_pursuit (BPDN)"
    else:
        feasible = raw["resid_norm"] <= t * ynorm
        why = "y is not in the range of A (use sigma > 0)"
        name = "basis_pursuit"
    return _finish(name, x, raw, yd, t, feasible, out_dt, return_info, why)


def lasso(A: Any, y: Any, lam: float, *, tol: float = 1e-6, max_iter: int | None = None,
          return_info: bool = False, n_threads: int | None = None) -> Any:
    """LASSO: ``min_x ½‖Ax − y‖₂² + lam·‖x‖₁``, solved exactly by homotopy.

    Parameters
    ----------
    A : array_like or scipy.sparse matrix, shape (m, n)
        Dense or sparse (CSR used as is).
    y : array_like, shape (m,)
        Targets.
    lam : float >= 0
        Penalty. ``lam >= ‖Aᵀy‖∞`` gives exactly ``x = 0``, however ``‖Aᵀy‖∞`` was computed
        (the solver compares with a rounding bound, ``m·eps·‖a_j‖‖y‖`` per column, so the same
        ``lam`` gives the same zero on every CPU and BLAS). ``lam = 0`` is least squares
        (the minimum-l1-norm solution when it is not unique). Note the scaling: scikit-learn's
        ``Lasso(alpha)`` minimises ``‖Ax − y‖² / (2m) + alpha‖x‖₁``, i.e. ``lam = alpha·m``.
    tol : float > 0
        Relative duality gap that counts as converged (warn otherwise).
    max_iter, return_info, n_threads
        As in :func:`basis_pursuit`.

    Returns
    -------
    x : numpy.ndarray, shape (n,)
        float32 when ``A`` and ``y`` are both float32, else float64.
    info : SolverInfo
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Shape mismatch, NaN/Inf, ``lam < 0``, ``tol <= 0``, a malformed CSR matrix.
    TypeError
        Non-numeric input.

    Warns
    -----
    ConvergenceWarning
        When the certificate does not reach ``tol``.

    Notes
    -----
    The homotopy of :func:`basis_pursuit`, stopped at ``λ = lam``. Wide problems
    (``n >= 4·max(64, m/4)``) run it on a block of the columns most correlated with ``y``,
    then solve exactly on the block's support plus the largest violators of the optimality
    conditions, revising that support as an active-set method (one product with ``A`` per
    revision, at most 8), and grow the block if that does not settle. Every answer is checked
    against the optimality conditions of the whole problem. The certificate is the scaled
    residual ``θ = r·min(1, lam/‖Aᵀr‖∞)`` with the dual ``yᵀθ − ½‖θ‖²``.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> wp.lasso(np.eye(2), np.array([3.0, 0.5]), lam=1.0)
    array([2., 0.])
    """
    lv = real_scalar(lam, "lam", low=0.0)
    t = real_scalar(tol, "tol", low=0.0, low_open=True)
    op, yd, out_dt, m, n = _prepare(A, y)
    x, raw = _solve(op, yd, m, n, _LASSO, lv, max_iter, n_threads, t)
    return _finish("lasso", x, raw, yd, t, True, out_dt, return_info, "")
