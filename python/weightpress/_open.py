"""Built-in model opening and dense saving for ``.safetensors`` and ``.npz``.

Used only until ``weightpress.io.open_model`` / ``save_model`` exist (they cover every
format); :func:`weightpress.compress.open_source` and the CLI prefer those when importable.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .io._base import FormatError, TensorInfo, TensorSource, atomic_write
from .io.safetensors import SafetensorsSource, write_safetensors

__all__ = ["open_builtin", "save_builtin", "NpzSource"]


class NpzSource(TensorSource):
    """An ``.npz`` archive as a lazy mapping (each member read when indexed)."""

    format = "npz"

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        try:
            self._z = np.load(self.path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
                raise
            raise FormatError(f"{self.path}: not a readable .npz archive ({e})") from None
        if not isinstance(self._z, np.lib.npyio.NpzFile):
            raise FormatError(f"{self.path}: a .npy array, not an .npz archive")
        self._info: dict[str, TensorInfo] = {}
        for name in self._z.files:
            with self._z.zip.open(name + ".npy") as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dt = read(f)
                except ValueError as e:
                    raise FormatError(f"{self.path}: member {name!r}: {e}") from None
            self._info[name] = TensorInfo(shape, dt)

    def info(self) -> dict[str, TensorInfo]:
        return self._info

    def _load(self, name: str) -> np.ndarray:
        try:
            return self._z[name]
        except (ValueError, zipfile.BadZipFile, EOFError) as e:
            raise FormatError(f"{self.path}: member {name!r}: {e}") from None

    def close(self) -> None:
        self._z.close()


def open_builtin(path: str | os.PathLike[str]) -> TensorSource:
    """Open ``.safetensors`` or ``.npz`` by content (magic bytes), then by extension."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise IsADirectoryError(f"{p} is a directory, expected a model file")
    with open(p, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return NpzSource(p)
    if p.endswith(".npz"):
        raise FormatError(f"{p}: not a zip archive, so not an .npz file")
    if p.endswith((".safetensors", ".wpz")) or len(head) == 4:
        return SafetensorsSource(p)
    raise FormatError(f"{p}: unrecognised model format (built in: .safetensors, .npz)")


def save_builtin(path: str | os.PathLike[str], tensors: Mapping[str, Any], *,
                 dtypes: Mapping[str, str] | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors densely to ``.safetensors`` (default) or ``.npz``, one at a time, atomically."""
    p = os.fspath(path)
    if p.endswith(".npz"):
        with atomic_write(p) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in tensors:
                with z.open(name + ".npy", "w", force_zip64=True) as m:
                    np.lib.format.write_array(m, np.asarray(tensors[name]), allow_pickle=False)
        return
    write_safetensors(p, tensors, metadata or None, dtypes=dtypes)
