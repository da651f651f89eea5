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


_CANONICAL = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def canonical_dtype_name(stored: str | None) -> str | None:
    """Stored-dtype name in NumPy spelling (safetensors' ``BF16`` -> ``bfloat16``)."""
    return None if stored is None else _CANONICAL.get(stored, stored)
