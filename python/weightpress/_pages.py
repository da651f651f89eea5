"""Releasing the resident pages of a weight read from a model file (issue 15).

A weight read from a model file views a read-only file mapping (safetensors, npz, PyTorch,
ONNX, Keras readers): every page a pass touches stays in the process's resident set until the
mapping goes, a full copy of the tensor (1.0x of it) beside whatever the method builds from it.
:func:`release_rows` drops the resident pages of rows a pass has finished with; the kernel reads
them back from the page cache (or the file) if they are touched again, so values never change.
Anything else (arrays the process owns, copy-on-write or writable mappings) is left alone.
A base module (no weightpress imports), so that input validation's own passes release too.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["release_rows", "file_backed", "row_blocks"]

_PAGE = mmap.PAGESIZE


def _mapping(a: np.ndarray) -> mmap.mmap | None:
    """The read-only file mapping whose memory ``a`` views, or None."""
    b: Any = a
    while b is not None and not isinstance(b, mmap.mmap):
        b = getattr(b, "base", None)
    if b is None:
        return None
    try:
        with memoryview(b) as v:
            if not v.readonly:  # copy-on-write or shared-writable: its pages are its data
                return None
    except ValueError:  # closed
        return None
    return b


def file_backed(a: Any) -> bool:
    """Whether ``a`` views a read-only file mapping (its pages can be dropped and read back)."""
    return isinstance(a, np.ndarray) and _mapping(a) is not None


class _Plan:
    """Where a file-mapped array's rows lie in its mapping, worked out once per array (a pass
    releases its rows a block at a time: the walk to the mapping and the address lookups were
    most of each call's time, ~7 % of a calibrated build's, under the GIL)."""

    __slots__ = ("mm", "start", "row", "row_bytes", "n", "rows_ok", "span", "ref")

    def __init__(self, a: np.ndarray, mm: mmap.mmap):
        self.mm = weakref.ref(mm)  # (a plan outliving its array keeps no file mapped)
        self.ref = weakref.ref(a)
        self.start = a.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
        self.n = a.shape[0] if a.ndim else 1
        self.rows_ok = bool(a.flags.c_contiguous
                            or (a.ndim >= 1 and a[0:1].flags.c_contiguous and a.strides[0] > 0))
        self.row = a.strides[0] if a.ndim else a.itemsize
        self.row_bytes = a[0].nbytes if a.ndim else a.itemsize
        offs = [st * (d - 1) for st, d in zip(a.strides, a.shape)]
        self.span = (self.start + sum(o for o in offs if o < 0),
                     self.start + sum(o for o in offs if o > 0) + a.itemsize)

    def release(self, r0: int, r1: int) -> None:
        if r1 <= r0:
            return
        if self.rows_ok:
            lo, hi = self.start + r0 * self.row, self.start + (r1 - 1) * self.row + self.row_bytes
        elif r0 == 0 and r1 == self.n:  # other strides: the whole span, once the pass is over
            lo, hi = self.span
        else:
            return
        mm = self.mm()
        if mm is None:
            return
        lo = max(0, lo // _PAGE * _PAGE)
        try:
            hi = min(len(mm), -(-hi // _PAGE) * _PAGE)
            if hi > lo:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except ValueError:  # the mapping was closed: nothing is resident
            pass


_PLANS: dict[int, _Plan] = {}  # id(array) -> its plan, while that array lives (a few kept)


def _plan(a: Any) -> _Plan | None:
    if not isinstance(a, np.ndarray) or a.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    p = _PLANS.get(id(a))
    if p is not None and p.ref() is a:
        return p
    mm = _mapping(a)
    if mm is None:
        return None
    p = _Plan(a, mm)
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[id(a)] = p
    return p


def release_rows(a: Any, r0: int = 0, r1: int | None = None) -> None:
    """Drop the resident pages holding rows ``r0:r1`` of ``a`` (all rows by default) when
    ``a`` views a read-only file mapping; a no-op for any other array.

    ``madvise(MADV_DONTNEED)`` on a read-only shared file mapping only unmaps the pages: a
    later read faults them back in from the page cache, with the same bytes. The range is
    rounded out to whole pages (a neighbour's bytes sharing a page are read back the same
    way). Rows are those of a C-contiguous ``a``, or of its first axis where each row is
    contiguous; other layouts release the whole span they cover once ``r0:r1`` is all rows.
    """
    p = _plan(a)
    if p is None:
        return
    p.release(max(0, int(r0)), p.n if r1 is None else min(int(r1), p.n))


def row_blocks(a: Any, step: int) -> Iterator[tuple[int, int]]:
    """``(r0, r1)`` over the rows of ``a`` in blocks of ``step``, each block's rows released
    (:func:`release_rows`) once the loop's body for it is done: a pass that reads a file's
    tensor through this loop holds one block of its pages, not the tensor. A loop left early
    releases nothing more."""
    rows = a.shape[0]
    step = max(1, int(step))
    p = _plan(a)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        yield r0, r1
        if p is not None:
            p.release(r0, r1)
