"""A container loaded into a PyTorch module: the compressed layers compute from their
compressed form.

:func:`load_into` walks a module and, for each ``nn.Linear`` or transformers ``Conv1D`` whose
weight the container compressed, puts in its place a module that computes from the stored form:

- low rank ``W = L R``: :class:`LowRankLinear`, two thin ``nn.Linear`` (the bias on the second);
- quantized (``quant``): :class:`QuantLinear`, the codes kept packed. Codes of 2–4 bits in
  groups of 32–256 (or per channel) run in PyTorch's int4 weight-only kernel, symmetric
  per-channel codes of more bits in its int8 one (activations in bfloat16: the fast paths it
  has on CPU); others are dequantized in each call (small in memory, slower than dense: the
  report says so). Given sample ``inputs``, layers also take fbgemm's int8-activation product
  (``"dynamic"``) where it is faster there, held to the container's stated error by an output
  check against its dense decode: the layers whose rounding adds the most compensate it
  (a second product over the rounding residual) where that is still faster than the
  float-activation mode, else go back to it (see :func:`load_into`);
- pruned (CSR): :class:`SparseLinear`, through ``torch.sparse`` CSR or dense, whichever measured
  faster here at load (``sparse="auto"``);
- low rank + int8 (``lowrank-int8``): :class:`LowRankQuantLinear`, two per-channel int8
  :class:`QuantLinear` (the rank padded to a multiple of 16 for PyTorch's int8 kernel);
- a quantized ``nn.Conv1d/2d/3d`` weight: :class:`QuantConv`, the codes packed, dequantized in
  each call (PyTorch has no integer-weight convolution on CPU);
- a quantized ``nn.Embedding`` table (per row, or groups along the embedding):
  :class:`QuantEmbedding`, the codes kept packed, only the looked-up rows dequantized;
- a low-rank ``nn.Conv1d/2d/3d`` weight (stored as its ``(O, I/g·Πk)`` matrix view):
  :class:`LowRankConv`, a k×k convolution to ``r`` channels per group then a 1×1 one;
- everything else (dense, sparse + low rank, sparse-coded, codebook): the
  decoded tensor is copied into the existing parameter.

Each replacement has ``.dense()`` (an equivalent ``nn.Linear``/``Conv1D`` with the decoded
weight) and works under ``torch.compile``. ``torch`` is an optional dependency.
"""

from __future__ import annotations

import copy
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._optional import require
from ._packed import QuantParts, pack_bits, tensor_shape
from ..compression.lowrank_quant import LowRankQuant
from ..compression.matrices import LowRank
from .container import Container
from .export_check import CHECK_MARGIN, least_count, stated_error

torch = require("torch", "loading a container into a PyTorch module")
nn = torch.nn
F = torch.nn.functional

__all__ = ["load_into", "LoadRow", "LoadRows", "QUANT_MODES", "LowRankLinear", "LowRankConv", "QuantLinear", "SparseLinear",
           "LowRankQuantLinear", "QuantConv", "QuantEmbedding", "quant_modes"]


def _is_conv1d(m: Any) -> bool:
    """transformers' GPT-2 style ``Conv1D`` (weight ``[in, out]``, ``y = x W + b``)."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def _like(orig: Any, A: Any, bias: Any) -> Any:
    """An ``nn.Linear`` computing ``x Aᵀ + bias`` (A ``(out, in)``)."""
    d = nn.Linear(A.shape[1], A.shape[0], bias=bias is not None)
    d.weight = nn.Parameter(A.contiguous())
    if bias is not None:
        d.bias = nn.Parameter(bias.detach().clone())
    return d


class _Compressed(nn.Module):  # type: ignore[name-defined,misc]
    in_features: int
    out_features: int
    kind: str = "linear"

    def matrix(self) -> Any:  # pragma: no cover - each subclass
        raise NotImplementedError

    def dense(self) -> Any:
        """An equivalent dense ``nn.Linear`` (or ``Conv1D``) with the decoded weight."""
        with torch.no_grad():
            A, b = self.matrix().float(), self.bias
            if self.kind != "conv1d":
                return _like(None, A, b)
            Conv1D = require("transformers.pytorch_utils", "rebuilding a Conv1D").Conv1D
            d = Conv1D(A.shape[0], A.shape[1])
            d.weight = nn.Parameter(A.t().contiguous())
            d.bias = nn.Parameter(b.detach().clone() if b is not None else torch.zeros(A.shape[0]))
            return d

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _NoWeight:
    """No dense ``weight``: ``layer.weight`` is None (not an AttributeError), so model code that
    checks ``isinstance(layer.weight, torch.Tensor)`` before a dtype cast (transformers' T5
    feed-forward) runs with the compressed layer in place."""

    weight: Any = None


class _TwoFactors(_NoWeight, _Compressed):
    """A linear layer computed as ``second(first(x))``; the bias is the second factor's."""

    @property
    def bias(self) -> Any:
        return self.second.bias

    def forward(self, x: Any) -> Any:
        return self.second(self.first(x))


class LowRankLinear(_TwoFactors):
    """``y = (x Vᵀ) Uᵀ + b`` with ``U`` ``(out, r)`` and ``V`` ``(r, in)``."""

    def __init__(self, U: Any, V: Any, bias: Any = None, kind: str = "linear"):
        super().__init__()
        self.out_features, r = U.shape
        self.in_features = V.shape[1]
        self.first = nn.Linear(self.in_features, r, bias=False)
        self.second = nn.Linear(r, self.out_features, bias=bias is not None)
        with torch.no_grad():
            self.first.weight.copy_(V)
            self.second.weight.copy_(U)
            if bias is not None:
                self.second.bias.copy_(bias)
        self.kind = kind

    @property
    def rank(self) -> int:
        return int(self.first.out_features)

    def matrix(self) -> Any:
        return self.second.weight @ self.first.weight


def _int4_group(q: QuantParts) -> int | None:
    """The group size PyTorch's int4 kernel can run ``q`` with (32–256, dividing the inputs),
    or None: codes of at most 4 bits, a per-channel scale repeated over groups."""
    if q.bits > 4 or q.inn % 32 or not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return None
    if q.group >= q.inn:
        return next(g for g in (256, 128, 64, 32) if q.inn % g == 0)
    return q.group if q.group in (32, 64, 128, 256) and q.inn % q.group == 0 else None


