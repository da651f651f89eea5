"""Soft and hard thresholding: the proximal operators of the l1 norm and the l0 penalty."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._threads import _resolve
from .._validation import as_float_array, real_scalar

__all__ = ["soft_threshold", "hard_threshold"]


def _c_view(a: np.ndarray) -> np.ndarray | None:
    """A C-contiguous view of the same memory in the same element order as `a`'s layout."""
    if a.flags.c_contiguous:
        return a
    if a.flags.f_contiguous:
        return a.T
    return None


def _level(v: Any, name: str) -> float:
    """A threshold: a real number >= 0, +inf included (both operators are defined there); NaN
    and -inf are rejected."""
    if isinstance(v, (float, np.floating)) and v == np.inf:
        return float("inf")
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        raise ValueError(f"{name} must be a number >= 0 (inf allowed), got nan")
    return real_scalar(v, name, low=0.0)


def _threshold(x: Any, level: Any, out: np.ndarray | None, kind: _core.Shrink, level_name: str,
               n_threads: int | None) -> np.ndarray:
    lv = _level(level, level_name)
    xa = as_float_array(x, "x")
    n = _resolve(n_threads)
    if out is None:
        out = np.empty_like(xa, order="K")
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy array, got {type(out).__name__}")
        if out.dtype != xa.dtype:
            raise TypeError(f"out: expected dtype {xa.dtype} (the dtype of the result), got {out.dtype}")
        if out.shape != xa.shape:
            raise ValueError(f"out: expected shape {xa.shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
    ov = _c_view(out)
    same_memory = out is xa or (out.__array_interface__["data"][0] == xa.__array_interface__["data"][0]
                                and out.strides == xa.strides)
    overlaps = not same_memory and np.may_share_memory(out, xa)
    if ov is not None and not overlaps:
        # x in the layout of out (a copy only when the layouts differ)
        xv = _c_view(xa) if xa.strides == out.strides else None
        if xv is None:
            xv = np.ascontiguousarray(xa) if ov is out else np.asfortranarray(xa).T
        _core.threshold(xv.reshape(-1), lv, ov.reshape(-1), kind, n)
    else:  # strided or partially overlapping out: compute into a temporary, then copy
        xc = np.ascontiguousarray(xa)
        tmp = np.empty_like(xc)
        _core.threshold(xc.reshape(-1), lv, tmp.reshape(-1), kind, n)
        out[...] = tmp
    return out


def soft_threshold(x: Any, lam: float, out: np.ndarray | None = None, *,
                   n_threads: int | None = None) -> np.ndarray:
    """Soft thresholding ``sign(x) * max(|x| - lam, 0)``, elementwise.

    The proximal operator of ``lam * ||x||_1``. One fused pass over the data.

    Parameters
    ----------
    x : array_like
        Input of any shape, strides and layout. float32 stays float32; float64 stays float64;
        integer input is computed in float64, float16 in float32.
    lam : float
        Threshold, ``>= 0``; ``inf`` is allowed (every finite entry becomes a zero). NaN is
        rejected.
    out : numpy.ndarray, optional
        Where to write the result: same shape as ``x`` and exactly the result dtype. ``out=x``
        works in place.
    n_threads : int, optional
        Threads to use (default: :func:`weightpress.get_num_threads`).

    Returns
    -------
    numpy.ndarray
        ``out`` (or a new array in ``x``'s layout).

    Raises
    ------
    ValueError
        If ``lam`` is negative or NaN, or ``out`` has the wrong shape or is read-only.
    TypeError
        If ``x`` is not real numeric, or ``out`` has the wrong dtype.

    Notes
    -----
    NaN propagates (``soft_threshold(nan, lam)`` is NaN); ``±inf`` stays ``±inf`` for finite
    ``lam`` (``inf - inf`` is NaN, as NumPy computes it, for ``lam = inf``). Zeroed entries keep
    the sign of ``x`` (``-0.0`` for negative ``x``), exactly as the formula computes in NumPy.
    Memory-bound: one read and one write per element.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> wp.soft_threshold(np.array([-2.0, 0.5, 3.0]), 1.0)
    array([-1.,  0.,  2.])
    """
    return _threshold(x, lam, out, _core.Shrink.soft, "lam", n_threads)


def hard_threshold(x: Any, theta: float, out: np.ndarray | None = None, *,
                   n_threads: int | None = None) -> np.ndarray:
    """Hard thresholding ``x * (|x| >= theta)``, elementwise.

    Parameters
    ----------
    x : array_like
        Input of any shape, strides and layout (dtype rules as :func:`soft_threshold`).
    theta : float
        Threshold, ``>= 0``; ``inf`` is allowed (only infinite entries are kept). NaN is
        rejected. Entries with ``|x| >= theta`` are kept.
    out : numpy.ndarray, optional
        Output array (same shape, exactly the result dtype); ``out=x`` works in place.
    n_threads : int, optional
        Threads to use.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ValueError
        If ``theta`` is negative or NaN, or ``out`` has the wrong shape.
    TypeError
        If ``x`` is not real numeric, or ``out`` has the wrong dtype.

    Notes
    -----
    NaN propagates (it is never zeroed). Zeroed entries keep the sign of ``x``, as
    ``x * (|x| >= theta)`` computes in NumPy.

    Examples
    --------
    >>> import numpy as np, weightpress as wp
    >>> wp.hard_threshold(np.array([-2.0, 0.5, 3.0]), 1.0)
    array([-2.,  0.,  3.])
    """
    return _threshold(x, theta, out, _core.Shrink.hard, "theta", n_threads)
