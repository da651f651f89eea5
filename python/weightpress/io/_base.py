"""What every model-file reader provides, and atomic output files.

A model opens as a lazy, read-only mapping ``name -> numpy array``: listing names, shapes and
dtypes reads only the file's header; indexing reads (or memory-maps) one tensor. Readers hold
at most one tensor in memory at a time on their own, so a checkpoint larger than memory can be
streamed tensor by tensor.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np


class FormatError(ValueError):
    """A model file is corrupt, truncated, or not in the format it claims."""


# Limits that keep time and memory bounded by the input file, whatever a crafted file says.
MAX_ELEMENTS_BYTES = 2**62  # a tensor's byte size (non-zero dims) must fit NumPy's intp with room
INFLATE_FACTOR = 16  # a compressed zip member read into memory may inflate to this many times
INFLATE_SLACK = 64 * 1024 * 1024  # the archive's size plus this many bytes, and no more


def inflate_limit(archive_bytes: int) -> int:
    """Most bytes a compressed member of an archive of `archive_bytes` may decompress to when it
    is read into memory or a temporary file (``INFLATE_FACTOR * size + INFLATE_SLACK``)."""
    return INFLATE_FACTOR * int(archive_bytes) + INFLATE_SLACK


def check_shape(shape: Any, itemsize: int, where: str) -> tuple[int, ...]:
    """`shape` as a tuple of ints, or FormatError when it is not one NumPy can hold.

    Each dimension must be a non-negative int, and the byte size of the non-zero dimensions
    must stay below :data:`MAX_ELEMENTS_BYTES` (NumPy refuses larger shapes even with a zero
    dimension, e.g. ``[0, 2**64]``).
    """
    try:
        dims = tuple(shape)
    except TypeError:
        raise FormatError(f"{where}: shape must be a sequence of ints, got {type(shape).__name__}") from None
    total = max(1, int(itemsize))
    for d in dims:
        if type(d) is not int and not isinstance(d, np.integer) or isinstance(d, bool) or d < 0:
            raise FormatError(f"{where}: shape must hold non-negative ints, got {shape!r:.200}")
        if d:
            total *= int(d)
            if total > MAX_ELEMENTS_BYTES:
                raise FormatError(f"{where}: shape {shape!r:.200} is too large to hold "
                                  f"(over 2**62 bytes)")
    return tuple(int(d) for d in dims)


def unique_name(out: Mapping[str, Any], name: str, counters: dict[str, int]) -> str:
    """`name`, or ``name#k`` with the first free k, in amortised O(1): each name's counter only
    moves forward (a quadratic ``while key in out`` let a 1 KB file take hours)."""
    if name not in out:
        return name
    k = counters.get(name, 1)
    key = name
    while key in out:
        k += 1
        key = f"{name}#{k}"
    counters[name] = k
    return key


class TensorInfo(tuple):
    """(shape, dtype) of a stored tensor, readable without loading it."""

    __slots__ = ()

    def __new__(cls, shape: tuple[int, ...], dtype: np.dtype) -> "TensorInfo":
        # a shape that already is a tuple of ints is shared, not copied (readers keep one
        # TensorInfo per tensor: 200k tensors in one header)
        if type(shape) is not tuple or not all(type(s) is int for s in shape):
            shape = tuple(int(s) for s in shape)
        return super().__new__(cls, (shape, dtype if type(dtype) is not str and isinstance(dtype, np.dtype)
                                     else np.dtype(dtype)))

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


def make_temp(directory: str, prefix: str = ".wp-", suffix: str = ".tmp") -> tuple[int, str]:
    """Create a new private file in `directory`: ``(fd, path)``, like ``tempfile.mkstemp``.

    Unlike mkstemp, the name is chosen before the file exists, so a signal (Ctrl-C, SIGTERM)
    arriving just as the file is created still lets this function remove it: no window leaves
    an orphaned temporary file behind.
    """
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        except BaseException:
            with contextlib.suppress(OSError):  # created just before the interrupt: ours
                if os.path.exists(path):
                    os.unlink(path)
            raise
        return fd, path
    raise FileExistsError(f"{directory}: cannot create a temporary file")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *,
                 durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success rename it over `path`.

    A failure (exception, Ctrl-C) removes the temporary file and leaves any existing `path`
    untouched, so a failed run never leaves a half-written output. ``durable``: the data is
    on disk (fsync) before the rename; False for scratch files that nothing reads after a
    crash (each fsync waits for the disk).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:  # mkstemp inside the try: a signal right after it still removes the file
        fd, tmp = make_temp(d)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes 0600 files; give the output the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
