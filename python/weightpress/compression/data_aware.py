"""Data-aware compression of one linear layer: methods that minimise the error of what the
layer computes on its inputs, ``‖XWᵀ − XŴᵀ‖_F``, rather than the error of the weights.

All take ``W`` in PyTorch layout ``(out, in)`` and :class:`~weightpress.calibration.CalibrationStats`
of the layer's inputs, and return plain arrays / CSR matrices in ``W``'s dtype:

- :func:`prune_obs`: optimal-brain-surgeon pruning (the SparseGPT algorithm): columns are
  pruned left to right and the error each removal makes is compensated on the columns not
  yet visited through the inverse Hessian, unstructured (exact count) or N:M.
- :func:`lowrank_whitened`: truncated SVD in the whitened space ``W S`` (``XᵀX = S Sᵀ``),
  where the output error equals the dropped singular values exactly (SVD-LLM).
- :func:`sparse_plus_lowrank`: ``W ≈ L + S`` by alternating rank-r projection and hard
  thresholding, in activation-scaled coordinates.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .._validation import as_matrix, positive_int, real_scalar
from .._threads import blas_sequential
from .calibration import CalibrationStats, half_h_blocks, row_step
from ..linalg.quant import obs_factor_inplace, obs_sweep
from ..linalg.sparse import _parse_pattern, prune
from ..linalg.svd import randomized_svd
from ..linalg.memory import file_backed, release_rows, row_blocks

__all__ = ["prune_obs", "lowrank_whitened", "whitened_spectrum", "sparse_plus_lowrank",
           "rank_for_params", "obs_factor_shared", "quadratic_total", "lowrank_error_floor"]


def _check(W: Any, stats: CalibrationStats | None) -> np.ndarray:
    Wa = as_matrix(W, "W")
    if stats is not None:
        if not isinstance(stats, CalibrationStats):
            raise TypeError(f"stats: expected CalibrationStats, got {type(stats).__name__}")
        if stats.n_features != Wa.shape[1]:
            raise ValueError(f"stats describe {stats.n_features} input features but W has shape {Wa.shape} "
                             "(expected (out, in) layout: y = x Wᵀ)")
    return Wa


def prune_obs(W: Any, stats: CalibrationStats, sparsity: float | None = None,
              pattern: str | tuple[int, int] | None = None, *, block: int = 128,
              damp: float = 0.01, n_threads: int | None = None) -> sp.csr_array:
    """Prune ``W`` with optimal-brain-surgeon updates of the kept weights (SparseGPT).

    Parameters
    ----------
    W : array_like, (out, in)
        Weights in PyTorch layout.
    stats : CalibrationStats
        Statistics of the layer's inputs (``in`` features).
    sparsity : float in [0, 1], optional
        Fraction of weights removed (exact count, spread evenly over column blocks).
    pattern : str or (int, int), optional
        ``"N:M"`` along each row, instead of ``sparsity``.
    block : int
        Columns per lazy-update block (speed only).
    damp : float
        Hessian dampening, relative to its mean diagonal.
    n_threads : int, optional
        OpenMP threads for the column sweep (see :func:`weightpress.threads`).

    Returns
    -------
    scipy.sparse.csr_array
        The pruned and updated weights, ``W``'s dtype.

    Notes
    -----
    ``O(in³ + out·in²)`` flops; memory ``O(in² + out·in)``. Inputs that are always zero
    (dead features) cost nothing to prune and are pruned first. The sweep runs in C++
    (``_core.obs_sweep``, shared with :func:`~weightpress.compression.quant.gptq`): inside a
    block each row is one thread's, between blocks one GEMM updates the remaining columns; float32
    weights are swept in float32, float64 in float64.
    """
    Wa = _check(W, stats)
    if (sparsity is None) == (pattern is None):
        raise ValueError("prune_obs: give exactly one of sparsity and pattern")
    nm = _parse_pattern(pattern) if pattern is not None else (0, 0)
    s = real_scalar(sparsity, "sparsity", low=0.0, high=1.0) if sparsity is not None else 0.0
    block = positive_int(block, "block")
    total_prune = int(round(s * Wa.size))
    P, _ = _prune_obs(Wa, stats, total_prune, nm, block, damp, n_threads)
    return P


def _prune_obs(Wa: np.ndarray, stats: CalibrationStats, n_prune: int, nm: tuple[int, int],
               block: int, damp: float, n_threads: int | None) -> tuple[sp.csr_array, float]:
    """:func:`prune_obs` and its squared output error ``‖X(W − Ŵ)ᵀ‖²`` (undamped ``H``),
    which the sweep measures itself: ``Σ e_c²`` less the dampening's ``δ‖W − Ŵ‖²``."""
    with blas_sequential():
        Wk = obs_prepare(Wa, stats, damp)
        re = np.zeros(Wk.shape[0])
        with obs_factor_shared(stats, damp, Wk.dtype) as U:
            obs_sweep(Wk, U, n_prune=n_prune, nm=nm, block=block, n_threads=n_threads, row_err=re)
    num = sweep_output_error(Wa, lambda r0, r1: Wk[r0:r1], stats, damp, float(re.sum()), Wk.dtype)
    # zero exactly what was pruned (dead columns included); keep the rest as stored values
    return prune(Wk.astype(Wa.dtype, copy=False), threshold=0.0), num