def _dynamic_ok(q: QuantParts) -> bool:
    """True when ``u − z`` of every code fits int8 (codes of up to 7 bits always; 8-bit codes
    when they do, e.g. symmetric ones) and PyTorch has fbgemm's ``linear_dynamic``."""
    if "fbgemm" not in torch.backends.quantized.supported_engines \
            or not hasattr(torch.ops.quantized, "linear_dynamic"):
        return False
    if q.bits <= 7:
        return True
    gi = np.arange(q.inn) // max(q.group, 1)
    d = q.codes().astype(np.int16) - q.zeros[:, gi].astype(np.int16)
    return bool(d.min(initial=0) >= -128 and d.max(initial=0) <= 127)


_REDUCE_RANGE: list[bool] = []


def _reduce_range() -> bool:
    """Whether fbgemm's u8×s8 products need 7-bit activations on this CPU, by measurement
    (once per process): without VNNI its AVX2 path adds pairs of u8×s8 products in int16 with
    saturation (255·127·2 > 32767), so a full-range activation is wrong there; with VNNI (or
    AVX-512 VNNI) the pairs accumulate in int32. The probe multiplies activations that round
    to 255 by weights of 127, at 1 and 32 rows: exact -> full range (False), else True."""
    if not _REDUCE_RANGE:
        ok = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            for m in (1, 32):
                w = torch.full((16, 256), 127, dtype=torch.int8)
                pk = _prepack(w, torch.full((16,), 2.0 ** -10))
                y = torch.ops.quantized.linear_dynamic(torch.ones(m, 256), pk, False)
                ok = ok and bool(torch.allclose(y, torch.full_like(y, 127 * 256 * 2.0 ** -10), rtol=1e-5))
        _REDUCE_RANGE.append(not ok)
    return _REDUCE_RANGE[0]


