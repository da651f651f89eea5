"""safetensors read and write, without the ``safetensors`` package.

The format: an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON
(``{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``), then the raw little-endian tensor data; offsets count from the
end of the header.

Reading memory-maps one tensor at a time (:class:`SafetensorsSource`); writing streams one
tensor at a time through :func:`~weightpress.io._base.atomic_write` (:func:`write_safetensors`).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._pages import release_rows
from ._base import FormatError, TensorInfo, TensorSource, atomic_write, check_shape
from ._dtypes import F8_TABLES, bf16_bits_to_float32, float32_to_bf16_bits

__all__ = ["SafetensorsSource", "write_safetensors", "DTYPES"]

# safetensors dtype name -> numpy dtype as stored (little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
    # dtypes NumPy lacks: stored as raw bits, decoded to float32.
    "BF16": np.dtype("<u2"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),
}
_DECODED = {"BF16", "F8_E4M3", "F8_E5M2"}
_NAMES = {DTYPES[k]: k for k in DTYPES if k not in _DECODED}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


_DT_NAME = {k: k for k in DTYPES}
_OUT = {k: np.dtype(np.float32) if k in _DECODED else DTYPES[k].newbyteorder("=") for k in DTYPES}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class _Entry(tuple):
    """(dtype, shape, data_offsets) of one header entry, as parsed."""

    __slots__ = ()


def _compact_object(pairs: list[tuple[str, Any]]) -> Any:
    """json ``object_pairs_hook``: a tensor entry (exactly the three keys) becomes an
    :class:`_Entry`; any other object a dict (the header itself, ``__metadata__``, junk that
    the checks reject)."""
    if len(pairs) == 3 and {k for k, _ in pairs} == _ENTRY_KEYS:
        d = dict(pairs)
        return _Entry((d["dtype"], d["shape"], d["data_offsets"]))
    return dict(pairs)


_F8 = {"F8_E4M3": F8_TABLES["float8_e4m3fn"], "F8_E5M2": F8_TABLES["float8_e5m2"]}
# one implementation of the bfloat16 conversions, shared with the other readers
bf16_to_f32 = bf16_bits_to_float32
f32_to_bf16 = float32_to_bf16_bits


class SafetensorsSource(TensorSource):
    """A ``.safetensors`` file as a lazy mapping name -> array.

    Opening reads and validates only the header; each lookup memory-maps one tensor
    (read-only). F16 is returned as float16; BF16 and 8-bit floats are decoded to float32 (a
    copy); :attr:`stored_dtypes` keeps the stored dtype names.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Raises
    ------
    FormatError
        If the file is too short, the header is not valid JSON of the expected shape, a
        dtype is unknown, or a tensor's offsets do not match its shape or lie past the end.
    FileNotFoundError, IsADirectoryError, PermissionError
        As raised by ``open``.
    """

    format = "safetensors"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{self.path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n + 8 > size:
                raise FormatError(f"{self.path}: header length {n} is past the end of the "
                                  f"file ({size} bytes): truncated or not safetensors")
            raw = f.read(n)
        try:
            text = raw.decode("utf-8")
            del raw
            # each tensor's entry becomes a compact tuple as soon as it is parsed (a dict per
            # entry, as json.loads builds, took ~40x a header of 200k empty tensors)
            header = json.loads(text, object_pairs_hook=_compact_object)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{self.path}: header is not valid JSON ({e})") from None
        except RecursionError:
            raise FormatError(f"{self.path}: header JSON nests too deeply") from None
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: header must be a JSON object")
        self._data_start = 8 + n
        data_len = size - self._data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise FormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata = dict(meta)
        del text
        # per tensor: its stored dtype name (shared strings), a TensorInfo and the data's first
        # byte; nothing else is kept (the end follows from the shape)
        self._begin: dict[str, int] = {}
        self._info: dict[str, TensorInfo] = {}
        spans = []
        for name in list(header):
            dt, shape, begin, end = self._check_entry(name, header.pop(name), data_len)
            self.stored_dtypes[name] = dt
            self._info[name] = TensorInfo(shape, _OUT[dt])
            self._begin[name] = begin
            if end > begin:
                spans.append((begin, end, name))
        del header
        # the reference implementation rejects tensors whose data ranges overlap
        spans.sort()
        for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise FormatError(f"{self.path}: tensors {n0!r} and {n1!r} overlap in the data "
                                  f"(byte {b1} < {e0})")

    def _check_entry(self, name: str, e: Any, data_len: int) -> tuple[str, tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {name!r}"
        if isinstance(e, _Entry):
            dt, shape, offs = e
        elif isinstance(e, dict) and {"dtype", "shape", "data_offsets"} <= e.keys():
            dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        else:
            raise FormatError(f"{where}: entry needs dtype, shape and data_offsets")
        if not isinstance(dt, str) or dt not in DTYPES:
            raise FormatError(f"{where}: unknown dtype {dt!r:.200} (known: {', '.join(DTYPES)})")
        dt = _DT_NAME[dt]  # one shared string per dtype name
        if not isinstance(shape, list):
            raise FormatError(f"{where}: shape must be a list of non-negative integers, got {shape!r:.200}")
        shape = check_shape(shape, DTYPES[dt].itemsize, where)
        if (not isinstance(offs, list) or len(offs) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise FormatError(f"{where}: data_offsets must be [begin, end], got {offs!r:.200}")
        begin, end = offs
        nbytes = math.prod(shape) * DTYPES[dt].itemsize
        if begin < 0 or end < begin or end - begin != nbytes:
            raise FormatError(f"{where}: data_offsets {offs} hold {end - begin} bytes, but "
                              f"{dt} {shape} needs {nbytes}")
        if end > data_len:
            raise FormatError(f"{where}: data ends at byte {end}, past the end of the data "
                              f"({data_len} bytes): file truncated")
        return dt, shape, begin, end

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        dt, shape, begin = self.stored_dtypes[name], self._info[name].shape, self._begin[name]
        raw_dt = DTYPES[dt]
        if math.prod(shape) == 0:
            arr = np.zeros(shape, dtype=raw_dt)
        else:
            arr = np.memmap(self.path, dtype=raw_dt, mode="r", offset=self._data_start + begin,
                            shape=shape)
        if dt == "BF16":
            return bf16_to_f32(arr)
        if dt in _F8:
            return _F8[dt][arr]
        if not raw_dt.isnative:
            return arr.astype(raw_dt.newbyteorder("="))
        return arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr


def _infos(tensors: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes, from ``info()`` when the mapping has it (no tensor loaded)."""
    info = getattr(tensors, "info", None)
    if callable(info):
        return {k: (tuple(v[0]), np.dtype(v[1])) for k, v in info().items()}
    out = {}
    for k in tensors:
        a = np.asarray(tensors[k])
        out[k] = (a.shape, a.dtype)
    return out


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None, *,
                      dtypes: Mapping[str, str] | None = None, durable: bool = True) -> int:
    """Write tensors to a ``.safetensors`` file, one tensor at a time, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; replaced only when writing succeeded.
    tensors : Mapping[str, array_like]
        Any mapping, including a lazy one (a :class:`~weightpress.io._base.TensorSource`:
        its ``info()`` gives the shapes up front, then each tensor is loaded once, written and
        dropped). Other mappings are read twice (shapes, then data).
    metadata : Mapping[str, str], optional
        Stored as the header's ``__metadata__``.
    dtypes : Mapping[str, str], optional
        Stored dtype per tensor name, to store float32 data as ``"BF16"`` (rounded to
        nearest even) or ``"F16"``; others are stored in their own dtype.

    Returns
    -------
    int
        The size of the written file in bytes.

    Raises
    ------
    TypeError
        A tensor of a dtype safetensors cannot hold (object, str, float128...), a non-string
        name or metadata value.
    ValueError
        A tensor whose shape or dtype differs from what ``info()`` announced, or a bad
        entry in ``dtypes``.

    ``durable=False`` skips the fsync before the file is renamed into place (scratch files:
    :func:`~weightpress.io._base.atomic_write`).
    """
    dtypes = dict(dtypes or {})
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata: keys and values must be strings, got {k!r}: {type(v).__name__}")
    infos = _infos(tensors)
    # the header is assembled from one short JSON fragment per tensor (a dict per tensor
    # cost several times the header's own size for headers of 100k+ tensors)
    frags: list[str] = []
    plan = []
    offset = 0
    for name, (shape, dt) in infos.items():
        if not isinstance(name, str):
            raise TypeError(f"tensors: names must be strings, got {name!r}")
        if name == "__metadata__":
            raise ValueError("tensors: the name '__metadata__' is reserved")
        stored = dtypes.get(name)
        if stored is None:
            stored = _NAMES.get(dt.newbyteorder("<") if dt.byteorder != "|" else dt)
            if stored is None:
                raise TypeError(f"tensors[{name!r}]: dtype {dt} cannot be stored in safetensors")
        elif stored not in ("BF16", "F16", "F32", "F64"):
            raise ValueError(f"dtypes[{name!r}]: expected 'BF16', 'F16', 'F32' or 'F64', got {stored!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[stored].itemsize
        frags.append(f'{json.dumps(name, ensure_ascii=False)}:{{"dtype":"{stored}","shape":'
                     f'[{",".join(str(int(d)) for d in shape)}],"data_offsets":[{offset},{offset + nbytes}]}}')
        plan.append((name, shape, dt, stored))
        offset += nbytes
    if meta:
        frags.insert(0, '"__metadata__":' + json.dumps(meta, separators=(",", ":"), ensure_ascii=False))
    raw = ("{" + ",".join(frags) + "}").encode("utf-8")
    del frags
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
    with atomic_write(path, durable=durable) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dt, stored in plan:
            a = np.asarray(tensors[name])
            if a.shape != tuple(shape) or a.dtype != dt:
                raise ValueError(f"tensors[{name!r}]: announced {dt} {tuple(shape)}, "
                                 f"got {a.dtype} {a.shape}")
            _write_array(f, a, stored)
            del a
    return 8 + len(raw) + offset


def _write_array(f: Any, a: np.ndarray, stored: str, chunk: int = 1 << 24) -> None:
    """Write ``a`` as little-endian ``stored`` data in chunks (no full-size temporary, also for
    a strided or stride-0 broadcast view, which is never materialised whole)."""
    contiguous = a.flags.c_contiguous
    flat = a.reshape(-1) if contiguous else a.flat
    step = max(1, chunk // max(1, a.itemsize))
    for i in range(0, a.size, step):
        part = flat[i:i + step]
        if stored == "BF16":
            part = f32_to_bf16(part.astype(np.float32, copy=False))
        else:
            part = part.astype(DTYPES[stored], copy=False)
        f.write(memoryview(np.ascontiguousarray(part)).cast("B"))
        del part
        if contiguous:  # a file-mapped array's pages, once written (a container's scratch
            release_rows(flat, i, i + step)  # files: all its layers resident, issue 13)
    if not contiguous:
        release_rows(a)
