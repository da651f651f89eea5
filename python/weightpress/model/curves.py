"""Error-vs-size curves of one layer from one sort or one factorisation.

``--allocate`` needs, per layer, the error it would have at many sizes. Building the layer at
every size and measuring it costs one build per point; for two forms the whole curve follows
from one pass instead:

- magnitude pruning (weight space): keeping the ``k`` largest entries drops the others, so one
  sort of the squared magnitudes and a cumulative sum give the error at every ``k`` (the
  rounding of the kept values to the stored dtype is added the same way);
- low rank (weight space): the truncation error at rank ``r`` is the tail of the singular
  values, ``‖σ[r:]‖ / ‖W‖``, from one SVD;
- whitened low rank (with calibration): with ``H = L Lᵀ`` the rank-r truncation of ``W L``
  leaves the output error ``Σ_{i>r} σᵢ²``, and the ``σᵢ²`` are the eigenvalues of the Gram
  matrix of the smaller side of ``W L``: every rank's exact output error from one
  eigenvalue-only solve.

- OBS pruning (with calibration): one factorisation of ``H`` serves every level, and each
  level is one sweep that reports its own output error (``Σ e_c²`` over the swept columns is
  the error against the damped ``H``; the dampening's share ``δ‖W − Ŵ‖²`` is taken off): no
  product with ``H`` per level, no rebuild.

Each point carries the byte budget that rebuilds exactly that point (``nnz_for_bytes`` and
``rank_for_bytes`` invert the byte counts used here).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .._threads import blas_sequential
from ..compression.data_aware import obs_factor_shared, obs_prepare, whitened_spectrum
from ..linalg.quant import obs_sweep

from ..compression.calibration import CalibrationStats, row_step
from ..compression.storage import lowrank_nbytes, nnz_for_bytes, sparse_nbytes
from ..io.safetensors import bf16_to_f32, f32_to_bf16

__all__ = ["FINE_LEVELS", "prune_curve", "lowrank_curve", "whitened_curve", "obs_curve",
           "stored_values"]

# byte levels (fractions of the dense tensor) of the one-pass curves: 48 points from 1/1.25
# down to 1/44 (the range CURVE_LEVELS spans), 8 % apart
FINE_LEVELS = tuple(float(x) for x in np.geomspace(1 / 1.25, 1.25 ** -17, 48))


def stored_values(Wv: np.ndarray, storage: str | None) -> np.ndarray:
    """The values as the container will hold them (bfloat16-rounded for ``"BF16"``)."""
    if storage == "BF16" and Wv.dtype == np.float32:
        return bf16_to_f32(f32_to_bf16(np.ascontiguousarray(Wv))).reshape(Wv.shape)
    return Wv


def prune_curve(W64: np.ndarray, Wv: np.ndarray, storage: str | None,
                stored_shape: tuple[int, int], isz: int, orig_bytes: float
                ) -> list[tuple[int, float, float]]:
    """Magnitude pruning's relative weight error at every level of :data:`FINE_LEVELS`.

    ``W64`` is the original (float64), ``Wv`` the values pruned (perhaps narrowed to the
    value dtype), ``storage`` how they are stored (their rounding counts). Returns
    ``(nbytes, error, budget)`` per distinct kept count, ``budget`` rebuilding that count.
    Ties in magnitude are broken by position, as the pruning kernel may break them otherwise;
    the error then differs in the tied entries only.
    """
    a = W64.reshape(-1)
    total = float(a @ a)
    Wstored = stored_values(Wv, storage)
    order = np.argsort(np.abs(Wv).reshape(-1), kind="stable")  # ascending: dropped first
    drop = np.concatenate([[0.0], np.cumsum(a[order] ** 2)])        # drop[t]: t smallest gone
    r = (a - Wstored.reshape(-1).astype(np.float64))[order] ** 2     # rounding of kept values
    keep_round = np.concatenate([np.cumsum(r[::-1])[::-1], [0.0]])   # keep_round[t]: from t on
    n = a.size
    out = []
    seen = set()
    for lv in FINE_LEVELS:
        nb = orig_bytes * lv
        k = nnz_for_bytes(stored_shape, nb, isz)
        if k in seen or k <= 0:
            continue
        seen.add(k)
        t = n - k
        err2 = drop[t] + keep_round[t]
        out.append((sparse_nbytes(stored_shape, k, isz),
                    float(np.sqrt(max(err2, 0.0) / total)) if total > 0 else 0.0,
                    float(sparse_nbytes(stored_shape, k, isz))))
    return out


def _ranks(shape: tuple[int, int], orig_bytes: float, isz: int) -> np.ndarray:
    rmax = min(min(shape), int(max(0.0, orig_bytes) // max(1, (shape[0] + shape[1]) * isz)))
    return np.unique(np.geomspace(1, max(rmax, 1), num=48).astype(int))


def lowrank_curve(W64: np.ndarray, stored_shape: tuple[int, int], isz: int,
                  orig_bytes: float) -> list[tuple[int, float, float]]:
    """Truncated SVD's relative weight error at up to 48 ranks, from one SVD's singular values
    (the optimum: the randomized SVD the build uses for small ranks lands within its
    oversampled accuracy of it)."""
    s = sla.svd(W64, compute_uv=False, lapack_driver="gesdd", check_finite=False)
    total = float(np.sum(s ** 2))
    tail = np.concatenate([np.cumsum((s ** 2)[::-1])[::-1], [0.0]])
    out = []
    for r in _ranks(stored_shape, orig_bytes, isz):
        nb = lowrank_nbytes(stored_shape, int(r), isz)
        e = float(np.sqrt(max(tail[min(r, len(s))], 0.0) / total)) if total > 0 else 0.0
        out.append((nb, e, float(nb)))
    return out


def whitened_curve(Wo: np.ndarray, stats: CalibrationStats, stored_shape: tuple[int, int],
                   isz: int, orig_bytes: float, damp: float = 0.0) -> list[tuple[int, float, float]]:
    """Whitened low rank's exact relative *output* error at up to 48 ranks (``Wo`` in
    ``[out, in]``): the tail sums of the eigenvalues of one Gram matrix, eigenvalues only
    (:func:`~weightpress.compression.data_aware.whitened_spectrum`), the errors of exactly
    what :func:`~weightpress.compression.data_aware.lowrank_whitened` builds at each rank.
    ``damp`` is accepted for compatibility (nothing is inverted)."""
    lam, den = whitened_spectrum(Wo, stats)
    tail = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])
    out = []
    for r in _ranks(stored_shape, orig_bytes, isz):
        nb = lowrank_nbytes(stored_shape, int(r), isz)
        num = max(float(tail[min(r, len(lam))]), 0.0)
        e = float(np.sqrt(num / den)) if den > 0 else 0.0
        out.append((nb, e, float(nb)))
    return out


def obs_curve(Wo: np.ndarray, stats: CalibrationStats, stored_shape: tuple[int, int], isz: int,
              orig_bytes: float, levels: tuple[float, ...], damp: float = 0.01
              ) -> list[tuple[int, float, float]]:
    """OBS (SparseGPT) pruning's exact relative *output* error at each byte level (fractions
    of ``orig_bytes``), ``Wo`` in ``[out, in]``: the factor of ``H`` once, then one sweep per
    level into one reused buffer, each sweep's error from its own ``Σ e_c²``. Returns
    ``(nbytes, error, budget)``, ``nbytes`` counting the nonzeros the sweep left (the bytes
    of what ``budget`` rebuilds with :func:`~weightpress.compression.data_aware.prune_obs`).
    The rounding of kept values to a narrower stored dtype is not counted."""
    H = stats.hessian()
    dt = np.float64 if Wo.dtype == np.float64 else np.float32
    den = 0.0
    step = row_step(*Wo.shape)
    for r in range(0, Wo.shape[0], step):
        Wb = np.asarray(Wo[r:r + step], dtype=H.dtype)
        den += float(np.multiply(Wb @ H, Wb).sum(dtype=np.float64))
    dg = np.diag(H).astype(np.float64)
    dg[dg == 0] = 1.0  # dead inputs count 1 in the dampening's mean (obs_factor)
    delta = float(damp) * float(dg.mean()) if dg.size else 0.0
    Wk = obs_prepare(np.asarray(Wo), stats, damp).astype(dt, copy=False)
    work = np.empty_like(Wk)
    re = np.zeros(Wk.shape[0])
    out: list[tuple[int, float, float]] = []
    seen: set[int] = set()
    with blas_sequential(), \
            obs_factor_shared(stats, damp, dt) as U:
        for lv in levels:
            nb = orig_bytes * lv
            k = nnz_for_bytes(stored_shape, nb, isz)
            if k in seen or k <= 0:
                continue
            seen.add(k)
            np.copyto(work, Wk)
            re[:] = 0.0
            obs_sweep(work, U, n_prune=Wk.size - min(k, Wk.size), row_err=re)
            d2 = 0.0
            for r in range(0, Wk.shape[0], step):
                dd = (Wk[r:r + step] - work[r:r + step]).astype(np.float64)
                d2 += float(np.einsum("ij,ij->", dd, dd))
            num = max(float(re.sum()) - delta * d2, 0.0)
            nnz = int(np.count_nonzero(work))
            e = float(np.sqrt(num / den)) if den > 0 else 0.0
            out.append((sparse_nbytes(stored_shape, nnz, isz), e, float(nb)))
    return out