def _prepack(w: Any, s: Any) -> Any:
    """fbgemm's packed int8 weight ``w`` (out, in) with per-channel scales ``s``, no bias."""
    qw = torch._make_per_channel_quantized_tensor(w.contiguous(), s.double(),
                                                  torch.zeros(w.shape[0], dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qw, None)


@torch.compiler.disable  # type: ignore[misc]
def _dynamic_mm(x2: Any, packed: list[Any], bounds: list[int], reduce_range: bool,
                compensate: bool = False) -> Any:
    """``Σ_groups linear_dynamic(x[:, group], packed)`` (a graph break under torch.compile:
    the packed weights are TorchScript objects). ``compensate``: plus the same product of each
    group's rounding residual ``x − dq(q(x))``, ``q`` as fbgemm rounds the activations
    (``quantize_per_tensor_dynamic``: the same parameters, tested), which rounds in turn on
    its own range: the rounding error falls about 250x, for two products."""
    y = None
    for j, pk in enumerate(packed):
        xj = x2 if len(packed) == 1 else x2[:, bounds[j]:bounds[j + 1]].contiguous()
        yj = torch.ops.quantized.linear_dynamic(xj, pk, reduce_range)
        if compensate:
            xh = torch.quantize_per_tensor_dynamic(xj, torch.quint8, reduce_range).dequantize()
            yj = yj + torch.ops.quantized.linear_dynamic(xj - xh, pk, reduce_range)
        y = yj if y is None else y + yj
    return y


def quant_modes(q: QuantParts) -> list[str]:
    """The ways :class:`QuantLinear` can run ``q``: the float-activation ones fastest first
    (measured on x86-64 CPUs, torch 2.13: int4 and int8 weight-only kernels 2.5-3x faster than
    dense at one row, with bfloat16 activations; dequantizing in each call is slower than
    dense), then ``"dynamic"`` where it can run (int8 activations: fastest from a few rows,
    but it rounds the activations, so :func:`load_into` takes it only where asked, or checked
    against the container on sample inputs)."""
    modes = []
    if _int4_group(q) is not None:
        modes.append("int4")
    # the int8 kernel (torch 2.13) crashes on some shapes whose inputs are not a multiple of
    # 16 (e.g. 31 outputs x 8, 20, 100 inputs); with a multiple of 16 every shape tried ran
    if q.symmetric and q.group >= q.inn and q.inn % 16 == 0 and hasattr(torch, "_weight_int8pack_mm"):
        modes.append("int8")
    return modes + ["dequant"] + (["dynamic"] if _dynamic_ok(q) else [])


class QuantLinear(_NoWeight, _Compressed):
    """Packed integer codes with float scales; ``A = s · (u − z)`` per group of inputs.

    ``mode``:

    - ``"int4"`` (codes of 2–4 bits, groups of 32–256 or per channel):
      ``torch._weight_int4pack_mm_for_cpu`` on the packed codes, bfloat16 activations and
      scales (``A = (u − 8)·s + s·(8 − z)``; the float16 scales rounded to bfloat16, a relative
      2⁻⁹ per group: the kernel is fast only in bfloat16);
    - ``"int8"`` (symmetric per-channel codes): int8 ``u − z`` through
      ``torch._weight_int8pack_mm``, bfloat16 activations;
    - ``"dequant"``: 4- or 8-bit packed codes dequantized to float in each call (float
      exact, slower than dense);
    - ``"dynamic"`` (codes whose ``u − z`` fits int8: any of up to 7 bits, symmetric 8-bit):
      ``u − z`` as int8 with the float scales per channel, one fbgemm product
      (``torch.ops.quantized.linear_dynamic``) per group of inputs, summed; the activations
      are rounded to uint8 per tensor (per group) at each call. 2–4-bit codes take a byte
      each in memory here. Measured (torch 2.13, one thread, 768→3072): 3.8x faster than
      dense at 32 rows, 4x at one; relative output error about 9e-3 (full-range
      activations) or 1.8e-2 (7-bit, ``reduce_range``: taken on CPUs whose fbgemm saturates,
      found by a probe, see ``_reduce_range``), above an int8 container's stated error: see
      :func:`load_into`'s ``inputs``. Under ``torch.compile`` the product is a graph break.
      ``compensate=True`` adds the product of the activations' rounding residual (see
      :func:`_dynamic_mm`): about 250x closer to the float product (3e-5 relative), at
      1.0-1.1x dense at 32 rows on 256-wide layers and 0.55x at 768→3072, where the
      bfloat16 modes take 1.6-2.5x (measured, torch 2.13, one thread); :func:`load_into`'s
      output check takes it for layers whose one-pass rounding adds too much;
    - ``"auto"``: the first of :func:`quant_modes`.
    """

    def __init__(self, q: QuantParts, bias: Any = None, kind: str = "linear", mode: str = "auto",
                 compensate: bool = False):
        super().__init__()
        if compensate and mode != "dynamic":
            raise ValueError(f"compensate: only mode 'dynamic' rounds the activations, not {mode!r}")
        self.compensate = bool(compensate)
        self.out_features, self.in_features = q.out, q.inn
        self.kind = kind
        modes = quant_modes(q)
        if mode == "auto":
            mode = modes[0]
        if mode not in QUANT_MODES[1:]:
            raise ValueError(f"quant: expected {_names(QUANT_MODES)}, got {mode!r}")
        if mode not in modes:
            raise ValueError(f"quant={mode!r} cannot run {q.bits}-bit codes "
                             f"({'symmetric' if q.symmetric else 'asymmetric'}, group {q.group}); "
                             f"possible: {', '.join(modes)}")
        self.mode = mode
        self.bits = q.bits
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        if mode == "int4":
            g = _int4_group(q)
            assert g is not None
            gi = np.arange(0, q.inn, g) // max(q.group, 1)             # this group -> stored group
            s = q.scales[:, gi].astype(np.float32)                     # (out, K/g)
            z = s * (8.0 - q.zeros[:, gi].astype(np.float32))
            sz = np.stack([s.T, z.T], axis=-1)                         # (K/g, out, 2)
            codes = torch.from_numpy(q.codes().astype(np.int32))
            self.group = g
            self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes, 1))
            self.register_buffer("scales_zeros", torch.from_numpy(np.ascontiguousarray(sz)).to(torch.bfloat16))
            return
        if mode == "int8":
            w = q.codes().astype(np.int16) - q.zeros[:, :1].astype(np.int16)
            self.register_buffer("qweight", torch.from_numpy(w.astype(np.int8)))
            self.register_buffer("scales", torch.from_numpy(q.scales[:, 0].astype(np.float32)).to(torch.bfloat16))
            return
        if mode == "dynamic":
            g = min(q.group, q.inn)
            gi = np.arange(q.inn) // g
            w = q.codes().astype(np.int16) - q.zeros[:, gi].astype(np.int16)
            self.group, self.n_groups = g, q.n_groups
            self.reduce_range = _reduce_range()
            # the int8 codes live only in fbgemm's packed weights (no second copy); the state
            # dict holds them as ``qweight`` (int8, unpacked on save, packed again on load)
            self.register_buffer("scales", torch.from_numpy(q.scales.astype(np.float32)))
            self._pack(torch.from_numpy(w.astype(np.int8)))
            return
        B = 4 if q.bits <= 4 else 8
        g = q.group
        ng = q.n_groups
        codes = np.repeat(q.zeros, g, axis=1)  # padding to whole groups: the zero point (0)
        codes[:, :q.inn] = q.codes()
        self.group, self.n_groups, self.store_bits = g, ng, B
        self.register_buffer("packed", torch.from_numpy(pack_bits(codes, B)))
        self.register_buffer("scales", torch.from_numpy(q.scales.astype(np.float32)))
        self.register_buffer("zeros", torch.from_numpy(q.zeros.astype(np.float32)))

    def _pack(self, qweight: Any) -> None:
        """fbgemm's packed weights from int8 ``qweight`` and ``scales``."""
        b = list(range(0, self.in_features, self.group)) + [self.in_features]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)  # quantized tensors: deprecated
            self._packed = [_prepack(qweight[:, b[j]:b[j + 1]], self.scales[:, j])
                            for j in range(self.n_groups)]
        self._bounds = b

    def int8_codes(self) -> Any:
        """The int8 ``u − z`` (out, in) of the "int8" and "dynamic" modes (in "dynamic"
        unpacked from fbgemm's weights)."""
        if self.mode != "dynamic":
            return self.qweight
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            return torch.cat([torch.ops.quantized.linear_unpack(pk)[0].int_repr()
                              for pk in self._packed], dim=1)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.mode == "dynamic":
            destination[prefix + "qweight"] = self.int8_codes()

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: Any, unexpected_keys: Any, error_msgs: Any) -> None:
        qw = state_dict.get(prefix + "qweight") if self.mode == "dynamic" else None
        if self.mode == "dynamic":
            state_dict = {k: v for k, v in state_dict.items() if k != prefix + "qweight"}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.mode == "dynamic":
            if qw is None:
                missing_keys.append(prefix + "qweight")
            elif tuple(qw.shape) != (self.out_features, self.in_features) or qw.dtype != torch.int8:
                error_msgs.append(f"size mismatch for {prefix}qweight: int8 "
                                  f"{(self.out_features, self.in_features)} expected, got "
                                  f"{qw.dtype} {tuple(qw.shape)}")
            else:
                self._pack(qw)

    def matrix(self) -> Any:
        if self.mode == "dynamic":
            gi = torch.arange(self.in_features) // self.group
            return self.int8_codes().float() * self.scales[:, gi]
        if self.mode == "int4":
            eye = torch.eye(self.in_features, dtype=torch.bfloat16)
            # A^T = I @ A^T: the kernel's own dequantization, in float32 for the identity
            return torch._weight_int4pack_mm_for_cpu(eye.float(), self.packed, self.group,
                                                     self.scales_zeros.float()).t().contiguous()
        if self.mode == "int8":
            return self.qweight.float() * self.scales.float()[:, None]
        # by blocks of rows of about _DEQUANT_BLOCK values (L2-sized), each written once into
        # the result: the whole-matrix form made three float temporaries the size of the
        # weight, bound by memory (a 512→512 3x3 conv's 2.4M weights: 9.0 ms a call, against
        # 0.8 ms for the convolution itself; measured, torch 2.13, one thread)
        return self._dequantized(torch.empty(self.out_features, self.n_groups * self.group))

    def _dequantized(self, A: Any) -> Any:
        """The "dequant" mode's matrix written into ``A`` (out, n_groups·group), float32."""
        p = self.packed
        O, ng, g = self.out_features, self.n_groups, self.group
        step = max(1, _DEQUANT_BLOCK // max(ng * g, 1))
        for r0 in range(0, O, step):
            r1 = min(O, r0 + step)
            pb = p[r0:r1]
            u = torch.stack((pb & 15, pb >> 4), dim=-1).reshape(r1 - r0, -1) if self.store_bits == 4 else pb
            t = u[:, :ng * g].reshape(r1 - r0, ng, g).float().sub_(self.zeros[r0:r1, :, None])
            torch.mul(t, self.scales[r0:r1, :, None], out=A[r0:r1].view(r1 - r0, ng, g))
        return A if ng * g == self.in_features else A[:, :self.in_features]

    def scratch_matrix(self) -> Any:
        """:meth:`matrix` for one use in a forward: in "dequant" mode without autograd, written
        into this thread's scratch buffer (reused by every layer, as large as the largest),
        not a fresh tensor. A fresh one of a large layer's size was page-faulted in at each
        call: 512→512 3x3 conv, 2.4M weights, 4.5 ms against 0.8 ms for the convolution
        (measured, torch 2.13, one thread). With autograd the product may keep the weight
        for its backward, so it gets its own."""
        if self.mode != "dequant" or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.matrix()      # (under torch.compile: no mutation of a global buffer)
        n = self.out_features * self.n_groups * self.group
        buf = getattr(_SCRATCH, "buf", None)
        if buf is None or buf.numel() < n:
            buf = _SCRATCH.buf = torch.empty(n)
        return self._dequantized(buf[:n].view(self.out_features, -1))

    def forward(self, x: Any) -> Any:
        if self.mode == "dequant":
            return F.linear(x, self.scratch_matrix().to(x.dtype), self.bias)
        lead = x.shape[:-1]
        if self.mode == "dynamic":
            x2 = x.reshape(-1, self.in_features).float().contiguous()
            y = _dynamic_mm(x2, self._packed, self._bounds, self.reduce_range, self.compensate)
            y = y.to(x.dtype).reshape(*lead, self.out_features)
            return y if self.bias is None else y + self.bias
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.mode == "int4":
            y = torch._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_zeros)
        else:
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scales)
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


