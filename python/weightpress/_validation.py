"""Input coercion and checks shared by the public functions (one place, one wording)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._pages import row_blocks

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(*dtypes: Any, name: str = "x") -> np.dtype:
    """The float32/float64 dtype a computation on these inputs runs in.

    float32 stays float32, float64 stays float64, mixed gives float64; integers and bools give
    float64; float16 gives float32; complex and anything else raise TypeError.
    """
    if len(dtypes) == 1 and dtypes[0] in FLOATS:  # the common case, fast
        return np.dtype(dtypes[0])
    if len(dtypes) == 2 and dtypes[0] == dtypes[1] and dtypes[0] in FLOATS:
        return np.dtype(dtypes[0])
    dts = [np.dtype(d) for d in dtypes]
    for d in dts:
        if d.kind not in "fiub":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {d}")
    if all(d.kind == "f" and d.itemsize <= 4 for d in dts):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def as_float_array(x: Any, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """x as an ndarray of a float dtype (no copy when it already is one)."""
    if sp.issparse(x):
        raise TypeError(f"{name}: expected a dense array, got a sparse matrix")
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array, got dtype object")
    dt = float_dtype(arr.dtype, name=name) if dtype is None else dtype
    return arr.astype(dt, copy=False)


def check_finite(x: np.ndarray, name: str, block: int = 1 << 20) -> None:
    """ValueError naming `name` if `x` holds NaN or Inf. Large arrays are scanned a block of
    about `block` values along the first axis at a time (no full-size boolean temporary), the
    pages of a file-mapped array released behind the scan."""
    if not x.size:
        return
    if x.ndim == 0 or x.size <= block:
        ok = bool(np.isfinite(x).all())
    else:
        step = max(1, block // max(1, x.size // x.shape[0]))
        ok = True
        for r0, r1 in row_blocks(x, step):
            if not np.isfinite(x[r0:r1]).all():
                ok = False
                break
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf")


def as_matrix(W: Any, name: str = "W") -> np.ndarray:
    """A finite 2-D float array (float dtype rules of :func:`as_float_array`), or ValueError."""
    Wa = as_float_array(W, name)
    if Wa.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got {Wa.ndim}-D with shape {Wa.shape}")
    check_finite(Wa, name)
    return Wa


def real_scalar(v: Any, name: str, *, low: float | None = None, low_open: bool = False,
                high: float | None = None, high_open: bool = False) -> float:
    """A finite real number within the given bounds, or ValueError/TypeError naming `name`."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)) or isinstance(v, np.complexfloating):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    f = float(v)
    if not np.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    if low is not None and (f < low or (low_open and f == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {f}")
    if high is not None and (f > high or (high_open and f == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {f}")
    return f


def positive_int(v: Any, name: str, *, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    i = int(v)
    if i < low:
        raise ValueError(f"{name} must be >= {low}, got {i}")
    return i


def as_csr(A: Any, name: str = "A") -> sp.csr_array | sp.csr_matrix:
    """A SciPy CSR matrix/array as given, or TypeError. Data dtype is not changed here."""
    if getattr(A, "format", None) == "csr" and getattr(A, "ndim", 0) == 2 and sp.issparse(A):
        return A
    if not (sp.issparse(A) and A.format == "csr"):
        raise TypeError(f"{name}: expected a scipy.sparse CSR matrix or array, got {type(A).__name__}"
                        + (f" in {A.format} format (convert with .tocsr())" if sp.issparse(A) else ""))
    if A.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D sparse array, got {A.ndim}-D")
    return A


def csr_parts(A: Any, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, indices, indptr) as C-contiguous arrays with a common int32/int64 index type."""
    ip, ix, dt = A.indptr, A.indices, A.data
    if (ip.dtype == ix.dtype and ip.dtype in (np.int32, np.int64) and dt.dtype == dtype
            and ip.flags.c_contiguous and ix.flags.c_contiguous and dt.flags.c_contiguous
            and ip.ndim == ix.ndim == dt.ndim == 1):
        return dt, ix, ip  # as stored: no copies (the common case)
    idx_t = np.int64 if (A.indptr.dtype == np.int64 or A.indices.dtype == np.int64) else np.int32
    for arr, nm in ((A.indptr, "indptr"), (A.indices, "indices")):
        if arr.dtype.kind not in "iu":
            raise TypeError(f"A.{nm}: expected an integer array, got {arr.dtype}")
    indptr = np.ascontiguousarray(A.indptr, dtype=idx_t)
    indices = np.ascontiguousarray(A.indices, dtype=idx_t)
    data = np.ascontiguousarray(A.data, dtype=dtype)
    if indptr.ndim != 1 or indices.ndim != 1 or data.ndim != 1:
        raise ValueError("malformed CSR: indptr, indices and data must be 1-D")
    return data, indices, indptr
