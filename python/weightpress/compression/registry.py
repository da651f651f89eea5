"""One way to compress a matrix: ``compress(W, method, budget, storage=..., calibration=...)``.

Every method (magnitude or OBS pruning, N:M, low rank (plain or whitened), sparse + low rank,
sparse coding, integer quantization (round to nearest, or GPTQ with calibration), and
``auto``, which picks among them) is reached through the same signature; a
:class:`~weightpress.compression.storage.Budget` says what it may cost (bytes, or a relative
error: in weight space, or in output space when calibration statistics are given). Method
*settings* that fix the size outright (``pattern`` for N:M, ``n_nonzero`` for sparse coding)
travel in ``options`` and take the budget's place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import methods as M
from .aware import compress_aware
from .calibration import CalibrationStats
from .matrices import CompressedMatrix
from .storage import Budget

__all__ = ["METHODS", "compress"]

METHODS = M.METHODS


def compress(W: Any, method: str = "auto", budget: Budget | None = None, *,
             storage: str | None = None, layout: str = "out_in",
             calibration: CalibrationStats | None = None,
             options: Mapping[str, Any] | None = None, prefer: str = "size") -> CompressedMatrix:
    """Compress one weight matrix with ``method`` to ``budget``.

    Parameters
    ----------
    W : array_like
        The stored weight, 2-D (``[out, in]`` for ``layout="out_in"``).
    method : str
        One of :data:`METHODS`.
    budget : Budget, optional
        Bytes or relative error; may be omitted only when ``options`` fixes the size
        (``pattern`` for ``nm``, ``n_nonzero`` for ``code``).
    storage : str, optional
        ``"BF16"``: float32 values stored as bfloat16 (budgeted at 2 bytes).
    calibration : CalibrationStats, optional
        The layer's input statistics: the data-aware variant of the method, errors in output
        space.
    options : mapping, optional
        ``pattern`` (N:M), ``n_nonzero``/``dictionary`` (sparse coding), ``bits``/``group``/
        ``symmetric`` (a fixed precision for ``quant``), ``damp``, ``coding`` (``"zstd"``:
        integer codes entropy-coded, budgets met by coded sizes).
    prefer : str
        ``"size"`` or ``"speed"`` (data-aware: the fastest form meeting the budget).

    Examples
    --------
    >>> import numpy as np
    >>> from weightpress.compression.registry import compress
    >>> from weightpress.compression.storage import Budget
    >>> W = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    >>> compress(W, "lowrank", Budget(nbytes=W.nbytes / 4)).rank
    6
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    o = dict(options or {})
    error, nbytes = budget.pair() if budget is not None else (None, None)
    if calibration is not None and method == M.LOWRANK_INT8:
        raise ValueError(f"method: {M.LOWRANK_INT8} has no data-aware variant (drop the calibration)")
    if calibration is not None:
        if "pattern" in o:
            method, nbytes, error = "nm", float(np.asarray(W).nbytes), None
        elif "bits" in o:  # a fixed precision: the quant builder takes it from the options
            method, nbytes, error = "quant", float(np.asarray(W).nbytes), None
        return compress_aware(W, calibration, method, error=error, nbytes=nbytes, options=o,
                              layout=layout, storage=storage, prefer=prefer)
    kw: dict[str, Any] = {"layout": layout, "storage": storage}
    if method == "prune":
        return M.magnitude_prune(W, error=error, nbytes=nbytes, **kw)
    if method == "nm":
        if "pattern" in o:
            return M.nm_prune(W, o["pattern"], **kw)
        return M.nm_prune(W, error=error, nbytes=nbytes, **kw)
    if method == "lowrank":
        return M.low_rank(W, error=error, nbytes=nbytes, **kw)
    if method == "slr":
        return M.auto(W, error=error, nbytes=nbytes, forms=("sparse+lowrank",), **kw)
    coding = o.get("coding")
    if method == "quant":
        p = M.precision_of(o)
        if p is not None:
            return M.quantized(W, bits=p.bits, group=p.group, symmetric=p.symmetric, layout=layout)
        return M.quantized(W, error=error, nbytes=nbytes, layout=layout, coding=coding)
    if method == M.LOWRANK_INT8:  # low rank, factors in int8 (compression/lowrank_quant.py)
        if "rank" in o:
            return M.lowrank_int8(W, int(o["rank"]), layout=layout)
        return M.lowrank_int8(W, error=error, nbytes=nbytes, layout=layout)
    if method == "code":
        dictionary = o.get("dictionary", "dct")
        if "n_nonzero" in o:
            return M.sparse_coded(W, n_nonzero=int(o["n_nonzero"]), dictionary=dictionary, **kw)
        return M.sparse_coded(W, error=error, nbytes=nbytes, dictionary=dictionary, **kw)
    return M.auto(W, error=error, nbytes=nbytes, coding=coding, **kw)
