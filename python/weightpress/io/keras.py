"""Keras weights: ``.keras`` archives (a zip holding ``model.weights.h5``) and ``.h5``/``.hdf5``.

Read and written through h5py (an optional dependency). Every numeric dataset is one tensor,
named by its path in the HDF5 file (``layers/dense/vars/0`` for Keras 3,
``model_weights/dense/dense/kernel:0`` for Keras 2). Contiguous, uncompressed datasets are
memory-mapped straight from the file (also inside a ``.keras`` archive when the weights member
is stored uncompressed); chunked or compressed ones are read one at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._optional import require

from ._base import FormatError, TensorInfo, TensorSource, atomic_write, make_temp
from ._dtypes import bf16_bits_to_float32, float32_to_bf16_bits, stored_name
from ._zip import ZIP_ERRORS, RangeFile, check_inflate, member_data_offset, open_zip

__all__ = ["KerasSource", "write_keras"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_MEMBER = "model.weights.h5"


def import_h5py() -> Any:
    """The ``h5py`` module, or ImportError saying how to install it."""
    return require("h5py", "reading or writing Keras .keras/.h5 files")


def _is_bf16(ds: Any) -> bool:
    """Keras 3 stores bfloat16 as 2-byte opaque data with an attribute ``dtype="bfloat16"``.

    Only the attribute's existence is checked, not its value: reading a variable-length string
    from a damaged file can keep the HDF5 library busy for minutes (found by fuzzing), and a
    2-byte opaque dataset carrying a ``dtype`` attribute is Keras's bf16 in practice.
    """
    if ds.dtype.kind != "V" or ds.dtype.itemsize != 2 or ds.dtype.fields is not None:
        return False
    h5py = import_h5py()
    with contextlib.suppress(Exception):
        if h5py.h5a.exists(ds.id, b"dtype"):
            return True
    with contextlib.suppress(Exception):
        return b"bfloat16" in ds.id.get_type().get_tag().lower()
    return False


def _open_h5(h5py: Any, target: Any, mode: str, where: str) -> Any:
    try:
        return h5py.File(target, mode)
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"{where}: not a readable HDF5 file ({e})") from None


class KerasSource(TensorSource):
    """Weights of a Keras ``.keras`` archive or ``.h5`` file as a lazy mapping.

    Non-numeric datasets (strings, compound types) are left out and listed in :attr:`skipped`.
    """

    format = "keras"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        h5py = import_h5py()
        self._tmp: str | None = None
        self._range: RangeFile | None = None
        self._zf: zipfile.ZipFile | None = None
        self._h5: Any = None
        with open(self.path, "rb") as f:
            head = f.read(8)
        try:  # any failure below closes what was opened and removes the temporary file
            self._open(h5py, head)
        except BaseException:
            self.close()
            raise
        self._ds: dict[str, Any] = {}
        self._info: dict[str, TensorInfo] = {}
        self.skipped: dict[str, str] = {}
        try:
            self._h5.visititems(self._visit)
        except Exception as e:  # noqa: BLE001 - h5py raises many kinds on corrupt files
            self.close()
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{self.path}: corrupt HDF5 structure ({type(e).__name__}: {e})") from None
        except BaseException:  # Ctrl-C, a signal: still no temporary file left behind
            self.close()
            raise

    def _open(self, h5py: Any, head: bytes) -> None:
        if head == HDF5_MAGIC:
            self._file, self._base = self.path, 0
            self._h5 = _open_h5(h5py, self.path, "r", self.path)
            return
        self._zf = open_zip(self.path, ".keras archive")
        try:
            zi = self._zf.getinfo(WEIGHTS_MEMBER)
        except KeyError:
            raise FormatError(f"{self.path}: no {WEIGHTS_MEMBER} member: not a .keras archive") from None
        start = member_data_offset(self.path, zi)
        where = f"{self.path}[{WEIGHTS_MEMBER}]"
        if start is not None:
            self._file, self._base = self.path, start
            self._range = RangeFile(self.path, start, zi.file_size)
            self._h5 = _open_h5(h5py, self._range, "r", where)
            return
        # compressed member: unpack it to a temporary file, streaming, its size bounded
        check_inflate(zi, self.path)
        fd, self._tmp = make_temp(tempfile.gettempdir(), "wp-keras-", ".h5")
        try:
            with os.fdopen(fd, "wb") as out, self._zf.open(zi) as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except ZIP_ERRORS as e:
            raise FormatError(f"{where}: unreadable zip member ({e})") from None
        self._file, self._base = self._tmp, 0
        self._h5 = _open_h5(h5py, self._tmp, "r", where)

    def _visit(self, name: str, obj: Any) -> None:
        h5py = import_h5py()
        if not isinstance(obj, h5py.Dataset):
            return
        if _is_bf16(obj):
            self._info[name] = TensorInfo(obj.shape, np.float32)
            self.stored_dtypes[name] = "BF16"
        elif obj.dtype.kind in "biufc" and obj.shape is not None:
            self._info[name] = TensorInfo(obj.shape, obj.dtype.newbyteorder("="))
            self.stored_dtypes[name] = stored_name(obj.dtype.name)
        else:
            self.skipped[name] = f"dtype {obj.dtype} is not numeric"
            return
        self._ds[name] = obj

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        ds = self._ds[name]
        bf16 = self.stored_dtypes[name] == "BF16"
        dtype = np.dtype("<u2") if bf16 else ds.dtype
        try:
            offset = ds.id.get_offset() if ds.chunks is None and ds.size else None
            if offset is not None and not ds.external:
                need = self._base + offset + int(ds.size) * dtype.itemsize
                if need > os.path.getsize(self._file):
                    raise FormatError(f"{self.path}[{name}]: dataset runs past the end of the file")
                arr = np.memmap(self._file, dtype, "r", offset=self._base + offset, shape=ds.shape)
            else:
                data = np.asarray(ds[()]) if ds.size else np.empty(ds.shape, ds.dtype)
                arr = data.view(dtype) if bf16 else data
        except FormatError:
            raise
        except Exception as e:  # noqa: BLE001
            raise FormatError(f"{self.path}[{name}]: cannot read dataset ({type(e).__name__}: {e})") from None
        if bf16:
            return bf16_bits_to_float32(arr)
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))

    def close(self) -> None:
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        for res in (self._range, self._zf):
            if res is not None:
                res.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None


def _fill_h5(h5: Any, tensors: Mapping[str, np.ndarray], replace: bool, where: str) -> None:
    for name in tensors:
        if not isinstance(name, str) or not name.strip("/"):
            raise TypeError(f"tensors: names must be non-empty str, got {name!r}")
        a = np.asarray(tensors[name])
        if a.dtype.kind not in "biufc":
            raise TypeError(f"tensors[{name!r}]: expected a numeric array, got dtype {a.dtype}")
        if not replace:
            h5.create_dataset(name, data=a)
            continue
        ds = h5.get(name)
        if ds is None or not hasattr(ds, "dtype"):
            raise ValueError(f"tensors[{name!r}]: no dataset of that name in {where}")
        if a.shape != ds.shape:
            raise ValueError(f"tensors[{name!r}]: shape {a.shape}, {where} has {ds.shape}")
        if _is_bf16(ds):
            ds[...] = float32_to_bf16_bits(a).view("V2")
        elif not np.can_cast(a.dtype, ds.dtype, "same_kind"):
            raise TypeError(f"tensors[{name!r}]: dtype {a.dtype} cannot replace a {ds.dtype} dataset")
        else:
            ds[...] = a.astype(ds.dtype, copy=False)


def _write_h5(f: Any, tensors: Mapping[str, np.ndarray], like: KerasSource | None) -> None:
    """Write an HDF5 weights file into open binary file `f` (a copy of `like`'s, if given)."""
    h5py = import_h5py()
    if like is not None:
        with open(like._file, "rb") as src:
            src.seek(like._base)
            size = like._range._len if like._range is not None else os.path.getsize(like._file)
            remaining = size
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    raise FormatError(f"{like.path}: truncated while copying")
                f.write(chunk)
                remaining -= len(chunk)
        f.flush()
        f.seek(0)
    with h5py.File(f, "r+" if like is not None else "w") as h5:
        _fill_h5(h5, tensors, like is not None, like.path if like is not None else "the new file")


def write_keras(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], *,
                like: str | os.PathLike[str] | KerasSource | None = None) -> None:
    """Write Keras weights to ``.h5`` (any layout) or ``.keras`` (a copy of `like`), atomically.

    Parameters
    ----------
    path : str or PathLike
        ``.h5``/``.hdf5`` output, or ``.keras`` output (which needs `like`: the config and
        metadata are copied from the original archive).
    tensors : Mapping[str, ndarray]
        Dataset path -> array. With `like`, each must name an existing dataset of the same shape
        (values cast to its dtype, bf16 rounded to nearest even) and the rest keep their values;
        without it, one dataset is created per name.
    like : str, PathLike or KerasSource, optional
        The original ``.h5`` or ``.keras`` file.

    Raises
    ------
    ValueError
        For ``.keras`` output without `like`, an unknown name, or a shape mismatch.
    """
    path = os.fspath(path)
    src = like if isinstance(like, KerasSource) or like is None else KerasSource(like)
    try:
        if not path.endswith(".keras"):
            with atomic_write(path, "w+b") as f:
                _write_h5(f, tensors, src)
            return
        if src is None or src._zf is None:
            raise ValueError(f"{path}: writing a .keras archive needs like= the original .keras file")
        fd, tmp = make_temp(tempfile.gettempdir(), "wp-keras-", ".h5")
        try:
            with os.fdopen(fd, "w+b") as f:
                _write_h5(f, tensors, src)
            with atomic_write(path) as f, zipfile.ZipFile(f, "w") as out:
                for zi in src._zf.infolist():
                    if zi.filename == WEIGHTS_MEMBER:
                        out.write(tmp, WEIGHTS_MEMBER, compress_type=zi.compress_type)
                    else:
                        out.writestr(zi, src._zf.read(zi))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    finally:
        if src is not None and src is not like:
            src.close()
