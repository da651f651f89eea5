"""N-D weights seen as the matrix their layer multiplies by, and back.

Pure functions of a tensor's name, shape, source format and (for ONNX) the operator that uses
it. Every view here is a C-order reshape (no transpose, no copy of a contiguous tensor), so
:meth:`MatrixView.from_matrix` restores the original exactly:

==========================  ==========================  =====================  ========
weight                      stored shape                matrix                 layout
==========================  ==========================  =====================  ========
PyTorch/ONNX Conv{1,2,3}d   ``(O, I/g, *k)``            ``(O, I/g·Πk)``        out_in
grouped / depthwise conv    ``(O, I/g, *k)``            ``(O, I/g·Πk)``: the   out_in
                                                        g per-group matrices
                                                        stacked by rows
PyTorch/ONNX ConvTranspose  ``(I, O/g, *k)``            ``(I, O/g·Πk)``        in_out
Keras/TF Conv (HWIO)        ``(*k, I, O)``              ``(Πk·I, O)``          in_out
Keras depthwise             ``(*k, C, m)``              ``(Πk, C·m)``          in_out
ONNX LSTM/GRU/RNN W, R      ``(D, G·H, I)`` (D          ``(D·G·H, I)``: gates  out_in
                            directions, G gates)        and directions
                                                        stacked by rows
ONNX Gemm B                 ``(K, N)`` / transB         as stored              in_out /
                            ``(N, K)``                                         out_in
ONNX MatMul B, Keras Dense  ``(in, out)``               as stored              in_out
GPT-2 Conv1D (``c_attn``,   ``(in, out)``               as stored              in_out
``c_fc``, ``c_proj``)
other N-D tensors           leading 1s dropped, then    ``(s0, Π rest)``       out_in
                            ``(s0, ...)``
==========================  ==========================  =====================  ========

``kind`` names what the tensor is (``linear``, ``conv``, ``depthwise``, ``grouped``,
``conv_transpose``, ``recurrent``, ``fused_qkv``, ``embedding``, ``bias``, ``matrix``) for rules
and reports; fused attention projections (``c_attn``, ``in_proj_weight``, ``qkv``,
``query_key_value``) and PyTorch recurrent weights (``weight_ih_l0``...) are already 2-D.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MatrixView", "matrix_view", "OpUse"]

# (op_type, input index, attributes) of one use of an ONNX initializer
OpUse = tuple[str, int, Mapping[str, Any]]

_FUSED = re.compile(r"(c_attn|in_proj_weight|(^|[._])qkv([._]|$)|query_key_value|Wqkv)", re.I)
_CONV1D_GPT2 = re.compile(r"(^|\.)(c_attn|c_fc|c_proj|q_attn)\.weight$")
_RECURRENT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?$|(lstm|gru|rnn).*(kernel|recurrent)", re.I)
_KERAS = ("keras", "h5")


@dataclass(frozen=True, slots=True)  # slots: one per tensor (40k-tensor models, issue 15)
class MatrixView:
    """How one tensor is seen as a matrix.

    Attributes
    ----------
    shape : tuple of int
        The tensor's own shape.
    matrix_shape : (int, int)
        The matrix it is compressed as (same number of elements).
    layout : str
        ``"out_in"`` (rows are outputs, ``y = x Wᵀ``) or ``"in_out"`` (``y = x W``).
    kind : str
        What the tensor is (see the module docstring).
    """

    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    layout: str
    kind: str

    def __post_init__(self) -> None:
        if math.prod(self.shape) != math.prod(self.matrix_shape):
            raise ValueError(f"view: {self.shape} and {self.matrix_shape} differ in size")

    @property
    def is_reshape(self) -> bool:
        """True when the matrix differs from the stored shape (an N-D tensor)."""
        return tuple(self.shape) != tuple(self.matrix_shape)

    def to_matrix(self, a: Any) -> np.ndarray:
        """The tensor as its matrix (a view when `a` is C-contiguous)."""
        a = np.asarray(a)
        if a.shape != tuple(self.shape):
            raise ValueError(f"a: shape {a.shape}, the view is of {self.shape}")
        return a.reshape(self.matrix_shape)

    def from_matrix(self, m: Any) -> np.ndarray:
        """The matrix back in the tensor's own shape."""
        m = np.asarray(m)
        if m.shape != tuple(self.matrix_shape):
            raise ValueError(f"m: shape {m.shape}, the view's matrix is {self.matrix_shape}")
        return m.reshape(self.shape)

    def describe(self) -> str:
        """``"64x3x7x7 -> 64x147 conv"`` (or ``"64x64 linear"`` when no reshape)."""
        s = "x".join(map(str, self.shape)) or "()"
        if not self.is_reshape:
            return f"{s} {self.kind}"
        return f"{s} -> {'x'.join(map(str, self.matrix_shape))} {self.kind}"

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "matrix": list(self.matrix_shape),
                "layout": self.layout, "kind": self.kind}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MatrixView":
        return cls(tuple(int(s) for s in d["shape"]), tuple(int(s) for s in d["matrix"]),  # type: ignore[arg-type]
                   str(d["layout"]), str(d["kind"]))


