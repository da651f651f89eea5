"""Compressed matrices rebuilt from the arrays a container stores (see :meth:`parts`)."""

from __future__ import annotations

import numpy as np

from .compressed import CompressedMatrix, Dense, LowRank, Sparse, SparsePlusLowRank

__all__ = ["from_parts"]


def from_parts(form: str, parts: dict[str, np.ndarray], shape: tuple[int, int],
               layout: str = "out_in") -> CompressedMatrix:
    """Rebuild a compressed matrix from its stored arrays (as :meth:`~CompressedMatrix.parts`).

    Raises
    ------
    ValueError
        Unknown form, missing parts, or parts inconsistent with ``shape``.
    """
    shape = (int(shape[0]), int(shape[1]))
    need = {"dense": {"values"}, "sparse": {"data", "indices", "indptr"},
            "lowrank": {"left", "right"},
            "sparse+lowrank": {"sparse.data", "sparse.indices", "sparse.indptr",
                               "lowrank.left", "lowrank.right"}}
    if form not in need:
        raise ValueError(f"form: expected one of {sorted(need)}, got {form!r}")
    missing = need[form] - parts.keys()
    if missing:
        raise ValueError(f"{form}: missing stored arrays {sorted(missing)}")
    if form == "dense":
        m = Dense(parts["values"], layout)
    elif form == "sparse":
        m = Sparse.from_parts(parts["data"], parts["indices"], parts["indptr"], shape, layout)
    elif form == "lowrank":
        m = LowRank(parts["left"], parts["right"], layout)
    else:
        sub = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith("sparse.")}
        low = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith("lowrank.")}
        m = SparsePlusLowRank(from_parts("sparse", sub, shape, layout),  # type: ignore[arg-type]
                              from_parts("lowrank", low, shape, layout))  # type: ignore[arg-type]
    if m.shape != shape:
        raise ValueError(f"{form}: stored arrays give shape {m.shape}, expected {shape}")
    return m
