"""ONNX models: weights in graph initializers and in ``Constant`` nodes, subgraphs included.

Reading scans the file (:mod:`.onnx_wire`) and memory-maps each tensor's ``raw_data`` or its
external data file; the ``onnx`` package (an optional dependency) decodes tensors held in typed
fields and writes models.
Names: an initializer's name, or for a ``Constant`` node the name of its output (the name the
graph uses). Writing replaces tensors in place in a copy of the original model.
"""

from __future__ import annotations

import collections
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._optional import require

from ._base import FormatError, TensorInfo, TensorSource, atomic_write, unique_name
from ._dtypes import bf16_bits_to_float32, float32_to_bf16_bits, stored_name
from .onnx_wire import WireTensor, scan_onnx

__all__ = ["OnnxSource", "write_onnx"]

# ONNX TensorProto.DataType -> (storage dtype, stored name, typed field holding it)
_DTYPES: dict[int, tuple[str, str, str]] = {
    1: ("<f4", "float32", "float_data"), 2: ("u1", "uint8", "int32_data"),
    3: ("i1", "int8", "int32_data"), 4: ("<u2", "uint16", "int32_data"),
    5: ("<i2", "int16", "int32_data"), 6: ("<i4", "int32", "int32_data"),
    7: ("<i8", "int64", "int64_data"), 9: ("?", "bool", "int32_data"),
    10: ("<f2", "float16", "int32_data"), 11: ("<f8", "float64", "double_data"),
    12: ("<u4", "uint32", "uint64_data"), 13: ("<u8", "uint64", "uint64_data"),
    14: ("<c8", "complex64", "float_data"), 15: ("<c16", "complex128", "double_data"),
    16: ("<u2", "bfloat16", "int32_data"),
}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_MAX_PROTO = 2**31 - 1


def import_onnx() -> Any:
    """The ``onnx`` module, or ImportError saying how to install it."""
    return require("onnx", "reading or writing ONNX models")


def _load_proto(path: str, external: bool) -> Any:
    onnx = import_onnx()
    DecodeError = require("google.protobuf.message").DecodeError

    try:
        model = onnx.load_model(path, load_external_data=external)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a valid ONNX model ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise FormatError(f"{path}: external data of the ONNX model unreadable: {e}") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise FormatError(f"{path}: not an ONNX model (no graph or IR version)")
    return model


def collect_tensors(graph: Any) -> dict[str, Any]:
    """name -> TensorProto for every initializer and Constant ``value`` in `graph` and subgraphs."""
    onnx = import_onnx()
    GRAPH, GRAPHS, TENSOR = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                             onnx.AttributeProto.TENSOR)
    out: dict[str, Any] = {}
    counters: dict[str, int] = {}

    def add(name: str, t: Any) -> None:
        out[unique_name(out, name, counters)] = t

    stack = collections.deque([graph])
    while stack:
        g = stack.popleft()
        for t in g.initializer:
            add(t.name, t)
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == TENSOR:
                        add(node.output[0], a.t)
            for a in node.attribute:
                if a.type == GRAPH:
                    stack.append(a.g)
                elif a.type == GRAPHS:
                    stack.extend(a.graphs)
    return out


def _safe_join(base: str, location: str, where: str) -> str:
    full = os.path.realpath(os.path.join(base, location))
    if os.path.isabs(location) or os.path.commonpath([full, os.path.realpath(base)]) != os.path.realpath(base):
        raise FormatError(f"{where}: external data location {location!r} escapes the model's folder")
    return full


