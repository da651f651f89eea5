"""The byte model: how many bytes a stored array or a compressed form takes. The one place that
knows value widths, index widths and pointer widths; methods aim at byte budgets through these
functions and the compressed matrices report their ``nbytes`` through them, so the two agree
exactly.

A *storage* tag says how float values are stored: ``None`` (the matrix's own dtype) or
``"BF16"`` (float32 values held as bfloat16, two bytes each).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .._validation import real_scalar
from ..io._dtypes import canonical_dtype_name

__all__ = ["STORAGES", "check_storage", "value_itemsize", "array_nbytes", "index_dtype",
           "index_itemsize", "pointer_dtype", "dense_nbytes", "sparse_nbytes", "lowrank_nbytes",
           "nnz_for_bytes", "rank_for_bytes", "stored_itemsize", "Budget", "Precision",
           "QUANT_LADDER", "quant_nbytes", "precisions_for_bytes"]

STORAGES = (None, "BF16")


def check_storage(storage: str | None) -> str | None:
    if storage not in STORAGES:
        raise ValueError(f"storage: expected None or 'BF16', got {storage!r}")
    return storage


def value_itemsize(dtype: np.dtype | type | str, storage: str | None = None) -> int:
    """Bytes per stored value of a float array of ``dtype`` under ``storage``."""
    return 2 if check_storage(storage) == "BF16" else np.dtype(dtype).itemsize


def array_nbytes(arrays: Iterable[np.ndarray], storage: str | None = None) -> int:
    """Stored bytes of ``arrays``: float32 ones at the storage's width, the rest as they are."""
    half = check_storage(storage) == "BF16"
    return int(sum(a.size * 2 if half and a.dtype == np.float32 else a.nbytes for a in arrays))


def index_dtype(n_cols: int) -> np.dtype:
    """Narrowest column-index dtype that addresses ``n_cols`` columns (uint8/uint16 when they
    fit, else int32/int64)."""
    return np.dtype(np.uint8 if n_cols <= 1 << 8 else np.uint16 if n_cols <= 1 << 16
                    else np.int32 if n_cols < 2**31 else np.int64)


def index_itemsize(n_cols: int) -> int:
    return index_dtype(n_cols).itemsize


def pointer_dtype(nnz: int) -> np.dtype:
    """Row-pointer dtype for ``nnz`` stored entries."""
    return np.dtype(np.int32 if nnz < 2**31 else np.int64)


def dense_nbytes(shape: tuple[int, ...], itemsize: int) -> int:
    return int(np.prod(shape, dtype=np.int64)) * int(itemsize)


def sparse_nbytes(shape: tuple[int, int], nnz: int, itemsize: int) -> int:
    """Bytes of a CSR matrix of this shape and ``nnz`` (values, indices, indptr)."""
    return (nnz * (itemsize + index_itemsize(shape[1]))
            + (shape[0] + 1) * pointer_dtype(nnz).itemsize)


def lowrank_nbytes(shape: tuple[int, int], rank: int, itemsize: int) -> int:
    """Bytes of rank-``rank`` factors ``(m, r)`` and ``(r, n)``."""
    return rank * (shape[0] + shape[1]) * itemsize


