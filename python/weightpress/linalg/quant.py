"""Integer quantization kernels at the NumPy level: bit packing, round-to-nearest with float16
group scales, dequantization, the packed product, and the optimal-brain column sweep (GPTQ /
SparseGPT). Each is one call into the C++ engine with the GIL released.

Storage format (shared with :class:`weightpress.compression.quant.Quantized`): a matrix ``M``
``(rows, cols)`` is cut into groups of ``group`` columns along each row (``group=0``: one group
per row); each group has a float16 scale ``s`` and, when asymmetric, a uint8 zero point ``z``
(symmetric: ``z = 2^(bits-1)``); an entry is ``s · (u − z)`` with its code ``u ∈ [0, 2^bits)``.
Codes are packed per row, little-endian bit order, each row padded to whole bytes
(``⌈cols·bits/8⌉`` bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._threads import _resolve, blas_sequential

__all__ = ["check_bits", "check_group", "row_bytes", "n_groups", "pack_codes", "unpack_codes",
           "quantize_rtn", "rtn_params", "dequantize", "quant_matmul", "obs_factor_inplace", "obs_sweep"]


def check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 8:
        raise ValueError(f"bits: expected an integer in [2, 8], got {bits!r}")
    return int(bits)


def check_group(group: Any) -> int:
    """``None`` or 0 (one scale per row) or a positive group size."""
    if group is None:
        return 0
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or int(group) < 0:
        raise ValueError(f"group: expected None, 0 or a positive integer, got {group!r}")
    return int(group)


def row_bytes(cols: int, bits: int) -> int:
    return (int(cols) * int(bits) + 7) // 8


def n_groups(cols: int, group: int) -> int:
    g = cols if group <= 0 or group >= cols else group
    return 0 if cols == 0 else -(-cols // max(g, 1))


def pack_codes(codes: np.ndarray, bits: int, n_threads: int | None = None) -> np.ndarray:
    """uint8 codes ``(rows, cols)`` → packed uint8 ``(rows, ⌈cols·bits/8⌉)``."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    if c.ndim != 2:
        raise ValueError(f"codes: expected a 2-D array, got {c.ndim}-D")
    return _core.quant_pack(c, check_bits(bits), _resolve(n_threads))


def unpack_codes(packed: np.ndarray, cols: int, bits: int, n_threads: int | None = None) -> np.ndarray:
    """The inverse of :func:`pack_codes`."""
    return _core.quant_unpack(np.ascontiguousarray(packed, dtype=np.uint8), int(cols), check_bits(bits),
                              _resolve(n_threads))


def quantize_rtn(W: np.ndarray, bits: int, group: int, symmetric: bool, mse: bool = False,
                 n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round-to-nearest: ``(codes uint8 (rows, cols), scales float16 (rows, n_groups),
    zeros uint8 (rows, n_groups) or None)``. ``W`` float32/float64, C-contiguous, finite.
    ``mse``: each group's range is the min/max shrunk by the factor in 1, 0.95 ... 0.5 that
    leaves the least squared error (clips a few outliers for a finer step)."""
    codes, scales, zeros = _core.quant_rtn(W, check_bits(bits), check_group(group), bool(symmetric),
                                           bool(mse), _resolve(n_threads))
    return codes, scales.view(np.float16), zeros


def rtn_params(W: np.ndarray, bits: int, group: int, symmetric: bool, mse: bool = False,
               n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`quantize_rtn`'s ``(scales, zeros)`` alone, the same values, without writing
    the codes (GPTQ's static groups take only these)."""
    _, scales, zeros = _core.quant_rtn(W, check_bits(bits), check_group(group), bool(symmetric),
                                       bool(mse), _resolve(n_threads), False)
    return scales.view(np.float16), zeros


def _scales_u16(scales: np.ndarray) -> np.ndarray:
    s = np.ascontiguousarray(scales)
    if s.dtype != np.float16:
        raise TypeError(f"scales: expected float16, got {s.dtype}")
    return s.view(np.uint16)


def dequantize(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
               shape: tuple[int, int], bits: int, group: int, symmetric: bool, dtype: Any = np.float32,
               n_threads: int | None = None) -> np.ndarray:
    """The float matrix ``(rows, cols)`` in ``dtype`` (float32 or float64)."""
    out = np.empty(shape, dtype=dtype)
    _core.quant_dequantize(packed, _scales_u16(scales), zeros, bits, group, bool(symmetric), out,
                           _resolve(n_threads))
    return out


def quant_matmul(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                 shape: tuple[int, int], bits: int, group: int, symmetric: bool, X: np.ndarray,
                 n_threads: int | None = None) -> np.ndarray:
    """``X Mᵀ`` for ``X`` ``(n, cols)`` float32/float64 C-contiguous → ``(n, rows)``, the
    matrix never dequantized in memory."""
    return _core.quant_matmul(packed, _scales_u16(scales), zeros, int(shape[0]), int(shape[1]), bits,
                              group, bool(symmetric), X, _resolve(n_threads))


def obs_factor_inplace(H: np.ndarray, damp: float, keep_lower: bool = False,
                       n_threads: int | None = None) -> tuple[int, np.ndarray]:
    """Replace ``H`` (float32/float64, C-contiguous, writeable) by the upper Cholesky factor ``U``
    of its damped inverse, ``H⁻¹ = UᵀU``; returns ``(info, dead)`` (info > 0: not positive
    definite). With ``keep_lower`` the strictly lower triangle keeps ``H`` (its diagonal is
    lost; when info > 0 the strictly upper triangle holds ``H``), so one buffer serves the
    sweep and, restored, the statistics. The same bits for any thread count (BLAS on one
    thread, our tiles on ``n_threads``)."""
    with blas_sequential():
        return _core.obs_factor(H, float(damp), bool(keep_lower), _resolve(n_threads))


def obs_sweep(W: np.ndarray, U: np.ndarray, *, bits: int = 0, group: int = 0, symmetric: bool = True,
              mse: bool = False,
              n_prune: int = 0, nm: tuple[int, int] = (0, 0), block: int = 128,
              col_group: np.ndarray | None = None, scales: np.ndarray | None = None,
              zeros: np.ndarray | None = None, n_threads: int | None = None,
              row_err: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """The GPTQ / SparseGPT sweep of ``W`` in place (see ``cpp/include/weightpress/obs.hpp``);
    with ``bits`` returns ``(codes, scales float16, zeros or None)``. ``col_group`` (int64, one
    per column of ``W``) fixes each swept column's group, with ``scales``/``zeros`` given.
    ``row_err`` (float64, one per row of ``W``) is added each row's squared error against the
    damped ``H`` (``Σ_c e_c²``)."""
    s16 = None if scales is None else _scales_u16(scales)
    with blas_sequential():  # (its products by fixed tiles on our threads: any count, same bits)
        res = _core.obs_sweep(W, U, int(bits), int(group), bool(symmetric), bool(mse), int(n_prune), int(nm[0]),
                              int(nm[1]), int(block), col_group, s16, zeros, _resolve(n_threads),
                              row_err)
    if res is None:
        return None
    codes, scales, zeros = res
    return codes, scales.view(np.float16), zeros
