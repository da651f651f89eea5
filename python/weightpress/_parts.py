"""Compressed matrices rebuilt from the arrays a container stores (see :meth:`parts`)."""

from __future__ import annotations

import numpy as np

from .compressed import SparseCoded, CompressedMatrix, Dense, LowRank, Sparse, SparsePlusLowRank

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
                               "lowrank.left", "lowrank.right"},
            "sparse-coded": {"codes.data", "codes.indices", "codes.indptr"}}
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
    elif form == "sparse-coded":
        codes = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith("codes.")}
        if ("dictionary" in parts) == ("dct_shape" in parts):
            raise ValueError("sparse-coded: expected exactly one of 'dictionary' and 'dct_shape'")
        if "dictionary" in parts:
            D = parts["dictionary"]
            if D.ndim != 2 or D.shape[0] != shape[1]:
                raise ValueError(f"sparse-coded: dictionary has shape {D.shape}, expected ({shape[1]}, k)")
            k = D.shape[1]
        else:
            ds = parts["dct_shape"]
            if ds.shape != (2,) or int(ds[0]) != shape[1] or int(ds[1]) < 1:
                raise ValueError("sparse-coded: malformed dct_shape")
            k = int(ds[1])
        C = Sparse.from_parts(codes["data"], codes["indices"], codes["indptr"], (shape[0], k), layout)
        m = (SparseCoded(C, parts["dictionary"]) if "dictionary" in parts
             else SparseCoded(C, dct_atoms=shape[1]))
    else:
        sub = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith("sparse.")}
        low = {k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith("lowrank.")}
        m = SparsePlusLowRank(from_parts("sparse", sub, shape, layout),  # type: ignore[arg-type]
                              from_parts("lowrank", low, shape, layout))  # type: ignore[arg-type]
    if m.shape != shape:
        raise ValueError(f"{form}: stored arrays give shape {m.shape}, expected {shape}")
    return m
