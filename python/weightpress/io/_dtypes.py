"""dtype helpers: bfloat16 without a framework."""

from __future__ import annotations

import numpy as np


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16 array, any byte order) -> float32, exactly."""
    out = np.asarray(bits).astype(np.uint32) << np.uint32(16)
    return out.view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


# Stored-dtype names: every reader reports ``stored_dtypes`` in safetensors' spelling, the
# vocabulary the container uses too; writers accept either spelling.
_ST_NAMES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
             "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
             "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
             "complex64": "C64", "complex128": "C128", "float8_e4m3fn": "F8_E4M3",
             "float8_e5m2": "F8_E5M2"}
_CANONICAL = {v: k for k, v in _ST_NAMES.items()}


def stored_name(numpy_name: str) -> str:
    """safetensors spelling of a stored dtype (``bfloat16`` -> ``BF16``, ``int64`` -> ``I64``)."""
    return _ST_NAMES.get(numpy_name, numpy_name)


def canonical_dtype_name(stored: str | None) -> str | None:
    """Stored-dtype name in NumPy spelling (``BF16`` -> ``bfloat16``); other names unchanged."""
    return None if stored is None else _CANONICAL.get(stored, stored)


def _f8_table(exp_bits: int, bias: int, fn: bool) -> np.ndarray:
    """float32 value of each of the 256 codes of an 8-bit float (``fn``: finite, no infinities)."""
    man_bits = 7 - exp_bits
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    m = codes & ((1 << man_bits) - 1)
    val = np.where(e == 0, m / 2.0**man_bits * 2.0 ** (1 - bias),
                   (1 + m / 2.0**man_bits) * 2.0 ** (e.astype(float) - bias))
    top = (1 << exp_bits) - 1
    if fn:  # E4M3FN: only S.1111.111 is NaN
        val = np.where((e == top) & (m == (1 << man_bits) - 1), np.nan, val)
    else:  # E5M2: IEEE-like, all-ones exponent is inf (m == 0) or NaN
        val = np.where(e == top, np.where(m == 0, np.inf, np.nan), val)
    return (sign * val).astype(np.float32)


F8_TABLES = {"float8_e4m3fn": _f8_table(4, 7, True), "float8_e5m2": _f8_table(5, 15, False)}


def f8_to_float32(codes: np.ndarray, kind: str) -> np.ndarray:
    """8-bit float codes (uint8) of `kind` (``float8_e4m3fn`` or ``float8_e5m2``) -> float32."""
    return F8_TABLES[kind][np.asarray(codes, np.uint8)]