def nnz_for_bytes(shape: tuple[int, int], nbytes: float, itemsize: int) -> int:
    """Most CSR entries whose :func:`sparse_nbytes` fits in ``nbytes`` (0 if none fit)."""
    ptr = (shape[0] + 1) * 4
    per = itemsize + index_itemsize(shape[1])
    return int(max(0, min(shape[0] * shape[1], (nbytes - ptr) // per)))


def rank_for_bytes(shape: tuple[int, int], nbytes: float, itemsize: int) -> int:
    """Largest rank whose :func:`lowrank_nbytes` fits in ``nbytes``."""
    return int(max(0.0, nbytes) // max(1, (shape[0] + shape[1]) * itemsize))


@dataclass(frozen=True)
class Precision:
    """Integer storage of a matrix's values: ``bits`` per value (2–8), one float16 scale per
    ``group`` inputs (0: per output row), a uint8 zero point per group unless ``symmetric``.
    ``shape`` arguments below are the ``(out, in)`` matrix the codes describe."""

    bits: int
    group: int = 0
    symmetric: bool = True

    def n_groups(self, n_in: int) -> int:
        g = n_in if self.group <= 0 or self.group >= n_in else self.group
        return 0 if n_in == 0 else -(-n_in // max(1, g))

    def nbytes(self, shape: tuple[int, int]) -> int:
        """Bytes of the packed codes (rows padded to whole bytes), the float16 scales, the zero
        points and the 20-byte ``qmeta`` record: exactly the Quantized form's ``nbytes``
        (without entropy coding; a coded form's ``nbytes`` is smaller, this its upper bound)."""
        out, n_in = int(shape[0]), int(shape[1])
        ng = self.n_groups(n_in)
        return out * ((n_in * self.bits + 7) // 8) + out * ng * (2 + (0 if self.symmetric else 1)) + 20

    @property
    def name(self) -> str:
        """``int4g64``, ``int8``, ``uint2`` (asymmetric)... the report's spelling."""
        return f"{'' if self.symmetric else 'u'}int{self.bits}" + (f"g{self.group}" if self.group else "")


def quant_nbytes(shape: tuple[int, int], bits: int, group: int = 0, symmetric: bool = True) -> int:
    """:meth:`Precision.nbytes` of ``Precision(bits, group, symmetric)``."""
    return Precision(int(bits), int(group), bool(symmetric)).nbytes(shape)


# The precisions budgets choose from, best first at each size (asymmetric pays a byte per group
# for its zero points and keeps an extra level where weights are skewed).
QUANT_LADDER: tuple[Precision, ...] = tuple(
    Precision(b, g, s) for b in (8, 6, 5, 4, 3, 2) for g in (0, 128, 64, 32) for s in (True, False))


def precisions_for_bytes(shape: tuple[int, int], nbytes: float, top: int = 3) -> list[Precision]:
    """The ``top`` largest precisions of :data:`QUANT_LADDER` whose bytes fit ``nbytes`` (the
    candidates worth measuring for that budget), largest first; [] if none fits."""
    fit = sorted((p for p in QUANT_LADDER if p.nbytes(shape) <= nbytes),
                 key=lambda p: (-p.nbytes(shape), p.bits))
    return fit[:top]


# bytes per element of the stored dtypes readers report (safetensors spelling or NumPy's)
def stored_itemsize(stored: str | None, dtype: np.dtype) -> int:
    """Bytes per element as the source file stores a tensor: its ``stored`` dtype name
    (``BF16``, ``F16``, ``F8_E4M3``...) when the reader reports one, else ``dtype``'s."""
    name = canonical_dtype_name(stored) if stored else None
    if name in ("bfloat16", "float16"):
        return 2
    if name in ("float8_e4m3fn", "float8_e5m2", "F8_E4M3", "F8_E5M2"):
        return 1
    return np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Budget:
    """What one matrix may cost: a byte budget, or an error bound (relative Frobenius error in
    weight space, or in output space ``‖XWᵀ − XŴᵀ‖/‖XWᵀ‖`` when ``output`` is set and
    calibration statistics exist). Exactly one of ``nbytes`` and ``error``."""

    nbytes: float | None = None
    error: float | None = None
    output: bool = False

    def __post_init__(self) -> None:
        if (self.nbytes is None) == (self.error is None):
            raise ValueError("give exactly one of error (relative error) and nbytes (byte budget)")
        if self.nbytes is not None:
            object.__setattr__(self, "nbytes", real_scalar(self.nbytes, "nbytes", low=0.0))
        else:
            object.__setattr__(self, "error", real_scalar(self.error, "error", low=0.0))

    @classmethod
    def of(cls, error: float | None = None, nbytes: float | None = None) -> "Budget":
        return cls(nbytes=nbytes, error=error)

    @classmethod
    def ratio(cls, ratio: float, dense_bytes: float) -> "Budget":
        """``dense_bytes / ratio`` bytes."""
        return cls(nbytes=dense_bytes / real_scalar(ratio, "ratio", low=1.0))

    def pair(self) -> tuple[float | None, float | None]:
        """``(error, nbytes)``, one of them None."""
        return self.error, self.nbytes
