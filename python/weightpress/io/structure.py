"""What a container keeps besides the weights, so it can give the model back by itself.

- ONNX: the graph with every numeric tensor's data removed (:func:`onnx_skeleton`), and which
  operator reads each initializer (:func:`onnx_uses`, for matrix views of Conv/LSTM weights);
  :func:`write_onnx_skeleton` fills the weights back in.
- Keras (``.keras`` archives and ``.h5`` files): the HDF5 file with every numeric dataset
  created but never written (HDF5 allocates no space for it), so groups, attributes, layer and
  weight names survive; for ``.keras`` also the archive's other members (config, metadata).
  :func:`write_keras_skeleton` rebuilds the file with the weights in it.

Skeletons are zlib-compressed bytes: store them as one ``uint8`` array.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import FormatError, TensorSource, atomic_write
from .keras import import_h5py
from .onnx_graph import (_DTYPES, _MAX_PROTO, _TYPED_FIELDS, _encode, _load_proto, collect_tensors,
                         import_onnx)

__all__ = ["onnx_uses", "onnx_skeleton", "write_onnx_skeleton", "keras_skeleton",
           "write_keras_skeleton", "skeleton_of", "write_from_skeleton"]


def onnx_uses(path: str) -> dict[str, list[tuple[str, int, dict[str, Any]]]]:
    """name -> [(op_type, input index, int attributes)] for every tensor the graph reads."""
    onnx = import_onnx()
    model = _load_proto(path, external=False)
    out: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
            for i, inp in enumerate(node.input):
                if inp:
                    out.setdefault(inp, []).append((node.op_type, i, attrs))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return out


def onnx_skeleton(path: str, names: set[str]) -> bytes:
    """The ONNX model at `path` with the data of tensors `names` removed, zlib-compressed."""
    model = _load_proto(path, external=False)
    for name, t in collect_tensors(model.graph).items():
        if name in names:
            for f in _TYPED_FIELDS:
                t.ClearField(f)
            t.ClearField("raw_data")
            t.ClearField("external_data")
            t.data_location = 0
    return zlib.compress(model.SerializeToString(), 6)


def write_onnx_skeleton(path: str | os.PathLike[str], blob: bytes,
                        tensors: Mapping[str, np.ndarray]) -> None:
    """Write the model of skeleton `blob` with `tensors` filled in (raw data), atomically."""
    onnx = import_onnx()
    model = onnx.ModelProto()
    model.ParseFromString(zlib.decompress(blob))
    index = collect_tensors(model.graph)
    for name in tensors:
        if name not in index:
            raise ValueError(f"tensors[{name!r}]: not in the stored ONNX graph")
        t = index[name]
        a = np.asarray(tensors[name])
        if tuple(a.shape) != tuple(int(d) for d in t.dims) or t.data_type not in _DTYPES:
            raise ValueError(f"tensors[{name!r}]: shape {a.shape}, the graph has {tuple(t.dims)}")
        t.raw_data = _encode(a, t.data_type, name)
    missing = [n for n, t in index.items() if n not in tensors and t.data_type in _DTYPES
               and not t.raw_data and int(np.prod(t.dims)) > 0 and not _has_typed(t)]
    if missing:
        raise ValueError(f"tensors: the graph needs {missing[0]!r}, which was not given")
    if model.ByteSize() > _MAX_PROTO:
        raise ValueError(f"{path}: the model would exceed ONNX's 2 GB single-file limit")
    with atomic_write(path) as f:
        f.write(model.SerializeToString())


def _has_typed(t: Any) -> bool:
    return any(len(getattr(t, f)) for f in _TYPED_FIELDS)


# -- Keras ------------------------------------------------------------------------------------

def _h5_skeleton(src_h5: Any, numeric: set[str]) -> bytes:
    h5py = import_h5py()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as out:
        for k, v in src_h5.attrs.items():
            out.attrs[k] = v

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                g = out.require_group(name)
            elif name in numeric:
                g = out.create_dataset(name, shape=obj.shape, dtype=obj.dtype)  # no data written
            else:
                g = out.create_dataset(name, data=obj[()], dtype=obj.dtype)
            for k, v in obj.attrs.items():
                g.attrs[k] = v

        src_h5.visititems(visit)
    return buf.getvalue()


def keras_skeleton(source: TensorSource) -> bytes:
    """A Keras source's file without its weights (see the module docstring), zlib-compressed."""
    numeric = set(source.info())
    h5 = _h5_skeleton(source._h5, numeric)  # type: ignore[attr-defined]
    zf = getattr(source, "_zf", None)
    members: dict[str, str] = {}
    if zf is not None:
        for zi in zf.infolist():
            if zi.filename != "model.weights.h5":
                members[zi.filename] = zf.read(zi).decode("latin1")
    head = json.dumps({"archive": zf is not None, "members": members}).encode()
    return zlib.compress(len(head).to_bytes(8, "little") + head + h5, 6)


def write_keras_skeleton(path: str | os.PathLike[str], blob: bytes,
                         tensors: Mapping[str, np.ndarray]) -> None:
    """Rebuild the Keras file of skeleton `blob` with `tensors` written into it, atomically."""
    h5py = import_h5py()
    raw = zlib.decompress(blob)
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n])
    buf = io.BytesIO(raw[8 + n:])
    with h5py.File(buf, "r+") as h5:
        for name in tensors:
            ds = h5.get(name)
            if ds is None or not isinstance(ds, h5py.Dataset):
                raise ValueError(f"tensors[{name!r}]: no dataset of that name in the stored file")
            a = np.asarray(tensors[name])
            if a.shape != ds.shape:
                raise ValueError(f"tensors[{name!r}]: shape {a.shape}, the file has {ds.shape}")
            ds[...] = a.astype(ds.dtype, copy=False)
    data = buf.getvalue()
    with atomic_write(path) as f:
        if not head["archive"]:
            f.write(data)
            return
        with zipfile.ZipFile(f, "w") as zf:
            for name, text in head["members"].items():
                zf.writestr(name, text.encode("latin1"))
            zf.writestr("model.weights.h5", data)


def skeleton_of(source: TensorSource) -> tuple[str, bytes] | None:
    """(kind, zlib bytes) of what `source`'s format needs besides the weights, or None."""
    fmt = getattr(source, "format", "")
    try:
        if fmt == "onnx":
            return "onnx", onnx_skeleton(source.path, set(source.info()))
        if fmt == "keras" and hasattr(source, "_h5"):
            kind = "keras" if getattr(source, "_zf", None) is not None else "h5"
            return kind, keras_skeleton(source)
    except (ImportError, FormatError):
        return None
    return None


def write_from_skeleton(path: str | os.PathLike[str], kind: str, blob: bytes,
                        tensors: Mapping[str, np.ndarray]) -> None:
    """Write a model of `kind` (``onnx``, ``keras``, ``h5``) from its skeleton and weights."""
    if kind == "onnx":
        write_onnx_skeleton(path, blob, tensors)
    elif kind in ("keras", "h5"):
        write_keras_skeleton(path, blob, tensors)
    else:
        raise ValueError(f"skeleton kind {kind!r} is not known")