def sweep_output_error(Wa: np.ndarray, rows_hat: Any, stats: CalibrationStats, damp: float,
                       swept: float, dtype: Any, diag: np.ndarray | None = None) -> float:
    """``‖X(W − Ŵ)ᵀ‖²`` (undamped ``H``) of an OBS/GPTQ sweep from its own ``Σ e_c²``
    (``swept``: the error against the damped ``H``): less the dampening's ``δ‖W − Ŵ‖²`` over
    the live inputs (dead ones are zeroed before the sweep and count nothing). ``rows_hat(r0,
    r1)`` gives rows of ``Ŵ``; one pass over ``W`` in row blocks, no product with ``H``.
    ``diag``: ``H``'s diagonal read before (while ``H`` holds its factor, in a sweep)."""
    dg = (np.diag(stats.hessian()) if diag is None else np.asarray(diag)).astype(np.float64)
    dead = dg == 0
    dg[dead] = 1.0
    delta = float(damp) * float(dg.mean()) if dg.size else 0.0
    d2 = 0.0
    step = row_step(*Wa.shape)
    for r, r1 in row_blocks(Wa, step):
        # one float64 block: W's rows (in the sweep's dtype) less Ŵ's, in place (the same
        # values as converting Ŵ's rows first: float32 -> float64 is exact)
        dd = np.asarray(Wa[r:r1], dtype=dtype).astype(np.float64)
        release_rows(Wa, r, r1)  # (now: Ŵ's rows are decoded beside dd)
        dd[:, dead] = 0.0
        np.subtract(dd, rows_hat(r, r1), out=dd)
        d2 += float(np.einsum("ij,ij->", dd, dd))
        del dd  # (not held while the next block is converted)
    return max(swept - delta * d2, 0.0)


