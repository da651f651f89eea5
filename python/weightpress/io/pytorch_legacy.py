"""Legacy (pre-1.6, non-zip) PyTorch checkpoints, read without torch and without running code.

``torch.save(..., _use_new_zipfile_serialization=False)`` (and every ``torch.save`` before 1.6)
writes five pickles back to back, then the raw storages:

1. the magic number ``0x1950a86a20f9469cfc6c``, 2. the protocol version (1001), 3. a dict of
system facts (``little_endian``, type sizes), 4. the object itself, whose tensors refer to
storages by persistent ids ``("storage", <storage class>, key, location, numel, view)``, 5. the
sorted list of storage keys; then for each key in that order an 8-byte little-endian element
count followed by the storage's raw bytes.

All five pickles go through the same allow-list unpickler as zip checkpoints
(:mod:`.pytorch_pickle`): nothing in the file is executed. The storages are located by walking
the count fields once, then memory-mapped: nothing is read until a tensor is asked for.
"""

from __future__ import annotations

import io
import os
import pickletools
import struct
from typing import Any, BinaryIO

import numpy as np

from ._base import FormatError
from .pytorch import PyTorchSource, _flatten
from .pytorch_pickle import (STORAGE_DTYPES, SafeUnpickler, Storage, StorageType, TensorRef,
                             as_format_error, check_nesting)

__all__ = ["LegacyPyTorchSource", "is_legacy_pytorch"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def is_legacy_pytorch(path: str) -> bool:
    """True if `path` starts like a legacy checkpoint (a pickle, not a zip archive)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


class _LegacyUnpickler(SafeUnpickler):
    """The allow-list unpickler with the legacy format's six-field storage ids."""

    def __init__(self, file: Any, source: str, storages: dict[str, Storage]):
        super().__init__(file, source)
        self.storages = storages

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise FormatError(f"{self.source}: unknown persistent id {str(pid)[:80]!r}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, StorageType) or stype.name == "UntypedStorage":
            raise FormatError(f"{self.source}: persistent id names no typed storage")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise FormatError(f"{self.source}: malformed storage record {str(pid)[:80]!r}")
        if view is not None:
            raise FormatError(f"{self.source}: storage views (torch < 0.4 checkpoints) are not "
                              "supported; re-save the checkpoint with a current torch")
        dtype, stored = STORAGE_DTYPES[stype.name]
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = Storage(key, dtype, stored, numel)
        elif st.dtype != dtype:
            raise FormatError(f"{self.source}: storage {key!r} used with two dtypes")
        return st


class _Bounded:
    """Reads of a file clamped to what is left of it: a pickle opcode announcing a
    multi-gigabyte string must not make ``read(n)`` allocate ``n`` bytes (found by fuzzing: a
    340-byte file took 18 GB)."""

    def __init__(self, f: BinaryIO, size: int):
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._f.readline(max(1, min(1 << 20, self._size - self._f.tell())))


def _one_pickle(f: BinaryIO, source: str) -> bytes:
    """The bytes of the pickle starting at ``f``'s position (found by walking its opcodes, so
    nothing is built), leaving ``f`` just past it."""
    start = f.tell()
    size = os.fstat(f.fileno()).st_size
    try:
        for op, _, _ in pickletools.genops(_Bounded(f, size)):
            if op.name == "STOP":
                break
        else:
            raise ValueError("no STOP opcode")
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as e:
        raise FormatError(f"{source}: corrupt pickle ({e})") from None
    end = f.tell()
    f.seek(start)
    raw = f.read(end - start)
    f.seek(end)
    return raw


def _load(f: BinaryIO, source: str, storages: dict[str, Storage]) -> Any:
    raw = _one_pickle(f, source)
    check_nesting(raw, source)
    return as_format_error(lambda: _LegacyUnpickler(io.BytesIO(raw), source, storages).load(),
                           source)


class LegacyPyTorchSource(PyTorchSource):
    """A legacy (non-zip) PyTorch checkpoint as a lazy mapping of dotted names to arrays.

    Same names, dtypes and views as :class:`~weightpress.io.pytorch.PyTorchSource`; storages
    are memory-mapped from the file.
    """

    def __init__(self, path: str | os.PathLike[str]):  # noqa: D107 - no zip to open
        self.path = os.fspath(path)
        self.stored_dtypes = {}
        self.metadata = {}
        self.aliases = {}
        storages: dict[str, Storage] = {}
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            if _load(f, self.path, storages) != MAGIC_NUMBER:
                raise FormatError(f"{self.path}: not a PyTorch checkpoint (no legacy magic number; "
                                  "an arbitrary pickle is never loaded)")
            version = _load(f, self.path, storages)
            if version != PROTOCOL_VERSION:
                raise FormatError(f"{self.path}: legacy checkpoint protocol {version!r}, "
                                  f"expected {PROTOCOL_VERSION}")
            sys_info = _load(f, self.path, storages)
            if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
                raise FormatError(f"{self.path}: big-endian checkpoint is not supported")
            obj = _load(f, self.path, storages)
            keys = _load(f, self.path, storages)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise FormatError(f"{self.path}: malformed storage key list")
            self._offsets: dict[str, tuple[int, int]] = {}  # key -> (byte offset, element count)
            pos = f.tell()
            for key in keys:
                f.seek(pos)
                head = f.read(8)
                if len(head) != 8:
                    raise FormatError(f"{self.path}: truncated before storage {key!r}")
                (count,) = struct.unpack("<q", head)
                st = storages.get(key)
                item = st.dtype.itemsize if st is not None else 1
                end = pos + 8 + count * item
                if count < 0 or end > size:
                    raise FormatError(f"{self.path}: storage {key!r} runs past the end of the file")
                self._offsets[key] = (pos + 8, count)
                pos = end
        missing = set(storages) - set(self._offsets)
        if missing:
            raise FormatError(f"{self.path}: storage {sorted(missing)[0]!r} is missing")
        self._refs = _flatten(obj, self.path)
        self._index_refs()

    def _storage(self, ref: TensorRef) -> np.ndarray:
        start, count = self._offsets[ref.storage.key]
        if count == 0:
            return np.empty(0, ref.storage.dtype)
        return np.memmap(self.path, dtype=ref.storage.dtype, mode="r", offset=start, shape=(count,))

    def close(self) -> None:
        pass
