"""PyTorch zip checkpoints (``torch.save`` since 1.6), read and written without torch.

Layout: ``<prefix>/data.pkl`` (the pickled object, protocol 2) and ``<prefix>/data/<key>``
(one member per storage, stored uncompressed and 64-byte aligned). Only the pickle is read at
open time, through the allow-list unpickler of :mod:`.pytorch_pickle`; each tensor is then a
strided view of a memory-mapped storage member. Nested containers (``{"state_dict": {...}}``,
``{"model": ..., "optimizer": ...}``, lists) are flattened with dots; non-tensor leaves
(epoch numbers, hyper-parameters) are skipped.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._base import FormatError, TensorInfo, TensorSource, atomic_write, unique_name
from ._dtypes import (
    bf16_bits_to_float32,
    canonical_dtype_name,
    f8_to_float32,
    float32_to_bf16_bits,
    stored_name,
)
from ._zip import member_data_offset, open_zip, read_member
from .pytorch_pickle import STORAGE_DTYPES, TensorRef, load_pickle, state_dict_pickle, storage_name

__all__ = ["PyTorchSource", "write_pytorch"]

_MAX_ENTRIES = 1_000_000  # flattening visits at most this many container items
_MAX_DEPTH = 100


def _key(k: Any) -> str:
    """A dict key as a name part; only plain keys are spelled out (a deeply nested tuple key
    would recurse in ``str``)."""
    if isinstance(k, str):
        return k
    if isinstance(k, (int, float)) and not isinstance(k, bool):
        return str(k)
    return f"<{type(k).__name__}>"


def _flatten(obj: Any, source: str, budget: int = _MAX_ENTRIES) -> dict[str, TensorRef]:
    """Dotted name -> tensor for every tensor in a nested checkpoint object.

    Shared sub-objects (a pickle's memo lets a small file reference one dict many times) can
    make the tree exponentially larger than the file, so at most `budget` items are visited
    and the names' total length is bounded too; past that the file is refused.
    """
    out: dict[str, TensorRef] = {}
    counters: dict[str, int] = {}
    seen = chars = 0
    max_chars = 64 * budget
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    while stack:
        prefix, o, depth = stack.pop()
        seen += 1
        if seen > budget or depth > _MAX_DEPTH:
            raise FormatError(f"{source}: checkpoint structure too large or too deep to list")
        if isinstance(o, TensorRef):
            chars += len(prefix)
            if chars > max_chars:
                raise FormatError(f"{source}: checkpoint tensor names too long to list")
            out[unique_name(out, prefix, counters)] = o
        elif isinstance(o, dict):
            items = [(_key(k), v) for k, v in o.items()]
            stack.extend((f"{prefix}.{k}" if prefix else k, v, depth + 1) for k, v in reversed(items))
        elif isinstance(o, (list, tuple)):
            stack.extend((f"{prefix}.{i}" if prefix else str(i), v, depth + 1)
                         for i, v in reversed(list(enumerate(o))))
    return out


class PyTorchSource(TensorSource):
    """A PyTorch zip checkpoint as a lazy mapping of dotted names to arrays.

    bf16 and float8 (e4m3fn, e5m2) tensors are returned as float32 (``stored_dtypes[name]``
    says ``"BF16"``, ``"F8_E4M3"``, ``"F8_E5M2"``); fp16 stays fp16, uint16/32/64 stay as they
    are. Views (offsets, strides, transposes) are honoured; names that share one storage view
    (tied weights) are listed in :attr:`aliases` (name -> first name). TorchScript archives
    raise :class:`FormatError`; the legacy pre-1.6 format is read by
    :class:`~weightpress.io.pytorch_legacy.LegacyPyTorchSource`.
    """

    format = "pytorch"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        self.aliases: dict[str, str] = {}
        with open(self.path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise FormatError(
                f"{self.path}: legacy (pre-1.6, non-zip) PyTorch checkpoint: open it with "
                "weightpress.io.open_model (LegacyPyTorchSource)"
            )
        self._zf = open_zip(self.path, "PyTorch checkpoint")
        try:
            self._open()
        except BaseException:
            self._zf.close()
            raise

    def _open(self) -> None:
        names = self._zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            hint = " (a TorchScript archive?)" if any(n.endswith("constants.pkl") for n in names) else ""
            raise FormatError(f"{self.path}: no <prefix>/data.pkl member: not a PyTorch checkpoint{hint}")
        self._prefix = pkl[0][: -len("data.pkl")]
        order = self._prefix + "byteorder"
        if order in names and read_member(self._zf, self._zf.getinfo(order), self.path).strip() != b"little":
            raise FormatError(f"{self.path}: big-endian checkpoint is not supported")
        raw = read_member(self._zf, self._zf.getinfo(pkl[0]), self.path)
        obj = load_pickle(io.BytesIO(raw), self.path)
        # a shared sub-object can be visited many times for one pickle byte: bound the walk
        # by the pickle's size (a real checkpoint spends far more than 4 bytes per item)
        self._refs = _flatten(obj, self.path, min(_MAX_ENTRIES, max(100_000, len(raw) // 4)))
        self._check_storages()
        self._index_refs()

    def _check_storages(self) -> None:
        """A tensor reaching past its storage is a corrupt file: say so at open time, not at
        load time (where a --ratio budget computed from the header would have failed first)."""
        sizes = {zi.filename: zi.file_size for zi in self._zf.infolist()}
        for name, ref in self._refs.items():
            st = ref.storage
            member = f"{self._prefix}data/{st.key}"
            if member not in sizes:
                raise FormatError(f"{self.path}: tensor {name!r}: storage member {member!r} is missing")
            if math.prod(ref.shape):
                last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
                held = sizes[member] // st.dtype.itemsize
                if last >= held:
                    raise FormatError(f"{self.path}: tensor {name!r} reaches element {last} of a "
                                      f"storage holding {held} (file truncated or corrupt)")

    def _index_refs(self) -> None:
        """Shapes and dtypes from the refs; names sharing one storage view become aliases."""
        self._info: dict[str, TensorInfo] = {}
        first: dict[tuple[Any, ...], str] = {}
        for name, ref in self._refs.items():
            st = ref.storage
            decoded = st.stored == "bfloat16" or st.stored.startswith("float8")
            self._info[name] = TensorInfo(ref.shape, np.float32 if decoded else st.dtype)
            self.stored_dtypes[name] = stored_name(st.stored)
            key = (st.key, st.stored, ref.offset, ref.shape, ref.strides)
            if key in first:  # tied weights (GPT-2's lm_head and wte): one storage, two names
                self.aliases[name] = first[key]
            else:
                first[key] = name

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _storage(self, ref: TensorRef) -> np.ndarray:
        st = ref.storage
        member = f"{self._prefix}data/{st.key}"
        try:
            zi = self._zf.getinfo(member)
        except KeyError:
            raise FormatError(f"{self.path}: storage member {member!r} is missing") from None
        count = zi.file_size // st.dtype.itemsize
        start = member_data_offset(self.path, zi)
        if count == 0:
            return np.empty(0, st.dtype)
        if start is not None:
            return np.memmap(self.path, dtype=st.dtype, mode="r", offset=start, shape=(count,))
        return np.frombuffer(read_member(self._zf, zi, self.path), st.dtype, count)

    def _load(self, name: str) -> np.ndarray:
        ref = self._refs[name]
        flat = self._storage(ref)
        dt = ref.storage.dtype
        size = math.prod(ref.shape)
        if size == 0:
            arr = np.empty(ref.shape, dt)
        else:
            last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
            if last >= flat.size:
                raise FormatError(
                    f"{self.path}: tensor {name!r} reaches element {last} of a storage "
                    f"holding {flat.size}"
                )
            base = flat[ref.offset:]
            # a view (transposed, sliced, or expanded with stride 0) stays a view: no copy here
            arr = np.lib.stride_tricks.as_strided(
                base, ref.shape, tuple(s * dt.itemsize for s in ref.strides), writeable=False)
        if ref.storage.stored == "bfloat16":
            return bf16_bits_to_float32(arr)
        if ref.storage.stored.startswith("float8"):
            return f8_to_float32(arr, ref.storage.stored)
        return arr

    def close(self) -> None:
        self._zf.close()


def _aligned_member(zf: zipfile.ZipFile, name: str, nbytes: int) -> zipfile.ZipInfo:
    """ZipInfo for a stored member whose data will start on a 64-byte boundary, as torch does."""
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    zi.file_size = nbytes
    header = 30 + len(name.encode()) + 20  # force_zip64 adds a 20-byte zip64 extra field
    pad = (-(zf.fp.tell() + header + 4)) % 64  # type: ignore[union-attr]
    zi.extra = b"FB" + pad.to_bytes(2, "little") + b"\0" * pad
    return zi


def _shape_dtype(tensors: Mapping[str, np.ndarray], name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one tensor, from the header when `tensors` is a TensorSource."""
    if isinstance(tensors, TensorSource):
        info = tensors.info()[name]
        return info.shape, info.dtype
    a = np.asarray(tensors[name])
    return tuple(int(s) for s in a.shape), a.dtype


def write_pytorch(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], *,
                  like: TensorSource | None = None) -> None:
    """Write `tensors` as a PyTorch state dict (``torch.load(path, weights_only=True)`` reads it).

    Parameters
    ----------
    path : str or PathLike
        Output ``.pt``/``.pth``/``.bin`` file, written atomically.
    tensors : Mapping[str, ndarray]
        Flat state dict, name -> array; written one tensor at a time.
    like : TensorSource, optional
        The model these tensors came from: a tensor stored there as bf16 (or fp16) is cast back
        to that dtype; others keep their dtype.

    Raises
    ------
    TypeError
        For a name that is not a str or a dtype torch cannot store.
    """
    stored = like.stored_dtypes if like is not None else {}
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        arrays_meta = []
        for key, name in enumerate(tensors):
            if not isinstance(name, str):
                raise TypeError(f"tensors: names must be str, got {name!r}")
            shape, dtype = _shape_dtype(tensors, name)
            want = canonical_dtype_name(stored.get(name))
            if want == "bfloat16":
                storage = "BFloat16Storage"
            elif want in ("float16", "float32", "float64") and dtype.kind == "f":
                storage = storage_name(np.dtype(want))
            else:
                storage = storage_name(dtype)
            arrays_meta.append((name, storage, key, shape))
        zf.writestr(zipfile.ZipInfo("archive/data.pkl", (1980, 1, 1, 0, 0, 0)),
                    state_dict_pickle(arrays_meta))
        zf.writestr(zipfile.ZipInfo("archive/byteorder", (1980, 1, 1, 0, 0, 0)), b"little")
        for name, storage, key, _shape in arrays_meta:
            a = np.asarray(tensors[name])
            if storage == "BFloat16Storage":
                a = float32_to_bf16_bits(a)
            else:
                a = np.ascontiguousarray(a, dtype=STORAGE_DTYPES[storage][0])
            zi = _aligned_member(zf, f"archive/data/{key}", a.nbytes)
            with zf.open(zi, "w", force_zip64=True) as m:
                m.write(memoryview(a.reshape(-1).view(np.uint8)))
            del a  # drop this tensor before the next one is made
        zf.writestr(zipfile.ZipInfo("archive/version", (1980, 1, 1, 0, 0, 0)), b"3\n")
