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
             "complex64": "C64", "complex128": "C128"}
_CANONICAL = {v: k for k, v in _ST_NAMES.items()}


def stored_name(numpy_name: str) -> str:
    """safetensors spelling of a stored dtype (``bfloat16`` -> ``BF16``, ``int64`` -> ``I64``)."""
    return _ST_NAMES.get(numpy_name, numpy_name)


def canonical_dtype_name(stored: str | None) -> str | None:
    """Stored-dtype name in NumPy spelling (``BF16`` -> ``bfloat16``); other names unchanged."""
    return None if stored is None else _CANONICAL.get(stored, stored)
