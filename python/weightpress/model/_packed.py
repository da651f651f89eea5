"""The stored arrays of the quantized forms, read without the compute kernels: what the
runtime exports (ONNX, PyTorch, compressed-tensors) need to re-encode them.

Storage format (``form`` ``"quant"``, see :mod:`weightpress.compression.quant`): the ``(out, in)``
matrix ``M`` (``W`` for layout ``out_in``, ``Wᵀ`` for ``in_out``) is cut into groups of ``group``
inputs along each row (0: one group per row); an entry is ``scale · (u − zero)`` with its code
``u ∈ [0, 2^bits)``, ``scale`` float16, ``zero`` uint8 (symmetric: ``2^(bits−1)``, not stored).
Codes are packed per row, little-endian bit order, each row padded to whole bytes.
``qmeta`` = ``[bits, group, symmetric, dtype index]``. Form ``"codebook"``: packed codes index a
float16 centroid table per layer ``(1, 2^bits)`` or per row ``(out, 2^bits)``; ``qmeta`` =
``[bits, dtype index]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["QuantParts", "CodebookParts", "unpack_bits", "pack_bits", "dense_value", "tensor_shape"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


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


def _meta(parts: dict[str, np.ndarray], n: int, form: str) -> np.ndarray:
    meta = np.asarray(parts["qmeta"])
    if meta.shape != (n,) or meta.dtype.kind not in "iu" or not 0 <= int(meta[-1]) < len(_DTYPES):
        raise ValueError(f"{form}: malformed qmeta")
    return meta


@dataclass
class QuantParts:
    """A ``"quant"`` tensor's arrays, checked: ``M`` ``(out, in)`` = scale · (codes − zeros)."""

    packed: np.ndarray
    scales: np.ndarray            # float16 (out, n_groups)
    zeros: np.ndarray             # uint8 (out, n_groups); 2^(bits-1) filled in when symmetric
    bits: int
    group: int                    # inputs per group; the row length when the form said 0
    symmetric: bool
    dtype: np.dtype
    out: int
    inn: int

    @classmethod
    def from_entry(cls, parts: dict[str, np.ndarray], shape: Any, layout: str) -> "QuantParts":
        for k in ("packed", "scales", "qmeta"):
            if k not in parts:
                raise ValueError(f"quant: missing stored array {k!r}")
        meta = _meta(parts, 4, "quant")
        bits, group, sym = int(meta[0]), int(meta[1]), bool(meta[2])
        out, inn = (int(shape[0]), int(shape[1])) if layout == "out_in" else (int(shape[1]), int(shape[0]))
        if not 2 <= bits <= 8 or group < 0:
            raise ValueError(f"quant: bits {bits} / group {group} out of range")
        g = inn if group == 0 or group >= inn else group
        ng = -(-inn // max(g, 1)) if inn else 0
        scales = np.asarray(parts["scales"])
        if scales.dtype != np.float16 or scales.shape != (out, ng):
            raise ValueError(f"quant: scales {scales.dtype} {scales.shape}, expected float16 {(out, ng)}")
        if sym:
            zeros = np.full((out, ng), 1 << (bits - 1), dtype=np.uint8)
        else:
            zeros = np.asarray(parts.get("zeros"))
            if zeros.dtype != np.uint8 or zeros.shape != (out, ng):
                raise ValueError(f"quant: zeros missing or not uint8 {(out, ng)}")
        packed = np.asarray(parts["packed"])
        if packed.shape != (out, (inn * bits + 7) // 8):
            raise ValueError(f"quant: packed has shape {packed.shape}")
        return cls(packed, scales, zeros, bits, g, sym, _DTYPES[int(meta[3])], out, inn)

    @property
    def n_groups(self) -> int:
        return int(self.scales.shape[1])

    def codes(self) -> np.ndarray:
        return unpack_bits(self.packed, self.inn, self.bits)

    def group_of(self) -> np.ndarray:
        """Group index of each input column."""
        return np.arange(self.inn) // max(self.group, 1)

    def dense(self, dtype: Any = np.float32) -> np.ndarray:
        """``M`` ``(out, in)`` in ``dtype``, computed in float32."""
        gi = self.group_of()
        u = self.codes().astype(np.float32)
        M = (u - self.zeros[:, gi].astype(np.float32)) * self.scales[:, gi].astype(np.float32)
        return M.astype(dtype, copy=False)


@dataclass
class CodebookParts:
    """A ``"codebook"`` tensor's arrays: ``M[i, j] = centroids[i or 0, code[i, j]]``."""

    packed: np.ndarray
    centroids: np.ndarray
    bits: int
    dtype: np.dtype
    out: int
    inn: int

    @classmethod
    def from_entry(cls, parts: dict[str, np.ndarray], shape: Any, layout: str) -> "CodebookParts":
        for k in ("packed", "centroids", "qmeta"):
            if k not in parts:
                raise ValueError(f"codebook: missing stored array {k!r}")
        meta = _meta(parts, 2, "codebook")
        out, inn = (int(shape[0]), int(shape[1])) if layout == "out_in" else (int(shape[1]), int(shape[0]))
        bits = int(meta[0])
        C = np.asarray(parts["centroids"])
        if not 2 <= bits <= 8 or C.ndim != 2 or C.shape[1] != 1 << bits or C.shape[0] not in (1, out):
            raise ValueError("codebook: malformed centroids")
        return cls(np.asarray(parts["packed"]), C, bits, _DTYPES[int(meta[1])], out, inn)

    def dense(self, dtype: Any = np.float32) -> np.ndarray:
        codes = unpack_bits(self.packed, self.inn, self.bits).astype(np.intp)
        C = self.centroids.astype(np.float32)
        M = C[0][codes] if C.shape[0] == 1 else np.take_along_axis(C, codes, axis=1)
        return M.astype(dtype, copy=False)


def dense_value(c: Any, name: str) -> np.ndarray:
    """The dense tensor of container ``c``'s ``name``, the quantized forms decoded here."""
    e = c.entries[name]
    if e["form"] not in ("quant", "codebook"):
        return np.asarray(c[name])
    cls = QuantParts if e["form"] == "quant" else CodebookParts
    M = cls.from_entry(c.parts(name), e["shape"], e["layout"]).dense(np.float32)
    return (M if e["layout"] == "out_in" else M.T).astype(e["dtype"])


def tensor_shape(e: dict[str, Any]) -> tuple[int, ...]:
    """A container entry's tensor shape: an N-D weight is stored as its matrix view, with the
    tensor's own shape under ``view``."""
    v = e.get("view")
    return tuple(int(d) for d in (v["shape"] if v else e["shape"]))