QUANT_MODES = ("auto", "int4", "int8", "dequant", "dynamic")
_DEQUANT_BLOCK = 1 << 18   # values per block of QuantLinear.matrix's dequantization (1 MB float)
_SCRATCH = threading.local()   # QuantLinear.scratch_matrix's buffer, one per thread


def _names(xs: Any) -> str:
    q = [repr(x) for x in xs]
    return ", ".join(q[:-1]) + " or " + q[-1]


def _pad8(q: QuantParts, out: int, inn: int) -> QuantParts:
    """8-bit per-channel ``q`` padded with zeros to ``(out, inn)`` (codes at the zero point,
    scale 0 on new rows)."""
    codes = np.repeat(q.zeros[:, :1], inn, axis=1)
    codes[:, :q.inn] = q.codes()
    codes = np.concatenate([codes, np.full((out - q.out, inn), 1 << (q.bits - 1), np.uint8)])
    scales = np.concatenate([q.scales, np.zeros((out - q.out, 1), q.scales.dtype)])
    zeros = np.concatenate([q.zeros, np.full((out - q.out, 1), 1 << (q.bits - 1), np.uint8)])
    return QuantParts(pack_bits(codes, 8), scales, zeros, 8, inn, q.symmetric, q.dtype, out, inn)


class LowRankQuantLinear(_TwoFactors):
    """Low rank with int8 factors (``lowrank-int8``): ``y = ((x Vᵀ) Uᵀ) + b``, each factor a
    :class:`QuantLinear` (per-channel int8 codes: PyTorch's int8 weight-only kernel)."""

    def __init__(self, first: QuantParts, second: QuantParts, bias: Any = None,
                 kind: str = "linear", mode: str = "auto"):
        super().__init__()
        r = self._rank = first.out
        if mode != "dequant" and r % 16 and first.bits == 8 == second.bits:
            # rank padded to a multiple of 16 (zero rows of V, zero columns of U: the same
            # product) so the second factor runs in the int8 kernel too
            rp = r + (-r) % 16
            first, second = _pad8(first, rp, first.inn), _pad8(second, second.out, rp)
        self.first = QuantLinear(first, None, "linear", mode)
        self.second = QuantLinear(second, bias, "linear", mode)
        self.in_features, self.out_features = first.inn, second.out
        self.kind = kind

    @property
    def rank(self) -> int:
        return int(self._rank)   # first.out_features: padded to a multiple of 16 for int8

    @property
    def mode(self) -> str:
        return str(self.first.mode)

    def matrix(self) -> Any:
        return self.second.matrix() @ self.first.matrix()


class SparseLinear(_Compressed):
    """A pruned weight through ``torch.sparse`` CSR (``use_sparse``) or dense."""

    def __init__(self, A_csr: Any, bias: Any = None, kind: str = "linear", use_sparse: bool = True):
        super().__init__()
        self.out_features, self.in_features = A_csr.shape
        self.kind = kind
        self.use_sparse = bool(use_sparse)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        W = A_csr if use_sparse else A_csr.to_dense()
        self.register_buffer("weight", W)

    def matrix(self) -> Any:
        return self.weight.to_dense() if self.use_sparse else self.weight

    def forward(self, x: Any) -> Any:
        if not self.use_sparse:
            return F.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.weight, x.reshape(-1, self.in_features).t()).t()
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


