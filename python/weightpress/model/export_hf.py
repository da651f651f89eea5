"""A container as a Hugging Face checkpoint in the compressed-tensors format.

transformers (through the ``compressed-tensors`` package) and serving engines read quantized
checkpoints whose ``config.json`` carries a ``quantization_config`` with
``quant_method = "compressed-tensors"``. :func:`export_compressed_tensors` writes one from a
container whose quantized tensors (form ``quant``, layout ``out_in``: ``nn.Linear`` weights
``[out, in]``) become, per layer ``P``:

- ``P.weight_packed``: int32 words, the codes packed densely little-endian (format
  ``pack-quantized``, 2–8 bits): exactly weightpress's row packing padded to 4 bytes, since
  compressed-tensors stores ``q + 2^(bits−1)`` and weightpress the code ``u`` with
  ``u − z = q − zp``;
- ``P.weight_scale`` ``[out, n_groups]`` in the model's float dtype (float16 scales widened
  exactly);
- ``P.weight_shape``: ``[out, in]``;
- asymmetric codes go as ``int-quantized`` instead (``P.weight`` int8 ``q``, ``P.weight_scale``,
  ``P.weight_zero_point`` int8 ``zp = z − 2^(bits−1)``): transformers builds the layers before
  loading with unpacked zero points, so packed ones fail to load.

Schemes (bits, group or channel, symmetric) become ``config_groups`` targeting the exact layer
names. Every other tensor is written dense (its decode). The sparse formats were removed
upstream; pruned and low-rank layers go dense, and the rows say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io._base import atomic_write
from ..io.safetensors import write_safetensors
from ._packed import QuantParts
from .container import Container

__all__ = ["export_compressed_tensors", "HFRow"]

_WEIGHT_FILES = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|onnx)$|\.index\.json$")


@dataclass
class HFRow:
    name: str
    form: str
    how: str
    note: str = ""


def _int32_rows(packed_bytes: np.ndarray) -> np.ndarray:
    """Rows of little-endian packed bytes as int32 words (rows padded with zero bytes)."""
    rows, nb = packed_bytes.shape
    words = -(-nb // 4)
    buf = np.zeros((rows, words * 4), dtype=np.uint8)
    buf[:, :nb] = packed_bytes
    return buf.view("<i4")


def ct_arrays(q: QuantParts, scale_dtype: Any) -> tuple[str, dict[str, np.ndarray]]:
    """The compressed-tensors format and arrays of one quantized ``(out, in)`` matrix:
    ``pack-quantized`` for symmetric codes, ``int-quantized`` (one int8 per code, zero points
    int8) for asymmetric ones: transformers builds the layer before loading with the zero
    points unpacked, so packed ones do not load."""
    off = 1 << (q.bits - 1)
    scale = q.scales.astype(scale_dtype)
    if q.symmetric:
        return "pack-quantized", {"weight_packed": _int32_rows(np.asarray(q.packed)),
                                  "weight_scale": scale,
                                  "weight_shape": np.array([q.out, q.inn], dtype=np.int64)}
    return "int-quantized", {"weight": (q.codes().astype(np.int16) - off).astype(np.int8),
                             "weight_scale": scale,
                             "weight_zero_point": (q.zeros.astype(np.int16) - off).astype(np.int8)}


def _scheme(q: QuantParts) -> dict[str, Any]:
    grouped = q.group < q.inn
    return {"num_bits": q.bits, "type": "int", "symmetric": q.symmetric,
            "strategy": "group" if grouped else "channel",
            "group_size": q.group if grouped else None, "dynamic": False,
            "block_structure": None, "actorder": None, "observer": "minmax"}


def export_compressed_tensors(container: str | os.PathLike[str] | Container,
                              output_dir: str | os.PathLike[str],
                              like_dir: str | os.PathLike[str]) -> list[HFRow]:
    """Write ``output_dir``: ``like_dir``'s configuration and tokenizer files, ``config.json``
    with the ``quantization_config``, and ``model.safetensors`` (see the module docstring).

    Parameters
    ----------
    container : path or Container
        Made from ``like_dir``'s weights (PyTorch/safetensors names, layout ``out_in``).
    output_dir : path
        Created if missing; must not be ``like_dir``.
    like_dir : path
        The original Hugging Face model directory (holds ``config.json``).

    Returns
    -------
    list of HFRow
        One per container tensor.

    Raises
    ------
    ValueError
        No ``config.json`` in ``like_dir``, or ``output_dir`` is ``like_dir``.
    """
    like_dir, output_dir = os.fspath(like_dir), os.fspath(output_dir)
    cfg_path = os.path.join(like_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"like_dir: no config.json in {like_dir!r}")
    if os.path.abspath(like_dir) == os.path.abspath(output_dir):
        raise ValueError("output_dir: must differ from like_dir")
    with open(cfg_path) as f:
        cfg = json.load(f)
    c = container if isinstance(container, Container) else Container(container)
    tensors: dict[str, np.ndarray] = {}
    groups: dict[str, dict[str, Any]] = {}
    rows: list[HFRow] = []
    for name, e in c.entries.items():
        if e["form"] == "quant" and name.endswith(".weight") and len(e["shape"]) == 2:
            q = QuantParts.of(c.matrix(name))
            if e["layout"] == "out_in":
                prefix = name[: -len(".weight")]
                sdt = np.dtype(e["dtype"]) if np.dtype(e["dtype"]).kind == "f" else np.dtype(np.float32)
                fmt, arrays = ct_arrays(q, sdt)
                for k, a in arrays.items():
                    tensors[f"{prefix}.{k}"] = a
                key = json.dumps([fmt, _scheme(q)], sort_keys=True)
                groups.setdefault(key, {"format": fmt, "targets": [], "weights": _scheme(q)})[
                    "targets"].append("re:^" + re.escape(prefix) + "$")
                rows.append(HFRow(name, "quant", f"{fmt} int{q.bits}"
                                  + (f" group {q.group}" if q.group < q.inn else " channel")))
                continue
            note = "dense: codes run along the outputs ([in, out] layout), not nn.Linear's"
        else:
            note = "" if e["form"] == "dense" else "dense: compressed-tensors has no format for this form"
        tensors[name] = np.asarray(c[name])
        rows.append(HFRow(name, e["form"], "dense", note))
    fmts = {g["format"] for g in groups.values()}
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": fmts.pop() if len(fmts) == 1 else "mixed-precision",
        "quantization_status": "compressed", "global_compression_ratio": None, "ignore": [],
        "kv_cache_scheme": None, "sparsity_config": {},
        "config_groups": {f"group_{i}": {**g, "input_activations": None, "output_activations": None}
                          for i, g in enumerate(groups.values())}}
    os.makedirs(output_dir, exist_ok=True)
    for fn in sorted(os.listdir(like_dir)):  # tokenizer and generation files, each atomically
        src = os.path.join(like_dir, fn)
        if fn != "config.json" and os.path.isfile(src) and not _WEIGHT_FILES.search(fn):
            with open(src, "rb") as fi, atomic_write(os.path.join(output_dir, fn)) as fo:
                shutil.copyfileobj(fi, fo)
    write_safetensors(os.path.join(output_dir, "model.safetensors"), tensors, {"format": "pt"})
    with atomic_write(os.path.join(output_dir, "config.json"), "w") as f:  # last: a loadable dir
        json.dump(cfg, f, indent=2)
    return rows