def tensor_to_array(t: Any, base_dir: str, where: str) -> np.ndarray:
    """Decode one TensorProto (raw, typed fields or external file) to an array, lazily if external."""
    np_dt, stored, field = _DTYPES[t.data_type]
    dt = np.dtype(np_dt)
    shape = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in shape):
        raise FormatError(f"{where}: negative dimension in {shape}")
    n = math.prod(shape)
    need = n * dt.itemsize
    if t.data_location == 1:  # EXTERNAL
        kv = {e.key: e.value for e in t.external_data}
        if "location" not in kv:
            raise FormatError(f"{where}: external data without a location")
        file = _safe_join(base_dir, kv["location"], where)
        try:
            offset, length = int(kv.get("offset", 0)), int(kv.get("length", need))
            size = os.path.getsize(file)
        except (ValueError, OSError) as e:
            raise FormatError(f"{where}: external data unusable: {e}") from None
        if length != need or offset < 0 or offset + need > size:
            raise FormatError(
                f"{where}: external data {kv['location']!r} [{offset}, +{length}) does not hold "
                f"{need} bytes (file has {size})"
            )
        flat = np.memmap(file, dt, "r", offset=offset, shape=(n,)) if n else np.empty(0, dt)
    elif t.HasField("raw_data"):
        raw = t.raw_data
        if len(raw) != need:
            raise FormatError(f"{where}: raw_data holds {len(raw)} bytes, shape {shape} needs {need}")
        flat = np.frombuffer(raw, dt)
    else:
        vals = getattr(t, field)
        count = 2 * n if dt.kind == "c" else n
        if len(vals) != count:
            raise FormatError(f"{where}: {field} holds {len(vals)} values, shape {shape} needs {count}")
        if dt.kind == "c":
            flat = np.asarray(vals, "f4" if dt.itemsize == 8 else "f8").view(dt)
        elif stored in ("float16", "bfloat16"):  # int32_data holds the 16-bit patterns
            flat = np.asarray(vals, np.int64).astype(np.uint16).view(dt)
        else:
            flat = np.asarray(vals).astype(dt)
    arr = flat.reshape(shape)
    return bf16_bits_to_float32(arr) if stored == "bfloat16" else arr


class OnnxSource(TensorSource):
    """An ONNX model's weights as a lazy mapping.

    Opening scans the file's protobuf structure without decoding tensor data
    (:mod:`.onnx_wire`); tensors whose bytes are in ``raw_data`` (the usual case) or in external
    files are memory-mapped, the rare ones in typed fields are decoded with ``onnx`` on access.
    Tensors of types without a NumPy equivalent (strings, float8, int4) are left out and listed
    in :attr:`skipped` (name -> reason).
    """

    format = "onnx"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        self._base = os.path.dirname(os.path.abspath(self.path))
        self.skipped: dict[str, str] = {}
        self._tensors: dict[str, WireTensor] = {}
        self._info: dict[str, TensorInfo] = {}
        found, self.metadata = scan_onnx(self.path)
        for name, t in found.items():
            if t.data_type not in _DTYPES:
                self.skipped[name] = f"ONNX data type {t.data_type} has no NumPy equivalent"
                continue
            np_dt, stored, _ = _DTYPES[t.data_type]
            self._tensors[name] = t
            self._info[name] = TensorInfo(t.dims, "f4" if stored == "bfloat16" else np_dt)
            self.stored_dtypes[name] = stored_name(stored)

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        where = f"{self.path}[{name}]"
        np_dt, stored, _ = _DTYPES[t.data_type]
        if t.raw is not None and not t.external:
            dt = np.dtype(np_dt)
            n = math.prod(t.dims)
            if t.raw[1] != n * dt.itemsize:
                raise FormatError(f"{where}: raw_data holds {t.raw[1]} bytes, shape {t.dims} needs "
                                  f"{n * dt.itemsize}")
            arr = (np.memmap(self.path, dt, "r", offset=t.raw[0], shape=t.dims) if n
                   else np.empty(t.dims, dt))
            return bf16_bits_to_float32(arr) if stored == "bfloat16" else arr
        onnx = import_onnx()
        DecodeError = require("google.protobuf.message").DecodeError

        with open(self.path, "rb") as f:
            f.seek(t.start)
            raw = f.read(t.end - t.start)
        proto = onnx.TensorProto()
        try:
            proto.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise FormatError(f"{where}: corrupt tensor ({e})") from None
        return tensor_to_array(proto, self._base, where)


