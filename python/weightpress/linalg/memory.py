"""Returning the C heap's free pages to the system between full-size temporaries.

glibc keeps the pages of freed chunks mapped while a live chunk sits above them, so building
and dropping full-size candidates one after another (``auto``, the calibrated methods) grew
the resident set well past what was held at any one time (issue 15). The methods call
:func:`release_free_memory` once a candidate is dropped: ``malloc_trim`` (a no-op elsewhere).
"""

from __future__ import annotations

from .. import _core

__all__ = ["release_free_memory"]


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``)."""
    _core.release_free_memory()
