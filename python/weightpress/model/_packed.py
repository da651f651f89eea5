"""Quantized tensors as the runtime exports re-encode them (ONNX MatMulNBits, PyTorch's
packed kernels, compressed-tensors): plain arrays with every convention spelled out.

A :class:`~weightpress.compression.quant.Quantized` matrix describes its ``(out, in)`` matrix
``M`` (``W`` for layout ``out_in``, ``Wᵀ`` for ``in_out``) cut into groups of ``group`` inputs
along each row; an entry is ``scale · (u − zero)`` with its code ``u ∈ [0, 2^bits)``, ``scale``
float16, ``zero`` uint8 (symmetric: ``2^(bits−1)``). Codes are packed per row, little-endian
bit order, each row padded to whole bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..compression.quant import Quantized

__all__ = ["QuantParts", "unpack_bits", "pack_bits", "tensor_shape"]


def unpack_bits(packed: np.ndarray, cols: int, bits: int) -> np.ndarray:
    """Codes ``(rows, cols)`` uint8 from rows packed little-endian at ``bits`` each."""
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    if p.ndim != 2 or p.shape[1] != (cols * bits + 7) // 8:
        raise ValueError(f"packed: expected (rows, {(cols * bits + 7) // 8}) bytes, got {p.shape}")
    if bits == 8:
        return p[:, :cols].copy()
    if bits == 4:
        u = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.uint8)
        u[:, 0::2], u[:, 1::2] = p & 15, p >> 4
        return u[:, :cols]
    b = np.unpackbits(p, axis=1, bitorder="little")[:, :cols * bits]
    b = b.reshape(p.shape[0], cols, bits)
    return (b << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`unpack_bits` (rows padded with zero bits to whole bytes)."""
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    rows, cols = c.shape
    if bits == 8:
        return c.copy()
    if bits == 4:
        if cols % 2:
            c = np.concatenate([c, np.zeros((rows, 1), np.uint8)], axis=1)
        return np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << 4))
    b = (c[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(b.reshape(rows, cols * bits), axis=1, bitorder="little")


def tensor_shape(e: dict[str, Any]) -> tuple[int, ...]:
    """A container entry's tensor shape: an N-D weight is stored as its matrix view, with the
    tensor's own shape under ``view``."""
    v = e.get("view")
    return tuple(int(d) for d in (v["shape"] if v else e["shape"]))


@dataclass
class QuantParts:
    """A quantized ``(out, in)`` matrix ``M = scale · (codes − zeros)``, as plain arrays."""

    packed: np.ndarray            # uint8 (out, ⌈in·bits/8⌉)
    scales: np.ndarray            # float16 (out, n_groups)
    zeros: np.ndarray             # uint8 (out, n_groups); 2^(bits-1) filled in when symmetric
    bits: int
    group: int                    # inputs per group; the row length when the form said 0
    symmetric: bool
    dtype: np.dtype
    out: int
    inn: int

    @classmethod
    def of(cls, q: Any) -> "QuantParts":
        """From a :class:`~weightpress.compression.quant.Quantized` matrix."""
        if not isinstance(q, Quantized):
            raise TypeError(f"expected a Quantized matrix, got {type(q).__name__}")
        out, inn = q._mshape
        g = inn if q.group == 0 or q.group >= inn else q.group
        zeros = (np.full(q.scales.shape, 1 << (q.bits - 1), dtype=np.uint8) if q.zeros is None
                 else np.asarray(q.zeros))
        return cls(np.asarray(q.packed), np.asarray(q.scales), zeros, q.bits, g, q.zeros is None,
                   q.dtype, out, inn)

    @property
    def n_groups(self) -> int:
        return int(self.scales.shape[1])

    def codes(self) -> np.ndarray:
        return unpack_bits(self.packed, self.inn, self.bits)

    def dense(self, dtype: Any = np.float32) -> np.ndarray:
        """``M`` ``(out, in)`` in ``dtype``, computed in float32."""
        gi = np.arange(self.inn) // max(self.group, 1)
        u = self.codes().astype(np.float32)
        M = (u - self.zeros[:, gi].astype(np.float32)) * self.scales[:, gi].astype(np.float32)
        return M.astype(dtype, copy=False)
