"""Compression methods for one weight matrix: magnitude pruning (unstructured, N:M), low-rank,
sparse + low-rank, and ``auto``, each aimed at a byte budget or a weight-space error budget.

Every method returns a :class:`~weightpress.compressed.CompressedMatrix`. Errors are relative
Frobenius errors in weight space, ``‖W − Ŵ‖_F / ‖W‖_F``. The byte sizes used to meet a budget
are exactly the compressed matrix's ``nbytes`` (see :func:`sparse_nbytes`,
:func:`lowrank_nbytes`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import scipy.linalg

from .._validation import as_matrix, real_scalar
from ..linalg.svd import randomized_svd
from .sparse_coding import sparse_code
from .matrices import (CompressedMatrix, Dense, LowRank, Sparse, SparseCoded,
                       SparsePlusLowRank, fro2, store_as)
from .storage import (QUANT_LADDER, Budget, Precision, lowrank_nbytes, nnz_for_bytes,
                      precisions_for_bytes, rank_for_bytes, sparse_nbytes, value_itemsize)
from .quant import Quantized, fill_with_residual, quantize
from .squant import sparse_quantize
from .lowrank_quant import METHOD as LOWRANK_INT8, lowrank_int8
from ..linalg.sparse import prune
from ..linalg.memory import release_free_memory, row_blocks

__all__ = ["magnitude_prune", "nm_prune", "low_rank", "sparse_plus_low_rank", "sparse_coded", "auto",
           "sparse_nbytes", "lowrank_nbytes", "Spectrum", "METHODS", "quantized", "precision_of"]

METHODS = ("prune", "nm", "lowrank", "slr", "code", "quant", LOWRANK_INT8, "auto")


def _truncated_svd(W: np.ndarray, rank: int | None = None, tol: float | None = None,
                   max_rank: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD truncated to ``rank`` or to relative Frobenius error ``tol`` (None: full).

    The one place an SVD is computed: ``weightpress.randomized_svd`` (seeded, so results are
    reproducible) when it is available and the truncation is worth it, else LAPACK's full SVD.
    ``max_rank`` (with ``tol``): a caller that has no use for more triplets stops there; when
    ``tol`` is not met by then, no triplets are returned, and no full SVD is taken.
    """
    k = min(W.shape)
    if rank is not None:
        rank = max(0, min(int(rank), k))
    if rank == 0 or (tol is not None and tol >= 1.0) or k == 0:
        return (np.zeros((W.shape[0], 0), W.dtype), np.zeros(0, W.dtype), np.zeros((0, W.shape[1]), W.dtype))
    if tol is not None and tol > 0 and max_rank is not None and 0 < max_rank < k:
        # the basis stops growing at max_rank (memory: Q and B of that many columns, not of
        # the rank a small tol needs, issue 15); its error is reported, not warned about
        return randomized_svd(W, tol=float(tol), max_rank=int(max_rank), seed=0)
    if ((rank is not None and rank <= k // 2) or (tol is not None and tol > 0)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # tol not reachable: exact SVD below
            try:
                if rank is not None:
                    return randomized_svd(W, rank, seed=0)
                return randomized_svd(W, tol=tol, seed=0)
            except RuntimeWarning:
                pass
    U, s, Vt = scipy.linalg.svd(W, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    if tol is not None:
        rank = _rank_for_error(s, fro2(W), tol)
    r = len(s) if rank is None else min(rank, len(s))
    return U[:, :r], s[:r], Vt[:r]


def _rank_for_error(s: np.ndarray, total2: float, tol: float) -> int:
    """Smallest r with ``‖W − W_r‖_F ≤ tol ‖W‖_F`` from the singular values."""
    if total2 == 0.0:
        return 0
    tail = total2 - np.concatenate([[0.0], np.cumsum(np.asarray(s, np.float64) ** 2)])
    ok = np.nonzero(tail <= (tol * tol) * total2 * (1 - 1e-9))[0]
    return int(ok[0]) if ok.size else len(s)


def out_dtype(W: Any, Wa: np.ndarray) -> np.dtype:
    """Results are stored in the input's float dtype (float16 stays float16), computed in Wa's."""
    dt = np.asarray(W).dtype
    return dt if dt.kind == "f" else Wa.dtype


T = TypeVar("T")


def smallest_meeting(lo: int, hi: int, build: Callable[[int], T],
                     ok: Callable[[T], bool]) -> tuple[int, T, bool]:
    """The one budget search: the smallest setting ``k`` in ``[lo, hi]`` whose ``build(k)``
    is ``ok``, by bisection (``ok`` must be monotone in ``k``: more nonzeros, more rank, more
    bytes). Returns ``(k, build(k), True)``, or ``(hi, build(hi), False)`` when even ``hi``
    is not ok. Builds about ``log2(hi - lo)`` candidates, each once."""
    seen: dict[int, T] = {}

    def at(k: int) -> T:
        if k not in seen:
            seen[k] = build(k)
        return seen[k]

    if not ok(at(hi)):
        return hi, at(hi), False
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(at(mid)):
            hi = mid
        else:
            lo = mid + 1
    return hi, at(hi), True


def _budget(error: Any, nbytes: Any) -> tuple[float | None, float | None]:
    return Budget.of(error=error, nbytes=nbytes).pair()


_CHUNK = 1 << 15  # entries per step of a _keep_for_drop pass (buffers well under 1 MiB)
_DIGIT = 8  # bits decided per pass of _keep_for_drop (256 bins)


def _keep_for_drop(W: np.ndarray, allowed: float) -> int:
    """Fewest largest-magnitude entries of ``W`` to keep so that the dropped energy ``Σ w²``
    is ≤ ``allowed``.

    A radix selection on the bit patterns of ``|w|`` (monotone in ``|w|`` for IEEE floats):
    each pass over ``W``, in chunks of :data:`_CHUNK` entries, histograms the next 8 bits of
    the entries still undecided, with their count and their energy in float64, and keeps the
    one bin where the dropped energy crosses ``allowed``. Once that bin holds at most
    :data:`_CHUNK` entries they are gathered and sorted; after the last pass it holds equal
    magnitudes (ties), counted exactly. Usually two or three passes, at most four for float32
    and eight for float64, and no copy of ``W`` (sorting a float64 copy, as before, took twice
    a float32 matrix: issue 15).
    """
    a = np.asarray(W)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    flat = a.ravel(order="K")  # a view for C- or F-ordered input; a copy only if strided
    n = flat.size
    if n == 0:
        return 0
    bits = 32 if a.dtype == np.float32 else 64
    ut = np.uint32 if bits == 32 else np.uint64
    mask = ut((1 << (bits - 1)) - 1)  # drop the sign bit: key order == |w| order
    limit = allowed * (1 - 1e-9)
    e_below, c_below = 0.0, 0  # energy and count of the entries known to be dropped
    prefix: int | None = None  # the key bits above `shift` of the undecided bin
    nb = 1 << _DIGIT
    for shift in range(bits - _DIGIT, -1, -_DIGIT):
        counts = np.zeros(nb, np.int64)
        energy = np.zeros(nb, np.float64)
        for i in range(0, n, _CHUNK):
            c = flat[i:i + _CHUNK]
            key = c.view(ut) & mask
            if prefix is not None:
                sel = (key >> ut(shift + _DIGIT)) == ut(prefix)
                c, key = c[sel], key[sel]
            digit = ((key >> ut(shift)) & ut(nb - 1)).astype(np.intp)
            v = c.astype(np.float64)
            np.square(v, out=v)
            counts += np.bincount(digit, minlength=nb)
            energy += np.bincount(digit, weights=v, minlength=nb)
        cum = e_below + np.cumsum(energy)
        d = int(np.searchsorted(cum, limit, side="right"))  # first bin not droppable whole
        if d == nb:  # every undecided entry can go
            return n - (c_below + int(counts.sum()))
        e_below = float(cum[d - 1]) if d else e_below
        c_below += int(counts[:d].sum())
        prefix = d if prefix is None else (prefix << _DIGIT) | d
        if 0 < shift and counts[d] <= _CHUNK:  # few enough left: gather, sort, count exactly
            parts = []
            for i in range(0, n, _CHUNK):
                c = flat[i:i + _CHUNK]
                parts.append(c[((c.view(ut) & mask) >> ut(shift)) == ut(prefix)])
            v = np.square(np.concatenate(parts).astype(np.float64))
            v.sort()
            more = int(np.searchsorted(e_below + np.cumsum(v), limit, side="right"))
            return n - (c_below + more)
    # the bin holds counts[d] entries of one magnitude (> 0: zeros are always droppable)
    sq = float(energy[d]) / float(counts[d])
    more = min(int(counts[d]), int((limit - e_below) // sq)) if sq > 0 else int(counts[d])
    return n - (c_below + max(0, more))


def magnitude_prune(W: Any, *, sparsity: float | None = None, threshold: float | None = None,
                    error: float | None = None, nbytes: float | None = None,
                    layout: str = "out_in", storage: str | None = None) -> Sparse:
    """Magnitude pruning to a :class:`~weightpress.compressed.Sparse` matrix.

    Exactly one of ``sparsity`` (fraction removed), ``threshold`` (keep ``|w| >= threshold``),
    ``error`` (fewest entries such that the relative error is ≤ ``error``) or ``nbytes``
    (most entries that fit in ``nbytes`` stored bytes).

    Raises
    ------
    ValueError
        ``W`` not 2-D or not finite, or not exactly one target given.
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    isz = value_itemsize(od, storage)
    given = [v is not None for v in (sparsity, threshold, error, nbytes)]
    if sum(given) != 1:
        raise ValueError("magnitude_prune: give exactly one of sparsity, threshold, error and nbytes")
    if threshold is not None:
        A = prune(Wa, threshold=threshold)
    else:
        if sparsity is None:
            err, nb = _budget(error, nbytes)
            if err is not None:
                keep = _keep_for_drop(Wa, err * err * fro2(Wa))
            else:
                keep = nnz_for_bytes(Wa.shape, nb, isz)
            sparsity = 1.0 - keep / max(1, Wa.size)
        A = prune(Wa, sparsity=sparsity)
    return store_as(Sparse(A, layout, dtype=od), storage)  # type: ignore[return-value]


def nm_prune(W: Any, pattern: str | tuple[int, int] | None = None, *, error: float | None = None,
             nbytes: float | None = None, m: int = 8, layout: str = "out_in",
             storage: str | None = None) -> Sparse:
    """N:M pruning: in each group of ``M`` consecutive entries of a row keep the ``N`` largest.

    With ``pattern`` (``"2:4"``) that pattern is used; otherwise the largest ``N`` out of ``m``
    that fits ``nbytes``, or the smallest that meets ``error``.
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    if pattern is not None:
        return store_as(Sparse(prune(Wa, pattern=pattern), layout, dtype=od), storage)  # type: ignore[return-value]
    err, nb = _budget(error, nbytes)

    def build(n: int) -> CompressedMatrix:
        return store_as(Sparse(prune(Wa, pattern=(n, m)), layout, dtype=od), storage)

    if nb is not None:  # the most kept per group that fits: one below the first that does not
        n, cand, over = smallest_meeting(1, m, build, lambda c: c.nbytes > nb)
        return (build(max(1, n - 1)) if over else cand)  # type: ignore[return-value]
    return smallest_meeting(1, m, build, lambda c: c.relative_error(Wa) <= err)[1]  # type: ignore[return-value]


def low_rank(W: Any, rank: int | None = None, *, error: float | None = None,
             nbytes: float | None = None, layout: str = "out_in",
             storage: str | None = None) -> LowRank:
    """Truncated SVD as a :class:`~weightpress.compressed.LowRank` matrix.

    Exactly one of ``rank``, ``error`` (smallest rank with relative error ≤ ``error``) or
    ``nbytes`` (largest rank that fits).
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    isz = value_itemsize(od, storage)
    if sum(v is not None for v in (rank, error, nbytes)) != 1:
        raise ValueError("low_rank: give exactly one of rank, error and nbytes")
    if nbytes is not None:
        nb = real_scalar(nbytes, "nbytes", low=0.0)
        rank = rank_for_bytes(Wa.shape, nb, isz)
    if rank is not None:
        if int(rank) < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        rank = min(int(rank), min(Wa.shape))
        U, s, Vt = _truncated_svd(Wa, rank=rank)
    else:
        U, s, Vt = _truncated_svd(Wa, tol=real_scalar(error, "error", low=0.0))
    return store_as(LowRank.from_svd(U, s, Vt, layout, dtype=od), storage)  # type: ignore[return-value]


@dataclass
class Spectrum:
    """A matrix's SVD kept for reuse by several candidate ranks."""

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray
    total2: float

    @classmethod
    def of(cls, W: np.ndarray, rank: int | None = None, tol: float | None = None,
           max_rank: int | None = None) -> "Spectrum":
        """The SVD of W truncated to ``rank`` or error ``tol`` (full when neither; with ``tol``,
        at most ``max_rank`` triplets, see :func:`_truncated_svd`)."""
        U, s, Vt = _truncated_svd(W, rank=rank, tol=tol, max_rank=max_rank)
        return cls(U, s, Vt, fro2(W))

    def error(self, r: int) -> float:
        if self.total2 == 0.0:
            return 0.0
        kept = float(np.sum(self.s[:r].astype(np.float64) ** 2))
        return float(np.sqrt(max(0.0, self.total2 - kept) / self.total2))

    def lowrank(self, r: int, layout: str, dtype: np.dtype, consume: bool = False) -> LowRank:
        """The rank-r factors. ``consume``: scaled in this spectrum's own arrays (the same
        values as :meth:`LowRank.from_svd`, no copy of U and Vt; the spectrum is spent)."""
        if r > len(self.s):
            raise ValueError(f"rank {r} is more than the {len(self.s)} singular values computed")
        if not consume or not (self.U.flags.writeable and self.Vt.flags.writeable):
            return LowRank.from_svd(self.U[:, :r], self.s[:r], self.Vt[:r], layout, dtype=dtype)
        root = np.sqrt(np.asarray(self.s[:r], dtype=np.float64))
        U, Vt = self.U[:, :r], self.Vt[:r]
        np.multiply(U, root.astype(U.dtype), out=U)
        np.multiply(root.astype(Vt.dtype)[:, None], Vt, out=Vt)
        self.U = self.Vt = None  # type: ignore[assignment]
        return LowRank(U, Vt, layout, dtype if dtype is not None else U.dtype)

    def head(self, r: int) -> "Spectrum":
        """The first ``r`` singular triplets, copied (the full factors can then be freed)."""
        return Spectrum(self.U[:, :r].copy(), self.s[:r].copy(), self.Vt[:r].copy(), self.total2)


def sparse_plus_low_rank(W: Any, rank: int, *, error: float | None = None,
                         nbytes: float | None = None, layout: str = "out_in",
                         iterations: int = 3, spectrum: Spectrum | None = None,
                         storage: str | None = None) -> SparsePlusLowRank:
    """``W ≈ S + L``: rank-``rank`` factors plus magnitude-pruned residual, by alternation.

    Starts from the truncated SVD of ``W`` (or the given ``spectrum`` of it), then
    ``iterations`` times: ``S`` = the residual ``W − L`` pruned to the budget, ``L`` = the
    rank-``rank`` SVD of ``W − S``. The sparse part keeps the fewest entries that bring the
    relative error to ``error``, or the most that fit in what ``nbytes`` leaves after the
    factors. The best iterate (fewest bytes for ``error``, lowest error for ``nbytes``) is
    returned.
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    isz = value_itemsize(od, storage)
    err, nb = _budget(error, nbytes)
    spec = spectrum if spectrum is not None else Spectrum.of(Wa, rank)
    L0 = store_as(spec.lowrank(rank, layout, od), storage)
    if nb is not None:
        return _alternate(Wa, L0, nnz_for_bytes(Wa.shape, nb - L0.nbytes, isz),
                          rank, iterations, storage)
    # error budget: alternate at a fixed sparse size, doubled until the budget is reachable,
    # then keep the fewest residual entries that meet it.
    allowed = err * err * fro2(Wa)
    k = max(1, Wa.size // 256) if iterations else Wa.size
    while True:
        L = _alternate(Wa, L0, k, rank, iterations, storage).lowrank if iterations else L0
        R = _residual(Wa, L)
        keep = _keep_for_drop(R, allowed)
        if keep <= k or k >= Wa.size:
            P = prune(R, sparsity=1.0 - keep / max(1, R.size))
            del R  # (not held while the CSR arrays are narrowed)
            S = Sparse(P, layout, dtype=od)
            del P
            return store_as(SparsePlusLowRank(S, L), storage)  # type: ignore[return-value]
        k *= 2


def _residual(Wa: np.ndarray, L: LowRank) -> np.ndarray:
    """``W − L``, decoded by blocks of rows into one full-size array (no full-size temporary
    for the product: a block's decoded rows are subtracted in place). Rows of a file-mapped
    ``W`` are released as they are consumed: R replaces them in the resident set."""
    R = np.empty(Wa.shape, np.result_type(Wa.dtype, L.dtype))
    step = max(1, _CHUNK // max(1, Wa.shape[1]))
    direct = L.left.dtype == L.right.dtype == L.dtype == R.dtype and L.dtype.itemsize >= 4
    for r0, r1 in row_blocks(Wa, step):  # W's pages (a file's) not held beside R (issue 15)
        if direct:  # the decoded rows' own product, without copying the factors per block
            np.matmul(L.left[r0:r1], L.right, out=R[r0:r1])
            np.subtract(Wa[r0:r1], R[r0:r1], out=R[r0:r1])
        else:
            np.subtract(Wa[r0:r1], L.rows(r0, r1), out=R[r0:r1])
    return R


def _alternate(Wa: np.ndarray, L: LowRank, k: int, rank: int, iterations: int,
               storage: str | None = None) -> SparsePlusLowRank:
    """``iterations`` rounds of S = top-k of W − L, L = rank-r SVD of W − S; the best iterate."""
    best, best_err = None, np.inf
    cur_S: Sparse | None = None
    # the stored values are the residual's own (no bfloat16 rounding, W's dtype): the error is
    # what the residual loses, ‖R‖² − ‖S‖², from arrays in hand instead of a decoding pass
    exact = storage is None and L.dtype == Wa.dtype and _residual_exact(Wa, L)
    ref2 = fro2(Wa) if exact else 0.0
    for _ in range(int(iterations) + 1):
        if cur_S is not None:  # L = rank-r SVD of W − S, S from the previous round
            U, s, Vt = _truncated_svd(Wa - cur_S.toarray(), rank=rank)
            L = store_as(LowRank.from_svd(U, s, Vt, L.layout, dtype=L.dtype), storage)
        R = _residual(Wa, L)
        cur_S = Sparse(prune(R, sparsity=1.0 - k / max(1, R.size)), L.layout, dtype=L.dtype)
        lost = fro2(R) - _sq(cur_S.data) if exact else 0.0
        del R  # not held while the candidate's error is measured
        cand = store_as(SparsePlusLowRank(cur_S, L), storage)
        if exact:
            e = _rel(max(lost, 0.0), ref2)
            cand._wp_rel_error = e  # type: ignore[attr-defined]  # (auto's comparison)
        else:
            e = cand.relative_error(Wa)
        if e < best_err:
            best, best_err = cand, e
    assert best is not None
    return best


def _residual_exact(Wa: np.ndarray, L: LowRank) -> bool:
    """Whether :func:`_residual` and ``L``'s decoded rows use ``W``'s dtype (float32 or
    float64 throughout), so the residual holds the stored form's exact differences."""
    return Wa.dtype in (np.float32, np.float64) and L.left.dtype == L.right.dtype == Wa.dtype


def _sq(v: np.ndarray) -> float:
    return float(np.einsum("i,i->", v, v, dtype=np.float64)) if v.size else 0.0


def _rel(lost2: float, ref2: float) -> float:
    if ref2 == 0.0:
        return 0.0 if lost2 == 0.0 else float("inf")
    return float(np.sqrt(lost2 / ref2))


def _pruned_error(W: np.ndarray, S: Sparse, ref2: float) -> float | None:
    """Relative error of magnitude pruning ``W`` to ``S`` (its kept values W's own, stored
    as they are): what the dropped entries held, ``‖W‖² − ‖S‖²``; None when the values were
    converted (another dtype, bfloat16 storage) and must be measured."""
    if S.storage is not None or S.dtype != W.dtype or S.data.dtype != W.dtype:
        return None
    return _rel(max(ref2 - _sq(S.data), 0.0), ref2)


def auto(W: Any, *, error: float | None = None, nbytes: float | None = None,
         layout: str = "out_in",
         forms: tuple[str, ...] = ("sparse", "lowrank", "sparse+lowrank", "quant", "sparse+quant",
                                   "float16", LOWRANK_INT8),
         slr_iterations: int = 0, storage: str | None = None,
         coding: str | None = None) -> CompressedMatrix:
    """The best form for a budget, never bigger than dense.

    With ``error``: the smallest (in bytes) of pruning, low-rank, sparse + low-rank, integer
    quantization (its residual's largest entries filling a byte budget), pruning with int8/int4
    values at bitmask or CSR positions (byte budgets only) and float16 values that
    meets the relative error; dense if none is smaller than dense. With ``nbytes``: the
    lowest-error form that fits (dense when the budget holds the dense tensor).
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    isz = value_itemsize(od, storage)
    err, nb = _budget(error, nbytes)
    dense = Dense(Wa.astype(od, copy=False), layout)
    dense_bytes = Wa.size * isz
    if nb is not None and nb >= dense_bytes:
        return dense
    # candidates are compared as they are built and only the best one is kept, so memory
    # holds W, the spectrum and two candidates, not every form at once (issue 15: 6x -> ~3x)
    best: CompressedMatrix | None = None
    best_key: tuple[int, float] | None = None
    lr_rank: int | None = None  # the float low rank meeting the error (for the int8 factors)
    lr_bytes = 0

    def consider(c: CompressedMatrix) -> None:
        nonlocal best, best_key
        if c.nbytes >= dense_bytes:
            return
        known = c.__dict__.pop("_wp_rel_error", None)  # computed by its build
        if err is not None:
            key = (0, float(c.nbytes))
        else:  # the lowest error among forms that fit; else the smallest, honest about its size
            key = ((0, known if known is not None else c.relative_error(Wa)) if c.nbytes <= nb
                   else (1, float(c.nbytes)))
        if best_key is None or key < best_key:
            best, best_key = c, key

    if "sparse" in forms:
        p = magnitude_prune(W, error=err, nbytes=nb, layout=layout, storage=storage)
        if nb is not None and p.nbytes <= nb:
            e = _pruned_error(Wa, p, fro2(Wa))
            if e is not None:
                p._wp_rel_error = e  # type: ignore[attr-defined]
        consider(p)
        del p
    # the one-pass forms first: the best candidate held while the spectrum and the sparse +
    # low-rank residuals are built is then the smallest one (ties are kept in this order)
    if "quant" in forms and Wa.size:  # for an error budget only if met
        q = quantized(W, error=err, nbytes=nb, layout=layout, storage=storage, coding=coding)
        if err is None or q.relative_error(Wa) <= err * (1 + 1e-9):
            consider(q)
        del q
        release_free_memory()  # (each dropped candidate's pages, before the next is built)
    if "sparse+quant" in forms and nb is not None and Wa.size:
        # pruned with int8/int4 values at bitmask or CSR positions (whichever is smaller)
        for b in (8, 4):
            c = sparse_quantize(Wa, nbytes=nb, bits=b, layout=layout)
            c.dtype = od
            consider(c)
            del c
        release_free_memory()
    if "float16" in forms and od.itemsize > 2 and storage is None:  # half the bytes, ~1e-4 error
        with np.errstate(over="ignore"):
            h = Wa.astype(np.float16)
        if np.isfinite(h).all():
            c = Dense(h, layout)
            if err is None or c.relative_error(Wa) <= err * (1 + 1e-9):
                consider(c)
            del c
        del h  # (a float16 copy of W: not held while the spectrum is built)
    if "lowrank" in forms or "sparse+lowrank" in forms:
        per_rank = (Wa.shape[0] + Wa.shape[1]) * isz
        if err is not None:
            # no form holding rank-r factors can win once their bytes reach the best form's
            # (can_win below), and the sparse + low-rank ranks are r_full / 8 at least: a basis
            # of 8x the first losing rank decides everything. Where the error needs more, the
            # spectrum stops there (r_full then reads as its length, and every rank loses).
            bound = min(best_key[1], dense_bytes) if best_key is not None else dense_bytes
            losing = int(-(-bound // max(1, per_rank)))
            cap = 8 * losing if "sparse+lowrank" in forms else losing
            capped = cap < min(Wa.shape)
            spec = Spectrum.of(Wa, tol=err, max_rank=cap if capped else None)
            r_full = _rank_for_error(spec.s, spec.total2, err)
            if capped and spec.error(r_full) > err * (1 + 1e-9):
                r_full = cap  # not within the cap (no triplets came back): every rank loses
        else:
            spec = Spectrum.of(Wa, rank=min(min(Wa.shape), int(nb // per_rank)))
            r_full = len(spec.s)

        def can_win(r: int) -> bool:
            """Whether a form holding rank-r factors (their bytes, at least) can still replace
            the best one: never for an error budget once those bytes reach the best's."""
            if err is None or best_key is None:
                return True
            return lowrank_nbytes(Wa.shape, r, isz) < min(best_key[1], dense_bytes)

        ranks = [r for r in sorted({r_full // 8, r_full // 4, r_full // 2} - {0}) if can_win(r)
                 ] if "sparse+lowrank" in forms else []
        # the sparse + low-rank candidates need the spectrum's first ranks only: a copy of
        # those, so that the full spectrum becomes the low-rank candidate's own factors
        # (scaled in place) and is gone once a better form is found (issue 15: memory)
        head = spec.head(max(ranks)) if ranks else None
        if "lowrank" in forms and can_win(r_full):
            consider(store_as(spec.lowrank(r_full, layout, od, consume=True), storage))
        del spec
        release_free_memory()
        for r in ranks:
            if can_win(r):
                consider(sparse_plus_low_rank(W, r, error=err, nbytes=nb, layout=layout,
                                              spectrum=head, iterations=slr_iterations,
                                              storage=storage))
                release_free_memory()
        del head
        if LOWRANK_INT8 in forms and storage is None:
            lr_rank, lr_bytes = r_full, lowrank_nbytes(Wa.shape, r_full, isz)
    # int8 factors hold ~4x the rank of float32 ones in the same bytes, which roughly halves
    # low rank's error where the spectrum decays slowly: built for error budgets where low rank
    # came near the best form (its bytes within 3.5x). Not for byte budgets: the pipeline's
    # ratio search (its reachable-ratio bound, its steps) does not know this form yet.
    if lr_rank is not None and best is not None and best_key is not None and err is not None and (
            isinstance(best, LowRank) or lr_bytes <= 3.5 * best_key[1]):
        # a few more values than the float rank: int8 rounding costs some
        spec = Spectrum.of(Wa, rank=min(min(Wa.shape), lr_rank + max(4, lr_rank // 8)))
        consider(lowrank_int8(W, error=err, nbytes=nb, layout=layout, spectrum=spec))
    return dense if best is None else best


def sparse_coded(W: Any, *, n_nonzero: int | None = None, error: float | None = None,
                 nbytes: float | None = None, dictionary: str = "dct", n_atoms: int | None = None,
                 layout: str = "out_in", storage: str | None = None) -> SparseCoded:
    """Rows coded by batch OMP in a dictionary: a :class:`~weightpress.compressed.SparseCoded`.

    ``dictionary="dct"`` (default) uses the orthonormal DCT of the row length, which is
    regenerated on load and costs no bytes; ``"learned"`` learns ``n_atoms`` atoms (default
    half the row length) from the rows by K-SVD and stores them. Exactly one of ``n_nonzero``
    (per row), ``error`` (fewest nonzeros per row meeting the relative error) and ``nbytes``.
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    isz = value_itemsize(od, storage)
    if sum(v is not None for v in (n_nonzero, error, nbytes)) != 1:
        raise ValueError("sparse_coded: give exactly one of n_nonzero, error and nbytes")
    if dictionary not in ("dct", "learned"):
        raise ValueError(f"dictionary: expected 'dct' or 'learned', got {dictionary!r}")
    m, n = Wa.shape
    k = n if dictionary == "dct" else (n_atoms or max(1, n // 2))
    dict_bytes = 0 if dictionary == "dct" else n * k * isz

    def build(s: int) -> SparseCoded:
        D, C = sparse_code(Wa, max(1, min(s, k)), dictionary=dictionary, n_atoms=k)
        codes = Sparse(C, layout, dtype=od)
        sc = SparseCoded(codes, None if dictionary == "dct" else D, dct_atoms=n if dictionary == "dct" else None)
        if storage is not None:
            store_as(codes, storage)
            sc.storage = storage
        return sc

    if n_nonzero is not None:
        return build(int(n_nonzero))
    if nbytes is not None:
        nnz = nnz_for_bytes((m, k), real_scalar(nbytes, "nbytes", low=0.0) - dict_bytes, isz)
        return build(max(1, nnz // max(1, m)))
    err = real_scalar(error, "error", low=0.0)
    # fewest nonzeros per row meeting the error (all k when none does)
    return smallest_meeting(1, k, build, lambda c: c.relative_error(Wa) <= err)[1]


def precision_of(options: dict[str, Any]) -> Precision | None:
    """The precision a rule's options fix (``bits``, ``group``, ``symmetric``), or None."""
    if "bits" not in options:
        if "group" in options or "symmetric" in options:
            raise ValueError("options group/symmetric need bits (e.g. quant:bits=4,group=64)")
        return None
    return Precision(int(options["bits"]), int(options.get("group", 0) or 0),
                     bool(options.get("symmetric", True)))


def _oi_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    return (int(shape[0]), int(shape[1])) if layout == "out_in" else (int(shape[1]), int(shape[0]))


def quantized(W: Any, *, bits: int | None = None, group: int | None = None,
              symmetric: bool | None = None, error: float | None = None,
              nbytes: float | None = None, layout: str = "out_in",
              storage: str | None = None, coding: str | None = None) -> Quantized:
    """Round-to-nearest integer quantization (:class:`~weightpress.compression.quant.Quantized`)
    at a fixed precision (``bits``, ``group``, ``symmetric``), or at the precision of
    :data:`~weightpress.compression.storage.QUANT_LADDER` that meets a budget: the lowest
    weight error among the largest that fit ``nbytes``, or the fewest bytes meeting ``error``.
    ``storage`` is accepted for symmetry with the other methods (codes are integers; scales are
    float16 whatever it says). ``coding`` (``"zstd"``) entropy-codes the codes, and a byte
    budget is then met by coded sizes (larger precisions fit).
    """
    Wa = as_matrix(W, "W")
    od = out_dtype(W, Wa)
    shape = _oi_shape(Wa.shape, layout)

    def build(p: Precision) -> Quantized:
        q = quantize(Wa, p.bits, p.group, symmetric=p.symmetric, layout=layout)
        q.dtype = od
        return q.set_coding(coding) if coding is not None else q

    if bits is not None:
        return build(Precision(int(bits), int(group or 0), True if symmetric is None else bool(symmetric)))
    err, nb = _budget(error, nbytes)
    if nb is not None:  # the best precision that fits, then the residual's largest entries
        cands = precisions_for_bytes(shape, nb) or [min(QUANT_LADDER, key=lambda p: p.nbytes(shape))]
        if coding is not None:  # coded codes are smaller: the next precisions up may fit
            cands += [p for p in precisions_for_bytes(shape, 1.4 * nb, top=4) if p not in cands]
        # one candidate at a time: the lowest error among those that fit (the first on ties),
        # else the smallest; the others are dropped as they lose (holding every precision's
        # codes while the residual is filled was 0.25-0.5x of the matrix each; issue 15)
        q, q_err, smallest = None, np.inf, None
        for p in cands:
            c = build(p)
            if c.nbytes <= nb:
                e = c.relative_error(Wa)
                if e < q_err:
                    q, q_err, smallest = c, e, None
            elif q is None and (smallest is None or c.nbytes < smallest.nbytes):
                smallest = c
            del c
        q = q if q is not None else smallest
        del smallest
        return fill_with_residual(q, Wa, nb, storage)  # type: ignore[return-value]
    best = None
    for p in sorted(QUANT_LADDER, key=lambda p: (p.nbytes(shape), -p.bits)):
        q = build(p)
        if q.relative_error(Wa) <= err * (1 + 1e-9):
            return q
        best = q
    assert best is not None
    return best  # nothing meets the error: the largest precision, honest about its error
