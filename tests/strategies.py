"""Hypothesis strategies shared by the kernel tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = st.sampled_from([np.float32, np.float64])
INDEX = st.sampled_from([np.int32, np.int64])


def finite(dtype, lo=-1e3, hi=1e3):
    return st.floats(lo, hi, width=32 if np.dtype(dtype) == np.float32 else 64,
                     allow_nan=False, allow_infinity=False)


@st.composite
def dense_arrays(draw, dtype=None, min_dims=0, max_dims=3, max_side=12, layout=True):
    """Arrays of any dims (0-d to 3-d, empty sides allowed), optionally F-order or strided views."""
    dt = np.dtype(draw(DTYPES) if dtype is None else dtype)
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side))
    a = draw(hnp.arrays(dt, shape, elements=finite(dt)))
    if layout and a.ndim >= 1:
        kind = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
        if kind == "F":
            a = np.asfortranarray(a)
        elif kind == "strided":
            big = np.zeros(tuple(2 * s for s in a.shape), dtype=dt)
            big[tuple(slice(None, None, 2) for _ in a.shape)] = a
            a = big[tuple(slice(None, None, 2) for _ in a.shape)]
        elif kind == "reversed":
            a = a[::-1]
    return a


@st.composite
def csr_matrices(draw, dtype=None, max_dim=30, canonical=None):
    dt = np.dtype(draw(DTYPES) if dtype is None else dtype)
    m = draw(st.integers(0, max_dim))
    n = draw(st.integers(0, max_dim))
    density = draw(st.floats(0, 1))
    seed = draw(st.integers(0, 2**32 - 1))
    A = sp.random_array((m, n), density=density, format="csr", dtype=dt, rng=seed)
    A.data = (A.data * 2 - 1).astype(dt)  # signed values
    idx = draw(INDEX)
    canon = draw(st.booleans()) if canonical is None else canonical
    if not canon and A.nnz:
        rng = np.random.default_rng(seed)
        # duplicate some entries and shuffle column order inside rows
        coo = A.tocoo()
        k = max(1, A.nnz // 3)
        pick = rng.integers(0, A.nnz, k)
        rows = np.concatenate([coo.row, coo.row[pick]])
        cols = np.concatenate([coo.col, coo.col[pick]])
        vals = np.concatenate([coo.data, coo.data[pick] * np.asarray(0.5, dt)])
        perm = rng.permutation(len(rows))
        rows, cols, vals = rows[perm], cols[perm], vals[perm]
        order = np.argsort(rows, kind="stable")
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.add.at(indptr, rows + 1, 1)
        indptr = np.cumsum(indptr)
        A = sp.csr_array((vals[order].astype(dt), cols[order], indptr), shape=(m, n))
        A.has_canonical_format = False
        A.has_sorted_indices = False
    A.indptr = A.indptr.astype(idx)
    A.indices = A.indices.astype(idx)
    return A
