"""Keeping the resident set near what a computation holds (issue 15).

Two leaks of resident memory that no Python object shows:

- glibc keeps the pages of freed chunks mapped while a live chunk sits above them, so building
  and dropping full-size candidates one after another (``auto``, the calibrated methods) grew
  the resident set well past what was held at any one time. The methods call
  :func:`release_free_memory` once a candidate is dropped: ``malloc_trim`` (a no-op elsewhere).
- A weight read from a model file views a read-only file mapping, whose touched pages stay
  resident beside what a method builds from it: :func:`release_rows` (from
  :mod:`weightpress._pages`) drops those a pass has finished with.
"""

from __future__ import annotations

from .. import _core
from .._pages import file_backed, release_rows, row_blocks

__all__ = ["release_free_memory", "release_rows", "file_backed", "row_blocks"]


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``)."""
    _core.release_free_memory()
