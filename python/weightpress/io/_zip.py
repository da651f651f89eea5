"""Zip helpers shared by the zip-based formats (.npz, PyTorch, .keras).

Members stored without compression are read in place: :func:`member_data_offset` finds where
a member's bytes start in the archive so they can be memory-mapped, and :class:`RangeFile`
exposes them as a seekable read-only file (for h5py).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

from ._base import FormatError, inflate_limit

# what reading a damaged zip can raise (zlib.error from a corrupt deflate stream,
# NotImplementedError from a made-up version or method field, RuntimeError from a set
# "encrypted" flag)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error,
              zlib.error, NotImplementedError, UnicodeDecodeError, RuntimeError)

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader (30 bytes)


def open_zip(path: str, what: str) -> zipfile.ZipFile:
    """Open `path` as a zip archive, or raise FormatError naming the file and `what` it should be."""
    try:
        return zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: not a valid {what} (zip archive unreadable: {e})") from None


def member_data_offset(path: str, info: zipfile.ZipInfo) -> int | None:
    """Byte offset of member `info`'s data in the archive at `path`, or None if not stored raw.

    Only members stored uncompressed and unencrypted can be read in place; for them the offset
    is read from the member's local header (whose extra field may differ from the central
    directory's), and checked against the file size.
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise FormatError(f"{path}: zip member {info.filename!r} has a truncated local header")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise FormatError(f"{path}: zip member {info.filename!r} has a corrupt local header")
    start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
    if start + info.file_size > size:
        raise FormatError(
            f"{path}: zip member {info.filename!r} is truncated "
            f"(needs bytes up to {start + info.file_size}, file has {size})"
        )
    return start


def check_inflate(info: zipfile.ZipInfo, path: str) -> None:
    """FormatError if member `info`, compressed, would inflate past :func:`inflate_limit`.

    A stored member is bounded by the archive itself; zipfile never reads a member past its
    declared ``file_size``, so checking the declared size bounds the memory or disk it takes.
    """
    if info.compress_type == zipfile.ZIP_STORED:
        return
    limit = inflate_limit(os.path.getsize(path))
    if info.file_size > limit:
        raise FormatError(f"{path}: zip member {info.filename!r} inflates to {info.file_size} "
                          f"bytes, more than this archive may hold ({limit}): refusing a zip bomb")


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    """Whole member as bytes, with zip errors (bad CRC, truncation) raised as FormatError, and
    a compressed member's size bounded by the archive's (:func:`check_inflate`)."""
    check_inflate(info, path)
    try:
        return zf.read(info)
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: zip member {info.filename!r} unreadable: {e}") from None


class RangeFile(io.RawIOBase):
    """Read-only seekable view of bytes ``[start, start + length)`` of the file at `path`."""

    def __init__(self, path: str, start: int, length: int):
        super().__init__()
        self._f = open(path, "rb")
        self._start, self._len, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = max(0, min(len(b), self._len - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
