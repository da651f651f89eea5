"""Quantized weight matrices: the forms that make files small at high fidelity.

- :class:`Quantized`: uniform integer codes (2–8 bits), symmetric or asymmetric, one float16
  scale per output row or per group of 32/64/128 inputs, bit-packed. Products run in C++ on
  the packed codes (dequantized in registers, never in memory).
- :class:`Codebook`: non-uniform quantization by weight sharing (Deep Compression): k-means
  centroids per layer or per row, packed indices.
- :func:`quantize` (round to nearest) and :func:`gptq` (data-aware: each column's rounding
  error is compensated on the columns not yet quantized through the inverse Hessian of the
  layer's inputs, optionally jointly with SparseGPT pruning).

Both forms stand for the stored tensor (see :mod:`weightpress.compression.matrices`): for the
``"in_out"`` layout the codes run along the stored tensor's columns (the layer's inputs), so
groups always cut the input dimension and scales are per output channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._optional import require
from .._threads import blas_sequential
from .._validation import as_matrix, positive_int, real_scalar
from ..linalg import quant as lq
from ..linalg.sparse import _parse_pattern
from .calibration import CalibrationStats, row_step
from .data_aware import _check, act_order_perm, obs_factor_shared
from ..linalg.sparse import prune
from ..linalg.memory import release_free_memory, release_rows, row_blocks
from .matrices import (CompressedMatrix, Sparse, SumOfForms, _compute_dtype, _setup, _sub, register_form,
                       store_as)
from .storage import nnz_for_bytes, value_itemsize

__all__ = ["Quantized", "Codebook", "quantize", "gptq", "gptq_many", "codebook", "quant_name", "quant_from_parts"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


def quant_name(bits: int, group: int, symmetric: bool) -> str:
    """Report name of a precision: ``int8``, ``int4g64``, ``uint4g128`` (asymmetric)."""
    return f"{'' if symmetric else 'u'}int{bits}" + (f"g{group}" if group else "")


def _oriented(Wa: np.ndarray, layout: str) -> np.ndarray:
    """The (out, in) matrix the codes describe."""
    return Wa if layout == "out_in" else Wa.T


class _CodedRows(CompressedMatrix):
    """Decoding shared by the code-based forms: their ``_dequant(dtype, r0, r1)`` gives rows of
    the ``(out, in)`` matrix the codes describe."""

    def _dequant(self, dtype: Any, r0: int = 0, r1: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def toarray(self) -> np.ndarray:
        return _oriented(self._dequant(self.dtype), self.layout).astype(self.dtype, copy=False)

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.layout == "out_in":
            return self._dequant(self.dtype, start, stop).astype(self.dtype, copy=False)
        return self.toarray()[start:stop]

    def blocks(self, block: int = 1 << 20) -> Any:
        """Row blocks of :meth:`toarray`; for ``in_out`` (codes run along the stored columns)
        decoded once, not once per block."""
        if self.layout == "out_in":
            yield from super().blocks(block)
            return
        D = self.toarray()
        step = max(1, min(block // max(1, self.shape[1]), -(-self.shape[0] // 16)))
        for r in range(0, self.shape[0], step):
            yield r, min(self.shape[0], r + step), D[r:r + step]


@register_form
class Quantized(_CodedRows):
    """``M ≈ scale · (u − zero)`` with ``M`` the ``(out, in)`` matrix (``W`` or ``Wᵀ`` by layout).

    Build with :func:`quantize` or :func:`gptq`; rebuild with :meth:`from_parts`.

    Attributes
    ----------
    packed : uint8 ndarray (out, ⌈in·bits/8⌉)
    scales : float16 ndarray (out, n_groups)
    zeros : uint8 ndarray (out, n_groups) or None (symmetric)
    bits, group, symmetric
        ``group`` 0 means one scale per output row.
    """

    form = "quant"
    needs = frozenset({"scales", "qmeta"})  # and "packed", or "packed.zst" when coded

    def __init__(self, packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                 shape: tuple[int, int], *, bits: int, group: int, symmetric: bool,
                 dtype: Any = np.float32, layout: str = "out_in"):
        _setup(self, shape, dtype, layout)
        self.bits = lq.check_bits(bits)
        self.group = lq.check_group(group)
        self.symmetric = bool(symmetric)
        out, inn = self._mshape
        if self.group >= inn:
            self.group = 0
        ng = lq.n_groups(inn, self.group)
        self.packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.scales = np.ascontiguousarray(scales)
        if self.packed.shape != (out, lq.row_bytes(inn, self.bits)):
            raise ValueError(f"packed: expected shape {(out, lq.row_bytes(inn, self.bits))}, "
                             f"got {self.packed.shape}")
        if self.scales.dtype != np.float16 or self.scales.shape != (out, ng):
            raise ValueError(f"scales: expected float16 of shape {(out, ng)}, got {self.scales.dtype} "
                             f"{self.scales.shape}")
        if not np.isfinite(self.scales).all():
            raise ValueError("scales: contain NaN or Inf")
        self.coding: str | None = None
        self._coded: np.ndarray | None = None
        self._wide: tuple[np.ndarray, np.ndarray | None, int] | None = None
        if self.symmetric:
            if zeros is not None:
                raise ValueError("zeros: a symmetric matrix stores none")
            self.zeros = None
        else:
            if zeros is None:
                raise ValueError("zeros: an asymmetric matrix needs its zero points")
            self.zeros = np.ascontiguousarray(zeros)
            if self.zeros.dtype != np.uint8 or self.zeros.shape != (out, ng):
                raise ValueError(f"zeros: expected uint8 of shape {(out, ng)}")
            if self.zeros.size and int(self.zeros.max()) >= 1 << self.bits:
                raise ValueError(f"zeros: a zero point does not fit {self.bits} bits")

    @property
    def _mshape(self) -> tuple[int, int]:
        return self.shape if self.layout == "out_in" else (self.shape[1], self.shape[0])

    @property
    def name(self) -> str:
        """``int4g64``, ``int8``, ``uint4g128``... (the report's form column)."""
        return quant_name(self.bits, self.group, self.symmetric)

    def set_coding(self, coding: str | None) -> "Quantized":
        """Entropy-code the packed codes when stored: ``"zstd"`` (Zstandard, level 19; needs
        the ``zstandard`` package) keeps the coded stream only if it is smaller, so ``nbytes``
        is the coded size; ``None`` stores them as they are. Returns self."""
        if coding not in (None, "zstd"):
            raise ValueError(f"coding: expected None or 'zstd', got {coding!r}")
        self.coding, self._coded = None, None
        if coding == "zstd" and self.packed.size:
            zstd = require("zstandard", "entropy coding (coding='zstd')")
            z = np.frombuffer(zstd.ZstdCompressor(level=19).compress(self.packed.tobytes()), np.uint8)
            if z.size < self.packed.size:
                self.coding, self._coded = "zstd", z
        return self

    def parts(self) -> dict[str, np.ndarray]:
        meta = np.array([self.bits, self.group, int(self.symmetric), _DTYPES.index(self.dtype),
                         int(self.coding == "zstd")], dtype=np.int32)
        p = {"scales": self.scales, "qmeta": meta}
        if self._coded is not None:
            p["packed.zst"] = self._coded
        else:
            p["packed"] = self.packed
        if self.zeros is not None:
            p["zeros"] = self.zeros
        return p

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "Quantized":
        """Rebuild from stored arrays (ValueError if missing or inconsistent)."""
        missing = {"scales", "qmeta"} - parts.keys()
        meta = np.asarray(parts.get("qmeta", np.zeros(0)))
        if meta.shape != (5,) or meta.dtype.kind not in "iu" or not 0 <= int(meta[3]) < len(_DTYPES) \
                or int(meta[4]) not in (0, 1):
            raise ValueError("quant: malformed qmeta" if not missing else
                             f"quant: missing stored arrays {sorted(missing)}")
        coded = bool(meta[4])
        if ("packed.zst" if coded else "packed") not in parts:
            missing.add("packed.zst" if coded else "packed")
        if missing:
            raise ValueError(f"quant: missing stored arrays {sorted(missing)}")
        bits = lq.check_bits(int(meta[0]))
        out, n_in = (shape[0], shape[1]) if layout == "out_in" else (shape[1], shape[0])
        if coded:  # decoded into exactly the size the shape implies (a crafted frame cannot grow)
            zstd = require("zstandard", "reading entropy-coded weights")
            want = int(out) * lq.row_bytes(int(n_in), bits)
            try:
                raw = zstd.ZstdDecompressor().decompress(np.asarray(parts["packed.zst"]).tobytes(),
                                                         max_output_size=want)
            except zstd.ZstdError as e:
                raise ValueError(f"quant: packed.zst does not decode: {e}") from None
            if len(raw) != want:
                raise ValueError(f"quant: packed.zst decodes to {len(raw)} bytes, expected {want}")
            packed = np.frombuffer(raw, np.uint8).reshape(int(out), -1) if want else \
                np.zeros((int(out), 0), np.uint8)
        else:
            packed = parts["packed"]
        q = cls(packed, parts["scales"], parts.get("zeros"), shape, bits=bits, group=int(meta[1]),
                symmetric=bool(meta[2]), dtype=_DTYPES[int(meta[3])], layout=layout)
        if coded:
            q.coding, q._coded = "zstd", np.asarray(parts["packed.zst"])
        return q

    @property
    def n_params(self) -> int:
        return int(self.shape[0] * self.shape[1])

    def codes(self) -> np.ndarray:
        """The unpacked codes ``(out, in)``, uint8."""
        return lq.unpack_codes(self.packed, self._mshape[1], self.bits)

    def _dequant(self, dtype: Any, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Rows r0:r1 of M in dtype (float32 for float16)."""
        r1 = self._mshape[0] if r1 is None else r1
        dt = _compute_dtype(np.dtype(dtype))
        z = None if self.zeros is None else self.zeros[r0:r1]
        return lq.dequantize(self.packed[r0:r1], self.scales[r0:r1], z, (r1 - r0, self._mshape[1]),
                             self.bits, self.group, self.symmetric, dt)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        direct = (self.layout == "out_in") != transpose  # the product is M @ X
        if not direct:  # Mᵀ @ X: not the kernel's direction; dequantize (rare: not the layer)
            return self._dequant(X.dtype).T @ X
        one = X.ndim == 1
        Xt = np.ascontiguousarray((X[:, None] if one else X).T)
        packed, zeros, bits, sym = self._kernel_codes()
        Y = lq.quant_matmul(packed, self.scales, zeros, self._mshape, bits, self.group, sym, Xt)
        return Y[0] if one else Y.T

    def _kernel_codes(self) -> tuple[np.ndarray, np.ndarray | None, int, bool]:
        """The codes as the product kernel runs fastest on them: 2, 4 and 8 bits as stored;
        3 bits widened to 4 and 5-7 bits to 8 (with explicit zero points), once, in memory only
        (the vectorized kernels decode whole bytes; the file keeps the narrow codes)."""
        if self.bits in (2, 4, 8):
            return self.packed, self.zeros, self.bits, self.symmetric
        if self._wide is None:
            wide = 4 if self.bits == 3 else 8
            out, n_in = self._mshape
            zeros = (np.full((out, lq.n_groups(n_in, self.group)), 1 << (self.bits - 1), np.uint8)
                     if self.symmetric else self.zeros)
            self._wide = (lq.pack_codes(self.codes(), wide), zeros, wide)
        packed, zeros, wide = self._wide
        return packed, zeros, wide, False


@register_form
class QuantizedPlusSparse(SumOfForms):
    """Integer codes plus a sparse correction: ``W ≈ Q + S``, ``S`` the largest entries of the
    rounding residual ``W − Q`` kept exactly in CSR. Between two precisions of the ladder the
    correction spends the rest of a byte budget where it lowers the error most (outliers), so a
    budget is met to within one entry's bytes rather than to the next precision down."""

    form = "quant+sparse"
    needs = frozenset({"quant.scales", "quant.qmeta", "sparse.data", "sparse.indices",
                       "sparse.indptr"})

    def __init__(self, quant: Quantized, sparse: Sparse):
        if not isinstance(quant, Quantized) or not isinstance(sparse, Sparse):
            raise TypeError("expected a Quantized and a Sparse matrix")
        if quant.shape != sparse.shape or quant.layout != sparse.layout:
            raise ValueError(f"parts differ: {quant.shape} {quant.layout} vs {sparse.shape} "
                             f"{sparse.layout}")
        _setup(self, quant.shape, quant.dtype, quant.layout)
        self.quant, self.sparse = quant, sparse
        self.storage = sparse.storage

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "QuantizedPlusSparse":
        return cls(Quantized.from_parts(_sub(parts, "quant"), shape, layout),
                   Sparse.from_parts(_sub(parts, "sparse"), shape, layout))

    @property
    def name(self) -> str:
        return f"{self.quant.name}+csr"

    @property
    def terms(self) -> tuple[tuple[str, CompressedMatrix], ...]:
        return (("quant", self.quant), ("sparse", self.sparse))


def fill_with_residual(q: Quantized, W: np.ndarray, nbytes: float,
                       storage: str | None = None) -> Quantized | QuantizedPlusSparse:
    """``q`` plus the largest entries of ``W − q`` that fit in what ``nbytes`` leaves after
    ``q`` (``q`` itself when not one entry fits)."""
    isz = value_itemsize(q.dtype, storage)
    k = nnz_for_bytes(q.shape, nbytes - q.nbytes, isz)
    if k <= 0:
        return q
    sparsity = 1.0 - k / max(1, q.shape[0] * q.shape[1])
    C = _residual_top(q, W, sparsity) if q.layout == "out_in" else None
    if C is None:  # (codes along the stored columns, or NaN: prune says where)
        R = q.toarray()  # becomes W − q in place: one full-size array
        R = np.subtract(W, R, out=R) if np.asarray(W).dtype == R.dtype else W.astype(R.dtype) - R
        C = prune(R, sparsity=sparsity)
        del R
    S = store_as(Sparse(C, q.layout, dtype=q.dtype), storage)
    return QuantizedPlusSparse(q, S)  # type: ignore[arg-type]


def _residual_top(q: Quantized, W: Any, sparsity: float) -> Any:
    """``prune(W − q, sparsity=sparsity)`` without the full-size residual: the residual is
    made a row block at a time, twice (issue 13: it was one more copy of the layer beside W
    at a worker's peak, 2.8x the tensor). The first pass keeps the largest magnitudes seen
    (at most as many as are kept) and so finds the cut; the second takes every entry above
    it and, of those at it, the first in row-major order, as :func:`prune` breaks ties; zeros
    are never kept. The same CSR, exactly; None where the residual holds NaN."""
    m, n = q.shape
    keep = m * n - int(round(sparsity * (m * n)))  # (prune's count)
    Wa = np.asarray(W)

    def blocks() -> Any:  # (a file's pages released behind: W is read twice)
        for r0, r1 in row_blocks(Wa, row_step(m, n, 1 << 20)):
            Q = q.rows(r0, r1)
            Wb = Wa[r0:r1]
            yield (np.subtract(Wb, Q, out=Q) if Wb.dtype == Q.dtype
                   else Wb.astype(Q.dtype) - Q)

    pool: np.ndarray | None = None  # the largest nonzero magnitudes so far, at most `keep`
    lo = 0.0  # what enters the pool is above this (its least, once full)
    for R in blocks():
        a = np.abs(R).ravel()
        if np.isnan(a).any():
            return None
        a = a[a > lo]
        pool = a if pool is None else np.concatenate((pool, a))
        if pool.size > keep:
            pool = np.partition(pool, pool.size - keep)[pool.size - keep:]
        if pool.size >= keep:
            lo = pool.min()
        del a
    if pool is None or keep <= 0:
        return None
    cut = pool.min() if pool.size >= keep else pool.dtype.type(0)
    ties = keep - int(np.count_nonzero(pool > cut)) if cut > 0 else 0
    del pool
    data, cols, counts = [], [], []
    for R in blocks():
        a = np.abs(R)
        sel = a > cut
        if ties > 0:
            at = np.flatnonzero(a == cut)[:ties]
            sel.ravel()[at] = True
            ties -= at.size
        del a
        data.append(R[sel])
        cols.append(np.nonzero(sel)[1].astype(np.int32))
        counts.append(np.count_nonzero(sel, axis=1))
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    A = sp.csr_array((np.concatenate(data), np.concatenate(cols), indptr), shape=(m, n))
    A.has_sorted_indices = True
    return A


def _quant_args(bits: Any, group: Any, symmetric: Any) -> tuple[int, int, bool]:
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
    return lq.check_bits(bits), lq.check_group(group), bool(symmetric)


def _contig(Wa: np.ndarray, layout: str) -> np.ndarray:
    ct = np.float64 if Wa.dtype == np.float64 else np.float32
    return np.ascontiguousarray(_oriented(Wa, layout), dtype=ct)


def quantize(W: Any, bits: int = 8, group: int | None = None, *, symmetric: bool = True,
             mse: bool = False, layout: str = "out_in", n_threads: int | None = None) -> Quantized:
    """Round-to-nearest integer quantization.

    Parameters
    ----------
    W : array_like, 2-D float
        The stored tensor (``layout`` says which side is the input).
    bits : int in [2, 8]
    group : int, optional
        Inputs per scale (32, 64, 128...); None: one scale per output channel.
    symmetric : bool
        ``scale = max|w| / (2^(bits-1) − 1)`` around 0; else min/max with a zero point.
    mse : bool
        Shrink each group's range by the factor (1, 0.95 ... 0.5) with the least squared error.

    Returns
    -------
    Quantized

    Examples
    --------
    >>> import numpy as np
    >>> from weightpress.compression.quant import quantize
    >>> W = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    >>> Q = quantize(W, bits=4, group=64)
    >>> Q.name, Q.nbytes
    ('int4g64', 4372)
    """
    Wa = as_matrix(W, "W")
    b, g, sym = _quant_args(bits, group, symmetric)
    M = _contig(Wa, layout)
    codes, scales, zeros = lq.quantize_rtn(M, b, g, sym, bool(mse), n_threads)
    return Quantized(lq.pack_codes(codes, b, n_threads), scales, zeros, Wa.shape, bits=b, group=g,
                     symmetric=sym, dtype=Wa.dtype, layout=layout)


def gptq(W: Any, stats: CalibrationStats, bits: int = 4, group: int | None = None, *,
         symmetric: bool = True, sparsity: float | None = None,
         pattern: str | tuple[int, int] | None = None, act_order: bool = True, mse: bool = True,
         block: int = 128, damp: float = 0.01, n_threads: int | None = None,
         row_err: np.ndarray | None = None) -> Quantized:
    """Data-aware quantization (GPTQ), optionally joint with pruning (SparseGPT).

    Columns are quantized left to right; each one's rounding error is spread over the columns
    not yet visited through the upper Cholesky factor ``U`` of the damped ``H⁻¹`` (``H = XᵀX``),
    so the output error ``‖X(W − Ŵ)ᵀ‖`` stays far below round-to-nearest's. Group scales are
    chosen on the updated weights as the sweep reaches each group.

    Parameters
    ----------
    W : array_like, (out, in)
        PyTorch layout.
    stats : CalibrationStats
        Statistics of the layer's inputs.
    bits, group, symmetric
        As :func:`quantize`.
    sparsity : float in [0, 1], optional
        Also prune this fraction (exact count; mask per block, SparseGPT); or
    pattern : "N:M", optional
        N:M pruning along each row. Pruned weights get the code of 0.
    act_order : bool
        Sweep the inputs by decreasing ``H[i, i]`` (GPTQ's act-order; not with ``pattern``).
        The scales are then fixed before the sweep from the weights as given ("static
        groups"), so the stored groups stay contiguous.
    mse : bool
        Choose each group's range by the least squared rounding error over shrink factors
        1, 0.95 ... 0.5 of min/max (clips outliers; matters most at 2–3 bits).
    block : int
        Columns per lazy-update block (speed only; rounded to a multiple of ``group``).
    damp : float
        Hessian dampening relative to its mean diagonal.
    row_err : ndarray, optional
        float64, one per row of ``W``: each row's squared error against the *damped* ``H``
        (the sweep's own ``Σ_c e_c²``, no product with ``H``) is added to it.

    Returns
    -------
    Quantized
        ``layout="out_in"``, ``W``'s dtype.

    Notes
    -----
    ``O(in³)`` for the factor (cached on ``stats``) plus ``O(out·in²)`` for the sweep, nearly
    all in BLAS (a few GEMMs); the per-column work inside a block runs 16 rows at a time in
    vectors, one tile per OpenMP task, so results do not depend on the thread count.
    """
    if sparsity is not None and pattern is not None:
        raise ValueError("gptq: give at most one of sparsity and pattern")
    return gptq_many(W, stats, [(bits, group, symmetric, sparsity)], pattern=pattern,
                     act_order=act_order, mse=mse, block=block, damp=damp, n_threads=n_threads,
                     row_errs=[row_err])[0]


def gptq_many(W: Any, stats: CalibrationStats, settings: Any, *,
              pattern: str | tuple[int, int] | None = None, act_order: bool = True,
              mse: bool = True, block: int = 128, damp: float = 0.01,
              n_threads: int | None = None, row_errs: Any = None,
              each: Any = None) -> list[Quantized]:
    """:func:`gptq` at several settings ``(bits, group, symmetric, sparsity)`` of one layer
    with one factorisation of ``H`` (the ``in³`` step they share): what a budget's candidate
    precisions and an allocation curve's levels need. The same results as one :func:`gptq`
    call per setting, bit for bit. ``row_errs``: one :func:`gptq` ``row_err`` (or None) per
    setting. Memory: the results, one working copy of ``W`` and ``H`` (factored in place).
    ``each(i, q)``, when given, receives setting i's result as soon as it is built (while
    ``H`` still holds its factor: read ``H`` before the call), and the list is then empty: a
    caller that keeps only some results never holds all of them (issue 15)."""
    Wa = _check(W, stats)
    specs = []
    for bits, group, symmetric, sparsity in settings:
        b, g, sym = _quant_args(bits, group, symmetric)
        s = real_scalar(sparsity, "sparsity", low=0.0, high=1.0) if sparsity is not None else 0.0
        specs.append((b, g, sym, int(round(s * Wa.size))))
    errs = list(row_errs) if row_errs is not None else [None] * len(specs)
    if len(errs) != len(specs):
        raise ValueError(f"row_errs: expected {len(specs)} entries, got {len(errs)}")
    nm = _parse_pattern(pattern) if pattern is not None else (0, 0)
    block = positive_int(block, "block")
    if not isinstance(act_order, (bool, np.bool_)):
        raise TypeError(f"act_order: expected a bool, got {type(act_order).__name__}")
    act = bool(act_order) and pattern is None
    out: list[Quantized] = []
    with blas_sequential():
        dead = np.diag(stats.hessian()) == 0  # read before H is overwritten by its factor
        perm = act_order_perm(stats) if act else None
        ct = np.float64 if Wa.dtype == np.float64 else np.float32
        # the factor is written over H for the sweeps and H restored after (no second in x in
        # matrix; issue 15), unless one is cached already
        with obs_factor_shared(stats, damp, ct, perm) as U:
            for i, ((b, g, sym, n_prune), re) in enumerate(zip(specs, errs)):
                packed, scales, zeros = _sweep_by_rows(Wa, U, dead, perm, ct, b, g, sym, bool(mse),
                                                       n_prune, nm, block, n_threads, re)
                q = Quantized(packed, scales, zeros, Wa.shape,
                              bits=b, group=g, symmetric=sym, dtype=Wa.dtype)
                del packed
                if each is None:
                    out.append(q)
                else:
                    each(i, q)
                del q
                release_free_memory()  # (a sweep's blocks and a dropped result's heap pages)
    return out


def _sweep_by_rows(Wa: np.ndarray, U: np.ndarray, dead: np.ndarray, perm: np.ndarray | None,
                   ct: Any, b: int, g: int, sym: bool, mse: bool, n_prune: int,
                   nm: tuple[int, int], block: int, n_threads: int | None, re: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One GPTQ sweep of ``Wa`` (packed codes in column order, scales, zeros), on working
    copies of blocks of rows: rows are independent in the sweep (each row's errors go to its
    own later columns) unless a sparsity's exact count is shared by all rows (``n_prune``: one
    block). An eighth of the rows at a time (at least 256) holds an eighth of ``W``, not a copy
    of it, and each block's codes are packed as they come (no byte per value of the whole
    matrix; issue 15: the calibrated methods within 3x the largest tensor); the same codes."""
    rows, cols = Wa.shape
    step = rows if n_prune or rows == 0 else max(256, -(-rows // 8))
    packed: np.ndarray | None = None  # (rows, ⌈cols·b/8⌉)
    scales, zeros = [], []
    gs = g if 0 < g < cols else max(cols, 1)
    cg = (perm // gs).astype(np.int64) if perm is not None else None
    for r0 in range(0, max(rows, 1), step):
        r1 = min(rows, r0 + step)
        Wk = np.array(Wa[r0:r1], dtype=ct, order="C", copy=True)  # obs_prepare's working copy
        release_rows(Wa, r0, r1)  # (a file's pages: the copy replaces them)
        Wk[:, dead] = 0.0
        rb = re if re is None or step >= rows else re[r0:r1]
        if perm is not None:
            scales0, zeros0 = lq.rtn_params(Wk, b, g, sym, mse, n_threads)
            _permute_columns(Wk, perm)  # in place, a block of rows at a time
            res = lq.obs_sweep(Wk, U, bits=b, group=g, symmetric=sym, mse=mse, n_prune=n_prune,
                               block=block, col_group=cg, scales=scales0, zeros=zeros0,
                               n_threads=n_threads, row_err=rb)
        else:
            res = lq.obs_sweep(Wk, U, bits=b, group=g, symmetric=sym, mse=mse, n_prune=n_prune,
                               nm=nm, block=block, n_threads=n_threads, row_err=rb)
        assert res is not None
        del Wk
        if perm is not None:
            _unpermute_columns(res[0], perm)
        pk = lq.pack_codes(res[0], b, n_threads)
        if step >= rows:
            packed = pk
        else:
            if packed is None:
                packed = np.empty((rows, pk.shape[1]), pk.dtype)
            packed[r0:r1] = pk
        scales.append(res[1])
        zeros.append(res[2])
        del res, pk
    assert packed is not None
    sc = scales[0] if len(scales) == 1 else np.concatenate(scales)
    zs = zeros[0] if len(zeros) == 1 or zeros[0] is None else np.concatenate(zeros)
    return packed, sc, zs


def _unpermute_columns(C: np.ndarray, perm: np.ndarray, rows: int = 256) -> None:
    """``C[:, perm] ← C`` in place (the columns put back in their order), a block of rows at
    a time (no second full-size array), each block by a gather (``np.take``: a scatter through
    NumPy's fancy assignment took 0.35 s of CPU on 4096 x 4096 codes, the gather 0.016 s)."""
    inv = np.argsort(perm)
    for r in range(0, C.shape[0], rows):
        C[r:r + rows] = np.take(C[r:r + rows], inv, axis=1)


def _permute_columns(W: np.ndarray, perm: np.ndarray, rows: int = 64) -> None:
    """``W ← W[:, perm]`` in place, a block of rows at a time (a block-sized buffer, not a
    second copy of ``W``)."""
    for r in range(0, W.shape[0], rows):  # (np.take: a gather, faster than fancy indexing)
        W[r:r + rows] = np.take(W[r:r + rows], perm, axis=1)


# ---- Codebook (weight sharing) ------------------------------------------------------------
def _kmeans_1d(V: np.ndarray, k: int, n_iter: int, init: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on each row of V independently (1-D values): centroids ``(rows, k)``
    and codes ``(rows, cols)``. Initialised at ``init`` (broadcast over rows) or at the rows'
    quantiles, so deterministic; Lloyd steps never increase the error."""
    rows, cols = V.shape
    q = (np.arange(k) + 0.5) / k
    if init is not None:
        C = np.array(np.broadcast_to(init, (rows, k)), dtype=np.float64)
    else:
        C = np.quantile(V, q, axis=1).T.astype(np.float64) if cols else np.zeros((rows, k))
    codes = np.zeros((rows, cols), dtype=np.int64)
    step = max(1, (1 << 22) // max(1, cols * k))
    for _ in range(n_iter):
        C.sort(axis=1)
        mid = (C[:, 1:] + C[:, :-1]) / 2
        for r0 in range(0, rows, step):  # blocks of rows bound the (rows, cols, k) comparison
            r1 = min(rows, r0 + step)
            codes[r0:r1] = (V[r0:r1, :, None] > mid[r0:r1, None, :]).sum(axis=2)
        flat = codes + (np.arange(rows) * k)[:, None]
        cnt = np.bincount(flat.ravel(), minlength=rows * k).reshape(rows, k)
        tot = np.bincount(flat.ravel(), weights=V.ravel().astype(np.float64),
                          minlength=rows * k).reshape(rows, k)
        newC = np.where(cnt > 0, tot / np.maximum(cnt, 1), C)
        if np.array_equal(newC, C):
            break
        C = newC
    return C, codes


@register_form
class Codebook(_CodedRows):
    """``M[i, j] = centroids[i or 0, code[i, j]]``: k-means weight sharing with packed codes.

    Attributes
    ----------
    packed : uint8 (out, ⌈in·bits/8⌉)
    centroids : float16 (1, 2^bits) per layer or (out, 2^bits) per row
    bits : int
    """

    form = "codebook"
    needs = frozenset({"packed", "centroids", "qmeta"})

    def __init__(self, packed: np.ndarray, centroids: np.ndarray, shape: tuple[int, int], *,
                 bits: int, dtype: Any = np.float32, layout: str = "out_in"):
        _setup(self, shape, dtype, layout)
        self.bits = lq.check_bits(bits)
        out, inn = self._mshape
        self.packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if self.packed.shape != (out, lq.row_bytes(inn, self.bits)):
            raise ValueError(f"packed: expected shape {(out, lq.row_bytes(inn, self.bits))}")
        self.centroids = np.ascontiguousarray(centroids)
        k = 1 << self.bits
        if (self.centroids.dtype != np.float16 or self.centroids.ndim != 2
                or self.centroids.shape[1] != k or self.centroids.shape[0] not in (1, out)):
            raise ValueError(f"centroids: expected float16 of shape (1, {k}) or ({out}, {k})")
        if not np.isfinite(self.centroids).all():
            raise ValueError("centroids: contain NaN or Inf")

    _mshape = Quantized._mshape

    @property
    def per_row(self) -> bool:
        return self.centroids.shape[0] != 1 or self._mshape[0] == 1

    @property
    def name(self) -> str:
        return f"kmeans{self.bits}" + ("r" if self.centroids.shape[0] > 1 else "")

    def parts(self) -> dict[str, np.ndarray]:
        meta = np.array([self.bits, _DTYPES.index(self.dtype)], dtype=np.int32)
        return {"packed": self.packed, "centroids": self.centroids, "qmeta": meta}

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "Codebook":
        missing = {"packed", "centroids", "qmeta"} - parts.keys()
        if missing:
            raise ValueError(f"codebook: missing stored arrays {sorted(missing)}")
        meta = np.asarray(parts["qmeta"])
        if meta.shape != (2,) or meta.dtype.kind not in "iu" or not 0 <= int(meta[1]) < len(_DTYPES):
            raise ValueError("codebook: malformed qmeta")
        return cls(parts["packed"], parts["centroids"], shape, bits=int(meta[0]),
                   dtype=_DTYPES[int(meta[1])], layout=layout)

    @property
    def n_params(self) -> int:
        return int(self.shape[0] * self.shape[1])

    def _dequant(self, dtype: Any, r0: int = 0, r1: int | None = None) -> np.ndarray:
        r1 = self._mshape[0] if r1 is None else r1
        codes = lq.unpack_codes(self.packed[r0:r1], self._mshape[1], self.bits)
        C = self.centroids.astype(_compute_dtype(np.dtype(dtype)))
        C = C[r0:r1] if C.shape[0] > 1 else np.broadcast_to(C, (r1 - r0, C.shape[1]))
        return np.take_along_axis(C, codes.astype(np.intp), axis=1)

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        direct = (self.layout == "out_in") != transpose
        out, inn = self._mshape
        if not direct:
            return self._dequant(X.dtype).T @ X
        Y = np.empty((out,) + X.shape[1:], dtype=X.dtype)
        step = max(1, (1 << 20) // max(1, inn))  # decode a block of rows at a time
        for r0 in range(0, out, step):
            r1 = min(out, r0 + step)
            Y[r0:r1] = self._dequant(X.dtype, r0, r1) @ X
        return Y


def codebook(W: Any, bits: int = 4, *, per_row: bool = False, n_iter: int = 25,
             layout: str = "out_in") -> Codebook:
    """Weight sharing: ``2^bits`` k-means centroids (float16) per layer or per output row.

    Parameters
    ----------
    W : array_like, 2-D float
    bits : int in [2, 8]
    per_row : bool
        One codebook per output row (more centroids stored, smaller error).
    n_iter : int
        Most Lloyd iterations (stops when the centroids no longer move).

    Returns
    -------
    Codebook
    """
    Wa = as_matrix(W, "W")
    b = lq.check_bits(bits)
    n_iter = positive_int(n_iter, "n_iter")
    M = _contig(Wa, layout).astype(np.float64)
    C, codes = _kmeans_1d(M.reshape(1, -1), 1 << b, n_iter)
    V = M.reshape(1, -1)
    if per_row:  # start every row from the layer's codebook: never worse than it
        V = M
        C, codes = _kmeans_1d(M, 1 << b, n_iter, init=np.sort(C[0]))
    C16 = C.astype(np.float16)
    if not np.isfinite(C16).all():
        raise ValueError("W: centroids overflow float16")
    # codes to the nearest float16 centroid (the values the file holds)
    C16.sort(axis=1)
    Cf = C16.astype(np.float64)
    mid = (Cf[:, 1:] + Cf[:, :-1]) / 2
    codes = np.stack([np.searchsorted(mid[i], V[i], side="left") for i in range(V.shape[0])]) \
        if V.shape[0] <= 1 else None
    if codes is None:
        step = max(1, (1 << 22) // max(1, V.shape[1] << b))
        codes = np.empty(V.shape, dtype=np.int64)
        for r0 in range(0, V.shape[0], step):
            r1 = min(V.shape[0], r0 + step)
            codes[r0:r1] = (V[r0:r1, :, None] > mid[r0:r1, None, :]).sum(axis=2)
    codes = codes.reshape(M.shape).astype(np.uint8)
    return Codebook(lq.pack_codes(codes, b), C16, Wa.shape, bits=b, dtype=Wa.dtype, layout=layout)


def quant_from_parts(form: str, parts: dict[str, np.ndarray], shape: tuple[int, int],
                     layout: str = "out_in") -> CompressedMatrix:
    """:meth:`Quantized.from_parts` or :meth:`Codebook.from_parts` by form name."""
    if form == "quant":
        return Quantized.from_parts(parts, shape, layout)
    if form == "codebook":
        return Codebook.from_parts(parts, shape, layout)
    raise ValueError(f"form: expected 'quant' or 'codebook', got {form!r}")