def quadratic_total(W: Any, stats: CalibrationStats) -> float:
    """``‖XWᵀ‖_F² = tr(W H Wᵀ)`` (the denominator of relative output errors), accumulated in
    float64 over row blocks of a product in the statistics' dtype."""
    Wa = np.asarray(W)
    H = stats.hessian()
    den = 0.0
    n_in = Wa.shape[1]
    step = row_step(*Wa.shape)
    cstep = max(1, min(-(-n_in // 2), (1 << 19) // max(1, n_in)))
    with blas_sequential():
        for c, c1, Hc in half_h_blocks(H, cstep, H.dtype):  # (half of the out·in² products)
            for r, r1 in row_blocks(Wa, step):  # (a file's pages read back for the next columns)
                Wb = np.asarray(Wa[r:r1, c:], dtype=H.dtype)
                den += float(np.multiply(Wb @ Hc, Wb[:, :c1 - c]).sum(dtype=np.float64))
    return den


@contextlib.contextmanager
def obs_factor_shared(stats: CalibrationStats, damp: float, dtype: Any,
                      perm: np.ndarray | None = None) -> Any:
    """The sweep's factor ``U`` (as :func:`obs_factor`) written over the statistics' own ``H``
    for the duration of the ``with`` block, and ``H`` restored after it (bit for bit).

    The sweep reads only ``U``'s upper triangle and diagonal, and ``H`` is symmetric, so one
    ``in × in`` buffer holds both: the factorisation leaves ``H`` in the strictly lower
    triangle, its diagonal is kept aside. With ``perm`` (GPTQ's act-order) ``H``'s inputs are
    first permuted in place (``H[p][:, p]``, following the permutation's cycles a row and a
    column at a time) and put back after. Memory: no second ``in × in`` matrix (issue 15: the
    calibrated methods within 3x the largest tensor). A factor already cached on ``stats``
    (by :func:`obs_factor`) is used as it is; an ``H`` of another dtype is factored in a copy.
    """
    dt = np.dtype(dtype)
    key = ("obs", float(damp), dt.str, perm is not None)
    H = stats.hessian()
    if (key in stats._cache or stats.keep_factors or H.dtype != dt or not H.flags.c_contiguous
            or not H.flags.writeable):  # (kept statistics keep their factors for later visits)
        yield obs_factor(stats, damp, dt, perm is not None)[0]
        return
    damp = real_scalar(damp, "damp", low=0.0)
    if perm is not None:
        perm = np.asarray(perm, dtype=np.int64)
        _permute_sym(H, perm)
    diag = H.diagonal().copy()
    info = 0
    try:
        info, _ = obs_factor_inplace(H, damp, keep_lower=True)
        if info:
            raise ValueError(f"damp={damp}: the damped Hessian XᵀX is not positive definite "
                             f"(leading minor {info}); use a larger damp")
        yield H
    finally:  # H's values are in the triangle the factorisation left alone: mirror them back
        _mirror(H, lower=not info)
        np.fill_diagonal(H, diag)
        if perm is not None:
            _permute_sym(H, np.argsort(perm, kind="stable"))


def _permute_sym(H: np.ndarray, p: np.ndarray, rows: int = 64) -> None:
    """``H ← H[p][:, p]`` in place for a symmetric ``H`` (exact: values are only copied): the
    columns of each block of rows are gathered (``A = H[:, p]``), ``A`` is transposed in place
    block by block (``Aᵀ = H[p]``, ``H`` being symmetric), and the columns gathered again.
    Temporaries of a block of rows, no second ``in × in`` matrix (issue 15)."""
    n = H.shape[0]
    for _ in range(2):
        for r in range(0, n, rows):  # (np.take: a gather, 2x fancy indexing's speed at 1536)
            H[r:r + rows] = np.take(H[r:r + rows], p, axis=1)
        if _ == 0:
            _transpose_inplace(H, rows)


def _transpose_inplace(A: np.ndarray, b: int) -> None:
    """``A ← Aᵀ`` for a square ``A``, swapping blocks (``b × b`` temporaries)."""
    n = A.shape[0]
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        A[i0:i1, i0:i1] = A[i0:i1, i0:i1].T.copy()
        for j0 in range(i1, n, b):
            j1 = min(j0 + b, n)
            t = A[i0:i1, j0:j1].copy()
            A[i0:i1, j0:j1] = A[j0:j1, i0:i1].T
            A[j0:j1, i0:i1] = t.T


def _mirror(H: np.ndarray, lower: bool, b: int = 64) -> None:
    """Copy the strictly lower (``lower``) or upper triangle of ``H`` onto the other, by blocks."""
    n = H.shape[0]
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        if lower:
            H[i0:i1, i1:] = H[i1:, i0:i1].T.copy()
        else:
            H[i1:, i0:i1] = H[i0:i1, i1:].T.copy()
        blk = H[i0:i1, i0:i1]
        blk[...] = np.tril(blk) + np.tril(blk, -1).T if lower else np.triu(blk) + np.triu(blk, 1).T


def obs_factor(stats: CalibrationStats, damp: float, dtype: Any,
               act_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(U, dead)``: the upper Cholesky factor of the damped ``H⁻¹ = UᵀU`` in ``dtype`` (row i
    is column i's update direction) and the dead-input mask (``H[i, i] == 0``), cached on
    ``stats`` (every budget of one layer shares it). With ``act_order`` the factor is that of
    ``H`` with its inputs in :func:`act_order_perm` order. Computed in C++: one Cholesky of the
    reversed ``H`` and one triangular inverse (``in³/3`` flops each, LAPACK/BLAS).

    Raises
    ------
    ValueError
        If the damped ``H`` is not positive definite (``damp`` = 0 with dependent inputs).
    """
    damp = real_scalar(damp, "damp", low=0.0)
    dt = np.dtype(dtype)

    def make() -> tuple[np.ndarray, np.ndarray]:
        H = stats.hessian()
        if act_order:
            p = act_order_perm(stats)
            H = H[np.ix_(p, p)]
        H = np.array(H, dtype=dt, order="C")
        info, dead = obs_factor_inplace(H, damp)
        if info:
            raise ValueError(f"damp={damp}: the damped Hessian XᵀX is not positive definite "
                             f"(leading minor {info}); use a larger damp")
        return H, dead.astype(bool)
    return stats.cached(("obs", damp, dt.str, bool(act_order)), make)


def act_order_perm(stats: CalibrationStats) -> np.ndarray:
    """Inputs by decreasing ``H[i, i]`` (GPTQ's act-order: the columns that meet the largest
    inputs are quantized first, while the most columns are left to absorb their error)."""
    return np.argsort(-np.diag(stats.hessian()), kind="stable")


def obs_prepare(Wa: np.ndarray, stats: CalibrationStats, damp: float) -> np.ndarray:
    """A C-contiguous working copy of ``Wa`` in its compute dtype, dead input columns zeroed."""
    ct = np.float64 if Wa.dtype == np.float64 else np.float32
    Wk = np.empty(Wa.shape, dtype=ct)
    step = row_step(*Wa.shape)
    for r, r1 in row_blocks(Wa, step):  # a file's pages released as the copy replaces them
        Wk[r:r1] = Wa[r:r1]
    Wk[:, np.diag(stats.hessian()) == 0] = 0.0
    return Wk


def rank_for_params(shape: tuple[int, int], n_params: int) -> int:
    """Largest rank whose two factors hold at most `n_params` numbers (at least 1)."""
    return max(1, min(min(shape), n_params // (shape[0] + shape[1])))


def lowrank_whitened(W: Any, stats: CalibrationStats, rank: int | None = None, *,
                     error: float | None = None, damp: float = 1e-6
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank ``W ≈ A @ B`` that minimises the output error ``‖X(W − AB)ᵀ‖_F``.

    With ``H = XᵀX = L Lᵀ``, the output error is ``‖(W − Ŵ) L‖_F``, so the best rank-r ``Ŵ``
    truncates the SVD of ``W L`` and the squared output error is the sum of the dropped
    ``σᵢ²`` exactly (SVD-LLM). Those are the eigenvalues of the Gram matrix of the smaller side:
    ``G = W H Wᵀ`` (out × out) when ``out ≤ in``, whose top eigenvectors ``U_r`` give
    ``Ŵ = U_r (U_rᵀ W)``; else ``K = Lᵀ WᵀW L`` (in × in, ``L`` from the eigenvalues of
    ``H``), whose top eigenvectors ``V_r`` give ``U_r = W L V_r Σ_r⁻¹``. Nothing is inverted,
    so rank-deficient inputs need no dampening, and no SVD of a full-size matrix is taken.

    Parameters
    ----------
    W : array_like, (out, in)
    stats : CalibrationStats
    rank : int, optional
        Rank to keep; or
    error : float in (0, 1), optional
        Relative output error to meet with the smallest rank.
    damp : float
        Accepted for compatibility; unused (no inverse of ``H`` is taken).

    Returns
    -------
    A : ndarray (out, r), B : ndarray (r, in), sigma : ndarray
        Factors in ``W``'s dtype, and singular values of ``W L`` in decreasing order (float64):
        all of them with ``error``; the ``r`` kept with ``rank``. With all of them,
        ``sqrt(sum(sigma[r:]**2) / sum(sigma**2))`` is the relative output error of rank r.

    Notes
    -----
    Computed in the statistics' dtype (float32 for float32 inputs): ``k = min(out, in)``,
    ``out·in·k + in·k²`` flops and one ``k × k`` symmetric eigenproblem (only the ``r`` top
    eigenvectors with ``rank``); memory one ``k × k`` matrix besides ``H``.
    """
    Wa = _check(W, stats)
    if (rank is None) == (error is None):
        raise ValueError("lowrank_whitened: give exactly one of rank and error")
    real_scalar(damp, "damp", low=0.0)
    k = min(Wa.shape)
    with blas_sequential():
        if rank is not None:
            r = positive_int(rank, "rank")
            if r > k:
                raise ValueError(f"rank must be <= min(W.shape) = {k}, got {r}")
            lam, Z = _gram_eigh(Wa, stats, r)
        else:
            e = real_scalar(error, "error", low=0.0, low_open=True, high=1.0, high_open=True)
            lam, Z = _gram_eigh(Wa, stats, None)
            tail = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])  # tail[r] = Σ λ[r:]
            ok = np.nonzero(tail[1:] <= e * e * tail[0])[0]
            r = int(ok[0]) + 1 if len(ok) else len(lam)
            lam, Z = lam[:r], Z[:, :r]
        A, B = _whitened_factors(Wa, stats, lam[:r], Z[:, :r])
    sig = np.sqrt(np.maximum(lam, 0.0))
    return A.astype(Wa.dtype, copy=False), B.astype(Wa.dtype, copy=False), sig


def whitened_spectrum(W: Any, stats: CalibrationStats) -> tuple[np.ndarray, float]:
    """``(λ, total)``: the eigenvalues ``σᵢ²`` of the Gram matrix of ``W L`` in decreasing order
    (float64; the squared output error of rank r is ``Σ λ[r:]``) and ``tr(W H Wᵀ)``, from
    one eigenvalue-only solve (no eigenvectors: the curve of every rank at once)."""
    Wa = _check(W, stats)
    with blas_sequential():
        G, _ = _gram_of(Wa, stats)
        lam = sla.eigh(G.T, lower=True, eigvals_only=True, overwrite_a=True, check_finite=False,
                       driver="evr")  # (lower of G.T: the triangle _gram writes)
    lam = np.maximum(lam[::-1].astype(np.float64), 0.0)
    return lam, float(lam.sum())


def lowrank_error_floor(W: Any, stats: CalibrationStats, rank: int, *, oversample: int = 8,
                        seed: int = 0) -> float:
    """A lower bound on ``‖X(W − Ŵ)ᵀ‖_F²`` (undamped ``H = XᵀX``, absolute) over *every*
    ``Ŵ`` of rank at most ``rank``, much cheaper than the whitened spectrum it bounds.

    Any such ``Ŵ`` errs by ``‖(W − Ŵ)L‖_F² ≥ Σ_{i>r} λᵢ(G)`` (Eckart–Young, ``G = W H Wᵀ``,
    ``H = L Lᵀ``: ``Ŵ L`` has rank ≤ r), and for any ``m`` orthonormal columns ``Q`` the
    eigenvalues of ``Qᵀ G Q`` lie below ``G``'s one by one (Poincaré's separation theorem),
    so ``Σ_{i=r+1}^{m} λᵢ(Qᵀ G Q) ≤ Σ_{i>r} λᵢ(G)`` whatever ``Q`` is. ``Q`` spans a random
    sketch ``W D Ω`` of ``W``'s range, ``D`` the inputs' RMS (``m = rank + oversample``
    columns; the sketch only makes the bound tight, not valid), orthonormalised in float32:
    its departure ``f = ‖QᵀQ − I‖_F`` (float64) is divided out as ``(1 + f)²``.
    ``Qᵀ G Q = Zᵀ H Z`` with ``Z = Wᵀ Q`` is formed in float64 from ``W``, ``Q`` and ``H``
    as given (exact conversions), so its rounding is ~1e-13 of ``tr(G)``; ``1e-9·tr(G)``
    (estimated from the same products) is taken off for it. 0.0 when ``rank ≥ min(W.shape)``.

    Cost: ``2·out·in·m + in²·m`` flops (float64 for the last two terms) and an ``m × m``
    eigenvalue solve (the spectrum itself: ``out·in·k + in·k²`` and a ``k × k`` one); memory
    about ``out·m`` float32 and ``in·m`` float64 values, blocks of ``W`` and ``H`` converted
    at a time. Deterministic for any thread count (BLAS on
    one thread, a seeded sketch)."""
    Wa = _check(W, stats)
    r = int(rank)
    out, n_in = Wa.shape
    k = min(out, n_in)
    if r < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if r >= k or Wa.size == 0:
        return 0.0
    m = min(k, r + max(1, int(oversample)))
    H = stats.hessian()
    step = row_step(out, n_in)
    hstep = max(1, min(n_in, (Wa.size // 16) // max(1, n_in)))  # (H in float64: W's 1/8)
    with blas_sequential():
        # test directions scaled by the inputs' RMS (sqrt of H's diagonal): W's whitened
        # range without a product with H (which would cost in²·m more)
        hd = np.sqrt(np.maximum(np.diag(H).astype(np.float64), 0.0))
        Om = (np.random.default_rng(seed).standard_normal((n_in, m)) * hd[:, None]).astype(np.float32)
        Y = np.empty((out, m), np.float32, order="F")  # (LAPACK's order: factored in place)
        for r0, r1 in row_blocks(Wa, step):  # (a file's pages: W is read again below)
            Y[r0:r1] = np.asarray(Wa[r0:r1], dtype=np.float32) @ Om
        del Om
        # Q (out, m), orthonormal to float32's precision; its exact values span the subspace
        # (SciPy's QR works in Y: NumPy's copies it twice, outside tracemalloc's sight)
        Q = sla.qr(Y, mode="economic", overwrite_a=True, check_finite=False)[0]
        del Y
        Z = np.zeros((n_in, m), np.float64)  # Wᵀ Q, from float32 values: exact products
        QtQ = np.zeros((m, m), np.float64)
        for r0, r1 in row_blocks(Wa, step):
            Qb = Q[r0:r1].astype(np.float64)
            Z += np.asarray(Wa[r0:r1], dtype=np.float64).T @ Qb
            QtQ += Qb.T @ Qb
        del Q, Qb
        B = np.zeros((m, m), np.float64)  # Zᵀ H Z, H's rows converted a block at a time
        for c0 in range(0, n_in, hstep):
            B += Z[c0:c0 + hstep].T @ (np.asarray(H[c0:c0 + hstep], dtype=np.float64) @ Z)
        del Z
        B = (B + B.T) * 0.5
        mu = sla.eigh(B, eigvals_only=True, check_finite=False, driver="evr")[::-1]
    # Q's singular values lie within 1 ± f, f ≤ ‖QᵀQ − I‖_F: Qᵀ G Q's eigenvalues are at most
    # (1 + f)² times those of G compressed onto Q's span (Ostrowski), so divided by it
    f = float(np.linalg.norm(QtQ - np.eye(m)))
    scale = float(np.sum(np.maximum(mu, 0.0)))  # ≤ (1 + f)² tr(G): the size of what was summed
    return max((float(np.sum(mu[r:m])) - 1e-9 * scale) / (1.0 + f) ** 2, 0.0)


def _compute_dtype(stats: CalibrationStats) -> np.dtype:
    return stats.hessian().dtype


def array_digest(A: np.ndarray) -> str:
    """A 128-bit blake2b digest of an array's bytes in C order, hashed in place when it is
    C-contiguous (the cache keys of a layer's weights and of ``H``). A file-mapped array is
    hashed a block of rows at a time, its pages released behind (the same digest)."""
    if A.flags.c_contiguous and A.ndim == 2 and file_backed(A):
        h = hashlib.blake2b(digest_size=16)
        step = row_step(*A.shape)
        for r, r1 in row_blocks(A, step):
            h.update(A[r:r1].data)
        return h.hexdigest()
    return hashlib.blake2b(A.data if A.flags.c_contiguous else np.ascontiguousarray(A).data,
                           digest_size=16).hexdigest()


def _gram_of(Wa: np.ndarray, stats: CalibrationStats) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_gram` (``G`` a fresh array the caller may overwrite); statistics that are kept
    across visits (``keep_factors``) cache it by the weights' hash, so a layer's later builds
    (a ratio search's retry, the build after the allocation's curves) copy it instead."""
    if not stats.keep_factors:
        return _gram(Wa, stats)
    key = ("gram", Wa.shape, str(Wa.dtype), array_digest(Wa))
    G, L = stats.cached(key, lambda: _gram(Wa, stats))
    return G.copy(), L


def _gram(Wa: np.ndarray, stats: CalibrationStats) -> tuple[np.ndarray, np.ndarray | None]:
    """``(G, L)``: ``G = W H Wᵀ`` (out ≤ in; L None) or ``K = Lᵀ WᵀW L`` with ``H = L Lᵀ``
    (out > in), in the statistics' dtype, built by row blocks (temporaries of a block).

    ``G`` holds its upper triangle only (``G[i, j]``, ``j ≥ i``; the rest is not written): the
    triangle LAPACK reads of ``G.T`` (uplo 'L' of the Fortran-ordered view), which the callers
    pass. Row block i needs only rows ``i:`` of ``W`` after it, so a file-mapped ``W``'s pages
    are released behind, and the untouched triangle is never resident: ``W`` and ``G``
    together hold about one layer instead of two (issue 15), for half the second product."""
    H = stats.hessian()
    dt = H.dtype
    out, n_in = Wa.shape
    if out <= n_in:
        G = np.empty((out, out), dt)
        Wc = np.asarray(Wa, dtype=dt)
        step = row_step(out, n_in)
        for r0, r1 in row_blocks(Wc, step):
            G[r0:r1, r0:] = (Wc[r0:r1] @ H) @ Wc[r0:].T
        return G, None
    lamH, Q = sla.eigh(H, check_finite=False, driver="evr")  # in × in: the smaller side
    L = Q * np.sqrt(np.maximum(lamH, 0.0)).astype(dt)
    del Q
    WtW = np.zeros((n_in, n_in), dt)
    step = row_step(out, n_in)
    for r0, r1 in row_blocks(Wa, step):
        Wb = np.asarray(Wa[r0:r1], dtype=dt)
        WtW += Wb.T @ Wb
    K = L.T @ WtW @ L
    return K, L


def _gram_eigh(Wa: np.ndarray, stats: CalibrationStats, r: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top ``r`` (all with None) eigenpairs of :func:`_gram`, decreasing; eigenvectors as
    left singular vectors of ``W L`` (out × r)."""
    G, L = _gram_of(Wa, stats)
    k = G.shape[0]
    sub = None if r is None else (k - r, k - 1)
    # G.T: the same symmetric matrix, Fortran-ordered, so LAPACK works in it without a copy
    lam, V = sla.eigh(G.T, lower=True, subset_by_index=sub, overwrite_a=True, check_finite=False,
                     driver="evr")  # (lower of G.T: the triangle _gram writes)
    del G
    lam, V = lam[::-1].astype(np.float64), V[:, ::-1]
    if L is None:
        return np.maximum(lam, 0.0), V
    lam = np.maximum(lam, 0.0)
    keep = lam > lam[:1].max(initial=0.0) * 1e-12 if lam.size else lam > 0
    # left singular vectors of W L: W L vᵢ / σᵢ (directions of zero σ contribute nothing)
    Uw = np.zeros((Wa.shape[0], V.shape[1]), L.dtype)
    if keep.any():
        s = np.sqrt(lam[keep]).astype(L.dtype)
        Uw[:, keep] = (np.asarray(Wa, dtype=L.dtype) @ (L @ V[:, keep])) / s
    return lam, Uw


def _whitened_factors(Wa: np.ndarray, stats: CalibrationStats, lam: np.ndarray, U: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``Ŵ = U (Uᵀ W)``: ``A = U`` (out × r), ``B = Uᵀ W`` (r × in)."""
    Wc = np.asarray(Wa, dtype=U.dtype)
    # Σᵢ Uᵢᵀ Wᵢ over row blocks (the same sums whether W is in memory or a file's), the pages
    # of a file-mapped W released behind
    B = np.zeros((U.shape[1], Wc.shape[1]), U.dtype)
    step = max(row_step(*Wc.shape), 256)
    for r, r1 in row_blocks(Wc, step):
        B += U[r:r1].T @ Wc[r:r1]
    return U, B


def _sq(R: np.ndarray) -> float:
    """``‖R‖_F²`` accumulated in float64 a block of rows at a time."""
    step = row_step(*R.shape)
    t = 0.0
    for r in range(0, R.shape[0], step):
        b = R[r:r + step].astype(np.float64)
        t += float(np.einsum("ij,ij->", b, b))
        del b  # (not held while the next block is converted)
    return t


def _sub_csr(R: np.ndarray, S: sp.csr_array) -> None:
    """``R -= S`` in place (S's explicit entries only), by blocks of rows of about 8k entries
    (the row indices and gathered values of a block, not of every entry: issue 15)."""
    if S.nnz:
        ip = S.indptr
        step = max(1, int((1 << 13) * S.shape[0] // S.nnz))
        for r0 in range(0, S.shape[0], step):
            r1 = min(S.shape[0], r0 + step)
            a, b = int(ip[r0]), int(ip[r1])
            if a < b:
                rows = np.repeat(np.arange(r0, r1), np.diff(ip[r0:r1 + 1]))
                R[rows, S.indices[a:b]] -= S.data[a:b]


def _scaled_into(Wa: np.ndarray, d: np.ndarray, R: np.ndarray) -> None:
    """``R = W diag(d)`` by blocks of rows, a file-mapped ``W``'s pages released behind (R
    replaces them in the resident set; each alternation reads ``W`` again)."""
    step = row_step(*Wa.shape)
    for r0, r1 in row_blocks(Wa, step):
        np.multiply(Wa[r0:r1], d, out=R[r0:r1])


def sparse_plus_lowrank(W: Any, rank: int, sparsity: float, stats: CalibrationStats | None = None,
                        *, n_iter: int = 30, tol: float = 1e-10
                        ) -> tuple[sp.csr_array, np.ndarray, np.ndarray]:
    """``W ≈ S + A @ B`` with ``S`` sparse and ``A @ B`` of rank ``rank``, by alternating
    projections: ``L ← best rank-r of (W − S)``, ``S ← largest entries of (W − L)``.

    With ``stats``, both projections work in activation-scaled coordinates ``W diag(d)``
    (``d_j`` = RMS of input feature j), so weights that meet large inputs count more.

    Parameters
    ----------
    W : array_like, (out, in)
    rank : int
        Rank of the low-rank part (0 gives pure pruning).
    sparsity : float in [0, 1]
        Fraction of zeros in the sparse part.
    stats : CalibrationStats, optional
    n_iter : int
        Most alternations; stops early when the scaled residual stops changing by `tol`.

    Returns
    -------
    S : csr_array (out, in), A : ndarray (out, r), B : ndarray (r, in)
    """
    Wa = _check(W, stats)
    r = int(rank)
    if r < 0 or r > min(Wa.shape):
        raise ValueError(f"rank must be in [0, {min(Wa.shape)}], got {rank}")
    s = real_scalar(sparsity, "sparsity", low=0.0, high=1.0)
    n_iter = positive_int(n_iter, "n_iter")
    if stats is not None:
        d = stats.column_norms() / np.sqrt(max(stats.n_samples, 1))
        pos = d[d > 0]
        d = np.maximum(d, (pos.mean() if pos.size else 1.0) * 1e-3)
    else:
        d = np.ones(Wa.shape[1])
    # in W's float dtype, one full-size buffer (the residual; W·diag(d) is formed into it
    # again when needed), the sparse part as CSR (issue 15: this held six float64 copies of W)
    ct = np.float64 if Wa.dtype == np.float64 else np.float32
    dc = d.astype(ct)
    R = np.empty(Wa.shape, ct)
    S = sp.csr_array(Wa.shape, dtype=ct)
    A = np.zeros((Wa.shape[0], r), ct)
    B = np.zeros((r, Wa.shape[1]), ct)
    prev = np.inf
    _scaled_into(Wa, dc, R)
    wnorm = float(np.sqrt(_sq(R)))
    step = row_step(*R.shape)
    for _ in range(n_iter):
        _scaled_into(Wa, dc, R)
        if r:
            _sub_csr(R, S)  # R = Ws − S
            del S, A, B  # (not held through the SVD; all three are set again below)
            U, sv, Vt = randomized_svd(R, r, seed=0)
            A, B = U * sv, Vt
            del U
            _scaled_into(Wa, dc, R)
            for r0 in range(0, R.shape[0], step):  # R = Ws − L, L = A B a block at a time
                R[r0:r0 + step] -= A[r0:r0 + step] @ B
        r2 = _sq(R)  # (before the sparse part exists: its float64 blocks are not held beside it)
        S = prune(R, sparsity=s)  # the largest entries of the residual, as they are
        # ‖Ws − L − S‖, S's squares summed in float64 without a float64 copy of its values
        s2 = float(np.einsum("i,i->", S.data, S.data, dtype=np.float64)) if S.nnz else 0.0
        res = float(np.sqrt(max(r2 - s2, 0.0)))
        if abs(prev - res) <= tol * max(1.0, wnorm):
            break
        prev = res
    del R
    S = sp.csr_array(S, copy=True)
    S.data = (S.data / dc[S.indices]).astype(Wa.dtype)
    S.eliminate_zeros()
    return S, A.astype(Wa.dtype), (B / dc).astype(Wa.dtype)
