"""Low rank + int8: the two thin factors of a low-rank matrix stored as 8-bit integer codes with
one float16 scale per row.

The layer's ``(out, in)`` matrix ``M`` (``W`` for layout ``out_in``, ``Wᵀ`` for ``in_out``) is
``M ≈ U V`` with ``V`` ``(r, in)`` and ``U`` ``(out, r)``, each a
:class:`~weightpress.compression.quant.Quantized` matrix (8-bit symmetric codes, a scale per
row). So the layer is two per-channel int8 linear layers, ``x → x Vᵀ → (x Vᵀ) Uᵀ``: what
onnxruntime's ``MatMulNBits`` and PyTorch's int8 weight-only kernel run directly.

Bytes (the byte model's terms): ``quant_nbytes((r, in), 8) + quant_nbytes((out, r), 8)``, about
a quarter of float32 low rank at the same rank, so at a byte budget the rank is about four
times larger. Built from a truncated SVD (``√σ`` in each factor); ``V`` is quantized first and
``U`` refitted to it by least squares (``U = M V̂ᵀ (V̂ V̂ᵀ)⁻¹``) before its own rounding, which
absorbs most of ``V``'s rounding error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from .._validation import as_matrix, real_scalar
from ..linalg.svd import randomized_svd
from .matrices import CompressedMatrix, _compute_dtype, _setup, _sub, fro2, register_form
from .quant import Quantized, _oriented, quantize
from .storage import quant_nbytes

__all__ = ["LowRankQuant", "lowrank_int8", "lowrank_int8_nbytes", "rank_for_int8_bytes", "METHOD"]

METHOD = "lowrank-int8"   # the --method / rule name
BITS = 8


def lowrank_int8_nbytes(shape: tuple[int, int], rank: int) -> int:
    """Exact bytes of rank-``rank`` int8 factors of the ``(out, in)`` matrix ``shape``."""
    out, inn = int(shape[0]), int(shape[1])
    return quant_nbytes((rank, inn), BITS) + quant_nbytes((out, rank), BITS)


def rank_for_int8_bytes(shape: tuple[int, int], nbytes: float) -> int:
    """Largest rank whose :func:`lowrank_int8_nbytes` fits ``nbytes`` (0 if none)."""
    out, inn = int(shape[0]), int(shape[1])
    k = min(out, inn)
    b1 = lowrank_int8_nbytes((out, inn), 1)
    if nbytes < b1 or k == 0:
        return 0
    per = lowrank_int8_nbytes((out, inn), 2) - b1          # linear in the rank from 1 on
    r = min(k, 1 + int((nbytes - b1) // per))
    while r > 0 and lowrank_int8_nbytes((out, inn), r) > nbytes:  # exact, whatever the rounding
        r -= 1
    return r


@register_form
class LowRankQuant(CompressedMatrix):
    """``M ≈ U V`` (``M`` the ``(out, in)`` matrix), ``V`` ``(r, in)`` and ``U`` ``(out, r)``
    stored as per-row int8 :class:`~weightpress.compression.quant.Quantized` matrices
    (parts ``first.*`` for ``V``, ``second.*`` for ``U``: the order the layer applies them).

    Attributes
    ----------
    first : Quantized
        ``V``, layout ``out_in`` (the first linear map, ``in → r``).
    second : Quantized
        ``U``, layout ``out_in`` (the second, ``r → out``).
    """

    form = "lowrank-int8"
    needs = frozenset({"first.scales", "first.qmeta", "second.scales", "second.qmeta"})

    def __init__(self, first: Quantized, second: Quantized, layout: str = "out_in",
                 dtype: Any = None):
        if not isinstance(first, Quantized) or not isinstance(second, Quantized):
            raise TypeError("first, second: expected Quantized matrices")
        if first.layout != "out_in" or second.layout != "out_in":
            raise ValueError("first, second: the factors are stored in layout 'out_in'")
        r, inn = first.shape
        out, r2 = second.shape
        if r != r2:
            raise ValueError(f"first, second: ranks differ ({r} rows of V, {r2} columns of U)")
        dt = np.dtype(dtype if dtype is not None else first.dtype)
        _setup(self, (out, inn) if layout == "out_in" else (inn, out), dt, layout)
        self.first, self.second = first, second

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "LowRankQuant":
        out, inn = (shape[0], shape[1]) if layout == "out_in" else (shape[1], shape[0])
        fs, ss = _sub(parts, "first"), _sub(parts, "second")
        sc = np.asarray(fs.get("scales", np.zeros((0, 0))))
        if sc.ndim != 2:
            raise ValueError("lowrank-int8: malformed first.scales")
        r = int(sc.shape[0])
        first = Quantized.from_parts(fs, (r, int(inn)), "out_in")
        second = Quantized.from_parts(ss, (int(out), r), "out_in")
        if first.bits != BITS or second.bits != BITS or not (first.symmetric and second.symmetric):
            raise ValueError("lowrank-int8: factors must be symmetric 8-bit codes")
        return cls(first, second, layout, dtype=first.dtype)

    @property
    def rank(self) -> int:
        return int(self.first.shape[0])

    @property
    def name(self) -> str:
        return f"lowrank{self.rank}-int8"

    @property
    def n_params(self) -> int:
        return self.first.n_params + self.second.n_params

    @property
    def nbytes(self) -> int:
        return self.first.nbytes + self.second.nbytes

    def parts(self) -> dict[str, np.ndarray]:
        p = {f"first.{k}": v for k, v in self.first.parts().items()}
        p.update({f"second.{k}": v for k, v in self.second.parts().items()})
        return p

    def factors(self, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """The dequantized ``(U, V)``, ``M = U V``."""
        return self.second._dequant(dtype), self.first._dequant(dtype)

    def _m_rows(self, r0: int, r1: int) -> np.ndarray:
        dt = _compute_dtype(self.dtype)
        return self.second._dequant(dt, r0, r1) @ self.first._dequant(dt)

    def toarray(self) -> np.ndarray:
        out = self.second.shape[0]
        return _oriented(self._m_rows(0, out), self.layout).astype(self.dtype, copy=False)

    def rows(self, start: int, stop: int) -> np.ndarray:
        stop = max(start, min(stop, self.shape[0]))   # like slicing: a stop past the end is the end
        if self.layout == "out_in":
            return self._m_rows(start, stop).astype(self.dtype, copy=False)
        dt = _compute_dtype(self.dtype)
        U = self.second._dequant(dt)
        V = self.first._dequant(dt)
        return (V[:, start:stop].T @ U.T).astype(self.dtype, copy=False)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        direct = (self.layout == "out_in") != transpose  # the product is M @ X = U (V X)
        if direct:
            return self.second._matmul(self.first._matmul(X, False), False)
        return self.first._matmul(self.second._matmul(X, True), True)   # Mᵀ X = Vᵀ (Uᵀ X)


def _from_svd(M: np.ndarray, U: np.ndarray, s: np.ndarray, Vt: np.ndarray, dtype: np.dtype,
              layout: str) -> LowRankQuant:
    """Int8 factors of the ``(out, in)`` matrix ``M`` from its truncated SVD: ``V = √σ Vᵀ``
    rounded, then ``U`` refitted to the rounded ``V`` by least squares and rounded."""
    r = len(s)
    ct = M.dtype
    root = np.sqrt(np.maximum(np.asarray(s, np.float64), 0.0))
    V = (root[:, None] * np.asarray(Vt, np.float64)).astype(ct)
    qV = quantize(V, BITS, None, symmetric=True)
    if r:
        Vh = qV._dequant(np.float64)
        G = Vh @ Vh.T
        G[np.diag_indices_from(G)] += 1e-12 * max(1.0, float(np.trace(G)) / r)
        Uf = scipy.linalg.solve(G, Vh @ M.astype(np.float64).T, assume_a="pos").T
    else:
        Uf = np.zeros((M.shape[0], 0))
    qU = quantize(np.ascontiguousarray(Uf, dtype=ct), BITS, None, symmetric=True)
    qV.dtype = qU.dtype = np.dtype(dtype)
    return LowRankQuant(qV, qU, layout, dtype=dtype)


def lowrank_int8(W: Any, rank: int | None = None, *, error: float | None = None,
                 nbytes: float | None = None, layout: str = "out_in",
                 spectrum: Any = None) -> LowRankQuant:
    """Low rank with int8 factors (:class:`LowRankQuant`) at a fixed ``rank``, the largest rank
    whose bytes fit ``nbytes``, or the smallest rank meeting the relative ``error`` (the largest
    rank, honest about its error, when none does).

    ``spectrum`` (an object with ``U``, ``s``, ``Vt`` of the stored ``W``, e.g.
    :class:`~weightpress.compression.methods.Spectrum`) is reused where it holds enough values.

    Examples
    --------
    >>> import numpy as np
    >>> from weightpress.compression.lowrank_quant import lowrank_int8
    >>> rng = np.random.default_rng(0)
    >>> W = (rng.standard_normal((96, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    >>> m = lowrank_int8(W, rank=8)
    >>> m.nbytes, round(m.relative_error(W), 3) < 0.01
    (1528, True)
    """
    Wa = as_matrix(W, "W")
    od = Wa.dtype if Wa.dtype.kind == "f" else np.dtype(np.float32)
    if sum(v is not None for v in (rank, error, nbytes)) != 1:
        raise ValueError("lowrank_int8: give exactly one of rank, error and nbytes")
    ct = np.float64 if Wa.dtype == np.float64 else np.float32
    M = np.ascontiguousarray(_oriented(Wa, layout), dtype=ct)
    k = min(M.shape)
    if nbytes is not None:
        rank = rank_for_int8_bytes(M.shape, real_scalar(nbytes, "nbytes", low=0.0))
    if rank is not None:
        if int(rank) < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        rank = min(int(rank), k)

    def svd(r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if spectrum is not None and len(spectrum.s) >= r:
            U, s, Vt = spectrum.U[:, :r], spectrum.s[:r], spectrum.Vt[:r]
            return (Vt.T, s, U.T) if layout == "in_out" else (U, s, Vt)  # SVD of M = Wᵀ
        if r == 0:
            return np.zeros((M.shape[0], 0), ct), np.zeros(0, ct), np.zeros((0, M.shape[1]), ct)
        if r <= k // 2:
            return randomized_svd(M, r, seed=0)
        U, s, Vt = scipy.linalg.svd(M, full_matrices=False, lapack_driver="gesdd", check_finite=False)
        return U[:, :r], s[:r], Vt[:r]

    if rank is not None:
        return _from_svd(M, *svd(rank), dtype=od, layout=layout)
    err = real_scalar(error, "error", low=0.0)
    total = fro2(M)
    if total == 0.0:
        return _from_svd(M, *svd(0), dtype=od, layout=layout)
    more = spectrum is not None and len(spectrum.s) < k   # a full SVD may still be needed
    U, s, Vt = svd(len(spectrum.s)) if spectrum is not None else svd(k)
    # the float truncation error is a lower bound: start there, then step up until met
    tail = total - np.concatenate([[0.0], np.cumsum(np.asarray(s, np.float64) ** 2)])
    ok = np.nonzero(tail <= err * err * total)[0]
    r = int(ok[0]) if ok.size else len(s)
    step = max(1, k // 64)
    while True:
        cand = _from_svd(M, U[:, :r], s[:r], Vt[:r], od, layout)
        if r >= k or cand.relative_error(Wa) <= err * (1 + 1e-9):
            return cand
        if r >= len(s):  # the spectrum given runs out: the full one
            if not more:
                return cand
            U, s, Vt = scipy.linalg.svd(M, full_matrices=False, lapack_driver="gesdd",
                                        check_finite=False)
            more = False
        r = min(len(s), r + step)
