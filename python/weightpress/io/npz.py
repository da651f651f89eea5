"""NumPy files: ``.npy`` (one array) and ``.npz`` (a zip of ``.npy`` members)."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from ._base import FormatError, TensorInfo, TensorSource, atomic_write, check_shape
from ._dtypes import stored_name
from ._zip import ZIP_ERRORS, check_inflate, member_data_offset, open_zip

__all__ = ["NpySource", "NpzSource", "write_npy", "write_npz"]


def _read_npy_header(fp, where: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:  # type: ignore[no-untyped-def]
    """(shape, dtype, fortran_order, header_length) from an open .npy stream at its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        header_len = fp.tell()
    except Exception as e:  # noqa: BLE001 - a damaged header fails in many ways (tokenize, ast, zlib)
        raise FormatError(f"{where}: not a valid .npy array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise FormatError(f"{where}: holds Python objects (needs pickle); refusing to load it")
    return check_shape(shape, dtype.itemsize, where), dtype, bool(fortran), header_len


def _native(dtype: np.dtype) -> np.dtype:
    """`dtype` in this machine's byte order (big-endian arrays are returned converted)."""
    return dtype.newbyteorder("=") if not dtype.isnative else dtype


def _to_native(arr: np.ndarray) -> np.ndarray:
    return arr.astype(_native(arr.dtype)) if not arr.dtype.isnative else arr


class NpySource(TensorSource):
    """One ``.npy`` array, memory-mapped; its name is the file's stem."""

    format = "npy"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        with open(self.path, "rb") as f:
            shape, dtype, _, header_len = _read_npy_header(f, self.path)
        need = header_len + math.prod(shape) * dtype.itemsize
        if os.path.getsize(self.path) < need:
            raise FormatError(
                f"{self.path}: truncated .npy (header promises {need} bytes, "
                f"file has {os.path.getsize(self.path)})"
            )
        self._name = os.path.splitext(os.path.basename(self.path))[0]
        self._info = {self._name: TensorInfo(shape, _native(dtype))}
        self.stored_dtypes[self._name] = stored_name(np.dtype(dtype).name)

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        try:
            return _to_native(np.load(self.path, mmap_mode="r", allow_pickle=False))
        except (ValueError, OSError) as e:
            raise FormatError(f"{self.path}: cannot read array: {e}") from None


class NpzSource(TensorSource):
    """An ``.npz`` archive: names are the member names without ``.npy``.

    Listing reads each member's small header only. Members stored uncompressed (``np.savez``)
    are memory-mapped; compressed ones (``np.savez_compressed``) are decompressed one at a time.
    """

    format = "npz"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        self._zf = open_zip(self.path, ".npz archive")
        self._info: dict[str, TensorInfo] = {}
        self._members: dict[str, tuple[zipfile.ZipInfo, bool, int, np.dtype]] = {}
        try:
            for zi in self._zf.infolist():
                if zi.is_dir():
                    continue
                if not zi.filename.endswith(".npy"):
                    raise FormatError(f"{self.path}: member {zi.filename!r} is not a .npy array")
                where = f"{self.path}[{zi.filename}]"
                try:
                    with self._zf.open(zi) as fp:
                        shape, dtype, fortran, hlen = _read_npy_header(fp, where)
                except ZIP_ERRORS as e:
                    raise FormatError(f"{where}: unreadable zip member ({e})") from None
                info = TensorInfo(shape, _native(dtype))
                nbytes = math.prod(shape) * dtype.itemsize  # exact: a lying header cannot wrap
                if zi.file_size != hlen + nbytes:
                    raise FormatError(
                        f"{where}: header says {nbytes} data bytes, member holds "
                        f"{zi.file_size - hlen}"
                    )
                self._info[zi.filename[:-4]] = info
                self.stored_dtypes[zi.filename[:-4]] = stored_name(info.dtype.name)
                self._members[zi.filename[:-4]] = (zi, fortran, hlen, dtype)
        except BaseException:
            self._zf.close()
            raise

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        zi, fortran, hlen, stored = self._members[name]
        info = self._info[name]
        start = member_data_offset(self.path, zi)
        if start is not None:
            if info.size == 0:
                return np.empty(info.shape, info.dtype, order="F" if fortran else "C")
            return _to_native(np.memmap(self.path, dtype=stored, mode="r", offset=start + hlen,
                                        shape=info.shape, order="F" if fortran else "C"))
        check_inflate(zi, self.path)
        try:
            with self._zf.open(zi) as fp:
                return _to_native(np.lib.format.read_array(fp, allow_pickle=False))
        except ZIP_ERRORS as e:
            raise FormatError(f"{self.path}[{zi.filename}]: cannot read array: {e}") from None

    def close(self) -> None:
        self._zf.close()


def _check_tensor(name: object, arr: object) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise TypeError(f"tensors: names must be non-empty str, got {name!r}")
    a = np.asanyarray(arr)
    if a.dtype.hasobject or a.dtype.kind not in "biufc":
        raise TypeError(f"tensors[{name!r}]: expected a numeric array, got dtype {a.dtype}")
    return a


def write_npz(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray]) -> None:
    """Write `tensors` to an uncompressed ``.npz`` archive, atomically, one tensor at a time.

    Parameters
    ----------
    path : str or PathLike
        Output file; replaced only once the whole archive is written.
    tensors : Mapping[str, ndarray]
        Name -> numeric array (may be a lazy :class:`TensorSource`). Dtypes are kept.

    Raises
    ------
    TypeError
        If a name is not a non-empty string or an array is not numeric.
    """
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in tensors:
            a = _check_tensor(name, tensors[name])
            with zf.open(name + ".npy", "w", force_zip64=True) as m:
                np.lib.format.write_array(m, np.asarray(a), allow_pickle=False)
            del a  # drop this tensor before the next one is made


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write one array to a ``.npy`` file, atomically (dtype kept, no pickle)."""
    a = _check_tensor("array", array)
    with atomic_write(path) as f:
        np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
