"""The byte model (weightpress.compression.storage) against the compressed forms' real bytes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from weightpress.compression import storage as S
from weightpress.compression.matrices import LowRank, Sparse, store_as


@given(m=st.integers(1, 40), n=st.sampled_from([1, 7, 256, 257, 65536, 65537]),
       density=st.floats(0, 1), dtype=st.sampled_from([np.float32, np.float64]),
       bf16=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_sparse_bytes_match_the_model(m, n, density, dtype, bf16, seed):
    if n > 300:  # wide matrices: few rows, so the test stays small
        m = min(m, 2)
    A = sp.random(m, n, density=density if n <= 300 else 1e-4, format="csr", dtype=dtype,
                  random_state=seed)
    storage = "BF16" if bf16 and dtype == np.float32 else None
    s = store_as(Sparse(sp.csr_array(A)), storage)
    isz = S.value_itemsize(dtype, storage)
    assert s.nbytes == S.sparse_nbytes((m, n), A.nnz, isz)
    # nnz_for_bytes is the most entries that fit: one more would not
    k = S.nnz_for_bytes((m, n), s.nbytes, isz)
    assert k >= A.nnz and (k == m * n or S.sparse_nbytes((m, n), k + 1, isz) > s.nbytes)


@given(m=st.integers(1, 30), n=st.integers(1, 30), r=st.integers(0, 30), half=st.booleans())
def test_lowrank_bytes_match_the_model(m, n, r, half):
    r = min(r, m, n)
    rng = np.random.default_rng(r)
    L = store_as(LowRank(rng.standard_normal((m, r)).astype(np.float32),
                         rng.standard_normal((r, n)).astype(np.float32)), "BF16" if half else None)
    isz = S.value_itemsize(np.float32, "BF16" if half else None)
    assert L.nbytes == S.lowrank_nbytes((m, n), r, isz)
    assert S.rank_for_bytes((m, n), L.nbytes, isz) == r
    assert S.lowrank_nbytes((m, n), S.rank_for_bytes((m, n), L.nbytes + isz - 1, isz), isz) <= L.nbytes + isz - 1


def test_widths_and_stored_dtypes():
    assert [S.index_itemsize(n) for n in (1, 256, 257, 65536, 65537, 2**31)] == [1, 1, 2, 2, 4, 8]
    assert S.pointer_dtype(10) == np.int32 and S.pointer_dtype(2**31) == np.int64
    assert S.stored_itemsize("BF16", np.dtype(np.float32)) == 2
    assert S.stored_itemsize("bfloat16", np.dtype(np.float32)) == 2
    assert S.stored_itemsize("F8_E4M3", np.dtype(np.float32)) == 1
    assert S.stored_itemsize(None, np.dtype(np.int64)) == 8
    with pytest.raises(ValueError, match="storage"):
        S.value_itemsize(np.float32, "int3")


def test_budget_is_exactly_one_thing():
    assert S.Budget(nbytes=10).pair() == (None, 10.0)
    assert S.Budget.ratio(4, 100).nbytes == 25.0
    with pytest.raises(ValueError, match="exactly one"):
        S.Budget()
    with pytest.raises(ValueError, match="exactly one"):
        S.Budget(nbytes=1, error=0.1)
    with pytest.raises(ValueError, match="error"):
        S.Budget(error=-1)
    with pytest.raises(ValueError, match="ratio"):
        S.Budget.ratio(0.5, 100)
