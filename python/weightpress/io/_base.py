"""What every model-file reader provides, and atomic output files.

A model opens as a lazy, read-only mapping ``name -> numpy array``: listing names, shapes and
dtypes reads only the file's header; indexing reads (or memory-maps) one tensor. Readers hold
at most one tensor in memory at a time on their own, so a checkpoint larger than memory can be
streamed tensor by tensor.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np


class FormatError(ValueError):
    """A model file is corrupt, truncated, or not in the format it claims."""


class TensorInfo(tuple):
    """(shape, dtype) of a stored tensor, readable without loading it."""

    __slots__ = ()

    def __new__(cls, shape: tuple[int, ...], dtype: np.dtype) -> "TensorInfo":
        return super().__new__(cls, (tuple(int(s) for s in shape), np.dtype(dtype)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self[0]

    @property
    def dtype(self) -> np.dtype:
        return self[1]

    @property
    def size(self) -> int:
        return int(np.prod(self[0], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self[1].itemsize


class TensorSource(Mapping[str, np.ndarray]):
    """Lazy read-only mapping name -> array over one model file.

    Subclasses implement :meth:`info` (name -> :class:`TensorInfo`, header only) and
    :meth:`_load` (one tensor as an ndarray, memory-mapped where the format allows). bf16 and
    other dtypes NumPy lacks are returned as float32; ``info`` reports the stored dtype name in
    :attr:`stored_dtypes`.
    """

    format: str = "?"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.stored_dtypes: dict[str, str] = {}
        self.metadata: dict[str, str] = {}

    # -- to implement -------------------------------------------------------------------
    def info(self) -> dict[str, TensorInfo]:
        raise NotImplementedError

    def _load(self, name: str) -> np.ndarray:
        raise NotImplementedError

    # -- Mapping --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.info():
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.info())

    def __len__(self) -> int:
        return len(self.info())

    def close(self) -> None:
        """Release file handles and maps (arrays already returned stay valid if copied)."""

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.format} {self.path!r}: {len(self)} tensors>"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success rename it over `path`.

    A failure (exception, Ctrl-C) removes the temporary file and leaves any existing `path`
    untouched, so a failed run never leaves a half-written output.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".wp-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes 0600 files; give the output the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