class LowRankConv(nn.Module):  # type: ignore[name-defined,misc]
    """A convolution whose weight's matrix view ``(O, I/g·Πk) = L R``: a k×k convolution to
    ``r`` channels per group (``R``, shared by the groups), then a 1×1 convolution (``L``,
    grouped alike) with the bias."""

    def __init__(self, layer: Any, L: Any, R: Any):
        super().__init__()
        cls, r, g = type(layer), int(L.shape[1]), int(layer.groups)
        self.first = cls(layer.in_channels, g * r, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, groups=g, bias=False,
                         padding_mode=layer.padding_mode)
        self.second = cls(g * r, layer.out_channels, 1, groups=g, bias=layer.bias is not None)
        with torch.no_grad():
            Rk = R.reshape((r,) + tuple(self.first.weight.shape[1:]))
            self.first.weight.copy_(Rk.repeat((g,) + (1,) * (Rk.dim() - 1)))
            self.second.weight.copy_(L.reshape(self.second.weight.shape))
            if layer.bias is not None:
                self.second.bias.copy_(layer.bias)

    @property
    def rank(self) -> int:
        return int(self.first.out_channels // self.first.groups)

    def forward(self, x: Any) -> Any:
        return self.second(self.first(x))

    def dense(self) -> Any:
        """The equivalent single convolution with the decoded weight."""
        f, s = self.first, self.second
        g, r, O = f.groups, self.rank, s.out_channels
        d = type(f)(f.in_channels, O, f.kernel_size, stride=f.stride, padding=f.padding,
                    dilation=f.dilation, groups=g, bias=s.bias is not None, padding_mode=f.padding_mode)
        with torch.no_grad():
            Lw = s.weight.reshape(g, O // g, r)
            Rw = f.weight.reshape(g, r, -1)
            d.weight.copy_(torch.bmm(Lw, Rw).reshape(d.weight.shape))
            if s.bias is not None:
                d.bias.copy_(s.bias)
        return d


class QuantConv(nn.Module):  # type: ignore[name-defined,misc]
    """A convolution whose weight's matrix view ``(O, I/g·Πk)`` is quantized: the codes kept
    packed (4 or 8 bits per weight) with their float scales (a :class:`QuantLinear` in
    ``"dequant"`` mode), the weight dequantized in each call and run by the layer's own
    convolution (PyTorch has no integer-weight convolution on CPU)."""

    def __init__(self, layer: Any, q: QuantParts):
        super().__init__()
        self.conv = layer
        self.weight_shape = tuple(layer.weight.shape)
        self.q = QuantLinear(q, None, "linear", "dequant")
        del layer.weight            # the float weight goes; forward passes the decoded one
        layer.register_buffer("weight", None, persistent=False)

    @property
    def bits(self) -> int:
        return int(self.q.bits)

    def forward(self, x: Any) -> Any:
        w = self.q.scratch_matrix().reshape(self.weight_shape).to(x.dtype)
        return self.conv._conv_forward(x, w, self.conv.bias)

    def dense(self) -> Any:
        """The equivalent convolution with the decoded weight."""
        f = self.conv
        d = type(f)(f.in_channels, f.out_channels, f.kernel_size, stride=f.stride,
                    padding=f.padding, dilation=f.dilation, groups=f.groups,
                    bias=f.bias is not None, padding_mode=f.padding_mode)
        with torch.no_grad():
            d.weight.copy_(self.q.matrix().reshape(self.weight_shape))
            if f.bias is not None:
                d.bias.copy_(f.bias)
        return d


class QuantEmbedding(nn.Module):  # type: ignore[name-defined,misc]
    """An ``nn.Embedding`` whose table ``(V, d)`` is quantized per row (or in groups along
    ``d``): the codes kept as uint8 (two 4-bit codes a byte for 2–4-bit codes) with their
    float16 scales and zero points; each call gathers the rows' codes and dequantizes only
    those rows (the table is never dense in memory)."""

    def __init__(self, layer: Any, q: QuantParts):
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.out, q.inn
        self.padding_idx = layer.padding_idx
        self.group, self.n_groups = q.group, q.n_groups
        self.nibbles = q.bits <= 4
        self.bits = q.bits
        self.register_buffer("codes", torch.from_numpy(pack_bits(q.codes(), 4 if self.nibbles else 8)))
        self.register_buffer("scales", torch.from_numpy(np.array(q.scales, np.float16)))
        self.register_buffer("zeros", torch.from_numpy(np.array(q.zeros, np.uint8)))

    def _rows(self, ids: Any) -> Any:
        c = self.codes[ids]
        if self.nibbles:
            c = torch.stack((c & 15, c >> 4), -1).flatten(-2)[..., :self.embedding_dim]
        s = self.scales[ids].float()
        z = self.zeros[ids].float()
        if self.n_groups == 1:
            return (c.float() - z) * s
        gi = torch.arange(self.embedding_dim, device=c.device) // self.group
        return (c.float() - z[..., gi]) * s[..., gi]

    def forward(self, ids: Any) -> Any:
        return self._rows(ids)

    def dense(self) -> Any:
        """The equivalent ``nn.Embedding`` with the decoded table."""
        d = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        with torch.no_grad():
            d.weight.copy_(self._rows(torch.arange(self.num_embeddings)))
        return d

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group={self.group}"


@dataclass
class LoadRow:
    """What happened to one container tensor."""

    name: str
    form: str
    how: str       # "LowRankLinear (rank 16)", "QuantLinear int8", "SparseLinear (CSR)", "copied dense"
    note: str = ""


def _time(f: Any, x: Any, reps: int = 5) -> float:
    with torch.no_grad():
        f(x)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f(x)
            ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def _replace(module: Any, path: str, new: Any) -> None:
    if path:
        parent = module.get_submodule(path.rpartition(".")[0]) if "." in path else module
        setattr(parent, path.rpartition(".")[2], new)


def _oriented(e: dict[str, Any], is_conv1d: bool) -> bool:
    """True when the container's (out, in) matrix (``M``) is the layer's ``A`` (y = x Aᵀ)."""
    # nn.Linear stores A = W [out, in]; Conv1D stores W [in, out] = Aᵀ.
    return (e["layout"] == "out_in") != is_conv1d


class LoadRows(list):  # type: ignore[type-arg]
    """The rows of :func:`load_into` (a list of :class:`LoadRow`), with what its output check
    measured (``inputs`` given, some layer in ``"dynamic"``): ``output_error`` (the loaded
    module's outputs against the container's dense decode on the sample inputs, relative L2,
    worst output) and ``stated_error`` (the container's); both None when not checked."""

    output_error: float | None = None
    stated_error: float | None = None


def _call(module: Any, inputs: Any) -> Any:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return module(**inputs)
        if isinstance(inputs, (tuple, list)):
            return module(*inputs)
        return module(inputs)


def _floats(out: Any) -> list[Any]:
    """The floating-point tensors of a module's output (tensor, tuple/list, dict or
    transformers ModelOutput), in order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in _floats(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _floats(v)]
    return []


def _rel(a: Any, b: Any) -> float:
    a64, b64 = a.double(), b.double()
    nb, d = float(b64.norm()), float((a64 - b64).norm())
    return d / nb if nb > 0 else (0.0 if d == 0 else float("inf"))


def _out_error(got: Any, ref: Any) -> float:
    g, r = _floats(got), _floats(ref)
    if len(g) != len(r) or any(a.shape != b.shape for a, b in zip(g, r)):
        return float("inf")
    return max((_rel(a, b) for a, b in zip(g, r)), default=0.0)


def _run_capture(module: Any, inputs: Any, paths: list[str],
                 outputs: bool = True) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """The module's output on ``inputs`` and each layer's (input, output or None) of its first
    call."""
    seen: dict[str, tuple[Any, Any]] = {}
    hooks = []
    for pth in paths:
        def hook(m: Any, args: Any, out: Any, pth: str = pth) -> None:
            if pth not in seen and args and isinstance(args[0], torch.Tensor):
                seen[pth] = (args[0].detach(), out.detach() if outputs else None)
        hooks.append(module.get_submodule(pth).register_forward_hook(hook))
    try:
        out = _call(module, inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _remake(parts: Any, mode: str) -> QuantLinear:
    """A :class:`QuantLinear` in ``mode`` from ``parts() -> (QuantParts, bias, kind)``."""
    q, bias, kind = parts()
    return QuantLinear(q, bias, kind, mode)


class _Decoded(_NoWeight, nn.Module):  # type: ignore[name-defined,misc]
    """The container's decode of a quantized layer for the output check's reference run: the
    weight dequantized in float in each call (nothing kept between calls). No ``weight``,
    as the layers it stands in for (transformers' T5 reads ``wo.weight`` in its forward)."""

    def __init__(self, parts: Any):
        super().__init__()
        self.parts = parts      # () -> (QuantParts, bias, kind)

    def forward(self, x: Any) -> Any:
        return _remake(self.parts, "dequant")(x)


def _check_dynamic(module: Any, inputs: Any, quants: dict[str, Any], cands: list[str],
                   rows: dict[str, LoadRow], stated: float) -> tuple[float, float] | None:
    """``quant="auto"`` with sample inputs: each quantized layer that can run ``"dynamic"``
    (int8 activations) is timed both ways on its input in the module run on ``inputs`` and
    takes the faster; the module then runs next to the container's decode (itself with every
    quantized layer ``quants`` dequantized in float: no copy of the model) and
    while its outputs are further than ``CHECK_MARGIN`` x the stated error, the dynamic
    layers adding the most error (their output's relative error less their input's) go back
    to their float-activation mode, 1, 2, 4, … of them (then bisected: at most 3 more runs).
    Returns (output error, stated error), or None when no layer took ``"dynamic"``."""
    if not cands:
        return None
    _, seen = _run_capture(module, inputs, cands, outputs=False)
    fast: dict[str, Any] = {}
    for pth in cands:
        q, bias, kind = quants[pth]()
        if pth not in seen:
            continue           # not called on these inputs: nothing to time it on
        cur = module.get_submodule(pth)
        dyn = QuantLinear(q, bias, kind, "dynamic")
        x = seen[pth][0]
        t_cur = _time(cur, x)
        if _time(dyn, x) < t_cur:
            # the layer's fallback if its rounding adds too much: the compensated product
            # where that too is faster than the float-activation mode (and closer: 3e-5
            # against bfloat16's 2e-3), else that mode (rebuilt if need be)
            two = copy.copy(dyn)          # the same packed weights and bias, not a copy
            two.compensate = True
            fast[pth] = (cur.mode, dyn, two if _time(two, x) < t_cur else None)
            _replace(module, pth, dyn)
    if not fast:
        return None
    target = CHECK_MARGIN * stated
    paths = list(fast)
    del seen
    deq = {pth: _Decoded(quants[pth]) for pth in quants}
    built: dict[str, Any] = {}

    def accurate(pth: str) -> Any:
        """The layer's fallback: compensated where that was faster, else in its
        float-activation mode (made when first asked)."""
        if fast[pth][2] is not None:
            return fast[pth][2]
        if pth not in built:
            built[pth] = _remake(quants[pth], fast[pth][0])
        return built[pth]

    def fallback(pth: str) -> str:
        return "dynamic x2" if fast[pth][2] is not None else fast[pth][0]

    now = {pth: module.get_submodule(pth) for pth in quants}

    def reference(paths: list[str]) -> tuple[Any, dict[str, tuple[Any, Any]]]:
        for pth in quants:
            _replace(module, pth, deq[pth])
        try:
            return _run_capture(module, inputs, paths)
        finally:
            for pth in quants:
                _replace(module, pth, now[pth])

    # the layers' values are kept only when the ranking needs them (memory: 2 per layer a run)
    want, _ = reference([])
    err0 = _out_error(_call(module, inputs), want)
    final, back, exact = err0, [], []
    if err0 > target:
        want, w_seen = reference(paths)
        _, g_seen = _run_capture(module, inputs, paths)

        def rel(pth: str, i: int) -> float:
            return _rel(g_seen[pth][i], w_seen[pth][i]) if pth in g_seen and pth in w_seen else 0.0

        added = {pth: rel(pth, 1) - rel(pth, 0) for pth in paths}
        order = sorted(paths, key=lambda pth: -added[pth])
        n = len(order)

        def search(pick: Any) -> tuple[int, float]:
            """The least k (1, 2, 4, …, then bisected: at most 3 more runs) whose modules
            ``pick(j, k)`` for the j-th layer bring the outputs within the target."""
            def trial(k: int) -> float:
                for j, pth in enumerate(order):
                    _replace(module, pth, pick(j, k))
                return _out_error(_call(module, inputs), want)

            k, err = least_count(n, trial, target)
            trial(k)   # the module left with the k found (the last trial may have been another)
            return k, err

        # first back to their fallback (the compensated product, or the float-activation mode
        # as without inputs: bfloat16 in int4/int8); only if all of them there are beyond the
        # stated error itself (not just the margin: without inputs the float-activation modes
        # are left so), the top ones dequantized (float exact, slower than dense) until within
        # the margin
        k1, final = search(lambda j, k: accurate(order[j]) if j < k else fast[order[j]][1])
        back = order[:k1]
        if final > stated:
            k2, final = search(lambda j, k: deq[order[j]] if j < k else accurate(order[j]))
            exact = order[:k2]
        head = (f"int8 activations (\"dynamic\", faster here) put the outputs {err0:.2g} from the "
                f"container's decode, above {CHECK_MARGIN}x its stated error {stated:.2g} (sample "
                f"inputs); ")
        for pth in back:
            r = rows[pth]
            if pth in exact:
                r.how = r.how.replace(f"QuantLinear {fast[pth][0]} ", "QuantLinear dequant ")
                _replace(module, pth, _remake(quants[pth], "dequant"))
                r.note = head + (f"all {n} went back to their fallback, and {len(exact)}, those "
                                 f"adding the most, dequantized ({final:.2g}); this one added "
                                 f"{added[pth]:.2g}")
            else:
                if fast[pth][2] is not None:
                    r.how = r.how.replace(f"QuantLinear {fast[pth][0]} ", "QuantLinear dynamic x2 ")
                r.note = head + (f"{len(back)} of {n} layers, those adding the most, kept "
                                 f"{fallback(pth)} ({final:.2g}); this one added {added[pth]:.2g}")
    if final > stated:
        warnings.warn(f"load_into: the outputs are {final:.3g} from the container's decode on the "
                      f"sample inputs, above its stated error {stated:.3g}", RuntimeWarning, stacklevel=3)
    for pth in paths:
        if pth not in back:
            r = rows[pth]
            r.how = r.how.replace(f"QuantLinear {fast[pth][0]} ", "QuantLinear dynamic ")
            r.note = (f"int8 activations: faster here than {fast[pth][0]} at the sample inputs' "
                      f"shape; outputs {final:.2g} from the container's decode (stated error {stated:.2g})")
    return final, stated


def load_into(module: Any, container: str | os.PathLike[str] | Container, *, sparse: str = "auto",
              quant: str = "auto", strict: bool = True, inputs: Any = None) -> LoadRows:
    """Load a container's tensors into ``module`` (in place), compressed layers as modules that
    compute from the compressed form (see the module docstring).

    Parameters
    ----------
    module : torch.nn.Module
        The model the container was compressed from (same parameter names and shapes).
    container : path or Container
    sparse : "auto", "sparse" or "dense"
        Pruned layers: time both at batch 1 at load and keep the faster ("auto"), or force one.
    quant : "auto", "int4", "int8", "dequant" or "dynamic"
        Quantized layers (see :class:`QuantLinear`); a forced one raises where a layer cannot
        run that way ("dynamic" rounds the activations: unchecked when forced). "auto"
        without ``inputs``: the first of :func:`quant_modes` (float activations: int4, int8,
        else dequant); with ``inputs``: also "dynamic" where it runs faster, held to the
        container's stated error (below).
    strict : bool
        Raise if a container tensor has no parameter or buffer of that name.
    inputs : tensor, tuple, list or dict, optional
        Sample inputs of ``module`` (a tuple/list passed as positional arguments, a dict as
        keywords, a tensor as the one argument), e.g. calibration inputs at a typical length.
        With ``quant="auto"``, each quantized layer that can run "dynamic" (int8
        activations, fbgemm) is timed both ways on its input there and takes the faster;
        then the module runs next to the container's decode (the same module with its
        quantized layers dequantized in float, one layer at a time in memory: no copy of
        the model) and while its outputs are further
        than ``CHECK_MARGIN`` (0.8) x the container's stated error
        (:mod:`~weightpress.model.export_check`), the dynamic layers adding the most error
        compensate their rounding (``compensate=True``: a second product over the residual,
        where that timed faster than the float-activation mode) or else go back to that
        mode, 1, 2, 4, … of them (where even all of them
        there are beyond the stated error itself, the top ones are dequantized in float, slower
        than dense, until within the margin). The rows say which, and
        the result's ``output_error``/``stated_error`` what was measured. Measured on the
        toy BERT/GPT-2 (32 tokens, torch 2.13, one thread): see benchmarks/bench_export.py.

    Returns
    -------
    LoadRows
        One LoadRow per container tensor; with ``inputs`` (and a layer that took "dynamic"),
        also the measured ``output_error`` and the container's ``stated_error``.

    Raises
    ------
    ValueError
        A tensor's shape differs from the module's, a name is missing (``strict``), or a bad
        ``sparse``/``quant`` choice.
    """
    if sparse not in ("auto", "sparse", "dense"):
        raise ValueError(f"sparse: expected 'auto', 'sparse' or 'dense', got {sparse!r}")
    if quant not in QUANT_MODES:
        raise ValueError(f"quant: expected {_names(QUANT_MODES)}, got {quant!r}")
    if inputs is not None and not isinstance(inputs, (torch.Tensor, tuple, list, dict)):
        raise TypeError(f"inputs: expected a tensor, tuple, list or dict, got {type(inputs).__name__}")
    c = container if isinstance(container, Container) else Container(container)
    check = inputs is not None and quant == "auto"
    quants: dict[str, Any] = {}   # layer path -> () -> (QuantParts, bias, kind)
    cands: list[str] = []
    by_path: dict[str, LoadRow] = {}
    params = dict(module.named_parameters(remove_duplicate=False))
    params.update(dict(module.named_buffers(remove_duplicate=False)))
    owners: dict[int, list[str]] = {}
    for n, t in params.items():
        owners.setdefault(id(t), []).append(n)
    layers = {f"{n}.weight" if n else "weight": (n, m) for n, m in module.named_modules()
              if isinstance(m, nn.Linear) or _is_conv1d(m)}
    convs = {f"{n}.weight" if n else "weight": (n, m) for n, m in module.named_modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))}
    embs = {f"{n}.weight" if n else "weight": (n, m) for n, m in module.named_modules()
            if isinstance(m, nn.Embedding)}
    rows: list[LoadRow] = []
    # Dense entries first: a layer's bias (stored after its weight) must be in the module's
    # parameter before the weight's replacement copies it; the rows keep the container's order.
    at = {name: i for i, name in enumerate(c.entries)}
    for name, e in sorted(c.entries.items(), key=lambda kv: (kv[1]["form"] != "dense", at[kv[0]])):
        if name not in params:
            if strict:
                raise ValueError(f"container: tensor {name!r} has no parameter or buffer in the module")
            continue
        p = params[name]
        if tuple(p.shape) != tensor_shape(e):
            raise ValueError(f"container: tensor {name!r} has shape {tensor_shape(e)}, the module "
                             f"{tuple(p.shape)}")
        form = e["form"]
        new, how, note = None, "copied dense", ""
        tied = [n for n in owners[id(p)] if n != name]
        if tied and form != "dense":
            note = f"dense: tied with {tied[0]} (one parameter, several uses)"
        elif name in convs and form == "lowrank":
            path, layer = convs[name]
            shape = tensor_shape(e)
            m = c.matrix(name)
            assert isinstance(m, LowRank)
            if layer.groups * m.rank >= shape[0]:
                note = (f"dense: {layer.groups} groups x rank {m.rank} channels would not be fewer "
                        f"than the {shape[0]} outputs")
            elif e["layout"] != "out_in" or tuple(e["shape"]) != (shape[0], int(np.prod(shape[1:]))):
                note = "dense: not the (out, in·k) matrix view of the conv weight"
            else:
                conv_new = LowRankConv(layer, torch.from_numpy(np.array(m.left, dtype=np.float32)),
                                       torch.from_numpy(np.array(m.right, dtype=np.float32)))
                _replace(module, path, conv_new)
                rows.append(LoadRow(name, form, f"LowRankConv (rank {conv_new.rank})"))
                continue
        elif name in convs and form == "quant":
            path, layer = convs[name]
            shape = tensor_shape(e)
            if e["layout"] != "out_in" or tuple(e["shape"]) != (shape[0], int(np.prod(shape[1:]))):
                note = "dense: not the (out, in·k) matrix view of the conv weight"
            else:
                q = QuantParts.of(c.matrix(name))
                qc = QuantConv(layer, q)
                _replace(module, path, qc)
                rows.append(LoadRow(name, form, f"QuantConv ({q.bits}-bit codes, dequantized per call)"))
                continue
        elif name in embs and form == "quant":
            path, layer = embs[name]
            if e["layout"] != "out_in" or tuple(e["shape"]) != tuple(p.shape):
                note = "dense: the quantized rows are not the table's rows"
            elif layer.max_norm is not None or layer.scale_grad_by_freq or layer.sparse:
                note = "dense: max_norm/scale_grad_by_freq/sparse embeddings need the float table"
            else:
                q = QuantParts.of(c.matrix(name))
                _replace(module, path, QuantEmbedding(layer, q))
                rows.append(LoadRow(name, form, f"QuantEmbedding ({q.bits}-bit"
                                    + (f", group {q.group})" if q.group < q.inn else ")")))
                continue
        elif name in layers and form in ("lowrank", "quant", "sparse", "lowrank-int8"):
            path, layer = layers[name]
            conv = _is_conv1d(layer)
            kind = "conv1d" if conv else "linear"
            bias = layer.bias
            # A (out, in) of the layer is the stored W (Linear) or Wᵀ (Conv1D)
            if form == "lowrank":
                m = c.matrix(name)
                assert isinstance(m, LowRank)
                L = torch.from_numpy(np.array(m.left, dtype=np.float32))
                R = torch.from_numpy(np.array(m.right, dtype=np.float32))
                U, V = (L, R) if not conv else (R.t(), L.t())       # A = U V
                new = LowRankLinear(U, V, bias, kind)
                how = f"LowRankLinear (rank {new.rank})"
            elif form == "quant":
                q = QuantParts.of(c.matrix(name))
                if _oriented(e, conv):
                    new = QuantLinear(q, bias, kind, quant)
                    how = f"QuantLinear {new.mode} ({q.bits}-bit" + (f", group {q.group})" if q.group < q.inn else ")")
                    if new.mode == "dequant":
                        note = "dequantized in each call (no packed kernel for this layout in PyTorch CPU)"
                    # (the codes read again from the container when the check needs them)
                    quants[path] = (lambda name=name, bias=bias, kind=kind:
                                    (QuantParts.of(c.matrix(name)), bias, kind))
                    if check and "dynamic" in quant_modes(q):
                        cands.append(path)
                else:
                    note = "dense: the quantized rows are the layer's inputs"
            elif form == "lowrank-int8":
                m = c.matrix(name)
                assert isinstance(m, LowRankQuant)
                if _oriented(e, conv):
                    new = LowRankQuantLinear(QuantParts.of(m.first), QuantParts.of(m.second),
                                             bias, kind, quant)
                    how = f"LowRankQuantLinear {new.mode} (rank {new.rank})"
                else:
                    note = "dense: the int8 factors' rows are the layer's inputs"
            else:
                A = np.array(c[name], dtype=np.float32)
                T = torch.from_numpy(np.ascontiguousarray(A if not conv else A.T))
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                    csr = T.to_sparse_csr()
                use = sparse == "sparse"
                if sparse == "auto":
                    x = torch.randn(1, T.shape[1])
                    use = _time(SparseLinear(csr, None, kind, True), x) < _time(SparseLinear(csr, None, kind, False), x)
                new = SparseLinear(csr, bias, kind, use)
                how = f"SparseLinear ({'CSR' if use else 'dense, faster here than CSR'})"
            if new is not None:
                _replace(module, path, new)
                rows.append(LoadRow(name, form, how, note))
                by_path[path] = rows[-1]
                continue
        elif form != "dense":
            note = ("no compressed module for this form" if name in layers or name in convs
                    else "not a Linear/Conv weight")
        value = np.array(c[name]).reshape(tuple(p.shape))  # matrix views: C-order
        with torch.no_grad():
            p.copy_(torch.from_numpy(value).to(p.dtype))
        rows.append(LoadRow(name, form, how, note))
    out = LoadRows(sorted(rows, key=lambda r: at[r.name]))
    if check and cands:
        was = [(m, m.training) for m in module.modules()]
        module.eval()            # (dropout off: the two runs must see the same computation)
        try:
            measured = _check_dynamic(module, inputs, quants, cands, by_path, stated_error(c))
        finally:
            for m, t in was:
                m.training = t
        if measured is not None:
            out.output_error, out.stated_error = measured
    return out