def _squeeze_leading(shape: tuple[int, ...]) -> tuple[int, ...]:
    s = tuple(shape)
    while len(s) > 2 and s[0] == 1:
        s = s[1:]
    return s


def _onnx_view(shape: tuple[int, ...], uses: list[OpUse]) -> MatrixView | None:
    for op, idx, attrs in uses:
        n = len(shape)
        if op == "Conv" and idx == 1 and n >= 3:
            g = int(attrs.get("group", 1))
            kind = "depthwise" if g > 1 and g == shape[0] and shape[1] == 1 else (
                "grouped" if g > 1 else "conv")
            return MatrixView(shape, (shape[0], math.prod(shape[1:])), "out_in", kind)
        if op == "ConvTranspose" and idx == 1 and n >= 3:
            return MatrixView(shape, (shape[0], math.prod(shape[1:])), "in_out", "conv_transpose")
        if op in ("LSTM", "GRU", "RNN") and idx in (1, 2) and n == 3:
            return MatrixView(shape, (shape[0] * shape[1], shape[2]), "out_in", "recurrent")
        if op in ("LSTM", "GRU", "RNN") and idx == 3:
            return MatrixView(shape, (1, math.prod(shape)), "out_in", "bias")
        if op == "Gemm" and idx == 1 and n == 2:
            lay = "out_in" if int(attrs.get("transB", 0)) else "in_out"
            return MatrixView(shape, shape, lay, "linear")  # type: ignore[arg-type]
        if op == "MatMul" and idx == 1 and n == 2:
            return MatrixView(shape, shape, "in_out", "linear")  # type: ignore[arg-type]
        if op == "Gather" and idx == 0 and n == 2:
            return MatrixView(shape, shape, "out_in", "embedding")  # type: ignore[arg-type]
    return None


def matrix_view(name: str, shape: tuple[int, ...], *, source_format: str = "",
                uses: list[OpUse] | None = None) -> MatrixView | None:
    """The matrix view of tensor `name` of `shape`, or None for tensors that are not matrices
    (0-D and 1-D, or N-D with fewer than two dimensions above 1).

    Parameters
    ----------
    name : str
        The tensor's name in its file (used for Keras depthwise kernels, GPT-2 ``Conv1D`` and
        the ``kind`` label).
    shape : tuple of int
        Its shape.
    source_format : str
        ``safetensors``, ``pytorch``, ``npz`` (PyTorch conventions), ``onnx`` or ``keras``.
    uses : list of (op_type, input index, attributes), optional
        ONNX: the operators that read this initializer.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or sum(s > 1 for s in shape) < 2 and len(shape) > 2:
        return None
    fmt = source_format.lower()
    if fmt == "onnx":
        v = _onnx_view(shape, list(uses or []))
        if v is not None:
            return v
        if len(shape) == 2:
            return MatrixView(shape, shape, "in_out", "matrix")  # type: ignore[arg-type]
    if fmt in _KERAS and len(shape) >= 3:
        if "depthwise" in name.lower():
            k = math.prod(shape[:-2])
            return MatrixView(shape, (k, shape[-2] * shape[-1]), "in_out", "depthwise")
        return MatrixView(shape, (math.prod(shape[:-1]), shape[-1]), "in_out", "conv")
    if len(shape) == 2:
        if fmt in _KERAS:
            kind = "recurrent" if _RECURRENT.search(name) else "linear"
            return MatrixView(shape, shape, "in_out", kind)  # type: ignore[arg-type]
        if _CONV1D_GPT2.search(name):
            kind = "fused_qkv" if _FUSED.search(name) else "linear"
            return MatrixView(shape, shape, "in_out", kind)  # type: ignore[arg-type]
        kind = ("recurrent" if _RECURRENT.search(name) else "fused_qkv" if _FUSED.search(name)
                else "linear")
        return MatrixView(shape, shape, "out_in", kind)  # type: ignore[arg-type]
    # N-D, PyTorch conventions: (O, I/g, *k) convolutions, else leading 1s dropped
    s = _squeeze_leading(shape)
    if len(s) == 2:
        return MatrixView(shape, s, "out_in", "matrix")  # type: ignore[arg-type]
    kind = "depthwise" if s[1] == 1 else "conv"
    return MatrixView(shape, (s[0], math.prod(s[1:])), "out_in", kind)
