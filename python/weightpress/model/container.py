"""The compressed-model container: one safetensors file plus JSON metadata.

Layout (format version 2, written since issue 11; version 1 files are still read). The
safetensors ``__metadata__`` holds only ``format = "weightpress.container"``,
``format_version`` and ``header_crc32``; the metadata itself (the source file's name, format
and size, and ``tensors``) is JSON, zlib-compressed, in the uint8 tensor
``__weightpress_header__`` (its CRC-32 in ``header_crc32``). Stored arrays of at most
:data:`BLOB_MAX` bytes are concatenated, in entry order, into the uint8 tensor
``__weightpress_blob__`` and an entry names them as ``[dtype, shape]`` (a safetensors dtype
name); larger ones are safetensors tensors of their own: a large tensor kept dense under its
own name (so any safetensors reader sees it), a compressed one as ``"<name>::<role>"`` arrays
(``data``/``indices``/``indptr``, ``left``/``right``...). So a container of many small tensors
pays a few bytes of header per tensor, not a safetensors entry per stored array.

Version 1 kept every array as its own safetensors tensor and the metadata as JSON strings in
``__metadata__``. ``tensors`` is a JSON object, per tensor, in the source's order::

    {"form": "sparse", "shape": [256, 64], "dtype": "float32", "stored_dtype": "F32",
     "layout": "out_in", "parts": {"data": "fc1.weight::data", ...},
     "crc32": {"data": 123, ...}, "params": 3277, "bytes": 20229, "orig_bytes": 65536,
     "error": 0.41, "norm": 12.3, "norm_hat": 11.2, "inner": 125.4,
     "method": "prune", "reason": ""}

``crc32`` is taken over each stored array's bytes; ``norm``, ``norm_hat`` and ``inner`` are
``‖W‖_F``, ``‖Ŵ‖_F`` and ``⟨W, Ŵ⟩``, so :func:`verify` can check the stored error
(``error² = (‖W‖² − 2⟨W,Ŵ⟩ + ‖Ŵ‖²) / ‖W‖²``) against the decoded tensor without the original.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._core import __version__
from ..compression.storage import array_nbytes, dense_nbytes
from ..compression.matrices import CompressedMatrix, Dense, error_stats, from_parts, store_as
from ..io._base import FormatError, TensorInfo, TensorSource, make_temp
from ..io.safetensors import DTYPES, SafetensorsSource, bf16_to_f32, f32_to_bf16, write_safetensors
from ..linalg.memory import release_rows

__all__ = ["header_estimate", "ContainerWriter", "Staged", "stage_tensor", "Container", "open_container", "verify", "VerifyResult",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "weightpress.container"
FORMAT_VERSION = 2
READ_VERSIONS = ("1", "2")
SEP = "::"
STRUCTURE_KEY = "__weightpress_structure__"
HEADER_KEY = "__weightpress_header__"
BLOB_KEY = "__weightpress_blob__"
BLOB_MAX = 1 << 16  # stored arrays up to this size share the blob (copied out when read)
_HEADER_LIMIT = 1 << 30  # most bytes a compressed header may decode to
_BLOB_DTYPES = {k: v for k, v in DTYPES.items() if k not in ("F8_E4M3", "F8_E5M2")}


# stored arrays per tensor by the method that makes it (dense: 1; CSR: data, indices, indptr...)
# (quant: codes, scales, zero points, qmeta, and a CSR correction when it fills a budget; auto
# usually picks a 2-3 array form: the ratio search measures the file and corrects the rest)
_PARTS_PER_METHOD = {"skip": 1, "keep": 1, "prune": 3, "nm": 3, "lowrank": 2, "slr": 5,
                     "code": 4, "quant": 7, "lowrank-int8": 6, "auto": 3}


def header_estimate(tensors: Mapping[str, str]) -> int:
    """About how many bytes the container's header will take for ``tensors`` (name -> method,
    ``"skip"`` for a tensor kept dense): the safetensors header of the header and blob tensors,
    and the compressed JSON metadata (per tensor its entry, per stored array its dtype, shape
    and checksum). Measured on the digits model's containers (6 tensors, 833-907 bytes) it
    is within 5 %; a header of many alike tensors compresses far better (20,000 empty
    tensors: 3 bytes each, estimated 60). A stored array over :data:`BLOB_MAX` bytes adds a
    safetensors entry (~100 bytes) it does not count, negligible beside that array."""
    return 330 + sum(60 + len(n.encode()) // 4 + 10 * min(3, _PARTS_PER_METHOD.get(m, 5))
                     for n, m in tensors.items())


# numbers every tensor's metadata entry carries (verify and the report read them)
_NUMERIC_FIELDS = ("error", "norm", "norm_hat", "inner", "params", "bytes", "orig_bytes")


def _crc(a: np.ndarray) -> int:
    """CRC-32 of an array's bytes in little-endian order (0-D and empty arrays too), taken in
    chunks so a strided array is never copied whole."""
    a = np.asarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
        a = a.astype(a.dtype.newbyteorder("<"))
    crc = 0
    flat = a.reshape(-1) if a.flags.c_contiguous else a.flat
    step = max(1, (1 << 24) // max(1, a.itemsize))
    for i in range(0, a.size, step):
        crc = zlib.crc32(np.ascontiguousarray(flat[i:i + step]).view(np.uint8), crc)
    return crc


_LITTLE = np.little_endian


def _compact(a: np.ndarray) -> np.ndarray | None:
    """The smallest array that broadcasts to `a` when `a` is an expanded (stride-0) view of it,
    else None: such a tensor is stored once, never materialised."""
    if a.ndim == 0 or a.size <= 1 or all(s != 0 for s in a.strides):
        return None
    idx = tuple(slice(0, 1) if (s == 0 and n > 1) else slice(None) for s, n in zip(a.strides, a.shape))
    return np.ascontiguousarray(a[idx])


def _flat2(a: np.ndarray) -> np.ndarray:
    if a.ndim >= 2:  # explicit column count: -1 cannot be inferred when a dimension is 0
        return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))
    return a.reshape(1, a.size)


def _blocks(obj: CompressedMatrix | None, arr: np.ndarray | None) -> Any:
    """Row blocks of a compressed matrix, or of a dense array of any shape."""
    if obj is not None and arr is None:
        yield from obj.blocks()
        return
    flat = _flat2(np.asarray(arr))
    step = max(1, (1 << 20) // max(1, flat.shape[1]))
    for r in range(0, flat.shape[0], step):
        yield r, r + step, flat[r:r + step]


class _Spill(TensorSource):
    """Arrays appended to a scratch file, read back memory-mapped (one at a time)."""

    format = "spill"

    def __init__(self, path: str):
        super().__init__(path)
        self._f = open(path, "w+b")  # noqa: SIM115 - closed in close()
        fd_path = f"/proc/self/fd/{self._f.fileno()}"
        if os.path.exists(fd_path):
            # Linux: the name goes now and the open descriptor keeps the bytes, read back
            # through /proc/self/fd: a run killed by SIGKILL (no handler runs) leaves no
            # scratch file behind (issue 15)
            with contextlib.suppress(OSError):
                os.unlink(path)
                self.path = fd_path
        self._index: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}
        self._info: dict[str, TensorInfo] = {}

    def append(self, key: str | None, a: np.ndarray) -> None:
        """Append `a`'s bytes (little-endian); `key` None: bytes only, not read back by name
        (the blob of small arrays: 40k empty tensors' index entries were 2x the input)."""
        a = np.asarray(a)
        shape = a.shape  # np.ascontiguousarray would turn a 0-D array into shape (1,)
        native = a.dtype.newbyteorder("=") if not a.dtype.isnative else a.dtype
        le = native.newbyteorder("<") if native.byteorder not in "|<" else native
        if key is not None:
            self._index[key] = (shape, native, self._f.tell())
            self._info[key] = TensorInfo(shape, native)
        flat = a.reshape(-1) if a.flags.c_contiguous else a.flat
        step = max(1, (1 << 24) // max(1, a.itemsize))
        for i in range(0, a.size, step):
            part = np.ascontiguousarray(flat[i:i + step]).astype(le, copy=False)
            self._f.write(part.view(np.uint8).data)

    def finish(self) -> None:
        self._f.flush()  # (open until close(): an unnamed scratch file lives on its descriptor)

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        shape, dt, off = self._index[name]
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dt)
        return np.memmap(self.path, dtype=dt, mode="r", offset=off, shape=shape).view(np.ndarray)

    def close(self) -> None:
        self._f.close()


def _st_name(dt: np.dtype) -> str | None:
    """The safetensors name of a NumPy dtype (None if it has none)."""
    d = np.dtype(dt)
    d = d.newbyteorder("<") if d.byteorder not in "|<" else d
    return next((k for k, v in _BLOB_DTYPES.items() if v == d and k != "BF16"), None)


# zlib preset dictionary of the version-2 header: the strings every header repeats, so a
# header of a few tensors codes them as references (digits model: ~250 bytes less). Part of
# format version 2: never change it (a new dictionary needs a new format version).
_ZDICT = (
    '{"weightpress_version":"0.1.0","source":{"bytes":"","format":"safetensors","name":".safetensors"'
    ',"weight_map":"{}},"source_metadata":{},"not_stored":{},"structure":{"bytes":,"crc32":,"key":'
    '"__weightpress_structure__","kind":"onnx"},"tensors":{"'
    '"form":"lowrank","parts":{"left":["F32",[,]],"right":["F32",[,]]},"crc32":{"left":,"right":},'
    '"form":"sparse+lowrank","parts":{"sparse.data":["F32",[]],"sparse.indices":["U16",[]],'
    '"sparse.indptr":["I32",[]],"lowrank.left":["F32",[,]],"lowrank.right":["F32",[,]]},'
    '"view":{"kind":"conv","shape":[,,,],"layout":"in_out"},"expanded":true,"storage":"BF16",'
    '"stored_dtype":"BF16","dtype":"float16","values_dtype":"float16","method":"prune","method":"auto",'
    '"method":"lowrank","label":"int4g64","label":"int8","reason":"compressed to reach ratio ",'
    '"reason":"rule *.weight=","reason":"1-D tensor, not a matrix; stored as float16",'
    '"form":"sparse","parts":{"data":["F32",[]],"indices":["U8",[]],"indptr":["I32",[]]},'
    '"crc32":{"data":,"indices":,"indptr":},'
    '"form":"quant","parts":{"scales":["F16",[,1]],"qmeta":["I32",[5]],"packed.zst":["U8",[]],'
    '"packed":["U8",[,]]},"crc32":{"scales":,"qmeta":,"packed.zst":,"packed":},"method":"quant",'
    '"reason":"rule *.weight=quant","label":"int2","output_error":0.'
    '{"form":"dense","shape":[],"dtype":"float32","stored_dtype":"F32","layout":"out_in","parts":'
    '{"values":["F32",[]]},"crc32":{"values":},"params":,"bytes":,"orig_bytes":,"method":"keep",'
    '"reason":"1-D tensor, not a matrix","error":0.0,"norm":,"norm_hat":,"inner":}},"'
).encode("utf-8")


def encode_header(text: str | Iterable[str]) -> np.ndarray:
    """The header tensor's bytes: ``text`` UTF-8, zlib level 9 with the format's preset
    dictionary. ``text`` may come in pieces (the same bytes: deflate does not depend on how
    its input is split), so a header of many tensors is never held whole."""
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    out = bytearray()
    for piece in ((text,) if isinstance(text, str) else text):
        out += c.compress(piece.encode("utf-8"))
    out += c.flush()
    return np.frombuffer(bytes(out), np.uint8)


def decode_header(a: np.ndarray, where: str) -> dict[str, Any]:
    """The metadata in a header tensor (FormatError when it is not a bounded zlib stream of a
    JSON object)."""
    d = zlib.decompressobj(15, _ZDICT)
    try:
        raw = d.decompress(np.ascontiguousarray(a, dtype=np.uint8).tobytes(), _HEADER_LIMIT)
    except zlib.error as e:
        raise FormatError(f"{where}: container header does not decompress ({e})") from None
    if d.unconsumed_tail:
        raise FormatError(f"{where}: container header decodes to more than {_HEADER_LIMIT} bytes")
    if not d.eof or d.unused_data:
        raise FormatError(f"{where}: container header is truncated or has trailing bytes")
    try:
        head = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{where}: container header is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(head, dict):
        raise FormatError(f"{where}: container header must be a JSON object")
    return head


class _Arrays(TensorSource):
    """What a version-2 container file holds, in order: the header, the blob, the large arrays."""

    format = "arrays"

    def __init__(self, head: np.ndarray, blob_path: str, big: _Spill):
        super().__init__(big.path)
        self._head, self._blob_path, self._big = head, blob_path, big
        n = os.path.getsize(blob_path)
        self._info = {HEADER_KEY: TensorInfo((head.size,), np.dtype(np.uint8)),
                      BLOB_KEY: TensorInfo((n,), np.dtype(np.uint8)), **big.info()}

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        if name == HEADER_KEY:
            return self._head
        if name == BLOB_KEY:
            n = self._info[BLOB_KEY].shape[0]
            return (np.memmap(self._blob_path, np.uint8, "r", shape=(n,)).view(np.ndarray) if n
                    else np.zeros(0, np.uint8))
        return self._big[name]


@dataclass
class Staged:
    """One tensor prepared for the container: its metadata entry, its stored arrays by role
    (keys in ``entry["parts"]``) and the stored keys written in another dtype (``"BF16"``)."""

    name: str
    entry: dict[str, Any]
    parts: dict[str, np.ndarray]
    dtypes: dict[str, str]
    # a ratio search's first try: the layer one step up, ``{"budget", "bytes", "error"}``,
    # and (until a journal records it) that build staged (never written into the container)
    alt: dict[str, Any] | None = None
    alt_staged: "Staged | None" = None


def stage_tensor(name: str, obj: CompressedMatrix | np.ndarray, *, original: Any = None,
                 layout: str | None = None, stored_dtype: str | None = None,
                 orig_bytes: int | None = None, method: str = "", reason: str = "",
                 view: Any = None, dtype: Any = None) -> Staged:
    """One tensor ready for :meth:`ContainerWriter.add_staged` (arguments as
    :meth:`ContainerWriter.add`): its metadata entry (checksums and error figures included)
    and its stored arrays. Needs no writer, so a worker process can prepare it; the same
    inputs give the same bytes wherever it runs.
    """
    own_dtype = dtype
    expanded = None
    if isinstance(obj, np.ndarray) or not isinstance(obj, CompressedMatrix):
        arr = np.asarray(obj)
        if not arr.dtype.isnative:  # big-endian input: stored and reported native
            arr = arr.astype(arr.dtype.newbyteorder("="))
        expanded = _compact(arr)
        floating = arr.dtype.kind == "f"
        float_matrix = arr.ndim == 2 and floating and expanded is None
        obj = Dense(arr, layout or "out_in") if float_matrix else None  # type: ignore[assignment]
        parts = {"values": arr if expanded is None else expanded}
        form, shape, dtype = "dense", arr.shape, arr.dtype
        lay = layout or "out_in"
    else:
        parts = obj.parts()
        form, shape, dtype, lay = obj.form, obj.shape, obj.dtype, obj.layout
    keys = {role: (name if form == "dense" else f"{name}{SEP}{role}") for role in parts}
    # A dense tensor read from bf16 goes back as bf16 (exact: it came from there).
    if stored_dtype in ("bfloat16", "float16"):  # other readers' spelling
        stored_dtype = {"bfloat16": "BF16", "float16": "F16"}[stored_dtype]
    narrow = form == "dense" and stored_dtype == "BF16" and np.dtype(dtype) == np.float32
    storage = "BF16" if narrow else getattr(obj, "storage", None)
    nbytes = array_nbytes(parts.values(), storage)
    entry: dict[str, Any] = {
        "form": form, "shape": [int(s) for s in shape], "dtype": np.dtype(dtype).name,
        "stored_dtype": stored_dtype, "storage": storage, "layout": lay, "parts": keys,
        "crc32": {r: _crc(a) for r, a in parts.items()},
        "params": int(obj.n_params if obj is not None else np.asarray(parts["values"]).size),
        **({"expanded": True} if expanded is not None else {}),
        "bytes": int(nbytes),
        "orig_bytes": int(orig_bytes if orig_bytes is not None
                          else dense_nbytes(shape, np.dtype(dtype).itemsize)),
        "method": method, "reason": reason}
    label = getattr(obj, "name", None)  # quantized forms: int4g64, kmeans3r...
    if isinstance(label, str):
        entry["label"] = label
    if view is not None:
        entry["view"] = view.to_json()
    if own_dtype is not None and np.dtype(own_dtype) != np.dtype(entry["dtype"]):
        entry["values_dtype"], entry["dtype"] = entry["dtype"], np.dtype(own_dtype).name
    if original is not None:
        W = np.asarray(original)
        if view is not None and W.shape == tuple(view.shape):
            W = view.to_matrix(W)
        if W.shape != tuple(shape):
            raise ValueError(f"original: shape {W.shape} differs from {tuple(shape)}")
        W = _flat2(W)
    else:
        W = None
    n2 = inner = nh2 = d2 = 0.0  # accumulated over row blocks: the decode is never whole
    if form == "dense" and (expanded is not None or np.dtype(dtype).kind not in "fc"):
        if expanded is not None and expanded.dtype.kind in "fc":  # stored exactly, once
            reps = int(np.prod(shape, dtype=np.int64)) // max(1, expanded.size)
            n2 = nh2 = inner = error_stats(expanded, expanded)[0] * reps
    else:
        for r0, r1, blk in _blocks(obj, parts["values"] if form == "dense" else None):
            ref = W[r0:r1] if W is not None else blk
            st = error_stats(ref, blk)
            n2, inner, nh2, d2 = n2 + st[0], inner + st[1], nh2 + st[2], d2 + st[3]
            if W is not None:
                release_rows(W, r0, r1)  # (a file's pages, not held through the decode)
    err = float(np.sqrt(d2 / n2)) if n2 > 0 else (0.0 if d2 == 0 else float("inf"))
    entry.update(error=err, norm=float(np.sqrt(n2)), norm_hat=float(np.sqrt(nh2)), inner=inner)
    dtypes = {keys[r]: "BF16" for r, a in parts.items() if storage == "BF16" and a.dtype == np.float32}
    return Staged(name, entry, dict(parts), dtypes)


class _Entries(Mapping[str, dict[str, Any]]):
    """The writer's per-tensor metadata: compact JSON, compressed in batches of
    :data:`_BATCH` entries (a dict per tensor cost about 2 KB: 200k tensors took most of a
    gigabyte; the JSON text itself, ~350 bytes for an empty tensor's entry, was still 3x the
    input file of a model of 40k empty tensors, issue 15). The newest entry stays a live dict
    until the next one is added, so a caller may still annotate it (``output_error``)."""

    _BATCH = 256

    def __init__(self) -> None:
        self._index: dict[str, int] = {}  # name -> position
        self._batches: list[bytes] = []  # zlib of _BATCH entries' JSON, one per line
        self._open: list[str] = []  # the JSON of the entries of the batch being filled
        self._last: tuple[str, dict[str, Any]] | None = None

    def _flush(self) -> None:
        if self._last is not None:
            self._open.append(json.dumps(self._last[1], separators=(",", ":")))
            self._last = None
            if len(self._open) == self._BATCH:
                self._batches.append(zlib.compress("\n".join(self._open).encode("utf-8"), 6))
                self._open = []

    def add(self, name: str, entry: dict[str, Any]) -> None:
        self._flush()
        self._index[name] = len(self._index)
        self._last = (name, entry)

    def _batch(self, b: int) -> list[str]:
        if b == len(self._batches):
            return self._open
        return zlib.decompress(self._batches[b]).decode("utf-8").split("\n")

    def __getitem__(self, name: str) -> dict[str, Any]:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        i = self._index[name]
        return json.loads(self._batch(i // self._BATCH)[i % self._BATCH])

    def __iter__(self) -> Any:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        """Every (name, entry) in order, decompressing each batch once."""
        self._flush()
        names = iter(self._index)
        for b in range(len(self._batches) + 1):
            for t in self._batch(b):
                yield next(names), json.loads(t)

    def values(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return (e for _, e in self.items())

    def json_pieces(self) -> Iterator[str]:
        """The JSON object of every entry, in order of addition, a batch at a time."""
        self._flush()
        yield "{"
        names = iter(self._index)
        sep = ""
        for b in range(len(self._batches) + 1):
            texts = self._batch(b)
            if texts:
                yield sep + ",".join(f"{json.dumps(next(names))}:{t}" for t in texts)
                sep = ","
        yield "}"

    def json(self) -> str:
        return "".join(self.json_pieces())


class ContainerWriter:
    """Build a container one tensor at a time; the file appears only on successful exit.

    Parameters are staged in a scratch file beside ``path`` (memory stays bounded by one
    tensor) and written, header first, when the ``with`` block ends without error.

    Parameters
    ----------
    path : str or os.PathLike
        The output file.
    source : dict, optional
        Facts about the source model stored in the metadata (``name``, ``format``, ``bytes``).
    source_metadata : dict, optional
        The source file's own metadata, given back by ``decompress``.

    Examples
    --------
    >>> with ContainerWriter("model.wpz") as w:                     # doctest: +SKIP
    ...     w.add("fc1.weight", compressed, original=W)
    """

    def __init__(self, path: str | os.PathLike[str], source: Mapping[str, Any] | None = None,
                 source_metadata: Mapping[str, str] | None = None):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"output {self.path!r} is a directory")
        # the scratch file is made on first use, inside the `with` block, so a signal between
        # construction and __enter__ cannot leave it behind
        self._spill_file: _Spill | None = None
        self._blob_file: _Spill | None = None
        self.source = {k: str(v) for k, v in (source or {}).items()}
        self.source_metadata = {str(k): str(v) for k, v in (source_metadata or {}).items()}
        self.entries = _Entries()
        # tensors of the source that no form can hold (ONNX strings, int4...): listed, so
        # their absence is never silent
        self.not_stored: dict[str, str] = {}
        self._keys: set[str] = set()
        self._dtypes: dict[str, str] = {}
        self.file_bytes = 0
        self.structure: dict[str, Any] = {}

    def _scratch(self) -> _Spill:
        d = os.path.dirname(os.path.abspath(self.path))
        tmp = None
        try:
            fd, tmp = make_temp(d, ".wp-spill-")
            os.close(fd)
            return _Spill(tmp)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise

    @property
    def _spill(self) -> _Spill:
        if self._spill_file is None:
            self._spill_file = self._scratch()
        return self._spill_file

    @property
    def _blob(self) -> _Spill:
        """The small arrays, back to back: the blob tensor's bytes."""
        if self._blob_file is None:
            self._blob_file = self._scratch()
        return self._blob_file

    def add(self, name: str, obj: CompressedMatrix | np.ndarray, *, original: Any = None,
            layout: str | None = None, stored_dtype: str | None = None,
            orig_bytes: int | None = None, method: str = "", reason: str = "",
            view: Any = None, dtype: Any = None) -> dict[str, Any]:
        """Stage one tensor: a compressed matrix, or an array (any dtype, any rank) kept dense.

        ``original`` (the uncompressed tensor) gives the stored error figures; without it the
        tensor counts as exact (dense). ``view`` (a
        :class:`~weightpress.compression.views.MatrixView`) says the matrix is an N-D tensor
        seen as a matrix: it is decoded back to ``view.shape``. ``dtype`` is the tensor's own
        dtype when the values are stored in another (``float16`` for a float32 tensor): it is
        decoded back to it. Returns the metadata entry.
        """
        if name in self.entries:
            raise ValueError(f"name: tensor {name!r} added twice")
        return self.add_staged(stage_tensor(name, obj, original=original, layout=layout,
                                            stored_dtype=stored_dtype, orig_bytes=orig_bytes,
                                            method=method, reason=reason, view=view,
                                            dtype=dtype))

    def add_staged(self, st: "Staged") -> dict[str, Any]:
        """Append a tensor prepared by :func:`stage_tensor` (perhaps in another process, or
        read back from a journal). Returns its metadata entry."""
        if st.name in self.entries:
            raise ValueError(f"name: tensor {st.name!r} added twice")
        keys = st.entry["parts"]
        for k in keys.values():
            if k in self._keys:
                raise ValueError(f"name: stored key {k!r} collides with another tensor's")
        # figures to 9 significant digits (float32's; verify checks them to 1e-3), no nulls
        entry = {k: float(f"{v:.9g}") if isinstance(v, float) else v
                 for k, v in st.entry.items() if v is not None}
        parts: dict[str, Any] = {}
        for role, a in st.parts.items():
            a = np.asarray(a)
            stored = st.dtypes.get(keys[role])
            name = stored or _st_name(a.dtype)
            if name is not None and a.size * DTYPES[name].itemsize <= BLOB_MAX:
                if stored == "BF16":
                    a = f32_to_bf16(np.ascontiguousarray(a, dtype=np.float32))
                self._blob.append(None, a)
                parts[role] = [name, [int(d) for d in a.shape]]
                continue
            self._spill.append(keys[role], a)
            self._keys.add(keys[role])
            parts[role] = keys[role]
            if stored is not None:
                self._dtypes[keys[role]] = stored
        entry["parts"] = parts
        self.entries.add(st.name, entry)
        return entry

    def add_alias(self, name: str, target: str) -> dict[str, Any]:
        """Stage `name` as another name of the already staged tensor `target` (tied weights:
        one storage under two names); nothing is stored twice."""
        if name in self.entries:
            raise ValueError(f"name: tensor {name!r} added twice")
        if target not in self.entries or "alias" in self.entries[target]:
            raise ValueError(f"target: {target!r} is not a staged tensor")
        t = self.entries[target]
        entry = {k: t[k] for k in ("shape", "dtype", "stored_dtype", "layout", "error", "norm",
                                   "norm_hat", "inner", "params")}
        entry.update(form=t["form"], alias=target, parts={}, crc32={}, bytes=0, orig_bytes=0,
                     storage=t.get("storage"), method="tied", reason=f"tied to {target}")
        for k in ("view", "values_dtype"):
            if k in t:
                entry[k] = t[k]
        self.entries.add(name, entry)
        return entry

    def set_structure(self, kind: str, blob: bytes) -> None:
        """Keep what the source format needs besides the weights (an ONNX graph without its
        weights, a Keras file's layout; see :mod:`weightpress.io.structure`)."""
        a = np.frombuffer(blob, np.uint8)
        self._spill.append(STRUCTURE_KEY, a)
        self._keys.add(STRUCTURE_KEY)
        self.structure = {"kind": kind, "key": STRUCTURE_KEY, "crc32": _crc(a), "bytes": int(a.size)}

    def header_pieces(self) -> Iterator[str]:
        """The container's metadata (format version 2: stored compressed in the header tensor),
        as consecutive pieces of its JSON text."""
        def dump(v: Any) -> str:
            return json.dumps(v, sort_keys=True, separators=(",", ":"))
        yield ('{"weightpress_version":' + json.dumps(__version__) + ',"source":' + dump(self.source)
               + ',"source_metadata":' + dump(self.source_metadata)
               + (',"not_stored":' + dump(self.not_stored) if self.not_stored else "")
               + (',"structure":' + dump(self.structure) if self.structure else "")
               + ',"tensors":')
        yield from self.entries.json_pieces()
        yield "}"

    def header_json(self) -> str:
        """The container's metadata as one JSON text."""
        return "".join(self.header_pieces())

    def close(self) -> int:
        """Write the container (atomically) and remove the scratch files; returns its size."""
        try:
            self._spill.finish()
            self._blob.finish()
            head = encode_header(self.header_pieces())
            meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "header_crc32": str(_crc(head))}
            self.file_bytes = write_safetensors(
                self.path, _Arrays(head, self._blob.path, self._spill), meta, dtypes=self._dtypes)
        finally:
            self.abort()
        return self.file_bytes

    def abort(self) -> None:
        """Drop everything staged (no output file is written)."""
        for f in (self._spill_file, self._blob_file):
            if f is not None:
                f.close()
                if not f.path.startswith("/proc/self/fd/"):
                    with contextlib.suppress(OSError):
                        os.unlink(f.path)

    def __enter__(self) -> "ContainerWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Container(TensorSource):
    """A container file opened lazily: ``c[name]`` is the decoded dense tensor,
    :meth:`matrix` the compressed matrix, :attr:`entries` the stored metadata.

    Raises
    ------
    FormatError
        Not a weightpress container, an unknown format version, or malformed metadata.
    """

    format = "weightpress"

    def __init__(self, path: str | os.PathLike[str], *, verify_checksums: bool = True):
        super().__init__(path)
        self.verify_checksums = verify_checksums
        self._checked: set[str] = set()
        try:
            self._st = SafetensorsSource(path)
        except FormatError as e:
            raise FormatError(f"{self.path}: not a weightpress container ({e})") from None
        meta = self._st.metadata
        self.metadata = dict(meta)
        if meta.get("format") != FORMAT:
            raise FormatError(f"{self.path}: not a weightpress container (a plain safetensors "
                              f"file? compress it with 'weightpress compress')")
        self.version = meta.get("format_version")
        if self.version not in READ_VERSIONS:
            raise FormatError(f"{self.path}: container format version {self.version!r}; this "
                              f"weightpress reads {', '.join(READ_VERSIONS)}")
        self._blob_at: dict[tuple[str, str], tuple[int, str, tuple[int, ...]]] = {}
        self._blob: np.ndarray | None = None
        try:
            head: dict[str, Any]
            if self.version == "1":  # every value a JSON string
                head = {k: json.loads(meta[k]) for k in ("tensors", "source", "source_metadata",
                                                         "not_stored", "structure") if k in meta}
            else:
                if HEADER_KEY not in self._st.info():
                    raise FormatError(f"{self.path}: the container header is missing")
                h = self._st[HEADER_KEY]
                if _crc(h) != int(meta.get("header_crc32", "-1")):
                    raise FormatError(f"{self.path}: checksum mismatch in the container header "
                                      f"(file corrupted)")
                head = decode_header(h, self.path)
            self.header = head
            self.entries: dict[str, dict[str, Any]] = head["tensors"]
            self.source: dict[str, str] = head.get("source", {})
            self.source_metadata: dict[str, str] = head.get("source_metadata", {})
            self.not_stored: dict[str, str] = {str(k): str(v) for k, v in
                                               head.get("not_stored", {}).items()}
            self.structure_info: dict[str, Any] = head.get("structure", {})
            if not all(isinstance(v, dict) for v in
                       (self.entries, self.source, self.source_metadata, self.structure_info)):
                raise FormatError(f"{self.path}: malformed container metadata (not JSON objects)")
            self._info = {n: TensorInfo(e["view"]["shape"] if "view" in e else e["shape"],
                                        np.dtype(e["dtype"])) for n, e in self.entries.items()}
            for n, e in self.entries.items():
                if "alias" in e and e["alias"] not in self.entries:
                    raise FormatError(f"{self.path}: tensor {n!r} is tied to a missing tensor")
                bad = [k for k in _NUMERIC_FIELDS if not isinstance(e.get(k), (int, float))
                       or isinstance(e.get(k), bool)]
                bad += [k for k in ("form", "dtype") if not isinstance(e.get(k), str)]
                if "layout" in e and not isinstance(e["layout"], str):
                    bad.append("layout")
                if bad or not isinstance(e.get("parts"), dict) or not isinstance(e.get("crc32"), dict):
                    raise FormatError(f"{self.path}: tensor {n!r}: malformed metadata "
                                      f"({', '.join(bad) or 'parts/crc32'} missing or of the "
                                      f"wrong type)")
            off = 0
            for n, e in self.entries.items():
                for role, key in e["parts"].items():
                    if isinstance(key, list) and self.version != "1":
                        off = self._place(n, role, key, off)
                    elif not isinstance(key, str) or key not in self._st.info():
                        raise FormatError(f"{self.path}: tensor {n!r} part {role!r} ({str(key)[:80]!r}) "
                                          f"is missing")
            size = self._st.info()[BLOB_KEY].shape[0] if BLOB_KEY in self._st.info() else 0
            if off != size:
                raise FormatError(f"{self.path}: the stored small arrays take {off} bytes, the "
                                  f"blob holds {size}")
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError, SyntaxError) as err:
            # (SyntaxError: NumPy parses some dtype strings as Python, found by fuzzing)
            if isinstance(err, FormatError):
                raise
            raise FormatError(f"{self.path}: malformed container metadata "
                              f"({type(err).__name__}: {str(err)[:200]})") from None
        self.stored_dtypes = {n: e.get("stored_dtype") or "" for n, e in self.entries.items()}

    def _place(self, name: str, role: str, spec: list[Any], off: int) -> int:
        """Record where a blob part of ``name`` starts; returns where the next one starts."""
        if (len(spec) != 2 or not isinstance(spec[0], str) or spec[0] not in _BLOB_DTYPES
                or not isinstance(spec[1], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                           for d in spec[1])):
            raise FormatError(f"{self.path}: tensor {name!r} part {role!r}: malformed "
                              f"[dtype, shape] {str(spec)[:80]}")
        n = int(np.prod(spec[1], dtype=object)) * _BLOB_DTYPES[spec[0]].itemsize
        if n > BLOB_MAX:
            raise FormatError(f"{self.path}: tensor {name!r} part {role!r} is too large for the blob")
        self._blob_at[(name, role)] = (off, spec[0], tuple(spec[1]))
        return off + n

    def _blob_part(self, name: str, role: str) -> np.ndarray:
        off, dt, shape = self._blob_at[(name, role)]
        if self._blob is None:
            self._blob = self._st[BLOB_KEY]
        raw = _BLOB_DTYPES[dt]
        n = int(np.prod(shape, dtype=np.int64)) * raw.itemsize
        a = np.frombuffer(self._blob[off:off + n].tobytes(), raw).reshape(shape)
        if dt == "BF16":
            return bf16_to_f32(a)
        return a if raw.isnative else a.astype(raw.newbyteorder("="))

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def parts(self, name: str) -> dict[str, np.ndarray]:
        """The stored arrays of one tensor, memory-mapped; their CRC-32s are checked against
        the stored ones on first read (FormatError on a mismatch) unless the container was
        opened with ``verify_checksums=False``."""
        e = self.entries[name]
        if "alias" in e:
            return self.parts(e["alias"])
        out = {role: self._st[key] if isinstance(key, str) else self._blob_part(name, role)
               for role, key in e["parts"].items()}
        if self.verify_checksums and name not in self._checked:
            crcs = e.get("crc32")
            if not isinstance(crcs, dict):
                raise FormatError(f"{self.path}: tensor {name!r} has no checksums")
            bad = [r for r, a in out.items() if _crc(a) != crcs.get(r)]
            if bad:
                raise FormatError(f"{self.path}: tensor {name!r}: checksum mismatch in "
                                  f"{', '.join(bad)} (file corrupted)")
            self._checked.add(name)
        return out

    def check_checksums(self) -> None:
        """Read every stored array once and check its CRC-32 (FormatError on the first bad one)."""
        for name in self.entries:
            self.parts(name)
        self.structure()

    def structure(self) -> tuple[str, bytes] | None:
        """(kind, zlib bytes) of the source model's structure, if the container keeps it."""
        s = self.structure_info
        if not s:
            return None
        a = self._st[s["key"]]
        if _crc(a) != s["crc32"]:
            raise FormatError(f"{self.path}: checksum mismatch in the stored model structure")
        return s["kind"], np.asarray(a).tobytes()

    def matrix(self, name: str) -> CompressedMatrix:
        """One tensor as a compressed matrix (2-D tensors and N-D tensors seen as matrices)."""
        e = self.entries[name]
        if "alias" in e:
            return self.matrix(e["alias"])
        if len(e["shape"]) != 2:
            raise ValueError(f"{name!r} is a {len(e['shape'])}-D tensor, not a matrix; use container[name]")
        try:
            m = from_parts(e["form"], self.parts(name), tuple(e["shape"]), e.get("layout", "out_in"))
            return store_as(m, e.get("storage"), exact=True)
        except (ValueError, TypeError) as err:
            raise FormatError(f"{self.path}: tensor {name!r}: {err}") from None

    def _load(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if "alias" in e:
            return self._load(e["alias"])
        if e["form"] == "dense":
            a = self.parts(name)["values"]
            if e.get("expanded"):
                try:
                    return np.broadcast_to(a, tuple(e["shape"]))
                except ValueError as err:
                    raise FormatError(f"{self.path}: tensor {name!r}: {err}") from None
        else:
            a = self.matrix(name).toarray()
        if "view" in e:
            a = np.asarray(a).reshape(e["view"]["shape"])
        if a.dtype != np.dtype(e["dtype"]):
            a = a.astype(e["dtype"])
        return a

    @property
    def file_bytes(self) -> int:
        return os.path.getsize(self.path)


def open_container(path: str | os.PathLike[str]) -> Container:
    """Open a container written by :class:`ContainerWriter` (lazy: reads the header only)."""
    return Container(path)


@dataclass
class VerifyResult:
    """What :func:`verify` checked and found."""

    path: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | os.PathLike[str], original: Mapping[str, Any] | None = None,
           *, rtol: float = 1e-3, progress: Any = None) -> VerifyResult:
    """Decode every tensor of a container and check it against the stored figures.

    Checks, per tensor: every stored array is present with a matching CRC-32; the parts form a
    valid matrix (CSR structure, factor shapes); the decoded tensor has the declared shape and
    dtype and is finite; ``‖Ŵ‖_F`` matches the stored figure and the stored error is consistent
    with ``‖W‖``, ``⟨W, Ŵ⟩`` and ``‖Ŵ‖``. With ``original`` (a mapping name -> array, e.g. the
    source model) the error is recomputed against the original exactly.

    ``progress(i, n, name)`` is called before each tensor when given.

    Returns
    -------
    VerifyResult
        ``ok`` is True when no problem was found; ``problems`` lists each one.

    Raises
    ------
    FormatError
        If the file is not a readable container at all (see :class:`Container`).
    """
    c = Container(path, verify_checksums=False)  # checked below, per tensor, as problems
    res = VerifyResult(os.fspath(path))
    known = {k for e in c.entries.values() for k in e["parts"].values() if isinstance(k, str)}
    known |= {HEADER_KEY, BLOB_KEY}
    if c.structure_info:
        known.add(c.structure_info.get("key"))
        try:
            c.structure()
        except FormatError as err:
            res.problems.append(str(err))
    extra = set(c._st.info()) - known
    if extra:
        res.problems.append(f"stored arrays not referenced by any tensor: {sorted(extra)[:5]}")
    for i, (name, e) in enumerate(c.entries.items()):
        if progress is not None:
            progress(i, len(c.entries), name)
        res.checked += 1
        where = f"{name}"
        try:
            parts = c.parts(name)
            crcs = c.entries[e["alias"]]["crc32"] if "alias" in e else e["crc32"]
            bad = [r for r, a in parts.items() if _crc(a) != crcs.get(r)]
            if bad:
                res.problems.append(f"{where}: checksum mismatch in {bad} (file corrupted)")
                continue
            W_hat = c._load(name)
        except (ValueError, TypeError, KeyError) as err:
            res.problems.append(f"{where}: cannot decode ({err})")
            continue
        want_shape = e["view"]["shape"] if "view" in e else e["shape"]
        if list(W_hat.shape) != want_shape or W_hat.dtype.name != e["dtype"]:
            res.problems.append(f"{where}: decodes to {W_hat.dtype} {W_hat.shape}, declared "
                                f"{e['dtype']} {tuple(e['shape'])}")
            continue
        if W_hat.dtype.kind not in "fc":
            continue
        if not np.isfinite(W_hat).all():
            res.problems.append(f"{where}: decoded tensor has NaN or Inf")
            continue
        nh = float(np.sqrt(error_stats(W_hat, W_hat)[0]))
        scale = max(e["norm"], e["norm_hat"], 1e-30)
        if abs(nh - e["norm_hat"]) > rtol * scale:
            res.problems.append(f"{where}: decoded norm {nh:.6g} differs from stored {e['norm_hat']:.6g}")
        n2, inner = e["norm"] ** 2, e["inner"]
        if n2 > 0:
            err = np.sqrt(max(0.0, n2 - 2 * inner + nh * nh) / n2)
            if abs(err - e["error"]) > max(rtol, 1e-2 * e["error"]):
                res.problems.append(f"{where}: stored error {e['error']:.4g} inconsistent with "
                                    f"the decoded tensor ({err:.4g})")
        if original is not None:
            if name not in original:
                res.problems.append(f"{where}: not in the original model")
                continue
            W = np.asarray(original[name])
            if W.shape != W_hat.shape:
                res.problems.append(f"{where}: original shape {W.shape} != {W_hat.shape}")
                continue
            n2w, _, _, d2 = error_stats(W, W_hat)
            true = float(np.sqrt(d2 / n2w)) if n2w > 0 else 0.0
            if abs(true - e["error"]) > max(rtol, 1e-2 * e["error"]):
                res.problems.append(f"{where}: error against the original is {true:.4g}, "
                                    f"stored {e['error']:.4g}")
    if progress is not None:
        progress(len(c.entries), len(c.entries), "done")
    c.close()
    return res