def _encode(a: np.ndarray, data_type: int, name: str) -> bytes:
    np_dt, stored, _ = _DTYPES[data_type]
    if stored == "bfloat16":
        if a.dtype.kind not in "fiub":
            raise TypeError(f"tensors[{name!r}]: cannot store dtype {a.dtype} as bfloat16")
        return float32_to_bf16_bits(a).tobytes()
    if not np.can_cast(a.dtype, np.dtype(np_dt), "same_kind"):
        raise TypeError(f"tensors[{name!r}]: dtype {a.dtype} cannot replace a {stored} tensor")
    return np.ascontiguousarray(a, dtype=np_dt).tobytes()


def write_onnx(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
               like: str | os.PathLike[str] | TensorSource) -> None:
    """Copy the ONNX model `like` to `path`, replacing initializers / Constant tensors in place.

    Parameters
    ----------
    path : str or PathLike
        Output ``.onnx`` file, written atomically; all data is embedded (no external files).
        When the replaced tensors are embedded as ``raw_data`` (the usual case) and `like` has no
        external data, the file is copied and their bytes overwritten in place, one tensor in
        memory; otherwise the model is parsed with ``onnx``, edited and serialized.
    tensors : Mapping[str, ndarray]
        Name -> new value, names as :class:`OnnxSource` lists them. Each must keep the original
        shape; values are cast to the stored type (bf16 rounded to nearest even). Tensors not
        given keep their original value.
    like : str, PathLike or OnnxSource
        The original model.

    Raises
    ------
    ValueError
        If a name is not in the model, a shape differs, or the result exceeds ONNX's 2 GB.
    TypeError
        If a dtype cannot be cast to the stored type without changing kind.
    """
    like_path = like.path if isinstance(like, TensorSource) else os.fspath(like)
    found, _ = scan_onnx(like_path)
    for name in tensors:  # check every name and shape before writing anything
        if name not in found or found[name].data_type not in _DTYPES:
            raise ValueError(f"tensors[{name!r}]: no numeric initializer or Constant of that name in {like_path}")
        shape = _shape_of(tensors, name)
        if shape != found[name].dims:
            raise ValueError(f"tensors[{name!r}]: shape {shape}, the model has {found[name].dims}")
    if all(found[n].raw is not None for n in tensors) and not any(t.external for t in found.values()):
        _patch_copy(path, tensors, found, like_path)
    else:
        _rewrite(path, tensors, like_path)


def _shape_of(tensors: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
    if isinstance(tensors, TensorSource):
        return tensors.info()[name].shape
    return tuple(int(d) for d in np.shape(tensors[name]))


def _patch_copy(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
                found: dict[str, WireTensor], like_path: str) -> None:
    """The tensors to replace are raw_data in the file: copy it and overwrite their bytes.

    Same shape and stored type means the same byte length, so the copy stays a valid model with
    everything else (graph, names, metadata, doc strings) byte for byte as it was; one tensor at
    a time is in memory.
    """
    with atomic_write(path, "w+b") as f:
        with open(like_path, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 22)
        for name in tensors:
            t = found[name]
            raw = _encode(np.asarray(tensors[name]), t.data_type, name)
            if t.raw is None or len(raw) != t.raw[1]:
                raise FormatError(f"{like_path}[{name}]: raw_data does not match the tensor's shape")
            f.seek(t.raw[0])
            f.write(raw)
            del raw


def _rewrite(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], like_path: str) -> None:
    """Typed-field or external tensors: parse the whole model with onnx, replace, serialize."""
    model = _load_proto(like_path, external=True)
    index = collect_tensors(model.graph)
    for name in tensors:
        t = index[name]
        raw = _encode(np.asarray(tensors[name]), t.data_type, name)
        for field in _TYPED_FIELDS:
            t.ClearField(field)
        t.ClearField("external_data")
        t.data_location = 0
        t.raw_data = raw
    for t in collect_tensors(model.graph).values():  # anything still external is now loaded
        if t.data_location == 1:
            t.ClearField("external_data")
            t.data_location = 0
    if model.ByteSize() > _MAX_PROTO:
        raise ValueError(f"{path}: the model would exceed ONNX's 2 GB single-file limit")
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
