"""Model files in and out, without the framework that wrote them.

:func:`open_model` opens a checkpoint as a lazy :class:`TensorSource` (name -> ndarray, header
first, one tensor in memory at a time, memory-mapped where the format allows);
:func:`save_model` writes dense tensors back, atomically. Formats:

============  =====================================  ==============================
format        files                                  needs
============  =====================================  ==============================
safetensors   ``.safetensors``                       —
npz, npy      ``.npz`` (zip of .npy), ``.npy``       —
pytorch       ``.pt``/``.pth``/``.bin`` zip (torch    — (never torch, never
              >= 1.6 ``torch.save``) and legacy      arbitrary pickle)
              pickle checkpoints
onnx          ``.onnx`` (+ external data files)      ``onnx`` (extra ``[onnx]``)
keras         ``.keras`` archive, ``.h5``/``.hdf5``  ``h5py`` (extra ``[keras]``)
============  =====================================  ==============================
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from ._base import FormatError, TensorInfo, TensorSource, atomic_write
from ._dtypes import stored_name
from ._zip import ZIP_ERRORS
from .keras import KerasSource, write_keras
from .npz import NpySource, NpzSource, write_npy, write_npz
from .onnx_graph import OnnxSource, write_onnx
from .pytorch import PyTorchSource, write_pytorch
from .pytorch_legacy import LegacyPyTorchSource, is_legacy_pytorch
from .safetensors import SafetensorsSource, write_safetensors
from .shards import ShardedSource, write_sharded

__all__ = [
    "FORMATS",
    "FormatError",
    "TensorInfo",
    "TensorSource",
    "atomic_write",
    "detect_format",
    "open_model",
    "save_model",
]

FORMATS = ("safetensors", "npz", "npy", "onnx", "pytorch", "keras")
_ALIASES = {"torch": "pytorch", "pt": "pytorch", "pth": "pytorch", "h5": "keras", "hdf5": "keras",
            "st": "safetensors"}
_EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz", ".npy": "npy", ".onnx": "onnx",
               ".pt": "pytorch", ".pth": "pytorch", ".bin": "pytorch", ".ckpt": "pytorch",
               ".keras": "keras", ".h5": "keras", ".hdf5": "keras"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _normalize(format: str | None) -> str | None:
    if format is None:
        return None
    if not isinstance(format, str):
        raise TypeError(f"format: expected a str or None, got {type(format).__name__}")
    f = _ALIASES.get(format.lower().lstrip("."), format.lower().lstrip("."))
    if f not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    return f


def _zip_format(path: str, ext: str) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: corrupt or truncated zip archive ({e})") from None
    if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
        return "pytorch"
    if "model.weights.h5" in names:
        return "keras"
    if all(n.endswith((".npy", "/")) for n in names) and (names or ext == ".npz"):
        return "npz"
    if ext in _EXTENSIONS and ext not in (".npy", ".safetensors", ".onnx", ".h5", ".hdf5"):
        return _EXTENSIONS[ext]  # the reader says what is missing
    raise FormatError(f"{path}: a zip archive, but not a PyTorch checkpoint, .keras archive or .npz")


def _check_file(path: str | os.PathLike[str]) -> str:
    """`path` as a str, if it is an existing regular file (a FIFO or device could block reads)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such model file", path)
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "not a regular file"
        raise FormatError(f"{path}: is {what}, expected a model file")
    return path


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name of the format of the model file at `path`, from its first bytes, else its extension.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    FormatError
        If `path` is not a regular file or its format cannot be told.
    """
    path = _check_file(path)
    ext = os.path.splitext(path)[1].lower()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(_HDF5_MAGIC):
        return "keras"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_format(path, ext)
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and _EXTENSIONS.get(ext) == "pytorch":
        return "pytorch"  # legacy pickle checkpoint: the reader explains
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if size == 0:
        raise FormatError(f"{path}: empty file")
    raise FormatError(
        f"{path}: unknown model format (expected one of {', '.join(FORMATS)}); pass format=..."
    )


def _reader(fmt: str) -> type[TensorSource]:
    if fmt == "pytorch-legacy":
        return LegacyPyTorchSource
    return {"safetensors": SafetensorsSource, "npz": NpzSource, "npy": NpySource,
            "onnx": OnnxSource, "pytorch": PyTorchSource}.get(fmt, KerasSource)


def open_model(path: str | os.PathLike[str], format: str | None = None) -> TensorSource:
    """Open a model file as a lazy read-only mapping name -> ndarray.

    Parameters
    ----------
    path : str or PathLike
        The model file.
    format : str, optional
        One of :data:`FORMATS` (aliases: ``torch``, ``h5``); detected from the file's magic bytes
        and extension when omitted.

    Returns
    -------
    TensorSource
        Listing names, shapes and dtypes (``.info()``) reads headers only; indexing reads or
        memory-maps one tensor. bf16 tensors come back as float32; ``stored_dtypes`` gives
        every tensor's stored type in safetensors' spelling (``"BF16"``, ``"F16"``, ``"F32"``,
        ``"I64"``...), whatever the format. Use it as a context manager to release the file.

    Raises
    ------
    FormatError
        If the file is corrupt, truncated, of an unknown format, or (PyTorch) its pickle names a
        global outside the allow-list.
    ImportError
        If the format needs an optional package that is missing (``onnx``, ``h5py``).
    """
    if format is None and os.fspath(path).endswith(".index.json"):
        return ShardedSource(_check_file(path), open_model)
    fmt = _normalize(format) or detect_format(path)
    path = _check_file(path)
    if fmt == "pytorch":
        if is_legacy_pytorch(path):
            fmt = "pytorch-legacy"
    cls = _reader(fmt)
    try:
        return cls(path)
    except (FormatError, ImportError, FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError, EOFError, struct.error, KeyError, IndexError, TypeError,
            UnicodeDecodeError, OverflowError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path}: corrupt {fmt} file ({type(e).__name__}: {e})") from None


def _output_format(path: str, format: str | None, like: TensorSource | None) -> str:
    fmt = _normalize(format)
    if fmt is None:
        fmt = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if fmt is None and like is not None and like.format in FORMATS:
        fmt = like.format
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the output format from the extension; pass format=...")
    return fmt


def _half_dtypes(tensors: Mapping[str, np.ndarray], src: TensorSource | None) -> dict[str, str]:
    """safetensors dtype per name for tensors `src` stored as bf16/fp16 (written back so)."""
    if src is None:
        return {}
    st = {k: stored_name(v) for k, v in src.stored_dtypes.items()}
    return {k: v for k, v in st.items() if v in ("BF16", "F16") and k in tensors}


def save_model(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
               format: str | None = None, *, like: TensorSource | str | os.PathLike[str] | None = None,
               metadata: dict[str, str] | None = None,
               shards: Mapping[str, str] | None = None) -> None:
    """Write dense tensors to a model file, atomically (never a half-written output).

    A path ending in ``.index.json`` (``model.safetensors.index.json``,
    ``pytorch_model.bin.index.json``) writes a sharded checkpoint: the shards beside it, grouped
    as `shards` (name -> shard file name) says.

    Parameters
    ----------
    path : str or PathLike
        Output file.
    tensors : Mapping[str, ndarray]
        Name -> array; may be lazy (a :class:`TensorSource`), written one tensor at a time.
    format : str, optional
        One of :data:`FORMATS`; from `path`'s extension, else `like`'s format, when omitted.
    like : TensorSource or path, optional
        The original model. Required for ONNX and ``.keras`` output (tensors are replaced in
        place in a copy of it, everything else is kept); for ``.h5`` it keeps the file's layout.
        Tensors stored there as bf16/fp16 are written back in that dtype (PyTorch, ONNX, Keras).
        Defaults to `tensors` itself when that is a TensorSource.
    metadata : dict[str, str], optional
        Header metadata (safetensors only); defaults to `like`'s when that is a safetensors file.

    Raises
    ------
    ValueError
        Unknown format, a directory as `path`, ONNX/.keras output without `like`, a name or
        shape that does not match `like`, or several tensors for ``.npy``.
    TypeError
        Non-numeric arrays or dtypes the format cannot store.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected an output file path")
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors: expected a mapping name -> array, got {type(tensors).__name__}")
    own = False
    if like is not None and not isinstance(like, TensorSource):
        like, own = open_model(like), True
    try:
        src = like if like is not None else (tensors if isinstance(tensors, TensorSource) else None)
        if format is None and path.endswith(".index.json"):
            write_sharded(path, tensors, weight_map=shards, metadata=metadata)
            return
        fmt = _output_format(path, format, src)
        if fmt == "safetensors":
            # header metadata is copied only from an original safetensors file named by like=
            # (a container's own metadata would make the dense output look like a container)
            keep = like is not None and like.format == "safetensors"
            meta = metadata if metadata is not None else (dict(like.metadata) if keep else None)
            write_safetensors(path, tensors, metadata=meta or None, dtypes=_half_dtypes(tensors, src))
        elif fmt == "npz":
            write_npz(path, tensors)
        elif fmt == "npy":
            if len(tensors) != 1:
                raise ValueError(f"{path}: a .npy file holds one array, got {len(tensors)} tensors")
            write_npy(path, tensors[next(iter(tensors))])
        elif fmt == "pytorch":
            write_pytorch(path, tensors, like=src)
        elif fmt == "onnx":
            if src is None or src.format != "onnx":
                raise ValueError(f"{path}: writing ONNX needs like= the original ONNX model")
            write_onnx(path, tensors, like=src)
        else:
            write_keras(path, tensors, like=src if src is not None and src.format == "keras" else None)
    finally:
        if own and like is not None:
            like.close()
