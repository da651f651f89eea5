"""Quantized structure: pruned matrices whose kept values are integer codes.

:class:`SparseQuantized` keeps the nonzeros of the ``(out, in)`` matrix ``M`` (``W`` or ``Wᵀ``
by layout) as ``bits``-bit codes with one float16 scale per output row, and their positions
either as a **bitmask** (1 bit per weight, rows padded to whole bytes) or as **CSR** indices
(uint8/uint16... column indices and a row pointer). The bitmask costs ``in/8`` bytes per row
whatever the density, CSR ``index_itemsize`` per kept entry: the bitmask wins above a density
of about ``1/(8·index_itemsize)`` (1/8 with uint8 indices, 1/16 with uint16), so from moderate
sparsity down, and :func:`sparse_quantize` picks the smaller. Values are symmetric:
``s_r · (u − 2^(bits−1))``.

Bytes (exact, :func:`squant_nbytes`): positions + ``⌈nnz·bits/8⌉`` codes + ``2·out`` scales +
the 12-byte ``qmeta`` record.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import as_matrix, real_scalar
from ..linalg import quant as lq
from ..linalg.sparse import csr_matmul, prune_keep, prune_row_counts
from .matrices import _compute_dtype, _setup, register_form
from .quant import Quantized, _CodedRows, _contig
from .storage import index_dtype, pointer_dtype

__all__ = ["SparseQuantized", "sparse_quantize", "squant_nbytes", "squant_nnz_for_bytes",
           "STRUCTURES"]

STRUCTURES = ("csr", "bitmask")
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_META = 12  # qmeta: int32 [bits, structure, dtype]


def squant_nbytes(shape: tuple[int, int], nnz: int, bits: int, structure: str) -> int:
    """Exact bytes of a :class:`SparseQuantized` ``(out, in)`` matrix with ``nnz`` codes."""
    out, n_in = int(shape[0]), int(shape[1])
    vals = (int(nnz) * int(bits) + 7) // 8 + 2 * out + _META
    if structure == "bitmask":
        return out * ((n_in + 7) // 8) + vals
    return (out + 1) * pointer_dtype(nnz).itemsize + int(nnz) * index_dtype(n_in).itemsize + vals


def squant_nnz_for_bytes(shape: tuple[int, int], nbytes: float, bits: int, structure: str) -> int:
    """Most codes whose :func:`squant_nbytes` fits ``nbytes`` (0 if none; -1 if not even the
    empty matrix fits)."""
    out, n_in = int(shape[0]), int(shape[1])
    if squant_nbytes(shape, 0, bits, structure) > nbytes:
        return -1
    per = bits / 8 + (0 if structure == "bitmask" else index_dtype(n_in).itemsize)
    k = int(min(out * n_in, max(0.0, (nbytes - squant_nbytes(shape, 0, bits, structure)) / per)))
    while k > 0 and squant_nbytes(shape, k, bits, structure) > nbytes:
        k -= 1
    return k


@register_form
class SparseQuantized(_CodedRows):
    """Nonzeros as integer codes (per-row float16 scales) at bitmask or CSR positions.

    Build with :func:`sparse_quantize` or :meth:`from_quantized`; rebuild with
    :meth:`from_parts`.

    Attributes
    ----------
    structure : "bitmask" or "csr"
    mask : uint8 (out, ⌈in/8⌉), bit ``j % 8`` of byte ``j // 8`` (bitmask only)
    indptr, indices : CSR positions (csr only)
    codes : uint8 (⌈nnz·bits/8⌉,) packed codes of the nonzeros in row-major order
    scales : float16 (out, 1)
    bits : int
    """

    form = "squant"
    needs = frozenset({"codes", "scales", "qmeta"})

    def __init__(self, structure: str, positions: dict[str, np.ndarray], codes: np.ndarray,
                 scales: np.ndarray, shape: tuple[int, int], *, bits: int, dtype: Any = np.float32,
                 layout: str = "out_in"):
        _setup(self, shape, dtype, layout)
        if structure not in STRUCTURES:
            raise ValueError(f"structure: expected 'csr' or 'bitmask', got {structure!r}")
        self.structure = structure
        self.bits = lq.check_bits(bits)
        out, n_in = self._mshape
        if structure == "bitmask":
            self.mask = np.ascontiguousarray(positions["mask"])
            if self.mask.dtype != np.uint8 or self.mask.shape != (out, (n_in + 7) // 8):
                raise ValueError(f"mask: expected uint8 of shape {(out, (n_in + 7) // 8)}")
            counts = np.unpackbits(self.mask, axis=1, bitorder="little", count=n_in).sum(axis=1)
            self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.indices = None
        else:
            self.mask = None
            ip, ix = np.asarray(positions["indptr"]), np.asarray(positions["indices"])
            if ip.ndim != 1 or ip.shape[0] != out + 1 or ip.dtype.kind not in "iu":
                raise ValueError(f"indptr: expected {out + 1} integers")
            if ix.ndim != 1 or ix.dtype.kind not in "iu":
                raise ValueError("indices: expected a 1-D integer array")
            if (ip.size and (ip[0] != 0 or ip[-1] != ix.size or np.any(np.diff(ip) < 0))):
                raise ValueError("indptr: must start at 0, not decrease and end at len(indices)")
            if ix.size and (int(ix.min()) < 0 or int(ix.max()) >= n_in):
                raise ValueError(f"indices: out of range [0, {n_in})")
            self.indptr, self.indices = ip, ix
        self.nnz = int(self.indptr[-1]) if self.indptr.size else 0
        self.codes = np.ascontiguousarray(codes)
        if self.codes.dtype != np.uint8 or self.codes.shape != ((self.nnz * self.bits + 7) // 8,):
            raise ValueError(f"codes: expected uint8 of shape {((self.nnz * self.bits + 7) // 8,)}")
        self.scales = np.ascontiguousarray(scales)
        if self.scales.dtype != np.float16 or self.scales.shape != (out, 1):
            raise ValueError(f"scales: expected float16 of shape {(out, 1)}")
        if not np.isfinite(self.scales).all():
            raise ValueError("scales: contain NaN or Inf")
        self._csr_cache: dict[np.dtype, sp.csr_array] = {}

    _mshape = Quantized._mshape

    @property
    def name(self) -> str:
        """``bitmask+int4``, ``csr+int8``... (the report's form column)."""
        return f"{self.structure}+int{self.bits}"

    @property
    def n_params(self) -> int:
        return self.nnz

    def parts(self) -> dict[str, np.ndarray]:
        meta = np.array([self.bits, STRUCTURES.index(self.structure), _DTYPES.index(self.dtype)],
                        dtype=np.int32)
        if self.structure == "bitmask":
            pos = {"mask": self.mask}
        else:
            out, n_in = self._mshape
            pos = {"indptr": self.indptr.astype(pointer_dtype(self.nnz), copy=False),
                   "indices": self.indices.astype(index_dtype(n_in), copy=False)}
        return {**pos, "codes": self.codes, "scales": self.scales, "qmeta": meta}

    @classmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int],
                   layout: str = "out_in") -> "SparseQuantized":
        missing = {"codes", "scales", "qmeta"} - parts.keys()
        if missing:
            raise ValueError(f"squant: missing stored arrays {sorted(missing)}")
        meta = np.asarray(parts["qmeta"])
        if (meta.shape != (3,) or meta.dtype.kind not in "iu" or not 0 <= int(meta[1]) < 2
                or not 0 <= int(meta[2]) < len(_DTYPES)):
            raise ValueError("squant: malformed qmeta")
        structure = STRUCTURES[int(meta[1])]
        need = {"mask"} if structure == "bitmask" else {"indptr", "indices"}
        if need - parts.keys():
            raise ValueError(f"squant: missing stored arrays {sorted(need - parts.keys())}")
        return cls(structure, {k: parts[k] for k in need}, parts["codes"], parts["scales"], shape,
                   bits=int(meta[0]), dtype=_DTYPES[int(meta[2])], layout=layout)

    @classmethod
    def from_quantized(cls, q: Quantized, structure: str | None = None) -> "SparseQuantized":
        """The nonzero codes of a symmetric per-row ``q`` (GPTQ with joint sparsity, say) at
        bitmask or CSR positions (``None``: the smaller)."""
        if not q.symmetric or q.group != 0:
            raise ValueError("q: expected a symmetric matrix with one scale per row")
        c = q.codes()
        keep = c != (1 << (q.bits - 1))
        return _assemble(keep, c[keep], q.scales, q.bits, q.shape, q.dtype, q.layout, structure)

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        if self.structure == "csr":
            assert self.indices is not None
            return self.indptr, self.indices
        out, n_in = self._mshape
        bits = np.unpackbits(self.mask, axis=1, bitorder="little", count=n_in)
        return self.indptr, np.nonzero(bits)[1]

    def csr(self, dtype: Any = np.float32) -> sp.csr_array:
        """The ``(out, in)`` matrix as a SciPy CSR array of decoded values (kept once per dtype)."""
        dt = np.dtype(dtype)
        if dt not in self._csr_cache:
            ip, ix = self._positions()
            u = lq.unpack_codes(self.codes[None, :], self.nnz, self.bits)[0].astype(dt)
            rows = np.repeat(np.arange(self._mshape[0]), np.diff(ip))
            vals = (u - (1 << (self.bits - 1))) * self.scales[:, 0].astype(dt)[rows]
            self._csr_cache[dt] = sp.csr_array((vals, ix.astype(np.int64), ip.astype(np.int64)),
                                               shape=self._mshape)
        return self._csr_cache[dt]

    def _unpacked(self) -> np.ndarray:
        """The nonzeros' codes, one uint8 each (kept: an eighth of W's float32 bytes at most)."""
        if getattr(self, "_u", None) is None:
            self._u = lq.unpack_codes(self.codes[None, :], self.nnz, self.bits)[0]
        return self._u

    def _dequant(self, dtype: Any, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Rows ``r0:r1`` decoded straight from the positions and codes of those rows (the same
        arithmetic as :meth:`csr`; memory about the block, not a CSR of the whole matrix)."""
        dt = _compute_dtype(np.dtype(dtype))
        out_n, n_in = self._mshape
        r1 = out_n if r1 is None else min(r1, out_n)
        r0 = min(max(r0, 0), r1)
        ip = self.indptr
        a, b = int(ip[r0]), int(ip[r1])
        counts = np.diff(ip[r0:r1 + 1])
        # each value's row scale repeated, not an int64 row number per value gathered
        # (8 bytes a nonzero, a worker's peak: issue 13)
        vals = ((self._codes_range(a, b).astype(dt) - (1 << (self.bits - 1)))
                * np.repeat(self.scales[r0:r1, 0].astype(dt), counts))
        D = np.zeros((r1 - r0, n_in), dt)
        if self.structure == "bitmask":
            assert self.mask is not None
            D[np.unpackbits(self.mask[r0:r1], axis=1, bitorder="little", count=n_in).view(bool)] = vals
        else:
            assert self.indices is not None
            D[np.repeat(np.arange(r1 - r0, dtype=np.int32), counts), self.indices[a:b]] = vals
        return D

    def _codes_range(self, a: int, b: int) -> np.ndarray:
        """Codes ``a:b`` of the nonzeros, one uint8 each: unpacked from the bytes that hold
        them (no cached copy of every code beside the packed ones: issue 13, a worker's peak
        held both while auto measured the 8-bit candidate)."""
        if b <= a:
            return np.zeros(0, np.uint8)
        if 8 % self.bits:  # (codes across byte boundaries: the whole stream, kept)
            return self._unpacked()[a:b]
        per = 8 // self.bits
        b0, b1 = a // per, -(-b // per)
        u = lq.unpack_codes(self.codes[None, b0:b1], (b1 - b0) * per, self.bits)[0]
        return u[a - b0 * per:b - b0 * per]

    def _matmul(self, X: np.ndarray, transpose: bool) -> np.ndarray:
        direct = (self.layout == "out_in") != transpose  # the product is M @ X
        return csr_matmul(self.csr(X.dtype), X, transpose=not direct, check_dense=False)


def _assemble(keep: np.ndarray, codes: np.ndarray, scales: np.ndarray, bits: int,
              shape: tuple[int, int], dtype: Any, layout: str, structure: str | None
              ) -> SparseQuantized:
    """A SparseQuantized from the (out, in) keep mask and the kept codes (row-major)."""
    out, n_in = keep.shape
    nnz = int(keep.sum())
    if structure is None:
        structure = min(STRUCTURES, key=lambda s: squant_nbytes((out, n_in), nnz, bits, s))
    packed = (lq.pack_codes(codes.reshape(1, -1).astype(np.uint8), bits)[0] if nnz
              else np.zeros(0, np.uint8))
    if structure == "bitmask":
        pos = {"mask": np.packbits(keep, axis=1, bitorder="little")
               if n_in else np.zeros((out, 0), np.uint8)}
    else:
        pos = {"indptr": np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64),
               "indices": np.nonzero(keep)[1].astype(np.int64)}
    return SparseQuantized(structure, pos, packed, scales.astype(np.float16).reshape(out, 1), shape,
                           bits=bits, dtype=dtype, layout=layout)


def sparse_quantize(W: Any, *, sparsity: float | None = None, nnz: int | None = None,
                    nbytes: float | None = None, bits: int = 8, structure: str | None = None,
                    layout: str = "out_in") -> SparseQuantized:
    """Magnitude pruning with the kept values quantized (symmetric, one float16 scale per
    output row, round to nearest).

    Parameters
    ----------
    W : array_like, 2-D float
    sparsity, nnz, nbytes
        Exactly one: the fraction pruned, the entries kept, or a byte budget (the most entries
        whose exact bytes fit).
    bits : int in [2, 8]
    structure : "bitmask", "csr" or None
        None: whichever is smaller for the kept count.

    Returns
    -------
    SparseQuantized

    Examples
    --------
    >>> import numpy as np
    >>> from weightpress.compression.squant import sparse_quantize
    >>> W = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    >>> S = sparse_quantize(W, sparsity=0.5, bits=4)
    >>> S.name, S.nbytes
    ('bitmask+int4', 3212)
    """
    Wa = as_matrix(W, "W")
    b = lq.check_bits(bits)
    if sum(v is not None for v in (sparsity, nnz, nbytes)) != 1:
        raise ValueError("sparse_quantize: give exactly one of sparsity, nnz and nbytes")
    if structure is not None and structure not in STRUCTURES:
        raise ValueError(f"structure: expected 'csr', 'bitmask' or None, got {structure!r}")
    M = _contig(Wa, layout)
    out, n_in = M.shape
    if nbytes is not None:
        nb = real_scalar(nbytes, "nbytes", low=0.0)
        fits = {s: squant_nnz_for_bytes((out, n_in), nb, b, s)
                for s in ([structure] if structure else STRUCTURES)}
        structure = max(fits, key=lambda s: fits[s])
        k = max(0, fits[structure])
    elif sparsity is not None:
        k = M.size - int(round(real_scalar(sparsity, "sparsity", low=0.0, high=1.0) * M.size))
    else:
        if isinstance(nnz, bool) or not isinstance(nnz, (int, np.integer)) or not 0 <= nnz <= M.size:
            raise ValueError(f"nnz: expected an integer in [0, {M.size}], got {nnz!r}")
        k = int(nnz)
    # the k largest magnitudes (ties in row-major order; zeros never kept): the C++ count
    # pass gives each row's kept count for the whole matrix, then each block of rows is pruned
    # to its own count - the same entries (everything above the cut, then ties in row order),
    # so only a block's CSR is held, never the whole matrix's (8 bytes per kept entry: 1.7x
    # the matrix at 87 % kept; issue 15: auto within 3x the largest tensor). Codes of the kept
    # values only, in float64 as before.
    half = (1 << (b - 1)) - 1
    if k > 0:
        ptr = prune_row_counts(M, k)
    else:
        ptr = np.zeros(out + 1, np.int64)
    keep = np.zeros(M.shape, bool)
    codes = np.empty(int(ptr[-1]), np.uint8)
    s16 = np.ones(out, np.float16)
    rs = max(1, -(-out // 16))  # row blocks: temporaries of a sixteenth of the matrix
    for r0 in range(0, out, rs):
        r1 = min(out, r0 + rs)
        a, e = int(ptr[r0]), int(ptr[r1])
        if e == a:
            continue
        data, idx, bptr = prune_keep(M[r0:r1], e - a)
        if not np.array_equal(np.asarray(bptr, np.int64), ptr[r0:r1 + 1] - a):
            raise RuntimeError("sparse_quantize: a block's pruning kept other rows' counts")
        rows = np.repeat(np.arange(r1 - r0), np.diff(bptr))
        keep[r0:r1][rows, idx] = True
        del idx
        amax = np.zeros(r1 - r0, np.float64)
        ne = np.flatnonzero(np.diff(bptr))
        amax[ne] = np.maximum.reduceat(np.abs(data), np.asarray(bptr[:-1])[ne])
        if not np.isfinite(amax / half).all() or np.any(amax / half > np.finfo(np.float16).max):
            raise ValueError("W: row scales overflow float16")
        sb = (amax / half).astype(np.float16)
        sb = np.where((sb == 0) | ~np.isfinite(sb), np.float16(1), sb)
        s16[r0:r1] = sb
        q = np.rint(data / sb.astype(np.float64)[rows])
        codes[a:e] = np.clip(q, -half - 1, half) + (1 << (b - 1))
        del data, q, rows
    return _assemble(keep, codes, s16, b, Wa.shape, Wa.dtype, layout, structure)

